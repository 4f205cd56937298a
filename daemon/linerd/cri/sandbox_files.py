"""A pod's shared files: hostname, hosts, resolv.conf (in `<root>/cri/sandboxes/<id>/`) and
its /dev/shm tmpfs (in `<state>/cri/sandboxes/<id>/shm`), as containerd makes them.

Every container of the pod bind-mounts them (unless a CRI mount targets the same path).
Blocking: call through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from linerd.errdefs import FailedPrecondition
from linerd.mounts import MS_NODEV, MS_NOEXEC, MS_NOSUID, _sys_mount, _sys_umount

SHM_OPTIONS = "mode=1777,size=65536k"  # containerd: 64 MiB


@dataclass(frozen=True, slots=True)
class DNS:
    servers: Sequence[str] = ()
    searches: Sequence[str] = ()
    options: Sequence[str] = ()


def resolv_conf(dns: DNS | None) -> bytes:
    """The pod's resolv.conf: the node's when the pod gives no DNS config."""
    if dns is None:
        try:
            return Path("/etc/resolv.conf").read_bytes()
        except OSError:
            return b""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {s}" for s in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def write_files(directory: Path, hostname: str, dns: DNS | None) -> str:
    """hostname, hosts and resolv.conf into `directory`; returns the hostname written (the
    node's when the pod gives none, as for host-network pods)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o711)
    name = hostname or socket.gethostname()
    (directory / "hostname").write_text(name + "\n")
    try:
        hosts = Path("/etc/hosts").read_bytes()
    except OSError:
        hosts = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    (directory / "hosts").write_bytes(hosts)
    (directory / "resolv.conf").write_bytes(resolv_conf(dns))
    for f in ("hostname", "hosts", "resolv.conf"):
        os.chmod(directory / f, 0o644)
    return name


def mount_shm(path: Path) -> None:
    """A fresh tmpfs for the pod's /dev/shm at `path` (created)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        _sys_mount("shm", str(path), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, SHM_OPTIONS)
    except OSError as e:
        raise FailedPrecondition(f"mount the pod's /dev/shm at {path}: {e}") from None


def unmount_shm(path: Path) -> None:
    """Idempotent: unmount (all stacked mounts) and remove the directory."""
    for _ in range(8):
        if not os.path.ismount(path):
            break
        _sys_umount(str(path))
    with contextlib.suppress(OSError):
        path.rmdir()


def remove_files(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
