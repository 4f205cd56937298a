"""The linerd process: socket, root lock, signals, sd_notify, message size, config errors."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from linerd.main import main as linerd_main

pytestmark = pytest.mark.integration

STAT = content_pb2.WriteAction.Value("STAT")
WRITE = content_pb2.WriteAction.Value("WRITE")
COMMIT = content_pb2.WriteAction.Value("COMMIT")
MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    """One daemon for the tests that leave it running as they found it."""
    d = Linerd(tmp_path_factory.mktemp("daemon"))
    d.start()
    yield d
    d.stop()


def run_linerd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linerd.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_socket_mode(shared: Linerd) -> None:
    mode = os.stat(shared.address).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_second_daemon_on_same_root_refuses(shared: Linerd, tmp_path: Path) -> None:
    result = run_linerd(
        "--root",
        str(shared.root),
        "--state",
        str(tmp_path / "state2"),
        "--address",
        str(tmp_path / "second.sock"),
    )
    assert result.returncode != 0
    assert "already using root" in result.stderr
    assert str(shared.proc.pid) in result.stderr
    assert not (tmp_path / "second.sock").exists()
    # The first one is unharmed.
    with shared.channel() as ch:
        leases_pb2_grpc.LeasesStub(ch).List(leases_pb2.ListRequest(), metadata=ns())


def test_second_daemon_on_same_socket_refuses(shared: Linerd, tmp_path: Path) -> None:
    result = run_linerd(
        "--root",
        str(tmp_path / "root2"),
        "--state",
        str(tmp_path / "state2"),
        "--address",
        shared.address,
    )
    assert result.returncode != 0
    assert "in use" in result.stderr
    assert os.path.exists(shared.address)


def test_sigterm_removes_socket_and_exits_zero(linerd: Linerd) -> None:
    assert os.path.exists(linerd.address)
    assert linerd.stop(signal.SIGTERM) == 0
    assert not os.path.exists(linerd.address)
    assert "stopped" in linerd.log()


def test_stale_socket_after_sigkill_is_replaced(linerd: Linerd) -> None:
    linerd.kill()
    assert os.path.exists(linerd.address)  # left behind
    linerd.start()
    with linerd.channel() as ch:
        leases_pb2_grpc.LeasesStub(ch).List(leases_pb2.ListRequest(), metadata=ns())


def test_sd_notify(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        daemon = Linerd(tmp_path)
        daemon.start(env={"NOTIFY_SOCKET": str(path)})
        try:
            assert sock.recv(4096) == b"READY=1"
            assert daemon.stop(signal.SIGTERM) == 0
            assert sock.recv(4096) == b"STOPPING=1"
        finally:
            daemon.stop()


RO = ("r--p", "r-xp")


def exclusive_program_kb(pid: int) -> int:
    """kB of `pid`'s read-only private file mappings (its code and constants) resident and
    mapped by no other process (pagemap's present and exclusive bits)."""
    kb = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith("/") or fields[1] not in RO:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            entries = pagemap.read((end - start) // PAGE * 8)
            flags = (e >> 56 for (e,) in struct.iter_unpack("<Q", entries))
            kb += sum(PAGE // 1024 for f in flags if f & 0x81 == 0x81)  # bits 63 and 56
    return kb


def test_start_up_hands_its_program_pages_back(tmp_path: Path) -> None:
    """Start-up's code (imports, migrations, recovery) runs once: after it, the pages of
    linerd's program files that only it maps go back to the kernel (~5 MB of them after
    start-up here; the pages it still runs come back by a fault)."""
    daemon = Linerd(tmp_path)
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while "program pages paged out" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        assert daemon.proc is not None
        assert exclusive_program_kb(daemon.proc.pid) < 2048
    finally:
        daemon.stop()


def test_large_write_message(shared: Linerd) -> None:
    data = os.urandom(10 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reqs = [
        content_pb2.WriteContentRequest(
            action=STAT, ref="big-message", total=len(data), expected=digest
        ),
        content_pb2.WriteContentRequest(action=WRITE, data=data),
        content_pb2.WriteContentRequest(
            action=COMMIT, offset=len(data), total=len(data), expected=digest
        ),
    ]
    with shared.channel() as ch:
        leases_pb2_grpc.LeasesStub(ch).Create(leases_pb2.CreateRequest(id="l"), metadata=ns())
        stub = content_pb2_grpc.ContentStub(ch)
        responses = list(stub.Write(iter(reqs), metadata=ns("default", "l")))
        assert responses[1].offset == len(data)
        assert responses[-1].digest == digest
        info = stub.Info(content_pb2.InfoRequest(digest=digest), metadata=ns()).info
        assert info.size == len(data)
        # Reads come back in chunks under the message limit.
        read = stub.Read(content_pb2.ReadContentRequest(digest=digest), metadata=ns())
        assert b"".join(r.data for r in read) == data


def test_unknown_config_key_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('version = 1\n\n[grpc]\naddress = "/tmp/x.sock"\nbogus_key = 1\n')
    result = run_linerd(
        "--config",
        str(config),
        "--root",
        str(tmp_path / "root"),
        "--state",
        str(tmp_path / "state"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "grpc.bogus_key" in lines[0]
    assert lines[0].startswith("linerd: ")
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version = 2\n", "version"),
        ("[gc]\ninterval = -1\n", "gc.interval"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("root = 'relative/path'\n", "absolute"),
        ("[grpc]\ngid = 'wheel'\n", "grpc.gid"),
        ("grpc = 1\n", "grpc"),
        ("this is not toml\n", "config"),
    ],
)
def test_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    """The same path as above, in-process for speed: one clear line, status 2."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    assert linerd_main(["--config", str(config), "--address", str(tmp_path / "s.sock")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linerd: ")
    assert len(err.strip().splitlines()) == 1
    assert needle in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert linerd_main(["--config", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml" in capsys.readouterr().err
