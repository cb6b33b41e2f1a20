"""Binary dense layer y = x . sign(W), without bias.

standard: autodiff of the float formulation (x kept in float32 for the backward).
proposed: a custom_vjp that keeps x bit-packed (or, for the first layer, nothing
new: x is the input batch) and recomputes sign(W) from the latent W:
  dy' = grad_quantizer(dy)
  dx  = dy' . sign(W)^T
  dW  = proposed_weight_grad(x^T . dy')        (x = +-1 except in the first layer)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bnn.ops import common
from quantizers import GradientQuantizer, pack, sign, unpack


def binary_dense(x: jax.Array, w: jax.Array, *, method: str, first_layer: bool = False,
                 grad_quantizer=None, weight_grad_quantizer=None,
                 key: jax.Array | None = None) -> jax.Array:
  """x: (..., n_in), w: (n_in, n_out) latent weights -> (..., n_out).

  first_layer: x is real (the input batch), not +-1; it is then used as is.
  grad_quantizer: applied to dy on entry to the backward (proposed only).
  weight_grad_quantizer: maps the raw weight gradient (proposed only; default
  sign_scaled). key: PRNG key, needed by stochastic gradient quantizers.
  """
  if w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"binary_dense: x of shape {x.shape} and w of shape {w.shape} do not "
                     f"match; expected x (..., n_in) and w (n_in, n_out)")
  gq = common.gradient_quantizer(grad_quantizer, method, "identity", "grad_quantizer")
  wq = common.gradient_quantizer(weight_grad_quantizer, method, "sign_scaled",
                                 "weight_grad_quantizer")
  if method == "standard":
    return x @ common.binarize_weights_ste(w).astype(x.dtype)
  common.check_key(gq, key, "grad_quantizer")
  return _proposed(bool(first_layer), gq, wq)(x, w, key)


@functools.lru_cache(maxsize=None)
def _proposed(first_layer: bool, gq: GradientQuantizer, wq: GradientQuantizer):
  @jax.custom_vjp
  def dense(x, w, key):
    return x @ sign(w).astype(x.dtype)

  def fwd(x, w, key):
    kept = x if first_layer else pack(x)
    return dense(x, w, key), (kept, w, key)

  def bwd(res, dy):
    kept, w, key = res
    x = kept if first_layer else unpack(kept, w.shape[0], dy.dtype)
    dy = gq(dy, key)
    dx = dy @ sign(w).astype(dy.dtype).T
    dw_raw = x.reshape(-1, w.shape[0]).T @ dy.reshape(-1, w.shape[1])
    return dx.astype(x.dtype), common.proposed_weight_grad(dw_raw, w, wq), None

  dense.defvjp(fwd, bwd)
  return dense
