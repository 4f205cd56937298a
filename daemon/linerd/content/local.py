"""Blobs and ingests on the local filesystem. Synchronous: callers run these in threads.

Layout under the content root:
  blobs/sha256/<hex>           committed blobs, shared by every namespace
  ingest/<sha256(ns, ref)>/    one in-progress write: `data` and `meta.json`
Refs are arbitrary client strings, so they are hashed, never used as file names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from linerd.core.types import IngestStatus
from linerd.errdefs import AlreadyExists, FailedPrecondition, NotFound, OutOfRange

_HASH_CHUNK = 1 << 20


def _now() -> datetime:
    return datetime.now(UTC)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


class Ingest:
    """An open, resumable write. Not thread-safe: one writer holds it at a time."""

    def __init__(
        self,
        directory: Path,
        namespace: str,
        ref: str,
        total: int,
        expected: str,
        started_at: datetime,
        index: dict[str, _Indexed] | None = None,
    ) -> None:
        self.directory = directory
        self.namespace = namespace
        self.ref = ref
        self.total = total
        self.expected = expected
        self.started_at = started_at
        # Unbuffered: what a write returned for is in the file, for a status or a crash.
        self._file = open(directory / "data", "r+b", buffering=0)  # noqa: SIM115
        self._hash = hashlib.sha256()
        # Resuming: the running digest covers what is already on disk.
        while chunk := self._file.read(_HASH_CHUNK):
            self._hash.update(chunk)
        self.offset = self._file.tell()
        # When the data last changed, kept here so the writer's per-message answer needs no
        # stat (other clients' Status calls read the file's mtime).
        self.updated_ns = os.fstat(self._file.fileno()).st_mtime_ns
        # The store's ingests by directory name: a listing answers from memory.
        self._index = index
        if index is not None:
            index[directory.name] = self

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def hasher(self) -> hashlib._Hash:
        """A copy of the running hash: a resumed download continues it."""
        return self._hash.copy()

    def status(self) -> IngestStatus:
        return IngestStatus(
            ref=self.ref,
            offset=self.offset,
            total=self.total,
            expected=self.expected,
            started_at=self.started_at,
            updated_at=datetime.fromtimestamp(self.updated_ns / 1e9, UTC),
        )

    def set_total(self, total: int) -> None:
        if total > 0 and total != self.total:
            self.total = total
            self._save_meta()

    def write(self, offset: int, data: bytes, total: int = 0) -> None:
        """Offset 0 on a non-empty ingest truncates (a client restarting, whose `total` then
        replaces the old one); any other offset must be the current one."""
        if offset == 0 and self.offset > 0:
            self._file.seek(0)
            self._file.truncate()
            self._hash = hashlib.sha256()
            self.offset = 0
            self.updated_ns = time.time_ns()
            if total != self.total:
                self.total = total
                self._save_meta()
        elif offset != self.offset:
            raise OutOfRange(
                f"ref {self.ref!r}: write at offset {offset}, ingest is at {self.offset}"
            )
        if not data:
            return
        if self.total > 0 and self.offset + len(data) > self.total:
            raise OutOfRange(
                f"ref {self.ref!r}: {len(data)} bytes at offset {self.offset} "
                f"pass the total of {self.total}"
            )
        view = memoryview(data)
        while view:  # a raw write may be short
            view = view[self._file.write(view) :]
        self._hash.update(data)
        self.offset += len(data)
        self.updated_ns = time.time_ns()

    def commit(self, blob_path: Path, size: int, expected: str) -> str:
        """Verify and move the data into place; the ingest is gone afterwards on success."""
        if size > 0 and size != self.offset:
            raise FailedPrecondition(f"unexpected commit size {self.offset}, expected {size}")
        digest = self.digest
        if expected and expected != digest:
            raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if blob_path.exists():
            self._unindex()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise AlreadyExists(f"content {digest} already exists")
        os.chmod(self.directory / "data", 0o444)
        self._unindex()
        os.rename(self.directory / "data", blob_path)
        _fsync_dir(blob_path.parent)
        shutil.rmtree(self.directory, ignore_errors=True)
        return digest

    def close(self) -> None:
        # Still listed: a closed ingest stays on disk to be resumed, as its status says.
        if not self._file.closed:
            self._file.close()

    def _unindex(self) -> None:
        if self._index is not None and self._index.get(self.directory.name) is self:
            del self._index[self.directory.name]

    def _save_meta(self) -> None:
        _write_meta(
            self.directory, self.namespace, self.ref, self.total, self.expected, self.started_at
        )


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingests = root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingests.mkdir(parents=True, exist_ok=True)
        # Every ingest by directory name: read from disk once here, then kept by this process,
        # the only one writing them (the root lock). ctr lists them every 100 ms while it
        # pulls (each of ten concurrent pulls does), which read every meta.json and statted
        # every data file in a thread. An entry is the Ingest last opened (it knows its
        # offset and times, open or closed), or the status read at start-up.
        self._index: dict[str, _Indexed] = _scan(self.ingests)

    def path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, digest: str, offset: int, size: int) -> bytes:
        with open(self.path(digest), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def put(self, digest: str, data: bytes) -> bool:
        """Store a small blob given whole (a pull's manifest or config) without an ingest:
        written beside the ingests (a crash leaves a `.tmp` that start-up removes), synced,
        renamed into place. False when the blob is there already; FailedPrecondition when
        `data` is not `digest` (sha256 only, as every blob here)."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise FailedPrecondition(f"unexpected commit digest {actual}, expected {digest}")
        path = self.path(digest)
        if path.exists():
            return False
        fd, tmp = tempfile.mkstemp(dir=self.ingests, prefix="put-", suffix=".tmp")
        try:
            try:
                view = memoryview(data)
                while view:  # a write may be short
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
            if path.exists():
                os.unlink(tmp)
                return False
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)
        return True

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for entry in os.scandir(self.blobs):
            if len(entry.name) == 64:
                yield "sha256:" + entry.name

    # -- ingests ---------------------------------------------------------------------------

    def _ingest_dir(self, namespace: str, ref: str) -> Path:
        key = hashlib.sha256(f"{namespace}\0{ref}".encode()).hexdigest()
        return self.ingests / key

    def open_ingest(self, namespace: str, ref: str, total: int, expected: str) -> Ingest:
        """Resume the ingest for (namespace, ref), or start it."""
        directory = self._ingest_dir(namespace, ref)
        meta = _read_meta(directory)
        if meta is None:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "data").touch()
            _write_meta(tmp, namespace, ref, total, expected, _now())
            shutil.rmtree(directory, ignore_errors=True)
            os.rename(tmp, directory)
            meta = _read_meta(directory)
            assert meta is not None
        ingest = Ingest(
            directory,
            namespace,
            ref,
            int(meta["total"]),
            meta.get("expected", ""),
            datetime.fromisoformat(meta["started_at"]),
            self._index,
        )
        if expected and expected != ingest.expected:
            ingest.expected = expected
            ingest._save_meta()
        ingest.set_total(total)
        return ingest

    def ingest_status(self, namespace: str, ref: str) -> IngestStatus:
        found = self._index.get(self._ingest_dir(namespace, ref).name)
        if found is None:
            raise NotFound(f"ref {ref!r} not found")
        return _indexed_status(found)[1]

    def list_ingests(self, namespace: str | None = None) -> list[tuple[str, IngestStatus]]:
        """(namespace, status) of every ingest, or of one namespace's. From memory: cheap
        enough for the event loop."""
        found = [_indexed_status(entry) for entry in list(self._index.values())]
        if namespace is not None:
            found = [item for item in found if item[0] == namespace]
        found.sort(key=lambda item: (item[0], item[1].ref))
        return found

    def abort(self, namespace: str, ref: str) -> None:
        directory = self._ingest_dir(namespace, ref)
        if self._index.pop(directory.name, None) is None:
            raise NotFound(f"ref {ref!r} not found")
        shutil.rmtree(directory, ignore_errors=True)

    def remove_broken(self) -> list[Path]:
        """Start-up cleanup: half-created or half-committed ingest dirs (see _read_meta)."""
        removed = []
        for entry in os.scandir(self.ingests):
            directory = Path(entry.path)
            if entry.name.endswith(".tmp") or _read_meta(directory) is None:
                self._index.pop(entry.name, None)
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
        return removed


# An ingest as the store's index keeps it: its Ingest, or (namespace, status) read from disk.
_Indexed = Ingest | tuple[str, IngestStatus]


def _indexed_status(entry: _Indexed) -> tuple[str, IngestStatus]:
    return (entry.namespace, entry.status()) if isinstance(entry, Ingest) else entry


def _scan(ingests: Path) -> dict[str, _Indexed]:
    """The whole ingests on disk (half-made ones are left to `remove_broken`)."""
    index: dict[str, _Indexed] = {}
    for entry in os.scandir(ingests):
        directory = Path(entry.path)
        meta = None if entry.name.endswith(".tmp") else _read_meta(directory)
        if meta is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            index[entry.name] = (str(meta["namespace"]), _status(directory, meta))
    return index


def _status(directory: Path, meta: dict[str, str | int]) -> IngestStatus:
    data = directory / "data"
    return IngestStatus(
        ref=str(meta["ref"]),
        offset=data.stat().st_size,
        total=int(meta["total"]),
        expected=str(meta.get("expected", "")),
        started_at=datetime.fromisoformat(str(meta["started_at"])),
        updated_at=_mtime(data),
    )


def _read_meta(directory: Path) -> dict | None:
    """The ingest's metadata, or None when the directory is not a whole ingest: a crash
    inside open_ingest leaves no meta.json, one inside a commit (after the data's rename)
    leaves meta.json without data."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return meta if (directory / "data").exists() else None


def _write_meta(
    directory: Path, namespace: str, ref: str, total: int, expected: str, started_at: datetime
) -> None:
    meta = {
        "namespace": namespace,
        "ref": ref,
        "total": total,
        "expected": expected,
        "started_at": started_at.isoformat(),
    }
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.rename(tmp, directory / "meta.json")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
