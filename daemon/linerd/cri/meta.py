"""What the CRI keeps about a pod sandbox or a container: JSON in a container extension.

A sandbox and a container are each a containerd container record in namespace `k8s.io`
(label `io.cri-containerd.kind`), so `ctr -n k8s.io containers ls` shows them and there is
no second store. The CRI's own facts (the request's config as protobuf bytes, times, the
netns, the pod's addresses, the exit) live in one extension of the record, under
containerd's extension names. Everything here is plain data: no gRPC, no I/O.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from linerd.core.types import Container, Encoded
from linerd.errdefs import Internal

NAMESPACE = "k8s.io"
KIND_LABEL = "io.cri-containerd.kind"
KIND_SANDBOX = "sandbox"
KIND_CONTAINER = "container"
SANDBOX_EXTENSION = "io.cri-containerd.sandbox.metadata"
CONTAINER_EXTENSION = "io.cri-containerd.container.metadata"
# The extension's type: JSON of the dataclasses below (containerd's own is JSON too).
SANDBOX_TYPE = "liner.cri.v1.SandboxMetadata"
CONTAINER_TYPE = "liner.cri.v1.ContainerMetadata"
RUNTIME = "io.containerd.runc.v2"

# OCI annotations (containerd's pkg/cri/annotations).
A_PREFIX = "io.kubernetes.cri."
A_CONTAINER_TYPE = A_PREFIX + "container-type"
A_SANDBOX_ID = A_PREFIX + "sandbox-id"
A_SANDBOX_NAMESPACE = A_PREFIX + "sandbox-namespace"
A_SANDBOX_UID = A_PREFIX + "sandbox-uid"
A_SANDBOX_NAME = A_PREFIX + "sandbox-name"
A_SANDBOX_LOG_DIR = A_PREFIX + "sandbox-log-directory"
A_CONTAINER_NAME = A_PREFIX + "container-name"
A_IMAGE_NAME = A_PREFIX + "image-name"

T = TypeVar("T", "SandboxMeta", "ContainerMeta")


def now_ns() -> int:
    return time.time_ns()


def new_id() -> str:
    """64 hex digits, as kubelet and crictl expect ids."""
    return secrets.token_hex(32)


@dataclass(slots=True)
class SandboxMeta:
    config: bytes  # the PodSandboxConfig as sent (serialized protobuf)
    name: str  # the reserved name: name_namespace_uid_attempt
    created_at: int  # ns
    runtime_handler: str = ""
    netns: str = ""  # pinned netns file ("" = host network or already removed)
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    shm: str = ""  # the pod's /dev/shm tmpfs mount point ("" = host IPC or none)
    files: str = ""  # dir of hostname, hosts, resolv.conf
    hostname: str = ""
    cgroup_parent: str = ""
    image: str = ""  # the sandbox image's reference ("" = no pause process)
    # "creating" until the pod's namespaces (and pause) are up; "ready" after; "stopped" once
    # StopPodSandbox ran.
    state: str = "creating"
    ipcns: str = ""  # pinned IPC namespace file ("" = host IPC, or a pod older than pinning)
    utsns: str = ""  # pinned UTS namespace file ("" = host network, or older than pinning)
    infra: bool = True  # a pause process holds the pod (older records: always)


@dataclass(slots=True)
class ContainerMeta:
    config: bytes  # the ContainerConfig as sent (serialized protobuf)
    name: str  # reserved: name_sandboxname_sandboxnamespace_sandboxuid_attempt
    sandbox_id: str
    created_at: int
    image_ref: str = ""  # first repo digest of the image (or its id)
    image_name: str = ""  # first repo tag (or what was asked for)
    image_id: str = ""  # the config digest
    log_path: str = ""  # absolute ("" = none)
    stop_signal: str = "SIGTERM"
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # "created", "running" (a task was started), "exited" (the exit is recorded above)
    state: str = "created"


def _encode(meta: SandboxMeta | ContainerMeta) -> bytes:
    doc: dict[str, Any] = asdict(meta)
    doc["config"] = base64.b64encode(meta.config).decode()
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode(cls: type[T], data: bytes) -> T:
    try:
        doc = json.loads(data)
        doc["config"] = base64.b64decode(doc["config"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})
    except (ValueError, KeyError, TypeError) as e:
        raise Internal(f"corrupt CRI metadata: {e}") from None


def sandbox_extension(meta: SandboxMeta) -> dict[str, Encoded]:
    return {SANDBOX_EXTENSION: Encoded(SANDBOX_TYPE, _encode(meta))}


def container_extension(meta: ContainerMeta) -> dict[str, Encoded]:
    return {CONTAINER_EXTENSION: Encoded(CONTAINER_TYPE, _encode(meta))}


def kind(record: Container) -> str:
    return record.labels.get(KIND_LABEL, "")


def sandbox_meta(record: Container) -> SandboxMeta:
    ext = record.extensions.get(SANDBOX_EXTENSION)
    if ext is None:
        raise Internal(f"sandbox {record.id} has no CRI metadata")
    return _decode(SandboxMeta, ext.value)


def container_meta(record: Container) -> ContainerMeta:
    ext = record.extensions.get(CONTAINER_EXTENSION)
    if ext is None:
        raise Internal(f"container {record.id} has no CRI metadata")
    return _decode(ContainerMeta, ext.value)


def matches_labels(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """CRI label selectors: every pair must be present and equal (AND)."""
    return all(labels.get(k) == v for k, v in selector.items())
