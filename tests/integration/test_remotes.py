"""The registry client against real registries (open, basic, bearer) and lying fake servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from imagebuild import Blob, BusyboxLayout, busybox_index
from registry import Registry

from linerd import errdefs
from linerd.core.types import Descriptor
from linerd.remotes import (
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Credentials,
    HostsConfig,
    RegistryClient,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
REPO = "library/busybox"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def client_for(reg: Registry, creds: Credentials | None = None, **kw: Any) -> RegistryClient:
    auths = {reg.host: creds} if creds is not None else {}
    kw.setdefault("backoff", 0.01)
    return RegistryClient(HostsConfig(auths=auths, plain_http=True), **kw)


def good_creds(reg: Registry) -> Credentials | None:
    return None if reg.mode == "open" else Credentials(reg.username, reg.password)


def desc_of(blob: Blob) -> Descriptor:
    return Descriptor(blob.media_type, blob.digest, blob.size)


async def read_blob(client: RegistryClient, ref: str, desc: Descriptor, **kw: Any) -> bytes:
    out = bytearray()
    async with contextlib.aclosing(client.fetch_blob(ref, desc, **kw)) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


@pytest.fixture(params=["registry", "auth_registry", "token_registry"])
def any_registry(request: pytest.FixtureRequest) -> Registry:
    return request.getfixturevalue(request.param)


# -- real registries ------------------------------------------------------------------------


def test_resolve_and_fetch_everything(any_registry: Registry, busybox_layout: BusyboxLayout):
    reg, image = any_registry, busybox_layout.latest

    async def main() -> None:
        async with client_for(reg, good_creds(reg)) as client:
            name, desc = await client.resolve(reg.ref(f"{REPO}:latest"))
            assert name == f"{reg.host}/{REPO}:latest"
            assert desc == Descriptor(MEDIA_TYPE_OCI_MANIFEST, image.digest, image.manifest.size)
            assert await client.fetch_manifest(name, desc) == image.manifest.data
            assert await client.fetch_manifest(name) == image.manifest.data  # resolves itself
            for blob in image.blobs:
                assert await read_blob(client, name, desc_of(blob)) == blob.data

    run(main())


@pytest.mark.parametrize("fixture", ["auth_registry", "token_registry"])
def test_wrong_or_missing_credentials(fixture: str, request: pytest.FixtureRequest) -> None:
    reg: Registry = request.getfixturevalue(fixture)

    async def main() -> None:
        for creds in (Credentials(reg.username, "wrong-pass-xyzzy"), None):
            async with client_for(reg, creds) as client:
                with pytest.raises(errdefs.Unauthenticated) as info:
                    await client.resolve(reg.ref(f"{REPO}:latest"))
                assert "xyzzy" not in str(info.value)

    run(main())


def test_by_digest_and_not_found(registry: Registry, busybox_layout: BusyboxLayout) -> None:
    digest = busybox_layout.latest.digest

    async def main() -> None:
        async with client_for(registry) as client:
            for ref in (f"{REPO}@{digest}", f"{REPO}:latest@{digest}", f"{REPO}:zstd@{digest}"):
                name, desc = await client.resolve(registry.ref(ref))
                assert desc.digest == digest and name == registry.ref(ref)
            with pytest.raises(errdefs.NotFound):
                await client.resolve(registry.ref(f"{REPO}:no-such-tag"))
            with pytest.raises(errdefs.NotFound):
                await client.resolve(registry.ref(f"no/such/repo@sha256:{'0' * 64}"))
            with pytest.raises(errdefs.NotFound):
                await read_blob(
                    client, registry.ref(REPO), Descriptor("x", f"sha256:{'1' * 64}", 3)
                )

    run(main())


def test_zstd_and_uncompressed_layers(registry: Registry, busybox_layout: BusyboxLayout) -> None:
    async def main() -> None:
        async with client_for(registry) as client:
            variants = {"zstd": busybox_layout.zstd, "uncompressed": busybox_layout.uncompressed}
            for tag, image in variants.items():
                name, desc = await client.resolve(registry.ref(f"{REPO}:{tag}"))
                manifest = json.loads(await client.fetch_manifest(name, desc))
                assert [layer["mediaType"] for layer in manifest["layers"]] == [
                    layer.blob.media_type for layer in image.layers
                ]
                layer = image.layers[-1].blob
                assert await read_blob(client, name, desc_of(layer)) == layer.data

    run(main())


def test_docker_schema2(registry: Registry, busybox_layout: BusyboxLayout) -> None:
    """skopeo's v2s2 conversion: new manifest, same blobs, Docker media types."""

    async def main() -> None:
        async with client_for(registry) as client:
            name, desc = await client.resolve(registry.ref(f"{REPO}:v2s2"))
            assert desc.media_type == MEDIA_TYPE_DOCKER_MANIFEST
            manifest = json.loads(await client.fetch_manifest(name, desc))
            assert manifest["mediaType"] == MEDIA_TYPE_DOCKER_MANIFEST
            assert manifest["layers"][0]["mediaType"].startswith(
                "application/vnd.docker.image.rootfs.diff.tar"
            )
            layer = manifest["layers"][0]
            data = await read_blob(
                client, name, Descriptor(layer["mediaType"], layer["digest"], layer["size"])
            )
            assert data == busybox_layout.latest.layers[0].blob.data

    run(main())


def test_multi_platform_index(registry: Registry, busybox_layout: BusyboxLayout) -> None:
    built = busybox_layout.multi

    async def main() -> None:
        async with client_for(registry) as client:
            name, desc = await client.resolve(registry.ref(f"{REPO}:multi"))
            assert (desc.media_type, desc.digest) == (MEDIA_TYPE_OCI_INDEX, built.digest)
            index = json.loads(await client.fetch_manifest(name, desc))
            platforms = [m["platform"] for m in index["manifests"]]
            assert platforms == [
                {"architecture": "amd64", "os": "linux"},
                {"architecture": "arm64", "os": "linux", "variant": "v8"},
            ]
            arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
            child = Descriptor(arm["mediaType"], arm["digest"], arm["size"])
            assert await client.fetch_manifest(name, child) == built.images[1].manifest.data
            # A child manifest through fetch_blob goes to /manifests/ and is verified too.
            assert await read_blob(client, name, child) == built.images[1].manifest.data
            # By digest, straight to the child.
            _, by_digest = await client.resolve(registry.ref(f"{REPO}@{arm['digest']}"))
            assert by_digest == child

    run(main())


def test_docker_manifest_list(registry: Registry, tmp_path) -> None:
    built = busybox_index(tmp_path / "layout", media="docker")
    for image in built.images:
        registry.push_raw(
            "test/dockerlist",
            image.digest,
            image.manifest.data,
            image.manifest.media_type,
            [b.data for b in image.blobs],
        )
    registry.push_raw("test/dockerlist", "v1", built.index.data, built.index.media_type)

    async def main() -> None:
        async with client_for(registry) as client:
            name, desc = await client.resolve(registry.ref("test/dockerlist:v1"))
            assert (desc.media_type, desc.digest) == (MEDIA_TYPE_DOCKER_LIST, built.digest)
            index = json.loads(await client.fetch_manifest(name, desc))
            first = index["manifests"][0]
            assert first["mediaType"] == MEDIA_TYPE_DOCKER_MANIFEST
            child = Descriptor(first["mediaType"], first["digest"], first["size"])
            assert await client.fetch_manifest(name, child) == built.images[0].manifest.data

    run(main())


def test_range_resume(auth_registry: Registry, busybox_layout: BusyboxLayout) -> None:
    blob = busybox_layout.latest.layers[0].blob
    desc = desc_of(blob)
    ref = auth_registry.ref(REPO)

    async def main() -> None:
        async with client_for(auth_registry, good_creds(auth_registry)) as client:
            for offset in (1, blob.size // 2, blob.size - 1):
                prefix = hashlib.sha256(blob.data[:offset])
                tail = await read_blob(client, ref, desc, offset=offset, hasher=prefix)
                assert tail == blob.data[offset:]
                assert "sha256:" + prefix.hexdigest() == blob.digest
            # Without the prefix's hash: size checked, bytes right.
            assert await read_blob(client, ref, desc, offset=100) == blob.data[100:]
            # A wrong prefix hash is caught at the end.
            with pytest.raises(errdefs.DataLoss, match="digest mismatch"):
                await read_blob(client, ref, desc, offset=10, hasher=hashlib.sha256(b"x" * 10))
            assert await read_blob(client, ref, desc, offset=blob.size) == b""

    run(main())


def test_token_cache(token_registry: Registry, busybox_layout: BusyboxLayout) -> None:
    server = token_registry.token_server
    assert server is not None
    image = busybox_layout.latest
    creds = good_creds(token_registry)

    async def main() -> None:
        before = server.hits
        async with client_for(token_registry, creds) as client:
            # Concurrent first requests share one token request.
            ref = token_registry.ref(REPO)
            blobs = await asyncio.gather(*(read_blob(client, ref, desc_of(b)) for b in image.blobs))
            assert blobs == [b.data for b in image.blobs]
            name, desc = await client.resolve(token_registry.ref(f"{REPO}:latest"))
            await client.fetch_manifest(name, desc)
            assert server.hits - before == 1
            assert client.auth.token_requests == 1
            # Another repository is another scope: another token.
            with pytest.raises(errdefs.NotFound):
                await client.resolve(token_registry.ref("other/repo:latest"))
            assert server.hits - before == 2
        # Basic credentials went to the token server, with the right service and scope.
        last = server.requests[-1]
        assert last["authorization"] and last["query"]["service"] == [server.service]
        assert last["query"]["scope"] == ["repository:other/repo:pull"]

    run(main())


def test_token_anonymous_and_identity_token(busybox_layout: BusyboxLayout) -> None:
    with Registry("token", anonymous_pull=True) as reg:
        reg.push_layout(busybox_layout.path, "public/busybox:latest", tag="latest")
        assert reg.token_server is not None
        reg.token_server.refresh_tokens["id-token-123"] = reg.username

        async def main() -> None:
            async with client_for(reg) as client:  # anonymous bearer, as on Docker Hub
                _, desc = await client.resolve(reg.ref("public/busybox:latest"))
                assert desc.digest == busybox_layout.latest.digest
            async with client_for(reg, Credentials(identitytoken="id-token-123")) as client:
                _, desc = await client.resolve(reg.ref("public/busybox:latest"))
                assert desc.digest == busybox_layout.latest.digest
            assert reg.token_server is not None
            post = reg.token_server.requests[-1]
            assert post["method"] == "POST"
            assert post["query"]["grant_type"] == ["refresh_token"]
            async with client_for(reg, Credentials(identitytoken="bad")) as client:
                with pytest.raises(errdefs.Unauthenticated):
                    await client.resolve(reg.ref("public/busybox:latest"))

        run(main())


def test_mirror_fallback(registry: Registry, busybox_layout: BusyboxLayout) -> None:
    """A mirror that has nothing, then a dead one, then the server."""
    with FakeServer(lambda h: h.reply(404)) as empty:
        hosts = HostsConfig.from_dict(
            {
                "hosts": {
                    registry.host: {
                        "server": registry.url,
                        "host": {
                            f"http://127.0.0.1:{empty.port}": {"capabilities": ["pull", "resolve"]},
                            "http://127.0.0.1:1": {"capabilities": ["pull", "resolve"]},
                        },
                    }
                }
            }
        )

        async def main() -> None:
            async with RegistryClient(hosts, retries=1, backoff=0.01) as client:
                name, desc = await client.resolve(registry.ref(f"{REPO}:latest"))
                assert desc.digest == busybox_layout.latest.digest
                layer = busybox_layout.latest.layers[1].blob
                assert await read_blob(client, name, desc_of(layer)) == layer.data

        run(main())
        assert any("/manifests/latest" in r.path for r in empty.requests)


def test_tls_verification(busybox_layout: BusyboxLayout) -> None:
    """HTTPS with a self-signed certificate: refused by default, fine with its CA or
    skip_verify (configured per registry)."""
    with Registry("htpasswd", tls=True) as reg:
        reg.push_layout(busybox_layout.path, "tls/busybox:latest", tag="latest")
        ref = reg.ref("tls/busybox:latest")
        auths = {reg.host: Credentials(reg.username, reg.password)}

        def hosts(table: dict[str, Any]) -> HostsConfig:
            return HostsConfig.from_dict({"hosts": {reg.host: table}}) if table else HostsConfig()

        async def main() -> None:
            async with RegistryClient(hosts({}), retries=3, backoff=0.01) as client:
                with pytest.raises(errdefs.Unavailable, match="TLS verification failed"):
                    await client.resolve(ref)
            for table in ({"ca": str(reg.ca_file)}, {"skip_verify": True}):
                h = hosts(table)
                h.auths.update(auths)
                async with RegistryClient(h) as client:
                    name, desc = await client.resolve(ref)
                    assert desc.digest == busybox_layout.latest.digest
                    layer = busybox_layout.latest.layers[1].blob
                    assert await read_blob(client, name, desc_of(layer)) == layer.data

        run(main())


# -- fake servers ---------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Handler(BaseHTTPRequestHandler):
    server: _Server  # type: ignore[assignment]

    def log_message(self, *args: Any) -> None:
        pass

    def reply(
        self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, length=True
    ) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        self.server.owner.requests.append(Seen(self.command, self.path, dict(self.headers)))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.owner.handle(self)

    do_GET = do_HEAD = do_POST = _handle


class _Server(ThreadingHTTPServer):
    owner: FakeServer
    daemon_threads = True


@dataclass
class FakeServer:
    """An HTTP server on 127.0.0.1 whose every request goes to ``handle(handler)``."""

    handle: Callable[[Handler], None]
    requests: list[Seen] = field(default_factory=list)

    def __enter__(self) -> FakeServer:
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.owner = self
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


DATA = bytes(range(256)) * 4096  # 1 MiB
DATA_DESC = Descriptor(
    "application/vnd.oci.image.layer.v1.tar",
    "sha256:" + hashlib.sha256(DATA).hexdigest(),
    len(DATA),
)


@contextlib.contextmanager
def fake_registry(handle: Callable[[Handler], None]) -> Iterator[tuple[FakeServer, str]]:
    with FakeServer(handle) as server:
        yield server, f"{server.host}/test/repo"


async def collect(client: RegistryClient, ref: str, desc: Descriptor, got: bytearray) -> None:
    async with contextlib.aclosing(client.fetch_blob(ref, desc)) as chunks:
        async for chunk in chunks:
            got += chunk


def fake_client(**kw: Any) -> RegistryClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 2)
    return RegistryClient(HostsConfig(plain_http=True), **kw)


def test_lying_blob_wrong_bytes() -> None:
    wrong = bytearray(DATA)
    wrong[-1] ^= 0xFF

    with fake_registry(lambda h: h.reply(200, bytes(wrong))) as (_, ref):
        got = bytearray()

        async def main() -> None:
            async with fake_client() as client:
                with pytest.raises(errdefs.DataLoss, match=r"blob sha256:\w+: digest mismatch"):
                    await collect(client, ref, DATA_DESC, got)

        run(main())
        # The final chunk was held back: the consumer never had the whole (wrong) blob.
        assert len(got) < len(DATA)


def test_lying_blob_too_long() -> None:
    def endless(h: Handler) -> None:
        h.reply(200, headers={"Content-Type": "application/octet-stream"}, length=False)
        for _ in range(1000):  # up to 1 GiB, unless the client hangs up
            h.wfile.write(DATA)

    with fake_registry(endless) as (_, ref):
        got = bytearray()

        async def main() -> None:
            async with fake_client() as client:
                with pytest.raises(errdefs.DataLoss, match="more data than the declared size"):
                    await collect(client, ref, DATA_DESC, got)

        run(main())
        assert len(got) <= len(DATA)

    # With an honest Content-Length that disagrees, refuse before reading anything.
    with fake_registry(lambda h: h.reply(200, DATA + b"extra")) as (_, ref):
        got = bytearray()

        async def main2() -> None:
            async with fake_client() as client:
                with pytest.raises(errdefs.DataLoss, match="size mismatch"):
                    await collect(client, ref, DATA_DESC, got)

        run(main2())
        assert got == b""


def test_manifest_over_cap() -> None:
    small = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST}).encode()

    def handle(h: Handler) -> None:
        if h.path.endswith("/manifests/big"):
            h.reply(200, b"x" * 5000, {"Content-Type": MEDIA_TYPE_OCI_MANIFEST})
        elif h.path.endswith("/manifests/endless"):
            h.reply(200, headers={"Content-Type": MEDIA_TYPE_OCI_MANIFEST}, length=False)
            for _ in range(100):
                h.wfile.write(b" " * 65536)
        else:
            h.reply(200, small, {"Content-Type": MEDIA_TYPE_OCI_MANIFEST})

    with fake_registry(handle) as (server, ref):

        async def main() -> None:
            async with fake_client(max_manifest_size=4096) as client:
                with pytest.raises(errdefs.InvalidArgument, match="4096-byte limit"):
                    await client.resolve(f"{ref}:big")  # by HEAD's Content-Length
                with pytest.raises(errdefs.InvalidArgument, match="4096-byte limit"):
                    await client.resolve(f"{ref}:endless")  # HEAD says nothing; GET is cut off
                _, desc = await client.resolve(f"{ref}:small")
                assert desc.size == len(small)
                # A descriptor over the cap is refused without a request.
                n = len(server.requests)
                huge = Descriptor(MEDIA_TYPE_OCI_MANIFEST, DATA_DESC.digest, 1 << 30)
                with pytest.raises(errdefs.InvalidArgument, match="limit"):
                    await client.fetch_manifest(ref, huge)
                assert len(server.requests) == n

        run(main())


def test_resolve_get_fallback_hashes_body() -> None:
    body = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()

    def handle(h: Handler) -> None:
        if h.command == "HEAD":
            h.reply(405)  # some registries refuse HEAD
        else:
            h.reply(200, body, {"Content-Type": "application/json"})

    with fake_registry(handle) as (_, ref):

        async def main() -> None:
            async with fake_client() as client:
                _, desc = await client.resolve(f"{ref}:v1")
                assert desc == Descriptor(MEDIA_TYPE_OCI_INDEX, digest, len(body))
                with pytest.raises(errdefs.DataLoss, match="digest mismatch"):
                    await client.resolve(f"{ref}@sha256:{'2' * 64}")

        run(main())


def test_retries_then_success_and_give_up() -> None:
    failures = {"n": 0}

    def flaky(h: Handler) -> None:
        if failures["n"] < 2:
            failures["n"] += 1
            h.reply(503 if failures["n"] == 1 else 429, headers={"Retry-After": "0"})
            return
        h.reply(200, DATA)

    with fake_registry(flaky) as (server, ref):

        async def main() -> None:
            async with fake_client() as client:
                got = bytearray()
                await collect(client, ref, DATA_DESC, got)
                assert got == DATA

        run(main())
        assert len(server.requests) == 3

    with fake_registry(lambda h: h.reply(500)) as (server, ref):

        async def main2() -> None:
            async with fake_client(retries=3) as client:
                with pytest.raises(errdefs.Unavailable, match="HTTP 500"):
                    await collect(client, ref, DATA_DESC, bytearray())

        run(main2())
        assert len(server.requests) == 4  # 1 + 3 retries

    async def refused() -> None:
        # A closed port answers the same every time: said once, as a person reads it.
        async with fake_client(retries=2) as client:
            with pytest.raises(errdefs.Unavailable) as raised:
                await client.resolve("127.0.0.1:1/x/y:latest")
            assert str(raised.value) == "cannot reach registry 127.0.0.1:1: connection refused"

    run(refused())


def test_interrupted_transfer_resumes_with_range() -> None:
    def handle(h: Handler) -> None:
        rng = h.headers.get("Range")
        if rng is None:
            # Announce it all, send a third, hang up.
            h.send_response(200)
            h.send_header("Content-Length", str(len(DATA)))
            h.end_headers()
            h.wfile.write(DATA[: len(DATA) // 3])
            return
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        h.reply(206, DATA[start:], {"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"})

    with fake_registry(handle) as (server, ref):

        async def main() -> None:
            async with fake_client() as client:
                got = bytearray()
                await collect(client, ref, DATA_DESC, got)
                assert got == DATA

        run(main())
        assert [r.headers.get("Range") for r in server.requests] == [
            None,
            f"bytes={len(DATA) // 3}-",
        ]


def test_server_ignoring_range() -> None:
    with fake_registry(lambda h: h.reply(200, DATA)) as (_, ref):

        async def main() -> None:
            async with fake_client() as client:
                tail = bytearray()
                async with contextlib.aclosing(
                    client.fetch_blob(ref, DATA_DESC, offset=1000)
                ) as chunks:
                    async for chunk in chunks:
                        tail += chunk
                assert tail == DATA[1000:]

        run(main())


def test_credentials_not_sent_across_redirect() -> None:
    """127.0.0.1:A asks for basic auth and redirects blobs to localhost:B (another host)."""
    creds = Credentials("user", "pa55word")
    expected = "Basic " + base64.b64encode(b"user:pa55word").decode()

    with FakeServer(lambda h: h.reply(200, DATA)) as storage:

        def registry_handler(h: Handler) -> None:
            if h.headers.get("Authorization") != expected:
                h.reply(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
            elif "/blobs/" in h.path:
                h.reply(307, headers={"Location": f"http://localhost:{storage.port}/data?sig=1"})
            else:
                h.reply(404)

        with fake_registry(registry_handler) as (reg, ref):
            hosts = HostsConfig(auths={reg.host: creds}, plain_http=True)

            async def main() -> None:
                async with RegistryClient(hosts) as client:
                    got = bytearray()
                    await collect(client, ref, DATA_DESC, got)
                    assert got == DATA

            run(main())
            assert reg.requests[-1].headers.get("Authorization") == expected
            assert storage.requests and all(
                "Authorization" not in r.headers for r in storage.requests
            )
            assert storage.requests[0].path == "/data?sig=1"


def test_token_response_too_large_and_realm_rules() -> None:
    def token_server(h: Handler) -> None:
        if "big" in h.path:
            h.reply(200, b'{"token": "' + b"a" * (2 << 20) + b'"}')
        else:
            h.reply(200, b'{"token": "t0k3n", "expires_in": 300}')

    with FakeServer(token_server) as tokens:

        def registry_handler(h: Handler) -> None:
            realm = f"http://localhost:{tokens.port}/{'big' if 'big' in h.path else 'ok'}"
            if h.headers.get("Authorization") != "Bearer t0k3n":
                h.reply(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})
            else:
                h.reply(200, DATA)

        with fake_registry(registry_handler) as (reg, ref):
            hosts = HostsConfig(auths={reg.host: Credentials("user", "secret")}, plain_http=True)

            async def main() -> None:
                async with RegistryClient(hosts) as client:
                    with pytest.raises(errdefs.Unauthenticated, match="over 1048576 bytes"):
                        await client.resolve(f"{reg.host}/big/repo:latest")
                # (A fresh client: auth challenges are remembered per host, and this fake
                # registry names a different realm per repository.)
                async with RegistryClient(hosts) as client:
                    got = bytearray()
                    await collect(client, ref, DATA_DESC, got)
                    assert got == DATA

            run(main())
        # The realm is plain HTTP on another host name than the registry (localhost vs
        # 127.0.0.1): the registry's credentials were not sent there.
        assert tokens.requests and all("Authorization" not in r.headers for r in tokens.requests)


def test_blob_stream_closes_when_consumer_stops(registry: Registry, busybox_layout) -> None:
    blob = busybox_layout.latest.layers[0].blob

    async def main() -> None:
        async with client_for(registry) as client:
            gen: AsyncIterator[bytes] = client.fetch_blob(registry.ref(REPO), desc_of(blob))
            async with contextlib.aclosing(gen) as chunks:  # type: ignore[type-var]
                async for _ in chunks:
                    break  # the response is closed by aclosing; nothing leaks

    run(main())


def test_trickling_blob_is_given_up() -> None:
    """A server sending a byte at a time, each in time for the read timeout, cannot hold a pull
    forever: under the minimum rate over a window the transfer fails."""

    def trickle(h: Handler) -> None:
        h.reply(200, headers={"Content-Length": str(len(DATA))}, length=False)
        for i in range(len(DATA)):
            h.wfile.write(DATA[i : i + 1])
            h.wfile.flush()
            time.sleep(0.01)

    with fake_registry(trickle) as (_, ref):
        got = bytearray()

        async def main() -> None:
            async with fake_client(min_rate=(64 << 10, 0.5)) as client:
                with pytest.raises(errdefs.Unavailable, match="transfer too slow"):
                    await collect(client, ref, DATA_DESC, got)

        started = time.monotonic()
        run(main())
        assert time.monotonic() - started < 10
        assert len(got) < len(DATA)


def test_unauthorized_loop_is_bounded() -> None:
    """A registry that answers 401 whatever token it is given: a clear error after a few
    tries, not a loop."""
    tokens: list[str] = []

    def handle(h: Handler) -> None:
        if h.path.startswith("/token"):
            tokens.append(h.path)
            h.reply(200, b'{"token": "t"}', {"Content-Type": "application/json"})
            return
        realm = f"http://{h.headers['Host']}/token"
        h.reply(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})

    with fake_registry(handle) as (server, ref):

        async def main() -> None:
            async with fake_client() as client:
                with pytest.raises(errdefs.Unauthenticated):
                    await client.resolve(ref + ":latest")

        run(main())
        assert len(server.requests) < 12, [r.path for r in server.requests]
        assert len(tokens) <= 3
