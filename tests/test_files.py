"""Tests for pgemma.files: files written whole, with the permissions the umask gives."""

import os
import stat

import pytest

from pgemma.files import atomic_write, current_umask


@pytest.fixture
def restore_umask():
    """Whatever umask the test sets, the process gets its own back afterwards."""
    saved = current_umask()
    yield
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_gets_the_mode_of_any_new_file(tmp_path, restore_umask, mask, mode):
    os.umask(mask)
    assert current_umask() == mask and current_umask() == mask  # reading it leaves it unchanged
    with atomic_write(tmp_path / "new.txt") as temporary:
        temporary.write_text("whole")
    (tmp_path / "plain.txt").write_text("plain")  # what open() gives, for comparison
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode


def test_the_old_file_stays_whole_if_writing_fails(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary file left
    with atomic_write(path) as temporary:
        temporary.write_text("new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_missing_folders_are_made(tmp_path):
    with atomic_write(tmp_path / "a" / "b" / "config.json") as temporary:
        temporary.write_text("{}")
    assert (tmp_path / "a" / "b" / "config.json").read_text() == "{}"
