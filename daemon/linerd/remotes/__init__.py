"""The OCI distribution client: references, per-registry hosts configuration, auth, fetching.

from linerd.remotes import HostsConfig, RegistryClient, parse_reference

async with RegistryClient(HostsConfig.from_dict(config.registry)) as client:
    name, desc = await client.resolve("busybox")
    manifest = await client.fetch_manifest(name, desc)
    async with contextlib.aclosing(client.fetch_blob(name, layer)) as chunks:
        async for chunk in chunks: ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linerd.remotes.auth import Authorizer, Challenge, parse_www_authenticate
    from linerd.remotes.client import (
        ACCEPT_MANIFESTS,
        MANIFEST_MEDIA_TYPES,
        MAX_MANIFEST_SIZE,
        MEDIA_TYPE_DOCKER_LIST,
        MEDIA_TYPE_DOCKER_MANIFEST,
        MEDIA_TYPE_OCI_INDEX,
        MEDIA_TYPE_OCI_MANIFEST,
        RegistryClient,
        hasher_for,
    )
    from linerd.remotes.hosts import (
        Credentials,
        Endpoint,
        HostEntry,
        HostsConfig,
        RegistryHosts,
        TLSConfig,
    )
    from linerd.remotes.reference import Reference, normalize, validate_digest
    from linerd.remotes.reference import parse as parse_reference

# Names are loaded on first use: importing linerd.remotes.hosts or .reference (the config
# does, at start-up) must not import the HTTP client (httpclient, h11), which only pulls and
# pushes need.
_WHERE = {
    **dict.fromkeys(("Authorizer", "Challenge", "parse_www_authenticate"), "auth"),
    **dict.fromkeys(
        (
            "ACCEPT_MANIFESTS",
            "MANIFEST_MEDIA_TYPES",
            "MAX_MANIFEST_SIZE",
            "MEDIA_TYPE_DOCKER_LIST",
            "MEDIA_TYPE_DOCKER_MANIFEST",
            "MEDIA_TYPE_OCI_INDEX",
            "MEDIA_TYPE_OCI_MANIFEST",
            "RegistryClient",
            "hasher_for",
        ),
        "client",
    ),
    **dict.fromkeys(
        ("Credentials", "Endpoint", "HostEntry", "HostsConfig", "RegistryHosts", "TLSConfig"),
        "hosts",
    ),
    **dict.fromkeys(("Reference", "normalize", "validate_digest"), "reference"),
}


def __getattr__(name: str) -> Any:
    if name == "parse_reference":
        return importlib.import_module("linerd.remotes.reference").parse
    if name in _WHERE:
        return getattr(importlib.import_module(f"linerd.remotes.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCEPT_MANIFESTS",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "MEDIA_TYPE_DOCKER_LIST",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "Authorizer",
    "Challenge",
    "Credentials",
    "Endpoint",
    "HostEntry",
    "HostsConfig",
    "Reference",
    "RegistryClient",
    "RegistryHosts",
    "TLSConfig",
    "hasher_for",
    "normalize",
    "parse_reference",
    "parse_www_authenticate",
    "validate_digest",
]
