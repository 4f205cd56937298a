"""Seccomp profiles from linerd.oci.seccomp enforced by real runc (root; no daemon).

Each test runs a busybox container with `runc run` from a private --root and reads what the
kernel reports (`Seccomp:` in /proc/self/status) and what blocked syscalls answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from liner_common.ocispec import default_spec
from linerd.oci import seccomp
from linerd.runtime import RUNC

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists(RUNC.path) or not os.path.exists("/bin/busybox"),
        reason="needs root, runc and Debian's busybox-static",
    ),
]

# critest's profile: everything allowed but chmod (and its *at forms).
NO_CHMOD = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}],
}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root: /bin/busybox plus an applet symlink per command (mounted read-only)."""
    root = tmp_path_factory.mktemp("seccomp-rootfs") / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    return root


class Runner:
    def __init__(self, tmp: Path, rootfs: Path) -> None:
        self.tmp = tmp
        self.rootfs = rootfs
        self.root = tmp / "runc"  # runc's private state dir
        self.ids: list[str] = []

    def run(
        self, script: str, profile: dict[str, Any] | None, caps: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cid = "seccomp-" + uuid.uuid4().hex[:12]
        self.ids.append(cid)
        spec = default_spec("seccomp-test", cid)
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        spec["process"]["args"] = ["/bin/sh", "-c", script]
        spec["process"]["env"] = ["PATH=/bin"]
        if caps is not None:
            spec["process"]["capabilities"] = {
                k: list(caps) for k in ("bounding", "permitted", "effective")
            }
        # Top-level cgroup: runc removes it with the container, leaving no parent behind.
        spec["linux"]["cgroupsPath"] = f"/{cid}"
        spec["mounts"].append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            }
        )
        if profile is not None:
            spec["linux"]["seccomp"] = profile
        bundle = self.tmp / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        return subprocess.run(
            [RUNC.path, "--root", str(self.root), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def caps(self) -> list[str]:
        return list(default_spec("x", "x")["process"]["capabilities"]["bounding"])

    def cleanup(self) -> list[str]:
        """Force-delete anything left; returns what was left."""
        left = []
        for cid in self.ids:
            state = [RUNC.path, "--root", str(self.root), "state", cid]
            if subprocess.run(state, capture_output=True).returncode == 0:
                left.append(f"container {cid}")
                subprocess.run(
                    [RUNC.path, "--root", str(self.root), "delete", "--force", cid],
                    capture_output=True,
                )
            if Path("/sys/fs/cgroup", cid).exists():
                left.append(f"cgroup {cid}")
        return left


@pytest.fixture
def runner(tmp_path: Path, rootfs: Path) -> Iterator[Runner]:
    r = Runner(tmp_path, rootfs)
    yield r
    assert r.cleanup() == []


def seccomp_mode(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith("Seccomp:")]
    return line.split(":", 1)[1].strip()


def test_runtime_default_filters_and_ordinary_commands_work(runner: Runner) -> None:
    caps = runner.caps()
    profile = seccomp.profile_for(seccomp.RUNTIME_DEFAULT, "", caps)
    assert profile is not None
    res = runner.run(
        "grep Seccomp: /proc/self/status; echo hello; ls /bin/busybox; sleep 0.1; echo slept;"
        " touch /tmp/f && chmod 600 /tmp/f && stat -c mode=%a /tmp/f;"
        " unshare -U true; echo unshare=$?",
        profile,
        caps,
    )
    assert res.returncode == 0, res.stderr
    assert seccomp_mode(res.stdout) == "2"
    lines = res.stdout.splitlines()
    for expected in ("hello", "/bin/busybox", "slept", "mode=600", "unshare=1"):
        assert expected in lines, res.stdout
    # unshare(CLONE_NEWUSER) needs no capability: only the filter refuses it (see unconfined).
    [refused] = [line for line in res.stderr.splitlines() if line.startswith("unshare:")]
    assert refused.endswith("Operation not permitted"), res.stderr


def test_runtime_default_with_sys_admin_allows_namespaces(runner: Runner) -> None:
    caps = [*runner.caps(), "CAP_SYS_ADMIN"]
    profile = seccomp.profile_for("runtime/default", "", caps)
    res = runner.run(
        "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?;"
        " hostname renamed && hostname",
        profile,
        caps,
    )
    assert res.returncode == 0, res.stderr
    assert seccomp_mode(res.stdout) == "2"
    assert res.stdout.splitlines()[1:] == ["unshare=0", "renamed"], res.stdout


def test_localhost_profile_blocks_chmod(runner: Runner, tmp_path: Path) -> None:
    path = tmp_path / "no-chmod.json"
    path.write_text(json.dumps(NO_CHMOD))
    profile = seccomp.profile_for(seccomp.LOCALHOST, str(path), runner.caps())
    assert profile == seccomp.profile_for(f"localhost/{path}", "", runner.caps())
    res = runner.run(
        "grep Seccomp: /proc/self/status; chmod 400 /; echo chmod=$?;"
        " touch /tmp/f; echo touch=$?; ls / >/dev/null; echo ls=$?",
        profile,
    )
    assert res.returncode == 0, res.stderr
    assert seccomp_mode(res.stdout) == "2"
    assert res.stdout.splitlines()[1:] == ["chmod=1", "touch=0", "ls=0"], res.stdout
    assert "chmod: /: Operation not permitted" in res.stderr.splitlines(), res.stderr


def test_unconfined_has_no_filter(runner: Runner) -> None:
    caps = runner.caps()
    for kind in (seccomp.UNCONFINED, "unconfined", "", None):
        assert seccomp.profile_for(kind, "", caps) is None
    assert seccomp.profile_for(seccomp.RUNTIME_DEFAULT, "", caps, privileged=True) is None
    res = runner.run(
        "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?", None, caps
    )
    assert res.returncode == 0, res.stderr
    assert seccomp_mode(res.stdout) == "0"
    assert res.stdout.splitlines()[1:] == ["unshare=0"], res.stderr
