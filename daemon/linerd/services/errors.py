"""The one place where linerd's errors become gRPC status codes."""

from __future__ import annotations

import grpc

from linerd import errdefs
from linerd.core.filters import FilterSyntaxError

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errdefs.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (FilterSyntaxError, grpc.StatusCode.INVALID_ARGUMENT),
    (errdefs.NotFound, grpc.StatusCode.NOT_FOUND),
    (errdefs.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errdefs.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errdefs.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errdefs.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errdefs.NotImplementedYet, grpc.StatusCode.UNIMPLEMENTED),
    (errdefs.Aborted, grpc.StatusCode.ABORTED),
    (errdefs.Cancelled, grpc.StatusCode.CANCELLED),
    (errdefs.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errdefs.Internal, grpc.StatusCode.INTERNAL),
    (errdefs.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errdefs.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errdefs.DataLoss, grpc.StatusCode.DATA_LOSS),
]


def status_code(error: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN
