"""Files replaced whole or not at all: a process killed while writing (a preemption, a
full disk) leaves the previous file, never half of the new one. Standard library only;
used for bundles and for the JAX side's workdir files (config.json, metrics.jsonl, ...)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path, data: bytes) -> Path:
  """Writes ``data`` to ``path`` through a temporary file in the same directory, fsync,
  then os.replace. The file gets the permissions a plain open() would give it, or those
  of the file it replaces (mkstemp's 0600 would hide it from other users)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    os.fchmod(fd, _mode_for(path))
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  return path


def write_text(path, text: str) -> Path:
  return write_bytes(path, text.encode())


def _mode_for(path: Path) -> int:
  """The permissions a plain open() would give a new file (0666 less the umask), or those
  of the file being replaced."""
  try:
    return os.stat(path).st_mode & 0o7777
  except FileNotFoundError:
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    return 0o666 & ~umask
