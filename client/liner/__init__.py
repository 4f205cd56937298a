"""liner: the client library and the `liner` command line for linerd."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from liner.client import (
    Client,
    ContentInfo,
    IngestStatus,
    Lease,
    LinerClientError,
    Namespace,
    Resource,
    ServerInfo,
    VersionInfo,
)

try:
    __version__ = version("liner")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Client",
    "ContentInfo",
    "IngestStatus",
    "Lease",
    "LinerClientError",
    "Namespace",
    "Resource",
    "ServerInfo",
    "VersionInfo",
    "__version__",
]
