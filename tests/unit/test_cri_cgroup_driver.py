"""`[cri] cgroup_driver = "systemd"`: refused at start where systemd is not PID 1; otherwise the
CRI's records carry runc options with `systemd_cgroup`, and their runc gets
`--systemd-cgroup` (as containerd's runc shim passes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linerd import config as configmod
from linerd.config import Config, ConfigError, check_host, systemd_booted
from linerd.core.types import Container
from linerd.cri import meta, specs
from linerd.local.tasks import Tasks
from linerd.runtime.manager import TaskRuntime, _Proc, _Task
from linerd.runtime.resolve import SYSTEMD_CGROUP_FLAG, Runtimes
from linerd.runtime.types import RuntimeConfig

pytestmark = pytest.mark.unit


def _config(driver: str, enabled: bool = True) -> Config:
    config = Config()
    config.cri.cgroup_driver = driver
    config.cri.enabled = enabled
    return config


def test_systemd_booted_is_its_runtime_dir(tmp_path: Path) -> None:
    assert not systemd_booted(tmp_path / "absent")
    (tmp_path / "system").mkdir()
    assert systemd_booted(tmp_path / "system")


def test_systemd_driver_refused_unless_systemd_is_pid1() -> None:
    with pytest.raises(ConfigError) as e:
        check_host(_config("systemd"), booted=lambda: False)
    message = str(e.value)
    assert "\n" not in message and "cri.cgroup_driver" in message and "PID 1" in message
    assert check_host(_config("systemd"), booted=lambda: True).cri.cgroup_driver == "systemd"
    assert check_host(_config("cgroupfs"), booted=lambda: False)
    assert check_host(_config("systemd", enabled=False), booted=lambda: False)


def test_linerd_refuses_to_start_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from linerd.main import main

    monkeypatch.setattr(configmod, "SYSTEMD_RUNTIME_DIR", tmp_path / "no-systemd")
    path = tmp_path / "linerd.toml"
    path.write_text('[cri]\ncgroup_driver = "systemd"\n')
    argv = ["--config", str(path), "--root", str(tmp_path / "r"), "--state", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("linerd: cri.cgroup_driver")
    assert not (tmp_path / "r").exists()  # refused before anything was made


def _runc_argv(driver: str, tmp_path: Path) -> list[str]:
    """The runtime arguments conmon gets for a CRI record under `driver`."""
    runtimes = Runtimes({"runc": RuntimeConfig("/usr/sbin/runc", name="runc")}, "runc")
    rt = TaskRuntime(tmp_path / "state")
    tasks = Tasks(rt, runtimes, None, {}, None)  # type: ignore[arg-type]
    options = specs.runc_options(driver)
    record = Container(id="c1", runtime=meta.RUNTIME, spec=None, runtime_options=options)
    runtime = tasks._runtime_for(record, "")
    assert runtime.key == "runc"  # the same runtime state dir either way
    root = rt.runtime_root(runtime, meta.NAMESPACE)
    task = _Task(
        meta.NAMESPACE, "c1", tmp_path / "b", [runtime.path, *runtime.args, "--root", str(root)]
    )
    argv = rt._conmon_argv(task, _Proc(task, "", task.bundle, "u1"))
    assert argv[argv.index("-r") + 1] == "/usr/sbin/runc"
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--runtime-arg"]


def test_runc_gets_systemd_cgroup_under_the_systemd_driver(tmp_path: Path) -> None:
    args = _runc_argv("systemd", tmp_path)
    assert args[0] == SYSTEMD_CGROUP_FLAG == "--systemd-cgroup"
    assert args[1] == "--root"


def test_runc_gets_no_systemd_flag_under_cgroupfs(tmp_path: Path) -> None:
    assert specs.runc_options("cgroupfs") is None
    args = _runc_argv("cgroupfs", tmp_path)
    assert SYSTEMD_CGROUP_FLAG not in args and args[0] == "--root"


def test_the_flag_is_added_once() -> None:
    runtimes = Runtimes(
        {"runc": RuntimeConfig("/usr/sbin/runc", (SYSTEMD_CGROUP_FLAG,), name="runc")}, "runc"
    )
    assert runtimes.resolve("runc", systemd_cgroup=True).args == (SYSTEMD_CGROUP_FLAG,)
