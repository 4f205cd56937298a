#!/usr/bin/env python3
"""Generate the ``liner_api`` Python package from the .proto files in api/proto.

Usage (from the repository root)::

    python api/generate.py            # regenerate api/liner_api
    python api/generate.py --check    # exit 1 if api/liner_api is out of date

Python code is generated for everything under ``api/proto/containerd``,
``api/proto/liner`` (liner's own services) and ``api/proto/runtime`` (the
Kubernetes CRI, package ``runtime.v1``); gRPC stubs only for the service
definitions under ``containerd/services``, ``liner/services`` and ``runtime``.
Generated imports are rewritten into the ``liner_api`` package, so the CRI
lives at ``liner_api.runtime.v1`` and no top-level ``runtime`` module exists.
Files
under ``api/proto/google`` are include-only: at runtime their modules come
from the ``protobuf`` / ``googleapis-common-protos`` distributions.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

API_DIR = Path(__file__).resolve().parent
PROTO_DIR = API_DIR / "proto"
OUT_DIR = API_DIR / "liner_api"
PACKAGE = "liner_api"
# containerd's API, liner's own additions (daemon-side pull and push) and the CRI.
GENERATED_ROOTS = ("containerd", "liner", "runtime")
# The CRI keeps its services in the same file as its messages.
SERVICES_ROOTS = ("containerd/services", "liner/services", "runtime")
TOP_INIT = '"""Generated Python bindings for the containerd-compatible liner API."""\n'
IGNORED_NAMES = frozenset({"__pycache__"})

# Top-level imports of generated modules must point into the liner_api package;
# google.protobuf / google.rpc imports are left untouched.
_IMPORT_RE = re.compile(rf"^(\s*)(from|import) ({'|'.join(GENERATED_ROOTS)})(?=[. ])", re.MULTILINE)


def proto_sources(root: str) -> list[str]:
    """Return sorted proto paths (relative to PROTO_DIR) below ``root``."""
    base = PROTO_DIR / root
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in base.rglob("*.proto"))


def run_protoc(args: list[str]) -> None:
    """Run grpc_tools.protoc in a subprocess with the bundled well-known types."""
    bundled = Path(grpc_tools.__file__).resolve().parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={bundled}",
        *args,
    ]
    result = subprocess.run(cmd, cwd=PROTO_DIR, check=False)
    if result.returncode != 0:
        msg = f"protoc failed ({result.returncode}): {' '.join(args)}"
        raise SystemExit(msg)


def rewrite_imports(path: Path) -> None:
    """Make generated imports absolute within the liner_api package."""
    text = path.read_text(encoding="utf-8")
    new = _IMPORT_RE.sub(rf"\1\2 {PACKAGE}.\3", text)
    if new != text:
        path.write_text(new, encoding="utf-8")


def add_init_files(pkg_root: Path) -> None:
    """Create an __init__.py in every package directory below ``pkg_root``."""
    for directory in sorted(d for d in pkg_root.rglob("*") if d.is_dir()):
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("", encoding="utf-8")
    (pkg_root / "__init__.py").write_text(TOP_INIT, encoding="utf-8")
    (pkg_root / "py.typed").write_text("", encoding="utf-8")


def generate(dest: Path) -> None:
    """Generate the full liner_api package into ``dest`` (which must exist)."""
    sources = [p for root in GENERATED_ROOTS for p in proto_sources(root)]
    services = [p for root in SERVICES_ROOTS for p in proto_sources(root)]
    run_protoc([f"--python_out={dest}", f"--pyi_out={dest}", *sources])
    run_protoc([f"--grpc_python_out={dest}", *services])
    for path in sorted(dest.rglob("*")):
        if path.suffix in {".py", ".pyi"}:
            rewrite_imports(path)
    add_init_files(dest)


def list_files(root: Path) -> dict[str, bytes]:
    """Map relative posix path -> content for every file under ``root``."""
    files: dict[str, bytes] = {}
    if not root.is_dir():
        return files
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in IGNORED_NAMES for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_file():
            files[rel.as_posix()] = path.read_bytes()
    return files


def diff_trees(expected: Path, actual: Path) -> list[str]:
    """Describe differences between a freshly generated and a committed tree."""
    want = list_files(expected)
    have = list_files(actual)
    problems: list[str] = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            problems.append(f"missing: {name}")
        elif name not in want:
            problems.append(f"extra: {name}")
        elif want[name] != have[name]:
            problems.append(f"differs: {name}")
    return problems


def install(generated: Path) -> None:
    """Replace the committed liner_api tree with the generated one."""
    OUT_DIR.mkdir(exist_ok=True)
    for root in GENERATED_ROOTS:
        target = OUT_DIR / root
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(generated / root, target)
    for name in ("__init__.py", "py.typed"):
        shutil.copyfile(generated / name, OUT_DIR / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if api/liner_api differs from fresh output",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="liner-api-") as tmp:
        generated = Path(tmp) / PACKAGE
        generated.mkdir()
        generate(generated)
        if args.check:
            problems = diff_trees(generated, OUT_DIR)
            for line in problems:
                print(line)
            if problems:
                print(
                    f"{len(problems)} generated file(s) out of date; run: python api/generate.py",
                    file=sys.stderr,
                )
                return 1
            print("api/liner_api is up to date")
            return 0
        install(generated)
    print(f"generated {len(list_files(OUT_DIR))} files in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
