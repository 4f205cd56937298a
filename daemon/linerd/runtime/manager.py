"""TaskRuntime: runs OCI bundles through any runc-compatible runtime, one conmon per process.

State layout (all under the daemon's state dir; nothing else on the host is touched):

    <state>/runtime/<runtime-name>/<namespace>/   the runtime's --root (its own state)
    <state>/s/<uuid>                              conmon's socket-dir symlink → the process dir
    <state>/logs/<namespace>/<id>.log             output of a task created without stdio
    <state>/tasks/<namespace>/<id>/               the bundle:
        meta.json      what a restarted daemon needs (runtime command, stdio, uuid, pids)
        config.json    the OCI spec
        rootfs/        mount point of the task's rootfs mounts
        pidfile conmon.pid runtime.log
        exit/<id>      exit code written by conmon (mtime = exit time)
        persist/oom    written by conmon on an OOM kill
        x/<exec-id>/   one per exec: meta.json process.json pidfile conmon.pid exit/<id>

Logs: a task created with no stdio at all (no stdin, stdout, stderr, terminal: a detached
`liner run -d`, `ctr run -d --null-io`) keeps its output in its container's log file, written
by conmon in the CRI format (`<RFC 3339 time> <stdout|stderr> <P|F> <text>`; P = part of a
longer line) and started afresh once it would pass `log_size_max`. linerd never reads or
writes it; the file outlives tasks and daemon restarts, until `remove_log`. A caller may name
the log file instead (`create(log_path=...)`, the CRI's containers at kubelet's path): no size
cap then (its owner rotates it and calls `reopen_log`), synced at exit, with a TTY too.

Exit tracking: one inotify fd (IN_MOVED_TO on every exit dir; conmon writes exit files by
rename) plus a pidfd per live conmon, both registered with the event loop. A conmon that is gone
without an exit file means the exit code is lost: the process is reported STOPPED with status
255 and `monitor_lost`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import termios
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from linerd import faults
from linerd import mounts as mountlib
from linerd.core.types import Mount
from linerd.errdefs import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from linerd.runtime import cgroups, runcstate
from linerd.runtime.conmon import (
    RuntimeCommandError,
    Spawned,
    clean_env,
    is_monitor,
    logged_error,
    read_pidfile,
    run_runtime,
    spawn,
    stop_monitor,
)
from linerd.runtime.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_IGNORED, IN_MOVED_TO, Inotify
from linerd.runtime.stdio import OpenedStdio, open_stdio, reopen_held
from linerd.runtime.tty import TtyRelay
from linerd.runtime.types import (
    ExitInfo,
    PidInfo,
    ProcessState,
    RuntimeConfig,
    TaskMetrics,
    TaskStatus,
)

log = structlog.get_logger("linerd.runtime")

RUNC = RuntimeConfig("/usr/sbin/runc", name="runc")
_ID = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
MONITOR_LOST_STATUS = 255
DEFAULT_LOG_SIZE_MAX = 10 << 20

ExitCallback = Callable[[str, str, str, int, int, datetime], Awaitable[None] | None]
OomCallback = Callable[[str, str], Awaitable[None] | None]


def _validate_id(kind: str, value: str) -> None:
    if not value or len(value) > 76 or not _ID.match(value):
        raise InvalidArgument(f"invalid {kind} {value!r}")


def _now() -> datetime:
    return datetime.now(UTC)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _mounted_under(path: Path) -> list[str]:
    """Mount points at or below `path` (from mountinfo: bind mounts fool os.path.ismount)."""
    prefix = str(path).rstrip("/")
    needle = mountlib.escape_mountinfo(prefix)
    res = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if needle not in line:  # a node's hundreds of other mounts: no parsing
            continue
        mp = mountlib.unescape_mountinfo(line.split()[4])
        if mp == prefix or mp.startswith(prefix + "/"):
            res.append(mp)
    return res


def _remove_dir(path: Path) -> None:
    """rmtree, but never across a mount: a still-mounted rootfs must not be emptied."""
    if not path.exists():
        return
    if left := _mounted_under(path):
        raise Internal(f"refusing to remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


@dataclass(eq=False)
class _Proc:
    """The init process of a task (`exec_id == ""`) or one exec."""

    task: _Task
    exec_id: str
    dir: Path
    uuid: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    log_path: str = ""  # conmon's k8s-file log (a task without stdio), else passthrough
    kept_log: bool = False  # log_path is the caller's (the CRI's), not the state dir's
    stdin_pipe: bool = False  # with kept_log: conmon opens a stdin pipe for attach
    stdin_once: bool = False  # and closes it when the first attached client goes
    pid: int = 0
    conmon_pid: int = 0
    started: bool = False
    exit: ExitInfo | None = None
    monitor_lost: bool = False
    stdio: OpenedStdio | None = None
    relay: TtyRelay | None = None
    sync_fd: int = -1
    pidfd: int = -1  # conmon's (a direct exec's: its `runtime exec`'s)
    # A direct exec (`exec(direct=True)`): `runtime exec` is linerd's own child and waits for
    # the process itself; no conmon, no exit file.
    direct: bool = False
    runner: subprocess.Popen[bytes] | None = None
    runner_code: int | None = None  # its exit code once reaped
    pid_event: asyncio.Event | None = None  # while starting: the pid file or the runner's exit
    proc_pidfd: int = -1  # the exec'd process (race-free kill)
    winsize: tuple[int, int] | None = None  # (rows, cols): the last ResizePty (TTY only)
    ctl_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one ctl line at a time
    wds: list[int] = field(default_factory=list)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    monitor_done: asyncio.Event = field(default_factory=asyncio.Event)
    # (what of a ProcessState can change, that state): the same state object while nothing
    # of it changed, so a Tasks/List of hundreds builds none (and its answer's per-task
    # serializations, kept by state object, are reused).
    shown: tuple[tuple[Any, ...], ProcessState] | None = None

    @property
    def exit_file(self) -> Path:
        return self.dir / "exit" / self.task.id

    def status(self) -> TaskStatus:
        if self.exit is not None:
            return TaskStatus.STOPPED
        if not self.exec_id and self.task.paused:
            return TaskStatus.PAUSED
        return TaskStatus.RUNNING if self.started else TaskStatus.CREATED

    def meta(self) -> dict[str, Any]:
        return {
            "exec_id": self.exec_id,
            "uuid": self.uuid,
            "stdin": self.stdin,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "terminal": self.terminal,
            "log_path": self.log_path,
            "kept_log": self.kept_log,
            "pid": self.pid,
            "conmon_pid": self.conmon_pid,
        }


@dataclass(eq=False)
class _Task:
    namespace: str
    id: str
    bundle: Path
    cmd: list[str]  # runtime executable + its global args (incl. --root)
    mounts: int = 0
    paused: bool = False
    init: _Proc = field(init=False)
    execs: dict[str, _Proc] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runtime_deleted: bool = False  # the runtime's state is gone (deleted once init exited)

    def proc(self, exec_id: str) -> _Proc:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"process {exec_id} not found") from None


class TaskRuntime:
    """Creates, runs and tracks tasks. All public methods are coroutines on one event loop;
    blocking work (spawning, FIFO opens, runtime CLI calls, mounts) runs in worker threads."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        conmon: str = "/usr/bin/conmon",
        stdio_timeout: float = 10.0,
        create_timeout: float = 60.0,
        log_size_max: int = DEFAULT_LOG_SIZE_MAX,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.conmon = conmon
        self.stdio_timeout = stdio_timeout
        self.create_timeout = create_timeout
        # Bytes a container log may reach before conmon starts it afresh; 0 = no cap. Read at
        # each create, so a reload applies to the tasks created after it.
        self.log_size_max = log_size_max
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._creating: set[tuple[str, str]] = set()
        self._exit_cbs: list[ExitCallback] = []
        self._oom_cbs: list[OomCallback] = []
        self._ino: Inotify | None = None
        self._wds: dict[int, tuple[_Proc, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bg: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ paths and plumbing

    @property
    def sock_dir(self) -> Path:
        return self.state_dir / "s"

    def bundle_dir(self, namespace: str, id: str) -> Path:
        return self.state_dir / "tasks" / namespace / id

    def runtime_root(self, runtime: RuntimeConfig, namespace: str) -> Path:
        return self.state_dir / "runtime" / runtime.key / namespace

    def log_path(self, namespace: str, id: str) -> Path:
        """Where a container's tasks without stdio write their output."""
        return self.state_dir / "logs" / namespace / f"{id}.log"

    async def remove_log(self, namespace: str, container_id: str) -> None:
        """Remove a container's log file (when its record is deleted); nothing if none."""
        await asyncio.to_thread(self.remove_log_sync, namespace, container_id)

    def remove_log_sync(self, namespace: str, container_id: str) -> None:
        """`remove_log`, on the caller's thread (the database thread once a container's
        delete committed: no thread hop of its own). Blocks."""
        _validate_id("namespace", namespace)
        _validate_id("container id", container_id)
        path = self.log_path(namespace, container_id)
        # `.tmp`: conmon's new file for a moment while it starts the log afresh.
        for p in (path, path.with_name(path.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def attach_socket(self, namespace: str, id: str, exec_id: str = "") -> Path:
        """conmon's attach socket of a process. A client gets its output (frames of one
        stream byte, 2 stdout or 3 stderr, then data) when conmon holds it: a TTY process, or
        a task without stdio (logged); what a client writes is its stdin, for a TTY or a task
        created with `stdin_pipe`. TTY resizes go through `resize_pty`."""
        p = self._get(namespace, id).proc(exec_id)
        return self.sock_dir / p.uuid / "attach"

    def on_exit(self, cb: ExitCallback) -> None:
        """cb(namespace, id, exec_id, pid, exit_status, exited_at) after every observed exit
        (not for exits that happened while the daemon was down: recover_all reports those)."""
        self._exit_cbs.append(cb)

    def on_oom(self, cb: OomCallback) -> None:
        """cb(namespace, id) when conmon reports an OOM kill in the task's cgroup."""
        self._oom_cbs.append(cb)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._ino = Inotify()
            self._loop.add_reader(self._ino.fd, self._on_inotify)
        return self._loop

    async def close(self) -> None:
        """Stop tracking (daemon shutdown). Containers and their monitors keep running."""
        for task in list(self._tasks.values()):
            for p in [task.init, *task.execs.values()]:
                self._release(p)
        self._tasks.clear()
        if self._loop is not None and self._ino is not None:
            self._loop.remove_reader(self._ino.fd)
            self._ino.close()
        self._ino, self._loop = None, None
        self._wds.clear()

    def _release(self, p: _Proc) -> None:
        """Drop every fd and watch the daemon holds for a process."""
        if p.pidfd >= 0 and self._loop is not None:
            self._loop.remove_reader(p.pidfd)
        for attr in ("pidfd", "proc_pidfd", "sync_fd"):
            fd = getattr(p, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(p, attr, -1)
        if p.stdio is not None:
            p.stdio.close_all()
        if p.relay is not None:
            p.relay.stop()
        for wd in p.wds:
            self._wds.pop(wd, None)
            if self._ino is not None:
                self._ino.rm_watch(wd)
        p.wds.clear()

    def _get(self, namespace: str, id: str) -> _Task:
        try:
            return self._tasks[(namespace, id)]
        except KeyError:
            raise NotFound(f"task {id} not found") from None

    def _spawn_bg(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # ------------------------------------------------------------------ exit tracking

    def _track(self, p: _Proc, persist: Path | None = None) -> None:
        """Watch the exit dir (and the persist dir for OOM) and hold a pidfd on conmon. Then
        look at the exit file once: an exit before the watch existed is not lost."""
        loop = self._ensure_loop()
        if p.direct:
            self._track_direct(p)
            return
        assert self._ino is not None
        watches = [(p.exit_file.parent, IN_MOVED_TO | IN_CLOSE_WRITE, "exit")]
        if persist is not None:
            # conmon creates "oom" empty (open+close, no write): IN_CREATE is the event.
            watches.append((persist, IN_CREATE | IN_MOVED_TO, "persist"))
        for path, mask, kind in watches:
            try:
                wd = self._ino.add_watch(str(path), mask)
            except OSError as e:
                # Out of watches: the pidfd below still reports the exit when conmon ends.
                log.warning("cannot watch", path=str(path), error=str(e))
                continue
            self._wds[wd] = (p, kind)
            p.wds.append(wd)
        if p.pid > 0 and p.proc_pidfd < 0 and p.exit is None:
            # conmon is the process's parent (subreaper) and reaps it only right before it
            # writes the exit file, so while that file is missing the pid is still ours.
            with contextlib.suppress(OSError):
                p.proc_pidfd = os.pidfd_open(p.pid)
        if p.conmon_pid > 0 and p.pidfd < 0:
            try:
                p.pidfd = os.pidfd_open(p.conmon_pid)
            except ProcessLookupError:
                p.monitor_done.set()
            else:
                if is_monitor(p.conmon_pid, p.dir):
                    loop.add_reader(p.pidfd, self._on_monitor_gone, p)
                else:  # pid reused: our conmon is long gone
                    os.close(p.pidfd)
                    p.pidfd = -1
                    p.monitor_done.set()
        if not self._check_exit(p) and p.monitor_done.is_set():
            self._set_exit(p, MONITOR_LOST_STATUS, _now(), lost=True)

    def _track_direct(self, p: _Proc) -> None:
        """A started direct exec: its runner reaps the process and then exits at once, so its
        pid is taken while the runner's exit is not yet seen; that exit is the process's."""
        if p.runner_code is not None:
            self._set_direct_exit(p)
            return
        with contextlib.suppress(OSError):
            p.proc_pidfd = os.pidfd_open(p.pid)

    def _on_runner_exit(self, p: _Proc) -> None:
        assert self._loop is not None and p.runner is not None
        self._loop.remove_reader(p.pidfd)
        os.close(p.pidfd)
        p.pidfd = -1
        p.runner_code = p.runner.wait()  # exited: no wait
        p.runner = None
        if p.started:
            self._set_direct_exit(p)
        elif p.pid_event is not None:
            p.pid_event.set()  # the start decides: a pid file, or a failed start

    def _set_direct_exit(self, p: _Proc) -> None:
        code = p.runner_code
        assert code is not None
        p.monitor_done.set()
        # The runtime exits with the process's status (128 + signal if it was killed); a
        # negative code is the runtime itself killed by a signal.
        self._set_exit(p, code if code >= 0 else 128 - code, _now())

    def _on_inotify(self) -> None:
        assert self._ino is not None
        for wd, mask, name in self._ino.read():
            entry = self._wds.get(wd)
            if entry is None:
                continue
            if mask & IN_IGNORED:
                self._wds.pop(wd, None)
                continue
            p, kind = entry
            if kind == "exit" and name == p.task.id:
                self._check_exit(p)
            elif kind == "pid" and p.pid_event is not None:
                p.pid_event.set()
            elif kind == "persist" and name == "oom":
                task = p.task
                log.info("task oom", namespace=task.namespace, id=task.id)
                for cb in self._oom_cbs:
                    self._call(cb, task.namespace, task.id)

    def _on_monitor_gone(self, p: _Proc) -> None:
        if self._loop is not None:
            self._loop.remove_reader(p.pidfd)
        os.close(p.pidfd)
        p.pidfd = -1
        p.monitor_done.set()
        # conmon renames the exit file into place before it exits, so if the file is missing
        # now, it will never come.
        if not self._check_exit(p) and p.exit is None:
            log.warning("monitor lost", namespace=p.task.namespace, id=p.task.id, exec_id=p.exec_id)
            self._set_exit(p, MONITOR_LOST_STATUS, _now(), lost=True)

    def _check_exit(self, p: _Proc) -> bool:
        if p.exit is not None:
            return True
        try:
            st = p.exit_file.stat()
            text = p.exit_file.read_text().strip()
        except FileNotFoundError:
            return False
        try:
            status = int(text)
        except ValueError:
            status = MONITOR_LOST_STATUS
        self._set_exit(p, status, datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC))
        return True

    def _set_exit(self, p: _Proc, status: int, at: datetime, lost: bool = False) -> None:
        if p.exit is not None:
            return
        p.exit = ExitInfo(p.pid, status, at)
        p.monitor_lost = lost
        if not p.exec_id:
            p.task.paused = False
        if p.stdio is not None:
            # The process is gone: our extra FIFO ends have nothing left to protect.
            p.stdio.close_held()
        if p.relay is not None:
            self._spawn_bg(self._finish_exit(p))
        else:
            self._announce_exit(p)

    async def _finish_exit(self, p: _Proc) -> None:
        # TTY: the relay copies the last pty output into the stdout FIFO; wait answers after.
        assert p.relay is not None
        await asyncio.to_thread(p.relay.drain, 2.0)
        self._announce_exit(p)

    def _announce_exit(self, p: _Proc) -> None:
        p.exited.set()
        assert p.exit is not None
        t = p.task
        if not p.exec_id and not p.monitor_lost:
            self._spawn_bg(self._delete_stopped(t))
        for cb in self._exit_cbs:
            self._call(
                cb, t.namespace, t.id, p.exec_id, p.pid, p.exit.exit_status, p.exit.exited_at
            )

    def _call(self, cb: Callable[..., Any], *args: Any) -> None:
        try:
            res = cb(*args)
        except Exception:
            log.exception("runtime callback failed")
            return
        if inspect.isawaitable(res):
            self._spawn_bg(res)

    # ------------------------------------------------------------------ create / start

    def _conmon_argv(self, task: _Task, p: _Proc, *, exec_spec: Path | None = None) -> list[str]:
        argv = [
            self.conmon,
            "--api-version", "1",
            "-c", task.id,
            "-u", p.uuid,
            "-n", task.id,
            "-r", task.cmd[0],
            "-b", str(p.dir),
            "-p", str(p.dir / "pidfile"),
            "-P", str(p.dir / "conmon.pid"),
            "--exit-dir", str(p.dir / "exit"),
            "--socket-dir-path", str(self.sock_dir),
            "--log-level", "warn",
        ]  # fmt: skip
        # The runtime's errors go to its JSON log, so create failures come back as a message
        # (in passthrough mode its stderr is the client's FIFO).
        for a in [*task.cmd[1:], "--log", str(p.dir / "runtime.log"), "--log-format", "json"]:
            argv += ["--runtime-arg", a]
        if p.terminal and p.log_path and p.kept_log:
            # A CRI TTY container: conmon holds the pty and writes what it reads to the log.
            argv += ["-t", "-l", f"k8s-file:{p.log_path}", *self._stdin_args(p)]
        elif p.terminal:
            # conmon takes the pty master; linerd relays the attach socket to the client FIFOs.
            argv += ["-t", "-i", "-l", "none"]
        elif p.log_path and p.kept_log:
            # The caller's log file (kubelet's): its owner rotates it, so no size cap.
            argv += ["-l", f"k8s-file:{p.log_path}", *self._stdin_args(p)]
        elif p.log_path:
            # The log lives in the state dir (gone at reboot): syncing it at exit buys nothing.
            argv += ["-l", f"k8s-file:{p.log_path}", "--no-sync-log"]
            argv += self._stdin_args(p)
            if self.log_size_max > 0:
                argv += ["--log-size-max", str(self.log_size_max)]
        else:
            argv += ["-l", "passthrough"]
            if p.stdin:
                argv += ["-i"]
        if exec_spec is not None:
            argv += ["--exec", "--exec-process-spec", str(exec_spec)]
            if p.terminal:
                # conmon waits for a second start byte before it runs `<runtime> exec`, so the
                # relay is on the attach socket before the process writes anything.
                argv += ["--exec-attach"]
        else:
            argv += ["--persist-dir", str(p.dir / "persist")]
        return argv

    @staticmethod
    def _stdin_args(p: _Proc) -> list[str]:
        if not p.stdin_pipe:
            return []
        # conmon closes the process's stdin when an attached client detaches, unless told
        # to keep it (the CRI's stdin without stdin_once).
        return ["-i"] if p.stdin_once else ["-i", "--leave-stdin-open"]

    async def create(
        self,
        namespace: str,
        id: str,
        bundle_spec: dict[str, Any],
        rootfs_mounts: list[Mount],
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        runtime: RuntimeConfig = RUNC,
        *,
        log_path: str = "",
        stdin_pipe: bool = False,
        stdin_once: bool = False,
    ) -> int:
        """Create the task's init process (runtime `create`: not started). Returns its pid.

        With rootfs mounts, they are mounted in order on `<bundle>/rootfs` and the spec's
        `root.path` is set to "rootfs". On any failure nothing is left behind.

        `log_path` (absolute; no stdio then): conmon writes the output there in the CRI log
        format (with `terminal`, what the pty shows), never capped (the caller rotates it,
        then calls `reopen_log`); `stdin_pipe` gives the process a stdin pipe fed through
        conmon's attach socket (`attach_socket`; closed when the first attached client
        goes, with `stdin_once`), for a logged task: the caller's log or one without stdio."""
        _validate_id("namespace", namespace)
        _validate_id("container id", id)
        _validate_spec(bundle_spec)
        self._ensure_loop()
        key = (namespace, id)
        if key in self._tasks or key in self._creating:
            raise AlreadyExists(f"task {id}: already exists")
        if log_path and (stdin or stdout or stderr or not os.path.isabs(log_path)):
            raise InvalidArgument("a log path must be absolute and comes without stdio")
        if ":" in log_path:
            raise InvalidArgument(f"log path {log_path!r}: conmon cannot take a ':' in it")
        self._creating.add(key)
        try:
            task = await asyncio.to_thread(
                self._create_sync,
                namespace, id, bundle_spec, rootfs_mounts,
                stdin, stdout, stderr, terminal, runtime, log_path, stdin_pipe, stdin_once,
            )  # fmt: skip
            self._tasks[key] = task
        finally:
            self._creating.discard(key)
        self._track(task.init, persist=task.bundle / "persist")
        return task.init.pid

    def _create_sync(
        self,
        namespace: str,
        id: str,
        spec: dict[str, Any],
        rootfs_mounts: list[Mount],
        stdin: str,
        stdout: str,
        stderr: str,
        terminal: bool,
        runtime: RuntimeConfig,
        log_path: str = "",
        stdin_pipe: bool = False,
        stdin_once: bool = False,
    ) -> _Task:
        bundle = self.bundle_dir(namespace, id)
        if bundle.exists():
            raise AlreadyExists(f"task {id}: already exists (bundle {bundle} present)")
        root = self.runtime_root(runtime, namespace)
        task = _Task(namespace, id, bundle, [runtime.path, *runtime.args, "--root", str(root)])
        p = task.init = _Proc(task, "", bundle, uuidlib.uuid4().hex[:12], stdin, stdout, stderr,
                              terminal)  # fmt: skip
        if log_path:
            p.log_path, p.kept_log = log_path, True
            p.stdin_pipe, p.stdin_once = stdin_pipe, stdin_once
        elif not (stdin or stdout or stderr or terminal):
            path = self.log_path(namespace, id)
            if ":" in str(path):  # conmon splits its -l argument at ':'
                log.warning("no container log: the state path holds ':'", path=str(path))
            else:
                p.log_path = str(path)
                p.stdin_pipe, p.stdin_once = stdin_pipe, stdin_once
        spawned: Spawned | None = None
        try:
            if p.log_path:
                # A caller's log directory (kubelet's) as containerd makes it; ours private.
                mode = 0o755 if p.kept_log else 0o700
                Path(p.log_path).parent.mkdir(parents=True, exist_ok=True, mode=mode)
            bundle.mkdir(parents=True)
            for d in ("rootfs", "exit", "persist"):
                (bundle / d).mkdir()
            self.sock_dir.mkdir(parents=True, exist_ok=True)
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._write_meta(task, "creating")
            if not os.access(runtime.path, os.X_OK):
                raise FailedPrecondition(
                    f"runtime binary {runtime.path} not found or not executable"
                )
            if not os.access(self.conmon, os.X_OK):
                raise FailedPrecondition(f"monitor binary {self.conmon} not found")
            spec = dict(spec)
            if rootfs_mounts:
                spec["root"] = {**spec.get("root", {}), "path": "rootfs"}
            (bundle / "config.json").write_text(json.dumps(spec))
            for m in rootfs_mounts:
                mountlib.mount(m, bundle / "rootfs")
                task.mounts += 1
                self._write_meta(task, "creating")
                faults.point("task-create-mounted")
            if terminal and not p.kept_log:
                p.relay = TtyRelay(self.sock_dir / p.uuid / "attach", stdin, stdout)
            else:
                p.stdio = open_stdio(stdin, stdout, stderr, self.stdio_timeout)
            spawned = spawn(
                self._conmon_argv(task, p), p.stdio, bundle / "runtime.log",
                bundle / "conmon.pid", self.create_timeout, cwd=bundle,
            )  # fmt: skip
            p.pid, p.conmon_pid = spawned.pid, spawned.conmon_pid
            faults.point("task-create-spawned")
            if p.stdio is not None:
                p.stdio.close_child_fds()  # conmon and the container have their own copies
            if p.relay is not None:
                p.relay.start(self.stdio_timeout)
            self._write_meta(task, "created")
            return task
        except BaseException:
            self._cleanup_failed(task)
            raise

    def _cleanup_failed(self, task: _Task) -> None:
        p = task.init
        if p.stdio is not None:
            p.stdio.close_all()
        if p.relay is not None:
            p.relay.stop()
        stop_monitor(task.bundle / "conmon.pid")
        with contextlib.suppress(RuntimeCommandError, FailedPrecondition, DeadlineExceeded):
            run_runtime(task.cmd, "delete", "--force", task.id, timeout=30)
        self._teardown_sync(task)

    def _teardown_sync(self, task: _Task) -> None:
        """Unmount the rootfs, remove the bundle and every socket-dir symlink."""
        for _ in range(task.mounts):
            mountlib.unmount(task.bundle / "rootfs")
        task.mounts = 0
        for p in [task.init, *task.execs.values()]:
            with contextlib.suppress(FileNotFoundError):
                (self.sock_dir / p.uuid).unlink()
        # The namespace dir stays: removing it would race a concurrent create in it.
        _remove_dir(task.bundle)

    def _write_meta(self, task: _Task, phase: str) -> None:
        _write_json(
            task.bundle / "meta.json",
            {
                "phase": phase,
                "namespace": task.namespace,
                "id": task.id,
                "cmd": task.cmd,
                "mounts": task.mounts,
                **task.init.meta(),
            },
        )

    async def start(self, namespace: str, id: str) -> int:
        """Start the created init process (runtime `start`). Returns its pid."""
        task = self._get(namespace, id)
        p = task.init
        async with task.lock:
            if p.exit is not None:
                raise FailedPrecondition(f"task {id}: process already finished")
            if p.started:
                raise FailedPrecondition(f"task {id}: already started")
            # Shielded: a client that goes away mid-start must not leave a started process
            # that we think is only created.
            await asyncio.shield(self._start_init(task))
        return p.pid

    async def _start_init(self, task: _Task) -> None:
        fifo = runcstate.exec_fifo(task.cmd, task.id)
        if fifo is None or not await self._release_by_exec_fifo(task.init, fifo):
            await self._runtime(task, "start", task.id)
        faults.point("task-start")
        task.init.started = True

    async def _release_by_exec_fifo(self, p: _Proc, fifo: Path) -> bool:
        """What `runc start` does, without running runc (~10 ms of the start): read the byte
        runc's init writes into `<root>/<id>/exec.fifo` (it blocks until a reader opens it and
        execs the process right after), then remove the fifo (runc reports a container whose
        fifo is gone as running). False when this cannot tell that the process was released
        (no fifo, init gone, init closed without writing): the runtime's `start` then decides
        and reports its own error."""
        if p.proc_pidfd < 0:
            return False
        try:
            # Non-blocking: opening the read end never waits for a writer, and an init that
            # died before opening its end shows up on the pidfd instead of hanging the open.
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        loop.add_reader(p.proc_pidfd, wake)
        try:
            # A FIFO that never had a writer reports neither data nor a hang-up: readable
            # means init wrote its byte (or closed its end); the pidfd, that init is gone.
            await asyncio.wait_for(ready, 60)
            try:
                data = os.read(fd, 16)
            except BlockingIOError:
                return False
            if not data:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fifo)
            return True
        except TimeoutError:
            raise DeadlineExceeded(
                "start: the container's init never opened its exec fifo"
            ) from None
        finally:
            loop.remove_reader(fd)
            loop.remove_reader(p.proc_pidfd)
            os.close(fd)

    async def _runtime(
        self, task: _Task, *args: str, input: bytes | None = None, timeout: float = 60.0
    ) -> bytes:
        try:
            return await asyncio.to_thread(
                run_runtime, task.cmd, *args, input=input, timeout=timeout
            )
        except RuntimeCommandError as e:
            raise FailedPrecondition(f"{args[0]}: {e.message}") from e

    # ------------------------------------------------------------------ running tasks

    async def kill(self, namespace: str, id: str, sig: int, all: bool = False) -> None:
        task = self._get(namespace, id)
        p = task.init
        if p.exit is not None:
            raise NotFound("process already finished")
        if not all and p.started and not task.paused and p.proc_pidfd >= 0:
            # What `runc kill` would do for a running init, without a runtime exec (~10 ms).
            # The pidfd is the process itself: a reused pid can never get the signal.
            try:
                signal.pidfd_send_signal(p.proc_pidfd, int(sig))
            except ProcessLookupError as e:
                raise NotFound("process already finished") from e
            return
        args = ["kill", *(["--all"] if all else []), id, str(int(sig))]
        try:
            await asyncio.to_thread(run_runtime, task.cmd, *args)
        except RuntimeCommandError as e:
            if "not running" in e.message or "does not exist" in e.message:
                raise NotFound("process already finished") from e
            raise FailedPrecondition(f"kill: {e.message}") from e

    async def wait(self, namespace: str, id: str, exec_id: str = "") -> ExitInfo:
        """Until the process exits (works before start); at once if it already has."""
        p = self._get(namespace, id).proc(exec_id)
        await p.exited.wait()
        assert p.exit is not None
        return p.exit

    def state(self, namespace: str, id: str, exec_id: str = "") -> ProcessState:
        p = self._get(namespace, id).proc(exec_id)
        return self._state(p)

    def status(self, namespace: str, id: str) -> TaskStatus:
        """The init process's status alone: what the CRI's lists ask of every container,
        without building its whole state."""
        return self._get(namespace, id).init.status()

    def _state(self, p: _Proc) -> ProcessState:
        key = (p.pid, p.started, p.exit, p.task.paused, p.monitor_lost)
        shown = p.shown
        if shown is not None and shown[0] == key:
            return shown[1]
        state = ProcessState(
            namespace=p.task.namespace,
            container_id=p.task.id,
            exec_id=p.exec_id,
            pid=p.pid,
            status=p.status(),
            exit_status=p.exit.exit_status if p.exit else 0,
            exited_at=p.exit.exited_at if p.exit else None,
            stdin=p.stdin,
            stdout=p.stdout,
            stderr=p.stderr,
            terminal=p.terminal,
            monitor_lost=p.monitor_lost,
        )
        p.shown = (key, state)
        return state

    def list_tasks(self, namespace: str | None = None) -> list[ProcessState]:
        """Init-process states of every task (of one namespace)."""
        return [
            self._state(t.init)
            for (ns, _), t in sorted(self._tasks.items())
            if namespace is None or ns == namespace
        ]

    async def delete(self, namespace: str, id: str) -> ExitInfo:
        """Tear the task down: runtime delete, unmount, remove the bundle. Refuses a running
        or paused task; a created (never started) one is killed first."""
        task = self._get(namespace, id)
        p = task.init
        async with task.lock:
            if p.status() in (TaskStatus.RUNNING, TaskStatus.PAUSED):
                raise FailedPrecondition("cannot delete a running process")
            for e in task.execs.values():
                if e.status() == TaskStatus.RUNNING:
                    raise FailedPrecondition(f"cannot delete: exec {e.exec_id} is running")
            if p.exit is None:  # CREATED: the runtime kills it; conmon then reports 137
                await self._runtime_delete(task, force=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.exited.wait(), 10)
            elif not task.runtime_deleted:
                await self._runtime_delete(task, force=p.monitor_lost)
            for q in [p, *task.execs.values()]:
                # conmon still finishes (unlinks its socket) after writing the exit file.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.monitor_done.wait(), 5)
                self._release(q)
            self._tasks.pop((namespace, id), None)
            faults.point("task-delete")
            await asyncio.to_thread(self._teardown_sync, task)
        if p.exit is None:
            p.exit = ExitInfo(p.pid, MONITOR_LOST_STATUS, _now())
        return p.exit

    async def _delete_stopped(self, task: _Task) -> None:
        """`<runtime> delete` as soon as the init process has exited, so Tasks/Delete (which
        clients call right after Wait) finds it done. Only when no exec is left: the runtime
        would kill one still running (in a container sharing the host's pid namespace).
        Any failure is left for Tasks/Delete, which runs the runtime again and reports it."""
        async with task.lock:
            if self._tasks.get((task.namespace, task.id)) is not task or task.runtime_deleted:
                return
            if any(e.status() == TaskStatus.RUNNING for e in task.execs.values()):
                return
            with contextlib.suppress(FailedPrecondition, DeadlineExceeded):
                await self._runtime_delete(task, force=False)
                task.runtime_deleted = True

    async def _runtime_delete(self, task: _Task, force: bool) -> None:
        args = ["delete", *(["--force"] if force else []), task.id]
        # conmon wrote init's exit code, so init is gone: runc's delete would only remove
        # the cgroups and its state dir, which runcstate does without a runc exec.
        exited = not force and task.init.exit is not None and not task.init.monitor_lost

        def delete() -> None:
            if not (exited and runcstate.delete_stopped(task.cmd, task.id)):
                run_runtime(task.cmd, *args)

        try:
            await asyncio.to_thread(delete)
        except RuntimeCommandError as e:
            if "does not exist" not in e.message:
                raise FailedPrecondition(f"delete: {e.message}") from e

    async def pause(self, namespace: str, id: str) -> None:
        task = self._get(namespace, id)
        async with task.lock:
            await self._runtime(task, "pause", id)
            task.paused = True

    async def resume(self, namespace: str, id: str) -> None:
        task = self._get(namespace, id)
        async with task.lock:
            await self._runtime(task, "resume", id)
            task.paused = False

    async def pids(self, namespace: str, id: str) -> list[PidInfo]:
        task = self._get(namespace, id)
        out = await self._runtime(task, "ps", "--format", "json", id)
        by_pid = {e.pid: e.exec_id for e in task.execs.values() if e.pid and e.exit is None}
        return [PidInfo(pid, by_pid.get(pid, "")) for pid in json.loads(out or b"[]") or []]

    async def update(self, namespace: str, id: str, resources: dict[str, Any]) -> None:
        """Apply OCI LinuxResources (runtime `update --resources -`)."""
        task = self._get(namespace, id)
        await self._runtime(task, "update", "--resources", "-", id,
                            input=json.dumps(resources).encode())  # fmt: skip

    async def metrics(self, namespace: str, id: str) -> TaskMetrics:
        task = self._get(namespace, id)
        if task.init.exit is not None:
            raise NotFound("process already finished")
        return await asyncio.to_thread(cgroups.read_metrics, task.init.pid)

    async def close_stdin(self, namespace: str, id: str, exec_id: str = "") -> None:
        """Close the daemon's stdin writer: the process sees EOF once the client's is closed."""
        p = self._get(namespace, id).proc(exec_id)
        if p.stdio is not None:
            p.stdio.close_stdin_writer()
        if p.relay is not None:
            p.relay.close_stdin()

    async def resize_pty(
        self, namespace: str, id: str, width: int, height: int, exec_id: str = ""
    ) -> None:
        """Resize the process's pty. Before start_exec the size is kept: the exec's pty gets it
        at creation (the process spec's consoleSize), so the process never sees another one.
        (A task's conmon and pty exist from create on, so its ctl FIFO takes a resize at once.)"""
        p = self._get(namespace, id).proc(exec_id)
        if not p.terminal or p.exit is not None:
            return  # as containerd's shim: nothing to resize
        p.winsize = (height, width)
        if p.exec_id and not p.started:
            return  # start_exec applies it
        await self._send_winsize(p, (height, width))

    async def reopen_log(self, namespace: str, id: str) -> None:
        """Have conmon reopen the task's log file at its path (after the caller renamed it
        away for rotation): the `2 0 0` line on its ctl FIFO. Returns once the file exists
        again."""
        task = self._get(namespace, id)
        p = task.init
        if not p.log_path or not p.kept_log:
            raise FailedPrecondition(f"task {id} has no log file of its caller's")
        if p.exit is not None:
            raise FailedPrecondition(f"task {id} is not running")
        async with p.ctl_lock:
            await asyncio.to_thread(_write_ctl, p.dir / "ctl", "2 0 0\n")
        path = Path(p.log_path)

        def reopened() -> bool:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if path.exists():
                    return True
                time.sleep(0.01)
            return path.exists()

        # conmon reads the FIFO on its own loop: the new file appears a moment later.
        if not await asyncio.to_thread(reopened):
            raise Internal(f"conmon did not reopen the log {path}")

    async def _send_winsize(self, p: _Proc, size: tuple[int, int]) -> None:
        async with p.ctl_lock:
            await asyncio.to_thread(_write_ctl, p.dir / "ctl", f"1 {size[0]} {size[1]}\n")

    # ------------------------------------------------------------------ exec

    async def exec(
        self,
        namespace: str,
        id: str,
        exec_id: str,
        process_spec: dict[str, Any],
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        *,
        direct: bool = False,
    ) -> None:
        """Prepare an exec (stdio opened, process.json written); start_exec runs it.

        `direct`: for a caller that waits for the exec (the CRI's ExecSync). The runtime's
        `exec` then runs as linerd's child and waits for the process itself, without a conmon
        (here ~6 ms and a fifth of the CPU less per exec). Such an exec does not outlive the
        daemon: after a restart it is gone from the task (the process runs on to its end)."""
        _validate_id("exec id", exec_id)
        if not isinstance(process_spec, dict) or not _is_args(process_spec.get("args")):
            raise InvalidArgument("process spec must have non-empty string args")
        if direct and (terminal or stdin):
            raise InvalidArgument("a direct exec has no terminal and no stdin")
        task = self._get(namespace, id)
        async with task.lock:
            if exec_id in task.execs:
                raise AlreadyExists(f"exec {exec_id}: already exists")
            if task.init.exit is not None:
                raise FailedPrecondition(f"task {id}: process already finished")
            p = _Proc(task, exec_id, task.bundle / "x" / exec_id, uuidlib.uuid4().hex[:12],
                      stdin, stdout, stderr, terminal, direct=direct)  # fmt: skip
            spec = {**process_spec, "terminal": terminal}
            await asyncio.to_thread(self._prepare_exec, p, spec)
            task.execs[exec_id] = p

    def _prepare_exec(self, p: _Proc, spec: dict[str, Any]) -> None:
        try:
            (p.dir / "exit").mkdir(parents=True)
            (p.dir / "process.json").write_text(json.dumps(spec))
            if p.terminal:
                p.relay = TtyRelay(self.sock_dir / p.uuid / "attach", p.stdin, p.stdout)
                # Open now, as for a non-TTY exec: the stdin FIFO has a reader from Exec on.
                p.relay.open_fifos(self.stdio_timeout)
            else:
                p.stdio = open_stdio(p.stdin, p.stdout, p.stderr, self.stdio_timeout)
            _write_json(p.dir / "meta.json", p.meta())
        except BaseException:
            if p.stdio is not None:
                p.stdio.close_all()
            if p.relay is not None:
                p.relay.stop()
                p.relay = None
            shutil.rmtree(p.dir, ignore_errors=True)
            raise

    async def start_exec(self, namespace: str, id: str, exec_id: str) -> int:
        task = self._get(namespace, id)
        p = task.proc(exec_id)
        async with task.lock:
            if p.started or p.exit is not None:
                raise FailedPrecondition(f"exec {exec_id}: already started")
            size = p.winsize
            try:
                if p.direct:
                    spawned = await self._start_direct(task, p)
                else:
                    spawned = await asyncio.to_thread(self._start_exec_sync, task, p, size)
            except BaseException:
                task.execs.pop(exec_id, None)
                self._release(p)
                await asyncio.to_thread(self._remove_exec_sync, p)
                raise
            p.pid, p.conmon_pid, p.sync_fd = spawned.pid, spawned.conmon_pid, spawned.sync_fd
            p.started = True
            if not p.direct:  # a direct exec's: in _track_direct, while its runner runs
                with contextlib.suppress(OSError):
                    p.proc_pidfd = os.pidfd_open(p.pid)
            self._track(p)
            if p.winsize is not None and p.winsize != size and p.exit is None:
                # A resize that came while the exec was being spawned (after process.json was
                # written). From here on resize_pty writes the ctl FIFO itself.
                with contextlib.suppress(FailedPrecondition):
                    await self._send_winsize(p, p.winsize)
            if not p.direct:  # a direct exec's meta stays "never started": a restart drops it
                await asyncio.to_thread(_write_json, p.dir / "meta.json", p.meta())
        return p.pid

    def _start_exec_sync(self, task: _Task, p: _Proc, size: tuple[int, int] | None) -> Spawned:
        spec_path = p.dir / "process.json"
        if size is not None and all(size):
            # The runtime sizes the new pty before the process starts (no ctl FIFO yet).
            spec = json.loads(spec_path.read_text())
            spec["consoleSize"] = {"height": size[0], "width": size[1]}
            _write_json(spec_path, spec)
        argv = self._conmon_argv(task, p, exec_spec=spec_path)
        relay = p.relay
        try:
            spawned = spawn(argv, p.stdio, p.dir / "runtime.log", p.dir / "conmon.pid",
                            self.create_timeout, keep_sync=True, cwd=p.dir,
                            attach=relay.connect if relay is not None else None)  # fmt: skip
        except BaseException:
            stop_monitor(p.dir / "conmon.pid")
            raise
        if p.stdio is not None:
            p.stdio.close_child_fds()
        if relay is not None:
            relay.connect(self.stdio_timeout)  # no-op: connected during the handshake
            relay.run()
        return spawned

    async def _start_direct(self, task: _Task, p: _Proc) -> Spawned:
        """Run `<runtime> exec` (not detached: it waits for the process and exits with its
        status) and return once it wrote the process's pid file, or failed. The pid file is
        awaited through the shared inotify: an inotify of its own would cost its close, which
        waits for an RCU grace period (4-16 ms here)."""
        loop = self._ensure_loop()
        assert self._ino is not None
        pidfile = p.dir / "pidfile"
        p.pid_event = asyncio.Event()
        wd = self._ino.add_watch(str(p.dir), IN_MOVED_TO | IN_CLOSE_WRITE)
        self._wds[wd] = (p, "pid")
        try:
            p.runner = await asyncio.to_thread(self._spawn_direct_sync, task, p, pidfile)
            p.pidfd = os.pidfd_open(p.runner.pid)
            loop.add_reader(p.pidfd, self._on_runner_exit, p)
            pid = 0
            try:
                async with asyncio.timeout(self.create_timeout):
                    while pid <= 0 and p.runner_code is None:
                        p.pid_event.clear()
                        pid = read_pidfile(pidfile)
                        if pid <= 0:
                            await p.pid_event.wait()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"runtime exec did not start the process in {self.create_timeout:g}s"
                ) from None
            pid = pid or read_pidfile(pidfile)  # written before the runner exited, or not
            if pid <= 0:
                raise FailedPrecondition(
                    logged_error(p.dir / "runtime.log")
                    or "runtime exec failed before the process ran"
                )
            return Spawned(pid=pid, conmon_pid=0, sync_fd=-1)
        except BaseException:
            if p.pidfd >= 0:
                loop.remove_reader(p.pidfd)
                os.close(p.pidfd)
                p.pidfd = -1
            runner, p.runner = p.runner, None
            if runner is not None:  # timed out or cancelled: it goes
                with contextlib.suppress(OSError):
                    runner.kill()
                await asyncio.to_thread(runner.wait)
            raise
        finally:
            p.pid_event = None
            self._wds.pop(wd, None)
            self._ino.rm_watch(wd)

    def _spawn_direct_sync(self, task: _Task, p: _Proc, pidfile: Path) -> subprocess.Popen[bytes]:
        argv = [*task.cmd, "--log", str(p.dir / "runtime.log"), "--log-format", "json",
                "exec", "--process", str(p.dir / "process.json"), "--pid-file", str(pidfile),
                task.id]  # fmt: skip
        stdio = p.stdio
        assert stdio is not None
        devnull = subprocess.DEVNULL
        try:
            runner = subprocess.Popen(
                argv,
                stdin=devnull,
                stdout=devnull if stdio.stdout is None else stdio.stdout,
                stderr=devnull if stdio.stderr is None else stdio.stderr,
                env=clean_env(),
                close_fds=True,
            )
        except OSError as e:
            raise FailedPrecondition(f"runtime binary {argv[0]}: {e}") from e
        stdio.close_child_fds()  # the runner and the process have their own
        return runner

    def _remove_exec_sync(self, p: _Proc) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.sock_dir / p.uuid).unlink()
        shutil.rmtree(p.dir, ignore_errors=True)

    async def kill_exec(self, namespace: str, id: str, exec_id: str, sig: int) -> None:
        p = self._get(namespace, id).proc(exec_id)
        if p.exit is not None:
            raise NotFound("process already finished")
        if not p.started:
            raise FailedPrecondition(f"exec {exec_id} is not started")
        try:
            if p.proc_pidfd >= 0:
                signal.pidfd_send_signal(p.proc_pidfd, int(sig))
            else:
                os.kill(p.pid, int(sig))
        except ProcessLookupError as e:
            raise NotFound("process already finished") from e

    async def delete_exec(self, namespace: str, id: str, exec_id: str) -> ExitInfo:
        task = self._get(namespace, id)
        p = task.proc(exec_id)
        async with task.lock:
            if p.status() == TaskStatus.RUNNING:
                raise FailedPrecondition("cannot delete a running process")
            if p.started:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.monitor_done.wait(), 5)
            task.execs.pop(exec_id, None)
            self._release(p)
            await asyncio.to_thread(self._remove_exec_sync, p)
        return p.exit or ExitInfo(0, 0, _now())

    # ------------------------------------------------------------------ restart recovery

    async def recover_all(self) -> list[ProcessState]:
        """Take over the tasks a previous daemon left in this state dir.

        Exited while we were down → STOPPED with the exit file's code and mtime; conmon alive →
        the runtime's state (created/running/paused), tracked again; conmon gone without an
        exit file → STOPPED, 255, monitor_lost. Half-created bundles are cleaned up."""
        self._ensure_loop()
        found = await asyncio.to_thread(self._scan_sync)
        res = []
        for task in found:
            if (task.namespace, task.id) in self._tasks:
                continue
            self._tasks[(task.namespace, task.id)] = task
            for p in [task.init, *task.execs.values()]:
                if p.exit is None and (p.started or not p.exec_id):
                    self._track(p, persist=task.bundle / "persist" if not p.exec_id else None)
                elif p.exit is not None:
                    p.exited.set()
                    p.monitor_done.set()
            res.append(self._state(task.init))
        return res

    def _scan_sync(self) -> list[_Task]:
        found: list[_Task] = []
        base = self.state_dir / "tasks"
        if not base.is_dir():
            return found
        for nsdir in sorted(base.iterdir()):
            for bundle in sorted(nsdir.iterdir()) if nsdir.is_dir() else []:
                try:
                    task = self._load_task(bundle)
                except Exception:
                    log.exception("cannot recover task", bundle=str(bundle))
                    continue
                if task is not None:
                    found.append(task)
        return found

    def _load_task(self, bundle: Path) -> _Task | None:
        try:
            meta = json.loads((bundle / "meta.json").read_text())
        except (OSError, ValueError):
            meta = None
        if meta is None or meta.get("phase") != "created":
            # A create interrupted by a crash: finish its cleanup.
            log.warning("removing half-created task", bundle=str(bundle))
            cmd = meta.get("cmd") if meta else None
            task = _Task(bundle.parent.name, bundle.name, bundle, cmd or [RUNC.path])
            task.init = _Proc(task, "", bundle, (meta or {}).get("uuid", "x"))
            task.mounts = (meta or {}).get("mounts", 0)
            stop_monitor(bundle / "conmon.pid")
            if cmd:
                with contextlib.suppress(Exception):
                    run_runtime(cmd, "delete", "--force", task.id, timeout=30)
            self._teardown_sync(task)
            return None
        task = _Task(meta["namespace"], meta["id"], bundle, list(meta["cmd"]),
                     mounts=int(meta.get("mounts", 0)))  # fmt: skip
        task.init = self._load_proc(task, bundle, meta)
        p = task.init
        if p.exit is None and not p.monitor_lost:
            try:
                st = json.loads(run_runtime(task.cmd, "state", task.id))
                status = st.get("status")
            except (RuntimeCommandError, ValueError):
                status = "stopped"
            p.started = status in ("running", "paused", "stopped")
            task.paused = status == "paused"
        xdir = bundle / "x"
        for d in sorted(xdir.iterdir()) if xdir.is_dir() else []:
            try:
                xmeta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                shutil.rmtree(d, ignore_errors=True)
                continue
            if not xmeta.get("conmon_pid"):  # prepared, never started: its FIFOs are gone
                shutil.rmtree(d, ignore_errors=True)
                continue
            e = self._load_proc(task, d, xmeta)
            e.started = True
            task.execs[e.exec_id] = e
        return task

    def _load_proc(self, task: _Task, d: Path, meta: dict[str, Any]) -> _Proc:
        p = _Proc(task, meta.get("exec_id", ""), d, meta["uuid"], meta.get("stdin", ""),
                  meta.get("stdout", ""), meta.get("stderr", ""), bool(meta.get("terminal")),
                  log_path=str(meta.get("log_path", "")), kept_log=bool(meta.get("kept_log")),
                  pid=int(meta.get("pid", 0)),
                  conmon_pid=int(meta.get("conmon_pid", 0)))  # fmt: skip
        if self._check_exit_sync(p):
            return p
        if not (p.conmon_pid and is_monitor(p.conmon_pid, d)):
            p.monitor_lost = True
            p.exit = ExitInfo(p.pid, MONITOR_LOST_STATUS, _now())
            return p
        if p.terminal and not p.kept_log:
            p.relay = TtyRelay(self.sock_dir / p.uuid / "attach", p.stdin, p.stdout)
            with contextlib.suppress(Exception):
                p.relay.start(1.0)
        else:
            p.stdio = reopen_held(p.stdin, p.stdout, p.stderr)
        return p

    @staticmethod
    def _check_exit_sync(p: _Proc) -> bool:
        try:
            st = p.exit_file.stat()
            status = int(p.exit_file.read_text().strip())
        except FileNotFoundError:
            return False
        except ValueError:
            status = MONITOR_LOST_STATUS
            st = p.exit_file.stat()
        p.exit = ExitInfo(p.pid, status, datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC))
        return True


def _is_args(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(a, str) for a in v)


def _validate_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise InvalidArgument("spec must be a JSON object")
    proc = spec.get("process")
    if not isinstance(proc, dict) or not _is_args(proc.get("args")):
        raise InvalidArgument("spec: process.args must be a non-empty list of strings")
    root = spec.get("root")
    if root is not None and not (isinstance(root, dict) and isinstance(root.get("path"), str)):
        raise InvalidArgument("spec: root.path must be a string")


def _write_ctl(path: Path, line: str, settle: float = 0.5) -> None:
    """Write one line to conmon's ctl FIFO and wait (up to `settle` seconds) until conmon has
    read it: it applies a resize right after the read, so a `start` that follows finds the pty
    resized. Waiting also matters because conmon (2.1.6 and later) parses only the first line
    of each read: two lines in the FIFO at once would lose the second. Callers serialize."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FailedPrecondition(f"cannot resize: {e}") from e
    try:
        deadline = time.monotonic() + settle
        _fifo_drained(fd, deadline)
        os.write(fd, line.encode())
        _fifo_drained(fd, deadline + settle)
    except OSError as e:
        raise FailedPrecondition(f"cannot resize: {e}") from e
    finally:
        os.close(fd)


def _fifo_drained(fd: int, deadline: float) -> bool:
    buf = array.array("i", [0])
    while True:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        if buf[0] == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
