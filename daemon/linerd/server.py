"""The daemon: owns the root, serves the API on a unix socket, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from liner_api.containerd.services.containers.v1 import containers_pb2
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.introspection.v1 import introspection_pb2, introspection_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2
from liner_api.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from liner_api.liner.services.policy.v1 import policy_pb2, policy_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from linerd import pageout, priority, systemd
from linerd.assembly import Core, build_core
from linerd.config import RELOADABLE, Config, ConfigError
from linerd.errdefs import LinerError
from linerd.gc.collector import Collector
from linerd.local.policy import PolicyGate
from linerd.log import setup as setup_logging
from linerd.metrics import Metrics, MetricsServer
from linerd.remotes.hosts import HostsConfig
from linerd.runtime import TaskRuntime
from linerd.services.containers import ContainersService, add_containers_to_server
from linerd.services.content import ContentService
from linerd.services.diff import DiffService
from linerd.services.events import EventsService
from linerd.services.images import ImagesService
from linerd.services.interceptor import RequestInterceptor
from linerd.services.introspection import IntrospectionService, PluginEntry
from linerd.services.leases import LeasesService
from linerd.services.namespaces import NamespacesService
from linerd.services.policy import PolicyService
from linerd.services.snapshots import SnapshotsService
from linerd.services.tasks import TasksService, add_tasks_to_server, encode_cgroup_metrics
from linerd.services.transfer import TransferService
from linerd.services.version import VersionService

log = structlog.get_logger("linerd")

# Seconds in-flight calls get to finish on shutdown before they are cancelled.
SHUTDOWN_GRACE = 10.0


class StartupError(Exception):
    """linerd cannot start; the message says why in one line."""


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


# containerd's plugin types, as Introspection lists them.
GRPC = "io.containerd.grpc.v1"
METADATA = "io.containerd.metadata.v1"
CONTENT = "io.containerd.content.v1"
SNAPSHOTTER = "io.containerd.snapshotter.v1"
EVENT = "io.containerd.event.v1"
GC = "io.containerd.gc.v1"
RUNTIME = "io.containerd.runtime.v2"


@dataclass(frozen=True, slots=True)
class Service:
    """A gRPC service: its generated modules, and how to build its servicer (at start-up)."""

    pb2: ModuleType  # its services' full names are the health service's names
    add: Callable[[Any, grpc.aio.Server], None]
    build: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Registration:
    """One entry of the registration table: a plugin as Introspection lists it, serving
    `service` if it is a gRPC plugin."""

    type: str
    id: str
    requires: tuple[str, ...] = ()
    exports: tuple[tuple[str, str], ...] = ()
    service: Service | None = None

    @property
    def plugin(self) -> PluginEntry:
        return PluginEntry(self.type, self.id, self.requires, self.exports)


def health_names(table: list[Registration]) -> list[str]:
    """The full names of every service the table serves (what the health service answers for)."""
    return [
        s.full_name
        for entry in table
        if entry.service is not None
        for s in entry.service.pb2.DESCRIPTOR.services_by_name.values()
    ]


async def _watchdog() -> None:
    """Ping systemd's watchdog while the event loop runs (a hung loop stops the pings)."""
    interval = systemd.watchdog_interval()
    while interval:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class _HeapTrimmer:
    """Hands the heap's free pages back to the kernel once a burst of bulk calls is over.

    Pulls, unpacks and content writes allocate large buffers; glibc keeps what they free in
    its arenas (its mmap threshold grows with the first large free), so RSS stayed ~15-20 MB
    higher after one pull. A fixed low mmap threshold (mallopt) fixed the RSS but made every
    buffer an mmap + page faults: ctr pulls of the bench image took ~1 s longer. One
    malloc_trim(0), in a worker thread, DELAY seconds after the last bulk call ends, costs
    a few milliseconds instead.

    Deletes and garbage collections free what pulls left (records, caches, buffers): after
    the bench's pulls and cleanups the heap held ~2.3 MB of free pages more than a trim
    leaves, so they trim too. A trim is preceded by a full `gc.collect()` (cycles a pull
    left, ~0.6 MB there; 20-40 ms of ~60,000 objects, in a worker thread). The collection
    holds the GIL, so the event loop stops while it runs: under steady churn (kubelet's pods
    coming and going, a collection every second) it is at most once per COLLECT_EVERY
    seconds; the trim itself runs without the GIL (ctypes releases it).

    After start-up and after a burst of bulk calls, the program pages only linerd maps go
    back to the kernel too (`pageout`): the code start-up or the burst ran once. The pages
    still in use come back by a fault (~30 for the next `ctr run`, a few ms; more where the
    disk is slow), so a trim that only a garbage collection asked for (churn asks every
    second or so, and its code is the hot code) does not page out, collection or not.
    """

    BULK = (
        "/containerd.services.content.v1.Content/Write",
        "/containerd.services.diff.v1.Diff/",
        "/liner.services.transfer.v1.Transfer/",
        "/runtime.v1.ImageService/PullImage",
        "/containerd.services.images.v1.Images/Delete",
        "/containerd.services.content.v1.Content/Delete",
        "/containerd.services.snapshots.v1.Snapshots/Remove",
        "/runtime.v1.ImageService/RemoveImage",
    )
    DELAY = 1.0
    COLLECT_EVERY = 60.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._collected = -self.COLLECT_EVERY  # monotonic time of the last gc.collect()
        self._page_out = False
        self._trim: Callable[[int], int] | None = None
        try:
            import ctypes

            self._trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            pass

    def observe(self, full_method: str, _code: str, _seconds: float) -> None:
        if full_method.startswith(self.BULK):
            self.schedule()

    def schedule(self, page_out: bool = True) -> None:
        """Trim DELAY seconds from now (a trim already scheduled is pushed back), and page
        out with it unless only `page_out=False` calls asked for it since the last."""
        if self._trim is None:
            return
        self._page_out |= page_out
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.DELAY, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._trim is not None:
            now = time.monotonic()
            collect = now - self._collected >= self.COLLECT_EVERY
            if collect:
                self._collected = now
            page_out, self._page_out = self._page_out, False
            self._loop.run_in_executor(None, self._collect_and_trim, self._trim, collect, page_out)

    @staticmethod
    def _collect_and_trim(trim: Callable[[int], int], collect: bool, page_out: bool) -> None:
        if collect:
            # What survives a full collection is mostly for good (modules, the stores, the
            # tasks): frozen, the full collections that allocation triggers (a few a minute
            # under churn) walk only what came after, not all ~70,000 objects (80-150 ms
            # holding the GIL with 200 containers on the loaded bench machine). Cycles among
            # frozen objects wait for this collection, which walks everything again.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        trim(0)
        if page_out and (mappings := pageout.page_out()):
            log.debug("program pages paged out", mappings=mappings)

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
        self._runtime: TaskRuntime | None = None  # its log cap follows a reload
        self._closing: list[Callable[[], Awaitable[None]]] = []
        self._policy: PolicyGate | None = None  # reloaded on SIGHUP

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
            core = await asyncio.to_thread(build_core, config, lambda: self.hosts, self.metrics)
            try:
                await core.policy.load(config.policy.path, config.policy.registries_d)
            except LinerError as e:
                core.db.close()
                raise StartupError(f"policy: {e}") from None
            self._policy = core.policy
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

    def _table(self, core: Core, uuid: str) -> list[Registration]:
        """What linerd serves and lists, in Introspection's order; servicers are built by
        `_register`, once."""
        local = core.local

        def grpc_plugin(
            id: str,
            requires: tuple[str, ...],
            pb2: ModuleType,
            add: Callable[[Any, grpc.aio.Server], None],
            build: Callable[[], Any],
        ) -> Registration:
            return Registration(GRPC, id, requires, service=Service(pb2, add, build))

        table = [
            Registration(CONTENT, "content", exports=(("root", str(core.root / "content")),)),
            Registration(
                METADATA,
                "sqlite",
                (CONTENT,),
                exports=(("root", str(core.root)), ("state", str(core.state))),
            ),
            Registration(EVENT, "exchange"),
            *(
                Registration(SNAPSHOTTER, name, exports=(("root", str(store.root)),))
                for name, store in core.snapshots.items()
            ),
            Registration(GC, "scheduler", (METADATA,)),
            Registration(RUNTIME, "task"),
            grpc_plugin(
                "version",
                (),
                version_pb2,
                version_pb2_grpc.add_VersionServicer_to_server,
                VersionService,
            ),
            grpc_plugin(
                "introspection",
                (),
                introspection_pb2,
                introspection_pb2_grpc.add_IntrospectionServicer_to_server,
                lambda: IntrospectionService(uuid, [entry.plugin for entry in table]),
            ),
            grpc_plugin(
                "namespaces",
                (METADATA,),
                namespaces_pb2,
                namespaces_pb2_grpc.add_NamespacesServicer_to_server,
                lambda: NamespacesService(local.namespaces),
            ),
            grpc_plugin(
                "leases",
                (METADATA,),
                leases_pb2,
                leases_pb2_grpc.add_LeasesServicer_to_server,
                lambda: LeasesService(local.leases),
            ),
            grpc_plugin(
                "content",
                (METADATA,),
                content_pb2,
                content_pb2_grpc.add_ContentServicer_to_server,
                lambda: ContentService(local.content),
            ),
            grpc_plugin(
                "images",
                (METADATA, GC),
                images_pb2,
                images_pb2_grpc.add_ImagesServicer_to_server,
                lambda: ImagesService(local.images),
            ),
            grpc_plugin(
                "containers",
                (METADATA,),
                containers_pb2,
                add_containers_to_server,
                lambda: ContainersService(local.containers),
            ),
            grpc_plugin(
                "tasks",
                (RUNTIME,),
                tasks_pb2,
                add_tasks_to_server,
                lambda: TasksService(local.tasks, encode_cgroup_metrics),
            ),
            grpc_plugin(
                "events",
                (EVENT,),
                events_pb2,
                events_pb2_grpc.add_EventsServicer_to_server,
                lambda: EventsService(core.events),
            ),
            grpc_plugin(
                "snapshots",
                (SNAPSHOTTER,),
                snapshots_pb2,
                snapshots_pb2_grpc.add_SnapshotsServicer_to_server,
                lambda: SnapshotsService(local.snapshots),
            ),
            grpc_plugin(
                "diff",
                (CONTENT,),
                diff_pb2,
                diff_pb2_grpc.add_DiffServicer_to_server,
                lambda: DiffService(local.diff),
            ),
            # liner's own: the signature policy's verdict on an image, a policy file checked.
            grpc_plugin(
                "liner.policy",
                (),
                policy_pb2,
                policy_pb2_grpc.add_PolicyServicer_to_server,
                lambda: PolicyService(core.policy),
            ),
            # liner's own API (pull, push, import, export), not containerd's Transfer.
            grpc_plugin(
                "liner.transfer",
                (CONTENT, METADATA, SNAPSHOTTER),
                transfer_pb2,
                transfer_pb2_grpc.add_TransferServicer_to_server,
                lambda: TransferService(local.transfer),
            ),
            # Kubernetes' CRI (runtime.v1 RuntimeService and ImageService) on this socket.
            *([self._cri(core)] if self.config.cri.enabled else []),
        ]
        return table

    def _cri(self, core: Core) -> Registration:
        # Imported only where the CRI is served.
        from liner_api.runtime.v1 import api_pb2 as cri_pb2
        from linerd.cri.assembly import build_cri

        return Registration(
            GRPC,
            "cri",
            (EVENT, METADATA, SNAPSHOTTER, RUNTIME),
            service=Service(
                cri_pb2,
                lambda cri, server: cri.add_to(server),
                lambda: build_cri(core, self.config, lambda: self.hosts),
            ),
        )

    async def _register(self, server: grpc.aio.Server, core: Core, uuid: str) -> list[str]:
        """Add every service of the table; returns their full names (for the health service)."""
        table = self._table(core, uuid)
        for entry in table:
            if entry.service is not None:
                servicer = entry.service.build()
                entry.service.add(servicer, server)
                if hasattr(servicer, "aclose"):  # it serves more than gRPC (the CRI's streams)
                    self._closing.append(servicer.aclose)
        names = health_names(table)
        health = health_aio.HealthServicer()
        for name in ["", *names]:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        return names

    async def _serve(self, core: Core, address: Path) -> None:
        config = self.config
        trimmer = _HeapTrimmer(asyncio.get_running_loop())
        # The one interceptor wraps every handler where it is registered (`serving`), not
        # through grpc's interceptor chain: the chain costs every call a few coroutines.
        calls = RequestInterceptor([self.metrics.observe_call, trimmer.observe])
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.grpc.max_recv_message_size),
                ("grpc.max_send_message_length", config.grpc.max_send_message_size),
            ],
        )
        uuid = await asyncio.to_thread(core.db.server_uuid)
        await self._register(calls.serving(server), core, uuid)
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
        if os.getpriority(os.PRIO_PROCESS, 0) == config.loop_nice != 0:
            priority.prioritize_grpc_threads(config.loop_nice)  # grpc's, with the loop's
        if config.grpc.gid:
            os.chown(address, -1, config.grpc.gid)
        os.chmod(address, 0o660)
        await self._start_metrics(config.metrics.address)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self._gc = core.gc
        self._runtime = core.runtime
        core.gc.interval, core.gc.delay = config.gc.interval, config.gc.schedule_delay
        # A collection frees what deletes left: trim after it (DELAY from its start).
        core.gc.observe(lambda what: trimmer.schedule(False) if what == "collect" else None)
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
            for aclose in self._closing:
                await aclose()
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
        if self._policy is not None:
            # Read again even when [policy] is unchanged: the files it names may have changed.
            try:
                await self._policy.load(new.policy.path, new.policy.registries_d)
            except LinerError as e:
                log.error(
                    "reload refused: the signature policy is invalid; keeping the old "
                    "configuration and policy",
                    error=str(e),
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
        if self._runtime is not None:
            self._runtime.log_size_max = new.log.container_log_size_max
        if new.metrics.address != old.metrics.address:
            try:
                await self._start_metrics(new.metrics.address)
            except (OSError, ValueError) as e:
                log.error("reload: cannot serve metrics", address=new.metrics.address, error=str(e))
        for name in RELOADABLE:
            setattr(old, name, getattr(new, name))
        log.info("reloaded", log_level=new.log.level)
