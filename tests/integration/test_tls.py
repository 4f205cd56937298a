"""TLS to registries through Transfer/Pull: verification on by default, the CA from the config.

An HTTPS registry (`Registry(tls=True)`) with a self-signed certificate of its own holds busybox.
Without its CA a pull is refused quickly with a verification error and stores nothing; with the
CA named in linerd's config for that host (as the server's ``ca`` or on a ``host`` entry) or with
``skip_verify = true`` the pull succeeds; a CA that did not sign the certificate is refused like
none; plain HTTP to the HTTPS port fails clearly.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from imagebuild import BusyboxLayout
from registry import Registry
from support import Linerd, ns

from liner_api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from liner_api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from liner_api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

REPO = "tls/busybox:latest"
NS = "tls"
C = grpc.StatusCode


@pytest.fixture(scope="module")
def tls_registry(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    reg = Registry("open", tls=True, workdir=tmp_path_factory.mktemp("registry-tls"))
    reg.start()
    try:
        reg.push_layout(busybox_layout.path, REPO, tag="latest")
        yield reg
    finally:
        reg.stop()


def daemon_with(base: Path, config: str | None) -> Linerd:
    args = []
    if config is not None:
        path = base / "config.toml"
        base.mkdir(parents=True, exist_ok=True)
        path.write_text("version = 1\n\n" + config)
        args = ["--config", str(path)]
    d = Linerd(base / "d", args)
    d.start()
    return d


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Linerd]]:
    started: list[Linerd] = []
    yield started
    for d in started:
        d.stop()


def pull(d: Linerd, ref: str, *, plain_http: bool = False) -> transfer_pb2.PullProgress:
    req = transfer_pb2.PullRequest(reference=ref, plain_http=plain_http)
    with d.channel() as ch:
        stub = transfer_pb2_grpc.TransferStub(ch)
        return list(stub.Pull(req, metadata=ns(NS), timeout=60))[-1]


def refused(d: Linerd, ref: str, **kw: bool) -> grpc.RpcError:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        pull(d, ref, **kw)
    took = time.monotonic() - started
    assert info.value.code() != C.DEADLINE_EXCEEDED, "the pull hung"
    assert took < 30, f"a refused pull took {took:.1f}s"
    return info.value


def stored_nothing(d: Linerd) -> None:
    with d.channel() as ch:
        md = ns(NS)
        images = images_pb2_grpc.ImagesStub(ch).List(images_pb2.ListImagesRequest(), metadata=md)
        assert list(images.images) == []
        content = content_pb2_grpc.ContentStub(ch)
        infos = [
            i for r in content.List(content_pb2.ListContentRequest(), metadata=md) for i in r.info
        ]
        assert infos == []
        statuses = content.ListStatuses(content_pb2.ListStatusesRequest(), metadata=md)
        assert list(statuses.statuses) == []
        snaps = snapshots_pb2_grpc.SnapshotsStub(ch).List(
            snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=md
        )
        assert [i.name for r in snaps for i in r.info] == []


def assert_pulled(d: Linerd, final: transfer_pb2.PullProgress, layout: BusyboxLayout) -> None:
    assert final.done and final.target.digest == layout.latest.manifest.digest
    with d.channel() as ch:
        image = (
            images_pb2_grpc.ImagesStub(ch)
            .Get(images_pb2.GetImageRequest(name=final.name), metadata=ns(NS))
            .image
        )
    assert image.target.digest == layout.latest.manifest.digest


def other_ca(path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 that did not sign the registry's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "liner-test-other-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_refused_without_the_ca(
    tmp_path: Path, daemons: list[Linerd], tls_registry: Registry
) -> None:
    d = daemon_with(tmp_path, None)
    daemons.append(d)
    error = refused(d, tls_registry.ref(REPO))
    assert error.code() == C.UNAVAILABLE, (error.code(), error.details())
    details = error.details() or ""
    assert "TLS verification failed" in details or "certificate verify failed" in details, details
    assert tls_registry.host in details, details
    stored_nothing(d)


def test_refused_with_another_ca(
    tmp_path: Path, daemons: list[Linerd], tls_registry: Registry
) -> None:
    ca = other_ca(tmp_path / "other-ca.pem")
    d = daemon_with(tmp_path, f'[registry.hosts."{tls_registry.host}"]\nca = "{ca}"\n')
    daemons.append(d)
    error = refused(d, tls_registry.ref(REPO))
    assert error.code() == C.UNAVAILABLE, (error.code(), error.details())
    assert "verif" in (error.details() or ""), error.details()
    stored_nothing(d)


@pytest.mark.parametrize("form", ["server", "host-entry", "skip_verify"])
def test_accepted_when_configured(
    tmp_path: Path,
    daemons: list[Linerd],
    tls_registry: Registry,
    busybox_layout: BusyboxLayout,
    form: str,
) -> None:
    host, ca = tls_registry.host, tls_registry.ca_file
    config = {
        "server": f'[registry.hosts."{host}"]\nca = "{ca}"\n',
        "host-entry": f'[registry.hosts."{host}".host."https://{host}"]\nca = ["{ca}"]\n',
        "skip_verify": f'[registry.hosts."{host}"]\nskip_verify = true\n',
    }[form]
    d = daemon_with(tmp_path, config)
    daemons.append(d)
    assert_pulled(d, pull(d, tls_registry.ref(REPO)), busybox_layout)


def test_plain_http_to_an_https_registry(
    tmp_path: Path, daemons: list[Linerd], tls_registry: Registry
) -> None:
    # Even with the CA configured, a plain-HTTP pull talks HTTP to the TLS port: Go's server
    # answers 400 "Client sent an HTTP request to an HTTPS server", which linerd turns into
    # INVALID_ARGUMENT naming the host and saying the registry wants HTTPS.
    d = daemon_with(
        tmp_path, f'[registry.hosts."{tls_registry.host}"]\nca = "{tls_registry.ca_file}"\n'
    )
    daemons.append(d)
    error = refused(d, tls_registry.ref(REPO), plain_http=True)
    details = error.details() or ""
    assert error.code() == C.INVALID_ARGUMENT, (error.code(), details)
    assert tls_registry.host in details, details
    assert "the registry speaks HTTPS, not plain HTTP" in details, details
    stored_nothing(d)
