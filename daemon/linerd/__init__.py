"""linerd: a container manager daemon speaking containerd's v1 gRPC API."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":
        # The version is written once, in pyproject.toml, and read from the installed
        # distribution's metadata as the client reads it: without importlib.metadata, which
        # the daemon keeps unloaded (linerd.main).
        from liner.version import installed_version

        value = installed_version()
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
