"""The local services' rule (linerd/local/__init__.py): nothing there imports grpc or
SQLAlchemy. Checked in a fresh interpreter, where nothing else loaded them first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

KINDS = ("namespaces", "leases", "content", "images", "containers", "snapshots", "tasks")


def test_local_services_import_neither_grpc_nor_sqlalchemy() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import linerd.local.{kind}\n" for kind in KINDS)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    assert {m.split(".")[0] for m in loaded} & {"grpc", "sqlalchemy"} == set()
