"""pi_backend.argtypes: counts and output paths checked before a command's work."""
import argparse
import os

import pytest

from pi_backend import argtypes


@pytest.mark.parametrize("text,value", [("1", 1), ("250", 250)])
def test_positive_int(text, value):
  assert argtypes.positive_int(text) == value


@pytest.mark.parametrize("text,message", [("0", "0; expected an integer >= 1"),
                                          ("-3", "-3; expected an integer >= 1"),
                                          ("2.5", "'2.5' is not an integer")])
def test_positive_int_refuses(text, message):
  with pytest.raises(argparse.ArgumentTypeError, match=message):
    argtypes.positive_int(text)


def test_nonnegative_int():
  assert argtypes.nonnegative_int("0") == 0 and argtypes.nonnegative_int("7") == 7
  for text, message in (("-1", "-1; expected an integer >= 0"), ("x", "'x' is not an integer")):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
      argtypes.nonnegative_int(text)


def test_writable_paths_are_accepted_and_their_directory_made(tmp_path):
  argtypes.check_writable(tmp_path / "new" / "dir" / "out.md", "out.md")
  assert (tmp_path / "new" / "dir").is_dir() and os.listdir(tmp_path / "new" / "dir") == []


def test_unwritable_paths_are_refused_naming_why(tmp_path):
  (tmp_path / "file").write_text("")
  cases = [(tmp_path, f"--output {tmp_path} is a directory; expected a file name such as "
                      f"{tmp_path / 'x.md'}"),
           (tmp_path / "file" / "x.md", f"--output {tmp_path / 'file' / 'x.md'}: "
                                        f"{tmp_path / 'file'} is a file, not a directory")]
  for path, message in cases:
    with pytest.raises(ValueError) as e:
      argtypes.check_writable(path, "x.md")
    assert str(e.value) == message
  if os.geteuid() != 0:  # root writes anywhere
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(ValueError, match="cannot write in"):
      argtypes.check_writable(tmp_path / "ro" / "x.md", "x.md")


def test_check_output_is_the_parsers_usage_error(tmp_path, capsys):
  parser = argparse.ArgumentParser(prog="bench.py")
  with pytest.raises(SystemExit) as e:
    argtypes.check_output(parser, tmp_path, "x.md")
  assert e.value.code == 2
  assert f"bench.py: error: --output {tmp_path} is a directory" in capsys.readouterr().err
