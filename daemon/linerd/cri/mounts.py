"""The CRI's bind mounts and host devices, applied to an OCI runtime spec (containerd 1.7's
`WithMounts` / `WithDevices` / `WithHostDevices` rules).

Blocking (stats, mkdirs, reads /proc/self/mountinfo and walks /dev): call off the event loop.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from liner_api.runtime.v1 import api_pb2
from linerd.errdefs import FailedPrecondition, InvalidArgument
from linerd.mounts import unescape_mountinfo

Spec = dict[str, Any]

PRIVATE = api_pb2.PROPAGATION_PRIVATE
HOST_TO_CONTAINER = api_pb2.PROPAGATION_HOST_TO_CONTAINER
BIDIRECTIONAL = api_pb2.PROPAGATION_BIDIRECTIONAL

MOUNTINFO = "/proc/self/mountinfo"
HOST_DEV = "/dev"
# Not devices a container should get copies of (runc's and containerd's list).
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
_SKIPPED_DEV_FILES = frozenset({"console"})


# -- /proc/self/mountinfo -----------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    optional: tuple[str, ...]  # "shared:N", "master:N", "propagate_from:N", "unbindable"

    @property
    def shared(self) -> bool:
        return any(f.startswith("shared:") for f in self.optional)

    @property
    def slave(self) -> bool:
        return any(f.startswith("master:") for f in self.optional)


def parse_mountinfo(text: str) -> list[MountInfo]:
    """``id parent major:minor root mountpoint options [optional...] - fstype source super``."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        end = fields.index("-", 6)
        mounts.append(MountInfo(unescape_mountinfo(fields[4]), tuple(fields[6:end])))
    return mounts


def read_mountinfo() -> list[MountInfo]:
    with open(MOUNTINFO) as f:
        return parse_mountinfo(f.read())


def lookup_mount(path: str, mounts: Sequence[MountInfo]) -> MountInfo:
    """The mount ``path`` (absolute, symlinks resolved) lives on: the longest mount point
    above it, the last mounted when several stack at one point."""
    best: MountInfo | None = None
    for m in mounts:
        point = m.mount_point
        inside = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = m
    if best is None:
        raise FailedPrecondition(f"no mount found for {path!r} in {MOUNTINFO}")
    return best


def ensure_shared(path: str, mounts: Sequence[MountInfo]) -> None:
    """rshared into a container only works from a shared mount (containerd's check)."""
    m = lookup_mount(path, mounts)
    if not m.shared:
        raise FailedPrecondition(
            f"path {path!r} is mounted on {m.mount_point!r} but it is not a shared mount"
            " (bidirectional propagation needs one: mount --make-shared)"
        )


def ensure_shared_or_slave(path: str, mounts: Sequence[MountInfo]) -> None:
    m = lookup_mount(path, mounts)
    if not (m.shared or m.slave):
        raise FailedPrecondition(
            f"path {path!r} is mounted on {m.mount_point!r} but it is not a shared or slave"
            " mount (host-to-container propagation needs one: mount --make-shared)"
        )


# -- mounts -------------------------------------------------------------------------------


def _clean_destination(path: str, what: str) -> str:
    if not path or "\0" in path or not posixpath.isabs(path):
        raise InvalidArgument(f"{what} {path!r} must be an absolute path")
    return posixpath.normpath(path)


def _host_source(host_path: str, destination: str) -> str:
    """The host path with symlinks resolved, created (as a directory) if missing."""
    if not host_path or "\0" in host_path or not os.path.isabs(host_path):
        raise InvalidArgument(f"mount {destination}: host path {host_path!r} must be absolute")
    if not os.path.lexists(host_path):
        try:
            os.makedirs(host_path, 0o755, exist_ok=True)
        except OSError as e:
            raise InvalidArgument(
                f"mount {destination}: cannot create host path {host_path!r}: {e.strerror}"
            ) from None
    try:
        return os.path.realpath(host_path, strict=True)
    except OSError as e:
        raise InvalidArgument(
            f"mount {destination}: cannot resolve host path {host_path!r}: {e.strerror}"
        ) from None


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def apply_mounts(spec: Spec, mounts: Sequence[api_pb2.Mount]) -> None:
    """Bind mounts, replacing any mount already at the same destination (a CRI /dev
    replaces every default mount under /dev); parents before children."""
    if not mounts:
        return
    planned = []
    for m in mounts:
        destination = _clean_destination(m.container_path, "mount container path")
        if len(m.uidMappings) or len(m.gidMappings):
            raise InvalidArgument(f"mount {destination}: id-mapped mounts are not supported")
        if m.HasField("image") and m.image.image:
            raise InvalidArgument(f"mount {destination}: image volumes are not supported")
        planned.append((destination, m))
    planned.sort(key=lambda p: _depth(p[0]))  # stable: same depth keeps the given order

    targets = {d for d, _ in planned}
    linux = spec.setdefault("linux", {})
    kept = []
    for existing in spec.get("mounts", []):
        dst = posixpath.normpath(existing["destination"])
        if dst in targets or ("/dev" in targets and dst.startswith("/dev/")):
            continue
        kept.append(existing)

    mountinfo: list[MountInfo] | None = None
    added = []
    for destination, m in planned:
        source = _host_source(m.host_path, destination)
        options = ["rbind"]
        propagation = m.propagation
        if propagation == BIDIRECTIONAL:
            mountinfo = mountinfo if mountinfo is not None else read_mountinfo()
            ensure_shared(source, mountinfo)
            options.append("rshared")
            linux["rootfsPropagation"] = "rshared"
        elif propagation == HOST_TO_CONTAINER:
            mountinfo = mountinfo if mountinfo is not None else read_mountinfo()
            ensure_shared_or_slave(source, mountinfo)
            options.append("rslave")
            if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
                linux["rootfsPropagation"] = "rslave"
        elif propagation == PRIVATE:
            options.append("rprivate")  # runc's default root propagation is rprivate already
        else:
            raise InvalidArgument(f"mount {destination}: unknown propagation {propagation}")
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(f"mount {destination}: recursive read-only needs readonly")
            if propagation != PRIVATE:
                raise InvalidArgument(
                    f"mount {destination}: recursive read-only needs private propagation"
                )
            options.append("rro")
        else:
            options.append("ro" if m.readonly else "rw")
        # SELinux relabelling (selinux_relabel) is ignored: liner runs without SELinux.
        added.append(
            {"destination": destination, "type": "bind", "source": source, "options": options}
        )
    spec["mounts"] = kept + added


# -- devices ------------------------------------------------------------------------------


def _device(path: str, st: os.stat_result) -> tuple[str, int, int] | None:
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev)


def _entry(container_path: str, st: os.stat_result, dev: tuple[str, int, int]) -> dict[str, Any]:
    kind, major, minor = dev
    return {
        "path": container_path,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def _walk_devices(top: str, *, skip: bool) -> Iterator[tuple[str, os.stat_result]]:
    """Device nodes under ``top`` (links not followed); ``skip`` leaves out /dev's pts, shm,
    fd, mqueue and console, which a container has its own of."""
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if not (skip and entry.name in _SKIPPED_DEV_DIRS):
                yield from _walk_devices(entry.path, skip=skip)
        elif not (skip and entry.name in _SKIPPED_DEV_FILES):
            yield entry.path, st


def host_devices() -> list[dict[str, Any]]:
    """Every device node of the host's /dev, at the same path (privileged containers)."""
    found = []
    for path, st in _walk_devices(HOST_DEV, skip=True):
        dev = _device(path, st)
        if dev is not None:
            found.append(_entry(path, st, dev))
    return found


def _check_permissions(permissions: str, path: str) -> str:
    if not permissions:
        return "rwm"
    if set(permissions) - set("rwm"):
        raise InvalidArgument(f"device {path}: invalid permissions {permissions!r}: want r, w, m")
    return "".join(c for c in "rwm" if c in permissions)


def _requested(device: api_pb2.Device) -> list[tuple[dict[str, Any], str]]:
    """(spec device, cgroup access) for one CRI device; a host directory gives every
    device under it, at the same relative path under container_path."""
    host = device.host_path
    if not host or "\0" in host or not os.path.isabs(host):
        raise InvalidArgument(f"device host path {host!r} must be absolute")
    container = _clean_destination(device.container_path or host, "device container path")
    access = _check_permissions(device.permissions, host)
    try:
        resolved = os.path.realpath(host, strict=True)
        st = os.stat(resolved)
    except OSError as e:
        raise InvalidArgument(f"device {host!r}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        result = []
        for path, sub in _walk_devices(resolved, skip=False):
            dev = _device(path, sub)
            if dev is not None:
                rel = os.path.relpath(path, resolved)
                result.append((_entry(posixpath.join(container, rel), sub, dev), access))
        return result
    dev = _device(resolved, st)
    if dev is None:
        raise InvalidArgument(f"device {host!r} is not a character or block device")
    return [(_entry(container, st, dev), access)]


def apply_devices(spec: Spec, devices: Sequence[api_pb2.Device], *, privileged: bool) -> None:
    """Host devices by path with a cgroup rule each (the access the CRI asked for);
    privileged adds every host device and allows all in the device cgroup."""
    linux = spec.setdefault("linux", {})
    resources = linux.setdefault("resources", {})
    by_path: dict[str, dict[str, Any]] = {d["path"]: d for d in linux.get("devices") or []}
    rules = list(resources.get("devices") or [])
    for device in devices:
        for entry, access in _requested(device):
            by_path[entry["path"]] = entry
            rules.append(
                {
                    "allow": True,
                    "type": entry["type"],
                    "major": entry["major"],
                    "minor": entry["minor"],
                    "access": access,
                }
            )
    if privileged:
        for entry in host_devices():
            by_path.setdefault(entry["path"], entry)
        rules = [{"allow": True, "access": "rwm"}]
    if by_path:
        linux["devices"] = list(by_path.values())
    resources["devices"] = rules
