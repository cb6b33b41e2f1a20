"""The results of a sweep (bnn/sweep.py): one row per point with its overrides, test
accuracy, modelled and measured training memory and step time, written as
results.csv, results.md and accuracy_vs_memory.png (with the Pareto front: the points
that no other point beats on both memory and accuracy)."""
from __future__ import annotations

import csv
import io
import json
import math
import struct
from pathlib import Path

import numpy as np

from pi_backend import atomic

MIB = 2**20


def pareto_front(memory: list[float], accuracy: list[float]) -> list[int]:
  """Indices of the points that no other point dominates (memory <= and accuracy >=,
  one of them strictly), ordered by memory. Equal points are all on the front."""
  front = []
  for i, (m, a) in enumerate(zip(memory, accuracy)):
    if not any(m2 <= m and a2 >= a and (m2 < m or a2 > a)
               for m2, a2 in zip(memory, accuracy)):
      front.append(i)
  return sorted(front, key=lambda i: (memory[i], -accuracy[i]))


# --------------------------------------------------------------------------------------
# Memory and step time of one point.
# --------------------------------------------------------------------------------------

def gradient_bits(spec: str) -> int:
  """Bits per element of a gradient format: identity 32, float16/bfloat16 16, po2 a
  sign bit + its exponent bits."""
  import quantizers

  q = quantizers.get(spec, "gradient")
  if q.name == "po2":
    return 1 + q.bits
  bits = {"identity": 32, "float16": 16, "bfloat16": 16}
  if q.name not in bits:
    raise ValueError(f"no bit width for gradient quantizer {spec!r}; expected one of "
                     f"{sorted(bits)} or po2(...)")
  return bits[q.name]


def dx_bits(model_config) -> int:
  """Modelled bits per element of the activation-gradient buffers (bnn/memory.py's
  grad_buffers) of the proposed method: the narrower of the dense/conv dY format
  (default identity) and the batch-norm dY format (default float16), as
  bnn/memory_report.py charges po2 at 5 bits."""
  dense = model_config.grad_quantizer
  bn = model_config.bn_grad_quantizer
  return min(gradient_bits("identity" if dense == "default" else dense),
             gradient_bits("float16" if bn == "default" else bn))


def point_memory(config, point_dir: Path) -> dict:
  """Modelled bytes (bnn/memory.py, the point's method and dX format) and the XLA peak
  of its compiled training step; cached in point_dir/memory.json. Errors are recorded
  there instead of raised."""
  path = Path(point_dir) / "memory.json"
  if path.exists():
    return json.loads(path.read_text())
  try:
    from bnn import memory, models, optim
    from bnn.data import catalog

    spec = catalog.get_spec(config.dataset.name)
    model = models.create(config.model, spec.num_classes)
    bits = dx_bits(config.model)
    layers = memory.modelled(model, (config.batch_size, *spec.image_shape),
                             optimizer=optim.optimizer_name(config),
                             grad_buffer_bits={"proposed": bits})
    result = {"modelled_bytes": sum(memory.totals(layers, config.model.method).values()),
              "measured_peak_bytes": memory.measure_step(config).peak,
              "dx_bits": bits if config.model.method == "proposed" else 32,
              "batch_size": config.batch_size}
  except Exception as e:  # noqa: BLE001  (a report column, not a reason to stop)
    result = {"error": f"{type(e).__name__}: {e}"}
  Path(point_dir).mkdir(parents=True, exist_ok=True)
  atomic.write_text(path, json.dumps(result, indent=2) + "\n")
  return result


def _events(path: Path):
  """(tag, step, wall_time) of the scalars in one TensorBoard event file (TFRecord
  framing: uint64 length, uint32 crc, payload, uint32 crc)."""
  from tensorboardX.proto import event_pb2

  data = path.read_bytes()
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    payload = data[offset + 12: offset + 12 + length]
    offset += 12 + length + 4
    if len(payload) < length:
      break  # a record cut short by a kill
    event = event_pb2.Event.FromString(payload)
    for value in event.summary.value:
      yield value.tag, event.step, event.wall_time


def step_time(point_dir: Path) -> float | None:
  """Seconds per training step: the median over the run's logged training steps of
  wall time / steps between consecutive logs (TensorBoard wall times), so that
  evaluations, compilation and restarts do not count."""
  times = sorted({(wall, step) for file in (Path(point_dir) / "tensorboard").glob("events.*")
                  for tag, step, wall in _events(file) if tag == "train/loss"})
  rates = [(w2 - w1) / (s2 - s1) for (w1, s1), (w2, s2) in zip(times, times[1:]) if s2 > s1]
  return float(np.median(rates)) if rates else None


# --------------------------------------------------------------------------------------
# The rows, and the CSV, markdown table and plot.
# --------------------------------------------------------------------------------------

def _error(point_dir: Path) -> str:
  path = point_dir / "error.txt"
  if not path.exists():
    return ""
  lines = [l for l in path.read_text().splitlines() if l.strip()]
  return lines[0] if lines else "unknown error"  # bnn/sweep.py writes a summary first


def collect(points, workdir: Path) -> list[dict]:
  """One row per point: name, status, overrides, accuracies, memory, step time."""
  rows = []
  for p in points:
    d = Path(workdir) / p.name
    row = {"point": p.name, **p.overrides, "status": "not run", "test_accuracy": None,
           "best_val_test_accuracy": None, "steps": None, "modelled_memory_bytes": None,
           "measured_peak_bytes": None, "step_time_s": None, "error": _error(d)}
    if (d / "results.json").exists():
      results = json.loads((d / "results.json").read_text())
      mem = point_memory(p.config, d)
      row.update(status="finished", test_accuracy=results["test"]["accuracy"],
                 best_val_test_accuracy=results.get("best_test", results["test"])["accuracy"],
                 steps=results["step"], modelled_memory_bytes=mem.get("modelled_bytes"),
                 measured_peak_bytes=mem.get("measured_peak_bytes"), step_time_s=step_time(d),
                 error=mem.get("error", ""))
    elif row["error"]:
      row["status"] = "failed"
    rows.append(row)
  _mark_front(rows)
  return rows


def _accuracy(row) -> float | None:
  return row["best_val_test_accuracy"]


def _mark_front(rows: list[dict]) -> None:
  for key, flag in (("modelled_memory_bytes", "front_modelled"),
                    ("measured_peak_bytes", "front_measured")):
    usable = [r for r in rows if r[key] is not None and _accuracy(r) is not None]
    front = pareto_front([r[key] for r in usable], [_accuracy(r) for r in usable])
    for r in rows:
      r[flag] = False
    for i in front:
      usable[i][flag] = True


def write_csv(rows: list[dict], path: Path) -> Path:
  columns = list(dict.fromkeys(k for r in rows for k in r))
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=columns)
  writer.writeheader()
  for r in rows:
    writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
  return atomic.write_text(path, text.getvalue())


def _fmt(value, scale=1.0, digits=2, suffix="") -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value * scale:.{digits}f}{suffix}"


def markdown(rows: list[dict], title: str = "") -> str:
  """The table: overrides, accuracies, memory, step time; * marks the Pareto front
  (modelled memory), errors listed below it."""
  keys = [k for k in dict.fromkeys(k for r in rows for k in r)
          if k not in _RESULT_COLUMNS and k != "point"]
  head = ["point", *keys, "test acc (best val)", "test acc (final)", "modelled MiB",
          "XLA peak MiB", "ms / step", "status"]
  lines = ([f"{title}", ""] if title else []) + [
      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    name = f"{r['point']} *" if r.get("front_modelled") else r["point"]
    cells = [name, *(f"`{r[k]}`" if k in r else "" for k in keys),
             _fmt(r["best_val_test_accuracy"], 100, 2, "%"), _fmt(r["test_accuracy"], 100, 2, "%"),
             _fmt(r["modelled_memory_bytes"], 1 / MIB, 3), _fmt(r["measured_peak_bytes"], 1 / MIB, 3),
             _fmt(r["step_time_s"], 1000, 1), r["status"]]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "`*`: on the Pareto front of test accuracy (best validation checkpoint) "
            "against modelled training memory."]
  errors = [f"- {r['point']}: {r['error']}" for r in rows if r["error"]]
  if errors:
    lines += ["", "Errors (full tracebacks in <point>/error.txt):", *errors]
  return "\n".join(lines) + "\n"


_RESULT_COLUMNS = ("status", "test_accuracy", "best_val_test_accuracy", "steps",
                   "modelled_memory_bytes", "measured_peak_bytes", "step_time_s", "error",
                   "front_modelled", "front_measured")


def short_names(names: list[str]) -> list[str]:
  """Point names without the "__"-joined parts that every point shares."""
  parts = [n.split("__") for n in names]
  shared = set.intersection(*map(set, parts)) if len(parts) > 1 else set()
  return ["__".join(p for p in ps if p not in shared) or n for ps, n in zip(parts, names)]


_ACCURACY_SPAN = 8.0  # percentage points shown below the best; points lower sit on the edge


def plot(rows: list[dict], png: Path, title: str = "") -> Path:
  """Test accuracy (best validation checkpoint) against modelled and against measured
  training memory, one panel each, one marker per point (legend on the right), the
  Pareto front ringed and joined. Points far below the best are drawn on the lower
  edge as triangles with their accuracy written next to them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  labels = dict(zip((r["point"] for r in rows), short_names([r["point"] for r in rows])))
  style = {r["point"]: (plt.cm.tab10(i % 10), "osD^vP*X"[i // 10 % 8]) for i, r in enumerate(rows)}
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
  for ax, key, flag, label in (
      (axes[0], "modelled_memory_bytes", "front_modelled", "modelled training memory (MiB)"),
      (axes[1], "measured_peak_bytes", "front_measured", "XLA peak of the training step (MiB)")):
    usable = [r for r in rows if r[key] is not None and _accuracy(r) is not None]
    if not usable:
      ax.text(0.5, 0.5, "no finished points", ha="center", va="center", transform=ax.transAxes)
      continue
    x = np.array([r[key] for r in usable], float) / MIB
    y = np.array([_accuracy(r) for r in usable], float) * 100
    floor = max(y.min(), y.max() - _ACCURACY_SPAN)
    margin = max(0.1, 0.08 * (y.max() - floor))
    for xi, yi, r in zip(x, y, usable):
      color, marker = style[r["point"]]
      if yi >= floor:
        ax.scatter(xi, yi, color=color, marker=marker, s=40, zorder=2, label=labels[r["point"]])
      else:
        ax.scatter(xi, floor - margin / 2, color=color, marker="v", s=60, zorder=2,
                   label=labels[r["point"]])
        ax.annotate(f"{yi:.1f}%", (xi, floor - margin / 2), textcoords="offset points",
                    xytext=(6, -3), fontsize=7)
    front = sorted((i for i, r in enumerate(usable) if r[flag]), key=lambda i: (x[i], -y[i]))
    shown = np.maximum(y, floor - margin / 2)
    ax.step(x[front], shown[front], where="post", color="tab:red", alpha=0.5, zorder=1)
    ax.scatter(x[front], shown[front], s=160, facecolors="none", edgecolors="tab:red",
               linewidths=1.5, zorder=3, label="Pareto front")
    ax.set_ylim(floor - margin, y.max() + margin)
    if x.max() - x.min() < 1e-3 * x.max():  # equal to 0.1%: show them as equal
      ax.set_xlim(x.mean() * 0.95, x.mean() * 1.05)
    ax.ticklabel_format(axis="both", useOffset=False, style="plain")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy, best validation checkpoint (%)")
    ax.grid(alpha=0.3)
  handles = {}
  for ax in axes:
    for h, l in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(l, h)
  if handles:
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(0.8, 0.5),
               fontsize=8)
  fig.suptitle(title)
  fig.tight_layout(rect=(0, 0, 0.8 if handles else 1, 1))
  image = io.BytesIO()
  fig.savefig(image, dpi=110, format="png")
  plt.close(fig)
  return atomic.write_bytes(png, image.getvalue())


def write(points, workdir: Path, title: str = "") -> list[dict]:
  """Writes results.csv, results.md and accuracy_vs_memory.png into workdir."""
  workdir = Path(workdir)
  rows = collect(points, workdir)
  write_csv(rows, workdir / "results.csv")
  atomic.write_text(workdir / "results.md", markdown(rows, title))
  plot(rows, workdir / "accuracy_vs_memory.png", title)
  return rows
