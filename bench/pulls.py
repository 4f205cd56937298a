"""(h) pulls toward their limit (issue 18 goal 3), called from bench/bench.py.

The limit of a pull is its download. Rows, alternating the daemons run by run, everything
removed between runs (bench.quiesce):

- `ctr content fetch` of the pull images (deb-gzip, deb-zstd): fetch only, no unpack. ctr
  downloads, each daemon stores through Content/Write, so this measures the daemons'
  Content/Write path.
- liner's pulls (`ctr images pull` and `liner images pull`) against containerd's fetch-only
  time of the same image: how far a whole pull is from its download.
- `large`: one image made here (4 gzip layers, ~1.2 GB unpacked, ~52,000 files), pulled by
  both with ctr, and by `liner images pull`. `--no-large` skips it (its build takes minutes).
- 10 different small images pulled at once (10 ctr processes on each daemon; also 10 pulls
  through liner's Transfer API from 10 client threads), wall time until the last is done.

The extra images are built once into `<cache>/layout-pulls` (reproducible: seeded content,
fixed mtimes, gzip mtime 0) and pushed to the bench's registry with skopeo like the others.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imagebuild

if TYPE_CHECKING:
    from bench import Daemon, LinerDaemon, Results
    from registry import Registry

CACHE_VERSION = 1
N_MULTI = 10
LARGE_LAYERS = 4
LARGE_FILES_PER_LAYER = 13_000  # 52,000 files in all
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


# ------------------------------------------------------------------------------- images


def _content(rnd: random.Random, size: int) -> bytes:
    """Half random, half text-like: compresses to about half, as real layers do."""
    half = size // 2
    line = f"{rnd.getrandbits(64):016x} the quick brown fox jumps over the lazy dog\n".encode()
    return rnd.randbytes(half) + (line * (1 + (size - half) // len(line)))[: size - half]


def _layer_tar(out: io.BufferedIOBase, seed: str, files: int, big_every: int) -> int:
    """A tar of `files` files in 100 directories into `out`; returns the files written."""
    rnd = random.Random(seed)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        dirs = 100

        def add(name: str, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            info.mtime = imagebuild.MTIME
            info.uname = info.gname = ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

        add(seed, None)
        for k in range(dirs):
            add(f"{seed}/d{k:03d}", None)
        for j in range(files):
            big = big_every and j % big_every == big_every - 1
            size = rnd.randint(256 << 10, 2 << 20) if big else rnd.randint(512, 24_000)
            add(f"{seed}/d{j % dirs:03d}/f{j:05d}.bin", _content(rnd, size))
    return files


class _Sink(io.RawIOBase):
    """Hashes the tar (diff_id) and gzips it into a file, hashing that (digest)."""

    def __init__(self, path: Path) -> None:
        self.tar_hash = hashlib.sha256()
        self.tar_size = 0
        self._file = open(path, "wb")  # noqa: SIM115
        self._gz = gzip.GzipFile(fileobj=self._file, mode="wb", compresslevel=6, mtime=0)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.tar_hash.update(data)
        self.tar_size += len(data)
        self._gz.write(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._gz.close()
            self._file.close()
        super().close()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _image(
    layout: imagebuild.OCILayout, tag: str, seeds: Sequence[str], files: int, big_every: int
) -> dict[str, Any]:
    """Build one image of gzip layers (streamed to disk, never whole in memory) and tag it."""
    descriptors, diff_ids, unpacked = [], [], 0
    for seed in seeds:
        tmp = layout.path / "blobs" / f"tmp-{seed}"
        sink = _Sink(tmp)
        with sink:
            _layer_tar(sink, seed, files, big_every)  # type: ignore[arg-type]
        digest = _file_digest(tmp)
        size = tmp.stat().st_size
        tmp.rename(layout.blob_path(digest))
        descriptors.append({"mediaType": GZIP, "digest": digest, "size": size})
        diff_ids.append("sha256:" + sink.tar_hash.hexdigest())
        unpacked += sink.tar_size
    config = imagebuild.build_config(diff_ids, cmd=["/bin/sh"])
    manifest = imagebuild.Blob(
        imagebuild.OCI_MANIFEST,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": imagebuild.OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": descriptors,
            },
            indent=2,
        ).encode(),
    )
    layout.add(config)
    layout.tag(manifest, tag)
    return {
        "size": config.size + sum(d["size"] for d in descriptors),
        "layers": len(descriptors),
        "layer_sizes": [d["size"] for d in descriptors],
        "uncompressed": unpacked,
        "files": files * len(seeds),
    }


def build(cache: Path, large: bool, smoke: bool, log: Callable[[str], None]) -> tuple[Path, dict]:
    """The layout of (h)'s own images in the cache: the 10 small ones, and `large` if asked."""
    name = "layout-pulls-smoke" if smoke else "layout-pulls"
    layout_dir, meta_path = cache / name, cache / f"{name}.json"
    meta: dict[str, Any] = {}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    if meta.get("version") != CACHE_VERSION:
        shutil.rmtree(layout_dir, ignore_errors=True)
        meta = {"version": CACHE_VERSION, "tags": {}}
    layout = imagebuild.OCILayout(layout_dir)
    t0 = time.monotonic()
    files = 40 if smoke else 400
    for i in range(N_MULTI):
        tag = f"multi-{i}"
        if tag not in meta["tags"]:
            meta["tags"][tag] = _image(layout, tag, [f"m{i}"], files, 0)
    if large and not smoke and "large" not in meta["tags"]:
        log("building the large image (once; a few minutes)")
        seeds = [f"large{k}" for k in range(LARGE_LAYERS)]
        meta["tags"]["large"] = _image(layout, "large", seeds, LARGE_FILES_PER_LAYER, 100)
    meta_path.write_text(json.dumps(meta, indent=2))
    if time.monotonic() - t0 > 1:
        log(f"(h) images built in {time.monotonic() - t0:.1f} s")
    return layout_dir, meta


# ------------------------------------------------------------------------------- rows


def _ctr_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}


def _timed(res: Results, m: Any, daemon: str, fn: Callable[[], float]) -> float | None:
    """res.sample, returning the value (None when the sample failed and was skipped)."""
    n = len(m.samples.get(daemon, []))
    res.sample(m, daemon, fn)
    xs = m.samples.get(daemon, [])
    return xs[-1] if len(xs) > n else None


def _timed_ctr(d: Daemon, *args: str, timeout: float = 900) -> float:
    t0 = time.perf_counter()
    d.ctr(*args, timeout=timeout)
    return time.perf_counter() - t0


def _alternate(daemons: list[Daemon], i: int) -> list[Daemon]:
    return daemons if i % 2 == 0 else daemons[::-1]


def _at_once(argvs: list[list[str]], env: dict[str, str] | None = None) -> float:
    """Start every command, wait for all: the wall time; RuntimeError if one failed."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        for a in argvs
    ]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            errors.append(err.decode(errors="replace").strip()[-300:])
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(argvs)} failed: {errors[0]}")
    return wall


def _client_pulls(address: str, refs: list[str]) -> float:
    """Pull every ref at once through liner's Transfer API, one client thread each (what 10
    `liner images pull` processes do, without 10 interpreters starting): the wall time."""
    from liner.client import Client

    errors: list[str] = []

    def pull(ref: str) -> None:
        try:
            with Client(address, "bench") as c:
                for _ in c.pull(ref, plain_http=True):
                    pass
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=pull, args=(r,)) for r in refs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(refs)} pulls failed: {errors[0]}")
    return wall


def bench(
    daemons: list[Daemon],
    liner: LinerDaemon,
    reg: Registry,
    pulls: dict[str, str],
    cache: Path,
    res: Results,
    runs: int,
    *,
    large: bool,
    smoke: bool,
    quiesce: Callable[[Daemon], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every (h) row into `res`; returns the images' meta for the JSON."""
    layout, meta = build(cache, large, smoke, log)
    tags = [t for t in meta["tags"] if large or t != "large"]  # built once, maybe earlier
    refs = {tag: reg.push_layout(layout, f"bench/{tag}:latest", tag=tag) for tag in tags}
    for d in daemons:
        quiesce(d)

    def liner_pull(ref: str) -> float:
        return liner.liner("images", "pull", "--plain-http", "--progress", "quiet", ref)

    # Fetch only, then liner's pulls against containerd's fetch of the same image.
    for tag, ref in pulls.items():
        fetch = res.metric(f"fetch_{tag}", f"(h) ctr content fetch {tag}", "s")
        cpull = res.metric(
            f"pull_vs_fetch_{tag}", f"(h) liner ctr pull {tag} vs fetch", "s", versus=fetch.key
        )
        lpull = res.metric(
            f"lpull_vs_fetch_{tag}",
            f"(h) liner images pull {tag} vs fetch",
            "s",
            versus=fetch.key,
        )
        for i in range(runs):
            got: dict[str, float] = {}
            for d in _alternate(daemons, i):
                t = _timed(res, fetch, d.name, lambda d=d, ref=ref: d.timed_ctr(
                    "content", "fetch", "--plain-http", ref))  # fmt: skip
                if t is not None:
                    got[d.name] = t
                quiesce(d)
            if len(got) == 2:
                fetch.pairs.append(got["liner"] / got["containerd"])
            res.sample(cpull, "liner", lambda ref=ref: liner.timed_ctr(
                "images", "pull", "--plain-http", ref))  # fmt: skip
            quiesce(liner)
            res.sample(lpull, "liner", lambda ref=ref: liner_pull(ref))
            quiesce(liner)
            log(f"(h) fetch {tag} run {i + 1}/{runs}: " + ", ".join(
                f"{k} {v:.2f}s" for k, v in got.items()))  # fmt: skip

    # The large image: both pull it with ctr; liner also through its Transfer API.
    if "large" in refs:
        ref = refs["large"]
        big = res.metric("pull_large", "(h) ctr pull+unpack large", "s")
        lbig = res.metric("lpull_large", "(h) liner images pull large", "s", versus=big.key)
        fbig = res.metric("fetch_large", "(h) ctr content fetch large", "s")
        for i in range(max(1, runs // 2) if not smoke else 1):
            for d in _alternate(daemons, i):
                res.sample(big, d.name, lambda d=d: _timed_ctr(
                    d, "images", "pull", "--plain-http", ref))  # fmt: skip
                quiesce(d)
                res.sample(fbig, d.name, lambda d=d: _timed_ctr(
                    d, "content", "fetch", "--plain-http", ref))  # fmt: skip
                quiesce(d)
            res.sample(lbig, "liner", lambda: liner_pull(ref))
            quiesce(liner)
            log(f"(h) large run {i + 1}: " + ", ".join(
                f"{k} {v[-1]:.2f}s" for k, v in big.samples.items()))  # fmt: skip

    # 10 different images at once.
    multi = [refs[f"multi-{i}"] for i in range(N_MULTI)]
    many = res.metric("pull_10", f"(h) {N_MULTI} images pulled at once (ctr)", "s")
    lmany = res.metric(
        "lpull_10", f"(h) {N_MULTI} images at once (Transfer API)", "s", versus=many.key
    )
    for i in range(runs):
        for d in _alternate(daemons, i):
            argvs = [d.ctr_argv("images", "pull", "--plain-http", r) for r in multi]
            res.sample(many, d.name, lambda argvs=argvs: _at_once(argvs, _ctr_env()))
            quiesce(d)
        res.sample(lmany, "liner", lambda: _client_pulls(liner.address, multi))
        quiesce(liner)
    return {t: meta["tags"][t] for t in tags}
