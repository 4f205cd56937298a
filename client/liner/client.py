"""A small synchronous client for linerd's containerd v1 API.

Every call goes through one helper (`Client._call`, `Client._stream` for server streams) that
adds the namespace and lease headers and the deadline, and turns `grpc.RpcError` into the
`liner.errors` class of its status, so callers never see gRPC's exception types.
"""

from __future__ import annotations

import contextlib
import functools
import queue
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar

import grpc
from google.protobuf.empty_pb2 import Empty

from liner.common import DEFAULT_ADDRESS, PROCESS_URL, RESOURCES_URL, lazy_module
from liner.errors import (
    AlreadyExists,
    DeadlineExceeded,
    Internal,
    LinerClientError,
    NotFound,
    OutOfRange,
    Unavailable,
    Unimplemented,
    error_for,
)

if TYPE_CHECKING:
    from google.protobuf import any_pb2, field_mask_pb2
    from google.protobuf.any_pb2 import Any as AnyPb
    from google.protobuf.timestamp_pb2 import Timestamp

    from liner.results import containers as _container_types
    from liner.results import content as _content_types
    from liner.results import snapshots as _snapshot_types
    from liner.results import system as _system_types
    from liner.results.containers import (
        AnyValue,
        Container,
        Event,
        ExitStatus,
        Metric,
        Process,
        ProcessInfo,
    )
    from liner.results.content import (
        ContentInfo,
        Descriptor,
        Image,
        IngestStatus,
        PolicyVerdict,
        PullProgress,
        PushProgress,
    )
    from liner.results.snapshots import Mount, SnapshotInfo, Usage
    from liner.results.system import (
        Lease,
        Namespace,
        PluginInfo,
        Resource,
        ServerInfo,
        VersionInfo,
    )
    from liner_api.containerd.runc.v1 import options_pb2
    from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
    from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
    from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
    from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
    from liner_api.containerd.services.introspection.v1 import (
        introspection_pb2,
        introspection_pb2_grpc,
    )
    from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
    from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
    from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
    from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
    from liner_api.containerd.services.version.v1 import version_pb2_grpc
    from liner_api.containerd.types import descriptor_pb2, mount_pb2, platform_pb2
    from liner_api.containerd.types.task import task_pb2
    from liner_api.liner.services.policy.v1 import policy_pb2, policy_pb2_grpc
    from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
    from liner_common.platforms import Platform
else:
    # The generated modules are imported on first use: building their descriptors is most of
    # the client's import time, and a command talks to one or two services.
    _API = "liner_api.containerd"
    options_pb2 = lazy_module(f"{_API}.runc.v1.options_pb2")
    containers_pb2 = lazy_module(f"{_API}.services.containers.v1.containers_pb2")
    containers_pb2_grpc = lazy_module(f"{_API}.services.containers.v1.containers_pb2_grpc")
    content_pb2 = lazy_module(f"{_API}.services.content.v1.content_pb2")
    content_pb2_grpc = lazy_module(f"{_API}.services.content.v1.content_pb2_grpc")
    events_pb2 = lazy_module(f"{_API}.services.events.v1.events_pb2")
    events_pb2_grpc = lazy_module(f"{_API}.services.events.v1.events_pb2_grpc")
    images_pb2 = lazy_module(f"{_API}.services.images.v1.images_pb2")
    images_pb2_grpc = lazy_module(f"{_API}.services.images.v1.images_pb2_grpc")
    introspection_pb2 = lazy_module(f"{_API}.services.introspection.v1.introspection_pb2")
    introspection_pb2_grpc = lazy_module(f"{_API}.services.introspection.v1.introspection_pb2_grpc")
    leases_pb2 = lazy_module(f"{_API}.services.leases.v1.leases_pb2")
    leases_pb2_grpc = lazy_module(f"{_API}.services.leases.v1.leases_pb2_grpc")
    namespaces_pb2 = lazy_module(f"{_API}.services.namespaces.v1.namespaces_pb2")
    namespaces_pb2_grpc = lazy_module(f"{_API}.services.namespaces.v1.namespaces_pb2_grpc")
    snapshots_pb2 = lazy_module(f"{_API}.services.snapshots.v1.snapshots_pb2")
    snapshots_pb2_grpc = lazy_module(f"{_API}.services.snapshots.v1.snapshots_pb2_grpc")
    tasks_pb2 = lazy_module(f"{_API}.services.tasks.v1.tasks_pb2")
    tasks_pb2_grpc = lazy_module(f"{_API}.services.tasks.v1.tasks_pb2_grpc")
    version_pb2_grpc = lazy_module(f"{_API}.services.version.v1.version_pb2_grpc")
    descriptor_pb2 = lazy_module(f"{_API}.types.descriptor_pb2")
    mount_pb2 = lazy_module(f"{_API}.types.mount_pb2")
    platform_pb2 = lazy_module(f"{_API}.types.platform_pb2")
    task_pb2 = lazy_module(f"{_API}.types.task.task_pb2")
    policy_pb2 = lazy_module("liner_api.liner.services.policy.v1.policy_pb2")
    policy_pb2_grpc = lazy_module("liner_api.liner.services.policy.v1.policy_pb2_grpc")
    transfer_pb2 = lazy_module("liner_api.liner.services.transfer.v1.transfer_pb2")
    transfer_pb2_grpc = lazy_module("liner_api.liner.services.transfer.v1.transfer_pb2_grpc")
    any_pb2 = lazy_module("google.protobuf.any_pb2")
    field_mask_pb2 = lazy_module("google.protobuf.field_mask_pb2")
    # The result types too: creating a frozen dataclass costs ~1.5 ms, and `liner version`
    # needs 2 of the 21.
    _system_types = lazy_module("liner.results.system")
    _content_types = lazy_module("liner.results.content")
    _snapshot_types = lazy_module("liner.results.snapshots")
    _container_types = lazy_module("liner.results.containers")

# Where each result type lives; `from liner.client import Image` keeps working (__getattr__).
_RESULT_MODULES = {
    **dict.fromkeys(
        ("VersionInfo", "ServerInfo", "PluginInfo", "Namespace", "Lease", "Resource"),
        "liner.results.system",
    ),
    **dict.fromkeys(
        (
            "ContentInfo",
            "IngestStatus",
            "Descriptor",
            "Image",
            "BlobProgress",
            "PullProgress",
            "PushProgress",
            "PolicyVerdict",
        ),
        "liner.results.content",
    ),
    **dict.fromkeys(("SnapshotInfo", "Usage", "Mount"), "liner.results.snapshots"),
    **dict.fromkeys(
        (
            "AnyValue",
            "Container",
            "Process",
            "TaskStatus",
            "ExitStatus",
            "ProcessInfo",
            "Metric",
            "Event",
        ),
        "liner.results.containers",
    ),
}


def __getattr__(name: str) -> Any:
    module = _RESULT_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


R = TypeVar("R")

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
MAX_MESSAGE_SIZE = 16 << 20
WRITE_CHUNK = 1 << 20

# content.v1.WriteAction values (fixed by the proto; test_client_imports checks them).
_STAT, _WRITE, _COMMIT = 0, 1, 2
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
# Go clients encode an unset time as year 1.
_GO_ZERO_SECONDS = -62135596800


def _time(ts: Timestamp) -> datetime | None:
    if ts.seconds in (0, _GO_ZERO_SECONDS) and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _content_info(info: content_pb2.Info) -> ContentInfo:
    return _content_types.ContentInfo(
        digest=info.digest,
        size=info.size,
        created_at=_time(info.created_at),
        updated_at=_time(info.updated_at),
        labels=dict(info.labels),
    )


def _ingest_status(status: content_pb2.Status) -> IngestStatus:
    return _content_types.IngestStatus(
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        expected=status.expected,
        started_at=_time(status.started_at),
        updated_at=_time(status.updated_at),
    )


def _descriptor(desc: descriptor_pb2.Descriptor) -> Descriptor:
    return _content_types.Descriptor(
        desc.media_type, desc.digest, desc.size, dict(desc.annotations)
    )


def _to_descriptor(desc: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=desc.media_type,
        digest=desc.digest,
        size=desc.size,
        annotations=dict(desc.annotations),
    )


def _image(image: images_pb2.Image) -> Image:
    return _content_types.Image(
        name=image.name,
        target=_descriptor(image.target),
        labels=dict(image.labels),
        created_at=_time(image.created_at),
        updated_at=_time(image.updated_at),
    )


def _snapshot_info(info: snapshots_pb2.Info) -> SnapshotInfo:
    kind = snapshots_pb2.Kind.Name(info.kind).lower() if info.kind else "unknown"
    return _snapshot_types.SnapshotInfo(
        name=info.name,
        parent=info.parent,
        kind=kind,
        created_at=_time(info.created_at),
        updated_at=_time(info.updated_at),
        labels=dict(info.labels),
    )


def _pull_progress(r: transfer_pb2.PullProgress) -> PullProgress:
    return _content_types.PullProgress(
        blobs=[
            _content_types.BlobProgress(_descriptor(b.descriptor), b.offset, b.state)
            for b in r.blobs
        ],
        name=r.name,
        target=_descriptor(r.target) if r.HasField("target") else None,
        done=r.done,
    )


def _push_progress(r: transfer_pb2.PullProgress) -> PushProgress:
    # The Transfer API streams a push's progress in the pull's message.
    return _content_types.PushProgress(
        blobs=[
            _content_types.BlobProgress(_descriptor(b.descriptor), b.offset, b.state)
            for b in r.blobs
        ],
        name=r.name,
        target=_descriptor(r.target) if r.HasField("target") else None,
        done=r.done,
    )


def _lease(lease: leases_pb2.Lease) -> Lease:
    return _system_types.Lease(
        id=lease.id, created_at=_time(lease.created_at), labels=dict(lease.labels)
    )


def _any(value: AnyValue | None) -> AnyPb | None:
    return any_pb2.Any(type_url=value.type_url, value=value.value) if value is not None else None


def _any_value(value: AnyPb, present: bool) -> AnyValue | None:
    return _container_types.AnyValue(value.type_url, value.value) if present else None


def _mount(m: mount_pb2.Mount) -> Mount:
    return _snapshot_types.Mount(m.type, m.source, tuple(m.options), m.target)


def _to_mount(m: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))


def _container(c: containers_pb2.Container) -> Container:
    return _container_types.Container(
        id=c.id,
        image=c.image,
        runtime=c.runtime.name,
        runtime_options=_any_value(c.runtime.options, c.runtime.HasField("options")),
        spec=_any_value(c.spec, c.HasField("spec")),
        labels=dict(c.labels),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=_time(c.created_at),
        updated_at=_time(c.updated_at),
        extensions={
            k: _container_types.AnyValue(v.type_url, v.value) for k, v in c.extensions.items()
        },
        sandbox=c.sandbox,
    )


def _to_container(c: Container) -> containers_pb2.Container:
    return containers_pb2.Container(
        id=c.id,
        labels=dict(c.labels),
        image=c.image,
        runtime=containers_pb2.Container.Runtime(name=c.runtime, options=_any(c.runtime_options)),
        spec=_any(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={
            k: any_pb2.Any(type_url=v.type_url, value=v.value) for k, v in c.extensions.items()
        },
        sandbox=c.sandbox,
    )


def _process(p: task_pb2.Process) -> Process:
    try:
        status = _container_types.TaskStatus(task_pb2.Status.Name(p.status).lower())
    except ValueError:  # a state this client does not know
        status = _container_types.TaskStatus.UNKNOWN
    return _container_types.Process(
        container_id=p.container_id,
        id=p.id,
        pid=p.pid,
        status=status,
        stdin=p.stdin,
        stdout=p.stdout,
        stderr=p.stderr,
        terminal=p.terminal,
        exit_status=p.exit_status,
        exited_at=_time(p.exited_at),
    )


def _process_info(p: task_pb2.ProcessInfo) -> ProcessInfo:
    exec_id = ""
    if p.HasField("info") and p.info.type_url.endswith("containerd.runc.v1.ProcessDetails"):
        with contextlib.suppress(Exception):
            exec_id = options_pb2.ProcessDetails.FromString(p.info.value).exec_id
    return _container_types.ProcessInfo(pid=p.pid, exec_id=exec_id)


def runc_options(binary_name: str = "") -> AnyValue:
    """`containerd.runc.v1.Options` (bare type URL, as Go's typeurl wants), optionally naming
    the runtime binary (`ctr run --runc-binary`)."""
    value = options_pb2.Options(binary_name=binary_name).SerializeToString()
    return _container_types.AnyValue(RUNC_OPTIONS_URL, value)


def socket_path(address: str) -> str:
    """The filesystem path of a `unix://` address (or of a bare path)."""
    return address.removeprefix("unix://")


class _Requests:
    """A request iterator fed one message at a time, so a bidi stream runs in lockstep."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def send(self, request: content_pb2.WriteContentRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[content_pb2.WriteContentRequest]:
        while (item := self._queue.get()) is not self._END:
            assert isinstance(item, content_pb2.WriteContentRequest)
            yield item


class Client:
    """A connection to linerd in one namespace (and optionally one lease)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        namespace: str = "default",
        *,
        lease: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = socket_path(address)
        self.namespace = namespace
        self.lease = lease
        # Per-call deadline in seconds; None waits forever.
        self.timeout = timeout or None
        self._channel = grpc.insecure_channel(
            f"unix://{self.address}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ],
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # The stubs are made on first use, so only the services a command calls are imported.

    @functools.cached_property
    def _version(self) -> version_pb2_grpc.VersionStub:
        return version_pb2_grpc.VersionStub(self._channel)

    @functools.cached_property
    def _introspection(self) -> introspection_pb2_grpc.IntrospectionStub:
        return introspection_pb2_grpc.IntrospectionStub(self._channel)

    @functools.cached_property
    def _namespaces(self) -> namespaces_pb2_grpc.NamespacesStub:
        return namespaces_pb2_grpc.NamespacesStub(self._channel)

    @functools.cached_property
    def _leases(self) -> leases_pb2_grpc.LeasesStub:
        return leases_pb2_grpc.LeasesStub(self._channel)

    @functools.cached_property
    def _content(self) -> content_pb2_grpc.ContentStub:
        return content_pb2_grpc.ContentStub(self._channel)

    @functools.cached_property
    def _images(self) -> images_pb2_grpc.ImagesStub:
        return images_pb2_grpc.ImagesStub(self._channel)

    @functools.cached_property
    def _snapshots(self) -> snapshots_pb2_grpc.SnapshotsStub:
        return snapshots_pb2_grpc.SnapshotsStub(self._channel)

    @functools.cached_property
    def _transfer(self) -> transfer_pb2_grpc.TransferStub:
        return transfer_pb2_grpc.TransferStub(self._channel)

    @functools.cached_property
    def _policy(self) -> policy_pb2_grpc.PolicyStub:
        return policy_pb2_grpc.PolicyStub(self._channel)

    @functools.cached_property
    def _containers(self) -> containers_pb2_grpc.ContainersStub:
        return containers_pb2_grpc.ContainersStub(self._channel)

    @functools.cached_property
    def _tasks(self) -> tasks_pb2_grpc.TasksStub:
        return tasks_pb2_grpc.TasksStub(self._channel)

    @functools.cached_property
    def _events(self) -> events_pb2_grpc.EventsStub:
        return events_pb2_grpc.EventsStub(self._channel)

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def _metadata(self) -> list[tuple[str, str]]:
        md = [(NAMESPACE_HEADER, self.namespace)]
        if self.lease:
            md.append((LEASE_HEADER, self.lease))
        return md

    @contextlib.contextmanager
    def leased(self, lease: str) -> Iterator[Self]:
        """Calls inside the block carry `lease` (the containerd-lease header)."""
        previous, self.lease = self.lease, lease
        try:
            yield self
        finally:
            self.lease = previous

    def _call(self, method: Callable[..., R], request: object, *, deadline: bool = True) -> R:
        """One unary call with the headers and (unless `deadline` is False) the deadline."""
        try:
            return method(
                request, metadata=self._metadata, timeout=self.timeout if deadline else None
            )
        except grpc.RpcError as e:
            raise self._translate(e) from None

    def _stream(
        self, method: Callable[..., Any], request: object, *, deadline: bool = True
    ) -> Iterator[Any]:
        """A server stream's messages; closing the iterator early cancels the call."""
        try:
            stream = method(
                request, metadata=self._metadata, timeout=self.timeout if deadline else None
            )
            try:
                yield from stream
            finally:
                stream.cancel()
        except grpc.RpcError as e:
            raise self._translate(e) from None

    def _translate(self, error: grpc.RpcError) -> LinerClientError:
        code: grpc.StatusCode | None = error.code() if isinstance(error, grpc.Call) else None
        details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
            reason = "permission denied" if "Permission denied" in details else "is it running?"
            return Unavailable(f"cannot connect to linerd at {self.address}: {reason}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.timeout:
            return DeadlineExceeded(f"timed out after {self.timeout:g}s ({details})")
        return error_for(name, details.splitlines()[0] if details else name)

    # -- version and introspection -----------------------------------------------------------

    def version(self) -> VersionInfo:
        r = self._call(self._version.Version, Empty())
        return _system_types.VersionInfo(version=r.version, revision=r.revision)

    def server(self) -> ServerInfo:
        r = self._call(self._introspection.Server, Empty())
        return _system_types.ServerInfo(uuid=r.uuid, pid=r.pid, pidns=r.pidns)

    def plugins(self, filters: Sequence[str] = ()) -> list[PluginInfo]:
        """What the daemon serves, with what each plugin exports (e.g. its directories)."""
        request = introspection_pb2.PluginsRequest(filters=list(filters))
        r = self._call(self._introspection.Plugins, request)
        return [
            _system_types.PluginInfo(
                type=p.type,
                id=p.id,
                requires=tuple(p.requires),
                exports=dict(p.exports),
                init_error=p.init_err.message if p.HasField("init_err") else "",
            )
            for p in r.plugins
        ]

    # -- namespaces --------------------------------------------------------------------------

    def namespaces(self, filter: str = "") -> list[Namespace]:
        r = self._call(self._namespaces.List, namespaces_pb2.ListNamespacesRequest(filter=filter))
        return [_system_types.Namespace(n.name, dict(n.labels)) for n in r.namespaces]

    def get_namespace(self, name: str) -> Namespace:
        r = self._call(self._namespaces.Get, namespaces_pb2.GetNamespaceRequest(name=name))
        return _system_types.Namespace(r.namespace.name, dict(r.namespace.labels))

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        request = namespaces_pb2.CreateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels=dict(labels or {}))
        )
        r = self._call(self._namespaces.Create, request)
        return _system_types.Namespace(r.namespace.name, dict(r.namespace.labels))

    def update_namespace(
        self, name: str, labels: Mapping[str, str], paths: Sequence[str] = ()
    ) -> Namespace:
        """`paths` as an update mask (`labels`, `labels.<key>`); none replaces all labels."""
        request = namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        r = self._call(self._namespaces.Update, request)
        return _system_types.Namespace(r.namespace.name, dict(r.namespace.labels))

    def set_namespace_labels(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set each label; an empty value removes that label."""
        return self.update_namespace(
            name,
            {k: v for k, v in labels.items() if v},
            [f"labels.{k}" for k in labels],
        )

    def delete_namespace(self, name: str) -> None:
        self._call(self._namespaces.Delete, namespaces_pb2.DeleteNamespaceRequest(name=name))

    # -- leases ------------------------------------------------------------------------------

    def leases(self, filters: Sequence[str] = ()) -> list[Lease]:
        r = self._call(self._leases.List, leases_pb2.ListRequest(filters=list(filters)))
        return [_lease(lease) for lease in r.leases]

    def create_lease(self, id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        """An empty id lets the daemon pick one."""
        r = self._call(
            self._leases.Create, leases_pb2.CreateRequest(id=id, labels=dict(labels or {}))
        )
        return _lease(r.lease)

    def delete_lease(self, id: str, *, sync: bool = False) -> None:
        """`sync` waits for the garbage collection the delete triggers."""
        self._call(self._leases.Delete, leases_pb2.DeleteRequest(id=id, sync=sync))

    def lease_resources(self, id: str) -> list[Resource]:
        r = self._call(self._leases.ListResources, leases_pb2.ListResourcesRequest(id=id))
        return [_system_types.Resource(id=res.id, type=res.type) for res in r.resources]

    # -- content -----------------------------------------------------------------------------

    def content(self, filters: Sequence[str] = ()) -> list[ContentInfo]:
        request = content_pb2.ListContentRequest(filters=list(filters))
        return [_content_info(i) for r in self._stream(self._content.List, request) for i in r.info]

    def info(self, digest: str) -> ContentInfo:
        r = self._call(self._content.Info, content_pb2.InfoRequest(digest=digest))
        return _content_info(r.info)

    def read(self, digest: str, offset: int = 0, size: int = 0) -> Iterator[bytes]:
        """The blob's bytes from `offset` in chunks; `size` <= 0 reads to the end."""
        request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        for r in self._stream(self._content.Read, request):
            yield r.data

    def delete_content(self, digest: str) -> None:
        self._call(self._content.Delete, content_pb2.DeleteContentRequest(digest=digest))

    def ingests(self, filters: Sequence[str] = ()) -> list[IngestStatus]:
        r = self._call(
            self._content.ListStatuses, content_pb2.ListStatusesRequest(filters=list(filters))
        )
        return [_ingest_status(s) for s in r.statuses]

    def ingest_status(self, ref: str) -> IngestStatus:
        r = self._call(self._content.Status, content_pb2.StatusRequest(ref=ref))
        return _ingest_status(r.status)

    def abort(self, ref: str) -> None:
        self._call(self._content.Abort, content_pb2.AbortRequest(ref=ref))

    def _abort_leftover(self, ref: str) -> None:
        for call, request in [
            (self._content.Status, content_pb2.StatusRequest(ref=ref)),
            (self._content.Abort, content_pb2.AbortRequest(ref=ref)),
        ]:
            try:
                self._call(call, request)
            except NotFound:
                return

    def write(
        self,
        ref: str,
        data: IO[bytes],
        *,
        total: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Ingest `data` under `ref` and commit it; returns the digest.

        Content the daemon has already (ALREADY_EXISTS) counts as written. A leftover ingest
        under the same ref is aborted and started afresh, never resumed: the bytes it holds may
        not be the ones being sent now, and its total may not fit them.
        """
        import hashlib

        hasher = hashlib.sha256()
        requests = _Requests()
        self._abort_leftover(ref)
        try:
            responses = self._content.Write(
                iter(requests), metadata=self._metadata, timeout=self.timeout
            )
            try:
                requests.send(
                    content_pb2.WriteContentRequest(
                        action=_STAT, ref=ref, total=total, expected=expected
                    )
                )
                next(responses)
                offset = 0
                while chunk := data.read(WRITE_CHUNK):
                    hasher.update(chunk)
                    requests.send(
                        content_pb2.WriteContentRequest(
                            action=_WRITE, ref=ref, offset=offset, data=chunk
                        )
                    )
                    next(responses)
                    offset += len(chunk)
                requests.send(
                    content_pb2.WriteContentRequest(
                        action=_COMMIT,
                        ref=ref,
                        offset=offset,
                        total=total or offset,
                        expected=expected,
                        labels=dict(labels or {}),
                    )
                )
                committed = next(responses)
                return committed.digest or "sha256:" + hasher.hexdigest()
            except StopIteration:
                raise Internal(f"write {ref!r}: the daemon ended the stream early") from None
            finally:
                requests.close()
                responses.cancel()
        except grpc.RpcError as e:
            error = self._translate(e)
            if isinstance(error, AlreadyExists):
                return expected or "sha256:" + hasher.hexdigest()
            raise error from None

    def read_blob(self, digest: str, limit: int = MAX_MESSAGE_SIZE) -> bytes:
        """A whole (small) blob: a manifest, index or config. Over `limit` bytes is an error."""
        data = bytearray()
        for chunk in self.read(digest):
            data += chunk
            if len(data) > limit:
                raise OutOfRange(f"{digest}: larger than {limit} bytes, not a document")
        return bytes(data)

    # -- images ------------------------------------------------------------------------------

    def images(self, filters: Sequence[str] = ()) -> list[Image]:
        r = self._call(self._images.List, images_pb2.ListImagesRequest(filters=list(filters)))
        return [_image(image) for image in r.images]

    def get_image(self, name: str) -> Image:
        r = self._call(self._images.Get, images_pb2.GetImageRequest(name=name))
        return _image(r.image)

    def create_image(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> Image:
        request = images_pb2.CreateImageRequest(
            image=images_pb2.Image(
                name=name, target=_to_descriptor(target), labels=dict(labels or {})
            )
        )
        r = self._call(self._images.Create, request)
        return _image(r.image)

    def update_image(
        self,
        name: str,
        *,
        target: Descriptor | None = None,
        labels: Mapping[str, str] | None = None,
        paths: Sequence[str] = (),
    ) -> Image:
        """Update `paths` (`target`, `labels`, `labels.<key>`); with none, what is given."""
        if not paths:
            paths = [p for p, v in (("target", target), ("labels", labels)) if v is not None]
        image = images_pb2.Image(name=name, labels=dict(labels or {}))
        if target is not None:
            image.target.CopyFrom(_to_descriptor(target))
        request = images_pb2.UpdateImageRequest(
            image=image, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        r = self._call(self._images.Update, request)
        return _image(r.image)

    def delete_image(self, name: str, *, sync: bool = False) -> None:
        """`sync` waits for the garbage collection the delete triggers."""
        self._call(self._images.Delete, images_pb2.DeleteImageRequest(name=name, sync=sync))

    # -- snapshots ---------------------------------------------------------------------------

    def snapshots(self, snapshotter: str, filters: Sequence[str] = ()) -> list[SnapshotInfo]:
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
        return [
            _snapshot_info(i) for r in self._stream(self._snapshots.List, request) for i in r.info
        ]

    def stat_snapshot(self, snapshotter: str, key: str) -> SnapshotInfo:
        r = self._call(
            self._snapshots.Stat,
            snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
        )
        return _snapshot_info(r.info)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self._call(
            self._snapshots.Remove,
            snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
        )

    def snapshot_usage(self, snapshotter: str, key: str) -> Usage:
        r = self._call(
            self._snapshots.Usage, snapshots_pb2.UsageRequest(snapshotter=snapshotter, key=key)
        )
        return _snapshot_types.Usage(size=r.size, inodes=r.inodes)

    # -- pull --------------------------------------------------------------------------------

    def pull(
        self,
        ref: str,
        platforms: Sequence[Platform | str] = (),
        all_platforms: bool = False,
        snapshotter: str = "",
        skip_unpack: bool = False,
        plain_http: bool = False,
        username: str = "",
        secret: str = "",
    ) -> Iterator[PullProgress]:
        """Pull `ref` in the daemon; yields its progress, the last update with `done` set.

        `platforms` empty means the daemon's; `snapshotter` empty the daemon's default. Closing
        the iterator early cancels the pull.
        """
        from liner_common.imagespec import parse_platform
        from liner_common.platforms import Platform

        wanted = [p if isinstance(p, Platform) else parse_platform(p) for p in platforms]
        request = transfer_pb2.PullRequest(
            reference=ref,
            platforms=[
                platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant)
                for p in wanted
            ],
            all_platforms=all_platforms,
            snapshotter=snapshotter,
            skip_unpack=skip_unpack,
            plain_http=plain_http,
            credentials=transfer_pb2.Credentials(username=username, secret=secret),
        )
        for r in self._stream(self._transfer.Pull, request):
            yield _pull_progress(r)

    # -- the signature policy ------------------------------------------------------------------

    def verify_image(
        self,
        ref: str,
        *,
        public_key: bytes = b"",
        plain_http: bool = False,
        username: str = "",
        secret: str = "",
    ) -> PolicyVerdict:
        """The daemon's verdict on the image `ref` names at its registry: by its policy, or
        with `public_key` (PEM) by that cosign key alone. A rejection is a verdict."""
        request = policy_pb2.VerifyRequest(
            reference=ref,
            plain_http=plain_http,
            credentials=policy_pb2.Credentials(username=username, secret=secret),
            public_key=public_key,
        )
        r = self._call(self._policy.Verify, request)
        return _content_types.PolicyVerdict(
            accepted=r.accepted,
            requirement=r.requirement,
            reason=r.reason,
            scope=r.scope,
            name=r.name,
            digest=r.digest,
            policy=r.policy,
            policy_generation=r.policy_generation,
        )

    def check_policy(self, data: bytes, name: str = "") -> list[str]:
        """Have the daemon parse a policy.json as it would load it; one line per scope.
        InvalidArgument (one line) when it is bad."""
        r = self._call(self._policy.Check, policy_pb2.CheckRequest(policy=data, name=name))
        return list(r.scopes)

    # -- push, export, import -----------------------------------------------------------------

    def push(
        self,
        ref: str,
        image: str = "",
        platforms: Sequence[Platform | str] = (),
        plain_http: bool = False,
        username: str = "",
        secret: str = "",
        target: Descriptor | None = None,
    ) -> Iterator[PushProgress]:
        """Push image `image` (empty: `ref`) to `ref` from the daemon; yields its progress
        (states "waiting", "uploading", "exists", "mounted", "done"), the last with `done`.
        `target`: push that manifest of the content store instead of an image's target."""
        from liner_common.imagespec import parse_platform
        from liner_common.platforms import Platform

        wanted = [p if isinstance(p, Platform) else parse_platform(p) for p in platforms]
        request = transfer_pb2.PushRequest(
            reference=ref,
            image=image,
            platforms=[
                platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant)
                for p in wanted
            ],
            plain_http=plain_http,
            credentials=transfer_pb2.Credentials(username=username, secret=secret),
        )
        if target is not None:
            request.target.CopyFrom(_to_descriptor(target))
        for r in self._stream(self._transfer.Push, request):
            yield _push_progress(r)

    def export(
        self,
        names: Sequence[str],
        platforms: Sequence[Platform | str] = (),
        all_platforms: bool = False,
        docker_manifest: bool = True,
    ) -> Iterator[bytes]:
        """The images as an OCI image layout tar, in chunks."""
        from liner_common.imagespec import parse_platform
        from liner_common.platforms import Platform

        wanted = [p if isinstance(p, Platform) else parse_platform(p) for p in platforms]
        request = transfer_pb2.ExportRequest(
            names=list(names),
            platforms=[
                platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant)
                for p in wanted
            ],
            all_platforms=all_platforms,
            docker_manifest=docker_manifest,
        )
        for r in self._stream(self._transfer.Export, request):
            yield r.data

    def import_archive(
        self,
        chunks: Iterable[bytes],
        snapshotter: str = "",
        skip_unpack: bool = False,
        base_name: str = "",
        all_platforms: bool = False,
    ) -> list[tuple[str, Descriptor, bool]]:
        """Import an image archive (OCI layout or Docker archive tar) streamed as `chunks`;
        returns (name, target, created) per image."""
        options = transfer_pb2.ImportOptions(
            snapshotter=snapshotter,
            skip_unpack=skip_unpack,
            base_name=base_name,
            all_platforms=all_platforms,
        )

        def requests() -> Iterator[transfer_pb2.ImportChunk]:
            yield transfer_pb2.ImportChunk(options=options)
            for data in chunks:
                if data:
                    yield transfer_pb2.ImportChunk(data=data)

        r = self._call(self._transfer.Import, requests())
        return [(i.name, _descriptor(i.target), i.created) for i in r.images]

    # -- snapshots: prepare, view, mounts ------------------------------------------------------

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        r = self._call(self._snapshots.Prepare, request)
        return [_mount(m) for m in r.mounts]

    def view_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        r = self._call(self._snapshots.View, request)
        return [_mount(m) for m in r.mounts]

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        r = self._call(
            self._snapshots.Mounts, snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key)
        )
        return [_mount(m) for m in r.mounts]

    # -- containers --------------------------------------------------------------------------

    def containers(self, filters: Sequence[str] = ()) -> list[Container]:
        request = containers_pb2.ListContainersRequest(filters=list(filters))
        found: list[Container] = []
        try:
            found.extend(
                _container(r.container) for r in self._stream(self._containers.ListStream, request)
            )
        except Unimplemented:
            r = self._call(self._containers.List, request)
            found = [_container(c) for c in r.containers]
        return found

    def get_container(self, id: str) -> Container:
        r = self._call(self._containers.Get, containers_pb2.GetContainerRequest(id=id))
        return _container(r.container)

    def create_container(self, container: Container) -> Container:
        request = containers_pb2.CreateContainerRequest(container=_to_container(container))
        r = self._call(self._containers.Create, request)
        return _container(r.container)

    def update_container(self, container: Container, paths: Sequence[str] = ()) -> Container:
        """`paths` as an update mask (`labels`, `labels.<key>`, `image`, `spec`, ...)."""
        request = containers_pb2.UpdateContainerRequest(
            container=_to_container(container),
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        r = self._call(self._containers.Update, request)
        return _container(r.container)

    def delete_container(self, id: str) -> None:
        self._call(self._containers.Delete, containers_pb2.DeleteContainerRequest(id=id))

    # -- tasks -------------------------------------------------------------------------------

    def create_task(
        self,
        container_id: str,
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        rootfs: Sequence[Mount] = (),
        runtime_path: str = "",
    ) -> int:
        """Create the container's task (created, not yet running); returns its pid."""
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id,
            rootfs=[_to_mount(m) for m in rootfs],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
            runtime_path=runtime_path,
        )
        r = self._call(self._tasks.Create, request)
        return int(r.pid)

    def start_task(self, container_id: str, exec_id: str = "") -> int:
        r = self._call(
            self._tasks.Start, tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id)
        )
        return int(r.pid)

    def wait_task(self, container_id: str, exec_id: str = "") -> ExitStatus:
        """Block until the task (or exec process) exits; no deadline applies."""
        r = self._call(
            self._tasks.Wait,
            tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id),
            deadline=False,
        )
        return _container_types.ExitStatus(status=r.exit_status, exited_at=_time(r.exited_at))

    def get_task(self, container_id: str, exec_id: str = "") -> Process:
        r = self._call(
            self._tasks.Get, tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id)
        )
        return _process(r.process)

    def tasks(self, filter: str = "") -> list[Process]:
        r = self._call(self._tasks.List, tasks_pb2.ListTasksRequest(filter=filter))
        return [_process(p) for p in r.tasks]

    def kill_task(
        self, container_id: str, signal: int, *, exec_id: str = "", all: bool = False
    ) -> None:
        self._call(
            self._tasks.Kill,
            tasks_pb2.KillRequest(
                container_id=container_id, exec_id=exec_id, signal=signal, all=all
            ),
        )

    def delete_task(self, container_id: str) -> ExitStatus:
        r = self._call(self._tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=container_id))
        return _container_types.ExitStatus(
            status=r.exit_status, exited_at=_time(r.exited_at), pid=r.pid, id=r.id
        )

    def exec_process(
        self,
        container_id: str,
        exec_id: str,
        process: Mapping[str, object],
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
    ) -> None:
        """Add an exec process (an OCI `process` object, sent as JSON) to a running task."""
        import json

        request = tasks_pb2.ExecProcessRequest(
            container_id=container_id,
            exec_id=exec_id,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
            spec=any_pb2.Any(type_url=PROCESS_URL, value=json.dumps(process).encode()),
        )
        self._call(self._tasks.Exec, request)

    def delete_process(self, container_id: str, exec_id: str) -> ExitStatus:
        r = self._call(
            self._tasks.DeleteProcess,
            tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
        )
        return _container_types.ExitStatus(
            status=r.exit_status, exited_at=_time(r.exited_at), pid=r.pid, id=r.id
        )

    def close_io(self, container_id: str, exec_id: str = "", *, stdin: bool = True) -> None:
        self._call(
            self._tasks.CloseIO,
            tasks_pb2.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=stdin),
        )

    def resize_pty(self, container_id: str, width: int, height: int, exec_id: str = "") -> None:
        self._call(
            self._tasks.ResizePty,
            tasks_pb2.ResizePtyRequest(
                container_id=container_id, exec_id=exec_id, width=width, height=height
            ),
        )

    def pause_task(self, container_id: str) -> None:
        self._call(self._tasks.Pause, tasks_pb2.PauseTaskRequest(container_id=container_id))

    def resume_task(self, container_id: str) -> None:
        self._call(self._tasks.Resume, tasks_pb2.ResumeTaskRequest(container_id=container_id))

    def list_pids(self, container_id: str) -> list[ProcessInfo]:
        r = self._call(self._tasks.ListPids, tasks_pb2.ListPidsRequest(container_id=container_id))
        return [_process_info(p) for p in r.processes]

    def metrics(self, filters: Sequence[str] = ()) -> list[Metric]:
        r = self._call(self._tasks.Metrics, tasks_pb2.MetricsRequest(filters=list(filters)))
        return [
            _container_types.Metric(
                id=m.id,
                timestamp=_time(m.timestamp),
                data=_any_value(m.data, m.HasField("data")),
            )
            for m in r.metrics
        ]

    def update_task(
        self,
        container_id: str,
        resources: Mapping[str, object],
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Change a running task's resources (an OCI `linux.resources` object, sent as JSON)."""
        import json

        request = tasks_pb2.UpdateTaskRequest(
            container_id=container_id,
            resources=any_pb2.Any(type_url=RESOURCES_URL, value=json.dumps(resources).encode()),
            annotations=dict(annotations or {}),
        )
        self._call(self._tasks.Update, request)

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, filters: Sequence[str] = ()) -> Iterator[Event]:
        """Events as they happen (of every namespace unless a filter says otherwise), until the
        iterator is closed. No deadline applies."""
        from liner.events import decode

        request = events_pb2.SubscribeRequest(filters=list(filters))
        for envelope in self._stream(self._events.Subscribe, request, deadline=False):
            yield _container_types.Event(
                timestamp=_time(envelope.timestamp),
                timestamp_text=envelope.timestamp.ToJsonString(),
                namespace=envelope.namespace,
                topic=envelope.topic,
                type_url=envelope.event.type_url,
                value=envelope.event.value,
                payload=decode(envelope.event.type_url, envelope.event.value),
            )
