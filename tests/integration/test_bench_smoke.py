"""The bench harness (bench/bench.py) in smoke mode, so it cannot rot.

Tiny images (busybox only), 2 runs of everything, containerd side by side when installed, the
load check scaled down, and (f) the CRI with 2 pods per daemon where pods can run here. Nothing
is timed or compared here: the test checks that the harness prints its table and writes valid
JSON (into a temp results dir, never bench/results/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("ctr", "conmon", "runc", "nsenter", "skopeo")),
        reason="needs ctr, conmon, runc, nsenter and skopeo",
    ),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="no docker-registry"),
]


def test_bench_smoke_prints_table_and_writes_json(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench.py"),
            "--smoke",
            "--load",
            "--cache",
            str(tmp_path / "cache"),
            "--results-dir",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"

    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    assert "liner" in lines[header] and "containerd" in lines[header]
    assert lines[header].split()[-1] == "ratio"
    table = "\n".join(lines[header:])
    for row in ("(a) ctr pull+unpack", "(b) ctr run --rm", "(c) 2 run -d", "(d) daemon RSS",
                "(d) PSS per helper", "(e) ctr version", "liner images pull"):  # fmt: skip
        assert row in table, table
    assert "load:" in proc.stdout

    [path] = list(results.glob("*.json"))
    assert str(path) in proc.stdout
    doc = json.loads(path.read_text())
    assert doc["mode"]["smoke"] is True
    with_containerd = doc["mode"]["containerd"]
    for key in ("pull_busybox", "pull_busybox-zstd", "run_rm", "detached", "rss_idle",
                "helper_pss", "ctr_version", "ctr_images_ls", "liner_version",
                "node_pss_fresh_2", "node_pss_after_pulls_2"):  # fmt: skip
        metric = doc["metrics"][key]
        liner = metric["liner"]
        assert liner["n"] >= 1 and liner["min"] <= liner["median"] <= liner["max"], metric
        if with_containerd:
            if "ratio_versus" not in metric:  # liner-only rows compare with another row
                assert metric["containerd"]["n"] >= 1, metric
            assert metric["ratio"] > 0, metric
    assert doc["metrics"]["liner_pull_busybox"]["ratio_versus"].startswith("pull_busybox")
    if doc["mode"]["cri"]:  # (f): 2 pods against each daemon's CRI
        assert doc["mode"]["pods"] == 2
        assert "(f) a pod's start" in table and "(f) node PSS, 2 pods" in table, table
        calls = ("RunPodSandbox", "PodSandboxStatus", "ImageStatus", "CreateContainer",
                 "StartContainer", "ContainerStatus", "ExecSync", "StopContainer",
                 "RemoveContainer", "StopPodSandbox", "RemovePodSandbox")  # fmt: skip
        for key in [f"cri_{c}" for c in calls] + ["cri_pod_start", "cri_PullImage", "cri_pss_node"]:
            metric = doc["metrics"][key]
            assert metric["liner"]["n"] == (1 if key == "cri_pss_node" else 2), metric
            if with_containerd:
                assert metric["containerd"]["n"] == metric["liner"]["n"], metric
                assert metric["ratio"] > 0, metric
        lists = doc["metrics"]["cri_ListContainers"]["liner"]
        assert lists["n"] >= 1 and lists["min"] <= lists["median"] <= lists["max"], lists
        assert not [e for e in doc["errors"] if e.startswith("(f)")], doc["errors"]
    load = doc["load"]
    assert load["concurrent_pulls"]["pulls"] == 20  # smoke: 20 of the 50
    assert set(load["run_rm_leaks"]["before"]) == {"fds", "threads", "mounts", "rss_kb"}


def test_bench_scale_smoke(tmp_path: Path) -> None:
    """(g) scaled down: 4 running, 2 writers, 2 s; the rows are there, no List failed."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench.py"),
            "--smoke",
            "--only",
            "g",
            "--scale",
            "4",
            "--scale-writers",
            "2",
            "--scale-seconds",
            "2",
            "--cache",
            str(tmp_path / "cache"),
            "--results-dir",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    [path] = list(results.glob("*.json"))
    doc = json.loads(path.read_text())
    assert doc["mode"]["scale"] == {"running": 4, "writers": 2, "seconds": 2.0, "cri": "on"}
    metrics = doc["metrics"]
    for key in ("scale_containers_list", "scale_tasks_list"):
        for q in ("p50", "p99", "max"):
            assert metrics[f"{key}_{q}"]["liner"]["n"] == 1, metrics[f"{key}_{q}"]
        assert metrics[f"{key}_n"]["liner"]["median"] >= 1
        if doc["mode"]["containerd"]:
            assert metrics[f"{key}_p99"]["containerd"]["n"] == 1
    assert metrics["scale_helpers"]["liner"]["median"] == 4
    assert metrics["scale_cycles"]["liner"]["median"] >= 1
    # A part that failed, or a writer's cycle that did (a List failing under churn is a row
    # of its own, counted, not a harness failure).
    broken = [e for e in doc["errors"] if e.startswith("(g) ") and " writer: " in e]
    broken += [e for e in doc["errors"] if e.split(":")[0] in ("(g) liner", "(g) CRI liner")]
    assert not broken, doc["errors"]
