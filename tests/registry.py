"""A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.

Modes:
- ``open``: no auth.
- ``htpasswd``: basic auth against a bcrypt htpasswd file made here (no apache2-utils needed).
- ``token``: distribution's ``auth: token`` with a small in-process token server (`TokenServer`)
  issuing ES256 JWTs. The registry trusts the self-signed certificate in ``rootcertbundle``; each
  JWT carries that certificate in its ``x5c`` header, which distribution 2.8 verifies against the
  bundle (the alternative, ``kid``, must be libtrust's key ID format; x5c avoids that).

Images are pushed with skopeo from an OCI layout directory (see `imagebuild`), an independent
producer, so the client under test never grades its own homework.

Usage::

    with Registry("htpasswd") as reg:
        reg.push_layout(layout_dir, "library/busybox:1", tag="latest")
        reg.host  # "127.0.0.1:PORT"
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

DOCKER_REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"

Mode = Literal["open", "htpasswd", "token"]


def free_port() -> int:
    """A port free right now on 127.0.0.1 (racy by nature; callers retry on bind failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """A docker token-auth server (GET /token, POST /token for refresh tokens) in a thread.

    Grants every requested scope to a known user with the right password (or refresh token);
    anonymous requests get pull-only scopes if ``anonymous_pull``, else nothing; a wrong password
    gets 401. ``hits`` counts token requests so tests can check a client's token cache.
    """

    users: dict[str, str]
    service: str = "liner-test-registry"
    issuer: str = "liner-test-issuer"
    anonymous_pull: bool = False
    expires_in: int = 300
    # identity (refresh) token -> username, for the OAuth2 POST flow.
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    hits: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "liner-test-token-signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def realm(self) -> str:
        assert self._httpd is not None, "token server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/token"

    def issue(self, subject: str, access: list[dict[str, Any]]) -> str:
        """A JWT distribution 2.8 accepts: ES256, x5c = [our cert], string aud."""
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS ES256 signatures are raw r||s, 32 bytes each, not DER.
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if user is None:
                actions = [a for a in actions if a == "pull"] if self.anonymous_pull else []
            if actions:
                access.append({"type": kind, "name": name, "actions": actions})
        return access

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, user: str | None, scopes: list[str], service: str) -> None:
                if service != server.service:
                    self._reply(400, {"error": "unknown service"})
                    return
                token = server.issue(user or "", server._grant(user, scopes))
                self._reply(
                    200,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": server.expires_in,
                        "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                    },
                )

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                header = self.headers.get("Authorization", "")
                with server._lock:
                    server.hits += 1
                    server.requests.append(
                        {"method": "GET", "query": query, "authorization": bool(header)}
                    )
                if url.path != "/token":
                    self._reply(404, {"error": "not found"})
                    return
                user: str | None = None
                if header:
                    if not header.startswith("Basic "):
                        self._reply(401, {"error": "basic auth expected"})
                        return
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        self._reply(401, {"error": "invalid credentials"})
                        return
                    user = name
                scopes = [s for v in query.get("scope", []) for s in v.split(" ")]
                self._answer(user, scopes, query.get("service", [""])[0])

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                with server._lock:
                    server.hits += 1
                    server.requests.append({"method": "POST", "query": form})
                grant = form.get("grant_type", [""])[0]
                user: str | None = None
                if grant == "refresh_token":
                    user = server.refresh_tokens.get(form.get("refresh_token", [""])[0])
                elif grant == "password":
                    name = form.get("username", [""])[0]
                    if server.users.get(name) == form.get("password", [""])[0]:
                        user = name
                if user is None:
                    self._reply(401, {"error": "invalid grant"})
                    return
                scopes = [s for v in form.get("scope", []) for s in v.split(" ")]
                self._answer(user, scopes, form.get("service", [""])[0])

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class Registry:
    """A `docker-registry` process on 127.0.0.1:<free port> with its own storage and config."""

    def __init__(
        self,
        mode: Mode = "open",
        *,
        username: str = "liner",
        password: str = "liner-secret",
        anonymous_pull: bool = False,
        workdir: Path | None = None,
        tls: bool = False,
    ) -> None:
        self.mode = mode
        self.tls = tls
        self.username = username
        self.password = password
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"liner-registry-{mode}-"))
        self.port = 0
        self.token_server: TokenServer | None = None
        if mode == "token":
            self.token_server = TokenServer(
                users={username: password}, anonymous_pull=anonymous_pull
            )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "registry.log"

    # -- addresses ----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry host part of references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_file(self) -> Path:
        """With ``tls=True``: the self-signed certificate (for 127.0.0.1 and localhost) to trust."""
        return self.workdir / "tls-cert.pem"

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None

    def _write_tls(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "liner-test-registry")])
        now = datetime.datetime.now(datetime.UTC)
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.workdir / "tls-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def ref(self, name: str) -> str:
        """``127.0.0.1:PORT/<name>``."""
        return f"{self.host}/{name}"

    @property
    def creds(self) -> str | None:
        return None if self.mode == "open" else f"{self.username}:{self.password}"

    # -- lifecycle ----------------------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.workdir / 'storage'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.tls:
            lines += [
                "  tls:",
                f"    certificate: {self.ca_file}",
                f"    key: {self.workdir / 'tls-key.pem'}",
            ]
        if self.mode == "htpasswd":
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(f"{self.username}:{hashed}\n")
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: liner-test",
                f"    path: {htpasswd}",
            ]
        elif self.mode == "token":
            assert self.token_server is not None
            bundle = self.workdir / "token-root.pem"
            bundle.write_bytes(self.token_server.cert_pem)
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token_server.realm}",
                f"    service: {self.token_server.service}",
                f"    issuer: {self.token_server.issuer}",
                f"    rootcertbundle: {bundle}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        if self.token_server is not None:
            self.token_server.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        if self.tls:
            self._write_tls()
        for _attempt in range(5):
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(self._config())
            log = self._log.open("ab")
            self._proc = subprocess.Popen(
                [DOCKER_REGISTRY, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            log.close()
            if self._wait_ready(timeout):
                return
            self._kill()
        raise RuntimeError(f"docker-registry did not start; log:\n{self.log_text()}")

    def restart(self, timeout: float = 15.0) -> None:
        """Stop the registry process and start it again on the same port (its clients' kept
        connections are closed by it)."""
        self._kill()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        log = self._log.open("ab")
        self._proc = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(self.workdir / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        if not self._wait_ready(timeout):
            raise RuntimeError(f"docker-registry did not restart; log:\n{self.log_text()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ctx = self._ssl_context()
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile: caller retries
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=ctx):
                    return True
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def stop(self) -> None:
        self._kill()
        if self.token_server is not None:
            self.token_server.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_text(errors="replace")[-4000:]
        return ""

    # -- content ------------------------------------------------------------------------------

    def push_layout(
        self,
        layout_dir: Path | str,
        dest: str,
        *,
        tag: str | None = None,
        format: Literal["oci", "v2s2"] | None = None,
        all_platforms: bool = True,
    ) -> str:
        """Copy ``oci:<layout_dir>[:tag]`` to ``<host>/<dest>`` with skopeo; returns the ref.

        ``tag`` picks the image in the layout by its ``org.opencontainers.image.ref.name``
        annotation (None: the layout must hold exactly one). ``format="v2s2"`` converts to
        Docker schema2 media types on the way (skopeo cannot convert an index: single images).
        """
        src = f"oci:{layout_dir}" + (f":{tag}" if tag else "")
        cmd = [SKOPEO, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
        if self.creds:
            cmd.append(f"--dest-creds={self.creds}")
        if format is not None:
            cmd.append(f"--format={format}")
        if all_platforms:
            cmd.append("--all")
        # Keep layers byte-identical (skopeo would otherwise be free to recompress).
        cmd += ["--preserve-digests"] if format is None else []
        cmd += [src, f"docker://{self.host}/{dest}"]
        env = dict(os.environ, HOME=str(self.workdir))  # no stray ~/.docker/config.json
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"skopeo copy failed ({proc.returncode}): {proc.stderr}\n"
                f"registry log:\n{self.log_text()}"
            )
        return self.ref(dest)

    def manifest_digest(self, repo_ref: str) -> str:
        """The digest skopeo sees for ``<repo>:<tag>`` (sha256 of the stored manifest bytes)."""
        cmd = [SKOPEO, "inspect", "--raw", "--tls-verify=false"]
        if self.creds:
            cmd.append(f"--creds={self.creds}")
        cmd.append(f"docker://{self.host}/{repo_ref}")
        env = dict(os.environ, HOME=str(self.workdir))
        raw = subprocess.run(cmd, capture_output=True, check=True, env=env, timeout=60).stdout
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    # -- raw pushes (no skopeo) ---------------------------------------------------------------

    def _auth_header(self, repo: str) -> dict[str, str]:
        if self.mode == "open":
            return {}
        basic = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if self.mode == "htpasswd":
            return {"Authorization": basic}
        assert self.token_server is not None
        query = urllib.parse.urlencode(
            {"service": self.token_server.service, "scope": f"repository:{repo}:pull,push"}
        )
        req = urllib.request.Request(
            f"{self.token_server.realm}?{query}", headers={"Authorization": basic}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return {"Authorization": "Bearer " + json.loads(resp.read())["token"]}

    def push_raw(
        self,
        repo: str,
        reference: str,
        manifest: bytes,
        media_type: str,
        blobs: Sequence[bytes] = (),
    ) -> str:
        """Upload ``blobs`` (monolithic) and PUT ``manifest`` as ``repo:reference``, by HTTP.

        For what skopeo 1.9 cannot read from an OCI layout: Docker media types (manifest
        lists, schema2 manifests as built, not converted) and hand-made manifests.
        Returns the manifest digest.
        """
        headers = self._auth_header(repo)
        for data in blobs:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            head = urllib.request.Request(
                f"{self.url}/v2/{repo}/blobs/{digest}", method="HEAD", headers=headers
            )
            try:
                with urllib.request.urlopen(head, timeout=10, context=self._ssl_context()):
                    continue  # already there
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            start = urllib.request.Request(
                f"{self.url}/v2/{repo}/blobs/uploads/", method="POST", headers=headers, data=b""
            )
            with urllib.request.urlopen(start, timeout=10, context=self._ssl_context()) as resp:
                location = urllib.parse.urljoin(self.url, resp.headers["Location"])
            sep = "&" if "?" in location else "?"
            put = urllib.request.Request(
                f"{location}{sep}digest={digest}",
                method="PUT",
                data=data,
                headers={**headers, "Content-Type": "application/octet-stream"},
            )
            urllib.request.urlopen(put, timeout=60, context=self._ssl_context()).close()
        put = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{reference}",
            method="PUT",
            data=manifest,
            headers={**headers, "Content-Type": media_type},
        )
        urllib.request.urlopen(put, timeout=10, context=self._ssl_context()).close()
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


CHUNK = 64 * 1024


@dataclass
class Served:
    path: str
    range: str | None
    status: int
    sent: int = 0
    peer: tuple[str, int] = ("", 0)  # the client's address: which connection asked


@dataclass
class ThrottlingProxy:
    """Forwards GET/HEAD to `upstream`, sending bodies in CHUNK pieces `delay` apart."""

    upstream: str  # host:port
    delay: float = 0.0
    served: list[Served] = field(default_factory=list)
    # Paths containing a key stop after their first chunk until its event is set.
    hold: dict[str, threading.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("accept", "range", "authorization", "user-agent")
                }
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                record = Served(
                    self.path, self.headers.get("Range"), resp.status, peer=self.client_address
                )
                proxy.served.append(record)
                body = b"" if self.command == "HEAD" else None
                length = resp.getheader("Content-Length")
                if length is None and body is None:
                    body = resp.read()
                    length = str(len(body))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                try:
                    if body is not None:
                        self.wfile.write(body)
                        return
                    gate = next((e for k, e in proxy.hold.items() if k in self.path), None)
                    while chunk := resp.read(CHUNK):
                        self.wfile.write(chunk)
                        record.sent += len(chunk)
                        if gate is not None:
                            self.wfile.flush()
                            gate.wait(120)
                        if proxy.delay:
                            time.sleep(proxy.delay)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    conn.close()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
