"""Optimizers and the memory-lean training state.

The paper assumes 16-bit latent weights and 16-bit Adam moments (METHOD.md,
"Memory accounting"). ``low_precision_state`` stores every per-parameter buffer of
an optax transformation in a 16-bit dtype and does the arithmetic in float32, so
that Adam's epsilon and small second moments do not underflow. Latent weights are
cast to the same dtype by ``initial_params``; optax.apply_updates adds the float32
update to them and rounds once, to nearest.

``factored_adam`` is Adam whose second moment, for the binary kernels, is
Adafactor's row x column factorization (Shazeer & Stern, 2018) instead of one value
per weight. The proposed method's weight gradient is sign(dW) / sqrt(N): every
entry has the same magnitude c, so the factored estimate is exactly Adam's c^2
and the update is Adam's, while the second moment costs O(rows + columns) float32
instead of N 16-bit values. It also keeps 16-bit state accurate: Adam's per-weight
v = (1 - b2) c^2 ~ 1e-9 underflows float16, whereas here the 16-bit moment holds
g / sqrt(v), of magnitude ~1.

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
import numpy as np
import ml_collections
import optax

from bnn.ops import common, native
from pi_backend.graph import factored_dims, factored_shapes

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


def _bias_corrected_decay(step, b2):
  """Decay of an EMA equal to Adam's bias-corrected v_hat = v_t / (1 - b2^t)."""
  t = jnp.asarray(step, jnp.float32)
  return b2 * (1 - b2**t) / (1 - b2**(t + 1))


def factored_adam(moment_dtype, b1: float = 0.9, b2: float = 0.999,
                  eps: float = 1e-30) -> optax.GradientTransformation:
  """Adam's direction m_hat / sqrt(v_hat), v_hat factored over the two largest axes
  (pi_backend/graph.py factored_dims, as optax picks them; Adafactor's row and column
  statistics of g^2 + eps, float32, with the decay that makes them Adam's
  bias-corrected v_hat), m the EMA of g / sqrt(v_hat) stored in moment_dtype and
  debiased as read back.

  The state is the one optax.chain(scale_by_factored_rms(decay_rate_fn=that decay,
  min_dim_size_to_factor=1), ema(b1, debias=True)) keeps, (FactoredState, EmaState),
  and so is every value (tests/bnn/test_optim.py holds it to that chain). The new
  moments are computed into memory (common.materialize), all kernels' by one
  conditional, and the weight updates read the stored (rounded) moments, as a device
  that only has the 16-bit buffers computes them. Computed once, XLA updates the
  moments in place and then the weights in place; otherwise XLA recomputes the new
  moment from the old one inside the weight update, and copies the old moment (or
  the weights) so that the first in-place update does not overwrite what the second
  reads. As one update with one conditional, the MLP's step is 2-3% faster than as
  that chain with a conditional per kernel (docs/step_time.md), and needs less
  memory (2.37 against 2.52 MiB). The row and column statistics are summed without
  a float32 copy of g^2 where that can be done (_square_sums)."""
  f32 = jnp.float32

  def init(params):
    def statistics(p):
      if p.ndim < 2:  # not factored: one v per element, as optax keeps it
        return jnp.zeros((1,), f32), jnp.zeros((1,), f32), jnp.zeros(p.shape, f32)
      rows, cols = factored_shapes(p.shape)
      return jnp.zeros(rows, f32), jnp.zeros(cols, f32), jnp.zeros((1,), f32)

    stats = jax.tree.map(statistics, params)
    field = lambda i: jax.tree.map(lambda _, s: s[i], params, stats)
    return (optax.FactoredState(count=jnp.zeros([], jnp.int32), v_row=field(0),
                                v_col=field(1), v=field(2)),
            optax.EmaState(count=jnp.zeros([], jnp.int32),
                           ema=jax.tree.map(lambda p: jnp.zeros(p.shape, moment_dtype), params)))

  def update(grads, state, params=None):
    del params
    stats, moments = state
    decay = _bias_corrected_decay(stats.count, b2)

    def scaled(g, v_row, v_col, v):
      """g / sqrt(v_hat) and the new statistics."""
      g32 = g.astype(f32)
      if g.ndim < 2:
        v = decay * v + (1 - decay) * (g32 * g32 + eps)
        return g32 * v**-0.5, v_row, v_col, v
      d1, d0 = factored_dims(g.shape)
      row_sums, col_sums = _square_sums(g, d0, d1, eps)
      v_row = decay * v_row + (1 - decay) * (row_sums / g.shape[d0])
      v_col = decay * v_col + (1 - decay) * (col_sums / g.shape[d1])
      row_factor = (v_row / jnp.mean(v_row, axis=d1 - (d1 > d0), keepdims=True))**-0.5
      u = g32 * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(v_col**-0.5, d1)
      return u, v_row, v_col, v

    out = jax.tree.map(scaled, grads, stats.v_row, stats.v_col, stats.v)
    field = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)
    ema = jax.tree.map(lambda u, m: (b1 * m.astype(f32) + (1 - b1) * u).astype(moment_dtype),
                       field(0), moments.ema)
    ema = common.materialize(ema)
    count = optax.safe_increment(moments.count)
    correction = 1 - b1**count.astype(f32)
    updates = jax.tree.map(lambda m: m.astype(f32) / correction, ema)
    return updates, (optax.FactoredState(count=optax.safe_increment(stats.count),
                                         v_row=field(1), v_col=field(2), v=field(3)),
                     optax.EmaState(count=count, ema=ema))

  return optax.GradientTransformation(init, update)


def _square_sums(g: jax.Array, d0: int, d1: int, eps: float) -> tuple[jax.Array, jax.Array]:
  """The sums of g^2 + eps (float32) over axis d0 and over axis d1.

  XLA's CPU reductions read their input from memory, so XLA forms g^2 + eps in
  float32, as large as the kernel (the MLP's first: 784 KiB, twice its float16
  gradient, and the step's peak). On the CPU a 2-D kernel's sums are one C++ pass
  over g instead (bnn/ops/native/square_sums.cc), which keeps no such copy."""
  def whole(g):
    g32 = g.astype(jnp.float32)
    sq = g32 * g32 + eps
    return jnp.sum(sq, axis=d0), jnp.sum(sq, axis=d1)

  if g.ndim != 2 or g.dtype not in (jnp.float32, jnp.float16, jnp.bfloat16) or \
      not native.available():
    return whole(g)

  def one_pass(g):
    out = (jax.ShapeDtypeStruct(g.shape[1:], jnp.float32),
           jax.ShapeDtypeStruct(g.shape[:1], jnp.float32))
    over_rows, over_cols = jax.ffi.ffi_call("bnn_square_sums", out)(g, eps=np.float32(eps))
    return (over_rows, over_cols) if d0 == 0 else (over_cols, over_rows)

  return jax.lax.platform_dependent(g, cpu=one_pass, default=whole)


def after_params(opt_state, params):
  """opt_state with each per-parameter buffer tied to its parameter's new value
  (bnn/ops/common.tie), so that XLA updates the weights first and the optimizer
  state after them.

  XLA fuses the new moment's computation into the weight update as well as into the
  moment's own update, so the weight update reads the old moment. With no order
  between the two in-place updates, XLA copied parameters and moments before the
  forward pass and kept the copies to the end (BinaryNet with float32 weights: 48 MiB
  for its first dense layer). A buffer belongs to the parameter whose path ends its
  own path and whose shape it has; the rest (counts, factored statistics) is left
  as it is, and so are factored_adam's stored moments: the weight update reads them
  from memory after they are written, which orders the two already, and a tie there
  would make XLA recompute the new weights from the old ones, which it then copies
  (BinaryNet, factored_adam, all 16-bit: 190.8 MiB tied, 174.7 untied)."""
  by_path = {tuple(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}

  def tie(path, leaf):
    for start in range(len(path)):
      param = by_path.get(tuple(path[start:]))
      if param is not None and getattr(leaf, "shape", None) == param.shape and param.ndim:
        return common.tie(leaf, param)
    return leaf

  is_stored_ema = lambda node: isinstance(node, optax.EmaState)
  return jax.tree_util.tree_map_with_path(
      lambda path, node: node if is_stored_ema(node) else tie(path, node), opt_state,
      is_leaf=is_stored_ema)


def is_binary_kernel(path) -> bool:
  """Whether a parameter path is the kernel of a binary layer. Binary layers are told
  apart by name: Flax's default ("BinaryConv_0") or an explicit "binary_..." one
  (tests/bnn/test_optim.py checks this against the layer classes of every model)."""
  names = [getattr(k, "key", str(k)) for k in path]
  return names[-1] == "kernel" and any(n.startswith(("Binary", "binary_")) for n in names[:-1])


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """config.optimizer -> an optax transformation. Adam is followed by the plateau
  schedule of METHOD.md; state_dtype sets where the per-parameter state lives."""
  o = config.optimizer
  plateau = optax.contrib.reduce_on_plateau(
      factor=o.plateau_factor, patience=o.plateau_patience, rtol=0.0,
      atol=o.plateau_min_delta, accumulation_size=steps_per_epoch)
  dtype = DTYPES[state_dtype(config)]
  name = optimizer_name(config)
  labels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: "binary" if is_binary_kernel(path) else "other", params)
  if name == "factored_adam":
    return optax.chain(
        # the rest (batch-norm shifts, real layers) is small: Adam in float32, where
        # (1 - b2) g^2 of a ~1e-4 gradient does not underflow to a zero v
        optax.multi_transform({"binary": factored_adam(dtype),
                               "other": low_precision_state(optax.scale_by_adam(), jnp.float32)},
                              labels),
        optax.scale_by_learning_rate(o.lr), plateau)
  adam = optax.chain(optax.adam(o.lr), plateau)
  if name == "bop":
    tx = optax.multi_transform({"binary": bop(o.bop_gamma, o.bop_threshold), "other": adam}, labels)
  else:
    tx = adam
  return low_precision_state(tx, dtype)


def initial_params(config: ml_collections.ConfigDict, params):
  """Parameters as the optimizer keeps them: in weight_dtype, and for Bop the binary
  kernels set to their signs."""
  if optimizer_name(config) == "bop":
    params = jax.tree_util.tree_map_with_path(
        lambda path, w: jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype) if is_binary_kernel(path) else w,
        params)
  return cast_params(params, DTYPES[weight_dtype(config)])


def optimizer_name(config: ml_collections.ConfigDict) -> str:
  """config.optimizer.name, where "default" is the method's (METHOD.md): Adam for the
  standard method, factored_adam for the proposed one, whose 16-bit state it keeps
  accurate (Adam's float16 second moment of a sign(dW)/sqrt(N) gradient underflows)."""
  name = config.optimizer.name
  if name != "default":
    return name
  return "factored_adam" if config.model.method == "proposed" else "adam"


def describe(config: ml_collections.ConfigDict) -> str:
  """One line saying what the optimizer settings resolve to."""
  return (f"optimizer: {optimizer_name(config)}, state {state_dtype(config)}, latent "
          f"weights {weight_dtype(config)}")


def state_dtype(config: ml_collections.ConfigDict) -> str:
  """config.optimizer.state_dtype, where "default" is float16 with factored_adam (the
  proposed method's default, METHOD.md's 16-bit moments) and float32 with Adam and Bop.

  With plain Adam every buffer in float16 costs 0.8 points on Fashion-MNIST: the
  batch-norm shifts' v underflows. factored_adam keeps those and its second moment in
  float32 and is within 0.3 points of float32 Adam (docs/accuracy.md).
  """
  dtype = config.optimizer.state_dtype
  if dtype != "default":
    return dtype
  return "float16" if optimizer_name(config) == "factored_adam" else "float32"


def weight_dtype(config: ml_collections.ConfigDict) -> str:
  """config.optimizer.weight_dtype (the latent weights), where "default" follows
  state_dtype."""
  dtype = config.optimizer.weight_dtype
  return state_dtype(config) if dtype == "default" else dtype


def plateau_scale(opt_state) -> jax.Array:
  """The learning-rate factor of the plateau schedule, found in the optimizer state."""
  found = [s.scale for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, optax.contrib.ReduceLROnPlateauState))
      if isinstance(s, optax.contrib.ReduceLROnPlateauState)]
  return found[0] if found else jnp.ones(())
