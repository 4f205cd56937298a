from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest
import structlog

from linerd import log
from linerd.config import LOG_LEVELS, Config, ConfigError, load, to_toml
from linerd.main import _parser

pytestmark = pytest.mark.unit


def test_default_toml_round_trips(tmp_path: Path) -> None:
    text = to_toml(Config())
    assert tomllib.loads(text)["grpc"]["address"] == "/run/liner/liner.sock"
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert load(path) == Config()


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('root = "/srv/liner"\n[gc]\ninterval = 60\n[log]\nlevel = "debug"\n')
    config = load(path)
    assert config.root == "/srv/liner"
    assert config.gc.interval == 60.0
    assert config.log.level == "debug"
    assert config.state == "/run/liner"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown configuration key 'bogus'"),
        ("[grpc]\naddres = 'x'\n", "unknown configuration key 'grpc.addres'"),
        ("[grpc]\ngid = 'wheel'\n", "'grpc.gid' must be int"),
        ("grpc = 3\n", "'grpc' must be a table"),
        ("[log]\nlevel = 'loud'\n", "log.level must be one of"),
        ("root = 'relative'\n", "root must be an absolute path"),
        ("[log]\ncontainer_log_size_max = -1\n", "log.container_log_size_max must be 0"),
        ("version = 2\n", "unsupported config version 2"),
        ("[gc\n", "config"),
    ],
)
def test_bad_config_is_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "absent.toml")


CONTAINERD_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


@pytest.mark.parametrize(("name", "number"), sorted(CONTAINERD_LEVELS.items()))
def test_containerd_log_levels_in_the_file(tmp_path: Path, name: str, number: int) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[log]\nlevel = "{name.upper()}"\n')
    assert load(path).log.level == name.upper()
    assert LOG_LEVELS[name] == number


@pytest.mark.parametrize("name", sorted(CONTAINERD_LEVELS))
def test_containerd_log_levels_on_the_command_line(name: str) -> None:
    args = _parser().parse_args(["--log-level", name])
    assert args.log_level == name
    assert _parser().parse_args(["--log-level", name.upper()]).log_level == name


def test_unknown_log_level_is_refused_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--log-level", "loud"])
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_warn_filters_info_and_keeps_warnings(capsys: pytest.CaptureFixture) -> None:
    log.setup("warn", "json")
    try:
        logger = structlog.get_logger()
        logger.info("quiet")
        logger.warning("loud")
        logger.error("louder")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["loud", "louder"]


def test_container_log_cap(tmp_path: Path) -> None:
    assert Config().log.container_log_size_max == 10 << 20
    assert "container_log_size_max = 10485760" in to_toml(Config())
    path = tmp_path / "config.toml"
    path.write_text("[log]\ncontainer_log_size_max = 0\n")  # no cap
    assert load(path).log.container_log_size_max == 0


def test_policy_section_as_issue_17_names_it(tmp_path: Path) -> None:
    config = Config()
    assert (config.policy.path, config.policy.registries_d) == ("", "/etc/containers/registries.d")
    assert '[policy]\npath = ""\nregistries_d = "/etc/containers/registries.d"' in to_toml(config)
    path = tmp_path / "config.toml"
    path.write_text('[policy]\npath = "/etc/containers/policy.json"\nregistries_d = ""\n')
    assert load(path).policy.path == "/etc/containers/policy.json"
    path.write_text('[policy]\npath = "policy.json"\n')
    with pytest.raises(ConfigError, match=r"policy\.path must be an absolute path"):
        load(path)
