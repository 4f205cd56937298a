"""What the client returns for version, introspection, namespaces and leases."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class ServerInfo:
    uuid: str
    pid: int
    pidns: int


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One entry of Introspection's plugin list (containerd's plugin types and ids)."""

    type: str
    id: str
    requires: tuple[str, ...] = ()
    exports: dict[str, str] = field(default_factory=dict)
    init_error: str = ""  # empty when the plugin started


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    created_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    type: str
