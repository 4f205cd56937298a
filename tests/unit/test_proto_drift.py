"""Checks for the generated containerd API bindings in api/liner_api.

* the committed generated code matches ``python api/generate.py`` output;
* every generated module imports;
* a handful of wire facts hold;
* when Debian's containerd sources are installed, every message, enum and
  service matches the upstream 1.6 definitions field by field (and, when
  golang-github-containerd-cgroups-dev is installed too, so does the cgroup v1
  metrics payload).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
API_DIR = REPO_ROOT / "api"
GENERATED_DIR = API_DIR / "liner_api"

GOCODE = Path("/usr/share/gocode/src")
UPSTREAM = GOCODE / "github.com/containerd/containerd"
UPSTREAM_PROTOS = (
    "api/events/container.proto",
    "api/events/content.proto",
    "api/events/image.proto",
    "api/events/namespace.proto",
    "api/events/snapshot.proto",
    "api/events/task.proto",
    "api/services/containers/v1/containers.proto",
    "api/services/content/v1/content.proto",
    "api/services/diff/v1/diff.proto",
    "api/services/events/v1/events.proto",
    "api/services/images/v1/images.proto",
    "api/services/introspection/v1/introspection.proto",
    "api/services/leases/v1/leases.proto",
    "api/services/namespaces/v1/namespace.proto",
    "api/services/snapshots/v1/snapshots.proto",
    "api/services/tasks/v1/tasks.proto",
    "api/services/version/v1/version.proto",
    "api/types/descriptor.proto",
    "api/types/metrics.proto",
    "api/types/mount.proto",
    "api/types/platform.proto",
    "api/types/task/task.proto",
    "runtime/v2/runc/options/oci.proto",
)
# The cgroup v1 metrics payload carried in containerd.types.Metric.data lives in
# containerd's cgroups library (Debian: golang-github-containerd-cgroups-dev).
CGROUPS_METRICS = "github.com/containerd/cgroups/stats/v1/metrics.proto"
CGROUPS_PACKAGE = ".io.containerd.cgroups.v1."

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TS = ".google.protobuf.Timestamp"

# Wire-compatible additions made in containerd 1.7 (api as of v1.7.20) on top of
# the 1.6.20 sources used as the reference: full message name ->
# (number, name, type, label, type_name, in_oneof) of each added field.
CONTAINERD_1_7_FIELDS: dict[str, tuple[tuple[object, ...], ...]] = {
    ".containerd.events.SnapshotPrepare": ((5, "snapshotter", _F.TYPE_STRING, _OPT, "", False),),
    ".containerd.events.SnapshotCommit": ((5, "snapshotter", _F.TYPE_STRING, _OPT, "", False),),
    ".containerd.events.SnapshotRemove": ((5, "snapshotter", _F.TYPE_STRING, _OPT, "", False),),
    ".containerd.services.containers.v1.Container": (
        (11, "sandbox", _F.TYPE_STRING, _OPT, "", False),
    ),
    ".containerd.services.diff.v1.ApplyRequest": ((4, "sync_fs", _F.TYPE_BOOL, _OPT, "", False),),
    ".containerd.services.diff.v1.DiffRequest": (
        (6, "source_date_epoch", _F.TYPE_MESSAGE, _OPT, _TS, False),
    ),
    ".containerd.services.images.v1.CreateImageRequest": (
        (2, "source_date_epoch", _F.TYPE_MESSAGE, _OPT, _TS, False),
    ),
    ".containerd.services.images.v1.UpdateImageRequest": (
        (3, "source_date_epoch", _F.TYPE_MESSAGE, _OPT, _TS, False),
    ),
    ".containerd.services.introspection.v1.ServerResponse": (
        (2, "pid", _F.TYPE_UINT64, _OPT, "", False),
        (3, "pidns", _F.TYPE_UINT64, _OPT, "", False),
        (
            4,
            "deprecations",
            _F.TYPE_MESSAGE,
            _REP,
            ".containerd.services.introspection.v1.DeprecationWarning",
            False,
        ),
    ),
}
CONTAINERD_1_7_MESSAGES: dict[str, tuple[object, ...]] = {
    ".containerd.services.introspection.v1.DeprecationWarning": (
        "message",
        False,
        (
            (1, "id", _F.TYPE_STRING, _OPT, "", False),
            (2, "message", _F.TYPE_STRING, _OPT, "", False),
            (3, "last_occurrence", _F.TYPE_MESSAGE, _OPT, _TS, False),
        ),
    ),
}

pytestmark = pytest.mark.unit

if importlib.util.find_spec("liner_api") is None:  # not installed / no PYTHONPATH
    sys.path.insert(0, str(API_DIR))


def generated_module_names() -> list[str]:
    names = []
    for path in sorted(GENERATED_DIR.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(API_DIR).with_suffix("")
        names.append(".".join(rel.parts))
    return names


def pb2_modules() -> list[ModuleType]:
    return [
        importlib.import_module(name) for name in generated_module_names() if name.endswith("_pb2")
    ]


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(API_DIR / "generate.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_generated_module_imports() -> None:
    names = generated_module_names()
    assert len(names) >= 34  # 23 *_pb2 + 11 *_pb2_grpc
    for name in names:
        importlib.import_module(name)


def test_wire_facts() -> None:
    from liner_api.containerd.services.content.v1 import content_pb2
    from liner_api.containerd.services.snapshots.v1 import snapshots_pb2
    from liner_api.containerd.services.tasks.v1 import tasks_pb2
    from liner_api.containerd.types.task import task_pb2

    write = content_pb2.WriteContentRequest.DESCRIPTOR
    assert write.full_name == "containerd.services.content.v1.WriteContentRequest"
    assert {f.name: f.number for f in write.fields} == {
        "action": 1,
        "ref": 2,
        "total": 3,
        "expected": 4,
        "offset": 5,
        "data": 6,
        "labels": 7,
    }
    assert dict(content_pb2.WriteAction.items()) == {"STAT": 0, "WRITE": 1, "COMMIT": 2}
    assert dict(task_pb2.Status.items()) == {
        "UNKNOWN": 0,
        "CREATED": 1,
        "RUNNING": 2,
        "STOPPED": 3,
        "PAUSED": 4,
        "PAUSING": 5,
    }
    assert task_pb2.DESCRIPTOR.package == "containerd.v1.types"
    assert dict(snapshots_pb2.Kind.items()) == {
        "UNKNOWN": 0,
        "VIEW": 1,
        "ACTIVE": 2,
        "COMMITTED": 3,
    }
    tasks = tasks_pb2.DESCRIPTOR.services_by_name["Tasks"]
    assert tasks.full_name == "containerd.services.tasks.v1.Tasks"
    write_rpc = content_pb2.DESCRIPTOR.services_by_name["Content"].methods_by_name["Write"]
    assert write_rpc.client_streaming
    assert write_rpc.server_streaming

    # Round trip through bytes keeps a map and a nested Timestamp.
    req = content_pb2.WriteContentRequest(action=content_pb2.COMMIT, ref="r", labels={"a": "b"})
    assert content_pb2.WriteContentRequest.FromString(req.SerializeToString()) == req


def test_service_full_names() -> None:
    services = {
        svc.full_name
        for module in pb2_modules()
        for svc in module.DESCRIPTOR.services_by_name.values()
        if svc.full_name.startswith("containerd.")
    }
    assert services == {
        f"containerd.services.{pkg}.v1.{name}"
        for pkg, name in (
            ("containers", "Containers"),
            ("content", "Content"),
            ("diff", "Diff"),
            ("events", "Events"),
            ("images", "Images"),
            ("introspection", "Introspection"),
            ("leases", "Leases"),
            ("namespaces", "Namespaces"),
            ("snapshots", "Snapshots"),
            ("tasks", "Tasks"),
            ("version", "Version"),
        )
    }


# --- comparison against the upstream containerd sources ---------------------

Symbol = tuple[object, ...]


def _walk_messages(
    prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for msg in messages:
        name = f"{prefix}.{msg.name}"
        yield name, msg
        yield from _walk_messages(name, msg.nested_type)


def _symbols(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, Symbol]:
    """Flatten files into {full name: wire-relevant description}."""
    table: dict[str, Symbol] = {}
    for fd in files:
        pkg = f".{fd.package}"
        enums = [(f"{pkg}.{e.name}", e) for e in fd.enum_type]
        for name, msg in _walk_messages(pkg, fd.message_type):
            fields = sorted(
                (f.number, f.name, f.type, f.label, f.type_name, f.HasField("oneof_index"))
                for f in msg.field
            )
            table[name] = ("message", msg.options.map_entry, tuple(fields))
            enums.extend((f"{name}.{e.name}", e) for e in msg.enum_type)
        for name, enum in enums:
            values = sorted((v.number, v.name) for v in enum.value)
            table[name] = ("enum", tuple(values))
        for svc in fd.service:
            methods = sorted(
                (
                    m.name,
                    m.input_type,
                    m.output_type,
                    m.client_streaming,
                    m.server_streaming,
                )
                for m in svc.method
            )
            table[f"{pkg}.{svc.name}"] = ("service", tuple(methods))
    return table


def _upstream_files() -> list[descriptor_pb2.FileDescriptorProto]:
    bundled = Path(grpc_tools.__file__).resolve().parent / "_proto"
    includes = [
        GOCODE,
        GOCODE / "github.com/gogo/protobuf",
        GOCODE / "github.com/gogo/googleapis",
        bundled,
    ]
    sources = [f"github.com/containerd/containerd/{p}" for p in UPSTREAM_PROTOS]
    if GOCODE.joinpath(CGROUPS_METRICS).is_file():
        sources.append(CGROUPS_METRICS)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "upstream.pb"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                *(f"--proto_path={inc}" for inc in includes),
                f"--descriptor_set_out={out}",
                *sources,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return list(fds.file)


def _our_files() -> list[descriptor_pb2.FileDescriptorProto]:
    files = []
    for module in pb2_modules():
        fd = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fd)
        files.append(fd)
    return files


@pytest.mark.skipif(
    not UPSTREAM.joinpath("api").is_dir()
    or not GOCODE.joinpath("github.com/gogo/protobuf/gogoproto/gogo.proto").is_file()
    or not GOCODE.joinpath("github.com/gogo/googleapis/google/rpc").is_dir(),
    reason="Debian containerd/gogo protobuf sources not installed",
)
def test_wire_compatible_with_upstream_containerd() -> None:
    upstream = _symbols(_upstream_files())
    # liner's own services (package liner.*) and the Kubernetes CRI (runtime.v1, checked
    # by test_cri_proto.py) have no counterpart in containerd's sources.
    ours = {
        k: v
        for k, v in _symbols(_our_files()).items()
        if not k.startswith((".liner.", ".runtime."))
    }
    if not GOCODE.joinpath(CGROUPS_METRICS).is_file():
        # Without the cgroups sources there is nothing to compare these with.
        ours = {k: v for k, v in ours.items() if not k.startswith(CGROUPS_PACKAGE)}
    else:
        assert f"{CGROUPS_PACKAGE}Metrics" in upstream
    # Known 1.7 additions must be present exactly; then strip them so the rest
    # can be compared with the 1.6 reference.
    for name, expected in CONTAINERD_1_7_MESSAGES.items():
        assert ours.pop(name, None) == expected, name
    for name, added in CONTAINERD_1_7_FIELDS.items():
        kind, map_entry, fields = ours[name]
        assert isinstance(fields, tuple)
        assert set(added) <= set(fields), (name, added, fields)
        ours[name] = (kind, map_entry, tuple(f for f in fields if f not in added))
    assert len(upstream) > 150
    missing = sorted(upstream.keys() - ours.keys())
    extra = sorted(ours.keys() - upstream.keys())
    mismatched = {
        name: (upstream[name], ours[name])
        for name in sorted(upstream.keys() & ours.keys())
        if upstream[name] != ours[name]
    }
    assert not missing, f"missing upstream symbols: {missing}"
    assert not extra, f"symbols not in upstream: {extra}"
    assert not mismatched, f"definitions differ from upstream: {mismatched}"
