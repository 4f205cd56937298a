"""What each entry point imports: the heavy modules load only where they are used.

Each check runs in a fresh interpreter (this process has imported everything already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY_FOR_CLI = [
    "grpc",
    "rich",
    "google.protobuf",
    "importlib.metadata",
    "liner.client",
    "liner.run",
    "liner.progress",
    "liner_api",
    "linerd",
    "tarfile",
]


def _modules_after(code: str) -> set[str]:
    """The modules loaded once `code` ran (SystemExit included) in a new interpreter."""
    script = (
        "import json, sys\n"
        f"try:\n    exec({code!r})\nexcept SystemExit:\n    pass\n"
        "sys.stdout = sys.__stdout__\n"
        "print('\\n' + json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _cli(*args: str) -> str:
    return f"import sys\nfrom liner.cli import main\nsys.argv = ['liner', *{list(args)!r}]\nmain()"


@pytest.mark.parametrize("args", [(), ("--help",), ("--version",), ("images", "--help")])
def test_cli_help_and_version_import_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = _modules_after(_cli(*args))
    assert not {m for m in loaded if m.split(".")[0] in HEAVY_FOR_CLI or m in HEAVY_FOR_CLI}


def test_liner_version_loads_only_what_it_calls(tmp_path: Path) -> None:
    # No daemon there: the command fails to connect, after importing what it needs.
    loaded = _modules_after(_cli("-a", str(tmp_path / "none.sock"), "version"))
    assert "grpc" in loaded
    assert "liner_api.containerd.services.version.v1.version_pb2_grpc" in loaded
    for unwanted in ("rich", "liner.run", "liner.progress", "importlib.metadata", "tarfile"):
        assert unwanted not in loaded
    services = {m for m in loaded if m.startswith("liner_api.containerd.services.")}
    assert {m.split(".")[3] for m in services} <= {"version", "introspection"}
    # The result types of other areas (21 frozen dataclasses in all) stay unloaded.
    assert {m for m in loaded if m.startswith("liner.results.")} <= {"liner.results.system"}


@pytest.mark.parametrize("progress", ["quiet", "plain"])
def test_a_pull_without_a_live_display_leaves_rich_unloaded(tmp_path: Path, progress: str) -> None:
    # rich was a third of a scripted pull's start-up; only the terminal's live table uses it.
    loaded = _modules_after(
        _cli("-a", str(tmp_path / "none.sock"), "images", "pull", "--progress", progress, "x")
    )
    # A quiet pull needs no display at all (liner.progress and what it loads: ~9 ms).
    assert ("liner.progress" in loaded) == (progress == "plain")
    assert "rich" not in loaded


def test_image_documents_load_neither_daemon_code_nor_other_result_types() -> None:
    loaded = _modules_after(
        "import liner.images, liner.client, liner_common.platforms\n"
        "liner_common.platforms.host_platform()\n"
        "liner.client.Image, liner.client.Descriptor"
    )
    assert "liner.results.content" in loaded
    for unwanted in (
        "linerd.imagespec",
        "linerd.core.types",
        "liner.results.containers",
        "liner.results.snapshots",
        "liner_api.containerd.services.tasks.v1.tasks_pb2",
    ):
        assert unwanted not in loaded


def test_the_client_imports_no_daemon_module() -> None:
    # Not even lazily: a client-only install has no daemon dependencies to import them with.
    import ast

    client_dir = Path(__file__).resolve().parents[2] / "client"
    for path in client_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_module":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            for name in names:
                top = str(name).split(".")[0]
                assert top not in ("linerd", "sqlalchemy", "sqlite3", "httpx"), (path, name)


def test_client_result_types_resolve_from_liner_client() -> None:
    from liner import client
    from liner.results import containers, content, snapshots, system

    for module in (containers, content, snapshots, system):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and value.__module__ == module.__name__:
                assert getattr(client, name) is value


def test_package_names_still_resolve() -> None:
    import liner
    from liner import LinerClientError
    from liner.client import Client
    from liner.client import LinerClientError as FromClient

    assert liner.Client is Client
    assert LinerClientError is FromClient
    assert liner.__version__ == version("liner")


def test_installed_version_matches_importlib_metadata() -> None:
    from liner.version import installed_version

    assert installed_version() == version("liner")


def test_write_actions_match_the_proto() -> None:
    from liner import client
    from liner_api.containerd.services.content.v1 import content_pb2

    values = content_pb2.WriteAction
    assert (
        values.Value("STAT"),
        values.Value("WRITE"),
        values.Value("COMMIT"),
    ) == (client._STAT, client._WRITE, client._COMMIT)


def test_daemon_imports_no_pull_or_metrics_code_at_start_up() -> None:
    loaded = _modules_after("import linerd.main, linerd.server")
    for unwanted in (
        "h11",
        "prometheus_client",
        "linerd.pull",
        "linerd.push",
        "linerd.archive",
        "linerd.layers",
        "linerd.remotes.client",
        "zstandard",
    ):
        assert unwanted not in loaded


def test_daemon_process_tuning_keeps_rich_out_of_json_logging() -> None:
    code = (
        "import argparse, sys\n"
        "from linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format=None, config=None))\n"
        "import structlog\n"
        "assert sys.modules['rich'] is None\n"
        "main._tune_process(argparse.Namespace(log_format='console', config=None))\n"
    )
    loaded = _modules_after(code)
    assert "structlog" in loaded
    console = _modules_after(
        "import argparse\nfrom linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format='console', config=None))\n"
        "import structlog"
    )
    assert "rich" in console


def test_a_daemon_pull_leaves_out_httpx_and_layer_writing() -> None:
    # What the first pull imports stays for the daemon's lifetime.
    loaded = _modules_after(
        "import argparse\nfrom linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format=None, config=None))\n"
        "import linerd.pull, linerd.remotes.client, linerd.services.diff"
    )
    assert "h11" in loaded and "linerd.remotes.httpclient" in loaded
    # liner's own HTTP client: no httpx, httpcore, anyio, certifi, email or urllib.request
    for unwanted in (
        "httpx",
        "httpcore",
        "anyio",
        "certifi",
        "email",
        "urllib.request",
        "pygments",
        "tarfile",
        "linerd.diff.compare",
    ):
        assert unwanted not in loaded


def test_daemon_start_up_defers_importlib_metadata_and_leaves_out_the_cri() -> None:
    # SQLAlchemy imports importlib.metadata (email, zipfile, csv: ~1 MB kept for good); the
    # daemon's tuning defers it to the first attribute read, which still works.
    code = (
        "import argparse, sys\n"
        "from linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format=None, config=None))\n"
        "import linerd.main, linerd.server, linerd.log, linerd.metadata.db\n"
        "assert 'email' not in sys.modules and 'zipfile' not in sys.modules\n"
        "import linerd\n"
        "assert linerd.__version__\n"
        "assert 'email' not in sys.modules\n"
        "from sqlalchemy.util import compat\n"
        "assert compat.importlib_metadata.version('sqlalchemy')\n"
        "from importlib.metadata import version\n"
        "assert version('structlog')\n"
    )
    loaded = _modules_after(code)
    assert "email" in loaded  # loaded by the first read above, as a module should
    started = _modules_after(
        "import argparse\nfrom linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format=None, config=None))\n"
        "import linerd.main, linerd.server, linerd.log"
    )
    for unwanted in ("email", "zipfile", "csv", "pygments"):  # rich: blocked (None), above
        assert unwanted not in started
    assert not {m for m in started if m.startswith(("liner_api.runtime", "linerd.cri"))}


def test_cri_start_up_leaves_the_streaming_protocols_out() -> None:
    # SPDY, WebSocket and the streaming server (~0.75 MB) load at the first Exec, Attach or
    # PortForward.
    loaded = _modules_after("import linerd.cri.assembly")
    streaming = {m for m in loaded if m.startswith("linerd.cri.streaming.")}
    assert streaming == {"linerd.cri.streaming.handler", "linerd.cri.streaming.lookup"}


def test_the_zygote_module_imports_no_worker_code_before_its_main() -> None:
    # The zygote installs the lean loader (linerd.leancode) before the worker's imports.
    loaded = _modules_after("import linerd.diff.zygote")
    for unwanted in ("linerd.diff.apply", "linerd.diff.compression", "zstandard", "isal"):
        assert unwanted not in loaded


def test_daemon_unpack_code_loads_zstandard_at_its_first_use() -> None:
    tune = (
        "import argparse\nfrom linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format=None, config=None))\n"
        "import linerd.unpack, linerd.layers, linerd.diff.compression, linerd.diff.worker\n"
    )
    assert "zstandard.backend_c" not in _modules_after(tune)
    used = (
        "import io, zstandard\n"
        "from linerd.diff.compression import open_layer\n"
        "blob = zstandard.ZstdCompressor().compress(bytes(1024))\n"
        "layer = open_layer(io.BytesIO(blob), 'application/vnd.oci.image.layer.v1.tar+zstd')\n"
        "assert layer.read() == bytes(1024)\n"
    )
    assert "zstandard.backend_c" in _modules_after(tune + used)


def test_linerd_main_imports_nothing_before_its_lean_loader() -> None:
    # main() installs linerd.leancode first: what the module imports is loaded in full.
    loaded = _modules_after("import linerd.main")
    for unwanted in ("typing", "argparse", "dataclasses", "linerd.config", "linerd.leancode"):
        assert unwanted not in loaded


def test_daemon_tuning_defers_locale_protobufs_python_messages_and_sqlite_dialects() -> None:
    # locale's tables (read by argparse's gettext before the tuning), protobuf's pure-Python
    # message implementation (unused on upb) and the SQLite dialects other than pysqlite stay
    # out of a started daemon; each still works where something reads it.
    code = (
        "import sys\n"
        "from linerd import main\n"
        "args = main._parser().parse_args([])\n"
        "main._tune_process(args)\n"
        "import linerd.server, linerd.cri.assembly\n"
        "from google.protobuf.timestamp_pb2 import Timestamp\n"
        "from liner_api.runtime.v1 import api_pb2\n"
        "import datetime\n"
        "ts = Timestamp()\n"
        "ts.FromDatetime(datetime.datetime(2020, 1, 2))\n"
        "assert ts.ToDatetime().year == 2020\n"
        "msg = api_pb2.PodSandboxMetadata(name='p', uid='u')\n"
        "assert api_pb2.PodSandboxMetadata.FromString(msg.SerializeToString()) == msg\n"
        "assert 'name' in str(msg)\n"
        "from linerd.metadata.db import Database\n"
        "db = Database('sqlite://')\n"
        "assert db.run_sync(lambda conn: conn.exec_driver_sql('select 1').scalar()) == 1\n"
        "stubs = ['locale', 'google.protobuf.internal.python_message']\n"
        "stubs += [f'sqlalchemy.dialects.sqlite.{d}' for d in ('aiosqlite', 'pysqlcipher')]\n"
        "assert not [m for m in stubs if '__file__' in vars(sys.modules[m])], stubs\n"
        "import locale, subprocess\n"
        "assert subprocess.run(['echo', 'x'], capture_output=True, text=True).stdout == 'x\\n'\n"
        "assert locale.normalize('C') == 'C'\n"
        "assert '__file__' in vars(sys.modules['locale'])\n"
        "from sqlalchemy.dialects.sqlite import pysqlcipher\n"
        "assert pysqlcipher.dialect.driver == 'pysqlcipher'\n"
    )
    _modules_after(code)  # raises where an assertion fails
