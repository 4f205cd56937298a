"""`liner images push`: pull, push to a new repository, and skopeo reads back the very digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from imagebuild import BusyboxLayout
from registry import SKOPEO, Registry
from support import Linerd

from liner.cli import cli

pytestmark = pytest.mark.integration

BUSYBOX = "library/busybox"
PUSH_LINE = re.compile(
    r"^(index|manifest|config|layer)-(sha256:[0-9a-f]{64}): "
    r"(waiting|uploading|exists|mounted|done) (\S+)/(\S+)$"
)


def liner(daemon: Linerd, *args: str, input: str | None = None) -> Result:
    env: dict[str, str | None] = {"LINER_ADDRESS": None, "LINER_NAMESPACE": None}
    return CliRunner().invoke(
        cli, ["-a", daemon.address, *args], input=input, env=env, catch_exceptions=False
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def skopeo(reg: Registry, *args: str) -> bytes:
    proc = subprocess.run(
        [SKOPEO, "--insecure-policy", *args],
        capture_output=True,
        env=dict(os.environ, HOME=str(reg.workdir)),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def test_pull_push_read_back(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    source = registry.ref(f"{BUSYBOX}:latest")
    ok(liner(linerd, "images", "pull", "--plain-http", "--progress", "quiet", source))
    dest = registry.ref("cli-pushed/busybox:1")
    out = ok(liner(linerd, "images", "push", "--plain-http", "--progress", "plain", dest, source))
    *progress, last = out.splitlines()
    image = busybox_layout.latest
    assert last == f"{dest} {image.manifest.digest}"
    final: dict[str, str] = {}
    for line in progress:
        m = PUSH_LINE.match(line)
        assert m, line
        final[m.group(2)] = m.group(3)
    assert set(final) == {b.digest for b in image.blobs} | {image.manifest.digest}
    assert final[image.manifest.digest] == "done"
    for blob in image.blobs:
        assert final[blob.digest] in ("mounted", "exists", "done")

    raw = skopeo(registry, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image.manifest.digest
    info = json.loads(skopeo(registry, "inspect", "--tls-verify=false", f"docker://{dest}"))
    assert info["Digest"] == image.manifest.digest
    back = tmp_path / "back"
    skopeo(registry, "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
           f"docker://{dest}", f"oci:{back}:t")  # fmt: skip
    blobs = set()
    for path in (back / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        blobs.add(f"sha256:{path.name}")
    assert blobs == {b.digest for b in image.blobs} | {image.manifest.digest}


def test_push_index_by_platform_and_by_own_name(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    source = registry.ref(f"{BUSYBOX}:multi")
    ok(liner(linerd, "images", "pull", "--plain-http", "--all-platforms", "--progress", "quiet",
             source))  # fmt: skip
    index = busybox_layout.multi
    dest = registry.ref("cli-pushed/multi:1")
    out = ok(liner(linerd, "images", "push", "--plain-http", "--progress", "quiet", dest, source))
    assert out.splitlines() == [f"{dest} {index.digest}"]
    raw = skopeo(registry, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == index.digest

    # an image named as the destination: LOCAL may be left out
    ok(liner(linerd, "images", "tag", source, registry.ref("cli-pushed/multi:2")))
    dest2 = registry.ref("cli-pushed/multi:2")
    out = ok(liner(linerd, "images", "push", "--plain-http", "--progress", "quiet",
                   "--platform", "linux/amd64", dest2))  # fmt: skip
    assert out.splitlines() == [f"{dest2} {index.digest}"]


def test_push_errors_are_one_line(linerd: Linerd, registry: Registry) -> None:
    result = liner(linerd, "images", "push", "--plain-http", registry.ref("x/y:1"), "nosuch")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("liner: ") and "not found" in line
    result = liner(linerd, "images", "push", "--platform", "a/b/c/d", registry.ref("x/y:1"))
    assert result.exit_code == 2
