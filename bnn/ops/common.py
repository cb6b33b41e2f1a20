"""What every binary op shares: the method switch, weight binarisation, the proposed
weight gradient, and resolving quantizer arguments into static configuration."""
from __future__ import annotations

import jax
import jax.numpy as jnp

import quantizers
from quantizers import GradientQuantizer, sign

METHODS = ("standard", "proposed")
_IDENTITY = quantizers.get("identity")
_SIGN_SCALED = quantizers.get("sign_scaled")
_STE_SIGN = quantizers.get("ste_sign")


def check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"method={method!r}; expected one of {METHODS}")
  return method


def gradient_quantizer(spec, method: str, default_proposed: str, what: str) -> GradientQuantizer:
  """Resolves a gradient-quantizer argument of an op for the given method.

  None means the method's default: identity for "standard", ``default_proposed``
  for "proposed". The standard method keeps float32 gradients, so any other
  quantizer there is an error rather than silently ignored.
  """
  check_method(method)
  if spec is None:
    return _IDENTITY if method == "standard" else quantizers.get(default_proposed, "gradient")
  q = quantizers.get(spec, "gradient")
  if method == "standard" and q != _IDENTITY:
    raise ValueError(f"{what}={q.spec()} with method='standard': the standard method keeps "
                     f"float32 gradients; gradient quantizers apply to method='proposed'")
  return q


def check_not_empty(x: jax.Array, op: str) -> None:
  """The proposed method's ops pack bits and order work on the data; an empty batch
  has neither, and would fail deep inside XLA."""
  if x.size == 0:
    raise ValueError(f"{op}: x has shape {x.shape} with no elements; method='proposed' "
                     f"expected a non-empty batch")


def check_key(q: GradientQuantizer, key, what: str) -> None:
  """Called by the ops' forward rules for differentiation: only a gradient draws from
  the key, so an evaluation (no gradient taken) needs none."""
  if q.stochastic and key is None:
    raise ValueError(f"{what}={q.spec()} rounds stochastically and needs a PRNG `key` "
                     f"to take gradients")


def tie(x: jax.Array, *deps: jax.Array) -> jax.Array:
  """x, made to depend on deps: XLA cannot compute anything from the result before
  deps exist. A backward pass uses this to order its work so that fewer float
  temporaries are alive at once:
  - tie(bits, dy): unpacking bits needs only forward values, so XLA may schedule
    it (and the float tensors made from it) in the forward pass and keep them alive
    until the backward pass; the bit-packing would then save nothing;
  - tie(w, x): sign(W) (float) is formed when the layer's input is ready, not at
    the start of the step, alive through every layer before it;
  - tie(w, dy): sign(W) is recomputed in the backward pass, not the forward's
    float copy kept alive in between (XLA would merge the two);
  - tie(w, dw): dx = conv_transpose(dy, w) starts after dW is done, so the weight
    gradient's temporaries (transposed copies of x and dy) are gone by then;
  - tie(x_slice, dw): a conv's weight gradient over the next slice of the batch
    starts after the slices before it are summed, so that one slice's transposed
    copies exist at a time;
  - tie(dw, dx): the weight gradient, and so the weight update, comes after the
    backward pass's last read of W (proposed_weight_grad).
  lax.optimization_barrier does not keep this order on the CPU; a data dependency
  does. x is changed only where one of a dep's first 16 elements is NaN (integers:
  XOR 1, floats: NaN), when the gradient is NaN anyway. The maximum of 16 is a
  reduction, which XLA computes once, as its own small fusion; a single element of a
  dep that is itself fused (a masked dy) was recomputed for every element of the
  consumer's loop, which made the MLP's batch-norm backward loops 1.7x as slow.
  """
  poison = jnp.zeros((), bool)
  for d in deps:
    if not jnp.issubdtype(d.dtype, jnp.floating):
      raise ValueError(f"tie: a dependency of dtype {d.dtype}; expected floating point: "
                       f"isnan of an integer is constant, so XLA would drop the order")
    flat = d.reshape(-1)
    poison = poison | jnp.isnan(jnp.max(flat[:min(flat.shape[0], 16)]))
  if jnp.issubdtype(x.dtype, jnp.integer):
    return x ^ poison.astype(x.dtype)
  return jnp.where(poison, jnp.asarray(jnp.nan, x.dtype), x)


# A pixel p's real value, float32(p) * PIXEL_SCALE + PIXEL_OFFSET, in [-1, 1].
PIXEL_SCALE, PIXEL_OFFSET = 1 / 127.5, -1.0


def to_float(images: jax.Array) -> jax.Array:
  """uint8 pixels -> [-1, 1] (p / 127.5 - 1, as the reference code scales inputs);
  floats pass through (already scaled). Models take either; the MLP's first layer
  reads the uint8 pixels themselves (bnn.ops.pixel_dense)."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) * PIXEL_SCALE + PIXEL_OFFSET
  return images


def binarize_weights_ste(w: jax.Array) -> jax.Array:
  """sign(clip(W, -1, 1)) with the clip STE: the standard method's weights."""
  return _STE_SIGN(w)


def proposed_weight_grad(dw_raw: jax.Array, w: jax.Array, q: GradientQuantizer,
                         after: jax.Array | None = None) -> jax.Array:
  """METHOD.md: dW = q(dW_raw) (sign(dW_raw)/sqrt(N) by default), zeroed where
  |W| > 1 (the clip STE), rounded to float16.

  The result is computed once, into memory (``materialize``), after ``after`` (the
  layer's dx; None for a first layer, whose dx is not used). Both are about the
  optimizer that reads it: the weight update and the moment update then read the
  float16 gradient, not dW_raw and the old weights, and the weight update waits for
  the backward pass's last read of W, so XLA updates W in place instead of copying
  it at the start of the step (MLP, all 16-bit: 3.9 -> 3.0 MiB with factored_adam's
  materialized moment; BinaryNet 187.8 -> 174.7 MiB)."""
  dw = jnp.where(jnp.abs(w) <= 1, q(dw_raw), jnp.zeros((), dw_raw.dtype)).astype(jnp.float16)
  if after is not None:
    dw = tie(dw, after)
  return materialize(dw).astype(w.dtype)


def materialize(x):
  """x (an array or a tree of arrays), computed once into buffers of its own, which
  its consumers read.

  XLA fuses a cheap elementwise producer into every consumer and recomputes it there
  from the producer's inputs, which then stay alive until the last consumer; an
  in-place update of one of those inputs has to wait for it, or XLA copies the
  input first. A conditional is a boundary that fusion does not cross: its operands
  are computed into memory. The predicate depends on the data, so XLA cannot remove
  it; both branches return x (the NaN branch adds 0, which keeps NaN NaN, only so
  that the branches differ: XLA drops a conditional whose branches are the same).
  A tree goes through one conditional: each is a few XLA ops (the predicate, the
  conditional, a copy out of its result), which on a small model's step cost time.
  lax.optimization_barrier would say this directly, but the CPU compiler removes it
  before fusion. For integers the predicate is a constant and XLA removes the
  conditional; what this is for (gradients, moments) is floating point."""
  leaves, treedef = jax.tree.flatten(x)
  first = next((leaf for leaf in leaves if leaf.size), None)
  if first is None:
    return x
  leaves = jax.lax.cond(jnp.isnan(first.reshape(-1)[0]), lambda ls: [v + 0 for v in ls],
                        lambda ls: list(ls), leaves)
  return jax.tree.unflatten(treedef, leaves)


__all__ = ["METHODS", "binarize_weights_ste", "check_key", "check_method", "check_not_empty",
           "gradient_quantizer", "materialize", "proposed_weight_grad", "sign", "to_float"]
