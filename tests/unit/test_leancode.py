"""linerd.leancode: modules compiled without docstrings, column ranges and postponed function
annotations, cached apart."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import traceback
import types
from pathlib import Path

import pytest

from linerd import leancode

pytestmark = pytest.mark.unit

SOURCE = textwrap.dedent(
    '''\
    """The module's docstring."""

    from __future__ import annotations

    "a second string statement, which would become the docstring"


    class Documented:
        """A class's docstring."""

        def method(self) -> int:
            """A method's docstring."""
            return 1


    def only_a_docstring():
        """Nothing else."""


    async def coroutine():
        """An async function's docstring."""
        return 2


    def failing(x):
        assert x, "kept"
        return x


    def raising():
        return {}["missing"]


    ANNOTATION: Documented | None = None
    '''
)


def _run(code: object) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "lean_sample"}
    exec(code, namespace)
    return namespace


def test_docstrings_are_left_out_and_the_rest_kept() -> None:
    ns = _run(leancode.compile_lean(SOURCE.encode(), "/sample.py"))
    documented = ns["Documented"]
    assert ns.get("__doc__") is None
    assert documented.__doc__ is None  # type: ignore[attr-defined]
    assert documented.method.__doc__ is None  # type: ignore[attr-defined]
    assert documented().method() == 1  # type: ignore[operator]
    assert ns["only_a_docstring"]() is None  # type: ignore[operator]
    assert ns["only_a_docstring"].__doc__ is None  # type: ignore[attr-defined]
    assert ns["coroutine"].__doc__ is None  # type: ignore[attr-defined]
    # from __future__ still applies after the docstring: annotations stay strings.
    assert ns["__annotations__"] == {"ANNOTATION": "Documented | None"}
    with pytest.raises(AssertionError, match="kept"):  # asserts stay (unlike -OO)
        ns["failing"](0)  # type: ignore[operator]


def test_postponed_function_annotations_are_left_out_class_annotations_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = textwrap.dedent(
        """\
        from __future__ import annotations

        import dataclasses


        @dataclasses.dataclass
        class Record:
            name: str
            size: int = 0

            def grown(self, by: int = 1) -> Record:
                return Record(self.name, self.size + by)


        async def fetch(ref: str, *more: str, timeout: float = 1.0, **kw: object) -> bytes:
            return b""
        """
    )
    module = types.ModuleType("lean_sample")
    monkeypatch.setitem(sys.modules, "lean_sample", module)  # dataclasses looks it up
    exec(leancode.compile_lean(source.encode(), "/sample.py"), module.__dict__)
    ns = module.__dict__
    record = ns["Record"]
    assert record.__annotations__ == {"name": "str", "size": "int"}  # type: ignore[attr-defined]
    assert record("a").grown(2) == record("a", 2)  # type: ignore[operator]
    assert [f.name for f in dataclasses.fields(record)] == ["name", "size"]  # type: ignore[arg-type]
    assert record.grown.__annotations__ == {}  # type: ignore[attr-defined]
    assert ns["fetch"].__annotations__ == {}  # type: ignore[attr-defined]
    # Where annotations are evaluated at definition time, the module may rely on it: kept.
    evaluated = "def f(x: int) -> str:\n    return str(x)\n"
    ns = _run(leancode.compile_lean(evaluated.encode(), "/evaluated.py"))
    assert ns["f"].__annotations__ == {"x": int, "return": str}  # type: ignore[attr-defined]


def test_tracebacks_keep_line_numbers_without_columns() -> None:
    ns = _run(leancode.compile_lean(SOURCE.encode(), "/sample.py"))
    with pytest.raises(KeyError) as caught:
        ns["raising"]()  # type: ignore[operator]
    line = SOURCE.splitlines().index('    return {}["missing"]') + 1
    frame = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno) == ("/sample.py", line)
    code = ns["raising"].__code__  # type: ignore[attr-defined]
    positions = {p for p in code.co_positions() if p[0] == line}
    assert positions == {(line, line, None, None)}


def test_lean_code_is_smaller() -> None:
    import marshal

    full = compile(SOURCE, "/sample.py", "exec", dont_inherit=True)
    lean = leancode.compile_lean(SOURCE.encode(), "/sample.py")
    assert len(marshal.dumps(lean)) < len(marshal.dumps(full))


def _import_in_child(cache: Path, module_dir: Path, name: str, code: str = "") -> str:
    script = (
        "import sys\n"
        "from linerd import leancode\n"
        f"assert leancode.install()\n"
        f"sys.path.insert(0, {str(module_dir)!r})\n"
        f"import {name}\n"
        f"{code}\n"
    )
    env = {**os.environ, leancode.ENV: str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_imports_after_install_are_lean_and_cached(tmp_path: Path) -> None:
    cache, modules = tmp_path / "cache", tmp_path / "modules"
    modules.mkdir()
    (modules / "lean_sample.py").write_text(SOURCE)
    check = (
        "import lean_sample, json.decoder\n"
        "assert lean_sample.__doc__ is None and lean_sample.Documented.__doc__ is None\n"
        "assert type(lean_sample.__spec__.loader).__name__ == 'LeanLoader'\n"
        "assert json.decoder.JSONDecoder.__doc__ is None\n"  # the standard library's too
        "print(lean_sample.Documented().method())"
    )
    assert _import_in_child(cache, modules, "lean_sample", check).strip() == "1"
    # Written though PYTHONDONTWRITEBYTECODE is set: the cache is only ours.
    cached = list(cache.rglob("lean_sample.*.pyc"))
    assert len(cached) == 1 and cached[0].is_relative_to(cache / modules.relative_to("/"))
    assert not (modules / "__pycache__").exists()
    # A changed source is compiled again.
    (modules / "lean_sample.py").write_text(SOURCE + "\nVALUE = 'changed source'\n")
    out = _import_in_child(cache, modules, "lean_sample", "print(lean_sample.VALUE)")
    assert out.strip() == "changed source"


def test_a_cache_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    hooks = list(sys.path_hooks)
    assert not leancode.install(shared)
    assert not leancode.install(Path("relative"))
    assert sys.path_hooks == hooks


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(leancode.ENV, "")
    hooks = list(sys.path_hooks)
    assert not leancode.install()
    assert sys.path_hooks == hooks


def test_a_daemon_process_loads_lean_code(tmp_path: Path) -> None:
    code = (
        "import argparse, sys\n"
        "from linerd import main\n"
        "main._tune_process(argparse.Namespace(log_format=None, config=None))\n"
        "import linerd.server, linerd.metadata.db\n"
        "from sqlalchemy.sql import selectable\n"
        "assert selectable.Select.__doc__ is None and selectable.__doc__ is None\n"
        "from linerd.local import containers\n"
        "assert type(containers.__spec__.loader).__name__ == 'LeanLoader'\n"
    )
    env = {**os.environ, leancode.ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert list(tmp_path.rglob("selectable.*.pyc"))


def test_warm_fills_the_cache_with_what_a_daemon_imports_at_work(tmp_path: Path) -> None:
    env = {**os.environ, leancode.ENV: str(tmp_path)}
    run = [sys.executable, "-m", "linerd.leancode"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    assert int(out.split(":")[1].split()[0]) > 0
    for module in ("linerd/server", "sqlalchemy/sql/selectable", "h11/_connection"):
        assert list(tmp_path.rglob(f"{module}.*.pyc")), module
    assert not list(tmp_path.rglob("rich/*.pyc"))  # a daemon's JSON logging never loads it
