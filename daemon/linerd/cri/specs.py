"""OCI specs for a pod's pause process and for its containers, as containerd 1.7's CRI makes
them (`sandbox_run_linux.go`, `container_create_linux.go`); pure functions over the request
messages. The security context, resources, CRI mounts and devices are `cri/security.py`'s."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from liner_api.containerd.runc.v1 import options_pb2 as runc_options_pb2
from liner_api.runtime.v1 import api_pb2 as cri
from liner_common import ocispec
from linerd.core.types import Encoded
from linerd.cri import meta, security
from linerd.cri.podns import PodNamespaces
from linerd.cri.users import ImageUsers
from linerd.errdefs import InvalidArgument

Spec = dict[str, Any]

POD, CONTAINER, NODE, TARGET = (
    cri.NamespaceMode.POD,
    cri.NamespaceMode.CONTAINER,
    cri.NamespaceMode.NODE,
    cri.NamespaceMode.TARGET,
)
PAUSE_OOM_SCORE_ADJ = -998
PAUSE_CPU_SHARES = 2
SYSTEMD_PREFIX = "cri-containerd"


RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"


def runc_options(driver: str) -> Encoded | None:
    """The runtime options of the CRI's records: containerd's runc options with
    `systemd_cgroup` under the systemd driver (the task's runc then gets `--systemd-cgroup`,
    which makes `<slice>:<prefix>:<id>` a unit); none under cgroupfs."""
    if driver != "systemd":
        return None
    options = runc_options_pb2.Options(systemd_cgroup=True)
    return Encoded(RUNC_OPTIONS_TYPE, options.SerializeToString())


def cgroups_path(driver: str, parent: str, container_id: str) -> str:
    """`<parent>/<id>` (cgroupfs); `<slice>:cri-containerd:<id>` (systemd, parent a slice);
    `/k8s.io/<id>` without a parent."""
    if not parent:
        return f"/{meta.NAMESPACE}/{container_id}"
    if driver == "systemd" or parent.endswith(".slice"):
        return f"{posixpath.basename(parent)}:{SYSTEMD_PREFIX}:{container_id}"
    return posixpath.join(parent, container_id)


def namespace_options(config: cri.PodSandboxConfig) -> cri.NamespaceOption:
    return config.linux.security_context.namespace_options


def _set_namespace(spec: Spec, kind: str, path: str | None) -> None:
    """`path` None: no namespace of that kind (the host's); "": a new one; else join it."""
    namespaces = [n for n in spec["linux"]["namespaces"] if n["type"] != kind]
    if path is not None:
        entry: dict[str, str] = {"type": kind}
        if path:
            entry["path"] = path
        namespaces.append(entry)
    spec["linux"]["namespaces"] = namespaces


def _replace_mount(spec: Spec, destination: str, mount: dict[str, Any] | None) -> None:
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != destination]
    if mount is not None:
        spec["mounts"].append(mount)


def _sandbox_annotations(sandbox_id: str, config: cri.PodSandboxConfig) -> dict[str, str]:
    md = config.metadata
    return {
        meta.A_SANDBOX_ID: sandbox_id,
        meta.A_SANDBOX_NAMESPACE: md.namespace,
        meta.A_SANDBOX_UID: md.uid,
        meta.A_SANDBOX_NAME: md.name,
    }


def pause_spec(
    *,
    sandbox_id: str,
    config: cri.PodSandboxConfig,
    image_config: Mapping[str, Any],
    namespaces: PodNamespaces,
    hostname: str,
    shm: str,
    cgroup_driver: str,
    rootfs: Path | ImageUsers,
) -> Spec:
    """The pause joins the pod's pinned namespaces like any container of the pod (the pod's
    sysctls were written in them already: `netns.apply_sysctls`); it only owns the pod's
    shared pid namespace."""
    spec = ocispec.generate(meta.NAMESPACE, sandbox_id, [ocispec.with_image_config(image_config)])
    if not spec["process"]["args"]:
        raise InvalidArgument("the sandbox image has no entrypoint or command")
    spec["root"]["readonly"] = True
    opts = namespace_options(config)
    if opts.network == NODE:
        # Host network: no net namespace and no UTS one (runc refuses a hostname then).
        _set_namespace(spec, "network", None)
        _set_namespace(spec, "uts", None)
    else:
        _set_namespace(spec, "network", namespaces.net)
        _set_namespace(spec, "uts", namespaces.uts)
        spec["hostname"] = hostname
    if opts.pid == NODE:
        _set_namespace(spec, "pid", None)
    if opts.ipc == NODE:
        _set_namespace(spec, "ipc", None)
        _replace_mount(spec, "/dev/shm", _bind("/dev/shm", "/dev/shm", readonly=False))
    else:
        _set_namespace(spec, "ipc", namespaces.ipc)
        if shm:
            _replace_mount(spec, "/dev/shm", _bind(shm, "/dev/shm", readonly=False))
    linux = config.linux
    spec["linux"]["resources"]["cpu"] = {"shares": PAUSE_CPU_SHARES}
    spec["process"]["oomScoreAdj"] = security.clamp_oom_score_adj(PAUSE_OOM_SCORE_ADJ)
    spec["linux"]["cgroupsPath"] = cgroups_path(cgroup_driver, linux.cgroup_parent, sandbox_id)
    sc = linux.security_context
    image_user = str(image_config.get("User") or "")
    security.apply_sandbox_security_context(spec, sc, rootfs=rootfs, image_user=image_user)
    spec["annotations"] = {
        meta.A_CONTAINER_TYPE: "sandbox",
        **_sandbox_annotations(sandbox_id, config),
        meta.A_SANDBOX_LOG_DIR: config.log_directory,
    }
    return spec


def sandbox_spec(
    *,
    sandbox_id: str,
    config: cri.PodSandboxConfig,
    namespaces: PodNamespaces,
    hostname: str,
) -> Spec:
    """What a pod without a pause process keeps as its record's spec: no process, only what
    tools read (`ctr containers info`, `crictl inspectp`): its annotations, namespaces,
    hostname, sysctls and the cgroup parent of its containers."""
    opts = namespace_options(config)
    ns: list[dict[str, str]] = []
    for kind, path in (
        ("network", namespaces.net),
        ("ipc", namespaces.ipc),
        ("uts", namespaces.uts),
    ):
        if path:
            ns.append({"type": kind, "path": path})
    linux: dict[str, Any] = {"namespaces": ns}
    if config.linux.cgroup_parent:
        linux["cgroupsPath"] = config.linux.cgroup_parent
    if config.linux.sysctls:
        linux["sysctl"] = dict(config.linux.sysctls)
    spec: Spec = {
        "ociVersion": "1.0.2-dev",
        "linux": linux,
        "annotations": {
            meta.A_CONTAINER_TYPE: "sandbox",
            **_sandbox_annotations(sandbox_id, config),
            meta.A_SANDBOX_LOG_DIR: config.log_directory,
        },
    }
    if opts.network != NODE:
        spec["hostname"] = hostname
    return spec


def _bind(source: str, destination: str, *, readonly: bool) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", "ro" if readonly else "rw"],
    }


def command_line(config: cri.ContainerConfig, image_config: Mapping[str, Any]) -> list[str]:
    """command replaces ENTRYPOINT (and drops CMD), args replaces CMD (containerd's rule)."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    cmd = list(image_config.get("Cmd") or [])
    if config.command:
        return [*config.command, *config.args]
    if config.args:
        return [*entrypoint, *config.args]
    return [*entrypoint, *cmd]


def env_of(config: cri.ContainerConfig) -> list[str]:
    out = []
    for kv in config.envs:
        value = (
            kv.value.decode("utf-8", "surrogateescape") if isinstance(kv.value, bytes) else kv.value
        )
        out.append(f"{kv.key}={value}")
    return out


def container_spec(
    *,
    container_id: str,
    config: cri.ContainerConfig,
    sandbox_id: str,
    sandbox_config: cri.PodSandboxConfig,
    image_config: Mapping[str, Any],
    image_name: str,
    namespaces: PodNamespaces,
    target_pid: int,
    files: str,
    shm: str,
    hostname: str,
    cgroup_driver: str,
    rootfs: Path | ImageUsers,
) -> Spec:
    spec = ocispec.generate(meta.NAMESPACE, container_id, [ocispec.with_image_config(image_config)])
    process = spec["process"]
    args = command_line(config, image_config)
    if not args:
        raise InvalidArgument("no command specified")
    process["args"] = args
    if config.working_dir:
        process["cwd"] = ocispec.clean_workdir(config.working_dir)
    if config.tty:
        ocispec.with_tty(spec)
    process["env"] = ocispec.merge_env(process["env"], [f"HOSTNAME={hostname}", *env_of(config)])
    linux = config.linux
    sc = linux.security_context
    pod = namespace_options(sandbox_config)
    mine = sc.namespace_options
    if pod.network == NODE:
        _set_namespace(spec, "network", None)
        _set_namespace(spec, "uts", None)
    else:
        _set_namespace(spec, "network", namespaces.net)
        _set_namespace(spec, "uts", namespaces.uts)
    if pod.ipc == NODE:
        _set_namespace(spec, "ipc", None)
    else:
        _set_namespace(spec, "ipc", namespaces.ipc)
    pid_mode = mine.pid
    if pid_mode == NODE:
        _set_namespace(spec, "pid", None)
    elif pid_mode == POD:
        if not namespaces.pid:
            # CRI-O's answer too: only a pod asking for a shared pid namespace has a pause.
            raise InvalidArgument(
                "the container asks for the pod's pid namespace, but the pod has none "
                "(its pid namespace option is not POD)"
            )
        _set_namespace(spec, "pid", namespaces.pid)
    elif pid_mode == TARGET:
        if target_pid <= 0:
            raise InvalidArgument(f"target container {mine.target_id!r} is not running")
        _set_namespace(spec, "pid", f"/proc/{target_pid}/ns/pid")
    else:
        _set_namespace(spec, "pid", "")
    # The pod's files, unless a CRI mount targets the same path.
    taken = {posixpath.normpath(m.container_path) for m in config.mounts}
    readonly = sc.readonly_rootfs
    if files:
        for name, dest in (
            ("hostname", "/etc/hostname"),
            ("hosts", "/etc/hosts"),
            ("resolv.conf", "/etc/resolv.conf"),
        ):
            if dest not in taken:
                _replace_mount(spec, dest, _bind(f"{files}/{name}", dest, readonly=readonly))
    if "/dev/shm" not in taken:
        source = "/dev/shm" if pod.ipc == NODE else shm
        if source:
            _replace_mount(spec, "/dev/shm", _bind(source, "/dev/shm", readonly=False))
    spec["linux"]["cgroupsPath"] = cgroups_path(
        cgroup_driver, sandbox_config.linux.cgroup_parent, container_id
    )
    image_user = str(image_config.get("User") or "")
    privileged = sc.privileged
    sandbox_privileged = sandbox_config.linux.security_context.privileged
    if privileged and not sandbox_privileged:
        raise InvalidArgument("no privileged container allowed in a sandbox that is not privileged")
    security.apply_security_context(
        spec, sc, rootfs=rootfs, image_user=image_user, sandbox_privileged=sandbox_privileged
    )
    security.apply_resources(spec, linux.resources)
    security.apply_mounts(spec, config.mounts)
    security.apply_devices(spec, config.devices, privileged=privileged)
    spec["annotations"] = {
        meta.A_CONTAINER_TYPE: "container",
        **_sandbox_annotations(sandbox_id, sandbox_config),
        meta.A_CONTAINER_NAME: config.metadata.name,
        meta.A_IMAGE_NAME: image_name,
    }
    return spec
