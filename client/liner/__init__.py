"""liner: the client library and the `liner` command line for linerd."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liner.client import (
        Client,
        Container,
        ContentInfo,
        Event,
        ExitStatus,
        IngestStatus,
        Lease,
        LinerClientError,
        Namespace,
        Process,
        PushProgress,
        Resource,
        ServerInfo,
        TaskStatus,
        VersionInfo,
    )
    from liner.errors import (
        AlreadyExists,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Unavailable,
    )
    from liner.version import __version__


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import liner.cli` must not import grpc for `liner --help`.
    if name == "__version__":
        from liner import version

        return version.__version__
    if name in _ERRORS:
        from liner import errors

        return getattr(errors, name)
    if name in __all__:
        from liner import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Failures, one class per gRPC status (all LinerClientError); light, no grpc.
_ERRORS = (
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Unavailable",
)

__all__ = [
    "AlreadyExists",
    "Client",
    "Container",
    "ContentInfo",
    "Event",
    "ExitStatus",
    "FailedPrecondition",
    "IngestStatus",
    "InvalidArgument",
    "Lease",
    "LinerClientError",
    "Namespace",
    "NotFound",
    "PermissionDenied",
    "Process",
    "PushProgress",
    "Resource",
    "ServerInfo",
    "TaskStatus",
    "Unavailable",
    "VersionInfo",
    "__version__",
]
