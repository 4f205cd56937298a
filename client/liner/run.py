"""`liner run` and `liner tasks exec`: the client side of running a process, as ctr does it.

The container is made here: the image's manifest and config are read from the content store,
the OCI spec is generated with the shared generator (liner_common.ocispec: containerd's
defaults), the writable snapshot is prepared on top of the image's chain, and the container
record is created, all under one lease. Stdio goes through FIFOs this process creates in a
fresh 0700 directory and holds open; linerd's runtime opens the other ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from liner.client import (
    AnyValue,
    Client,
    Container,
    ExitStatus,
    LinerClientError,
    Mount,
    TaskStatus,
    runc_options,
)
from liner.common import DEFAULT_RUNTIME, SPEC_URL, RunError
from liner.errors import AlreadyExists, NotFound
from liner.format import rfc3339
from liner.images import Documents
from liner_common import errors as spec_errors
from liner_common import ocispec as oci
from liner_common.imagespec import chain_ids
from liner_common.labels import GC_EXPIRE, STOP_SIGNAL
from liner_common.platforms import host_platform

FIFO_ROOT = "/run/liner/fifo"
FIFO_PREFIX = "liner-"
# Signals a non-terminal `run`/`exec` forwards to the process (ctr forwards every signal).
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
_STOPPING = (signal.SIGINT, signal.SIGTERM)
_COPY = 32 * 1024


# -- argument formats -------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """`64m`, `1g`, `512k`, `1048576` (binary units, as docker's --memory). ValueError if bad."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size {text!r}: want e.g. 64m, 1g or a number of bytes")
    size = int(float(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()])
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return size


def parse_signal(text: str) -> int:
    """`KILL`, `SIGKILL`, `sigterm` or `9`. ValueError if bad."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if not 0 < number < signal.NSIG:
            raise ValueError(f"invalid signal {text!r}")
        return number
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None


@dataclass(frozen=True, slots=True)
class MountSpec:
    type: str
    source: str
    destination: str
    options: tuple[str, ...]


def parse_mount(text: str) -> MountSpec:
    """ctr's `type=bind,src=/a,dst=/b,options=rbind:ro` (also source=, destination=/target=)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ValueError(f"invalid mount {text!r}: want type=bind,src=PATH,dst=PATH[,...]")
        fields[key] = value
    type_ = fields.pop("type", "bind") or "bind"
    source = fields.pop("src", "") or fields.pop("source", "")
    destination = fields.pop("dst", "") or fields.pop("destination", "") or fields.pop("target", "")
    options = tuple(o for o in fields.pop("options", "").split(":") if o)
    for key in ("src", "source", "dst", "destination", "target"):
        fields.pop(key, None)
    if fields:
        raise ValueError(f"invalid mount {text!r}: unknown keys {', '.join(sorted(fields))}")
    if not destination or not destination.startswith("/"):
        raise ValueError(f"invalid mount {text!r}: dst must be an absolute path")
    if type_ == "bind":
        if not source:
            raise ValueError(f"invalid mount {text!r}: a bind mount needs src")
        source = os.path.abspath(source)
        if not os.path.exists(source):
            raise ValueError(f"invalid mount {text!r}: {source} does not exist")
        if not options:
            options = ("rbind", "rw")
    return MountSpec(type_, source or type_, destination, options)


def read_env_file(path: str) -> list[str]:
    """KEY=VALUE lines; blank lines and `#` comments skipped; a bare KEY takes our value."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "=" not in line:
                if line.strip() in os.environ:
                    entries.append(f"{line.strip()}={os.environ[line.strip()]}")
                continue
            if line.startswith("="):
                raise ValueError(f"{path}:{number}: want KEY=VALUE")
            entries.append(line)
    return entries


# -- the image --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageSetup:
    name: str
    config: dict[str, Any]  # the image config's `config` object (Entrypoint, Cmd, Env, ...)
    top_chain: str  # "" for an image without layers


def image_setup(client: Client, name: str) -> ImageSetup:
    image = client.get_image(name)
    docs = Documents(client)
    found = docs.manifest_for(image.target, host_platform())
    if found is None:
        raise RunError(f"image {name!r}: no manifest for {host_platform()} in the content store")
    _, manifest = found
    config_desc = manifest.get("config")
    digest = config_desc.get("digest") if isinstance(config_desc, dict) else None
    doc = docs.get(digest) if isinstance(digest, str) else None
    if not isinstance(doc, dict):
        raise RunError(f"image {name!r}: its config is not in the content store")
    rootfs = doc.get("rootfs") if isinstance(doc.get("rootfs"), dict) else {}
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise RunError(f"image {name!r}: invalid rootfs.diff_ids in its config")
    chain = chain_ids(diff_ids)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    return ImageSetup(name, config, chain[-1] if chain else "")


def image_ready(client: Client, opts: RunOptions) -> bool:
    """Is the image there, with its manifest for this platform and unpacked for the
    snapshotter? (What `run --pull missing` pulls for when it is not.)"""
    try:
        image = image_setup(client, opts.image)
    except (NotFound, RunError):
        return False
    if not image.top_chain:
        return True
    try:
        client.stat_snapshot(opts.snapshotter, image.top_chain)
    except NotFound:
        return False
    return True


# -- mounting a view to read /etc/passwd ------------------------------------------------------


@contextlib.contextmanager
def mounted_readonly(mounts: Sequence[Mount]) -> Iterator[Path]:
    """Mount snapshot mounts read-only on a temp dir (as ctr does to look up users)."""
    target = Path(tempfile.mkdtemp(prefix="liner-rootfs-"))
    done = 0
    try:
        for m in mounts:
            options = [o for o in m.options if o not in ("rbind", "bind", "rw", "ro")]
            if m.type == "bind":
                _mount_cmd(["mount", "--rbind", m.source, str(target)])
                done += 1
                _mount_cmd(["mount", "-o", "remount,bind,ro", str(target)])
            else:
                _mount_cmd(
                    ["mount", "-t", m.type, "-o", ",".join([*options, "ro"]), m.source, str(target)]
                )
                done += 1
        yield target
    finally:
        for _ in range(done):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            target.rmdir()


def _mount_cmd(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RunError(f"cannot mount the image to look up users: {done.stderr.strip()}")


# -- FIFOs ------------------------------------------------------------------------------------


def _fifo_base() -> str:
    """/run/liner/fifo when we may create it (root), else the temp dir."""
    with contextlib.suppress(OSError):
        os.makedirs(FIFO_ROOT, mode=0o700, exist_ok=True)
        if os.access(FIFO_ROOT, os.W_OK):
            return FIFO_ROOT
    return tempfile.gettempdir()


@dataclass(slots=True)
class Fifos:
    """`<dir>/<id>-stdin|stdout|stderr` in a fresh 0700 directory; "" = stream not wanted."""

    directory: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def create(cls, id: str, *, stdin: bool, stdout: bool = True, stderr: bool = True) -> Fifos:
        directory = tempfile.mkdtemp(prefix=FIFO_PREFIX, dir=_fifo_base())
        os.chmod(directory, 0o700)
        fifos = cls(directory)
        for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if wanted:
                path = os.path.join(directory, f"{id}-{name}")
                os.mkfifo(path, 0o700)
                setattr(fifos, name, path)
        return fifos

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def remove_fifo_dir(*paths: str) -> None:
    """After a task or exec is deleted: remove the FIFO directory liner made for it (the
    paths the daemon reports), never anything that does not look like one of ours."""
    for path in paths:
        if not path or "://" in path:
            continue
        directory = os.path.dirname(path)
        if not os.path.basename(directory).startswith(FIFO_PREFIX):
            continue
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(os.lstat(directory).st_mode):
                continue
            for entry in os.listdir(directory):
                if not stat.S_ISFIFO(os.lstat(os.path.join(directory, entry)).st_mode):
                    break
            else:
                shutil.rmtree(directory, ignore_errors=True)


def _clear_nonblock(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


def _stream_fd(stream: IO[bytes]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class Attachment:
    """Our ends of the FIFOs and the threads copying between them and our stdio.

    Read ends are opened before the task is created (linerd waits for a reader), the stdin
    writer after (it needs linerd's reader). Copying starts once linerd holds its ends: a FIFO
    read before any writer opened it would see EOF at once.
    """

    def __init__(
        self,
        fifos: Fifos,
        *,
        stdin: IO[bytes] | None,
        stdout: IO[bytes],
        stderr: IO[bytes],
        on_stdin_eof: Callable[[], None],
        raw_stdin_fd: int | None = None,
    ) -> None:
        self.fifos = fifos
        self._stdin = stdin
        self._raw_stdin_fd = raw_stdin_fd
        self._stdout = stdout
        self._stderr = stderr
        self._on_stdin_eof = on_stdin_eof
        self._fds: list[int] = []
        self._outputs: list[threading.Thread] = []
        self._out_fd: int | None = None
        self._err_fd: int | None = None
        self._in_fd: int | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._owners: dict[int, threading.Thread] = {}
        if fifos.stdout:
            self._out_fd = self._open(fifos.stdout, os.O_RDONLY)
        if fifos.stderr:
            self._err_fd = self._open(fifos.stderr, os.O_RDONLY)

    def _open(self, path: str, mode: int) -> int:
        fd = os.open(path, mode | os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def start(self) -> None:
        """After Tasks/Create (or Exec): start copying. The outputs stay non-blocking and are
        polled: Linux reports no hang-up on a FIFO no writer has opened yet, so a copy ends
        only after linerd's writer came and went. The stdin writer is opened as soon as linerd
        holds the read end (at Create for a task; at Start for a terminal exec)."""
        for fd, sink in ((self._out_fd, self._stdout), (self._err_fd, self._stderr)):
            if fd is not None:
                t = threading.Thread(target=self._copy_out, args=(fd, sink), daemon=True)
                self._owners[fd] = t
                t.start()
                self._outputs.append(t)
        if self.fifos.stdin:
            threading.Thread(target=self._copy_in, daemon=True).start()

    def _open_stdin_writer(self, path: str) -> int | None:
        while not self._closed.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                self._closed.wait(0.01)
                continue
            _clear_nonblock(fd)
            self._fds.append(fd)
            self._owners[fd] = threading.current_thread()
            return fd
        return None

    def _copy_out(self, fd: int, sink: IO[bytes]) -> None:
        sink_fd = _stream_fd(sink)
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            try:
                poller.poll()
                data = os.read(fd, _COPY)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                if sink_fd is not None and sink_fd in (1, 2):
                    _write_all(sink_fd, data)
                else:
                    sink.write(data)
                    sink.flush()
            except (OSError, ValueError):
                return

    def _copy_in(self) -> None:
        try:
            self._in_fd = self._open_stdin_writer(self.fifos.stdin)
        except OSError:
            return
        if self._in_fd is None:
            return
        try:
            while True:
                if self._raw_stdin_fd is not None:
                    data = os.read(self._raw_stdin_fd, _COPY)
                elif self._stdin is not None:
                    read1 = getattr(self._stdin, "read1", None)
                    data = read1(_COPY) if read1 else self._stdin.read(_COPY)
                else:
                    data = b""
                if not data or self._closed.is_set():
                    break
                _write_all(self._in_fd, data)
        except (OSError, ValueError):
            pass
        self._close_fd(self._in_fd)
        self._in_fd = None
        if not self._closed.is_set():
            with contextlib.suppress(LinerClientError):
                self._on_stdin_eof()

    def _close_fd(self, fd: int | None) -> None:
        with self._lock:
            if fd is None or fd not in self._fds:
                return
            self._fds.remove(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait for the output copies to reach EOF (the process and its monitor closed them)."""
        deadline = time.monotonic() + timeout
        for t in self._outputs:
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Close our ends, except those a copy thread is still blocked on: closing them under
        it could let it touch a reused descriptor (they go when the process exits)."""
        self._closed.set()
        busy = {fd for fd, t in self._owners.items() if t.is_alive()}
        for fd in list(self._fds):
            if fd not in busy:
                self._close_fd(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- the local terminal and signals -----------------------------------------------------------


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on `fd` in raw mode for the block; restore it however the block ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def terminal_size(*fds: int) -> tuple[int, int] | None:
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
    return None


class SignalForwarder:
    """While active: signals we receive go to the process as Tasks/Kill. SIGINT and SIGTERM
    start a grace period; if the process still runs `stop_timeout` seconds later, or a second
    one arrives, it is killed with SIGKILL. SIGWINCH (terminal mode) resizes the pty."""

    def __init__(
        self,
        client: Client,
        container_id: str,
        exec_id: str = "",
        *,
        forward: bool,
        stop_timeout: float,
        resize: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._cid = container_id
        self._exec_id = exec_id
        self._forward = forward
        self._stop_timeout = stop_timeout
        self._resize = resize
        self._saved: dict[int, Any] = {}
        self._stopping = False
        self._timer: threading.Timer | None = None
        self.finished = threading.Event()

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is not threading.main_thread():
            return self
        if self._forward:
            for sig in FORWARDED:
                self._saved[sig] = signal.signal(sig, self._handle)
        if self._resize is not None:
            self._saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._winch)
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished.set()
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def _kill(self, sig: int) -> None:
        if self.finished.is_set():
            return
        with contextlib.suppress(LinerClientError):
            self._client.kill_task(self._cid, sig, exec_id=self._exec_id)

    def _handle(self, sig: int, frame: object) -> None:
        if sig in _STOPPING and self._stopping:
            self._kill(signal.SIGKILL)
            return
        self._kill(sig)
        if sig in _STOPPING:
            self._stopping = True
            self._timer = threading.Timer(self._stop_timeout, self._kill, (signal.SIGKILL,))
            self._timer.daemon = True
            self._timer.start()

    def _winch(self, sig: int, frame: object) -> None:
        if self._resize is not None:
            with contextlib.suppress(LinerClientError):
                self._resize()


def wait_interruptibly(client: Client, container_id: str, exec_id: str = "") -> ExitStatus:
    """Tasks/Wait in a thread, so the main thread keeps running signal handlers."""
    result: list[ExitStatus | BaseException] = []
    done = threading.Event()

    def waiter() -> None:
        try:
            result.append(client.wait_task(container_id, exec_id))
        except BaseException as e:  # handed to the main thread
            result.append(e)
        done.set()

    threading.Thread(target=waiter, daemon=True).start()
    while not done.wait(0.2):
        pass
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# -- run --------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunOptions:
    image: str
    id: str
    args: list[str]
    rm: bool = False
    detach: bool = False
    tty: bool = False
    interactive: bool = False
    env: list[str] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    user: str = ""
    cwd: str = ""
    read_only: bool = False
    privileged: bool = False
    net_host: bool = False
    runtime: str = DEFAULT_RUNTIME
    runc_binary: str = ""
    snapshotter: str = "overlayfs"
    labels: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 10.0


@dataclass(slots=True)
class Stdio:
    """Our side: binary streams (click's, so tests can capture them)."""

    stdin: IO[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]

    def stdin_is_tty(self) -> bool:
        fd = _stream_fd(self.stdin)
        return fd is not None and os.isatty(fd)


def build_spec(
    namespace: str,
    opts: RunOptions,
    image: ImageSetup,
    rootfs: Path | None,
) -> dict[str, Any]:
    steps: list[oci.SpecOpt] = [oci.with_image_config(image.config)]
    user = opts.user or str(image.config.get("User") or "")
    if user:
        steps.append(oci.with_user(user, rootfs))
    if opts.cwd:
        steps.append(lambda s: s["process"].__setitem__("cwd", oci.clean_workdir(opts.cwd)))
    steps.append(oci.with_args(opts.args))
    if opts.env:
        steps.append(oci.with_env(opts.env))
    if opts.tty:
        steps.append(oci.with_tty)
    if opts.read_only:
        steps.append(oci.with_readonly_rootfs)
    if opts.privileged:
        steps.append(oci.with_privileged)
    if opts.net_host:
        steps.append(oci.with_host_network)
    for m in opts.mounts:
        steps.append(oci.with_mount(m.source, m.destination, m.type, m.options))
    if opts.memory is not None:
        steps.append(oci.with_memory_limit(opts.memory))
    if opts.cpus is not None:
        steps.append(oci.with_cpus(opts.cpus))
    if opts.pids_limit is not None:
        steps.append(oci.with_pids_limit(opts.pids_limit))
    try:
        spec = oci.generate(namespace, opts.id, steps)
    except (spec_errors.InvalidArgument, spec_errors.NotFound) as e:
        raise RunError(str(e)) from None
    if not spec["process"]["args"]:
        raise RunError(f"image {image.name!r} has no command: give one after the container id")
    return spec


def _lookup_needed(opts: RunOptions, image: ImageSetup) -> bool:
    """A user is set: its gid and groups come from the image's /etc/passwd and /etc/group
    (names need them; a bare uid takes its passwd entry's gid, as ctr's WithUserID)."""
    return bool(opts.user or image.config.get("User"))


def create_container(client: Client, opts: RunOptions) -> tuple[Container, list[Mount]]:
    """Images/Get, the image's config, a lease, Snapshots/Prepare(ID), the spec,
    Containers/Create, lease deleted. Nothing is left behind on failure."""
    image = image_setup(client, opts.image)
    snapshotter = opts.snapshotter
    if image.top_chain:
        try:
            client.stat_snapshot(snapshotter, image.top_chain)
        except NotFound:
            raise RunError(
                f"image {opts.image!r} is not unpacked for snapshotter {snapshotter}: "
                f"run liner images pull"
                + (f" --snapshotter {snapshotter}" if snapshotter != "overlayfs" else "")
                + f" {opts.image}"
            ) from None
    expire = rfc3339(datetime.now(UTC) + timedelta(hours=24))
    lease = client.create_lease("", {GC_EXPIRE: expire}).id
    prepared = False
    try:
        with client.leased(lease):
            try:
                mounts = client.prepare_snapshot(snapshotter, opts.id, image.top_chain)
            except AlreadyExists:
                raise RunError(f"container id {opts.id!r} is in use") from None
            prepared = True
            # Mounting needs root; without it a bare uid still works (gid 0).
            if _lookup_needed(opts, image) and os.geteuid() == 0:
                view_key = f"{opts.id}-view-{secrets.token_hex(4)}"
                view = client.view_snapshot(snapshotter, view_key, image.top_chain)
                try:
                    with mounted_readonly(view) as rootfs:
                        spec = build_spec(client.namespace, opts, image, rootfs)
                finally:
                    with contextlib.suppress(LinerClientError):
                        client.remove_snapshot(snapshotter, view_key)
            else:
                spec = build_spec(client.namespace, opts, image, None)
            labels = dict(opts.labels)
            stop_signal = image.config.get("StopSignal")
            if isinstance(stop_signal, str) and stop_signal:
                labels.setdefault(STOP_SIGNAL, stop_signal)
            record = Container(
                id=opts.id,
                image=opts.image,
                runtime=opts.runtime,
                runtime_options=runc_options(opts.runc_binary),
                spec=AnyValue(SPEC_URL, json.dumps(spec).encode()),
                labels=labels,
                snapshotter=snapshotter,
                snapshot_key=opts.id,
            )
            try:
                container = client.create_container(record)
            except AlreadyExists:
                raise RunError(f"container id {opts.id!r} is in use") from None
            prepared = False  # the container owns the snapshot now
            return container, mounts
    finally:
        if prepared:
            with contextlib.suppress(LinerClientError):
                client.remove_snapshot(snapshotter, opts.id)
        with contextlib.suppress(LinerClientError):
            client.delete_lease(lease)


def remove_container(client: Client, container: Container) -> None:
    """ctr's container cleanup: Snapshots/Remove (NOT_FOUND ignored), Containers/Delete."""
    if container.snapshot_key and container.snapshotter:
        with contextlib.suppress(NotFound):
            client.remove_snapshot(container.snapshotter, container.snapshot_key)
    client.delete_container(container.id)


def delete_task(client: Client, container_id: str) -> ExitStatus:
    """Tasks/Delete, then the FIFO directory liner made for it."""
    try:
        process = client.get_task(container_id)
    except LinerClientError:
        process = None
    status = client.delete_task(container_id)
    if process is not None:
        remove_fifo_dir(process.stdin, process.stdout, process.stderr)
    return status


class _StartFailed(Exception):
    def __init__(self, error: LinerClientError) -> None:
        super().__init__(str(error))
        self.error = error


def run(client: Client, opts: RunOptions, io: Stdio) -> int:
    """`liner run`; returns the exit code for liner (the task's status; 0 with -d)."""
    container, mounts = create_container(client, opts)
    fifos: Fifos | None = None
    attachment: Attachment | None = None
    task_created = False
    try:
        if opts.detach and not opts.tty and not opts.interactive:
            # No stdio at all: linerd then keeps the output in the container's log file
            # (`liner logs`), where FIFOs nobody reads would lose it.
            client.create_task(opts.id, rootfs=mounts)
            task_created = True
            client.start_task(opts.id)
            return 0
        want_stdin = opts.tty or opts.interactive or (not opts.detach and not io.stdin_is_tty())
        fifos = Fifos.create(opts.id, stdin=want_stdin, stderr=not opts.tty)
        attachment = Attachment(
            fifos,
            stdin=io.stdin if want_stdin else None,
            stdout=io.stdout,
            stderr=io.stderr,
            on_stdin_eof=lambda: client.close_io(opts.id, stdin=True),
            raw_stdin_fd=_stream_fd(io.stdin) if opts.tty else None,
        )
        client.create_task(
            opts.id,
            stdin=fifos.stdin,
            stdout=fifos.stdout,
            stderr=fifos.stderr,
            terminal=opts.tty,
            rootfs=mounts,
        )
        task_created = True
        if opts.detach:
            client.start_task(opts.id)
            attachment.close()
            return 0
        return _attach_and_wait(client, opts, io, attachment)
    except (_StartFailed, LinerClientError, RunError, OSError) as e:
        if not isinstance(e, _StartFailed) and task_created and not opts.detach:
            raise  # the task ran: what failed is the waiting; --rm below still cleans up
        # A task that never ran, and its container, go (ctr would leave them behind).
        if attachment is not None:
            attachment.close()
        _cleanup_failed(client, container, task_created)
        if fifos is not None:
            fifos.remove()
        task_created = False
        raise e.error if isinstance(e, _StartFailed) else e from None
    finally:
        if attachment is not None:
            attachment.close()
        if opts.rm and not opts.detach and task_created:
            _cleanup(client, container, fifos)


def _attach_and_wait(client: Client, opts: RunOptions, io: Stdio, attachment: Attachment) -> int:
    term_fd = _stream_fd(io.stdin) if opts.tty else None
    is_term = term_fd is not None and os.isatty(term_fd)

    def resize() -> None:
        size = terminal_size(*(fd for fd in (term_fd, _stream_fd(io.stdout)) if fd is not None))
        if size is not None:
            client.resize_pty(opts.id, size[0], size[1])

    raw = raw_terminal(term_fd) if is_term and term_fd is not None else contextlib.nullcontext()
    forwarder = SignalForwarder(
        client,
        opts.id,
        forward=not opts.tty,
        stop_timeout=opts.stop_timeout,
        resize=resize if opts.tty else None,
    )
    with raw, forwarder:
        attachment.start()
        if opts.tty:  # before Start too, so the process finds its size from the first moment
            with contextlib.suppress(LinerClientError):
                resize()
        try:
            client.start_task(opts.id)
        except LinerClientError as e:
            raise _StartFailed(e) from None
        if opts.tty:
            with contextlib.suppress(LinerClientError):
                resize()
        status = wait_interruptibly(client, opts.id)
        attachment.drain()
    return status.status


def _cleanup(client: Client, container: Container, fifos: Fifos | None) -> None:
    """--rm: task, snapshot and container go (ctr's order)."""
    with contextlib.suppress(LinerClientError):
        process = client.get_task(container.id)
        if process.status not in (TaskStatus.STOPPED, TaskStatus.CREATED):
            client.kill_task(container.id, signal.SIGKILL)
            client.wait_task(container.id)
        client.delete_task(container.id)
    if fifos is not None:
        fifos.remove()
    remove_container(client, container)


def _cleanup_failed(client: Client, container: Container, task_created: bool) -> None:
    if task_created:
        with contextlib.suppress(LinerClientError):
            process = client.get_task(container.id)
            if process.status not in (TaskStatus.STOPPED, TaskStatus.CREATED):
                client.kill_task(container.id, signal.SIGKILL)
                client.wait_task(container.id)
            client.delete_task(container.id)
    with contextlib.suppress(LinerClientError):
        remove_container(client, container)


# -- exec -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ExecOptions:
    id: str
    args: list[str]
    exec_id: str = ""
    tty: bool = False
    interactive: bool = False
    env: list[str] = field(default_factory=list)
    cwd: str = ""
    user: str = ""
    detach: bool = False
    stop_timeout: float = 10.0


def exec_process(client: Client, opts: ExecOptions, io: Stdio) -> int:
    """`liner tasks exec`: the container's process as template, args replaced; returns the
    exec's exit status (0 with --detach)."""
    container = client.get_container(opts.id)
    if container.spec is None:
        raise RunError(f"container {opts.id!r} has no spec")
    try:
        spec = json.loads(container.spec.value)
        process = dict(spec["process"])
    except (ValueError, KeyError, TypeError):
        raise RunError(f"container {opts.id!r}: its spec does not decode") from None
    client.get_task(opts.id)  # a task must exist: a clear NOT_FOUND otherwise
    process["args"] = list(opts.args)
    process["terminal"] = opts.tty
    try:
        if opts.env:
            process["env"] = oci.merge_env(list(process.get("env") or []), opts.env)
        if opts.tty:
            process["env"] = oci.merge_env(list(process.get("env") or []), ["TERM=xterm"])
        if opts.cwd:
            process["cwd"] = oci.clean_workdir(opts.cwd)
        if opts.user:
            if not all(p.isdigit() for p in opts.user.split(":") if p):
                raise RunError("tasks exec --user takes numeric uid[:gid]")
            process["user"] = oci.resolve_user(opts.user, None)
    except (spec_errors.InvalidArgument, spec_errors.NotFound) as e:
        raise RunError(str(e)) from None
    exec_id = opts.exec_id or f"exec-{secrets.token_hex(6)}"
    want_stdin = opts.tty or opts.interactive or (not opts.detach and not io.stdin_is_tty())
    fifos = Fifos.create(exec_id, stdin=want_stdin, stderr=not opts.tty)
    attachment = Attachment(
        fifos,
        stdin=io.stdin if want_stdin else None,
        stdout=io.stdout,
        stderr=io.stderr,
        on_stdin_eof=lambda: client.close_io(opts.id, exec_id, stdin=True),
        raw_stdin_fd=_stream_fd(io.stdin) if opts.tty else None,
    )
    added = False
    try:
        client.exec_process(
            opts.id,
            exec_id,
            process,
            stdin=fifos.stdin,
            stdout=fifos.stdout,
            stderr=fifos.stderr,
            terminal=opts.tty,
        )
        added = True
        if opts.detach:
            client.start_task(opts.id, exec_id)
            return 0
        term_fd = _stream_fd(io.stdin) if opts.tty else None
        is_term = term_fd is not None and os.isatty(term_fd)

        def resize() -> None:
            fds = (fd for fd in (term_fd, _stream_fd(io.stdout)) if fd is not None)
            size = terminal_size(*fds)
            if size is not None:
                client.resize_pty(opts.id, size[0], size[1], exec_id)

        raw = raw_terminal(term_fd) if is_term and term_fd is not None else contextlib.nullcontext()
        forwarder = SignalForwarder(
            client,
            opts.id,
            exec_id,
            forward=not opts.tty,
            stop_timeout=opts.stop_timeout,
            resize=resize if opts.tty else None,
        )
        with raw, forwarder:
            attachment.start()
            if opts.tty:
                with contextlib.suppress(LinerClientError):
                    resize()
            client.start_task(opts.id, exec_id)
            if opts.tty:
                with contextlib.suppress(LinerClientError):
                    resize()
            status = wait_interruptibly(client, opts.id, exec_id)
            attachment.drain()
        return status.status
    finally:
        attachment.close()
        if added and not opts.detach:
            with contextlib.suppress(LinerClientError):
                client.delete_process(opts.id, exec_id)
        if not opts.detach or not added:
            fifos.remove()


def binary_streams() -> Stdio:
    import click

    return Stdio(
        click.get_binary_stream("stdin"),
        click.get_binary_stream("stdout"),
        click.get_binary_stream("stderr"),
    )
