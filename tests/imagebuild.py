"""Build OCI images without Docker, from Debian's static busybox, into an OCI image layout.

Everything is deterministic (fixed mtimes, gzip mtime 0) so digests are stable within a run.

Pieces, smallest first::

    layer = build_layer([dir_("etc"), file("etc/motd", b"hi\\n"), symlink("bin/sh", "busybox")])
    config = build_config([layer.diff_id], cmd=["/bin/sh"])
    manifest = build_manifest(config, [layer])            # media="oci" | "docker"
    index = build_index([(manifest, {"architecture": "amd64", "os": "linux"})])
    layout = OCILayout(path); layout.add(...); layout.tag(manifest, "latest")

Ready-made: `busybox_image()` (3 layers: busybox; files incl. a hard link and a symlink;
a whiteout and an opaque dir), `busybox_index()` (amd64 + arm64/v8). See `BUSYBOX_*` for the
layer contents and `BUSYBOX_EXPECTED` for the merged filesystem tests can assert on.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BUSYBOX = Path("/bin/busybox")
MTIME = 1_700_000_000  # fixed, so layers are reproducible
CREATED = "2023-11-14T22:13:20Z"

Compression = Literal["gzip", "zstd", "none"]
Media = Literal["oci", "docker"]

# Media types (OCI image-spec and Docker image manifest v2 schema 2).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- tar entries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One tar member. ``path`` is relative (``bin/sh``); ``target`` is a link's target."""

    path: str
    kind: Literal["file", "dir", "symlink", "hardlink"]
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""


def file(path: str, content: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    data = content.encode() if isinstance(content, str) else content
    return Entry(path.lstrip("/"), "file", data, mode, uid, gid)


def dir_(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path.lstrip("/").rstrip("/"), "dir", mode=mode, uid=uid, gid=gid)


def symlink(path: str, target: str) -> Entry:
    return Entry(path.lstrip("/"), "symlink", mode=0o777, target=target)


def hardlink(path: str, target: str) -> Entry:
    """A hard link to ``target``, a path (relative to the layer root) earlier in the same tar."""
    return Entry(path.lstrip("/"), "hardlink", target=target.lstrip("/"))


def whiteout(path: str) -> Entry:
    """Delete ``path`` of lower layers: an empty file ``<dir>/.wh.<name>``."""
    parent, _, name = path.lstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")


def opaque(path: str) -> Entry:
    """Hide everything lower layers put in directory ``path``: ``<dir>/.wh..wh..opq``."""
    return file(f"{path.strip('/')}/.wh..wh..opq", b"")


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed tar (PAX) of the entries, in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mtime = MTIME
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = ""
            if e.kind == "file":
                info.size = len(e.content)
                tar.addfile(info, io.BytesIO(e.content))
                continue
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            else:
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    try:
        import zstandard
    except ImportError:  # the zstd CLI (Debian package zstd) does the same job
        return subprocess.run(
            ["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True
        ).stdout
    return zstandard.ZstdCompressor(level=3).compress(data)


# -- blobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Bytes plus the media type they go by; ``descriptor()`` is the OCI descriptor dict."""

    media_type: str
    data: bytes = field(repr=False)
    annotations: dict[str, str] | None = None
    platform: dict[str, str] | None = None

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform
        if self.annotations:
            d["annotations"] = self.annotations
        return d

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar
    entries: tuple[Entry, ...] = ()

    @property
    def digest(self) -> str:
        return self.blob.digest


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode()


def layer_media_type(compression: Compression, media: Media = "oci") -> str:
    if media == "docker":
        if compression == "zstd":
            # Docker schema2 has no zstd layer type; containerd uses OCI's type in that case.
            return OCI_LAYER + "+zstd"
        return DOCKER_LAYER + (".gzip" if compression == "gzip" else "")
    return OCI_LAYER + ("" if compression == "none" else f"+{compression}")


def build_layer(
    entries: Sequence[Entry], compression: Compression = "gzip", media: Media = "oci"
) -> Layer:
    tar = layer_tar(entries)
    blob = Blob(layer_media_type(compression, media), compress(tar, compression))
    return Layer(blob, sha256(tar), tuple(entries))


def build_config(
    diff_ids: Sequence[str],
    *,
    architecture: str = "amd64",
    os: str = "linux",
    variant: str | None = None,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    env: list[str] | None = None,
    working_dir: str = "",
    user: str = "",
    labels: dict[str, str] | None = None,
    media: Media = "oci",
) -> Blob:
    """An image config (same JSON for OCI and Docker; only the media type differs)."""
    config: dict[str, Any] = {
        "Env": env if env is not None else ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    }
    if cmd is not None:
        config["Cmd"] = cmd
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    if working_dir:
        config["WorkingDir"] = working_dir
    if user:
        config["User"] = user
    if labels:
        config["Labels"] = labels
    doc: dict[str, Any] = {
        "created": CREATED,
        "architecture": architecture,
        "os": os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": CREATED, "created_by": "liner imagebuild"} for _ in diff_ids],
    }
    if variant:
        doc["variant"] = variant
    return Blob(DOCKER_CONFIG if media == "docker" else OCI_CONFIG, _canonical(doc))


def build_manifest(
    config: Blob,
    layers: Sequence[Layer],
    *,
    media: Media = "oci",
    annotations: dict[str, str] | None = None,
) -> Blob:
    media_type = DOCKER_MANIFEST if media == "docker" else OCI_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    if annotations:
        doc["annotations"] = annotations
    return Blob(media_type, _canonical(doc))


def build_index(manifests: Sequence[tuple[Blob, dict[str, str]]], *, media: Media = "oci") -> Blob:
    """An OCI index or Docker manifest list of (manifest blob, platform) pairs."""
    media_type = DOCKER_LIST if media == "docker" else OCI_INDEX
    entries = []
    for blob, platform in manifests:
        d = blob.descriptor()
        d["platform"] = platform
        entries.append(d)
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return Blob(media_type, _canonical(doc))


# -- OCI image layout ----------------------------------------------------------------------


class OCILayout:
    """An OCI image layout directory; `tag` adds a ref to index.json (ref.name annotation)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        index = self.path / "index.json"
        if not index.exists():
            index.write_text(json.dumps({"schemaVersion": 2, "manifests": []}))

    def add(self, *blobs: Blob | Layer) -> None:
        for b in blobs:
            blob = b.blob if isinstance(b, Layer) else b
            target = self.path / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
            if not target.exists():
                target.write_bytes(blob.data)

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def tag(self, blob: Blob, name: str) -> None:
        """Point ref ``name`` at a manifest or index blob (replacing an older one of that name)."""
        self.add(blob)
        index_path = self.path / "index.json"
        index = json.loads(index_path.read_text())
        manifests = [
            m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != name
        ]
        d = blob.descriptor()
        d.pop("platform", None)
        d["annotations"] = {REF_NAME: name}
        manifests.append(d)
        index["manifests"] = manifests
        index_path.write_text(json.dumps(index, indent=2))


# -- ready-made busybox --------------------------------------------------------------------

APPLETS = [
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "mkdir",
    "rm",
    "touch",
    "test",
    "stat",
    "readlink",
    "wc",
    "grep",
    "ps",
    "kill",
    "hostname",
    "pwd",
]


def busybox_layer_entries(busybox: Path = BUSYBOX) -> list[Entry]:
    """Layer 1: a minimal root with /bin/busybox and applet symlinks."""
    entries = [dir_(d) for d in ("bin", "etc", "dev", "proc", "sys", "root", "var", "data")]
    entries += [dir_("tmp", 0o1777)]
    entries.append(file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [symlink(f"bin/{a}", "busybox") for a in APPLETS]
    entries.append(file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))  # fmt: skip
    entries.append(file("etc/group", "root:x:0:\nnogroup:x:65534:\n"))
    return entries


BUSYBOX_LAYER2 = [
    file("etc/liner-release", "liner test image\n"),
    dir_("data/sub"),
    file("data/a.txt", "alpha\n"),
    file("data/sub/b.txt", "beta\n"),
    hardlink("data/hard", "data/a.txt"),
    symlink("data/link", "a.txt"),
    file("data/owned", "mine\n", mode=0o600, uid=1000, gid=1000),
    file("data/remove-me", "gone in layer 3\n"),
    dir_("data/opaque"),
    file("data/opaque/old1", "hidden by layer 3\n"),
    file("data/opaque/old2", "hidden by layer 3\n"),
    file("bin/hello", "#!/bin/sh\necho hello from liner\n", mode=0o755),
]

BUSYBOX_LAYER3 = [
    whiteout("data/remove-me"),
    dir_("data/opaque"),
    opaque("data/opaque"),
    file("data/opaque/new", "fresh\n"),
]

# The merged view after all three layers, for tests that unpack: path -> content / link target.
BUSYBOX_EXPECTED: dict[str, Any] = {
    "present": {
        "data/a.txt": b"alpha\n",
        "data/sub/b.txt": b"beta\n",
        "data/hard": b"alpha\n",  # same inode as data/a.txt
        "data/owned": b"mine\n",
        "data/opaque/new": b"fresh\n",
        "etc/liner-release": b"liner test image\n",
    },
    "symlinks": {"data/link": "a.txt", "bin/sh": "busybox"},
    "absent": ["data/remove-me", "data/opaque/old1", "data/opaque/old2"],
    "hardlinks": [("data/hard", "data/a.txt")],
}


@dataclass
class BuiltImage:
    """What `busybox_image` made; ``manifest`` is what a tag resolves to."""

    manifest: Blob
    config: Blob
    layers: list[Layer]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *(layer.blob for layer in self.layers)]


@dataclass
class BuiltIndex:
    index: Blob
    images: list[BuiltImage]

    @property
    def digest(self) -> str:
        return self.index.digest


def _image(
    layers_entries: list[list[Entry]],
    *,
    compression: Compression,
    media: Media,
    architecture: str = "amd64",
    variant: str | None = None,
) -> BuiltImage:
    layers = [build_layer(e, compression, media) for e in layers_entries]
    config = build_config(
        [layer.diff_id for layer in layers],
        architecture=architecture,
        variant=variant,
        cmd=["/bin/sh"],
        working_dir="/",
        labels={"org.liner.test": "busybox"},
        media=media,
    )
    platform = {"architecture": architecture, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return BuiltImage(build_manifest(config, layers, media=media), config, layers, platform)


def busybox_image(
    layout_dir: Path | str,
    compression: Compression = "gzip",
    media: Media = "oci",
    extra_layers: bool = True,
    *,
    tag: str = "latest",
) -> BuiltImage:
    """Write a busybox image (1 or 3 layers) into the layout at ``layout_dir`` as ``tag``."""
    layers = [busybox_layer_entries()]
    if extra_layers:
        layers += [BUSYBOX_LAYER2, BUSYBOX_LAYER3]
    image = _image(layers, compression=compression, media=media)
    layout = OCILayout(layout_dir)
    layout.add(*image.blobs)
    layout.tag(image.manifest, tag)
    return image


def busybox_index(
    layout_dir: Path | str,
    compression: Compression = "gzip",
    media: Media = "oci",
    *,
    tag: str = "multi",
) -> BuiltIndex:
    """A two-platform index (linux/amd64, linux/arm64/v8) as ``tag``.

    Both carry the x86-64 busybox (tests only fetch the arm64 one, never run it); the arm64
    image has an extra layer so its layers differ from the amd64 image's.
    """
    base = busybox_layer_entries()
    amd64 = _image([base, BUSYBOX_LAYER2], compression=compression, media=media)
    arm64 = _image(
        [base, [file("etc/arch", "arm64\n")]],
        compression=compression,
        media=media,
        architecture="arm64",
        variant="v8",
    )
    index = build_index([(i.manifest, i.platform) for i in (amd64, arm64)], media=media)
    layout = OCILayout(layout_dir)
    for image in (amd64, arm64):
        layout.add(*image.blobs, image.manifest)
    layout.tag(index, tag)
    return BuiltIndex(index, [amd64, arm64])


def copy_layout(src: Path | str, dst: Path | str) -> Path:
    """A private copy of a layout (tests that mutate one must not touch the session's)."""
    shutil.copytree(src, dst)
    return Path(dst)


@dataclass
class BusyboxLayout:
    """The session's OCI layout: ``path`` plus what each tag in it is."""

    path: Path
    latest: BuiltImage  # OCI, gzip, 3 layers
    zstd: BuiltImage  # OCI, zstd, 3 layers
    uncompressed: BuiltImage  # OCI, plain tar, 3 layers
    multi: BuiltIndex  # OCI index: linux/amd64 + linux/arm64/v8

    TAGS = ("latest", "zstd", "uncompressed", "multi")


def build_busybox_layout(path: Path | str) -> BusyboxLayout:
    """All the ready-made busybox variants in one layout (tags as in `BusyboxLayout.TAGS`)."""
    return BusyboxLayout(
        Path(path),
        latest=busybox_image(path, "gzip", tag="latest"),
        zstd=busybox_image(path, "zstd", tag="zstd"),
        uncompressed=busybox_image(path, "none", tag="uncompressed"),
        multi=busybox_index(path, tag="multi"),
    )
