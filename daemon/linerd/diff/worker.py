"""Stage a layer in a process of its own, away from the daemon's GIL.

Parsing a tar is Python work; in linerd's process it competes for the GIL with the event
loop that receives the layer's bytes (a 2-core machine showed decompression calls waiting
up to a switch interval for the GIL after each MiB). A child process stages the layer
(`stage_tar` with decompression, both hashes) while linerd only feeds it the blob.

    python -m linerd.diff.worker <staging dir> <media type> <name>

reads the blob on stdin and writes one pickled `StagedLayer` (or the error) on stdout.
The staged files are the only thing it writes, under the staging directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from linerd.core.types import Descriptor
from linerd.diff.tarstream import Entry
from linerd.errdefs import Internal, LinerError

_CHUNK = 1 << 20
_PR_SET_PDEATHSIG = 1
UNCOMPRESSED_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(slots=True)
class StagedLayer:
    entries: list[Entry]
    applied: Descriptor  # the uncompressed stream: diff ID and size
    compressed: str  # digest of the blob as read


def stage_in_process(source: BinaryIO, staging: Path, media_type: str, name: str) -> StagedLayer:
    """Stage the blob read from `source` (a file, given to the child as its stdin, or any
    readable, pumped through a pipe) into `staging`. Blocking: run it in a thread."""
    direct = _is_file(source)
    proc = subprocess.Popen(
        [sys.executable, "-m", "linerd.diff.worker", str(staging), media_type, name],
        stdin=source if direct else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if not direct:
            # The default 64 KiB pipe would hand the child its bytes in that many pieces.
            with contextlib.suppress(OSError):
                fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _CHUNK)  # type: ignore[union-attr]
            _pump(source, proc.stdin)  # type: ignore[arg-type]
        out = proc.stdout.read()  # type: ignore[union-attr]
        err = proc.stderr.read()  # type: ignore[union-attr]
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    try:
        result = pickle.loads(out) if out else None
    except Exception:  # reported below with what the child said
        result = None
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, StagedLayer):
        why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise Internal(f"{name}: the unpack worker failed: {why[0]}")
    return result


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
    raw: BinaryIO, staging: Path, media_type: str, name: str, *, umask_zero: bool = False
) -> StagedLayer:
    """Stage the blob read from `raw` in this process: what the worker does, and what the
    daemon does itself for small layers. `umask_zero`: this process's umask is 0."""
    from linerd.diff.apply import stage_tar
    from linerd.diff.compression import HashingReader, ReadAhead, open_layer

    compressed = HashingReader(raw)
    hashed = HashingReader(open_layer(compressed, media_type, name=name))  # type: ignore[arg-type]
    with ReadAhead(hashed) as ahead:  # type: ignore[arg-type]
        entries = stage_tar(ahead, staging, umask_zero=umask_zero)  # type: ignore[arg-type]
        while ahead.read(_CHUNK):  # padding after the tar end counts toward the diff ID
            pass
    compressed.drain()
    applied = Descriptor(UNCOMPRESSED_LAYER, hashed.digest, hashed.size)
    return StagedLayer(entries, applied, compressed.digest)


def main(argv: list[str]) -> int:
    # Run as __main__, this module's classes would pickle under that name: use the importable
    # module's, which the daemon can load.
    from linerd.diff.worker import stage_blob as stage

    staging, media_type, name = argv
    # The entries stay alive to the end and hold no cycles: collections would only walk them.
    gc.disable()
    os.umask(0)  # files are created with their modes (stage_tar)
    # Die with linerd: a worker left behind by a killed daemon would write into the staging
    # area the next daemon wipes.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    stdin = os.fdopen(0, "rb", buffering=0)
    result: object
    try:
        result = stage(stdin, Path(staging), media_type, name, umask_zero=True)
    except LinerError as e:
        result = e
    except OSError as e:
        result = Internal(f"{name}: {e}")
    with os.fdopen(1, "wb") as out:
        pickle.dump(result, out)
    stdin.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    # Without the interpreter's teardown (~25 ms of freeing what staging built): linerd
    # waits for this process to end before it can apply the layer.
    os._exit(code)
