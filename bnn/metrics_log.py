"""Where training metrics go: a JSONL file (the record), TensorBoard event files
(tensorboardX), and a PNG of the curves (redrawn during a run and at its end)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from pi_backend import atomic


class MetricsLog:
  """Appends {"step": ..., "split": ..., name: value} lines to metrics.jsonl and the
  same scalars to TensorBoard. On resume, lines past the restored step are dropped
  (they were written after the checkpoint the run resumes from)."""

  def __init__(self, workdir: Path, resume_step: int = 0):
    from tensorboardX import SummaryWriter

    self.path = Path(workdir) / "metrics.jsonl"
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
      # whole or not at all: a preemption here would otherwise cut the run's history
      atomic.write_text(self.path, "".join(line + "\n" for line in kept))
    self._file = open(self.path, "a")
    self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, split: str, metrics: dict) -> None:
    values = {k: float(v) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    self._file.flush()
    for k, v in values.items():
      self._tb.add_scalar(f"{split}/{k}", v, int(step))

  def close(self) -> None:
    self._file.close()
    self._tb.close()


def read(path: Path) -> list[dict]:
  return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(jsonl: Path, png: Path, title: str = "") -> Path:
  """Loss and accuracy against step, one line per split."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read(jsonl)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, name in zip(axes, ("loss", "accuracy")):
    for split in sorted({r["split"] for r in records}):
      points = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
      if points:
        steps, values = np.array(points).T
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, dpi=110, format="png")
  plt.close(fig)
  return atomic.write_bytes(png, image.getvalue())  # a viewer never sees half an image


class NullLog:
  """What processes other than 0 log: nothing."""

  def write(self, step: int, split: str, metrics: dict) -> None:
    pass

  def close(self) -> None:
    pass
