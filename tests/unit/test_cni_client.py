"""The CNI client's protocol with fake plugins: order, chaining, env, cache, DEL and errors.

The fakes are small Python scripts that record every call (env and stdin) and answer as the
test tells them; the real plugins are exercised in tests/integration/test_cni.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from linerd.cri.cni import CNI, LOOPBACK_CONFIG, PodRef, PortMapping
from linerd.errdefs import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

pytestmark = pytest.mark.unit

FAKE = """\
import json, os, sys, time
conf = json.load(sys.stdin)
name = os.path.basename(sys.argv[0])
here = os.environ["FAKE_CNI_DIR"]
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps({"plugin": name, "env": env, "conf": conf, "pid": os.getpid()}) + "\\n")
try:
    with open(os.path.join(here, name + ".json")) as f:
        how = json.load(f)
except FileNotFoundError:
    how = {}
command = env["CNI_COMMAND"]
time.sleep(how.get("sleep", {}).get(command, 0))
if command in how.get("fail", {}):
    print(json.dumps(how["fail"][command]))
    sys.exit(1)
if command == "ADD":
    print(json.dumps(how.get("result") or conf.get("prevResult") or {"cniVersion": "1.0.0"}))
"""

RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
    "ips": [{"address": "10.1.0.9/24", "interface": 0}],
}
POD = PodRef("default", "web", "uid-1")
SANDBOX = "f" * 64


class Fakes:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = root / "bin"
        self.conf = root / "net.d"
        self.cache = root / "cache"
        self.state = root / "state"
        for d in (self.bin, self.conf, self.state):
            d.mkdir()
        monkeypatch.setenv("FAKE_CNI_DIR", str(self.state))
        for name in ("loopback", "ipam-ish", "chained", "portmap", "broken"):
            self.plugin(name)
        self.netns = root / "netns-file"  # a plain file: not a pinned namespace
        self.netns.touch()
        self.lo_up: list[Path] = []  # the namespaces whose lo the client set up
        self.lo_error: Exception | None = None

    def plugin(self, name: str) -> None:
        path = self.bin / name
        path.write_text(f"#!{sys.executable} -I\n{FAKE}")
        path.chmod(0o755)

    def behave(self, plugin: str, **how: Any) -> None:
        (self.state / f"{plugin}.json").write_text(json.dumps(how))

    def network(self, *plugins: dict, version: str = "1.0.0", **extra: Any) -> None:
        doc = {"cniVersion": version, "name": "pods", "plugins": list(plugins), **extra}
        (self.conf / "10-pods.conflist").write_text(json.dumps(doc))

    def client(self, conf: Path | None = None, timeout: float = 30) -> CNI:
        return CNI(
            conf_dir=conf or self.conf,
            bin_dirs=[self.bin.parent / "nowhere", self.bin],
            cache_dir=self.cache,
            timeout=timeout,
            loopback_up=self.loopback_up,
        )

    def loopback_up(self, path: Path) -> None:
        # The real one (netns.loopback_up) needs a namespace: tests/integration/test_cni.py.
        if self.lo_error is not None:
            raise self.lo_error
        self.lo_up.append(path)

    def calls(self) -> list[dict]:
        path = self.state / "calls.jsonl"
        calls = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        path.unlink(missing_ok=True)
        return calls


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    f = Fakes(tmp_path, monkeypatch)
    f.behave("ipam-ish", result=RESULT)
    f.network({"type": "ipam-ish"}, {"type": "portmap", "capabilities": {"portMappings": True}})
    return f


def _order(calls: list[dict]) -> list[tuple[str, str, str]]:
    return [(c["plugin"], c["env"]["CNI_COMMAND"], c["env"]["CNI_IFNAME"]) for c in calls]


def test_add_sets_lo_up_then_runs_the_list_in_order_with_chaining(fakes: Fakes) -> None:
    net = asyncio.run(
        fakes.client().setup(SANDBOX, fakes.netns, POD, [PortMapping(8080, 80), PortMapping(0, 1)])
    )
    assert (net.ip, net.additional_ips) == ("10.1.0.9", ())
    assert fakes.lo_up == [fakes.netns]  # in process: no loopback plugin runs
    calls = fakes.calls()
    assert _order(calls) == [("ipam-ish", "ADD", "eth0"), ("portmap", "ADD", "eth0")]
    first, second = calls
    assert "prevResult" not in first["conf"] and "runtimeConfig" not in first["conf"]
    assert second["conf"]["prevResult"] == RESULT
    assert second["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]
    }
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": SANDBOX,
        "CNI_NETNS": str(fakes.netns),
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        f"K8S_POD_INFRA_CONTAINER_ID={SANDBOX};K8S_POD_UID=uid-1",
        "CNI_PATH": f"{fakes.bin.parent / 'nowhere'}:{fakes.bin}",
    }


def test_the_cache_is_libcni_shaped_and_outlives_the_client(fakes: Fakes) -> None:
    asyncio.run(fakes.client().setup(SANDBOX, fakes.netns, POD, [PortMapping(8080, 80)]))
    entry = json.loads((fakes.cache / "results" / f"pods-{SANDBOX}-eth0").read_text())
    assert entry["kind"] == "cniCacheV1" and entry["containerId"] == SANDBOX
    assert (entry["networkName"], entry["ifName"], entry["result"]) == ("pods", "eth0", RESULT)
    assert json.loads(base64.b64decode(entry["config"]))["name"] == "pods"
    assert ["K8S_POD_NAME", "web"] in entry["cniArgs"]
    assert entry["capabilityArgs"]["portMappings"][0]["hostPort"] == 8080
    assert [p.name for p in (fakes.cache / "results").iterdir()] == [f"pods-{SANDBOX}-eth0"]
    later = fakes.client(conf=fakes.conf / "gone")
    cached = asyncio.run(later.pod_network(SANDBOX))
    assert cached is not None and cached.ip == "10.1.0.9"


def test_del_after_restart_uses_the_cache_in_reverse(fakes: Fakes) -> None:
    asyncio.run(fakes.client().setup(SANDBOX, fakes.netns, POD, [PortMapping(8080, 80)]))
    fakes.calls()
    (fakes.conf / "10-pods.conflist").unlink()  # config gone: the cache alone must do
    restarted = fakes.client()
    asyncio.run(restarted.teardown(SANDBOX, fakes.netns, POD))
    calls = fakes.calls()
    assert _order(calls) == [("portmap", "DEL", "eth0"), ("ipam-ish", "DEL", "eth0")]
    assert all(c["conf"]["prevResult"] == RESULT for c in calls)
    assert calls[0]["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert calls[0]["env"]["CNI_NETNS"] == ""  # the file is no pinned namespace
    assert not list((fakes.cache / "results").iterdir())
    assert asyncio.run(restarted.pod_network(SANDBOX)) is None


def test_del_without_cache_still_runs_with_the_current_config(fakes: Fakes) -> None:
    asyncio.run(fakes.client().teardown(SANDBOX, None, POD, [PortMapping(9090, 90)]))
    calls = fakes.calls()
    assert _order(calls) == [("portmap", "DEL", "eth0"), ("ipam-ish", "DEL", "eth0")]
    assert "prevResult" not in calls[0]["conf"]
    assert calls[0]["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 9090
    # No config either: nothing is left to undo (lo goes with the namespace), and that is
    # no error.
    (fakes.conf / "10-pods.conflist").unlink()
    asyncio.run(fakes.client().teardown(SANDBOX, None, POD))
    assert fakes.calls() == []


def test_del_undoes_a_loopback_attachment_an_older_liner_cached(fakes: Fakes) -> None:
    cni = fakes.client()
    asyncio.run(cni.setup(SANDBOX, fakes.netns, POD))
    fakes.calls()
    legacy = {
        "kind": "cniCacheV1",
        "containerId": SANDBOX,
        "config": base64.b64encode(LOOPBACK_CONFIG).decode(),
        "ifName": "lo",
        "networkName": "cni-loopback",
        "cniArgs": [["K8S_POD_NAME", "web"]],
        "capabilityArgs": {},
        "result": {"cniVersion": "0.3.1", "interfaces": [{"name": "lo"}]},
    }
    cache = fakes.cache / "results" / f"cni-loopback-{SANDBOX}-lo"
    cache.write_text(json.dumps(legacy))
    asyncio.run(cni.teardown(SANDBOX, fakes.netns, POD))
    calls = fakes.calls()
    assert _order(calls) == [
        ("portmap", "DEL", "eth0"),
        ("ipam-ish", "DEL", "eth0"),
        ("loopback", "DEL", "lo"),
    ]
    assert "prevResult" not in calls[2]["conf"]  # the loopback list is 0.3.1: no prevResult on DEL
    assert calls[2]["env"]["CNI_ARGS"] == "K8S_POD_NAME=web"  # the cached arguments
    assert not list((fakes.cache / "results").iterdir())


def test_lo_that_cannot_come_up_fails_the_add_before_any_plugin(fakes: Fakes) -> None:
    fakes.lo_error = FailedPrecondition("set lo up in network namespace /x: Permission denied")
    with pytest.raises(FailedPrecondition, match="set lo up in network namespace"):
        asyncio.run(fakes.client().setup(SANDBOX, fakes.netns, POD))
    assert fakes.calls() == []
    assert not (fakes.cache / "results").exists()


def test_a_failing_del_runs_the_others_and_keeps_the_cache(fakes: Fakes) -> None:
    cni = fakes.client()
    asyncio.run(cni.setup(SANDBOX, fakes.netns, POD))
    fakes.calls()
    fakes.behave("portmap", fail={"DEL": {"code": 11, "msg": "iptables is locked"}})
    with pytest.raises(Unavailable, match="iptables is locked"):
        asyncio.run(cni.teardown(SANDBOX, fakes.netns, POD))
    assert [c[0] for c in _order(fakes.calls())] == ["portmap", "ipam-ish"]
    assert (fakes.cache / "results" / f"pods-{SANDBOX}-eth0").exists()
    fakes.behave("portmap")
    asyncio.run(cni.teardown(SANDBOX, fakes.netns, POD))
    assert fakes.calls()[0]["conf"]["prevResult"] == RESULT
    assert not list((fakes.cache / "results").iterdir())


def test_a_failed_add_is_deleted_again_and_leaves_no_cache(fakes: Fakes) -> None:
    fakes.behave("portmap", fail={"ADD": {"code": 11, "msg": "busy", "details": "retry later"}})
    with pytest.raises(Unavailable, match=r"plugin type='portmap' failed \(ADD\): busy: retry"):
        asyncio.run(fakes.client().setup(SANDBOX, fakes.netns, POD))
    assert _order(fakes.calls()) == [
        ("ipam-ish", "ADD", "eth0"),
        ("portmap", "ADD", "eth0"),
        ("portmap", "DEL", "eth0"),
        ("ipam-ish", "DEL", "eth0"),
    ]
    results = fakes.cache / "results"
    assert not results.exists() or not list(results.iterdir())


def test_a_missing_plugin_is_a_failed_precondition(fakes: Fakes) -> None:
    fakes.network({"type": "ipam-ish"}, {"type": "not-installed"})
    with pytest.raises(FailedPrecondition, match="failed to find plugin 'not-installed'"):
        asyncio.run(fakes.client().setup(SANDBOX, fakes.netns, POD))


def test_a_hanging_plugin_times_out(fakes: Fakes) -> None:
    fakes.behave("ipam-ish", sleep={"ADD": 60})
    with pytest.raises(DeadlineExceeded, match="timed out"):
        asyncio.run(fakes.client(timeout=0.5).setup(SANDBOX, fakes.netns, POD))


def test_a_cancelled_operation_kills_its_plugin_before_it_ends(fakes: Fakes) -> None:
    # The plugin runs from a worker thread; a cancelled caller (a client gone) must not leave
    # it running after the sandbox's lock is released (a DEL may come next).
    fakes.behave("ipam-ish", result=RESULT, sleep={"ADD": 60})
    cni = fakes.client()
    calls = fakes.state / "calls.jsonl"

    def hanging() -> list[int]:
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [c["pid"] for c in map(json.loads, lines) if c["plugin"] == "ipam-ish"]

    async def body() -> int:
        task = asyncio.create_task(cni.setup(SANDBOX, fakes.netns, POD))
        while not hanging():  # the plugin has started (its call recorded)
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return hanging()[0]

    pid = asyncio.run(body())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    assert cni._locks == {}
    # What the ADD had started is deleted again before the operation ends: DEL in reverse.
    assert _order(fakes.calls())[-2:] == [("portmap", "DEL", "eth0"), ("ipam-ish", "DEL", "eth0")]


def test_a_cancelled_teardown_stops_at_its_running_plugin(fakes: Fakes) -> None:
    cni = fakes.client()
    asyncio.run(cni.setup(SANDBOX, fakes.netns, POD))
    fakes.calls()
    fakes.behave("portmap", sleep={"DEL": 60})
    calls = fakes.state / "calls.jsonl"

    def started() -> list[dict]:
        return (
            [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        )

    async def body() -> int:
        task = asyncio.create_task(cni.teardown(SANDBOX, fakes.netns, POD))
        while not started():  # portmap's DEL (the first, in reverse) has started
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return started()[0]["pid"]

    pid = asyncio.run(body())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    assert _order(fakes.calls()) == [("portmap", "DEL", "eth0")]  # no plugin after it
    assert (fakes.cache / "results" / f"pods-{SANDBOX}-eth0").exists()  # kept for a retry
    assert cni._locks == {}


def test_check_uses_the_cached_result(fakes: Fakes) -> None:
    cni = fakes.client()
    with pytest.raises(NotFound, match="no cached result"):
        asyncio.run(cni.check(SANDBOX, fakes.netns, POD))
    asyncio.run(cni.setup(SANDBOX, fakes.netns, POD))
    fakes.calls()
    asyncio.run(cni.check(SANDBOX, fakes.netns, POD))
    calls = fakes.calls()
    assert _order(calls) == [("ipam-ish", "CHECK", "eth0"), ("portmap", "CHECK", "eth0")]
    assert all(c["conf"]["prevResult"] == RESULT for c in calls)


def test_check_honours_disable_check_and_old_versions(fakes: Fakes) -> None:
    fakes.network({"type": "ipam-ish"}, disableCheck=True)
    cni = fakes.client()
    asyncio.run(cni.setup(SANDBOX, fakes.netns, POD))
    fakes.calls()
    asyncio.run(cni.check(SANDBOX, fakes.netns, POD))
    assert fakes.calls() == []
    asyncio.run(cni.teardown(SANDBOX, fakes.netns, POD))
    fakes.network({"type": "ipam-ish"}, version="0.3.1")
    asyncio.run(cni.setup(SANDBOX, fakes.netns, POD))
    with pytest.raises(FailedPrecondition, match="does not support CHECK"):
        asyncio.run(cni.check(SANDBOX, fakes.netns, POD))


def test_ids_that_would_escape_the_cache_are_refused(fakes: Fakes) -> None:
    with pytest.raises(InvalidArgument, match="invalid container id"):
        asyncio.run(fakes.client().setup("../x", fakes.netns, POD))


def test_operations_on_one_sandbox_never_interleave(fakes: Fakes) -> None:
    fakes.behave("ipam-ish", result=RESULT, sleep={"ADD": 0.2, "DEL": 0.2})
    cni = fakes.client()

    async def three() -> None:
        await asyncio.gather(
            cni.setup(SANDBOX, fakes.netns, POD),
            cni.teardown(SANDBOX, fakes.netns, POD),
            cni.setup(SANDBOX, fakes.netns, POD),
        )

    asyncio.run(three())
    commands = [c[1] for c in _order(fakes.calls())]
    # Each operation is 2 plugin runs (the 2-plugin list), in whichever order the operations
    # got the lock, but one operation's runs are never mixed with another's.
    runs = [commands[i : i + 2] for i in range(0, 6, 2)]
    assert len(commands) == 6 and all(len(set(run)) == 1 for run in runs)
    assert sorted(run[0] for run in runs) == ["ADD", "ADD", "DEL"]
    assert cni._locks == {}
