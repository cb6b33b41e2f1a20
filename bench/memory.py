"""Training memory per model: XLA-measured peak of the compiled training step for the
standard and the proposed method (same run), their ratio, our modelled ratio and
the paper's modelled ratio.

    python bench/memory.py [--models mlp cnv ...] [--state-dtype float16]

Prints the table, writes it over the last one in docs/memory.md (keeping the notes
below it, bench/report.py) and draws docs/memory.png. The ImageNet models are
compiled, not run (batch 4096). Target (issue "Training memory"): measured ratio >=
the paper's on every row.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_backend import argtypes  # noqa: E402

import report  # noqa: E402  (bench/ is the script's directory)

ROWS = {  # name -> (config module, batch, paper's modelled saving)
    "mlp": ("fashion_mnist_mlp", 100, 2.78),
    "cnv": ("cifar10_cnv", 100, 4.17),
    "binarynet": ("cifar10_binarynet", 100, 3.71),
    "resnete18": ("imagenet_resnete18", 4096, 3.78),
    "birealnet18": ("imagenet_birealnet18", 4096, 3.78),
}


def measure(name: str, state_dtype: str, optimizer: str, weight_dtype: str = "default") -> dict:
  from bnn import memory, memory_report, models
  from bnn.data import catalog

  module, batch, paper = ROWS[name]
  config = importlib.import_module(f"configs.{module}").get_config()
  config.batch_size = batch
  config.optimizer.state_dtype, config.optimizer.weight_dtype = state_dtype, weight_dtype
  config.optimizer.name = optimizer
  start = time.time()
  measured = {m: memory.measure_step(memory_report._for_method(config, m))
              for m in ("standard", "proposed")}
  spec = catalog.get_spec(config.dataset.name)
  layers = memory.modelled(models.create(config.model, spec.num_classes),
                           (batch, *spec.image_shape), optimizer=optimizer)
  modelled = {m: sum(memory.totals(layers, m).values()) for m in ("standard", "proposed")}
  return {"name": name, "batch": batch, "paper": paper, "seconds": time.time() - start,
          "standard": measured["standard"].peak, "proposed": measured["proposed"].peak,
          "modelled_ratio": modelled["standard"] / modelled["proposed"]}


def main() -> None:
  import jax

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS))
  parser.add_argument("--state-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"],
                      help="the proposed method's latent weights and optimizer state")
  parser.add_argument("--optimizer", default="default",
                      choices=["default", "adam", "factored_adam", "bop"],
                      help="the proposed method's optimizer (default: the config's, "
                           "factored_adam; standard: Adam)")
  parser.add_argument("--weight-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"],
                      help="the proposed method's latent weights (default: --state-dtype)")
  parser.add_argument("--output", type=Path, default=Path("docs/memory.md"))
  args = parser.parse_args()
  argtypes.check_output(parser, args.output, "memory.md")

  rows = []
  for name in args.models:
    rows.append(measure(name, args.state_dtype, args.optimizer, args.weight_dtype))
    r = rows[-1]
    print(f"{name}: standard {r['standard'] / 2**20:.1f} MiB, proposed "
          f"{r['proposed'] / 2**20:.1f} MiB ({r['seconds']:.0f} s)", flush=True)
  mib = lambda b: f"{b / 2**20:,.1f} MiB"
  flags = (f"--optimizer {args.optimizer} --state-dtype {args.state_dtype} "
           f"--weight-dtype {args.weight_dtype}")
  lines = [f"Peak training-step memory (XLA memory analysis, {jax.devices()[0].platform}); "
           f"proposed method with "
           f"`python bench/memory.py {flags}`", "",
           "| model | batch | standard | proposed | measured ratio | modelled ratio | paper | target met |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ratio = r["standard"] / r["proposed"]
    lines.append(f"| {r['name']} | {r['batch']} | {mib(r['standard'])} | {mib(r['proposed'])} | "
                 f"{ratio:.2f}x | {r['modelled_ratio']:.2f}x | {r['paper']:.2f}x | "
                 f"{'yes' if ratio >= r['paper'] else 'no'} |")
  table = "\n".join(lines)
  print(table)
  report.write_table(args.output, table)
  _plot(rows, args.output.with_suffix(".png"))


def _plot(rows, png: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(8, 4))
  measured = [r["standard"] / r["proposed"] for r in rows]
  ax.bar(x - 0.27, measured, 0.27, label="measured (XLA peak)")
  ax.bar(x, [r["modelled_ratio"] for r in rows], 0.27, label="modelled (ours)")
  ax.bar(x + 0.27, [r["paper"] for r in rows], 0.27, label="paper")
  ax.set_xticks(x, [r["name"] for r in rows])
  ax.set_ylabel("standard / proposed training memory")
  ax.axhline(1, color="k", lw=0.5)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
