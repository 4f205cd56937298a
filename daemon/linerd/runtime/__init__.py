"""The execution layer: OCI bundles run by any runc-compatible runtime under conmon.

`TaskRuntime` (manager.py) is the whole API; its module docstring has the state layout.
Decisions worth knowing:

- One conmon per process (init and every exec); linerd calls `<runtime> start` itself. The
  runtime's state lives in `<state>/runtime/<name>/<namespace>` (`--root`), so two daemons with
  different state dirs never see each other's containers.
- Non-TTY stdio is conmon's passthrough: the container writes into the client's FIFOs itself, so
  all output is in the FIFOs when the exit is reported, and it survives a daemon restart.
- The daemon keeps its own read end on stdout/stderr FIFOs and a write end on the stdin FIFO
  while the process lives (containerd's shim does the same): a detached container is not killed
  by SIGPIPE when its client goes away (it blocks once the 64 KiB pipe buffer is full, as with
  containerd), and stdin reaches EOF only after `close_stdin` (CloseIO). Those ends die with the
  daemon; `recover_all` takes them again.
- TTY processes: conmon holds the pty (`-t -i -l none`); a relay thread per process copies the
  attach socket to the stdout FIFO and the stdin FIFO to the socket. `wait` answers after the
  relay has drained. A TTY exec uses conmon's `--exec-attach` handshake, so the relay is
  connected before the process runs (nothing it writes at once is lost); its FIFOs are opened
  at Exec. A resize before its start becomes the process spec's `consoleSize`: the pty has that
  size before the process runs. Other resizes go through conmon's ctl FIFO, one line at a time
  (conmon parses only the first line of each read).
- Exits: inotify on the exit dirs (conmon renames the file into place) plus a pidfd per conmon.
  conmon gone without an exit file = exit code lost: STOPPED, 255, `monitor_lost`.
"""

from linerd.runtime.manager import MONITOR_LOST_STATUS, RUNC, TaskRuntime
from linerd.runtime.types import (
    ExitInfo,
    PidInfo,
    ProcessState,
    RuntimeConfig,
    TaskMetrics,
    TaskStatus,
)

__all__ = [
    "MONITOR_LOST_STATUS",
    "RUNC",
    "ExitInfo",
    "PidInfo",
    "ProcessState",
    "RuntimeConfig",
    "TaskMetrics",
    "TaskRuntime",
    "TaskStatus",
]
