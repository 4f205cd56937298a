"""Registry clients kept across pulls (linerd.remotes.pool), against the real docker-registry.

A later pull with the same registry configuration and credentials uses the connections and
the token of the earlier one; other credentials never do; a registry that restarted (its
kept connections closed under the client) is pulled from as if nothing happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import BUSYBOX_REPO
from imagebuild import BusyboxLayout
from registry import Registry, ThrottlingProxy
from support import Linerd, ns

from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

REF = f"{BUSYBOX_REPO}:latest"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linerd]:
    d = Linerd(tmp_path_factory.mktemp("pull-clients"))
    d.start()
    yield d
    d.stop()


def pull(
    daemon: Linerd, ref: str, namespace: str, *, username: str = "", secret: str = ""
) -> transfer_pb2.PullProgress:
    request = transfer_pb2.PullRequest(reference=ref, plain_http=True)
    if username or secret:
        request.credentials.username, request.credentials.secret = username, secret
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        final = list(stub.Pull(request, metadata=ns(namespace), timeout=120))[-1]
    assert final.done
    return final


def test_a_later_pull_uses_the_connections_of_an_earlier_one(
    daemon: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    proxy = ThrottlingProxy(registry.host)
    try:
        ref = f"{proxy.host}/{REF}"
        first = pull(daemon, ref, "reuse-a")
        assert first.target.digest == busybox_layout.latest.manifest.digest
        opened = {s.peer for s in proxy.served}
        count = len(proxy.served)
        # Another namespace: the blobs are on disk, the manifest and config are fetched
        # again (this namespace has no record of them), after resolving the tag.
        second = pull(daemon, ref, "reuse-b")
        assert second.target.digest == first.target.digest
        later = proxy.served[count:]
        assert later, "the second pull asked the registry nothing"
        assert {s.peer for s in later} <= opened, "the second pull opened a new connection"
    finally:
        proxy.stop()


def test_tokens_are_reused_only_with_the_same_credentials(
    daemon: Linerd, token_registry: Registry
) -> None:
    server = token_registry.token_server
    assert server is not None
    ref = token_registry.ref(REF)
    good = {"username": token_registry.username, "secret": token_registry.password}
    pull(daemon, ref, "token-a", **good)
    before = server.hits
    pull(daemon, ref, "token-b", **good)
    assert server.hits == before, "the second pull asked for a new token"
    # Other credentials: their own client, which asks the token server and is refused; the
    # token the right ones got is never sent on their behalf.
    for namespace, creds in (
        ("token-wrong", {"username": token_registry.username, "secret": "not-the-password"}),
        ("token-none", {}),
    ):
        with pytest.raises(grpc.RpcError) as info:
            pull(daemon, ref, namespace, **creds)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.hits > before
    # And the right ones still pull with what they had.
    settled = server.hits
    pull(daemon, ref, "token-c", **good)
    assert server.hits == settled


def test_pull_after_the_registry_restarted(
    daemon: Linerd, busybox_layout: BusyboxLayout, tmp_path: Path
) -> None:
    (tmp_path / "registry").mkdir()
    reg = Registry("open", workdir=tmp_path / "registry")
    reg.start()
    try:
        reg.push_layout(busybox_layout.path, REF, tag="latest")
        ref = reg.ref(REF)
        pull(daemon, ref, "restart-a")
        reg.restart()  # the daemon's kept connection to it is closed by the old process
        final = pull(daemon, ref, "restart-b")
        assert final.target.digest == busybox_layout.latest.manifest.digest
    finally:
        reg.stop()
