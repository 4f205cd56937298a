"""The client library's one call helper: headers, deadline, and an exception class per status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from liner import errors
from liner.client import Client, TaskStatus, _process
from liner_api.containerd.types.task import task_pb2

pytestmark = pytest.mark.unit


class _Failure(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a grpc stub raises: an RpcError that is also a Call (code, details)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return True

    def add_callback(self, callback: Any) -> bool:
        return False


@pytest.fixture
def client() -> Iterator[Client]:
    with Client("/nonexistent.sock", "ns1", lease="l1", timeout=7) as c:
        yield c


def test_a_call_carries_namespace_lease_and_deadline(client: Client) -> None:
    seen: dict[str, Any] = {}

    def method(request: object, *, metadata: Any, timeout: Any) -> str:
        seen.update(request=request, metadata=metadata, timeout=timeout)
        return "reply"

    assert client._call(method, "req") == "reply"
    assert seen == {
        "request": "req",
        "metadata": [("containerd-namespace", "ns1"), ("containerd-lease", "l1")],
        "timeout": 7,
    }
    client._call(method, "req", deadline=False)
    assert seen["timeout"] is None


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.INTERNAL, errors.Internal),
    ],
)
def test_each_status_becomes_its_own_class(
    client: Client, code: grpc.StatusCode, kind: type[errors.LinerClientError]
) -> None:
    def method(request: object, **_: Any) -> None:
        raise _Failure(code, "what went wrong\nsecond line")

    with pytest.raises(kind) as info:
        client._call(method, "req")
    assert isinstance(info.value, errors.LinerClientError)
    assert info.value.code_name == code.name
    assert str(info.value) == "what went wrong"


def test_a_stream_translates_its_failure_and_cancels_when_closed(client: Client) -> None:
    cancelled: list[bool] = []

    class Stream:
        def __init__(self, items: list[object], fail: bool) -> None:
            self._items, self._fail = items, fail

        def __iter__(self) -> Iterator[object]:
            yield from self._items
            if self._fail:
                raise _Failure(grpc.StatusCode.NOT_FOUND, "gone")

        def cancel(self) -> None:
            cancelled.append(True)

    failing = client._stream(lambda r, **_: Stream([1, 2], fail=True), "req")
    assert next(failing) == 1 and next(failing) == 2
    with pytest.raises(errors.NotFound, match="gone"):
        next(failing)
    early = client._stream(lambda r, **_: Stream([1, 2, 3], fail=False), "req")
    assert next(early) == 1
    early.close()
    assert cancelled == [True, True]


def test_connection_failures_say_what_to_do(client: Client) -> None:
    def method(request: object, **_: Any) -> None:
        raise _Failure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")

    with pytest.raises(errors.Unavailable, match=r"cannot connect to linerd at /nonexistent\.sock"):
        client._call(method, "req")


def test_unknown_code_names_become_unknown() -> None:
    error = errors.error_for("SOMETHING_NEW", "text")
    assert type(error) is errors.Unknown and str(error) == "text"


def test_task_statuses_are_an_enum() -> None:
    running = _process(task_pb2.Process(id="c", status=task_pb2.Status.Value("RUNNING")))
    assert running.status is TaskStatus.RUNNING and running.status == "running"
    unset = _process(task_pb2.Process(id="c"))
    assert unset.status is TaskStatus.UNKNOWN
