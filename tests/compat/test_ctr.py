"""The real `ctr` (Debian's containerd package; its daemon is never started) against linerd."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import Linerd

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed"),
]


def ctr(
    daemon: Linerd,
    *args: str,
    namespace: str = "default",
    stdin: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ["ctr", "--address", daemon.address, "--namespace", namespace, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ctr {' '.join(args)} failed: {result.stderr.decode()}")
    return result


def rows(output: bytes) -> list[list[str]]:
    return [line.split() for line in output.decode().splitlines()[1:] if line.strip()]


def test_version(linerd: Linerd) -> None:
    out = ctr(linerd, "version").stdout.decode()
    assert "Server:" in out
    assert "UUID:" in out


def test_namespaces(linerd: Linerd) -> None:
    ctr(linerd, "namespaces", "create", "team-a", "owner=alice")
    ctr(linerd, "namespaces", "create", "team-b")
    ctr(linerd, "namespaces", "label", "team-b", "tier=gold")
    listed = {r[0]: r[1:] for r in rows(ctr(linerd, "namespaces", "ls").stdout)}
    assert listed["team-a"] == ["owner=alice"]
    assert listed["team-b"] == ["tier=gold"]
    ctr(linerd, "namespaces", "label", "team-b", "tier=")  # an empty value removes the label
    quiet = ctr(linerd, "namespaces", "ls", "-q").stdout.decode().split()
    assert {"team-a", "team-b"} <= set(quiet)
    ctr(linerd, "namespaces", "rm", "team-a")
    assert "team-a" not in ctr(linerd, "namespaces", "ls", "-q").stdout.decode().split()
    dup = ctr(linerd, "namespaces", "create", "team-b", check=False)
    assert dup.returncode != 0 and b"already exists" in dup.stderr


def test_namespace_rm_refused_while_not_empty(linerd: Linerd) -> None:
    ctr(linerd, "content", "ingest", "ref1", namespace="busy", stdin=b"payload")
    result = ctr(linerd, "namespaces", "rm", "busy", check=False)
    assert result.returncode != 0
    assert b"must be empty" in result.stderr
    assert "busy" in ctr(linerd, "namespaces", "ls", "-q").stdout.decode().split()


def test_leases(linerd: Linerd) -> None:
    ctr(linerd, "leases", "create", "--id", "lease-one", "--expires", "1h")
    created = ctr(linerd, "leases", "create").stdout.decode().strip()  # a generated id
    listed = {r[0]: r for r in rows(ctr(linerd, "leases", "ls").stdout)}
    assert "lease-one" in listed
    assert created.split()[-1] in listed
    ctr(linerd, "leases", "rm", "lease-one")
    assert "lease-one" not in ctr(linerd, "leases", "ls", "-q").stdout.decode().split()
    missing = ctr(linerd, "leases", "rm", "lease-one", check=False)
    assert missing.returncode != 0 and b"not found" in missing.stderr


def test_content_ingest_get_round_trip(linerd: Linerd, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several Write chunks
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ctr(
        linerd,
        "content",
        "ingest",
        "--expected-digest",
        digest,
        "--expected-size",
        str(len(data)),
        "my-ref",
        stdin=data,
    )
    listed = rows(ctr(linerd, "content", "ls").stdout)
    assert [digest] == [r[0] for r in listed]
    assert ctr(linerd, "content", "get", digest).stdout == data
    # invisible from another namespace
    assert rows(ctr(linerd, "content", "ls", namespace="other").stdout) == []
    assert ctr(linerd, "content", "get", digest, namespace="other", check=False).returncode != 0
    # ingesting the same bytes again is accepted (ALREADY_EXISTS is success for ctr)
    ctr(linerd, "content", "ingest", "--expected-digest", digest, "again", stdin=data)
    ctr(linerd, "content", "rm", digest)
    assert rows(ctr(linerd, "content", "ls").stdout) == []


def test_content_label_and_active(linerd: Linerd) -> None:
    data = b"labelled blob\n"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ctr(linerd, "content", "ingest", "r", stdin=data)
    ctr(linerd, "content", "label", digest, "containerd.io/gc.root=yes")
    listed = rows(ctr(linerd, "content", "ls").stdout)
    assert listed[0][0] == digest and "containerd.io/gc.root=yes" in listed[0][-1]
    assert rows(ctr(linerd, "content", "active").stdout) == []


def test_plugins_ls(linerd: Linerd) -> None:
    listed = rows(ctr(linerd, "plugins", "ls").stdout)
    assert ["io.containerd.grpc.v1", "tasks", "-", "ok"] in listed
    assert len({(r[0], r[1]) for r in listed}) == len(listed)
    detail = ctr(linerd, "plugins", "ls", "-d", "id==sqlite").stdout.decode()
    assert re.search(rf"root\s+{re.escape(str(linerd.root))}\n", detail)
    assert re.search(rf"state\s+{re.escape(str(linerd.state))}\n", detail)
