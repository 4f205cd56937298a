"""Per-request namespace and lease, set by the gRPC interceptor from the call's metadata."""

from __future__ import annotations

from contextvars import ContextVar

from linerd.core import validate
from linerd.errdefs import FailedPrecondition

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

_namespace: ContextVar[str | None] = ContextVar("namespace", default=None)
_lease: ContextVar[str | None] = ContextVar("lease", default=None)


def bind(namespace: str | None, lease: str | None) -> None:
    _namespace.set(namespace)
    _lease.set(lease)


def namespace() -> str:
    """The request's namespace; a call without one fails as containerd's do."""
    ns = _namespace.get()
    if not ns:
        raise FailedPrecondition("namespace is required")
    return validate.identifier(ns, "namespace")


def lease() -> str | None:
    return _lease.get() or None
