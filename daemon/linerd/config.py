"""linerd's configuration: TOML at /etc/liner/config.toml, defaults embedded here."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linerd.errdefs import InvalidArgument
from linerd.remotes.hosts import HostsConfig

DEFAULT_CONFIG_PATH = Path("/etc/liner/config.toml")


class ConfigError(Exception):
    pass


@dataclass(slots=True)
class GrpcConfig:
    address: str = "/run/liner/liner.sock"
    # Owner group of the socket (mode 0660); 0 = root only.
    gid: int = 0
    max_recv_message_size: int = 16 << 20
    max_send_message_size: int = 16 << 20


@dataclass(slots=True)
class MetadataConfig:
    # SQLAlchemy URL; empty = SQLite file <root>/meta.db.
    url: str = ""


@dataclass(slots=True)
class GcConfig:
    # Seconds between periodic collections; deletes also schedule one.
    interval: float = 3600.0
    # Seconds to wait after a delete before collecting, so bursts share one collection.
    schedule_delay: float = 0.05


@dataclass(slots=True)
class SnapshotsConfig:
    # Used when a request names no snapshotter. "overlayfs" falls back to "native" where the
    # kernel cannot mount overlay.
    default: str = "overlayfs"


@dataclass(slots=True)
class MetricsConfig:
    # host:port serving Prometheus metrics at /v1/metrics; empty = off.
    address: str = ""


@dataclass(slots=True)
class LogConfig:
    level: str = "info"
    # "json" (journald-friendly) or "console".
    format: str = "json"
    # Bytes a container's log (<state>/logs/<namespace>/<id>.log: the output of a task created
    # without stdio, such as `liner run -d`) may reach before it starts afresh; 0 = no cap.
    container_log_size_max: int = 10 << 20


@dataclass(slots=True)
class PolicyConfig:
    # A containers-policy.json(5) every image entering the store must satisfy (pulls, the
    # CRI's PullImage, Images/Create and Update); empty = accept anything, as before.
    path: str = ""
    # containers-registries.d(5): where signatures live (lookaside, sigstore attachments).
    registries_d: str = "/etc/containers/registries.d"


@dataclass(slots=True)
class CniConfig:
    # Where the CNI plugins are looked for, in order (Debian's, then upstream's).
    bin_dirs: list[str] = field(default_factory=lambda: ["/usr/lib/cni", "/opt/cni/bin"])
    # The lexically first *.conf, *.conflist or *.json here is the pod network.
    conf_dir: str = "/etc/cni/net.d"


@dataclass(slots=True)
class CriConfig:
    """Kubernetes' CRI (runtime.v1) on the daemon's socket. Pods' network, IPC and UTS
    namespaces are pinned under <state>/cri/netns and CNI results cached under <root>/cri/cni."""

    enabled: bool = True
    # The pause image a pod sandbox runs where it needs one (containerd's `sandbox_image`).
    sandbox_image: str = "registry.k8s.io/pause:3.9"
    # CRI-O's setting and default: a pod runs no pause process unless its containers share a
    # pid namespace (NamespaceMode POD); its net/IPC/UTS namespaces are pinned at files
    # anyway. false: every pod runs a pause, as containerd's CRI does.
    drop_infra_ctr: bool = True
    # Where Exec, Attach and PortForward URLs point; port 0 = a free port.
    stream_server_address: str = "127.0.0.1"
    stream_server_port: int = 0
    # "cgroupfs" or "systemd"; RuntimeConfig reports it so kubelet uses the same.
    cgroup_driver: str = "cgroupfs"
    # Longer container log lines are split into partial (P) lines; -1 = no limit.
    max_container_log_line_size: int = 16384
    cni: CniConfig = field(default_factory=CniConfig)


@dataclass(slots=True)
class Config:
    version: int = 1
    root: str = "/var/lib/liner"
    state: str = "/run/liner"
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # Registry hosts, mirrors, TLS and credentials: see linerd.remotes.hosts for the keys.
    registry: dict[str, Any] = field(default_factory=dict)
    # The runtime that containerd's runc shim names (io.containerd.runc.v2) select.
    default_runtime: str = "runc"
    # The nice value of the event loop's thread, which answers every call (-20 to 0; 0 = as
    # started). Only that thread: what it starts, threads and processes, runs at nice 0.
    loop_nice: int = -10
    # More runtimes: [runtimes.<name>] path = "...", args = [...]; runc and crun are built in.
    runtimes: dict[str, Any] = field(default_factory=dict)
    cri: CriConfig = field(default_factory=CriConfig)


# containerd's (logrus's) level names, and Python's warning and critical, to logging's numbers.
# Python has no trace level: trace logs what debug does. fatal and panic only filter here (a
# log call never exits), so they mean critical.
LOG_LEVELS: dict[str, int] = {
    "trace": 10,
    "debug": 10,
    "info": 20,
    "warn": 30,
    "warning": 30,
    "error": 40,
    "fatal": 50,
    "panic": 50,
    "critical": 50,
}


def _fill(target: Any, values: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown configuration key {name!r}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name!r} must be a table")
            _fill(current, value, name)
            continue
        expected = type(current)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{name!r} must be {expected.__name__}, not {type(value).__name__}")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{name!r} must be a list of strings")
        setattr(target, key, value)


def validate(config: Config) -> Config:
    # Imported here: the runtime package is heavy, and linerd reads its config before it
    # imports the rest of the daemon (see main.py).
    from linerd.runtime import resolve as runtime_resolve

    if config.version != 1:
        raise ConfigError(f"unsupported config version {config.version}; this linerd reads 1")
    if config.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in ("json", "console"):
        raise ConfigError("log.format must be 'json' or 'console'")
    if config.log.container_log_size_max < 0:
        raise ConfigError("log.container_log_size_max must be 0 (no cap) or a number of bytes")
    for name in ("root", "state"):
        if not Path(getattr(config, name)).is_absolute():
            raise ConfigError(f"{name} must be an absolute path")
    if config.snapshots.default not in ("overlayfs", "native"):
        raise ConfigError("snapshots.default must be 'overlayfs' or 'native'")
    try:
        HostsConfig.from_dict(config.registry)
    except InvalidArgument as e:
        raise ConfigError(f"registry: {e}") from None
    try:
        runtime_resolve.parse(config.runtimes)
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None
    if config.metrics.address:
        host, _, port = config.metrics.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("metrics.address must be host:port")
    for name in ("path", "registries_d"):
        value = getattr(config.policy, name)
        if value and not Path(value).is_absolute():
            raise ConfigError(f"policy.{name} must be an absolute path")
    if config.gc.interval <= 0:
        raise ConfigError("gc.interval must be positive")
    if not -20 <= config.loop_nice <= 0:
        raise ConfigError("loop_nice must be -20 to 0")
    _validate_cri(config.cri)
    return config


def _validate_cri(cri: CriConfig) -> None:
    from linerd.remotes import reference

    try:
        reference.parse(cri.sandbox_image)
    except InvalidArgument as e:
        raise ConfigError(f"cri.sandbox_image: {e}") from None
    address = cri.stream_server_address
    if not address or (not _HOST_NAME.match(address) and not _is_ip(address)):
        raise ConfigError("cri.stream_server_address must be an IP address or a host name")
    if not 0 <= cri.stream_server_port <= 65535:
        raise ConfigError("cri.stream_server_port must be 0 (a free port) to 65535")
    if cri.cgroup_driver not in ("cgroupfs", "systemd"):
        raise ConfigError("cri.cgroup_driver must be 'cgroupfs' or 'systemd'")
    if cri.max_container_log_line_size == 0 or cri.max_container_log_line_size < -1:
        raise ConfigError(
            "cri.max_container_log_line_size must be a number of bytes, or -1 for no limit"
        )
    if not cri.cni.bin_dirs:
        raise ConfigError("cri.cni.bin_dirs must name at least one directory")
    for directory in cri.cni.bin_dirs:
        if not Path(directory).is_absolute():
            raise ConfigError(f"cri.cni.bin_dirs: {directory!r} is not an absolute path")
    if not Path(cri.cni.conf_dir).is_absolute():
        raise ConfigError("cri.cni.conf_dir must be an absolute path")


_HOST_NAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# sd_booted(3)'s test: systemd, as PID 1, creates this directory early at boot.
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")


def systemd_booted(runtime_dir: Path | None = None) -> bool:
    """Whether systemd is PID 1 (installed is not enough: nothing answers its D-Bus API)."""
    return (runtime_dir or SYSTEMD_RUNTIME_DIR).is_dir()


def check_host(config: Config, booted: Callable[[], bool] | None = None) -> Config:
    """What the configuration needs of this host, checked when the daemon starts (not in
    `validate`: a file may be checked on another host than the one it is written for)."""
    systemd = config.cri.enabled and config.cri.cgroup_driver == "systemd"
    if systemd and not (booted or systemd_booted)():
        raise ConfigError(
            'cri.cgroup_driver = "systemd" needs systemd running as PID 1 '
            f'({SYSTEMD_RUNTIME_DIR} is absent): use "cgroupfs"'
        )
    return config


def load(path: Path | None) -> Config:
    """Defaults, overlaid with the file if given (or the default path if it exists)."""
    return validate(read(path))


def read(path: Path | None) -> Config:
    """`load` without the validation (which imports the runtime code)."""
    config = Config()
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path}: {e}") from e
        _fill(config, values, "")
    return config


def to_toml(config: Config) -> str:
    """Render a config as TOML: scalars, lists of scalars and nested tables (as `[a.b]`)."""
    lines = _table(config, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(table: Any, path: str) -> list[str]:
    """`table`'s scalars, then its sub-tables, each under its dotted header."""
    scalars: list[str] = []
    subtables: list[str] = []
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        name = f"{path}.{f.name}" if path else f.name
        if isinstance(value, dict):
            if value:  # only the defaults are rendered, and their tables are empty
                raise ValueError(f"cannot render the non-empty table [{name}]")
            subtables.append(f"\n[{name}]")
        elif dataclasses.is_dataclass(value):
            subtables.append(f"\n[{name}]")
            subtables.extend(_table(value, name))
        elif isinstance(value, list):
            scalars.append(f"{f.name} = [{', '.join(_scalar(v) for v in value)}]")
        else:
            scalars.append(f"{f.name} = {_scalar(value)}")
    return scalars + subtables


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# What a SIGHUP can change in a running linerd; everything else needs a restart.
RELOADABLE = ("log", "registry", "metrics", "gc", "policy")
