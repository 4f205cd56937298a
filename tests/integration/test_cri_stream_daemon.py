"""The streaming group as the daemon serves it: crictl against linerd's CRI socket, on
containers and a pod sandbox recorded in k8s.io with containerd's kind label (made with ctr
here, as the CRI's own RunPodSandbox/CreateContainer make them).

Difference from containerd (the reference daemon, skipped here): containerd's CRI knows only
the sandboxes and containers it made itself, so records made with ctr are NotFound there;
the pod tests that make them through the CRI cover both daemons.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_support import CONTAINERD, CriDaemon, needs_crictl

pytestmark = [pytest.mark.integration, needs_crictl]

KIND = "io.cri-containerd.kind"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"


@pytest.fixture
def liner(cri: CriDaemon) -> Iterator[CriDaemon]:
    if cri.kind == CONTAINERD:
        pytest.skip("containerd's CRI does not know containers made outside it (ctr)")
    cri.ctr("images", "pull", "--plain-http", cri.sandbox_image)
    yield cri


def _run(cri: CriDaemon, kind: str, *args: str) -> str:
    object_id = secrets.token_hex(32)  # kubelet's and crictl's id form
    cri.ctr("run", "-d", "--null-io", "--label", f"{KIND}={kind}", cri.sandbox_image,
            object_id, *args)  # fmt: skip
    return object_id


def _remove(cri: CriDaemon, object_id: str) -> None:
    cri.ctr("tasks", "rm", "-f", object_id, check=False)
    cri.ctr("containers", "rm", object_id, check=False)


def test_crictl_exec_through_the_daemon(liner: CriDaemon) -> None:
    cid = _run(liner, "container")
    try:
        proc = liner.crictl("exec", cid, "sh", "-c", "echo -n hello; exit 3", check=False)
        assert proc.stdout == "hello"
        assert proc.returncode != 0
        assert "command terminated with exit code 3" in proc.stderr
        proc = subprocess.run(
            liner.crictl_argv("exec", "-i", cid, "sh", "-c", "read x; echo got-$x"),
            input="one\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (proc.returncode, proc.stdout) == (0, "got-one\n"), proc.stderr
        # A sandbox is no container, and an unknown id is NotFound.
        proc = liner.crictl("exec", secrets.token_hex(32), "true", check=False)
        assert proc.returncode != 0 and "NotFound" in proc.stderr
    finally:
        _remove(liner, cid)


def _task_pid(cri: CriDaemon, object_id: str) -> int:
    for line in cri.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == object_id:
            return int(fields[1])
    raise AssertionError(f"no task {object_id}")


def _listens(pid: int, port: int) -> bool:
    # /proc/<pid>/net/tcp lists the sockets of the process's network namespace; 0A = LISTEN.
    rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows)


def test_crictl_port_forward_into_a_sandbox_through_the_daemon(liner: CriDaemon) -> None:
    # A sandbox with a network namespace of its own (no path in its spec: the task's).
    sid = _run(
        liner, "sandbox", "/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"
    )
    proc = None
    try:
        pid = _task_pid(liner, sid)
        deadline = time.monotonic() + 60
        while not _listens(pid, 8080):
            assert time.monotonic() < deadline, "httpd never listened"
            time.sleep(0.05)
        proc = subprocess.Popen(
            liner.crictl_argv("port-forward", sid, ":8080"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Forwarding from 127.0.0.1:"), line + proc.stderr.read()
        local = int(line.split(":")[1].split()[0])

        def get(_: int) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/passwd", timeout=60) as r:
                return r.read().decode()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(get, range(8))) == [PASSWD] * 8
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        _remove(liner, sid)
