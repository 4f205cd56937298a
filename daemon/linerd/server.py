"""The daemon: owns the root, serves the API on a unix socket, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.introspection.v1 import introspection_pb2, introspection_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from linerd import systemd
from linerd.config import RELOADABLE, Config, ConfigError
from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.errdefs import LinerError
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.log import setup as setup_logging
from linerd.metadata.containers import ContainerStore
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.metadata.namespaces import NamespaceStore
from linerd.metrics import Metrics, MetricsServer
from linerd.prestage import Prestager
from linerd.remotes.hosts import HostsConfig
from linerd.runtime import TaskRuntime
from linerd.runtime import resolve as runtime_resolve
from linerd.services.containers import ContainersService
from linerd.services.content import ContentService
from linerd.services.diff import DiffService
from linerd.services.events import EventsService
from linerd.services.images import ImagesService
from linerd.services.interceptor import RequestInterceptor
from linerd.services.introspection import IntrospectionService, PluginEntry
from linerd.services.leases import LeasesService
from linerd.services.namespaces import NamespacesService
from linerd.services.snapshots import SnapshotsService
from linerd.services.tasks import TasksService, encode_cgroup_metrics
from linerd.services.transfer import TransferService
from linerd.services.version import VersionService
from linerd.snapshots.backends import NativeBackend, OverlayBackend, overlay_supported
from linerd.snapshots.store import SnapshotsCollectable, SnapshotStore

if TYPE_CHECKING:
    from linerd.archive import Archives
    from linerd.pull import Puller
    from linerd.push import Pusher

log = structlog.get_logger("linerd")

# Seconds in-flight calls get to finish on shutdown before they are cancelled.
SHUTDOWN_GRACE = 10.0


class StartupError(Exception):
    """linerd cannot start; the message says why in one line."""


@dataclass(slots=True)
class Core:
    """Everything the services are built on."""

    db: Database
    namespaces: NamespaceStore
    leases: LeaseStore
    content: ContentStore
    images: ImageStore
    containers: ContainerStore
    snapshots: dict[str, SnapshotStore]
    default_snapshotter: str
    gc: Collector
    events: Exchange
    runtime: TaskRuntime
    runtimes: runtime_resolve.Runtimes


class RootLock:
    """An flock on <root>/linerd.lock: one linerd per root."""

    def __init__(self, root: Path) -> None:
        self.path = root / "linerd.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StartupError(
                    f"another linerd (pid {holder}) is already using root {self.path.parent}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _claim_socket(path: Path) -> None:
    """Remove a stale socket; refuse one another process is serving on."""
    if not path.exists() and not path.is_symlink():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise StartupError(f"address {path} is in use by another server")


def build_core(config: Config) -> Core:
    root = Path(config.root)
    db = Database(config.metadata.url or sqlite_url(root))
    db.migrate()
    local = LocalStore(root / "content")
    for broken in local.remove_broken():
        log.warning("removed a half-created ingest", path=str(broken))
    content = ContentStore(local, ContentRecords(db))
    namespaces = NamespaceStore(db)
    namespaces.register_holder("ingests", lambda _session, ns: content.has_ingests(ns))
    namespaces.register_holder("containers", ContainerStore.holds)
    snapshots = _snapshotters(db, root)
    content.prestager = Prestager(root / "snapshots" / "prestage")
    gc = Collector(db, content)
    gc.register_kind("snapshots", SnapshotsCollectable(snapshots))
    for name, store in snapshots.items():
        namespaces.register_holder(f"{name} snapshots", store.holds())
    default = config.snapshots.default if config.snapshots.default in snapshots else "native"
    return Core(
        db=db,
        namespaces=namespaces,
        leases=LeaseStore(db),
        content=content,
        images=ImageStore(db),
        containers=ContainerStore(db),
        snapshots=snapshots,
        default_snapshotter=default,
        gc=gc,
        events=Exchange(),
        runtime=TaskRuntime(Path(config.state)),
        runtimes=runtime_resolve.Runtimes(
            {
                **runtime_resolve.builtin(Path(config.state)),
                **runtime_resolve.parse(config.runtimes),
            },
            config.default_runtime,
        ),
    )


def _snapshotters(db: Database, root: Path) -> dict[str, SnapshotStore]:
    base = root / "snapshots"
    stores = {}
    if overlay_supported(base / "check"):
        stores["overlayfs"] = SnapshotStore(db, OverlayBackend(), base / "overlayfs")
    else:
        log.warning("overlay mounts fail here: the overlayfs snapshotter is not available")
    stores["native"] = SnapshotStore(db, NativeBackend(), base / "native")
    return stores


def _plugins(snapshotters: list[str], root: str = "", state: str = "") -> list[PluginEntry]:
    grpc_plugins = [
        PluginEntry("io.containerd.grpc.v1", name, requires)
        for name, requires in [
            ("version", ()),
            ("introspection", ()),
            ("namespaces", ("io.containerd.metadata.v1",)),
            ("leases", ("io.containerd.metadata.v1",)),
            ("content", ("io.containerd.metadata.v1",)),
            ("images", ("io.containerd.metadata.v1", "io.containerd.gc.v1")),
            ("containers", ("io.containerd.metadata.v1",)),
            ("tasks", ("io.containerd.runtime.v2",)),
            ("events", ("io.containerd.event.v1",)),
            ("snapshots", ("io.containerd.snapshotter.v1",)),
            ("diff", ("io.containerd.content.v1",)),
        ]
    ]
    return [
        PluginEntry("io.containerd.content.v1", "content", (), (("root", f"{root}/content"),)),
        PluginEntry(
            "io.containerd.metadata.v1",
            "sqlite",
            ("io.containerd.content.v1",),
            (("root", root), ("state", state)),
        ),
        PluginEntry("io.containerd.event.v1", "exchange"),
        *(PluginEntry("io.containerd.snapshotter.v1", name) for name in snapshotters),
        PluginEntry("io.containerd.gc.v1", "scheduler", ("io.containerd.metadata.v1",)),
        PluginEntry("io.containerd.runtime.v2", "task"),
        PluginEntry("io.containerd.runtime.v2", "task"),
        *grpc_plugins,
    ]


async def _watchdog() -> None:
    """Ping systemd's watchdog while the event loop runs (a hung loop stops the pings)."""
    interval = systemd.watchdog_interval()
    while interval:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class _Deferred:
    """Stands for an object built on first use (attribute access), once.

    Pulls, pushes and archives import the registry client (httpx, ~6 MB and ~0.2 s of
    imports) and the layer decompressors; a daemon that is never asked for them never loads
    them.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build: Callable[[], Any] | None = build
        self._target: Any = None

    def get(self) -> Any:
        if self._build is not None:
            self._target, self._build = self._build(), None
        return self._target

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


class _HeapTrimmer:
    """Hands the heap's free pages back to the kernel once a burst of bulk calls is over.

    Pulls, unpacks and content writes allocate large buffers; glibc keeps what they free in
    its arenas (its mmap threshold grows with the first large free), so RSS stayed ~15-20 MB
    higher after one pull. A fixed low mmap threshold (mallopt) fixed the RSS but made every
    buffer an mmap + page faults: ctr pulls of the bench image took ~1 s longer. One
    malloc_trim(0), in a worker thread, DELAY seconds after the last bulk call ends, costs
    a few milliseconds instead.
    """

    BULK = (
        "/containerd.services.content.v1.Content/Write",
        "/containerd.services.diff.v1.Diff/",
        "/liner.services.transfer.v1.Transfer/",
    )
    DELAY = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._trim: Callable[[int], int] | None = None
        try:
            import ctypes

            self._trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            pass

    def observe(self, full_method: str, _code: str, _seconds: float) -> None:
        if full_method.startswith(self.BULK):
            self.schedule()

    def schedule(self) -> None:
        """Trim DELAY seconds from now (a trim already scheduled is pushed back)."""
        if self._trim is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.DELAY, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._trim is not None:
            self._loop.run_in_executor(None, self._trim, 0)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Daemon:
    """linerd's lifetime: `load` gives the configuration (again on SIGHUP)."""

    def __init__(self, load: Callable[[], Config]) -> None:
        self._load = load
        self.config = load()
        self._stop = asyncio.Event()
        self.hosts = HostsConfig.from_dict(self.config.registry)
        self.metrics = Metrics()
        self._metrics_server: MetricsServer | None = None
        self._gc: Collector | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        config = self.config
        root, state, address = Path(config.root), Path(config.state), Path(config.grpc.address)
        root.mkdir(parents=True, exist_ok=True, mode=0o711)
        state.mkdir(parents=True, exist_ok=True, mode=0o711)
        address.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        lock = RootLock(root)
        lock.acquire()
        try:
            _claim_socket(address)
            core = await asyncio.to_thread(build_core, config)
            for store in core.snapshots.values():
                if removed := await store.cleanup():
                    log.warning(
                        "removed snapshot directories a crash left",
                        snapshotter=store.name,
                        directories=removed,
                    )
                await store.measure_unmeasured()
            recovered = await core.runtime.recover_all()
            if recovered:
                log.info(
                    "recovered tasks",
                    tasks=len(recovered),
                    running=sum(t.status.name == "RUNNING" for t in recovered),
                )
            try:
                await self._serve(core, address)
            finally:
                await core.runtime.close()
                core.db.close()
                # Loaded only if a layer was unpacked (importing it would load the unpacker).
                zygote = sys.modules.get("linerd.diff.zygote")
                if zygote is not None:
                    await asyncio.to_thread(zygote.ZYGOTE.close)
        finally:
            lock.release()

    async def _register(self, server: grpc.aio.Server, core: Core, uuid: str) -> list[str]:
        """Add every service; returns their full names (for the health service)."""
        config = self.config
        scratch = Path(config.state) / "mnt"

        def build_puller() -> Puller:
            from linerd.pull import Puller

            puller = Puller(
                core.content,
                core.images,
                core.leases,
                core.snapshots,
                core.default_snapshotter,
                core.gc,
                lambda: self.hosts,
                scratch,
            )
            puller.on_unpack = self.metrics.unpack_seconds.observe
            return puller

        def build_pusher() -> Pusher:
            from linerd.push import Pusher

            return Pusher(core.content, core.images, core.leases, lambda: self.hosts)

        def build_archives() -> Archives:
            from linerd.archive import Archives

            return Archives(core.content, core.images, core.leases, core.gc, puller.get())

        puller = _Deferred(build_puller)
        services: list[tuple[Callable[[Any, grpc.aio.Server], None], Any]] = [
            (version_pb2_grpc.add_VersionServicer_to_server, VersionService()),
            (
                introspection_pb2_grpc.add_IntrospectionServicer_to_server,
                IntrospectionService(
                    uuid, _plugins(list(core.snapshots), config.root, config.state)
                ),
            ),
            (
                namespaces_pb2_grpc.add_NamespacesServicer_to_server,
                NamespacesService(core.namespaces, core.events),
            ),
            (leases_pb2_grpc.add_LeasesServicer_to_server, LeasesService(core.leases, core.gc)),
            (
                content_pb2_grpc.add_ContentServicer_to_server,
                ContentService(core.content, core.gc, core.events),
            ),
            (events_pb2_grpc.add_EventsServicer_to_server, EventsService(core.events)),
            (
                diff_pb2_grpc.add_DiffServicer_to_server,
                DiffService(core.content, Path(config.root) / "snapshots", scratch),
            ),
            (
                snapshots_pb2_grpc.add_SnapshotsServicer_to_server,
                SnapshotsService(core.snapshots, core.default_snapshotter, core.gc, core.events),
            ),
            (
                images_pb2_grpc.add_ImagesServicer_to_server,
                ImagesService(core.images, core.gc, core.events),
            ),
            (
                containers_pb2_grpc.add_ContainersServicer_to_server,
                ContainersService(core.containers, core.gc, core.events),
            ),
            (
                tasks_pb2_grpc.add_TasksServicer_to_server,
                TasksService(
                    core.runtime,
                    core.runtimes,
                    core.containers,
                    core.snapshots,
                    core.events,
                    encode_cgroup_metrics,
                ),
            ),
            (
                transfer_pb2_grpc.add_TransferServicer_to_server,
                TransferService(
                    cast("Puller", puller),
                    core.events,
                    self.metrics,
                    cast("Pusher", _Deferred(build_pusher)),
                    cast("Archives", _Deferred(build_archives)),
                ),
            ),
        ]
        for add, servicer in services:
            add(servicer, server)
        names = [
            s.full_name
            for module in (
                version_pb2,
                introspection_pb2,
                namespaces_pb2,
                leases_pb2,
                content_pb2,
                events_pb2,
                diff_pb2,
                snapshots_pb2,
                images_pb2,
                containers_pb2,
                tasks_pb2,
                transfer_pb2,
            )
            for s in module.DESCRIPTOR.services_by_name.values()
        ]
        health = health_aio.HealthServicer()
        for name in ["", *names]:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        return names

    async def _serve(self, core: Core, address: Path) -> None:
        config = self.config
        trimmer = _HeapTrimmer(asyncio.get_running_loop())
        server = grpc.aio.server(
            interceptors=[RequestInterceptor([self.metrics.observe_call, trimmer.observe])],
            options=[
                ("grpc.max_receive_message_length", config.grpc.max_recv_message_size),
                ("grpc.max_send_message_length", config.grpc.max_send_message_size),
            ],
        )
        uuid = await asyncio.to_thread(core.db.server_uuid)
        await self._register(server, core, uuid)
        self.metrics.add_tasks(core.runtime, asyncio.get_running_loop(), core.containers.count_sync)
        self.metrics.add_stores(
            Path(config.root) / "content" / "blobs" / "sha256",
            lambda: {name: store.totals_sync() for name, store in core.snapshots.items()},
        )

        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly wider
        try:
            server.add_insecure_port(f"unix://{address}")
            await server.start()
        finally:
            os.umask(old_umask)
        if config.grpc.gid:
            os.chown(address, -1, config.grpc.gid)
        os.chmod(address, 0o660)
        await self._start_metrics(config.metrics.address)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self._gc = core.gc
        core.gc.interval, core.gc.delay = config.gc.interval, config.gc.schedule_delay
        gc_task = asyncio.create_task(core.gc.run())
        watchdog = asyncio.create_task(_watchdog())
        log.info("serving", address=str(address), root=config.root, state=config.state, uuid=uuid)
        systemd.notify("READY=1")
        trimmer.schedule()  # start-up's garbage (imports, migrations, recovery)
        try:
            await self._stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            log.info("stopping")
            await server.stop(SHUTDOWN_GRACE)
            trimmer.close()
            for task in (gc_task, watchdog):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._metrics_server is not None:
                await self._metrics_server.stop()
            with contextlib.suppress(FileNotFoundError):
                address.unlink()
            log.info("stopped")

    async def _start_metrics(self, address: str) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
        if address:
            server = MetricsServer(self.metrics)
            await server.start(address)
            self._metrics_server = server

    async def reload(self) -> None:
        """SIGHUP: apply what can change safely; name what cannot; keep the old on errors."""
        try:
            new = await asyncio.to_thread(self._load)
            hosts = HostsConfig.from_dict(new.registry)
        except (ConfigError, LinerError) as e:
            log.error(
                "reload refused: the configuration is invalid; keeping the old one", error=str(e)
            )
            return
        old = self.config
        fixed = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in RELOADABLE and getattr(old, f.name) != getattr(new, f.name)
        ]
        if fixed:
            log.warning("reload: these settings need a restart to change", settings=fixed)
        if new.log != old.log:
            setup_logging(new.log.level, new.log.format)
        self.hosts = hosts
        if self._gc is not None:
            self._gc.interval, self._gc.delay = new.gc.interval, new.gc.schedule_delay
        if new.metrics.address != old.metrics.address:
            try:
                await self._start_metrics(new.metrics.address)
            except (OSError, ValueError) as e:
                log.error("reload: cannot serve metrics", address=new.metrics.address, error=str(e))
        for name in RELOADABLE:
            setattr(old, name, getattr(new, name))
        log.info("reloaded", log_level=new.log.level)
