"""Containers through the `containers` handler group, in process, in real pods
(cri_pods_support.py): create/start/stop/remove, statuses with exit codes and reasons, the
log in kubelet's CRI format, ExecSync (output, exit code, timeout), the pod's hostname and
DNS seen inside, hostPort over 127.0.0.1, ReopenContainerLog, and nothing left behind.

containerd differences: on an ExecSync timeout containerd answers an error (DeadlineExceeded
here as there); CRI-O would answer exit code -1.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cri_pods_support import (
    Images,
    Net,
    Pods,
    leftovers,
    missing,
    pods,
)

from liner_api.runtime.v1 import api_pb2 as cri
from linerd.cri import meta
from linerd.cri.stats import Stats
from linerd.errdefs import AlreadyExists, DeadlineExceeded, FailedPrecondition, NotFound

pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(missing()), reason=missing())]

LOG_LINE = re.compile(rb"^(\S+) (stdout|stderr) (F|P) (.*)$")


def run(tmp_path: Path, net: Net, images: Images, body: Callable[[Pods], Awaitable[None]]) -> None:
    async def main() -> None:
        async with pods(tmp_path / "pods", net, images) as p:
            await body(p)

    asyncio.run(main())


def parse_log(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in path.read_bytes().splitlines():
        m = LOG_LINE.match(line)
        assert m is not None, f"not a CRI log line: {line!r}"
        out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
    return out


def test_container_lifecycle(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        dns = cri.DNSConfig(servers=["10.10.10.10"], searches=["example.com"], options=["ndots:8"])
        pod_config = p.sandbox_config("app", hostname="app-host", dns=dns)
        pod = await p.run_pod(pod_config)
        config = p.container_config(
            "main",
            ["-c", "echo out; echo err >&2; exec sleep 1000"],
            command=["/bin/sh"],
            envs=[cri.KeyValue(key="GREETING", value=b"hi there")],
        )
        cid = await p.create(pod, pod_config, config)
        status = await p.status(cid)
        assert status.state == cri.CONTAINER_CREATED and status.created_at > 0
        assert status.image.image == p.images.busybox and status.image_ref.startswith(
            p.images.busybox.rsplit(":", 1)[0] + "@sha256:"
        )
        log_path = Path(pod_config.log_directory) / "main/0.log"
        assert status.log_path == str(log_path)
        assert dict(status.labels) == {"c": "main"}

        assert not log_path.parent.exists()  # made by the start, as containerd makes it
        await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        assert log_path.parent.stat().st_mode & 0o777 == 0o755
        status = await p.status(cid)
        assert status.state == cri.CONTAINER_RUNNING and status.started_at >= status.created_at

        out = await p.exec(cid, "sh", "-c", "echo -n hello")
        assert (out.stdout, out.stderr, out.exit_code) == (b"hello", b"", 0)
        out = await p.exec(cid, "sh", "-c", "echo -n oops >&2; exit 3")
        assert (out.stdout, out.stderr, out.exit_code) == (b"", b"oops", 3)
        assert (await p.exec(cid, "hostname")).stdout == b"app-host\n"
        assert (await p.exec(cid, "sh", "-c", "echo $HOSTNAME $GREETING")).stdout == (
            b"app-host hi there\n"
        )
        assert (await p.exec(cid, "cat", "/etc/resolv.conf")).stdout == (
            b"search example.com\nnameserver 10.10.10.10\noptions ndots:8\n"
        )
        # pid POD: the pause is pid 1 in the container's view.
        ps = (await p.exec(cid, "cat", "/proc/1/cmdline")).stdout
        assert ps.split(b"\0")[0] == b"/bin/sleep"
        # A timeout kills the exec.
        with pytest.raises(DeadlineExceeded):
            await p.exec(cid, "sleep", "4321", timeout=1)
        assert b"4321" not in (await p.exec(cid, "ps")).stdout

        listed = await p.containers.list_containers(
            cri.ListContainersRequest(
                filter=cri.ContainerFilter(
                    pod_sandbox_id=pod,
                    state=cri.ContainerStateValue(state=cri.CONTAINER_RUNNING),
                    label_selector={"c": "main"},
                )
            )
        )
        assert [c.id for c in listed.containers] == [cid]

        await p.containers.stop_container(cri.StopContainerRequest(container_id=cid, timeout=10))
        status = await p.status(cid)
        assert status.state == cri.CONTAINER_EXITED
        assert status.exit_code == 143 and status.reason == "Error"  # SIGTERM
        assert status.finished_at >= status.started_at
        await p.containers.stop_container(cri.StopContainerRequest(container_id=cid, timeout=10))
        lines = parse_log(log_path)
        assert ("stdout", "F", b"out") in lines and ("stderr", "F", b"err") in lines

        await p.containers.remove_container(cri.RemoveContainerRequest(container_id=cid))
        await p.containers.remove_container(cri.RemoveContainerRequest(container_id=cid))
        with pytest.raises(NotFound):
            await p.status(cid)
        assert log_path.exists()  # kubelet's file: kubelet removes it
        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, cid]) == []

    run(tmp_path, net, cri_images, body)


def test_exit_codes_and_reasons(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        pod_config = p.sandbox_config()
        pod = await p.run_pod(pod_config)
        ok = await p.create(pod, pod_config, p.container_config("ok", ["-c", "printf 'a\\nb'"]))
        bad = await p.create(pod, pod_config, p.container_config("bad", ["-c", "exit 7"]))
        for cid in (ok, bad):
            await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        done = await p.wait_exited(ok)
        assert (done.state, done.exit_code, done.reason) == (cri.CONTAINER_EXITED, 0, "Completed")
        failed = await p.wait_exited(bad)
        assert (failed.exit_code, failed.reason) == (7, "Error")
        # A List answers an exit it finds at once (EXITED) and has it recorded beside: a
        # container removed meanwhile is not the List's failure, nor the recording's (kubelet
        # lists while pods come and go).
        gone = await p.create(pod, pod_config, p.container_config("gone", ["-c", "true"]))
        await p.containers.start_container(cri.StartContainerRequest(container_id=gone))
        with contextlib.suppress(Exception):
            await p.core.local.tasks.wait(meta.NAMESPACE, gone)  # its exit not yet recorded
        finalize = p.containers.finalize
        recorded = asyncio.Event()

        async def removed_meanwhile(record: Any, m: Any = None) -> Any:
            if record.id == gone:
                recorded.set()
                raise NotFound(f"container {gone} not found")
            return await finalize(record, m)

        p.containers.finalize = removed_meanwhile  # type: ignore[method-assign]
        try:
            listed = await p.containers.list_containers(cri.ListContainersRequest())
            await asyncio.wait_for(recorded.wait(), 60)  # a deadlock guard, not a timing
        finally:
            del p.containers.finalize
        states = {c.id: c.state for c in listed.containers}
        assert states[gone] == cri.CONTAINER_EXITED
        assert states[ok] == states[bad] == cri.CONTAINER_EXITED
        assert (await p.wait_exited(gone)).reason == "Completed"
        # The exit a List found is recorded without another look: the record says so.
        again = await p.create(pod, pod_config, p.container_config("again", ["-c", "exit 3"]))
        await p.containers.start_container(cri.StartContainerRequest(container_id=again))
        with contextlib.suppress(Exception):
            await p.core.local.tasks.wait(meta.NAMESPACE, again)
        listed = await p.containers.list_containers(cri.ListContainersRequest())
        assert {c.id: c.state for c in listed.containers}[again] == cri.CONTAINER_EXITED
        while p.containers._background:  # the recording the List started
            await asyncio.gather(*p.containers._background, return_exceptions=True)
        record = await p.core.local.containers.get(meta.NAMESPACE, again)
        recorded_meta = meta.container_meta(record)
        assert (recorded_meta.state, recorded_meta.exit_code) == ("exited", 3)
        assert p.containers.task_state(again) is None  # the task deleted
        # A List does not wait for a Stop or Remove at work on an exited container (it would
        # hold kubelet's relist as long as a stop takes): it answers what the task says.
        busy = await p.create(pod, pod_config, p.container_config("busy", ["-c", "true"]))
        await p.containers.start_container(cri.StartContainerRequest(container_id=busy))
        with contextlib.suppress(Exception):
            await p.core.local.tasks.wait(meta.NAMESPACE, busy)
        async with p.containers._lock(busy):  # as StopContainer holds it
            listed = await asyncio.wait_for(
                p.containers.list_containers(cri.ListContainersRequest()), 60
            )  # a deadlock guard, not a timing
        [seen] = [c for c in listed.containers if c.id == busy]
        assert seen.state == cri.CONTAINER_EXITED
        assert (await p.wait_exited(busy)).reason == "Completed"
        # A last line without a newline is a partial one.
        log = parse_log(Path(pod_config.log_directory) / "ok/0.log")
        assert log == [("stdout", "F", b"a"), ("stdout", "P", b"b")]
        # A long line comes in parts: P... then F.
        long = await p.create(
            pod, pod_config, p.container_config("long", ["-c", "printf '%20000s\\n' x"])
        )
        await p.containers.start_container(cri.StartContainerRequest(container_id=long))
        assert (await p.wait_exited(long)).exit_code == 0
        parts = parse_log(Path(pod_config.log_directory) / "long/0.log")
        assert [tag for _, tag, _ in parts][-1] == "F" and {t for _, t, _ in parts[:-1]} == {"P"}
        assert len(parts) > 1 and b"".join(text for _, _, text in parts) == b" " * 19999 + b"x"
        # A start of an exited container is refused; so is an exec.
        with pytest.raises(FailedPrecondition):
            await p.containers.start_container(cri.StartContainerRequest(container_id=ok))
        with pytest.raises(FailedPrecondition):
            await p.exec(ok, "true")
        # An unknown image.
        with pytest.raises(NotFound):
            await p.create(
                pod,
                pod_config,
                cri.ContainerConfig(
                    metadata=cri.ContainerMetadata(name="x"),
                    image=cri.ImageSpec(image="127.0.0.1:1/none:1"),
                ),
            )
        # The same container name (and attempt) again in the pod is refused.
        with pytest.raises(AlreadyExists, match="reserved"):
            await p.create(pod, pod_config, p.container_config("ok", ["-c", "true"]))
        # No container in a stopped pod; unknown ids are NotFound, removals idempotent.
        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
        with pytest.raises(FailedPrecondition, match="not ready"):
            await p.create(pod, pod_config, p.container_config("late", ["-c", "true"]))
        with pytest.raises(NotFound):
            await p.create("f" * 64, pod_config, p.container_config("lost", ["-c", "true"]))
        with pytest.raises(NotFound):
            await p.containers.stop_container(cri.StopContainerRequest(container_id="f" * 64))
        await p.containers.remove_container(cri.RemoveContainerRequest(container_id="f" * 64))
        # Removing the pod removes its containers.
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        for cid in (ok, bad, gone, busy):
            with pytest.raises(NotFound):
                await p.status(cid)
        assert leftovers(p, [pod, ok, bad, gone, busy]) == []
        # No active snapshot is left (failed creates included), no record either.
        snaps = await p.core.local.snapshots.list(meta.NAMESPACE, "")
        assert [s.name for s in snaps if s.kind.name == "ACTIVE"] == []
        assert await p.core.local.containers.list(meta.NAMESPACE) == []

    run(tmp_path, net, cri_images, body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_host_port_and_log_reopen(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        host_port = _free_port()
        pod_config = p.sandbox_config(
            port_mappings=[cri.PortMapping(container_port=80, host_port=host_port)]
        )
        pod = await p.run_pod(pod_config)
        config = p.container_config(
            "web",
            [
                "-c",
                "mkdir -p /www && echo served > /www/index.html && "
                "httpd -p 80 -h /www && exec sleep 100000",
            ],
        )
        cid = await p.create(pod, pod_config, config)
        await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        ip = (await p.sandbox_status(pod)).network.ip
        # httpd daemonizes once it listens: until then the probe sees a refused connection.
        out = await p.exec(
            cid,
            "sh",
            "-c",
            "for i in $(seq 100); do wget -q -O- http://127.0.0.1/index.html "
            "&& exit 0; sleep 0.1; done; exit 1",
            timeout=30,
        )
        assert out.exit_code == 0 and out.stdout == b"served\n"
        assert b"served" in await asyncio.to_thread(_get, ip, 80)
        assert b"served" in await asyncio.to_thread(_get, "127.0.0.1", host_port)

        # ReopenContainerLog: kubelet renames the file, then asks for a new one.
        log_path = Path(pod_config.log_directory) / "web/0.log"
        rotated = log_path.with_name("0.log.1")
        log_path.rename(rotated)
        await p.containers.reopen_container_log(cri.ReopenContainerLogRequest(container_id=cid))
        assert log_path.exists()

        await p.sandboxes.stop_pod_sandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod))
        status = await p.status(cid)
        assert status.state == cri.CONTAINER_EXITED and status.exit_code == 137
        with pytest.raises(FailedPrecondition):
            await p.containers.reopen_container_log(cri.ReopenContainerLogRequest(container_id=cid))
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, cid]) == []
        assert meta.NAMESPACE  # the records are gone with the pod
        assert not await p.core.local.containers.list(meta.NAMESPACE)

    run(tmp_path, net, cri_images, body)


def test_oom_killed(tmp_path: Path, net: Net, cri_images: Images) -> None:
    async def body(p: Pods) -> None:
        pod_config = p.sandbox_config()
        pod = await p.run_pod(pod_config)
        limit = 15 << 20
        config = p.container_config(
            "hog",
            ["-c", "dd if=/dev/zero of=/dev/null bs=64M count=1"],
            linux=cri.LinuxContainerConfig(
                resources=cri.LinuxContainerResources(
                    memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit
                )
            ),
        )
        cid = await p.create(pod, pod_config, config)
        await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        status = await p.wait_exited(cid)
        assert (status.state, status.exit_code, status.reason) == (
            cri.CONTAINER_EXITED,
            137,
            "OOMKilled",
        )
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, cid]) == []

    run(tmp_path, net, cri_images, body)


def test_stop_escalates_namespaces_and_resources(
    tmp_path: Path, net: Net, cri_images: Images
) -> None:
    async def body(p: Pods) -> None:
        pod_config = p.sandbox_config()
        pod_config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
        pod = await p.run_pod(pod_config)
        # A shell that ignores SIGTERM: StopContainer's timeout ends in SIGKILL.
        stubborn = p.container_config(
            "stubborn", ["-c", "trap '' TERM; while true; do sleep 1; done"]
        )
        own_pid = p.container_config(
            "own",
            ["-c", "exec sleep 1000"],
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)
                )
            ),
        )
        tty = p.container_config("tty", ["-c", "echo on a tty; exec sleep 1000"], tty=True)
        ids = [await p.create(pod, pod_config, c) for c in (stubborn, own_pid, tty)]
        for cid in ids:
            await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
        stub, own, tid = ids
        # The pod's sysctl is seen through the shared IPC namespace.
        out = await p.exec(stub, "cat", "/proc/sys/kernel/shm_rmid_forced")
        assert out.stdout == b"1\n"
        # ExecSync keeps 16 MiB of each stream and drops the rest.
        big = await p.exec(stub, "dd", "if=/dev/zero", "bs=1048576", "count=17")
        assert big.exit_code == 0 and len(big.stdout) == 16 << 20
        # A backgrounded child holding stdout open does not hold the answer (bounded drain).
        bg = await p.exec(stub, "sh", "-c", "sleep 30 & echo -n parent")
        assert (bg.stdout, bg.exit_code) == (b"parent", 0)
        # pid CONTAINER: the container's own process is pid 1.
        assert (await p.exec(own, "cat", "/proc/1/cmdline")).stdout.split(b"\0")[0] == b"sleep"
        # A TTY container's output reaches the log as stdout lines.
        await p.exec(tid, "true")
        log = parse_log(Path(pod_config.log_directory) / "tty/0.log")
        assert ("stdout", "F", b"on a tty\r") in log or ("stdout", "F", b"on a tty") in log

        # UpdateContainerResources reaches the cgroup.
        await p.containers.update_container_resources(
            cri.UpdateContainerResourcesRequest(
                container_id=own,
                linux=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20),
            )
        )
        pid = p.core.local.tasks.state(meta.NAMESPACE, own).pid
        cg = Path(f"/proc/{pid}/cgroup").read_text()
        mem = next(line.split(":", 2)[2] for line in cg.splitlines() if ":memory:" in line)
        limit = Path(f"/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes").read_text()
        assert int(limit) == 64 << 20
        status = await p.status(own)
        assert status.resources.linux.memory_limit_in_bytes == 64 << 20

        # Stats of the running containers and of the pod.
        stats = Stats(p.sandboxes, p.containers)
        listed = await stats.list_container_stats(cri.ListContainerStatsRequest())
        by_id = {s.attributes.id: s for s in listed.stats}
        assert set(by_id) == set(ids)
        one = by_id[own]
        assert one.cpu.timestamp > 0 and one.memory.timestamp > 0
        assert one.memory.working_set_bytes.value > 0 and one.attributes.metadata.name == "own"
        assert one.writable_layer.used_bytes.value >= 0
        again = (await stats.container_stats(cri.ContainerStatsRequest(container_id=own))).stats
        assert again.cpu.HasField("usage_nano_cores")
        pod_stats = await stats.pod_sandbox_stats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod))
        assert len(pod_stats.stats.linux.containers) == 3
        assert pod_stats.stats.linux.process.process_count.value >= 1

        await p.containers.stop_container(cri.StopContainerRequest(container_id=stub, timeout=1))
        status = await p.status(stub)
        assert (status.state, status.exit_code) == (cri.CONTAINER_EXITED, 137)
        listed = await p.containers.list_containers(
            cri.ListContainersRequest(
                filter=cri.ContainerFilter(
                    state=cri.ContainerStateValue(state=cri.CONTAINER_EXITED)
                )
            )
        )
        assert [c.id for c in listed.containers] == [stub]
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, *ids]) == []

    run(tmp_path, net, cri_images, body)


def test_stdin_container_waits_for_input(tmp_path: Path, net: Net, cri_images: Images) -> None:
    """stdin (and stdin_once): conmon holds a pipe for attach, so `cat` waits on it instead of
    reading EOF from /dev/null."""

    async def body(p: Pods) -> None:
        pod_config = p.sandbox_config()
        pod = await p.run_pod(pod_config)
        ids = []
        for name, once in (("keep", False), ("once", True)):
            config = p.container_config(name, ["-c", "cat; echo stdin closed"])
            config.stdin, config.stdin_once = True, once
            cid = await p.create(pod, pod_config, config)
            await p.containers.start_container(cri.StartContainerRequest(container_id=cid))
            ids.append(cid)
        # Both `cat`s wait (the pod's pid namespace is shared: each container sees both).
        out = await p.exec(ids[0], "sh", "-c", "ps -o comm | grep -c '^cat$'")
        assert out.stdout == b"2\n"
        for cid in ids:
            assert (await p.status(cid)).state == cri.CONTAINER_RUNNING
        await p.sandboxes.remove_pod_sandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod))
        assert leftovers(p, [pod, *ids]) == []

    run(tmp_path, net, cri_images, body)
