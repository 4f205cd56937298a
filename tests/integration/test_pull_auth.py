"""Transfer/Pull against registries that want credentials: basic, bearer tokens, daemon config.

Credentials come either with the request (PullRequest.credentials) or from the daemon's
``[registry.auths."host:port"]`` config; a missing or wrong secret is UNAUTHENTICATED with a
readable message, and no secret ever reaches the daemon log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from imagebuild import BusyboxLayout
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

REF = "library/busybox:latest"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("pull-auth"))
    d.start()
    yield d
    d.stop()


def pull(
    daemon: Linerd,
    ref: str,
    namespace: str,
    *,
    username: str = "",
    secret: str = "",
    plain_http: bool = True,
) -> transfer_pb2.PullProgress:
    request = transfer_pb2.PullRequest(reference=ref, plain_http=plain_http)
    if username or secret:
        request.credentials.username, request.credentials.secret = username, secret
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        return list(stub.Pull(request, metadata=ns(namespace), timeout=120))[-1]


def pull_error(daemon: Linerd, ref: str, namespace: str, **kw: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        pull(daemon, ref, namespace, **kw)  # type: ignore[arg-type]
    return info.value


def assert_pulled(
    daemon: Linerd, final: transfer_pb2.PullProgress, namespace: str, layout: BusyboxLayout
) -> None:
    assert final.done and final.target.digest == layout.latest.manifest.digest
    assert {b.state for b in final.blobs if b.descriptor.digest != final.target.digest} == {
        "downloaded",
        "unpacked",
    }
    with daemon.channel() as channel:
        image = (
            images_pb2_grpc.ImagesStub(channel)
            .Get(images_pb2.GetImageRequest(name=final.name), metadata=ns(namespace))
            .image
        )
    assert image.target.digest == layout.latest.manifest.digest


def no_image(daemon: Linerd, namespace: str) -> None:
    with daemon.channel() as channel:
        listed = images_pb2_grpc.ImagesStub(channel).List(
            images_pb2.ListImagesRequest(), metadata=ns(namespace)
        )
    assert list(listed.images) == []


# -- basic auth (htpasswd) ---------------------------------------------------------------


def test_basic_with_request_credentials(
    daemon: Linerd, auth_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    final = pull(
        daemon,
        auth_registry.ref(REF),
        "basic-ok",
        username=auth_registry.username,
        secret=auth_registry.password,
    )
    assert_pulled(daemon, final, "basic-ok", busybox_layout)
    assert auth_registry.password not in daemon.log()


def test_basic_wrong_password(daemon: Linerd, auth_registry: Registry) -> None:
    error = pull_error(
        daemon, auth_registry.ref(REF), "basic-wrong", username=auth_registry.username,
        secret="not-the-password",
    )  # fmt: skip
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authentication failed" in error.details()
    assert auth_registry.host in error.details()
    assert "not-the-password" not in error.details()
    assert "not-the-password" not in daemon.log()
    no_image(daemon, "basic-wrong")


def test_basic_without_credentials(daemon: Linerd, auth_registry: Registry) -> None:
    error = pull_error(daemon, auth_registry.ref(REF), "basic-none")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authentication required" in error.details()
    no_image(daemon, "basic-none")


# -- bearer tokens -----------------------------------------------------------------------


def test_token_flow_caches_tokens_within_a_pull(
    daemon: Linerd, token_registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    server = token_registry.token_server
    assert server is not None
    before = server.hits
    final = pull(
        daemon,
        token_registry.ref(REF),
        "token-ok",
        username=token_registry.username,
        secret=token_registry.password,
    )
    assert_pulled(daemon, final, "token-ok", busybox_layout)
    # resolve + manifest + config + 3 layers = 6 registry requests; one token serves them all
    # (a second one at most, should the first request race the challenge)
    hits = server.hits - before
    assert 1 <= hits <= 2, server.requests[before:]
    assert all(r["authorization"] for r in server.requests[before:] if r["method"] == "GET")
    assert token_registry.password not in daemon.log()


def test_token_wrong_password(daemon: Linerd, token_registry: Registry) -> None:
    error = pull_error(
        daemon, token_registry.ref(REF), "token-wrong", username=token_registry.username,
        secret="not-the-password",
    )  # fmt: skip
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details()
    assert "not-the-password" not in error.details()
    no_image(daemon, "token-wrong")


def test_token_without_credentials(daemon: Linerd, token_registry: Registry) -> None:
    # the token server gives anonymous clients a token without pull access: the registry
    # then refuses that token
    error = pull_error(daemon, token_registry.ref(REF), "token-none")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert token_registry.host in error.details()
    no_image(daemon, "token-none")


# -- credentials from the daemon's config ------------------------------------------------


@pytest.fixture(scope="module")
def configured(
    tmp_path_factory: pytest.TempPathFactory, auth_registry: Registry, token_registry: Registry
) -> Iterator[Linerd]:
    base = tmp_path_factory.mktemp("pull-auth-config")
    config = base / "config.toml"
    lines = ["[registry]", "plain_http = true"]
    for reg in (auth_registry, token_registry):
        lines += [
            f'[registry.auths."{reg.host}"]',
            f'username = "{reg.username}"',
            f'password = "{reg.password}"',
        ]
    config.write_text("\n".join(lines) + "\n")
    d = Linerd(base / "daemon", extra_args=["--config", str(config)])
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("which", ["basic", "token"])
def test_credentials_from_daemon_config(
    configured: Linerd,
    auth_registry: Registry,
    token_registry: Registry,
    busybox_layout: BusyboxLayout,
    which: str,
    tmp_path: Path,
) -> None:
    reg = auth_registry if which == "basic" else token_registry
    namespace = f"config-{which}"
    # neither credentials nor plain_http in the request: both come from the config
    final = pull(configured, reg.ref(REF), namespace, plain_http=False)
    assert_pulled(configured, final, namespace, busybox_layout)
    assert reg.password not in configured.log()


def test_request_credentials_override_config(configured: Linerd, auth_registry: Registry) -> None:
    error = pull_error(
        configured, auth_registry.ref(REF), "config-override", username="intruder",
        secret="wrong",
    )  # fmt: skip
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    no_image(configured, "config-override")
