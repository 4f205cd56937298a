"""Shared fixtures: a real linerd on a private root, state and socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import Linerd


@pytest.fixture
def linerd(tmp_path: Path) -> Iterator[Linerd]:
    daemon = Linerd(tmp_path)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def channel(linerd: Linerd) -> Iterator[grpc.Channel]:
    with linerd.channel() as ch:
        yield ch
