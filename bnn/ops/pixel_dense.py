"""The proposed method's first binary dense layer on uint8 pixels (x = to_float(p)):

  y  = x . sign(W)
  dW = |W| <= 1 ? sign(x^T . dy') / sqrt(N) : 0, in float16    (sign_scaled, METHOD.md)
  (no dx: the pixels are data)

with dy' = grad_quantizer(dy). The values are those of binary_dense(to_float(p), W,
first_layer=True) with the default quantizers (ste_sign weights, sign_scaled weight
gradient), summed in another order. What differs is memory: on the CPU both
products run in C++ (bnn/ops/native/first_dense.cc) from the uint8 batch and the
latent W as they are, and the backward writes the float16 gradient directly. XLA's
dot holds x and sign(W) in float32 and writes dW in float32 (Fashion-MNIST MLP:
306 + 784 + 784 KiB). Elsewhere (a GPU, or no C++ compiler) the same formulas run
as XLA ops.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bnn.ops import common, native
import quantizers
from quantizers import GradientQuantizer

_SIGN_SCALED = quantizers.get("sign_scaled", "gradient")


def pixel_dense(pixels: jax.Array, w: jax.Array, gq: GradientQuantizer,
                key: jax.Array | None) -> jax.Array:
  """pixels: (..., n_in) uint8, w: (n_in, n_out) -> (..., n_out) float32."""
  lead = pixels.shape[:-1]
  y = _op(gq, native.available())(pixels.reshape(-1, w.shape[0]), w, key)
  return y.reshape(*lead, w.shape[1])


def _lut() -> jax.Array:
  """The real value of each pixel value, as to_float computes it."""
  return common.to_float(jnp.arange(256, dtype=jnp.uint8))


def _scale_bits(w: jax.Array) -> int:
  """sign_scaled's 1/sqrt(N) as the float16 it becomes, as its bits."""
  return int(np.float16(np.float32(1.0 / (w.size ** 0.5))).view(np.uint16))


def _forward_xla(pixels, w):
  return common.to_float(pixels) @ common.sign(w).astype(jnp.float32)


def _weight_grad_xla(pixels, dy, w):
  """What binary_dense computes from the float input (float16, as the handler's)."""
  raw = common.to_float(pixels).T @ dy
  return common.proposed_weight_grad(raw, w, _SIGN_SCALED).astype(jnp.float16)


def _forward_native(pixels, w):
  out = jax.ShapeDtypeStruct((pixels.shape[0], w.shape[1]), jnp.float32)
  return jax.ffi.ffi_call("bnn_first_dense_forward", out)(
      pixels, w, x_scale=np.float32(common.PIXEL_SCALE), x_offset=np.float32(common.PIXEL_OFFSET))


def _weight_grad_native(pixels, dy, w):
  out = jax.ShapeDtypeStruct(w.shape, jnp.float16)
  return jax.ffi.ffi_call("bnn_first_dense_weight_grad", out)(
      pixels, _lut(), dy, w, scale_bits=np.int32(_scale_bits(w)))


def forward(pixels, w, use_native: bool):
  if not use_native:
    return _forward_xla(pixels, w)
  return jax.lax.platform_dependent(pixels, w, cpu=_forward_native, default=_forward_xla)


def weight_grad(pixels, dy, w, use_native: bool):
  if not use_native:
    return _weight_grad_xla(pixels, dy, w)
  return jax.lax.platform_dependent(pixels, dy, w, cpu=_weight_grad_native,
                                    default=_weight_grad_xla)


@functools.lru_cache(maxsize=None)
def _op(gq: GradientQuantizer, use_native: bool):
  @jax.custom_vjp
  def dense(pixels, w, key):
    return forward(pixels, w.astype(_weight_dtype(w)), use_native)

  def fwd(pixels, w, key):
    common.check_key(gq, key, "grad_quantizer")
    return dense(pixels, w, key), (pixels, w, key)

  def bwd(res, dy):
    pixels, w, key = res
    dy = gq(dy, key).astype(jnp.float32)
    dw = weight_grad(pixels, dy, w.astype(_weight_dtype(w)), use_native)
    return None, dw.astype(w.dtype), None

  dense.defvjp(fwd, bwd)
  return dense


def _weight_dtype(w):
  """The handlers read float16 and float32 weights as they are; others as float32."""
  return w.dtype if w.dtype in (jnp.float16, jnp.float32) else jnp.float32
