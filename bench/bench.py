"""liner vs containerd, side by side, with the real `ctr` as the client (issue 7).

Run it with `make bench` (installs what is missing first), or directly as root:

    .venv/bin/python bench/bench.py [--tmpfs] [--load] [--smoke] [--runs N] [--results-dir DIR]

What it does, in order (see bench/README.md for the details and the caveats):

1. Builds the images once into the cache (bench/cache/): `deb` (a debootstrap minbase root,
   a few MB of extra files, a layer of whiteouts plus a 50 MB file; gzip and zstd variants) and
   `busybox` (one small layer). `--smoke`: busybox only (gzip and zstd), no debootstrap.
2. Serves them from Debian's docker-registry on 127.0.0.1 (its storage kept in the cache).
3. Starts linerd and, when installed, containerd, each on a private root, state and socket;
   containerd runs inside `unshare -m` with a tmpfs over /run/containerd (where its shim
   sockets and ctr's FIFOs go), and `ctr` reaches each daemon through
   `nsenter -t <daemon pid> -m` so both sides pay the same client cost.
4. Measures, alternating the daemons run by run: (a) cold pull + unpack, (b) `run --rm`
   latency, (c) 20 detached containers started then killed and removed, (d) daemon RSS idle
   and with 20 running and RSS/PSS per helper (conmon / containerd-shim-runc-v2), (e) `ctr
   version` / `ctr images ls` (and `liner version` / `liner images ls`), plus a pull through
   liner's Transfer API; (f) each daemon's CRI in critest's shape (bench/cri.py); (h) pulls
   toward their limit: fetch-only, pull vs fetch, a large image, 10 at once (bench/pulls.py).
   `--load` adds the load check (50 concurrent pulls of one image, 100 `run --rm` in a row).
5. Prints a table (median, min, max, ratio liner/containerd) and writes JSON to
   `<results-dir>/<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import cri  # noqa: E402
import imagebuild  # noqa: E402
import pulls  # noqa: E402
import scale  # noqa: E402
from procs import cmdlines, mem_kb, parent_of, pss_mb  # noqa: E402
from registry import Registry, ThrottlingProxy  # noqa: E402
from support import Linerd  # noqa: E402

NS = "bench"
CACHE_VERSION = 1
SUITE = "bookworm"
N_DETACHED = 20
N_MEMORY = "20,100"  # (d): running containers at which node memory is sampled
IDLE_SETTLE = 2.0  # (d): seconds before the idle sample
N_PODS = 50  # (f), as critest runs
N_CRI_PULLS = 20  # (f): distinct small images pulled through the CRI


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- images


def apt_mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line format)."""
    candidates: list[str] = []
    sources_d = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", ""):
                candidates += fields.get("uris", "").split()
    for path in [Path("/etc/apt/sources.list"), *sorted(sources_d.glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                uri_at = 2 if words[1].startswith("[") else 1
                if len(words) > uri_at + 1 and words[uri_at + 1] == SUITE:
                    candidates.append(words[uri_at])
    plain = [u for u in candidates if "security" not in u]
    if not plain:
        raise SystemExit(f"no Debian mirror for {SUITE} in the apt sources")
    return plain[0]


def debootstrap_root(cache: Path) -> Path:
    """A minbase root made once by debootstrap (reused while its marker exists)."""
    base = cache / "debootstrap"
    root = base / "rootfs"
    marker = base / "complete"
    if marker.exists() and root.is_dir():
        return root
    if not shutil.which("debootstrap"):
        raise SystemExit("debootstrap is not installed (make bench installs it)")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log("debootstrap --variant=minbase (once; a few minutes)")
    with open(base / "log", "wb") as out:
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), apt_mirror()],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    marker.write_text("ok\n")
    return root


def _skip(rel: str) -> bool:
    """Not part of the image: device nodes, virtual filesystems, downloaded .debs."""
    top = rel.split("/", 1)[0]
    if top in ("dev", "proc", "sys", "run") and "/" in rel:
        return True
    return rel.startswith("var/cache/apt/archives/") and rel.endswith(".deb")


def rootfs_tar(root: Path) -> tuple[bytes, list[str]]:
    """Layer 1: the root as a PAX tar (sorted, hard links kept); and its regular files."""
    out = io.BytesIO()
    files: list[str] = []
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*sorted(dirnames), *sorted(filenames)]:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if _skip(rel):
                    continue
                info = tar.gettarinfo(full, arcname=rel)
                if info.isreg() and info.type != tarfile.LNKTYPE:
                    files.append(rel)
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return out.getvalue(), files


def extra_files_layer() -> list[imagebuild.Entry]:
    """Layer 2: about 4 MB in 300 files, half text-like, half random."""
    rnd = random.Random(7)
    words = [b"liner", b"container", b"layer", b"snapshot", b"overlay", b"debian", b"bench"]
    entries = [imagebuild.dir_("opt"), imagebuild.dir_("opt/bench")]
    for d in range(10):
        entries.append(imagebuild.dir_(f"opt/bench/d{d}"))
        for i in range(30):
            size = rnd.randint(6_000, 22_000)
            if i % 2:
                data = rnd.randbytes(size)
            else:
                data = b" ".join(rnd.choice(words) for _ in range(size // 7))[:size]
            entries.append(imagebuild.file(f"opt/bench/d{d}/f{i}.dat", data))
    return entries


def delete_layer(files: list[str], root: Path) -> list[imagebuild.Entry]:
    """Layer 3: whiteouts of layer-1 paths (two whole dirs, every 10th zoneinfo file) + 50 MB."""
    entries = [imagebuild.dir_("opt"), imagebuild.dir_("opt/bench")]
    for d in ("usr/share/doc", "usr/share/man"):
        if (root / d).is_dir():
            entries.append(imagebuild.whiteout(d))
    zone = [f for f in files if f.startswith("usr/share/zoneinfo/")]
    entries += [imagebuild.whiteout(f) for f in zone[::10]]
    entries.append(imagebuild.file("opt/bench/big.bin", random.Random(50).randbytes(50 << 20)))
    return entries


@dataclass
class Images:
    """References (as pushed) of what the bench pulls and runs."""

    pulls: dict[str, str]  # "deb-gzip" / "deb-zstd" -> ref
    busybox: str
    sizes: dict[str, int] = field(default_factory=dict)  # compressed bytes per pull image


def build_images(cache: Path, smoke: bool) -> tuple[Path, dict[str, Any]]:
    """The OCI layout in the cache (built once) and what is in it."""
    name = "layout-smoke" if smoke else "layout"
    layout_dir = cache / name
    meta_path = cache / f"{name}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == CACHE_VERSION:
            return layout_dir, meta
    shutil.rmtree(layout_dir, ignore_errors=True)
    t0 = time.monotonic()
    meta: dict[str, Any] = {"version": CACHE_VERSION, "tags": {}}
    bb = imagebuild.busybox_image(layout_dir, "gzip", extra_layers=False, tag="busybox")
    meta["tags"]["busybox"] = {"size": sum(b.size for b in bb.blobs), "layers": 1}
    if smoke:
        bz = imagebuild.busybox_image(layout_dir, "zstd", extra_layers=False, tag="busybox-zstd")
        meta["tags"]["busybox-zstd"] = {"size": sum(b.size for b in bz.blobs), "layers": 1}
    else:
        root = debootstrap_root(cache)
        log("building the deb layers (once)")
        tar1, files = rootfs_tar(root)
        tars = [tar1, imagebuild.layer_tar(extra_files_layer())]
        tars.append(imagebuild.layer_tar(delete_layer(files, root)))
        layout = imagebuild.OCILayout(layout_dir)
        for compression in ("gzip", "zstd"):
            layers = []
            for tar in tars:
                blob = imagebuild.Blob(
                    imagebuild.layer_media_type(compression),  # type: ignore[arg-type]
                    imagebuild.compress(tar, compression),  # type: ignore[arg-type]
                )
                layers.append(imagebuild.Layer(blob, imagebuild.sha256(tar)))
            config = imagebuild.build_config([x.diff_id for x in layers], cmd=["/bin/bash"])
            manifest = imagebuild.build_manifest(config, layers)
            layout.add(config, *layers)
            layout.tag(manifest, f"deb-{compression}")
            meta["tags"][f"deb-{compression}"] = {
                "size": config.size + sum(x.blob.size for x in layers),
                "layers": len(layers),
                "layer_sizes": [x.blob.size for x in layers],
                "uncompressed": sum(len(t) for t in tars),
                "layer1_files": len(files),
            }
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"images built in {time.monotonic() - t0:.1f} s")
    return layout_dir, meta


def push_images(reg: Registry, layout: Path, meta: dict[str, Any], smoke: bool) -> Images:
    refs = {}
    for tag in meta["tags"]:
        refs[tag] = reg.push_layout(layout, f"bench/{tag}:latest", tag=tag)
    pulls = ["busybox", "busybox-zstd"] if smoke else ["deb-gzip", "deb-zstd"]
    return Images(
        pulls={t: refs[t] for t in pulls},
        busybox=refs["busybox"],
        sizes={t: meta["tags"][t]["size"] for t in pulls},
    )


# ------------------------------------------------------------------------------- processes


def proc_counts(pid: int, under: Path) -> dict[str, int]:
    """fds, threads, RSS (kB) of a process; mounts of its namespace that involve `under`."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(x for x in status.splitlines() if x.startswith("Threads:")).split()[1])
    mountinfo = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": threads,
        # Only the daemon's own: the namespace is shared with whatever else runs here.
        "mounts": sum(1 for line in mountinfo if str(under) in line),
        "rss_kb": mem_kb(pid).get("rss", 0),
    }


def ctr_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}


class Daemon:
    """What the bench needs of a daemon: ctr through nsenter, its pid, its helpers."""

    name = ""
    address = ""
    pid = 0

    def ctr_argv(self, *args: str) -> list[str]:
        return [
            "nsenter", "-t", str(self.pid), "-m", "--",
            "ctr", "--address", self.address, "--namespace", NS, *args,
        ]  # fmt: skip

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        r = subprocess.run(
            self.ctr_argv(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ctr_env(),
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"{self.name}: ctr {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}"
            )
        return r.stdout

    def timed_ctr(self, *args: str) -> float:
        t0 = time.perf_counter()
        self.ctr(*args)
        return time.perf_counter() - t0

    def helpers(self) -> list[int]:
        raise NotImplementedError

    def zygotes(self) -> list[int]:
        """Processes the daemon keeps for unpacking (liner's zygote, around pulls)."""
        return []

    def stop(self) -> None:
        raise NotImplementedError

    # -- state --------------------------------------------------------------------------

    def rows(self, *args: str) -> list[list[str]]:
        return [x.split() for x in self.ctr(*args).splitlines()[1:] if x.strip()]

    def clean(self) -> None:
        """Remove every image, container, snapshot and blob of the bench namespace."""
        for row in self.rows("tasks", "ls"):
            self.ctr("tasks", "kill", "-s", "SIGKILL", row[0], check=False)
        for row in self.rows("tasks", "ls"):
            self.ctr("tasks", "rm", "-f", row[0], check=False)
        for row in self.rows("containers", "ls"):
            self.ctr("containers", "rm", row[0], check=False)
        names = [r[0] for r in self.rows("images", "ls")]
        if names:
            self.ctr("images", "rm", "--sync", *names)
        for _ in range(10):  # leftovers GC did not take (leaf snapshots first)
            snaps = self.rows("snapshots", "ls")
            parents = {r[1] for r in snaps if len(r) > 2}
            leaves = [r[0] for r in snaps if r[0] not in parents]
            blobs = [r[0] for r in self.rows("content", "ls")]
            if not snaps and not blobs:
                return
            if leaves:
                self.ctr("snapshots", "rm", *leaves, check=False)
            if blobs and not snaps:
                self.ctr("content", "rm", *blobs, check=False)
        raise RuntimeError(f"{self.name}: could not empty namespace {NS}")


class LinerDaemon(Daemon):
    name = "liner"

    def __init__(self, base: Path) -> None:
        # The CRI off, as containerd's CRI plugin is in (a)-(e): the same daemon on both sides
        # (with it on, linerd imports and keeps ~3 MB more; (f) measures the CRI).
        base.mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text("[cri]\nenabled = false\n")
        self.d = Linerd(base, log_level="info", extra_args=["--config", str(config)])
        self.address = self.d.address
        self.d.start()
        assert self.d.proc is not None
        self.pid = self.d.proc.pid
        self.liner_cli = [str(Path(sys.executable).parent / "liner")]
        self.liner_env: dict[str, str] | None = None  # this process's

    def liner(self, *args: str) -> float:
        argv = [*self.liner_cli, "--address", self.address, "--namespace", NS, *args]
        t0 = time.perf_counter()
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "--", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            env=self.liner_env,
        )
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"liner {' '.join(args)} failed: {r.stderr.strip()}")
        return elapsed

    def helpers(self) -> list[int]:
        state = str(self.d.state)
        return [
            pid
            for pid, argv in cmdlines()
            if os.path.basename(argv[0]).startswith("conmon")
            and any(a.startswith(state) for a in argv)
        ]

    def zygotes(self) -> list[int]:
        return [
            pid
            for pid, argv in cmdlines()
            if argv[1:3] == ["-m", "linerd.diff.zygote"] and parent_of(pid) == self.pid
        ]

    def stop(self) -> None:
        self.d.stop()


class ContainerdDaemon(Daemon):
    name = "containerd"

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.address = str(base / "containerd.sock")
        config = base / "config.toml"
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{base / "root"}"',
                    f'state = "{base / "state"}"',
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f'  address = "{self.address}"',
                    "[ttrpc]",
                    f'  address = "{self.address}.ttrpc"',
                    "[debug]",
                    f'  address = "{base / "debug.sock"}"',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f'  path = "{base / "opt"}"',
                    "",
                ]
            )
        )
        Path("/run/containerd").mkdir(parents=True, exist_ok=True)  # the tmpfs's mount point
        self.log_path = base / "containerd.log"
        with open(self.log_path, "wb") as out:
            # unshare execs sh, which execs containerd: Popen's pid is containerd's.
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    'mount -t tmpfs tmpfs /run/containerd && exec containerd --config "$0"',
                    str(config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ctr_env(),
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited:\n{self.log_path.read_text()[-3000:]}")
            if os.path.exists(self.address) and Path(f"/proc/{self.pid}/comm").read_text() == (
                "containerd\n"
            ):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.ctr("version", timeout=5)
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def helpers(self) -> list[int]:
        return [
            pid
            for pid, argv in cmdlines()
            if os.path.basename(argv[0]).startswith("containerd-shim")
            and self.address in argv
            and "start" not in argv
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.helpers():  # shims this containerd started (none if cleaned)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------- metrics


@dataclass
class Metric:
    key: str
    label: str
    unit: str  # "s", "ms" or "MB"
    samples: dict[str, list[float]] = field(default_factory=dict)
    # Ratio against another daemon's metric (e.g. `liner images pull` vs containerd ctr pull).
    versus: str | None = None
    pairs: list[float] = field(default_factory=list)  # per alternated pair: liner/containerd

    def add(self, daemon: str, value: float) -> None:
        self.samples.setdefault(daemon, []).append(value)

    def summary(self, daemon: str) -> dict[str, Any] | None:
        xs = self.samples.get(daemon)
        if not xs:
            return None
        return {
            "median": statistics.median(xs),
            "min": min(xs),
            "max": max(xs),
            "n": len(xs),
            "samples": [round(x, 6) for x in xs],
        }


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.errors: list[str] = []  # failed samples that were skipped (kept in the JSON)

    def sample(self, m: Metric, daemon: str, fn: Callable[[], float]) -> None:
        """Add fn()'s result; a failing command is logged and skipped, not fatal."""
        try:
            m.add(daemon, fn())
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            msg = f"{m.key} ({daemon}): {str(e)[-800:]}"
            self.errors.append(msg)
            log(f"skipped a sample: {msg}")

    def metric(self, key: str, label: str, unit: str, versus: str | None = None) -> Metric:
        if key not in self.metrics:
            self.metrics[key] = Metric(key, label, unit, versus=versus)
        return self.metrics[key]

    def ratio(self, m: Metric) -> float | None:
        mine = m.summary("liner")
        other = (
            self.metrics[m.versus].summary("containerd") if m.versus else m.summary("containerd")
        )
        if not mine or not other or not other["median"]:
            return None
        return mine["median"] / other["median"]

    def to_json(self) -> dict[str, Any]:
        out = {}
        for key, m in self.metrics.items():
            ratio = self.ratio(m)
            out[key] = {
                "label": m.label,
                "unit": m.unit,
                "liner": m.summary("liner"),
                "containerd": m.summary("containerd"),
                "ratio": None if ratio is None else round(ratio, 4),
            }
            if m.versus:
                out[key]["ratio_versus"] = f"{m.versus} (containerd)"
            if m.pairs:
                out[key]["pair_ratios"] = [round(x, 4) for x in m.pairs]
                out[key]["pair_ratio_median"] = round(statistics.median(m.pairs), 4)
        return out

    def table(self) -> str:
        def fmt(s: dict[str, Any] | None, unit: str) -> str:
            if s is None:
                return "-"
            k = 1000 if unit == "ms" else 1
            return f"{s['median'] * k:.3g} [{s['min'] * k:.3g}-{s['max'] * k:.3g}]"

        head = ("metric", "unit", "liner med [min-max]", "containerd med [min-max]", "ratio")
        rows = [head]
        for m in self.metrics.values():
            ratio = self.ratio(m)
            other = (
                self.metrics[m.versus].summary("containerd")
                if m.versus
                else m.summary("containerd")
            )
            label = m.label + (" (vs ctr)" if m.versus else "")
            rows.append(
                (
                    label,
                    m.unit,
                    fmt(m.summary("liner"), m.unit),
                    fmt(other, m.unit),
                    "-" if ratio is None else f"{ratio:.2f}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def alternate(daemons: list[Daemon], i: int) -> list[Daemon]:
    return daemons if i % 2 == 0 else daemons[::-1]


def quiesce(d: Daemon, settle: float) -> None:
    """Empty the daemon, then write back what that left dirty: without the sync, the next
    pull (often the other daemon's) pays for this one's writeback on a disk root."""
    d.clean()
    os.sync()
    time.sleep(settle)


def bench_pulls(
    daemons: list[Daemon], images: Images, res: Results, runs: int, settle: float
) -> None:
    """(a) cold pull + unpack with ctr, alternating; everything removed between runs."""
    for d in daemons:
        quiesce(d, settle)
    for tag, ref in images.pulls.items():
        m = res.metric(f"pull_{tag}", f"(a) ctr pull+unpack {tag}", "s")
        for i in range(runs):
            got: dict[str, float] = {}
            for d in alternate(daemons, i):
                got[d.name] = d.timed_ctr("images", "pull", "--plain-http", ref)
                m.add(d.name, got[d.name])
                quiesce(d, settle)
            if len(got) == 2:
                m.pairs.append(got["liner"] / got["containerd"])
            log(
                f"pull {tag} run {i + 1}/{runs}: "
                + ", ".join(f"{k} {v:.2f}s" for k, v in got.items())
            )


def bench_liner_pull(
    liner: LinerDaemon, images: Images, res: Results, runs: int, settle: float
) -> None:
    """Extra row: the same pulls through liner's Transfer API (`liner images pull`)."""
    for tag, ref in images.pulls.items():
        m = res.metric(f"liner_pull_{tag}", f"liner images pull {tag}", "s", versus=f"pull_{tag}")
        for _ in range(runs):
            res.sample(
                m,
                "liner",
                lambda ref=ref: liner.liner(
                    "images", "pull", "--plain-http", "--progress", "quiet", ref
                ),
            )
            quiesce(liner, settle)
        if m.samples.get("liner"):
            log(f"liner images pull {tag}: {statistics.median(m.samples['liner']):.2f}s median")


def bench_run_rm(daemons: list[Daemon], images: Images, res: Results, runs: int) -> None:
    """(b) `ctr run --rm busybox /bin/true`, alternating run by run."""
    m = res.metric("run_rm", "(b) ctr run --rm busybox /bin/true", "ms")
    for i in range(runs):
        for d in alternate(daemons, i):
            m.add(d.name, d.timed_ctr("run", "--rm", images.busybox, f"rm-{i}", "/bin/true"))
    log(
        "run --rm: "
        + ", ".join(f"{k} {statistics.median(v) * 1000:.0f}ms" for k, v in m.samples.items())
    )


def wait_stopped(d: Daemon, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = {r[0]: r[2] for r in d.rows("tasks", "ls") if len(r) > 2}
        if all(status.get(i) == "STOPPED" for i in ids):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{d.name}: tasks did not stop")


def bench_detached(daemons: list[Daemon], images: Images, res: Results, runs: int, n: int) -> None:
    """(c) n containers started detached, then killed and removed; (d) RSS around it."""
    wall = res.metric("detached", f"(c) {n} run -d, kill, rm (wall)", "s")
    idle = res.metric("rss_idle", "(d) daemon RSS idle", "MB")
    busy = res.metric("rss_busy", f"(d) daemon RSS with {n} running", "MB")
    h_rss = res.metric("helper_rss", "(d) RSS per helper (conmon / shim)", "MB")
    h_pss = res.metric("helper_pss", "(d) PSS per helper (conmon / shim)", "MB")
    z_pss = res.metric("zygote_pss", "(d) PSS of liner's unpack zygote, if up", "MB")
    for i in range(runs):
        for d in alternate(daemons, i):
            idle.add(d.name, mem_kb(d.pid)["rss"] / 1024)
            for pid in d.zygotes():  # not the daemon's RSS, so shown apart
                z_pss.add(d.name, mem_kb(pid).get("pss", 0) / 1024)
            ids = [f"det-{i}-{k}" for k in range(n)]
            t0 = time.perf_counter()
            for cid in ids:
                d.ctr("run", "-d", images.busybox, cid, "/bin/sleep", "3600")
            started = time.perf_counter() - t0
            # Measured outside the timed part.
            busy.add(d.name, mem_kb(d.pid)["rss"] / 1024)
            helpers = d.helpers()
            if len(helpers) != n:
                log(f"{d.name}: {len(helpers)} helpers for {n} containers")
            for pid in helpers:
                mem = mem_kb(pid)
                h_rss.add(d.name, mem.get("rss", 0) / 1024)
                h_pss.add(d.name, mem.get("pss", 0) / 1024)
            t1 = time.perf_counter()
            for cid in ids:
                d.ctr("tasks", "kill", "-s", "SIGKILL", cid)
            wait_stopped(d, ids)
            for cid in ids:
                d.ctr("tasks", "rm", cid)
                d.ctr("containers", "rm", cid)
            total = started + time.perf_counter() - t1
            wall.add(d.name, total)
            log(f"detached {d.name} run {i + 1}/{runs}: {total:.2f}s")


def node_memory(
    daemons: list[Daemon], images: Images, res: Results, counts: list[int], phase: str
) -> None:
    """(d) node memory (#18 goal 1) with n containers running, for each n of counts (one ramp
    per daemon: the containers of the smaller count stay up while more start): the daemon's
    PSS + the PSS of every per-container helper (conmon / shim) + liner's unpack zygote's
    PSS when it is up; the daemon's PSS and RSS alone, and its growth per container."""
    tag = phase.replace(" ", "_")
    rows = {
        n: {
            "node": res.metric(f"node_pss_{tag}_{n}", f"(d) node PSS, {n} running, {phase}", "MB"),
            "daemon": res.metric(
                f"daemon_pss_{tag}_{n}", f"(d) daemon PSS, {n} running, {phase}", "MB"
            ),
            "helpers": res.metric(
                f"helpers_pss_{tag}_{n}", f"(d) helpers' PSS, {n} running, {phase}", "MB"
            ),
            "rss": res.metric(
                f"daemon_rss_{tag}_{n}", f"(d) daemon RSS, {n} running, {phase}", "MB"
            ),
            # The file-backed part of the daemon's PSS: lower while another process maps the
            # same files (another linerd or containerd on the machine).
            "file": res.metric(
                f"daemon_pss_file_{tag}_{n}",
                f"(d) daemon PSS file-backed part, {n} running, {phase}",
                "MB",
            ),
            "growth": res.metric(
                f"daemon_growth_{tag}_{n}",
                f"(d) daemon PSS growth per container, idle to {n}, {phase}",
                "MB",
            ),
        }
        for n in counts
    }
    idle_pss = res.metric(f"daemon_pss_{tag}_idle", f"(d) daemon PSS idle, {phase}", "MB")
    zygote = res.metric(f"zygote_pss_{tag}", f"(d) liner's unpack zygote PSS, {phase}", "MB")
    slope = (
        res.metric(
            f"daemon_growth_{tag}_{counts[0]}_{counts[-1]}",
            f"(d) daemon PSS growth per container, {counts[0]} to {counts[-1]}, {phase}",
            "MB",
        )
        if len(counts) > 1
        else None
    )
    order = daemons if phase == "fresh" else daemons[::-1]
    for d in order:
        time.sleep(IDLE_SETTLE)  # past liner's heap trimmer (1 s after the last bulk call)
        idle = mem_kb(d.pid).get("pss", 0) / 1024
        idle_pss.add(d.name, idle)
        ids: list[str] = []
        at: dict[int, float] = {}
        for n in sorted(counts):
            for k in range(len(ids), n):
                cid = f"mem-{tag}-{k}"
                d.ctr("run", "-d", images.busybox, cid, "/bin/sleep", "3600")
                ids.append(cid)
            mem = mem_kb(d.pid)
            helpers = d.helpers()
            if len(helpers) != n:
                log(f"{d.name}: {len(helpers)} helpers for {n} containers")
            h_pss = pss_mb(helpers)
            z_pss = pss_mb(d.zygotes())
            if z_pss:
                zygote.add(d.name, z_pss)
            at[n] = mem.get("pss", 0) / 1024
            r = rows[n]
            r["daemon"].add(d.name, at[n])
            r["helpers"].add(d.name, h_pss)
            r["node"].add(d.name, at[n] + h_pss + z_pss)
            r["rss"].add(d.name, mem.get("rss", 0) / 1024)
            r["growth"].add(d.name, (at[n] - idle) / n)
            r["file"].add(d.name, mem.get("pss_file", 0) / 1024)
            log(
                f"node memory {phase} {d.name} {n} running: daemon {at[n]:.1f} + helpers "
                f"{h_pss:.1f} + zygote {z_pss:.1f} MB (daemon idle {idle:.1f}; daemon PSS anon "
                f"{mem.get('pss_anon', 0) / 1024:.1f}, file {mem.get('pss_file', 0) / 1024:.1f}; "
                f"RSS {mem.get('rss', 0) / 1024:.1f})"
            )
        if slope is not None:
            slope.add(d.name, (at[counts[-1]] - at[counts[0]]) / (counts[-1] - counts[0]))
        for cid in ids:
            d.ctr("tasks", "kill", "-s", "SIGKILL", cid)
        wait_stopped(d, ids, timeout=120)
        for cid in ids:
            d.ctr("tasks", "rm", cid)
            d.ctr("containers", "rm", cid)


def bench_cli(daemons: list[Daemon], res: Results, runs: int) -> None:
    """(e) `ctr version`, `ctr images ls` against each; `liner version` / `liner images ls`."""
    v = res.metric("ctr_version", "(e) ctr version", "ms")
    ls = res.metric("ctr_images_ls", "(e) ctr images ls", "ms")
    lv = res.metric("liner_version", "(e) liner version", "ms", versus="ctr_version")
    lls = res.metric("liner_images_ls", "(e) liner images ls", "ms", versus="ctr_images_ls")
    liner = next(d for d in daemons if isinstance(d, LinerDaemon))
    for i in range(runs):
        for d in alternate(daemons, i):
            v.add(d.name, d.timed_ctr("version"))
            ls.add(d.name, d.timed_ctr("images", "ls"))
        res.sample(lv, "liner", lambda: liner.liner("version"))
        res.sample(lls, "liner", lambda: liner.liner("images", "ls"))


# ------------------------------------------------------------------------------- load check


def load_check(liner: LinerDaemon, reg: Registry, images: Images, smoke: bool) -> dict[str, Any]:
    """50 concurrent Transfer pulls of one image (each blob fetched once?); 100 run --rm leaks."""
    from liner.client import Client

    out: dict[str, Any] = {}
    liner.clean()
    tag, ref = next(iter(images.pulls.items()))
    proxy = ThrottlingProxy(reg.host)
    try:
        via = ref.replace(reg.host, proxy.host, 1)
        errors: list[str] = []

        def pull() -> None:
            try:
                with Client(liner.address, NS) as c:
                    for _ in c.pull(via, plain_http=True):
                        pass
            except Exception as e:
                errors.append(repr(e))

        n = 20 if smoke else 50
        threads = [threading.Thread(target=pull) for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        gets = Counter(
            s.path.rsplit("/", 1)[-1] for s in proxy.served if "/blobs/" in s.path and s.sent > 0
        )
        manifest_gets = sum(1 for s in proxy.served if "/manifests/" in s.path)
    finally:
        proxy.stop()
    once = bool(gets) and all(c == 1 for c in gets.values())
    out["concurrent_pulls"] = {
        "image": tag,
        "pulls": n,
        "wall_s": round(wall, 3),
        "errors": errors[:5],
        "error_count": len(errors),
        "blob_gets": dict(gets),
        "manifest_requests": manifest_gets,
        "each_blob_once": once,
    }
    print(
        f"load: {n} concurrent pulls of {tag} in {wall:.2f}s, {len(errors)} errors; "
        f"blob GETs {sorted(gets.values())} -> each blob once: {once}; "
        f"manifest requests {manifest_gets}"
    )
    liner.clean()
    liner.ctr("images", "pull", "--plain-http", images.busybox)
    pause = 0.2 if smoke else 1.0
    for k in range(2 if smoke else 5):  # warm up caches before counting
        liner.ctr("run", "--rm", images.busybox, f"warm-{k}", "/bin/true")
    time.sleep(pause)
    before = proc_counts(liner.pid, liner.d.base)
    helpers_before = len(liner.helpers())
    runs = 10 if smoke else 100
    t0 = time.perf_counter()
    for k in range(runs):
        liner.ctr("run", "--rm", images.busybox, f"leak-{k}", "/bin/true")
    wall = time.perf_counter() - t0
    time.sleep(pause)
    after = proc_counts(liner.pid, liner.d.base)
    leaks = {k: after[k] - before[k] for k in ("fds", "threads", "mounts")}
    out["run_rm_leaks"] = {
        "runs": runs,
        "wall_s": round(wall, 3),
        "before": before,
        "after": after,
        "helpers_before": helpers_before,
        "helpers_after": len(liner.helpers()),
        "rss_growth_kb": after["rss_kb"] - before["rss_kb"],
        "leak_free": all(v <= 0 for v in leaks.values()),
    }
    print(
        f"load: {runs} run --rm in a row ({wall:.1f}s): linerd before {before}, after {after}; "
        f"conmons {helpers_before} -> {len(liner.helpers())}"
    )
    return out


# ------------------------------------------------------------------------------- profiling


def _py_spy() -> str:
    """The venv's py-spy (the dev extra installs it), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


@contextlib.contextmanager
def py_spy(binary: str, pid: int, out: Path) -> Iterator[None]:
    """py-spy record linerd (collapsed stacks, native frames off, idle frames off) meanwhile."""
    proc = subprocess.Popen(
        [
            binary,
            "record",
            "-p",
            str(pid),
            "--format",
            "raw",
            "-o",
            str(out),
            "--rate",
            "200",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def top_frames(raw: Path, n: int = 15) -> list[tuple[str, float]]:
    """Self time per function (share of samples) from a py-spy raw (collapsed) profile."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    return [(frame, c / total) for frame, c in own.most_common(n)] if total else []


def profile_liner(liner: LinerDaemon, images: Images, binary: str, out_dir: Path) -> None:
    """One profiled ctr pull per image, one `liner images pull`, 10 `ctr run --rm`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    liner.clean()
    jobs: list[tuple[str, Callable[[], object]]] = []
    for tag, ref in images.pulls.items():
        jobs.append(
            (f"ctr-pull-{tag}", lambda ref=ref: liner.ctr("images", "pull", "--plain-http", ref))
        )
        jobs.append(
            (
                f"liner-pull-{tag}",
                lambda ref=ref: liner.liner(
                    "images", "pull", "--plain-http", "--progress", "quiet", ref
                ),
            )
        )

    def runs() -> None:
        liner.ctr("images", "pull", "--plain-http", images.busybox)
        for k in range(10):
            liner.ctr("run", "--rm", images.busybox, f"prof-{k}", "/bin/true")

    jobs.append(("ctr-run-rm-x10", runs))
    for name, job in jobs:
        raw = out_dir / f"{name}.txt"
        with py_spy(binary, liner.pid, raw):
            job()
        if "pull" in name:
            liner.clean()
        print(f"profile {name}: {raw}")
        for frame, share in top_frames(raw):
            print(f"  {share * 100:5.1f}%  {frame}")


# ------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    for name, argv in {
        "containerd": ["containerd", "--version"],
        "ctr": ["ctr", "--version"],
        "runc": ["runc", "--version"],
        "conmon": ["conmon", "--version"],
    }.items():
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out[name] = subprocess.run(
                argv, capture_output=True, text=True, check=True
            ).stdout.splitlines()[0]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out["liner_git"] = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return out


def scale_profiler(binary: str, out_dir: Path | None) -> scale.Profiler:
    """(g) with --scale-profile: py-spy linerd while it is measured under load."""

    def profile(what: str, pid: int) -> contextlib.AbstractContextManager[None]:
        if out_dir is None or not what.endswith("liner"):
            return contextlib.nullcontext()
        out_dir.mkdir(parents=True, exist_ok=True)
        return py_spy(binary, pid, out_dir / f"scale-{what}.txt")

    return profile


def add_outcome(res: Results, outcome: scale.Outcome) -> None:
    for key, label, unit, daemon, value in outcome.samples:
        res.metric(key, label, unit).add(daemon, value)
    res.errors += outcome.errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny images, 2 runs each, fast")
    p.add_argument("--tmpfs", action="store_true", help="both daemons' roots on tmpfs")
    p.add_argument("--load", action="store_true", help="add the load check (liner only)")
    p.add_argument("--no-containerd", action="store_true", help="measure liner alone")
    p.add_argument("--runs", type=int, help="runs of (a) and (c) (default 5; smoke 2)")
    p.add_argument("--quick-runs", type=int, help="runs of (b) and (e) (default 20; smoke 2)")
    p.add_argument("--settle", type=float, default=0.0, help="seconds to wait after each clean")
    p.add_argument("--cache", type=Path, default=REPO / "bench" / "cache")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument(
        "--only",
        default="a,b,c,e,f,h",
        help="of a,b,c,e,f,g,h (d is taken with c; g: scale, only when named; h: pulls)",
    )
    p.add_argument("--no-large", action="store_true", help="(h) without the large image")
    p.add_argument(
        "--containers",
        help=f"running containers at which (d) samples node memory (default {N_MEMORY}; smoke 2)",
    )
    p.add_argument("--pods", type=int, help=f"pods of (f) (default {N_PODS}; smoke 2)")
    p.add_argument("--pod-containers", type=int, default=1, help="containers per pod in (f)")
    p.add_argument(
        "--pod-pid",
        choices=["pod", "container"],
        default="pod",
        help="pid namespace of (f)'s pods: pod (shared, critest's; liner runs a pause) or "
        "container (kubelet's default; liner runs no pause)",
    )
    p.add_argument(
        "--cri-pulls", type=int, help=f"images pulled in (f) (default {N_CRI_PULLS}; smoke 2)"
    )
    p.add_argument(
        "--list-at", type=int, help=f"running containers for (f)'s Lists (default {cri.LIST_AT})"
    )
    p.add_argument(
        "--relist", type=float, help=f"seconds of (f)'s relist (default {cri.RELIST_SECONDS})"
    )
    p.add_argument("--scale", type=int, default=200, help="containers running in (g)")
    p.add_argument("--scale-writers", type=int, default=10, help="writer clients in (g)")
    p.add_argument("--scale-seconds", type=float, default=30.0, help="seconds measured in (g)")
    p.add_argument("--scale-cri", choices=("on", "off"), default="on", help="(g)'s CRI part")
    p.add_argument("--scale-api", choices=("on", "off"), default="on", help="(g)'s ctr part")
    p.add_argument("--scale-profile", type=Path, help="py-spy linerd during (g) into DIR")
    p.add_argument("--profile", type=Path, help="also py-spy linerd (pulls, run --rm) into DIR")
    p.add_argument("--py-spy", default=_py_spy(), help="py-spy binary")
    p.add_argument("--workdir", type=Path, help="parent of the daemons' dirs (default: "
                   "/var/tmp on disk, /dev/shm with --tmpfs)")  # fmt: skip
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (overlay mounts, runc, unshare)")
    only = set(args.only.split(","))
    runs = args.runs or (2 if args.smoke else 5)
    quick = args.quick_runs or (2 if args.smoke else 20)
    n_detached = 2 if args.smoke else N_DETACHED
    counts = sorted(
        {int(x) for x in (args.containers or ("2" if args.smoke else N_MEMORY)).split(",")}
    )
    shape = cri.Shape(
        pods=args.pods or (2 if args.smoke else N_PODS),
        per_pod=args.pod_containers,
        pod_pid=args.pod_pid,
        pulls=args.cri_pulls if args.cri_pulls is not None else 2 if args.smoke else N_CRI_PULLS,
        list_at=args.list_at if args.list_at is not None else 4 if args.smoke else cri.LIST_AT,
        relist=args.relist if args.relist is not None else 3 if args.smoke else cri.RELIST_SECONDS,
    )
    # ctr's daemons and the images are only needed by a-e, the load check and the profile
    with_ctr = bool(only & {"a", "b", "c", "e", "g", "h"}) or args.load or bool(args.profile)
    cri_missing = cri.missing() if only & {"f", "g"} else ""
    if cri_missing:
        log(f"(f) left out: {cri_missing}")
    use_containerd = not args.no_containerd and shutil.which("containerd") is not None
    if not args.no_containerd and not use_containerd:
        log("containerd is not installed: measuring liner alone")

    args.cache.mkdir(parents=True, exist_ok=True)
    # (g) alone runs busybox only: the deb images are for the pulls of a-e and h
    small = args.smoke or not (only & {"a", "b", "c", "e", "h"} or args.load or args.profile)
    layout, meta = build_images(args.cache, small) if with_ctr else (None, {"tags": {}})
    parent = args.workdir or Path("/dev/shm" if args.tmpfs else "/var/tmp")
    work = Path(tempfile.mkdtemp(prefix="liner-bench-", dir=parent))
    started = datetime.datetime.now(datetime.UTC)
    res = Results()
    load: dict[str, Any] | None = None
    daemons: list[Daemon] = []
    reg_dir = args.cache / ("registry-smoke" if small else "registry")
    reg_dir.mkdir(exist_ok=True)
    reg = Registry("open", workdir=reg_dir)
    try:
        reg.start()
        log(f"registry on {reg.host}; daemons under {work}")
        if with_ctr:
            assert layout is not None
            images = push_images(reg, layout, meta, small)
            liner = LinerDaemon(work / "liner")
            daemons.append(liner)
            if use_containerd:
                daemons.append(ContainerdDaemon(work / "containerd"))
            if "c" in only:  # (d) on fresh daemons: only busybox pulled
                for d in daemons:
                    d.ctr("images", "pull", "--plain-http", images.busybox)
                node_memory(daemons, images, res, counts, "fresh")
            if "a" in only:
                bench_pulls(daemons, images, res, runs, args.settle)
                bench_liner_pull(liner, images, res, runs, args.settle)
            for d in daemons:
                d.ctr("images", "pull", "--plain-http", images.busybox)
            if "c" in only and "a" in only:
                node_memory(daemons, images, res, counts, "after pulls")
            if "b" in only:
                bench_run_rm(daemons, images, res, quick)
            if "c" in only:
                bench_detached(daemons, images, res, runs, n_detached)
            if "e" in only:
                bench_cli(daemons, res, quick)
            if "h" in only:
                meta["tags"].update(pulls.bench(
                    daemons, liner, reg, images.pulls, args.cache, res, runs,
                    large=not args.no_large, smoke=args.smoke,
                    quiesce=lambda d: quiesce(d, args.settle), log=log,
                ))  # fmt: skip
            if args.load:
                load = load_check(liner, reg, images, args.smoke)
            if args.profile:
                profile_liner(liner, images, args.py_spy, args.profile)
            if "g" in only:
                for d in daemons:  # (h) removes every image between its runs
                    d.ctr("images", "pull", "--plain-http", images.busybox)
                gl = scale.Load(args.scale, args.scale_writers, args.scale_seconds)
                prof = scale_profiler(args.py_spy, args.scale_profile)
                if args.scale_api == "on":
                    add_outcome(res, scale.bench_api(daemons, images.busybox, gl, log, prof))
                if args.scale_cri == "on" and not cri_missing:
                    add_outcome(res, scale.bench_cri(reg, work, gl, use_containerd, log, prof))
        if "f" in only and not cri_missing:
            outcome = cri.bench_cri(reg, work, shape, use_containerd, log)
            for x in outcome.samples:
                res.metric(x.key, x.label, x.unit).add(x.daemon, x.value)
            res.errors += outcome.errors
    finally:
        for d in daemons:
            with contextlib.suppress(Exception):
                d.clean()
            d.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    doc = {
        "started": started.isoformat(timespec="seconds"),
        "mode": {
            "smoke": args.smoke,
            "tmpfs": args.tmpfs,
            "containerd": use_containerd,
            "runs": runs,
            "quick_runs": quick,
            "detached": n_detached,
            "memory_containers": counts,
            "settle_s": args.settle,
            "only": sorted(only),
            "cri": "f" in only and not cri_missing,
            "pods": shape.pods,
            "pod_containers": shape.per_pod,
            "pod_pid": shape.pod_pid,
            "cri_pulls": shape.pulls,
            "cri_list_at": shape.list_at,
            "cri_relist_seconds": shape.relist,
            "scale": {
                "running": args.scale,
                "writers": args.scale_writers,
                "seconds": args.scale_seconds,
                "cri": args.scale_cri,
            }
            if "g" in only
            else None,
        },
        "machine": {"cpus": os.cpu_count(), **versions()},
        "images": meta["tags"],
        "metrics": res.to_json(),
        "load": load,
        "errors": res.errors,
    }
    print(res.table())
    if res.errors:
        print(f"{len(res.errors)} samples failed and were skipped (see the JSON's errors)")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if args.smoke else "-tmpfs" if args.tmpfs else ""
    out = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
