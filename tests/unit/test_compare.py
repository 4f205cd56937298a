from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from linerd.diff.apply import apply_tar
from linerd.diff.compare import write_diff

pytestmark = pytest.mark.unit


def snapshot(root: Path) -> dict[str, tuple]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                found[rel] = ("dir", st.st_mode, st.st_uid)
            else:
                found[rel] = ("file", st.st_mode, st.st_uid, p.read_bytes())
    return found


def test_diff_then_apply_reproduces_upper(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "etc/sub").mkdir(parents=True)
    (lower / "etc/keep").write_text("same")
    (lower / "etc/change").write_text("old")
    (lower / "etc/sub/gone").write_text("x")
    (lower / "gone-dir/deep").mkdir(parents=True)
    (lower / "link").symlink_to("etc/keep")
    upper = tmp_path / "upper"
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    (upper / "etc/change").write_text("new content")
    (upper / "etc/sub/gone").unlink()
    subprocess.run(["rm", "-r", str(upper / "gone-dir")], check=True)
    (upper / "link").unlink()
    (upper / "link").symlink_to("etc/change")
    (upper / "added").write_text("added")
    os.chmod(upper / "etc/keep", 0o600)

    buf = io.BytesIO()
    write_diff(lower, upper, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        names = tar.getnames()
    assert "etc/sub/.wh.gone" in names and ".wh.gone-dir" in names
    assert "gone-dir/deep" not in names and "etc/sub/gone" not in names

    target = tmp_path / "target"
    subprocess.run(["cp", "-a", str(lower), str(target)], check=True)
    buf.seek(0)
    apply_tar(buf, target, overlay=False)
    assert snapshot(target) == snapshot(upper)


def test_diff_against_nothing_is_the_whole_tree(tmp_path: Path) -> None:
    upper = tmp_path / "u"
    (upper / "a").mkdir(parents=True)
    (upper / "a/f").write_text("f")
    os.link(upper / "a/f", upper / "hard")
    buf = io.BytesIO()
    write_diff(None, upper, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"a", "a/f", "hard"}
    assert members["hard"].islnk() or members["a/f"].islnk()


def test_same_trees_give_the_same_bytes(tmp_path: Path) -> None:
    upper = tmp_path / "u"
    upper.mkdir()
    for i in range(5):
        (upper / f"f{i}").write_text(str(i))
    outs = []
    for _ in range(2):
        buf = io.BytesIO()
        write_diff(None, upper, buf)
        outs.append(buf.getvalue())
    assert outs[0] == outs[1]
