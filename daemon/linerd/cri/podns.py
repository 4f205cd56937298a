"""Where a pod's containers find its namespaces, and whether a pod is alive, with or without a
pause process (CRI-O's `drop_infra_ctr`).

A pod's network, IPC and UTS namespaces are pinned at files (`linerd.cri.netns.create_pod`);
its containers join them by path. Only a pod whose containers share one pid namespace
(NamespaceMode POD, Kubernetes' shareProcessNamespace) needs its pause process, as pid 1 of
that namespace, or a pod run with `[cri] drop_infra_ctr = false`. Pods made before pinning
(no `ipcns`/`utsns` saved) join the pause's namespaces through /proc, as they did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from linerd.cri import meta, netns
from linerd.runtime import TaskStatus


@dataclass(frozen=True, slots=True)
class PodNamespaces:
    """Paths to join ("" = the host's, or none to join)."""

    net: str = ""
    ipc: str = ""
    uts: str = ""
    pid: str = ""  # the pause's pid namespace, when a pause runs


def of(m: meta.SandboxMeta, pause_pid: int) -> PodNamespaces:
    proc = f"/proc/{pause_pid}/ns" if pause_pid > 0 else ""
    legacy = m.infra and not (m.ipcns or m.utsns) and proc
    return PodNamespaces(
        net=m.netns,
        ipc=m.ipcns or (f"{proc}/ipc" if legacy else ""),
        uts=m.utsns or (f"{proc}/uts" if legacy else ""),
        pid=f"{proc}/pid" if proc else "",
    )


def alive(m: meta.SandboxMeta, pause: Any) -> bool:
    """READY: the pod ran to the end of RunPodSandbox and was not stopped, and what holds it
    lives: its pause task runs, or (no pause) its pinned namespaces are still mounted (they
    are not after a reboot: kubelet then makes the pod again, as with a dead pause)."""
    if m.state != "ready":
        return False
    if m.infra:
        return pause is not None and pause.status == TaskStatus.RUNNING
    pinned = m.netns or m.ipcns or m.utsns
    return not pinned or netns.is_pinned(pinned)
