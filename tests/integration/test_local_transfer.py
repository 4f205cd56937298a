"""The local Transfer service without gRPC, called as the CRI will call it: namespace k8s.io,
no request context. It must give what the Transfer API gives: image events, pull metrics,
the GC scheduled (after a pull that changed a record or failed), the image unpacked and
labelled for the collector."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagebuild import BusyboxLayout
from registry import Registry

from liner_api.containerd.events import image_pb2 as image_events
from linerd.assembly import Core, build_core
from linerd.config import Config
from linerd.content.documents import read_image
from linerd.errdefs import NotFound
from linerd.events import Exchange
from linerd.local.transfer import LocalTransfer, build
from linerd.metrics import Metrics
from linerd.remotes.hosts import HostsConfig

pytestmark = pytest.mark.integration

NAMESPACE = "k8s.io"


class _Recorded(Exchange):
    """The real exchange, remembering what was published (topic, namespace, payload)."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, str, bytes]] = []

    def publish(self, namespace: str, topic: str, type_url: str, payload: bytes) -> None:
        self.published.append((namespace, topic, payload))
        super().publish(namespace, topic, type_url, payload)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[Core, Config]]:
    config = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    for directory in (config.root, config.state):
        Path(directory).mkdir(mode=0o711)
    built = build_core(config, lambda: HostsConfig.from_dict({}), Metrics())
    built.events = _Recorded()
    yield built, config
    built.db.close()


def _transfer(c: Core, config: Config, metrics: Metrics) -> LocalTransfer:
    """The local Transfer service over `c`'s stores, as the daemon builds it."""
    transfer, _ = build(
        c.content,
        c.images,
        c.leases,
        c.snapshots,
        c.default_snapshotter,
        c.gc,
        c.events,
        metrics,
        lambda: HostsConfig.from_dict({}),
        Path(config.state) / "mnt",
        Path(config.root) / "snapshots",
    )
    return transfer


def _counted(metrics: Metrics, outcome: str) -> float:
    line = f'liner_pulls_total{{outcome="{outcome}"}}'
    for text in metrics.render().decode().splitlines():
        if text.startswith(line):
            return float(text.split()[-1])
    return 0.0


def test_pull_from_a_second_front_door(
    core: tuple[Core, Config], registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    c, config = core
    events = c.events
    assert isinstance(events, _Recorded)
    metrics = Metrics()
    scheduled: list[None] = []
    schedule = c.gc.schedule
    c.gc.schedule = lambda: (scheduled.append(None), schedule())[1]  # type: ignore[method-assign]
    ref = registry.ref("library/busybox:latest")

    async def run() -> None:
        transfer = _transfer(c, config, metrics)
        first = await transfer.pull(NAMESPACE, ref, plain_http=True)
        assert first.created and first.image.name == ref and first.fetched > 0
        # A new record references all the pull's lease held: nothing to collect (nor does
        # containerd's pull collect).
        assert scheduled == []
        assert first.image.target.digest == busybox_layout.latest.manifest.digest
        # What the pull read of the image is what reading it back from the store gives (the
        # CRI takes it instead of reading the manifest and config again).
        assert first.platform_image == await read_image(c.content, NAMESPACE, first.image.target)
        config_info = await c.content.info(NAMESPACE, busybox_layout.latest.config.digest)
        top = config_info.labels[f"containerd.io/gc.ref.snapshot.{c.default_snapshotter}"]
        await c.snapshots[c.default_snapshotter].stat(NAMESPACE, top)

        again = await transfer.pull(NAMESPACE, ref, plain_http=True)
        assert not again.created and again.fetched == 0
        assert len(scheduled) == 1  # the record's old target may be garbage now

        with pytest.raises(NotFound):
            await transfer.pull(NAMESPACE, registry.ref("library/busybox:absent"), plain_http=True)

    asyncio.run(run())
    assert [(ns, topic) for ns, topic, _ in events.published] == [
        (NAMESPACE, "/images/create"),
        (NAMESPACE, "/images/update"),
    ]
    created = image_events.ImageCreate.FromString(events.published[0][2])
    assert created.name == ref
    assert (_counted(metrics, "success"), _counted(metrics, "failure")) == (2.0, 1.0)
    assert len(scheduled) == 2  # and after the failed one: its lease ended


def test_a_config_stored_over_present_layers_is_labelled_with_its_snapshot(
    core: tuple[Core, Config], registry: Registry, busybox_layout: BusyboxLayout
) -> None:
    """A config fetched again (its record gone) while its layers' snapshots exist gets its
    snapshot label in the transaction that records it; the label is the same as an unpack
    gives it."""
    c, config = core
    ref = registry.ref("library/busybox:latest")
    key = f"containerd.io/gc.ref.snapshot.{c.default_snapshotter}"
    digest = busybox_layout.latest.config.digest

    async def run() -> None:
        transfer = _transfer(c, config, Metrics())
        await transfer.pull(NAMESPACE, ref, plain_http=True)
        top = (await c.content.info(NAMESPACE, digest)).labels[key]
        await c.snapshots[c.default_snapshotter].stat(NAMESPACE, top)
        await c.content.delete(NAMESPACE, digest)  # the record only: the snapshot stays
        relabelled: list[str] = []
        change_labels = c.content.change_labels

        async def counted(namespace, digest_, change):  # type: ignore[no-untyped-def]
            relabelled.append(digest_)
            return await change_labels(namespace, digest_, change)

        c.content.change_labels = counted  # type: ignore[method-assign]
        again = await transfer.pull(NAMESPACE, ref, plain_http=True)
        assert again.fetched == busybox_layout.latest.config.size  # the config, fetched again
        assert (await c.content.info(NAMESPACE, digest)).labels[key] == top
        assert digest not in relabelled  # no transaction of its own after the unpack

    asyncio.run(run())
