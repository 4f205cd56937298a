"""Layer application and comparison: the work behind the Diff service.

Pure and synchronous; the daemon runs these in worker threads.
"""

from __future__ import annotations

# Loaded on first use: the unpack zygote (linerd.diff.zygote) starts from this package and
# chooses how its modules are compiled before it imports them.
_EXPORTS = {
    "apply_tar": "linerd.diff.apply",
    "MEDIA_TYPE_LAYER": "linerd.diff.compression",
    "SUPPORTED_MEDIA_TYPES": "linerd.diff.compression",
    "HashingReader": "linerd.diff.compression",
    "open_layer": "linerd.diff.compression",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
