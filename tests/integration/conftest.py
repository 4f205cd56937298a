"""Registry fixtures: real `docker-registry` processes (session-scoped) holding busybox images.

Every registry fixture comes pre-loaded (pushed with skopeo) with the session's busybox layout:

    <reg.host>/library/busybox:latest        OCI manifest, gzip, 3 layers   (busybox_layout.latest)
    <reg.host>/library/busybox:zstd          OCI manifest, zstd layers      (busybox_layout.zstd)
    <reg.host>/library/busybox:uncompressed  OCI manifest, plain tar layers
    <reg.host>/library/busybox:multi         OCI index, amd64 + arm64/v8    (busybox_layout.multi)
    <reg.host>/library/busybox:v2s2          Docker schema2 conversion of :latest (same blobs)

The registries are shared by the whole session: push anything else under a repository name of
your own (``reg.push_layout(...)``/``reg.push_raw(...)``), never retag library/busybox.
``auth_registry`` wants basic credentials ``reg.username``/``reg.password``; ``token_registry``
the same credentials at its token server (``reg.token_server``, which counts ``hits``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_pods_support import cri_images, net  # noqa: F401 - the CRI pods' fixtures, likewise
from cri_support import cri, pause_image  # noqa: F401 - the CRI fixtures, for every module
from imagebuild import BusyboxLayout, build_busybox_layout
from registry import Registry

BUSYBOX_REPO = "library/busybox"


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> BusyboxLayout:
    """The busybox OCI layout, built once per session. Read-only: copy it to change it."""
    return build_busybox_layout(tmp_path_factory.mktemp("busybox-layout") / "layout")


def _loaded(mode: str, layout: BusyboxLayout, workdir: Path) -> Iterator[Registry]:
    reg = Registry(mode, workdir=workdir)  # type: ignore[arg-type]
    reg.start()
    try:
        for tag in BusyboxLayout.TAGS:
            reg.push_layout(layout.path, f"{BUSYBOX_REPO}:{tag}", tag=tag)
        reg.push_layout(layout.path, f"{BUSYBOX_REPO}:v2s2", tag="latest", format="v2s2")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registry(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """An open (no auth) registry on 127.0.0.1, plain HTTP."""
    yield from _loaded("open", busybox_layout, tmp_path_factory.mktemp("registry-open"))


@pytest.fixture(scope="session")
def auth_registry(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A registry with htpasswd basic auth (bcrypt)."""
    yield from _loaded("htpasswd", busybox_layout, tmp_path_factory.mktemp("registry-basic"))


@pytest.fixture(scope="session")
def token_registry(
    busybox_layout: BusyboxLayout, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A registry in distribution's token-auth mode, with its token server (no anonymous pull)."""
    yield from _loaded("token", busybox_layout, tmp_path_factory.mktemp("registry-token"))
