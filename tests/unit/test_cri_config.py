"""The `[cri]` and `[cri.cni]` configuration: issue #15's names and defaults, rendering,
validation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from linerd.config import Config, ConfigError, load, to_toml

pytestmark = pytest.mark.unit

# Issue #15 item 8, verbatim: operators and scripts rely on these names and defaults.
ISSUE_DEFAULTS = """\
[cri]
enabled = true
sandbox_image = "registry.k8s.io/pause:3.9"
stream_server_address = "127.0.0.1"
stream_server_port = 0
cgroup_driver = "cgroupfs"
max_container_log_line_size = 16384

[cri.cni]
bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
conf_dir = "/etc/cni/net.d"
"""


# Keys added since, with their defaults (the issue's names and defaults stay as they are).
ADDED = {"drop_infra_ctr": True}  # CRI-O's setting and default (issue 18)


def test_the_defaults_are_the_issues() -> None:
    rendered = to_toml(Config())
    for line in ISSUE_DEFAULTS.splitlines():
        assert line in rendered.splitlines(), line
    assert tomllib.loads(rendered)["cri"] == {**tomllib.loads(ISSUE_DEFAULTS)["cri"], **ADDED}


def test_the_rendered_defaults_load_back(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(Config()))
    assert load(path) == Config()


def test_a_file_overrides_nested_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[cri]\ncgroup_driver = "systemd"\nsandbox_image = "127.0.0.1:5000/pause:1"\n'
        "drop_infra_ctr = false\n"
        '[cri.cni]\nbin_dirs = ["/srv/cni"]\n'
    )
    config = load(path)
    assert config.cri.cgroup_driver == "systemd"
    assert config.cri.drop_infra_ctr is False
    assert config.cri.sandbox_image == "127.0.0.1:5000/pause:1"
    assert config.cri.cni.bin_dirs == ["/srv/cni"]
    assert config.cri.cni.conf_dir == "/etc/cni/net.d"
    assert config.cri.enabled is True
    rendered = tomllib.loads(to_toml(config))
    assert rendered["cri"]["cni"]["bin_dirs"] == ["/srv/cni"]


def test_the_defaults_are_not_shared_between_configs() -> None:
    first = Config()
    first.cri.cni.bin_dirs.append("/elsewhere")
    assert Config().cri.cni.bin_dirs == ["/usr/lib/cni", "/opt/cni/bin"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cri]\nenabled = 'yes'\n", "'cri.enabled' must be bool, not str"),
        ("[cri]\ndrop_infra_ctr = 1\n", "'cri.drop_infra_ctr' must be bool, not int"),
        ("[cri]\nbogus = 1\n", "unknown configuration key 'cri.bogus'"),
        ("[cri.cni]\nbin_dir = '/x'\n", "unknown configuration key 'cri.cni.bin_dir'"),
        ("[cri]\ncni = 3\n", "'cri.cni' must be a table"),
        ("[cri.cni]\nbin_dirs = '/usr/lib/cni'\n", "'cri.cni.bin_dirs' must be list, not str"),
        ("[cri.cni]\nbin_dirs = [1]\n", "'cri.cni.bin_dirs' must be a list of strings"),
        ("[cri.cni]\nbin_dirs = []\n", "cri.cni.bin_dirs must name at least one directory"),
        ("[cri.cni]\nbin_dirs = ['cni']\n", "cri.cni.bin_dirs: 'cni' is not an absolute path"),
        ("[cri.cni]\nconf_dir = 'net.d'\n", "cri.cni.conf_dir must be an absolute path"),
        ("[cri]\ncgroup_driver = 'cgroup'\n", "cri.cgroup_driver must be 'cgroupfs' or 'systemd'"),
        ("[cri]\nstream_server_port = 70000\n", "cri.stream_server_port must be 0"),
        ("[cri]\nstream_server_port = -1\n", "cri.stream_server_port must be 0"),
        ("[cri]\nstream_server_address = ''\n", "cri.stream_server_address must be an IP"),
        ("[cri]\nstream_server_address = 'a b'\n", "cri.stream_server_address must be an IP"),
        ("[cri]\nsandbox_image = 'Pause:3.9'\n", "cri.sandbox_image: invalid reference"),
        ("[cri]\nmax_container_log_line_size = 0\n", "cri.max_container_log_line_size must be"),
        ("[cri]\nmax_container_log_line_size = -2\n", "cri.max_container_log_line_size must be"),
    ],
)
def test_bad_cri_settings_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        load(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("address", ["0.0.0.0", "::1", "node-1.example", "localhost"])
def test_stream_server_addresses(tmp_path: Path, address: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f"[cri]\nstream_server_address = '{address}'\nmax_container_log_line_size = -1\n"
    )
    assert load(path).cri.stream_server_address == address
