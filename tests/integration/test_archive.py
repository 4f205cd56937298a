"""Image archives: `liner images export|import` (Transfer/Export, Transfer/Import) with the tools
users already have: skopeo's oci-archive and docker-archive, umoci, and the real ctr.

Every import is checked for what it leaves: the image, its content with GC labels, its
snapshots (a View of the top chain mounts and holds /bin/busybox) and, with root and runc, that
`ctr run --rm` of it prints. Bad archives must fail with a clear error and leave content,
images and snapshots as they were after a synchronous garbage collection.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from imagebuild import BusyboxLayout
from registry import SKOPEO, Registry
from support import Linerd, mounted, ns

from liner.cli import cli
from liner.client import Client, LinerClientError
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from linerd.imagespec import chain_ids, host_platform

pytestmark = pytest.mark.integration

BUSYBOX = "library/busybox"
SNAPSHOTTER = "overlayfs"
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"
CAN_RUN = (
    os.geteuid() == 0
    and shutil.which("ctr") is not None
    and shutil.which("runc") is not None
    and shutil.which("conmon") is not None
)


# -- helpers ---------------------------------------------------------------------------------


def liner(daemon: Linerd, namespace: str, *args: str) -> Result:
    env: dict[str, str | None] = {"LINER_ADDRESS": None, "LINER_NAMESPACE": None}
    return CliRunner().invoke(
        cli, ["-a", daemon.address, "-n", namespace, *args], env=env, catch_exceptions=False
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def failed(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("liner: ")
    return line.removeprefix("liner: ")


def pull(daemon: Linerd, ref: str, namespace: str, **fields: object) -> str:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        request = transfer_pb2.PullRequest(reference=ref, plain_http=True, **fields)
        return list(stub.Pull(request, metadata=ns(namespace)))[-1].target.digest


def import_raw(daemon: Linerd, namespace: str, data: bytes, **options: object) -> grpc.RpcError:
    """Transfer/Import of `data` that must fail; returns the error."""

    def requests() -> Iterator[transfer_pb2.ImportChunk]:
        yield transfer_pb2.ImportChunk(options=transfer_pb2.ImportOptions(**options))
        for i in range(0, len(data), 100_000):
            yield transfer_pb2.ImportChunk(data=data[i : i + 100_000])

    with daemon.channel() as channel, pytest.raises(grpc.RpcError) as info:
        transfer_pb2_grpc.TransferStub(channel).Import(requests(), metadata=ns(namespace))
    return info.value


def skopeo(*args: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [SKOPEO, "--insecure-policy", *args],
        capture_output=True,
        env=dict(os.environ, HOME=str(home)),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def ctr(daemon: Linerd, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ctr", "--address", daemon.address, "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")},
    )
    assert result.returncode == 0, f"ctr {' '.join(args)}: {result.stderr}\n{daemon.log()[-3000:]}"
    return result


def state(daemon: Linerd, namespace: str) -> tuple[set[str], set[str], set[str], list[str]]:
    """Content digests, images, snapshots and ingests of a namespace after a synchronous GC."""
    with Client(daemon.address, namespace) as client:
        lease = client.create_lease()
        client.delete_lease(lease.id, sync=True)
        return (
            {c.digest for c in client.content()},
            {f"{i.name}={i.target.digest}" for i in client.images()},
            {s.name for s in client.snapshots(SNAPSHOTTER)},
            [s.ref for s in client.ingests()],
        )


def check_unpacked(daemon: Linerd, namespace: str, diff_ids: list[str], tmp: Path) -> None:
    """The top chain is there; a View of it mounts and holds /bin/busybox."""
    top = chain_ids(diff_ids)[-1]
    with Client(daemon.address, namespace) as client:
        lease = client.create_lease()
        try:
            with client.leased(lease.id):
                mounts = client.view_snapshot(SNAPSHOTTER, f"check-{tmp.name}", top)
            with mounted(mounts, tmp / "root") as root:
                assert (root / "bin" / "busybox").is_file()
                assert (root / "bin" / "sh").is_symlink()
        finally:
            client.delete_lease(lease.id, sync=True)


def run_prints(daemon: Linerd, namespace: str, image: str, cid: str) -> None:
    if not CAN_RUN:
        return
    out = ctr(daemon, namespace, "run", "--rm", image, cid, "echo", "hello-" + cid).stdout
    assert out.strip() == "hello-" + cid


def diff_ids(config_bytes: bytes) -> list[str]:
    return json.loads(config_bytes)["rootfs"]["diff_ids"]


def tar_bytes(entries: list[tuple[str, bytes | tarfile.TarInfo]]) -> bytes:
    """A tar of (name, data) files, or prepared TarInfo entries (links, devices)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, value in entries:
            if isinstance(value, tarfile.TarInfo):
                tar.addfile(value)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return out.getvalue()


def layout_entries(image_dir: Path) -> list[tuple[str, bytes | tarfile.TarInfo]]:
    """An OCI layout directory as tar entries (files only)."""
    out: list[tuple[str, bytes | tarfile.TarInfo]] = []
    for path in sorted(image_dir.rglob("*")):
        if path.is_file():
            out.append((path.relative_to(image_dir).as_posix(), path.read_bytes()))
    return out


@pytest.fixture
def daemon(linerd: Linerd) -> Linerd:
    return linerd


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("skopeo-home")


@pytest.fixture(scope="module")
def oci_archive(registry: Registry, home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oci-archive") / "busybox-oci.tar"
    source = f"docker://{registry.host}/{BUSYBOX}:latest"
    skopeo("copy", "--quiet", "--src-tls-verify=false", "--preserve-digests", source,
           f"oci-archive:{out}:t", home=home)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def oci_layout_dir(oci_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oci-layout")
    with tarfile.open(oci_archive) as tar:
        tar.extractall(out, filter="data")
    return out


# -- export ----------------------------------------------------------------------------------


def test_export_layout_is_deterministic_and_annotated(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    ref = registry.ref(f"{BUSYBOX}:latest")
    digest = pull(daemon, ref, "exp")
    ok(liner(daemon, "exp", "images", "export", str(tmp_path / "a.tar"), ref))
    ok(liner(daemon, "exp", "images", "export", str(tmp_path / "b.tar"), ref))
    data = (tmp_path / "a.tar").read_bytes()
    assert data == (tmp_path / "b.tar").read_bytes()
    image = busybox_layout.latest
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and not m.uname for m in members)
        blobs = {n.removeprefix("blobs/sha256/") for n in names if n.startswith("blobs/sha256/")}
        blobs.discard("")
        assert {f"sha256:{b}" for b in blobs} == {b.digest for b in image.blobs} | {digest}
        for name in names:
            if name.startswith("blobs/sha256/") and tar.getmember(name).isfile():
                body = tar.extractfile(name).read()  # type: ignore[union-attr]
                assert hashlib.sha256(body).hexdigest() == name.rsplit("/", 1)[1]
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["digest"] == digest
        assert entry["annotations"] == {IMAGE_NAME: ref, REF_NAME: "latest"}
        (docker,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert docker["RepoTags"] == [ref]
        assert docker["Config"] == f"blobs/sha256/{image.config.digest.split(':')[1]}"


def test_export_of_an_index_keeps_it_whole_but_only_the_chosen_platform(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    ref = registry.ref(f"{BUSYBOX}:multi")
    index = busybox_layout.multi
    pull(daemon, ref, "multi", all_platforms=True)
    out = tmp_path / "arm.tar"
    ok(liner(daemon, "multi", "images", "export", "--platform", "linux/arm64", str(out), ref))
    arm = next(i for i in index.images if i.platform["architecture"] == "arm64")
    with tarfile.open(out) as tar:
        names = {n.rsplit("/", 1)[1] for n in tar.getnames() if n.count("/") == 2}
        names.discard("")
    expected = {b.digest for b in arm.blobs} | {arm.manifest.digest, index.digest}
    assert {f"sha256:{n}" for n in names} == expected

    # all platforms: every manifest; an unknown platform: a clear error
    everything = str(tmp_path / "all.tar")
    ok(liner(daemon, "multi", "images", "export", "--all-platforms", everything, ref))
    with tarfile.open(tmp_path / "all.tar") as tar:
        names = {n.rsplit("/", 1)[1] for n in tar.getnames() if n.count("/") == 2}
        names.discard("")
    expected = {index.digest} | {
        d for i in index.images for d in [i.manifest.digest, *(b.digest for b in i.blobs)]
    }
    assert {f"sha256:{n}" for n in names} == expected
    message = failed(
        liner(daemon, "multi", "images", "export", "--platform", "linux/s390x", str(out), ref)
    )
    assert "no manifest for platform linux/s390x" in message
    assert "not found" in failed(liner(daemon, "multi", "images", "export", str(out), "nosuch"))

    # and it imports (the arm64 content only: nothing to unpack on this machine)
    if host_platform().architecture != "arm64":
        got = ok(liner(daemon, "multi-in", "images", "import", str(out)))
        assert got.split() == [ref, index.digest]


def test_export_read_by_skopeo_and_umoci(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path, home: Path
) -> None:
    ref = registry.ref(f"{BUSYBOX}:latest")
    digest = pull(daemon, ref, "tools")
    out = tmp_path / "busybox.tar"
    ok(liner(daemon, "tools", "images", "export", str(out), ref))
    raw = skopeo("inspect", "--raw", f"oci-archive:{out}:latest", home=home).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    skopeo("copy", "--quiet", "--preserve-digests", f"oci-archive:{out}:latest",
           f"dir:{tmp_path / 'dir'}", home=home)  # fmt: skip
    copied = {p.name for p in (tmp_path / "dir").iterdir()}
    for blob in busybox_layout.latest.blobs:
        assert blob.digest.split(":")[1] in copied
    # umoci wants the layout extracted
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    assert (bundle / "rootfs" / "etc" / "liner-release").read_text() == "liner test image\n"


# -- import ----------------------------------------------------------------------------------


def test_export_then_import_round_trip(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    ref = registry.ref(f"{BUSYBOX}:latest")
    digest = pull(daemon, ref, "rt-out")
    out = tmp_path / "busybox.tar"
    ok(liner(daemon, "rt-out", "images", "export", str(out), ref))
    assert ok(liner(daemon, "rt-in", "images", "import", str(out))).split() == [ref, digest]
    image = busybox_layout.latest
    with Client(daemon.address, "rt-in") as client:
        assert [(i.name, i.target.digest) for i in client.images()] == [(ref, digest)]
        labels = client.info(digest).labels
        assert labels["containerd.io/gc.ref.content.config"] == image.config.digest
        assert labels["containerd.io/gc.ref.content.l.0"] == image.layers[0].blob.digest
        config = client.read_blob(image.config.digest)
        top = chain_ids(diff_ids(config))[-1]
        assert (
            client.info(image.config.digest).labels[f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"]
            == top
        )
        assert not client.leases()
    check_unpacked(daemon, "rt-in", diff_ids(config), tmp_path / "view")
    # importing again is fine: the image stays, nothing new remains
    before = state(daemon, "rt-in")
    assert ok(liner(daemon, "rt-in", "images", "import", str(out))).split() == [ref, digest]
    assert state(daemon, "rt-in") == before
    # from stdin, with --skip-unpack, into a fresh namespace
    result = CliRunner().invoke(
        cli,
        ["-a", daemon.address, "-n", "rt-stdin", "images", "import", "--skip-unpack", "-"],
        input=out.read_bytes(),
        catch_exceptions=False,
    )
    assert ok(result).split() == [ref, digest]
    assert state(daemon, "rt-stdin")[2] == set()


def test_import_skopeo_oci_archive(
    daemon: Linerd, busybox_layout: BusyboxLayout, oci_archive: Path, tmp_path: Path
) -> None:
    image = busybox_layout.latest
    got = ok(liner(daemon, "sk-oci", "images", "import", str(oci_archive)))
    name = f"import-{datetime.now(UTC):%Y-%m-%d}:t"
    assert got.split() == [name, image.manifest.digest]
    got = ok(liner(daemon, "sk-oci", "images", "import", "--base-name",
                   "example.com/team/busybox", str(oci_archive)))  # fmt: skip
    assert got.split() == ["example.com/team/busybox:t", image.manifest.digest]
    with Client(daemon.address, "sk-oci") as client:
        assert {c.digest for c in client.content()} == {b.digest for b in image.blobs} | {
            image.manifest.digest
        }
        config = client.read_blob(image.config.digest)
    check_unpacked(daemon, "sk-oci", diff_ids(config), tmp_path / "view")
    run_prints(daemon, "sk-oci", "example.com/team/busybox:t", "sk-oci")


def test_import_skopeo_docker_archive(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path, home: Path
) -> None:
    image = busybox_layout.latest
    out = tmp_path / "busybox-docker.tar"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{registry.host}/{BUSYBOX}:latest",
           f"docker-archive:{out}:busybox:latest", home=home)  # fmt: skip
    got = ok(liner(daemon, "sk-docker", "images", "import", str(out)))
    name, digest = got.split()
    assert name == "docker.io/library/busybox:latest"
    with Client(daemon.address, "sk-docker") as client:
        (record,) = client.images()
        assert record.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
        manifest = json.loads(client.read_blob(digest))
        assert manifest["config"]["digest"] == image.config.digest
        assert manifest["config"]["mediaType"] == ("application/vnd.docker.container.image.v1+json")
        assert len(manifest["layers"]) == len(image.layers)
        config = client.read_blob(image.config.digest)
    check_unpacked(daemon, "sk-docker", diff_ids(config), tmp_path / "view")
    run_prints(daemon, "sk-docker", name, "sk-docker")


@pytest.mark.compat
@pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is not installed")
def test_ctr_imports_liner_export_and_liner_imports_ctr_export(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    ref = registry.ref(f"{BUSYBOX}:latest")
    digest = pull(daemon, ref, "ctr-src")
    ours = tmp_path / "liner.tar"
    ok(liner(daemon, "ctr-src", "images", "export", str(ours), ref))
    ctr(daemon, "ctr-in", "images", "import", str(ours))
    listed = ctr(daemon, "ctr-in", "images", "ls").stdout.splitlines()[1:]
    assert [(r.split()[0], r.split()[2]) for r in listed] == [(ref, digest)]

    theirs = tmp_path / "ctr.tar"
    ctr(daemon, "ctr-src", "images", "export", str(theirs), ref)
    got = ok(liner(daemon, "liner-in", "images", "import", str(theirs)))
    assert got.split() == [ref, digest]
    with Client(daemon.address, "liner-in") as client:
        config = client.read_blob(busybox_layout.latest.config.digest)
    check_unpacked(daemon, "liner-in", diff_ids(config), tmp_path / "view")


# -- bad input -------------------------------------------------------------------------------


def test_bad_archives_leave_nothing(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, oci_layout_dir: Path
) -> None:
    namespace = "bad"
    # something there already, which must stay as it is
    pull(daemon, registry.ref(f"{BUSYBOX}:zstd"), namespace)
    before = state(daemon, namespace)
    good = layout_entries(oci_layout_dir)
    layer = busybox_layout.latest.layers[-1].blob.digest.split(":")[1]
    manifest = busybox_layout.latest.manifest.digest.split(":")[1]

    def corrupt(entries: list, name: str) -> list:  # type: ignore[type-arg]
        return [(n, (b"x" + d[1:]) if n == name else d) for n, d in entries]

    def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    device = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
    device.type = tarfile.CHRTYPE
    cases: list[tuple[str, bytes, grpc.StatusCode, str]] = [
        ("wrong digest", tar_bytes(corrupt(good, f"blobs/sha256/{layer}")),
         grpc.StatusCode.DATA_LOSS, f"sha256:{layer}"),
        ("dotdot", tar_bytes([*good, ("../x", b"evil")]),
         grpc.StatusCode.INVALID_ARGUMENT, "leaves the layout"),
        ("dotdot inside", tar_bytes([("blobs/../../x", b"evil"), *good]),
         grpc.StatusCode.INVALID_ARGUMENT, "leaves the layout"),
        ("absolute", tar_bytes([*good, ("/etc/x", b"evil")]),
         grpc.StatusCode.INVALID_ARGUMENT, "absolute path"),
        ("symlink", tar_bytes([*good, ("x", link("x", "/etc/passwd", tarfile.SYMTYPE))]),
         grpc.StatusCode.INVALID_ARGUMENT, "points outside the layout"),
        ("symlink up", tar_bytes([*good, ("d/x", link("d/x", "../../x", tarfile.SYMTYPE))]),
         grpc.StatusCode.INVALID_ARGUMENT, "points outside the layout"),
        ("hardlink", tar_bytes([*good, ("y", link("y", "index.json", tarfile.LNKTYPE))]),
         grpc.StatusCode.INVALID_ARGUMENT, "not a file of the archive"),
        ("blob link", tar_bytes([*good, ("blobs/sha256/" + "1" * 64,
                                         link("blobs/sha256/" + "1" * 64, "index.json",
                                              tarfile.SYMTYPE))]),
         grpc.StatusCode.INVALID_ARGUMENT, "not allowed among the blobs"),
        ("device", tar_bytes([*good, ("dev", device)]),
         grpc.StatusCode.INVALID_ARGUMENT, "special file"),
        ("missing layer", tar_bytes([e for e in good if e[0] != f"blobs/sha256/{layer}"]),
         grpc.StatusCode.NOT_FOUND, f"layer sha256:{layer} is missing"),
        ("missing manifest", tar_bytes([e for e in good if e[0] != f"blobs/sha256/{manifest}"]),
         grpc.StatusCode.NOT_FOUND, "is missing from the archive"),
        ("bad index.json", tar_bytes([(n, b"{nope" if n == "index.json" else d) for n, d in good]),
         grpc.StatusCode.INVALID_ARGUMENT, "index.json is not valid JSON"),
        ("no layout", tar_bytes([("hello.txt", b"hi")]),
         grpc.StatusCode.INVALID_ARGUMENT, "not an image archive"),
        ("garbage", os.urandom(5000), grpc.StatusCode.INVALID_ARGUMENT, "tar"),
        ("truncated", tar_bytes(good)[:30_000], grpc.StatusCode.INVALID_ARGUMENT, "tar"),
        ("empty", b"", grpc.StatusCode.INVALID_ARGUMENT, ""),
    ]  # fmt: skip
    for what, data, code, text in cases:
        error = import_raw(daemon, namespace, data)
        assert error.code() == code, (what, error.code(), error.details())
        assert text in error.details(), (what, error.details())
        assert state(daemon, namespace) == before, what
    # the CLI says it in one line
    message = failed(liner(daemon, namespace, "images", "import", "/nonexistent.tar"))
    assert "No such file" in message
    with Client(daemon.address, namespace) as client:
        with pytest.raises(LinerClientError) as info:
            client.import_archive([b"\0" * 10 + b"garbage" * 100])
        assert info.value.code_name == "INVALID_ARGUMENT"
        assert not client.leases()


def test_layout_directories(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout, tmp_path: Path, home: Path
) -> None:
    """Export into a directory (umoci and skopeo read it) and import from one (skopeo's)."""
    ref = registry.ref(f"{BUSYBOX}:latest")
    digest = pull(daemon, ref, "dir-out")
    layout = tmp_path / "layout"
    ok(liner(daemon, "dir-out", "images", "export", "--dir", str(layout), ref))
    assert (layout / "oci-layout").is_file() and (layout / "index.json").is_file()
    raw = skopeo("inspect", "--raw", f"oci:{layout}:latest", home=home).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "already exists" in failed(
        liner(daemon, "dir-out", "images", "export", "--dir", str(layout), ref)
    )
    # skopeo writes a layout directory; liner imports it as is
    copied = tmp_path / "copied"
    skopeo("copy", "--quiet", "--preserve-digests", f"oci:{layout}:latest",
           f"oci:{copied}:t", home=home)  # fmt: skip
    got = ok(liner(daemon, "dir-in", "images", "import", "--base-name", "local/busybox",
                   str(copied)))  # fmt: skip
    assert got.split() == ["local/busybox:t", busybox_layout.latest.manifest.digest]
    with Client(daemon.address, "dir-in") as client:
        config = client.read_blob(busybox_layout.latest.config.digest)
    check_unpacked(daemon, "dir-in", diff_ids(config), tmp_path / "view")
