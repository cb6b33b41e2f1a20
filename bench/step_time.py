"""Training-step time, standard vs proposed method, same run, same machine.

    python bench/step_time.py [--models mlp cnv binarynet] [--repeats N]
                              [--optimizer factored_adam] [--state-dtype float16]

Compiles both steps, then times them alternately (standard, proposed, standard, ...)
so that a change in machine load hits both; reports the median of `repeats` steps
each and the ratio. Without --repeats, each model takes as many steps as fit in
about BUDGET_S seconds, at least MIN_REPEATS (a 3 ms step's median needs hundreds).
Prints the table and writes it over the last one in docs/step_time.md, keeping the
notes below it (bench/report.py). Target (issue
"Training memory"): proposed <= 1.15x standard for MLP, CNV and BinaryNet.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_backend import argtypes  # noqa: E402

import report  # noqa: E402  (bench/ is the script's directory)

ROWS = {"mlp": "fashion_mnist_mlp", "cnv": "cifar10_cnv", "binarynet": "cifar10_binarynet"}
TARGET = 1.15
BUDGET_S = 10.0
MIN_REPEATS = 5


def _step_and_state(config, batch: int):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bnn import models, optim, train
  from bnn.data import catalog

  spec = catalog.get_spec(config.dataset.name)
  model = models.create(config.model, spec.num_classes)
  tx = optim.make_optimizer(config, steps_per_epoch=1)
  state = train.create_train_state(model, tx, jnp.zeros((1, *spec.image_shape)), config.seed,
                                   lambda p: optim.initial_params(config, p))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, *spec.image_shape), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, spec.num_classes, batch, dtype=np.int32))
  step = train.make_train_step(model, tx)
  state, metrics = step(state, images, labels)  # compile and warm up
  jax.block_until_ready(metrics)
  return step, state, images, labels


def _time_step(run: tuple) -> tuple[float, tuple]:
  """One step of run = (step, state, images, labels): its seconds, and run with the new
  state."""
  import jax

  step, state, images, labels = run
  start = time.perf_counter()
  state, metrics = step(state, images, labels)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start, (step, state, images, labels)


def measure(name: str, batch: int, repeats: int | None, optimizer: str, state_dtype: str,
            weight_dtype: str) -> dict:
  from bnn import memory_report

  config = importlib.import_module(f"configs.{ROWS[name]}").get_config()
  config.batch_size = batch
  o = config.optimizer
  o.name, o.state_dtype, o.weight_dtype = optimizer, state_dtype, weight_dtype
  runs = {m: _step_and_state(memory_report._for_method(config, m), batch)
          for m in ("standard", "proposed")}
  times = {m: [] for m in runs}

  def pair():
    for method, run in runs.items():
      seconds, runs[method] = _time_step(run)
      times[method].append(seconds)

  pair()
  if repeats is None:
    repeats = max(MIN_REPEATS, int(BUDGET_S / (times["standard"][0] + times["proposed"][0])))
  for _ in range(repeats - 1):
    pair()
  median = {m: statistics.median(t) for m, t in times.items()}
  return {"name": name, "batch": batch, "repeats": repeats, **median,
          "ratio": median["proposed"] / median["standard"]}


def main() -> None:
  import jax

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS))
  parser.add_argument("--batch", type=argtypes.positive_int, default=100)
  parser.add_argument("--repeats", type=argtypes.positive_int, default=None,
                      help=f"steps per method and model (default: about {BUDGET_S:g} s' worth, "
                           f"at least {MIN_REPEATS})")
  parser.add_argument("--optimizer", default="default",
                      choices=["default", "adam", "factored_adam", "bop"])
  parser.add_argument("--state-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"])
  parser.add_argument("--weight-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"],
                      help="the proposed method's latent weights (default: --state-dtype)")
  parser.add_argument("--output", type=Path, default=Path("docs/step_time.md"))
  args = parser.parse_args()
  argtypes.check_output(parser, args.output, "step_time.md")

  rows = []
  for name in args.models:
    rows.append(measure(name, args.batch, args.repeats, args.optimizer, args.state_dtype,
                        args.weight_dtype))
    r = rows[-1]
    print(f"{name}: standard {1e3 * r['standard']:.2f} ms, proposed {1e3 * r['proposed']:.2f} ms",
          flush=True)
  device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}, "\
           f"{jax.device_count()} device)"
  lines = [f"Training-step time on {device}, median of the given number of steps of each "
           f"method, taken alternately; proposed method with `python bench/step_time.py "
           f"--optimizer {args.optimizer} --state-dtype {args.state_dtype} --weight-dtype "
           f"{args.weight_dtype}`", "",
           "| model | batch | steps | standard (ms) | proposed (ms) | proposed / standard | "
           "target <= 1.15x |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['batch']} | {r['repeats']} | {1e3 * r['standard']:.2f} | "
                 f"{1e3 * r['proposed']:.2f} | {r['ratio']:.2f}x | "
                 f"{'yes' if r['ratio'] <= TARGET else 'no'} |")
  table = "\n".join(lines)
  print(table)
  report.write_table(args.output, table)


if __name__ == "__main__":
  main()
