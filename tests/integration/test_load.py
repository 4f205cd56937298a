"""Load: many records, running containers, concurrent pulls and churning subscribers at once.

One daemon, one namespace. While, concurrently,

* 200 container records are made (Containers/Create with a small spec, no task),
* 20 pulls of the same image run at once (threads through Transfer/Pull, via a counting proxy),
* 50 containers running ``sleep 300`` are started once the image is in,
* 10 event subscribers connect, read a little and drop (cancelled calls, and closed channels),

Containers/List is timed (p50/p99 printed; only a generous p99 bound is asserted: performance
goals are reported, not asserted). Afterwards everything is removed and linerd's RSS, fds and
threads are compared with their values after a warm-up: memory must not have grown by more than
a generous margin, fds and threads must be back near where they were, and no conmon or mount is
left.

The issue's numbers are used as they are: 50 running containers fit (the test body takes ~35 s
on the 2-core CI machine, most of it creating and starting the containers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from imagebuild import BusyboxLayout
from registry import Registry, ThrottlingProxy
from support import Linerd, ns

from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.containerd.types.task import task_pb2
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from liner_common import ocispec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("conmon") or not shutil.which("runc"),
        reason="needs root, conmon and runc",
    ),
]

NS = "load"
RECORDS = 200
RUNNING = 50
PULLS = 20
SUBSCRIBERS = 10
SNAP = "overlayfs"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNTIME = "io.containerd.runc.v2"


def chain_id(layout: BusyboxLayout) -> str:
    chain = ""
    for layer in layout.latest.layers:
        chain = (
            layer.diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {layer.diff_id}".encode()).hexdigest()
        )
    return chain


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def leftovers(base: Path) -> list[str]:
    prefix = str(base)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(prefix + "/"):
            found.append(f"mount {line.split()[4]}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"conmon" in cmd.split(b"\0")[0] and prefix.encode() in cmd:
            found.append(f"conmon {pid}")
    state = base / "state"
    found += [f"bundle {p}" for p in state.glob("tasks/*/*")]
    return found


def spec_any(cid: str, args: list[str]) -> AnyPb:
    spec = ocispec.generate(NS, cid, [ocispec.with_args(args)])
    return AnyPb(type_url=SPEC_URL, value=json.dumps(spec).encode())


class Client:
    def __init__(self, ch: grpc.Channel, parent: str) -> None:
        self.md = ns(NS)
        self.parent = parent
        self.containers = containers_pb2_grpc.ContainersStub(ch)
        self.tasks = tasks_pb2_grpc.TasksStub(ch)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(ch)
        self.leases = leases_pb2_grpc.LeasesStub(ch)
        self.images = images_pb2_grpc.ImagesStub(ch)

    def record(self, cid: str) -> None:
        self.containers.Create(
            containers_pb2.CreateContainerRequest(
                container=containers_pb2.Container(
                    id=cid,
                    image="load/busybox:latest",
                    labels={"load": "record"},
                    runtime=containers_pb2.Container.Runtime(name=RUNTIME),
                    spec=spec_any(cid, ["true"]),
                )
            ),
            metadata=self.md,
            timeout=30,
        )

    def run(self, cid: str) -> int:
        lease = self.leases.Create(leases_pb2.CreateRequest(), metadata=self.md).lease.id
        md = ns(NS, lease)
        try:
            mounts = self.snapshots.Prepare(
                snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAP, key=cid, parent=self.parent),
                metadata=md,
            ).mounts
            self.containers.Create(
                containers_pb2.CreateContainerRequest(
                    container=containers_pb2.Container(
                        id=cid,
                        image="load/busybox:latest",
                        labels={"load": "running"},
                        runtime=containers_pb2.Container.Runtime(name=RUNTIME),
                        spec=spec_any(cid, ["sleep", "300"]),
                        snapshotter=SNAP,
                        snapshot_key=cid,
                    )
                ),
                metadata=md,
            )
        finally:
            self.leases.Delete(leases_pb2.DeleteRequest(id=lease), metadata=self.md)
        self.tasks.Create(
            tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=mounts),
            metadata=self.md,
            timeout=60,
        )
        return self.tasks.Start(
            tasks_pb2.StartRequest(container_id=cid), metadata=self.md, timeout=60
        ).pid

    def stop(self, cid: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self.tasks.Kill(
                tasks_pb2.KillRequest(container_id=cid, signal=9, all=True), metadata=self.md
            )
        self.tasks.Wait(tasks_pb2.WaitRequest(container_id=cid), metadata=self.md, timeout=30)
        self.tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=self.md)
        self.snapshots.Remove(
            snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAP, key=cid), metadata=self.md
        )

    def quiet_stop(self, cid: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self.stop(cid)

    def list_ids(self) -> set[str]:
        listed = self.containers.List(
            containers_pb2.ListContainersRequest(), metadata=self.md, timeout=30
        )
        return {c.id for c in listed.containers}


def pull(d: Linerd, ref: str, namespace: str) -> transfer_pb2.PullProgress:
    with d.channel() as ch:
        stub = transfer_pb2_grpc.TransferStub(ch)
        req = transfer_pb2.PullRequest(reference=ref, plain_http=True)
        return list(stub.Pull(req, metadata=ns(namespace), timeout=120))[-1]


class Subscribers:
    """`n` threads that subscribe, read for a moment and drop, over and over."""

    def __init__(self, d: Linerd, n: int) -> None:
        self.d = d
        self.stop = threading.Event()
        self.cycles = 0
        self.events = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(n)]
        for t in self._threads:
            t.start()

    def _loop(self, i: int) -> None:
        rng = random.Random(i)
        ch = self.d.channel()
        try:
            while not self.stop.is_set():
                stub = events_pb2_grpc.EventsStub(ch)
                call = stub.Subscribe(
                    events_pb2.SubscribeRequest(filters=[f'namespace=="{NS}"']), metadata=ns(NS)
                )
                # Every third time drop the whole connection, else cancel the call.
                close_channel = rng.random() < 0.33
                timer = threading.Timer(
                    rng.uniform(0.05, 0.4), ch.close if close_channel else call.cancel
                )
                timer.start()
                got = 0
                try:
                    for _ in call:
                        got += 1
                except grpc.RpcError as e:
                    if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                        self.errors.append(f"{e.code()}: {e.details()}")
                except ValueError:
                    pass  # closed channel
                timer.join()
                with self._lock:
                    self.cycles += 1
                    self.events += got
                if close_channel:
                    ch = self.d.channel()
        finally:
            ch.close()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(10)
            assert not t.is_alive(), "a subscriber thread is stuck"


class Sampler:
    """Containers/List back to back until stopped (and at least `least` calls made)."""

    def __init__(self, client: Client, least: int = 100) -> None:
        self.client = client
        self.least = least
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self) -> None:
        deadline = None
        while len(self.latencies) < self.least or not self.stop.is_set():
            if self.stop.is_set():
                deadline = deadline or time.monotonic() + 15
                if time.monotonic() > deadline:
                    return
            t0 = time.monotonic()
            self.client.list_ids()
            self.latencies.append(time.monotonic() - t0)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Linerd]:
    d = Linerd(tmp_path, log_level="info")
    d.start()
    yield d
    d.stop()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[ThrottlingProxy]:
    p = ThrottlingProxy(registry.host)
    yield p
    p.stop()


def settle(pid: int, baseline: dict[str, int], timeout: float = 10) -> dict[str, int]:
    """linerd's stats once fds and threads are back near the baseline (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        now = proc_stats(pid)
        near = now["fds"] <= baseline["fds"] + 8 and now["threads"] <= baseline["threads"] + 8
        if near or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def test_load(
    daemon: Linerd,
    registry: Registry,
    proxy: ThrottlingProxy,
    busybox_layout: BusyboxLayout,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    ch = daemon.channel()
    client = Client(ch, chain_id(busybox_layout))

    # Warm up (imports, pools, caches): one pull elsewhere, one container run and removed.
    assert pull(daemon, registry.ref("library/busybox:zstd"), "warmup").done
    assert pull(daemon, registry.ref("library/busybox:uncompressed"), NS).done
    client.run("warmup")
    client.stop("warmup")
    client.containers.Delete(containers_pb2.DeleteContainerRequest(id="warmup"), metadata=client.md)
    client.images.Delete(
        images_pb2.DeleteImageRequest(name=registry.ref("library/busybox:uncompressed"), sync=True),
        metadata=client.md,
    )
    for _ in range(5):
        client.list_ids()
    baseline = settle(pid, proc_stats(pid), timeout=1)
    warm = time.monotonic() - started

    # The load.
    subscribers = Subscribers(daemon, SUBSCRIBERS)
    sampler = Sampler(client)
    records = [f"rec-{i:03}-{uuid.uuid4().hex[:4]}" for i in range(RECORDS)]
    running = [f"run-{i:02}-{uuid.uuid4().hex[:4]}" for i in range(RUNNING)]
    image = f"{proxy.host}/library/busybox:latest"
    try:
        with ThreadPoolExecutor(PULLS + 4) as pool:
            pulls = [pool.submit(pull, daemon, image, NS) for _ in range(PULLS)]
            made = [pool.submit(client.record, cid) for cid in records]
            finals = [f.result(timeout=120) for f in pulls]
            pulled = time.monotonic() - started
            pids = list(pool.map(client.run, running, timeout=120))
            for f in made:
                f.result(timeout=60)
        loaded = time.monotonic() - started
        time.sleep(0.5)  # a few more samples with everything in place
        sampler.close()  # returns once it has ~100 samples (the rest with everything in place)
    finally:
        sampler.close()
        subscribers.close()

    try:
        # Every pull succeeded with the same image; each blob left the registry once.
        assert all(f.done for f in finals)
        assert {f.target.digest for f in finals} == {busybox_layout.latest.manifest.digest}
        blob_gets: dict[str, int] = {}
        for s in proxy.served:
            if "/blobs/" in s.path and s.status in (200, 206):
                digest = s.path.rsplit("/", 1)[-1]
                blob_gets[digest] = blob_gets.get(digest, 0) + 1
        layers = {layer.digest for layer in busybox_layout.latest.layers}
        assert layers <= set(blob_gets), blob_gets
        assert all(n == 1 for n in blob_gets.values()), blob_gets

        assert set(records) | set(running) <= client.list_ids()
        tasks = client.tasks.List(tasks_pb2.ListTasksRequest(), metadata=client.md).tasks
        states = {t.id: (t.pid, t.status) for t in tasks}
        for cid, task_pid in zip(running, pids, strict=True):
            assert states[cid] == (task_pid, task_pb2.Status.RUNNING)
        assert not subscribers.errors, subscribers.errors[:5]
        assert subscribers.cycles >= SUBSCRIBERS * 2

        lat = sampler.latencies
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        peak = proc_stats(pid)
    finally:
        # Clean up everything, whatever failed above.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client.quiet_stop, running))
        for cid in records + running:
            with contextlib.suppress(grpc.RpcError):
                client.containers.Delete(
                    containers_pb2.DeleteContainerRequest(id=cid), metadata=client.md
                )
        with contextlib.suppress(grpc.RpcError):
            client.images.Delete(
                images_pb2.DeleteImageRequest(name=image, sync=True), metadata=client.md
            )
    assert client.list_ids() == set()
    assert list(client.tasks.List(tasks_pb2.ListTasksRequest(), metadata=client.md).tasks) == []
    ch.close()
    after = settle(pid, baseline)
    left = leftovers(daemon.base)
    total = time.monotonic() - started

    with capsys.disabled():
        print(
            f"\n[load] {RECORDS} records, {RUNNING} running, {PULLS} pulls, "
            f"{SUBSCRIBERS} subscribers ({subscribers.cycles} connect/drop cycles, "
            f"{subscribers.events} events)\n"
            f"[load] Containers/List: {len(lat)} calls, p50 {p50 * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms, "
            f"mean {statistics.mean(lat) * 1000:.1f} ms\n"
            f"[load] linerd baseline {baseline}, peak {peak}, after {after}\n"
            f"[load] warm-up {warm:.1f}s, pulls done {pulled:.1f}s, loaded {loaded:.1f}s, "
            f"total {total:.1f}s"
        )

    assert len(lat) >= 80, f"only {len(lat)} List samples"
    # Generous: a burst at the start (20 pulls, 200 creates, 10 subscribers at once) has been
    # seen to stall one call ~2-3 s on the 2-core CI machine; a stuck daemon would time out.
    assert p99 < 3.0, f"Containers/List p99 {p99:.3f}s"
    assert max(lat) < 15.0, f"Containers/List max {max(lat):.3f}s"
    assert after["rss_kb"] - baseline["rss_kb"] < 100 * 1024, (baseline, after)
    assert after["fds"] <= baseline["fds"] + 8, (baseline, after)
    assert after["threads"] <= baseline["threads"] + 8, (baseline, after)
    assert not left, left
