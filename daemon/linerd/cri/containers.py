"""The CRI's containers (the `containers` handler group): Create, Start, Stop, Remove, List,
Status, UpdateContainerResources, ReopenContainerLog, ExecSync.

A container is a record in `k8s.io` (kind `container`, its snapshot keyed by its id, its
CRI metadata in an extension) and, from StartContainer on, a task (containerd's order: the
task is created at start). Its output goes to kubelet's log path, written by conmon's
`k8s-file` driver. Once the task has exited, the exit (code, time, reason, OOM) is recorded
in the metadata and the task deleted on the first look after the exit (a status, a list, a
stop, a removal; kubelet lists every second; a List has it done beside its answer), so a
restarted linerd answers from the records and the runtime's recovered tasks alone. (Not on
the exit event: conmon may write its OOM file after the exit file, and a later look sees it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal as signals
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from liner_api.runtime.v1 import api_pb2 as cri
from linerd import faults
from linerd import mounts as mountlib
from linerd.core.types import Container, Encoded, Mount
from linerd.cri import execsync, meta, podns, security, specs
from linerd.cri.image_lookup import ImageLookup
from linerd.cri.names import Names
from linerd.cri.records import Records
from linerd.cri.users import ImageUsers
from linerd.errdefs import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LinerError,
    NotFound,
)
from linerd.local.tasks import Stdio
from linerd.runtime import MONITOR_LOST_STATUS, ProcessState, TaskStatus

if TYPE_CHECKING:
    from linerd.assembly import Core

log = structlog.get_logger("linerd.cri")

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
_RUNNING = (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.CREATED)
IMAGE_USERS_KEPT = 64  # images whose user databases are kept (a node runs a few dozen)


def spec_encoded(spec: dict[str, Any]) -> Encoded:
    return Encoded(SPEC_TYPE, json.dumps(spec, separators=(",", ":")).encode())


def stop_signal_name(config: cri.ContainerConfig, image_config: dict[str, Any]) -> str:
    if config.stop_signal:
        return cri.Signal.Name(config.stop_signal)
    name = str(image_config.get("StopSignal") or "SIGTERM").upper()
    if name.isdigit():
        return signals.Signals(int(name)).name
    return name if name.startswith("SIG") else f"SIG{name}"


class Containers:
    def __init__(
        self,
        core: Core,
        *,
        cgroup_driver: str = "cgroupfs",
        scratch: Path | None = None,
        images: Any = None,
    ) -> None:
        self.core = core
        self.records = Records(core.local.containers)
        self.images = ImageLookup(core.local.images, core.content, images)
        self.names = Names()
        self.cgroup_driver = cgroup_driver
        # Where a new container's rootfs is mounted for a moment (user and group lookups).
        self.scratch = scratch or (core.state / "cri" / "mnt")
        self.exec_dir = core.state / "cri" / "exec"
        self._locks: dict[str, asyncio.Lock] = {}
        self._loaded = False
        self._load_lock = asyncio.Lock()
        # Exits a List found and records beside (`_finalize_soon`): ids, and their tasks.
        self._finalizing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # container id -> pids its stop signal went to (a StopContainer in progress)
        self._signalled: dict[str, set[int]] = {}
        # chain ID -> the image's /etc/passwd and /etc/group, read from a new container's
        # rootfs: a fresh snapshot of that chain is the image's layers and nothing else, and
        # committed layers never change, so the next containers need no temporary mount.
        self._image_users: dict[str, ImageUsers] = {}

    # -- helpers ----------------------------------------------------------------------------

    def image_users(self, chain_id: str) -> ImageUsers | None:
        """The user databases read from a snapshot of `chain_id` (an image's), if kept."""
        return self._image_users.get(chain_id) if chain_id else None

    def keep_users(self, chain_id: str, users: ImageUsers) -> None:
        if len(self._image_users) >= IMAGE_USERS_KEPT and chain_id not in self._image_users:
            del self._image_users[next(iter(self._image_users))]  # oldest first
        self._image_users[chain_id] = users

    async def spec_reading_users(
        self,
        chain_id: str,
        mounts: list[Mount],
        spec_with: Callable[[ImageUsers], dict[str, Any]],
    ) -> dict[str, Any]:
        """`spec_with` the users of `mounts` (an image's snapshot), mounted read-only for a
        moment; the user databases, when both could be read, are kept for `chain_id`'s next
        containers (`image_users`)."""

        def build() -> tuple[dict[str, Any], ImageUsers | None]:
            with mountlib.temp_mount(_readonly(mounts), self.scratch) as rootfs:
                users = ImageUsers(rootfs)
                spec = spec_with(users)
                try:  # both read while mounted
                    users.passwd()
                    users.group()
                except LinerError:
                    return spec, None
                return spec, users

        spec, users = await asyncio.to_thread(build)
        if users is not None and chain_id:
            self.keep_users(chain_id, users)
        return spec

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    async def load(self) -> None:
        """Once, before the first create: the names the records hold, and the leases of
        creates a crash interrupted (none can be in flight yet)."""
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            for record in await self.records.list(meta.KIND_CONTAINER):
                with contextlib.suppress(LinerError):
                    self.names.reserve(meta.container_meta(record).name, record.id)
            await self.records.drop_leases(self.core.local.leases, "cri-create-")
            self._loaded = True

    def task_state(self, container_id: str) -> ProcessState | None:
        try:
            return self.core.local.tasks.state(meta.NAMESPACE, container_id)
        except NotFound:
            return None

    def task_status(self, container_id: str) -> TaskStatus | None:
        """The task's status alone (what a List asks of every container)."""
        try:
            return self.core.local.tasks.status(meta.NAMESPACE, container_id)
        except NotFound:
            return None

    async def finalize(
        self, record: Container, m: meta.ContainerMeta | None = None
    ) -> tuple[Container, meta.ContainerMeta]:
        """Record the exit of a started container whose task has ended, and delete the task.
        `m`: the record's metadata if decoded already. The metadata returned may be shared
        (records.py): copy it before changing it."""
        if m is None:
            m = self.records.decode(record).meta
        if m.state != "running":
            return record, m
        st = self.task_state(record.id)
        if st is not None and st.status in _RUNNING:
            return record, m
        async with self._lock(record.id):
            record = await self.core.local.containers.get(meta.NAMESPACE, record.id)
            m = meta.container_meta(record)
            if m.state != "running":
                return record, m
            st = self.task_state(record.id)
            if st is not None and st.status in _RUNNING:
                return record, m
            oom = False
            if st is not None:
                bundle = self.core.runtime.bundle_dir(meta.NAMESPACE, record.id)
                oom = await asyncio.to_thread((bundle / "persist" / "oom").exists)
                m.exit_code = st.exit_status
                m.finished_at = (
                    int(st.exited_at.timestamp() * 1e9) if st.exited_at else meta.now_ns()
                )
                if st.monitor_lost:
                    m.reason, m.message = "Unknown", "the container's monitor was lost"
            else:  # the task is gone (a reboot): the exit is unknown
                m.exit_code, m.finished_at = MONITOR_LOST_STATUS, meta.now_ns()
                m.reason = "Unknown"
            if oom:
                m.reason = "OOMKilled"
            elif not m.reason:
                m.reason = "Completed" if m.exit_code == 0 else "Error"
            m.state = "exited"
            record = await self.records.save_container(record, m)
            if st is not None:
                with contextlib.suppress(NotFound):
                    await self.core.local.tasks.delete(meta.NAMESPACE, record.id)
            return record, m

    def _finalize_soon(self, record: Container) -> None:
        """`finalize` in a task of its own (once at a time per container), for a List."""
        if record.id in self._finalizing:
            return
        self._finalizing.add(record.id)
        task = asyncio.get_running_loop().create_task(self._finalize_beside(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finalize_beside(self, record: Container) -> None:
        try:
            await self.finalize(record)
        except NotFound:  # removed meanwhile: nobody needs its lock any more
            lock = self._locks.get(record.id)
            if lock is not None and not lock.locked():
                del self._locks[record.id]
        except Exception as e:  # the next look (a status, a stop) tries again
            log.warning("recording a container's exit", id=record.id, error=str(e))
        finally:
            self._finalizing.discard(record.id)

    def state_of(self, record: Container, m: meta.ContainerMeta) -> int:
        if m.state == "exited":
            return cri.CONTAINER_EXITED
        if m.state == "created":
            return cri.CONTAINER_CREATED
        st = self.task_state(record.id)
        if st is None:
            return cri.CONTAINER_UNKNOWN
        if st.status in _RUNNING:
            return cri.CONTAINER_RUNNING
        return cri.CONTAINER_EXITED

    async def _find(self, container_id: str) -> Container:
        return await self.records.find(meta.KIND_CONTAINER, container_id)

    # -- create -----------------------------------------------------------------------------

    async def create_container(
        self, req: cri.CreateContainerRequest
    ) -> cri.CreateContainerResponse:
        await self.load()
        config = req.config
        if not config.metadata.name:
            raise InvalidArgument("container config must include metadata.name")
        sandbox = await self.records.find(meta.KIND_SANDBOX, req.pod_sandbox_id)
        decoded = self.records.decode(sandbox)  # read only below
        smeta, sconfig = decoded.meta, decoded.config
        pause = self.task_state(sandbox.id) if smeta.infra else None
        if not podns.alive(smeta, pause):
            raise FailedPrecondition(f"sandbox {sandbox.id} is not ready")
        smd = sconfig.metadata
        container_id = meta.new_id()
        name = "_".join(
            [config.metadata.name, smd.name, smd.namespace, smd.uid, str(config.metadata.attempt)]
        )
        self.names.reserve(name, container_id)
        try:
            return await self._create(req, sandbox, smeta, sconfig, pause, container_id, name)
        except BaseException:
            self.names.release_by_key(container_id)
            raise

    async def _create(
        self,
        req: cri.CreateContainerRequest,
        sandbox: Container,
        smeta: meta.SandboxMeta,
        sconfig: cri.PodSandboxConfig,
        pause: ProcessState | None,
        container_id: str,
        name: str,
    ) -> cri.CreateContainerResponse:
        config = req.config
        image = await self.images.resolve(config.image.image)
        target_pid = 0
        sc = config.linux.security_context
        if sc.namespace_options.pid == specs.TARGET:
            target = await self._find(sc.namespace_options.target_id)
            st = self.task_state(target.id)
            target_pid = st.pid if st is not None and st.status == TaskStatus.RUNNING else 0
        local = self.core.local
        snapshotter = self.core.default_snapshotter
        image_name = image.first_tag or config.image.image

        def spec_with(users: ImageUsers) -> dict[str, Any]:
            return specs.container_spec(
                container_id=container_id,
                config=config,
                sandbox_id=sandbox.id,
                sandbox_config=sconfig,
                image_config=image.config,
                image_name=image_name,
                namespaces=podns.of(smeta, pause.pid if pause is not None else 0),
                target_pid=target_pid,
                files=smeta.files,
                shm=smeta.shm,
                hostname=smeta.hostname,
                cgroup_driver=self.cgroup_driver,
                rootfs=users,
            )

        def record_with(spec: dict[str, Any]) -> Container:
            log_path = ""
            if config.log_path and sconfig.log_directory:
                log_path = str(Path(sconfig.log_directory) / config.log_path)
            m = meta.ContainerMeta(
                config=config.SerializeToString(),
                name=name,
                sandbox_id=sandbox.id,
                created_at=meta.now_ns(),
                image_ref=image.first_digest,
                image_name=image_name,
                image_id=image.id,
                log_path=log_path,
                stop_signal=stop_signal_name(config, image.config),
            )
            return Container(
                id=container_id,
                runtime=meta.RUNTIME,
                runtime_options=specs.runc_options(self.cgroup_driver),
                spec=spec_encoded(spec),
                image=image_name,
                labels={**config.labels, meta.KIND_LABEL: meta.KIND_CONTAINER},
                snapshotter=snapshotter,
                snapshot_key=container_id,
                sandbox=sandbox.id,
                extensions=meta.container_extension(m),
            )

        known = self.image_users(image.chain_id)
        if known is not None:
            # The image's users are known: the spec needs no rootfs, so the snapshot and
            # the record are written together (one transaction, no lease).
            spec = await asyncio.to_thread(spec_with, known)
            await local.containers.create_with_snapshot(
                meta.NAMESPACE, record_with(spec), local.snapshots, image.chain_id
            )
            faults.point("cri-container-created")
            return cri.CreateContainerResponse(container_id=container_id)
        # The image's first container: its rootfs is mounted for a moment to read the
        # image's /etc/passwd and /etc/group, so the snapshot comes first, held by a lease
        # until the record holds it.
        lease = f"cri-create-{container_id}"
        await local.leases.create(meta.NAMESPACE, lease, {})
        created = False
        try:
            mounts = await local.snapshots.prepare(
                meta.NAMESPACE, snapshotter, container_id, image.chain_id, {}, lease
            )

            spec = await self.spec_reading_users(image.chain_id, mounts, spec_with)
            await local.containers.create(meta.NAMESPACE, record_with(spec))
            created = True
            faults.point("cri-container-created")
        except BaseException:
            if not created:
                with contextlib.suppress(LinerError):
                    await local.snapshots.remove(meta.NAMESPACE, snapshotter, container_id)
            raise
        finally:
            with contextlib.suppress(LinerError):
                await local.leases.delete(meta.NAMESPACE, lease)
        return cri.CreateContainerResponse(container_id=container_id)

    # -- start / stop / remove -------------------------------------------------------------

    async def start_container(self, req: cri.StartContainerRequest) -> cri.StartContainerResponse:
        record = await self._find(req.container_id)
        async with self._lock(record.id):
            record = await self.core.local.containers.get(meta.NAMESPACE, record.id)
            m = meta.container_meta(record)
            if m.state != "created":
                raise FailedPrecondition(f"container {record.id} is not in created state")
            sandbox = await self.records.find(meta.KIND_SANDBOX, m.sandbox_id)
            smeta = meta.sandbox_meta(sandbox)
            pause = self.task_state(sandbox.id) if smeta.infra else None
            if not podns.alive(smeta, pause):
                raise FailedPrecondition(f"sandbox {sandbox.id} is not running")
            config = cri.ContainerConfig.FromString(m.config)
            tasks = self.core.local.tasks
            try:
                # The log's directory is made with the task (in its thread hop).
                await tasks.create(
                    meta.NAMESPACE,
                    record.id,
                    Stdio(terminal=config.tty),
                    log_path=m.log_path,
                    stdin_pipe=config.stdin,
                    stdin_once=config.stdin_once,
                )
                try:
                    await tasks.start(meta.NAMESPACE, record.id)
                except BaseException:
                    with contextlib.suppress(LinerError):
                        await tasks.kill(meta.NAMESPACE, record.id, signals.SIGKILL)
                    with contextlib.suppress(LinerError):
                        await tasks.delete(meta.NAMESPACE, record.id)
                    raise
            except LinerError as e:
                m.state, m.finished_at, m.exit_code = "exited", meta.now_ns(), 128
                m.reason, m.message = "StartError", str(e)
                await self.records.save_container(record, m)
                raise
            m.state, m.started_at = "running", meta.now_ns()
            await self.records.save_container(record, m)
        return cri.StartContainerResponse()

    async def stop_container(self, req: cri.StopContainerRequest) -> cri.StopContainerResponse:
        try:
            record = await self._find(req.container_id)
        except NotFound:
            raise
        await self.stop(record, req.timeout)
        return cri.StopContainerResponse()

    async def stop(self, record: Container, timeout: int) -> None:
        """The stop signal, then SIGKILL after `timeout` seconds (0: SIGKILL at once); the
        exit recorded. Idempotent."""
        m = self.records.decode(record).meta
        if m.state == "created":
            return
        st = self.task_state(record.id)
        tasks = self.core.local.tasks
        if st is not None and st.status in _RUNNING:
            sig = signals.SIGKILL
            if timeout > 0:
                try:
                    sig = signals.Signals[m.stop_signal]
                except KeyError:
                    sig = signals.SIGTERM
            # A repeated StopContainer does not send the stop signal again (a process may
            # take a second SIGTERM as "now"; containerd/containerd#5021), but its deadline
            # counts.
            if sig == signals.SIGKILL or st.pid not in self._signalled.get(record.id, ()):
                self._signalled.setdefault(record.id, set()).add(st.pid)
                with contextlib.suppress(NotFound):
                    await tasks.kill(meta.NAMESPACE, record.id, sig)
            if sig != signals.SIGKILL:
                try:
                    await asyncio.wait_for(tasks.wait(meta.NAMESPACE, record.id), timeout)
                except TimeoutError:
                    with contextlib.suppress(NotFound):
                        await tasks.kill(meta.NAMESPACE, record.id, signals.SIGKILL)
            with contextlib.suppress(NotFound):
                await tasks.wait(meta.NAMESPACE, record.id)
        await self.finalize(record)
        self._signalled.pop(record.id, None)

    async def remove_container(
        self, req: cri.RemoveContainerRequest
    ) -> cri.RemoveContainerResponse:
        try:
            record = await self._find(req.container_id)
        except NotFound:
            return cri.RemoveContainerResponse()  # idempotent
        await self.remove(record)
        return cri.RemoveContainerResponse()

    async def remove(self, record: Container) -> None:
        """Force: a running container is killed first. The log file stays (kubelet's)."""
        await self.stop(record, 0)
        local = self.core.local
        async with self._lock(record.id):
            st = self.task_state(record.id)
            if st is not None:  # created but never started, or a failed start
                with contextlib.suppress(NotFound):
                    await local.tasks.delete(meta.NAMESPACE, record.id)
            with contextlib.suppress(NotFound):
                await local.containers.delete_owning(meta.NAMESPACE, record, local.snapshots)
        self.names.release_by_key(record.id)
        self._locks.pop(record.id, None)

    async def containers_of(self, sandbox_id: str) -> list[Container]:
        return [r for r in await self.records.list(meta.KIND_CONTAINER) if r.sandbox == sandbox_id]

    # -- list / status ----------------------------------------------------------------------

    async def list_containers(self, req: cri.ListContainersRequest) -> cri.ListContainersResponse:
        return cri.ListContainersResponse.FromString(await self.list_containers_bytes(req))

    async def list_containers_bytes(self, req: cri.ListContainersRequest) -> bytes:
        """The ListContainersResponse, serialized: each container's part (a one-container
        response; serialized messages concatenated are their merge, a repeated field's
        items appended) is kept with its record's decoding, per state (records.py)."""
        f = req.filter
        selector = dict(f.label_selector)
        wanted = f.state.state if f.HasField("state") else None
        out = []
        for entry in await self.records.entries(meta.KIND_CONTAINER):
            record, m = entry.record, entry.meta
            if f.id and not record.id.startswith(f.id):
                continue
            if f.pod_sandbox_id and not record.sandbox.startswith(f.pod_sandbox_id):
                continue
            if selector and not meta.matches_labels(entry.labels, selector):
                continue
            if m.state != "running":
                state = self.state_of(record, m)  # created or exited: no task to ask
            elif (status := self.task_status(record.id)) is not None and status in _RUNNING:
                state = cri.CONTAINER_RUNNING  # kubelet's relist: most of them, unchanged
            elif (lock := self._locks.get(record.id)) is not None and lock.locked():
                # A Stop or Remove is at it (and will record the exit).
                state = self.state_of(record, m)
            else:
                # The task has ended (or is gone) and its exit is not recorded yet: recording
                # it makes the container EXITED, which is the answer now; the recording and
                # the task's deletion (a runtime delete) run beside, so kubelet's relist never
                # waits for them (nor for a Stop's kill and wait, before it takes the lock).
                state = cri.CONTAINER_EXITED
                self._finalize_soon(record)
            if wanted is not None and wanted != state:
                continue
            part = entry.views.get(state)  # this decoding's part in this state, built once
            if part is None:
                part = entry.views[state] = _container_part(record, m, entry.config, state)
            out.append(part)
        return b"".join(out)

    async def container_status(
        self, req: cri.ContainerStatusRequest
    ) -> cri.ContainerStatusResponse:
        return cri.ContainerStatusResponse.FromString(await self.container_status_bytes(req))

    async def container_status_bytes(self, req: cri.ContainerStatusRequest) -> bytes:
        """The ContainerStatusResponse, serialized; without `verbose` kept with the record's
        decoding per state (what it shows of the task beyond its state, the exit, is in the
        record once `finalize` recorded it)."""
        record, m = await self.finalize(await self._find(req.container_id))
        entry = self.records.decode(record)
        state = self.state_of(record, m)
        key = ("status", state)
        if not req.verbose and m is entry.meta:
            cached = entry.views.get(key)
            if cached is not None:
                return cached
        config = entry.config
        status = cri.ContainerStatus(
            id=record.id,
            metadata=config.metadata,
            state=state,
            created_at=m.created_at,
            started_at=m.started_at,
            finished_at=m.finished_at,
            exit_code=m.exit_code,
            image=cri.ImageSpec(image=m.image_name, annotations=config.image.annotations),
            image_ref=m.image_ref,
            reason=m.reason,
            message=m.message,
            labels=config.labels,
            annotations=config.annotations,
            mounts=config.mounts,
            log_path=m.log_path,
            image_id=m.image_id,
        )
        if config.linux.HasField("resources"):
            status.resources.linux.CopyFrom(config.linux.resources)
        if not req.verbose:
            raw = cri.ContainerStatusResponse(status=status).SerializeToString()
            if m is entry.meta:
                entry.views[key] = raw
            return raw
        st = self.task_state(record.id)
        info = {
            "info": json.dumps(
                {
                    "sandboxID": record.sandbox,
                    "pid": st.pid if st is not None else 0,
                    "snapshotKey": record.snapshot_key,
                    "snapshotter": record.snapshotter,
                    "runtimeSpec": json.loads(record.spec.value) if record.spec else None,
                }
            )
        }
        return cri.ContainerStatusResponse(status=status, info=info).SerializeToString()

    # -- resources, logs, exec ---------------------------------------------------------------

    async def update_container_resources(
        self, req: cri.UpdateContainerResourcesRequest
    ) -> cri.UpdateContainerResourcesResponse:
        record, m = await self.finalize(await self._find(req.container_id))
        m = dataclasses.replace(m)  # changed below: never the shared one (records.py)
        if m.state == "exited":
            raise FailedPrecondition(f"container {record.id} is not running or created")
        assert record.spec is not None
        spec = json.loads(record.spec.value)
        probe: dict[str, Any] = {"process": {}, "linux": {"resources": {}}}
        security.apply_resources(probe, req.linux)
        resources = probe["linux"]["resources"]
        spec["linux"].setdefault("resources", {}).update(resources)
        st = self.task_state(record.id)
        if st is not None and st.status in _RUNNING:
            await self.core.local.tasks.update(
                meta.NAMESPACE, record.id, json.dumps(resources).encode()
            )
        config = cri.ContainerConfig.FromString(m.config)
        config.linux.resources.CopyFrom(req.linux)
        m.config = config.SerializeToString()
        record.spec = spec_encoded(spec)
        record.extensions = {**record.extensions, **meta.container_extension(m)}
        await self.core.local.containers.update(
            meta.NAMESPACE, record, ["spec", f"extensions.{meta.CONTAINER_EXTENSION}"]
        )
        return cri.UpdateContainerResourcesResponse()

    async def reopen_container_log(
        self, req: cri.ReopenContainerLogRequest
    ) -> cri.ReopenContainerLogResponse:
        record, m = await self.finalize(await self._find(req.container_id))
        if self.state_of(record, m) != cri.CONTAINER_RUNNING:
            raise FailedPrecondition("container is not running")
        if not m.log_path:
            raise FailedPrecondition("container has no log path")
        await self.core.local.tasks.reopen_log(meta.NAMESPACE, record.id)
        return cri.ReopenContainerLogResponse()

    async def exec_sync(self, req: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
        record, m = await self.finalize(await self._find(req.container_id))
        if self.state_of(record, m) != cri.CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        if not req.cmd:
            raise InvalidArgument("exec command must not be empty")
        assert record.spec is not None
        process = dict(json.loads(record.spec.value)["process"])
        process["args"] = list(req.cmd)
        process["terminal"] = False
        process.pop("consoleSize", None)
        result = await execsync.run(
            self.core.local.tasks,
            meta.NAMESPACE,
            record.id,
            process,
            self.exec_dir,
            timeout=float(req.timeout) if req.timeout > 0 else None,
        )
        if result.timed_out:
            raise DeadlineExceeded(
                f"timeout {req.timeout}s exceeded running {list(req.cmd)!r} in {record.id}"
            )
        return cri.ExecSyncResponse(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
        )


def _container_part(
    record: Container, m: meta.ContainerMeta, config: cri.ContainerConfig, state: int
) -> bytes:
    """A ListContainersResponse of this one container, serialized."""
    container = cri.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox,
        metadata=config.metadata,
        image=cri.ImageSpec(image=m.image_name, annotations=config.image.annotations),
        image_ref=m.image_ref,
        state=state,
        created_at=m.created_at,
        labels=config.labels,
        annotations=config.annotations,
        image_id=m.image_id,
    )
    return cri.ListContainersResponse(containers=[container]).SerializeToString()


def _readonly(mounts: list[Any]) -> list[Any]:
    """The snapshot's mounts, read-only: the lookup must not write into the new container."""
    out = []
    for m in mounts:
        options = [o for o in m.options if o not in ("rw",)]
        if "ro" not in options:
            options.append("ro")
        out.append(Mount(type=m.type, source=m.source, options=options))
    return out
