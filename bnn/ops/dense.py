"""Binary dense layer y = x . sign(W), without bias.

standard: autodiff of the float formulation (x kept in float32 for the backward).
proposed: a custom_vjp that keeps x bit-packed (or, for the first layer, nothing
new: x is the input batch) and recomputes sign(W) from the latent W:
  dy' = grad_quantizer(dy)
  dx  = dy' . sign(W)^T
  dW  = proposed_weight_grad(x^T . dy')        (x = +-1 except in the first layer)

Weight quantizers (``weight_quantizer``; shared with binary_conv):
  "ste_sign"              Wb = sign(W) (the default; the formulas above).
  "magnitude_aware_sign"  Wb = alpha * sign(W), alpha = mean(|W|) per output channel
                          (over every axis but the last), a constant in the gradient
                          (Bi-Real Net). standard: autodiff of the quantizer, so
                          dW = alpha * 1{|W| <= clip} * x^T . dy. proposed:
                          dx = dy' . Wb^T; dW = proposed_weight_grad(alpha * x^T . dy').
                          With the default sign_scaled weight-gradient quantizer alpha
                          (> 0) does not change the sign, but it is applied exactly so
                          that other weight-gradient quantizers see the true gradient.
The proposed method zeroes dW where |W| > 1 (METHOD.md), so there the quantizer's
clip must be 1.0; standard takes any clip (it differentiates the quantizer itself).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import quantizers
from bnn.ops import common
from bnn.ops.pixel_dense import pixel_dense
from quantizers import ForwardQuantizer, GradientQuantizer, pack, unpack

WEIGHT_QUANTIZERS = ("ste_sign", "magnitude_aware_sign")


def binary_dense(x: jax.Array, w: jax.Array, *, method: str, first_layer: bool = False,
                 grad_quantizer=None, weight_grad_quantizer=None,
                 weight_quantizer="ste_sign", key: jax.Array | None = None) -> jax.Array:
  """x: (..., n_in), w: (n_in, n_out) latent weights -> (..., n_out).

  first_layer: x is real (the input batch), not +-1; it is then used as is. A
  first layer also takes uint8 pixels (x = to_float(pixels)): with method="proposed"
  and the default quantizers they are read as they are (bnn.ops.pixel_dense).
  grad_quantizer: applied to dy on entry to the backward (proposed only).
  weight_grad_quantizer: maps the raw weight gradient (proposed only; default
  sign_scaled). weight_quantizer: "ste_sign" (default) or "magnitude_aware_sign"
  (module docstring). key: PRNG key, needed by stochastic gradient quantizers.
  """
  if w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"binary_dense: x of shape {x.shape} and w of shape {w.shape} do not "
                     f"match; expected x (..., n_in) and w (n_in, n_out)")
  gq = common.gradient_quantizer(grad_quantizer, method, "identity", "grad_quantizer")
  wq = common.gradient_quantizer(weight_grad_quantizer, method, "sign_scaled",
                                 "weight_grad_quantizer")
  fq = weight_quantizer_for(weight_quantizer, method, "binary_dense")
  if x.dtype == jnp.uint8:
    if not first_layer:
      raise ValueError(f"binary_dense: uint8 x of shape {x.shape} with first_layer=False; "
                       f"only a first layer takes pixels (a later layer's x is +-1 floats)")
    if method == "proposed" and fq.name == "ste_sign" and wq.name == "sign_scaled":
      common.check_not_empty(x, "binary_dense")
      return pixel_dense(x, w, gq, key)
    x = common.to_float(x)
  if method == "standard":
    return x @ fq(w).astype(x.dtype)
  common.check_not_empty(x, "binary_dense")
  return _proposed(bool(first_layer), gq, wq, fq)(x, w, key)


def weight_quantizer_for(spec, method: str, op: str) -> ForwardQuantizer:
  """Resolves and checks a ``weight_quantizer`` argument (binary_dense, binary_conv)."""
  q = quantizers.get(spec, "forward")
  if q.name not in WEIGHT_QUANTIZERS:
    raise ValueError(f"{op}: weight_quantizer={q.spec()}; expected one of "
                     f"{list(WEIGHT_QUANTIZERS)}")
  if method == "proposed" and q.clip != 1.0:
    raise ValueError(f"{op}: weight_quantizer={q.spec()} with method='proposed': the "
                     f"proposed weight gradient is zeroed where |W| > 1, so the clip must "
                     f"be 1.0")
  return q


def weight_scale(q: ForwardQuantizer, w: jax.Array) -> jax.Array | None:
  """alpha of Wb = alpha * sign(W): None for ste_sign (alpha = 1), else mean(|W|) per
  output channel (shape (c_out,)), exactly as magnitude_aware_sign computes it."""
  if q.name == "ste_sign":
    return None
  return jnp.mean(jnp.abs(w), axis=tuple(range(w.ndim - 1)))


def binary_weights(q: ForwardQuantizer, w: jax.Array, dtype) -> jax.Array:
  """The forward value of the weight quantizer (+-1 or +-alpha), in dtype."""
  return q(w).astype(dtype)


def scaled_weight_grad(dw_raw: jax.Array, q: ForwardQuantizer, w: jax.Array) -> jax.Array:
  """alpha * dW_raw (alpha broadcast along the last, output-channel, axis)."""
  alpha = weight_scale(q, w)
  return dw_raw if alpha is None else dw_raw * alpha.astype(dw_raw.dtype)


@functools.lru_cache(maxsize=None)
def _proposed(first_layer: bool, gq: GradientQuantizer, wq: GradientQuantizer,
              fq: ForwardQuantizer):
  @jax.custom_vjp
  def dense(x, w, key):
    return x @ binary_weights(fq, common.tie(w, x), x.dtype)  # formed when x is

  def fwd(x, w, key):
    common.check_key(gq, key, "grad_quantizer")
    kept = x if first_layer else pack(x)
    return dense(x, w, key), (kept, w, key)

  def bwd(res, dy):
    kept, w, key = res
    kept = common.tie(kept, dy)  # unpacked (first layer: recomputed from the batch) here
    x = kept if first_layer else unpack(kept, w.shape[0], dy.dtype)
    dy = gq(dy, key)
    dx = dy @ binary_weights(fq, common.tie(w, dy), dy.dtype).T  # not the forward's, kept alive
    dw_raw = x.reshape(-1, w.shape[0]).T @ dy.reshape(-1, w.shape[1])
    dw_raw = scaled_weight_grad(dw_raw, fq, w)
    return dx.astype(x.dtype), common.proposed_weight_grad(
        dw_raw, w, wq, None if first_layer else dx), None

  dense.defvjp(fwd, bwd)
  return dense
