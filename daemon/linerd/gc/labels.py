"""The labels through which content and snapshots reference each other, as containerd names them.

The garbage collector (`linerd.gc.collector`) follows `containerd.io/gc.ref.content*` and
`containerd.io/gc.ref.snapshot.<snapshotter>*` labels from the roots (images, containers,
leases) and removes what none reaches; a lease labelled `containerd.io/gc.expire` ends at
that time. Pulls, imports and unpacks build these labels here, so every image in the store
is linked alike: index → manifests (`m.<i>`), manifest → config and layers (`config`,
`l.<i>`), config → the top snapshot of its unpacked layers. ctr and containerd's own
collector read the same labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from liner_common.labels import GC_EXPIRE as EXPIRE

ROOT = "containerd.io/gc.root"
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."
# Not followed by the collector, but set with them: a layer's diff ID, and the repositories
# a blob came from (a push mounts it from one of them).
UNCOMPRESSED = "containerd.io/uncompressed"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source."


def has_gc_refs(labels: Mapping[str, str]) -> bool:
    """Do these labels reference anything the collector follows (collector.label_refs)?"""
    for key in labels:
        if key == CONTENT_REF or key.startswith(CONTENT_REF + "."):
            return True
        if key.startswith(SNAPSHOT_REF) and key[len(SNAPSHOT_REF) :].split("/", 1)[0]:
            return True
    return False


def index_refs(manifests: Iterable[str]) -> dict[str, str]:
    """An index's (or a manifest list's) references to its manifests' digests."""
    return {f"{CONTENT_REF}.m.{i}": digest for i, digest in enumerate(manifests)}


def manifest_refs(config: str, layers: Iterable[str]) -> dict[str, str]:
    """A manifest's references to its config and layers' digests."""
    refs = {f"{CONTENT_REF}.config": config}
    refs.update({f"{CONTENT_REF}.l.{i}": digest for i, digest in enumerate(layers)})
    return refs


def snapshot_ref(snapshotter: str, key: str) -> dict[str, str]:
    """A config's reference to the snapshot its layers were unpacked to (the top chain ID)."""
    return {f"{SNAPSHOT_REF}{snapshotter}": key}


def expire_after(lifetime: timedelta, now: datetime | None = None) -> dict[str, str]:
    """A lease's label ending it `lifetime` from `now` (RFC 3339, UTC, as containerd writes it)."""
    at = (now or datetime.now(UTC)) + lifetime
    return {EXPIRE: at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def source_key(host: str) -> str:
    """The label naming the repositories of registry `host` a blob came from (port left out,
    as containerd does)."""
    return DISTRIBUTION_SOURCE + host.split(":")[0]


def field_paths(labels: Mapping[str, str]) -> list[str]:
    """The update paths (`labels.<key>`) that set exactly these labels."""
    return [f"labels.{key}" for key in labels]
