"""The execution layer against real runc + conmon (root): lifecycle, stdio, exec, failures,
restart recovery. Every test checks that it leaves no mount, monitor or runtime state behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from linerd.core.types import Mount
from linerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from linerd.runtime import RUNC, RuntimeConfig, TaskRuntime, TaskStatus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("conmon") or not os.path.exists(RUNC.path),
        reason="needs root, conmon and runc",
    ),
]

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs: /bin/busybox plus an applet symlink per command."""
    root = tmp_path_factory.mktemp("rootfs") / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


@pytest.fixture(scope="session")
def spec_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([RUNC.path, "spec", "--bundle", str(d)], check=True)
    spec = json.loads((d / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["env"] = ["PATH=/bin", "HOME=/root"]
    spec["root"] = {"path": "rootfs", "readonly": False}
    return spec


class Env:
    """One test's runtime manager, namespace and helpers."""

    def __init__(self, tmp: Path, rootfs: Path, template: dict[str, Any]) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.rootfs = rootfs
        self.template = template
        self.ns = "t" + uuid.uuid4().hex[:8]
        self.rt = TaskRuntime(self.state)

    def spec(self, id: str, *args: str, terminal: bool = False) -> dict[str, Any]:
        spec = json.loads(json.dumps(self.template))
        spec["process"]["args"] = list(args)
        spec["process"]["terminal"] = terminal
        spec["hostname"] = id
        spec["linux"]["cgroupsPath"] = f"/{self.ns}/{id}"
        return spec

    @property
    def mounts(self) -> list[Mount]:
        return [Mount("bind", str(self.rootfs), ("rbind", "rw"))]

    async def create(self, id: str, *args: str, **kw: Any) -> int:
        return await self.rt.create(self.ns, id, self.spec(id, *args), self.mounts, **kw)

    async def run(self, id: str, *args: str, **kw: Any) -> int:
        """create + start + wait + delete; returns the exit status."""
        await self.create(id, *args, **kw)
        await self.rt.start(self.ns, id)
        ex = await self.rt.wait(self.ns, id)
        await self.rt.delete(self.ns, id)
        return ex.exit_status


def _leftovers(state: Path) -> list[str]:
    found: list[str] = []
    prefix = str(state)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(prefix):
            found.append(f"mount {line.split()[4]}")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"conmon" in cmd.split(b"\0")[0] and prefix.encode() in cmd:
            found.append(f"conmon {pid}")
    for root in state.glob("runtime/*/*"):
        out = subprocess.run(
            [RUNC.path, "--root", str(root), "list", "-q"], capture_output=True, text=True
        ).stdout.split()
        found += [f"runtime container {c} in {root}" for c in out]
    found += [f"bundle {b}" for b in state.glob("tasks/*/*")]
    found += [f"socket link {s}" for s in state.glob("s/*")]
    return found


def _force_clean(state: Path) -> None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"conmon" in cmd.split(b"\0")[0] and str(state).encode() in cmd:
                os.kill(int(pid), signal.SIGKILL)
    for root in state.glob("runtime/*/*"):
        for c in subprocess.run(
            [RUNC.path, "--root", str(root), "list", "-q"], capture_output=True, text=True
        ).stdout.split():
            subprocess.run([RUNC.path, "--root", str(root), "delete", "--force", c])
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        if line.split()[4].startswith(str(state)):
            subprocess.run(["umount", "-l", line.split()[4]])


@pytest.fixture
def env(tmp_path: Path, rootfs: Path, spec_template: dict[str, Any]) -> Iterator[Env]:
    e = Env(tmp_path, rootfs, spec_template)
    yield e
    left = _leftovers(e.state)
    if left:
        _force_clean(e.state)
    assert not left, f"left behind: {left}"


class Fifos:
    """Client-side FIFOs the way ctr makes them: read ends opened (in threads) before Create."""

    def __init__(self, d: Path, name: str, stdin: bool = False) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.stdout = str(d / f"{name}-stdout")
        self.stderr = str(d / f"{name}-stderr")
        self.stdin = str(d / f"{name}-stdin") if stdin else ""
        self.out: dict[str, bytes] = {}
        self._threads = []
        for p in (self.stdout, self.stderr):
            os.mkfifo(p, 0o700)
            t = threading.Thread(target=self._read, args=(p,), daemon=True)
            t.start()
            self._threads.append(t)
        self._writer: int | None = None
        if stdin:
            os.mkfifo(self.stdin, 0o700)
            self._wt = threading.Thread(target=self._open_writer, daemon=True)
            self._wt.start()

    def _read(self, p: str) -> None:
        with open(p, "rb") as f:
            self.out[p] = f.read()

    def _open_writer(self) -> None:
        self._writer = os.open(self.stdin, os.O_WRONLY)

    def write(self, data: bytes) -> None:
        self._wt.join(5)
        assert self._writer is not None
        os.write(self._writer, data)

    def close_writer(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    @property
    def kw(self) -> dict[str, str]:
        return {"stdin": self.stdin, "stdout": self.stdout, "stderr": self.stderr}

    def output(self, timeout: float = 10) -> tuple[bytes, bytes]:
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), "stdio FIFO never reached EOF"
        return self.out[self.stdout], self.out[self.stderr]


# ---------------------------------------------------------------------------- lifecycle


def test_exit_code_and_output_through_fifos(env: Env) -> None:
    f = Fifos(env.tmp / "io", "c1")

    async def body() -> None:
        pid = await env.create("c1", "sh", "-c", "echo out; echo err >&2; exit 3", **f.kw)
        assert pid > 0
        st = env.rt.state(env.ns, "c1")
        assert (st.status, st.pid) == (TaskStatus.CREATED, pid)
        assert await env.rt.start(env.ns, "c1") == pid
        ex = await env.rt.wait(env.ns, "c1")
        assert ex.exit_status == 3 and ex.exited_at is not None
        # Output is complete when wait returns (passthrough: the container wrote it itself).
        assert f.output() == (b"out\n", b"err\n")
        st = env.rt.state(env.ns, "c1")
        assert (st.status, st.exit_status) == (TaskStatus.STOPPED, 3)
        with pytest.raises(NotFound, match="process already finished"):
            await env.rt.kill(env.ns, "c1", signal.SIGTERM)
        d = await env.rt.delete(env.ns, "c1")
        assert (d.pid, d.exit_status, d.exited_at) == (pid, 3, ex.exited_at)
        with pytest.raises(NotFound, match="task c1 not found"):
            env.rt.state(env.ns, "c1")
        with pytest.raises(NotFound):
            await env.rt.wait(env.ns, "c1")
        assert await env.run("c2", "true") == 0

    run(body())


def test_sigkill_gives_137_and_wait_before_start(env: Env) -> None:
    exits: list[tuple[Any, ...]] = []
    env.rt.on_exit(lambda *a: exits.append(a))

    async def body() -> None:
        pid = await env.create("k", "sleep", "30")
        waiter = asyncio.ensure_future(env.rt.wait(env.ns, "k"))  # before start
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await env.rt.start(env.ns, "k")
        assert env.rt.state(env.ns, "k").status == TaskStatus.RUNNING
        await env.rt.kill(env.ns, "k", signal.SIGKILL)
        ex = await waiter
        assert ex.exit_status == 137
        t0 = time.monotonic()
        assert (await env.rt.wait(env.ns, "k")).exit_status == 137
        assert time.monotonic() - t0 < 0.05
        assert exits == [(env.ns, "k", "", pid, 137, ex.exited_at)]
        with pytest.raises(NotFound, match="process already finished"):
            await env.rt.kill(env.ns, "k", signal.SIGKILL)
        await env.rt.delete(env.ns, "k")

    run(body())


def test_kill_with_signal_the_process_handles(env: Env) -> None:
    async def body() -> None:
        script = "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"
        f = Fifos(env.tmp / "io", "s")
        await env.create("s", "sh", "-c", script, **f.kw)
        await env.rt.start(env.ns, "s")
        await asyncio.sleep(0.3)  # let the trap be installed
        await env.rt.kill(env.ns, "s", signal.SIGTERM)
        assert (await env.rt.wait(env.ns, "s")).exit_status == 42
        assert f.output()[0] == b"ready\n"
        await env.rt.delete(env.ns, "s")

    run(body())


def test_stdin_through_a_fifo(env: Env) -> None:
    f = Fifos(env.tmp / "io", "cat", stdin=True)

    async def body() -> None:
        await env.create("cat", "cat", **f.kw)
        await env.rt.start(env.ns, "cat")
        f.write(b"hello\nworld\n")
        f.close_writer()
        # The daemon holds a stdin writer (containerd's model): no EOF before CloseIO.
        await asyncio.sleep(0.2)
        assert env.rt.state(env.ns, "cat").status == TaskStatus.RUNNING
        await env.rt.close_stdin(env.ns, "cat")
        assert (await env.rt.wait(env.ns, "cat")).exit_status == 0
        assert f.output() == (b"hello\nworld\n", b"")
        await env.rt.delete(env.ns, "cat")

    run(body())


def test_detached_output_survives_client_going_away(env: Env) -> None:
    """The client's read end closes (ctr run -d exits): the container keeps running and is not
    killed by SIGPIPE, because the daemon holds a read end of the FIFO."""
    d = env.tmp / "io"
    d.mkdir()
    out = d / "d-stdout"
    os.mkfifo(out)
    rfd = os.open(out, os.O_RDONLY | os.O_NONBLOCK)

    async def body() -> None:
        # The writer is a child of PID 1 (PID 1 itself ignores SIGPIPE): 141 if it got one.
        inner = "i=0; while [ $i -lt 20 ]; do echo line $i; i=$((i+1)); sleep 0.02; done; exit 9"
        await env.create("d", "sh", "-c", 'sh -c "$1"; exit $?', "sh", inner, stdout=str(out))
        os.close(rfd)  # the client is gone before the task even starts writing
        await env.rt.start(env.ns, "d")
        assert (await env.rt.wait(env.ns, "d")).exit_status == 9
        await env.rt.delete(env.ns, "d")

    run(body())


def test_pause_resume_pids_metrics_update(env: Env) -> None:
    async def body() -> None:
        pid = await env.create("p", "sh", "-c", "i=0; while :; do i=$((i+1)); done")
        await env.rt.start(env.ns, "p")
        assert [p.pid for p in await env.rt.pids(env.ns, "p")] == [pid]
        await env.rt.pause(env.ns, "p")
        assert env.rt.state(env.ns, "p").status == TaskStatus.PAUSED
        with pytest.raises(FailedPrecondition, match="cannot delete a running process"):
            await env.rt.delete(env.ns, "p")
        await env.rt.resume(env.ns, "p")
        assert env.rt.state(env.ns, "p").status == TaskStatus.RUNNING
        await asyncio.sleep(0.1)
        m = await env.rt.metrics(env.ns, "p")
        assert m.cpu_usage_ns > 0 and m.memory_usage > 0 and m.pids_current >= 1
        await env.rt.update(env.ns, "p", {"memory": {"limit": 64 << 20}, "pids": {"limit": 50}})
        m = await env.rt.metrics(env.ns, "p")
        assert (m.memory_limit, m.pids_limit) == (64 << 20, 50)
        with pytest.raises(FailedPrecondition, match="cannot delete a running process"):
            await env.rt.delete(env.ns, "p")
        await env.rt.kill(env.ns, "p", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "p")).exit_status == 137
        with pytest.raises(NotFound):
            await env.rt.metrics(env.ns, "p")
        await env.rt.delete(env.ns, "p")

    run(body())


def test_delete_created_task_and_duplicate_create(env: Env) -> None:
    async def body() -> None:
        await env.create("c", "sleep", "30")
        with pytest.raises(AlreadyExists):
            await env.create("c", "sleep", "30")
        d = await env.rt.delete(env.ns, "c")  # never started: killed by the runtime
        assert d.exit_status == 137

    run(body())


def test_exec_exit_code_output_and_kill(env: Env) -> None:
    exits: list[tuple[Any, ...]] = []
    env.rt.on_exit(lambda *a: exits.append(a[:3] + a[4:5]))

    async def body() -> None:
        await env.create("x", "sleep", "30")
        await env.rt.start(env.ns, "x")
        f = Fifos(env.tmp / "io", "e1", stdin=True)
        spec = env.spec("x", "sh", "-c", "read l; echo got:$l; echo e-err >&2; exit 5")["process"]
        await env.rt.exec(env.ns, "x", "e1", spec, **f.kw)
        with pytest.raises(AlreadyExists):
            await env.rt.exec(env.ns, "x", "e1", spec)
        assert env.rt.state(env.ns, "x", "e1").status == TaskStatus.CREATED
        epid = await env.rt.start_exec(env.ns, "x", "e1")
        assert epid > 0
        f.write(b"ping\n")
        assert (await env.rt.wait(env.ns, "x", "e1")).exit_status == 5
        assert f.output() == (b"got:ping\n", b"e-err\n")
        assert env.rt.state(env.ns, "x").status == TaskStatus.RUNNING
        d = await env.rt.delete_exec(env.ns, "x", "e1")
        assert (d.pid, d.exit_status) == (epid, 5)
        with pytest.raises(NotFound):
            env.rt.state(env.ns, "x", "e1")

        spec2 = env.spec("x", "sleep", "30")["process"]
        await env.rt.exec(env.ns, "x", "e2", spec2)
        epid2 = await env.rt.start_exec(env.ns, "x", "e2")
        pids = {p.pid: p.exec_id for p in await env.rt.pids(env.ns, "x")}
        assert pids[epid2] == "e2" and len(pids) == 2
        with pytest.raises(FailedPrecondition):
            await env.rt.delete_exec(env.ns, "x", "e2")
        await env.rt.kill_exec(env.ns, "x", "e2", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "x", "e2")).exit_status == 137
        await env.rt.delete_exec(env.ns, "x", "e2")

        bad = env.spec("x", "nosuch")["process"]
        await env.rt.exec(env.ns, "x", "e3", bad)
        with pytest.raises(FailedPrecondition, match="nosuch"):
            await env.rt.start_exec(env.ns, "x", "e3")
        with pytest.raises(NotFound):
            env.rt.state(env.ns, "x", "e3")

        await env.rt.kill(env.ns, "x", signal.SIGKILL)
        await env.rt.wait(env.ns, "x")
        await env.rt.delete(env.ns, "x")
        assert (env.ns, "x", "e1", 5) in exits and (env.ns, "x", "e2", 137) in exits

    run(body())


# ---------------------------------------------------------------------------- failures


def _failure_cases(env: Env) -> dict[str, Callable[[], Awaitable[Any]]]:
    ns, rt = env.ns, env.rt
    good = env.spec("f", "true")
    return {
        "missing runtime binary": lambda: rt.create(
            ns, "f", good, env.mounts, runtime=RuntimeConfig("/nonexistent/runc")
        ),
        "command not found": lambda: rt.create(ns, "f", env.spec("f", "nosuch"), env.mounts),
        "spec without args": lambda: rt.create(ns, "f", {"process": {}}, env.mounts),
        "spec the runtime rejects": lambda: rt.create(
            ns,
            "f",
            {**good, "linux": {**good["linux"], "namespaces": [{"type": "bogus"}]}},
            env.mounts,
        ),
        "rootfs mount fails": lambda: rt.create(
            ns, "f", good, [Mount("bind", "/nonexistent/rootfs", ("rbind", "rw"))]
        ),
        "stdout FIFO nobody reads": lambda: rt.create(
            ns, "f", good, env.mounts, stdout=str(_fifo(env.tmp / "lonely"))
        ),
    }


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


@pytest.mark.parametrize(
    ("case", "exc", "message"),
    [
        ("missing runtime binary", FailedPrecondition, "/nonexistent/runc"),
        ("command not found", FailedPrecondition, 'exec: "nosuch": executable file not found'),
        ("spec without args", InvalidArgument, "process.args"),
        ("spec the runtime rejects", FailedPrecondition, "bogus"),
        ("rootfs mount fails", FailedPrecondition, "/nonexistent/rootfs"),
        ("stdout FIFO nobody reads", Exception, "timed out waiting for a reader"),
    ],
)
def test_create_failures_leave_nothing_behind(
    env: Env, case: str, exc: type[Exception], message: str
) -> None:
    env.rt.stdio_timeout = 0.3

    async def body() -> None:
        with pytest.raises(exc, match=message.replace("$", r"\$")) as info:
            await _failure_cases(env)[case]()
        assert not _leftovers(env.state), str(info.value)
        # The id is free again.
        assert await env.run("f", "true") == 0

    run(body())


# ---------------------------------------------------------------------------- restart


def test_restart_recovery(env: Env) -> None:
    ids = ("r1", "r2", "short")

    async def first() -> None:
        await env.create("r1", "sleep", "30")
        await env.create("r2", "sleep", "30")
        await env.create("short", "sh", "-c", "sleep 1; exit 7")
        for i in ids:
            await env.rt.start(env.ns, i)
        await env.rt.close()  # the daemon goes away; containers and monitors stay

    async def second() -> None:
        rt = env.rt = TaskRuntime(env.state)
        exits: list[tuple[Any, ...]] = []
        rt.on_exit(lambda *a: exits.append(a))
        states = {s.container_id: s for s in await rt.recover_all()}
        assert set(states) == set(ids)
        assert states["r1"].status == states["r2"].status == TaskStatus.RUNNING
        assert (states["short"].status, states["short"].exit_status) == (TaskStatus.STOPPED, 7)
        assert not states["short"].monitor_lost
        assert (await rt.wait(env.ns, "short")).exit_status == 7
        for i in ("r1", "r2"):
            await rt.kill(env.ns, i, signal.SIGKILL)
            assert (await rt.wait(env.ns, i)).exit_status == 137
        assert sorted(e[1] for e in exits) == ["r1", "r2"]
        for i in ids:
            await rt.delete(env.ns, i)

    run(first())
    time.sleep(1.5)  # "short" exits while no daemon runs
    run(second())


def test_restart_with_lost_monitor_and_other_state_dir(env: Env, tmp_path: Path) -> None:
    async def first() -> None:
        await env.create("m", "sleep", "30")
        await env.rt.start(env.ns, "m")
        await env.rt.close()

    run(first())
    conmon_pid = int((env.state / "tasks" / env.ns / "m" / "conmon.pid").read_text())
    os.kill(conmon_pid, signal.SIGKILL)
    time.sleep(0.1)

    async def second() -> None:
        other = TaskRuntime(tmp_path / "other-state")
        assert await other.recover_all() == []
        await other.close()
        rt = env.rt = TaskRuntime(env.state)
        [st] = await rt.recover_all()
        assert (st.status, st.exit_status, st.monitor_lost) == (TaskStatus.STOPPED, 255, True)
        await rt.delete(env.ns, "m")  # forces the orphaned container down

    run(second())


def test_monitor_killed_while_running(env: Env) -> None:
    async def body() -> None:
        await env.create("ml", "sleep", "30")
        await env.rt.start(env.ns, "ml")
        os.kill(int((env.state / "tasks" / env.ns / "ml" / "conmon.pid").read_text()), 9)
        ex = await env.rt.wait(env.ns, "ml")
        st = env.rt.state(env.ns, "ml")
        assert (ex.exit_status, st.status, st.monitor_lost) == (255, TaskStatus.STOPPED, True)
        assert [s.container_id for s in env.rt.list_tasks(env.ns)] == ["ml"]
        await env.rt.delete(env.ns, "ml")

    run(body())


# ---------------------------------------------------------------------------- latency


def test_latency_create_start_wait_delete(env: Env) -> None:
    async def body() -> list[float]:
        times = []
        for i in range(10):
            t0 = time.perf_counter()
            assert await env.run(f"l{i}", "true") == 0
            times.append((time.perf_counter() - t0) * 1000)
        return times

    times = run(body())
    med = statistics.median(times)
    print(f"\ncreate→start→wait→delete median {med:.1f} ms over 10 (min {min(times):.1f})")
    assert med < 2000


# ---------------------------------------------------------------------------- tty


def test_tty_task_relays_pty_through_fifos(env: Env) -> None:
    f = Fifos(env.tmp / "io", "t", stdin=True)

    async def body() -> None:
        spec = env.spec("t", "sh", "-c", "stty size; read l; echo got:$l; exit 4", terminal=True)
        await env.rt.create(
            env.ns, "t", spec, env.mounts, stdin=f.stdin, stdout=f.stdout, terminal=True
        )
        await env.rt.resize_pty(env.ns, "t", width=132, height=40)
        await env.rt.start(env.ns, "t")
        f.write(b"ping\n")
        assert (await env.rt.wait(env.ns, "t")).exit_status == 4
        os.close(os.open(f.stderr, os.O_WRONLY))  # stderr is unused with a TTY
        out, _ = f.output()
        assert b"40 132\r\n" in out and b"got:ping\r\n" in out, out
        await env.rt.delete(env.ns, "t")

    run(body())


def test_tty_exec(env: Env) -> None:
    async def body() -> None:
        await env.create("tx", "sleep", "30")
        await env.rt.start(env.ns, "tx")
        f = Fifos(env.tmp / "io", "te", stdin=True)
        spec = env.spec("tx", "sh", "-c", "read l; echo tty:$l; exit 6")["process"]
        await env.rt.exec(env.ns, "tx", "te", spec, stdin=f.stdin, stdout=f.stdout, terminal=True)
        await env.rt.start_exec(env.ns, "tx", "te")
        await env.rt.resize_pty(env.ns, "tx", 80, 24, exec_id="te")
        f.write(b"hi\n")
        assert (await env.rt.wait(env.ns, "tx", "te")).exit_status == 6
        os.close(os.open(f.stderr, os.O_WRONLY))
        assert b"tty:hi\r\n" in f.output()[0]
        await env.rt.delete_exec(env.ns, "tx", "te")
        await env.rt.kill(env.ns, "tx", signal.SIGKILL)
        await env.rt.wait(env.ns, "tx")
        await env.rt.delete(env.ns, "tx")

    run(body())


def test_tty_exec_output_written_at_once_is_never_lost(env: Env) -> None:
    """The relay is on conmon's attach socket (--exec-attach) before the process runs."""

    async def body() -> None:
        await env.create("tq", "sleep", "30")
        await env.rt.start(env.ns, "tq")
        spec = env.spec("tq", "sh", "-c", "echo early; exit 5")["process"]
        for i in range(10):
            f = Fifos(env.tmp / "io", f"q{i}")
            await env.rt.exec(env.ns, "tq", f"q{i}", spec, stdout=f.stdout, terminal=True)
            await env.rt.start_exec(env.ns, "tq", f"q{i}")
            assert (await env.rt.wait(env.ns, "tq", f"q{i}")).exit_status == 5
            os.close(os.open(f.stderr, os.O_WRONLY))  # stderr is unused with a TTY
            assert f.output()[0] == b"early\r\n", (i, f.output())
            await env.rt.delete_exec(env.ns, "tq", f"q{i}")
        await env.rt.kill(env.ns, "tq", signal.SIGKILL)
        await env.rt.wait(env.ns, "tq")
        await env.rt.delete(env.ns, "tq")

    run(body())


def test_tty_exec_stdin_open_from_exec_and_size_before_start(env: Env) -> None:
    """A resize before start_exec is the size the process sees first; the stdin FIFO has a
    reader from Exec on, so the client can open and write it before Start."""

    async def body() -> None:
        await env.create("tr", "sleep", "30")
        await env.rt.start(env.ns, "tr")
        for i, (w, h) in enumerate([(132, 40), (77, 19), (200, 50)]):
            f = Fifos(env.tmp / "io", f"r{i}", stdin=True)
            spec = env.spec("tr", "sh", "-c", "stty size; read l; echo got:$l; exit 2")
            await env.rt.exec(env.ns, "tr", f"r{i}", spec["process"], stdin=f.stdin,
                              stdout=f.stdout, terminal=True)  # fmt: skip
            await env.rt.resize_pty(env.ns, "tr", w, h, exec_id=f"r{i}")
            f.write(b"early-in\n")  # the writer opened: linerd holds the read end already
            await env.rt.start_exec(env.ns, "tr", f"r{i}")
            assert (await env.rt.wait(env.ns, "tr", f"r{i}")).exit_status == 2
            os.close(os.open(f.stderr, os.O_WRONLY))
            out = f.output()[0]
            # The pty's echo of the early input may come before or after stty's line.
            lines = out.split(b"\r\n")
            assert sorted(lines) == sorted([b"early-in", f"{h} {w}".encode(), b"got:early-in", b""])
            assert lines.index(f"{h} {w}".encode()) < lines.index(b"got:early-in"), out
            f.close_writer()
            await env.rt.delete_exec(env.ns, "tr", f"r{i}")
        # After start, resizes go through conmon's ctl FIFO. Back-to-back ones must not share
        # one read of it (conmon would apply only the first line), and resize_pty returns once
        # conmon has taken the line: input sent afterwards already sees the new size.
        f = Fifos(env.tmp / "io", "rl", stdin=True)
        spec = env.spec("tr", "sh", "-c", "read l; stty size; exit 3")["process"]
        await env.rt.exec(env.ns, "tr", "rl", spec, stdin=f.stdin, stdout=f.stdout,
                          terminal=True)  # fmt: skip
        await env.rt.resize_pty(env.ns, "tr", 90, 30, exec_id="rl")
        await env.rt.start_exec(env.ns, "tr", "rl")
        await asyncio.gather(
            *(env.rt.resize_pty(env.ns, "tr", 91 + i, 31, exec_id="rl") for i in range(5))
        )
        await env.rt.resize_pty(env.ns, "tr", 100, 33, exec_id="rl")
        f.write(b"go\n")
        assert (await env.rt.wait(env.ns, "tr", "rl")).exit_status == 3
        os.close(os.open(f.stderr, os.O_WRONLY))
        assert b"33 100\r\n" in f.output()[0], f.output()
        f.close_writer()
        await env.rt.delete_exec(env.ns, "tr", "rl")
        await env.rt.kill(env.ns, "tr", signal.SIGKILL)
        await env.rt.wait(env.ns, "tr")
        await env.rt.delete(env.ns, "tr")

    run(body())


def test_tty_exec_attach_failure_leaves_nothing_running(env: Env) -> None:
    """If the relay cannot attach, conmon is killed before it runs the process."""

    async def body() -> None:
        await env.create("tf", "sleep", "30")
        await env.rt.start(env.ns, "tf")
        f = Fifos(env.tmp / "io", "tf")
        marker = env.rootfs / "tmp" / f"ran-{env.ns}"
        spec = env.spec("tf", "sh", "-c", f"touch /tmp/ran-{env.ns}")["process"]
        await env.rt.exec(env.ns, "tf", "fx", spec, stdout=f.stdout, terminal=True)
        p = env.rt._get(env.ns, "tf").proc("fx")
        assert p.relay is not None

        def refuse(timeout: float) -> None:
            raise FailedPrecondition("attach refused")

        p.relay.connect = refuse  # type: ignore[method-assign]
        with pytest.raises(FailedPrecondition, match="attach refused"):
            await env.rt.start_exec(env.ns, "tf", "fx")
        with pytest.raises(NotFound):
            env.rt.state(env.ns, "tf", "fx")
        await asyncio.sleep(0.3)
        assert not marker.exists()
        await env.rt.kill(env.ns, "tf", signal.SIGKILL)
        await env.rt.wait(env.ns, "tf")
        await env.rt.delete(env.ns, "tf")

    run(body())


# ---------------------------------------------------------------------------- oom, crun


def test_oom_is_reported(env: Env) -> None:
    ooms: list[tuple[str, str]] = []
    env.rt.on_oom(lambda ns, id: ooms.append((ns, id)))

    async def body() -> None:
        spec = env.spec("o", "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo $x")
        spec["linux"]["resources"]["memory"] = {"limit": 16 << 20, "swap": 16 << 20}
        await env.rt.create(env.ns, "o", spec, env.mounts)
        await env.rt.start(env.ns, "o")
        assert (await env.rt.wait(env.ns, "o")).exit_status == 137
        for _ in range(40):
            if ooms:
                break
            await asyncio.sleep(0.05)
        assert ooms == [(env.ns, "o")]
        # conmon writes its oom marker relative to its cwd: that must be the bundle.
        assert (env.state / "tasks" / env.ns / "o" / "oom").exists()
        await env.rt.delete(env.ns, "o")

    run(body())


CRUN_WRAPPER = """#!/bin/sh
exec unshare --mount --propagation private -- /bin/sh -c \\
  'umount /sys/fs/cgroup/unified 2>/dev/null; exec /usr/bin/crun "$@"' crun "$@"
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/crun"), reason="crun not installed")
def test_crun_through_the_wrapper(env: Env) -> None:
    wrapper = env.tmp / "crun-wrapper"
    wrapper.write_text(CRUN_WRAPPER)
    wrapper.chmod(0o755)
    crun = RuntimeConfig(str(wrapper), name="crun")
    f = Fifos(env.tmp / "io", "cr")

    async def body() -> None:
        await env.rt.create(env.ns, "cr", env.spec("cr", "sh", "-c", "echo hi; exit 13"),
                            env.mounts, runtime=crun, **f.kw)  # fmt: skip
        await env.rt.start(env.ns, "cr")
        assert (await env.rt.wait(env.ns, "cr")).exit_status == 13
        assert f.output() == (b"hi\n", b"")
        await env.rt.delete(env.ns, "cr")
        await env.rt.create(env.ns, "cr2", env.spec("cr2", "sleep", "30"), env.mounts,
                            runtime=crun)  # fmt: skip
        await env.rt.start(env.ns, "cr2")
        await env.rt.exec(env.ns, "cr2", "e", env.spec("cr2", "sh", "-c", "exit 21")["process"])
        await env.rt.start_exec(env.ns, "cr2", "e")
        assert (await env.rt.wait(env.ns, "cr2", "e")).exit_status == 21
        await env.rt.delete_exec(env.ns, "cr2", "e")
        await env.rt.kill(env.ns, "cr2", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "cr2")).exit_status == 137
        await env.rt.delete(env.ns, "cr2")
        with pytest.raises(FailedPrecondition, match="nosuch"):
            await env.rt.create(env.ns, "cr3", env.spec("cr3", "nosuch"), env.mounts, runtime=crun)

    run(body())


def test_kill_signals_a_running_init_through_its_pidfd(env: Env) -> None:
    """A plain kill of a started init goes to the process's pidfd (no runtime exec); `--all`,
    and a kill before start, still go through the runtime."""
    calls = env.tmp / "calls"
    wrapper = env.tmp / "runc-logged"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a; do case "$a" in kill|start|create|delete) echo "$a" >> {calls};; esac; done\n'
        f'exec {RUNC.path} "$@"\n'
    )
    wrapper.chmod(0o755)
    logged = RuntimeConfig(str(wrapper), name="runc-logged")

    def kills() -> int:
        return calls.read_text().split().count("kill") if calls.exists() else 0

    async def body() -> None:
        await env.rt.create(env.ns, "p", env.spec("p", "sleep", "30"), env.mounts,
                            runtime=logged)  # fmt: skip
        await env.rt.start(env.ns, "p")
        await env.rt.kill(env.ns, "p", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "p")).exit_status == 137
        assert kills() == 0
        await env.rt.delete(env.ns, "p")
        await env.rt.create(env.ns, "q", env.spec("q", "sleep", "30"), env.mounts,
                            runtime=logged)  # fmt: skip
        await env.rt.kill(env.ns, "q", signal.SIGKILL)  # created, not started: the runtime
        assert (await env.rt.wait(env.ns, "q")).exit_status == 137
        assert kills() == 1
        await env.rt.delete(env.ns, "q")
        await env.rt.create(env.ns, "r", env.spec("r", "sleep", "30"), env.mounts,
                            runtime=logged)  # fmt: skip
        await env.rt.start(env.ns, "r")
        await env.rt.kill(env.ns, "r", signal.SIGKILL, all=True)
        assert (await env.rt.wait(env.ns, "r")).exit_status == 137
        assert kills() == 2
        await env.rt.delete(env.ns, "r")

    run(body())


def test_runtime_state_deleted_once_init_exits(env: Env) -> None:
    """The runtime's `delete` runs when init exits (Tasks/Delete then has less to do); the
    task stays STOPPED with its exit status until Delete, which still cleans up everything."""
    root = env.rt.runtime_root(RUNC, env.ns)

    def listed() -> list[str]:
        out = subprocess.run([RUNC.path, "--root", str(root), "list", "-q"],
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.split()

    async def body() -> None:
        await env.create("e", "sh", "-c", "exit 3")
        await env.rt.start(env.ns, "e")
        assert (await env.rt.wait(env.ns, "e")).exit_status == 3
        for _ in range(200):
            if not listed():
                break
            await asyncio.sleep(0.01)
        assert listed() == []
        state = env.rt.state(env.ns, "e")
        assert (state.status, state.exit_status) == (TaskStatus.STOPPED, 3)
        assert (await env.rt.delete(env.ns, "e")).exit_status == 3
        with pytest.raises(NotFound):
            env.rt.state(env.ns, "e")

    run(body())


def logging_runc(env: Env, *subcommands: str) -> tuple[RuntimeConfig, Path]:
    """runc behind a wrapper named `runc` (so the in-process shortcuts apply) that logs
    each of `subcommands` it is run with to the returned file."""
    calls = env.tmp / "calls"
    bindir = env.tmp / "bin"
    bindir.mkdir()
    wrapper = bindir / "runc"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a; do case "$a" in {"|".join(subcommands)}) echo "$a" >> {calls};; esac; done\n'
        f'exec {RUNC.path} "$@"\n'
    )
    wrapper.chmod(0o755)
    return RuntimeConfig(str(wrapper), name="runc-named"), calls


def test_runc_start_through_the_exec_fifo(env: Env) -> None:
    """runc's init is released by reading its exec fifo (no `runc start` exec): runc then
    reports it running and the output arrives. An init that died before start still fails
    the start with the runtime's own error, without hanging."""
    logged, calls = logging_runc(env, "start", "create")
    root = env.rt.runtime_root(logged, env.ns)

    def runc_status(id: str) -> str:
        out = subprocess.run([RUNC.path, "--root", str(root), "state", id],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return str(json.loads(out.stdout)["status"])

    async def body() -> None:
        fifos = Fifos(env.tmp / "io", "f")
        await env.rt.create(env.ns, "f", env.spec("f", "sh", "-c", "read x < /dev/null; "
                            "echo started; sleep 30"), env.mounts, runtime=logged,
                            stdout=fifos.stdout, stderr=fifos.stderr)  # fmt: skip
        assert runc_status("f") == "created"
        await env.rt.start(env.ns, "f")
        assert env.rt.state(env.ns, "f").status == TaskStatus.RUNNING
        assert runc_status("f") == "running"
        assert not (root / "f" / "exec.fifo").exists()
        await env.rt.kill(env.ns, "f", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "f")).exit_status == 137
        await env.rt.delete(env.ns, "f")
        assert fifos.output()[0] == b"started\n"
        assert calls.read_text().split() == ["create"]

        pid = await env.rt.create(env.ns, "d", env.spec("d", "true"), env.mounts,
                                  runtime=logged)  # fmt: skip
        os.kill(pid, signal.SIGKILL)  # init gone before start; the exit is not seen yet
        with pytest.raises(FailedPrecondition):
            await env.rt.start(env.ns, "d")
        assert calls.read_text().split() == ["create", "create", "start"]  # runc's verdict
        assert (await env.rt.wait(env.ns, "d")).exit_status == 137
        assert env.rt.state(env.ns, "d").status == TaskStatus.STOPPED
        await env.rt.delete(env.ns, "d")

    run(body())


def test_runc_delete_of_an_exited_init_in_process(env: Env) -> None:
    """Once init has exited, the runtime state is removed without `runc delete` (its cgroups
    and state dir go); a container whose delete does more (poststop hooks, the host's pid
    namespace) still goes through runc, which runs the hooks."""
    logged, calls = logging_runc(env, "delete")
    root = env.rt.runtime_root(logged, env.ns)

    def deletes() -> int:
        return calls.read_text().split().count("delete") if calls.exists() else 0

    def cgroups(id: str) -> list[Path]:
        return [d / env.ns / id for d in Path("/sys/fs/cgroup").iterdir()
                if (d / env.ns / id).exists()]  # fmt: skip

    async def gone(id: str) -> None:
        for _ in range(300):
            if not (root / id).exists():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"runtime state of {id} still there")

    async def body() -> None:
        await env.rt.create(env.ns, "a", env.spec("a", "sh", "-c", "exit 3"), env.mounts,
                            runtime=logged)  # fmt: skip
        assert cgroups("a")
        await env.rt.start(env.ns, "a")
        assert (await env.rt.wait(env.ns, "a")).exit_status == 3
        await gone("a")
        assert cgroups("a") == []
        assert (await env.rt.delete(env.ns, "a")).exit_status == 3
        assert deletes() == 0

        hooked = env.spec("h", "true")
        hook = {"path": "/bin/sh", "args": ["sh", "-c", f"echo ran > {env.tmp}/hook"]}
        hooked["hooks"] = {"poststop": [hook]}
        hostpid = env.spec("p", "true")
        hostpid["linux"]["namespaces"] = [
            n for n in hostpid["linux"]["namespaces"] if n["type"] != "pid"
        ]
        for n, (id, spec) in enumerate([("h", hooked), ("p", hostpid)], start=1):
            await env.rt.create(env.ns, id, spec, env.mounts, runtime=logged)
            await env.rt.start(env.ns, id)
            assert (await env.rt.wait(env.ns, id)).exit_status == 0
            await gone(id)
            await env.rt.delete(env.ns, id)
            assert deletes() == n
            assert cgroups(id) == []
        assert (env.tmp / "hook").read_text() == "ran\n"

    run(body())


# ---------------------------------------------------------------------------- container logs

_CRI_LINE = re.compile(r"(\S+) (stdout|stderr) ([PF]) (.*)")


def cri_records(path: Path) -> list[tuple[datetime, str, str, str]]:
    """Every line of a CRI log file as (time, stream, tag, text); any other shape fails."""
    records = []
    for line in path.read_text().split("\n")[:-1]:  # the file ends with a newline
        m = _CRI_LINE.fullmatch(line)
        assert m, line
        stamp, stream, tag, text = m.groups()
        # RFC 3339 with nanoseconds: Python parses microseconds, so drop the last three digits.
        when = datetime.fromisoformat(re.sub(r"(\.\d{6})\d{3}", r"\1", stamp))
        assert when.tzinfo is not None, stamp
        records.append((when, stream, tag, text))
    return records


def cri_lines(records: list[tuple[datetime, str, str, str]]) -> dict[str, list[str]]:
    """Each stream's lines, with P (partial) records joined to the F that ends them."""
    lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
    pending = {"stdout": "", "stderr": ""}
    for _, stream, tag, text in records:
        pending[stream] += text
        if tag == "F":
            lines[stream].append(pending[stream])
            pending[stream] = ""
    assert pending == {"stdout": "", "stderr": ""}, pending
    return lines


def test_task_without_stdio_logs_in_the_cri_format(env: Env) -> None:
    long = 20000  # longer than conmon reads at once: written as P records, then an F
    script = (
        "echo out-1; echo err-1 >&2; "
        f"head -c {long} /dev/zero | tr '\\0' x; echo; "
        "echo err-2 >&2; echo out-2; exit 4"
    )
    log_path = env.rt.log_path(env.ns, "lg")

    async def body() -> None:
        await env.create("lg", "sh", "-c", script)
        await env.rt.start(env.ns, "lg")
        assert (await env.rt.wait(env.ns, "lg")).exit_status == 4
        await env.rt.delete(env.ns, "lg")  # conmon has ended: the log is complete
        assert log_path == env.state / "logs" / env.ns / "lg.log"
        records = cri_records(log_path)
        assert cri_lines(records) == {
            "stdout": ["out-1", "x" * long, "out-2"],
            "stderr": ["err-1", "err-2"],
        }
        assert [r[2] for r in records if r[3].startswith("x")].count("P") >= 1
        assert all(len(r[3]) < long for r in records)
        times = [r[0] for r in records]
        assert times == sorted(times)

        # A second task of the same container appends; remove_log removes it, twice is fine.
        assert await env.run("lg", "echo", "second") == 0
        assert cri_lines(cri_records(log_path))["stdout"][-2:] == ["out-2", "second"]
        await env.rt.remove_log(env.ns, "lg")
        assert not log_path.exists()
        await env.rt.remove_log(env.ns, "lg")

    run(body())


def test_monitor_runs_without_locale_and_the_log_keeps_bytes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conmon gets no locale and glib's malloc slices (monitor_env); the container's
    environment is its spec's, and its output reaches the log byte for byte."""
    monkeypatch.setenv("LANG", "C.UTF-8")
    text = "h\u00e9llo \u2713 \u65e5\u672c"
    log_path = env.rt.log_path(env.ns, "lc")
    spec = env.spec("lc", "sh", "-c", f"echo $LANG; echo '{text}'")
    spec["process"]["env"] = [*spec["process"]["env"], "LANG=fr_FR.UTF-8"]

    async def body() -> None:
        await env.rt.create(env.ns, "lc", spec, env.mounts)
        # conmon is up from create on.
        conmon_pid = int((env.state / "tasks" / env.ns / "lc" / "conmon.pid").read_text())
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{conmon_pid}/environ").read_text().split("\0")
            if "=" in item
        )
        assert "LANG" not in environ and environ["G_SLICE"] == "always-malloc"
        await env.rt.start(env.ns, "lc")
        assert (await env.rt.wait(env.ns, "lc")).exit_status == 0
        await env.rt.delete(env.ns, "lc")  # conmon has ended: the log is complete
        assert cri_lines(cri_records(log_path))["stdout"] == ["fr_FR.UTF-8", text]
        await env.rt.remove_log(env.ns, "lc")

    run(body())


def test_task_with_stdio_writes_no_log(env: Env) -> None:
    f = Fifos(env.tmp / "io", "fl")

    async def body() -> None:
        await env.create("fl", "echo", "to the fifo", **f.kw)
        await env.rt.start(env.ns, "fl")
        await env.rt.wait(env.ns, "fl")
        await env.rt.delete(env.ns, "fl")

    run(body())
    assert f.output() == (b"to the fifo\n", b"")
    assert not env.rt.log_path(env.ns, "fl").exists()


def test_container_log_starts_afresh_past_its_cap(env: Env) -> None:
    env.rt.log_size_max = 4096
    script = 'i=100; while [ $i -lt 400 ]; do echo "line-$i"; i=$((i+1)); done'

    async def body() -> None:
        assert await env.run("cap", "sh", "-c", script) == 0

    run(body())
    log_path = env.rt.log_path(env.ns, "cap")
    assert log_path.stat().st_size <= 4096
    lines = cri_lines(cri_records(log_path))["stdout"]
    assert lines[-1] == "line-399"  # the newest output is kept, the oldest dropped
    assert "line-100" not in lines
    numbers = [int(line.removeprefix("line-")) for line in lines]
    assert numbers == list(range(numbers[0], 400))


def test_container_log_survives_a_daemon_restart(env: Env) -> None:
    go = env.rootfs / "tmp" / f"go-{env.ns}"
    script = f"echo before; while [ ! -e /tmp/{go.name} ]; do sleep 0.02; done; echo after"
    log_path = env.rt.log_path(env.ns, "rs")

    def logged() -> list[str]:
        return cri_lines(cri_records(log_path))["stdout"] if log_path.exists() else []

    async def first() -> None:
        await env.create("rs", "sh", "-c", script)
        await env.rt.start(env.ns, "rs")
        deadline = time.monotonic() + 10
        while logged() != ["before"]:
            assert time.monotonic() < deadline, "the container never wrote 'before'"
            await asyncio.sleep(0.02)
        await env.rt.close()  # the daemon goes away; conmon keeps the log open

    async def second() -> None:
        rt = env.rt = TaskRuntime(env.state)
        [st] = await rt.recover_all()
        assert st.status == TaskStatus.RUNNING
        assert logged() == ["before"]  # a restarted daemon neither truncates nor rewrites it
        go.touch()
        assert (await rt.wait(env.ns, "rs")).exit_status == 0
        await rt.delete(env.ns, "rs")
        assert logged() == ["before", "after"]

    try:
        run(first())
        run(second())
    finally:
        go.unlink(missing_ok=True)


def _parent_exe(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    ppid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
    return os.path.basename(os.readlink(f"/proc/{ppid}/exe"))


def test_direct_exec_runs_under_the_runtime_without_a_monitor(env: Env) -> None:
    """A direct exec (ExecSync's): `runc exec` is the process's parent and reports its exit,
    no conmon runs; output, exit codes, a kill, a failed start and a terminal refused. A
    restart forgets it (its caller, waiting for it, went with the daemon)."""
    exits: list[tuple[Any, ...]] = []
    env.rt.on_exit(lambda *a: exits.append((a[2], a[4])))

    async def body() -> None:
        await env.create("x", "sleep", "30")
        await env.rt.start(env.ns, "x")

        f = Fifos(env.tmp / "io", "d1")
        spec = env.spec("x", "sh", "-c", "echo out; echo err >&2; exit 5")["process"]
        await env.rt.exec(env.ns, "x", "d1", spec, stdout=f.stdout, stderr=f.stderr,
                          direct=True)  # fmt: skip
        await env.rt.start_exec(env.ns, "x", "d1")
        assert (await env.rt.wait(env.ns, "x", "d1")).exit_status == 5
        assert f.output() == (b"out\n", b"err\n")
        await env.rt.delete_exec(env.ns, "x", "d1")

        fds = len(os.listdir("/proc/self/fd"))
        await env.rt.exec(env.ns, "x", "d2", env.spec("x", "sleep", "30")["process"],
                          direct=True)  # fmt: skip
        pid = await env.rt.start_exec(env.ns, "x", "d2")
        assert _parent_exe(pid) == "runc"
        assert env.rt.state(env.ns, "x", "d2").status == TaskStatus.RUNNING
        assert {p.pid for p in await env.rt.pids(env.ns, "x")} >= {pid}
        await env.rt.kill_exec(env.ns, "x", "d2", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "x", "d2")).exit_status == 137
        await env.rt.delete_exec(env.ns, "x", "d2")
        assert len(os.listdir("/proc/self/fd")) == fds  # its pidfds closed
        assert [e for e in exits if e[0]] == [("d1", 5), ("d2", 137)]

        await env.rt.exec(env.ns, "x", "d3", env.spec("x", "nosuch")["process"], direct=True)
        with pytest.raises(FailedPrecondition, match="nosuch"):
            await env.rt.start_exec(env.ns, "x", "d3")
        with pytest.raises(NotFound):
            env.rt.state(env.ns, "x", "d3")
        with pytest.raises(InvalidArgument):
            await env.rt.exec(env.ns, "x", "d4", spec, terminal=True, direct=True)

        await env.rt.exec(env.ns, "x", "d5", env.spec("x", "sleep", "30")["process"],
                          direct=True)  # fmt: skip
        pid = await env.rt.start_exec(env.ns, "x", "d5")
        await env.rt.close()
        env.rt = TaskRuntime(env.state)
        await env.rt.recover_all()
        with pytest.raises(NotFound):
            env.rt.state(env.ns, "x", "d5")
        os.kill(pid, signal.SIGKILL)
        await env.rt.kill(env.ns, "x", signal.SIGKILL)
        assert (await env.rt.wait(env.ns, "x")).exit_status == 137
        await env.rt.delete(env.ns, "x")

    run(body())
