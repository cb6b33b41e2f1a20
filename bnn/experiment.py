"""One experiment, end to end: data, model, optimizer, the training loop with
evaluation, metrics and orbax checkpoints; and evaluation of a finished run.

Workdir layout:
  config.json          the resolved config (config.until_step_<N>.json: the one it
                       replaced, when a resume from step N changed a value)
  results.json         test metrics of the final and best states, once the run ended
  checkpoints/         the latest checkpoints (every config.checkpoint_every_steps
                       and at the end); a restarted run resumes from the newest
  best/                the checkpoint with the best validation accuracy
  metrics.jsonl        one line per logged step and split; tensorboard/ the same
  curves.png           loss and accuracy curves: redrawn after an epoch once 2 minutes
                       have passed, and when the run ends or stops on a signal
Resuming is exact: the data order depends only on (seed, step), and the training
state (parameters, batch-norm statistics, optimizer and plateau state, RNG)
comes back bit for bit.

Devices and hosts (bnn/distributed.py): the global batch is split over a mesh of
all devices (config.sharding); every process reads only its rows of each batch;
all processes save and restore the checkpoints together (orbax), and only
process 0 writes config.json, metrics, curves and results.json.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from bnn import checkpoints as ckpt
from bnn import config_validation, data, distributed, metrics_log, models, optim, train
from bnn import workdir_lock
from pi_backend import atomic, interrupt


# curves.png is redrawn at the end of an epoch when this long has passed since the last
# time (and when the run ends or stops on a signal)
CURVES_EVERY_SECONDS = 120


def learning_rate(config, state: train.TrainState) -> float:
  return config.optimizer.lr * float(optim.plateau_scale(state.opt_state))


class Experiment:
  """Everything built from a config; used by train_and_evaluate and evaluate."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path):
    config_validation.validate(config)
    config_validation.check_num_devices(config, len(jax.devices()))
    self.mesh = distributed.make_mesh(config.sharding.num_devices)
    config_validation.check_batch_split(config, self.mesh.size, jax.process_count())
    self.config, self.workdir = config, Path(workdir)
    batch_sharding = distributed.plan({}, self.mesh).batch
    self.rows = {  # (start, stop) of this process's rows in a global batch
        size: distributed.process_rows(batch_sharding, size)
        for size in (config.batch_size, config.eval_batch_size)}
    self.spec = data.get_spec(config.dataset.name)
    self.model = models.create(config.model, self.spec.num_classes)
    # The state's structure and initial values do not depend on the learning-rate
    # schedule's length (steps per epoch), so they need no data: --mode export and
    # import read and write checkpoints on a machine without the dataset.
    self._init_tx = optim.make_optimizer(config, steps_per_epoch=1)
    abstract = jax.eval_shape(self._create_state)
    self.plan = distributed.plan(abstract, self.mesh, config.sharding.state)
    self.abstract_state = distributed.with_shardings(abstract, self.plan.state)

  @functools.cached_property
  def train_data(self) -> data.DataPipeline:
    d, config = self.config.dataset, self.config
    try:
      return data.make_dataset(d.name, split="train", batch_size=config.batch_size,
                               augment=d.augment, **self._shard(config.batch_size),
                               **self._data_args())
    except data.SplitTooSmall as e:  # the split's size is known only now
      key, expected = {
          "validation_size": ("dataset.validation_size", f"0 <= value < {e.limit}, the "
                              f"number of examples in {d.name}'s training split"),
          "batch_size": ("batch_size", f"at most {e.limit}, the training examples of "
                         f"{d.name} (after the validation split)")}[e.param]
      raise config_validation.ConfigError(
          f"config.{key}={e.value}: expected {expected}") from None

  @functools.cached_property
  def eval_data(self) -> dict[str, data.DataPipeline]:
    d, config = self.config.dataset, self.config
    return {split: data.make_dataset(d.name, split=split, batch_size=config.eval_batch_size,
                                     train=False, **self._shard(config.eval_batch_size),
                                     **self._data_args())
            for split in (("validation", "test") if d.validation_size > 0 else ("test",))}

  @functools.cached_property
  def tx(self) -> optax.GradientTransformation:
    """The training optimizer: its schedule counts epochs in steps of the data."""
    return optim.make_optimizer(self.config, self.train_data.steps_per_epoch)

  def load_data(self) -> None:
    """Loads (or prepares) the splits now, so that a split too small for the config
    fails before anything is compiled."""
    self.train_data, self.eval_data  # pylint: disable=pointless-statement

  @property
  def num_train_steps(self) -> int:
    c = self.config
    return (c.num_train_steps if c.num_train_steps > 0
            else c.num_epochs * self.train_data.steps_per_epoch)

  def _data_args(self) -> dict:
    d = self.config.dataset
    return dict(seed=self.config.seed, validation_size=d.validation_size,
                data_dir=d.data_dir or None)

  def _shard(self, global_rows: int) -> dict:
    start, stop = self.rows[global_rows]
    return dict(shard_index=start // (stop - start), shard_count=global_rows // (stop - start))

  def _create_state(self) -> train.TrainState:
    example = jnp.zeros((1, *self.spec.image_shape), jnp.float32)
    return train.create_train_state(self.model, self._init_tx, example, self.config.seed,
                                    lambda params: optim.initial_params(self.config, params))

  def initial_state(self) -> train.TrainState:
    """The initial state, created in place on the mesh (replicated or sharded)."""
    return jax.jit(self._create_state, out_shardings=self.plan.state)()

  def global_batch(self, batch: dict, global_rows: int) -> dict:
    """This process's rows of a batch -> global arrays split over the mesh."""
    start, stop = self.rows[global_rows]
    return distributed.global_batch(batch, self.plan.batch, stop - start, global_rows)

  def checkpoints(self, which: str = "checkpoints", *,
                  read_only: bool = False) -> ocp.CheckpointManager:
    """The orbax manager of workdir/<which>; every process must create and call it.
    Its barrier keys carry `which`: both managers may save the same step at once.
    A writer removes the half-written checkpoints a killed run left; a reader
    (``read_only``: eval, export) leaves the directory alone, since a run that trains
    there may be writing one at that moment."""
    processes = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=which)
    shared = dict(multiprocessing_options=processes, read_only=read_only,
                  cleanup_tmp_directories=not read_only)
    if which == "best":
      options = ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["val_accuracy"], best_mode="max", **shared)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=2, save_interval_steps=self.config.checkpoint_every_steps, **shared)
    return ckpt.manager(self.workdir / which, options)

  def restore(self, manager: ocp.CheckpointManager, step: int | None = None):
    """A checkpoint, after checking it holds this config's state (bnn/checkpoints.py)."""
    step = manager.latest_step() if step is None else step
    ckpt.check_workdir_config(self.workdir, self.config, has_checkpoints=True)
    return ckpt.restore(manager, step, self.abstract_state)

  def evaluate(self, state: train.TrainState, split: str) -> dict[str, float]:
    eval_step = train.make_eval_step(self.model, self.plan)
    totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
    limit = self.config.eval_steps if self.config.eval_steps > 0 else None
    for i, batch in enumerate(self.eval_data[split]):
      if limit is not None and i >= limit:
        break
      batch = self.global_batch(batch, self.config.eval_batch_size)
      result = jax.device_get(eval_step(state, batch["image"], batch["label"]))
      for k in totals:
        totals[k] += result[k]
    return {"loss": totals["loss_sum"] / totals["count"],
            "accuracy": totals["correct"] / totals["count"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains (resuming from the newest checkpoint in workdir, if any) and returns the
  final metrics: test accuracy of the last and of the best-validation state."""
  exp = Experiment(config, workdir)
  exp.load_data()
  main = distributed.is_main_process()
  # one writer per workdir: process 0 speaks for a multi-process run (hold creates the
  # workdir, or says why it cannot; the other processes only need it to exist)
  with workdir_lock.hold(exp.workdir, "a training run") if main else contextlib.nullcontext():
    exp.workdir.mkdir(parents=True, exist_ok=True)
    latest, best = exp.checkpoints(), exp.checkpoints("best")
    try:
      return _train(exp, config, latest, best, main)
    finally:  # also when a resume is refused or the loss diverges: saves finish, no
      latest.close()  # orbax thread outlives its event loop
      best.close()


def _train(exp: Experiment, config: ml_collections.ConfigDict,
           latest: ocp.CheckpointManager, best: ocp.CheckpointManager, main: bool) -> dict:
  """train_and_evaluate's work, with its two checkpoint managers open."""
  if latest.latest_step() is not None:
    state = exp.restore(latest)  # refuses another experiment's checkpoints
  else:
    state = exp.initial_state()
  start = int(state.step)
  total = exp.num_train_steps
  length = (f"config.num_train_steps is {total}" if config.num_train_steps > 0 else
            f"config.num_epochs={config.num_epochs} makes {total} steps")
  if start >= total and (done := _results_of_step(exp.workdir, start)):
    if main:  # the workdir is left as it is: this config trained nothing
      print(f"nothing to train: {exp.workdir} is at step {start} and {length} (raise it to "
            f"train on); the results from its results.json:", flush=True)
    return done
  if main:  # only now: a refused resume leaves the workdir as it was
    _record_config(exp.workdir, config, start)
    (exp.workdir / "results.json").unlink(missing_ok=True)  # the run has not ended (yet)
    if start > total:
      print(f"note: {exp.workdir} is at step {start}, past its end ({length}): nothing to "
            f"train; evaluating step {start}", flush=True)
  log = metrics_log.MetricsLog(exp.workdir, resume_step=start) if main else metrics_log.NullLog()
  with contextlib.closing(log):  # also on Ctrl-C or an error: TensorBoard's events flushed
    return _loop(exp, config, latest, best, main, log, state)


def _loop(exp: Experiment, config: ml_collections.ConfigDict, latest: ocp.CheckpointManager,
          best: ocp.CheckpointManager, main: bool, log: metrics_log.MetricsLog,
          state: train.TrainState) -> dict:
  """The training steps from state's, then the test evaluation."""
  start, total = int(state.step), exp.num_train_steps
  plot = functools.partial(metrics_log.plot_curves, exp.workdir / "metrics.jsonl",
                           exp.workdir / "curves.png", title=f"{config.model.name} / "
                           f"{config.dataset.name} / {config.model.method}")
  next_plot = time.monotonic() + CURVES_EVERY_SECONDS
  step_fn = train.make_train_step(exp.model, exp.tx, exp.plan)
  steps_per_epoch = exp.train_data.steps_per_epoch
  window = []

  batches = exp.train_data.dataset[start:total]
  # a signal stops the loop after a step, with a checkpoint (one process only: several
  # would have to agree on the step)
  # a terminal redraws the bar in place; a log file (nohup, Slurm, a sweep's worker) keeps
  # every redraw, so there it is drawn once a minute
  with tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 60,
            desc=f"{config.model.name}/{config.model.method}", disable=not main) as bar, \
       ckpt.disk_full_guard(latest), \
       interrupt.on_signal("after this step, with a checkpoint",
                           enabled=jax.process_count() == 1) as watch:
    for step, batch in enumerate(batches.to_iter_dataset(), start=start + 1):
      batch = exp.global_batch(batch, config.batch_size)
      state, metrics = step_fn(state, batch["image"], batch["label"])
      window.append(metrics)
      stop = watch.signum  # read once: a signal may come at any line
      end_of_epoch = step % steps_per_epoch == 0 or step == total
      log_now = (step % config.log_every_steps == 0 or step == total
                 or stop is not None)
      if log_now or end_of_epoch or latest.should_save(step):  # never save a NaN state
        window = jax.device_get(window)  # fetched once, for this check and the log
        losses = [(s, float(m["loss"])) for s, m in enumerate(window, step - len(window) + 1)]
        bad = [(s, loss) for s, loss in losses if not math.isfinite(loss)]
        if bad:
          ckpt.wait(latest)
          raise FloatingPointError(
              f"non-finite training loss {bad[0][1]} at step {bad[0][0]}; stopped before "
              f"saving it. The last good checkpoint is step {latest.latest_step()} in "
              f"{latest.directory} (lower optimizer.lr, or check the data)")
      if log_now:
        mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
        window = []
        log.write(step, "train", {**mean, "learning_rate": learning_rate(config, state)})
        bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}", refresh=False)
      if end_of_epoch and "validation" in exp.eval_data:
        val = exp.evaluate(state, "validation")
        log.write(step, "validation", val)
        state = state.replace(monitor=exp.plan.put_replicated(np.float32(1.0 - val["accuracy"])))
        ckpt.save(best, step, state, metrics={"val_accuracy": val["accuracy"]})
        if main:
          bar.write(f"step {step} (epoch {step / steps_per_epoch:.2f}): validation accuracy "
                    f"{val['accuracy']:.4f}")
          if time.monotonic() >= next_plot:  # curves.png to look at during a long run
            plot()
            next_plot = time.monotonic() + CURVES_EVERY_SECONDS
      ckpt.save(latest, step, state, force=step == total or stop is not None)
      bar.update(1)
      if stop is not None:
        ckpt.wait(latest)
        if main:
          plot()
        raise interrupt.Interrupted(
            stop, f"{interrupt.name(stop)} at step {step}: saved the checkpoint "
                  f"{latest.directory / str(step)}; run the same command to resume")

  ckpt.wait(latest)
  ckpt.wait(best)
  results = {"step": int(state.step), "test": exp.evaluate(state, "test")}
  if best.best_step() is not None:
    results["best_step"] = int(best.best_step())
    results["best_test"] = exp.evaluate(exp.restore(best, best.best_step()), "test")
  log.write(int(state.step), "test", results["test"])
  if main:
    atomic.write_text(exp.workdir / "results.json", json.dumps(results, indent=2) + "\n")
    plot()
  return results


def _record_config(workdir: Path, config: ml_collections.ConfigDict, step: int) -> None:
  """Writes config.json. A resume under a config that differs from the saved one (a new
  lr, more steps) says what changed, and keeps the saved config as
  config.until_step_<step>.json: the record of what trained the steps before."""
  path = workdir / "config.json"
  if step:
    try:
      changes = ckpt.config_changes(json.loads(path.read_text()), config)
    except (OSError, ValueError):  # none, or unreadable (check_workdir_config has said so)
      changes = {}
    note = ""
    if changes:
      kept = workdir / f"config.until_step_{step}.json"
      if not kept.exists():  # exists: a resume from this step changed the config before
        path.replace(kept)
      note = ("; changed: " + ", ".join(f"{k} {old!r} -> {new!r}"
                                        for k, (old, new) in changes.items())
              + f" (the previous config.json is kept as {kept.name})")
    print(f"resuming from step {step} ({workdir / 'checkpoints'}){note}", flush=True)
  atomic.write_text(path, config.to_json_best_effort(indent=2) + "\n")


def saved_config(workdir: str | Path, overrides: dict | None = None
                 ) -> ml_collections.ConfigDict | None:
  """The config a workdir's checkpoints were trained with (its config.json), with
  overrides {dotted key: value} set on top; None where the workdir has none."""
  path = Path(workdir) / "config.json"
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise ckpt.CheckpointReadError(f"{path} cannot be read: {e.strerror or e}") from None
  try:
    fields = json.loads(raw)  # bytes that are not UTF-8 raise a ValueError here too
    if not isinstance(fields, dict):
      raise ValueError(f"it holds a JSON {type(fields).__name__}, not an object")
  except ValueError as e:
    raise ckpt.CheckpointReadError(f"{path} is not a config.json ({e}); give the config "
                                   f"with --config") from None
  config = ml_collections.ConfigDict(fields)
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part] if part in node else node.setdefault(part, ml_collections.ConfigDict())
    node[leaf] = value  # an unknown key is refused by validation, naming it
  return config


def _results_of_step(workdir: Path, step: int) -> dict | None:
  """results.json's contents if it holds the results of this step, else None."""
  try:
    results = json.loads((workdir / "results.json").read_text())
  except (OSError, ValueError):
    return None
  return results if isinstance(results, dict) and results.get("step") == step else None


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Test metrics of the best-validation checkpoint (else the newest) in workdir."""
  exp = Experiment(config, workdir)
  for which in ("best", "checkpoints"):
    if not (exp.workdir / which).is_dir():  # a mistyped workdir is not created
      continue
    with contextlib.closing(exp.checkpoints(which, read_only=True)) as manager:
      step = manager.best_step() if which == "best" else manager.latest_step()
      state = None if step is None else exp.restore(manager, step)
    if state is not None:
      return {"checkpoint": which, "step": step, "test": exp.evaluate(state, "test")}
  raise no_checkpoint(exp.workdir, f"{exp.workdir}/best or {exp.workdir}/checkpoints")


def no_checkpoint(workdir: Path, where: str) -> ckpt.NoCheckpointError:
  """The error for a workdir with nothing to read: train first, or, in a sweep's
  workdir, name the points' workdirs, which hold the checkpoints."""
  points = sorted(p.parent.name for p in Path(workdir).glob("*/config.json"))
  if (Path(workdir) / "sweep.json").exists() and points:
    return ckpt.NoCheckpointError(
        f"{workdir} is a sweep's workdir; its points have the checkpoints: --workdir "
        f"{workdir}/<point>, one of {', '.join(points)}")
  return ckpt.NoCheckpointError(f"no checkpoint in {where}; train first: the same --config "
                                f"and --workdir {workdir} with --mode train")
