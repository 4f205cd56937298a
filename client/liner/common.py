"""What the CLI needs before it knows its command: no grpc, no generated code, no rich.

`liner version` must not pay for the modules `liner run` or `liner images pull` use, so the
errors every command can raise (from liner.errors), the defaults its options show, and
`lazy_module` live here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from liner.errors import LinerClientError as LinerClientError  # re-exported

DEFAULT_ADDRESS = "/run/liner/liner.sock"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


class RunError(Exception):
    """A failure `liner run` reports as one line."""


class LazyModule:
    """Stands for a module that is imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> Any:
    """`name`, imported when first used (callers declare the real module for type checkers)."""
    return LazyModule(name)
