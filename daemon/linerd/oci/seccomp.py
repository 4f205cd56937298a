"""Seccomp profiles for containers: liner's default, localhost files, and the CRI's choice.

Every profile ends up as an OCI runtime-spec ``linux.seccomp`` object that runc compiles.
Profiles are read in the Docker format (a superset of the OCI object: ``name`` beside
``names``, ``archMap``, ``includes``/``excludes`` by arch, capability and kernel), resolved
for one container (its arch, capabilities and the host kernel) and validated field by field,
since a localhost profile is input from whoever can write the file. liner's own default
(`linerd.oci.seccomp_default`) goes through the same converter.

`load_localhost` and `profile_for` read a file: call them off the event loop.
"""

from __future__ import annotations

import json
import os
import platform
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from linerd.errdefs import InvalidArgument
from linerd.oci import seccomp_default

Seccomp = dict[str, Any]

# CRI SecurityProfile.ProfileType.
RUNTIME_DEFAULT = 0
UNCONFINED = 1
LOCALHOST = 2

# The CRI's deprecated string forms (containerd also takes docker/default).
_DEFAULT_NAMES = ("runtime/default", "docker/default")
_UNCONFINED_NAME = "unconfined"
_LOCALHOST_PREFIX = "localhost/"

# Bounds on a localhost profile: moby's default is about 20 KiB and ~60 rules.
MAX_PROFILE_BYTES = 1 << 20
MAX_RULES = 4096
MAX_NAMES = 8192
MAX_ARGS = 6  # libseccomp compares at most six arguments per rule
MAX_ERRNO = 4095

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
_ERRNO_ACTIONS = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
ARCHITECTURES = frozenset(
    "SCMP_ARCH_" + a
    for a in [
        "X86",
        "X86_64",
        "X32",
        "ARM",
        "AARCH64",
        "MIPS",
        "MIPS64",
        "MIPS64N32",
        "MIPSEL",
        "MIPSEL64",
        "MIPSEL64N32",
        "PPC",
        "PPC64",
        "PPC64LE",
        "S390",
        "S390X",
        "PARISC",
        "PARISC64",
        "RISCV64",
        "LOONGARCH64",
    ]
)
FLAGS = frozenset(
    {
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    }
)

# Host machine names (uname -m) to Go's arch names, which profiles' `includes.arches` use.
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "i386": "386",
    "i686": "386",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "s390x": "s390x",
    "ppc64le": "ppc64le",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}

_SYSCALL_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_KERNEL = re.compile(r"(\d+)\.(\d+)")
_TOP_KEYS = frozenset(
    {
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "archMap",
        "flags",
        "listenerPath",
        "listenerMetadata",
        "syscalls",
        "comment",
    }
)
_RULE_KEYS = frozenset(
    {"name", "names", "action", "errnoRet", "args", "includes", "excludes", "comment"}
)
_FILTER_KEYS = frozenset({"arches", "caps", "minKernel"})
_ARG_KEYS = frozenset({"index", "value", "valueTwo", "op"})


def host_arch() -> str:
    """The host's arch in Go's naming (``amd64``, ``arm64``, ...)."""
    machine = platform.machine()
    return _MACHINE_TO_GOARCH.get(machine, machine)


def host_kernel() -> tuple[int, int]:
    found = _KERNEL.match(platform.release())
    return (int(found[1]), int(found[2])) if found else (0, 0)


def normalize_capabilities(capabilities: Iterable[str]) -> frozenset[str]:
    """``SYS_ADMIN``, ``cap_sys_admin`` and ``CAP_SYS_ADMIN`` are the same capability."""
    caps = set()
    for cap in capabilities:
        cap = cap.upper()
        caps.add(cap if cap.startswith("CAP_") else "CAP_" + cap)
    return frozenset(caps)


def default_profile(
    arch: str | None = None,
    capabilities: Iterable[str] = (),
    *,
    kernel: tuple[int, int] | None = None,
) -> Seccomp:
    """liner's default profile for a container with this bounding capability set."""
    profile = _convert(
        seccomp_default.docker_profile(),
        "liner's default seccomp profile",
        _goarch(arch),
        normalize_capabilities(capabilities),
        kernel or host_kernel(),
    )
    _drop_repeated_allows(profile["syscalls"])
    return profile


def load_localhost(
    path: str,
    capabilities: Iterable[str] = (),
    *,
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> Seccomp:
    """Read a Docker-style (or OCI) JSON profile from an absolute host path."""
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"seccomp profile {path!r}: the path must be absolute")
    raw = _read_bounded(path)
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"seccomp profile {path!r}: invalid JSON: {e}") from None
    return _convert(
        doc,
        f"seccomp profile {path!r}",
        _goarch(arch),
        normalize_capabilities(capabilities),
        kernel or host_kernel(),
    )


def profile_for(
    kind: int | str | None,
    localhost_ref: str = "",
    capabilities: Iterable[str] = (),
    privileged: bool = False,
    *,
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> Seccomp | None:
    """The CRI's seccomp choice for a sandbox or container; None = no filter.

    ``kind`` is the typed SecurityProfile's profile_type (with its ``localhost_ref``) when
    the typed field is set; otherwise the deprecated string (``runtime/default``,
    ``docker/default``, ``unconfined``, ``localhost/<path>``, "" = unconfined), or None
    when neither is set. Privileged containers never get a filter.
    """
    if privileged or kind is None:
        return None
    if isinstance(kind, str):
        if localhost_ref:
            raise InvalidArgument("seccomp: a localhost ref goes with a typed profile only")
        kind, localhost_ref = _from_deprecated(kind)
        if kind is None:
            return None
    if isinstance(kind, bool) or not isinstance(kind, int):
        raise InvalidArgument(f"seccomp: unknown profile type {kind!r}")
    if kind != LOCALHOST and localhost_ref:
        raise InvalidArgument("seccomp: localhost_ref must only be set with profile type Localhost")
    if kind == UNCONFINED:
        return None
    if kind == RUNTIME_DEFAULT:
        return default_profile(arch, capabilities, kernel=kernel)
    if kind == LOCALHOST:
        # containerd trims a stray prefix from the typed ref too.
        ref = localhost_ref.removeprefix(_LOCALHOST_PREFIX)
        return load_localhost(ref, capabilities, arch=arch, kernel=kernel)
    raise InvalidArgument(f"seccomp: unknown profile type {kind}")


def _from_deprecated(name: str) -> tuple[int | None, str]:
    if name == "":
        return None, ""
    if name in _DEFAULT_NAMES:
        return RUNTIME_DEFAULT, ""
    if name == _UNCONFINED_NAME:
        return UNCONFINED, ""
    if name.startswith(_LOCALHOST_PREFIX):
        return LOCALHOST, name.removeprefix(_LOCALHOST_PREFIX)
    raise InvalidArgument(f"seccomp: invalid profile {name!r}")


def _goarch(arch: str | None) -> str:
    if arch is None:
        return host_arch()
    return _MACHINE_TO_GOARCH.get(arch, arch)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _read_bounded(path: str) -> bytes:
    where = f"seccomp profile {path!r}"
    try:
        # O_NONBLOCK: a FIFO at the path must not hang the caller; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(f"{where}: no such file") from None
    except OSError as e:
        raise InvalidArgument(f"{where}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{where}: not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise InvalidArgument(f"{where}: {st.st_size} bytes, over {MAX_PROFILE_BYTES}")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_PROFILE_BYTES:  # the file may grow after fstat
            chunk = os.read(fd, MAX_PROFILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_PROFILE_BYTES:
            raise InvalidArgument(f"{where}: over {MAX_PROFILE_BYTES} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise InvalidArgument(f"{where}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)


# -- conversion ---------------------------------------------------------------------------


class _Checker:
    """Validation helpers that name the profile and the field in every refusal."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{self.where}: {field}: {problem}")

    def mapping(self, value: Any, field: str, keys: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, "must be an object")
        unknown = sorted(set(value) - keys)
        if unknown:
            raise self.fail(field, f"unknown field {unknown[0]!r}")
        return value

    def array(self, value: Any, field: str, limit: int) -> Sequence[Any]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(field, "must be an array")
        if len(value) > limit:
            raise self.fail(field, f"{len(value)} entries, over {limit}")
        return value

    def strings(self, value: Any, field: str, limit: int) -> list[str]:
        items = self.array(value, field, limit)
        for item in items:
            if not isinstance(item, str):
                raise self.fail(field, f"{item!r} is not a string")
        return list(items)

    def uint(self, value: Any, field: str, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise self.fail(field, f"{value!r} is not an integer in 0..{maximum}")
        return value

    def one_of(self, value: Any, field: str, allowed: frozenset[str]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(field, f"unknown value {value!r}")
        return value


def _convert(
    doc: Any, where: str, arch: str, caps: frozenset[str], kernel: tuple[int, int]
) -> Seccomp:
    check = _Checker(where)
    doc = check.mapping(doc, "profile", _TOP_KEYS)
    out: Seccomp = {
        "defaultAction": check.one_of(doc.get("defaultAction"), "defaultAction", ACTIONS)
    }
    if doc.get("defaultErrnoRet") is not None:
        if out["defaultAction"] not in _ERRNO_ACTIONS:
            raise check.fail("defaultErrnoRet", f"not allowed with {out['defaultAction']}")
        out["defaultErrnoRet"] = check.uint(doc["defaultErrnoRet"], "defaultErrnoRet", MAX_ERRNO)
    out["architectures"] = _architectures(doc, check, arch)
    flags = check.strings(_opt(doc, "flags", []), "flags", len(FLAGS))
    if flags:
        out["flags"] = [check.one_of(f, "flags", FLAGS) for f in flags]
    for key in ("listenerPath", "listenerMetadata"):
        value = doc.get(key)
        if value:
            if not isinstance(value, str):
                raise check.fail(key, "must be a string")
            out[key] = value
    if "listenerPath" in out and not os.path.isabs(out["listenerPath"]):
        raise check.fail("listenerPath", "must be absolute")

    rules = check.array(_opt(doc, "syscalls", []), "syscalls", MAX_RULES)
    total = 0
    syscalls: list[dict[str, Any]] = []
    for i, raw in enumerate(rules):
        field = f"syscalls[{i}]"
        rule = check.mapping(raw, field, _RULE_KEYS)
        names = _names(rule, check, field)
        total += len(names)
        if total > MAX_NAMES:
            raise check.fail("syscalls", f"over {MAX_NAMES} syscall names in all")
        converted = _rule(rule, names, check, field)
        if "listenerPath" not in out and converted["action"] == "SCMP_ACT_NOTIFY":
            raise check.fail(field, "SCMP_ACT_NOTIFY needs listenerPath")
        if _applies(rule, check, field, arch, caps, kernel):
            syscalls.append(converted)
    if "listenerPath" not in out and out["defaultAction"] == "SCMP_ACT_NOTIFY":
        raise check.fail("defaultAction", "SCMP_ACT_NOTIFY needs listenerPath")
    out["syscalls"] = syscalls
    return out


def _opt(obj: Mapping[str, Any], key: str, empty: Any) -> Any:
    """The field's value, ``empty`` when absent or null (a wrong type is still refused)."""
    value = obj.get(key)
    return empty if value is None else value


def _architectures(doc: Mapping[str, Any], check: _Checker, arch: str) -> list[str]:
    listed = check.strings(_opt(doc, "architectures", []), "architectures", 64)
    arch_map = check.array(_opt(doc, "archMap", []), "archMap", 64)
    if listed and arch_map:
        raise check.fail("archMap", "give either architectures or archMap, not both")
    if listed:
        return [check.one_of(a, "architectures", ARCHITECTURES) for a in listed]
    native = seccomp_default.ARCH_MAP.get(arch, [""])[0]
    found: list[str] = []
    for i, raw in enumerate(arch_map):
        field = f"archMap[{i}]"
        entry = check.mapping(raw, field, frozenset({"architecture", "subArchitectures"}))
        main = check.one_of(entry.get("architecture"), field + ".architecture", ARCHITECTURES)
        subs = [
            check.one_of(s, field + ".subArchitectures", ARCHITECTURES)
            for s in check.strings(_opt(entry, "subArchitectures", []), field, 64)
        ]
        if main == native and not found:
            found = [main, *subs]
    return found


def _names(rule: Mapping[str, Any], check: _Checker, field: str) -> list[str]:
    name = rule.get("name")
    names = rule.get("names")
    if name and names:
        raise check.fail(field, "give either name or names, not both")
    listed = [name] if name else check.strings(names or [], field + ".names", MAX_NAMES)
    if not listed:
        raise check.fail(field, "no syscall names")
    for n in listed:
        if not isinstance(n, str) or not _SYSCALL_NAME.fullmatch(n):
            raise check.fail(field, f"invalid syscall name {n!r}")
    return listed


def _rule(rule: Mapping[str, Any], names: list[str], check: _Checker, field: str) -> dict[str, Any]:
    action = check.one_of(rule.get("action"), field + ".action", ACTIONS)
    out: dict[str, Any] = {"names": names, "action": action}
    if rule.get("errnoRet") is not None:
        if action not in _ERRNO_ACTIONS:
            raise check.fail(field + ".errnoRet", f"not allowed with {action}")
        out["errnoRet"] = check.uint(rule["errnoRet"], field + ".errnoRet", MAX_ERRNO)
    args = []
    for j, raw in enumerate(check.array(_opt(rule, "args", []), field + ".args", MAX_ARGS)):
        where = f"{field}.args[{j}]"
        arg = check.mapping(raw, where, _ARG_KEYS)
        args.append(
            {
                "index": check.uint(arg.get("index"), where + ".index", MAX_ARGS - 1),
                "value": check.uint(arg.get("value", 0), where + ".value", 2**64 - 1),
                "valueTwo": check.uint(arg.get("valueTwo", 0), where + ".valueTwo", 2**64 - 1),
                "op": check.one_of(arg.get("op"), where + ".op", OPERATORS),
            }
        )
    if args:
        out["args"] = args
    return out


def _applies(
    rule: Mapping[str, Any],
    check: _Checker,
    field: str,
    arch: str,
    caps: frozenset[str],
    kernel: tuple[int, int],
) -> bool:
    """Docker's semantics: every include must hold, and no exclude may."""
    inc = check.mapping(_opt(rule, "includes", {}), field + ".includes", _FILTER_KEYS)
    exc = check.mapping(_opt(rule, "excludes", {}), field + ".excludes", _FILTER_KEYS)
    inc_arches = check.strings(_opt(inc, "arches", []), field + ".includes.arches", 64)
    inc_caps = check.strings(_opt(inc, "caps", []), field + ".includes.caps", 64)
    exc_arches = check.strings(_opt(exc, "arches", []), field + ".excludes.arches", 64)
    exc_caps = check.strings(_opt(exc, "caps", []), field + ".excludes.caps", 64)
    inc_kernel = _min_kernel(inc.get("minKernel"), check, field + ".includes.minKernel")
    exc_kernel = _min_kernel(exc.get("minKernel"), check, field + ".excludes.minKernel")
    if inc_arches and arch not in inc_arches:
        return False
    if inc_caps and not normalize_capabilities(inc_caps) <= caps:
        return False
    if inc_kernel is not None and kernel < inc_kernel:
        return False
    if arch in exc_arches:
        return False
    if normalize_capabilities(exc_caps) & caps:
        return False
    return not (exc_kernel is not None and kernel >= exc_kernel)


def _min_kernel(value: Any, check: _Checker, field: str) -> tuple[int, int] | None:
    if value in (None, ""):
        return None
    found = _KERNEL.fullmatch(value) if isinstance(value, str) else None
    if not found:
        raise check.fail(field, f"{value!r} is not a kernel version like 4.8")
    return int(found[1]), int(found[2])


def _drop_repeated_allows(syscalls: list[dict[str, Any]]) -> None:
    """A name allowed outright twice (e.g. with CAP_SYS_ADMIN and CAP_SYSLOG) is kept once."""
    seen: set[str] = set()
    for rule in syscalls:
        if rule["action"] != "SCMP_ACT_ALLOW" or "args" in rule:
            continue
        rule["names"] = [n for n in rule["names"] if n not in seen]
        seen.update(rule["names"])
    syscalls[:] = [r for r in syscalls if r["names"]]
