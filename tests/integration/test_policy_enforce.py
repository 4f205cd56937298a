"""The signature policy enforced by a real linerd on real registry content: `liner keys
generate` + `liner images sign` make a signature the daemon's policy (`sigstoreSigned` over
cosign's attachment) accepts on pull; an unsigned image is refused with PERMISSION_DENIED
naming the requirement, leaves no image record, counts in the metrics and publishes
`/images/refused`; SIGHUP reloads the policy, and a bad file is refused with the old policy
kept. `liner images verify` and `liner policy check` ask the daemon.

One daemon serves the module; it starts with a policy that accepts anything (the signer's
view: the image must be in the store to sign it), then the strict policy is loaded by SIGHUP.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result
from imagebuild import BusyboxLayout
from registry import Registry, free_port
from support import Linerd

from liner.cli import cli
from liner.client import Client
from liner.errors import PermissionDenied
from linerd.runtime import RUNC

pytestmark = pytest.mark.integration

PASSWORD = "correct horse"
CAN_RUN = os.geteuid() == 0 and shutil.which("conmon") is not None and os.path.exists(RUNC.path)


@dataclass
class Trusted:
    daemon: Linerd
    registry: Registry
    policy: Path
    keys: Path
    metrics: str
    signed: str  # a reference the test signs
    unsigned: str  # one nobody signs

    def strict(self) -> dict[str, object]:
        requirement = {
            "type": "sigstoreSigned",
            "keyPath": str(self.keys / "cosign.pub"),
            "signedIdentity": {"type": "matchRepository"},
        }
        return {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {f"{self.registry.host}/trust": [requirement]}},
        }


def liner(daemon: Linerd, *args: str, env: dict[str, str | None] | None = None) -> Result:
    base: dict[str, str | None] = {"LINER_ADDRESS": None, "LINER_NAMESPACE": None}
    return CliRunner().invoke(
        cli, ["-a", daemon.address, *args], env={**base, **(env or {})}, catch_exceptions=False
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/v1/metrics", timeout=5) as response:
        return response.read().decode()


def verdicts(address: str, verdict: str) -> float:
    prefix = f'liner_policy_verdicts_total{{verdict="{verdict}"}} '
    for line in scrape(address).splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def reload(daemon: Linerd, marker: str) -> None:
    """SIGHUP, then wait for the log line that says the reload was handled."""
    seen = daemon.log().count(marker)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while daemon.log().count(marker) <= seen:
        assert time.monotonic() < deadline, f"no {marker!r} in the log:\n{daemon.log()}"
        time.sleep(0.05)


def _watch(daemon: Linerd, into: queue.Queue[Any]) -> None:
    """Events of the refusal topic and of the probe namespaces, until the refusal."""
    with Client(daemon.address) as client:
        for event in client.subscribe(['topic=="/images/refused"', 'topic=="/namespaces/create"']):
            into.put(event)
            if event.topic == "/images/refused":
                return


def _wait_subscribed(daemon: Linerd, events: queue.Queue[Any]) -> None:
    """Create probe namespaces until the watcher sees one: its subscription is live."""
    with Client(daemon.address) as client:
        for attempt in range(100):
            client.create_namespace(f"probe-{attempt}")
            try:
                events.get(timeout=0.5)
                return
            except queue.Empty:
                continue
    raise AssertionError("the event subscription never started")


@pytest.fixture(scope="module")
def trusted(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, busybox_layout: BusyboxLayout
) -> Iterator[Trusted]:
    base = tmp_path_factory.mktemp("trust")
    registries_d = base / "registries.d"
    registries_d.mkdir()
    (registries_d / "trust.yaml").write_text(
        f"docker:\n  '{registry.host}/trust':\n    use-sigstore-attachments: true\n"
    )
    policy = base / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    metrics = f"127.0.0.1:{free_port()}"
    config = base / "config.toml"
    config.write_text(
        f'[policy]\npath = "{policy}"\nregistries_d = "{registries_d}"\n'
        f'[metrics]\naddress = "{metrics}"\n'
    )
    signed = registry.push_layout(busybox_layout.path, "trust/app:v1", tag="latest")
    unsigned = registry.push_layout(busybox_layout.path, "trust/unsigned:v1", tag="multi")
    daemon = Linerd(base / "d", ["--config", str(config)])
    daemon.start()
    try:
        yield Trusted(daemon, registry, policy, base / "keys", metrics, signed, unsigned)
    finally:
        daemon.stop()


def test_sign_then_enforce(trusted: Trusted) -> None:
    daemon, env = trusted.daemon, {"COSIGN_PASSWORD": PASSWORD}
    out = ok(liner(daemon, "keys", "generate", str(trusted.keys), env=env))
    assert "cosign.key" in out and "cosign.pub" in out
    assert (trusted.keys / "cosign.key").stat().st_mode & 0o777 == 0o600
    # The signer's daemon accepts anything: pull, sign, and the signature is in the registry.
    ok(liner(daemon, "images", "pull", "--plain-http", "--progress", "quiet", trusted.signed))
    signed_out = ok(
        liner(
            daemon,
            "images",
            "sign",
            "--key",
            str(trusted.keys / "cosign.key"),
            "--plain-http",
            "--progress",
            "quiet",
            trusted.signed,
            env=env,
        )
    )
    digest = trusted.registry.manifest_digest("trust/app:v1")
    sig_ref = f"{trusted.registry.host}/trust/app:sha256-{digest.split(':')[1]}.sig"
    assert signed_out.split()[0] == sig_ref
    with Client(daemon.address) as client:
        # The signature went up from the content store: no image record was made for it.
        assert [i.name for i in client.images()] == [trusted.signed]

    pub = str(trusted.keys / "cosign.pub")
    verified = ok(liner(daemon, "images", "verify", "--plain-http", "--key", pub, trusted.signed))
    assert f"{trusted.signed}@{digest}: accepted" in verified
    assert "sigstoreSigned" in verified
    refused = liner(daemon, "images", "verify", "--plain-http", "--key", pub, trusted.unsigned)
    assert refused.exit_code == 1 and "rejected" in refused.stdout
    assert "no signature exists" in refused.stdout

    # The enforcing policy, by SIGHUP.
    trusted.policy.write_text(json.dumps(trusted.strict()))
    reload(daemon, '"policy loaded"')
    assert '"generation": 2' in daemon.log() or "generation=2" in daemon.log()
    ok(liner(daemon, "images", "rm", trusted.signed))

    rejected_before = verdicts(trusted.metrics, "rejected")
    events: queue.Queue[Any] = queue.Queue()
    watcher = threading.Thread(target=_watch, args=(daemon, events), daemon=True)
    watcher.start()
    _wait_subscribed(daemon, events)
    with Client(daemon.address) as client, pytest.raises(PermissionDenied) as denied:
        for _ in client.pull(trusted.unsigned, plain_http=True):
            pass
    message = str(denied.value)
    assert "sigstoreSigned" in message and "no signature exists" in message, message
    event = events.get(timeout=20)
    while event.topic != "/images/refused":
        event = events.get(timeout=20)
    assert event.type_url == "liner.events.ImageRefused"
    assert event.payload["name"] == trusted.unsigned and event.payload["via"] == "pull"
    assert "sigstoreSigned" in event.payload["requirement"]
    assert verdicts(trusted.metrics, "rejected") == rejected_before + 1
    cli_refused = liner(daemon, "images", "pull", "--plain-http", "--progress", "quiet",
                        trusted.unsigned)  # fmt: skip
    assert cli_refused.exit_code == 1 and "sigstoreSigned" in cli_refused.stderr
    assert trusted.unsigned not in ok(liner(daemon, "images", "ls", "-q"))
    # What the refused pulls fetched (the index) was left to the collector, which took it.
    refused_root = trusted.registry.manifest_digest("trust/unsigned:v1")
    with Client(daemon.address) as client:
        deadline = time.monotonic() + 20
        while refused_root in {c.digest for c in client.content()}:
            assert time.monotonic() < deadline, "the refused image's index was never collected"
            time.sleep(0.1)

    # The signed image passes, twice (the second verdict from the cache), and runs.
    accepted_before = verdicts(trusted.metrics, "accepted")
    ok(liner(daemon, "images", "pull", "--plain-http", "--progress", "quiet", trusted.signed))
    ok(liner(daemon, "images", "pull", "--plain-http", "--progress", "quiet", trusted.signed))
    assert verdicts(trusted.metrics, "accepted") == accepted_before + 2
    policy_verdict = ok(liner(daemon, "images", "verify", "--plain-http", trusted.signed))
    assert "accepted" in policy_verdict and f'docker scope "{trusted.registry.host}/trust"' in (
        policy_verdict
    )
    if CAN_RUN:
        done = subprocess.run(
            [sys.executable, "-m", "liner.cli", "-a", daemon.address, "run", "--rm",
             "--pull", "never", trusted.signed, "trusted-run", "echo", "signed-ran"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout == "signed-ran\n", done.stderr

    # A bad file on SIGHUP: refused with one line, the strict policy stays.
    trusted.policy.write_text('{"default": [{"type": "acceptEverything"}]}')
    reload(daemon, "reload refused")
    refused_line = [ln for ln in daemon.log().splitlines() if "reload refused" in ln][-1]
    assert str(trusted.policy) in refused_line
    again = liner(daemon, "images", "pull", "--plain-http", "--progress", "quiet",
                  trusted.unsigned)  # fmt: skip
    assert again.exit_code == 1 and "sigstoreSigned" in again.stderr


def test_policy_check(trusted: Trusted, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(trusted.strict()))
    out = ok(liner(trusted.daemon, "policy", "check", str(good)))
    assert out.splitlines()[0] == f"{good}: valid"
    assert "default: insecureAcceptAnything" in out and "sigstoreSigned" in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"default": [], "extra": 1}')
    refused = liner(trusted.daemon, "policy", "check", str(bad))
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"liner: {bad}: ") and len(refused.stderr.splitlines()) == 1


def test_hostile_signatures_are_bounded(trusted: Trusted, busybox_layout: BusyboxLayout) -> None:
    """What enforcement adds to the engine's bounds: the daemon's own attachment fetcher
    (registry client) and image names the policy cannot judge."""
    from liner import cosign

    reg, daemon = trusted.registry, trusted.daemon
    pub = str(trusted.keys / "cosign.pub")
    if not Path(pub).exists():
        ok(liner(daemon, "keys", "generate", str(trusted.keys), env={"COSIGN_PASSWORD": "x"}))

    def attach(repo: str, manifest: bytes, media_type: str, blobs: list[bytes]) -> str:
        ref = reg.push_layout(busybox_layout.path, f"{repo}:v1", tag="latest")
        digest = reg.manifest_digest(f"{repo}:v1")
        reg.push_raw(repo, cosign.attachment_tag(digest), manifest, media_type, blobs)
        return ref

    # A payload layer declared (and stored) larger than any signature: never fetched.
    big = b"{" + b" " * (5 << 20) + b"}"
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": cosign.OCI_MANIFEST,
            "config": cosign.Blob(cosign.OCI_CONFIG, config).descriptor(),
            "layers": [
                cosign.Blob(cosign.SIGNATURE_MEDIA_TYPE, big).descriptor(
                    annotations={cosign.SIGNATURE_ANNOTATION: "AAAA"}
                )
            ],
        }
    ).encode()
    huge = attach("trust/hostile-huge", manifest, cosign.OCI_MANIFEST, [config, big])
    out = liner(daemon, "images", "verify", "--plain-http", "--key", pub, huge)
    assert out.exit_code == 1 and "larger than" in out.stdout, out.stdout
    # A .sig tag that is an index.
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }
    ).encode()
    indexed = attach("trust/hostile-index", index, "application/vnd.oci.image.index.v1+json", [])
    out = liner(daemon, "images", "verify", "--plain-http", "--key", pub, indexed)
    assert out.exit_code == 1 and "is an index" in out.stdout, out.stdout

    # Images/Create of names no policy can judge, with a policy loaded: refused, no record.
    target = {
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "c" * 64,
        "size": 10,
    }
    from liner.client import Descriptor

    with Client(daemon.address) as client:
        for name in ("sha256:" + "d" * 64, "UPPER/Case:x"):
            with pytest.raises(PermissionDenied, match="not a registry reference"):
                client.create_image(name, Descriptor(**target))
        assert not [i for i in client.images() if i.name.startswith(("sha256:", "UPPER"))]


def test_a_bad_policy_stops_linerd_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from linerd.main import main as linerd_main

    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent.pub"}]}')
    config = tmp_path / "config.toml"
    config.write_text(f'[policy]\npath = "{policy}"\nregistries_d = ""\n')
    try:
        code = linerd_main(
            [
                "--config",
                str(config),
                "--root",
                str(tmp_path / "root"),
                "--state",
                str(tmp_path / "state"),
                "--address",
                str(tmp_path / "s.sock"),
            ]
        )
    finally:
        structlog.reset_defaults()  # main() configured logging for this process
    assert code == 1
    # The log's JSON line, then the one line for people (as for every start-up failure).
    *_, line = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"linerd: policy: {policy}: ") and "/nonexistent.pub" in line
