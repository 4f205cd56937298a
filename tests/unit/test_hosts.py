"""Per-registry hosts configuration: mirrors, TLS, credentials, plain HTTP, hosts.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from linerd import errdefs
from linerd.remotes.auth import parse_www_authenticate
from linerd.remotes.hosts import Credentials, HostsConfig, TLSConfig

pytestmark = pytest.mark.unit


def test_default_endpoints() -> None:
    hosts = HostsConfig()
    [hub] = hosts.endpoints_for("docker.io")
    assert hub.base_url == "https://registry-1.docker.io/v2"
    assert hub.host == "registry-1.docker.io"
    assert hub.capabilities == {"pull", "resolve", "push"}
    assert hub.tls == TLSConfig()  # verification on
    assert not hub.tls.skip_verify
    assert hub.credentials is None
    [local] = hosts.endpoints_for("127.0.0.1:5000")
    assert local.base_url == "https://127.0.0.1:5000/v2"
    assert local.url("a/manifests/latest") == "https://127.0.0.1:5000/v2/a/manifests/latest"


def test_plain_http_override() -> None:
    [ep] = HostsConfig(plain_http=True).endpoints_for("127.0.0.1:5000")
    assert ep.base_url == "http://127.0.0.1:5000/v2"
    hosts = HostsConfig.from_dict({"plain_http": False}, plain_http=True)
    assert hosts.endpoints_for("x:1")[0].scheme == "http"
    # An explicit https:// server stays https even with --plain-http.
    hosts = HostsConfig.from_dict({"hosts": {"x:1": {"server": "https://x:1"}}}, plain_http=True)
    assert hosts.endpoints_for("x:1")[0].scheme == "https"
    # Per-registry plain_http.
    hosts = HostsConfig.from_dict({"hosts": {"x:1": {"plain_http": True}}})
    assert hosts.endpoints_for("x:1")[0].scheme == "http"
    assert hosts.endpoints_for("y:1")[0].scheme == "https"


def test_mirrors_then_server_with_tls_and_credentials() -> None:
    hosts = HostsConfig.from_dict(
        {
            "hosts": {
                "docker.io": {
                    "server": "https://registry-1.docker.io",
                    "host": {
                        "https://mirror-a:5000": {
                            "capabilities": ["pull", "resolve"],
                            "ca": "/etc/liner/a.pem",
                            "client": [["/c.pem", "/c.key"]],
                            "header": {"X-A": "1", "X-B": ["2", "3"]},
                        },
                        "mirror-b:5001/prefix": {
                            "capabilities": ["pull"],
                            "skip_verify": True,
                            "override_path": True,
                        },
                    },
                }
            },
            "auths": {
                "mirror-a:5000": {"username": "u", "password": "p"},
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},  # hub:secret
                "docker.io": {"identitytoken": "tok"},
            },
        }
    )
    eps = hosts.endpoints_for("docker.io")
    assert [e.base_url for e in eps] == [
        "https://mirror-a:5000/v2",
        "https://mirror-b:5001/prefix",
        "https://registry-1.docker.io/v2",
    ]
    a, b, server = eps
    assert a.is_mirror and b.is_mirror and not server.is_mirror
    assert a.tls == TLSConfig(ca=("/etc/liner/a.pem",), client=(("/c.pem", "/c.key"),))
    assert a.headers == (("X-A", "1"), ("X-B", "2"), ("X-B", "3"))
    assert a.credentials == Credentials("u", "p")
    assert b.tls.skip_verify and b.credentials is None
    # docker.io credentials serve registry-1.docker.io; never the mirrors.
    assert server.credentials == Credentials(identitytoken="tok")
    assert hosts.credentials_for("index.docker.io") == Credentials("hub", "secret")
    assert [e.host for e in hosts.endpoints_for("docker.io", "resolve")] == [
        "mirror-a:5000",
        "registry-1.docker.io",
    ]
    assert len(hosts.endpoints_for("docker.io", "push")) == 1


def test_secrets_stay_out_of_repr() -> None:
    creds = Credentials("user", "hunter2", "idtok")
    assert "hunter2" not in repr(creds) and "idtok" not in repr(creds)
    hosts = HostsConfig(auths={"h:1": creds})
    assert "hunter2" not in repr(hosts.endpoints_for("h:1"))


def test_hosts_toml_directory(tmp_path: Path) -> None:
    d = tmp_path / "certs.d" / "registry.example:5000"
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        'server = "https://registry.example:5000"\n'
        'ca = "server-ca.pem"\n'
        '[host."https://mirror.example"]\n'
        'capabilities = ["pull", "resolve"]\n'
        'ca = ["ca1.pem", "/abs/ca2.pem"]\n'
        'client = ["client.pem", "client.key"]\n'
        "skip_verify = false\n"
        '[host."https://mirror.example".header]\n'
        'x-custom = "yes"\n'
    )
    default = tmp_path / "certs.d" / "_default"
    default.mkdir()
    (default / "hosts.toml").write_text('[host."http://catchall:5000"]\ncapabilities = ["pull"]\n')
    hosts = HostsConfig.from_dict({"config_path": str(tmp_path / "certs.d")})
    mirror, server = hosts.endpoints_for("registry.example:5000")
    assert mirror.base_url == "https://mirror.example/v2"
    assert mirror.tls.ca == (str(d / "ca1.pem"), "/abs/ca2.pem")
    assert mirror.tls.client == ((str(d / "client.pem"), str(d / "client.key")),)
    assert mirror.headers == (("x-custom", "yes"),)
    assert server.tls.ca == (str(d / "server-ca.pem"),)
    assert server.base_url == "https://registry.example:5000/v2"
    other = hosts.endpoints_for("other.example")
    assert [e.base_url for e in other] == ["http://catchall:5000/v2", "https://other.example/v2"]
    # A registry in the daemon config wins over the directory.
    hosts.registries["registry.example:5000"] = hosts.registry("nothing-here")
    assert len(hosts.endpoints_for("registry.example:5000")) == 2  # _default mirror + server


@pytest.mark.parametrize(
    "data",
    [
        {"bogus": 1},
        {"plain_http": "yes"},
        {"hosts": {"h": {"server": 5}}},
        {"hosts": {"h": {"unknown": 1}}},
        {"hosts": {"h": {"host": {"https://m": {"capabilities": ["fly"]}}}}},
        {"hosts": {"h": {"host": {"https://m": {"skip_verify": "no"}}}}},
        {"hosts": {"h": {"host": {"https://m": {"client": 3}}}}},
        {"auths": {"h": {"username": "u", "pasword": "p"}}},
        {"auths": {"h": {"auth": "!!!not base64"}}},
    ],
)
def test_invalid_config(data: dict) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        HostsConfig.from_dict(data)


def test_invalid_urls() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="credentials"):
        HostsConfig.from_dict({"hosts": {"h": {"server": "https://u:p@h"}}}).endpoints_for("h")
    with pytest.raises(errdefs.InvalidArgument, match="scheme"):
        HostsConfig.from_dict({"hosts": {"h": {"server": "ftp://h"}}}).endpoints_for("h")


def test_auth_secret_not_echoed() -> None:
    with pytest.raises(errdefs.InvalidArgument) as info:
        HostsConfig.from_dict({"auths": {"h": {"auth": "s3cr3t!!"}}})
    assert "s3cr3t" not in str(info.value)


def test_parse_www_authenticate() -> None:
    [c] = parse_www_authenticate(
        ['Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"']
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    basic, bearer = parse_www_authenticate(['Basic realm="x \\"y\\"", Bearer realm=r,error=e'])
    assert basic.scheme == "basic" and basic.params == {"realm": 'x "y"'}
    assert bearer.params == {"realm": "r", "error": "e"}
    assert parse_www_authenticate(["Basic"])[0].scheme == "basic"
    assert parse_www_authenticate([""]) == []
