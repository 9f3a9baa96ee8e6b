"""Atomic writes: the whole file or the old one, with ordinary permissions, no temp left."""
import os
import stat

import pytest

from rmsnorm_triton.atomic import write_atomic, write_text_atomic


def test_replaces_whole_file_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "table.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "results.csv"
    write_text_atomic(path, "a,b\n1,2\n")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("a,b\n1,")
        raise RuntimeError("cut short")

    with pytest.raises(RuntimeError, match="cut short"):
        write_atomic(path, broken)
    assert path.read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]
