"""The errors the shared code raises: plain ValueError and LookupError kinds.

The shared package cannot use linerd.errdefs (the client would import the daemon); callers
catch these by class or as ValueError / LookupError.
"""


class InvalidArgument(ValueError):
    pass


class NotFound(LookupError):
    pass
