from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from linerd.config import Config, ConfigError, load, to_toml

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
