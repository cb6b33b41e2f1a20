"""One writer per workdir.

Training, a sweep and ``--mode import`` hold an exclusive lock on ``<workdir>/.lock``
while they write there. A second command into the same workdir then stops at once,
naming the one that holds it. Without the lock, both would save checkpoints under the
same step numbers and append to the same metrics.jsonl, and both would fail with
misleading errors from orbax.

flock(2) locks belong to the open file, so the kernel releases them when the process
ends, however it ends (SIGKILL included): a crash leaves no stale lock. The file's text
says who holds it, for the message only; it is never trusted for the locking itself.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not a directory, not writable, or in use."""


class WorkdirInUse(WorkdirError):
  """Another process is writing the workdir."""


def create(workdir: str | Path) -> Path:
  """Makes the workdir (and its parents), or says in one line why it cannot."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir {workdir}: cannot create it: {e.strerror or e} "
                       f"({e.filename or workdir})") from None
  return workdir


@contextlib.contextmanager
def hold(workdir: str | Path, what: str):
  """Holds ``<workdir>/.lock`` (creating the workdir) for the duration of the block.

  what: the command, for the other process's message ("a training run", "a sweep").
  Raises WorkdirInUse, naming the holder, when another process holds it. On a file
  system without locks (some network mounts) it warns and goes on unlocked."""
  workdir = create(workdir)
  path = workdir / LOCK_NAME
  try:
    f = open(path, "a+", encoding="utf-8")  # "a+": never truncates the holder's text
  except OSError as e:
    raise WorkdirError(f"--workdir {workdir}: cannot write in it: {e.strerror or e} "
                       f"({path})") from None
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise WorkdirInUse(
          f"{workdir} is in use by {holder}; one command at a time writes a workdir: wait "
          f"for it to end, stop it (Ctrl-C saves its step), or use another --workdir "
          f"(lock: {path})") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      logging.warning("%s: this file system has no locks (%s); nothing stops a second "
                      "command from writing the same workdir", path, e.strerror)
      yield
      return
    since = datetime.datetime.now().isoformat(timespec="seconds")
    f.seek(0)
    f.truncate()
    f.write(f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n")
    f.flush()
    try:
      yield
    finally:  # the text is for while the lock is held
      f.truncate(0)
