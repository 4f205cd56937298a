"""The CRI's pod sandboxes (the `sandboxes` handler group): Run, Stop, Remove, Status, List.

A sandbox is a record in `k8s.io` (kind `sandbox`). Its network, IPC and UTS namespaces are
pinned at files (CRI-O's pinns; `cri/netns.py`), and its containers join them by path. A pause
process (the record's task) runs only where the pod needs one: when its containers share a
pid namespace (NamespaceMode POD: critest's default, Kubernetes' shareProcessNamespace), or
everywhere with `[cri] drop_infra_ctr = false` (CRI-O's rule and setting; `podns.py`).
RunPodSandbox, as containerd 1.7 does, but with the pod's files and namespaces before the
record, so the record is created naming them (one transaction, with the pause's snapshot):

    reserve the name -> [sandbox image (pulled on demand)] -> hostname, hosts, resolv.conf
    -> net/IPC/UTS namespaces pinned -> /dev/shm [+ the pause's spec] -> record
    ("creating", the namespaces' paths) [+ snapshot, in its transaction] -> CNI ADD (lo up,
    then the configured list; result cached by the CNI client) -> sysctls -> [pause task
    started] -> "ready"

A crash before the record leaves files, namespaces and a /dev/shm no record names, which the
next start reaps; from the record on, every step leaves a trace a restarted linerd can undo.
With a pause, CNI ADD and the sysctls run beside the pause's create and start (the
pause joins the pinned namespaces by path and needs nothing of their network), and the
record says "ready" once both are done (the sandbox image's first pod after a start reads
its users from a mount of the new snapshot, then saves the spec). A failure unwinds in
reverse (after a CNI ADD in flight has finished). StopPodSandbox stops every container and
the pause, then CNI DEL (while the netns still exists: bridge's ipMasq needs it) and the
pinned namespaces, idempotently and from the saved state alone. Orphans of a crash (a
namespace file or a directory no record names) are reaped the first time the group is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal as signals
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from liner_api.runtime.v1 import api_pb2 as cri
from linerd import faults
from linerd.core.types import Container
from linerd.cri import meta, netns, podns, sandbox_files, specs
from linerd.cri.cni import CNI, PodNetwork, PodRef, PortMapping
from linerd.cri.containers import Containers, spec_encoded
from linerd.cri.image_lookup import ImageLookup
from linerd.cri.names import Names
from linerd.cri.users import ImageUsers
from linerd.errdefs import FailedPrecondition, InvalidArgument, LinerError, NotFound
from linerd.local.tasks import Stdio
from linerd.runtime import TaskStatus

if TYPE_CHECKING:
    from linerd.assembly import Core

log = structlog.get_logger("linerd.cri")

Pull = Callable[[str], Awaitable[Any]]
_PROTOCOLS = {cri.TCP: "tcp", cri.UDP: "udp", cri.SCTP: "sctp"}


def pod_ref(config: cri.PodSandboxConfig) -> PodRef:
    md = config.metadata
    return PodRef(namespace=md.namespace, name=md.name, uid=md.uid)


def _set_network(m: meta.SandboxMeta, network: PodNetwork | None) -> None:
    if network is not None:
        m.ip, m.additional_ips = network.ip, list(network.additional_ips)


def port_mappings(config: cri.PodSandboxConfig) -> list[PortMapping]:
    # containerd skips mappings without a host port.
    return [
        PortMapping(
            host_port=p.host_port,
            container_port=p.container_port,
            protocol=_PROTOCOLS.get(p.protocol, "tcp"),
            host_ip=p.host_ip,
        )
        for p in config.port_mappings
        if p.host_port > 0
    ]


class Sandboxes:
    def __init__(
        self,
        core: Core,
        containers: Containers,
        *,
        cni: CNI | None,
        sandbox_image: str,
        cgroup_driver: str = "cgroupfs",
        pull: Pull | None = None,
        images: Any = None,
        drop_infra_ctr: bool = True,
    ) -> None:
        self.core = core
        self.containers = containers
        self.cni = cni
        self.sandbox_image = sandbox_image
        self.cgroup_driver = cgroup_driver
        self.drop_infra_ctr = drop_infra_ctr
        # The containers group's: one view of the records, rebuilt once per change for both
        # halves of kubelet's relist.
        self.records = containers.records
        self.images = ImageLookup(core.local.images, core.content, images)
        self.names = Names()
        self._pull = pull or (lambda ref: core.local.transfer.pull(meta.NAMESPACE, ref))
        self.files_dir = core.root / "cri" / "sandboxes"
        self.state_dir = core.state / "cri" / "sandboxes"
        self.netns_dir = core.state / "cri" / "netns"
        self._locks: dict[str, asyncio.Lock] = {}
        self._pulling: asyncio.Lock = asyncio.Lock()
        self._loaded = False
        self._load_lock = asyncio.Lock()

    # -- restart ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Once, before the first call that changes pods: names from the records, the netns
        files and directories no record names reaped (a crash between their creation and
        the record's) and the leases of runs a crash interrupted."""
        if not self._loaded:
            async with self._load_lock:
                if not self._loaded:
                    await self._load()
                    await self.records.drop_leases(self.core.local.leases, "cri-run-")
                    self._loaded = True
        await self.containers.load()

    async def _load(self) -> None:
        known = set()
        sandboxes = await self.records.list(meta.KIND_SANDBOX)
        for record in sandboxes:
            with contextlib.suppress(LinerError):
                m = meta.sandbox_meta(record)
                self.names.reserve(m.name, record.id)
                known.update(p for p in (m.netns, m.ipcns, m.utsns) if p)
        for path in await asyncio.to_thread(netns.list_pinned, self.netns_dir):
            if str(path) not in known:
                log.warning("removing an orphan pod namespace", path=str(path))
                with contextlib.suppress(LinerError):
                    await asyncio.to_thread(netns.remove, path)
        ids = {r.id for r in sandboxes}

        def reap_dirs() -> None:
            # A pod's /dev/shm mounted before a crash cut its run short of the record.
            for base in (self.state_dir, self.files_dir):
                for d in sorted(base.iterdir()) if base.is_dir() else []:
                    if d.name not in ids:
                        sandbox_files.unmount_shm(d / "shm")
                        sandbox_files.remove_files(d)

        await asyncio.to_thread(reap_dirs)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _pause(self, sandbox_id: str) -> Any:
        try:
            return self.core.local.tasks.state(meta.NAMESPACE, sandbox_id)
        except NotFound:
            return None

    def ready(self, record: Container, m: meta.SandboxMeta) -> bool:
        if m.state == "ready" and m.infra:
            # podns.alive's rule for a pod with a pause, asking its task for the status alone
            # (a List asks it of every pod)
            try:
                status = self.core.local.tasks.status(meta.NAMESPACE, record.id)
            except NotFound:
                return False
            return status == TaskStatus.RUNNING
        return podns.alive(m, None)

    # -- run --------------------------------------------------------------------------------

    async def _ensure_image(self) -> Any:
        try:
            return await self.images.resolve(self.sandbox_image)
        except NotFound:
            pass
        async with self._pulling:  # one pull for pods started together
            try:
                return await self.images.resolve(self.sandbox_image)
            except NotFound:
                await self._pull(self.sandbox_image)
            return await self.images.resolve(self.sandbox_image)

    async def run_pod_sandbox(self, req: cri.RunPodSandboxRequest) -> cri.RunPodSandboxResponse:
        await self.load()
        config = req.config
        md = config.metadata
        if not (md.name and md.namespace and md.uid):
            raise InvalidArgument("sandbox config must include metadata name, namespace and uid")
        if req.runtime_handler not in ("", "runc"):
            raise NotFound(f"no runtime for {req.runtime_handler!r} is configured")
        sandbox_id = meta.new_id()
        name = "_".join([md.name, md.namespace, md.uid, str(md.attempt)])
        self.names.reserve(name, sandbox_id)
        try:
            async with self._lock(sandbox_id):
                await self._run(req, sandbox_id, name)
        except BaseException:
            self.names.release_by_key(sandbox_id)
            raise
        return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def _run(self, req: cri.RunPodSandboxRequest, sandbox_id: str, name: str) -> None:
        config = req.config
        opts = specs.namespace_options(config)
        # CRI-O's rule: only a shared pid namespace needs a process to hold it.
        infra = not self.drop_infra_ctr or opts.pid == specs.POD
        kinds = []
        if opts.network != specs.NODE:
            if self.cni is None:
                raise FailedPrecondition("pod networking is not configured (no CNI)")
            kinds += [netns.NET, netns.UTS]
        if opts.ipc != specs.NODE:
            kinds.append(netns.IPC)
        netns.check_sysctls(config.linux.sysctls, kinds)
        image = await self._ensure_image() if infra else None
        local = self.core.local
        snapshotter = self.core.default_snapshotter
        m = meta.SandboxMeta(
            config=config.SerializeToString(),
            name=name,
            created_at=meta.now_ns(),
            runtime_handler=req.runtime_handler,
            cgroup_parent=config.linux.cgroup_parent,
            image=self.sandbox_image if infra else "",
            infra=infra,
        )
        record: Container | None = None
        networking: asyncio.Future[PodNetwork | None] | None = None
        files = self.files_dir / sandbox_id
        m.files = str(files)
        shm = self.state_dir / sandbox_id / "shm" if opts.ipc != specs.NODE else None
        if shm is not None:
            m.shm = str(shm)
        dns = None
        if config.HasField("dns_config"):
            d = config.dns_config
            dns = sandbox_files.DNS(list(d.servers), list(d.searches), list(d.options))
        # The sandbox image's users, when kept (every pod but the image's first): the pause's
        # spec is then built with the files and namespaces, in one thread hop.
        known = self.containers.image_users(image.chain_id) if image is not None else None
        paths: dict[str, Path] = {}

        def prepare() -> tuple[str, dict[str, Path], dict[str, Any] | BaseException | None]:
            hostname = sandbox_files.write_files(files, config.hostname, dns)
            pinned = netns.create_pod(self.netns_dir, kinds, hostname) if kinds else {}
            paths.update(pinned)  # for the unwind, should what follows fail
            if shm is not None:
                sandbox_files.mount_shm(shm)
            if known is None or image is None:
                return hostname, pinned, None
            try:  # a failure is raised once the namespaces are known (unwound then)
                namespaces = podns.PodNamespaces(
                    net=str(pinned.get(netns.NET, "")),
                    ipc=str(pinned.get(netns.IPC, "")),
                    uts=str(pinned.get(netns.UTS, "")),
                    pid="",
                )
                spec = self._pause_spec_with(
                    sandbox_id, config, image, namespaces, hostname, str(shm or ""), known
                )
            except Exception as e:
                return hostname, pinned, e
            return hostname, pinned, spec

        try:
            # The pod's files, namespaces and (the users known) the pause's spec come first,
            # so that the record is created naming them, in one transaction with the pause's
            # snapshot (no update after it). A crash before the record leaves namespaces and
            # directories no record names: `load` reaps them at the next start.
            m.hostname, paths, prepared = await asyncio.to_thread(prepare)
            if kinds:
                m.netns = str(paths.get(netns.NET, ""))
                m.ipcns = str(paths.get(netns.IPC, ""))
                m.utsns = str(paths.get(netns.UTS, ""))
            if isinstance(prepared, BaseException):
                raise prepared
            draft = Container(
                id=sandbox_id,
                runtime=meta.RUNTIME,
                runtime_options=specs.runc_options(self.cgroup_driver),
                spec=spec_encoded(prepared or {}),
                image=(image.first_tag or self.sandbox_image) if image is not None else "",
                labels={**config.labels, meta.KIND_LABEL: meta.KIND_SANDBOX},
                extensions=meta.sandbox_extension(m),
            )
            if image is None:
                record = await local.containers.create(meta.NAMESPACE, draft)
                if kinds:
                    faults.point("cri-sandbox-netns-created")
                    _set_network(m, await self._network(sandbox_id, config, paths))
                spec = specs.sandbox_spec(
                    sandbox_id=sandbox_id,
                    config=config,
                    namespaces=podns.of(m, 0),
                    hostname=m.hostname,
                )
                m.state = "ready"
                record.spec = spec_encoded(spec)
                record.extensions = {**record.extensions, **meta.sandbox_extension(m)}
                await local.containers.update(
                    meta.NAMESPACE, record, ["spec", f"extensions.{meta.SANDBOX_EXTENSION}"]
                )
                return
            # With a pause: its snapshot and the record in one transaction (no lease).
            draft.snapshotter, draft.snapshot_key = snapshotter, sandbox_id
            record, mounts = await local.containers.create_with_snapshot(
                meta.NAMESPACE, draft, local.snapshots, image.chain_id
            )
            if prepared is None:
                # The sandbox image's first pod (since a start): its users are read from a
                # mount of the new snapshot, then the spec is saved.
                spec = await self._pause_spec(sandbox_id, config, image, m, mounts)
                record.spec = spec_encoded(spec)
                record = await local.containers.update(meta.NAMESPACE, record, ["spec"])
            # The pause joins the namespaces by path and needs nothing of their network, so
            # CNI ADD runs while the pause is created and started (kubelet waits for the two
            # together), and RunPodSandbox answers once both are done.
            if kinds:
                faults.point("cri-sandbox-netns-created")
                networking = asyncio.ensure_future(self._network(sandbox_id, config, paths))
            await local.tasks.create(meta.NAMESPACE, sandbox_id, Stdio())
            await local.tasks.start(meta.NAMESPACE, sandbox_id)
            faults.point("cri-sandbox-started")
            if networking is not None:
                _set_network(m, await networking)
            m.state = "ready"
            await self.records.save_sandbox(record, m)
        except BaseException:
            await asyncio.shield(self._unwind(sandbox_id, record, m, networking, paths))
            raise

    def _pause_spec_with(
        self,
        sandbox_id: str,
        config: cri.PodSandboxConfig,
        image: Any,
        namespaces: podns.PodNamespaces,
        hostname: str,
        shm: str,
        users: ImageUsers,
    ) -> dict[str, Any]:
        return specs.pause_spec(
            sandbox_id=sandbox_id,
            config=config,
            image_config=image.config,
            namespaces=namespaces,
            hostname=hostname,
            shm=shm,
            cgroup_driver=self.cgroup_driver,
            rootfs=users,
        )

    async def _pause_spec(
        self,
        sandbox_id: str,
        config: cri.PodSandboxConfig,
        image: Any,
        m: meta.SandboxMeta,
        mounts: Any,
    ) -> dict[str, Any]:
        """The pause's spec for the sandbox image's first pod (since a start): its users
        read from a mount of the pod's snapshot, then kept as a container's image's are
        (Containers.image_users)."""
        namespaces = podns.of(m, 0)

        def spec_with(users: ImageUsers) -> dict[str, Any]:
            return self._pause_spec_with(
                sandbox_id, config, image, namespaces, m.hostname, m.shm, users
            )

        known = self.containers.image_users(image.chain_id)
        if known is not None:
            return await asyncio.to_thread(spec_with, known)
        return await self.containers.spec_reading_users(image.chain_id, mounts, spec_with)

    async def _network(
        self, sandbox_id: str, config: cri.PodSandboxConfig, paths: dict[str, Path]
    ) -> PodNetwork | None:
        """CNI ADD in the pinned netns (if the pod has one), then the pod's sysctls."""
        network = None
        if netns.NET in paths:
            assert self.cni is not None
            network = await self.cni.setup(
                sandbox_id, paths[netns.NET], pod_ref(config), port_mappings(config)
            )
            faults.point("cri-sandbox-cni-added")
        if config.linux.sysctls:
            # After CNI ADD, as runc did when the pause started (eth0 exists).
            await asyncio.to_thread(netns.apply_sysctls, paths, config.linux.sysctls)
        return network

    async def _unwind(
        self,
        sandbox_id: str,
        record: Container | None,
        m: meta.SandboxMeta,
        networking: asyncio.Future[PodNetwork | None] | None = None,
        paths: Mapping[str, Path] | None = None,
    ) -> None:
        if networking is not None:
            # A CNI ADD still running is let finish: the teardown below undoes its result.
            await asyncio.wait([networking])
            if not networking.cancelled():
                networking.exception()  # retrieved: the first failure is what is raised
        try:
            if record is None:
                # No record names what the run made before it: the namespaces and files go
                # here (no CNI ran: it starts after the record), and the pause's snapshot,
                # should its transaction have committed before a cancellation.
                def discard() -> None:
                    if m.shm:
                        sandbox_files.unmount_shm(Path(m.shm))
                    for path in (paths or {}).values():
                        netns.remove(path)
                    sandbox_files.remove_files(self.files_dir / sandbox_id)
                    sandbox_files.remove_files(self.state_dir / sandbox_id)

                await asyncio.to_thread(discard)
                with contextlib.suppress(LinerError):
                    await self.core.local.snapshots.remove(
                        meta.NAMESPACE, self.core.default_snapshotter, sandbox_id
                    )
                return
            await self._stop(record, m)
            await self._remove(record)
        except Exception as e:
            log.warning("sandbox cleanup after a failed run", id=sandbox_id, error=str(e))

    # -- stop / remove ------------------------------------------------------------------------

    async def stop_pod_sandbox(self, req: cri.StopPodSandboxRequest) -> cri.StopPodSandboxResponse:
        await self.load()
        try:
            record = await self.records.find(meta.KIND_SANDBOX, req.pod_sandbox_id)
        except NotFound:
            # containerd: NotFound for an unknown sandbox; kubelet treats it as stopped.
            raise
        async with self._lock(record.id):
            record = await self.core.local.containers.get(meta.NAMESPACE, record.id)
            await self._stop(record, meta.sandbox_meta(record))
        return cri.StopPodSandboxResponse()

    async def _stop(self, record: Container, m: meta.SandboxMeta) -> None:
        """Idempotent and restart-safe: every step works from the saved state."""
        for c in await self.containers.containers_of(record.id):
            await self.containers.stop(c, 0)
        tasks = self.core.local.tasks
        st = self._pause(record.id)
        if st is not None:
            if st.status in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.CREATED):
                with contextlib.suppress(NotFound):
                    await tasks.kill(meta.NAMESPACE, record.id, signals.SIGKILL, all=False)
                with contextlib.suppress(NotFound):
                    await tasks.wait(meta.NAMESPACE, record.id)
            with contextlib.suppress(NotFound):
                await tasks.delete(meta.NAMESPACE, record.id)
        if m.shm:
            await asyncio.to_thread(sandbox_files.unmount_shm, Path(m.shm))
        config = cri.PodSandboxConfig.FromString(m.config)
        if specs.namespace_options(config).network != specs.NODE and self.cni is not None:
            path = Path(m.netns) if m.netns else None
            await self.cni.teardown(record.id, path, pod_ref(config), port_mappings(config))
        for pinned in (m.netns, m.ipcns, m.utsns):
            if pinned:
                await asyncio.to_thread(netns.remove, Path(pinned))
        if m.state != "stopped":
            m.state = "stopped"
            await self.records.save_sandbox(record, m)

    async def remove_pod_sandbox(
        self, req: cri.RemovePodSandboxRequest
    ) -> cri.RemovePodSandboxResponse:
        await self.load()
        try:
            record = await self.records.find(meta.KIND_SANDBOX, req.pod_sandbox_id)
        except NotFound:
            return cri.RemovePodSandboxResponse()  # idempotent
        async with self._lock(record.id):
            try:
                record = await self.core.local.containers.get(meta.NAMESPACE, record.id)
            except NotFound:
                return cri.RemovePodSandboxResponse()
            m = meta.sandbox_meta(record)
            if m.state != "stopped" or self._pause(record.id) is not None:
                await self._stop(record, m)  # force, as containerd
            await self._remove(record)
        self._locks.pop(record.id, None)
        return cri.RemovePodSandboxResponse()

    async def _remove(self, record: Container) -> None:
        for c in await self.containers.containers_of(record.id):
            await self.containers.remove(c)
        local = self.core.local
        with contextlib.suppress(NotFound):
            await local.containers.delete_owning(meta.NAMESPACE, record, local.snapshots)

        def remove_files() -> None:
            sandbox_files.remove_files(self.files_dir / record.id)
            sandbox_files.remove_files(self.state_dir / record.id)

        await asyncio.to_thread(remove_files)
        self.names.release_by_key(record.id)

    # -- status / list ------------------------------------------------------------------------

    async def pod_sandbox_status(
        self, req: cri.PodSandboxStatusRequest
    ) -> cri.PodSandboxStatusResponse:
        return cri.PodSandboxStatusResponse.FromString(await self.pod_sandbox_status_bytes(req))

    async def pod_sandbox_status_bytes(self, req: cri.PodSandboxStatusRequest) -> bytes:
        """The PodSandboxStatusResponse, serialized; without `verbose`, all but its timestamp
        kept with the record's decoding per readiness (serialized messages concatenated are
        their merge: the call's timestamp is appended)."""
        entry = self.records.decode(await self.records.find(meta.KIND_SANDBOX, req.pod_sandbox_id))
        record, m = entry.record, entry.meta
        ready = self.ready(record, m)
        key = ("status", ready)
        now = cri.PodSandboxStatusResponse(timestamp=meta.now_ns()).SerializeToString()
        if not req.verbose and (cached := entry.views.get(key)) is not None:
            return cached + now
        config = entry.config
        status = cri.PodSandboxStatus(
            id=record.id,
            metadata=config.metadata,
            state=cri.SANDBOX_READY if ready else cri.SANDBOX_NOTREADY,
            created_at=m.created_at,
            labels=config.labels,
            annotations=config.annotations,
            runtime_handler=m.runtime_handler,
        )
        if m.ip:
            status.network.ip = m.ip
            status.network.additional_ips.extend(cri.PodIP(ip=ip) for ip in m.additional_ips)
        status.linux.namespaces.options.CopyFrom(specs.namespace_options(config))
        if not req.verbose:
            raw = entry.views[key] = cri.PodSandboxStatusResponse(status=status).SerializeToString()
            return raw + now
        st = self._pause(record.id)
        info = {
            "info": json.dumps(
                {
                    "pid": st.pid if st is not None else 0,
                    "netNamespacePath": m.netns,
                    "ipcNamespacePath": m.ipcns,
                    "utsNamespacePath": m.utsns,
                    "infra": m.infra,
                    "image": m.image,
                    "state": m.state,
                    "runtimeSpec": json.loads(record.spec.value) if record.spec else None,
                }
            )
        }
        return cri.PodSandboxStatusResponse(status=status, info=info).SerializeToString() + now

    async def list_pod_sandbox(self, req: cri.ListPodSandboxRequest) -> cri.ListPodSandboxResponse:
        return cri.ListPodSandboxResponse.FromString(await self.list_pod_sandbox_bytes(req))

    async def list_pod_sandbox_bytes(self, req: cri.ListPodSandboxRequest) -> bytes:
        """The ListPodSandboxResponse, serialized: each pod's part (a one-pod response) kept
        with its record's decoding per state, as ListContainers' (containers.py)."""
        f = req.filter
        selector = dict(f.label_selector)
        wanted = f.state.state if f.HasField("state") else None
        out = []
        for entry in await self.records.entries(meta.KIND_SANDBOX):
            record, m = entry.record, entry.meta
            if f.id and not record.id.startswith(f.id):
                continue
            if selector and not meta.matches_labels(entry.labels, selector):
                continue
            state = cri.SANDBOX_READY if self.ready(record, m) else cri.SANDBOX_NOTREADY
            if wanted is not None and wanted != state:
                continue
            part = entry.views.get(state)  # built once per decoding and state
            if part is None:
                config = entry.config
                pod = cri.PodSandbox(
                    id=record.id,
                    metadata=config.metadata,
                    state=state,
                    created_at=m.created_at,
                    labels=config.labels,
                    annotations=config.annotations,
                    runtime_handler=m.runtime_handler,
                )
                part = entry.views[state] = cri.ListPodSandboxResponse(
                    items=[pod]
                ).SerializeToString()
            out.append(part)
        return b"".join(out)
