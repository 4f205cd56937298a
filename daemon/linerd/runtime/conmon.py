"""Talking to the monitor (conmon) and to the OCI runtime's CLI. Blocking: call from threads."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from linerd.errdefs import DeadlineExceeded, FailedPrecondition
from linerd.runtime.stdio import OpenedStdio

# Variables a daemon may carry that must not reach conmon and the runtime: under systemd
# (Type=notify) runc would otherwise proxy NOTIFY_SOCKET into the container and wait for it.
_STRIP_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIP_ENV and not k.startswith("_OCI")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def monitor_env() -> dict[str, str]:
    """conmon's environment: the runtime's (`clean_env`), tuned for one conmon per container,
    each of which keeps ~0.33 MB of private memory for as long as its container lives.

    - No locale: conmon's setlocale(LC_ALL, "") loads the named locale (with glibc's alias
      table) into its heap, ~9 kB per conmon, for nothing: conmon copies the container's
      output as bytes, and runc, which it runs with this environment, reads no locale. The
      container's own environment comes from its OCI spec, not from here.
    - G_SLICE=always-malloc: glib's slice allocator (before glib 2.76, which made it malloc)
      keeps its magazines and chunks on pages of their own, ~16 kB per conmon."""
    env = {
        k: v
        for k, v in clean_env().items()
        if k not in ("LANG", "LANGUAGE") and not k.startswith("LC_")
    }
    env["G_SLICE"] = "always-malloc"
    return env


class RuntimeCommandError(Exception):
    """A runtime CLI call failed; `message` is the runtime's own error text."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode


_LOGFMT_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def logged_error(log: Path) -> str:
    """The last error message in a runtime's log file ("" if none or unreadable)."""
    try:
        return runtime_message(log.read_text(errors="replace"))
    except OSError:
        return ""


def runtime_message(text: str) -> str:
    """The last error message in runtime output: JSON lines (--log-format json), logfmt
    (runc's stderr: `time=... level=error msg="..."`) or plain text."""
    msgs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                msgs.append(line)
                continue
            if isinstance(obj, dict) and obj.get("level") in ("error", "fatal", "panic"):
                msgs.append(str(obj.get("msg", "")))
            continue
        m = _LOGFMT_MSG.search(line)
        if m:
            if "level=error" in line or "level=fatal" in line or "level=" not in line:
                msgs.append(json.loads(f'"{m.group(1)}"'))
        else:
            msgs.append(line)
    return msgs[-1] if msgs else ""


def run_runtime(
    cmd: list[str], *args: str, input: bytes | None = None, timeout: float = 60.0
) -> bytes:
    """Run `<runtime> [global args] <args>`; raise RuntimeCommandError with its message."""
    try:
        res = subprocess.run(
            [*cmd, *args],
            input=input,
            capture_output=True,
            env=clean_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise DeadlineExceeded(f"{cmd[0]} {args[0]} timed out after {timeout}s") from e
    except FileNotFoundError as e:
        raise FailedPrecondition(f"runtime binary {cmd[0]} not found") from e
    if res.returncode != 0:
        text = res.stderr.decode(errors="replace")
        msg = runtime_message(text) or f"{args[0]} exited with {res.returncode}"
        raise RuntimeCommandError(msg, res.returncode)
    return res.stdout


@dataclass(slots=True)
class Spawned:
    pid: int
    conmon_pid: int
    sync_fd: int  # read end of the sync pipe; -1 once closed


def read_pidfile(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def readable(fd: int, timeout: float | None) -> bool:
    """Wait until `fd` is readable (or hung up), up to `timeout` seconds (None: forever).
    poll, not select: with a few hundred containers the daemon's fds pass FD_SETSIZE (1024),
    which select refuses."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))


def _read_line(fd: int, deadline: float, keep_rest: bool = True) -> bytes:
    """One line from the sync pipe, b"" on EOF. With `keep_rest`, reads byte-wise so nothing
    after the line is lost; without (the pipe is closed after the line), in one read as a
    rule (the monitor writes its line in one write)."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("timed out waiting for the monitor to report")
        if not readable(fd, left):
            continue
        b = os.read(fd, 1 if keep_rest else 4096)
        if not b:
            break
        buf += b
    return buf.partition(b"\n")[0] + b"\n" if b"\n" in buf else buf


def spawn(
    argv: list[str],
    stdio: OpenedStdio | None,
    runtime_log: Path,
    conmon_pidfile: Path,
    timeout: float,
    keep_sync: bool = False,
    cwd: Path | None = None,
    attach: Callable[[float], None] | None = None,
) -> Spawned:
    """Start conmon, release it with the start byte and read its first sync line.

    Raises FailedPrecondition with the runtime's message when the create/exec failed. The
    sync pipe's read end is kept open (returned) when `keep_sync`: for `--exec` conmon writes
    the exit code there later, and a closed pipe would give it EPIPE.

    `attach` (argv must have `--exec-attach`): conmon's exec-attach handshake. After the first
    start byte conmon reports `{"data": 0}` on the attach pipe once its attach socket listens;
    `attach(seconds_left)` then connects to it, and only the second start byte lets conmon run
    the runtime's `exec`, so no output is written before the client is attached. When `attach`
    fails, conmon is killed before it runs anything.
    """
    sync_r, sync_w = os.pipe()
    start_r, start_w = os.pipe()
    attach_r, attach_w = os.pipe() if attach is not None else (-1, -1)
    env = monitor_env()
    env["_OCI_SYNCPIPE"] = str(sync_w)
    env["_OCI_STARTPIPE"] = str(start_r)
    if attach is not None:
        env["_OCI_ATTACHPIPE"] = str(attach_w)
    devnull = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdio.stdin if stdio and stdio.stdin is not None else devnull,
            stdout=stdio.stdout if stdio and stdio.stdout is not None else devnull,
            stderr=stdio.stderr if stdio and stdio.stderr is not None else devnull,
            pass_fds=tuple(fd for fd in (sync_w, start_r, attach_w) if fd >= 0),
            env=env,
            # conmon writes some files (the v1 "oom" marker) relative to its cwd, as CRI-O and
            # Podman start it in the bundle.
            cwd=cwd,
            close_fds=True,
        )
    except OSError as e:
        for fd in (sync_r, sync_w, start_r, start_w, attach_r, attach_w):
            if fd >= 0:
                os.close(fd)
        raise FailedPrecondition(f"cannot start monitor {argv[0]}: {e}") from e
    os.close(sync_w)
    os.close(start_r)
    if attach_w >= 0:
        os.close(attach_w)
    deadline = time.monotonic() + timeout
    keep = False
    try:
        # A cgroup move of the monitor (under systemd) would go here, before it forks.
        os.write(start_w, b"1")
        if attach is not None:
            _attach_handshake(proc, attach_r, attach, conmon_pidfile, deadline)
            os.write(start_w, b"1")  # the second byte: conmon runs `<runtime> exec` now
        os.close(start_w)
        start_w = -1
        line = _read_line(sync_r, deadline, keep_rest=keep_sync)
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        data: int | None = None
        message = ""
        if line:
            try:
                obj = json.loads(line)
                data = int(obj.get("data"))
                message = str(obj.get("message", "") or "")
            except (ValueError, TypeError, AttributeError):
                message = line.decode(errors="replace").strip()
        if data is None or data < 0:
            raise FailedPrecondition(
                logged_error(runtime_log)
                or runtime_message(message)
                or message
                or f"monitor exited ({proc.returncode}) without reporting a pid"
            )
        keep = keep_sync
        return Spawned(pid=data, conmon_pid=read_pidfile(conmon_pidfile), sync_fd=sync_r)
    finally:
        if start_w >= 0:
            os.close(start_w)
        if attach_r >= 0:
            os.close(attach_r)
        if not keep:
            os.close(sync_r)


def _attach_handshake(
    proc: subprocess.Popen[bytes],
    attach_r: int,
    attach: Callable[[float], None],
    conmon_pidfile: Path,
    deadline: float,
) -> None:
    """Wait for conmon's `{"data": 0}` on the attach pipe, then call `attach`. On EOF (conmon
    failed before listening) return: the sync pipe then tells what happened. On any other
    failure kill conmon, which is still waiting for the second start byte, and re-raise."""
    try:
        line = _read_line(attach_r, deadline)
        if not line:
            return
        try:
            ok = json.loads(line).get("data") == 0
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise FailedPrecondition(f"monitor: unexpected attach message {line!r}")
        attach(max(0.1, deadline - time.monotonic()))
    except BaseException:
        # The first conmon process exits right after writing its pidfile (double fork).
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_monitor(conmon_pidfile, wait=0.0)
        raise


def stop_monitor(conmon_pidfile: Path, wait: float = 2.0) -> None:
    """After a failed create: give conmon `wait` seconds to exit by itself, then SIGKILL it
    (and wait up to 2 s for it to be gone)."""
    pid = read_pidfile(conmon_pidfile)
    if pid <= 0:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if not is_monitor(pid, conmon_pidfile.parent):
            return
        if not readable(pidfd, wait):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            readable(pidfd, 2.0)
    finally:
        os.close(pidfd)


def is_monitor(pid: int, bundle: Path) -> bool:
    """Is `pid` a conmon whose bundle (-b) is `bundle`? Guards against pid reuse."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not args or not os.path.basename(args[0]).startswith(b"conmon"):
        return False
    b = os.fsencode(str(bundle))
    return any(args[i] == b"-b" and args[i + 1] == b for i in range(len(args) - 1))
