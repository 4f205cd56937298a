from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_daemon_reports_the_version_pyproject_declares() -> None:
    import linerd

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert linerd.__version__ == version("liner") == declared


def test_linerd_version_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "linerd.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"linerd {version('liner')}"


def test_registry_requests_carry_the_same_version() -> None:
    from linerd.remotes import RegistryClient

    assert RegistryClient()._user_agent == f"liner/{version('liner')}"
