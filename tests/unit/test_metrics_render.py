"""linerd's own counters render exactly as prometheus_client's Counter and Histogram do."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from linerd.metrics import _SECONDS_BUCKETS, Metrics

pytestmark = pytest.mark.unit


def _without_times(text: str) -> list[str]:
    """The exposition without process/platform series and with _created values masked."""
    lines = [
        line
        for line in text.splitlines()
        if not re.search(r"\b(process|python)_", line) and "liner_content" not in line
    ]
    return [re.sub(r"^(\S*_created(\{.*\})?) \S+$", r"\1 T", line) for line in lines]


def test_render_matches_prometheus_client() -> None:
    calls = [
        ("/containerd.services.images.v1.Images/List", "OK", 0.001),  # on a bucket bound
        ("/containerd.services.images.v1.Images/List", "OK", 0.2),
        ("/containerd.services.tasks.v1.Tasks/Create", "NOT_FOUND", 400.0),  # past the last
    ]
    ours = Metrics()
    registry = CollectorRegistry()
    requests = Counter(
        "liner_grpc_requests", "gRPC calls handled", ["service", "method", "code"],
        registry=registry,
    )  # fmt: skip
    seconds = Histogram(
        "liner_grpc_request_duration_seconds", "gRPC call latency", ["service", "method"],
        buckets=_SECONDS_BUCKETS, registry=registry,
    )  # fmt: skip
    pulls = Counter("liner_pulls", "Image pulls by outcome", ["outcome"], registry=registry)
    for method, code, took in calls:
        ours.observe_call(method, code, took)
        service, _, name = method.lstrip("/").partition("/")
        requests.labels(service, name, code).inc()
        seconds.labels(service, name).observe(took)
    ours.observe_pull(False, 0, 1.0)
    pulls.labels("failure").inc()
    ours.unpack_seconds.observe(0.3)

    text = _without_times(ours.render().decode())
    expected = _without_times(generate_latest(registry).decode())
    ours_by_family = [line for line in text if "liner_pull_bytes" not in line]
    for line in expected:
        assert line in ours_by_family
    # The unlabelled histograms are there from the start, as prometheus_client's are.
    assert "liner_unpack_duration_seconds_count 1.0" in text
    assert "liner_pull_bytes_count 0.0" in text
