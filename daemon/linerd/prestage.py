"""The staging area, and prestaging: unpacking a layer while a client writes it.

Staging (`stage_tar`) decompresses, hashes and writes a layer's files into a scratch
directory before the snapshot it goes into exists; moving them in afterwards is cheap. The
scratch directories live in one area next to the snapshotters' roots (so files rename into
snapshots), wiped when linerd starts.

Client-side pulls (ctr's) write each layer with Content.Write and only then ask Diff.Apply
to unpack it onto a snapshot. While a blob whose ingest ref names it a layer
(`layer-<digest>`, as containerd's clients name them) is written, linerd stages it, and the
Diff.Apply that follows only moves the files into place. The bytes staged are the ingest
file's, whose digest the writer's commit verified (not hashed again here); it must be the
digest being applied. A stage that fails, mismatches, is not committed or is never claimed
is dropped, and Apply unpacks as before.

The worker staging a layer runs at nice 5 until the client's last byte is written, then at
0 (`stage_in_process`'s `yielding`). A fetch alone (`ctr content fetch`) cannot be told from
a pull's first half (ctr pulls by fetching, then applying), and staging took the CPU the
download needed: the writes come first, staging fills the CPU they leave, and whatever is
left of it once the bytes are all there (what the Apply waits for) runs at full priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from linerd.content.live import LiveBlob, in_reader_thread
from linerd.errdefs import Aborted
from linerd.topdir import mark_top_directory

if TYPE_CHECKING:
    from linerd.diff.worker import StagedLayer

log = structlog.get_logger("linerd.prestage")

LAYER_REF_PREFIX = "layer-"
# Any supported layer type: the codec is sniffed from the bytes, and Apply checks its own.
_ANY_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(slots=True)
class Prestaged:
    staged: StagedLayer
    directory: Path


class Prestager:
    def __init__(
        self,
        directory: Path,
        *,
        slots: int = max(3, os.cpu_count() or 3),  # ctr writes three layers at a time
        min_size: int = 1 << 20,
        keep: float = 30.0,  # ctr applies a layer right after writing it
    ) -> None:
        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)  # stale: from a previous run
        directory.mkdir(parents=True, mode=0o700)
        mark_top_directory(directory)  # each staging directory placed like a snapshot's
        self._slots = slots
        self._min_size = min_size
        self._keep = keep
        self._stages: dict[str, asyncio.Task[Prestaged | None]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._running = 0

    # --- the staging area -----------------------------------------------------------------

    def new_dir(self) -> Path:
        """A new empty scratch directory in the area. Blocking."""
        return Path(tempfile.mkdtemp(dir=self.directory, prefix="stage-"))

    @staticmethod
    def remove_dir(path: Path) -> None:
        """Blocking."""
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def drop(prestaged: Prestaged) -> None:
        """Let a staged layer's worker go and remove its directory. Blocking."""
        prestaged.staged.close()
        shutil.rmtree(prestaged.directory, ignore_errors=True)

    # --- prestaging -----------------------------------------------------------------------

    def feed(self, ref: str, digest: str, data: Path, offset: int, total: int) -> LiveBlob | None:
        """Start staging the blob being written to the ingest file `data`, if it is a layer
        worth it and a slot is free; the writer then drives the returned LiveBlob."""
        if not ref.startswith(LAYER_REF_PREFIX) or not digest or total < self._min_size:
            return None
        old = self._stages.get(digest)
        if old is not None:
            if not old.done():
                return None
            # Written again, so its blob was gone: what was staged from the last write is
            # dropped, and this write is staged (as the first was).
            self._expire(digest)
        if self._running >= self._slots:
            return None
        live = LiveBlob(data, offset, total)
        self._running += 1
        self._stages[digest] = asyncio.create_task(self._stage(digest, live, total))
        return live

    async def _stage(self, digest: str, live: LiveBlob, total: int) -> Prestaged | None:
        from linerd.layers import stage_stream

        directory = await asyncio.to_thread(self.new_dir)

        def stage() -> StagedLayer:
            with live.open() as raw:
                # A large layer in a worker process (a thread would fight the event loop
                # receiving the bytes for the GIL); a small one in this thread, where it costs
                # less than starting a process (~0.1 s of CPU while the machine is busiest).
                staged = stage_stream(
                    raw,  # type: ignore[arg-type]
                    _ANY_LAYER,
                    directory,
                    f"layer {digest}",
                    size=total,
                    yielding=True,
                )
            # The bytes staged are the file's, which the writer's commit hashed: its digest
            # is theirs (not hashed a second time here). No commit, no stage.
            staged.compressed = live.committed()
            if not staged.compressed:
                staged.close()
                raise Aborted("the write was not committed")
            return staged

        staged: Prestaged | None = None
        try:
            staged = Prestaged(await in_reader_thread(stage), directory)
        except Exception as e:  # Apply unpacks it the usual way
            log.debug("prestage dropped", digest=digest, why=str(e))
        finally:
            self._running -= 1
            if staged is None:
                self._stages.pop(digest, None)
                await asyncio.to_thread(self.remove_dir, directory)
        if staged is not None:
            asyncio.get_running_loop().call_later(self._keep, self._expire, digest)
        return staged

    def _expire(self, digest: str) -> None:
        task = self._stages.pop(digest, None)
        if task is not None:
            release = asyncio.create_task(self._release(task))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

    async def _release(self, task: asyncio.Task[Prestaged | None]) -> None:
        with contextlib.suppress(Exception):
            prestaged = await task
            if prestaged is not None:
                await asyncio.to_thread(self.drop, prestaged)

    async def take(self, digest: str) -> Prestaged | None:
        """The layer of `digest` staged while it was written (waiting for its stage to end),
        now the caller's, who drops it (`drop`). None if there is none or it failed."""
        task = self._stages.pop(digest, None)
        if task is None:
            return None
        try:
            prestaged = await asyncio.shield(task)
        except Exception:
            return None
        if prestaged is not None and prestaged.staged.compressed != digest:
            await asyncio.to_thread(self.drop, prestaged)
            return None
        return prestaged
