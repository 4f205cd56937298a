"""Our runtime.v1 proto against a client nobody here wrote: crictl 1.29.0 (cri-api v0.29).

A throwaway gRPC server answers every call with a response in which each field is set to
a value that names it: strings are "<field name>-<number>", integers 1000 + number, enums
their last value, every nested message filled the same way. crictl decodes the bytes with
its own compiled copy of the CRI and prints them as JSON, so each value it prints under a
name must be the one we put in the field of that name: a field number that differs from
upstream's shows up as a value under the wrong name, or as a field crictl lacks.
Fields that cri-api added after v0.29 are the only ones crictl may not print.

The other way, crictl reads a pod and a container config from files (its Go structs take
the proto field names) and sends them: the requests we receive must hold every field.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from liner_api.runtime.v1 import api_pb2, api_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]


def _crictl() -> str | None:
    found = shutil.which("crictl")
    if found:
        return found
    # ../shared beside the checkout (CI, the main checkout); a worktree sits one level deeper.
    for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        candidate = base / "shared" / "bin" / "crictl"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


CRICTL = _crictl()
pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(CRICTL is None, reason="crictl not on PATH nor at ../shared/bin/crictl"),
]

# Fields of messages crictl 1.29 knows that cri-api added later (v0.30 to v0.36).
ADDED_AFTER_1_29 = frozenset(
    {
        "Container.image_id",
        "ContainerConfig.stop_signal",
        "ContainerStats.io",
        "ContainerStatus.image_id",
        "ContainerStatus.stop_signal",
        "ContainerStatus.user",
        "CpuUsage.psi",
        "ImageSpec.image_ref",
        "LinuxContainerSecurityContext.supplemental_groups_policy",
        "LinuxPodSandboxStats.io",
        "LinuxSandboxSecurityContext.supplemental_groups_policy",
        "MemoryUsage.psi",
        "Mount.image",
        "Mount.image_sub_path",
        "Mount.recursive_read_only",
        "StatusResponse.features",
        "StatusResponse.runtime_handlers",
        "WindowsContainerResources.affinity_cpus",
    }
)
# crictl rewrites these itself (nanoseconds into RFC 3339 dates) in inspect and inspectp.
REFORMATTED = frozenset({"createdAt", "startedAt", "finishedAt"})
MAX_DEPTH = 8


def fill(msg: Message, depth: int = 0) -> Message:
    """Set every field of `msg` (recursively) to a value that names the field."""
    for f in msg.DESCRIPTOR.fields:
        target = getattr(msg, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value_field = f.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                target[f"k{f.number}"] = f"v{f.number}"
            elif depth < MAX_DEPTH:
                fill(target[f"k{f.number}"], depth + 1)
            continue
        if f.message_type is not None:
            if depth < MAX_DEPTH:
                fill(target.add() if f.is_repeated else target, depth + 1)
            continue
        if f.type == FieldDescriptor.TYPE_ENUM:
            value: Any = f.enum_type.values[-1].number
        elif f.type == FieldDescriptor.TYPE_STRING:
            value = f"{f.name}-{f.number}"
        elif f.type == FieldDescriptor.TYPE_BYTES:
            value = f"{f.name}-{f.number}".encode()
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = 0.5 + f.number
        else:
            value = 1000 + f.number
        if f.is_repeated:
            target.append(value)
        else:
            setattr(msg, f.name, value)
    return msg


def compare(msg: Message, theirs: dict[str, Any], where: str, skip: frozenset[str]) -> int:
    """Check crictl's JSON of `msg` field by field; answer how many fields matched."""
    fields = {f.json_name: f for f in msg.DESCRIPTOR.fields}
    for key, value in theirs.items():
        if value is not None:
            assert key in fields, f"{where}: crictl printed {key!r}, not a field of ours"
    ours = json_format.MessageToDict(msg)
    matched = 0
    for f, value in msg.ListFields():
        key, name = f.json_name, f"{msg.DESCRIPTOR.name}.{f.name}"
        if key in skip:
            continue
        if theirs.get(key) is None:
            assert name in ADDED_AFTER_1_29, f"{where}: crictl has no {name}"
            continue
        matched += 1
        is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
        if is_map and f.message_type.fields_by_name["value"].message_type is not None:
            for k, v in value.items():
                matched += compare(v, theirs[key][k], f"{where}.{key}[{k}]", skip)
        elif f.message_type is not None and not is_map:
            items = list(value) if f.is_repeated else [value]
            got = theirs[key] if f.is_repeated else [theirs[key]]
            assert len(items) == len(got), f"{where}.{key}"
            for i, (m, t) in enumerate(zip(items, got, strict=True)):
                matched += compare(m, t, f"{where}.{key}[{i}]", skip)
        else:
            assert theirs[key] == ours[key], f"{where}.{key}: {theirs[key]!r} != {ours[key]!r}"
    return matched


def _responses() -> dict[str, Message]:
    """A filled response per call, by method name."""
    out: dict[str, Message] = {}
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            response = fill(getattr(api_pb2, method.output_type.name)())
            for verbose in ("info",):  # crictl parses verbose info as JSON: leave it out
                if verbose in response.DESCRIPTOR.fields_by_name:
                    response.ClearField(verbose)
            out[method.name] = response
    status = out["Status"]
    assert isinstance(status, api_pb2.StatusResponse)
    del status.status.conditions[:]
    for kind in ("RuntimeReady", "NetworkReady"):  # crictl insists on both
        status.status.conditions.add(type=kind, status=True, reason=f"r-{kind}")
    return out


RESPONSES = _responses()
REQUESTS: dict[str, list[Message]] = {}  # what the servicers received, by method name


def _servicer(base: type, service: str) -> Any:
    handlers = {}
    for method in api_pb2.DESCRIPTOR.services_by_name[service].methods:
        if method.server_streaming:
            continue

        async def answer(self: Any, request: Any, context: Any, name: str = method.name) -> Any:
            REQUESTS.setdefault(name, []).append(request)
            return RESPONSES[name]

        handlers[method.name] = answer
    return type(f"Filled{service}", (base,), handlers)()


async def _crictl_run(tmp_path: Path, *args: str) -> str:
    server = grpc.aio.server()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(
        _servicer(api_pb2_grpc.RuntimeServiceServicer, "RuntimeService"), server
    )
    api_pb2_grpc.add_ImageServiceServicer_to_server(
        _servicer(api_pb2_grpc.ImageServiceServicer, "ImageService"), server
    )
    endpoint = f"unix://{tmp_path / 'cri.sock'}"
    server.add_insecure_port(endpoint)
    await server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(CRICTL),
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "20s",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(tmp_path)},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()
    finally:
        await server.stop(None)


# (crictl arguments, the call whose response it prints, the key crictl prints it under
# (None: the whole output), the response's field it prints (None: the whole response),
# keys crictl rewrites)
JSON_COMMANDS = [
    (["pods", "-o", "json"], "ListPodSandbox", None, None, frozenset()),
    (["ps", "-a", "-o", "json"], "ListContainers", None, None, frozenset()),
    (["images", "-o", "json"], "ListImages", None, None, frozenset()),
    (["inspecti", "-o", "json", "i1"], "ImageStatus", "status", "image", frozenset()),
    (["inspect", "-o", "json", "c1"], "ContainerStatus", "status", "status", REFORMATTED),
    (["inspectp", "-o", "json", "p1"], "PodSandboxStatus", "status", "status", REFORMATTED),
    (["stats", "-a", "-o", "json"], "ListContainerStats", None, None, frozenset()),
    (["statsp", "-o", "json"], "ListPodSandboxStats", None, None, frozenset()),
    (["metricsp", "-o", "json"], "ListPodSandboxMetrics", None, None, frozenset()),
    (["imagefsinfo", "-o", "json"], "ImageFsInfo", "status", None, frozenset()),
    (["info", "-o", "json"], "Status", "status", "status", frozenset()),
]


@pytest.mark.parametrize(
    ("args", "call", "printed_key", "field", "skip"), JSON_COMMANDS, ids=lambda a: str(a)
)
def test_crictl_reads_every_field_where_we_put_it(
    tmp_path: Path,
    args: list[str],
    call: str,
    printed_key: str | None,
    field: str | None,
    skip: frozenset[str],
) -> None:
    printed = json.loads(asyncio.run(_crictl_run(tmp_path, *args)))
    if printed_key is not None:
        printed = printed[printed_key]
    response = RESPONSES[call]
    if field is not None:
        response = getattr(response, field)
    assert compare(response, printed, call, skip) >= 5


def test_crictl_version_and_runtime_config(tmp_path: Path) -> None:
    out = asyncio.run(_crictl_run(tmp_path, "version"))
    assert out.split() == [
        "Version:",
        "version-1",
        "RuntimeName:",
        "runtime_name-2",
        "RuntimeVersion:",
        "runtime_version-3",
        "RuntimeApiVersion:",
        "runtime_api_version-4",
    ]
    # RuntimeConfigResponse.linux (1) -> LinuxRuntimeConfiguration.cgroup_driver (1): the
    # last enum value, CGROUPFS = 1.
    out = asyncio.run(_crictl_run(tmp_path, "runtime-config"))
    assert out.split() == ["cgroup", "driver:", "CGROUPFS"]


def go_json(msg: Message) -> dict[str, Any]:
    """`msg` as crictl's config files spell it: Go's encoding/json of the generated structs
    (proto field names, 64-bit integers and enums as numbers, bytes in base64)."""
    out: dict[str, Any] = {}
    for f, value in msg.ListFields():
        is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
        if is_map:
            nested = f.message_type.fields_by_name["value"].message_type is not None
            out[f.name] = {k: go_json(v) if nested else v for k, v in value.items()}
        elif f.message_type is not None:
            out[f.name] = [go_json(v) for v in value] if f.is_repeated else go_json(value)
        elif f.full_name == "runtime.v1.KeyValue.value":
            # A string in crictl's v0.29 (bytes since v0.35.7): same wire type, so the text
            # crictl sends arrives as these bytes.
            out[f.name] = value.decode()
        elif f.type == FieldDescriptor.TYPE_BYTES:
            out[f.name] = json_format.MessageToDict(msg, preserving_proto_field_name=True)[f.name]
        else:
            out[f.name] = list(value) if f.is_repeated else value
    return out


def test_crictl_sends_every_field_of_our_configs(tmp_path: Path) -> None:
    pod = fill(api_pb2.PodSandboxConfig())
    container = fill(api_pb2.ContainerConfig())
    (tmp_path / "pod.json").write_text(json.dumps(go_json(pod)))
    (tmp_path / "container.json").write_text(json.dumps(go_json(container)))
    REQUESTS.clear()
    asyncio.run(_crictl_run(tmp_path, "runp", "--runtime", "rh", str(tmp_path / "pod.json")))
    asyncio.run(
        _crictl_run(
            tmp_path,
            "create",
            "--no-pull",
            "p1",
            str(tmp_path / "container.json"),
            str(tmp_path / "pod.json"),
        )
    )
    [run] = REQUESTS["RunPodSandbox"]
    assert isinstance(run, api_pb2.RunPodSandboxRequest)
    assert run.runtime_handler == "rh"
    sent = json_format.MessageToDict(run.config)
    assert compare(pod, sent, "RunPodSandbox.config", frozenset()) >= 50
    [create] = REQUESTS["CreateContainer"]
    assert isinstance(create, api_pb2.CreateContainerRequest)
    assert create.pod_sandbox_id == "p1"
    sent = json_format.MessageToDict(create.config)
    assert compare(container, sent, "CreateContainer.config", frozenset()) >= 50
    sent = json_format.MessageToDict(create.sandbox_config)
    assert compare(pod, sent, "CreateContainer.sandbox_config", frozenset()) >= 50
