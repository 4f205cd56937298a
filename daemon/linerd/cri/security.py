"""The CRI's security context, resources, mounts and devices, applied to an OCI runtime spec.

Pure transforms of a spec dict (as `liner_common.ocispec` generates it) from CRI messages,
following containerd 1.7's CRI plugin. They read files (the image's /etc/passwd and
/etc/group, seccomp profiles, /proc/self/mountinfo, /dev): call them off the event loop.
Errors are `linerd.errdefs` exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liner_api.runtime.v1 import api_pb2
from linerd.errdefs import NotImplementedYet

Spec = dict[str, Any]


def apply_security_context(
    spec: Spec,
    sc: api_pb2.LinuxContainerSecurityContext,
    *,
    rootfs: Path,
    image_user: str,
    sandbox_privileged: bool,
) -> None:
    """User and groups, read-only rootfs, privileged, capabilities, no_new_privs, masked and
    read-only paths, seccomp and AppArmor of a container."""
    raise NotImplementedYet("security context")


def apply_sandbox_security_context(
    spec: Spec,
    sc: api_pb2.LinuxSandboxSecurityContext,
    *,
    rootfs: Path,
    image_user: str,
) -> None:
    """The pause container's user and groups, seccomp and read-only rootfs."""
    raise NotImplementedYet("sandbox security context")


def apply_resources(spec: Spec, resources: api_pb2.LinuxContainerResources) -> None:
    """CPU, memory, swap, hugepages, unified and oom_score_adj."""
    raise NotImplementedYet("resources")


def apply_mounts(spec: Spec, mounts: Sequence[api_pb2.Mount]) -> None:
    """The CRI's bind mounts (blocking: resolves and creates host paths)."""
    raise NotImplementedYet("mounts")


def apply_devices(spec: Spec, devices: Sequence[api_pb2.Device], *, privileged: bool) -> None:
    """Host devices by path, with their cgroup rules; privileged adds every host device."""
    raise NotImplementedYet("devices")
