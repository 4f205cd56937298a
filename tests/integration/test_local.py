"""The local services called directly, as a second front door (the CRI) will: no gRPC, no
request context, on real stores (a SQLite file, a content store and snapshotters in a
temporary root; real runc for tasks).

For each mutating call: the events published on the exchange (what the gRPC tests see in
Events/Subscribe) and what was asked of the garbage collector (`schedule` or a synchronous
`collect`, through its observer hook; its background loop never runs here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from liner_api.containerd.events import (
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
)
from liner_api.containerd.runc.v1 import options_pb2
from liner_common import ocispec
from linerd.assembly import Core, build_core
from linerd.config import Config
from linerd.core.types import Container, Descriptor, Encoded, Image, LeaseResource
from linerd.errdefs import InvalidArgument, NotFound, OutOfRange
from linerd.events import Event
from linerd.local.tasks import Stdio
from linerd.metrics import Metrics
from linerd.remotes.hosts import HostsConfig

pytestmark = pytest.mark.integration

_MODULES = (container_pb2, content_pb2, image_pb2, namespace_pb2, snapshot_pb2, task_pb2)
_END = "/test/end"


def decode(event: Event) -> Message:
    """The event message its type URL names (`containerd.events.ImageCreate`)."""
    name = event.type_url.rsplit(".", 1)[-1]
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name).FromString(event.payload)
    raise AssertionError(f"unknown event type {event.type_url}")


class Observed:
    """Events from the exchange and calls to the collector, since the last `take`."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._events: list[Event] = []
        self._arrived = asyncio.Event()
        self.gc: list[str] = []
        core.gc.observe(self.gc.append)
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        subscription = self._core.events.subscribe()
        self._pump = asyncio.create_task(self._read(subscription))
        # The pump's first step registers its queue; it runs before control comes back here.
        await asyncio.sleep(0)

    async def _read(self, subscription: AsyncIterator[Event]) -> None:
        async for event in subscription:
            self._events.append(event)
            self._arrived.set()

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()

    async def until(self, topic: str, timeout: float = 30) -> None:
        """Wait for an event on `topic` (an exit arrives when the process ends)."""

        async def seen() -> None:
            while not any(e.topic == topic for e in self._events):
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(seen(), timeout)

    async def take(self) -> tuple[list[tuple[str, str, Message]], list[str]]:
        """Everything published so far (as (namespace, topic, message)) and the collector
        calls; then starts afresh. A marker event ends the batch, so none is missed."""
        self._core.events.publish("-", _END, "end", b"")
        await self.until(_END)
        end = next(i for i, e in enumerate(self._events) if e.topic == _END)
        events, self._events = self._events[:end], self._events[end + 1 :]
        gc, self.gc[:] = list(self.gc), []
        return [(e.namespace, e.topic, decode(e)) for e in events], gc


@asynccontextmanager
async def opened(tmp: Path) -> AsyncIterator[tuple[Core, Observed]]:
    config = Config(root=str(tmp / "root"), state=str(tmp / "state"))
    for directory in (config.root, config.state):
        Path(directory).mkdir()
    hosts = HostsConfig.from_dict({})
    core = await asyncio.to_thread(build_core, config, lambda: hosts, Metrics())
    observed = Observed(core)
    await observed.start()
    try:
        yield core, observed
    finally:
        await observed.stop()
        await core.runtime.close()
        core.db.close()


def run(tmp: Path, body: Callable[[Core, Observed], Awaitable[None]]) -> None:
    async def main() -> None:
        async with opened(tmp) as (core, observed):
            await body(core, observed)

    asyncio.run(main())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- namespaces --------------------------------------------------------------------------------


def test_namespaces(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        ns = core.local.namespaces
        await ns.create("n1", {"a": "1"})
        assert await seen.take() == (
            [
                (
                    "n1",
                    "/namespaces/create",
                    namespace_pb2.NamespaceCreate(name="n1", labels={"a": "1"}),
                )
            ],
            [],
        )
        await ns.update("n1", {"a": "2"}, ["labels"])
        assert await seen.take() == (
            [
                (
                    "n1",
                    "/namespaces/update",
                    namespace_pb2.NamespaceUpdate(name="n1", labels={"a": "2"}),
                )
            ],
            [],
        )
        await ns.delete("n1")
        assert await seen.take() == (
            [("n1", "/namespaces/delete", namespace_pb2.NamespaceDelete(name="n1"))],
            [],
        )
        with pytest.raises(NotFound):
            await ns.delete("n1")
        assert await seen.take() == ([], [])

    run(tmp_path, body)


# -- leases ------------------------------------------------------------------------------------


def test_leases(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        leases = core.local.leases
        await leases.create("ns", "l1", {})
        resource = LeaseResource(id="sha256:" + "0" * 64, type="content")
        await leases.add_resource("ns", "l1", resource)
        assert await seen.take() == ([], [])
        await leases.delete_resource("ns", "l1", resource)
        assert await seen.take() == ([], ["schedule"])
        await leases.delete("ns", "l1")
        assert await seen.take() == ([], ["schedule"])
        await leases.create("ns", "l2", {})
        await leases.delete("ns", "l2", sync=True)
        assert await seen.take() == ([], ["collect"])
        assert [lease.id for lease in await leases.list("ns")] == []

    run(tmp_path, body)


# -- content -----------------------------------------------------------------------------------


async def write_blob(core: Core, namespace: str, data: bytes, lease: str | None = None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    writer = await core.local.content.writer(namespace, unique("ref"), len(data), digest, lease)
    try:
        await writer.write(0, data, len(data))
        await writer.commit(len(data), digest, {"containerd.io/gc.root": "x"})
    finally:
        writer.close()
    return digest


def test_content(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        content = core.local.content
        data = b"a small blob, served from memory once read"
        digest = await write_blob(core, "ns", data)
        assert await seen.take() == ([], [])

        async def read(offset: int = 0, size: int = 0) -> bytes:
            return b"".join([c async for c in await content.read("ns", digest, offset, size)])

        assert await read() == data
        assert await read() == data  # from memory now
        assert await read(2, 5) == data[2:7]
        assert await read(len(data)) == b""
        with pytest.raises(OutOfRange):
            await read(len(data) + 1)
        with pytest.raises(NotFound):
            await content.read("other", digest)

        info = await content.update("ns", digest, {"x": "1"}, ["labels.x"])
        assert info.labels["x"] == "1"
        assert await seen.take() == ([], [])

        await content.delete("ns", digest)
        assert await seen.take() == (
            [("ns", "/content/delete", content_pb2.ContentDelete(digest=digest))],
            ["schedule"],
        )
        with pytest.raises(NotFound):
            await content.read("ns", digest)

    run(tmp_path, body)


# -- images ------------------------------------------------------------------------------------


def test_images(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        images = core.local.images
        target = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "1" * 64, 2)
        await images.create("ns", Image("docker.io/x/y:1", target, {"k": "v"}))
        assert await seen.take() == (
            [
                (
                    "ns",
                    "/images/create",
                    image_pb2.ImageCreate(name="docker.io/x/y:1", labels={"k": "v"}),
                )
            ],
            [],
        )
        await images.update("ns", Image("docker.io/x/y:1", target, {"k": "w"}), ["labels"])
        assert await seen.take() == (
            [
                (
                    "ns",
                    "/images/update",
                    image_pb2.ImageUpdate(name="docker.io/x/y:1", labels={"k": "w"}),
                )
            ],
            ["schedule"],
        )
        await images.delete("ns", "docker.io/x/y:1")
        assert await seen.take() == (
            [("ns", "/images/delete", image_pb2.ImageDelete(name="docker.io/x/y:1"))],
            ["schedule"],
        )
        await images.create("ns", Image("docker.io/x/y:2", target))
        await seen.take()
        await images.delete("ns", "docker.io/x/y:2", sync=True)
        assert await seen.take() == (
            [("ns", "/images/delete", image_pb2.ImageDelete(name="docker.io/x/y:2"))],
            ["collect"],
        )

    run(tmp_path, body)


# -- containers --------------------------------------------------------------------------------


SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"


def test_containers(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        containers = core.local.containers
        options = Encoded(
            RUNC_OPTIONS_URL, options_pb2.Options(binary_name="runc").SerializeToString()
        )
        container = Container(
            id="c1",
            runtime="io.containerd.runc.v2",
            spec=Encoded(SPEC_URL, b"{}"),
            runtime_options=options,
            image="docker.io/x/y:1",
        )
        await containers.create("ns", container)
        events, gc = await seen.take()
        assert gc == []
        [(namespace, topic, created)] = events
        assert (namespace, topic) == ("ns", "/containers/create")
        assert isinstance(created, container_pb2.ContainerCreate)
        assert (created.id, created.image, created.runtime.name) == (
            "c1",
            "docker.io/x/y:1",
            "io.containerd.runc.v2",
        )
        assert created.runtime.options.type_url == RUNC_OPTIONS_URL
        assert created.runtime.options.value == options.value

        container.labels = {"l": "1"}
        await containers.update("ns", container, ["labels"])
        assert await seen.take() == (
            [
                (
                    "ns",
                    "/containers/update",
                    container_pb2.ContainerUpdate(
                        id="c1", image="docker.io/x/y:1", labels={"l": "1"}
                    ),
                )
            ],
            ["schedule"],
        )
        await containers.delete("ns", "c1")
        assert await seen.take() == (
            [("ns", "/containers/delete", container_pb2.ContainerDelete(id="c1"))],
            ["schedule"],
        )

    run(tmp_path, body)


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshots(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        snaps = core.local.snapshots
        name = snaps.store("").name  # the default snapshotter answers for ""
        await snaps.prepare("ns", "", "k1", "", {}, None)
        assert await seen.take() == (
            [("ns", "/snapshot/prepare", snapshot_pb2.SnapshotPrepare(key="k1", snapshotter=name))],
            [],
        )
        assert await snaps.mounts("ns", "", "k1")
        await snaps.commit("ns", name, "base", "k1", {}, None)
        assert await seen.take() == (
            [
                (
                    "ns",
                    "/snapshot/commit",
                    snapshot_pb2.SnapshotCommit(key="k1", name="base", snapshotter=name),
                )
            ],
            [],
        )
        await snaps.view("ns", "", "v1", "base", {}, None)  # containerd: no event for a view
        await snaps.update("ns", "", "v1", {"x": "1"}, ["labels.x"])
        assert (await snaps.stat("ns", "", "v1")).labels == {"x": "1"}
        assert await seen.take() == ([], [])
        await snaps.remove("ns", "", "v1")
        assert await seen.take() == (
            [("ns", "/snapshot/remove", snapshot_pb2.SnapshotRemove(key="v1", snapshotter=name))],
            ["schedule"],
        )
        with pytest.raises(InvalidArgument):
            await snaps.prepare("ns", "nosuch", "k2", "", {}, None)
        assert await seen.take() == ([], [])

    run(tmp_path, body)


def test_a_lease_passed_in_holds_the_snapshot(tmp_path: Path) -> None:
    async def body(core: Core, seen: Observed) -> None:
        await core.local.leases.create("ns", "l1", {})
        name = core.local.snapshots.store("").name
        await core.local.snapshots.prepare("ns", "", "k1", "", {}, "l1")
        assert await core.local.leases.list_resources("ns", "l1") == [
            LeaseResource(id="k1", type=f"snapshots/{name}")
        ]

    run(tmp_path, body)


# -- tasks (real runc) -------------------------------------------------------------------------

needs_runtime = pytest.mark.skipif(
    shutil.which("runc") is None or not Path("/usr/bin/conmon").exists(),
    reason="runc and conmon are needed to run tasks",
)


async def busybox_container(core: Core, namespace: str, cid: str, args: list[str]) -> None:
    """A native snapshot holding busybox, and a container on it (as `ctr run` makes one)."""
    mounts = await core.local.snapshots.prepare(namespace, "native", cid, "", {}, None)
    rootfs = Path(mounts[0].source)
    (rootfs / "bin").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    spec = ocispec.generate(namespace, cid, [ocispec.with_args(["/bin/busybox", *args])])
    await core.local.containers.create(
        namespace,
        Container(
            id=cid,
            runtime="io.containerd.runc.v2",
            spec=Encoded(SPEC_URL, json.dumps(spec).encode()),
            snapshotter="native",
            snapshot_key=cid,
        ),
    )


def topics(events: list[tuple[str, str, Any]]) -> list[str]:
    return [topic for _, topic, _ in events]


@needs_runtime
def test_task_lifecycle_events_in_order(tmp_path: Path) -> None:
    namespace, cid = unique("local"), unique("c")

    async def body(core: Core, seen: Observed) -> None:
        tasks = core.local.tasks
        await busybox_container(core, namespace, cid, ["true"])
        await seen.take()
        # No rootfs given: the container's snapshot is mounted.
        pid = await tasks.create(namespace, cid, Stdio())
        events, gc = await seen.take()
        assert gc == []
        [(ns, topic, created)] = events
        assert (ns, topic) == (namespace, "/tasks/create")
        assert isinstance(created, task_pb2.TaskCreate)
        assert created.container_id == cid and created.pid == pid
        assert [m.type for m in created.rootfs] == ["bind"]

        assert await tasks.start(namespace, cid) == pid
        await seen.until("/tasks/exit")
        events, _ = await seen.take()
        assert topics(events) == ["/tasks/start", "/tasks/exit"]
        exited = events[1][2]
        assert isinstance(exited, task_pb2.TaskExit)
        assert (exited.container_id, exited.id, exited.pid, exited.exit_status) == (
            cid,
            cid,
            pid,
            0,
        )

        info = await tasks.delete(namespace, cid)
        assert info.exit_status == 0
        assert await seen.take() == (
            [
                (
                    namespace,
                    "/tasks/delete",
                    task_pb2.TaskDelete(
                        container_id=cid,
                        id=cid,
                        pid=pid,
                        exit_status=0,
                        exited_at=exited.exited_at,
                    ),
                )
            ],
            [],
        )
        await core.local.containers.delete(namespace, cid)
        await core.local.snapshots.remove(namespace, "native", cid)

    run(tmp_path, body)


@needs_runtime
def test_task_exec_pause_resume_kill(tmp_path: Path) -> None:
    namespace, cid = unique("local"), unique("c")

    async def body(core: Core, seen: Observed) -> None:
        tasks = core.local.tasks
        await busybox_container(core, namespace, cid, ["sleep", "60"])
        await tasks.create(namespace, cid, Stdio())
        await tasks.start(namespace, cid)
        await seen.take()

        process = ocispec.generate(namespace, cid, [ocispec.with_args(["/bin/busybox", "true"])])
        spec = json.dumps(process["process"]).encode()
        with pytest.raises(InvalidArgument):
            await tasks.exec(namespace, cid, "", spec, Stdio())
        with pytest.raises(InvalidArgument):
            await tasks.exec(namespace, cid, "e1", b"not json", Stdio())
        await tasks.exec(namespace, cid, "e1", spec, Stdio())
        assert await seen.take() == (
            [
                (
                    namespace,
                    "/tasks/exec-added",
                    task_pb2.TaskExecAdded(container_id=cid, exec_id="e1"),
                )
            ],
            [],
        )
        exec_pid = await tasks.start(namespace, cid, "e1")
        await seen.until("/tasks/exit")
        events, _ = await seen.take()
        assert topics(events) == ["/tasks/exec-started", "/tasks/exit"]
        assert events[0][2] == task_pb2.TaskExecStarted(
            container_id=cid, exec_id="e1", pid=exec_pid
        )
        assert (events[1][2].id, events[1][2].pid) == ("e1", exec_pid)
        with pytest.raises(InvalidArgument):
            await tasks.delete_process(namespace, cid, "")
        await tasks.delete_process(namespace, cid, "e1")
        assert await seen.take() == ([], [])

        await tasks.pause(namespace, cid)
        await tasks.resume(namespace, cid)
        assert await seen.take() == (
            [
                (namespace, "/tasks/paused", task_pb2.TaskPaused(container_id=cid)),
                (namespace, "/tasks/resumed", task_pb2.TaskResumed(container_id=cid)),
            ],
            [],
        )
        assert [cid_ for cid_, _ in await tasks.metrics(namespace)] == [cid]
        assert await tasks.metrics(namespace, lambda _: False) == []

        await tasks.kill(namespace, cid, 9)
        info = await tasks.wait(namespace, cid)
        assert info.exit_status == 137
        await seen.until("/tasks/exit")
        await tasks.delete(namespace, cid)
        events, _ = await seen.take()
        assert topics(events) == ["/tasks/exit", "/tasks/delete"]
        await core.local.containers.delete(namespace, cid)

    run(tmp_path, body)
