"""The Tasks service through its gRPC stubs, against a real linerd with runc and conmon.

Containers are made as ctr makes them: a spec from `liner_common.ocispec.generate`, stored as an Any
(`types.containerd.io/opencontainers/runtime-spec/1/Spec`), a snapshot prepared on the pulled
image, and FIFOs whose client ends are opened (in threads) before Tasks/Create.

Error codes where linerd differs from containerd (documented here, asserted below):

* Delete of a running (or paused) task: FAILED_PRECONDITION `cannot delete a running
  process`; containerd answers UNKNOWN with the same text.
* The runtime binary does not exist (runc options `BinaryName=/nonexistent/runc`, an absolute
  path): FAILED_PRECONDITION `runtime binary ... not found or not executable`. A bare name not
  on PATH (`BinaryName=nosuch-runc`) is NOT_FOUND `runtime binary 'nosuch-runc' not found`.
  containerd fails both in the shim with UNKNOWN.
* An unknown runtime name: NOT_FOUND `runtime ... is not configured` (containerd: NOT_FOUND too,
  from its shim lookup).
* A command not found in the image, a rootfs mount that fails: FAILED_PRECONDITION with the
  runtime's / mount's message (containerd: UNKNOWN `OCI runtime create failed: ...`).

One daemon and one pulled image per module; each test checks that it leaves no task, bundle,
mount, monitor, runtime state or socket link behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from imagebuild import BusyboxLayout
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.cgroups.v1 import metrics_pb2
from liner_api.containerd.events import task_pb2 as task_events
from liner_api.containerd.runc.v1 import options_pb2
from liner_api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from liner_api.containerd.types import mount_pb2
from liner_api.containerd.types.task import task_pb2
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from liner_common import ocispec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("conmon") or not shutil.which("runc"),
        reason="needs root, conmon and runc",
    ),
]

NS = "tasks-api"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
MARKER = "/test/marker"
C = grpc.StatusCode
S = task_pb2.Status


# ---------------------------------------------------------------------------- helpers


def chain_id(layout: BusyboxLayout) -> str:
    """The image's top snapshot: C1 = D1, Ci = sha256("C(i-1) Di")."""
    chain = ""
    for layer in layout.latest.layers:
        chain = (
            layer.diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {layer.diff_id}".encode()).hexdigest()
        )
    return chain


def pull(daemon: Linerd, ref: str, namespace: str) -> None:
    with daemon.channel() as ch:
        stub = transfer_pb2_grpc.TransferStub(ch)
        req = transfer_pb2.PullRequest(reference=ref, plain_http=True)
        last = list(stub.Pull(req, metadata=ns(namespace)))[-1]
        assert last.done, last


def leftovers(base: Path) -> list[str]:
    """Mounts, monitors, runtime containers, bundles and socket links of the daemon at `base`."""
    prefix = str(base)
    state = base / "state"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(prefix + "/"):
            found.append(f"mount {line.split()[4]}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"conmon" in cmd.split(b"\0")[0] and prefix.encode() in cmd:
            found.append(f"conmon {pid}")
    found += [f"runtime state {p}" for p in state.glob("runtime/*/*/*")]
    found += [f"bundle {p}" for p in state.glob("tasks/*/*")]
    found += [f"socket link {p}" for p in state.glob("s/*")]
    return found


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


class Fifos:
    """Client FIFOs as ctr makes them: stdout/stderr read ends and the stdin write end opened
    in threads before Tasks/Create (or Exec), so the daemon's opens complete."""

    def __init__(self, d: Path, name: str, stdin: bool = False) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.stdout = str(d / f"{name}-stdout")
        self.stderr = str(d / f"{name}-stderr")
        self.stdin = str(d / f"{name}-stdin") if stdin else ""
        self.out: dict[str, bytes] = {}
        self._threads = []
        for p in (self.stdout, self.stderr):
            os.mkfifo(p, 0o700)
            t = threading.Thread(target=self._read, args=(p,), daemon=True)
            t.start()
            self._threads.append(t)
        self._writer: int | None = None
        if stdin:
            os.mkfifo(self.stdin, 0o700)
            self._wt = threading.Thread(target=self._open_writer, daemon=True)
            self._wt.start()

    def _read(self, p: str) -> None:
        with open(p, "rb") as f:
            self.out[p] = f.read()

    def _open_writer(self) -> None:
        self._writer = os.open(self.stdin, os.O_WRONLY)

    def write(self, data: bytes) -> None:
        self._wt.join(5)
        assert self._writer is not None
        os.write(self._writer, data)

    def close_writer(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    @property
    def kw(self) -> dict[str, str]:
        return {"stdin": self.stdin, "stdout": self.stdout, "stderr": self.stderr}

    def output(self, timeout: float = 10) -> tuple[bytes, bytes]:
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), "stdio FIFO never reached EOF"
        return self.out[self.stdout], self.out[self.stderr]


class Subscription:
    """Events/Subscribe read on a thread, limited to one namespace."""

    def __init__(self, ch: grpc.Channel, namespace: str) -> None:
        self.namespace = namespace
        self.events: queue.Queue[events_pb2.Envelope] = queue.Queue()
        self._stub = events_pb2_grpc.EventsStub(ch)
        self._call = self._stub.Subscribe(
            events_pb2.SubscribeRequest(filters=[f'namespace=="{namespace}"']),
            metadata=ns(namespace),
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self._ready()

    def _pump(self) -> None:
        try:
            for envelope in self._call:
                self.events.put(envelope)
        except grpc.RpcError:
            pass

    def _ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._stub.Publish(
                events_pb2.PublishRequest(topic=MARKER, event=AnyPb(type_url="test.Marker")),
                metadata=ns(self.namespace),
            )
            try:
                if self.events.get(timeout=0.2).topic == MARKER:
                    time.sleep(0.1)
                    while not self.events.empty():
                        self.events.get_nowait()
                    return
            except queue.Empty:
                continue
        raise AssertionError("subscription never delivered the marker")

    def until(
        self, stop: Callable[[events_pb2.Envelope], bool], timeout: float = 10
    ) -> list[events_pb2.Envelope]:
        """Events up to and including the first for which `stop` is true."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"event never came; got {[e.topic for e in got]}"
            try:
                envelope = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if envelope.topic == MARKER:
                continue
            got.append(envelope)
            if stop(envelope):
                return got

    def close(self) -> None:
        self._call.cancel()


def decode(envelope: events_pb2.Envelope) -> Any:
    name = envelope.event.type_url.rsplit(".", 1)[-1]
    return getattr(task_events, name).FromString(envelope.event.value)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, busybox_layout: BusyboxLayout
) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("tasks"))
    d.start()
    try:
        pull(d, registry.ref("library/busybox:latest"), NS)
        yield d
    finally:
        d.stop()


class Api:
    """Stubs, the image's top snapshot, and helpers that make containers and tasks."""

    def __init__(
        self,
        daemon: Linerd,
        ch: grpc.Channel,
        parent: str,
        tmp: Path,
        runtime: str = "io.containerd.runc.v2",
    ) -> None:
        self.runtime = runtime  # what containers get unless a test names another
        self.daemon = daemon
        self.parent = parent
        self.tmp = tmp
        self.md = ns(NS)
        self.tasks = tasks_pb2_grpc.TasksStub(ch)
        self.containers = containers_pb2_grpc.ContainersStub(ch)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(ch)
        self.leases = leases_pb2_grpc.LeasesStub(ch)
        self.made: list[str] = []
        self.mounts: dict[str, list[mount_pb2.Mount]] = {}

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"

    def spec(self, cid: str, args: list[str], **changes: Any) -> dict[str, Any]:
        spec = ocispec.generate(NS, cid, [ocispec.with_args(args)])
        spec.update(changes)
        return spec

    def container(
        self,
        cid: str,
        args: list[str],
        *,
        raw_spec: bytes | None = None,
        runtime: str = "",
        binary: str = "",
    ) -> list[mount_pb2.Mount]:
        """Snapshots/Prepare + Containers/Create in a lease, as `ctr run` does (without it the
        garbage collector may take the new snapshot first); returns the rootfs mounts."""
        lease = self.leases.Create(leases_pb2.CreateRequest(), metadata=self.md).lease.id
        try:
            self._container(cid, args, ns(NS, lease), raw_spec, runtime or self.runtime, binary)
        finally:
            self.leases.Delete(leases_pb2.DeleteRequest(id=lease), metadata=self.md)
        return self.mounts[cid]

    def _container(
        self,
        cid: str,
        args: list[str],
        md: list[tuple[str, str]],
        raw_spec: bytes | None,
        runtime: str,
        binary: str,
    ) -> None:
        mounts = list(
            self.snapshots.Prepare(
                snapshots_pb2.PrepareSnapshotRequest(
                    snapshotter="overlayfs", key=cid, parent=self.parent
                ),
                metadata=md,
            ).mounts
        )
        self.made.append(cid)
        self.mounts[cid] = mounts
        options = options_pb2.Options(binary_name=binary).SerializeToString()
        spec = raw_spec if raw_spec is not None else json.dumps(self.spec(cid, args)).encode()
        self.containers.Create(
            containers_pb2.CreateContainerRequest(
                container=containers_pb2.Container(
                    id=cid,
                    image="test/busybox:latest",
                    runtime=containers_pb2.Container.Runtime(
                        name=runtime, options=AnyPb(type_url=RUNC_OPTIONS_URL, value=options)
                    ),
                    spec=AnyPb(type_url=SPEC_URL, value=spec),
                    snapshotter="overlayfs",
                    snapshot_key=cid,
                )
            ),
            metadata=md,
        )

    def create(self, cid: str, io: Fifos | None = None, **fields: Any) -> int:
        req = tasks_pb2.CreateTaskRequest(
            container_id=cid, rootfs=self.mounts[cid], **(io.kw if io else {}), **fields
        )
        return self.tasks.Create(req, metadata=self.md).pid

    def task(self, prefix: str, args: list[str], io: Fifos | None = None) -> tuple[str, int]:
        """A new container and its created (not started) task."""
        cid = self.new_id(prefix)
        self.container(cid, args)
        return cid, self.create(cid, io)

    def start(self, cid: str, exec_id: str = "") -> int:
        req = tasks_pb2.StartRequest(container_id=cid, exec_id=exec_id)
        return self.tasks.Start(req, metadata=self.md).pid

    def get(self, cid: str, exec_id: str = "") -> task_pb2.Process:
        req = tasks_pb2.GetRequest(container_id=cid, exec_id=exec_id)
        return self.tasks.Get(req, metadata=self.md).process

    def wait(self, cid: str, exec_id: str = "", timeout: float = 30) -> tasks_pb2.WaitResponse:
        req = tasks_pb2.WaitRequest(container_id=cid, exec_id=exec_id)
        return self.tasks.Wait(req, metadata=self.md, timeout=timeout)

    def kill(self, cid: str, sig: int = signal.SIGKILL, exec_id: str = "", all: bool = False):
        req = tasks_pb2.KillRequest(container_id=cid, exec_id=exec_id, signal=sig, all=all)
        return self.tasks.Kill(req, metadata=self.md)

    def delete(self, cid: str) -> tasks_pb2.DeleteResponse:
        return self.tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=self.md)

    def delete_process(self, cid: str, exec_id: str) -> tasks_pb2.DeleteResponse:
        req = tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id=exec_id)
        return self.tasks.DeleteProcess(req, metadata=self.md)

    def pids(self, cid: str) -> list[task_pb2.ProcessInfo]:
        req = tasks_pb2.ListPidsRequest(container_id=cid)
        return list(self.tasks.ListPids(req, metadata=self.md).processes)

    def exec(self, cid: str, exec_id: str, args: list[str], io: Fifos | None = None) -> None:
        process = self.spec(cid, args)["process"]
        self.tasks.Exec(
            tasks_pb2.ExecProcessRequest(
                container_id=cid,
                exec_id=exec_id,
                spec=AnyPb(type_url=PROCESS_URL, value=json.dumps(process).encode()),
                **(io.kw if io else {}),
            ),
            metadata=self.md,
        )

    def list(self) -> dict[str, task_pb2.Process]:
        return {
            t.id: t for t in self.tasks.List(tasks_pb2.ListTasksRequest(), metadata=self.md).tasks
        }

    def remove_container(self, cid: str) -> None:
        """Snapshots/Remove + Containers/Delete (what `ctr containers rm` does)."""
        for call in (
            lambda: self.snapshots.Remove(
                snapshots_pb2.RemoveSnapshotRequest(snapshotter="overlayfs", key=cid),
                metadata=self.md,
            ),
            lambda: self.containers.Delete(
                containers_pb2.DeleteContainerRequest(id=cid), metadata=self.md
            ),
        ):
            try:
                call()
            except grpc.RpcError as e:
                if e.code() != C.NOT_FOUND:
                    raise

    def force_clean(self) -> None:
        for cid in self.list():
            for call in (
                lambda c=cid: self.kill(c, all=True),
                lambda c=cid: self.wait(c, timeout=10),
            ):
                with contextlib.suppress(grpc.RpcError):
                    call()
            with contextlib.suppress(grpc.RpcError):
                self.delete(cid)


RUNTIMES = ["io.containerd.runc.v2"] + (["crun"] if shutil.which("crun") else [])


@pytest.fixture(params=RUNTIMES)
def api(
    daemon: Linerd, busybox_layout: BusyboxLayout, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Api]:
    """The lifecycle tests run with runc and, where installed, crun (through linerd's wrapper
    on this hybrid-cgroup host)."""
    with daemon.channel() as ch:
        a = Api(daemon, ch, chain_id(busybox_layout), tmp_path, request.param)
        yield a
        left = [f"task {t}" for t in a.list()] + leftovers(daemon.base)
        if left:
            a.force_clean()
        for cid in a.made:
            a.remove_container(cid)
        assert not left, f"left behind: {left}"


# ---------------------------------------------------------------------------- lifecycle


def test_lifecycle_statuses_wait_and_delete(api: Api) -> None:
    io = Fifos(api.tmp / "io", "life")
    script = "echo out; echo err >&2; sleep 0.3; exit 3"
    cid, pid = api.task("life", ["sh", "-c", script], io)
    assert pid > 0
    p = api.get(cid)
    # As containerd: the init process has id = container id and an empty container_id.
    assert (p.id, p.container_id, p.pid, p.status) == (cid, "", pid, S.CREATED)
    assert (p.stdout, p.stderr, p.terminal) == (io.stdout, io.stderr, False)
    assert api.list()[cid].status == S.CREATED

    # Wait before Start: blocks, then answers with the exit.
    waiting = api.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=cid), metadata=api.md)
    time.sleep(0.2)
    assert not waiting.done()
    assert api.start(cid) == pid
    assert api.get(cid).status == S.RUNNING
    listed = api.tasks.List(tasks_pb2.ListTasksRequest(filter=f"id=={cid}"), metadata=api.md)
    assert [(t.id, t.status) for t in listed.tasks] == [(cid, S.RUNNING)]
    res = waiting.result(timeout=30)
    assert res.exit_status == 3 and res.exited_at.seconds > 0
    # The output is complete when Wait answers.
    assert io.output() == (b"out\n", b"err\n")

    p = api.get(cid)
    assert (p.status, p.exit_status, p.exited_at) == (S.STOPPED, 3, res.exited_at)
    assert api.list()[cid].status == S.STOPPED
    # Wait after the exit answers at once.
    t0 = time.monotonic()
    assert api.wait(cid) == res
    assert time.monotonic() - t0 < 0.5
    assert code_of(lambda: api.kill(cid)) == (C.NOT_FOUND, "process already finished")
    assert code_of(lambda: api.start(cid))[0] == C.FAILED_PRECONDITION

    d = api.delete(cid)
    assert (d.id, d.pid, d.exit_status, d.exited_at) == (cid, pid, 3, res.exited_at)
    assert code_of(lambda: api.get(cid)) == (C.NOT_FOUND, f"task {cid} not found")
    assert code_of(lambda: api.wait(cid))[0] == C.NOT_FOUND
    assert code_of(lambda: api.delete(cid))[0] == C.NOT_FOUND
    assert cid not in api.list()

    # The container stays; a new task for it runs.
    assert api.create(cid) > 0
    api.start(cid)
    assert api.wait(cid).exit_status == 3
    api.delete(cid)


def test_list_follows_each_state_change(api: Api) -> None:
    """Tasks/List answers from states and serializations kept while a task's state does not
    change: every change shows in the next List, as Get shows it."""
    cid, pid = api.task("listed", ["sleep", "300"])
    other, _ = api.task("listed-other", ["sleep", "300"])

    def same() -> task_pb2.Process:
        listed = api.list()
        assert listed[cid] == api.get(cid)
        assert listed[other] == api.get(other)
        return listed[cid]

    assert same().status == S.CREATED
    assert same().status == S.CREATED  # unchanged: the kept answer
    api.start(cid)
    assert (same().status, same().pid) == (S.RUNNING, pid)
    api.tasks.Pause(tasks_pb2.PauseTaskRequest(container_id=cid), metadata=api.md)
    assert same().status == S.PAUSED
    api.tasks.Resume(tasks_pb2.ResumeTaskRequest(container_id=cid), metadata=api.md)
    assert same().status == S.RUNNING
    api.kill(cid)
    exited = api.wait(cid)
    p = same()
    assert (p.status, p.exit_status, p.exited_at) == (S.STOPPED, 137, exited.exited_at)
    api.delete(cid)
    assert cid not in api.list()
    assert api.list()[other] == api.get(other)
    api.delete(other)
    assert api.list() == {}


def test_kill_all_and_delete_of_a_running_task(api: Api) -> None:
    # PID 1 ignores TERM and has a child: `all` reaches the child too.
    cid, _pid = api.task("killall", ["sh", "-c", "trap '' TERM; sleep 300 & wait; exit 9"])
    api.start(cid)
    deadline = time.monotonic() + 5
    while len(api.pids(cid)) < 2:
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)

    # containerd: UNKNOWN "cannot delete a running process"; linerd: FAILED_PRECONDITION.
    assert code_of(lambda: api.delete(cid)) == (
        C.FAILED_PRECONDITION,
        "cannot delete a running process",
    )
    api.tasks.Pause(tasks_pb2.PauseTaskRequest(container_id=cid), metadata=api.md)
    assert api.get(cid).status == S.PAUSED
    assert code_of(lambda: api.delete(cid))[0] == C.FAILED_PRECONDITION
    api.tasks.Resume(tasks_pb2.ResumeTaskRequest(container_id=cid), metadata=api.md)
    assert api.get(cid).status == S.RUNNING

    api.kill(cid, signal.SIGTERM)  # ignored
    time.sleep(0.3)
    assert api.get(cid).status == S.RUNNING
    api.kill(cid, signal.SIGKILL, all=True)
    assert api.wait(cid).exit_status == 137
    assert api.delete(cid).exit_status == 137


def test_delete_of_a_created_task(api: Api) -> None:
    cid, pid = api.task("created", ["sleep", "300"])
    d = api.delete(cid)  # never started: the runtime kills it
    assert (d.pid, d.exit_status) == (pid, 137)
    assert code_of(lambda: api.get(cid))[0] == C.NOT_FOUND


# ---------------------------------------------------------------------------- exec


def test_exec_pids_and_delete_process(api: Api) -> None:
    cid, pid = api.task("exec", ["sleep", "300"])
    api.start(cid)

    io = Fifos(api.tmp / "io", "e1", stdin=True)
    api.exec(cid, "e1", ["sh", "-c", "read l; echo got:$l; echo e-err >&2; exit 5"], io)
    assert code_of(lambda: api.exec(cid, "e1", ["true"]))[0] == C.ALREADY_EXISTS
    assert code_of(lambda: api.exec(cid, "", ["true"]))[0] == C.INVALID_ARGUMENT
    p = api.get(cid, "e1")
    assert (p.id, p.container_id, p.status) == ("e1", cid, S.CREATED)
    epid = api.start(cid, "e1")
    assert epid > 0 and epid != pid
    assert api.get(cid, "e1").status == S.RUNNING

    by_pid = {p.pid: p.info for p in api.pids(cid)}
    assert set(by_pid) == {pid, epid}
    assert not by_pid[pid].type_url  # the init process carries no details
    assert by_pid[epid].type_url == "containerd.runc.v1.ProcessDetails"
    assert options_pb2.ProcessDetails.FromString(by_pid[epid].value).exec_id == "e1"

    io.write(b"ping\n")
    io.close_writer()
    req = tasks_pb2.CloseIORequest(container_id=cid, exec_id="e1", stdin=True)
    api.tasks.CloseIO(req, metadata=api.md)
    assert api.wait(cid, "e1").exit_status == 5
    assert io.output() == (b"got:ping\n", b"e-err\n")
    assert api.get(cid).status == S.RUNNING  # the task is not affected
    d = api.delete_process(cid, "e1")
    assert (d.id, d.pid, d.exit_status) == ("e1", epid, 5)
    assert code_of(lambda: api.get(cid, "e1"))[0] == C.NOT_FOUND

    # killed by its exec id; an exec never started is readable and removable
    api.exec(cid, "e2", ["sleep", "300"])
    api.exec(cid, "never", ["true"])
    api.start(cid, "e2")
    assert code_of(lambda: api.delete_process(cid, "e2"))[0] == C.FAILED_PRECONDITION
    api.kill(cid, signal.SIGKILL, exec_id="e2")
    assert api.wait(cid, "e2").exit_status == 137
    assert api.get(cid).status == S.RUNNING
    assert api.get(cid, "never").status == S.CREATED
    for exec_id in ("e2", "never"):
        api.delete_process(cid, exec_id)

    # a command the image lacks: Start fails, the exec is gone
    api.exec(cid, "bad", ["/bin/nosuch"])
    code, msg = code_of(lambda: api.start(cid, "bad"))
    assert code == C.FAILED_PRECONDITION and "nosuch" in msg, msg
    assert code_of(lambda: api.get(cid, "bad"))[0] == C.NOT_FOUND
    assert not list((api.daemon.state / "tasks" / NS / cid / "x").iterdir())

    api.kill(cid)
    assert api.wait(cid).exit_status == 137
    assert code_of(lambda: api.exec(cid, "late", ["true"]))[0] == C.FAILED_PRECONDITION
    api.delete(cid)


# ---------------------------------------------------------------------------- resources


def test_metrics_update_and_oom(api: Api, daemon: Linerd) -> None:
    cid, _pid = api.task("oom", ["sleep", "300"])
    api.start(cid)

    def metrics() -> metrics_pb2.Metrics:
        res = api.tasks.Metrics(tasks_pb2.MetricsRequest(filters=[f"id=={cid}"]), metadata=api.md)
        (m,) = res.metrics
        assert m.id == cid and m.data.type_url == "io.containerd.cgroups.v1.Metrics"
        return metrics_pb2.Metrics.FromString(m.data.value)

    m = metrics()
    assert m.memory.usage.usage > 0 and m.memory.cache + m.memory.rss > 0, m
    assert m.pids.current >= 1 and m.cpu.usage.total > 0

    limit = 32 << 20
    resources = {"memory": {"limit": limit, "swap": limit}}
    api.tasks.Update(
        tasks_pb2.UpdateTaskRequest(
            container_id=cid,
            resources=AnyPb(type_url=RESOURCES_URL, value=json.dumps(resources).encode()),
        ),
        metadata=api.md,
    )
    assert metrics().memory.usage.limit == limit

    with daemon.channel() as ch:
        events = Subscription(ch, NS)
        try:
            # An exec that grows a shell variable past the new limit: the kernel OOM-kills it.
            api.exec(cid, "hog", ["sh", "-c", "x=aaaaaaaa; while :; do x=$x$x; done"])
            api.start(cid, "hog")
            assert api.wait(cid, "hog").exit_status == 137
            got = events.until(lambda e: e.topic == "/tasks/oom")
        finally:
            events.close()
    assert decode(got[-1]).container_id == cid
    assert metrics().memory.usage.max == limit  # the peak reached the limit
    assert api.get(cid).status == S.RUNNING
    api.delete_process(cid, "hog")
    api.kill(cid)
    api.wait(cid)
    # no metrics for a stopped task
    res = api.tasks.Metrics(tasks_pb2.MetricsRequest(filters=[f"id=={cid}"]), metadata=api.md)
    assert list(res.metrics) == []
    api.delete(cid)


# ---------------------------------------------------------------------------- events


def test_events_in_order(api: Api, daemon: Linerd) -> None:
    with daemon.channel() as ch:
        events = Subscription(ch, NS)
        try:
            runs = []
            for i in range(3):  # fast exits: the exit must still follow the start event
                cid, pid = api.task(f"ev{i}", ["true"] if i else ["sh", "-c", "exit 4"])
                api.start(cid)
                status = api.wait(cid).exit_status
                api.delete(cid)
                api.remove_container(cid)
                runs.append((cid, pid, status))
            got = events.until(
                lambda e: e.topic == "/containers/delete" and runs[-1][0].encode() in e.event.value
            )
        finally:
            events.close()

    for cid, pid, status in runs:
        mine = [e for e in got if cid.encode() in e.event.value]
        assert [e.topic for e in mine] == [
            "/snapshot/prepare",
            "/containers/create",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/snapshot/remove",
            "/containers/delete",
        ], cid
        assert all(e.namespace == NS for e in mine)
        by_topic = {e.topic: e for e in mine}
        assert by_topic["/tasks/create"].event.type_url == "containerd.events.TaskCreate"
        created = decode(by_topic["/tasks/create"])
        assert (created.container_id, created.pid) == (cid, pid)
        assert created.bundle == str(daemon.state / "tasks" / NS / cid)
        assert [m.type for m in created.rootfs] == ["overlay"]
        started = decode(by_topic["/tasks/start"])
        assert (started.container_id, started.pid) == (cid, pid)
        exited = decode(by_topic["/tasks/exit"])
        assert (exited.container_id, exited.id, exited.pid) == (cid, cid, pid)
        assert exited.exit_status == status == (4 if cid.startswith("ev0") else 0)
        deleted = decode(by_topic["/tasks/delete"])
        assert (deleted.pid, deleted.exit_status, deleted.exited_at) == (
            pid,
            status,
            exited.exited_at,
        )


# ---------------------------------------------------------------------------- bad input


def test_unknown_task_is_not_found(api: Api) -> None:
    cid = api.new_id("notask")
    api.container(cid, ["true"])  # a container without a task
    calls: dict[str, Callable[[], Any]] = {
        "Create (no container)": lambda: api.tasks.Create(
            tasks_pb2.CreateTaskRequest(container_id="no-such-container"), metadata=api.md
        ),
        "Start": lambda: api.start(cid),
        "Start exec": lambda: api.start(cid, "x"),
        "Kill": lambda: api.kill(cid),
        "Wait": lambda: api.wait(cid),
        "Delete": lambda: api.delete(cid),
        "Get": lambda: api.get(cid),
        "Exec": lambda: api.exec(cid, "x", ["true"]),
        "DeleteProcess": lambda: api.delete_process(cid, "x"),
        "ListPids": lambda: api.pids(cid),
        "Pause": lambda: api.tasks.Pause(
            tasks_pb2.PauseTaskRequest(container_id=cid), metadata=api.md
        ),
        "Update": lambda: api.tasks.Update(
            tasks_pb2.UpdateTaskRequest(
                container_id=cid, resources=AnyPb(type_url=RESOURCES_URL, value=b"{}")
            ),
            metadata=api.md,
        ),
        "CloseIO": lambda: api.tasks.CloseIO(
            tasks_pb2.CloseIORequest(container_id=cid, stdin=True), metadata=api.md
        ),
    }
    codes = {name: code_of(call)[0] for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, C.NOT_FOUND)


def _no_task_left(api: Api, cid: str) -> None:
    assert cid not in api.list()
    assert not (api.daemon.state / "tasks" / NS / cid).exists()
    assert not leftovers(api.daemon.base)


# Each case: how the container is made (or the task created), the code, a message fragment.
BAD_CREATES: dict[str, tuple[dict[str, Any], grpc.StatusCode, str]] = {
    "spec is not JSON": ({"raw_spec": b"{not json"}, C.INVALID_ARGUMENT, "not valid JSON"),
    "spec without args": ({"raw_spec": b'{"process": {}}'}, C.INVALID_ARGUMENT, "process.args"),
    "runtime binary missing": (
        {"binary": "/nonexistent/runc"},
        C.FAILED_PRECONDITION,
        "/nonexistent/runc",
    ),
    "runtime binary not on PATH": ({"binary": "nosuch-runc"}, C.NOT_FOUND, "nosuch-runc"),
    "unknown runtime name": (
        {"runtime": "io.containerd.nosuch.v1"},
        C.NOT_FOUND,
        "io.containerd.nosuch.v1",
    ),
    "command not found": ({"args": ["/bin/nosuch"]}, C.FAILED_PRECONDITION, "nosuch"),
    "rootfs mount fails": ({"rootfs": "bogus"}, C.FAILED_PRECONDITION, "/nonexistent/rootfs"),
}


@pytest.mark.parametrize("case", list(BAD_CREATES))
def test_bad_create_leaves_nothing_behind(api: Api, case: str) -> None:
    how, want, fragment = BAD_CREATES[case]
    how = dict(how)
    cid = api.new_id("bad")
    rootfs = how.pop("rootfs", None)
    args = how.pop("args", ["true"])
    api.container(cid, args, **how)
    if rootfs:
        bogus = mount_pb2.Mount(type="bind", source="/nonexistent/rootfs", options=["rbind"])
        call: Callable[[], Any] = lambda: api.tasks.Create(  # noqa: E731
            tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=[bogus]), metadata=api.md
        )
    else:
        call = lambda: api.create(cid)  # noqa: E731
    code, msg = code_of(call)
    assert (code, fragment in msg) == (want, True), msg
    _no_task_left(api, cid)
    if case == "rootfs mount fails":
        # the id is free again: with its real rootfs the task runs
        api.create(cid)
        api.start(cid)
        assert api.wait(cid).exit_status == 0
        api.delete(cid)


def test_second_create_and_bad_exec_ids(api: Api) -> None:
    cid, pid = api.task("dup", ["sleep", "300"])
    code, msg = code_of(lambda: api.create(cid))
    assert code == C.ALREADY_EXISTS and msg == f"task {cid}: already exists", msg
    assert api.get(cid).pid == pid  # the first task is untouched
    api.start(cid)
    assert code_of(lambda: api.exec(cid, "", ["true"]))[0] == C.INVALID_ARGUMENT
    assert code_of(lambda: api.exec(cid, "bad/id", ["true"]))[0] == C.INVALID_ARGUMENT
    api.exec(cid, "x", ["true"])
    assert code_of(lambda: api.exec(cid, "x", ["true"]))[0] == C.ALREADY_EXISTS
    api.delete_process(cid, "x")
    api.kill(cid)
    api.wait(cid)
    api.delete(cid)
