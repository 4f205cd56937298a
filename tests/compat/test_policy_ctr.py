"""The real ctr against a linerd with a signature policy: ctr pulls in the client and ends in
Images/Create, which the policy guards (signatures read from the image name's registry with
the daemon's registry configuration). A refused image ends without an image record; a signed
one (cosign's layout, made with liner.cosign and pushed by HTTP) is stored and runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import BusyboxLayout, build_busybox_layout
from registry import Registry
from support import Linerd

from liner import cosign
from linerd.runtime import RUNC

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="no docker-registry"),
]

CAN_RUN = os.geteuid() == 0 and os.path.exists(RUNC.path)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> BusyboxLayout:
    return build_busybox_layout(tmp_path_factory.mktemp("policy-ctr-layout") / "layout")


@pytest.fixture(scope="module")
def reg(layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    r = Registry("open", workdir=tmp_path_factory.mktemp("policy-ctr-registry"))
    r.start()
    try:
        r.push_layout(layout.path, "trust/signed:v1", tag="latest")
        r.push_layout(layout.path, "trust/unsigned:v1", tag="latest")
        yield r
    finally:
        r.stop()


def _sign(reg: Registry, repo: str, tag: str, keys: Path) -> None:
    """Sign as `liner images sign` does (liner.cosign), pushing the .sig by HTTP."""
    pair = cosign.generate(b"")
    keys.mkdir(exist_ok=True)
    (keys / "cosign.pub").write_bytes(pair.public_pem)
    digest = reg.manifest_digest(f"{repo}:{tag}")
    signed = cosign.payload(f"{reg.host}/{repo}", digest)
    image = cosign.signature_image(
        signed, cosign.sign(cosign.load_private(pair.private_pem, b""), signed)
    )
    reg.push_raw(
        repo,
        cosign.attachment_tag(digest),
        image.manifest.data,
        image.manifest.media_type,
        [image.config.data, image.payload.data],
    )


@pytest.fixture(scope="module")
def daemon(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    base = tmp_path_factory.mktemp("policy-ctr")
    _sign(reg, "trust/signed", "v1", base / "keys")
    registries_d = base / "registries.d"
    registries_d.mkdir()
    (registries_d / "t.yaml").write_text(
        f"docker:\n  '{reg.host}':\n    use-sigstore-attachments: true\n"
    )
    requirement = {
        "type": "sigstoreSigned",
        "keyPath": str(base / "keys" / "cosign.pub"),
        "signedIdentity": {"type": "matchRepository"},
    }
    policy = base / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": [{"type": "insecureAcceptAnything"}],
                "transports": {"docker": {f"{reg.host}/trust": [requirement]}},
            }
        )
    )
    config = base / "config.toml"
    config.write_text(f'[policy]\npath = "{policy}"\nregistries_d = "{registries_d}"\n')
    d = Linerd(base / "d", ["--config", str(config)])
    d.start()
    yield d
    d.stop()


def ctr(daemon: Linerd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", daemon.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")},
    )


def test_ctr_pull_of_a_refused_image_ends_without_a_record(daemon: Linerd, reg: Registry) -> None:
    ref = reg.ref("trust/unsigned:v1")
    pulled = ctr(daemon, "images", "pull", "--plain-http", ref)
    assert pulled.returncode != 0
    assert "sigstoreSigned" in pulled.stderr and "no signature exists" in pulled.stderr, (
        pulled.stderr
    )
    listed = ctr(daemon, "images", "ls", "-q")
    assert listed.returncode == 0 and ref not in listed.stdout.split()


def test_ctr_pull_of_a_signed_image_is_stored_and_runs(daemon: Linerd, reg: Registry) -> None:
    ref = reg.ref("trust/signed:v1")
    pulled = ctr(daemon, "images", "pull", "--plain-http", ref)
    assert pulled.returncode == 0, pulled.stderr + daemon.log()[-3000:]
    assert ref in ctr(daemon, "images", "ls", "-q").stdout.split()
    # Another name for the same target under a scope with no signature is refused.
    tagged = ctr(daemon, "images", "tag", ref, reg.ref("trust/other:v1"))
    assert tagged.returncode != 0 and "sigstoreSigned" in tagged.stderr
    if CAN_RUN:
        ran = ctr(daemon, "run", "--rm", ref, "policy-ctr-run", "echo", "signed-ran")
        assert ran.returncode == 0 and ran.stdout == "signed-ran\n", ran.stderr
