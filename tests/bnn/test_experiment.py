"""End to end: main.py in real processes, checkpoints on disk, exact resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--config=configs/fashion_mnist_mlp.py", "--config.batch_size=50",
         "--config.num_train_steps=60", "--config.checkpoint_every_steps=5",
         "--config.log_every_steps=1", "--config.dataset.validation_size=1000",
         "--config.eval_batch_size=500", "--config.eval_steps=1"]


def _main(workdir, *args, env=None, **kw):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
  return subprocess.Popen([sys.executable, "main.py", f"--workdir={workdir}", *SMALL, *args],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


def _final_params(workdir):
  manager = ocp.CheckpointManager(Path(workdir, "checkpoints").absolute())
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return step, restored["params"], restored["opt_state"]


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _kill_during_a_checkpoint_write(workdir, after_step: int, attempts: int = 3) -> None:
  """Runs main.py in workdir and SIGKILLs it while orbax is writing a checkpoint
  (a `<step>.orbax-checkpoint-tmp` directory exists) past `after_step`; retries when
  the write finished between seeing the directory and the kill."""
  metrics, checkpoints = workdir / "metrics.jsonl", workdir / "checkpoints"
  for _ in range(attempts):
    proc = _main(workdir)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and sum(1 for line in metrics.read_text().splitlines()
                                  if '"train"' in line) >= after_step:
        break
      time.sleep(0.02)
    while time.time() < deadline and proc.poll() is None:
      if checkpoints.exists() and any(".orbax-checkpoint-tmp" in p.name
                                      for p in os.scandir(checkpoints)):
        proc.send_signal(signal.SIGKILL)
        break
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    if any(".orbax-checkpoint-tmp" in p.name for p in os.scandir(checkpoints)):
      return  # killed mid-write
  pytest.fail(f"no kill landed during a checkpoint write in {attempts} attempts")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The workdir of an uninterrupted run of SMALL."""
  workdir = tmp_path_factory.mktemp("reference")
  run = _main(workdir)
  out, _ = run.communicate(timeout=600)
  assert run.returncode == 0, out
  # not a terminal: the progress bar is not redrawn for each of the 60 steps
  assert out.count("\r") <= 8, out.count("\r")
  return workdir


def _assert_same_final_state(reference, workdir):
  step_a, params_a, opt_a = _final_params(reference)
  step_b, params_b, opt_b = _final_params(workdir)
  assert step_a == step_b == 60
  for a, b in zip(_leaves((params_a, opt_a)), _leaves((params_b, opt_b))):
    np.testing.assert_array_equal(a, b)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in lines if r["split"] == "train"]
  assert train_steps == list(range(1, 61))  # no duplicates after resume


@pytest.mark.slow
@pytest.mark.real_data
def test_sigkill_during_checkpoint_write_then_resume_is_bit_identical(tmp_path, reference):
  _kill_during_a_checkpoint_write(tmp_path / "killed", after_step=22)
  checkpoints = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                       if p.name.isdigit())
  assert checkpoints and max(checkpoints) < 60, checkpoints
  manager = ocp.CheckpointManager((tmp_path / "killed" / "checkpoints").absolute())
  assert manager.latest_step() == max(checkpoints)  # the half-written one is not taken
  manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())  # intact
  manager.close()

  resumed = _main(tmp_path / "killed")
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  assert "resuming from step" in out

  _assert_same_final_state(reference, tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_it_stopped_at_and_resume_is_bit_identical(tmp_path, reference,
                                                                            signum):
  """Ctrl-C or a preemption's SIGTERM: the run finishes its step, saves it (not only the
  last multiple of checkpoint_every_steps), exits with 128 + signum and no traceback;
  the same command then goes on to the uninterrupted run's final state."""
  workdir = tmp_path / "interrupted"
  proc = _main(workdir)
  metrics, deadline = workdir / "metrics.jsonl", time.time() + 600
  while proc.poll() is None and time.time() < deadline and not (
      metrics.exists() and metrics.read_text().count('"train"') >= 12):
    time.sleep(0.02)
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 128 + signum, out
  found = re.search(rf"stopped: {signal.Signals(signum).name} at step (\d+): saved the "
                    rf"checkpoint \S+/checkpoints/(\d+); run the same command to resume", out)
  assert found and found[1] == found[2] and "Traceback" not in out, out
  step = int(found[1])
  assert 12 <= step < 60, step
  manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
  assert manager.latest_step() == step
  manager.close()

  resumed = _main(workdir)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  assert f"resuming from step {step}" in out
  _assert_same_final_state(reference, workdir)


# The command line end to end, one case per kind of error; the values themselves are
# covered in-process by tests/bnn/test_config_validation.py.
@pytest.mark.parametrize("override,message", [
    ("--config.no_such_key=1", "no_such_key"),                 # ml_collections' parser
    ("--config.batch_size=abc", "batch_size"),                 # absl's parser
    ("--config.model.grad_quantizer=po2(bits=0)", "bits"),     # validate()
    ("--config.model.name=cnv", "kernel height 3 is larger than the padded input"),
    ("--config.sharding.num_devices=1000",                     # the devices there are
     "ConfigError: config.sharding.num_devices=1000: expected -1 (all) or 1.."),
    ("--config.dataset.validation_size=60000",                 # the training split's size
     "ConfigError: config.dataset.validation_size=60000: expected 0 <= value < 60000"),
    ("--config.batch_size=59001",                              # the same, after validation
     "ConfigError: config.batch_size=59001: expected at most 59000, the training examples"),
])
def test_bad_override_fails_before_compiling(tmp_path, override, message):
  proc = _main(tmp_path / "bad", override, env={"JAX_LOG_COMPILES": "1"})
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert message in out and "Traceback" not in out, out
  assert "Compiling" not in out and "compil" not in out.lower() and not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("config,message", [
    ("configs/no_such.py", "error: --config configs/no_such.py: no such file in "),
    ("configs/fashion_mnist_mlp.py:bogus", "error: --config=configs/fashion_mnist_mlp.py:bogus: "
                                           "ValueError: unknown config variant 'bogus'"),
    ("README.md", "error: --config README.md: not a Python config file (line "),
    ("configs/common.py", "error: --config configs/common.py: defines no get_config(); the "
                          "configs: "),
])
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, config, message):
  """A mistyped config path or variant: the message, not absl's traceback."""
  proc = subprocess.run([sys.executable, "main.py", f"--config={config}",
                         f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.replace("--config ", "--config=").startswith(
      message.replace("--config ", "--config=")), proc.stderr
  if "no such file" in message or "config file" in message or "get_config" in message:  # lists
    assert "configs/fashion_mnist_mlp.py" in proc.stderr
    assert "configs/sweeps/fashion_mnist_po2.py" in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_a_second_command_into_a_workdir_in_use_is_refused(tmp_path):
  """Two trainings into one workdir would save over each other's checkpoints and
  interleave their metrics: the second stops at once, naming the first, which goes on."""
  workdir = tmp_path / "busy"
  first = _main(workdir, "--config.num_train_steps=100000",
                "--config.checkpoint_every_steps=100000")
  metrics, deadline = workdir / "metrics.jsonl", time.time() + 600
  while first.poll() is None and time.time() < deadline and not (
      metrics.exists() and metrics.read_text().count('"train"') >= 3):
    time.sleep(0.02)
  assert first.poll() is None
  second = _main(workdir)
  out, _ = second.communicate(timeout=120)
  assert second.returncode == 1, out
  assert f"error: WorkdirInUse: {workdir} is in use by a training run (pid {first.pid} " in out
  assert "Traceback" not in out, out
  first.send_signal(signal.SIGTERM)  # the first run is unharmed: it saves its step and stops
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 128 + signal.SIGTERM, out
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
           if '"train"' in line]
  assert steps == list(range(1, len(steps) + 1)), steps  # one writer
  saved = re.search(r"saved the checkpoint \S+/checkpoints/(\d+)", out)
  assert saved and int(saved[1]) == steps[-1], out


def test_a_sweep_config_outside_mode_sweep_is_a_one_line_error(tmp_path):
  proc = subprocess.run([sys.executable, "main.py", "--config=configs/sweeps/fashion_mnist_method.py",
                         f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
  assert proc.stderr.startswith("error: ConfigError: this config is a sweep of 2 points over "
                                "configs/fashion_mnist_mlp.py: run it with --mode sweep")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("mode,extra,message", [
    ("eval", [], "NoCheckpointError: no checkpoint in"),
    ("export", [], "NoCheckpointError: no checkpoint in"),
    ("import", ["--bundle=/nonexistent/m.bnnpi"], "cannot read the bundle /nonexistent/m.bnnpi"),
])
def test_nothing_to_read_is_a_one_line_error_that_creates_no_directory(tmp_path, mode, extra,
                                                                       message):
  """A mistyped workdir or bundle: the message, no traceback, and no empty workdir left."""
  workdir = tmp_path / "typo"
  proc = _main(workdir, f"--mode={mode}", *extra)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 1
  assert message in out and "Traceback" not in out, out
  assert not workdir.exists()
  if mode != "import":
    assert "train first: the same --config and --workdir" in out  # not the default config


@pytest.mark.parametrize("args,message", [
    (["--workdir="], "--workdir is empty"),
    (["--mode=eval", "--which=latest"], "--which is for --mode export; --mode eval does not"),
    (["--mode=train", "--bundle=m.bnnpi"], "--bundle is for --mode export and import; --mode "
                                           "train does not read it"),
])
def test_a_flag_the_mode_does_not_read_is_refused(tmp_path, args, message):
  """Not silently ignored (an empty --workdir used to mean the default workdir)."""
  proc = subprocess.run([sys.executable, "main.py", f"--workdir={tmp_path / 'w'}", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize("given,meant", [
    ("~/w", "{home}/w"),                                 # --workdir=~/w: not expanded by the shell
    ("{tmp}/runs/configs/a.py.d", "{tmp}/runs/configs/a.py.d"),  # was cut to runs/a.d
])
def test_the_workdir_given_is_the_workdir_used(tmp_path, given, meant):
  env = {"HOME": str(tmp_path / "home")}
  given, meant = (x.format(tmp=tmp_path, home=tmp_path / "home") for x in (given, meant))
  proc = subprocess.run([sys.executable, "main.py", "--mode=eval", f"--workdir={given}"],
                        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1
  assert f"workdir: {meant}\n" in proc.stdout
  assert f"NoCheckpointError: no checkpoint in {meant}/best" in proc.stderr, proc.stderr


@pytest.mark.real_data
def test_ctrl_c_before_the_training_loop_stops_cleanly(tmp_path):
  """Ctrl-C while the data loads or XLA compiles (outside the loop, which saves a step):
  one line and exit 130. It was a KeyboardInterrupt traceback, then a segfault as Python
  shut down under XLA's compiling threads."""
  proc = _main(tmp_path / "w")
  lines = []
  for line in proc.stdout:  # the config, then the workdir: train_and_evaluate starts
    lines.append(line)
    if line.startswith("workdir: "):
      break
  proc.send_signal(signal.SIGINT)
  out = "".join(lines) + proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, out[-3000:]
  assert "stopped: Ctrl-C; the same command goes on from the newest checkpoint" in out
  assert "Traceback" not in out and "Fatal Python error" not in out, out[-3000:]


@pytest.mark.real_data
def test_curves_are_drawn_during_the_run_not_only_at_its_end(tmp_path, monkeypatch):
  """A long run's curves.png can be looked at before it ends: here the run fails in its
  fifth step, after two epochs of two steps, and curves.png shows those."""
  import configs.fashion_mnist_mlp
  from bnn import experiment, train
  config = configs.fashion_mnist_mlp.get_config("quick")
  config.dataset.validation_size = 60000 - 2 * config.batch_size  # 2 steps an epoch
  config.num_train_steps = 6
  monkeypatch.setattr(experiment, "CURVES_EVERY_SECONDS", 0)
  make = train.make_train_step

  def failing_in_step_5(*args):
    step, calls = make(*args), []

    def run(*a):
      calls.append(1)
      if len(calls) == 5:
        raise OSError("the fifth step fails")
      return step(*a)
    return run

  monkeypatch.setattr(train, "make_train_step", failing_in_step_5)
  with pytest.raises(OSError, match="fifth"):
    experiment.train_and_evaluate(config, tmp_path)
  png = tmp_path / "curves.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  validations = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open())
                 if r["split"] == "validation"]
  assert validations == [2, 4]
  assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left


def test_eval_of_a_sweeps_workdir_names_its_points(tmp_path):
  import configs.fashion_mnist_mlp
  from bnn import checkpoints, experiment
  (tmp_path / "sweep.json").write_text("{}")
  for point in ("po2_b4", "po2_b5"):
    (tmp_path / point).mkdir()
    (tmp_path / point / "config.json").write_text("{}")
  with pytest.raises(checkpoints.NoCheckpointError, match=re.escape(
      f"{tmp_path} is a sweep's workdir; its points have the checkpoints: --workdir "
      f"{tmp_path}/<point>, one of po2_b4, po2_b5")):
    experiment.evaluate(configs.fashion_mnist_mlp.get_config("quick"), tmp_path)


def test_saved_config_with_overrides(tmp_path):
  import configs.fashion_mnist_mlp
  from bnn import checkpoints, experiment
  assert experiment.saved_config(tmp_path) is None
  config = configs.fashion_mnist_mlp.get_config("quick,po2")
  (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
  saved = experiment.saved_config(tmp_path, {"eval_batch_size": 7, "optimizer.lr": 0.5})
  config.eval_batch_size, config.optimizer.lr = 7, 0.5
  assert saved.to_json() == config.to_json()
  for damaged in (b"{not json", b"\xff", b"[1, 2]"):
    (tmp_path / "config.json").write_bytes(damaged)
    with pytest.raises(checkpoints.CheckpointReadError, match="is not a config.json"):
      experiment.saved_config(tmp_path)


@pytest.mark.slow
@pytest.mark.real_data
def test_a_finished_run_is_not_redone_and_a_resume_under_a_changed_config_is_recorded(
    tmp_path, capsys, monkeypatch):
  """The same command again after a run ended trains and evaluates nothing; a resume
  with a new value (more steps, another lr) says what changed and keeps the config that
  trained the first steps; results.json goes once training goes on, so a run stopped
  after that is not taken for finished (a sweep skips points with results.json)."""
  import configs.fashion_mnist_mlp
  from bnn import experiment, sweep, train

  config = configs.fashion_mnist_mlp.get_config("quick")
  first = experiment.train_and_evaluate(config, tmp_path)
  before = {name: (tmp_path / name).read_bytes()
            for name in ("config.json", "metrics.jsonl", "results.json")}
  capsys.readouterr()

  again = experiment.train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert again == first
  assert (f"nothing to train: {tmp_path} is at step {config.num_train_steps} and "
          f"config.num_train_steps is {config.num_train_steps}") in out
  assert {name: (tmp_path / name).read_bytes() for name in before} == before

  longer = config.copy_and_resolve_references()
  longer.num_train_steps, longer.optimizer.lr = config.num_train_steps + 2, 0.002
  results = experiment.train_and_evaluate(longer, tmp_path)
  out = capsys.readouterr().out
  step = config.num_train_steps
  assert (f"resuming from step {step} ({tmp_path / 'checkpoints'}); changed: "
          f"num_train_steps {step} -> {step + 2}, optimizer.lr 0.001 -> 0.002 (the previous "
          f"config.json is kept as config.until_step_{step}.json)") in out, out
  assert (tmp_path / f"config.until_step_{step}.json").read_bytes() == before["config.json"]
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["lr"] == 0.002
  assert results["step"] == step + 2
  tests = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open())
           if r["split"] == "test"]
  assert tests == [step, step + 2]

  longer.num_train_steps += 2  # goes on, and fails in its first step
  monkeypatch.setattr(train, "make_train_step", lambda *a: (_ for _ in ()).throw(OSError("x")))
  with pytest.raises(OSError):
    experiment.train_and_evaluate(longer, tmp_path)
  assert not sweep.is_finished(tmp_path)

  monkeypatch.undo()  # fewer steps than the workdir has: it says so and evaluates its step
  capsys.readouterr()
  assert experiment.train_and_evaluate(config, tmp_path)["step"] == step + 2
  assert (f"note: {tmp_path} is at step {step + 2}, past its end (config.num_train_steps is "
          f"{step}): nothing to train; evaluating step {step + 2}") in capsys.readouterr().out
