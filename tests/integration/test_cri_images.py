"""The CRI's ImageService over the socket (and crictl), against linerd and, as the reference
(`make test-reference`), Debian's containerd 1.6 with its CRI plugin.

What critest checks of images (../shared/reference/cri.md §2) is here with images built by
the tests and served by the session's registries on 127.0.0.1. Differences from containerd,
each where it shows:
- ListImages: containerd ignores the request's filter (all images come back); liner applies
  it (the image it names, or every image of a repository named without a tag).
- AuthConfig.registry_token: containerd ignores it (the pull is anonymous); liner sends it as
  a bearer token.
- A pull refused for want of credentials: containerd answers UNKNOWN, liner UNAUTHENTICATED.
- ImageFsInfo: containerd lists its snapshotter only, refreshing usage every 10 s; liner
  lists the snapshotter and then the content store, measured when asked.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cri_support import (
    CONTAINERD,
    MIRRORED_HOST,
    CriDaemon,
    PushedImage,
    needs_crictl,
    push_busybox_image,
)
from imagebuild import BusyboxLayout
from registry import Registry

from liner_api.runtime.v1 import api_pb2

pytestmark = pytest.mark.integration

USERS = {
    # tag: (config User, expected uid, expected username), as critest's user images.
    "uid": ("1002", 1002, ""),
    "username": ("www-data", None, "www-data"),
    "uid-group": ("1003:1003", 1003, ""),
    "username-group": ("www-data:www-data", None, "www-data"),
}


class Pushed:
    """The module's images in the session's open registry, one repository per purpose."""

    def __init__(self, reg: Registry, workdir: Path) -> None:
        def push(name: str, tags: tuple[str, ...] = ("v1",), **kw: str) -> PushedImage:
            return push_busybox_image(reg, workdir, f"cri-images/{name}", tags, **kw)  # type: ignore[arg-type]

        self.plain = push("plain")
        self.untagged = push("untagged", ("latest",))
        self.by_digest = push("by-digest")
        self.three = push("three", ("one", "two", "three"))
        self.kept = push("kept", ("one", "two"))
        self.remove = push("remove")
        self.remove_by_tag = push("remove-by-tag")
        self.ctr = push("ctr")
        self.filtered = push("filtered", ("a", "b"))
        self.crictl = push("crictl")
        self.mirrored = push("mirrored")
        self.users = {tag: push(f"user-{tag}", (tag,), user=u) for tag, (u, _, _) in USERS.items()}


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return Pushed(registry, tmp_path_factory.mktemp("cri-images"))


def _pull(cri: CriDaemon, ref: str, auth: api_pb2.AuthConfig | None = None) -> str:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref), auth=auth)
    return cri.images.PullImage(request, timeout=180).image_ref


def _status(cri: CriDaemon, name: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name), verbose=verbose)
    return cri.images.ImageStatus(request, timeout=60)


def _image(cri: CriDaemon, name: str) -> api_pb2.Image | None:
    response = _status(cri, name)
    return response.image if response.HasField("image") else None


def _remove(cri: CriDaemon, name: str) -> None:
    request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name))
    cri.images.RemoveImage(request, timeout=120)


def _list(cri: CriDaemon, name: str = "") -> list[api_pb2.Image]:
    request = api_pb2.ListImagesRequest()
    if name:
        request.filter.image.image = name
    return list(cri.images.ListImages(request, timeout=60).images)


def _ctr_names(cri: CriDaemon) -> set[str]:
    return set(cri.ctr("images", "ls", "-q").stdout.split())


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_pull_by_tag_records_the_tag_the_digest_and_the_id(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.plain
    image_ref = _pull(cri, image.ref())
    assert image_ref == image.id  # PullImage's image_ref is the image id: the config digest
    status = _image(cri, image.ref())
    assert status is not None
    assert status.id == image.id
    assert list(status.repo_tags) == [image.ref()]
    assert list(status.repo_digests) == [image.by_digest]
    assert status.size > 0
    assert not status.HasField("uid") and status.username == ""
    # The three records containerd's CRI makes, seen through the containerd API.
    assert {image.ref(), image.by_digest, image.id} <= _ctr_names(cri)


def test_every_record_of_a_pull_is_labelled_a_cri_image(cri: CriDaemon, pushed: Pushed) -> None:
    # liner's pull makes the tag's record with the label (one transaction), then the others.
    image = pushed.plain
    _pull(cri, image.ref())
    rows = {
        line.split()[0]: line for line in cri.ctr("images", "ls").stdout.splitlines()[1:] if line
    }
    for name in (image.ref(), image.by_digest, image.id):
        assert "io.cri-containerd.image=managed" in rows[name]


def test_image_status_is_the_same_by_every_name(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.plain
    _pull(cri, image.ref())
    hexid = image.id.removeprefix("sha256:")
    names = [image.ref(), image.id, hexid, hexid[:12], image.by_digest]
    first = _image(cri, names[0])
    assert first is not None
    for name in names[1:]:
        assert _image(cri, name) == first, name


def test_untagged_reference_means_latest(cri: CriDaemon, pushed: Pushed) -> None:
    untagged = pushed.untagged.repository
    assert _pull(cri, untagged) == pushed.untagged.id
    status = _image(cri, untagged)
    assert status is not None
    assert list(status.repo_tags) == [f"{untagged}:latest"]
    assert _image(cri, f"{untagged}:latest") == status


def test_an_index_is_this_platforms_image_and_its_digest_the_indexs(
    cri: CriDaemon, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    ref = registry.ref("library/busybox:multi")
    amd64 = busybox_layout.multi.images[0]
    assert amd64.platform["architecture"] == "amd64"
    assert _pull(cri, ref) == amd64.config.digest
    status = _image(cri, ref)
    assert status is not None
    assert list(status.repo_digests) == [
        f"{registry.host}/library/busybox@{busybox_layout.multi.digest}"
    ]
    # The index, the platform's manifest, its config and its layers.
    assert status.size == sum(
        blob.size for blob in (busybox_layout.multi.index, amd64.manifest, amd64.config)
    ) + sum(layer.blob.size for layer in amd64.layers)


def test_pull_by_digest_has_no_tags(cri: CriDaemon, pushed: Pushed) -> None:
    ref = pushed.by_digest.by_digest
    assert _pull(cri, ref) == pushed.by_digest.id
    status = _image(cri, ref)
    assert status is not None
    assert list(status.repo_tags) == []
    assert list(status.repo_digests) == [ref]
    assert _image(cri, pushed.by_digest.id) == status


@pytest.mark.parametrize("tag", sorted(USERS))
def test_uid_or_username_from_the_image_config(cri: CriDaemon, pushed: Pushed, tag: str) -> None:
    _, uid, username = USERS[tag]
    _pull(cri, pushed.users[tag].ref())
    status = _image(cri, pushed.users[tag].ref())
    assert status is not None
    if uid is None:
        assert not status.HasField("uid")
    else:
        assert status.uid.value == uid
    assert status.username == username


def test_three_tags_of_one_image_are_one_image(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.three
    refs = [image.ref(tag) for tag in image.tags]
    assert {_pull(cri, ref) for ref in refs} == {image.id}
    listed = [i for i in _list(cri) if i.id == image.id]
    assert len(listed) == 1
    assert sorted(listed[0].repo_tags) == sorted(refs)
    statuses = [_image(cri, ref) for ref in refs]
    assert statuses[0] is not None and all(s == statuses[0] for s in statuses)
    assert sorted(statuses[0].repo_tags) == sorted(refs)
    assert list(statuses[0].repo_digests) == [image.by_digest]


def test_status_and_list_follow_tags_added_and_removed(cri: CriDaemon, pushed: Pushed) -> None:
    # liner answers both from bytes kept while the image records stay (cri/images.py): every
    # record written, by the CRI or through the containerd API, must show at the next call.
    image = pushed.kept
    one, two = (image.ref(tag) for tag in image.tags)

    def tags() -> list[str]:
        status = _image(cri, image.id)
        return sorted(status.repo_tags) if status is not None else []

    def listed() -> list[str]:
        return sorted(t for i in _list(cri) if i.id == image.id for t in i.repo_tags)

    _pull(cri, one)
    assert tags() == [one] and tags() == [one]  # the second from what the first kept
    assert listed() == [one] and listed() == [one]
    _pull(cri, two)
    assert tags() == sorted([one, two]) and listed() == sorted([one, two])
    # A tag removed with ctr: containerd's CRI learns of it from the event, liner at once.
    cri.ctr("images", "rm", two)
    _until(lambda: tags() == [one], "the status lacks the removed tag")
    _until(lambda: listed() == [one], "the list lacks the removed tag")
    assert _image(cri, two) is None
    _remove(cri, one)
    assert _image(cri, one) is None and _image(cri, image.id) is None
    assert listed() == []


def test_status_of_a_missing_image_is_empty_not_an_error(cri: CriDaemon) -> None:
    for name in (
        "127.0.0.1:1/cri-images/never-pulled:v1",
        "sha256:" + "0" * 64,
        "never-pulled",
    ):
        response = _status(cri, name)
        assert not response.HasField("image"), name


def test_verbose_status_has_the_chain_id_and_config(cri: CriDaemon, pushed: Pushed) -> None:
    _pull(cri, pushed.plain.ref())
    info = json.loads(_status(cri, pushed.plain.ref(), verbose=True).info["info"])
    assert info["chainID"].startswith("sha256:")
    assert info["imageSpec"]["config"]["Labels"]["org.liner.test.repository"] == (
        "cri-images/plain"
    )


def test_remove_by_id_removes_every_reference(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.remove
    _pull(cri, image.ref())
    _remove(cri, image.id)
    assert _image(cri, image.ref()) is None
    assert _image(cri, image.id) is None
    assert not {image.ref(), image.by_digest, image.id} & _ctr_names(cri)
    assert all(i.id != image.id for i in _list(cri))
    # Idempotent: again, and for something never pulled.
    _remove(cri, image.id)
    _remove(cri, "127.0.0.1:1/cri-images/never-pulled:v1")


def test_remove_by_tag_removes_the_image(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.remove_by_tag
    _pull(cri, image.ref())
    _remove(cri, image.ref())
    assert _image(cri, image.id) is None
    assert _image(cri, image.by_digest) is None


def test_an_image_pulled_through_the_containerd_api_is_a_cri_image(
    cri: CriDaemon, pushed: Pushed
) -> None:
    image = pushed.ctr
    cri.ctr("images", "pull", "--plain-http", image.ref())
    # containerd's CRI learns of it from the image event; liner reads the records.
    _until(lambda: _image(cri, image.ref()) is not None, "the CRI sees the image")
    status = _image(cri, image.ref())
    assert status is not None
    assert status.id == image.id
    assert list(status.repo_tags) == [image.ref()]
    assert list(status.repo_digests) == []  # ctr made one record: the tag
    _remove(cri, image.ref())
    assert image.ref() not in _ctr_names(cri)


def test_list_images_with_a_filter(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.filtered
    for tag in image.tags:
        _pull(cri, image.ref(tag))
    _pull(cri, pushed.plain.ref())
    everything = {i.id for i in _list(cri)}
    assert {image.id, pushed.plain.id} <= everything
    for name in (image.ref("a"), image.repository, image.id):
        listed = _list(cri, name)
        assert image.id in {i.id for i in listed}, name
        if cri.kind != CONTAINERD:  # containerd ignores the filter
            assert [i.id for i in listed] == [image.id], name
    if cri.kind != CONTAINERD:
        assert _list(cri, "127.0.0.1:1/cri-images/never-pulled") == []


def test_image_fs_info(cri: CriDaemon, pushed: Pushed) -> None:
    _pull(cri, pushed.plain.ref())

    def usage() -> api_pb2.FilesystemUsage:
        return cri.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=60).image_filesystems[0]

    # containerd measures its snapshots every 10 seconds.
    _until(lambda: usage().used_bytes.value > 0, "image fs usage is measured", timeout=60)
    fs = usage()
    assert fs.timestamp > 0
    assert Path(fs.fs_id.mountpoint).is_dir()
    assert fs.inodes_used.value > 0
    if cri.is_liner:
        response = cri.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=60)
        content = response.image_filesystems[1]
        assert content.fs_id.mountpoint.endswith("/content")
        assert content.used_bytes.value > 0
        assert response.container_filesystems[0].fs_id.mountpoint == fs.fs_id.mountpoint


def test_pulls_use_the_registry_hosts_configuration(cri: CriDaemon, pushed: Pushed) -> None:
    # MIRRORED_HOST resolves nowhere: only its configured mirror (the test registry) has it.
    ref = f"{MIRRORED_HOST}/cri-images/mirrored:v1"
    assert _pull(cri, ref) == pushed.mirrored.id
    status = _image(cri, ref)
    assert status is not None
    assert list(status.repo_tags) == [ref]
    assert list(status.repo_digests) == [
        f"{MIRRORED_HOST}/cri-images/mirrored@{pushed.mirrored.digest}"
    ]


# ---- credentials ---------------------------------------------------------------------------


def _auth_fails(cri: CriDaemon, ref: str, auth: api_pb2.AuthConfig | None = None) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _pull(cri, ref, auth)
    if cri.is_liner:
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_basic_credentials_serve_that_pull_only(cri: CriDaemon, auth_registry: Registry) -> None:
    latest = auth_registry.ref("library/busybox:latest")
    zstd = auth_registry.ref("library/busybox:zstd")
    uncompressed = auth_registry.ref("library/busybox:uncompressed")
    _auth_fails(cri, latest)
    user, password = auth_registry.username, auth_registry.password
    assert _pull(cri, latest, api_pb2.AuthConfig(username=user, password=password))
    _auth_fails(cri, zstd)  # the credentials were the pull's, not kept
    _auth_fails(cri, zstd, api_pb2.AuthConfig(username=user, password="wrong"))
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert _pull(cri, zstd, api_pb2.AuthConfig(auth=encoded))
    # Credentials for another server are not sent here.
    other = api_pb2.AuthConfig(
        username=user, password=password, server_address="https://elsewhere.invalid"
    )
    _auth_fails(cri, uncompressed, other)
    # With a scheme: containerd 1.6 cannot parse a bare host:port (liner takes both).
    mine = api_pb2.AuthConfig(
        username=user, password=password, server_address=f"http://{auth_registry.host}"
    )
    assert _pull(cri, uncompressed, mine)


def test_identity_token(cri: CriDaemon, token_registry: Registry) -> None:
    assert token_registry.token_server is not None
    token = f"refresh-{time.monotonic_ns()}"
    token_registry.token_server.refresh_tokens[token] = token_registry.username
    ref = token_registry.ref("library/busybox:latest")
    _auth_fails(cri, ref)
    assert _pull(cri, ref, api_pb2.AuthConfig(identity_token=token))


def test_registry_token(cri: CriDaemon, token_registry: Registry) -> None:
    if cri.kind == CONTAINERD:
        pytest.skip("containerd ignores AuthConfig.registry_token")
    server = token_registry.token_server
    assert server is not None
    access = [{"type": "repository", "name": "library/busybox", "actions": ["pull"]}]
    token = server.issue(token_registry.username, access)
    ref = token_registry.ref("library/busybox:zstd")
    assert _pull(cri, ref, api_pb2.AuthConfig(registry_token=token))


# ---- crictl ------------------------------------------------------------------------------------


@needs_crictl
def test_crictl_pull_images_inspecti_rmi(cri: CriDaemon, pushed: Pushed) -> None:
    image = pushed.crictl
    ref = image.ref()
    assert image.id in cri.crictl("pull", ref).stdout
    listed = json.loads(cri.crictl("images", "-o", "json").stdout)["images"]
    mine = [i for i in listed if i["id"] == image.id]
    assert len(mine) == 1 and mine[0]["repoTags"] == [ref]
    assert mine[0]["repoDigests"] == [image.by_digest]
    inspected = json.loads(cri.crictl("inspecti", "-o", "json", ref).stdout)
    assert inspected["status"]["id"] == image.id
    assert int(inspected["status"]["size"]) > 0
    assert image.id.removeprefix("sha256:")[:13] in cri.crictl("images", "-q").stdout
    cri.crictl("rmi", ref)
    assert image.id.removeprefix("sha256:")[:13] not in cri.crictl("images", "-q").stdout
    assert cri.crictl("inspecti", ref, check=False).returncode != 0


@needs_crictl
def test_crictl_pull_with_credentials(cri: CriDaemon, auth_registry: Registry) -> None:
    user, password = auth_registry.username, auth_registry.password
    latest = auth_registry.ref("library/busybox:latest")
    assert cri.crictl("pull", latest, check=False).returncode != 0
    cri.crictl("pull", "--creds", f"{user}:{password}", latest)
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    cri.crictl("pull", "--auth", encoded, auth_registry.ref("library/busybox:zstd"))
    tags = {
        t
        for i in json.loads(cri.crictl("images", "-o", "json").stdout)["images"]
        for t in i["repoTags"]
    }
    assert {latest, auth_registry.ref("library/busybox:zstd")} <= tags
