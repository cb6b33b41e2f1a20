"""`main.py --mode memory`: the training memory of a config, both methods, modelled
per layer and measured from XLA, as a table and a stacked bar chart."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from bnn import memory, workdir_lock


def _for_method(config, method: str):
  """config with model.method set; quantizer and state settings fall back to the
  method's defaults where the other method's would be invalid."""
  c = copy.deepcopy(config)
  c.model.method = method
  if method == "standard":
    for key in ("grad_quantizer", "bn_grad_quantizer", "weight_grad_quantizer"):
      c.model[key] = "default"
    c.optimizer.state_dtype = c.optimizer.weight_dtype = "default"
    c.optimizer.name = "adam"
  return c


def report(config, workdir: str | Path, measure: bool = True) -> dict:
  """Prints the per-layer table (modelled), the measured peaks and their ratio;
  writes memory.png and memory.txt into workdir. Returns the numbers."""
  from bnn import models, optim
  from bnn.data import catalog

  workdir = workdir_lock.create(workdir)  # before the work: an unusable one fails at once
  spec = catalog.get_spec(config.dataset.name)
  model = models.create(config.model, spec.num_classes)
  po2 = str(config.model.grad_quantizer).startswith("po2")
  layers = memory.modelled(model, (config.batch_size, *spec.image_shape),
                           optimizer=optim.optimizer_name(config),
                           grad_buffer_bits={"proposed": 5} if po2 else None)
  lines = [f"Training memory of {config.model.name} on {config.dataset.name}, batch "
           f"{config.batch_size} (modelled: METHOD.md bit widths, see bnn/memory.py)",
           memory.format_table(layers)]
  result = {"modelled": {m: memory.totals(layers, m) for m in ("standard", "proposed")}}
  if measure:
    measured = {m: memory.measure_step(_for_method(config, m)) for m in ("standard", "proposed")}
    result["measured"] = measured
    s, p = measured["standard"].peak, measured["proposed"].peak
    lines += ["", "measured (XLA memory analysis of the compiled training step; peak = "
              "arguments + outputs + temporaries - aliased):"]
    for m, v in measured.items():
      lines.append(f"  {m:>9}: peak {memory._human(v.peak):>10}  (arguments "
                   f"{memory._human(v.arguments)}, temporaries {memory._human(v.temporaries)})")
    lines.append(f"  ratio standard / proposed: {s / p:.2f}x")
  text = "\n".join(lines)
  print(text)
  (workdir / "memory.txt").write_text(text + "\n")
  plot(result, workdir / "memory.png", title=f"{config.model.name} / {config.dataset.name}, "
                                            f"batch {config.batch_size}")
  print(f"chart: {workdir / 'memory.png'}")
  return result


def plot(result: dict, png: Path, title: str = "") -> Path:
  """Stacked bars by category for each method (modelled), with the measured peaks."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  methods = ("standard", "proposed")
  fig, ax = plt.subplots(figsize=(7, 4.5))
  bottoms = np.zeros(len(methods))
  for category in memory.CATEGORIES:
    values = np.array([result["modelled"][m][category] for m in methods]) / 2**20
    ax.bar([f"{m}\n(modelled)" for m in methods], values, bottom=bottoms, label=category)
    bottoms += values
  if "measured" in result:
    peaks = np.array([result["measured"][m].peak for m in methods]) / 2**20
    ax.bar([f"{m}\n(measured)" for m in methods], peaks, color="0.4", label="XLA peak")
  ax.set_ylabel("MiB per training step")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)
  return Path(png)
