"""Generate OCI runtime specs the way containerd does: secure defaults plus the image config.

The defaults are containerd's (capabilities, masked and read-only /proc paths, mounts,
devices, RLIMIT_NOFILE, no-new-privileges, cgroup path `/<namespace>/<id>`). Options then
apply in order, each a small function over the spec dict.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from liner_common.errors import InvalidArgument, NotFound

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# Every capability, in bit order (linux/capability.h; CAP_LAST_CAP = 40 since Linux 5.9).
ALL_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"


def _mount(destination: str, type_: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": type_, "source": source, "options": options}


def _default_mounts() -> list[dict[str, Any]]:
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        _mount(
            "/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        ),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ]


def _char(major: int, minor: int | None, access: str = "rwm") -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": access}
    if minor is not None:
        rule["minor"] = minor
    return rule


def _default_device_rules() -> list[dict[str, Any]]:
    # Deny all, then allow the devices every container gets (null, zero, full, tty,
    # urandom, random, ptmx, pts, console-ish ttys), as containerd's default.
    return [
        {"allow": False, "access": "rwm"},
        _char(1, 3),
        _char(1, 8),
        _char(1, 7),
        _char(5, 0),
        _char(1, 5),
        _char(1, 9),
        _char(5, 1),
        _char(136, None),
        _char(5, 2),
        _char(10, 200),
    ]


def default_spec(namespace: str, container_id: str) -> Spec:
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs"},
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            "cwd": "/",
            "args": [],
            "env": [DEFAULT_PATH],
            "terminal": False,
            "noNewPrivileges": True,
            "capabilities": {"bounding": caps, "permitted": list(caps), "effective": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "mounts": _default_mounts(),
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "resources": {"devices": _default_device_rules()},
            "cgroupsPath": f"/{namespace}/{container_id}",
        },
    }


def generate(namespace: str, container_id: str, opts: Iterable[SpecOpt]) -> Spec:
    spec = default_spec(namespace, container_id)
    for opt in opts:
        opt(spec)
    return spec


# -- options ----------------------------------------------------------------------------------


def _check_env(entries: Iterable[str]) -> list[str]:
    result = []
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry or "\0" in entry or entry[0] == "=":
            raise InvalidArgument(f"invalid environment entry {entry!r}: want NAME=value")
        result.append(entry)
    return result


def merge_env(base: list[str], extra: Iterable[str]) -> list[str]:
    """Later entries replace earlier ones with the same name, keeping the first position."""
    merged: dict[str, str] = {}
    for entry in [*base, *_check_env(extra)]:
        merged[entry.split("=", 1)[0]] = entry
    return list(merged.values())


def with_image_config(config: Mapping[str, Any]) -> SpecOpt:
    """Entrypoint, Cmd, Env and WorkingDir from an image config's `config` object."""

    def apply(spec: Spec) -> None:
        process = spec["process"]
        env = config.get("Env") or []
        process["env"] = merge_env(process["env"], env)
        args = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
        if not all(isinstance(a, str) for a in args):
            raise InvalidArgument("image Entrypoint and Cmd must be lists of strings")
        process["args"] = args
        workdir = config.get("WorkingDir") or "/"
        process["cwd"] = clean_workdir(workdir)

    return apply


def clean_workdir(path: str) -> str:
    """Working dirs are absolute and clean: `..` cannot climb above the container's root."""
    if not isinstance(path, str) or "\0" in path:
        raise InvalidArgument(f"invalid working directory {path!r}")
    return posixpath.normpath(posixpath.join("/", path))


def with_args(args: list[str]) -> SpecOpt:
    def apply(spec: Spec) -> None:
        if args:
            spec["process"]["args"] = list(args)

    return apply


def with_env(env: Iterable[str]) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec["process"]["env"] = merge_env(spec["process"]["env"], env)

    return apply


def with_tty(spec: Spec) -> None:
    spec["process"]["terminal"] = True
    spec["process"]["env"] = merge_env(spec["process"]["env"], ["TERM=xterm"])


def with_readonly_rootfs(spec: Spec) -> None:
    spec["root"]["readonly"] = True


def with_host_network(spec: Spec) -> None:
    namespaces = spec["linux"]["namespaces"]
    spec["linux"]["namespaces"] = [n for n in namespaces if n["type"] != "network"]
    spec["mounts"].extend(
        [
            _mount("/etc/resolv.conf", "bind", "/etc/resolv.conf", ["rbind", "ro"]),
            _mount("/etc/hosts", "bind", "/etc/hosts", ["rbind", "ro"]),
        ]
    )


def with_privileged(spec: Spec) -> None:
    caps = list(ALL_CAPABILITIES)
    spec["process"]["capabilities"] = {
        "bounding": caps,
        "permitted": list(caps),
        "effective": list(caps),
    }
    spec["process"]["noNewPrivileges"] = False
    spec["linux"]["maskedPaths"] = []
    spec["linux"]["readonlyPaths"] = []
    spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    for m in spec["mounts"]:
        if m["destination"] == "/sys":
            m["options"] = [o for o in m["options"] if o != "ro"]


def with_mount(
    source: str, destination: str, type_: str = "bind", options: Iterable[str] = ("rbind", "rw")
) -> SpecOpt:
    if not posixpath.isabs(destination):
        raise InvalidArgument(f"mount destination {destination!r} must be absolute")

    def apply(spec: Spec) -> None:
        spec["mounts"].append(_mount(posixpath.normpath(destination), type_, source, list(options)))

    return apply


def with_memory_limit(limit: int) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec["linux"]["resources"].setdefault("memory", {})["limit"] = limit

    return apply


def with_cpus(cpus: float, period: int = 100_000) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec["linux"]["resources"]["cpu"] = {"quota": int(cpus * period), "period": period}

    return apply


def with_pids_limit(limit: int) -> SpecOpt:
    def apply(spec: Spec) -> None:
        spec["linux"]["resources"]["pids"] = {"limit": limit}

    return apply


def with_user(user: str, rootfs: Path | None) -> SpecOpt:
    """`uid`, `uid:gid`, `name` or `name:group`; names are looked up in the rootfs's
    /etc/passwd and /etc/group (never the host's), without following links out of it."""

    def apply(spec: Spec) -> None:
        spec["process"]["user"] = resolve_user(user, rootfs)

    return apply


def resolve_user(user: str, rootfs: Path | None) -> dict[str, Any]:
    if not user:
        return {"uid": 0, "gid": 0, "additionalGids": [0]}
    name, _, group = user.partition(":")
    passwd = _read_db(rootfs, "etc/passwd")
    groups = _read_db(rootfs, "etc/group")
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if e[2:3] == [name]), None)
        gid = int(entry[3]) if entry and len(entry) > 3 and entry[3].isdigit() else 0
        username = entry[0] if entry else None
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None or len(entry) < 4 or not entry[2].isdigit() or not entry[3].isdigit():
            raise NotFound(f"user {name!r} not found in the image's /etc/passwd")
        uid, gid, username = int(entry[2]), int(entry[3]), name
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((g for g in groups if g[0] == group and len(g) > 2), None)
            if found is None or not found[2].isdigit():
                raise NotFound(f"group {group!r} not found in the image's /etc/group")
            gid = int(found[2])
    extra = {gid}
    if username:
        extra |= {
            int(g[2])
            for g in groups
            if len(g) > 3 and g[2].isdigit() and username in g[3].split(",")
        }
    return {"uid": uid, "gid": gid, "additionalGids": sorted(extra)}


def _read_db(rootfs: Path | None, name: str) -> list[list[str]]:
    if rootfs is None:
        return []
    path = rootfs / name
    # A symlinked /etc or /etc/passwd could point anywhere on the host: read the file only
    # if it resolves inside the rootfs.
    real, top = os.path.realpath(path), os.path.realpath(rootfs)
    if not real.startswith(top.rstrip("/") + "/") or not os.path.isfile(real):
        return []
    path = Path(real)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]
