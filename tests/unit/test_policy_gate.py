"""linerd.local.policy.PolicyGate: loading, generations, refusals (error, metric, event),
and the registries the verdicts need (none, for these policies)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from liner_api.liner.events import policy_pb2
from linerd import errdefs
from linerd.core.types import Descriptor
from linerd.events import Exchange
from linerd.local.events import Publisher
from linerd.local.policy import PolicyGate, is_reference
from linerd.metrics import Metrics
from linerd.policy import PolicyError
from linerd.remotes.hosts import HostsConfig

pytestmark = pytest.mark.unit

TARGET = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "a" * 64, 10)


class Recorder(Exchange):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str, bytes]] = []

    def publish(self, namespace: str, topic: str, type_url: str, payload: bytes) -> None:
        self.seen.append((namespace, topic, type_url, payload))
        super().publish(namespace, topic, type_url, payload)


def _gate() -> tuple[PolicyGate, Metrics, Recorder]:
    metrics, exchange = Metrics(), Recorder()
    return PolicyGate(metrics, Publisher(exchange), HostsConfig), metrics, exchange


def _policy(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _count(metrics: Metrics, verdict: str) -> float:
    series = metrics.policy_verdicts._series.get((verdict,))
    return series.sum if series is not None else 0.0


def test_no_policy_admits_everything_and_loads_nothing() -> None:
    gate, metrics, exchange = _gate()
    asyncio.run(gate.load("", "/nonexistent"))
    assert gate.evaluator is None and gate.generation == 1
    asyncio.run(gate.admit("default", "127.0.0.1:5000/x:1", TARGET, via="pull"))
    assert _count(metrics, "accepted") == 0 and not exchange.seen


def test_refusal_names_the_requirement_counts_and_publishes(tmp_path: Path) -> None:
    gate, metrics, exchange = _gate()
    path = _policy(
        tmp_path / "p.json",
        {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {"127.0.0.1:5000/bad": [{"type": "reject"}]}},
        },
    )
    asyncio.run(gate.load(path, str(tmp_path / "none.d")))
    asyncio.run(gate.admit("default", "127.0.0.1:5000/good:1", TARGET, via="create"))
    assert _count(metrics, "accepted") == 1
    with pytest.raises(errdefs.PermissionDenied) as refused:
        asyncio.run(gate.admit("ns1", "127.0.0.1:5000/bad:1", TARGET, via="create"))
    message = str(refused.value)
    assert "rejected by reject" in message and '"127.0.0.1:5000/bad"' in message
    assert _count(metrics, "rejected") == 1
    ((namespace, topic, type_url, payload),) = exchange.seen
    assert (namespace, topic, type_url) == ("ns1", "/images/refused", "liner.events.ImageRefused")
    event = policy_pb2.ImageRefused.FromString(payload)
    assert event.name == "127.0.0.1:5000/bad:1" and event.digest == TARGET.digest
    assert event.requirement == "reject" and event.via == "create"
    assert event.policy_generation == gate.generation == 1


def test_a_bad_file_keeps_the_old_policy(tmp_path: Path) -> None:
    gate, _, _ = _gate()
    good = _policy(tmp_path / "good.json", {"default": [{"type": "reject"}]})
    asyncio.run(gate.load(good, ""))
    before = gate.evaluator
    bad = tmp_path / "bad.json"
    bad.write_text('{"default": [{"type": "rejekt"}]}')
    with pytest.raises(PolicyError) as error:
        asyncio.run(gate.load(str(bad), ""))
    assert str(bad) in str(error.value) and "\n" not in str(error.value)
    assert gate.evaluator is before and gate.generation == 1
    asyncio.run(gate.load(good, ""))
    assert gate.generation == 2 and gate.evaluator is not before
    assert gate.evaluator is not None and gate.evaluator.generation == 2


def test_names_that_are_no_reference_are_refused_with_a_reason(tmp_path: Path) -> None:
    gate, metrics, _ = _gate()
    asyncio.run(gate.load(_policy(tmp_path / "p.json", {"default": [{"type": "reject"}]}), ""))
    assert not is_reference("sha256:" + "b" * 64)
    assert is_reference("busybox")
    with pytest.raises(errdefs.PermissionDenied, match="not a registry reference"):
        asyncio.run(gate.admit("default", "sha256:" + "b" * 64, TARGET, via="create"))
    with pytest.raises(errdefs.PermissionDenied, match="not a registry reference"):
        asyncio.run(gate.admit("default", "Not A Name", TARGET, via="create"))
    assert _count(metrics, "rejected") == 2


def test_check_lists_scopes_and_refuses_bad_files(tmp_path: Path) -> None:
    doc = {
        "default": [{"type": "reject"}],
        "transports": {"docker": {"r.example/app": [{"type": "insecureAcceptAnything"}]}},
    }
    lines = asyncio.run(PolicyGate.check(json.dumps(doc).encode(), "p.json"))
    assert lines == ["default: reject", "docker 'r.example/app': insecureAcceptAnything"]
    with pytest.raises(PolicyError, match=r"p\.json"):
        asyncio.run(PolicyGate.check(b"[", "p.json"))
