"""containers-registries.d parsing and lookup, and the lookaside readers (file://, http://)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from linerd.policy import PolicyError, load_dir, parse_files
from linerd.policy.lookaside import LookasideError, fetch_signatures
from linerd.policy.refs import from_pulled
from linerd.policy.registriesd import lookaside_url

pytestmark = pytest.mark.unit

D = "sha256:" + "c" * 64


def test_yaml_read_with_comments_quotes_and_empty_sections() -> None:
    config = parse_files(
        [
            (
                "/d/a.yaml",
                "# comment\n"
                "default-docker:\n"
                "  lookaside: file:///var/sigs  # trailing\n"
                "docker:\n"
                "  '127.0.0.1:5000':\n"
                "    use-sigstore-attachments: true\n"
                "  registry.example.com:5000/ns:\n"
                '    sigstore: "https://sigs.example.com/a#b"\n'
                "  empty.example.com:\n",
            )
        ]
    )
    assert config.default_docker is not None
    assert config.default_docker.lookaside == "file:///var/sigs"
    assert config.docker["127.0.0.1:5000"].use_sigstore_attachments is True
    assert config.docker["registry.example.com:5000/ns"].lookaside == "https://sigs.example.com/a#b"
    assert config.docker["empty.example.com"].lookaside is None


@pytest.mark.parametrize("text", ["a: [1\n", "a:\n\tb: 1\n", "a: 1\n---\nb: 2\n", "- 1\n"])
def test_invalid_yaml_refused_in_one_line(text: str) -> None:
    with pytest.raises(PolicyError, match=r"/d/bad\.yaml") as raised:
        parse_files([("/d/bad.yaml", text)])
    assert "\n" not in str(raised.value)


def test_most_specific_scope_with_fall_through() -> None:
    config = parse_files(
        [
            (
                "/d/a.yaml",
                "default-docker:\n  lookaside: file:///default\n"
                "docker:\n"
                "  example.com:\n    lookaside: https://host.example/sigs\n"
                "    use-sigstore-attachments: true\n"
                "  example.com/ns/app:\n    lookaside-staging: file:///staging\n"
                "    use-sigstore-attachments: false\n",
            ),
            ("/d/b.yaml", "docker:\n  example.com/ns:\n    sigstore: file:///old-name\n"),
        ]
    )
    app = from_pulled("example.com/ns/app:v1")
    # The repository's section has no read URL: the namespace's (old key name) is next.
    assert config.lookaside_base(app) == "file:///old-name"
    assert config.lookaside_base(app, write=True) == "file:///staging"
    assert config.use_sigstore_attachments(app) is False
    other = from_pulled("example.com/x:v1")
    assert config.lookaside_base(other) == "https://host.example/sigs"
    assert config.use_sigstore_attachments(other) is True
    assert config.lookaside_base(from_pulled("quay.io/x:1")) == "file:///default"
    assert config.use_sigstore_attachments(from_pulled("quay.io/x:1")) is False
    assert parse_files([]).lookaside_base(app) is None


def test_conflicts_and_bad_values_refused() -> None:
    with pytest.raises(
        PolicyError, match=r"/d/b.yaml: \"docker\" scope 'x.io' is also defined in /d/a.yaml"
    ):
        parse_files([("/d/a.yaml", "docker:\n  x.io:\n"), ("/d/b.yaml", "docker:\n  x.io:\n")])
    with pytest.raises(PolicyError, match='default-docker" is also defined'):
        parse_files([("/a.yaml", "default-docker:\n"), ("/b.yaml", "default-docker:\n")])
    with pytest.raises(PolicyError, match="only file://, http:// and https://"):
        parse_files([("/a.yaml", "docker:\n  x.io:\n    lookaside: ftp://x\n")])
    with pytest.raises(PolicyError, match="true or false"):
        parse_files([("/a.yaml", "docker:\n  x.io:\n    use-sigstore-attachments: maybe\n")])
    with pytest.raises(PolicyError, match=r"/a\.yaml: \"docker\" must map scopes"):
        parse_files([("/a.yaml", "docker: [x]\n")])


def test_load_dir(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("docker:\n  x.io:\n    lookaside: file:///s\n")
    (tmp_path / "ignored.yml").write_text("not: [yaml we read]\n")
    assert load_dir(tmp_path).lookaside_base(from_pulled("x.io/a:1")) == "file:///s"
    assert load_dir(tmp_path / "missing").docker == {}


def test_lookaside_url_layout() -> None:
    ref = from_pulled("example.com:5000/ns/app:v1")
    assert (
        lookaside_url("https://s.example/base/", ref, D, 1)
        == f"https://s.example/base/ns/app@sha256={'c' * 64}/signature-1"
    )


def test_file_lookaside_reads_until_missing(tmp_path: Path) -> None:
    ref = from_pulled("example.com/ns/app:v1")
    sigdir = tmp_path / f"ns/app@sha256={'c' * 64}"
    sigdir.mkdir(parents=True)
    (sigdir / "signature-1").write_bytes(b"one")
    (sigdir / "signature-2").write_bytes(b"two")
    (sigdir / "signature-4").write_bytes(b"after a gap: never read")
    got = asyncio.run(fetch_signatures(f"file://{tmp_path}", ref, D))
    assert got == [b"one", b"two"]
    assert asyncio.run(fetch_signatures(f"file://{tmp_path}/none", ref, D)) == []


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        code, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The client stops reading an oversized body, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, tuple[int, dict[str, str], bytes]]]]:
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    handler = type("H", (_Handler,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_lookaside(
    http_server: tuple[str, dict[str, tuple[int, dict[str, str], bytes]]],
) -> None:
    base, routes = http_server
    ref = from_pulled("example.com/ns/app:v1")
    prefix = f"/sigs/ns/app@sha256={'c' * 64}"
    routes[f"{prefix}/signature-1"] = (200, {}, b"one")
    routes[f"{prefix}/signature-2"] = (302, {"Location": f"{prefix}/moved"}, b"")
    routes[f"{prefix}/moved"] = (200, {}, b"two")
    assert asyncio.run(fetch_signatures(f"{base}/sigs", ref, D)) == [b"one", b"two"]

    routes[f"{prefix}/signature-2"] = (302, {"Location": "http://127.0.0.2:1/elsewhere"}, b"")
    with pytest.raises(LookasideError, match="redirects to another origin"):
        asyncio.run(fetch_signatures(f"{base}/sigs", ref, D))

    routes[f"{prefix}/signature-2"] = (500, {}, b"")
    with pytest.raises(LookasideError, match="HTTP 500"):
        asyncio.run(fetch_signatures(f"{base}/sigs", ref, D))

    routes[f"{prefix}/signature-2"] = (200, {}, b"x" * ((4 << 20) + 1))
    with pytest.raises(LookasideError, match="larger than"):
        asyncio.run(fetch_signatures(f"{base}/sigs", ref, D))
