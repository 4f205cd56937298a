"""`linerd`: flags as containerd's (--config, --root, --state, --address, --log-level)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing else here: a linerd process installs its lean loader first thing in main() (the
# standard library's argparse, dataclasses, typing and inspect, which the configuration
# imports, load through it too), and the rest of the daemon is imported after the process is
# tuned (which optional modules stay out), so that the tuning applies to those imports.
TYPE_CHECKING = False  # typing's, without importing typing (0.45 MB) before the loader
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from linerd.config import Config

_M_ARENA_MAX = -8  # glibc mallopt parameter (malloc.h)
# glibc gives each thread that contends for malloc an arena of its own (up to 8 per core); the
# threads a pull or unpack uses (the database's, the executor's, grpc's) each kept pages of
# their own arena, partly in use: after two ctr pulls of the bench images RSS was ~10 MB
# higher than with two arenas. With two, which threads landed in the second arena varied
# from start to start, and with it how much its free fragments kept: with the CRI at 30 pods
# of 2, Pss_Anon was 37.3 or 38.3-38.8 MB by the start, with one arena 37.2-37.3 every time.
# Allocation-heavy work runs under the GIL or in the unpack worker process, and small
# allocations come from each thread's cache without the arena's lock: one arena costs no
# measurable speed.
_ARENA_MAX = 1
_PYTHON_MESSAGE = "google.protobuf.internal.python_message"


def _parser() -> argparse.ArgumentParser:
    import argparse

    from linerd import __version__
    from linerd.config import LOG_LEVELS

    p = argparse.ArgumentParser(prog="linerd", description="liner container manager daemon")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        help="TOML config file (default /etc/liner/config.toml if present)",
    )
    p.add_argument("--root", help="persistent state directory (default /var/lib/liner)")
    p.add_argument("--state", help="runtime state directory (default /run/liner)")
    p.add_argument("-a", "--address", help="gRPC unix socket (default /run/liner/liner.sock)")
    p.add_argument("-l", "--log-level", type=str.lower, choices=list(LOG_LEVELS))
    p.add_argument("--log-format", choices=["json", "console"])
    p.add_argument("--metrics-address", help="host:port for Prometheus metrics at /v1/metrics")
    p.add_argument("-v", "--version", action="version", version=f"linerd {__version__}")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("config-default", help="print the default configuration")
    store = sub.add_parser(
        "check-store", help="check the store: records against files, chains, leaks (exit 1 if any)"
    )
    store.add_argument("--verify", action="store_true", help="re-hash every blob")
    store.add_argument(
        "--repair",
        action="store_true",
        help="remove what is provably orphaned (linerd must be stopped)",
    )
    return p


# The daemon's own dependencies: the `daemon` extra of the package (the base is the client's).
_DAEMON_MODULES = (
    "sqlalchemy",
    "structlog",
    "zstandard",
    "isal",
    "h11",
    "prometheus_client",
    "grpc_health",
    "cryptography",
)


def _missing_extra() -> str | None:
    import importlib.util

    missing = [m for m in _DAEMON_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"linerd: {', '.join(missing)} not installed: install liner with its daemon extra "
        "(pip install 'liner[daemon]')"
    )


def _check_store(args: argparse.Namespace) -> int:
    """`linerd check-store`: one line per inconsistency; the daemon's files, read directly."""
    from linerd.config import ConfigError
    from linerd.fsck import RootBusy, check_store, repair

    try:
        config = _loader(args)()
    except ConfigError as e:
        print(f"linerd: {e}", file=sys.stderr)
        return 2
    root, state = Path(config.root), Path(config.state)
    findings = check_store(root, state, verify=args.verify)
    if args.repair:
        try:
            fixed = repair(findings, root)
        except RootBusy as e:
            print(f"linerd: {e}", file=sys.stderr)
            return 1
        for finding in fixed:
            print(f"repaired {finding}")
        findings = check_store(root, state, verify=args.verify)
    for finding in findings:
        print(finding)
    return 1 if findings else 0


def _loader(args: argparse.Namespace) -> Callable[[], Config]:
    """The configuration: the file, then the flags over it. Called again on SIGHUP."""
    from linerd.config import check_host, load, validate

    def load_config() -> Config:
        config = load(args.config)
        paths = [
            (args.root, config, "root"),
            (args.state, config, "state"),
            (args.address, config.grpc, "address"),
        ]
        for flag, target, name in paths:
            if flag:
                setattr(target, name, str(Path(flag).absolute()))
        values = [
            (args.log_level, config.log, "level"),
            (args.log_format, config.log, "format"),
            (args.metrics_address, config.metrics, "address"),
        ]
        for flag, target, name in values:
            if flag:
                setattr(target, name, flag)
        return check_host(validate(config))

    return load_config


def _deferred_module(name: str) -> None:
    """Stand in for module `name` until one of its attributes is read: then import it for
    real and forward to it. (importlib's LazyLoader loads on the next `import` statement
    already, which reads the module's __spec__.)"""
    import importlib
    import importlib.machinery
    import types

    stub = types.ModuleType(name)
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
    real: list[types.ModuleType] = []

    def load(attr: str) -> object:
        if not real:
            if sys.modules.get(name) is stub:
                del sys.modules[name]
            real.append(importlib.import_module(name))
        return getattr(real[0], attr)

    stub.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = stub


def _tune_process(args: argparse.Namespace) -> None:
    """Settings for a linerd process (not for a test calling main() in its own process)."""
    from linerd import leancode
    from linerd.config import ConfigError, read

    # Code without docstrings and column tables for what is imported from here on (~3 MB);
    # main() installs it before anything else already.
    leancode.install()
    if "MALLOC_ARENA_MAX" not in os.environ:  # the environment's setting wins
        try:
            import ctypes

            ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _ARENA_MAX)
        except (OSError, AttributeError):  # not glibc
            pass
    # SQLAlchemy imports importlib.metadata at import time for its plugin entry points, which
    # a daemon with the built-in SQLite dialect never reads: with email, zipfile, csv and
    # its other imports that is ~1 MB kept for good. Loaded on first use instead.
    if "importlib.metadata" not in sys.modules:
        _deferred_module("importlib.metadata")
    # zstandard (~0.75 MB with its library's tables) is imported by the unpack code, which the
    # first pull of any image loads; only a zstd layer small enough to be staged in the
    # daemon (large ones go to the zygote's workers) or a zstd Diff uses it.
    if "zstandard" not in sys.modules:
        _deferred_module("zstandard")
    # protobuf's pure-Python message implementation: descriptor_pool and builder import it
    # (with text_format, its encoder and decoder: ~0.7 MB) whatever the backend, and only
    # the python backend uses it; the daemon runs on upb.
    if _PYTHON_MESSAGE not in sys.modules:
        _deferred_module(_PYTHON_MESSAGE)
    # SQLAlchemy's SQLite package imports its asyncio and SQLCipher dialects beside pysqlite
    # (with its asyncio connector, ~0.12 MB); a URL naming one loads it through the stub.
    for dialect in ("aiosqlite", "pysqlcipher"):
        if f"sqlalchemy.dialects.sqlite.{dialect}" not in sys.modules:
            _deferred_module(f"sqlalchemy.dialects.sqlite.{dialect}")
    # locale's alias tables (~0.55 MB): argparse's gettext read them to name the language of
    # its messages (nothing is translated); later, subprocess and calendar import locale but
    # only read it for text-mode pipes without an encoding and localized calendars. The
    # parser is done, and no module took a reference to it yet (gettext imports it in a
    # function): a stub stands in until an attribute is read.
    locale = sys.modules.get("locale")
    if locale is not None and not any(
        value is locale
        for module in list(sys.modules.values())
        for value in getattr(module, "__dict__", {}).values()
    ):
        del sys.modules["locale"]
        _deferred_module("locale")
    try:
        fmt = args.log_format or read(args.config).log.format
    except ConfigError:
        fmt = "console"  # Daemon() reports the error; nothing to decide here
    if fmt != "console":
        # structlog imports rich (3-4 MB, ~50 ms) only to format exceptions for its console
        # renderer; the JSON renderer never uses it.
        sys.modules.setdefault("rich", None)  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a linerd process (not a test calling main() in its own process)
        from linerd import leancode

        leancode.install()
    from linerd.config import Config, ConfigError, to_toml

    args = _parser().parse_args(argv)
    if args.command == "config-default":
        sys.stdout.write(to_toml(Config()))
        return 0
    missing = _missing_extra()
    if missing:
        print(missing, file=sys.stderr)
        return 1
    if args.command == "check-store":
        return _check_store(args)
    if argv is None:
        _tune_process(args)

    import asyncio

    import structlog

    from linerd import log, priority
    from linerd.server import Daemon, StartupError

    try:
        daemon = Daemon(_loader(args))
    except ConfigError as e:
        print(f"linerd: {e}", file=sys.stderr)
        return 2
    log.setup(daemon.config.log.level, daemon.config.log.format)
    # The event loop's thread shares the GIL with the database thread and the runtime's
    # workers; at the default 5 ms switch interval each handoff back to it could wait that
    # long. At 1 ms, with 200 running and 10 clients creating and removing (bench (g)), the
    # Lists' p99 fell ~1.5x and the clients completed ~1.5x as many cycles.
    sys.setswitchinterval(0.001)
    why_not = priority.prioritize_loop(daemon.config.loop_nice)
    if why_not:
        structlog.get_logger("linerd").info("event loop at its start's priority", why=why_not)
    try:
        asyncio.run(daemon.run())
    except StartupError as e:
        structlog.get_logger("linerd").error("cannot start", error=str(e))
        print(f"linerd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
