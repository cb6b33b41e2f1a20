"""Optimizers and the memory-lean training state.

The paper assumes 16-bit latent weights and 16-bit Adam moments (METHOD.md,
"Memory accounting"). ``low_precision_state`` stores every per-parameter buffer of
an optax transformation in a 16-bit dtype and does the arithmetic in float32, so
that Adam's epsilon and small second moments do not underflow. Latent weights are
cast to the same dtype by ``initial_params``; optax.apply_updates adds the float32
update to them and rounds once, to nearest.

Bop (Helwegen et al., 2019) keeps no latent weights at all: a binary weight w flips
when the exponential moving average m of its gradient is larger than a threshold
and agrees in sign with w:  m <- (1 - gamma) m + gamma g;  w <- -w if |m| > tau and
sign(m) = sign(w). It applies to the binary layers' kernels; everything else
(batch-norm shifts, the real layers of ResNetE/Bi-Real) uses Adam.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


def _cast_buffers(tree, dtype):
  """Floating arrays with at least one axis -> dtype; scalars (counts, schedule
  state) keep their dtype."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim else x, tree)


def low_precision_state(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformationExtraArgs:
  """``inner`` with its per-parameter state stored in ``dtype``, computed in float32."""
  inner = optax.with_extra_args_support(inner)
  f32 = lambda tree: _cast_buffers(tree, jnp.float32)

  def init(params):
    return _cast_buffers(inner.init(f32(params)), dtype)

  def update(updates, state, params=None, **extra):
    new_updates, new_state = inner.update(f32(updates), f32(state),
                                          None if params is None else f32(params), **extra)
    return new_updates, _cast_buffers(new_state, dtype)

  return optax.GradientTransformationExtraArgs(init, update)


def cast_params(params, dtype):
  return _cast_buffers(params, dtype)


class BopState(NamedTuple):
  momentum: Any


def bop(gamma: float = 1e-4, threshold: float = 1e-8) -> optax.GradientTransformation:
  """Bop on +-1 weights: the update is -2w where a weight flips, 0 elsewhere."""

  def init(params):
    return BopState(jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params):
    momentum = jax.tree.map(lambda m, g: (1 - gamma) * m + gamma * g, state.momentum, grads)
    flips = jax.tree.map(
        lambda m, w: jnp.where((jnp.abs(m) > threshold) & (jnp.sign(m) == jnp.sign(w)), -2 * w, 0),
        momentum, params)
    return flips, BopState(momentum)

  return optax.GradientTransformation(init, update)


def is_binary_kernel(path) -> bool:
  names = [getattr(k, "key", str(k)) for k in path]
  return names[-1] == "kernel" and any(n.startswith("Binary") for n in names[:-1])


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """config.optimizer -> an optax transformation. Adam is followed by the plateau
  schedule of METHOD.md; state_dtype sets where the per-parameter state lives."""
  o = config.optimizer
  plateau = optax.contrib.reduce_on_plateau(
      factor=o.plateau_factor, patience=o.plateau_patience, rtol=0.0,
      atol=o.plateau_min_delta, accumulation_size=steps_per_epoch)
  adam = optax.chain(optax.adam(o.lr), plateau)
  if o.name == "bop":
    labels = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "bop" if is_binary_kernel(path) else "adam", params)
    tx = optax.multi_transform({"bop": bop(o.bop_gamma, o.bop_threshold), "adam": adam}, labels)
  else:
    tx = adam
  return low_precision_state(tx, DTYPES[state_dtype(config)])


def initial_params(config: ml_collections.ConfigDict, params):
  """Parameters as the optimizer keeps them: in state_dtype, and for Bop the binary
  kernels set to their signs."""
  o = config.optimizer
  if o.name == "bop":
    params = jax.tree_util.tree_map_with_path(
        lambda path, w: jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype) if is_binary_kernel(path) else w,
        params)
  return cast_params(params, DTYPES[state_dtype(config)])


def state_dtype(config: ml_collections.ConfigDict) -> str:
  """config.optimizer.state_dtype, where "default" is float32 for both methods.

  METHOD.md assumes 16-bit latent weights and moments for the proposed method, but
  with round-to-nearest the float16 state costs 0.8 points on Fashion-MNIST
  (docs/accuracy.md): updates of ~1e-3 vanish next to weights near 1. It stays an
  explicit choice ("float16", "bfloat16") until the update is rounded stochastically.
  """
  dtype = config.optimizer.state_dtype
  return "float32" if dtype == "default" else dtype


def plateau_scale(opt_state) -> jax.Array:
  """The learning-rate factor of the plateau schedule, found in the optimizer state."""
  found = [s.scale for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, optax.contrib.ReduceLROnPlateauState))
      if isinstance(s, optax.contrib.ReduceLROnPlateauState)]
  return found[0] if found else jnp.ones(())
