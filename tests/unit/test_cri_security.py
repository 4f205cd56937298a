"""linerd.cri.security: the CRI's security context and resources applied to an OCI spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from liner_api.runtime.v1 import api_pb2
from liner_common.ocispec import DEFAULT_CAPABILITIES, default_spec
from linerd.cri import capabilities, security
from linerd.cri.security import (
    apply_resources,
    apply_sandbox_security_context,
    apply_security_context,
    clamp_oom_score_adj,
)
from linerd.errdefs import FailedPrecondition, InvalidArgument
from linerd.oci import seccomp

pytestmark = pytest.mark.unit

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000::/home/user:/bin/sh
www-data:x:33:33::/var/www:/bin/false
"""
GROUP = """\
root:x:0:
user:x:1000:
extra:x:50000:user
staff:x:50:www-data
nogroup:x:65534:
"""
# The daemon's capabilities on this machine: everything but CAP_SYS_RESOURCE.
HELD = [c for c in capabilities.NAMES if c != "CAP_SYS_RESOURCE"]

SC = api_pb2.LinuxContainerSecurityContext
SSC = api_pb2.LinuxSandboxSecurityContext


@pytest.fixture(autouse=True)
def held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "current", lambda: list(HELD))


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def spec() -> dict[str, Any]:
    return default_spec("k8s.io", "c1")


def apply(
    sc: api_pb2.LinuxContainerSecurityContext,
    rootfs: Path,
    image_user: str = "",
    sandbox_privileged: bool = False,
) -> dict[str, Any]:
    s = spec()
    apply_security_context(
        s, sc, rootfs=rootfs, image_user=image_user, sandbox_privileged=sandbox_privileged
    )
    return s


def user(s: dict[str, Any]) -> tuple[int, int, list[int]]:
    u = s["process"]["user"]
    return u["uid"], u["gid"], u["additionalGids"]


def caps(s: dict[str, Any]) -> list[str]:
    c = s["process"]["capabilities"]
    assert c["bounding"] == c["permitted"] == c["effective"]
    return c["bounding"]


# -- users and groups ---------------------------------------------------------------------


def test_critest_image_user_with_image_group_and_supplemental(rootfs: Path) -> None:
    # Image user 1000 (in group 50000 by /etc/group) + supplemental 1234: `id -G` shows
    # exactly `1000 1234 50000`.
    s = apply(SC(supplemental_groups=[1234]), rootfs, image_user="1000")
    assert user(s) == (1000, 1000, [1000, 1234, 50000])


def test_no_user_anywhere_is_root(rootfs: Path) -> None:
    assert user(apply(SC(), rootfs)) == (0, 0, [0])


def test_supplemental_groups_sorted_and_deduplicated(rootfs: Path) -> None:
    s = apply(SC(supplemental_groups=[5678, 1234, 5678, 0]), rootfs)
    assert user(s) == (0, 0, [0, 1234, 5678])


def test_run_as_user_wins_over_the_image_user(rootfs: Path) -> None:
    s = apply(SC(run_as_user=api_pb2.Int64Value(value=1001)), rootfs, image_user="user")
    assert user(s) == (1001, 0, [0])  # no passwd entry: gid 0
    s = apply(SC(run_as_user=api_pb2.Int64Value(value=0)), rootfs, image_user="user")
    assert user(s) == (0, 0, [0])  # an explicit 0 is a user too


def test_run_as_user_and_group(rootfs: Path) -> None:
    sc = SC(run_as_user=api_pb2.Int64Value(value=1001), run_as_group=api_pb2.Int64Value(value=1002))
    assert user(apply(sc, rootfs)) == (1001, 1002, [1002])


def test_run_as_group_without_user_is_refused(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="without user"):
        apply(SC(run_as_group=api_pb2.Int64Value(value=1002)), rootfs, image_user="user")


def test_run_as_username_from_the_image(rootfs: Path) -> None:
    assert user(apply(SC(run_as_username="nobody"), rootfs)) == (65534, 65534, [65534])
    s = apply(SC(run_as_username="www-data", run_as_group=api_pb2.Int64Value(value=7)), rootfs)
    assert user(s) == (33, 7, [7, 50])  # www-data is in staff (50)
    with pytest.raises(InvalidArgument, match="not found"):
        apply(SC(run_as_username="ghost"), rootfs)


def test_image_user_forms(rootfs: Path) -> None:
    assert user(apply(SC(), rootfs, image_user="user")) == (1000, 1000, [1000, 50000])
    assert user(apply(SC(), rootfs, image_user="user:staff")) == (1000, 50, [50, 50000])
    assert user(apply(SC(), rootfs, image_user="1000:33")) == (1000, 33, [33, 50000])
    assert user(apply(SC(), rootfs, image_user="www-data")) == (33, 33, [33, 50])


def test_strict_policy_leaves_out_the_image_groups(rootfs: Path) -> None:
    sc = SC(supplemental_groups=[1234], supplemental_groups_policy=api_pb2.Strict)
    assert user(apply(sc, rootfs, image_user="1000")) == (1000, 1000, [1000, 1234])


def test_ids_out_of_range_are_refused(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        apply(SC(run_as_user=api_pb2.Int64Value(value=-1)), rootfs)
    with pytest.raises(InvalidArgument, match="out of range"):
        apply(SC(supplemental_groups=[1 << 32]), rootfs)


def test_umask_and_other_user_fields_are_kept(rootfs: Path) -> None:
    s = spec()
    s["process"]["user"]["umask"] = 0o22
    apply_security_context(
        s,
        SC(run_as_user=api_pb2.Int64Value(value=5)),
        rootfs=rootfs,
        image_user="",
        sandbox_privileged=False,
    )
    assert s["process"]["user"] == {"uid": 5, "gid": 0, "additionalGids": [0], "umask": 0o22}


# -- rootfs, no_new_privs, paths ----------------------------------------------------------


def test_readonly_rootfs_and_no_new_privs(rootfs: Path) -> None:
    s = apply(SC(readonly_rootfs=True, no_new_privs=True), rootfs)
    assert s["root"]["readonly"] is True
    assert s["process"]["noNewPrivileges"] is True
    s = apply(SC(), rootfs)
    assert s["root"]["readonly"] is False
    # The CRI default lets setuid binaries work (critest's nonewprivs test).
    assert s["process"]["noNewPrivileges"] is False


def test_masked_and_readonly_paths_are_the_requests(rootfs: Path) -> None:
    s = apply(SC(masked_paths=["/bin/ls"], readonly_paths=["/tmp", "/proc/sys"]), rootfs)
    assert s["linux"]["maskedPaths"] == ["/bin/ls"]
    assert s["linux"]["readonlyPaths"] == ["/tmp", "/proc/sys"]
    s = apply(SC(), rootfs)  # kubelet sends its defaults; none sent means none
    assert s["linux"]["maskedPaths"] == []
    assert s["linux"]["readonlyPaths"] == []
    with pytest.raises(InvalidArgument, match="absolute"):
        apply(SC(masked_paths=["proc/kcore"]), rootfs)


def test_cgroup_mount_read_only_unless_privileged(rootfs: Path) -> None:
    s = apply(SC(), rootfs)
    [cg] = [m for m in s["mounts"] if m["destination"] == "/sys/fs/cgroup"]
    assert cg["type"] == "cgroup" and "ro" in cg["options"]
    s = apply(SC(privileged=True), rootfs, sandbox_privileged=True)
    [cg] = [m for m in s["mounts"] if m["destination"] == "/sys/fs/cgroup"]
    assert "ro" not in cg["options"]
    # A CRI mount already at /sys/fs/cgroup is left alone.
    s = spec()
    own = {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/x", "options": ["ro"]}
    s["mounts"].append(own)
    apply_security_context(s, SC(), rootfs=rootfs, image_user="", sandbox_privileged=False)
    assert [m for m in s["mounts"] if m["destination"] == "/sys/fs/cgroup"] == [own]


# -- capabilities -------------------------------------------------------------------------


def cap_sc(add: list[str] = [], drop: list[str] = [], ambient: list[str] = []) -> SC:  # noqa: B006
    return SC(
        capabilities=api_pb2.Capability(
            add_capabilities=add, drop_capabilities=drop, add_ambient_capabilities=ambient
        )
    )


def test_default_capabilities_without_a_request(rootfs: Path) -> None:
    assert caps(apply(SC(), rootfs)) == DEFAULT_CAPABILITIES


def test_drop_all(rootfs: Path) -> None:
    assert caps(apply(cap_sc(drop=["ALL"]), rootfs)) == []
    s = spec()
    s["process"]["capabilities"]["ambient"] = ["CAP_KILL"]
    s["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]
    apply_security_context(
        s, cap_sc(drop=["ALL"]), rootfs=rootfs, image_user="", sandbox_privileged=False
    )
    assert all(v == [] for v in s["process"]["capabilities"].values())


def test_add_all_is_what_linerd_holds(rootfs: Path) -> None:
    got = caps(apply(cap_sc(add=["ALL"]), rootfs))
    assert sorted(got) == sorted(HELD)
    assert "CAP_SYS_RESOURCE" not in got


def test_all_then_individual(rootfs: Path) -> None:
    got = caps(apply(cap_sc(add=["ALL"], drop=["CHOWN"]), rootfs))
    assert sorted(got) == sorted(set(HELD) - {"CAP_CHOWN"})
    assert caps(apply(cap_sc(add=["NET_ADMIN"], drop=["ALL"]), rootfs)) == ["CAP_NET_ADMIN"]
    # Add then drop of one capability drops it.
    assert "CAP_SYS_ADMIN" not in caps(apply(cap_sc(add=["SYS_ADMIN"], drop=["SYS_ADMIN"]), rootfs))


def test_add_and_drop_names_with_or_without_prefix(rootfs: Path) -> None:
    got = caps(
        apply(cap_sc(add=["net_admin", "CAP_SYS_TIME"], drop=["NET_RAW", "cap_kill"]), rootfs)
    )
    expected = [c for c in DEFAULT_CAPABILITIES if c not in ("CAP_NET_RAW", "CAP_KILL")]
    assert got == [*expected, "CAP_NET_ADMIN", "CAP_SYS_TIME"]


def test_unknown_names_are_ignored_as_runc_does(rootfs: Path) -> None:
    assert caps(apply(cap_sc(add=["FROBNICATE"], drop=["WIBBLE"]), rootfs)) == DEFAULT_CAPABILITIES


def test_adding_a_capability_linerd_lacks_is_refused(rootfs: Path) -> None:
    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        apply(cap_sc(add=["SYS_RESOURCE"]), rootfs)


def test_ambient_capabilities(rootfs: Path) -> None:
    s = apply(cap_sc(add=["NET_ADMIN"], ambient=["NET_ADMIN", "NET_BIND_SERVICE"]), rootfs)
    c = s["process"]["capabilities"]
    assert c["ambient"] == c["inheritable"] == ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
    with pytest.raises(InvalidArgument, match="CAP_SYS_TIME"):
        apply(cap_sc(ambient=["SYS_TIME"]), rootfs)


# -- privileged ---------------------------------------------------------------------------


def test_privileged_needs_a_privileged_sandbox(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="privileged"):
        apply(SC(privileged=True), rootfs, sandbox_privileged=False)


def test_privileged(rootfs: Path) -> None:
    sc = SC(
        privileged=True,
        masked_paths=["/proc/kcore"],
        readonly_paths=["/proc/sys"],
        capabilities=api_pb2.Capability(drop_capabilities=["ALL"]),
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault),
        apparmor=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref="x"
        ),
    )
    s = apply(sc, rootfs, sandbox_privileged=True)
    assert caps(s) == HELD  # every capability linerd has; drop is ignored
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    assert "seccomp" not in s["linux"]
    assert "apparmorProfile" not in s["process"]
    [sys] = [m for m in s["mounts"] if m["destination"] == "/sys"]
    assert "ro" not in sys["options"]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


# -- seccomp ------------------------------------------------------------------------------


def test_seccomp_choices(rootfs: Path) -> None:
    rd = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    unconfined = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)
    default = seccomp.profile_for(seccomp.RUNTIME_DEFAULT, "", DEFAULT_CAPABILITIES)
    assert apply(SC(seccomp=rd), rootfs)["linux"]["seccomp"] == default
    # An empty SecurityProfile is RuntimeDefault; neither field set is unconfined.
    assert apply(SC(seccomp=api_pb2.SecurityProfile()), rootfs)["linux"]["seccomp"] == default
    assert "seccomp" not in apply(SC(), rootfs)["linux"]
    assert apply(SC(seccomp_profile_path="runtime/default"), rootfs)["linux"]["seccomp"] == default
    # The typed field wins over the deprecated string.
    sc = SC(seccomp=unconfined, seccomp_profile_path="runtime/default")
    assert "seccomp" not in apply(sc, rootfs)["linux"]


def test_seccomp_default_follows_the_final_capabilities(rootfs: Path) -> None:
    rd = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    s = apply(
        SC(seccomp=rd, capabilities=api_pb2.Capability(add_capabilities=["SYS_ADMIN"])), rootfs
    )
    assert s["linux"]["seccomp"] == seccomp.profile_for(
        seccomp.RUNTIME_DEFAULT, "", [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]
    )
    assert s["linux"]["seccomp"] != apply(SC(seccomp=rd), rootfs)["linux"]["seccomp"]


def test_seccomp_localhost_and_bad_profiles(rootfs: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    lh = api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(profile)
    )
    assert apply(SC(seccomp=lh), rootfs)["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    missing = api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "nope")
    )
    with pytest.raises(InvalidArgument):
        apply(SC(seccomp=missing), rootfs)
    with pytest.raises(InvalidArgument):
        apply(SC(seccomp_profile_path="bogus"), rootfs)


# -- AppArmor -----------------------------------------------------------------------------


@pytest.fixture
def apparmor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake securityfs: enabled, with one loaded profile."""
    enabled = tmp_path / "enabled"
    enabled.write_text("Y\n")
    profiles = tmp_path / "apparmor" / "profiles"
    profiles.parent.mkdir()
    profiles.write_text("loaded-one (enforce)\nother (complain)\n")
    monkeypatch.setattr(security, "APPARMOR_ENABLED", str(enabled))
    monkeypatch.setattr(security, "APPARMOR_PROFILES", str(profiles))
    return enabled


def localhost_aa(name: str) -> api_pb2.SecurityProfile:
    return api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=name
    )


def test_apparmor_loaded_profile(rootfs: Path, apparmor: Path) -> None:
    s = apply(SC(apparmor=localhost_aa("loaded-one")), rootfs)
    assert s["process"]["apparmorProfile"] == "loaded-one"
    s = apply(SC(apparmor_profile="localhost/other"), rootfs)
    assert s["process"]["apparmorProfile"] == "other"


def test_apparmor_unloaded_profile_is_an_error(rootfs: Path, apparmor: Path) -> None:
    with pytest.raises(InvalidArgument, match="not loaded"):
        apply(SC(apparmor=localhost_aa("ghost")), rootfs)
    with pytest.raises(InvalidArgument, match="not loaded"):
        apply(SC(apparmor_profile="localhost/ghost"), rootfs)


def test_apparmor_defaults_and_unconfined_leave_it_out(rootfs: Path, apparmor: Path) -> None:
    for sc in (
        SC(),
        SC(apparmor=api_pb2.SecurityProfile()),
        SC(apparmor_profile="runtime/default"),
        SC(apparmor_profile="unconfined"),
    ):
        assert "apparmorProfile" not in apply(sc, rootfs)["process"]
    with pytest.raises(InvalidArgument):
        apply(SC(apparmor_profile="nonsense"), rootfs)


def test_apparmor_off_refuses_a_named_profile(rootfs: Path, apparmor: Path) -> None:
    apparmor.write_text("N\n")
    assert "apparmorProfile" not in apply(SC(apparmor_profile="runtime/default"), rootfs)["process"]
    with pytest.raises(InvalidArgument, match="not enabled"):
        apply(SC(apparmor=localhost_aa("loaded-one")), rootfs)


# -- sandbox ------------------------------------------------------------------------------


def sandbox(
    sc: api_pb2.LinuxSandboxSecurityContext, rootfs: Path, image_user: str = ""
) -> dict[str, Any]:
    s = spec()
    apply_sandbox_security_context(s, sc, rootfs=rootfs, image_user=image_user)
    return s


def test_sandbox_user_group_and_readonly_root(rootfs: Path) -> None:
    s = sandbox(SSC(), rootfs, image_user="65534")
    assert user(s) == (65534, 65534, [65534])
    assert s["root"]["readonly"] is True
    sc = SSC(
        run_as_user=api_pb2.Int64Value(value=1000),
        run_as_group=api_pb2.Int64Value(value=3000),
        supplemental_groups=[2000],
    )
    assert user(sandbox(sc, rootfs, image_user="nobody")) == (1000, 3000, [2000, 3000])
    with pytest.raises(InvalidArgument, match="without user"):
        sandbox(SSC(run_as_group=api_pb2.Int64Value(value=3000)), rootfs)


def test_sandbox_seccomp(rootfs: Path) -> None:
    rd = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    assert sandbox(SSC(seccomp=rd), rootfs)["linux"]["seccomp"]["defaultAction"]
    assert "seccomp" not in sandbox(SSC(seccomp=rd, privileged=True), rootfs)["linux"]
    assert "seccomp" not in sandbox(SSC(), rootfs)["linux"]


# -- resources ----------------------------------------------------------------------------


@pytest.fixture
def own_oom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "oom_score_adj"
    path.write_text("0\n")
    monkeypatch.setattr(security, "OOM_SCORE_ADJ", str(path))
    return path


@pytest.fixture
def swap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "swap_controller_available", lambda: True)


def resources(**kw: Any) -> dict[str, Any]:
    s = spec()
    apply_resources(s, api_pb2.LinuxContainerResources(**kw))
    return s


def test_cpu(own_oom: Path) -> None:
    s = resources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, cpuset_cpus="0-1,3", cpuset_mems="0"
    )
    assert s["linux"]["resources"]["cpu"] == {
        "period": 100000,
        "quota": 50000,
        "shares": 512,
        "cpus": "0-1,3",
        "mems": "0",
    }
    assert "cpu" not in resources()["linux"]["resources"]
    with pytest.raises(InvalidArgument):
        resources(cpuset_cpus="0-1;rm -rf")
    with pytest.raises(InvalidArgument):
        resources(cpu_shares=-2)


def test_memory_and_swap(own_oom: Path, swap: None) -> None:
    mem = resources(memory_limit_in_bytes=15 << 20)["linux"]["resources"]["memory"]
    assert mem == {"limit": 15 << 20, "swap": 15 << 20}  # no swap unless asked for
    mem = resources(memory_limit_in_bytes=15 << 20, memory_swap_limit_in_bytes=40 << 20)
    assert mem["linux"]["resources"]["memory"] == {"limit": 15 << 20, "swap": 40 << 20}


def test_swap_left_out_without_a_swap_controller(
    own_oom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(security, "swap_controller_available", lambda: False)
    mem = resources(memory_limit_in_bytes=1 << 20, memory_swap_limit_in_bytes=2 << 20)
    assert mem["linux"]["resources"]["memory"] == {"limit": 1 << 20}


def test_update_keeps_what_is_unset(own_oom: Path, swap: None) -> None:
    s = resources(cpu_shares=512, memory_limit_in_bytes=1 << 20)
    apply_resources(s, api_pb2.LinuxContainerResources(cpu_quota=20000))
    assert s["linux"]["resources"]["cpu"] == {"shares": 512, "quota": 20000}
    assert s["linux"]["resources"]["memory"]["limit"] == 1 << 20
    assert s["linux"]["resources"]["devices"]  # the default device rules stay


def test_hugepages_only_with_a_hugetlb_controller(
    own_oom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = [api_pb2.HugepageLimit(page_size="2MB", limit=4 << 20)]
    monkeypatch.setattr(security, "hugetlb_available", lambda: True)
    s = resources(hugepage_limits=limits)
    assert s["linux"]["resources"]["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    monkeypatch.setattr(security, "hugetlb_available", lambda: False)
    assert "hugepageLimits" not in resources(hugepage_limits=limits)["linux"]["resources"]


def test_unified_is_kept(own_oom: Path) -> None:
    s = resources(unified={"memory.high": "1000000", "pids.max": "10"})
    assert s["linux"]["resources"]["unified"] == {"memory.high": "1000000", "pids.max": "10"}


def test_oom_score_adj_is_clamped_to_linerds_own(own_oom: Path) -> None:
    assert resources(oom_score_adj=-998)["process"]["oomScoreAdj"] == 0
    assert resources(oom_score_adj=1000)["process"]["oomScoreAdj"] == 1000
    assert resources()["process"]["oomScoreAdj"] == 0
    own_oom.write_text("-500\n")
    assert resources(oom_score_adj=-998)["process"]["oomScoreAdj"] == -500
    assert clamp_oom_score_adj(5000) == 1000
    own_oom.write_text("-1000\n")
    assert clamp_oom_score_adj(-4000) == -1000


def test_oom_score_adj_is_not_clamped_with_cap_sys_resource(
    own_oom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capabilities, "current", lambda: list(capabilities.NAMES))
    assert resources(oom_score_adj=-998)["process"]["oomScoreAdj"] == -998
    assert clamp_oom_score_adj(-4000) == -1000
