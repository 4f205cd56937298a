"""Runtime helpers that need no runtime: error parsing, inotify, stdio opening, ids, cgroups."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from linerd.errdefs import DeadlineExceeded, InvalidArgument, NotImplementedYet
from linerd.mounts import escape_mountinfo, unescape_mountinfo
from linerd.runtime.conmon import _read_line, clean_env, monitor_env, readable, runtime_message
from linerd.runtime.inotify import IN_CREATE, IN_MOVED_TO, Inotify
from linerd.runtime.manager import _validate_id, _validate_spec
from linerd.runtime.stdio import open_stdio
from linerd.runtime.types import RuntimeConfig

pytestmark = pytest.mark.unit


def test_runtime_message_formats() -> None:
    logfmt = 'time="2026-11-28T00:05:10Z" level=error msg="container \\"x\\" does not exist"\n'
    assert runtime_message(logfmt) == 'container "x" does not exist'
    js = (
        '{"level":"warning","msg":"meh"}\n'
        '{"level":"error","msg":"runc create failed: exec: \\"nosuch\\": not found"}\n'
    )
    assert runtime_message(js) == 'runc create failed: exec: "nosuch": not found'
    assert runtime_message("plain failure\n") == "plain failure"
    assert runtime_message("") == ""


def test_clean_env_drops_systemd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("_OCI_SYNCPIPE", "9")
    env = clean_env()
    assert "NOTIFY_SOCKET" not in env and "_OCI_SYNCPIPE" not in env and "PATH" in env


def test_monitor_env_without_locale_with_malloc_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("LANG", "C.UTF-8"), ("LC_ALL", "C.UTF-8"), ("LC_CTYPE", "de_DE")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANGUAGE", "de")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("HOME", "/root")
    env = monitor_env()
    assert not {"LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "NOTIFY_SOCKET"} & set(env)
    assert env["G_SLICE"] == "always-malloc"
    assert env["HOME"] == "/root" and "PATH" in env
    assert clean_env()["LANG"] == "C.UTF-8"  # the runtime's CLI calls keep theirs


def test_inotify_sees_rename_and_create(tmp_path: Path) -> None:
    ino = Inotify()
    try:
        wd = ino.add_watch(str(tmp_path), IN_MOVED_TO | IN_CREATE)
        assert list(ino.read()) == []
        (tmp_path / "c.tmp").write_text("7")
        os.rename(tmp_path / "c.tmp", tmp_path / "c")
        events = [(w, name) for w, mask, name in ino.read() if mask & IN_MOVED_TO]
        assert events == [(wd, "c")]
    finally:
        ino.close()


def test_ids_and_specs() -> None:
    for good in ("a", "web-1", "x.y_z", "A1"):
        _validate_id("id", good)
    for bad in ("", "../x", "a/b", "a:b", "-a", "a" * 77):
        with pytest.raises(InvalidArgument):
            _validate_id("id", bad)
    _validate_spec({"process": {"args": ["sh"]}, "root": {"path": "rootfs"}})
    for bad_spec in ([], {"process": {"args": []}}, {"process": {"args": ["a"]}, "root": 1}):
        with pytest.raises(InvalidArgument):
            _validate_spec(bad_spec)
    assert RuntimeConfig("/usr/sbin/runc").key == "runc"
    assert RuntimeConfig("/opt/w", name="crun").key == "crun"


def test_mountinfo_unescape_and_escape() -> None:
    assert unescape_mountinfo(r"/a\040b\134c\011d\012e") == "/a b\\c\td\ne"
    assert unescape_mountinfo("/plain") == "/plain"
    odd = "/r/a b\\c\td\ne"
    assert escape_mountinfo(odd) == r"/r/a\040b\134c\011d\012e"
    assert unescape_mountinfo(escape_mountinfo(odd)) == odd


def test_open_stdio_fifos_hold_extra_ends(tmp_path: Path) -> None:
    out, inp = tmp_path / "out", tmp_path / "in"
    os.mkfifo(out)
    os.mkfifo(inp)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(out.read_bytes()))
    reader.start()
    io = open_stdio(str(inp), str(out), str(out), timeout=5)
    try:
        assert io.stdout is not None and io.stderr == io.stdout and len(io.held) == 1
        assert io.stdin is not None and io.stdin_writer is not None
        os.write(io.stdin_writer, b"x")
        assert os.read(io.stdin, 1) == b"x"
        os.write(io.stdout, b"hello")
    finally:
        io.close_all()
    reader.join(5)
    assert got == [b"hello"]


def test_open_stdio_errors(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely"
    os.mkfifo(lonely)
    with pytest.raises(DeadlineExceeded):
        open_stdio("", str(lonely), "", timeout=0.05)
    with pytest.raises(NotImplementedYet):
        open_stdio("", "binary:///usr/bin/logger", "", timeout=0.05)
    log = tmp_path / "log"
    io = open_stdio("", f"file://{log}", "", timeout=0.05)
    assert io.stdout is not None
    os.write(io.stdout, b"line\n")
    io.close_all()
    assert log.read_bytes() == b"line\n"


def test_conmon_argv_for_a_callers_log(tmp_path: Path) -> None:
    """A CRI container's log: kubelet's path, no size cap (kubelet rotates), synced at exit;
    with a TTY conmon holds the pty and logs it; stdin_pipe adds conmon's stdin pipe."""
    from linerd.runtime.manager import TaskRuntime, _Proc, _Task

    rt = TaskRuntime(tmp_path, log_size_max=1 << 20)
    task = _Task("k8s.io", "c1", tmp_path / "b", ["/usr/sbin/runc", "--root", "/r"])

    def argv(**kw: object) -> list[str]:
        p = _Proc(task, "", task.bundle, "u1", **kw)  # type: ignore[arg-type]
        return rt._conmon_argv(task, p)

    plain = argv(log_path="/var/log/pods/x/c/0.log", kept_log=True)
    i = plain.index("-l")
    assert plain[i + 1] == "k8s-file:/var/log/pods/x/c/0.log"
    assert "--log-size-max" not in plain and "--no-sync-log" not in plain and "-i" not in plain
    tty = argv(log_path="/l/0.log", kept_log=True, terminal=True, stdin_pipe=True)
    assert "-t" in tty and "-i" in tty and tty[tty.index("-l") + 1] == "k8s-file:/l/0.log"
    assert "--leave-stdin-open" in tty
    once = argv(log_path="/l/0.log", kept_log=True, stdin_pipe=True, stdin_once=True)
    assert "-i" in once and "--leave-stdin-open" not in once
    own = argv(log_path=str(tmp_path / "logs/x.log"))
    assert "--log-size-max" in own and "--no-sync-log" in own


def test_sync_pipe_reads_past_fd_setsize() -> None:
    """With a few hundred containers the daemon's fds pass 1024, where select() refuses."""
    r, w = os.pipe()
    high = os.dup2(r, 1500)
    try:
        assert not readable(high, 0.01)
        os.write(w, b"ok\nrest")
        assert readable(high, 1.0)
        assert _read_line(high, deadline=time.monotonic() + 10) == b"ok\n"
    finally:
        for fd in (r, w, high):
            os.close(fd)


def test_sync_line_kept_rest_or_read_whole() -> None:
    """A sync pipe kept open (an exec's: its exit code follows) is read byte-wise, so what
    follows the line stays in the pipe; one closed after the line is read in one go."""
    r, w = os.pipe()
    try:
        os.write(w, b'{"data": 42}\n{"data": 0, "exit": 1}\n')
        deadline = time.monotonic() + 10
        assert _read_line(r, deadline) == b'{"data": 42}\n'
        assert _read_line(r, deadline, keep_rest=False) == b'{"data": 0, "exit": 1}\n'
        os.write(w, b'{"data": 7')  # a line in two writes: read until its end
        threading.Timer(0.05, os.write, (w, b"}\n")).start()
        assert _read_line(r, deadline, keep_rest=False) == b'{"data": 7}\n'
        os.close(w)
        w = -1
        assert _read_line(r, deadline, keep_rest=False) == b""  # EOF
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
