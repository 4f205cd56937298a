"""Layer application and comparison: the work behind the Diff service.

Pure and synchronous; the daemon runs these in worker threads.
"""

from linerd.diff.apply import apply_tar
from linerd.diff.compression import (
    MEDIA_TYPE_LAYER,
    SUPPORTED_MEDIA_TYPES,
    HashingReader,
    open_layer,
)

__all__ = ["MEDIA_TYPE_LAYER", "SUPPORTED_MEDIA_TYPES", "HashingReader", "apply_tar", "open_layer"]
