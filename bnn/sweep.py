"""`main.py --mode sweep`: every point of a sweep (configs/sweeps/), each trained in
its own sub-workdir, one after another or in worker processes; resumable.

Sweep workdir layout:
  sweep.json              the sweep: base config file, variant, resolved base, points
  runs.jsonl              one line per point started, finished, failed or interrupted
                          (time, pid)
  <point>/                the point's experiment workdir (bnn/experiment.py: checkpoints,
                          metrics, results.json), memory.json, and error.txt if it failed
                          (a one-line summary, then the traceback); with worker
                          processes, output.log: what the point's process printed
  results.csv, results.md, accuracy_vs_memory.png   (bnn/sweep_report.py)

A point is finished when <point>/results.json exists. Running the same command again
skips finished points, resumes a half-finished one from its checkpoints and retries
failed ones. Every point's config is checked before anything runs. A point that
fails (an exception, or its worker process dying) is recorded with its error and the
others go on. SIGINT or SIGTERM stops the sweep: the sweep passes SIGTERM on to its
workers, each running point saves the step it is at (pi_backend/interrupt.py), and none is
recorded as failed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import time
import traceback
from pathlib import Path

import ml_collections

from bnn import config_validation, workdir_lock
from pi_backend import atomic, interrupt

NAME_KEY = "name"  # a point's optional explicit name; every other key is a config override


class SweepError(config_validation.ConfigError):
  """A sweep or one of its points cannot work; raised before anything runs."""


@dataclasses.dataclass
class Point:
  name: str
  overrides: dict          # dotted config key -> value
  config: ml_collections.ConfigDict


def point_name(point: dict) -> str:
  """The point's "name", else its values joined by "__" (strings as they are, other
  values with their key): {"model.grad_quantizer": "po2(bits=3, bias=6)", "seed": 1}
  -> "po2-bits=3-bias=6__seed=1"."""
  if NAME_KEY in point:
    name = str(point[NAME_KEY])
  else:
    name = "__".join(re.sub(r"[^A-Za-z0-9_.=+-]+", "-", v if isinstance(v, str) else
                            f"{k.split('.')[-1]}={v}").strip("-") for k, v in point.items())
  if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", name) or name in (".", ".."):
    raise SweepError(f"sweep point name {name!r} (from {point}) is not a usable directory "
                     f"name; expected letters, digits and _ . = + - only")
  return name


def apply_overrides(base: ml_collections.ConfigDict, overrides: dict, where: str = ""
                    ) -> ml_collections.ConfigDict:
  """A copy of base with the dotted-key overrides set. Unknown keys and values of the
  wrong type raise SweepError naming the key."""
  config = copy.deepcopy(base)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node, path = config, []
    for part in [*parents, leaf]:
      here = "config" + "".join("." + p for p in path)
      if not isinstance(node, ml_collections.ConfigDict):
        raise SweepError(f"{where}unknown config key {key!r}: {here} is a value "
                         f"({node!r}), not a section")
      if part not in node:
        raise SweepError(f"{where}unknown config key {key!r} (no {part!r} in {here}); "
                         f"expected one of {sorted(node.keys())}")
      if part != leaf:
        node = node[part]
        path.append(part)
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise SweepError(f"{where}config.{key}={value!r}: wrong type; expected "
                       f"{type(node[leaf]).__name__} like the base's {node[leaf]!r} ({e})") from e
  return config


def plan(sweep: ml_collections.ConfigDict) -> list[Point]:
  """The sweep's points, each with its resolved config, all checked: raises SweepError
  naming the point and the bad key before anything is built or run."""
  for key in ("base", "points"):
    if key not in sweep:
      raise SweepError(f"not a sweep config: no {key!r}; a sweep file "
                       f"(configs/sweeps/) has get_config() returning "
                       f"configs.sweeps.common.sweep_config(...)")
  points, names = [], {}
  for i, raw in enumerate(sweep.points):
    if not isinstance(raw, dict):
      raise SweepError(f"sweep point #{i} is {raw!r}; expected a dict of config overrides")
    name = point_name(raw)
    where = f"sweep point {name!r} (#{i} of {len(sweep.points)}): "
    if name in names:
      raise SweepError(f"{where}same name as point #{names[name]}; give the points distinct "
                       f"values or a {NAME_KEY!r}")
    names[name] = i
    overrides = {k: v for k, v in raw.items() if k != NAME_KEY}
    config = apply_overrides(sweep.base, overrides, where)
    try:
      config_validation.validate(config)
    except (config_validation.ConfigError, KeyError, TypeError) as e:
      raise SweepError(f"{where}{e}") from e
    points.append(Point(name, overrides, config))
  return points


OUTPUT_LOG = "output.log"  # a worker process's stdout and stderr, in its point's workdir


def is_finished(point_dir: Path) -> bool:
  return (Path(point_dir) / "results.json").exists()


def _changed_keys(point: Point, point_dir: Path) -> list[str]:
  """Config keys whose value differs from the point's stored config.json."""
  from bnn import checkpoints as ckpt

  path = Path(point_dir) / "config.json"
  if not path.exists():
    return []
  return list(ckpt.config_changes(json.loads(path.read_text()), point.config))


def _log(workdir: Path, point: str, event: str, **extra) -> None:
  record = {"time": round(time.time(), 3), "point": point, "event": event,
            "pid": os.getpid(), **extra}
  with open(Path(workdir) / "runs.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")


def run_point(point: Point, workdir: Path) -> str:
  """Trains one point in workdir/<name> (resuming from its checkpoints) and measures
  its memory; returns "finished" or "failed" (error in workdir/<name>/error.txt)."""
  from bnn import experiment, sweep_report

  point_dir = Path(workdir) / point.name
  point_dir.mkdir(parents=True, exist_ok=True)
  (point_dir / "error.txt").unlink(missing_ok=True)
  _log(workdir, point.name, "start")
  start = time.time()
  try:
    experiment.train_and_evaluate(point.config, point_dir)
  except interrupt.Interrupted:  # saved; the sweep stops, to resume this point later
    _log(workdir, point.name, "interrupted")
    raise
  except Exception as e:  # noqa: BLE001  (recorded; the other points go on)
    summary = f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]
    (point_dir / "error.txt").write_text(f"{summary}\n\n{traceback.format_exc()}")
    _log(workdir, point.name, "failed", error=summary)
    print(f"sweep point {point.name} failed: {type(e).__name__}: {e}", flush=True)
    return "failed"
  _log(workdir, point.name, "finished", seconds=round(time.time() - start, 1))
  sweep_report.point_memory(point.config, point_dir)
  return "finished"


def _child(point: Point, workdir: str, parent: int) -> None:
  """Worker process body: dies with the sweep process (Linux), then runs the point."""
  try:
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
  if os.getppid() != parent:  # the parent died before prctl took effect
    os._exit(1)
  # the point's output goes to its own file: several workers' progress bars on one
  # terminal garbled each other (the sweep process says where each point's output is)
  point_dir = Path(workdir) / point.name
  point_dir.mkdir(parents=True, exist_ok=True)
  with open(point_dir / OUTPUT_LOG, "a", buffering=1) as log:
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
  try:
    run_point(point, Path(workdir))
  except interrupt.Interrupted as e:  # saved and logged: no traceback
    raise SystemExit(e.exit_code) from None


def _outcome(point_dir: Path) -> str:
  """One line on how a worker's point ended, for the sweep's own output."""
  try:
    results = json.loads((point_dir / "results.json").read_text())
    best = results.get("best_test", results["test"])["accuracy"]
    return (f"finished at step {results['step']}: test accuracy {results['test']['accuracy']:.4f}"
            f" (best validation checkpoint: {best:.4f})")
  except (OSError, ValueError, KeyError, TypeError):
    pass
  error = point_dir / "error.txt"
  if error.exists():
    return f"failed: {error.read_text().splitlines()[0]} ({error})"
  return f"stopped; its step is saved ({point_dir / OUTPUT_LOG})"


def _run_in_processes(todo: list[Point], workdir: Path, workers: int, done) -> None:
  import multiprocessing
  from multiprocessing.connection import wait

  ctx = multiprocessing.get_context("spawn")
  pending, running = list(todo), {}

  def stop_workers(signum):  # a terminal's Ctrl-C reaches them anyway; SIGTERM may not
    del signum
    for _, proc in running.values():
      if proc.pid is not None and proc.exitcode is None:
        os.kill(proc.pid, signal.SIGTERM)

  with interrupt.on_signal("once the running points have saved their step",
                           forward=stop_workers) as watch:
    while pending or running:
      while pending and len(running) < workers and watch.signum is None:
        point = pending.pop(0)
        proc = ctx.Process(target=_child, args=(point, str(workdir), os.getpid()),
                           name=f"sweep:{point.name}")
        proc.start()
        running[proc.sentinel] = (point, proc)
        print(f"{point.name}: started in process {proc.pid}; its output: "
              f"{workdir / point.name / OUTPUT_LOG}", flush=True)
      if not running:
        break
      for sentinel in wait(list(running)):
        point, proc = running.pop(sentinel)
        proc.join()
        point_dir = workdir / point.name
        if proc.exitcode != 0 and not is_finished(point_dir) and watch.signum is None:
          point_dir.mkdir(parents=True, exist_ok=True)
          message = f"worker process exited with code {proc.exitcode}"
          (point_dir / "error.txt").write_text(message + "\n")
          _log(workdir, point.name, "failed", error=message)
        print(f"{point.name}: {_outcome(point_dir)}", flush=True)
        done()
  if watch.signum is not None:
    raise interrupt.Interrupted(
        watch.signum, f"{interrupt.name(watch.signum)}: the sweep stopped; its running "
                      f"points saved their step; run the same command to resume")


def run(sweep: ml_collections.ConfigDict, workdir: str | Path, workers: int = 1) -> list[dict]:
  """Runs the sweep's unfinished points (in this process, or in ``workers`` spawned
  processes), writes the results and returns their rows (bnn/sweep_report.py)."""
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise SweepError(f"--sweep_workers={workers!r}: expected a positive integer")
  points = plan(sweep)
  workdir = Path(workdir)
  with workdir_lock.hold(workdir, "a sweep"):
    return _run_locked(sweep, points, workdir, workers)


def _run_locked(sweep, points: list[Point], workdir: Path, workers: int) -> list[dict]:
  from bnn import sweep_report

  atomic.write_text(workdir / "sweep.json", sweep.to_json_best_effort(indent=2) + "\n")
  title = f"{workdir.name}: {Path(sweep.get('base_file', '')).stem}, {len(points)} points"
  report = lambda: sweep_report.write(points, workdir, title)  # noqa: E731

  todo = [p for p in points if not is_finished(workdir / p.name)]
  changed = {}
  for p in points:
    if is_finished(workdir / p.name) and (keys := _changed_keys(p, workdir / p.name)):
      changed.setdefault(", ".join(keys), []).append(p.name)
  for keys, names in changed.items():
    print(f"warning: finished point(s) {', '.join(names)} were trained with another value of "
          f"{keys}; they are kept (delete a point's sub-workdir to rerun it)", flush=True)
  print(f"sweep: {len(points)} points, {len(points) - len(todo)} already finished, "
        f"{len(todo)} to run ({workers} worker{'s' * (workers > 1)}); workdir {workdir}",
        flush=True)
  if workers == 1:
    for i, point in enumerate(todo, 1):
      print(f"[{i}/{len(todo)}] {point.name}: {point.overrides}", flush=True)
      run_point(point, workdir)
      report()
  else:
    _run_in_processes(todo, workdir, workers, report)
  rows = report()
  print(f"results: {workdir / 'results.md'}, {workdir / 'results.csv'}, "
        f"{workdir / 'accuracy_vs_memory.png'}", flush=True)
  return rows
