"""Where a training step's time goes, per layer and direction, standard vs proposed.

    python bench/step_profile.py [--model mlp] [--steps 100]
                                 [--optimizer adam] [--state-dtype float32]

Traces `steps` compiled steps of each method with jax.profiler (a Perfetto trace, no
TensorBoard needed), names every XLA op by the layer it came from (the op_name of the
optimized HLO, dumped by XLA for this run), and prints the time per step of each
layer kind in the forward pass (jvp) and the backward pass (transpose), both methods
side by side. The sums count op time only, not the executor's, so they fall a little
short of bench/step_time.py's wall time. Used to find the proposed method's extra cost
(docs/step_time.md).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_backend import argtypes  # noqa: E402

import step_time  # noqa: E402  (bench/ is the script's directory)

_OPS = "ops run (count)"  # a key beside the layer kinds: XLA ops (thunks) per step
_OP = re.compile(r'\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]+)"')


def _layer_kind(op_name: str) -> str:
  """'jit(step)/transpose(jvp(MLP))/BatchNorm_1/mul' -> 'transpose(jvp(MLP))/BatchNorm'."""
  parts = op_name.split("/")
  return re.sub(r"_\d+", "", "/".join(parts[1:3]))


def profile(name: str, method: str, batch: int, steps: int, optimizer: str,
            state_dtype: str, weight_dtype: str, work: Path) -> collections.Counter:
  import importlib

  import jax

  from bnn import memory_report

  config = importlib.import_module(f"configs.{step_time.ROWS[name]}").get_config()
  config.batch_size = batch
  o = config.optimizer
  o.name, o.state_dtype, o.weight_dtype = optimizer, state_dtype, weight_dtype
  step, state, images, labels = step_time._step_and_state(
      memory_report._for_method(config, method), batch)
  hlo = sorted(work.glob("*jit_step*after_optimizations.txt"), key=os.path.getmtime)[-1]
  kind_of = {}
  for line in hlo.read_text().splitlines():
    m = _OP.match(line)
    if m:
      kind_of.setdefault(m.group(1), _layer_kind(m.group(2)))
  trace_dir = work / f"trace_{method}"
  with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = step(state, images, labels)
    jax.block_until_ready((state, metrics))
  trace = next(trace_dir.rglob("*.trace.json.gz"))
  events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_kind = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kind_of:
      per_kind[kind_of[e["name"]]] += e["dur"] / steps  # microseconds per step
      per_kind[_OPS] += 1 / steps
  return per_kind


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="mlp", choices=list(step_time.ROWS))
  parser.add_argument("--batch", type=argtypes.positive_int, default=100)
  parser.add_argument("--steps", type=argtypes.positive_int, default=100)
  parser.add_argument("--optimizer", default="default",
                      choices=["default", "adam", "factored_adam", "bop"])
  parser.add_argument("--state-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"])
  parser.add_argument("--weight-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"])
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    # XLA reads its flags when JAX starts its backend, which is after this
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={work}"
                               " --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*jit_step.*")
    runs = {}
    for method in ("standard", "proposed"):
      # one dump folder for both: the newest optimized module is this method's
      runs[method] = profile(args.model, method, args.batch, args.steps, args.optimizer,
                             args.state_dtype, args.weight_dtype, work)
  kinds = sorted(set(runs["standard"]) | set(runs["proposed"]),
                 key=lambda k: -max(runs["standard"][k], runs["proposed"][k]))
  print(f"{args.model}, batch {args.batch}: op time per step (us), {args.steps} steps "
        f"each, optimizer {args.optimizer}, state {args.state_dtype}")
  print("| layer (jvp: forward, transpose: backward) | standard | proposed | difference |")
  print("|---|---|---|---|")
  ops = {m: r.pop(_OPS) for m, r in runs.items()}
  for k in kinds:
    s, p = runs["standard"][k], runs["proposed"][k]
    if k != _OPS and max(s, p) >= 10:
      print(f"| {k} | {s:.0f} | {p:.0f} | {p - s:+.0f} |")
  s, p = sum(runs["standard"].values()), sum(runs["proposed"].values())
  print(f"| all ops | {s:.0f} | {p:.0f} | {p - s:+.0f} ({p / s:.2f}x) |")
  print(f"| {_OPS} | {ops['standard']:.0f} | {ops['proposed']:.0f} | "
        f"{ops['proposed'] - ops['standard']:+.0f} |")


if __name__ == "__main__":
  main()
