"""Per-device training memory of BinaryNet under data parallelism: 1, 2, 4 and 8
devices (forced CPU devices), the training state replicated or sharded (FSDP
style), both methods. The step is compiled, not run.

    python bench/scaling.py [--batch 128] [--devices 1 2 4 8] [--state-dtype default]

Per device: the bytes of the training state (parameters, batch-norm statistics,
optimizer state; from the shardings) and XLA's memory analysis of the compiled
SPMD step (arguments, temporaries, peak = arguments + outputs + temporaries -
aliased). Prints the table and writes it into docs/scaling.md, between the
markers (the prose around it is kept).
"""
from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:  # the device count is fixed when jax starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_backend import argtypes  # noqa: E402

_CONFIGS = sorted(p.stem for p in Path(__file__).resolve().parents[1].glob("configs/*.py")
                  if p.stem not in ("__init__", "common"))

import jax  # noqa: E402


def measure(config, method: str, num_devices: int, mode: str, batch: int) -> dict:
  from bnn import distributed, memory, memory_report, train

  c = memory_report._for_method(config, method)
  model, tx, state, images, labels = memory.training_setup(c, batch)
  plan = distributed.plan(state, distributed.make_mesh(num_devices), mode)
  put = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  start = time.time()
  compiled = train.make_train_step(model, tx, plan).lower(
      distributed.with_shardings(state, plan.state), put(images, plan.batch),
      put(labels, plan.batch)).compile()
  m = compiled.memory_analysis()
  step = memory.StepMemory(m.argument_size_in_bytes, m.output_size_in_bytes,
                           m.temp_size_in_bytes, m.alias_size_in_bytes)
  return {"method": method, "devices": num_devices, "mode": mode,
          "state": distributed.bytes_per_device(state, plan.state),
          "arguments": step.arguments, "temporaries": step.temporaries, "peak": step.peak,
          "seconds": time.time() - start}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="cifar10_binarynet", choices=_CONFIGS)
  parser.add_argument("--batch", type=argtypes.positive_int, default=128, help="the global batch")
  parser.add_argument("--devices", type=argtypes.positive_int, nargs="+", default=[1, 2, 4, 8])
  parser.add_argument("--state-dtype", default="default",
                      choices=["default", "float32", "float16", "bfloat16"])
  parser.add_argument("--output", type=Path, default=Path("docs/scaling.md"))
  args = parser.parse_args()
  argtypes.check_output(parser, args.output, "scaling.md")

  import importlib
  config = importlib.import_module(f"configs.{args.config}").get_config()
  config.optimizer.state_dtype = args.state_dtype
  if max(args.devices) > jax.device_count():
    raise SystemExit(f"--devices {max(args.devices)} but JAX sees {jax.device_count()}")
  bad = [n for n in args.devices if args.batch % n]
  if bad:
    raise SystemExit(f"--batch {args.batch} does not split over {bad} devices")

  rows = []
  for method in ("standard", "proposed"):
    for n in args.devices:
      for mode in (("replicated",) if n == 1 else ("replicated", "sharded")):
        rows.append(measure(config, method, n, mode, args.batch))
        r = rows[-1]
        print(f"{method} {n} {mode}: state {r['state'] / 2**20:.2f} MiB, peak "
              f"{r['peak'] / 2**20:.1f} MiB ({r['seconds']:.0f} s)", flush=True)

  table = format_table(rows, config, args)
  print(table)
  write_between_markers(args.output, table)


def format_table(rows, config, args) -> str:
  mib = lambda b: f"{b / 2**20:,.2f} MiB"
  lines = [
      f"Per-device training memory of {config.model.name} ({config.dataset.name} shapes), "
      f"global batch {args.batch}, optimizer state dtype {args.state_dtype}; "
      f"`python bench/scaling.py` (forced CPU devices; compiled, not run).",
      "",
      "| method | devices | state | state / device | arguments | temporaries | peak / device |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['devices']} | {r['mode']} | {mib(r['state'])} | "
                 f"{mib(r['arguments'])} | {mib(r['temporaries'])} | {mib(r['peak'])} |")
  return "\n".join(lines)


BEGIN, END = "<!-- bench/scaling.py: begin -->", "<!-- bench/scaling.py: end -->"


def write_between_markers(path: Path, table: str) -> None:
  """Replaces the table between the markers of path (the prose around it stays);
  a file without them gets the table alone."""
  text = path.read_text() if path.exists() else ""
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    text = head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]
  else:
    text = BEGIN + "\n" + table + "\n" + END + "\n"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)

if __name__ == "__main__":
  main()
