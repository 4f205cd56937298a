"""The real `ctr run` / `ctr tasks` / `ctr events` against linerd: output, exit codes, stdin,
detached tasks with exec, ps, pause/resume, metrics, kill and removal, a TTY under a pty, the
events ctr decodes, and the crun runtime.

One daemon and one pulled image per module; every test leaves no task, container, monitor,
mount or runtime state behind (checked after each test).
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import busybox_image
from registry import Registry
from support import Linerd

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="no docker-registry"),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("conmon") or not shutil.which("runc"),
        reason="needs root, conmon and runc",
    ),
]

NS = "ctr-tasks"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-layer busybox image in a private registry; yields its reference."""
    work = tmp_path_factory.mktemp("ctr-tasks-image")
    busybox_image(work / "layout", "gzip", extra_layers=False, tag="latest")
    reg = Registry("open", workdir=work)
    reg.start()
    try:
        yield reg.push_layout(work / "layout", "library/busybox:latest", tag="latest")
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("ctr-tasks"))
    d.start()
    try:
        ctr(d, "images", "pull", "--plain-http", image)
        yield d
    finally:
        d.stop()


def ctr(
    daemon: Linerd,
    *args: str,
    check: bool = True,
    input: bytes | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ctr_argv(daemon, *args),
        input=input,
        capture_output=True,
        timeout=timeout,
        env=ctr_env(),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()}\n"
            f"linerd log tail:\n{daemon.log()[-3000:]}"
        )
    return result


def ctr_argv(daemon: Linerd, *args: str) -> list[str]:
    return ["ctr", "--address", daemon.address, "--namespace", NS, *args]


def ctr_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}


def rows(output: bytes) -> list[list[str]]:
    return [line.split() for line in output.decode().splitlines()[1:] if line.strip()]


def tasks(daemon: Linerd) -> dict[str, tuple[int, str]]:
    """ctr tasks ls: id -> (pid, status)."""
    return {r[0]: (int(r[1]), r[2]) for r in rows(ctr(daemon, "tasks", "ls").stdout)}


def wait_status(daemon: Linerd, cid: str, status: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tasks(daemon).get(cid, (0, ""))[1] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"task {cid} never became {status}: {tasks(daemon)}")


def leftovers(base: Path) -> list[str]:
    """Mounts, monitors, runtime containers, bundles and socket links a daemon rooted at `base`
    still has."""
    prefix = str(base)
    state = base / "state"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(prefix + "/"):
            found.append(f"mount {line.split()[4]}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"conmon" in cmd.split(b"\0")[0] and prefix.encode() in cmd:
            found.append(f"conmon {pid}")
    found += [f"runtime state {p}" for p in state.glob("runtime/*/*/*")]
    found += [f"bundle {p}" for p in state.glob("tasks/*/*")]
    found += [f"socket link {p}" for p in state.glob("s/*")]
    return found


def force_clean(daemon: Linerd) -> None:
    for cid in tasks(daemon):
        ctr(daemon, "tasks", "kill", "-a", "-s", "SIGKILL", cid, check=False)
    time.sleep(0.5)
    for cid in tasks(daemon):
        ctr(daemon, "tasks", "rm", "-f", cid, check=False)
    for row in rows(ctr(daemon, "containers", "ls").stdout):
        ctr(daemon, "containers", "rm", row[0], check=False)


@pytest.fixture(autouse=True)
def nothing_left(daemon: Linerd) -> Iterator[None]:
    yield
    left = [f"task {t}" for t in tasks(daemon)]
    left += [f"container {r[0]}" for r in rows(ctr(daemon, "containers", "ls").stdout)]
    left += leftovers(daemon.base)
    if left:
        force_clean(daemon)
    assert not left, f"left behind: {left}"


# ---------------------------------------------------------------------------- run --rm


def test_run_echo_and_exit_code(daemon: Linerd, image: str) -> None:
    res = ctr(daemon, "run", "--rm", image, "echo-1", "echo", "hi")
    assert (res.returncode, res.stdout) == (0, b"hi\n")
    res = ctr(daemon, "run", "--rm", image, "exit-3", "sh", "-c", "exit 3", check=False)
    assert (res.returncode, res.stdout) == (3, b"")
    res = ctr(daemon, "run", "--rm", image, "nosuch-1", "/bin/nosuch", check=False)
    assert res.returncode != 0
    assert b"nosuch" in res.stderr and b"no such file or directory" in res.stderr, res.stderr


def test_stdout_and_stderr(daemon: Linerd, image: str) -> None:
    script = "echo o1; echo e1 >&2; echo o2; echo e2 >&2; exit 5"
    res = ctr(daemon, "run", "--rm", image, "streams-1", "sh", "-c", script, check=False)
    assert (res.returncode, res.stdout, res.stderr) == (5, b"o1\no2\n", b"e1\ne2\n")

    # Both of ctr's streams into one pipe: with pauses between, the order is the program's.
    script = "echo out; sleep 0.3; echo err >&2; sleep 0.3; echo out2"
    res = subprocess.run(
        ctr_argv(daemon, "run", "--rm", image, "streams-2", "sh", "-c", script),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        env=ctr_env(),
    )
    assert (res.returncode, res.stdout) == (0, b"out\nerr\nout2\n")

    # More than a pipe buffer of output arrives complete.
    big = (
        "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    )
    res = ctr(daemon, "run", "--rm", image, "streams-3", "sh", "-c", big)
    lines = res.stdout.decode().splitlines()
    assert len(lines) == 3000 and lines[-1].startswith("line-2999-")


def test_stdin(daemon: Linerd, image: str) -> None:
    # As `(sleep 1; echo x) | ctr run --rm IMAGE id cat`: stdin closes after Tasks/Create has
    # returned, so ctr's CloseIO reaches the daemon (see the reference on the race).
    proc = subprocess.Popen(
        ctr_argv(daemon, "run", "--rm", image, "stdin-1", "cat"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ctr_env(),
    )
    time.sleep(1)
    out, err = proc.communicate(b"x\nsecond line\n", timeout=30)  # writes, then closes
    assert (proc.returncode, out) == (0, b"x\nsecond line\n"), err

    argv = ctr_argv(daemon, "run", "--rm", image, "stdin-2", "wc", "-c")
    res = subprocess.run(
        ["bash", "-c", '(sleep 1; echo x) | "$@"', "sh", *argv],
        capture_output=True,
        timeout=60,
        env=ctr_env(),
    )
    assert (res.returncode, res.stdout.strip()) == (0, b"2"), res.stderr


# ---------------------------------------------------------------------------- run -d, tasks ...


def test_detached_task_exec_ps_pause_metrics_kill_rm(daemon: Linerd, image: str) -> None:
    cid = "detached-1"
    assert ctr(daemon, "run", "-d", image, cid, "sleep", "300").stdout == b""
    pid, status = tasks(daemon)[cid]
    assert pid > 0 and status == "RUNNING"
    assert [r[0] for r in rows(ctr(daemon, "containers", "ls").stdout)] == [cid]

    # exec: output and the exec's own exit code
    listing = ctr(daemon, "tasks", "exec", "--exec-id", "x", cid, "ls", "/").stdout.split()
    assert {b"bin", b"etc", b"proc", b"tmp"} <= set(listing)
    script = "echo e >&2; exit 4"
    res = ctr(daemon, "tasks", "exec", "--exec-id", "y", cid, "sh", "-c", script, check=False)
    assert (res.returncode, res.stderr) == (4, b"e\n")
    # the ids of finished execs are free again
    res = ctr(daemon, "tasks", "exec", "--exec-id", "x", cid, "sh", "-c", "exit 0")
    ctr(daemon, "tasks", "exec", "-d", "--exec-id", "bg", cid, "sleep", "300")

    # ps: the init process and the detached exec, which carries its exec id
    ps = {int(r[0]): r[1] for r in rows(ctr(daemon, "tasks", "ps", cid).stdout)}
    assert len(ps) == 2 and ps[pid] == "-", ps
    (exec_info,) = [v for p, v in ps.items() if p != pid]
    assert "ExecID:bg" in exec_info

    # pause / resume
    ctr(daemon, "tasks", "pause", cid)
    assert tasks(daemon)[cid] == (pid, "PAUSED")
    ctr(daemon, "tasks", "resume", cid)
    assert tasks(daemon)[cid] == (pid, "RUNNING")

    # metrics: ctr decodes the cgroup v1 Metrics (table and JSON)
    table = ctr(daemon, "tasks", "metrics", cid).stdout.decode()
    values = dict(line.split(None, 1) for line in table.splitlines() if line.strip())
    assert int(values["memory.usage_in_bytes"]) > 0, table
    assert int(values["pids.current"]) >= 2, table  # sleep and the exec
    doc = json.loads(ctr(daemon, "tasks", "metrics", "--format", "json", cid).stdout)
    assert doc["memory"]["usage"]["usage"] > 0 and doc["cpu"]["usage"]["total"] > 0, doc

    # neither the task nor the container can be removed while it runs
    res = ctr(daemon, "tasks", "rm", cid, check=False)
    assert res.returncode != 0 and b"must be stopped" in res.stderr, res.stderr
    res = ctr(daemon, "containers", "rm", cid, check=False)
    assert res.returncode != 0 and cid in tasks(daemon)

    # kill: SIGTERM (the default) is ignored by sleep as PID 1, SIGKILL is not
    ctr(daemon, "tasks", "kill", cid)
    time.sleep(0.5)
    assert tasks(daemon)[cid] == (pid, "RUNNING")
    ctr(daemon, "tasks", "kill", "-s", "SIGKILL", cid)
    wait_status(daemon, cid, "STOPPED")
    res = ctr(daemon, "tasks", "kill", "-s", "SIGKILL", cid, check=False)
    assert res.returncode != 0 and b"process already finished" in res.stderr, res.stderr

    res = ctr(daemon, "tasks", "rm", cid)
    assert b"exit code 137" in res.stderr, res.stderr
    assert cid not in tasks(daemon)
    ctr(daemon, "containers", "rm", cid)


def test_kill_all_reaches_every_process(daemon: Linerd, image: str) -> None:
    cid = "killall-1"
    # The init shell ignores TERM; its child sleeps. `kill -a` signals both.
    ctr(daemon, "run", "-d", image, cid, "sh", "-c", "trap '' TERM; sleep 300 & wait; exit 9")
    deadline = time.monotonic() + 5
    while len(rows(ctr(daemon, "tasks", "ps", cid).stdout)) < 2:
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    ctr(daemon, "tasks", "kill", "-a", "-s", "SIGKILL", cid)
    wait_status(daemon, cid, "STOPPED")
    ctr(daemon, "tasks", "rm", cid)
    ctr(daemon, "containers", "rm", cid)


# ---------------------------------------------------------------------------- tty


def _winsize(fd: int, rows_: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows_, cols, 0, 0))


def test_run_tty_under_a_pty(daemon: Linerd, image: str) -> None:
    master, slave = os.openpty()
    _winsize(slave, 40, 132)
    # ctr sends its first ResizePty only after Tasks/Start (so does containerd's ctr against
    # containerd): the process waits a moment before it asks for the size.
    script = "sleep 1; busybox stty size; read l; busybox stty size; echo got:$l; exit 6"
    proc = subprocess.Popen(
        ctr_argv(daemon, "run", "-t", "--rm", image, "tty-1", "sh", "-c", script),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env=ctr_env(),
    )
    os.close(slave)
    out = bytearray()
    chunks: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every slave end is closed
                data = b""
            chunks.put(data)
            if not data:
                return

    threading.Thread(target=pump, daemon=True).start()

    def read_until(needle: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while needle not in out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} in {bytes(out)!r}"
            try:
                data = chunks.get(timeout=left)
            except queue.Empty:
                continue
            assert data, f"EOF before {needle!r}: {bytes(out)!r}"
            out.extend(data)

    try:
        read_until(b"40 132")  # ctr sent ResizePty with its terminal's size
        _winsize(master, 50, 100)
        proc.send_signal(signal.SIGWINCH)  # what the kernel does for a controlling terminal
        time.sleep(0.5)
        os.write(master, b"ping\r")
        read_until(b"got:ping")
        assert proc.wait(30) == 6
        assert b"50 100" in out, bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


# ---------------------------------------------------------------------------- events


class Events:
    """`ctr events` as a subprocess; its lines parsed as (namespace, topic, payload)."""

    LINE = re.compile(r"^\S+ \S+ \S+ \S+ (\S+) (\S+) (.*)$")

    def __init__(self, daemon: Linerd) -> None:
        self.daemon = daemon
        self.proc = subprocess.Popen(
            ["ctr", "--address", daemon.address, "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ctr_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode().rstrip("\n"))

    def ready(self) -> None:
        """Label the namespace until the /namespaces/update event shows: subscribed."""
        deadline = time.monotonic() + 10
        n = 0
        while time.monotonic() < deadline:
            n += 1
            ctr(self.daemon, "namespaces", "label", NS, f"marker={n}")
            try:
                while True:
                    _ns, topic, payload = self.next(timeout=0.3)
                    if topic == "/namespaces/update" and f'"marker":"{n}"' in payload:
                        ctr(self.daemon, "namespaces", "label", NS, "marker=")
                        return
            except queue.Empty:
                continue
        raise AssertionError("ctr events never showed the marker")

    def next(self, timeout: float = 10) -> tuple[str, str, str]:
        line = self.lines.get(timeout=timeout)
        m = self.LINE.match(line)
        assert m, f"unexpected ctr events line: {line!r}"
        return m.group(1), m.group(2), m.group(3)

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err.decode()


def test_events_are_decoded_by_ctr(daemon: Linerd, image: str) -> None:
    events = Events(daemon)
    try:
        events.ready()
        for cid, code in (("ev-1", 2), ("ev-2", 0), ("ev-3", 0)):
            cmd = ["sh", "-c", f"exit {code}"] if code else ["true"]
            assert ctr(daemon, "run", "--rm", image, cid, *cmd, check=False).returncode == code
        ctr(daemon, "run", "-d", image, "ev-x", "sleep", "300")
        ctr(daemon, "tasks", "exec", "--exec-id", "e1", "ev-x", "sh", "-c", "exit 0")
        ctr(daemon, "tasks", "pause", "ev-x")
        ctr(daemon, "tasks", "resume", "ev-x")
        ctr(daemon, "tasks", "kill", "-s", "SIGKILL", "ev-x")
        wait_status(daemon, "ev-x", "STOPPED")
        ctr(daemon, "tasks", "rm", "ev-x")
        ctr(daemon, "containers", "rm", "ev-x")

        seen: dict[str, list[tuple[str, dict[str, object]]]] = {}
        while "ev-x" not in seen or seen["ev-x"][-1][0] != "/containers/delete":
            ns, topic, payload = events.next()
            doc = json.loads(payload)  # ctr prints the event decoded: valid JSON
            assert isinstance(doc, dict)
            if ns != NS or not topic.startswith(("/containers/", "/tasks/")):
                continue
            cid = str(doc.get("container_id") or doc.get("id"))
            seen.setdefault(cid, []).append((topic, doc))
    finally:
        err = events.close()
    assert "cannot unmarshal" not in err, err

    for cid, code in (("ev-1", 2), ("ev-2", 0), ("ev-3", 0)):
        topics = [t for t, _ in seen[cid]]
        assert topics == [
            "/containers/create",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/containers/delete",
        ], (cid, topics)
        docs = dict(seen[cid])
        assert docs["/containers/create"]["image"] == image
        runtime = docs["/containers/create"]["runtime"]
        assert isinstance(runtime, dict) and runtime["name"] == "io.containerd.runc.v2"
        created = docs["/tasks/create"]
        pid = created["pid"]
        assert isinstance(pid, int) and pid > 0
        assert created["bundle"] == str(daemon.state / "tasks" / NS / cid)
        assert isinstance(created["rootfs"], list) and created["rootfs"][0]["type"] == "overlay"
        io = created["io"]
        assert isinstance(io, dict) and io["stdout"].endswith(f"{cid}-stdout")
        assert docs["/tasks/start"] == {"container_id": cid, "pid": pid}
        exited = docs["/tasks/exit"]
        assert (exited["id"], exited["pid"], exited.get("exit_status", 0)) == (cid, pid, code)
        assert exited["exited_at"]
        deleted = docs["/tasks/delete"]
        assert (deleted["pid"], deleted.get("exit_status", 0)) == (pid, code)
        assert deleted["exited_at"] == exited["exited_at"]

    topics = [t for t, _ in seen["ev-x"]]
    assert topics == [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",  # of the exec
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ], topics
    exec_exit = seen["ev-x"][5][1]
    assert exec_exit["id"] == "e1" and exec_exit["container_id"] == "ev-x"
    assert seen["ev-x"][8][1].get("exit_status") == 137


# ---------------------------------------------------------------------------- crun


@pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed")
def test_run_with_the_crun_runtime(daemon: Linerd, image: str) -> None:
    res = ctr(daemon, "run", "--rm", "--runtime", "crun", image, "crun-1", "echo", "hi")
    assert (res.returncode, res.stdout) == (0, b"hi\n")
    script = "echo out; echo err >&2; exit 3"
    res = ctr(
        daemon, "run", "--rm", "--runtime", "crun", image, "crun-2", "sh", "-c", script, check=False
    )
    assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"err\n")

    cid = "crun-3"
    ctr(daemon, "run", "-d", "--runtime", "crun", image, cid, "sleep", "300")
    containers = {r[0]: r for r in rows(ctr(daemon, "containers", "ls").stdout)}
    assert containers[cid][-1] == "crun"
    assert list((daemon.state / "runtime" / "crun" / NS).iterdir())  # crun's own state dir
    res = ctr(daemon, "tasks", "exec", "--exec-id", "x", cid, "sh", "-c", "exit 21", check=False)
    assert res.returncode == 21
    ctr(daemon, "tasks", "kill", "-s", "SIGKILL", cid)
    wait_status(daemon, cid, "STOPPED")
    ctr(daemon, "tasks", "rm", cid)
    ctr(daemon, "containers", "rm", cid)


# ---------------------------------------------------------------------------- logs


def test_run_detached_without_io_keeps_output_in_a_log(daemon: Linerd, image: str) -> None:
    # `ctr run -d --null-io` sends no stdio at all (plain `ctr run -d` sends its own FIFOs,
    # which nobody reads once ctr has exited): the output goes to the container's log.
    cid = "logged-1"
    ctr(daemon, "run", "-d", "--null-io", image, cid, "sh", "-c", "echo out; echo err >&2")
    wait_status(daemon, cid, "STOPPED")
    ctr(daemon, "tasks", "rm", cid)  # conmon has ended: the log is complete
    log = daemon.state / "logs" / NS / f"{cid}.log"
    records = [line.split(" ", 3) for line in log.read_text().splitlines()]
    assert sorted((stream, tag, text) for _, stream, tag, text in records) == [
        ("stderr", "F", "err"),
        ("stdout", "F", "out"),
    ]
    for stamp, *_ in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d", stamp), stamp
    ctr(daemon, "containers", "rm", cid)
