"""The one exception hierarchy of linerd, in the spirit of containerd's errdefs.

Core code raises these; the gRPC layer maps them to status codes in one place
(`linerd.services.errors`). Nothing here imports grpc.
"""


class LinerError(Exception):
    """Base of every error linerd reports to a client. Unmapped ones become UNKNOWN."""


class InvalidArgument(LinerError):
    pass


class NotFound(LinerError):
    pass


class AlreadyExists(LinerError):
    pass


class FailedPrecondition(LinerError):
    pass


class Unavailable(LinerError):
    """Temporarily impossible (a locked ingest ref); clients retry."""


class OutOfRange(LinerError):
    pass


class NotImplementedYet(LinerError):
    pass


class Aborted(LinerError):
    pass


class Cancelled(LinerError):
    pass


class DeadlineExceeded(LinerError):
    pass


class Internal(LinerError):
    pass


class Unauthenticated(LinerError):
    """A registry wants credentials that were not given or were refused."""


class PermissionDenied(LinerError):
    pass


class DataLoss(LinerError):
    """Bytes did not match what they claimed to be (a digest or size mismatch from a remote)."""
