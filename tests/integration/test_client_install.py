"""The client installs and runs alone: the package without its `daemon` extra, in a fresh
virtualenv, talks to a running linerd and never imports daemon code or its libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, Linerd

pytestmark = pytest.mark.integration

# What the package's build reads; copied so the build writes nothing into the checkout.
_SOURCES = ("pyproject.toml", "README.md", "api", "common", "daemon", "client")
_DAEMON_ONLY = ("sqlalchemy", "structlog", "zstandard", "isal", "httpx", "prometheus_client")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("client-only")
    source = base / "src"
    source.mkdir()
    for name in _SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # This checkout's pip installs into the new environment (no pip of its own to bootstrap);
    # the pip cache serves the wheels.
    installed = subprocess.run(
        [
            str(REPO / ".venv/bin/pip"),
            "--python",
            str(venv / "bin/python"),
            "install",
            "-q",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    return venv


def _run_cli(venv: Path, *args: str) -> tuple[int, str, list[str]]:
    """`liner ARGS` in the client-only environment: exit code, output, the modules loaded."""
    script = (
        "import json, sys\n"
        "from liner.cli import main\n"
        f"sys.argv = ['liner', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code or 0\n"
        "sys.stdout.flush()\n"
        "print('\\n' + json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=venv,  # not the checkout: nothing importable from the working directory
    )
    assert out.returncode == 0, out.stderr
    *lines, last = out.stdout.splitlines()
    result = json.loads(last)
    return result["code"], "\n".join(lines), result["modules"]


def _daemon_modules(modules: list[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in ("linerd", *_DAEMON_ONLY)}


def test_the_client_alone_runs_help_and_version(client_venv: Path, linerd: Linerd) -> None:
    python = str(client_venv / "bin/python")
    for module in _DAEMON_ONLY:
        found = subprocess.run(
            [python, "-c", f"import importlib.util; print(importlib.util.find_spec({module!r}))"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert found.stdout.strip() == "None", f"{module} was installed with the client"

    code, output, modules = _run_cli(client_venv, "--help")
    assert code == 0 and "Command line client for linerd" in output
    assert not _daemon_modules(modules)

    code, output, modules = _run_cli(client_venv, "-a", linerd.address, "version")
    assert code == 0, output
    assert "Server:" in output and "Client:" in output
    assert "grpc" in modules  # it did talk to the daemon
    assert not _daemon_modules(modules)

    # The console script too, as a user runs it.
    direct = subprocess.run(
        [str(client_venv / "bin/liner"), "-a", linerd.address, "version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert direct.returncode == 0 and "Server:" in direct.stdout, direct.stderr


def test_linerd_without_its_extra_says_what_to_install(client_venv: Path) -> None:
    started = subprocess.run(
        [str(client_venv / "bin/linerd"), "--root", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [started.stderr.strip()]  # one line
    assert "liner[daemon]" in started.stderr and "sqlalchemy" in started.stderr


def test_signing_without_its_extra_says_what_to_install(client_venv: Path, tmp_path: Path) -> None:
    # cryptography and PyNaCl are the `sign` extra: the base client stays small.
    generated = subprocess.run(
        [str(client_venv / "bin/liner"), "keys", "generate", str(tmp_path / "keys")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COSIGN_PASSWORD": "x"},
    )
    assert generated.returncode == 1
    assert "liner[sign]" in generated.stderr and len(generated.stderr.splitlines()) == 1
    assert not (tmp_path / "keys").exists()
