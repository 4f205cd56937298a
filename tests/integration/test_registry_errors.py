"""Registry failures as a person reads them, and loopback registries over plain HTTP, through
the real docker-registry, linerd and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from imagebuild import Blob, BusyboxLayout
from registry import Registry
from support import Linerd

from liner.cli import cli
from linerd import errdefs
from linerd.core.types import Descriptor
from linerd.remotes import HostsConfig, RegistryClient, parse_reference

pytestmark = pytest.mark.integration

REPO = "library/busybox"


def liner(address: str, *args: str) -> Result:
    env = {"LINER_ADDRESS": None, "LINER_NAMESPACE": None, "LINER_SNAPSHOTTER": None}
    return CliRunner().invoke(cli, ["-a", address, *args], env=env, catch_exceptions=False)


def one_error(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    return line.removeprefix("liner: ")


def desc_of(blob: Blob) -> Descriptor:
    return Descriptor(blob.media_type, blob.digest, blob.size)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def https_only(tmp_path: Path, registry: Registry) -> Iterator[Linerd]:
    """A linerd whose configuration says the (plain HTTP) test registry is HTTPS."""
    config = tmp_path / "config.toml"
    config.write_text(f'[registry.hosts."{registry.host}"]\nplain_http = false\n')
    daemon = Linerd(tmp_path / "d", extra_args=["--config", str(config)])
    daemon.start()
    yield daemon
    daemon.stop()


def test_loopback_registry_pulls_without_plain_http(
    linerd: Linerd, registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    # As Docker and nerdctl: HTTPS is tried, the plain HTTP answer is taken.
    port = registry.host.rsplit(":", 1)[1]
    for ref in (registry.ref(f"{REPO}:latest"), f"localhost:{port}/{REPO}:zstd"):
        result = liner(linerd.address, "images", "pull", ref)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines()[-1].split()[0] == ref
    listed = liner(linerd.address, "images", "ls", "-q").stdout.split()
    assert registry.ref(f"{REPO}:latest") in listed


def test_plain_http_registry_configured_as_https_says_so(
    https_only: Linerd, registry: Registry
) -> None:
    message = one_error(liner(https_only.address, "images", "pull", registry.ref(f"{REPO}:1")))
    assert f"registry {registry.host} speaks plain HTTP, not HTTPS" in message
    assert "--plain-http" in message and "hosts.toml" in message
    assert "attempts" not in message and "WRONG_VERSION_NUMBER" not in message
    # --plain-http is the way out
    result = liner(
        https_only.address, "images", "pull", "--plain-http", registry.ref(f"{REPO}:latest")
    )
    assert result.exit_code == 0, result.stderr


def test_closed_port_is_said_once(linerd: Linerd, closed_port: int) -> None:
    for flags in ([], ["--plain-http"]):
        message = one_error(
            liner(linerd.address, "images", "pull", *flags, f"127.0.0.1:{closed_port}/x:1")
        )
        assert message.endswith(
            f"cannot reach registry 127.0.0.1:{closed_port}: connection refused"
        )
        assert "attempts" not in message


def test_client_remembers_a_loopback_registry_speaks_plain_http(
    registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    layer = busybox_layout.latest.layers[0].blob

    async def main() -> None:
        async with RegistryClient(HostsConfig(), backoff=0.01) as client:
            name, desc = await client.resolve(registry.ref(f"{REPO}:latest"))
            assert desc.digest == busybox_layout.latest.digest
            assert client._plain_hosts == {registry.host}
            [ep] = client._endpoints(parse_reference(name), "pull")
            assert ep.scheme == "http"
            got = bytearray()
            async with contextlib.aclosing(client.fetch_blob(name, desc_of(layer))) as chunks:
                async for chunk in chunks:
                    got += chunk
            assert bytes(got) == layer.data
        hosts = HostsConfig.from_dict({"hosts": {registry.host: {"plain_http": False}}})
        async with RegistryClient(hosts, backoff=0.01) as client:
            with pytest.raises(errdefs.Unavailable, match="speaks plain HTTP"):
                await client.resolve(registry.ref(f"{REPO}:latest"))

    asyncio.run(main())
