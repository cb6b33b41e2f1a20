"""The training state and one jitted training step; evaluation.

The loop around them (data, checkpoints, metrics) lives in bnn/experiment.py.
Given a bnn.distributed.Plan, the steps are compiled for a device mesh: the batch
split over the "data" axis, the state replicated or sharded as the plan says.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bnn import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array      # raw uint32 key, for stochastic gradient quantizers ("gradient" stream)
  monitor: jax.Array  # latest validation error, the value the plateau schedule watches


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       example_input: jax.Array, seed: int,
                       prepare_params: Callable = lambda params: params) -> TrainState:
  """prepare_params: how the optimizer keeps the parameters (e.g. in float16)."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init({"params": init_key, "gradient": init_key}, example_input, train=False)
  params = prepare_params(variables["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=rng, monitor=jnp.ones((), jnp.float32))


def loss_fn(model: nn.Module, params, batch_stats, images, labels, rng):
  """Mean cross-entropy in training mode; returns (loss, (logits, new batch_stats)).
  images: uint8 pixels (the model scales them: bnn.ops.to_float) or floats in [-1, 1]."""
  (logits, loss), updates = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, labels, train=True,
      mutable=["batch_stats"], rngs={"gradient": rng})
  return loss, (logits, updates["batch_stats"])


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    plan=None) -> Callable:
  """step(state, images, labels) -> (state, metrics); jitted, the state donated.

  plan: a bnn.distributed.Plan (None: one device, the arrays where they are). With a
  sharded state XLA gathers each parameter where the forward and backward pass use
  it, and the gradients are reduce-scattered to the state's shards, where the
  update happens.
  """
  tx = optax.with_extra_args_support(tx)  # the plateau schedule reads `value`

  def step(state: TrainState, images, labels):
    rng, step_rng = jax.random.split(state.rng)
    grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
    (loss, (logits, batch_stats)), grads = grad_fn(model, state.params, state.batch_stats,
                                                  images, labels, step_rng)
    if plan is not None and plan.sharded:
      grads = plan.like_state(grads, "params")
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=state.monitor)
    params = optax.apply_updates(state.params, updates)
    opt_state = optim.after_params(opt_state, params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, rng=rng), metrics

  if plan is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, donate_argnums=0, in_shardings=(plan.state, plan.batch, plan.batch),
                 out_shardings=(plan.state, plan.replicated))


def make_eval_step(model: nn.Module, plan=None) -> Callable:
  """eval(state, images, labels) -> dict of summed loss, correct count and count.
  Rows labelled -1 (padding of a short last batch) are not counted."""

  def evaluate(state: TrainState, images, labels):
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         images, train=False)
    valid = labels >= 0
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return {"loss_sum": jnp.sum(jnp.where(valid, loss, 0.0)),
            "correct": jnp.sum(valid & (jnp.argmax(logits, -1) == labels)),
            "count": jnp.sum(valid)}

  if plan is None:
    return jax.jit(evaluate)
  return jax.jit(evaluate, in_shardings=(plan.state, plan.batch, plan.batch),
                 out_shardings=plan.replicated)
