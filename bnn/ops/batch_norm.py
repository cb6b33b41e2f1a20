"""Batch normalisation without gamma, in training and evaluation mode.

Both methods learn only a shift beta (no gamma), so a model has the same
parameter tree whichever method it is trained with. Statistics are taken over
every axis but the last: N = batch for dense inputs (B, C), batch*H*W for NHWC.

standard: ordinary L2 batch norm by autodiff,
  mean = mean(x); scale = sqrt(var + eps), var = mean((x - mean)^2) (biased);
  y = (x - mean) / scale + beta.

proposed: L1 batch norm (METHOD.md) as a custom_vjp,
  mean = mean(x); psi = mean(|x - mean|); scale = psi + eps;
  x_hat = (x - mean) / scale; y = x_hat + beta.
  eps is OUR addition (the reference code has none): it keeps a constant channel
  (psi = 0) from dividing by zero. Kept for the backward: only the packed bits of
  sign(x_hat) (1 bit per element) and, per channel, scale and m = mean(|x_hat|)
  rounded to float16. Backward, with s = sign(x_hat) = +-1 and means over N:
    dy' = grad_quantizer(dy)              (default float16)
    g   = dy' / scale
    dx  = g - mean(g) - s * mean(g * s) * m
    dbeta = sum(dy')
  The backward uses the float16-rounded scale and m, since that is what is kept;
  the forward uses them in full precision. float16 holds scales up to 65504
  (larger ones become inf and give a zero dx) and down to ~6e-8.

Both methods also return the per-channel batch statistics (mean, scale) so that
the layer can update its running averages. They are statistics, not outputs to
differentiate: their cotangents are ignored (jax.lax.stop_gradient semantics).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bnn.ops import common
from quantizers import GradientQuantizer, pack, unpack_bits


def batch_norm(x: jax.Array, beta: jax.Array, *, method: str, grad_quantizer=None,
               eps: float = 1e-5, key: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm. x: (..., C), beta: (C,) -> (y, mean, scale).

  y has x's shape and dtype; mean and scale have shape (C,) and carry no gradient.
  grad_quantizer: applied to dy on entry to the backward (proposed only; default
  float16). key: PRNG key, needed by stochastic gradient quantizers.
  """
  _check_shapes("batch_norm", x, beta)
  eps = float(eps)
  if not eps >= 0:
    raise ValueError(f"batch_norm: eps={eps!r}; expected a number >= 0")
  gq = common.gradient_quantizer(grad_quantizer, method, "float16", "grad_quantizer")
  beta = beta.astype(x.dtype)
  if method == "standard":
    return _standard(x, beta, eps)
  return _proposed(gq, eps)(x, beta, key)


def batch_norm_eval(x: jax.Array, beta: jax.Array, mean: jax.Array,
                    scale: jax.Array) -> jax.Array:
  """Evaluation mode (both methods): y = (x - mean) / scale + beta, with the running
  statistics that the layer supplies. All of beta, mean, scale have shape (C,)."""
  _check_shapes("batch_norm_eval", x, beta, mean=mean, scale=scale)
  return ((x - mean.astype(x.dtype)) / scale.astype(x.dtype) + beta.astype(x.dtype))


def _check_shapes(what: str, x, beta, **stats) -> None:
  if x.ndim < 2:
    raise ValueError(f"{what}: x has shape {x.shape}; expected at least 2 axes, "
                     f"(batch, ..., channels), with statistics over all but the last")
  c = x.shape[-1]
  for name, v in {"beta": beta, **stats}.items():
    if jnp.shape(v) != (c,):
      raise ValueError(f"{what}: {name} has shape {jnp.shape(v)}; expected ({c},) to "
                       f"match the last (channel) axis of x, whose shape is {x.shape}")


def _axes(x) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1))


def _standard(x, beta, eps):
  axes = _axes(x)
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  scale = jnp.sqrt(var + eps)
  y = (x - mean) / scale + beta
  return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(scale)


def _l1_statistics(x, eps):
  axes = _axes(x)
  mean = jnp.mean(x, axis=axes)
  scale = jnp.mean(jnp.abs(x - mean), axis=axes) + jnp.asarray(eps, x.dtype)
  x_hat = (x - mean) / scale
  return x_hat, mean, scale


@functools.lru_cache(maxsize=None)
def _proposed(gq: GradientQuantizer, eps: float):
  @jax.custom_vjp
  def bn(x, beta, key):
    x_hat, mean, scale = _l1_statistics(x, eps)
    return x_hat + beta, mean, scale

  def fwd(x, beta, key):
    common.check_key(gq, key, "grad_quantizer")
    x_hat, mean, scale = _l1_statistics(x, eps)
    # mean |x_hat| = mean |x - mean| / scale, from the statistics: a reduction over
    # x_hat would make XLA keep x_hat, a float tensor, beside the output
    m = (scale - jnp.asarray(eps, x.dtype)) / scale
    kept = (pack(x_hat), scale.astype(jnp.float16), m.astype(jnp.float16), key)
    return (x_hat + beta, mean, scale), kept

  def bwd(res, cotangents):
    bits, scale16, m16, key = res
    dy = cotangents[0]  # the cotangents of mean and scale are ignored
    axes = _axes(dy)
    dt = dy.dtype
    positive = unpack_bits(common.tie(bits, dy), dy.shape[-1])
    dy = gq(dy, key)
    # g = dy / scale; dx = g - mean(g) - s * mean(g * s) * m, with the per-channel
    # 1 / scale taken out of the means: no float tensor but dy and dx is formed.
    # dy * s as a select of +-dy, not a product with s: XLA then fuses it into the
    # reduction, where the product made it materialise s, a float tensor of x's size
    s = jnp.where(positive, jnp.ones((), dt), -jnp.ones((), dt))
    dx = (dy - jnp.mean(dy, axis=axes)
          - s * (jnp.mean(jnp.where(positive, dy, -dy), axis=axes) * m16.astype(dt))
          ) * (1 / scale16.astype(dt))
    return dx, jnp.sum(dy, axis=axes), None

  bn.defvjp(fwd, bwd)
  return bn
