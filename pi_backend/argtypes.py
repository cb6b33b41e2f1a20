"""Command-line values checked when a command starts, so that a bad one stops it before
its work rather than after (python -m pi_backend, and the scripts in bench/)."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def path(text: str) -> Path:
  """An argparse type: a path, with ~ expanded (the shell leaves --flag=~/x alone)."""
  return Path(text).expanduser()


def _int_at_least(text: str, minimum: int) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if v < minimum:
    raise argparse.ArgumentTypeError(f"{v}; expected an integer >= {minimum}")
  return v


def positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
  """An argparse type: an integer >= 0 (a seed)."""
  return _int_at_least(text, 0)


def check_writable(path: Path, example: str, flag: str = "--output") -> None:
  """Raises ValueError when the file ``path`` cannot be written: makes its directory
  and a scratch file there, and removes the scratch file."""
  path = Path(path)
  if path.is_dir():
    raise ValueError(f"{flag} {path} is a directory; expected a file name such as "
                     f"{path / example}")
  blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
  if blocking is not None:
    raise ValueError(f"{flag} {path}: {blocking} is a file, not a directory")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path.parent):
      pass
  except OSError as e:
    raise ValueError(f"{flag} {path}: cannot write in {path.parent}: "
                     f"{e.strerror or e}") from None


def check_output(parser: argparse.ArgumentParser, path: Path, example: str) -> None:
  """check_writable, reported as the parser's usage error (exit status 2)."""
  try:
    check_writable(path, example)
  except ValueError as e:
    parser.error(str(e))
