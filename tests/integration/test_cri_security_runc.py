"""linerd.cri.security's specs run by real runc (root; no daemon): what the kernel decides.

Each test builds a spec the way the CRI does (ocispec defaults, then apply_security_context,
apply_mounts, apply_devices), runs a busybox container with `runc run` from a private --root,
and reads what the container sees: `id`, /proc/self/status, errors of refused operations,
mounts propagated across namespaces.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from liner_api.runtime.v1 import api_pb2
from liner_common.ocispec import default_spec
from linerd.cri import capabilities
from linerd.cri.mounts import host_devices
from linerd.cri.security import apply_devices, apply_mounts, apply_security_context
from linerd.runtime import RUNC

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists(RUNC.path) or not os.path.exists("/bin/busybox"),
        reason="needs root, runc and Debian's busybox-static",
    ),
]

SC = api_pb2.LinuxContainerSecurityContext
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000::/home/user:/bin/sh
"""
GROUP = """\
root:x:0:
user:x:1000:
extra:x:50000:user
nogroup:x:65534:
"""


def make_rootfs(root: Path) -> Path:
    """busybox with an applet link per command; /bin/ls is a file of its own (masking it
    must not mask busybox), an /etc/passwd and /etc/group, /etc/secret."""
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "root", "mnt"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a not in ("busybox", "ls"):
            (root / "bin" / a).symlink_to("busybox")
    shutil.copy2("/bin/busybox", root / "bin" / "ls")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "secret").write_text("s3cret\n")
    return root


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("crisec-rootfs") / "rootfs")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner:
    def __init__(self, tmp: Path, rootfs: Path) -> None:
        self.tmp = tmp
        self.rootfs = rootfs
        self.root = tmp / "runc"  # runc's private state dir
        self.ids: list[str] = []

    def bundle(
        self,
        script: str,
        sc: api_pb2.LinuxContainerSecurityContext,
        *,
        image_user: str = "",
        sandbox_privileged: bool = False,
        mounts: Sequence[api_pb2.Mount] = (),
        devices: Sequence[api_pb2.Device] = (),
        rootfs: Path | None = None,
    ) -> tuple[str, Path, dict[str, Any]]:
        cid = "crisec-" + uuid.uuid4().hex[:12]
        self.ids.append(cid)
        root = rootfs or self.rootfs
        spec = default_spec("crisec-test", cid)
        spec["root"] = {"path": str(root)}
        spec["process"]["args"] = ["/bin/sh", "-c", script]
        spec["process"]["env"] = ["PATH=/bin"]
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
        apply_security_context(
            spec,
            sc,
            rootfs=root,
            image_user=image_user,
            sandbox_privileged=sandbox_privileged,
        )
        apply_mounts(spec, mounts)
        apply_devices(spec, devices, privileged=sc.privileged)
        bundle = self.tmp / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        return cid, bundle, spec

    def run(self, script: str, sc: api_pb2.LinuxContainerSecurityContext, **kw: Any) -> Result:
        cid, bundle, _ = self.bundle(script, sc, **kw)
        res = subprocess.run(
            [RUNC.path, "--root", str(self.root), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(res.returncode, res.stdout, res.stderr)

    def run_between(
        self,
        script: str,
        sc: api_pb2.LinuxContainerSecurityContext,
        between: Any,
        **kw: Any,
    ) -> Result:
        """`runc create`, then ``between()`` (the container's mounts exist, its process has
        not started), then `runc start`; output read until the container closes it."""
        cid, bundle, _ = self.bundle(script, sc, **kw)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            created = subprocess.run(
                [RUNC.path, "--root", str(self.root), "create", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                timeout=60,
            )
            os.close(out_w)
            os.close(err_w)
            out_w = err_w = -1
            if created.returncode != 0:
                return Result(created.returncode, "", _read_all(err_r))
            between()
            subprocess.run(
                [RUNC.path, "--root", str(self.root), "start", cid], check=True, timeout=60
            )
            stdout, stderr = _read_until_eof(out_r, err_r)
        finally:
            for fd in (out_r, out_w, err_r, err_w):
                if fd >= 0:
                    os.close(fd)
        return Result(0, stdout, stderr)

    def cleanup(self) -> list[str]:
        """Force-delete anything left; returns what was left running."""
        left = []
        for cid in self.ids:
            state = subprocess.run(
                [RUNC.path, "--root", str(self.root), "state", cid], capture_output=True, text=True
            )
            if state.returncode == 0:
                status = json.loads(state.stdout)["status"]
                if status != "stopped":
                    left.append(f"container {cid} {status}")
                subprocess.run(
                    [RUNC.path, "--root", str(self.root), "delete", "--force", cid],
                    capture_output=True,
                )
            if Path("/sys/fs/cgroup/memory", cid).exists():
                left.append(f"cgroup {cid}")
        return left


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _read_until_eof(out: int, err: int, timeout: float = 60) -> tuple[str, str]:
    """Both pipes to EOF, which comes when the container's last process exits."""
    data: dict[int, list[bytes]] = {out: [], err: []}
    open_fds = [out, err]
    deadline = time.monotonic() + timeout
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the container did not exit")
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                data[fd].append(chunk)
            else:
                open_fds.remove(fd)
    return tuple(b"".join(data[fd]).decode(errors="replace") for fd in (out, err))  # type: ignore[return-value]


@pytest.fixture
def runner(tmp_path: Path, rootfs: Path) -> Iterator[Runner]:
    r = Runner(tmp_path, rootfs)
    yield r
    assert r.cleanup() == []


def status_field(out: str, name: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith(name + ":")]
    return line.split(":", 1)[1].strip()


# -- users and groups ---------------------------------------------------------------------

ID = "id -u; id -g; id -G"


def test_image_user_with_its_groups_and_supplemental(runner: Runner) -> None:
    res = runner.run(ID, SC(supplemental_groups=[1234]), image_user="1000")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["1000", "1000", "1000 1234 50000"]


def test_run_as_user_group_and_username(runner: Runner) -> None:
    sc = SC(run_as_user=api_pb2.Int64Value(value=1001), run_as_group=api_pb2.Int64Value(value=1002))
    res = runner.run(ID, sc, image_user="1000")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["1001", "1002", "1002"]
    res = runner.run("id -un; " + ID, SC(run_as_username="nobody"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["nobody", "65534", "65534", "65534"]


def test_root_by_default(runner: Runner) -> None:
    res = runner.run(ID, SC())
    assert res.stdout.splitlines() == ["0", "0", "0"], res.stderr


# -- rootfs, paths, no_new_privs ----------------------------------------------------------


def test_readonly_rootfs(runner: Runner, tmp_path: Path) -> None:
    own = make_rootfs(tmp_path / "own-rootfs")  # this one is written to
    script = "touch /test.go && echo Found"
    res = runner.run(script, SC(readonly_rootfs=True), rootfs=own)
    assert res.returncode != 0
    assert res.stderr == "touch: /test.go: Read-only file system\n"
    res = runner.run(script, SC(), rootfs=own)
    assert (res.returncode, res.stdout) == (0, "Found\n"), res.stderr


def test_masked_paths(runner: Runner) -> None:
    # Debian's busybox-static runs applets in-process for bare names (critest's busybox image
    # does not), so the masked binary is run by its path: the result is critest's error.
    res = runner.run("/bin/ls /", SC(masked_paths=["/bin/ls"]))
    assert res.returncode != 0
    assert res.stderr == "/bin/sh: /bin/ls: Permission denied\n"
    res = runner.run("cat /etc/secret; ls /bin/busybox", SC(masked_paths=["/etc/secret"]))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "/bin/busybox\n"  # the masked file reads empty
    res = runner.run("cat /etc/secret", SC())  # no list: nothing masked
    assert res.stdout == "s3cret\n"


def test_readonly_paths(runner: Runner) -> None:
    res = runner.run("touch /tmp/test", SC(readonly_paths=["/tmp"]))
    assert res.returncode != 0
    assert res.stderr == "touch: /tmp/test: Read-only file system\n"
    res = runner.run("touch /tmp/test && echo ok", SC())
    assert res.stdout == "ok\n", res.stderr


def test_no_new_privs(runner: Runner) -> None:
    res = runner.run("cat /proc/self/status", SC(no_new_privs=True))
    assert status_field(res.stdout, "NoNewPrivs") == "1", res.stderr
    res = runner.run("cat /proc/self/status", SC())
    assert status_field(res.stdout, "NoNewPrivs") == "0", res.stderr


# -- capabilities, seccomp, privileged ----------------------------------------------------


def cap_sc(add: Sequence[str] = (), drop: Sequence[str] = ()) -> SC:
    return SC(capabilities=api_pb2.Capability(add_capabilities=add, drop_capabilities=drop))


def mask(names: Sequence[str]) -> str:
    return f"{sum(1 << capabilities.NAMES.index(n) for n in names):016x}"


def test_drop_all(runner: Runner) -> None:
    res = runner.run("cat /proc/self/status", cap_sc(drop=["ALL"]))
    assert status_field(res.stdout, "CapBnd") == "0000000000000000", res.stderr
    assert status_field(res.stdout, "CapEff") == "0000000000000000"


def test_add_all(runner: Runner) -> None:
    res = runner.run("cat /proc/self/status", cap_sc(add=["ALL"]))
    assert status_field(res.stdout, "CapBnd") == mask(capabilities.current()), res.stderr


def test_drop_net_raw_denies_ping(runner: Runner) -> None:
    res = runner.run("ping -c 1 -W 1 127.0.0.1", cap_sc(drop=["NET_RAW"]))
    assert res.returncode != 0
    assert "permission denied" in res.stderr.lower(), res.stderr
    res = runner.run("ping -c 1 -W 1 127.0.0.1", SC())  # lo is down: fails, but not denied
    assert "permission denied" not in res.stderr.lower(), res.stderr


def test_net_admin_by_capability_or_privileged(runner: Runner) -> None:
    script = "brctl addbr br-test && echo added"
    res = runner.run(script, SC())
    assert res.returncode != 0 and "added" not in res.stdout
    res = runner.run(script, cap_sc(add=["NET_ADMIN"]))
    assert res.stdout == "added\n", res.stderr
    res = runner.run(script, SC(privileged=True), sandbox_privileged=True)
    assert res.stdout == "added\n", res.stderr


def test_seccomp_default_and_privileged(runner: Runner) -> None:
    rd = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    res = runner.run("cat /proc/self/status", SC(seccomp=rd))
    assert status_field(res.stdout, "Seccomp") == "2", res.stderr
    res = runner.run(
        "cat /proc/self/status", SC(seccomp=rd, privileged=True), sandbox_privileged=True
    )
    assert status_field(res.stdout, "Seccomp") == "0", res.stderr


def test_privileged(runner: Runner) -> None:
    # A host device outside the default set (null, zero, tty...) shows up.
    extra = next(
        d["path"]
        for d in host_devices()
        if d["path"] not in ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty")
        and d["path"].count("/") == 2
    )
    script = (
        "cat /proc/self/status; grep -E ' /sys (sysfs|cgroup)' /proc/mounts;"
        f" test -e {extra} && echo has-device"
    )
    res = runner.run(script, SC(privileged=True), sandbox_privileged=True)
    assert res.returncode == 0, res.stderr
    assert status_field(res.stdout, "CapBnd") == mask(capabilities.current())
    assert status_field(res.stdout, "NoNewPrivs") == "0"
    assert " /sys sysfs rw," in res.stdout
    assert "has-device" in res.stdout.splitlines()
    res = runner.run(f"test -e {extra} && echo has-device", SC())
    assert "has-device" not in res.stdout


# -- devices ------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs the host's /dev/fuse")
def test_device_node_and_its_cgroup_rule(runner: Runner) -> None:
    # /dev/fuse (10:229) is not among the devices every container may use, so opening it
    # depends on the rule apply_devices adds.
    script = "stat -c '%F %t %T' /dev/myfuse; : 3<>/dev/myfuse && echo opened"
    dev = api_pb2.Device(host_path="/dev/fuse", container_path="/dev/myfuse", permissions="rwm")
    res = runner.run(script, SC(), devices=[dev])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["character special file a e5", "opened"]
    dev = api_pb2.Device(host_path="/dev/fuse", container_path="/dev/myfuse", permissions="r")
    res = runner.run(script, SC(), devices=[dev])
    assert res.stdout.splitlines() == ["character special file a e5"]
    assert "Operation not permitted" in res.stderr


# -- mounts and propagation ---------------------------------------------------------------


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs made shared: the host side of a propagating volume."""
    d = tmp_path / "shared"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "crisec", str(d)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(d)], check=True)
        subprocess.run(["mount", "--make-shared", str(d)], check=True)
        (d / "vol" / "fromhost").mkdir(parents=True)
        (d / "vol" / "fromcontainer").mkdir()
        yield d
    finally:
        subprocess.run(["umount", "-R", "-l", str(d)], check=True)


def test_bind_mount_through_a_symlink(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("through the link\n")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    m = api_pb2.Mount(container_path="/mnt/vol", host_path=str(tmp_path / "link"), readonly=True)
    res = runner.run("cat /mnt/vol/f; touch /mnt/vol/g", SC(), mounts=[m])
    assert res.stdout == "through the link\n", res.stderr
    assert "Read-only file system" in res.stderr


PROPAGATION_SCRIPT = (
    "cat /mnt/vol/fromhost/marker;"
    " mount -t tmpfs incontainer /mnt/vol/fromcontainer && echo c > /mnt/vol/fromcontainer/f;"
    " true"
)


def _propagation(runner: Runner, shared: Path, propagation: int) -> tuple[Result, bool]:
    """(what the container saw of a host mount made after its mounts, whether its own
    mount reached the host)."""
    vol = shared / "vol"
    m = api_pb2.Mount(container_path="/mnt/vol", host_path=str(vol), propagation=propagation)

    def host_mounts() -> None:
        subprocess.run(["mount", "-t", "tmpfs", "fromhost", str(vol / "fromhost")], check=True)
        (vol / "fromhost" / "marker").write_text("from the host\n")

    res = runner.run_between(
        PROPAGATION_SCRIPT,
        SC(privileged=True),  # mounting needs CAP_SYS_ADMIN, as critest's privileged pod
        host_mounts,
        sandbox_privileged=True,
        mounts=[m],
    )
    back = (vol / "fromcontainer" / "f").exists()
    return res, back


def test_private_propagation_isolates(runner: Runner, shared_dir: Path) -> None:
    res, back = _propagation(runner, shared_dir, api_pb2.PROPAGATION_PRIVATE)
    assert "from the host" not in res.stdout
    assert "No such file" in res.stderr
    assert not back


def test_host_to_container_propagation(runner: Runner, shared_dir: Path) -> None:
    res, back = _propagation(runner, shared_dir, api_pb2.PROPAGATION_HOST_TO_CONTAINER)
    assert res.stdout == "from the host\n", res.stderr
    assert not back


def test_bidirectional_propagation(runner: Runner, shared_dir: Path) -> None:
    res, back = _propagation(runner, shared_dir, api_pb2.PROPAGATION_BIDIRECTIONAL)
    assert res.stdout == "from the host\n", res.stderr
    assert back
    assert (shared_dir / "vol" / "fromcontainer" / "f").read_text() == "c\n"


def test_propagation_from_a_private_mount_is_refused(runner: Runner, tmp_path: Path) -> None:
    from linerd.errdefs import FailedPrecondition

    d = tmp_path / "private"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "crisec", str(d)], check=True)
    try:
        subprocess.run(["mount", "--make-private", str(d)], check=True)
        for propagation in (
            api_pb2.PROPAGATION_BIDIRECTIONAL,
            api_pb2.PROPAGATION_HOST_TO_CONTAINER,
        ):
            m = api_pb2.Mount(container_path="/v", host_path=str(d), propagation=propagation)
            with pytest.raises(FailedPrecondition, match="is mounted on"):
                runner.bundle("true", SC(), mounts=[m])
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def test_recursive_read_only_covers_submounts(runner: Runner, tmp_path: Path) -> None:
    d = tmp_path / "rro"
    (d / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "crisec-sub", str(d / "sub")], check=True)
    try:
        script = "touch /mnt/v/sub/x && echo wrote"
        plain = api_pb2.Mount(container_path="/mnt/v", host_path=str(d), readonly=True)
        res = runner.run(script, SC(), mounts=[plain])
        assert res.stdout == "wrote\n", res.stderr  # ro alone leaves the submount writable
        rro = api_pb2.Mount(
            container_path="/mnt/v", host_path=str(d), readonly=True, recursive_read_only=True
        )
        res = runner.run(script, SC(), mounts=[rro])
        assert res.returncode != 0
        assert res.stderr == "touch: /mnt/v/sub/x: Read-only file system\n"
    finally:
        subprocess.run(["umount", "-l", str(d / "sub")], check=True)
