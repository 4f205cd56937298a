"""Prestaging: a layer staged while its bytes are written, claimed by digest."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from linerd.errdefs import Aborted
from linerd.prestage import Prestager

pytestmark = pytest.mark.unit


def blob() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return gzip.compress(buf.getvalue(), mtime=0)


BLOB = blob()
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def test_a_new_prestager_wipes_what_a_previous_run_left(tmp_path: Path) -> None:
    (tmp_path / "area" / "stage-old").mkdir(parents=True)
    (tmp_path / "area" / "stage-old" / "0").write_bytes(b"stale")
    p = Prestager(tmp_path / "area")
    assert list(p.directory.iterdir()) == []


@pytest.mark.parametrize(
    ("ref", "digest", "total"),
    [("config-x", DIGEST, 1000), ("layer-x", "", 1000), ("layer-x", DIGEST, 10)],
    ids=["not-a-layer", "no-digest", "too-small"],
)
def test_only_layers_worth_it_are_staged(tmp_path: Path, ref: str, digest: str, total: int) -> None:
    async def go() -> None:
        p = Prestager(tmp_path / "area", min_size=100)
        assert p.feed(ref, digest, tmp_path / "data", 0, total) is None

    asyncio.run(go())


async def write_and_stage(p: Prestager, data_path: Path, data: bytes, digest: str) -> None:
    """As a client's write and the commit that verifies it (the digest of the bytes)."""
    data_path.write_bytes(b"")
    live = p.feed("layer-" + digest, digest, data_path, 0, len(data))
    assert live is not None
    with open(data_path, "ab") as f:
        for i in range(0, len(data), 7):  # as a client's writes arrive
            f.write(data[i : i + 7])
            f.flush()
            live.grew(f.tell())
            await asyncio.sleep(0)
    live.finish(digest="sha256:" + hashlib.sha256(data).hexdigest())


def test_a_layer_staged_as_written_is_claimed_once_by_its_digest(tmp_path: Path) -> None:
    async def go() -> None:
        p = Prestager(tmp_path / "area", min_size=1)
        await write_and_stage(p, tmp_path / "data", BLOB, DIGEST)
        assert await p.take("sha256:" + "0" * 64) is None
        got = await p.take(DIGEST)
        assert got is not None and got.staged.compressed == DIGEST
        assert [e.name for e in got.staged.entries] == ["f"]
        assert (got.directory / "0").read_bytes() == b"hello"
        assert await p.take(DIGEST) is None  # claimed: gone
        Prestager.remove_dir(got.directory)
        assert list(p.directory.iterdir()) == []

    asyncio.run(go())


def test_bytes_that_are_not_the_digest_are_never_handed_out(tmp_path: Path) -> None:
    async def go() -> None:
        p = Prestager(tmp_path / "area", min_size=1)
        # The client claimed a digest its bytes do not have (a real commit would fail; the
        # digest it verified is the bytes').
        other = "sha256:" + "1" * 64
        await write_and_stage(p, tmp_path / "data", BLOB, other)
        assert await p.take(other) is None
        assert list(p.directory.iterdir()) == []

    asyncio.run(go())


def test_an_aborted_write_drops_its_stage(tmp_path: Path) -> None:
    async def go() -> None:
        p = Prestager(tmp_path / "area", min_size=1)
        (tmp_path / "data").write_bytes(BLOB[:10])
        live = p.feed("layer-x", DIGEST, tmp_path / "data", 10, len(BLOB))
        assert live is not None
        live.finish(Aborted("client went away"))
        assert await p.take(DIGEST) is None
        assert list(p.directory.iterdir()) == []

    asyncio.run(go())


def test_a_blob_written_again_is_staged_again(tmp_path: Path) -> None:
    """A second write of a digest means its blob was gone (removed, collected): the stage of
    the first write is dropped, not handed to the Apply that follows the second."""

    async def go() -> None:
        p = Prestager(tmp_path / "area", min_size=1)
        await write_and_stage(p, tmp_path / "data", BLOB, DIGEST)
        first = p._stages[DIGEST]
        await first
        await write_and_stage(p, tmp_path / "data2", BLOB, DIGEST)
        got = await p.take(DIGEST)
        assert got is not None and got.staged.compressed == DIGEST
        assert got.directory != (await first).directory  # type: ignore[union-attr]
        Prestager.drop(got)
        await asyncio.gather(*p._releases)
        assert list(p.directory.iterdir()) == []

    asyncio.run(go())


def test_a_write_that_never_commits_hands_out_nothing(tmp_path: Path) -> None:
    """Every byte was written, but no commit verified them: the stage is dropped."""

    async def go() -> None:
        p = Prestager(tmp_path / "area", min_size=1)
        (tmp_path / "data").write_bytes(BLOB)
        live = p.feed("layer-x", DIGEST, tmp_path / "data", len(BLOB), len(BLOB))
        assert live is not None
        live.finish(Aborted("the stream ended before its commit"))
        assert await p.take(DIGEST) is None
        assert list(p.directory.iterdir()) == []

    asyncio.run(go())
