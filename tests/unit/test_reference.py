"""Image reference parsing and normalization (docker/containerd rules)."""

from __future__ import annotations

import pytest

from linerd import errdefs
from linerd.remotes.reference import Reference, normalize, parse, validate_digest

pytestmark = pytest.mark.unit

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("user/app:v1", "docker.io/user/app:v1"),
        ("quay.io/org/app", "quay.io/org/app:latest"),
        ("host:5000/a/b:tag", "host:5000/a/b:tag"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("127.0.0.1:5000/x/y", "127.0.0.1:5000/x/y:latest"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        ("[fe80::1]/app", "[fe80::1]/app:latest"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
        (f"busybox:1@{D}", f"docker.io/library/busybox:1@{D}"),
        (f"host:5000/a@{D}", f"host:5000/a@{D}"),
        ("a/b-c/d_e/f.g/h__i:T_a.g-1", "docker.io/a/b-c/d_e/f.g/h__i:T_a.g-1"),
        ("Example.COM/app", "Example.COM/app:latest"),
    ],
)
def test_normalize(ref: str, want: str) -> None:
    assert normalize(ref) == want
    # Normalization is idempotent.
    assert normalize(want) == want


def test_fields() -> None:
    r = parse(f"host:5000/a/b:tag@{D}")
    assert r == Reference("host:5000", "a/b", "tag", D)
    assert r.name == "host:5000/a/b"
    assert r.object == D  # the digest wins
    assert r.api_host == "host:5000"
    assert parse("busybox").object == "latest"
    assert parse("busybox").api_host == "registry-1.docker.io"
    assert parse(f"busybox@{D}").tag is None
    assert parse("x:5000/y").with_digest(D).digest == D


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("", "empty"),
        (" busybox", "white space"),
        ("busy box", "white space"),
        ("https://host/app", "scheme"),
        ("Busybox", "lowercase"),
        ("host:5000/App", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-bad", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox@sha256:abc", "want 64"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("busybox@sha256:" + "A" * 64, "lowercase hex"),
        ("busybox@", "invalid digest"),
        ("host:5000/", "no repository"),
        ("a//b", "invalid repository"),
        ("a/-b", "invalid repository"),
        ("a__-b", "invalid repository"),
        ("-host.com/app", "invalid registry host"),
        ("host.com:port/app", "invalid registry host"),
        ("a" * 64, "hexadecimal"),
        ("host.io/" + "a/" * 130 + "b", "longer than"),
    ],
)
def test_invalid(ref: str, fragment: str) -> None:
    with pytest.raises(errdefs.InvalidArgument) as info:
        parse(ref)
    assert fragment in str(info.value)


def test_validate_digest() -> None:
    assert validate_digest(D) == D
    assert validate_digest("sha512:" + "0" * 128)
    for bad in ("sha256", "sha256:", ":" + "a" * 64, "sha256:" + "a" * 63):
        with pytest.raises(errdefs.InvalidArgument):
            validate_digest(bad)
