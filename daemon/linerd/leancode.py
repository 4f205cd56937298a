"""Modules compiled lean for linerd's processes: no docstrings, no column ranges, no
function annotations where they are only strings.

Code objects are about half of what the daemon's imports allocate, and they stay for the
process's lifetime. Three parts of them are never used by a daemon: docstrings (~2.7 MB idle,
most of them SQLAlchemy's), the column ranges of Python 3.11's location tables (what draws
the ^^^ under a traceback's line; ~0.2 MB), and the annotations of functions in modules
that postpone their evaluation (`from __future__ import annotations`: each annotated
function keeps a tuple of strings that only `typing.get_type_hints` would read; ~0.5 MB).
Python leaves out the first two only with -OO plus `-X no_debug_ranges`, and -OO also
removes every `assert` of the libraries, which changes their behaviour. This loader compiles
each module from its syntax tree without them and keeps everything else (asserts, line
numbers in tracebacks, `__debug__`, the annotations of classes, which dataclasses and
NamedTuples read, and every annotation a module evaluates at definition time).

The code is cached in a directory of its own (CACHE; LINERD_PYCACHE overrides it, empty
turns this off): the venv's .pyc files hold the full code. The cache is written whatever
PYTHONDONTWRITEBYTECODE says (it is only ours); a module is compiled once per change of its
source. `__doc__` is None on what the loader loads, as under -OO.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType

CACHE = Path("/var/cache/liner/pycache")
ENV = "LINERD_PYCACHE"
# In every cached file's name: a change to what `_lean` does must change it.
_TAG = "lean2"
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _is_string(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _postpones_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(stmt, ast.ImportFrom)
        and stmt.module == "__future__"
        and any(alias.name == "annotations" for alias in stmt.names)
        for stmt in tree.body
    )


def _drop_annotations(node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    node.returns = None
    a = node.args
    for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
        if arg is not None:
            arg.annotation = None


def _lean(tree: ast.Module) -> ast.Module:
    postponed = _postpones_annotations(tree)
    for node in ast.walk(tree):
        if postponed and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            _drop_annotations(node)
        if isinstance(node, _DOCUMENTED):
            body = node.body
            # A string statement does nothing but document; the one after a removed
            # docstring would become the docstring.
            if body and _is_string(body[0]):
                first = body[0]
                while body and _is_string(body[0]):
                    body.pop(0)
                if not body:
                    body.append(ast.copy_location(ast.Pass(), first))
        if getattr(node, "end_col_offset", None) is not None:
            # No columns, one line: the location table's short form, as no_debug_ranges.
            node.col_offset = node.end_col_offset = -1  # type: ignore[attr-defined]
            node.end_lineno = node.lineno  # type: ignore[attr-defined]
    return tree


def compile_lean(source: bytes, path: str) -> CodeType:
    return compile(_lean(ast.parse(source, path)), path, "exec", dont_inherit=True)


class LeanLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader whose code comes from `compile_lean`, cached under `cache`."""

    cache: Path = CACHE

    def get_code(self, fullname: str) -> CodeType:
        code = self.code_of(self.get_filename(fullname))
        assert code is not None
        return code

    def code_of(self, source_path: str, *, load: bool = True) -> CodeType | None:
        """The lean code of `source_path`: from the cache, or compiled and cached. With
        `load` False, None where the cache is up to date (nothing unmarshalled)."""
        st = os.stat(source_path)
        header = (
            importlib.util.MAGIC_NUMBER
            + bytes(4)  # flags: a timestamp-based pyc
            + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
            + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        )
        cached = self.cache_path(source_path)
        with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
            data = cached.read_bytes()
            if data[:16] == header:
                if not load:
                    return None
                code = marshal.loads(memoryview(data)[16:])
                if isinstance(code, CodeType):
                    return code
        code = compile_lean(self.get_data(source_path), source_path)
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            tmp.write_bytes(header + marshal.dumps(code))
            os.replace(tmp, cached)
        return code

    def cache_path(self, source_path: str) -> Path:
        src = Path(source_path)
        tag = sys.implementation.cache_tag
        opt = f".opt-{sys.flags.optimize}" if sys.flags.optimize else ""
        return self.cache / src.parent.relative_to("/") / f"{src.stem}.{tag}.{_TAG}{opt}.pyc"


def _private_dir(path: Path) -> bool:
    """`path` exists or was made, is ours, and nobody else can write into it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022 and os.access(path, os.W_OK)


def install(cache: Path | None = None) -> bool:
    """Load every module imported from now on (from source directories) with `LeanLoader`,
    cached under `cache` (default: $LINERD_PYCACHE, else CACHE). False, and nothing
    changed, where it is turned off or the directory is not a private one of ours."""
    if cache is None:
        env = os.environ.get(ENV)
        if env == "":
            return False
        cache = Path(env) if env else CACHE
    if not cache.is_absolute() or not _private_dir(cache):
        return False
    if any(getattr(h, "lean", False) for h in sys.path_hooks):
        return True
    loader = type("LeanLoader", (LeanLoader,), {"cache": cache})
    hook = importlib.machinery.FileFinder.path_hook(
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (loader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )
    hook.lean = True  # type: ignore[attr-defined]
    hook.loader = loader  # type: ignore[attr-defined]
    # Before the default FileFinder hook (the zipimporter's stays first).
    at = next(
        (i for i, h in enumerate(sys.path_hooks) if "FileFinder" in getattr(h, "__qualname__", "")),
        len(sys.path_hooks),
    )
    sys.path_hooks.insert(at, hook)
    sys.path_importer_cache.clear()  # the finders made so far use the default hook
    return True


def warm() -> int:
    """Compile linerd's modules and what they import into the cache (`make setup` and
    `make install` do, so that a daemon does not: compiling leaves ~2-5 MB of freed syntax
    trees in its heap), and every module of the installed packages among them (what
    linerd imports only at work). Returns how many of those packages' modules are in the
    cache."""
    import importlib
    import pkgutil
    import sysconfig

    if not install():
        return 0
    import argparse

    import linerd
    from linerd.main import _tune_process

    _tune_process(argparse.Namespace(log_format="json", config=None))  # as a daemon imports
    for info in pkgutil.walk_packages(linerd.__path__, "linerd."):
        if info.name.endswith("__main__"):
            continue
        with contextlib.suppress(Exception):
            importlib.import_module(info.name)
    installed = Path(sysconfig.get_paths()["purelib"])
    packages = set()
    for name, module in list(sys.modules.items()):
        init = getattr(module, "__file__", None) or ""
        top = "." not in name and init.endswith("__init__.py")
        if top and Path(init).parent.parent == installed:
            packages.add(Path(init).parent)
    loader = next(getattr(h, "loader", None) for h in sys.path_hooks if getattr(h, "lean", 0))
    cached = 0
    for package in sorted(packages):
        for source in package.rglob("*.py"):
            with contextlib.suppress(Exception):  # a file no import reaches may not compile
                loader("", str(source)).code_of(str(source), load=False)
                cached += 1
    return cached


if __name__ == "__main__":
    print(f"linerd.leancode: {warm()} modules of the daemon's packages in the cache")
