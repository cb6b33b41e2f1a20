"""Faults around checkpoints (bnn/checkpoints.py): a mismatched or corrupt checkpoint
is refused with a message saying what differs, a non-finite loss stops training
before it is saved, a full disk keeps the last good checkpoint. (SIGKILL during a
checkpoint write: tests/bnn/test_experiment.py.)"""
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bnn import checkpoints as ckpt
from bnn import experiment, train
from configs import fashion_mnist_mlp

ROOT = Path(__file__).resolve().parents[2]


def _config(**overrides):
  c = fashion_mnist_mlp.get_config()
  c.batch_size, c.eval_batch_size, c.eval_steps = 50, 500, 1
  c.dataset.validation_size = 1000
  c.num_train_steps, c.checkpoint_every_steps, c.log_every_steps = 12, 4, 100
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _saved_checkpoint(workdir, config, step=4):
  """A real checkpoint of config's initial state at `step`, and config.json, as a
  training run leaves them (no compile: the state is only created and saved)."""
  exp = experiment.Experiment(config, workdir)
  Path(workdir).mkdir(parents=True, exist_ok=True)
  (Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  manager = exp.checkpoints()
  ckpt.save(manager, step, exp.initial_state(), force=True)
  ckpt.wait(manager)
  manager.close()


# --- pure functions --------------------------------------------------------------

def test_tree_differences_names_path_shape_and_dtype():
  stored = {"params": {"w": jax.ShapeDtypeStruct((3, 4), jnp.float32),
                       "gone": jax.ShapeDtypeStruct((2,), jnp.float32)},
            "opt": [{"mu": jax.ShapeDtypeStruct((3, 4), jnp.float32)}, None]}
  expected = {"params": {"w": jax.ShapeDtypeStruct((3, 5), jnp.float32),
                         "new": jax.ShapeDtypeStruct((1,), jnp.int32)},
              "opt": ({"mu": jax.ShapeDtypeStruct((3, 4), jnp.float16)},)}
  diff = ckpt.tree_differences(stored, expected)
  assert diff == [
      "opt/0/mu: checkpoint float32[3, 4], this config float16[3, 4]",
      "params/gone: in the checkpoint, not in this config's state",
      "params/new: in this config's state, not in the checkpoint",
      "params/w: checkpoint float32[3, 4], this config float32[3, 5]"]
  assert ckpt.tree_differences(expected, expected) == []


def test_config_differences_only_for_keys_that_decide_the_state():
  old = json.loads(_config().to_json_best_effort())
  assert ckpt.config_differences(old, _config(**{"optimizer.lr": 1.0, "num_train_steps": 99,
                                                "batch_size": 100})) == []
  diff = ckpt.config_differences(old, _config(**{"model.method": "standard",
                                                 "optimizer.name": "bop"}))
  assert diff == ["model.method: 'proposed' in the checkpoint's config, 'standard' in this one",
                  "optimizer.name: 'factored_adam' in the checkpoint's config, 'bop' in this one",
                  "optimizer.state_dtype: 'float16' in the checkpoint's config, 'float32' in "
                  "this one",
                  "optimizer.weight_dtype: 'float16' in the checkpoint's config, 'float32' in "
                  "this one"]


def test_config_differences_compare_what_the_optimizer_defaults_mean():
  """"default" and the same values spelled out are one experiment; a config.json from
  before the proposed method's default became factored_adam (name "adam", state
  "default" = float32) is read as what it meant, and differs from today's default."""
  spelled_out = _config(**{"optimizer.name": "factored_adam", "optimizer.state_dtype": "float16",
                           "optimizer.weight_dtype": "float16"})
  assert ckpt.config_differences(json.loads(_config().to_json_best_effort()), spelled_out) == []
  older = json.loads(_config(**{"optimizer.name": "adam"}).to_json_best_effort())
  assert ckpt.config_differences(older, _config(**{"optimizer.name": "adam",
                                                   "optimizer.state_dtype": "float32"})) == []
  assert ckpt.config_differences(older, _config()) == [
      "optimizer.name: 'adam' in the checkpoint's config, 'factored_adam' in this one",
      "optimizer.state_dtype: 'float32' in the checkpoint's config, 'float16' in this one",
      "optimizer.weight_dtype: 'float32' in the checkpoint's config, 'float16' in this one"]


# --- refused checkpoints -----------------------------------------------------------

@pytest.mark.real_data
def test_checkpoint_of_another_method_is_refused_and_workdir_left_alone(tmp_path):
  _saved_checkpoint(tmp_path, _config())
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(ckpt.CheckpointMismatchError,
                     match=r"model.method: 'proposed' in the checkpoint's config, "
                           r"'standard' in this one"):
    experiment.train_and_evaluate(_config(**{"model.method": "standard"}), tmp_path)
  assert (tmp_path / "config.json").read_text() == before
  assert ckpt.manager(tmp_path / "checkpoints", ocp.CheckpointManagerOptions()).all_steps() == [4]


@pytest.mark.real_data
def test_checkpoint_with_other_shapes_is_refused_even_without_config_json(tmp_path):
  _saved_checkpoint(tmp_path, _config(**{"optimizer.name": "adam"}))
  (tmp_path / "config.json").unlink()  # only the arrays' metadata is left to compare
  config = _config(**{"optimizer.name": "adam", "optimizer.state_dtype": "float16"})
  with pytest.raises(ckpt.CheckpointMismatchError) as e:
    experiment.evaluate(config, tmp_path)
  message = str(e.value)
  assert "checkpoints/4 was written by a different model or optimizer" in message
  assert "opt_state/0/0/mu/BinaryDense_0/kernel: checkpoint float32[784, 256], " \
         "this config float16[784, 256]" in message


@pytest.mark.real_data
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_is_refused_naming_the_older_one(tmp_path):
  """... with that one error: not followed by orbax's dozens of 'Event loop is closed'
  reports (an unraisable exception fails this test)."""
  config = _config()
  exp = experiment.Experiment(config, tmp_path)
  manager = exp.checkpoints()
  state = exp.initial_state()
  for step in (4, 8):
    ckpt.save(manager, step, state, force=True)
    ckpt.wait(manager)
  manager.close()
  data_files = [p for p in (tmp_path / "checkpoints" / "8").rglob("*")
                if p.is_file() and p.parent.name == "d"]
  assert data_files
  for p in data_files:  # truncate the array data, keep the metadata
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  with pytest.raises(ckpt.CheckpointReadError,
                     match=r"checkpoints/8 is corrupt or unreadable: .*older checkpoints there are steps "
                           r"\[4\]; move .*/8 away to resume from step 4"):
    experiment.train_and_evaluate(config, tmp_path)
  shutil.rmtree(tmp_path / "checkpoints" / "8")  # as the message says
  manager = exp.checkpoints()
  restored = exp.restore(manager)
  manager.close()
  assert int(restored.step) == int(state.step)


class _ReadFailsAfterAClosedLoopReport:
  """A checkpoint manager whose read fails the way orbax's does on a corrupt file, with
  tensorstore's first 'Event loop is closed' report arriving, from another thread,
  before the failure reaches the caller (the order CI once saw)."""
  directory = "/nowhere/checkpoints"

  def all_steps(self):
    return [4, 8]

  def item_metadata(self, step):
    class ClosedLoopCallback:
      def __del__(self):
        raise RuntimeError("Event loop is closed")

    worker = threading.Thread(target=ClosedLoopCallback)  # reported as it is dropped
    worker.start()
    worker.join()
    raise OSError("tensorstore: truncated chunk")


def _report(error):
  return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None,
                               err_msg=None, object=None)


def test_only_closed_loop_reports_are_dropped_during_and_after_a_failed_read(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  hooks = []
  for _ in range(2):
    with pytest.raises(ckpt.CheckpointReadError, match=r"older checkpoints there are steps \[4\]"):
      ckpt.restore(_ReadFailsAfterAClosedLoopReport(), 8, abstract_state=None)
    hooks.append(sys.unraisablehook)
  assert seen == []  # the reports that came before each failure were dropped too
  assert hooks[0] is hooks[1]  # a second failure does not stack a second filter

  sys.unraisablehook(_report(RuntimeError("Event loop is closed")))  # seconds later
  other = [_report(RuntimeError("something else")), _report(ValueError("Event loop is closed"))]
  for r in other:
    sys.unraisablehook(r)
  assert seen == other


def test_a_successful_read_leaves_the_unraisable_hook_as_it_was(tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  manager = ckpt.manager(tmp_path / "checkpoints", ocp.CheckpointManagerOptions())
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  ckpt.save(manager, 1, state, force=True)
  ckpt.wait(manager)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  restored = ckpt.restore(manager, 1, abstract)
  manager.close()
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert sys.unraisablehook == seen.append


# --- non-finite loss ---------------------------------------------------------------

@pytest.mark.real_data
def test_non_finite_loss_stops_before_it_is_saved(tmp_path, monkeypatch):
  """From step 6 on the step diverges (NaN parameters and loss); log every 100 steps,
  checkpoint every 4: the run must stop at the checkpoint of step 8, not save it."""
  make = train.make_train_step

  def diverging_step(*args, **kwargs):
    step_fn = make(*args, **kwargs)

    def step(state, images, labels):
      state, metrics = step_fn(state, images, labels)
      if int(state.step) >= 6:
        state = state.replace(params=jax.tree_util.tree_map(lambda p: p * jnp.nan,
                                                            state.params))
        metrics = {**metrics, "loss": metrics["loss"] * jnp.nan}
      return state, metrics
    return step

  monkeypatch.setattr(train, "make_train_step", diverging_step)
  with pytest.raises(FloatingPointError,
                     match=r"non-finite training loss nan at step 6; stopped before saving "
                           r"it\. The last good checkpoint is step 4"):
    experiment.train_and_evaluate(_config(), tmp_path)
  monkeypatch.undo()
  exp = experiment.Experiment(_config(), tmp_path)
  manager = exp.checkpoints()
  assert max(manager.all_steps()) == 4  # nothing at or after the first bad step
  state = exp.restore(manager)
  manager.close()
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state.params))


# --- full disk ---------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> None:
  path.mkdir()
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
  subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                 check=True)


def _fill(path: Path, leave_bytes: int) -> Path:
  """Fills the disk (the run writes to it meanwhile), then frees leave_bytes."""
  filler = path / "filler"
  fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * (1 << 20))
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
  finally:
    os.close(fd)
  os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
  return filler


@pytest.mark.slow
@pytest.mark.real_data
def test_full_disk_gives_clear_error_and_keeps_last_good_checkpoint(tmp_path):
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "48m")
  try:
    workdir = disk / "run"
    args = [sys.executable, "main.py", f"--workdir={workdir}",
            "--config=configs/fashion_mnist_mlp.py", "--config.batch_size=50",
            "--config.checkpoint_every_steps=10",
            "--config.log_every_steps=10", "--config.dataset.validation_size=1000",
            "--config.eval_batch_size=500", "--config.eval_steps=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    # far more steps than it will get to: the disk fills first, whatever the speed
    proc = subprocess.Popen([*args, "--config.num_train_steps=5000"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "20").exists() and time.time() < deadline:
      time.sleep(0.01)
    assert (workdir / "checkpoints" / "20").exists(), "no checkpoint 20 before the deadline"
    filler = _fill(disk, leave_bytes=1 << 20)  # room for metrics, not for a checkpoint
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    assert "CheckpointWriteError" in out and "No space left on device" in out, out
    last = int(out.split("the last good checkpoint is step ")[1].split(",")[0])
    assert 20 <= last < 5000

    filler.unlink()
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert last in kept, kept  # (a write still in flight at the error may have finished)
    resumed = subprocess.run([*args, f"--config.num_train_steps={kept[-1] + 20}"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from step {kept[-1]}" in resumed.stdout
    assert json.loads((workdir / "results.json").read_text())["step"] == kept[-1] + 20
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)
