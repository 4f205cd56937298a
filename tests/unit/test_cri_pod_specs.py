"""The pure parts of pods and containers: the pause and container specs, cgroup paths, the
command line rule, the OOM score clamp, resolv.conf, the metadata round trip, names."""

from __future__ import annotations

from pathlib import Path

import pytest

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.core.types import Container
from linerd.cri import meta, netns, podns, sandbox_files, security, specs
from linerd.cri.names import Names
from linerd.errdefs import AlreadyExists, InvalidArgument

pytestmark = pytest.mark.unit

SID = "a" * 64
CID = "b" * 64
PINNED = podns.PodNamespaces(net="/run/netns/cni-x", ipc="/run/netns/ipc-x", uts="/run/netns/uts-x")


def _pod(**ns: int) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="web", namespace="default", uid="u1"),
        hostname="web-host",
        log_directory="/var/log/pods/x",
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod1",
            sysctls={"kernel.shm_rmid_forced": "1"},
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(**ns)
            ),
        ),
    )


def _pause(config: cri.PodSandboxConfig, tmp_path: Path) -> dict:
    return specs.pause_spec(
        sandbox_id=SID,
        config=config,
        image_config={"Entrypoint": ["/pause"]},
        namespaces=PINNED,
        hostname="web-host",
        shm="/state/shm",
        cgroup_driver="cgroupfs",
        rootfs=tmp_path,
    )


def _types(spec: dict) -> dict[str, str]:
    return {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}


def test_pause_spec_pod_network(tmp_path: Path) -> None:
    spec = _pause(_pod(), tmp_path)
    assert spec["process"]["args"] == ["/pause"]
    assert spec["root"]["readonly"] is True and spec["hostname"] == "web-host"
    ns = _types(spec)
    # The pause joins the pinned namespaces (its sysctls were set in them); owns the pid one.
    assert ns == {
        "network": "/run/netns/cni-x", "ipc": "/run/netns/ipc-x", "uts": "/run/netns/uts-x",
        "pid": "", "mount": "",
    }  # fmt: skip
    assert "sysctl" not in spec["linux"]
    assert spec["linux"]["cgroupsPath"] == f"/kubepods/pod1/{SID}"
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    # -998 where linerd may lower a score; its own where it may not (test_cri_security).
    assert spec["process"]["oomScoreAdj"] == security.clamp_oom_score_adj(-998)
    shm = [m for m in spec["mounts"] if m["destination"] == "/dev/shm"]
    assert [m["source"] for m in shm] == ["/state/shm"]
    a = spec["annotations"]
    assert a[meta.A_CONTAINER_TYPE] == "sandbox" and a[meta.A_SANDBOX_ID] == SID
    assert a[meta.A_SANDBOX_LOG_DIR] == "/var/log/pods/x" and a[meta.A_SANDBOX_UID] == "u1"


def test_pause_spec_host_namespaces(tmp_path: Path) -> None:
    spec = _pause(_pod(network=cri.NODE, pid=cri.NODE, ipc=cri.NODE), tmp_path)
    ns = _types(spec)
    assert not {"network", "uts", "pid", "ipc"} & set(ns)
    assert "hostname" not in spec
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/dev/shm"] == ["/dev/shm"]


def test_pause_spec_needs_a_command(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        specs.pause_spec(
            sandbox_id=SID, config=_pod(), image_config={}, namespaces=PINNED, hostname="",
            shm="", cgroup_driver="cgroupfs", rootfs=tmp_path,
        )  # fmt: skip


# A pod made before pinning: its containers join the pause's namespaces through /proc.
LEGACY = podns.of(
    meta.SandboxMeta(config=b"", name="x", created_at=1, netns="/run/netns/cni-x"), 4242
)


def _container(
    config: cri.ContainerConfig,
    pod: cri.PodSandboxConfig,
    tmp_path: Path,
    namespaces: podns.PodNamespaces = LEGACY,
) -> dict:
    return specs.container_spec(
        container_id=CID,
        config=config,
        sandbox_id=SID,
        sandbox_config=pod,
        image_config={"Entrypoint": ["/ep"], "Cmd": ["c1"], "Env": ["A=1"]},
        image_name="docker.io/library/busybox:1",
        namespaces=namespaces,
        target_pid=0,
        files="/root/sb",
        shm="/state/shm",
        hostname="web-host",
        cgroup_driver="cgroupfs",
        rootfs=tmp_path,
    )


def test_container_spec_of_an_older_pod_joins_the_pause(tmp_path: Path) -> None:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="c"),
        args=["x"],
        envs=[cri.KeyValue(key="B", value=b"2")],
        working_dir="/w",
    )
    spec = _container(config, _pod(), tmp_path)
    assert spec["process"]["args"] == ["/ep", "x"]
    assert spec["process"]["cwd"] == "/w"
    env = spec["process"]["env"]
    assert "A=1" in env and "B=2" in env and "HOSTNAME=web-host" in env
    ns = _types(spec)
    assert ns["network"] == "/run/netns/cni-x" and ns["ipc"] == "/proc/4242/ns/ipc"
    assert ns["uts"] == "/proc/4242/ns/uts" and ns["pid"] == "/proc/4242/ns/pid"
    binds = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert binds["/etc/hosts"] == "/root/sb/hosts" and binds["/dev/shm"] == "/state/shm"
    assert binds["/etc/resolv.conf"] == "/root/sb/resolv.conf"
    assert spec["linux"]["cgroupsPath"] == f"/kubepods/pod1/{CID}"
    assert spec["annotations"][meta.A_CONTAINER_NAME] == "c"
    assert spec["annotations"][meta.A_IMAGE_NAME] == "docker.io/library/busybox:1"


def test_container_spec_pid_modes(tmp_path: Path) -> None:
    namespaces = podns.PodNamespaces(pid="/proc/7/ns/pid")

    def pid(mode: int, target: int = 0) -> str | None:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="c"),
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(pid=mode, target_id="t")
                )
            ),
        )
        spec = specs.container_spec(
            container_id=CID, config=config, sandbox_id=SID, sandbox_config=_pod(),
            image_config={"Cmd": ["sh"]}, image_name="i", namespaces=namespaces,
            target_pid=target,
            files="", shm="", hostname="h", cgroup_driver="cgroupfs", rootfs=tmp_path,
        )  # fmt: skip
        return _types(spec).get("pid")

    assert pid(cri.POD) == "/proc/7/ns/pid"
    assert pid(cri.CONTAINER) == ""
    assert pid(cri.NODE) is None
    assert pid(cri.TARGET, 99) == "/proc/99/ns/pid"
    with pytest.raises(InvalidArgument):
        pid(cri.TARGET)
    # No pause (the pod's own pid option is not POD): CRI-O refuses a shared pid namespace.
    namespaces = PINNED
    with pytest.raises(InvalidArgument, match="pid namespace"):
        pid(cri.POD)
    assert pid(cri.CONTAINER) == ""


def test_container_spec_joins_the_pinned_namespaces(tmp_path: Path) -> None:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="c"),
        linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(
                namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)
            )
        ),
    )
    ns = _types(_container(config, _pod(pid=cri.CONTAINER), tmp_path, PINNED))
    assert ns["network"] == "/run/netns/cni-x" and ns["ipc"] == "/run/netns/ipc-x"
    assert ns["uts"] == "/run/netns/uts-x" and ns["pid"] == ""
    host = _pod(network=cri.NODE, ipc=cri.NODE, pid=cri.CONTAINER)
    ns = _types(_container(config, host, tmp_path, podns.PodNamespaces()))
    assert not {"network", "uts", "ipc"} & set(ns)


def test_sandbox_spec_without_a_pause() -> None:
    spec = specs.sandbox_spec(
        sandbox_id=SID, config=_pod(pid=cri.CONTAINER), namespaces=PINNED, hostname="web-host"
    )
    assert "process" not in spec and "root" not in spec and spec["hostname"] == "web-host"
    assert _types(spec) == {
        "network": "/run/netns/cni-x", "ipc": "/run/netns/ipc-x", "uts": "/run/netns/uts-x"
    }  # fmt: skip
    assert spec["linux"]["sysctl"] == {"kernel.shm_rmid_forced": "1"}
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod1"
    assert spec["annotations"][meta.A_CONTAINER_TYPE] == "sandbox"


def test_pod_namespaces_and_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    m = meta.SandboxMeta(
        config=b"", name="x", created_at=1, netns="/n/cni-1", ipcns="/n/ipc-1", utsns="/n/uts-1"
    )
    m.infra = False
    assert podns.of(m, 0) == PINNED.__class__(net="/n/cni-1", ipc="/n/ipc-1", uts="/n/uts-1")
    m.infra = True
    assert podns.of(m, 9).pid == "/proc/9/ns/pid" and podns.of(m, 9).ipc == "/n/ipc-1"
    # Without a pause, READY while the pinned namespaces are mounted (not after a reboot).
    m.infra, m.state = False, "ready"
    monkeypatch.setattr(netns, "is_pinned", lambda path: path == "/n/cni-1")
    assert podns.alive(m, None)
    monkeypatch.setattr(netns, "is_pinned", lambda path: False)
    assert not podns.alive(m, None)
    m.state = "stopped"
    assert not podns.alive(m, None)
    m.infra, m.state = True, "ready"
    assert not podns.alive(m, None)  # a pod with a pause is READY while its pause runs


def test_sysctl_namespaces_as_runc() -> None:
    assert netns.sysctl_kind("net.ipv4.ip_unprivileged_port_start") == netns.NET
    assert netns.sysctl_kind("net/ipv4/conf/eth0.100/forwarding") == netns.NET
    assert netns.sysctl_kind("kernel.shm_rmid_forced") == netns.IPC
    assert netns.sysctl_kind("fs.mqueue.msg_max") == netns.IPC
    assert netns.sysctl_kind("kernel.domainname") == netns.UTS
    assert netns.sysctl_kind("vm.swappiness") == ""
    netns.check_sysctls({"net.core.somaxconn": "1"}, [netns.NET, netns.IPC])
    with pytest.raises(InvalidArgument, match="host's net"):
        netns.check_sysctls({"net.core.somaxconn": "1"}, [netns.IPC])
    with pytest.raises(InvalidArgument, match="not in a separate"):
        netns.check_sysctls({"vm.swappiness": "1"}, [netns.NET, netns.IPC, netns.UTS])


def test_a_cri_mount_replaces_the_pods_file(tmp_path: Path) -> None:
    hosts = tmp_path / "my-hosts"
    hosts.write_text("x\n")
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="c"),
        mounts=[cri.Mount(container_path="/etc/hosts", host_path=str(hosts))],
    )
    spec = _container(config, _pod(), tmp_path)
    sources = [m["source"] for m in spec["mounts"] if m["destination"] == "/etc/hosts"]
    assert len(sources) == 1 and sources[0] != "/root/sb/hosts"


def test_command_line_rule() -> None:
    image = {"Entrypoint": ["/ep"], "Cmd": ["c1"]}

    def line(command: list[str], args: list[str]) -> list[str]:
        return specs.command_line(cri.ContainerConfig(command=command, args=args), image)

    assert line([], []) == ["/ep", "c1"]
    assert line([], ["a"]) == ["/ep", "a"]
    assert line(["/x"], []) == ["/x"]
    assert line(["/x"], ["a"]) == ["/x", "a"]


def test_cgroups_paths() -> None:
    assert specs.cgroups_path("cgroupfs", "", CID) == f"/k8s.io/{CID}"
    assert specs.cgroups_path("cgroupfs", "/kubepods", CID) == f"/kubepods/{CID}"
    assert specs.cgroups_path("systemd", "/kubepods.slice/kubepods-pod1.slice", CID) == (
        f"kubepods-pod1.slice:cri-containerd:{CID}"
    )


def test_resolv_conf() -> None:
    dns = sandbox_files.DNS(["10.10.10.10", "1.1.1.1"], ["a.example", "b.example"], ["ndots:8"])
    assert sandbox_files.resolv_conf(dns) == (
        b"search a.example b.example\nnameserver 10.10.10.10\nnameserver 1.1.1.1\noptions ndots:8\n"
    )
    assert sandbox_files.resolv_conf(sandbox_files.DNS()) == b""


def test_metadata_round_trip() -> None:
    m = meta.ContainerMeta(config=b"\x00\x01", name="n", sandbox_id=SID, created_at=5)
    m.exit_code, m.reason = 137, "OOMKilled"
    record = Container(id=CID, runtime=meta.RUNTIME, spec=None,
                       labels={meta.KIND_LABEL: "container"},
                       extensions=meta.container_extension(m))  # fmt: skip
    assert meta.kind(record) == "container"
    assert meta.container_meta(record) == m
    s = meta.SandboxMeta(config=b"cfg", name="x", created_at=1, additional_ips=["fd00::1"])
    record.extensions = meta.sandbox_extension(s)
    assert meta.sandbox_meta(record) == s


def test_names() -> None:
    names = Names()
    names.reserve("a_b", "id1")
    names.reserve("a_b", "id1")
    with pytest.raises(AlreadyExists, match="reserved for 'id1'"):
        names.reserve("a_b", "id2")
    names.release_by_key("id1")
    names.reserve("a_b", "id2")
