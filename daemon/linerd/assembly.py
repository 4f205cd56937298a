"""`Core`: the stores, the backends and the local services, built once per daemon.

It lives outside server.py so that a front door other than the containerd gRPC server (the
CRI, the local layer's own tests) builds the same core without importing grpc: server.py
only registers servicers over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from linerd.config import Config
from linerd.content.local import LocalStore
from linerd.content.store import ContentStore
from linerd.events import Exchange
from linerd.gc.collector import Collector
from linerd.local.containers import Containers
from linerd.local.content import Content
from linerd.local.events import Publisher
from linerd.local.images import Images
from linerd.local.leases import Leases
from linerd.local.namespaces import Namespaces
from linerd.local.policy import PolicyGate
from linerd.local.snapshots import Snapshots
from linerd.local.tasks import Tasks
from linerd.local.transfer import LocalTransfer
from linerd.local.transfer import build as build_transfer
from linerd.metadata.containers import ContainerStore
from linerd.metadata.content import ContentRecords
from linerd.metadata.db import Database, sqlite_url
from linerd.metadata.images import ImageStore
from linerd.metadata.leases import LeaseStore
from linerd.metadata.namespaces import NamespaceStore
from linerd.prestage import Prestager
from linerd.remotes.hosts import HostsConfig
from linerd.runtime import TaskRuntime
from linerd.runtime import resolve as runtime_resolve
from linerd.snapshots.backends import NativeBackend, OverlayBackend, overlay_supported
from linerd.snapshots.store import SnapshotsCollectable, SnapshotStore

if TYPE_CHECKING:
    from linerd.local.diff import LocalDiff
    from linerd.metrics import Metrics

log = structlog.get_logger("linerd")


@dataclass(slots=True)
class Local:
    """The local services: what every front door calls (see linerd.local)."""

    namespaces: Namespaces
    leases: Leases
    content: Content
    images: Images
    containers: Containers
    snapshots: Snapshots
    tasks: Tasks
    transfer: LocalTransfer
    diff: LocalDiff


@dataclass(slots=True)
class Core:
    """Everything the front doors are built on: stores and backends, and `local` over them."""

    root: Path
    state: Path
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
    publisher: Publisher
    # The signature policy every image entering the store passes; none is loaded until
    # `policy.load` (the daemon loads [policy] before serving, and again on SIGHUP).
    policy: PolicyGate
    runtime: TaskRuntime
    runtimes: runtime_resolve.Runtimes
    local: Local


def build_core(
    config: Config,
    hosts: Callable[[], HostsConfig],
    metrics: Metrics,
) -> Core:
    """Open the database (migrating it) and build the stores and local services. Cheap
    otherwise: the local Transfer service builds the pull, push and archive machinery on
    first use. `hosts` gives the registry configuration of the moment (a reload replaces
    it); `metrics` records pulls and unpacks."""
    root, state = Path(config.root), Path(config.state)
    db = Database(config.metadata.url or sqlite_url(root))
    db.migrate()
    blobs = LocalStore(root / "content")
    for broken in blobs.remove_broken():
        log.warning("removed a half-created ingest", path=str(broken))
    content = ContentStore(blobs, ContentRecords(db))
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
    events = Exchange()
    publisher = Publisher(events)
    policy = PolicyGate(metrics, publisher, hosts)
    leases, images, containers = LeaseStore(db), ImageStore(db), ContainerStore(db)
    runtime = TaskRuntime(state, log_size_max=config.log.container_log_size_max)
    runtimes = runtime_resolve.Runtimes(
        {**runtime_resolve.builtin(state), **runtime_resolve.parse(config.runtimes)},
        config.default_runtime,
    )
    transfer, diff = build_transfer(
        content,
        images,
        leases,
        snapshots,
        default,
        gc,
        events,
        metrics,
        hosts,
        state / "mnt",
        root / "snapshots",
        policy,
    )
    return Core(
        root=root,
        state=state,
        db=db,
        namespaces=namespaces,
        leases=leases,
        content=content,
        images=images,
        containers=containers,
        snapshots=snapshots,
        default_snapshotter=default,
        gc=gc,
        events=events,
        publisher=publisher,
        policy=policy,
        runtime=runtime,
        runtimes=runtimes,
        local=Local(
            namespaces=Namespaces(namespaces, publisher),
            leases=Leases(leases, gc),
            content=Content(content, gc, publisher),
            images=Images(images, gc, publisher, policy),
            containers=Containers(containers, gc, publisher, runtime.remove_log_sync),
            snapshots=Snapshots(snapshots, default, gc, publisher),
            tasks=Tasks(runtime, runtimes, containers, snapshots, publisher),
            transfer=transfer,
            diff=diff,
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
