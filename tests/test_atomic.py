import os

import pytest

from scratchlm.atomic import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
