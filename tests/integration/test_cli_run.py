"""`liner run`, `liner tasks`, `liner containers` and `liner events` against a real linerd
(runc + conmon, root) and the session registry's busybox image.

`liner run` runs as a subprocess (real file descriptors, signals, exit codes); the short
commands run in-process through click's runner. One daemon serves the module; every test
uses its own container ids and leaves no container or task behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from registry import Registry
from support import Linerd

from liner.cli import cli
from liner.events import decode
from liner.run import FIFO_ROOT, parse_mount, parse_signal, parse_size
from linerd.runtime import RUNC

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("conmon") or not os.path.exists(RUNC.path),
        reason="needs root, conmon and runc",
    ),
]

RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("linerd-run"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def image(daemon: Linerd, registry: Registry) -> str:
    ref = registry.ref("library/busybox:latest")
    ok(liner(daemon.address, "images", "pull", "--plain-http", "--progress", "quiet", ref))
    return ref


@pytest.fixture(autouse=True)
def nothing_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each daemon test ends with no task and no container; leftovers are removed and fail."""
    yield
    if "daemon" not in request.fixturenames:
        return
    daemon: Linerd = request.getfixturevalue("daemon")
    tasks = ok(liner(daemon.address, "tasks", "ls", "-q")).split()
    containers = ok(liner(daemon.address, "containers", "ls", "-q")).split()
    for task in tasks:
        liner(daemon.address, "tasks", "rm", "-f", task)
    for c in containers:
        liner(daemon.address, "containers", "rm", c)
    assert (tasks, containers) == ([], [])


# -- helpers ----------------------------------------------------------------------------------


def liner(address: str, *args: str, input: str | None = None) -> Result:
    """The CLI in-process (stdin and stdout are not terminals)."""
    env: dict[str, str | None] = {"LINER_ADDRESS": None, "LINER_NAMESPACE": None}
    env["LINER_SNAPSHOTTER"] = None
    return CliRunner().invoke(
        cli, ["-a", address, *args], input=input, env=env, catch_exceptions=False
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def _env(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINER_")}
    env["LINER_ADDRESS"] = address
    return env


def run(
    daemon: Linerd, *args: str, input: bytes | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`liner ARGS` as a subprocess; stdin /dev/null unless `input` is given."""
    return subprocess.run(
        [sys.executable, "-m", "liner.cli", *args],
        input=input.decode() if input is not None else None,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(daemon.address),
        timeout=timeout,
    )


def popen(daemon: Linerd, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "liner.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(daemon.address),
    )


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single `liner: ...` line of a failed run (exit 1), without the prefix."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("liner: "), lines[0]
    return lines[0].removeprefix("liner: ")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def tasks(daemon: Linerd) -> dict[str, list[str]]:
    rows = ok(liner(daemon.address, "tasks", "ls")).splitlines()
    assert rows[0].split() == ["TASK", "PID", "STATUS"]
    return {r.split()[0]: r.split()[1:] for r in rows[1:]}


def containers(daemon: Linerd) -> list[str]:
    return ok(liner(daemon.address, "containers", "ls", "-q")).split()


def snapshots(daemon: Linerd) -> list[str]:
    return ok(liner(daemon.address, "snapshots", "ls", "-q")).split()


def assert_gone(daemon: Linerd, id: str) -> None:
    assert id not in containers(daemon)
    assert id not in tasks(daemon)
    assert id not in snapshots(daemon)


# -- run: output, exit codes, options ---------------------------------------------------------


def test_run_rm_echo(daemon: Linerd, image: str) -> None:
    done = run(daemon, "run", "--rm", image, "echo1", "echo", "hi")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hi\n", "")
    assert_gone(daemon, "echo1")


def test_exit_code_and_stderr(daemon: Linerd, image: str) -> None:
    done = run(daemon, "run", "--rm", image, "exit3", "sh", "-c", "exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "", "")
    done = run(daemon, "run", "--rm", image, "streams", "sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
    # stdin goes in when it is not a terminal; EOF closes the process's stdin
    done = run(daemon, "run", "--rm", image, "cat1", "cat", input=b"piped\n")
    assert (done.returncode, done.stdout) == (0, "piped\n")
    assert_gone(daemon, "exit3")


def test_env_and_env_file(daemon: Linerd, image: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nFROM_FILE=yes\n\nFOO=overridden\n")
    done = run(
        daemon,
        "run",
        "--rm",
        "--env-file",
        str(env_file),
        "--env",
        "FOO=bar",
        "--env",
        "SPACED=a b",
        image,
        "env1",
        "env",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert {"FOO=bar", "FROM_FILE=yes", "SPACED=a b"} <= set(lines)
    assert any(line.startswith("PATH=") for line in lines)  # the image's env stays


def test_bind_mounts(daemon: Linerd, image: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")
    mount = f"type=bind,src={shared},dst=/host"
    done = run(
        daemon, "run", "--rm", "--mount", mount, image, "mnt1",
        "sh", "-c", "cat /host/in; echo written > /host/out",
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "from host\n", "")
    assert (shared / "out").read_text() == "written\n"
    done = run(
        daemon, "run", "--rm", "--mount", f"{mount},options=rbind:ro", image, "mnt2",
        "sh", "-c", "echo x > /host/ro",
    )  # fmt: skip
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr
    assert not (shared / "ro").exists()


def test_memory_limit_oom_kills(daemon: Linerd, image: str) -> None:
    # dd fills a 200 MiB buffer from /dev/zero: over the 64 MiB limit, without swap
    done = run(
        daemon, "run", "--rm", "--memory", "64m", image, "oom1",
        "busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1",
    )  # fmt: skip
    assert done.returncode == 137, (done.returncode, done.stderr)
    done = run(daemon, "run", "--rm", "--memory", "64m", image, "oom2", "echo", "fits")
    assert (done.returncode, done.stdout) == (0, "fits\n")


def test_read_only_user_cwd(daemon: Linerd, image: str) -> None:
    done = run(daemon, "run", "--rm", "--read-only", image, "ro1", "touch", "/x")
    assert done.returncode == 1
    assert "Read-only file system" in done.stderr
    done = run(daemon, "run", "--rm", "--user", "65534", image, "user1", "id")
    assert done.returncode == 0
    assert done.stdout.startswith("uid=65534(nobody) gid=65534(nogroup)")
    done = run(daemon, "run", "--rm", "--user", "65534:0", image, "user1", "id", "-u")
    assert (done.returncode, done.stdout) == (0, "65534\n")
    # a name is looked up in the image's /etc/passwd (mounted read-only by liner)
    done = run(daemon, "run", "--rm", "--user", "nobody", image, "user2", "id")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("uid=65534(nobody) gid=65534(nogroup)")
    assert snapshots(daemon) == sorted(snapshots(daemon))  # no view left behind
    assert not [s for s in snapshots(daemon) if "view" in s]
    message = one_error(run(daemon, "run", "--rm", "--user", "ghost", image, "user3", "id"))
    assert "ghost" in message
    done = run(daemon, "run", "--rm", "--cwd", "/data/sub", image, "cwd1", "pwd")
    assert (done.returncode, done.stdout) == (0, "/data/sub\n")
    done = run(
        daemon, "run", "-d", "--cpus", "0.5", "--pids-limit", "20", "--memory", "32m", image,
        "limits1", "sleep", "60",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        out = ok(liner(daemon.address, "tasks", "metrics", "limits1"))
        metrics = dict(re.split(r" {2,}", line) for line in out.splitlines()[2:])
        assert (metrics["pids.limit"], metrics["memory.limit"]) == ("20", "33.55MB")
        quota = Path("/sys/fs/cgroup/cpu/default/limits1/cpu.cfs_quota_us")
        if quota.exists():  # cgroup v1 with the cgroupfs layout
            assert quota.read_text().strip() == "50000"
    finally:
        ok(liner(daemon.address, "tasks", "rm", "-f", "limits1"))
        ok(liner(daemon.address, "containers", "rm", "limits1"))
    assert_gone(daemon, "user3")


# -- detached: tasks and containers commands --------------------------------------------------


def test_detached_task_lifecycle(daemon: Linerd, image: str) -> None:
    a = daemon.address
    done = run(daemon, "run", "-d", "--label", "team=a", image, "det1", "sleep", "60")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    listed = tasks(daemon)
    assert listed["det1"][1] == "RUNNING" and int(listed["det1"][0]) > 0

    done = run(daemon, "tasks", "exec", "--exec-id", "ex1", "det1", "sh", "-c", "echo in; exit 5")
    assert (done.returncode, done.stdout, done.stderr) == (5, "in\n", "")
    done = run(daemon, "tasks", "exec", "det1", "cat", "/proc/1/cmdline")
    assert (done.returncode, done.stdout) == (0, "sleep\x0060\x00")

    rows = ok(liner(a, "tasks", "ps", "det1")).splitlines()
    assert rows[0].split() == ["PID", "INFO"]
    assert rows[1].split() == [listed["det1"][0], "-"]

    ok(liner(a, "tasks", "pause", "det1"))
    assert tasks(daemon)["det1"][1] == "PAUSED"
    ok(liner(a, "tasks", "resume", "det1"))
    assert tasks(daemon)["det1"][1] == "RUNNING"

    out = ok(liner(a, "tasks", "metrics", "det1"))
    assert out.splitlines()[0] == "ID: det1"
    metrics = dict(re.split(r" {2,}", line) for line in out.splitlines()[2:])
    assert metrics["pids.current"] == "1"
    assert metrics["memory.limit"] == "max"
    assert re.fullmatch(r"[\d.]+[kMG]?B", metrics["memory.usage"])
    assert re.fullmatch(r"\d+\.\d{3}s", metrics["cpu.usage"])

    # a running task blocks both rm commands, with a clear message
    refused = liner(a, "containers", "rm", "det1")
    assert refused.exit_code == 1 and "running" in refused.stderr
    refused = liner(a, "tasks", "rm", "det1")
    assert refused.exit_code == 1 and "must be stopped" in refused.stderr

    # sleep as pid 1 ignores SIGTERM (the default signal); KILL ends it
    ok(liner(a, "tasks", "kill", "-s", "KILL", "det1"))
    wait_for(lambda: tasks(daemon)["det1"][1] == "STOPPED", 10, "the task to stop")
    assert ok(liner(a, "tasks", "rm", "det1")) == "det1 137\n"
    assert "det1" not in tasks(daemon)

    listed_c = ok(liner(a, "containers", "ls")).splitlines()
    assert listed_c[0].split() == ["CONTAINER", "IMAGE", "RUNTIME"]
    assert listed_c[1].split() == ["det1", image, "io.containerd.runc.v2"]
    info = json.loads(ok(liner(a, "containers", "info", "det1")))
    assert info["ID"] == "det1" and info["Image"] == image
    assert info["Labels"] == {"team": "a"}
    assert info["Spec"]["process"]["args"] == ["sleep", "60"]
    assert info["Spec"]["linux"]["cgroupsPath"] == "/default/det1"
    assert info["Runtime"]["Options"]["@type"] == "containerd.runc.v1.Options"
    assert info["Snapshotter"] == "overlayfs" and info["SnapshotKey"] == "det1"
    assert "det1" in snapshots(daemon)

    assert ok(liner(a, "containers", "rm", "det1")) == "det1\n"
    assert_gone(daemon, "det1")
    gone = liner(a, "containers", "rm", "det1")
    assert gone.exit_code == 1 and "not found" in gone.stderr


def test_containers_rm_deletes_a_stopped_task(daemon: Linerd, image: str) -> None:
    def fifo_dirs() -> set[Path]:
        return {p.parent for p in Path(FIFO_ROOT).glob("liner-*/stopped1-*")}

    # -i: a detached task with stdio (plain -d has none: its output goes to its log file)
    assert run(daemon, "run", "-d", "-i", image, "stopped1", "true").returncode == 0
    assert len(fifo_dirs()) == 1  # kept while the task exists, as ctr's
    wait_for(lambda: tasks(daemon)["stopped1"][1] == "STOPPED", 10, "the task to exit")
    assert ok(liner(daemon.address, "c", "rm", "stopped1")) == "stopped1\n"
    assert_gone(daemon, "stopped1")
    assert fifo_dirs() == set()


# -- signals ----------------------------------------------------------------------------------


def _running(daemon: Linerd, id: str) -> bool:
    return tasks(daemon).get(id, ["", ""])[1] == "RUNNING"


def test_sigint_kills_after_the_stop_timeout_and_rm_cleans_up(daemon: Linerd, image: str) -> None:
    # sleep as pid 1 ignores the forwarded SIGINT: after --stop-timeout it is killed (137)
    proc = popen(daemon, "run", "--rm", "--stop-timeout", "1", image, "int1", "sleep", "30")
    try:
        wait_for(lambda: _running(daemon, "int1"), 20, "the task to run")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 137
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()
    assert_gone(daemon, "int1")


def test_sigint_reaches_a_process_that_traps_it(daemon: Linerd, image: str) -> None:
    script = "trap 'echo caught; exit 130' INT; echo ready; sleep 30 & wait"
    proc = popen(daemon, "run", "--rm", image, "int2", "sh", "-c", script)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130
        assert proc.stdout.read() == "caught\n"
    finally:
        proc.kill()
        proc.wait()
    assert_gone(daemon, "int2")


# -- events -----------------------------------------------------------------------------------


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_events_show_a_run(daemon: Linerd, image: str) -> None:
    proc = popen(daemon, "events", "namespace==default")
    try:
        lines = _lines(proc)
        time.sleep(1.0)  # the subscription is up once the process has connected
        done = run(daemon, "run", "--rm", image, "ev1", "sh", "-c", "exit 7")
        assert done.returncode == 7
        seen: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 15
        while "/containers/delete" not in seen and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            m = re.fullmatch(r"(\S+) (\S+) (/\S+) (\{.*\})\n", line)
            assert m, line
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", m.group(1)), line
            assert m.group(2) == "default"
            seen[m.group(3)] = json.loads(m.group(4))
    finally:
        proc.terminate()
        proc.wait(10)
    assert {"/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit"} <= set(seen)
    assert seen["/tasks/start"]["container_id"] == "ev1"
    assert seen["/tasks/exit"]["container_id"] == "ev1"
    assert seen["/tasks/exit"]["exit_status"] == 7
    assert seen["/containers/create"]["runtime"]["name"] == "io.containerd.runc.v2"
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


# -- errors -----------------------------------------------------------------------------------


def test_errors_leave_nothing_behind(daemon: Linerd, image: str) -> None:
    before = snapshots(daemon)
    message = one_error(
        run(daemon, "run", "--rm", "--pull", "never", "nothing.example/none:1", "err1", "true")
    )
    assert "not found" in message and "nothing.example/none:1" in message

    message = one_error(run(daemon, "run", "--rm", image, "err2", "no-such-command"))
    assert "no-such-command" in message
    assert_gone(daemon, "err2")

    message = one_error(run(daemon, "run", image, "err3", "--runtime", "nope", "true"))
    # options after ID belong to the command: that ran `--runtime` in the container
    assert "--runtime" in message
    message = one_error(run(daemon, "run", "--runtime", "nope", image, "err3", "true"))
    assert "nope" in message
    assert_gone(daemon, "err3")
    assert snapshots(daemon) == before

    assert run(daemon, "run", "-d", image, "dup1", "sleep", "60").returncode == 0
    try:
        message = one_error(run(daemon, "run", "--rm", image, "dup1", "echo", "again"))
        assert "dup1" in message and "in use" in message
        assert _running(daemon, "dup1")  # the first one is untouched
    finally:
        ok(liner(daemon.address, "tasks", "rm", "-f", "dup1"))
        ok(liner(daemon.address, "containers", "rm", "dup1"))
    assert snapshots(daemon) == before

    result = liner(daemon.address, "run", "--memory", "lots", image, "err4")
    assert result.exit_code == 2 and "--memory" in result.stderr
    result = liner(daemon.address, "run", "--mount", "type=bind,dst=/x", image, "err4")
    assert result.exit_code == 2 and "--mount" in result.stderr
    message = one_error(run(daemon, "tasks", "exec", "nothing", "true"))
    assert "not found" in message


def test_logs_of_a_detached_container(daemon: Linerd, image: str) -> None:
    assert "not found" in one_error(run(daemon, "logs", "nothing"))
    cmd = "echo out1; echo err1 >&2; echo out2"
    done = run(daemon, "run", "-d", image, "log1", "sh", "-c", cmd)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    try:
        wait_for(lambda: tasks(daemon)["log1"][1] == "STOPPED", 10, "the task to exit")
        shown = run(daemon, "logs", "log1")
        assert (shown.returncode, shown.stdout, shown.stderr) == (0, "out1\nout2\n", "err1\n")
        # conmon reads stdout and stderr apart: err1 may land before or after out2.
        last = run(daemon, "logs", "--tail", "1", "log1")
        assert last.returncode == 0 and last.stdout + last.stderr in ("out2\n", "err1\n")
        ok(liner(daemon.address, "tasks", "rm", "log1"))
        ok(liner(daemon.address, "containers", "rm", "log1"))
        # The kept output goes with the container record.
        assert not (daemon.state / "logs" / "default" / "log1.log").exists()
    finally:
        liner(daemon.address, "tasks", "rm", "-f", "log1")
        liner(daemon.address, "containers", "rm", "log1")


def test_run_pulls_a_missing_image(linerd: Linerd, registry: Registry) -> None:
    # A daemon of its own: the image is not there until `run` pulls it.
    ref = registry.ref("library/busybox:latest")
    never = subprocess.run(
        [sys.executable, "-m", "liner.cli", "run", "--rm", "--pull", "never", ref, "p0", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(linerd.address),
        timeout=RUN_TIMEOUT,
    )
    assert never.returncode == 1 and "not found" in never.stderr
    assert ok(liner(linerd.address, "images", "ls", "-q")) == ""

    def run_echo(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = ["run", "--rm", "--plain-http", "--progress", "plain", *flags, ref, "p1"]
        return subprocess.run(
            [sys.executable, "-m", "liner.cli", *argv, "echo", "pulled"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_env(linerd.address),
            timeout=RUN_TIMEOUT,
        )

    first = run_echo()  # --pull missing
    assert first.returncode == 0, first.stderr
    assert first.stdout == "pulled\n"  # the progress goes to stderr, not the container's stdout
    assert "downloaded" in first.stderr or "exists" in first.stderr
    assert ok(liner(linerd.address, "images", "ls", "-q")).split() == [ref]

    again = run_echo()  # there now: no pull
    assert (again.returncode, again.stdout, again.stderr) == (0, "pulled\n", "")

    always = run_echo("--pull", "always")
    assert always.returncode == 0 and always.stdout == "pulled\n"
    assert always.stderr != ""  # pulled again (its blobs already there)


# -- terminal ---------------------------------------------------------------------------------


def _in_pty(argv: list[str], env: dict[str, str], rows: int, cols: int) -> tuple[int, bytes]:
    """Run argv with a new pty (rows x cols) as its controlling terminal and stdio; returns
    its exit code and everything it wrote."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdio is the pty's slave side
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break  # EIO: the child side closed
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    return os.waitstatus_to_exitcode(status), output


def test_run_and_exec_tty(daemon: Linerd, image: str) -> None:
    """`liner run -t` / `tasks exec -t` with a pty as controlling terminal: raw mode, the pty's
    size reaches the container (ResizePty), the exit status comes back."""
    liner_argv = [sys.executable, "-m", "liner.cli"]
    env = _env(daemon.address)
    code, output = _in_pty(
        [*liner_argv, "run", "--rm", "-t", image, "tty1", "sh", "-c", "busybox stty size; exit 4"],
        env,
        33,
        101,
    )
    assert code == 4, output
    assert b"33 101" in output
    assert_gone(daemon, "tty1")

    assert run(daemon, "run", "-d", image, "tty2", "sleep", "60").returncode == 0
    # the sleep: linerd attaches a terminal exec's relay only after the process started, so
    # what it writes at once can be lost (a daemon issue, reported)
    try:
        code, output = _in_pty(
            [
                *liner_argv,
                "tasks",
                "exec",
                "-t",
                "tty2",
                "sh",
                "-c",
                "sleep 0.5; busybox tty; exit 6",
            ],
            env,
            20,
            70,
        )
        assert code == 6, output
        assert re.search(rb"/dev/pts/\d+", output), output
    finally:
        ok(liner(daemon.address, "tasks", "rm", "-f", "tty2"))
        ok(liner(daemon.address, "containers", "rm", "tty2"))


# -- argument formats (no daemon) ---------------------------------------------------------------


def test_argument_formats(tmp_path: Path) -> None:
    assert parse_size("64m") == 64 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("512K") == 512 << 10
    assert parse_size("1000") == 1000
    for bad in ("", "lots", "-1m", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_signal("KILL") == signal.SIGKILL
    assert parse_signal("sigterm") == signal.SIGTERM
    assert parse_signal("9") == 9
    with pytest.raises(ValueError):
        parse_signal("NOPE")
    m = parse_mount(f"type=bind,src={tmp_path},dst=/data,options=rbind:ro")
    assert (m.type, m.source, m.destination, m.options) == (
        "bind",
        str(tmp_path),
        "/data",
        ("rbind", "ro"),
    )
    assert parse_mount(f"src={tmp_path},dst=/d").options == ("rbind", "rw")
    assert parse_mount("type=tmpfs,dst=/t,options=size=1m").source == "tmpfs"
    for bad in ("dst=/x", f"src={tmp_path},dst=rel", f"src={tmp_path}/none,dst=/x", "junk"):
        with pytest.raises(ValueError):
            parse_mount(bad)


def test_event_payloads_decode() -> None:
    from liner_api.containerd.events import task_pb2
    from liner_api.containerd.services.images.v1 import images_pb2  # noqa: F401

    exit_ = task_pb2.TaskExit(container_id="c", id="c", pid=7, exit_status=3)
    assert decode("containerd.events.TaskExit", exit_.SerializeToString()) == {
        "container_id": "c",
        "id": "c",
        "pid": 7,
        "exit_status": 3,
    }
    from liner_api.containerd.events import image_pb2

    created = image_pb2.ImageCreate(name="x", labels={"a": "b"}).SerializeToString()
    assert decode("containerd.services.images.v1.ImageCreate", created) == {
        "name": "x",
        "labels": {"a": "b"},
    }
    assert decode("unknown.Type", b"") is None


def _nice(pid: int, tid: int | None = None) -> int:
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


def test_only_the_serving_threads_run_at_the_loop_priority(daemon: Linerd, image: str) -> None:
    """The event loop's thread and grpc's (its own and grpc.aio's poller) run at loop_nice
    (-10 by default); the daemon's other threads, conmon, runc and the container, and an
    exec's process, at nice 0."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    assert _nice(pid) == -10  # the main thread: the event loop's
    threads = {int(t): Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
               for t in os.listdir(f"/proc/{pid}/task")}  # fmt: skip
    # Python's threads keep the process's name; grpc names its own (event_engine, ...).
    python = [_nice(pid, t) for t, comm in threads.items() if comm == threads[pid] and t != pid]
    grpc = [t for t, comm in threads.items() if comm != threads[pid]]
    assert grpc and all(_nice(pid, t) == -10 for t in grpc)
    # Of Python's, grpc.aio's poller alone; the database's and the workers' at 0.
    assert python.count(-10) == 1 and python.count(0) == len(python) - 1 >= 1

    done = run(daemon, "run", "-d", image, "nice1", "sleep", "60")
    assert done.returncode == 0, done.stderr
    task_pid = int(tasks(daemon)["nice1"][0])
    assert _nice(task_pid) == 0
    conmon = int(Path(f"/proc/{task_pid}/status").read_text().split("PPid:")[1].split()[0])
    assert Path(f"/proc/{conmon}/comm").read_text().strip() == "conmon" and _nice(conmon) == 0
    done = run(daemon, "tasks", "exec", "--exec-id", "n1", "nice1", "sh", "-c",
               "cut -d' ' -f19 /proc/self/stat")  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "0\n")
    ok(liner(daemon.address, "tasks", "kill", "-s", "KILL", "nice1"))
    wait_for(lambda: tasks(daemon)["nice1"][1] == "STOPPED", 10, "the task to stop")
    ok(liner(daemon.address, "tasks", "rm", "nice1"))
    ok(liner(daemon.address, "containers", "rm", "nice1"))
