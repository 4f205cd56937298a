"""What a failed call raises: one exception class per gRPC status, all LinerClientError.

Callers catch the kind they can handle (`except NotFound:`) instead of comparing code names.
Nothing here imports grpc: the CLI names these classes before it has talked to the daemon.
"""

from __future__ import annotations

from typing import ClassVar


class LinerClientError(Exception):
    """A failed call: `code_name` is the gRPC status name (NOT_FOUND, ...), the text one line."""

    code_name: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Cancelled(LinerClientError):
    code_name = "CANCELLED"


class Unknown(LinerClientError):
    code_name = "UNKNOWN"


class InvalidArgument(LinerClientError):
    code_name = "INVALID_ARGUMENT"


class DeadlineExceeded(LinerClientError):
    code_name = "DEADLINE_EXCEEDED"


class NotFound(LinerClientError):
    code_name = "NOT_FOUND"


class AlreadyExists(LinerClientError):
    code_name = "ALREADY_EXISTS"


class PermissionDenied(LinerClientError):
    code_name = "PERMISSION_DENIED"


class ResourceExhausted(LinerClientError):
    code_name = "RESOURCE_EXHAUSTED"


class FailedPrecondition(LinerClientError):
    code_name = "FAILED_PRECONDITION"


class Aborted(LinerClientError):
    code_name = "ABORTED"


class OutOfRange(LinerClientError):
    code_name = "OUT_OF_RANGE"


class Unimplemented(LinerClientError):
    code_name = "UNIMPLEMENTED"


class Internal(LinerClientError):
    code_name = "INTERNAL"


class Unavailable(LinerClientError):
    code_name = "UNAVAILABLE"


class DataLoss(LinerClientError):
    code_name = "DATA_LOSS"


class Unauthenticated(LinerClientError):
    code_name = "UNAUTHENTICATED"


_BY_CODE: dict[str, type[LinerClientError]] = {
    cls.code_name: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for(code_name: str, message: str) -> LinerClientError:
    """The exception of status `code_name` (e.g. "NOT_FOUND"); Unknown for a name not known."""
    return _BY_CODE.get(code_name, Unknown)(message)
