"""One experiment, end to end: data, model, optimizer, the training loop with
evaluation, metrics and orbax checkpoints; and evaluation of a finished run.

Workdir layout:
  config.json          the resolved config
  checkpoints/         the latest checkpoints (every config.checkpoint_every_steps
                       and at the end); a restarted run resumes from the newest
  best/                the checkpoint with the best validation accuracy
  metrics.jsonl        one line per logged step and split; tensorboard/ the same
  curves.png           loss and accuracy curves, written at the end
Resuming is exact: the data order depends only on (seed, step), and the training
state (parameters, batch-norm statistics, optimizer and plateau state, RNG)
comes back bit for bit.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from bnn import config_validation, data, metrics_log, models, optim, train


def learning_rate(config, state: train.TrainState) -> float:
  return config.optimizer.lr * float(optim.plateau_scale(state.opt_state))


class Experiment:
  """Everything built from a config; used by train_and_evaluate and evaluate."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path):
    config_validation.validate(config)
    self.config, self.workdir = config, Path(workdir)
    d = config.dataset
    common = dict(seed=config.seed, validation_size=d.validation_size,
                  data_dir=d.data_dir or None)
    self.train_data = data.make_dataset(d.name, split="train", batch_size=config.batch_size,
                                        augment=d.augment, **common)
    self.eval_data = {
        split: data.make_dataset(d.name, split=split, batch_size=config.eval_batch_size,
                                 train=False, **common)
        for split in (("validation", "test") if d.validation_size > 0 else ("test",))}
    self.model = models.create(config.model, self.train_data.num_classes)
    steps_per_epoch = self.train_data.steps_per_epoch
    self.num_train_steps = (config.num_train_steps if config.num_train_steps > 0
                            else config.num_epochs * steps_per_epoch)
    self.tx = optim.make_optimizer(config, steps_per_epoch)
    example = jnp.zeros((1, *self.train_data.image_shape), jnp.float32)
    self.abstract_state = jax.eval_shape(self.initial_state)

  def initial_state(self) -> train.TrainState:
    example = jnp.zeros((1, *self.train_data.image_shape), jnp.float32)
    return train.create_train_state(self.model, self.tx, example, self.config.seed,
                                    lambda params: optim.initial_params(self.config, params))

  def checkpoints(self, which: str = "checkpoints") -> ocp.CheckpointManager:
    if which == "best":
      options = ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda m: m["val_accuracy"], best_mode="max")
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=2, save_interval_steps=self.config.checkpoint_every_steps)
    return ocp.CheckpointManager((self.workdir / which).absolute(), options=options)

  def restore(self, manager: ocp.CheckpointManager, step: int | None = None):
    step = manager.latest_step() if step is None else step
    return manager.restore(step, args=ocp.args.StandardRestore(self.abstract_state))

  def evaluate(self, state: train.TrainState, split: str) -> dict[str, float]:
    eval_step = train.make_eval_step(self.model)
    totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
    limit = self.config.eval_steps if self.config.eval_steps > 0 else None
    for i, batch in enumerate(self.eval_data[split]):
      if limit is not None and i >= limit:
        break
      result = jax.device_get(eval_step(state, batch["image"], batch["label"]))
      for k in totals:
        totals[k] += result[k]
    return {"loss": totals["loss_sum"] / totals["count"],
            "accuracy": totals["correct"] / totals["count"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains (resuming from the newest checkpoint in workdir, if any) and returns the
  final metrics: test accuracy of the last and of the best-validation state."""
  exp = Experiment(config, workdir)
  exp.workdir.mkdir(parents=True, exist_ok=True)
  (exp.workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  latest, best = exp.checkpoints(), exp.checkpoints("best")

  if latest.latest_step() is not None:
    state = exp.restore(latest)
    print(f"resuming from step {int(state.step)} ({exp.workdir / 'checkpoints'})", flush=True)
  else:
    state = exp.initial_state()
  start = int(state.step)
  log = metrics_log.MetricsLog(exp.workdir, resume_step=start)
  step_fn = train.make_train_step(exp.model, exp.tx)
  steps_per_epoch = exp.train_data.steps_per_epoch
  window = []

  batches = exp.train_data.dataset[start:exp.num_train_steps]
  with tqdm(total=exp.num_train_steps, initial=start, unit="step", dynamic_ncols=True,
            desc=f"{config.model.name}/{config.model.method}") as bar:
    for step, batch in enumerate(batches.to_iter_dataset(), start=start + 1):
      state, metrics = step_fn(state, batch["image"], batch["label"])
      window.append(metrics)
      if step % config.log_every_steps == 0 or step == exp.num_train_steps:
        mean = {k: float(np.mean([m[k] for m in jax.device_get(window)])) for k in window[0]}
        window = []
        if not math.isfinite(mean["loss"]):
          raise FloatingPointError(f"non-finite training loss {mean['loss']} at step {step}; "
                                   f"the last good checkpoint is at step {latest.latest_step()}")
        log.write(step, "train", {**mean, "learning_rate": learning_rate(config, state)})
        bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}")
      end_of_epoch = step % steps_per_epoch == 0 or step == exp.num_train_steps
      if end_of_epoch and "validation" in exp.eval_data:
        val = exp.evaluate(state, "validation")
        log.write(step, "validation", val)
        state = state.replace(monitor=jnp.asarray(1.0 - val["accuracy"], jnp.float32))
        best.save(step, args=ocp.args.StandardSave(state),
                  metrics={"val_accuracy": val["accuracy"]})
        bar.write(f"step {step} (epoch {step / steps_per_epoch:.2f}): validation accuracy "
                  f"{val['accuracy']:.4f}")
      latest.save(step, args=ocp.args.StandardSave(state), force=step == exp.num_train_steps)
      bar.update(1)

  latest.wait_until_finished()
  best.wait_until_finished()
  results = {"step": int(state.step), "test": exp.evaluate(state, "test")}
  if best.best_step() is not None:
    results["best_step"] = int(best.best_step())
    results["best_test"] = exp.evaluate(exp.restore(best, best.best_step()), "test")
  log.write(int(state.step), "test", results["test"])
  log.close()
  (exp.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  metrics_log.plot_curves(exp.workdir / "metrics.jsonl", exp.workdir / "curves.png",
                          title=f"{config.model.name} / {config.dataset.name} / "
                                f"{config.model.method}")
  latest.close()
  best.close()
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Test metrics of the best-validation checkpoint (else the newest) in workdir."""
  exp = Experiment(config, workdir)
  for which in ("best", "checkpoints"):
    manager = exp.checkpoints(which)
    step = manager.best_step() if which == "best" else manager.latest_step()
    if step is not None:
      state = exp.restore(manager, step)
      return {"checkpoint": which, "step": step, "test": exp.evaluate(state, "test")}
  raise FileNotFoundError(f"no checkpoint in {exp.workdir}/best or {exp.workdir}/checkpoints; "
                          f"train first: python main.py --mode train --workdir {exp.workdir}")
