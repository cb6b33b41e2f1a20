"""bnn.metrics_log: the JSONL record on resume, and the curves."""
import json

import pytest

from bnn import metrics_log
from pi_backend import atomic


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_drops_the_lines_past_the_restored_step(tmp_path):
  log = metrics_log.MetricsLog(tmp_path)
  for step in (1, 2, 3):
    log.write(step, "train", {"loss": 1.0 / step})
  log.close()
  log = metrics_log.MetricsLog(tmp_path, resume_step=2)
  log.write(3, "train", {"loss": 0.5})
  log.close()
  assert [(r["step"], r["loss"]) for r in _lines(tmp_path / "metrics.jsonl")] == [
      (1, 1.0), (2, 0.5), (3, 0.5)]


def test_a_resume_killed_while_it_rewrites_the_record_keeps_all_of_it(tmp_path, monkeypatch):
  """The rewrite that drops the lines past the restored step is whole or not at all: a
  preemption in it used to be able to cut the run's history."""
  log = metrics_log.MetricsLog(tmp_path)
  for step in range(1, 101):
    log.write(step, "train", {"loss": 1.0})
  log.close()
  before = (tmp_path / "metrics.jsonl").read_bytes()

  def killed(*args):
    raise KeyboardInterrupt  # stands for the process dying before the rename

  monkeypatch.setattr(atomic.os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    metrics_log.MetricsLog(tmp_path, resume_step=50)
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  assert not list(tmp_path.glob(".*.tmp"))


def test_curves_are_a_png_and_leave_no_temporary_file(tmp_path):
  log = metrics_log.MetricsLog(tmp_path)
  for step in (1, 2):
    log.write(step, "train", {"loss": 1.0, "accuracy": 0.5})
    log.write(step, "validation", {"loss": 1.1, "accuracy": 0.4})
  log.close()
  png = metrics_log.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png", "t")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["curves.png",
                                                                        "metrics.jsonl"]
