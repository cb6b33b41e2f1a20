"""Sweeps: the point helpers, up-front validation, the Pareto front, the report, and
whole sweeps in real processes (a failing point, a SIGKILL and a resume, SIGTERM and
Ctrl-C)."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bnn import sweep, sweep_report
from pi_backend import interrupt
from configs.sweeps import common

ROOT = Path(__file__).resolve().parents[2]
BASE = "configs/fashion_mnist_mlp.py"


# --------------------------------------------------------------------------------------
# Building points.
# --------------------------------------------------------------------------------------

def test_product_and_zip():
  points = common.product({"model.method": ["standard", "proposed"]}, {"seed": [0, 1]})
  assert points == [{"model.method": "standard", "seed": 0}, {"model.method": "standard", "seed": 1},
                    {"model.method": "proposed", "seed": 0}, {"model.method": "proposed", "seed": 1}]
  assert common.zip({"name": ["a", "b"], "seed": [3, 4]}, [{"batch_size": 1}, {"batch_size": 2}]) == [
      {"name": "a", "seed": 3, "batch_size": 1}, {"name": "b", "seed": 4, "batch_size": 2}]
  with pytest.raises(ValueError, match="one length"):
    common.zip({"seed": [0, 1]}, {"batch_size": [1, 2, 3]})
  with pytest.raises(ValueError, match="one length"):
    common.product({"seed": [0, 1], "batch_size": [1]})
  with pytest.raises(ValueError, match="seed"):
    common.product({"seed": [0]}, {"seed": [1]})


def test_specs():
  assert common.specs("po2", bits=[3, 4], bias=[8]) == ["po2(bits=3, bias=8)",
                                                        "po2(bits=4, bias=8)"]
  assert common.specs("po2", rounding=["stochastic"]) == ["po2(rounding='stochastic')"]


def test_point_names():
  assert sweep.point_name({"model.grad_quantizer": "po2(bits=3, bias=6)",
                           "model.bn_grad_quantizer": "identity"}) == "po2-bits=3-bias=6__identity"
  assert sweep.point_name({"name": "float16", "model.bn_grad_quantizer": "float16"}) == "float16"
  assert sweep.point_name({"model.method": "standard", "optimizer.lr": 0.01}) == "standard__lr=0.01"
  with pytest.raises(sweep.SweepError, match="directory"):
    sweep.point_name({"name": "a/b"})


# --------------------------------------------------------------------------------------
# Validation before anything runs.
# --------------------------------------------------------------------------------------

def _sweep(points, arg="quick"):
  return common.sweep_config(BASE, points, arg)


@pytest.mark.parametrize("bad,message", [
    ({"model.no_such_key": 1}, "'model.no_such_key'"),
    ({"nothing.here": 1}, "'nothing.here'"),
    ({"model.method.x": 1}, "config.model.method is a value"),
    ({"batch_size": "abc"}, "config.batch_size='abc'"),
    ({"batch_size": 0}, "config.batch_size=0"),
    ({"model.grad_quantizer": "po9(bits=4)"}, "po9"),
    ({"model.method": "standard", "model.grad_quantizer": "po2(bits=4, bias=8)"},
     "model.grad_quantizer"),
])
def test_bad_point_fails_before_anything_runs(tmp_path, bad, message):
  points = [{"name": "fine", "seed": 1}, {"name": "bad_one", **bad}]
  with pytest.raises(sweep.SweepError, match="bad_one") as info:
    sweep.run(_sweep(points), tmp_path / "w")
  assert message in str(info.value) and "#1 of 2" in str(info.value)
  assert not (tmp_path / "w").exists()  # nothing was run, nothing written


def test_duplicate_names_and_non_sweep_configs_fail():
  with pytest.raises(sweep.SweepError, match="same name"):
    sweep.plan(_sweep([{"seed": 1}, {"seed": 1}]))
  with pytest.raises(sweep.SweepError, match="not a sweep config"):
    sweep.plan(common.load_config(BASE))
  with pytest.raises(sweep.SweepError, match="sweep_workers"):
    sweep.run(_sweep([{"seed": 1}]), "unused", workers=0)


def test_points_override_the_base():
  points = sweep.plan(_sweep([{"name": "p", "model.grad_quantizer": "po2(bits=3, bias=6)",
                               "optimizer.lr": 1}]))
  config = points[0].config
  assert config.model.grad_quantizer == "po2(bits=3, bias=6)"
  assert config.optimizer.lr == 1.0 and config.num_train_steps == 3  # :quick reached the base
  assert points[0].overrides == {"model.grad_quantizer": "po2(bits=3, bias=6)", "optimizer.lr": 1}


# --------------------------------------------------------------------------------------
# Report pieces.
# --------------------------------------------------------------------------------------

def test_pareto_front_hand_example():
  #   point:      0     1     2     3     4     5     6
  memory = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 4.0]
  accuracy = [0.50, 0.70, 0.60, 0.70, 0.90, 0.80, 0.90]
  # 2 is beaten by 1 (same memory, less accurate); 3 by 1 (more memory, same accuracy);
  # 5 by 4; 4 and 6 are equal, so neither beats the other.
  assert sweep_report.pareto_front(memory, accuracy) == [0, 1, 4, 6]
  assert sweep_report.pareto_front([3.0], [0.1]) == [0]
  assert sweep_report.pareto_front([], []) == []


def test_gradient_bits():
  assert [sweep_report.gradient_bits(s) for s in
          ("identity", "float16", "bfloat16", "po2(bits=4, bias=8)", "po2(bits=6)")] == [32, 16, 16, 5, 7]
  config = common.load_config(BASE)
  assert sweep_report.dx_bits(config.model) == 16              # float16 at the batch norms
  config.model.grad_quantizer, config.model.bn_grad_quantizer = "po2(bits=3, bias=6)", "identity"
  assert sweep_report.dx_bits(config.model) == 4
  config.model.grad_quantizer = "identity"
  assert sweep_report.dx_bits(config.model) == 32


def test_step_time_from_tensorboard_wall_times(tmp_path):
  from tensorboardX import SummaryWriter

  writer = SummaryWriter(str(tmp_path / "tensorboard"))
  t = 1000.0
  for step in (50, 100, 150, 200, 250):
    t += 5.0 if step != 200 else 60.0    # 0.1 s a step; one interval holds an evaluation
    writer.add_scalar("train/loss", 1.0, step, walltime=t)
    writer.add_scalar("validation/loss", 1.0, step, walltime=t + 30)
  writer.close()
  assert sweep_report.step_time(tmp_path) == pytest.approx(0.1)
  assert sweep_report.step_time(tmp_path / "nothing") is None


def test_markdown_and_csv_of_hand_rows(tmp_path):
  rows = [{"point": "a", "model.method": "standard", "status": "finished", "test_accuracy": 0.8,
           "best_val_test_accuracy": 0.81, "steps": 10, "modelled_memory_bytes": 2 * 2**20,
           "measured_peak_bytes": 3 * 2**20, "step_time_s": 0.25, "error": ""},
          {"point": "b", "model.method": "proposed", "status": "failed", "test_accuracy": None,
           "best_val_test_accuracy": None, "steps": None, "modelled_memory_bytes": None,
           "measured_peak_bytes": None, "step_time_s": None, "error": "OSError: no data"}]
  sweep_report._mark_front(rows)
  text = sweep_report.markdown(rows, "title")
  assert "| a * | `standard` | 81.00% | 80.00% | 2.000 | 3.000 | 250.0 | finished |" in text
  assert "| b | `proposed` | - | - | - | - | - | failed |" in text
  assert "- b: OSError: no data" in text
  sweep_report.write_csv(rows, tmp_path / "r.csv")
  lines = (tmp_path / "r.csv").read_text().splitlines()
  assert lines[0].startswith("point,model.method,status,test_accuracy")
  assert lines[2].startswith("b,proposed,failed,,") and "OSError: no data" in lines[2]


# --------------------------------------------------------------------------------------
# Whole sweeps.
# --------------------------------------------------------------------------------------

def _csv(workdir):
  with open(Path(workdir) / "results.csv") as f:
    return list(csv.DictReader(f))


def _events(workdir):
  return [json.loads(l) for l in (Path(workdir) / "runs.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.real_data
def test_failing_point_is_recorded_and_the_others_run(tmp_path, capsys):
  """Two worker processes; one point's dataset is missing (from a data_dir that
  exists: a data_dir that does not is refused up front, for the whole sweep). Each
  worker's output goes to its point's output.log; the sweep says how each point ended."""
  (tmp_path / "no_data").mkdir()
  points = [{"name": "broken", "dataset.name": "cifar10", "model.name": "cnv",
             "dataset.data_dir": str(tmp_path / "no_data")},
            {"name": "ok", "model.method": "proposed"}]
  w = tmp_path / "w"
  rows = sweep.run(_sweep(points), w, workers=2)
  out = capsys.readouterr().out
  for name in ("broken", "ok"):
    assert f"{name}: started in process " in out and f"{w / name / 'output.log'}" in out
  assert "ok: finished at step 3: test accuracy " in out
  assert f"broken: failed: DatasetNotFoundError: " in out and "error.txt" in out
  assert "mlp/proposed" in (w / "ok" / "output.log").read_text()  # its progress bar
  assert "sweep point broken failed" in (w / "broken" / "output.log").read_text()
  assert "mlp/proposed" not in out
  by_name = {r["point"]: r for r in rows}
  assert by_name["broken"]["status"] == "failed" and "cifar10" in by_name["broken"]["error"]
  assert "Traceback" in (w / "broken" / "error.txt").read_text()
  ok = by_name["ok"]
  assert ok["status"] == "finished" and ok["steps"] == 3 and 0 <= ok["test_accuracy"] <= 1
  assert ok["modelled_memory_bytes"] > 0 and ok["measured_peak_bytes"] > 0
  assert ok["front_modelled"] and ok["step_time_s"] > 0
  csv_rows = _csv(w)
  assert [r["point"] for r in csv_rows] == ["broken", "ok"]
  assert csv_rows[0]["status"] == "failed" and "cifar10" in csv_rows[0]["error"]
  assert csv_rows[0]["dataset.name"] == "cifar10" and csv_rows[1]["model.method"] == "proposed"
  assert float(csv_rows[1]["test_accuracy"]) == ok["test_accuracy"]
  table = (w / "results.md").read_text()
  assert "| broken |" in table and "| ok * |" in table and "cifar10" in table
  assert (w / "accuracy_vs_memory.png").stat().st_size > 10_000
  starts = [e for e in _events(w) if e["event"] == "start"]
  assert {e["point"] for e in starts} == {"broken", "ok"}
  assert os.getpid() not in {e["pid"] for e in starts}  # each ran in its own process

  # Again (in this process): the finished point is skipped, the failed one is retried.
  sweep.run(_sweep(points), w)
  starts = [e["point"] for e in _events(w) if e["event"] == "start"]
  assert sorted(starts) == ["broken", "broken", "ok"]


def _sweep_process(workdir, steps=12, every=3, *extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen(
      [sys.executable, "main.py", "--mode=sweep", f"--workdir={workdir}",
       "--config=configs/sweeps/fashion_mnist_method.py:quick",
       f"--config.base.num_train_steps={steps}", f"--config.base.checkpoint_every_steps={every}",
       *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.real_data
def test_sigkill_then_restart_skips_finished_points_and_resumes(tmp_path):
  """The shipped method sweep's :quick variant from the command line, killed while
  its second point is half done."""
  w = tmp_path / "w"
  first = _sweep_process(w)
  checkpoints = w / "proposed" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and first.poll() is None:
    if (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
        and not (w / "proposed" / "results.json").exists()):
      break
    time.sleep(0.02)
  first.send_signal(signal.SIGKILL)
  out, _ = first.communicate()
  assert first.returncode == -signal.SIGKILL, out
  finished = w / "standard" / "results.json"
  assert finished.exists() and not (w / "proposed" / "results.json").exists()
  before = (finished.read_bytes(), finished.stat().st_mtime_ns)

  second = _sweep_process(w)
  out, _ = second.communicate(timeout=300)
  assert second.returncode == 0, out
  assert "1 already finished, 1 to run" in out and "resuming from step" in out
  assert (finished.read_bytes(), finished.stat().st_mtime_ns) == before
  starts = [e["point"] for e in _events(w) if e["event"] == "start"]
  assert starts == ["standard", "proposed", "proposed"]
  assert [(r["point"], r["status"]) for r in _csv(w)] == [("standard", "finished"),
                                                          ("proposed", "finished")]
  assert (w / "results.md").exists() and (w / "accuracy_vs_memory.png").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_sigterm_to_a_sweep_stops_its_workers_with_checkpoints(tmp_path):
  """A preempted sweep (SIGTERM to the main process only): it passes the signal on to
  its two workers, which save the step they are at (there is no periodic checkpoint
  before step 1000), and stops without recording a failure."""
  w = tmp_path / "w"
  proc = _sweep_process(w, 3000, 1000, "--sweep_workers=2", "--config.base.log_every_steps=1")
  logs, deadline = [w / p / "metrics.jsonl" for p in ("standard", "proposed")], time.time() + 300
  while proc.poll() is None and time.time() < deadline and not all(
      m.exists() and m.read_text().count('"train"') >= 5 for m in logs):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 143, out
  assert "stopped: SIGTERM: the sweep stopped" in out and "Traceback" not in out, out
  for point in ("standard", "proposed"):
    steps = [int(p.name) for p in (w / point / "checkpoints").iterdir() if p.name.isdigit()]
    assert 5 <= max(steps) < 1000, (point, steps)  # (orbax also keeps step 1)
    assert not (w / point / "error.txt").exists()
  events = sorted((e["point"], e["event"]) for e in _events(w))
  assert events == [("proposed", "interrupted"), ("proposed", "start"),
                    ("standard", "interrupted"), ("standard", "start")]


@pytest.mark.slow
@pytest.mark.real_data
def test_ctrl_c_during_an_in_process_sweep_stops_it_with_the_point_saved(tmp_path):
  """Ctrl-C (SIGINT to this process, the sweep's) while its first point trains: the
  sweep raises Interrupted after that point saved its step; the second never starts."""
  w = tmp_path / "w"
  points = [{"name": "a", "num_train_steps": 3000, "checkpoint_every_steps": 1000,
             "log_every_steps": 1}, {"name": "b"}]
  metrics = w / "a" / "metrics.jsonl"

  def press_ctrl_c():
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists()
                                          and metrics.read_text().count('"train"') >= 5):
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)

  presser = threading.Thread(target=press_ctrl_c)
  presser.start()
  with pytest.raises(interrupt.Interrupted, match=r"SIGINT at step \d+: saved the checkpoint"):
    sweep.run(_sweep(points), w)
  presser.join()
  steps = [int(p.name) for p in (w / "a" / "checkpoints").iterdir() if p.name.isdigit()]
  assert 5 <= max(steps) < 1000, steps
  assert [(e["point"], e["event"]) for e in _events(w)] == [("a", "start"), ("a", "interrupted")]
  assert not (w / "b").exists() and not (w / "a" / "error.txt").exists()


def test_changed_keys_of_a_finished_point(tmp_path):
  points = sweep.plan(_sweep([{"name": "p", "seed": 1}]))
  d = tmp_path / "p"
  d.mkdir()
  (d / "config.json").write_text(points[0].config.to_json_best_effort())
  assert sweep._changed_keys(points[0], d) == []
  points[0].config.optimizer.lr = 0.5
  assert sweep._changed_keys(points[0], d) == ["optimizer.lr"]


def test_a_second_sweep_in_the_same_workdir_is_refused(tmp_path):
  from bnn import workdir_lock

  with workdir_lock.hold(tmp_path / "w", "a sweep"):  # flock: refused in this process too
    with pytest.raises(workdir_lock.WorkdirInUse, match=r"w is in use by a sweep \(pid"):
      sweep.run(_sweep([{"seed": 1}]), tmp_path / "w")
  assert not (tmp_path / "w" / "runs.jsonl").exists()
