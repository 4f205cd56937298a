"""linerd: a container manager daemon speaking containerd's v1 gRPC API."""

from __future__ import annotations

# The version is written once, in pyproject.toml; the daemon reads it from the installed
# distribution's metadata (as the client does), on first use.
_DISTRIBUTION = "liner"
_UNKNOWN = "0.0.0+unknown"  # a source tree that was never installed


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version(_DISTRIBUTION)
        except PackageNotFoundError:
            value = _UNKNOWN
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
