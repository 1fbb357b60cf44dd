"""custom.io.atomic: files get a plain open()'s permissions, and a failed write leaves the old file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from custom.io.atomic import atomic_path, write_json_atomic, write_text_atomic


@pytest.fixture()
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_0666_minus_the_umask(tmp_path, umask):
    umask(0o022)
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"a": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\0")
    for name in ("a.txt", "b.json", "c.bin"):
        assert _mode(tmp_path / name) == 0o644, name  # mkstemp's 0o600 would hide it from other users
    umask(0o077)
    write_text_atomic(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600  # the umask is followed, not a fixed mode
    assert json.loads((tmp_path / "b.json").read_text()) == {"a": 1}


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "t.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in target.parent.iterdir()] == ["t.json"]
