"""pi_backend.atomic: a file is replaced whole or not at all."""
import os
import stat

import pytest

from pi_backend import atomic


def test_write_replaces_the_file_whole(tmp_path):
  path = tmp_path / "sub" / "f.json"
  atomic.write_text(path, "first\n")
  atomic.write_bytes(path, b"second\n")
  assert path.read_bytes() == b"second\n"
  assert os.listdir(path.parent) == ["f.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
  path = tmp_path / "f.txt"
  atomic.write_text(path, "old")

  def full_disk(*args):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(atomic.os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space left"):
    atomic.write_text(path, "new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_permissions_are_those_of_a_plain_write_or_of_the_replaced_file(tmp_path):
  old = os.umask(0o027)
  try:
    fresh = atomic.write_text(tmp_path / "fresh", "x")
  finally:
    os.umask(old)
  assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
  kept = tmp_path / "kept"
  kept.write_text("x")
  kept.chmod(0o604)
  atomic.write_text(kept, "y")
  assert stat.S_IMODE(kept.stat().st_mode) == 0o604
