"""A small synchronous client for linerd's containerd v1 API.

Every call goes through one error boundary (`Client._errors`) that turns `grpc.RpcError` into
`LinerClientError`, so callers never see gRPC's exception types.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform as host
import queue
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Self

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.introspection.v1 import introspection_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.services.version.v1 import version_pb2_grpc
from liner_api.containerd.types import descriptor_pb2, platform_pb2
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
DEFAULT_ADDRESS = "/run/liner/liner.sock"
MAX_MESSAGE_SIZE = 16 << 20
WRITE_CHUNK = 1 << 20

_STAT = content_pb2.WriteAction.Value("STAT")
_WRITE = content_pb2.WriteAction.Value("WRITE")
_COMMIT = content_pb2.WriteAction.Value("COMMIT")
# Go clients encode an unset time as year 1.
_GO_ZERO_SECONDS = -62135596800


class LinerClientError(Exception):
    """A failed call: the gRPC status code name (e.g. NOT_FOUND) and a one-line message."""

    def __init__(self, code_name: str, message: str) -> None:
        super().__init__(message)
        self.code_name = code_name
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class ServerInfo:
    uuid: str
    pid: int
    pidns: int


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    created_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    type: str


@dataclass(frozen=True, slots=True)
class ContentInfo:
    digest: str
    size: int
    created_at: datetime | None
    updated_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
}


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform, `os/arch[/variant]`, normalized as containerd does."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64`, `linux/arm64/v8`, or a bare `arm64` (os linux). ValueError if bad."""
        parts = text.strip().split("/")
        if not text.strip() or len(parts) > 3 or any(not p for p in parts):
            raise ValueError(f"invalid platform {text!r}: want os/arch[/variant]")
        if len(parts) == 1:
            parts = ["linux", parts[0]]
        return cls(*parts).normalized()

    def normalized(self) -> Platform:
        arch, variant = _ARCH_ALIASES.get(self.architecture, (self.architecture, self.variant))
        variant = variant or self.variant
        if arch == "arm64" and variant == "v8":
            variant = ""  # containerd treats arm64 and arm64/v8 alike
        return Platform(self.os.lower(), arch, variant)

    def matches(self, other: Platform) -> bool:
        a, b = self.normalized(), other.normalized()
        return (
            a.os == b.os
            and a.architecture == b.architecture
            and (not a.variant or not b.variant or a.variant == b.variant)
        )


def host_platform() -> Platform:
    """This machine's platform (the daemon's default when a pull names none)."""
    machine = host.machine()
    if machine.startswith("armv7"):
        return Platform("linux", "arm", "v7")
    arch, variant = _ARCH_ALIASES.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "committed", "active", "view" or "unknown"
    created_at: datetime | None
    updated_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    size: int
    inodes: int


@dataclass(frozen=True, slots=True)
class BlobProgress:
    descriptor: Descriptor
    offset: int
    # "waiting", "downloading", "downloaded", "exists", "unpacking", "unpacked", "failed"
    state: str


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One update of a pull: every blob so far; the last one has `done`, `name` and `target`."""

    blobs: list[BlobProgress]
    name: str = ""
    target: Descriptor | None = None
    done: bool = False


def _time(ts: Timestamp) -> datetime | None:
    if ts.seconds in (0, _GO_ZERO_SECONDS) and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _content_info(info: content_pb2.Info) -> ContentInfo:
    return ContentInfo(
        digest=info.digest,
        size=info.size,
        created_at=_time(info.created_at),
        updated_at=_time(info.updated_at),
        labels=dict(info.labels),
    )


def _ingest_status(status: content_pb2.Status) -> IngestStatus:
    return IngestStatus(
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        expected=status.expected,
        started_at=_time(status.started_at),
        updated_at=_time(status.updated_at),
    )


def _descriptor(desc: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations))


def _to_descriptor(desc: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=desc.media_type,
        digest=desc.digest,
        size=desc.size,
        annotations=dict(desc.annotations),
    )


def _image(image: images_pb2.Image) -> Image:
    return Image(
        name=image.name,
        target=_descriptor(image.target),
        labels=dict(image.labels),
        created_at=_time(image.created_at),
        updated_at=_time(image.updated_at),
    )


def _snapshot_info(info: snapshots_pb2.Info) -> SnapshotInfo:
    kind = snapshots_pb2.Kind.Name(info.kind).lower() if info.kind else "unknown"
    return SnapshotInfo(
        name=info.name,
        parent=info.parent,
        kind=kind,
        created_at=_time(info.created_at),
        updated_at=_time(info.updated_at),
        labels=dict(info.labels),
    )


def _pull_progress(r: transfer_pb2.PullProgress) -> PullProgress:
    return PullProgress(
        blobs=[BlobProgress(_descriptor(b.descriptor), b.offset, b.state) for b in r.blobs],
        name=r.name,
        target=_descriptor(r.target) if r.HasField("target") else None,
        done=r.done,
    )


def _lease(lease: leases_pb2.Lease) -> Lease:
    return Lease(id=lease.id, created_at=_time(lease.created_at), labels=dict(lease.labels))


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
        self._version = version_pb2_grpc.VersionStub(self._channel)
        self._introspection = introspection_pb2_grpc.IntrospectionStub(self._channel)
        self._namespaces = namespaces_pb2_grpc.NamespacesStub(self._channel)
        self._leases = leases_pb2_grpc.LeasesStub(self._channel)
        self._content = content_pb2_grpc.ContentStub(self._channel)
        self._images = images_pb2_grpc.ImagesStub(self._channel)
        self._snapshots = snapshots_pb2_grpc.SnapshotsStub(self._channel)
        self._transfer = transfer_pb2_grpc.TransferStub(self._channel)

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

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def _metadata(self) -> list[tuple[str, str]]:
        md = [(NAMESPACE_HEADER, self.namespace)]
        if self.lease:
            md.append((LEASE_HEADER, self.lease))
        return md

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The error boundary: grpc.RpcError in, LinerClientError out."""
        try:
            yield
        except grpc.RpcError as e:
            raise self._translate(e) from None

    def _translate(self, error: grpc.RpcError) -> LinerClientError:
        code: grpc.StatusCode | None = error.code() if isinstance(error, grpc.Call) else None
        details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
            reason = "permission denied" if "Permission denied" in details else "is it running?"
            return LinerClientError(name, f"cannot connect to linerd at {self.address}: {reason}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.timeout:
            return LinerClientError(name, f"timed out after {self.timeout:g}s ({details})")
        return LinerClientError(name, details.splitlines()[0] if details else name)

    # -- version and introspection -----------------------------------------------------------

    def version(self) -> VersionInfo:
        with self._errors():
            r = self._version.Version(Empty(), metadata=self._metadata, timeout=self.timeout)
        return VersionInfo(version=r.version, revision=r.revision)

    def server(self) -> ServerInfo:
        with self._errors():
            r = self._introspection.Server(Empty(), metadata=self._metadata, timeout=self.timeout)
        return ServerInfo(uuid=r.uuid, pid=r.pid, pidns=r.pidns)

    # -- namespaces --------------------------------------------------------------------------

    def namespaces(self, filter: str = "") -> list[Namespace]:
        with self._errors():
            r = self._namespaces.List(
                namespaces_pb2.ListNamespacesRequest(filter=filter),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return [Namespace(n.name, dict(n.labels)) for n in r.namespaces]

    def get_namespace(self, name: str) -> Namespace:
        with self._errors():
            r = self._namespaces.Get(
                namespaces_pb2.GetNamespaceRequest(name=name),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return Namespace(r.namespace.name, dict(r.namespace.labels))

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        request = namespaces_pb2.CreateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels=dict(labels or {}))
        )
        with self._errors():
            r = self._namespaces.Create(request, metadata=self._metadata, timeout=self.timeout)
        return Namespace(r.namespace.name, dict(r.namespace.labels))

    def update_namespace(
        self, name: str, labels: Mapping[str, str], paths: Sequence[str] = ()
    ) -> Namespace:
        """`paths` as an update mask (`labels`, `labels.<key>`); none replaces all labels."""
        request = namespaces_pb2.UpdateNamespaceRequest(
            namespace=namespaces_pb2.Namespace(name=name, labels=dict(labels)),
            update_mask=FieldMask(paths=list(paths)),
        )
        with self._errors():
            r = self._namespaces.Update(request, metadata=self._metadata, timeout=self.timeout)
        return Namespace(r.namespace.name, dict(r.namespace.labels))

    def set_namespace_labels(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set each label; an empty value removes that label."""
        return self.update_namespace(
            name,
            {k: v for k, v in labels.items() if v},
            [f"labels.{k}" for k in labels],
        )

    def delete_namespace(self, name: str) -> None:
        with self._errors():
            self._namespaces.Delete(
                namespaces_pb2.DeleteNamespaceRequest(name=name),
                metadata=self._metadata,
                timeout=self.timeout,
            )

    # -- leases ------------------------------------------------------------------------------

    def leases(self, filters: Sequence[str] = ()) -> list[Lease]:
        with self._errors():
            r = self._leases.List(
                leases_pb2.ListRequest(filters=list(filters)),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return [_lease(lease) for lease in r.leases]

    def create_lease(self, id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        """An empty id lets the daemon pick one."""
        with self._errors():
            r = self._leases.Create(
                leases_pb2.CreateRequest(id=id, labels=dict(labels or {})),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return _lease(r.lease)

    def delete_lease(self, id: str, *, sync: bool = False) -> None:
        """`sync` waits for the garbage collection the delete triggers."""
        with self._errors():
            self._leases.Delete(
                leases_pb2.DeleteRequest(id=id, sync=sync),
                metadata=self._metadata,
                timeout=self.timeout,
            )

    def lease_resources(self, id: str) -> list[Resource]:
        with self._errors():
            r = self._leases.ListResources(
                leases_pb2.ListResourcesRequest(id=id),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return [Resource(id=res.id, type=res.type) for res in r.resources]

    # -- content -----------------------------------------------------------------------------

    def content(self, filters: Sequence[str] = ()) -> list[ContentInfo]:
        found: list[ContentInfo] = []
        with self._errors():
            for r in self._content.List(
                content_pb2.ListContentRequest(filters=list(filters)),
                metadata=self._metadata,
                timeout=self.timeout,
            ):
                found.extend(_content_info(info) for info in r.info)
        return found

    def info(self, digest: str) -> ContentInfo:
        with self._errors():
            r = self._content.Info(
                content_pb2.InfoRequest(digest=digest),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return _content_info(r.info)

    def read(self, digest: str, offset: int = 0, size: int = 0) -> Iterator[bytes]:
        """The blob's bytes from `offset` in chunks; `size` <= 0 reads to the end."""
        with self._errors():
            stream = self._content.Read(
                content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size),
                metadata=self._metadata,
                timeout=self.timeout,
            )
            try:
                for r in stream:
                    yield r.data
            finally:
                stream.cancel()

    def delete_content(self, digest: str) -> None:
        with self._errors():
            self._content.Delete(
                content_pb2.DeleteContentRequest(digest=digest),
                metadata=self._metadata,
                timeout=self.timeout,
            )

    def ingests(self, filters: Sequence[str] = ()) -> list[IngestStatus]:
        with self._errors():
            r = self._content.ListStatuses(
                content_pb2.ListStatusesRequest(filters=list(filters)),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return [_ingest_status(s) for s in r.statuses]

    def ingest_status(self, ref: str) -> IngestStatus:
        with self._errors():
            r = self._content.Status(
                content_pb2.StatusRequest(ref=ref), metadata=self._metadata, timeout=self.timeout
            )
        return _ingest_status(r.status)

    def abort(self, ref: str) -> None:
        with self._errors():
            self._content.Abort(
                content_pb2.AbortRequest(ref=ref), metadata=self._metadata, timeout=self.timeout
            )

    def _abort_leftover(self, ref: str) -> None:
        for call, request in [
            (self._content.Status, content_pb2.StatusRequest(ref=ref)),
            (self._content.Abort, content_pb2.AbortRequest(ref=ref)),
        ]:
            try:
                call(request, metadata=self._metadata, timeout=self.timeout)
            except grpc.RpcError as e:
                if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise

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
        hasher = hashlib.sha256()
        requests = _Requests()
        with self._errors():
            self._abort_leftover(ref)
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
            except grpc.RpcError as e:
                if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return expected or "sha256:" + hasher.hexdigest()
                raise
            except StopIteration:
                raise LinerClientError(
                    "INTERNAL", f"write {ref!r}: the daemon ended the stream early"
                ) from None
            finally:
                requests.close()
                responses.cancel()

    def read_blob(self, digest: str, limit: int = MAX_MESSAGE_SIZE) -> bytes:
        """A whole (small) blob: a manifest, index or config. Over `limit` bytes is an error."""
        data = bytearray()
        for chunk in self.read(digest):
            data += chunk
            if len(data) > limit:
                raise LinerClientError(
                    "OUT_OF_RANGE", f"{digest}: larger than {limit} bytes, not a document"
                )
        return bytes(data)

    # -- images ------------------------------------------------------------------------------

    def images(self, filters: Sequence[str] = ()) -> list[Image]:
        with self._errors():
            r = self._images.List(
                images_pb2.ListImagesRequest(filters=list(filters)),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return [_image(image) for image in r.images]

    def get_image(self, name: str) -> Image:
        with self._errors():
            r = self._images.Get(
                images_pb2.GetImageRequest(name=name),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return _image(r.image)

    def create_image(
        self, name: str, target: Descriptor, labels: Mapping[str, str] | None = None
    ) -> Image:
        request = images_pb2.CreateImageRequest(
            image=images_pb2.Image(
                name=name, target=_to_descriptor(target), labels=dict(labels or {})
            )
        )
        with self._errors():
            r = self._images.Create(request, metadata=self._metadata, timeout=self.timeout)
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
        request = images_pb2.UpdateImageRequest(image=image, update_mask=FieldMask(paths=paths))
        with self._errors():
            r = self._images.Update(request, metadata=self._metadata, timeout=self.timeout)
        return _image(r.image)

    def delete_image(self, name: str, *, sync: bool = False) -> None:
        """`sync` waits for the garbage collection the delete triggers."""
        with self._errors():
            self._images.Delete(
                images_pb2.DeleteImageRequest(name=name, sync=sync),
                metadata=self._metadata,
                timeout=self.timeout,
            )

    # -- snapshots ---------------------------------------------------------------------------

    def snapshots(self, snapshotter: str, filters: Sequence[str] = ()) -> list[SnapshotInfo]:
        found: list[SnapshotInfo] = []
        with self._errors():
            for r in self._snapshots.List(
                snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters)),
                metadata=self._metadata,
                timeout=self.timeout,
            ):
                found.extend(_snapshot_info(info) for info in r.info)
        return found

    def stat_snapshot(self, snapshotter: str, key: str) -> SnapshotInfo:
        with self._errors():
            r = self._snapshots.Stat(
                snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return _snapshot_info(r.info)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        with self._errors():
            self._snapshots.Remove(
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                metadata=self._metadata,
                timeout=self.timeout,
            )

    def snapshot_usage(self, snapshotter: str, key: str) -> Usage:
        with self._errors():
            r = self._snapshots.Usage(
                snapshots_pb2.UsageRequest(snapshotter=snapshotter, key=key),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        return Usage(size=r.size, inodes=r.inodes)

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
        wanted = [p if isinstance(p, Platform) else Platform.parse(p) for p in platforms]
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
        with self._errors():
            stream = self._transfer.Pull(request, metadata=self._metadata, timeout=self.timeout)
            try:
                for r in stream:
                    yield _pull_progress(r)
            finally:
                stream.cancel()
