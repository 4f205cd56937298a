"""Operating linerd: Prometheus metrics scraped by a real prometheus, health, the systemd unit,
sd_notify's watchdog, and SIGHUP reloads that keep running work."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagebuild import OCI_MANIFEST, build_config, build_layer, build_manifest, file
from registry import Registry, ThrottlingProxy, free_port
from support import REPO, Linerd, ns

from liner_api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from liner_api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from liner_api.liner.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc

pytestmark = pytest.mark.integration

UNIT = REPO / "deploy" / "systemd" / "linerd.service"


def pull(daemon: Linerd, ref: str, namespace: str = "default") -> transfer_pb2.PullProgress:
    with daemon.channel() as channel:
        stub = transfer_pb2_grpc.TransferStub(channel)
        return list(
            stub.Pull(
                transfer_pb2.PullRequest(reference=ref, plain_http=True), metadata=ns(namespace)
            )
        )[-1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def metrics_daemon(tmp_path: Path) -> Iterator[tuple[Linerd, str]]:
    address = f"127.0.0.1:{free_port()}"
    daemon = Linerd(tmp_path / "d", ["--metrics-address", address])
    daemon.start()
    yield daemon, address
    daemon.stop()


def test_metrics_endpoint(metrics_daemon: tuple[Linerd, str]) -> None:
    daemon, address = metrics_daemon
    with daemon.channel() as channel:
        namespaces_pb2_grpc.NamespacesStub(channel).List(
            namespaces_pb2.ListNamespacesRequest(), metadata=ns()
        )
    status, body = get(f"http://{address}/v1/metrics")
    text = body.decode()
    assert status == 200
    assert (
        'liner_grpc_requests_total{code="OK",method="List",'
        'service="containerd.services.namespaces.v1.Namespaces"} 1.0' in text
    )
    assert "liner_grpc_request_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text and "liner_content_bytes" in text
    assert get(f"http://{address}/metrics")[0] == 404


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_prometheus_scrapes_linerd(
    metrics_daemon: tuple[Linerd, str], registry: Registry, tmp_path: Path
) -> None:
    daemon, address = metrics_daemon
    pull(daemon, registry.ref("library/busybox:latest"))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "linerd",
                        "metrics_path": "/v1/metrics",
                        "static_configs": [{"targets": [address]}],
                    }
                ],
            }
        )
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def query(expr: str) -> list:  # type: ignore[type-arg]
            url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
            try:
                status, body = get(url)
            except OSError:
                return []
            return json.loads(body)["data"]["result"] if status == 200 else []

        pulls = wait_for(
            lambda: query('liner_pulls_total{outcome="success"}'), 60, "prometheus to scrape a pull"
        )
        assert float(pulls[0]["value"][1]) >= 1
        assert wait_for(lambda: query("liner_grpc_request_duration_seconds_bucket"), 10)
        assert wait_for(lambda: query("liner_content_bytes > 0"), 10)
    finally:
        prom.terminate()
        prom.wait(10)


def test_health_service(linerd: Linerd) -> None:
    with linerd.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "containerd.services.content.v1.Content",
            "liner.services.transfer.v1.Transfer",
        ):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
        "LimitNOFILE=",
        "TasksMax=infinity",
        "OOMScoreAdjust=",
        "WatchdogSec=",
    ):
        assert directive in text
    # verify checks that ExecStart exists: point it at this checkout's linerd
    unit = tmp_path / "linerd.service"
    unit.write_text(text.replace("/usr/local/bin/linerd", str(REPO / ".venv/bin/linerd")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_watchdog_pings(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    daemon = Linerd(tmp_path / "d")
    try:
        daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        seen = []
        while seen.count("WATCHDOG=1") < 3:
            seen.append(sock.recv(4096).decode())
        assert "READY=1" in seen
    finally:
        daemon.stop()
        sock.close()


def rpc_lines(daemon: Linerd) -> int:
    return sum('"event": "rpc"' in line for line in daemon.log().splitlines())


def test_sighup_reloads_log_level_and_registry(tmp_path: Path, registry: Registry) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[log]\nlevel = "info"\n')
    daemon = Linerd(tmp_path / "d", ["--config", str(config)], log_level=None)
    daemon.start()
    try:
        assert daemon.proc is not None
        # An events subscription and a pull run across the reloads.
        channel = daemon.channel()
        events = events_pb2_grpc.EventsStub(channel).Subscribe(
            events_pb2.SubscribeRequest(filters=['topic=="/images/create"']), metadata=ns()
        )
        received: list[events_pb2.Envelope] = []

        def pump() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                received.extend(events)

        threading.Thread(target=pump, daemon=True).start()

        with pytest.raises(grpc.RpcError):  # nothing configured for this name yet
            pull(daemon, "mirror.liner.test/library/busybox:latest")
        before = rpc_lines(daemon)
        assert before == 0  # info level: no per-call debug lines

        config.write_text(
            '[log]\nlevel = "debug"\n'
            '[registry.hosts."mirror.liner.test"]\n'
            f'server = "http://{registry.host}"\n'
        )
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: '"reloaded"' in daemon.log(), 10, "the reload")
        final = pull(daemon, "mirror.liner.test/library/busybox:latest")
        assert final.done
        assert rpc_lines(daemon) > before  # debug level now

        config.write_text("[log]\nlevel = 'nonsense'\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log(), 10, "the refusal")
        lines = rpc_lines(daemon)
        pull(daemon, "mirror.liner.test/library/busybox:latest")  # old config still in force
        assert rpc_lines(daemon) > lines

        wait_for(lambda: received, 10, "the image event on the surviving subscription")
        assert daemon.proc.poll() is None
        events.cancel()
        channel.close()
    finally:
        daemon.stop()


def test_liner_check(linerd: Linerd) -> None:
    liner = [str(REPO / ".venv/bin/liner")]
    # No --root: the check asks the daemon behind -a where its files are (not /var/lib/liner).
    ok = subprocess.run(
        [*liner, "-a", linerd.address, "check"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = {line.split()[0]: line.split()[1] for line in ok.stdout.splitlines()[1:]}
    details = {line.split()[0]: line for line in ok.stdout.splitlines()[1:]}
    assert f"{linerd.root}/content: " in details["store"]
    assert f"root {linerd.root}, state {linerd.state}" in details["database"]
    assert {
        k: rows[k] for k in ("socket", "store", "database", "runc", "conmon", "overlay", "cgroups")
    } == dict.fromkeys(
        ("socket", "store", "database", "runc", "conmon", "overlay", "cgroups"), "ok"
    )
    bad = subprocess.run(
        [
            *liner,
            "-a",
            str(linerd.base / "absent.sock"),
            "check",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "cannot connect" in bad.stdout


def test_task_metrics_follow_the_task(
    metrics_daemon: tuple[Linerd, str], registry: Registry
) -> None:
    daemon, address = metrics_daemon
    ref = registry.ref("library/busybox:latest")

    def ctr(*args: str) -> None:
        subprocess.run(
            ["ctr", "-a", daemon.address, *args], check=True, capture_output=True, timeout=60
        )

    def scrape() -> str:
        return get(f"http://{address}/v1/metrics")[1].decode()

    ctr("images", "pull", "--plain-http", ref)
    ctr("run", "-d", ref, "metered", "sleep", "60")
    try:
        text = scrape()
        assert 'liner_tasks{state="running"} 1.0' in text
        assert "liner_containers 1.0" in text
        series = 'liner_task_memory_bytes{container_id="metered",namespace="default"}'
        assert series in text
        assert 'liner_task_pids{container_id="metered",namespace="default"} 1.0' in text
    finally:
        ctr("tasks", "kill", "-s", "SIGKILL", "metered")
        wait_for(lambda: 'liner_tasks{state="stopped"} 1.0' in scrape(), 10, "the exit")
        ctr("tasks", "rm", "metered")
        ctr("containers", "rm", "metered")
    text = scrape()
    assert "metered" not in text  # per-task series end with the task
    assert "liner_containers 0.0" in text


def test_sighup_keeps_a_running_pull_and_container(tmp_path: Path, registry: Registry) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[log]\nlevel = "info"\n')
    daemon = Linerd(tmp_path / "d", ["--config", str(config)], log_level=None)
    big = build_layer([file("blob", os.urandom(8 << 20))], "none")
    image_config = build_config([big.diff_id])
    manifest = build_manifest(image_config, [big])
    registry.push_raw(
        "sighup/big", "v1", manifest.data, OCI_MANIFEST, [image_config.data, big.blob.data]
    )
    proxy = ThrottlingProxy(registry.host, delay=0.02)  # about 3 MiB/s
    daemon.start()
    try:
        assert daemon.proc is not None
        busybox = registry.ref("library/busybox:latest")
        pull(daemon, busybox)
        subprocess.run(
            ["ctr", "-a", daemon.address, "run", "-d", busybox, "keeps", "sleep", "60"],
            check=True,
            timeout=60,
        )
        progress: list[transfer_pb2.PullProgress] = []
        errors: list[Exception] = []

        def slow_pull() -> None:
            try:
                with daemon.channel() as channel:
                    stub = transfer_pb2_grpc.TransferStub(channel)
                    request = transfer_pb2.PullRequest(
                        reference=f"{proxy.host}/sighup/big:v1", plain_http=True
                    )
                    progress.extend(stub.Pull(request, metadata=ns(), timeout=120))
            except Exception as e:
                errors.append(e)

        puller = threading.Thread(target=slow_pull)
        puller.start()
        wait_for(
            lambda: any(
                b.offset for u in progress for b in u.blobs if b.descriptor.digest == big.digest
            ),
            30,
            "the pull to start",
        )
        config.write_text('[log]\nlevel = "debug"\n')
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: '"reloaded"' in daemon.log(), 10, "the reload")
        config.write_text("[gc\n")  # invalid: refused, the old one stays
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log(), 10, "the refusal")
        puller.join(120)
        assert not errors, errors
        assert progress[-1].done and progress[-1].target.digest == manifest.digest
        tasks = subprocess.run(
            ["ctr", "-a", daemon.address, "tasks", "ls"], check=True, capture_output=True, text=True
        ).stdout
        assert "keeps" in tasks and "RUNNING" in tasks
        subprocess.run(
            ["ctr", "-a", daemon.address, "tasks", "kill", "-s", "SIGKILL", "keeps"], check=True
        )
        wait_for(
            lambda: (
                "STOPPED"
                in subprocess.run(
                    ["ctr", "-a", daemon.address, "tasks", "ls"], capture_output=True, text=True
                ).stdout
            ),
            10,
            "the kill",
        )
        subprocess.run(
            ["ctr", "-a", daemon.address, "tasks", "rm", "keeps"], check=True, capture_output=True
        )
        subprocess.run(["ctr", "-a", daemon.address, "containers", "rm", "keeps"], check=True)
    finally:
        proxy.stop()
        daemon.stop()
