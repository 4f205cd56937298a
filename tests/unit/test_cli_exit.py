"""The `liner` executable ends with os._exit once its output is out: same output, same codes.

Each check runs `console_main` in a fresh interpreter; no daemon is needed (a command that
cannot connect still prints its first lines and exits 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

# An object whose finalizer reports on fd 2: it runs during interpreter teardown only.
_PRELUDE = """
import atexit, os, sys, threading
class Witness:
    def __del__(self):
        os.write(2, b"teardown ran\\n")
witness = Witness()
atexit.register(lambda: print("atexit ran", file=sys.stderr))
"""


def _console(*args: str, prelude: str = _PRELUDE, stdout: int = subprocess.PIPE) -> tuple:
    code = (
        f"{prelude}\nfrom liner.cli import console_main\n"
        f"sys.argv = ['liner', *{list(args)!r}]\nconsole_main()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True
    )
    return p.returncode, p.stdout, p.stderr


def test_the_liner_script_runs_console_main() -> None:
    (script,) = entry_points(group="console_scripts", name="liner")
    assert script.value == "liner.cli:console_main"


def test_failure_keeps_output_code_and_exit_callbacks(tmp_path: Path) -> None:
    rc, out, err = _console("-a", str(tmp_path / "none.sock"), "version")
    assert rc == 1
    assert out.startswith("Client:\n") and "Version:" in out
    assert "liner: cannot connect to linerd" in err
    assert "atexit ran" in err
    assert "teardown ran" not in err  # the interpreter was not torn down
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "code"), [(("--version",), 0), (("--bogus",), 2)])
def test_exit_codes(args: tuple[str, ...], code: int) -> None:
    rc, out, err = _console(*args)
    assert rc == code
    assert "teardown ran" not in err
    if code == 0:
        assert out.strip()
    else:
        assert "No such option" in err


def test_buffered_output_is_flushed() -> None:
    # Output left in the buffer (not written through click.echo's flush) still arrives.
    prelude = _PRELUDE + "sys.stdout.write('buffered line\\n')\n"
    rc, out, _ = _console("--version", prelude=prelude)
    assert rc == 0
    assert out.startswith("buffered line\n")


def test_a_live_thread_gets_the_ordinary_exit() -> None:
    prelude = _PRELUDE + (
        "import time\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done', file=sys.stderr)))"
        ".start()\n"
    )
    rc, _, err = _console("--version", prelude=prelude)
    assert rc == 0
    assert "thread done" in err
    assert "teardown ran" in err


def test_a_closed_pipe_exits_1_without_a_traceback(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        rc, _, err = _console("-a", str(tmp_path / "none.sock"), "version", stdout=w)
    finally:
        os.close(w)
    assert rc == 1
    assert "Traceback" not in err
    assert "Exception ignored" not in err
