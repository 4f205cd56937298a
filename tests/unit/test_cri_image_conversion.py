"""The CRI image conversions: records to CRI images, Image messages, AuthConfig."""

from __future__ import annotations

import base64

import pytest

from liner_api.runtime.v1 import api_pb2
from linerd.core.types import Descriptor, Image
from linerd.cri.images import (
    PINNED_LABEL,
    Resolved,
    auth_credentials,
    group_images,
    hosts_with_auth,
    pull_reference,
    split_references,
    to_cri_image,
    user_of,
)
from linerd.errdefs import InvalidArgument
from linerd.remotes.hosts import Credentials, HostsConfig

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64
CONFIG = "sha256:" + "c" * 64
OTHER = "sha256:" + "d" * 64
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (None, "")),
        ("1002", (1002, "")),
        ("1003:1003", (1003, "")),
        ("www-data", (None, "www-data")),
        ("www-data:www-data", (None, "www-data")),
        ("0", (0, "")),
        (":1000", (None, "")),
    ],
)
def test_user_of_the_image_config(user: str, expected: tuple[int | None, str]) -> None:
    assert user_of(user) == expected


@pytest.mark.parametrize(
    ("given", "pulled"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
        ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b:v1"),
        (f"127.0.0.1:5000/a/b@{DIGEST}", f"127.0.0.1:5000/a/b@{DIGEST}"),
        # containerd's ParseDockerRef drops the tag beside a digest.
        (f"127.0.0.1:5000/a/b:v1@{DIGEST}", f"127.0.0.1:5000/a/b@{DIGEST}"),
    ],
)
def test_pull_reference(given: str, pulled: str) -> None:
    assert str(pull_reference(given)) == pulled


def test_split_references() -> None:
    names = [
        CONFIG,  # the id record
        "docker.io/library/busybox:latest",
        f"docker.io/library/busybox@{DIGEST}",
        "127.0.0.1:5000/a:b",
        "busybox:latest",  # not normalized: containerd's CRI would not list it either
        "not a reference",
    ]
    tags, digests = split_references(names)
    assert tags == ["127.0.0.1:5000/a:b", "docker.io/library/busybox:latest"]
    assert digests == [f"docker.io/library/busybox@{DIGEST}"]


def _record(name: str, digest: str = DIGEST, **labels: str) -> Image:
    return Image(name=name, target=Descriptor(MANIFEST, digest, 500), labels=dict(labels))


def _resolved(config: str = CONFIG, user: str = "") -> Resolved:
    spec = {"config": {"User": user} if user else {}, "rootfs": {"diff_ids": []}}
    return Resolved(
        Descriptor("application/vnd.oci.image.config.v1+json", config, 100), "c", 4242, spec
    )


def test_records_of_one_config_are_one_image_equal_whichever_way_asked() -> None:
    records = [
        _record("docker.io/r/x:two"),
        _record(CONFIG),
        _record("docker.io/r/x:one"),
        _record(f"docker.io/r/x@{DIGEST}"),
        _record("docker.io/r/y:v1", OTHER),  # another target, the same config
        _record("docker.io/r/unresolved:v1", "sha256:" + "e" * 64),
    ]
    resolved = {DIGEST: _resolved(user="1002:5"), OTHER: _resolved(CONFIG)}
    images = group_images(records, resolved)
    assert list(images) == [CONFIG]
    image = images[CONFIG]
    assert image.repo_tags == ("docker.io/r/x:one", "docker.io/r/x:two", "docker.io/r/y:v1")
    assert image.repo_digests == (f"docker.io/r/x@{DIGEST}",)
    message = to_cri_image(image)
    assert message.id == CONFIG
    assert message.size == 4242
    assert message.uid.value == 1002 and message.username == ""
    assert message.spec.image == CONFIG
    assert not message.pinned
    # The same records in another order give an equal message.
    again = to_cri_image(group_images(list(reversed(records)), resolved)[CONFIG])
    assert again == message


def test_normalized_names_become_tags_and_digests() -> None:
    tag = "127.0.0.1:5000/r/x:v1"
    by_digest = f"127.0.0.1:5000/r/x@{DIGEST}"
    records = [_record(tag), _record(by_digest), _record(CONFIG, **{PINNED_LABEL: "pinned"})]
    image = group_images(records, {DIGEST: _resolved(user="www-data")})[CONFIG]
    assert image.references == tuple(sorted([tag, by_digest, CONFIG]))
    assert image.repo_tags == (tag,)
    assert image.repo_digests == (by_digest,)
    assert image.name == tag
    message = to_cri_image(image)
    assert list(message.repo_tags) == [tag] and list(message.repo_digests) == [by_digest]
    assert not message.HasField("uid") and message.username == "www-data"
    assert message.pinned


def test_auth_credentials() -> None:
    assert auth_credentials(api_pb2.AuthConfig()) is None
    assert auth_credentials(api_pb2.AuthConfig(username="u", password="p")) == Credentials("u", "p")
    assert auth_credentials(api_pb2.AuthConfig(identity_token="t")) == Credentials(
        identitytoken="t"
    )
    encoded = base64.b64encode(b"u:p\x00\x00").decode()
    assert auth_credentials(api_pb2.AuthConfig(auth=encoded)) == Credentials("u", "p")
    assert auth_credentials(api_pb2.AuthConfig(registry_token="b")) == Credentials(
        registrytoken="b"
    )
    # username wins over the others, as in containerd.
    both = api_pb2.AuthConfig(username="u", password="p", identity_token="t", auth=encoded)
    assert auth_credentials(both) == Credentials("u", "p")
    for bad in ("!!!", base64.b64encode(b"no-colon").decode()):
        with pytest.raises(InvalidArgument, match="auth"):
            auth_credentials(api_pb2.AuthConfig(auth=bad))


def test_request_credentials_go_to_the_registry_and_its_mirrors_only() -> None:
    base = HostsConfig.from_dict(
        {
            "hosts": {"reg.example": {"host": {"mirror.example:5000": {}}}},
            "auths": {"other.example": {"username": "kept", "password": "x"}},
        }
    )
    assert hosts_with_auth(base, "reg.example", None) is None
    assert hosts_with_auth(base, "reg.example", api_pb2.AuthConfig()) is None
    hosts = hosts_with_auth(base, "reg.example", api_pb2.AuthConfig(username="u", password="p"))
    assert hosts is not None
    assert [e.credentials for e in hosts.endpoints_for("reg.example")] == [
        Credentials("u", "p"),
        Credentials("u", "p"),
    ]
    assert hosts.credentials_for("other.example") == Credentials("kept", "x")
    assert base.credentials_for("reg.example") is None  # the daemon's own are untouched
    # With a server address, only that host gets them.
    only = hosts_with_auth(
        base,
        "reg.example",
        api_pb2.AuthConfig(username="u", password="p", server_address="https://reg.example/v2/"),
    )
    assert only is not None
    assert [e.credentials for e in only.endpoints_for("reg.example")] == [
        None,
        Credentials("u", "p"),
    ]


def test_docker_hub_server_addresses() -> None:
    auth = api_pb2.AuthConfig(
        username="u", password="p", server_address="https://index.docker.io/v1/"
    )
    hosts = hosts_with_auth(HostsConfig(), "docker.io", auth)
    assert hosts is not None
    assert [e.credentials for e in hosts.endpoints_for("docker.io")] == [Credentials("u", "p")]


def test_a_registry_token_is_sent_as_a_bearer_token_without_a_challenge() -> None:
    import asyncio

    from linerd.remotes.auth import Authorizer
    from linerd.remotes.hosts import CAPABILITIES, Endpoint, TLSConfig

    async def no_transport(*args: object) -> tuple[int, bytes]:
        raise AssertionError("no token request expected")

    endpoint = Endpoint(
        "https://reg.example/v2",
        "reg.example",
        CAPABILITIES,
        TLSConfig(),
        credentials=Credentials(registrytoken="tok"),
    )
    authorizer = Authorizer(HostsConfig(), no_transport)
    header = asyncio.run(authorizer.authorization(endpoint, ("repository:x:pull",)))
    assert header == "Bearer tok"
    assert "tok" not in repr(endpoint.credentials)
