"""Test support: a real linerd on a private root, state and socket, and call metadata."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent


class Linerd:
    """A linerd subprocess; `restart`, `kill` (SIGKILL) and `stop` (SIGTERM) it at will."""

    def __init__(
        self, base: Path, extra_args: list[str] | None = None, log_level: str | None = "debug"
    ) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(base / "linerd.sock")
        self.log_path = base / "linerd.log"
        self.extra_args = extra_args or []
        self.log_level = log_level  # None: as the config says
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        level = ["--log-level", self.log_level] if self.log_level else []
        return [
            sys.executable,
            "-m",
            "linerd.main",
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--address",
            self.address,
            *level,
            *self.extra_args,
        ]

    def start(self, env: dict[str, str] | None = None) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=log, env={**os.environ, **(env or {})}
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"linerd exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.address):
                try:
                    with grpc.insecure_channel(f"unix://{self.address}") as ch:
                        grpc.channel_ready_future(ch).result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"linerd did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            f"unix://{self.address}",
            options=[
                ("grpc.max_receive_message_length", 16 << 20),
                ("grpc.max_send_message_length", 16 << 20),
            ],
        )


def ns(name: str = "default", lease: str | None = None) -> list[tuple[str, str]]:
    """Call metadata for a namespace (and lease)."""
    md = [("containerd-namespace", name)]
    if lease:
        md.append(("containerd-lease", lease))
    return md


@contextlib.contextmanager
def mounted(mounts: Iterable[Any], target: Path) -> Iterator[Path]:
    """Mount API mounts (containerd.types.Mount messages) on `target`, as a root client does."""
    target.mkdir(parents=True, exist_ok=True)
    done = 0
    try:
        for m in mounts:
            options = [o for o in m.options if o not in ("rbind", "bind")]
            if m.type == "bind":
                subprocess.run(["mount", "--rbind", m.source, str(target)], check=True)
                done += 1
                if "ro" in options:
                    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
            else:
                subprocess.run(
                    ["mount", "-t", m.type, m.source, str(target), "-o", ",".join(options)],
                    check=True,
                )
                done += 1
        yield target
    finally:
        for _ in range(done):
            subprocess.run(["umount", "-l", str(target)], check=False)
