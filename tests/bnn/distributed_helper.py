"""Runs in a fresh process for tests/bnn/test_distributed.py (jax must see the forced
device count before it is imported). The 2-process test runs main.py itself.

    python tests/bnn/distributed_helper.py equivalence OUT.npz mlp:standard cnv:proposed
        needs XLA_FLAGS=--xla_force_host_platform_device_count=8; for each model:method,
        trains a few steps on random data with 1 device, then 8 devices replicated,
        then 8 sharded, and saves every run's losses and final parameters.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bnn import distributed, optim, train  # noqa: E402
from bnn.models import CNV, MLP  # noqa: E402
from configs import fashion_mnist_mlp  # noqa: E402

RUNS = ((1, "replicated"), (8, "replicated"), (8, "sharded"))


def small_model(name: str, method: str):
  """(model, input shape): the paper's MLP, or a small CNV (C8 C8 MP C16 C16 MP FC32
  FC32 FC10, VALID padding, on 16x16x3: the CNV layers, fewer and narrower)."""
  if name == "mlp":
    return MLP(method=method), (28, 28, 1)
  cnv = CNV(method=method, convs=((8, False), (8, True), (16, False), (16, True)),
            hidden=(32, 32))
  return cnv, (16, 16, 3)


def train_steps(model, tx, initial_state, image_shape, num_devices: int, mode: str, steps: int,
                batch: int):
  """Losses and final state of `steps` Adam steps on seeded random uint8 batches."""
  mesh = distributed.make_mesh(num_devices)
  plan = distributed.plan(initial_state, mesh, mode)
  state = distributed.place(initial_state, plan.state)
  step = train.make_train_step(model, tx, plan)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    local = {"image": rng.integers(0, 256, (batch, *image_shape), dtype=np.uint8),
             "label": rng.integers(0, 10, batch).astype(np.int32)}
    b = distributed.global_batch(local, plan.batch, batch, batch)
    state, metrics = step(state, b["image"], b["label"])
    losses.append(float(metrics["loss"]))
  return np.asarray(losses), state, plan


def equivalence(args) -> None:
  assert jax.device_count() == 8, f"expected 8 forced CPU devices, got {jax.device_count()}"
  tx = optim.make_optimizer(fashion_mnist_mlp.get_config(), steps_per_epoch=100)
  out = {}
  for case in args.cases:
    model, shape = small_model(*case.split(":"))
    initial = jax.device_get(jax.jit(
        lambda: train.create_train_state(model, tx, jnp.zeros((1, *shape)), seed=0))())
    for n, mode in RUNS:
      _run(out, f"{case}/{n}_{mode}", model, tx, initial, shape, n, mode, args)
    if case.endswith(":proposed"):
      _flips(out, case, model, tx, initial, shape, args)
  np.savez(args.out, **out)


def _flips(out, case, model, tx, initial, shape, args):
  """Where one step from the same state differs between 1 and 8 devices, and the raw
  (unquantized) weight gradient there, relative to its layer's largest entry.

  Along the 1-device trajectory, each step is also taken on 8 devices (state
  replicated) from the same state. The differing kernel entries are recorded with
  |dW| / max|dW| of the float weight gradient of that step (the same model with
  weight_grad_quantizer='identity', one device)."""
  raw_model = model.clone(weight_grad_quantizer="identity")
  grad = jax.jit(jax.grad(lambda p, s, x, y, r: train.loss_fn(raw_model, p, s, x, y, r)[0]))
  one, eight = distributed.make_mesh(1), distributed.make_mesh(8)
  plans = {n: distributed.plan(initial, mesh, "replicated") for n, mesh in ((1, one), (8, eight))}
  steps = {n: train.make_train_step(model, tx, plans[n]) for n in plans}
  rng = np.random.default_rng(0)
  state = initial
  relative, counts = [], []
  for _ in range(args.steps):
    local = {"image": rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8),
             "label": rng.integers(0, 10, args.batch).astype(np.int32)}
    after = {}
    for n, plan in plans.items():
      b = distributed.global_batch(local, plan.batch, args.batch, args.batch)
      after[n] = jax.device_get(steps[n](distributed.place(state, plan.state),
                                         b["image"], b["label"])[0])
    step_rng = jax.random.split(jnp.asarray(state.rng))[1]
    raw = jax.device_get(grad(state.params, state.batch_stats, local["image"],
                              local["label"], step_rng))
    flipped = 0
    for path, p1 in jax.tree_util.tree_leaves_with_path(after[1].params):
      key = jax.tree_util.keystr(path)
      if not key.endswith("['kernel']"):
        continue
      p8 = _at(after[8].params, path)
      g = np.abs(np.asarray(_at(raw, path), np.float64))
      mask = np.abs(np.asarray(p8) - np.asarray(p1)) > 1e-6
      flipped += int(mask.sum())
      if mask.any():
        relative.extend((g[mask] / g.max()).tolist())
    counts.append(flipped)
    state = after[1]
  out[f"{case}/flips/relative_raw_grad"] = np.asarray(relative, np.float64)
  out[f"{case}/flips/count_per_step"] = np.asarray(counts)


def _at(tree, path):
  for key in path:
    tree = tree[getattr(key, "key", getattr(key, "idx", None))]
  return tree


def _run(out, tag, model, tx, initial, shape, n, mode, args):
  losses, state, plan = train_steps(model, tx, initial, shape, n, mode, args.steps, args.batch)
  out[f"{tag}/losses"] = losses
  out[f"{tag}/state_bytes_per_device"] = np.asarray(distributed.bytes_per_device(state, plan.state))
  out[f"{tag}/shards_per_param"] = np.asarray(  # distinct pieces each parameter is cut into
      [len({str(s.index) for s in x.addressable_shards}) for x in jax.tree.leaves(state.params)])
  for path, x in jax.tree_util.tree_leaves_with_path(state.params):
    out[f"{tag}/params{jax.tree_util.keystr(path)}"] = np.asarray(x)


def main() -> None:
  parser = argparse.ArgumentParser()
  sub = parser.add_subparsers(dest="command", required=True)
  eq = sub.add_parser("equivalence")
  eq.add_argument("out", type=Path)
  eq.add_argument("cases", nargs="+", help="model:method, model in mlp, cnv")
  eq.add_argument("--steps", type=int, default=3)
  eq.add_argument("--batch", type=int, default=16)
  args = parser.parse_args()
  equivalence(args)


if __name__ == "__main__":
  main()
