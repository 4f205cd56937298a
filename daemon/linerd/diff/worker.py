"""Stage a layer in a process of its own, away from the daemon's GIL.

Parsing a tar is Python work; in linerd's process it competes for the GIL with the event
loop that receives the layer's bytes (a 2-core machine showed decompression calls waiting
up to a switch interval for the GIL after each MiB). A child process stages the layer
(`stage_tar` with decompression, both hashes) while linerd only feeds it the blob.

    python -m linerd.diff.worker <staging dir> <media type> <name> [<nice>] <control fd>
    python -m linerd.diff.worker --apply <media type> <name> <control fd>

(forked from the warm zygote, linerd.diff.zygote, or started so when there is none)
reads the blob on stdin and writes one pickled `StagedLayer` (or the error) on stdout,
without its entries. It keeps those and waits on the control fd for where to move the staged
files (`apply_staged`); it answers with None (or the error) on stdout. At EOF on the control
fd it just ends. The staged files and the target are the only things it writes.

With `--apply` (`apply_in_process`: a layer whose snapshot exists already, the base layer of
a daemon-side pull) it reads the target first from the control fd and extracts the blob
straight onto it, answering the applied descriptor: no staged copy to move afterwards (the
move of the bench's 6,663-file layer was ~55 ms after its staging, on the pull's critical
path).

The entries stay in the worker because in linerd they were the bulk of a pull's short-lived
small objects (~45,000 for the bench's `deb`, with the applier's ~35,000 more): freed, they
left CPython's allocator arenas partly used, ~7 MB of the daemon's RSS for good.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from linerd.core.types import Descriptor
from linerd.diff.tarstream import Entry
from linerd.diff.zygote import ZYGOTE, Zygote, ZygoteError
from linerd.errdefs import Internal, LinerError

_CHUNK = 1 << 20
_PR_SET_PDEATHSIG = 1
# The niceness of a worker staging bytes while they are written (`stage_in_process`): 5
# weighs it a third of a normal process, so the writes come first; 10 (a tenth) starved
# it on a loaded machine (a large image's ctr pull slower in 4 pairs of 4 at load 16).
YIELDING_NICE = 5
UNCOMPRESSED_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(slots=True)
class StagedLayer:
    entries: list[Entry]  # empty when a worker staged it: the worker keeps them
    applied: Descriptor  # the uncompressed stream: diff ID and size
    # The blob's digest as its writer's commit verified it (the prestager's); "" from the
    # stage itself: every reader of a layer reads bytes whose digest is checked elsewhere
    # (a committed blob, a download that commits), so staging does not hash them again.
    compressed: str = ""
    worker: StagedWorker | None = field(default=None, compare=False)

    def close(self) -> None:
        """Let the worker that staged it go, if it was not told to move the files. Blocking;
        idempotent."""
        if self.worker is not None:
            self.worker.close()


class StagedWorker:
    """A worker that staged a layer and waits to move its files into place."""

    def __init__(self, proc: _Worker, control: IO[bytes], name: str) -> None:
        self._proc: _Worker | None = proc
        self._control = control
        self._name = name

    def move(self, target: Path, *, overlay: bool, parents: Sequence[Path]) -> None:
        """`apply_staged` of the staged files onto `target`, in the worker. Blocking."""
        proc = self._proc
        if proc is None:
            raise Internal(f"{self._name}: the unpack worker was let go")
        try:
            with contextlib.suppress(BrokenPipeError):  # it died: its answer says why
                pickle.dump((str(target), overlay, [str(p) for p in parents]), self._control)
                self._control.close()
            _answer(proc, self._name)
        finally:
            self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(BrokenPipeError):
            self._control.close()  # EOF: the worker ends without moving anything
        _end(proc)


def stage_in_process(
    source: BinaryIO, staging: Path, media_type: str, name: str, *, yielding: bool = False
) -> StagedLayer:
    """Stage the blob read from `source` (a file, given to the child as its stdin, or any
    readable, pumped through a pipe) into `staging`. The layer returned holds the worker,
    which moves the files (`StagedWorker.move`); the caller closes it. `yielding`: the
    worker runs at a lower priority until the bytes are all written (a live blob's
    `when_written`) or `source` is all read (it stages bytes still being written, whose
    writer's CPU comes first). Blocking: run it in a thread."""
    direct = _is_file(source)
    control_r, control_w = os.pipe()
    args = [str(staging), media_type, name]
    # Only where the priority can be raised back afterwards (CAP_SYS_NICE: root's).
    if yielding and not direct and os.geteuid() == 0:
        args.append(str(YIELDING_NICE))
    try:
        proc = _start(args, source if direct else None, control_r)
    except BaseException:
        os.close(control_w)
        raise
    finally:
        os.close(control_r)
    control = os.fdopen(control_w, "wb")
    niced = _Niced(proc.pid) if len(args) > 3 else None
    try:
        if not direct:
            # The default 64 KiB pipe would hand the child its bytes in that many pieces.
            with contextlib.suppress(OSError):
                fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _CHUNK)  # type: ignore[union-attr]
            if niced is not None:
                # The writer's last byte, not the pump's: a worker behind its writer keeps the
                # pump blocked on the full pipe until it has read all but the pipe's last MiB
                # (a ctr pull of deb: ~0.3 s after ctr's last byte, at nice 5 all the while).
                when_written = getattr(source, "when_written", None)
                if when_written is not None:
                    when_written(niced.raise_back)
            _pump(source, proc.stdin)  # type: ignore[arg-type]
            if niced is not None:
                niced.raise_back()  # the bytes are all there: staging them is what is left
        staged = _answer(proc, name)
        if not isinstance(staged, StagedLayer):
            raise Internal(f"{name}: the unpack worker answered {type(staged).__name__}")
    except BaseException:
        if niced is not None:
            niced.forget()  # before it can end
        control.close()
        proc.kill()
        _end(proc)
        raise
    if niced is not None:
        niced.forget()  # staged: nothing of it to raise any more
    staged.worker = StagedWorker(proc, control, name)
    return staged


class _Niced:
    """A yielding worker's priority, raised back to 0 once (from whichever thread learns
    first that its bytes are all written), never after the caller stopped caring: by then
    the process may have ended, and its pid be another's."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._lock = threading.Lock()
        self._done = False

    def raise_back(self) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                _renice(self._pid, 0)

    def forget(self) -> None:
        with self._lock:
            self._done = True


_APPLY = "--apply"


def apply_in_process(
    source: BinaryIO,
    target: Path,
    media_type: str,
    name: str,
    *,
    overlay: bool,
    parents: Sequence[Path] = (),
) -> Descriptor:
    """Extract the blob read from `source` (a file, or any readable, pumped through a pipe)
    onto the directory `target` (`apply_tar`'s `overlay` and `parents`) in a worker process;
    returns the uncompressed descriptor. Blocking: run it in a thread."""
    direct = _is_file(source)
    control_r, control_w = os.pipe()
    try:
        proc = _start([_APPLY, media_type, name], source if direct else None, control_r)
    except BaseException:
        os.close(control_w)
        raise
    finally:
        os.close(control_r)
    try:
        with os.fdopen(control_w, "wb") as control, contextlib.suppress(BrokenPipeError):
            pickle.dump((str(target), overlay, [str(p) for p in parents]), control)
        if not direct:
            with contextlib.suppress(OSError):
                fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _CHUNK)  # type: ignore[union-attr]
            _pump(source, proc.stdin)  # type: ignore[arg-type]
        applied = _answer(proc, name)
        if not isinstance(applied, Descriptor):
            raise Internal(f"{name}: the unpack worker answered {type(applied).__name__}")
    except BaseException:
        proc.kill()
        _end(proc)
        raise
    _end(proc)
    return applied


class _Forked:
    """A worker forked by the zygote: the part of a Popen that staging uses."""

    def __init__(
        self,
        zygote: Zygote,
        pid: int,
        pidfd: int,
        stdin: IO[bytes] | None,
        stdout: IO[bytes],
        stderr: IO[bytes],
    ) -> None:
        self.pid = pid
        self._zygote = zygote
        self._pidfd = pidfd
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def kill(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def wait(self) -> None:
        if self._pidfd >= 0:
            # readable once the worker has ended; poll, as fds may pass FD_SETSIZE (1024)
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.poll()
            os.close(self._pidfd)
            self._pidfd = -1
            self._zygote.ended()


_Worker = subprocess.Popen[bytes] | _Forked


def _start(args: list[str], stdin: BinaryIO | None, control: int) -> _Worker:
    """A worker for `args`, reading `stdin` (a file) or, if None, a pipe to feed."""
    try:
        return _fork(args, stdin, control)
    except ZygoteError:
        pass  # started the slow way instead
    return subprocess.Popen(
        [sys.executable, "-m", "linerd.diff.worker", *args, str(control)],
        stdin=stdin if stdin is not None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(control,),
    )


def _fork(args: list[str], stdin: BinaryIO | None, control: int) -> _Forked:
    # Pipe ends: ours (stdin's write end first, when the worker reads no file; then stdout's
    # and stderr's read ends) and the worker's, which the zygote passes on.
    ours: list[int] = []
    theirs: list[int] = []
    try:
        if stdin is None:
            in_r, in_w = os.pipe()
            theirs.append(in_r)
            ours.append(in_w)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours += [out_r, err_r]
        theirs += [out_w, err_w]
        child_in = stdin.fileno() if stdin is not None else theirs[0]
        zygote = ZYGOTE
        pid, pidfd = zygote.spawn(args, (child_in, out_w, err_w, control))
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    feed = os.fdopen(ours.pop(0), "wb") if stdin is None else None
    return _Forked(zygote, pid, pidfd, feed, os.fdopen(ours[0], "rb"), os.fdopen(ours[1], "rb"))


def preload() -> None:
    """Import what staging and moving a layer need (the zygote, before it forks)."""
    import linerd.diff.apply
    import linerd.diff.compression  # noqa: F401


def _answer(proc: _Worker, name: str) -> object:
    """The worker's next answer on its stdout; its error raised as it is."""
    try:
        result = pickle.load(proc.stdout)  # type: ignore[arg-type]
    except Exception:  # it died: reported below with what it said
        # stderr first: a worker blocked on a full stderr pipe would never end.
        err = proc.stderr.read() if proc.stderr is not None else b""
        proc.wait()
        why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        raise Internal(f"{name}: the unpack worker failed: {why[0]}") from None
    if isinstance(result, BaseException):
        raise result
    return result


def _end(proc: _Worker) -> None:
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _renice(pid: int, nice: int) -> None:
    """Every thread of process `pid` to `nice` (a priority is per thread in Linux)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return  # ended
    for tid in tids:
        with contextlib.suppress(OSError):  # ended, or no CAP_SYS_NICE to raise it back
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def _is_file(source: BinaryIO) -> bool:
    try:
        fd = source.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return os.path.isfile(f"/proc/self/fd/{fd}") and source.tell() == 0


def _pump(source: BinaryIO, pipe: BinaryIO) -> None:
    try:
        splice_to = getattr(source, "splice_to", None)  # a live blob (linerd.content.live)
        if splice_to is not None:
            splice_to(pipe.fileno())
        while chunk := source.read(_CHUNK):
            pipe.write(chunk)
    except BrokenPipeError:
        pass  # the child stopped reading: it failed, and says why on stdout
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


def stage_blob(
    raw: BinaryIO,
    staging: Path,
    media_type: str,
    name: str,
    *,
    umask_zero: bool = False,
    hash_thread: bool = False,
) -> StagedLayer:
    """Stage the blob read from `raw` in this process: what the worker does, and what the
    daemon does itself for small layers. `umask_zero`: this process's umask is 0.
    `hash_thread`: the diff ID is hashed in a third thread (`HashingThread`; the worker's
    way: in the daemon, small layers gain nothing from one more thread on its GIL)."""
    from linerd.diff.apply import stage_tar
    from linerd.diff.compression import (
        HashingReader,
        HashingThread,
        ReadAhead,
        hashed_ahead,
        open_layer,
    )

    with contextlib.ExitStack() as stack:
        layer = open_layer(raw, media_type, name=name)
        hasher: HashingReader | HashingThread
        if hash_thread:  # three threads: inflate (reading ahead), hash, and extraction here
            hasher = stack.enter_context(HashingThread())
            ahead = hashed_ahead(layer, hasher)
        else:
            hasher = HashingReader(layer)
            ahead = ReadAhead(hasher)  # type: ignore[arg-type]
        with ahead:
            entries = stage_tar(ahead, staging, umask_zero=umask_zero)  # type: ignore[arg-type]
            while ahead.read(_CHUNK):  # padding after the tar end counts toward the diff ID
                pass
        while raw.read(_CHUNK):  # whatever follows the stream: a feeding pipe never blocks
            pass
        applied = Descriptor(UNCOMPRESSED_LAYER, hasher.digest, hasher.size)
    return StagedLayer(entries, applied)


def apply_blob(
    raw: BinaryIO,
    target: Path,
    media_type: str,
    name: str,
    *,
    overlay: bool,
    parents: Sequence[Path],
) -> Descriptor:
    """Extract the blob read from `raw` onto `target` in this process (the worker's
    `--apply`), hashing the tar in a thread of its own as `stage_blob` does."""
    from linerd.diff.apply import apply_tar
    from linerd.diff.compression import HashingThread, hashed_ahead, open_layer

    with HashingThread() as hasher:
        with hashed_ahead(open_layer(raw, media_type, name=name), hasher) as ahead:
            apply_tar(ahead, target, overlay=overlay, parents=parents)  # type: ignore[arg-type]
            while ahead.read(_CHUNK):  # padding after the tar end counts toward the diff ID
                pass
        while raw.read(_CHUNK):  # whatever follows the stream: a feeding pipe never blocks
            pass
        return Descriptor(UNCOMPRESSED_LAYER, hasher.digest, hasher.size)


def main(argv: list[str]) -> int:
    staging, media_type, name, *nice, control_fd = argv
    if nice:  # before any thread starts: each new thread inherits it
        os.setpriority(os.PRIO_PROCESS, 0, int(nice[0]))
    # The entries stay alive to the end and hold no cycles: collections would only walk them.
    gc.disable()
    os.umask(0)  # files are created with their modes (stage_tar)
    # Die with linerd: a worker left behind by a killed daemon would write into the staging
    # area the next daemon wipes. The signal comes when the *thread* that started us ends:
    # the zygote's only thread (the zygote ends with linerd), or, started without one,
    # linerd's executor threads, which live as long as the daemon (a worker waits for its
    # target after that thread's call returned).
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    out = os.fdopen(1, "wb")
    if staging == _APPLY:
        with os.fdopen(int(control_fd), "rb") as control:
            try:
                target, overlay, parents = pickle.load(control)
            except EOFError:  # let go before it was told where
                return 0
        with os.fdopen(0, "rb", buffering=0) as stdin:
            _send(
                out,
                _guarded(
                    name,
                    lambda: apply_blob(
                        stdin,
                        Path(target),
                        media_type,
                        name,
                        overlay=overlay,
                        parents=[Path(p) for p in parents],
                    ),
                ),
            )
        return 0
    with os.fdopen(0, "rb", buffering=0) as stdin:
        staged = _guarded(
            name,
            lambda: stage_blob(
                stdin, Path(staging), media_type, name, umask_zero=True, hash_thread=True
            ),
        )
    if not isinstance(staged, StagedLayer):
        _send(out, staged)
        return 0
    entries, staged.entries = staged.entries, []
    _send(out, staged)
    with os.fdopen(int(control_fd), "rb") as control:
        try:
            target, overlay, parents = pickle.load(control)
        except EOFError:  # let go
            return 0
    from linerd.diff.apply import apply_staged

    moved = _guarded(
        name,
        lambda: apply_staged(
            entries,
            Path(staging),
            Path(target),
            overlay=overlay,
            parents=[Path(p) for p in parents],
        ),
    )
    _send(out, moved)
    return 0


def _send(out: IO[bytes], answer: object) -> None:
    pickle.dump(answer, out)
    out.flush()  # the process ends with os._exit: nothing is flushed for it


def _guarded(name: str, work: Callable[[], object]) -> object:
    """What `work` returns, or the error to hand to the daemon."""
    try:
        return work()
    except LinerError as e:
        return e
    except OSError as e:
        return Internal(f"{name}: {e}")


if __name__ == "__main__":
    # Run as __main__, this module's classes would pickle under that name: use the importable
    # module's, which the daemon can load.
    from linerd.diff.worker import main as importable_main

    code = importable_main(sys.argv[1:])
    sys.stderr.flush()
    # Without the interpreter's teardown (~25 ms of freeing what staging built): linerd
    # waits for this process to end before it can apply the layer.
    os._exit(code)
