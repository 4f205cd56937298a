"""A CNI client for pod networks: the CNI spec 1.0 as libcni and containerd's go-cni apply it.

- Config: the lexically first usable `*.conf|*.conflist|*.json` in the conf dir (a single
  plugin `.conf` is wrapped into a one-plugin list). No usable file = network not ready.
- A pod's `lo` is set up first, in process (`netns.loopback_up`: what the `loopback` plugin
  containerd attaches does, without a Go binary's start per ADD and per DEL; the namespace's
  removal undoes it). Then the configured list on `eth0`: ADD runs the list's plugins in
  order, each getting the previous one's result as `prevResult`; DEL runs them all in
  reverse, even past a failing one. A pod attached by an older liner has a cached loopback
  attachment: its DEL still runs the plugin once, which removes that cache entry.
- The final ADD result is cached per network, container and interface, in libcni's own format
  (`<cache>/results/<network>-<container>-<ifname>`, kind `cniCacheV1`, with the config used).
  DEL reads it (prevResult, the same config and arguments), so a DEL after a daemon restart or a
  config change undoes what ADD did; the pod IP is read back from it too.
- DEL is idempotent: a gone netns is passed as an empty CNI_NETNS and a missing cache still
  runs DEL with the current config (an ADD cut short by a crash leaves no cache but may have
  allocated an address).
- Each operation (ADD, DEL, CHECK) runs whole in one of CNI's worker threads: the config and
  caches read, every plugin started in the host namespace and waited for (with a timeout),
  the cache written. Plugins' error objects `{code, msg, details}` become linerd.errdefs
  exceptions carrying the plugin's message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from linerd.cri import netns
from linerd.errdefs import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LinerError,
    NotFound,
    Unavailable,
)

log = structlog.get_logger("linerd.cri.cni")
T = TypeVar("T")
# Where plugins run (CNI._operation): threads made as needed, up to this many pods' operations
# at once; more wait their turn.
_PLUGINS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="linerd-cni")

DEFAULT_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
DEFAULT_CONF_DIR = "/etc/cni/net.d"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
DEFAULT_IFNAME = "eth0"
CACHE_KIND = "cniCacheV1"

# What containerd attaches to every pod first (`lo` up); the plugin ignores CNI_IFNAME. liner
# sets lo up itself; the list remains for the DEL of pods an older liner attached with it.
LOOPBACK_CONFIG = b'{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}'

# libcni's rule for network names and container ids; both become parts of cache file names.
_SAFE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
# Where a minimal environment lacks them, iptables (portmap, bridge's ipMasq) is in sbin.
_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True, slots=True)
class NetworkConfigList:
    name: str
    cni_version: str
    disable_check: bool
    plugins: tuple[Mapping[str, Any], ...]
    raw: bytes  # the list as JSON, as cached for DEL
    source: str = ""  # the file it came from


@dataclass(frozen=True, slots=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class PodRef:
    """The Kubernetes identity of a pod, passed to plugins in CNI_ARGS."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class PodNetwork:
    """What the pod got: eth0's first IPv4 address (else first address), then the others."""

    ip: str
    additional_ips: tuple[str, ...]
    result: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    ready: bool
    reason: str = ""
    message: str = ""
    network: str = ""  # the loaded list's name
    source: str = ""  # and its file


# ---- config --------------------------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def _check_plugin(plugin: object, where: str) -> Mapping[str, Any]:
    if not isinstance(plugin, dict):
        raise InvalidArgument(f"{where}: a plugin is not a JSON object")
    kind = plugin.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidArgument(f"{where}: a plugin has no 'type'")
    if "/" in kind or kind in (".", ".."):
        raise InvalidArgument(f"{where}: invalid plugin type {kind!r}")
    return plugin


def _name_and_version(obj: Mapping[str, Any], where: str) -> tuple[str, str]:
    name = obj.get("name")
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise InvalidArgument(f"{where}: missing or invalid network 'name' {name!r}")
    version = obj.get("cniVersion", "")
    if not isinstance(version, str):
        raise InvalidArgument(f"{where}: 'cniVersion' is not a string")
    return name, version


def parse_config_list(data: bytes, source: str = "") -> NetworkConfigList:
    """A `.conflist`: {cniVersion, name, disableCheck?, plugins: [...]}."""
    where = source or "config list"
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{where}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    name, version = _name_and_version(obj, where)
    disable = obj.get("disableCheck", False)
    if isinstance(disable, str) and disable.lower() in ("true", "false"):
        disable = disable.lower() == "true"  # libcni accepts the string forms too
    if not isinstance(disable, bool):
        raise InvalidArgument(f"{where}: 'disableCheck' is not a boolean")
    plugins = obj.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InvalidArgument(f"{where}: no plugins in list")
    return NetworkConfigList(
        name=name,
        cni_version=version,
        disable_check=disable,
        plugins=tuple(_check_plugin(p, where) for p in plugins),
        raw=bytes(data),
        source=source,
    )


def parse_config(data: bytes, source: str = "") -> NetworkConfigList:
    """A single-plugin `.conf`/`.json`, wrapped into a list of one, as libcni does."""
    where = source or "config"
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{where}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    if "plugins" in obj and "type" not in obj:
        raise InvalidArgument(f"{where}: a config list in a single-plugin file")
    name, version = _name_and_version(obj, where)
    plugin = _check_plugin(obj, where)
    wrapped = {"cniVersion": version, "name": name, "plugins": [plugin]}
    return parse_config_list(json.dumps(wrapped).encode(), source)


def load_file(path: Path) -> NetworkConfigList:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{path}: {e.strerror}") from None
    if path.suffix == ".conflist":
        return parse_config_list(data, str(path))
    return parse_config(data, str(path))


def load_conf_dir(conf_dir: Path) -> NetworkConfigList:
    """The lexically first usable config in `conf_dir`.

    Raises FailedPrecondition when none loads, naming what was wrong with each file.
    """
    try:
        names = sorted(
            e.name for e in os.scandir(conf_dir) if e.name.endswith(CONF_EXTENSIONS) and e.is_file()
        )
    except FileNotFoundError:
        raise FailedPrecondition(f"cni config not initialized: {conf_dir} does not exist") from None
    except OSError as e:
        raise FailedPrecondition(f"cni config not initialized: {conf_dir}: {e.strerror}") from None
    problems: list[str] = []
    for name in names:
        try:
            return load_file(conf_dir / name)
        except InvalidArgument as e:
            problems.append(str(e))
    if not problems:
        raise FailedPrecondition(
            f"cni config not initialized: no network config found in {conf_dir}"
        )
    raise FailedPrecondition("cni config not initialized: no usable config: " + "; ".join(problems))


# ---- results -------------------------------------------------------------------------------


def _address_of(cidr: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(cidr, str):
        return None
    try:
        return ipaddress.ip_interface(cidr).ip
    except ValueError:
        return None


def result_ips(
    result: Mapping[str, Any], ifname: str = DEFAULT_IFNAME
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a result gives `ifname` in the sandbox, in the result's order.

    An `ips` entry points at its interface by index; one without an index (allowed by the spec)
    counts when no sandbox interface is named `ifname`. A 0.2.0 result has `ip4`/`ip6` instead.
    """
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if "ips" not in result:  # 0.1.0/0.2.0
        for key in ("ip4", "ip6"):
            entry = result.get(key)
            if isinstance(entry, dict) and (a := _address_of(entry.get("ip"))) is not None:
                addresses.append(a)
        return addresses
    interfaces = result.get("interfaces")
    interfaces = interfaces if isinstance(interfaces, list) else []
    wanted = {
        i
        for i, itf in enumerate(interfaces)
        if isinstance(itf, dict) and itf.get("name") == ifname and itf.get("sandbox")
    }
    ips = result.get("ips")
    for entry in ips if isinstance(ips, list) else []:
        if not isinstance(entry, dict):
            continue
        index = entry.get("interface")
        if wanted and index not in wanted:
            continue
        if not wanted and isinstance(index, int) and 0 <= index < len(interfaces):
            continue  # it names some other interface
        if (a := _address_of(entry.get("address"))) is not None:
            addresses.append(a)
    return addresses


def pod_network(result: Mapping[str, Any], ifname: str = DEFAULT_IFNAME) -> PodNetwork:
    """containerd's choice: the first IPv4 of `ifname` is the pod IP, the rest additional."""
    addresses = result_ips(result, ifname)
    primary = next((a for a in addresses if a.version == 4), addresses[0] if addresses else None)
    rest = tuple(str(a) for a in addresses if a != primary)
    return PodNetwork(ip=str(primary) if primary else "", additional_ips=rest, result=result)


# Spec error codes -> the errdefs class a caller sees; unknown (plugin-specific) codes: Internal.
_CODE_ERRORS: dict[int, type[LinerError]] = {
    1: FailedPrecondition,  # incompatible CNI version
    2: InvalidArgument,  # unsupported field in network configuration
    3: NotFound,  # container unknown or does not exist
    4: InvalidArgument,  # invalid necessary environment variables
    5: Internal,  # I/O failure
    6: InvalidArgument,  # failed to decode content
    7: InvalidArgument,  # invalid network config
    11: Unavailable,  # try again later
}


def plugin_error(
    plugin: str, command: str, status: int, stdout: bytes, stderr: bytes
) -> LinerError:
    """The exception for a failed plugin run, from its error object (stdout) or its stderr."""
    code: object = None
    msg = details = ""
    try:
        obj = json.loads(stdout) if stdout.strip() else None
    except (ValueError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict) and ("code" in obj or "msg" in obj):
        code = obj.get("code")
        msg = str(obj.get("msg") or "")
        details = str(obj.get("details") or "")
    else:
        msg = (stderr or stdout).decode(errors="replace").strip()
    text = f"plugin type={plugin!r} failed ({command}): {msg or f'exit status {status}'}"
    if details:
        text += f": {details}"
    cls = _CODE_ERRORS.get(code, Internal) if isinstance(code, int) else Internal
    error = cls(text)
    error.cni_code = code if isinstance(code, int) else None  # type: ignore[attr-defined]
    return error


# ---- the client ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attachment:
    """One network list on one interface of one container, with the args it was added with."""

    net: NetworkConfigList
    container_id: str
    ifname: str
    cni_args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any]


def cni_args(pod: PodRef, sandbox_id: str) -> tuple[tuple[str, str], ...]:
    return (
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", pod.namespace),
        ("K8S_POD_NAME", pod.name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", pod.uid),
    )


def capability_args(
    port_mappings: Sequence[PortMapping], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """runtimeConfig values by capability; containerd drops mappings without a host port."""
    args: dict[str, Any] = dict(extra or {})
    mappings = [
        {
            "hostPort": m.host_port,
            "containerPort": m.container_port,
            "protocol": (m.protocol or "tcp").lower(),
            "hostIP": m.host_ip,
        }
        for m in port_mappings
        if m.host_port > 0
    ]
    if mappings:
        args["portMappings"] = mappings
    return args


def plugin_stdin(
    net: NetworkConfigList,
    plugin: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
    capability_args: Mapping[str, Any],
) -> bytes:
    """One plugin's config: its object with the list's name and version, the capability args
    it declared as runtimeConfig, and the previous result."""
    conf = {k: v for k, v in plugin.items() if k != "capabilities"}
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    declared = plugin.get("capabilities")
    if isinstance(declared, dict):
        runtime = {k: v for k, v in capability_args.items() if declared.get(k) is True}
        if runtime:
            conf["runtimeConfig"] = runtime
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return json.dumps(conf).encode()


class CNI:
    """Pod networking through CNI plugins. One instance per daemon; safe to recreate (state is
    the cache directory only)."""

    def __init__(
        self,
        *,
        conf_dir: Path | str = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[Path | str] = DEFAULT_BIN_DIRS,
        cache_dir: Path | str,
        ifname: str = DEFAULT_IFNAME,
        timeout: float = 60.0,
        loopback_up: Callable[[Path], None] = netns.loopback_up,
    ) -> None:
        self.conf_dir = Path(conf_dir)
        self.bin_dirs = tuple(Path(d) for d in bin_dirs)
        self.cache_dir = Path(cache_dir)
        self.ifname = ifname
        self.timeout = timeout
        self._loopback_up = loopback_up  # blocking; raises a LinerError
        self._locks: dict[str, _Gate] = {}

    # -- config and status

    def load(self) -> NetworkConfigList:
        """The current network config (blocking: a directory listing and a few reads)."""
        return load_conf_dir(self.conf_dir)

    async def status(self) -> NetworkStatus:
        """NetworkReady for the CRI's Status: false with a reason while no config loads."""
        try:
            net = await asyncio.to_thread(self.load)
        except FailedPrecondition as e:
            return NetworkStatus(
                False, "NetworkPluginNotReady", f"Network plugin returns error: {e}"
            )
        return NetworkStatus(True, network=net.name, source=net.source)

    def find_plugin(self, kind: str) -> Path:
        for d in self.bin_dirs:
            path = d / kind
            if path.is_file() and os.access(path, os.X_OK):
                return path
        dirs = ", ".join(str(d) for d in self.bin_dirs)
        raise FailedPrecondition(f"failed to find plugin {kind!r} in path [{dirs}]")

    # -- operations

    async def setup(
        self,
        sandbox_id: str,
        netns_path: Path,
        pod: PodRef,
        port_mappings: Sequence[PortMapping] = (),
        extra_capability_args: Mapping[str, Any] | None = None,
    ) -> PodNetwork:
        """Set lo up, then attach the configured network; returns the pod's addresses.

        On failure everything attempted is deleted again (best effort) before the error is
        raised; a caller keeping the sandbox should still call teardown, which is harmless.
        """
        _check_id(sandbox_id)
        args = cni_args(pod, sandbox_id)
        caps = capability_args(port_mappings, extra_capability_args)
        async with self._lock(sandbox_id):
            result = await self._operation(self._setup_sync, sandbox_id, netns_path, args, caps)
        return pod_network(result, self.ifname)

    async def teardown(
        self,
        sandbox_id: str,
        netns_path: Path | None,
        pod: PodRef,
        port_mappings: Sequence[PortMapping] = (),
        extra_capability_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Detach the pod's networks; idempotent, and correct after a daemon restart.

        A cached ADD supplies the config, arguments and prevResult; without one the current
        config and the given arguments are used. A netns that is gone is passed as "".
        """
        _check_id(sandbox_id)
        args = cni_args(pod, sandbox_id)
        caps = capability_args(port_mappings, extra_capability_args)
        async with self._lock(sandbox_id):
            await self._operation(self._teardown_sync, sandbox_id, netns_path, args, caps)

    async def check(self, sandbox_id: str, netns_path: Path, pod: PodRef) -> None:
        """CHECK the configured network against the cached ADD result (spec 0.4.0+)."""
        _check_id(sandbox_id)
        async with self._lock(sandbox_id):
            await self._operation(self._check_sync, sandbox_id, netns_path)

    async def pod_network(self, sandbox_id: str) -> PodNetwork | None:
        """The addresses from the cached ADD result, e.g. after a daemon restart."""
        _check_id(sandbox_id)
        cached = await asyncio.to_thread(self._read_caches, sandbox_id, self.ifname)
        if cached is None or cached[1] is None:
            return None
        return pod_network(cached[1], self.ifname)

    # -- internals

    @contextlib.asynccontextmanager
    async def _lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """The spec forbids concurrent operations on one container."""
        gate = self._locks.setdefault(sandbox_id, _Gate())
        gate.users += 1  # counted, not lock.locked(): a woken waiter has not taken it yet
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._locks[sandbox_id]

    async def _operation(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a whole operation (config, caches, every plugin start to exit) in one hop to
        CNI's own threads (_PLUGINS): asyncio's subprocess transport would fork each plugin
        on the event loop and start a thread per child to wait for it, and a hop per plugin
        and per file costs the loop more than the work. A plugin holds its thread for its
        whole run, which must not take the default pool's few workers from the runtime's
        task creates. A cancelled caller kills the running plugin and waits for the
        operation to end (an ADD still deletes what it added), so no plugin outlives it:
        the sandbox's lock is released next, and a DEL may follow."""
        op = _Operation()
        work = asyncio.get_running_loop().run_in_executor(_PLUGINS, fn, *args, op)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            op.cancel()
            await asyncio.wait([work])
            if not work.cancelled():
                work.exception()  # retrieved: the cancellation is what the caller gets
            raise

    def _setup_sync(
        self,
        sandbox_id: str,
        netns_path: Path,
        args: tuple[tuple[str, str], ...],
        caps: Mapping[str, Any],
        op: _Operation,
    ) -> Mapping[str, Any]:
        net = self.load()  # network not ready: nothing touched
        self._loopback_up(netns_path)
        a = _Attachment(net, sandbox_id, self.ifname, args, caps)
        try:
            result = self._add(a, str(netns_path), op)
            self._write_cache(a, result)
        except BaseException:
            op.cleaning = True  # a cancelled ADD is deleted again all the same
            try:
                self._delete(a, str(netns_path), None, op)
            except Exception as e:  # the caller's teardown retries it
                log.warning("cni cleanup after failed add", sandbox=sandbox_id, error=str(e))
            raise
        return result

    def _teardown_sync(
        self,
        sandbox_id: str,
        netns_path: Path | None,
        args: tuple[tuple[str, str], ...],
        caps: Mapping[str, Any],
        op: _Operation,
    ) -> None:
        path = str(netns_path) if netns_path is not None and netns.is_pinned(netns_path) else ""
        cached = self._read_caches(sandbox_id, self.ifname)
        if cached is None:
            try:
                net = self.load()
            except FailedPrecondition as e:
                # Nothing records an attachment and no config says how to undo one.
                log.warning(
                    "cni teardown without cache or config", sandbox=sandbox_id, error=str(e)
                )
            else:
                cached = (_Attachment(net, sandbox_id, self.ifname, args, caps), None)
        # lo needs no DEL (it goes with the namespace) unless an older liner attached the
        # loopback plugin: its cache entry is undone (and removed) as it was made.
        lo = self._read_caches(sandbox_id, "lo")
        first: LinerError | None = None
        for attachment, result in [x for x in (cached, lo) if x is not None]:
            try:
                self._delete(attachment, path, result, op)
            except LinerError as e:
                first = first or e
        if first is not None:
            raise first

    def _check_sync(self, sandbox_id: str, netns_path: Path, op: _Operation) -> None:
        cached = self._read_caches(sandbox_id, self.ifname)
        if cached is None:
            raise NotFound(f"cannot check network of {sandbox_id}: no cached result")
        a, result = cached
        if _version_tuple(a.net.cni_version) < (0, 4, 0):
            raise FailedPrecondition(
                f"configuration version {a.net.cni_version!r} does not support CHECK"
            )
        if a.net.disable_check:
            return
        env = self._env("CHECK", a, str(netns_path))
        for plugin in a.net.plugins:
            stdin = plugin_stdin(a.net, plugin, result, a.capability_args)
            self._exec(str(plugin["type"]), "CHECK", stdin, env, op)

    def _add(self, a: _Attachment, netns_path: str, op: _Operation) -> Mapping[str, Any]:
        env = self._env("ADD", a, netns_path)
        prev: Mapping[str, Any] | None = None
        for plugin in a.net.plugins:
            stdin = plugin_stdin(a.net, plugin, prev, a.capability_args)
            out = self._exec(str(plugin["type"]), "ADD", stdin, env, op)
            if out is None:
                raise Internal(f"plugin type={plugin['type']!r} returned no result (ADD)")
            prev = out
        assert prev is not None  # a list has at least one plugin
        return prev

    def _delete(
        self,
        a: _Attachment,
        netns_path: str,
        cached: Mapping[str, Any] | None,
        op: _Operation,
    ) -> None:
        env = self._env("DEL", a, netns_path)
        # prevResult on DEL arrived with spec 0.4.0; older plugins must not see it.
        prev = cached if _version_tuple(a.net.cni_version) >= (0, 4, 0) else None
        # Unlike libcni, a failing plugin does not stop the others: one broken or missing
        # plugin must not keep the rest holding addresses and rules. DEL is idempotent, so the
        # retry (the cache stays until all succeed) repeats the ones that worked harmlessly.
        first: LinerError | None = None
        for plugin in reversed(a.net.plugins):
            stdin = plugin_stdin(a.net, plugin, prev, a.capability_args)
            try:
                self._exec(str(plugin["type"]), "DEL", stdin, env, op)
            except LinerError as e:
                first = first or e
        if first is not None:
            raise first
        self._remove_cache(a.net.name, a.container_id, a.ifname)

    def _env(self, command: str, a: _Attachment, netns_path: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        path = env.get("PATH", "").split(":")
        env["PATH"] = ":".join([p for p in path if p] + [p for p in _SYSTEM_PATH if p not in path])
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=a.container_id,
            CNI_NETNS=netns_path,
            CNI_IFNAME=a.ifname,
            CNI_PATH=":".join(str(d) for d in self.bin_dirs),
        )
        if a.cni_args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in a.cni_args)
        return env

    def _exec(
        self, kind: str, command: str, stdin: bytes, env: Mapping[str, str], op: _Operation
    ) -> dict[str, Any] | None:
        """Run one plugin to its exit; its parsed stdout (None if empty). Blocks."""
        path = self.find_plugin(kind)
        op.check()
        with subprocess.Popen(
            [str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        ) as proc:
            op.started(proc)
            try:
                stdout, stderr = proc.communicate(stdin, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise DeadlineExceeded(
                    f"plugin type={kind!r} ({command}) timed out after {self.timeout:g}s"
                ) from None
            finally:
                op.ended()
        if proc.returncode != 0:
            raise plugin_error(kind, command, proc.returncode or 0, stdout, stderr)
        if not stdout.strip():
            return None
        try:
            out = json.loads(stdout)
        except (ValueError, UnicodeDecodeError):
            raise Internal(f"plugin type={kind!r} ({command}) printed no JSON result") from None
        if not isinstance(out, dict):
            raise Internal(f"plugin type={kind!r} ({command}) printed no JSON object")
        return out

    # -- the result cache (libcni's file format, so its tools and ours read the same files)

    def _cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{network}-{container_id}-{ifname}"

    def _write_cache(self, a: _Attachment, result: Mapping[str, Any]) -> None:
        entry = {
            "kind": CACHE_KIND,
            "containerId": a.container_id,
            "config": base64.b64encode(a.net.raw).decode(),
            "ifName": a.ifname,
            "networkName": a.net.name,
            "cniArgs": [list(kv) for kv in a.cni_args],
            "capabilityArgs": dict(a.capability_args),
            "result": result,
        }
        target = self._cache_path(a.net.name, a.container_id, a.ifname)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())  # the only record of the allocation across a crash
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _remove_cache(self, network: str, container_id: str, ifname: str) -> None:
        self._cache_path(network, container_id, ifname).unlink(missing_ok=True)

    def _read_caches(
        self, container_id: str, ifname: str
    ) -> tuple[_Attachment, Mapping[str, Any] | None] | None:
        """The cached attachment of `container_id` on `ifname`, whatever network it was."""
        results = self.cache_dir / "results"
        suffix = f"-{container_id}-{ifname}"
        try:
            names = sorted(n for n in os.listdir(results) if n.endswith(suffix))
        except FileNotFoundError:
            return None
        for name in names:
            try:
                entry = json.loads((results / name).read_bytes())
                if entry.get("kind") != CACHE_KIND or entry.get("containerId") != container_id:
                    continue
                net = parse_config_list(base64.b64decode(entry["config"]), str(results / name))
                args = tuple((str(k), str(v)) for k, v in entry.get("cniArgs") or ())
                caps = entry.get("capabilityArgs") or {}
                result = entry.get("result")
            except (OSError, ValueError, KeyError, TypeError, InvalidArgument) as e:
                log.warning("unreadable cni cache entry", path=str(results / name), error=str(e))
                continue
            attachment = _Attachment(net, container_id, ifname, args, caps)
            return attachment, result if isinstance(result, dict) else None
        return None


@dataclass(slots=True)
class _Gate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class _Cancelled(Exception):
    """The operation's caller went away: no further plugin starts (not a LinerError, so a
    DEL loop that goes on past a failing plugin stops here)."""


class _Operation:
    """One operation's plugin runs, seen from its worker thread and from the event loop that
    may cancel it. Once cancelled, the running plugin is killed and no other starts, except
    while `cleaning` (the DEL of an ADD cut short, which must run to its end)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None
        self._cancelled = False
        self.cleaning = False

    def check(self) -> None:
        if self._cancelled and not self.cleaning:
            raise _Cancelled("the operation was cancelled")

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        with self._mutex:
            self._running = proc
            if self._cancelled and not self.cleaning:
                _kill(proc)

    def ended(self) -> None:
        with self._mutex:
            self._running = None

    def cancel(self) -> None:
        with self._mutex:
            self._cancelled = True
            if self._running is not None and not self.cleaning:
                _kill(self._running)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _check_id(container_id: str) -> None:
    if not _SAFE_NAME.match(container_id):
        raise InvalidArgument(f"invalid container id {container_id!r}")
