"""linerd.oci.seccomp: the default profile, Docker-style localhost profiles, the CRI's rules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from liner_common.ocispec import DEFAULT_CAPABILITIES
from linerd.errdefs import InvalidArgument
from linerd.oci import seccomp

pytestmark = pytest.mark.unit

NEW_KERNEL = (6, 1)
OLD_KERNEL = (4, 4)


def allowed(profile: dict[str, Any]) -> set[str]:
    """Names allowed outright (no argument filter)."""
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
        for n in r["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def write(tmp_path: Path, doc: Any, name: str = "profile.json") -> str:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


# -- the default profile -------------------------------------------------------------------


def test_default_profile_shape_amd64() -> None:
    p = seccomp.default_profile("amd64", DEFAULT_CAPABILITIES, kernel=NEW_KERNEL)
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1  # EPERM
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = allowed(p)
    assert {"read", "write", "execve", "openat", "fchmodat", "arch_prctl"} <= names
    assert not {"mount", "unshare", "sethostname", "keyctl", "add_key", "reboot"} & names
    # SYS_CHROOT is among containerd's default capabilities.
    assert "chroot" in names
    # Nothing is listed twice among the unconditional allows.
    flat = [n for r in p["syscalls"] if "args" not in r for n in r["names"]]
    assert len(flat) == len(set(flat))
    json.dumps(p)  # plain JSON for config.json


def test_default_profile_arches_by_host_arch() -> None:
    arm = seccomp.default_profile("arm64", kernel=NEW_KERNEL)
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {"set_tls", "cacheflush"} <= allowed(arm)
    assert "arch_prctl" not in allowed(arm)
    # uname -m names work too.
    assert seccomp.default_profile("x86_64")["architectures"][0] == "SCMP_ARCH_X86_64"
    assert seccomp.default_profile("sparc64")["architectures"] == []


def test_default_argument_filters() -> None:
    p = seccomp.default_profile("amd64", kernel=NEW_KERNEL)
    personality = {r["args"][0]["value"] for r in rules_for(p, "personality")}
    assert personality == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in rules_for(p, "personality"))
    socket = [(r["args"][0]["op"], r["args"][0]["value"]) for r in rules_for(p, "socket")]
    # Every family but AF_ALG (38) and AF_VSOCK (40).
    assert sorted(socket) == [("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40), ("SCMP_CMP_LT", 38)]
    [clone] = rules_for(p, "clone")
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    [clone3] = rules_for(p, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    # s390 passes clone's flags as the second argument.
    [s390] = rules_for(seccomp.default_profile("s390x", kernel=NEW_KERNEL), "clone")
    assert s390["args"][0]["index"] == 1


def test_sys_admin_unlocks_namespaces_and_mounts() -> None:
    without = seccomp.default_profile("amd64", DEFAULT_CAPABILITIES, kernel=NEW_KERNEL)
    with_admin = seccomp.default_profile(
        "amd64", [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"], kernel=NEW_KERNEL
    )
    admin_only = {"mount", "umount2", "unshare", "setns", "sethostname", "clone", "clone3"}
    assert not admin_only & allowed(without)
    assert admin_only <= allowed(with_admin)
    # With the capability, clone is plain allowed and clone3 no longer answers ENOSYS.
    assert [r.get("args") for r in rules_for(with_admin, "clone")] == [None]
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(with_admin, "clone3"))


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise", "ptrace"}),
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_NICE", {"mbind", "set_mempolicy"}),
        ("CAP_SYSLOG", {"syslog"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYS_RAWIO", {"iopl", "ioperm"}),
        ("CAP_SYS_PACCT", {"acct"}),
        ("CAP_SYS_TTY_CONFIG", {"vhangup"}),
    ],
)
def test_capability_conditional_rules(cap: str, names: set[str]) -> None:
    # An old kernel, so ptrace is not allowed to everyone.
    without = allowed(seccomp.default_profile("amd64", [], kernel=OLD_KERNEL))
    with_cap = allowed(seccomp.default_profile("amd64", [cap], kernel=OLD_KERNEL))
    assert not names & without
    assert names <= with_cap
    # The CRI's spelling without CAP_ works the same.
    short = allowed(seccomp.default_profile("amd64", [cap[4:]], kernel=OLD_KERNEL))
    assert short == with_cap


def test_ptrace_follows_the_kernel() -> None:
    assert "ptrace" in allowed(seccomp.default_profile("amd64", kernel=(4, 8)))
    assert "ptrace" not in allowed(seccomp.default_profile("amd64", kernel=(4, 7)))


# -- localhost profiles ----------------------------------------------------------------------


def load(tmp_path: Path, doc: Any, caps: list[str] | None = None, arch: str = "amd64") -> Any:
    return seccomp.load_localhost(write(tmp_path, doc), caps or [], arch=arch, kernel=NEW_KERNEL)


def test_critest_profile_converts(tmp_path: Path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    assert load(tmp_path, doc) == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [],
        "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}],
    }


def test_name_or_names_errno_and_args(tmp_path: Path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            {"name": "read", "action": "SCMP_ACT_ALLOW", "comment": "why"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 0xFF, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"},
                ],
            },
        ],
    }
    p = load(tmp_path, doc)
    assert p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert p["flags"] == ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    assert p["syscalls"] == [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 0xFF, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"},
            ],
        },
    ]


@pytest.mark.parametrize(
    "op",
    [
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    ],
)
def test_every_comparison_op(tmp_path: Path, op: str) -> None:
    rule = {
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 1, "op": op}],
    }
    p = load(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule]})
    assert p["syscalls"][0]["args"][0]["op"] == op


def test_arch_map_picks_the_native_entry(tmp_path: Path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [
            {
                "architecture": "SCMP_ARCH_X86_64",
                "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            },
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [],
    }
    assert load(tmp_path, doc)["architectures"] == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
    ]
    assert load(tmp_path, doc, arch="arm64")["architectures"] == [
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
    ]
    assert load(tmp_path, doc, arch="s390x")["architectures"] == []


def test_includes_and_excludes(tmp_path: Path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["a_amd64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {
                "names": ["a_arm"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"arches": ["arm", "arm64"]},
            },
            {"names": ["not_s390"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["s390x"]}},
            {
                "names": ["admin"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
            },
            {
                "names": ["both"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]},
            },
            {
                "names": ["no_admin"],
                "action": "SCMP_ACT_ALLOW",
                "excludes": {"caps": ["CAP_SYS_ADMIN"]},
            },
            {
                "names": ["new_kernel"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"minKernel": "5.10"},
            },
            {
                "names": ["old_kernel"],
                "action": "SCMP_ACT_ALLOW",
                "excludes": {"minKernel": "5.10"},
            },
        ],
    }

    def names(
        caps: list[str], arch: str = "amd64", kernel: tuple[int, int] = NEW_KERNEL
    ) -> set[str]:
        p = seccomp.load_localhost(write(tmp_path, doc), caps, arch=arch, kernel=kernel)
        return allowed(p)

    assert names([]) == {"a_amd64", "not_s390", "no_admin", "new_kernel"}
    assert names(["CAP_SYS_ADMIN"]) == {"a_amd64", "not_s390", "admin", "new_kernel"}
    assert names(["SYS_ADMIN", "NET_ADMIN"]) == {
        "a_amd64",
        "not_s390",
        "admin",
        "both",
        "new_kernel",
    }
    assert names([], arch="arm64") == {"a_arm", "not_s390", "no_admin", "new_kernel"}
    assert names([], arch="s390x") == {"no_admin", "new_kernel"}
    assert names([], kernel=(5, 4)) == {"a_amd64", "not_s390", "no_admin", "old_kernel"}


def test_default_profile_as_a_localhost_file_round_trips(tmp_path: Path) -> None:
    """An OCI object (what runc gets) is itself a valid localhost profile."""
    p = seccomp.default_profile("amd64", DEFAULT_CAPABILITIES, kernel=NEW_KERNEL)
    assert load(tmp_path, p) == p


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('{"defaultAction": NaN}', "invalid JSON"),
        ("[]", "must be an object"),
        ({}, "defaultAction: unknown value None"),
        ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown value 'SCMP_ACT_NOPE'"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscall": []}, "unknown field 'syscall'"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}, "syscalls: must be an array"),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "ALLOW"}]},
            "syscalls[0].action: unknown value 'ALLOW'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]},
            "syscalls[0]: no syscall names",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}],
            },
            "either name or names",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["a b"], "action": "SCMP_ACT_ALLOW"}],
            },
            "invalid syscall name 'a b'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {
                        "names": ["a"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 6, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "args[0].index",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {
                        "names": ["a"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "op": "SCMP_CMP_XX"}],
                    }
                ],
            },
            "args[0].op: unknown value 'SCMP_CMP_XX'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {
                        "names": ["a"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "args[0].value",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {
                        "names": ["a"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 2**64, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "args[0].value",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}],
            },
            "errnoRet: not allowed with SCMP_ACT_ALLOW",
        ),
        ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}, "defaultErrnoRet: not allowed"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": True}, "defaultErrnoRet"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}, "architectures"),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}],
            },
            "either architectures or archMap",
        ),
        ({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, "flags"),
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY needs listenerPath"),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "agent.sock"},
            "listenerPath: must be absolute",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "four"}}
                ],
            },
            "includes.minKernel",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {"names": ["a"], "action": "SCMP_ACT_ALLOW", "excludes": {"users": []}}
                ],
            },
            "excludes: unknown field 'users'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW"}]
                * (seccomp.MAX_RULES + 1),
            },
            "over 4096",
        ),
    ],
)
def test_refusals_name_the_path_and_the_problem(tmp_path: Path, doc: Any, problem: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(InvalidArgument) as e:
        seccomp.load_localhost(path, arch="amd64", kernel=NEW_KERNEL)
    assert path in str(e.value)
    assert problem in str(e.value)


def test_refused_paths(tmp_path: Path) -> None:
    cases = {
        "profile.json": "must be absolute",
        "": "must be absolute",
        str(tmp_path / "missing.json"): "no such file",
        str(tmp_path): "not a regular file",
    }
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases[str(fifo)] = "not a regular file"
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (seccomp.MAX_PROFILE_BYTES + 1))
    cases[str(big)] = "over"
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"defaultAction": "\xff"}')
    cases[str(bad)] = "invalid JSON"
    for path, problem in cases.items():
        with pytest.raises(InvalidArgument, match="seccomp profile") as e:
            seccomp.load_localhost(path)
        assert repr(path) in str(e.value), path
        assert problem in str(e.value), path


# -- the CRI's selection -------------------------------------------------------------------


@pytest.fixture
def localhost(tmp_path: Path) -> str:
    return write(
        tmp_path,
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}],
        },
    )


def is_default(p: Any) -> bool:
    return p is not None and p["defaultAction"] == "SCMP_ACT_ERRNO" and "read" in allowed(p)


def is_localhost(p: Any) -> bool:
    return p is not None and p["defaultAction"] == "SCMP_ACT_ALLOW"


def test_typed_profiles(localhost: str) -> None:
    assert is_default(seccomp.profile_for(seccomp.RUNTIME_DEFAULT))
    assert seccomp.profile_for(seccomp.UNCONFINED) is None
    assert is_localhost(seccomp.profile_for(seccomp.LOCALHOST, localhost))
    # containerd trims a stray localhost/ prefix from the typed ref too.
    assert is_localhost(seccomp.profile_for(seccomp.LOCALHOST, "localhost/" + localhost))


def test_deprecated_strings(localhost: str) -> None:
    assert seccomp.profile_for(None) is None
    assert seccomp.profile_for("") is None
    assert seccomp.profile_for("unconfined") is None
    assert is_default(seccomp.profile_for("runtime/default"))
    assert is_default(seccomp.profile_for("docker/default"))
    assert is_localhost(seccomp.profile_for("localhost/" + localhost))


def test_privileged_gets_no_filter(localhost: str) -> None:
    for kind, ref in [
        (seccomp.RUNTIME_DEFAULT, ""),
        (seccomp.LOCALHOST, localhost),
        (seccomp.LOCALHOST, "/missing.json"),
        ("runtime/default", ""),
    ]:
        assert seccomp.profile_for(kind, ref, privileged=True) is None


def test_capabilities_reach_the_default() -> None:
    p = seccomp.profile_for(seccomp.RUNTIME_DEFAULT, "", ["SYS_ADMIN"])
    assert p is not None and "mount" in allowed(p)
    p = seccomp.profile_for("runtime/default", "", DEFAULT_CAPABILITIES)
    assert p is not None and "mount" not in allowed(p)


@pytest.mark.parametrize(
    ("kind", "ref", "problem"),
    [
        (seccomp.RUNTIME_DEFAULT, "/x.json", "localhost_ref must only be set"),
        (seccomp.UNCONFINED, "/x.json", "localhost_ref must only be set"),
        (seccomp.LOCALHOST, "", "must be absolute"),
        (seccomp.LOCALHOST, "relative.json", "must be absolute"),
        (seccomp.LOCALHOST, "/nonexistent/profile.json", "no such file"),
        (7, "", "unknown profile type"),
        (True, "", "unknown profile type"),
        ("runtime/other", "", "invalid profile 'runtime/other'"),
        ("localhost/relative.json", "", "must be absolute"),
        ("unconfined", "/x.json", "typed profile only"),
    ],
)
def test_cri_refusals(kind: Any, ref: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match="seccomp") as e:
        seccomp.profile_for(kind, ref)
    assert problem in str(e.value)
