"""The CRI's security context, resources, mounts and devices, applied to an OCI runtime spec.

Pure transforms of a spec dict (as `liner_common.ocispec` generates it) from CRI messages,
following containerd 1.7's CRI plugin (`pkg/cri/server/container_create_linux.go`,
`sandbox_run_linux.go`, `pkg/cri/opts/spec_linux.go`). They read files (the image's
/etc/passwd and /etc/group, seccomp profiles, /proc/self, /sys, /dev): call them off the
event loop. Errors are `linerd.errdefs` exceptions.

Order: apply_security_context after the spec's default capabilities are in place and before
nothing else changes them (seccomp's default profile is chosen for the final capability
set); apply_mounts and apply_devices may come before or after it.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from liner_api.runtime.v1 import api_pb2
from linerd.cri import capabilities
from linerd.cri.mounts import apply_devices, apply_mounts
from linerd.cri.users import ImageUsers, check_id
from linerd.errdefs import FailedPrecondition, InvalidArgument
from linerd.oci import seccomp

__all__ = [
    "apply_devices",
    "apply_mounts",
    "apply_resources",
    "apply_sandbox_security_context",
    "apply_security_context",
    "clamp_oom_score_adj",
]

log = structlog.get_logger("linerd.cri.security")

Spec = dict[str, Any]

STRICT_GROUPS = 1  # SupplementalGroupsPolicy.Strict: no groups from the image's /etc/group
CGROUP_MOUNT = "/sys/fs/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
APPARMOR_PROFILES = "/sys/kernel/security/apparmor/profiles"
OOM_SCORE_ADJ = "/proc/self/oom_score_adj"


# -- containers ---------------------------------------------------------------------------


def apply_security_context(
    spec: Spec,
    sc: api_pb2.LinuxContainerSecurityContext,
    *,
    rootfs: Path | ImageUsers,
    image_user: str,
    sandbox_privileged: bool,
) -> None:
    """User and groups, read-only rootfs, privileged, capabilities, no_new_privs, masked and
    read-only paths, seccomp and AppArmor of a container.

    ``image_user`` is the image config's User ("" = root); ``rootfs`` the container's
    mounted root, where user and group names are looked up (or its databases, read already).
    """
    if sc.privileged and not sandbox_privileged:
        raise InvalidArgument("no privileged container allowed in sandbox")
    process = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})

    run_as_user = sc.run_as_user.value if sc.HasField("run_as_user") else None
    run_as_group = sc.run_as_group.value if sc.HasField("run_as_group") else None
    userstr = _user_string(sc.run_as_username, run_as_user, run_as_group) or image_user
    # Whose /etc/group memberships count: the CRI's user, else the image's (containerd).
    if sc.run_as_username:
        member = sc.run_as_username
    elif run_as_user is not None:
        member = str(run_as_user)
    else:
        member = image_user.split(":", 1)[0] or "0"
    db = rootfs if isinstance(rootfs, ImageUsers) else ImageUsers(rootfs)
    uid, gid = db.resolve(userstr) if userstr else (0, 0)
    groups = [] if sc.supplemental_groups_policy == STRICT_GROUPS else db.member_gids(member)
    _set_user(process, uid, gid, [*groups, *_supplemental(sc.supplemental_groups)])

    spec.setdefault("root", {})["readonly"] = sc.readonly_rootfs
    process["noNewPrivileges"] = sc.no_new_privs

    if sc.privileged:
        caps = capabilities.current()
        process["capabilities"] = {k: list(caps) for k in ("bounding", "permitted", "effective")}
        linux["maskedPaths"] = []
        linux["readonlyPaths"] = []
        _writable_sys(spec)
        # Every device is allowed; apply_devices(privileged=True) creates the host's nodes.
        linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        _apply_capabilities(process, sc.capabilities if sc.HasField("capabilities") else None)
        # An empty list means none: kubelet sends the defaults it wants.
        linux["maskedPaths"] = _paths(sc.masked_paths, "masked path")
        linux["readonlyPaths"] = _paths(sc.readonly_paths, "read-only path")
    _ensure_cgroup_mount(spec, writable=sc.privileged)

    bounding = process.get("capabilities", {}).get("bounding", [])
    _apply_seccomp(linux, sc, bounding, sc.privileged)
    _apply_apparmor(process, sc, sc.privileged)
    # SELinux options are ignored: liner runs only where SELinux is off.


def _user_string(username: str, uid: int | None, gid: int | None) -> str:
    """containerd's generateUserString: a group needs a user."""
    user = username or ("" if uid is None else str(check_id(uid, "run_as_user")))
    if gid is None:
        return user
    group = str(check_id(gid, "run_as_group"))
    if not user:
        raise InvalidArgument(f"user group {group!r} is specified without user")
    return f"{user}:{group}"


def _supplemental(groups: Iterable[int]) -> list[int]:
    return [check_id(g, "supplemental group") for g in groups]


def _set_user(process: dict[str, Any], uid: int, gid: int, groups: Iterable[int]) -> None:
    user = dict(process.get("user") or {})
    user["uid"] = uid
    user["gid"] = gid
    # The primary gid, the image's and the CRI's groups: sorted and deduplicated as
    # containerd does (`id -G` then shows them in this order).
    user["additionalGids"] = sorted({gid, *groups})
    process["user"] = user


def _paths(paths: Iterable[str], what: str) -> list[str]:
    result = []
    for path in paths:
        if not path or "\0" in path or not posixpath.isabs(path):
            raise InvalidArgument(f"{what} {path!r} must be an absolute path")
        result.append(path)
    return result


def _cap_names(names: Iterable[str], field: str) -> tuple[bool, list[str]]:
    """(ALL was given, the other names normalized). Unknown names are left out with a
    warning, as runc does with them (Kubernetes does not validate the names)."""
    every = False
    result = []
    for name in names:
        normalized = capabilities.normalize(name)
        if normalized == "CAP_ALL":
            every = True
        elif normalized not in capabilities.KNOWN:
            log.warning("ignoring unknown capability", field=field, capability=name)
        else:
            result.append(normalized)
    return every, result


def _apply_capabilities(process: dict[str, Any], caps: api_pb2.Capability | None) -> None:
    """containerd's order: add ALL, drop ALL, add the named ones, drop the named ones (so
    add ALL + drop CHOWN is everything but CHOWN, drop ALL + add NET_ADMIN only it)."""
    current = process.setdefault("capabilities", {})
    sets = {k: list(current.get(k) or []) for k in ("bounding", "permitted", "effective")}
    if caps is None:
        process["capabilities"] = {**current, **sets}
        return
    add_all, add = _cap_names(caps.add_capabilities, "add_capabilities")
    drop_all, drop = _cap_names(caps.drop_capabilities, "drop_capabilities")
    _, ambient = _cap_names(caps.add_ambient_capabilities, "add_ambient_capabilities")
    held = capabilities.current()
    if add_all:
        sets = {k: list(held) for k in sets}
    if drop_all:
        sets = {k: [] for k in sets}
    missing = [c for c in add if c not in held]
    if missing:
        raise FailedPrecondition(
            f"cannot add {', '.join(missing)}: linerd itself does not hold"
            f" {'it' if len(missing) == 1 else 'them'}"
        )
    for values in sets.values():
        values.extend(c for c in add if c not in values)
        values[:] = [c for c in values if c not in drop]
    result = {**current, **sets}
    for key in ("inheritable", "ambient"):
        if key in result:
            result[key] = [] if drop_all else [c for c in result[key] if c not in drop]
    if ambient:
        # The kernel raises an ambient capability only if it is permitted and inheritable.
        lacking = [c for c in ambient if c not in sets["permitted"]]
        if lacking:
            raise InvalidArgument(
                f"ambient capabilities {', '.join(lacking)} must also be in the container's"
                " capabilities (add them)"
            )
        for key in ("inheritable", "ambient"):
            values = list(result.get(key) or [])
            values.extend(c for c in ambient if c not in values)
            result[key] = values
    process["capabilities"] = result


def _writable_sys(spec: Spec) -> None:
    for m in spec.get("mounts", []):
        dst = posixpath.normpath(m.get("destination", ""))
        if dst == "/sys" or m.get("type") in ("cgroup", "cgroup2"):
            m["options"] = [o for o in m.get("options", []) if o != "ro"]


def _ensure_cgroup_mount(spec: Spec, *, writable: bool) -> None:
    """The container's own cgroup at /sys/fs/cgroup, read-only unless privileged, as
    containerd and docker mount it (a CRI mount already there wins)."""
    mounts = spec.setdefault("mounts", [])
    for m in mounts:
        if posixpath.normpath(m.get("destination", "")) == CGROUP_MOUNT:
            if writable and m.get("type") in ("cgroup", "cgroup2"):
                m["options"] = [o for o in m.get("options", []) if o != "ro"]
            return
    options = ["nosuid", "noexec", "nodev", "relatime", "rw" if writable else "ro"]
    mounts.append(
        {"destination": CGROUP_MOUNT, "type": "cgroup", "source": "cgroup", "options": options}
    )


def _seccomp_choice(
    sc: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
) -> tuple[int | str, str]:
    # The typed field wins over the deprecated string; neither means unconfined.
    if sc.HasField("seccomp"):
        return sc.seccomp.profile_type, sc.seccomp.localhost_ref
    return sc.seccomp_profile_path, ""


def _apply_seccomp(
    linux: dict[str, Any],
    sc: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
    bounding: Iterable[str],
    privileged: bool,
) -> None:
    kind, ref = _seccomp_choice(sc)
    profile = seccomp.profile_for(kind, ref, list(bounding), privileged)
    if profile is None:
        linux.pop("seccomp", None)
    else:
        linux["seccomp"] = profile


# -- AppArmor -----------------------------------------------------------------------------

_APPARMOR_DEFAULT = 0
_APPARMOR_UNCONFINED = 1
_APPARMOR_LOCALHOST = 2


def apparmor_enabled() -> bool:
    """containerd's check: the securityfs directory and the module's enabled flag."""
    try:
        with open(APPARMOR_ENABLED) as f:
            flag = f.read(1)
    except OSError:
        return False
    return flag == "Y" and os.path.isdir(os.path.dirname(APPARMOR_PROFILES))


def apparmor_loaded(name: str) -> bool:
    """Whether the kernel has a profile of this name (lines are ``name (mode)``)."""
    try:
        with open(APPARMOR_PROFILES) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return any(line.rsplit(" (", 1)[0] == name for line in lines)


def _apparmor_choice(sc: api_pb2.LinuxContainerSecurityContext) -> tuple[int | None, str]:
    if sc.HasField("apparmor"):
        return sc.apparmor.profile_type, sc.apparmor.localhost_ref
    name = sc.apparmor_profile
    if name == "":
        return None, ""
    if name == "runtime/default":
        return _APPARMOR_DEFAULT, ""
    if name == "unconfined":
        return _APPARMOR_UNCONFINED, ""
    if name.startswith("localhost/"):
        return _APPARMOR_LOCALHOST, name.removeprefix("localhost/")
    raise InvalidArgument(f"apparmor: invalid profile {name!r}")


def _apply_apparmor(
    process: dict[str, Any], sc: api_pb2.LinuxContainerSecurityContext, privileged: bool
) -> None:
    kind, ref = _apparmor_choice(sc)
    process.pop("apparmorProfile", None)
    if privileged or kind in (None, _APPARMOR_UNCONFINED):
        return
    if kind not in (_APPARMOR_DEFAULT, _APPARMOR_LOCALHOST):
        raise InvalidArgument(f"apparmor: unknown profile type {kind}")
    if kind == _APPARMOR_LOCALHOST:
        name = ref.removeprefix("localhost/")
        if not name:
            raise InvalidArgument("apparmor: a localhost profile needs a name")
        # A named profile is a confinement someone asked for: never silently dropped.
        if not apparmor_enabled():
            raise InvalidArgument(f"apparmor profile {name!r}: AppArmor is not enabled here")
        if not apparmor_loaded(name):
            raise InvalidArgument(f"apparmor profile {name!r} is not loaded")
        process["apparmorProfile"] = name
    # RuntimeDefault: liner ships no AppArmor profile of its own, so the container runs
    # under the seccomp default only (as containerd where AppArmor is off).


# -- sandboxes ----------------------------------------------------------------------------


def apply_sandbox_security_context(
    spec: Spec,
    sc: api_pb2.LinuxSandboxSecurityContext,
    *,
    rootfs: Path | ImageUsers,
    image_user: str,
) -> None:
    """The pause container's user and groups, seccomp (none if privileged) and read-only
    rootfs (always, as containerd: pause writes nothing). ``rootfs``: as for a container."""
    process = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})
    run_as_user = sc.run_as_user.value if sc.HasField("run_as_user") else None
    run_as_group = sc.run_as_group.value if sc.HasField("run_as_group") else None
    userstr = _user_string("", run_as_user, run_as_group) or image_user
    db = rootfs if isinstance(rootfs, ImageUsers) else ImageUsers(rootfs)
    uid, gid = db.resolve(userstr) if userstr else (0, 0)
    _set_user(process, uid, gid, _supplemental(sc.supplemental_groups))
    spec.setdefault("root", {})["readonly"] = True
    bounding = process.get("capabilities", {}).get("bounding", [])
    _apply_seccomp(linux, sc, bounding, sc.privileged)


# -- resources ----------------------------------------------------------------------------

_CPUSET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def _own_oom_score_adj() -> int:
    try:
        with open(OOM_SCORE_ADJ) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return -1000


def clamp_oom_score_adj(value: int) -> int:
    """Within -1000..1000 and, where linerd lacks CAP_SYS_RESOURCE, not below its own
    score: the kernel refuses a lower one then, and runc fails (containerd's
    restrict_oom_score_adj)."""
    value = max(-1000, min(1000, value))
    if "CAP_SYS_RESOURCE" in capabilities.current():
        return value
    return max(value, _own_oom_score_adj())


def swap_controller_available() -> bool:
    """cgroup v1 with swap accounting, or v2 where the daemon's cgroup has memory.swap.max."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        try:
            with open("/proc/self/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        own = next((line[3:] for line in lines if line.startswith("0::")), "/")
        return os.path.exists(os.path.join(CGROUP_ROOT, own.lstrip("/"), "memory.swap.max"))
    return os.path.exists(os.path.join(CGROUP_ROOT, "memory", "memory.memsw.limit_in_bytes"))


def hugetlb_available() -> bool:
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        try:
            with open(os.path.join(CGROUP_ROOT, "cgroup.controllers")) as f:
                return "hugetlb" in f.read().split()
        except OSError:
            return False
    return os.path.isdir(os.path.join(CGROUP_ROOT, "hugetlb"))


def _at_least(value: int, minimum: int, field: str) -> int:
    if value < minimum:
        raise InvalidArgument(f"{field} {value} is out of range")
    return value


def apply_resources(spec: Spec, resources: api_pb2.LinuxContainerResources) -> None:
    """CPU, memory, swap, hugepages, unified and oom_score_adj (containerd's WithResources:
    zero means unset and leaves the spec's value; also right for an update)."""
    r = resources
    linux = spec.setdefault("linux", {})
    res = linux.setdefault("resources", {})
    cpu = dict(res.get("cpu") or {})
    if r.cpu_period:
        cpu["period"] = _at_least(r.cpu_period, 0, "cpu_period")
    if r.cpu_quota:
        cpu["quota"] = _at_least(r.cpu_quota, -1, "cpu_quota")
    if r.cpu_shares:
        cpu["shares"] = _at_least(r.cpu_shares, 0, "cpu_shares")
    for field, key in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        value = getattr(r, field)
        if value:
            if not _CPUSET.fullmatch(value):
                raise InvalidArgument(f"{field} {value!r}: want a list like 0-3,5")
            cpu[key] = value
    if cpu:
        res["cpu"] = cpu

    memory = dict(res.get("memory") or {})
    limit = _at_least(r.memory_limit_in_bytes, -1, "memory_limit_in_bytes")
    swap = _at_least(r.memory_swap_limit_in_bytes, -1, "memory_swap_limit_in_bytes")
    if limit or swap:
        swappable = swap_controller_available()
        if limit:
            memory["limit"] = limit
            # memory+swap = memory by default: no swap unless asked for.
            if not swap and swappable:
                memory["swap"] = limit
        # The OCI value is memory+swap, as the CRI's (runc writes swap-memory on cgroup v2).
        if swap and swappable:
            memory["swap"] = swap
    if memory:
        res["memory"] = memory

    if len(r.hugepage_limits) and hugetlb_available():
        # Without a hugetlb controller the limits are left out (containerd's default
        # tolerate_missing_hugetlb_controller): this host's v1 hierarchy has none.
        pages = {h["pageSize"]: h for h in res.get("hugepageLimits") or []}
        for h in r.hugepage_limits:
            if not h.page_size:
                raise InvalidArgument("hugepage limit without a page size")
            pages[h.page_size] = {"pageSize": h.page_size, "limit": h.limit}
        res["hugepageLimits"] = list(pages.values())

    if r.unified:
        res["unified"] = {**(res.get("unified") or {}), **dict(r.unified)}

    spec.setdefault("process", {})["oomScoreAdj"] = clamp_oom_score_adj(r.oom_score_adj)
