"""The `liner` CLI against a real linerd: every command, its output, errors and exit codes."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import Linerd, ns

from liner.cli import cli
from liner.client import Client
from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from linerd.config import Config, to_toml

pytestmark = pytest.mark.integration

ROOT_LABEL = "containerd.io/gc.root=keep"
MISSING = "sha256:" + "0" * 64


def liner(
    address: str | None,
    *args: str,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run the CLI in-process; an exception escaping click fails the test."""
    argv = ["-a", address, *args] if address else list(args)
    # LINER_* from the outer environment must not leak into these runs.
    full_env: dict[str, str | None] = {"LINER_ADDRESS": None, "LINER_NAMESPACE": None}
    full_env.update(env or {})
    return CliRunner().invoke(cli, argv, input=input, env=full_env, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def failed(result: Result, code: int = 1) -> str:
    """The one error line of a failed run, without the `liner: ` prefix."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("liner: "), lines[0]
        return lines[0].removeprefix("liner: ")
    return result.stderr


def ingest(
    linerd: Linerd, data: bytes, *options: str, ref: str = "ref1", namespace: str = "default"
) -> str:
    """`liner -n NAMESPACE content ingest [OPTIONS] REF` with `data` on stdin; the digest."""
    args = ["-n", namespace, "content", "ingest", *options, ref]
    return ok(liner(linerd.address, *args, input=data)).strip()


def columns(text: str) -> list[list[str]]:
    """Rows of a table split on runs of 2+ spaces (cells hold at most single spaces)."""
    return [re.split(r" {2,}", line) for line in text.splitlines()]


def assert_aligned(text: str) -> None:
    """Every cell starts where its header does."""
    lines = text.splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", header)]
    for line in lines[1:]:
        for i, start in enumerate(starts[1:], 1):
            assert line[start - 1] == " " and line[start] != " ", (i, header, line)


# -- version, config --------------------------------------------------------------------------


def test_version(linerd: Linerd) -> None:
    out = ok(liner(linerd.address, "version"))
    client, server = out.split("\n\n")
    assert client.splitlines()[0] == "Client:"
    assert re.search(r"^  Version: +0\.1\.0$", client, re.M)
    assert server.splitlines()[0] == "Server:"
    assert re.search(r"^  Version: +\S+$", server, re.M)
    assert re.search(r"^  Revision: +\S+$", server, re.M)
    assert re.search(r"^  UUID: +[0-9a-f-]{36}$", server, re.M)


def test_version_server_uuid_is_stable(linerd: Linerd) -> None:
    first = ok(liner(linerd.address, "version"))
    linerd.restart()
    assert ok(liner(linerd.address, "version")) == first


def test_config_default_is_the_daemons_command() -> None:
    # `liner config default` went: the client does not carry the daemon's configuration code.
    out = subprocess.run(
        [sys.executable, "-m", "linerd.main", "config-default"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == to_toml(Config())


# -- namespaces -------------------------------------------------------------------------------


def test_namespaces_create_label_ls_rm(linerd: Linerd) -> None:
    a = linerd.address
    assert ok(liner(a, "namespaces", "create", "team-a", "owner=me", "tier=gold")) == ""
    assert ok(liner(a, "ns", "create", "b")) == ""

    out = ok(liner(a, "namespaces", "ls"))
    assert columns(out) == [["NAME", "LABELS"], ["b", "-"], ["team-a", "owner=me,tier=gold"]]
    assert_aligned(out)
    assert ok(liner(a, "ns", "ls", "-q")) == "b\nteam-a\n"
    assert ok(liner(a, "ns", "list", "--quiet")) == "b\nteam-a\n"

    # KEY= removes a label, KEY=VALUE sets one; the rest stay.
    assert ok(liner(a, "ns", "label", "team-a", "owner=", "zone=eu", "x=a=b")) == ""
    assert ok(liner(a, "ns", "label", "team-a")) == "tier=gold\nx=a=b\nzone=eu\n"
    assert columns(ok(liner(a, "ns", "ls")))[2] == ["team-a", "tier=gold,x=a=b,zone=eu"]
    # Removing a label that is not there is fine.
    assert ok(liner(a, "ns", "label", "team-a", "nothere=")) == ""

    assert ok(liner(a, "ns", "rm", "team-a", "b")) == "team-a\nb\n"
    assert ok(liner(a, "ns", "ls", "-q")) == ""


def test_namespace_create_twice_fails(linerd: Linerd) -> None:
    ok(liner(linerd.address, "ns", "create", "dup"))
    assert failed(liner(linerd.address, "ns", "create", "dup")) == "namespace 'dup' already exists"


def test_namespace_rm_non_empty_and_unknown(linerd: Linerd) -> None:
    a = linerd.address
    ingest(linerd, b"hello", "--label", ROOT_LABEL, namespace="busy")
    ok(liner(a, "ns", "create", "idle"))

    message = failed(liner(a, "ns", "rm", "busy"))
    assert message.startswith("namespace 'busy' must be empty"), message
    assert "blobs" in message

    # Each name is tried; the ones that fail are reported, the exit code says so.
    result = liner(a, "ns", "rm", "nosuch", "idle")
    assert result.stdout == "idle\n"
    assert failed(result) == "namespace 'nosuch' not found"
    assert ok(liner(a, "ns", "ls", "-q")) == "busy\n"


def test_namespace_invalid_name(linerd: Linerd) -> None:
    message = failed(liner(linerd.address, "ns", "create", "bad name"))
    assert "must be alphanumerics" in message


@pytest.mark.parametrize(
    "args",
    [
        ["ns", "create", "x", "novalue"],
        ["ns", "create", "x", "=v"],
        ["ns", "label", "default", "a=1", "oops"],
        ["leases", "create", "--label", "novalue"],
        ["content", "ingest", "r", "--label", "x"],
        ["leases", "create", "--expire", "soon"],
        ["leases", "create", "--expire", "-5m"],
        ["--timeout", "-1", "ns", "ls"],
        ["ns", "rm"],
        ["content", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    # No daemon: a usage error is found before any call (a call would fail with exit 1).
    message = failed(liner(str(tmp_path / "none.sock"), *args), code=2)
    assert message.startswith("Usage: liner "), message
    assert "Error:" in message


# -- content ----------------------------------------------------------------------------------


def test_content_ingest_get_roundtrip(linerd: Linerd) -> None:
    a = linerd.address
    # A few MiB plus a tail, so the writes cross 1 MiB chunk boundaries.
    data = os.urandom(3 * (1 << 20) + 12345)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    assert ingest(linerd, data, "--label", ROOT_LABEL) == digest
    got = liner(a, "content", "get", digest)
    assert got.exit_code == 0, got.stderr
    assert got.stdout_bytes == data

    out = ok(liner(a, "content", "ls"))
    rows = columns(out)
    assert rows[0] == ["DIGEST", "SIZE", "AGE", "LABELS"]
    assert rows[1] == [digest, "3.158MB", "Less than a second", ROOT_LABEL]
    assert_aligned(out)
    assert ok(liner(a, "content", "ls", "-q")) == digest + "\n"

    # The same bytes again (another ref): already there counts as success.
    assert ingest(linerd, data, ref="ref2") == digest
    assert ingest(linerd, data, "--expected-digest", digest, ref="ref3") == digest
    assert ok(liner(a, "content", "ls", "-q")) == digest + "\n"
    assert ok(liner(a, "content", "active", "-q")) == ""


def test_content_ingest_empty_and_binary(linerd: Linerd) -> None:
    empty = "sha256:" + hashlib.sha256(b"").hexdigest()
    assert ingest(linerd, b"", "-l", ROOT_LABEL) == empty
    assert liner(linerd.address, "content", "get", empty).stdout_bytes == b""
    # Bytes that are not text and not newline-terminated come back unchanged.
    blob = bytes(range(256)) * 3 + b"\r\n\x00"
    digest = ingest(linerd, blob, "-l", ROOT_LABEL, ref="bin")
    assert liner(linerd.address, "content", "get", digest).stdout_bytes == blob


def test_content_ingest_expectations(linerd: Linerd) -> None:
    a = linerd.address
    data = b"expected bytes\n"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    other = "sha256:" + hashlib.sha256(b"other").hexdigest()

    result = liner(a, "content", "ingest", "r-digest", "--expected-digest", other, input=data)
    assert failed(result) == f"unexpected commit digest {digest}, expected {other}"

    result = liner(
        a, "content", "ingest", "r-size", "--expected-size", str(len(data) + 1), input=data
    )
    assert "unexpected commit size" in failed(result)

    result = liner(a, "content", "ingest", "r-bad", "--expected-digest", "md5:x", input=data)
    assert "invalid digest" in failed(result)

    result = liner(
        a,
        "content",
        "ingest",
        "r-ok",
        "--expected-size",
        str(len(data)),
        "--expected-digest",
        digest,
        "-l",
        ROOT_LABEL,
        input=data,
    )
    assert ok(result) == digest + "\n"
    assert liner(a, "content", "get", digest).stdout_bytes == data


def test_content_rm_and_not_found(linerd: Linerd) -> None:
    a = linerd.address
    digest = ingest(linerd, b"to be removed", "-l", ROOT_LABEL)

    assert failed(liner(a, "content", "get", MISSING)) == f"content digest {MISSING} not found"
    assert "invalid digest 'nonsense'" in failed(liner(a, "content", "get", "nonsense"))

    result = liner(a, "content", "rm", MISSING, digest)
    assert result.stdout == digest + "\n"
    assert failed(result) == f"content digest {MISSING} not found"
    assert ok(liner(a, "content", "ls", "-q")) == ""
    assert failed(liner(a, "content", "get", digest)) == f"content digest {digest} not found"
    # An empty listing is just the header.
    assert ok(liner(a, "content", "ls")).split() == ["DIGEST", "SIZE", "AGE", "LABELS"]


def test_content_active(linerd: Linerd) -> None:
    a = linerd.address
    assert ok(liner(a, "content", "active")).split() == ["REF", "SIZE", "AGE"]
    # Leave two ingests half written: STAT, one WRITE, then end the stream without COMMIT.
    stat = content_pb2.WriteAction.Value("STAT")
    write = content_pb2.WriteAction.Value("WRITE")
    with linerd.channel() as channel:
        stub = content_pb2_grpc.ContentStub(channel)
        for ref, size, total in [("upload-1", 2048, 10_000), ("upload-22", 5, 6)]:
            requests = [
                content_pb2.WriteContentRequest(action=stat, ref=ref, total=total),
                content_pb2.WriteContentRequest(action=write, ref=ref, data=b"x" * size),
            ]
            list(stub.Write(iter(requests), metadata=ns("default")))

    out = ok(liner(a, "content", "active"))
    rows = columns(out)
    assert rows[0] == ["REF", "SIZE", "AGE"]
    assert sorted(rows[1:]) == [
        ["upload-1", "2.048kB", "Less than a second"],
        ["upload-22", "5B", "Less than a second"],
    ]
    assert_aligned(out)
    assert ok(liner(a, "content", "active", "-q")).split() == ["upload-1", "upload-22"]
    # Ingests are per namespace.
    assert ok(liner(a, "-n", "other", "content", "active", "-q")) == ""

    # Ingesting under a leftover ref starts afresh: no appending, and its total of 6 is gone.
    data = b"fresh and longer"
    assert ingest(linerd, data, "-l", ROOT_LABEL, ref="upload-22") == (
        "sha256:" + hashlib.sha256(data).hexdigest()
    )
    assert ok(liner(a, "content", "active", "-q")) == "upload-1\n"


def test_namespace_isolation_and_env(linerd: Linerd) -> None:
    a = linerd.address
    digest = ingest(linerd, b"only in A", "-l", ROOT_LABEL, namespace="ns-a")

    assert ok(liner(a, "-n", "ns-a", "content", "ls", "-q")) == digest + "\n"
    assert ok(liner(a, "-n", "ns-b", "content", "ls", "-q")) == ""
    assert ok(liner(a, "content", "ls", "-q")) == ""
    assert failed(liner(a, "--namespace", "ns-b", "content", "get", digest)) == (
        f"content digest {digest} not found"
    )
    # Removing in B does not touch A's record.
    assert failed(liner(a, "-n", "ns-b", "content", "rm", digest)).endswith("not found")

    env = {"LINER_ADDRESS": a, "LINER_NAMESPACE": "ns-a"}
    assert ok(liner(None, "content", "ls", "-q", env=env)) == digest + "\n"
    assert liner(None, "content", "get", digest, env=env).stdout_bytes == b"only in A"
    # Flags win over the environment.
    assert ok(liner(None, "-n", "ns-b", "content", "ls", "-q", env=env)) == ""
    assert ok(liner(None, "ns", "ls", "-q", env={"LINER_ADDRESS": a})) == "ns-a\n"


# -- leases -----------------------------------------------------------------------------------


def _expiry(labels: str) -> datetime:
    m = re.search(r"containerd\.io/gc\.expire=(\S+?)(?:,|$)", labels)
    assert m, labels
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m.group(1)), m.group(1)
    return datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))


def test_leases_create_ls_rm(linerd: Linerd) -> None:
    a = linerd.address
    assert ok(liner(a, "leases", "create", "--id", "build-1", "--label", "a=b", "-l", "c=")) == (
        "build-1\n"
    )
    assert ok(liner(a, "leases", "create", "--id", "short", "--expire", "30m")) == "short\n"
    assert ok(liner(a, "leases", "create", "--id", "forever", "--expire", "0")) == "forever\n"
    generated = ok(liner(a, "leases", "create")).strip()
    assert generated

    now = datetime.now(UTC)
    out = ok(liner(a, "leases", "ls"))
    assert_aligned(out)
    rows = {row[0]: row for row in columns(out)[1:]}
    assert columns(out)[0] == ["ID", "CREATED AT", "LABELS"]
    assert set(rows) == {"build-1", "short", "forever", generated}
    for row in rows.values():
        created = datetime.fromisoformat(row[1].replace("Z", "+00:00"))
        assert abs(created - now) < timedelta(minutes=1)

    assert abs(_expiry(rows["build-1"][2]) - (now + timedelta(hours=24))) < timedelta(minutes=1)
    assert "a=b" in rows["build-1"][2].split(",")
    assert "c=" in rows["build-1"][2].split(",")
    assert abs(_expiry(rows["short"][2]) - (now + timedelta(minutes=30))) < timedelta(minutes=1)
    assert rows["forever"][2] == "-"
    assert abs(_expiry(rows[generated][2]) - (now + timedelta(hours=24))) < timedelta(minutes=1)

    assert ok(liner(a, "leases", "ls", "-q")).split() == sorted(rows)

    assert failed(liner(a, "leases", "create", "--id", "short")) == "lease 'short' already exists"

    result = liner(a, "leases", "rm", "--sync", "short", "nope", "forever")
    assert result.stdout == "short\nforever\n"
    assert failed(result) == "lease 'nope' not found"
    assert ok(liner(a, "lease", "remove", "build-1", generated)) == f"build-1\n{generated}\n"
    assert ok(liner(a, "leases", "ls", "-q")) == ""


def test_lease_rm_sync_collects_content(linerd: Linerd) -> None:
    a = linerd.address
    ok(liner(a, "leases", "create", "--id", "hold"))
    # Content written under a lease (via the client library) is held by it until rm --sync.
    with Client(a, "default", lease="hold") as client:
        digest = client.write("leased", io.BytesIO(b"leased bytes"))
        assert [r.id for r in client.lease_resources("hold")] == [digest]
    assert ok(liner(a, "content", "ls", "-q")) == digest + "\n"
    assert ok(liner(a, "leases", "rm", "--sync", "hold")) == "hold\n"
    assert ok(liner(a, "content", "ls", "-q")) == ""


# -- connection failures, processes --------------------------------------------------------------


def test_daemon_not_running(tmp_path: Path) -> None:
    address = str(tmp_path / "nothing.sock")
    for args in (["version"], ["ns", "ls"], ["content", "get", MISSING], ["leases", "rm", "x"]):
        result = liner(address, *args)
        assert failed(result) == f"cannot connect to linerd at {address}: is it running?"


def test_daemon_stopped(linerd: Linerd) -> None:
    linerd.stop()
    result = liner(linerd.address, "ns", "ls")
    assert failed(result) == f"cannot connect to linerd at {linerd.address}: is it running?"


def _run(
    *args: str, input: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "liner.cli", *args],
        input=input,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_subprocess_roundtrip_and_errors(linerd: Linerd, tmp_path: Path) -> None:
    data = os.urandom(2 * (1 << 20) + 7)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    env = {"LINER_ADDRESS": linerd.address, "LINER_NAMESPACE": "proc"}

    done = _run("content", "ingest", "--label", ROOT_LABEL, "big", input=data, env=env)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == digest.encode() + b"\n"
    done = _run("content", "get", digest, env=env)
    assert done.returncode == 0
    assert done.stdout == data

    done = _run("content", "get", MISSING, env=env)
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr == f"liner: content digest {MISSING} not found\n".encode()

    missing = str(tmp_path / "gone.sock")
    done = _run("-a", missing, "version")
    assert done.returncode == 1
    assert done.stderr == f"liner: cannot connect to linerd at {missing}: is it running?\n".encode()
    assert done.stdout.startswith(b"Client:\n")

    done = _run("ns", "create", "x", "bad", env=env)
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr


def test_timeout_option(linerd: Linerd) -> None:
    assert ok(liner(linerd.address, "--timeout", "5", "ns", "ls", "-q")) == ""
    assert ok(liner(linerd.address, "--timeout", "0", "version")).startswith("Client:")
