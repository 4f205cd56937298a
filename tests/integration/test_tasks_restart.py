"""Tasks survive linerd: a SIGKILLed daemon is restarted and finds its running tasks (they
answer Get/Wait/Kill) and the exit code of one that ended while it was down; a monitor (conmon)
killed under a running daemon leaves a task reported STOPPED/255, which Delete cleans up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from imagebuild import BusyboxLayout
from registry import Registry
from support import Linerd
from test_tasks import NS, Api, Fifos, Subscription, chain_id, code_of, decode, leftovers, pull

from liner_api.containerd.services.tasks.v1 import tasks_pb2
from liner_api.containerd.types.task import task_pb2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("conmon") or not shutil.which("runc"),
        reason="needs root, conmon and runc",
    ),
]

S = task_pb2.Status


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("tasks-restart"))
    d.start()
    try:
        pull(d, registry.ref("library/busybox:latest"), NS)
        yield d
    finally:
        d.stop()


@pytest.fixture
def made(daemon: Linerd, busybox_layout: BusyboxLayout, tmp_path: Path) -> Iterator[list[str]]:
    """Container ids a test made; removed (and everything checked) after it, on a fresh
    channel since the test may have restarted the daemon."""
    ids: list[str] = []
    yield ids
    with daemon.channel() as ch:
        api = Api(daemon, ch, chain_id(busybox_layout), tmp_path)
        left = [f"task {t}" for t in api.list()] + leftovers(daemon.base)
        if left:
            api.force_clean()
        for cid in ids:
            api.remove_container(cid)
    assert not left, f"left behind: {left}"


def ctr_tasks(daemon: Linerd) -> dict[str, str] | None:
    """`ctr tasks ls` (id -> status), None without ctr."""
    if shutil.which("ctr") is None:
        return None
    out = subprocess.run(
        ["ctr", "--address", daemon.address, "--namespace", NS, "tasks", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return {r[0]: r[2] for r in (line.split() for line in out.splitlines()[1:]) if r}


def test_sigkilled_daemon_recovers_its_tasks(
    daemon: Linerd, busybox_layout: BusyboxLayout, tmp_path: Path, made: list[str]
) -> None:
    parent = chain_id(busybox_layout)
    io = Fifos(tmp_path / "io", "short")
    with daemon.channel() as ch:
        api = Api(daemon, ch, parent, tmp_path)
        long = []
        for i in range(4):
            cid, _ = api.task(f"long{i}", ["sleep", "300"])
            long.append(cid)
        short, short_pid = api.task(
            "short", ["sh", "-c", "echo before; sleep 3; echo after; exit 7"], io
        )
        made.extend([*long, short])
        pids = {cid: api.start(cid) for cid in long}
        api.start(short)
        started = time.monotonic()

    daemon.kill()
    exit_file = daemon.state / "tasks" / NS / short / "exit" / short
    deadline = started + 15
    while not exit_file.exists():  # the short task ends while no daemon runs
        assert time.monotonic() < deadline, "the short task never exited"
        time.sleep(0.1)
    assert daemon.proc is not None and daemon.proc.poll() is not None
    daemon.start()

    # Its output reached the client although the daemon was down in between.
    assert io.output() == (b"before\nafter\n", b"")

    with daemon.channel() as ch:
        api = Api(daemon, ch, parent, tmp_path)
        listed = api.list()
        assert {cid: t.status for cid, t in listed.items()} == {
            **dict.fromkeys(long, S.RUNNING),
            short: S.STOPPED,
        }
        assert ctr_tasks(daemon) in (None, {**dict.fromkeys(long, "RUNNING"), short: "STOPPED"})

        p = api.get(short)
        assert (p.pid, p.status, p.exit_status) == (short_pid, S.STOPPED, 7)
        t0 = time.monotonic()
        assert api.wait(short).exit_status == 7
        assert time.monotonic() - t0 < 0.5
        d = api.delete(short)
        assert (d.pid, d.exit_status, d.exited_at) == (short_pid, 7, p.exited_at)

        events = Subscription(ch, NS)
        try:
            for cid in long:
                p = api.get(cid)
                assert (p.pid, p.status) == (pids[cid], S.RUNNING)
                waiting = api.tasks.Wait.future(
                    tasks_pb2.WaitRequest(container_id=cid), metadata=api.md
                )
                time.sleep(0.05)
                assert not waiting.done()
                api.kill(cid, signal.SIGKILL)
                assert waiting.result(timeout=30).exit_status == 137
                assert api.get(cid).status == S.STOPPED
            got = events.until(lambda e: e.topic == "/tasks/exit" and long[-1] in decode(e).id)
        finally:
            events.close()
        exits = {decode(e).id: decode(e).exit_status for e in got if e.topic == "/tasks/exit"}
        assert exits == dict.fromkeys(long, 137)  # the recovered daemon reports exits again
        for cid in long:
            assert api.delete(cid).exit_status == 137
            assert code_of(lambda c=cid: api.get(c))[0] == grpc.StatusCode.NOT_FOUND
        assert api.list() == {}


def test_killed_monitor_is_reported_not_lost(
    daemon: Linerd, busybox_layout: BusyboxLayout, tmp_path: Path, made: list[str]
) -> None:
    with daemon.channel() as ch:
        api = Api(daemon, ch, chain_id(busybox_layout), tmp_path)
        cid, pid = api.task("monitor", ["sleep", "300"])
        made.append(cid)
        api.start(cid)
        conmon = int((daemon.state / "tasks" / NS / cid / "conmon.pid").read_text())
        os.kill(conmon, signal.SIGKILL)
        # The exit code is unknown: the task is STOPPED with 255 (the container itself may still
        # run; Delete forces it down).
        res = api.wait(cid)
        assert res.exit_status == 255 and res.exited_at.seconds > 0
        p = api.get(cid)
        assert (p.pid, p.status, p.exit_status) == (pid, S.STOPPED, 255)
        assert api.list()[cid].status == S.STOPPED
        d = api.delete(cid)
        assert (d.pid, d.exit_status) == (pid, 255)
        assert cid not in api.list()
        # The orphaned container is dead too: gone, or a zombie of whatever init it was
        # reparented to (this sandbox's PID 1 reaps lazily).
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        assert state in ("gone", "Z"), state
