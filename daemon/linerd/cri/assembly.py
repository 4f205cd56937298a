"""`build_cri`: the CRI's handler groups over the daemon's `Core`, and its two servicers.

Each group is built here from what it needs (one line each); `linerd.cri.service` routes
every RPC to its group. Called once, on the event loop, when the daemon registers its
services (only with `[cri] enabled`): a group with start-up work (recovering pods after a
restart) schedules it from its constructor, and starts a server it needs (streaming) on
first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from linerd.cri import NAMESPACE as NAMESPACE  # re-exported
from linerd.cri.cni import CNI
from linerd.cri.containers import Containers
from linerd.cri.images import CriImages
from linerd.cri.info import Info
from linerd.cri.sandboxes import Sandboxes
from linerd.cri.service import ImageService, RuntimeService, add_to_server
from linerd.cri.stats import Stats
from linerd.cri.streaming.handler import StreamingHandler

if TYPE_CHECKING:
    from linerd.assembly import Core
    from linerd.config import Config
    from linerd.remotes.hosts import HostsConfig


@dataclass(frozen=True, slots=True)
class CriPaths:
    """Where the CRI keeps its files, under the daemon's root and state."""

    # Pinned network, IPC and UTS namespaces of pods (`linerd.cri.netns`): gone at reboot,
    # as they are.
    netns: Path
    # CNI results (libcni's cache format), read back at DEL and after a restart.
    cni_cache: Path

    @classmethod
    def of(cls, config: Config) -> CriPaths:
        return cls(
            netns=Path(config.state) / "cri" / "netns",
            cni_cache=Path(config.root) / "cri" / "cni",
        )


@dataclass(slots=True)
class Cri:
    """The groups by name (see `linerd.cri.service`) and the servicers routing to them."""

    groups: dict[str, Any]
    paths: CriPaths
    cni: CNI
    runtime: Any = field(init=False)
    images: Any = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = RuntimeService(self.groups)
        self.images = ImageService(self.groups)

    def add_to(self, server: grpc.aio.Server) -> None:
        add_to_server(self.runtime, server, "RuntimeService")
        add_to_server(self.images, server, "ImageService")

    async def aclose(self) -> None:
        """After the gRPC server stopped: close what the groups serve beside it (the
        streaming server's sessions)."""
        for group in self.groups.values():
            close = getattr(group, "close", None)
            if close is not None:
                await close()


def build_cri(core: Core, config: Config, hosts: Callable[[], HostsConfig]) -> Cri:
    """The CRI over `core`. `hosts` gives the registry configuration of the moment (the same
    as every pull's; a reload replaces it)."""
    from linerd import __version__

    paths = CriPaths.of(config)
    cni = CNI(
        conf_dir=config.cri.cni.conf_dir,
        bin_dirs=config.cri.cni.bin_dirs,
        cache_dir=paths.cni_cache,
    )
    images = CriImages(
        core.local.images,
        core.local.transfer,
        core.content,
        core.snapshots[core.default_snapshotter],
        core.root / "content",
        hosts,
        config.cri.sandbox_image,
    )
    containers = Containers(core, cgroup_driver=config.cri.cgroup_driver, images=images)
    sandboxes = Sandboxes(
        core,
        containers,
        cni=cni,
        sandbox_image=config.cri.sandbox_image,
        cgroup_driver=config.cri.cgroup_driver,
        pull=images.ensure,
        images=images,
        drop_infra_ctr=config.cri.drop_infra_ctr,
    )
    groups: dict[str, Any] = {
        "info": Info(cni, config.cri.cgroup_driver, __version__),
        "images": images,
        "streaming": StreamingHandler.of(core, config),
        "sandboxes": sandboxes,
        "containers": containers,
        "stats": Stats(sandboxes, containers),
    }
    return Cri(groups, paths, cni)
