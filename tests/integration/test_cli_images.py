"""The `liner images` and `liner snapshots` commands against a real linerd and registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from imagebuild import BuiltImage, BusyboxLayout
from registry import Registry
from support import Linerd, ns

from liner.cli import cli
from liner.client import BlobProgress, Descriptor, PullProgress
from liner.format import human_size, snapshot_tree
from liner.progress import PlainDisplay
from liner_api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PROGRESS_LINE = re.compile(
    r"^(index|manifest|config|layer)-(sha256:[0-9a-f]{64}): "
    r"(waiting|downloading|downloaded|exists|unpacking|unpacked) "
    r"(\S+)/(\S+)( \S+/s)?$"
)


def liner(address: str, *args: str, input: str | None = None, **env: str) -> Result:
    """Run the CLI in-process (stdin and stdout are not terminals)."""
    full_env: dict[str, str | None] = {
        "LINER_ADDRESS": None,
        "LINER_NAMESPACE": None,
        "LINER_SNAPSHOTTER": None,
    }
    full_env.update(env)
    return CliRunner().invoke(
        cli, ["-a", address, *args], input=input, env=full_env, catch_exceptions=False
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def failed(result: Result) -> str:
    """The one error line of a run that exited 1, without `liner: `."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("liner: "), lines[0]
    return lines[0].removeprefix("liner: ")


def pull(linerd: Linerd, ref: str, *options: str, input: str | None = None) -> list[str]:
    """`liner images pull --plain-http OPTIONS REF`: its progress lines (the last line,
    `NAME DIGEST`, checked and dropped)."""
    out = ok(liner(linerd.address, "images", "pull", "--plain-http", *options, ref, input=input))
    *progress, last = out.splitlines()
    assert re.fullmatch(rf"{re.escape(ref)} sha256:[0-9a-f]{{64}}", last), last
    return progress


def final_states(lines: list[str]) -> dict[str, str]:
    """Each blob's last state in plain progress output; every line is checked for form."""
    states = {}
    for line in lines:
        m = PROGRESS_LINE.match(line)
        assert m, line
        states[m.group(2)] = m.group(3)
    return states


def columns(text: str) -> list[list[str]]:
    return [re.split(r" {2,}", line) for line in text.splitlines()]


def assert_aligned(text: str) -> None:
    lines = text.splitlines()
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", lines[0])]
    for line in lines[1:]:
        for start in starts[1:]:
            assert line[start - 1] == " " and line[start] != " ", (lines[0], line)


def image_size(image: BuiltImage) -> int:
    return image.config.size + sum(layer.blob.size for layer in image.layers)


def chain_ids(image: BuiltImage) -> list[str]:
    chain: list[str] = []
    for layer in image.layers:
        if not chain:
            chain.append(layer.diff_id)
        else:
            joined = f"{chain[-1]} {layer.diff_id}".encode()
            chain.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return chain


def arm64(layout: BusyboxLayout) -> BuiltImage:
    return next(i for i in layout.multi.images if i.platform["architecture"] == "arm64")


# -- pull, ls ---------------------------------------------------------------------------------


def test_pull_plain_progress_then_ls(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    image = busybox_layout.latest
    ref = registry.ref("library/busybox:latest")
    out = ok(liner(linerd.address, "images", "pull", "--plain-http", ref))
    *lines, last = out.splitlines()
    assert last == f"{ref} {image.digest}"
    states = final_states(lines)
    assert states[image.digest] in ("downloaded", "exists")
    assert states[image.config.digest] == "downloaded"
    for layer in image.layers:
        assert states[layer.digest] == "unpacked"
    # one line per change: never the same state twice in a row for a blob
    seen: dict[str, str] = {}
    for line in lines:
        m = PROGRESS_LINE.match(line)
        assert m is not None
        assert seen.get(m.group(2)) != m.group(3), line
        seen[m.group(2)] = m.group(3)
        if m.group(3) in ("downloaded", "exists", "unpacking", "unpacked"):
            assert m.group(4) == m.group(5), line  # all bytes there

    out = ok(liner(linerd.address, "images", "ls"))
    assert columns(out) == [
        ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"],
        [ref, OCI_MANIFEST, image.digest, human_size(image_size(image)), "linux/amd64", "-"],
    ]
    assert_aligned(out)
    assert ok(liner(linerd.address, "images", "ls", "-q")) == ref + "\n"
    assert ok(liner(linerd.address, "i", "list", "--quiet", f"name=={ref}")) == ref + "\n"
    assert ok(liner(linerd.address, "image", "ls", "-q", "name==other")) == ""
    assert ok(liner(linerd.address, "-n", "elsewhere", "images", "ls", "-q")) == ""

    # pulling again finds everything in place
    again = final_states(pull(linerd, ref))
    assert set(again.values()) <= {"exists", "unpacked"}


def test_pull_progress_modes(linerd: Linerd, registry: Registry) -> None:
    ref = registry.ref("library/busybox:zstd")
    out = ok(liner(linerd.address, "images", "pull", "--plain-http", "--progress", "quiet", ref))
    assert len(out.splitlines()) == 1 and out.startswith(f"{ref} sha256:")
    out = ok(liner(linerd.address, "images", "pull", "--plain-http", "--progress", "tty", ref))
    assert "\x1b[" in out  # a live display, drawn with escape codes
    assert re.search(r"layer-[0-9a-f]{12} +unpacked", out)
    assert re.search(rf"{re.escape(ref)} sha256:[0-9a-f]{{64}}\n$", out)


def test_pull_subprocess_not_a_tty_prints_lines(linerd: Linerd, registry: Registry) -> None:
    ref = registry.ref("library/busybox:uncompressed")
    done = subprocess.run(
        [sys.executable, "-m", "liner.cli", "images", "pull", "--plain-http", ref],
        capture_output=True,
        env={**os.environ, "LINER_ADDRESS": linerd.address},
        timeout=120,
        text=True,
    )
    assert (done.returncode, done.stderr) == (0, "")
    *lines, last = done.stdout.splitlines()
    assert "\x1b" not in done.stdout
    assert last.startswith(f"{ref} sha256:")
    assert "unpacked" in final_states(lines).values()


def test_pull_skip_unpack_and_snapshotter(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    a = linerd.address
    ref = registry.ref("library/busybox:latest")
    states = final_states(pull(linerd, ref, "--skip-unpack"))
    assert {states[layer.digest] for layer in busybox_layout.latest.layers} == {"downloaded"}
    assert ok(liner(a, "snapshots", "ls", "-q")) == ""
    pull(linerd, ref, "--snapshotter", "native")
    assert ok(liner(a, "snapshots", "ls", "-q")) == ""  # overlayfs by default
    keys = sorted(chain_ids(busybox_layout.latest))
    assert ok(liner(a, "snapshots", "--snapshotter", "native", "ls", "-q")).split() == keys
    assert ok(liner(a, "snapshots", "ls", "-q", LINER_SNAPSHOTTER="native")).split() == keys
    message = failed(liner(a, "images", "pull", "--snapshotter", "nope", "--plain-http", ref))
    assert "nope" in message
    assert "nope" in failed(liner(a, "snapshots", "-s", "nope", "ls"))


def test_pull_platform_from_index(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    a = linerd.address
    ref = registry.ref("library/busybox:multi")
    amd, arm = busybox_layout.multi.images[0], arm64(busybox_layout)
    states = final_states(pull(linerd, ref, "--platform", "linux/arm64"))
    assert states[busybox_layout.multi.digest] in ("downloaded", "exists")
    assert arm.digest in states and arm.config.digest in states
    assert amd.digest not in states
    for layer in arm.layers:
        assert states[layer.digest] == "unpacked"
    assert ok(liner(a, "snapshots", "ls", "-q")).split() == sorted(chain_ids(arm))

    # the host's platform was not pulled: SIZE is the arm64 manifest's
    out = ok(liner(a, "images", "ls"))
    assert columns(out)[1] == [
        ref,
        OCI_INDEX,
        busybox_layout.multi.digest,
        human_size(image_size(arm)),
        "linux/amd64,linux/arm64",
        "-",
    ]
    doc = json.loads(ok(liner(a, "images", "inspect", ref)))
    assert doc["Index"] == busybox_layout.multi.index.json()
    assert doc["Manifest"] == arm.manifest.json()
    assert doc["Config"]["architecture"] == "arm64"

    message = failed(liner(a, "images", "pull", "--plain-http", "--platform", "linux/s390x", ref))
    assert "s390x" in message
    result = liner(a, "images", "pull", "--platform", "linux//x", ref)
    assert result.exit_code == 2 and "--platform" in result.stderr


def test_pull_all_platforms(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    ref = registry.ref("library/busybox:multi")
    states = final_states(pull(linerd, ref, "--all-platforms"))
    for image in busybox_layout.multi.images:
        assert image.digest in states and image.config.digest in states
        for layer in image.layers:
            assert layer.digest in states


# -- inspect, tag, rm ---------------------------------------------------------------------------


def test_images_inspect(linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout) -> None:
    image = busybox_layout.latest
    ref = registry.ref("library/busybox:latest")
    pull(linerd, ref)
    out = ok(liner(linerd.address, "images", "inspect", ref))
    assert out.startswith("{\n  ")  # pretty-printed
    doc = json.loads(out)
    assert set(doc) == {"Image", "Manifest", "Config"}
    assert doc["Image"]["Name"] == ref
    assert doc["Image"]["Target"] == {
        "mediaType": OCI_MANIFEST,
        "digest": image.digest,
        "size": image.manifest.size,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", doc["Image"]["CreatedAt"])
    assert doc["Manifest"] == image.manifest.json()
    assert doc["Config"] == image.config.json()
    assert "not found" in failed(liner(linerd.address, "images", "inspect", "nothing"))


def test_tag_then_rm_keeps_original_and_rm_sync_collects(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    a = linerd.address
    image = busybox_layout.latest
    ref = registry.ref("library/busybox:latest")
    pull(linerd, ref)
    content = ok(liner(a, "content", "ls", "-q")).split()
    assert {image.digest, image.config.digest} <= set(content)
    snapshots = ok(liner(a, "snapshots", "ls", "-q")).split()
    assert snapshots == sorted(chain_ids(image))

    assert ok(liner(a, "images", "tag", ref, "mine:1", "mine:2")) == "mine:1\nmine:2\n"
    assert ok(liner(a, "images", "ls", "-q")).split() == sorted([ref, "mine:1", "mine:2"])
    listed = columns(ok(liner(a, "images", "ls")))
    assert {row[2] for row in listed[1:]} == {image.digest}
    assert "already exists" in failed(liner(a, "images", "tag", ref, "mine:1"))
    assert ok(liner(a, "images", "tag", "--force", ref, "mine:1")) == "mine:1\n"
    assert "not found" in failed(liner(a, "images", "tag", "nothing", "x"))

    assert ok(liner(a, "images", "rm", "--sync", "mine:1")) == "mine:1\n"
    assert ok(liner(a, "images", "remove", "--sync", "mine:2")) == "mine:2\n"
    assert ok(liner(a, "images", "ls", "-q")) == ref + "\n"
    assert ok(liner(a, "content", "ls", "-q")).split() == content
    assert ok(liner(a, "snapshots", "ls", "-q")).split() == snapshots

    # the last name goes: so do its content and snapshots
    assert ok(liner(a, "i", "delete", "--sync", ref)) == ref + "\n"
    assert ok(liner(a, "images", "ls", "-q")) == ""
    assert ok(liner(a, "content", "ls", "-q")) == ""
    assert ok(liner(a, "snapshots", "ls", "-q")) == ""


def test_images_rm_reports_each_failure(linerd: Linerd, registry: Registry) -> None:
    ref = registry.ref("library/busybox:latest")
    pull(linerd, ref, "--skip-unpack")
    result = liner(linerd.address, "images", "rm", "nothing", ref)
    assert result.exit_code == 1
    assert result.stdout == ref + "\n"
    assert result.stderr.splitlines() == ["liner: image 'nothing' not found"]


# -- registries with auth -------------------------------------------------------------------


def test_pull_basic_auth(linerd: Linerd, auth_registry: Registry) -> None:
    a = linerd.address
    ref = auth_registry.ref("library/busybox:latest")
    user, password = auth_registry.username, auth_registry.password
    assert "authentication required" in failed(liner(a, "images", "pull", "--plain-http", ref))
    bad = failed(liner(a, "images", "pull", "--plain-http", "--user", f"{user}:wrong", ref))
    assert "authentication failed" in bad
    assert "wrong" not in bad
    pull(linerd, ref, "--user", f"{user}:{password}")
    assert ok(liner(a, "images", "ls", "-q")) == ref + "\n"
    # no password in the option: stdin is not a terminal, so its first line is the password
    pull(linerd, ref, "-u", user, input=f"{password}\n")
    assert "no password" in failed(
        liner(a, "images", "pull", "--plain-http", "--user", user, ref, input="")
    )
    bad = failed(liner(a, "images", "pull", "--plain-http", "--user", user, ref, input="nope\n"))
    assert "authentication failed" in bad


def test_pull_token_auth(
    linerd: Linerd, token_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    a = linerd.address
    ref = token_registry.ref("library/busybox:multi")
    user, password = token_registry.username, token_registry.password
    failed(liner(a, "images", "pull", "--plain-http", ref))
    failed(liner(a, "images", "pull", "--plain-http", "--user", f"{user}:bad", ref))
    lines = pull(linerd, ref, "--user", f"{user}:{password}", "--platform", "linux/amd64")
    assert busybox_layout.multi.images[0].digest in final_states(lines)
    assert ok(liner(a, "images", "ls", "-q")) == ref + "\n"


# -- snapshots --------------------------------------------------------------------------------


def test_snapshots_commands(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    a = linerd.address
    chain = chain_ids(busybox_layout.latest)
    pull(linerd, registry.ref("library/busybox:latest"))

    out = ok(liner(a, "snapshots", "ls"))
    parents = {chain[0]: "-", chain[1]: chain[0], chain[2]: chain[1]}
    assert columns(out) == [
        ["KEY", "PARENT", "KIND"],
        *([key, parents[key], "Committed"] for key in sorted(chain)),
    ]
    assert_aligned(out)
    assert ok(liner(a, "snapshot", "list", "-q")).split() == sorted(chain)

    assert ok(liner(a, "snapshots", "tree")) == (
        f"{chain[0]}\n  \\_ {chain[1]}\n    \\_ {chain[2]}\n"
    )

    out = ok(liner(a, "snapshots", "usage"))
    rows = columns(out)
    assert rows[0] == ["KEY", "SIZE", "INODES"]
    assert [r[0] for r in rows[1:]] == sorted(chain)
    for _, size, inodes in rows[1:]:
        assert re.fullmatch(r"[\d.]+[kMG]?B", size) and int(inodes) > 0
    base = columns(ok(liner(a, "snapshots", "usage", "-b", chain[0])))
    assert len(base) == 2 and base[1][0] == chain[0]
    assert int(base[1][1]) > 1_000_000  # the busybox binary
    assert "does not exist" in failed(liner(a, "snapshots", "usage", "nothing"))

    info = json.loads(ok(liner(a, "snapshots", "info", chain[1])))
    assert info["Kind"] == "Committed"
    assert info["Name"] == chain[1]
    assert info["Parent"] == chain[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", info["Created"])
    assert "Parent" not in json.loads(ok(liner(a, "snapshots", "info", chain[0])))
    assert "does not exist" in failed(liner(a, "snapshots", "info", "nothing"))

    # a parent with children stays; the leaf goes. Removing the leaf schedules a collection,
    # and the image's label names only the leaf: a lease holds the parents, so the listing
    # does not race the collector.
    with linerd.channel() as channel:
        leases = leases_pb2_grpc.LeasesStub(channel)
        leases.Create(leases_pb2.CreateRequest(id="hold-parents"), metadata=ns())
        for key in chain[:2]:
            resource = leases_pb2.Resource(id=key, type="snapshots/overlayfs")
            leases.AddResource(
                leases_pb2.AddResourceRequest(id="hold-parents", resource=resource), metadata=ns()
            )
    result = liner(a, "snapshots", "rm", chain[0], chain[2], "nothing")
    assert result.exit_code == 1
    assert result.stdout == chain[2] + "\n"
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("liner: ") for e in errors)
    assert ok(liner(a, "snapshots", "ls", "-q")).split() == sorted(chain[:2])
    # once nothing holds them, the parents are garbage
    assert ok(liner(a, "leases", "rm", "--sync", "hold-parents")) == "hold-parents\n"
    assert ok(liner(a, "snapshots", "ls", "-q")) == ""


# -- errors -------------------------------------------------------------------------------------


def test_pull_errors(linerd: Linerd, registry: Registry) -> None:
    a = linerd.address
    message = failed(
        liner(a, "images", "pull", "--plain-http", registry.ref("library/nothing:here"))
    )
    assert message.startswith(registry.ref("library/nothing"))
    assert "not found" in message
    assert "invalid" in failed(liner(a, "images", "pull", "UPPER/Case"))
    assert ok(liner(a, "images", "ls", "-q")) == ""
    assert ok(liner(a, "content", "ls", "-q")) == ""


def test_daemon_not_running(tmp_path: Path) -> None:
    address = str(tmp_path / "nothing.sock")
    for args in (
        ["images", "pull", "--plain-http", "example.com/a:b"],
        ["images", "ls"],
        ["images", "inspect", "a"],
        ["images", "tag", "a", "b"],
        ["images", "rm", "a"],
        ["snapshots", "ls"],
        ["snapshots", "tree"],
        ["snapshots", "usage"],
        ["snapshots", "rm", "k"],
    ):
        result = liner(address, *args)
        assert failed(result) == f"cannot connect to linerd at {address}: is it running?", args


# -- pieces without a daemon ------------------------------------------------------------------


def test_snapshot_tree_format() -> None:
    pairs = [("c", "b"), ("b", "a"), ("a", ""), ("d", "a"), ("x", "gone")]
    assert snapshot_tree(pairs) == "a\n  \\_ b\n    \\_ c\n  \\_ d\nx\n"
    assert snapshot_tree([]) == ""


def test_plain_display_one_line_per_change() -> None:
    lines: list[str] = []
    clock = iter([0.0, 1.0, 2.0, 3.0])
    display = PlainDisplay(lines.append, clock=lambda: next(clock))
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 2000)

    def update(offset: int, state: str) -> None:
        display.update(PullProgress([BlobProgress(layer, offset, state)]))

    update(0, "waiting")
    update(0, "downloading")
    update(1000, "downloading")
    update(2000, "downloaded")
    ref = "layer-sha256:" + "a" * 64
    assert lines == [
        f"{ref}: waiting 0B/2kB",
        f"{ref}: downloading 0B/2kB",
        f"{ref}: downloaded 2kB/2kB 1kB/s",
    ]
