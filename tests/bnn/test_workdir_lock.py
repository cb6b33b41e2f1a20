"""The workdir lock, held by real processes."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnn import workdir_lock
from bnn.workdir_lock import WorkdirInUse

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from bnn import workdir_lock
with workdir_lock.hold(sys.argv[1], "a test holder"):
  print("held", flush=True)
  time.sleep(600)
"""


def _holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_workdir_held_by_another_process_is_refused_naming_it(tmp_path):
  workdir = tmp_path / "w"
  holder = _holder(workdir)
  try:
    with pytest.raises(WorkdirInUse) as e:
      with workdir_lock.hold(workdir, "training"):
        pytest.fail("the block ran while another process held the workdir")
    message = str(e.value)
    assert f"{workdir} is in use by a test holder (pid {holder.pid} on " in message
    assert "use another --workdir" in message
  finally:
    holder.kill()
    holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  """SIGKILL gives no chance to clean up: the kernel releases the lock anyway."""
  workdir = tmp_path / "w"
  holder = _holder(workdir)
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  assert (workdir / ".lock").read_text().startswith("a test holder")  # text left behind
  with workdir_lock.hold(workdir, "training"):
    assert (workdir / ".lock").read_text().startswith(f"training (pid {os.getpid()} ")


def test_the_lock_is_released_and_its_text_cleared_after_the_block(tmp_path):
  workdir = tmp_path / "new" / "w"
  with workdir_lock.hold(workdir, "first"):  # creates the workdir
    assert workdir.is_dir()
  assert (workdir / ".lock").read_text() == ""
  with pytest.raises(ZeroDivisionError):
    with workdir_lock.hold(workdir, "second"):
      1 / 0  # pylint: disable=pointless-statement
  with workdir_lock.hold(workdir, "third"):  # released on the exception too
    pass


def test_a_workdir_that_cannot_be_a_directory_is_named(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  with pytest.raises(workdir_lock.WorkdirError, match=f"--workdir {afile} is a file, not a "
                                                      f"directory"):
    workdir_lock.create(afile)
  with pytest.raises(workdir_lock.WorkdirError,
                     match=f"--workdir {afile / 'w'}: cannot create it: Not a directory"):
    with workdir_lock.hold(afile / "w", "training"):
      pass


@pytest.mark.parametrize("mode", ["train", "memory"])
def test_main_with_a_file_as_workdir_is_one_line(tmp_path, mode):
  afile = tmp_path / "afile"
  afile.write_text("")
  proc = subprocess.run([sys.executable, "main.py", "--config=configs/fashion_mnist_mlp.py:quick",
                         f"--workdir={afile}", f"--mode={mode}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1
  assert proc.stderr == f"error: WorkdirError: --workdir {afile} is a file, not a directory\n"
