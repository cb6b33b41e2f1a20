"""Binary 2-D convolution y = conv(x, sign(W)), x NHWC, W HWIO -> y NHWC, without bias.

standard: autodiff of the float formulation (x kept in float32 for the backward).
proposed: a custom_vjp that keeps x bit-packed along the channels (or, for the first
layer, nothing new: x is the input batch) and recomputes sign(W) from the latent W:
  dy' = grad_quantizer(dy)
  dx  = conv_transpose(dy', sign(W))                  the transpose of x -> conv(x, sign(W))
  dW  = proposed_weight_grad(correlate(x, dy'))       the transpose of W -> conv(x, W)
(x = +-1 except in the first layer). ``weight_quantizer`` "magnitude_aware_sign"
uses Wb = alpha * sign(W), alpha = mean(|W|) over (kh, kw, c_in) per output channel,
as in binary_dense (see bnn/ops/dense.py): dx = conv_transpose(dy', Wb) and
dW = proposed_weight_grad(alpha * correlate(x, dy')). Both transposes are taken
exactly, with jax.linear_transpose of the same linear conv as the forward, so every
kernel size, stride and padding is handled by one code path.

Padding is zero padding of the layer's input: padded positions contribute 0 to y
(and to dW), they are not sign(0) = +1. SAME follows XLA/TensorFlow: total padding
max((ceil(n / s) - 1) * s + k - n, 0) per spatial axis, the smaller half before.
"""
from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

from bnn.ops import common
from bnn.ops.dense import binary_weights, scaled_weight_grad, weight_quantizer_for
from quantizers import ForwardQuantizer, GradientQuantizer, pack, unpack

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]


def binary_conv(x: jax.Array, w: jax.Array, *, method: str, strides=1, padding="SAME",
                first_layer: bool = False, grad_quantizer=None, weight_grad_quantizer=None,
                weight_quantizer="ste_sign", key: jax.Array | None = None) -> jax.Array:
  """x: (batch, height, width, c_in), w: (kh, kw, c_in, c_out) latent weights
  -> (batch, out_height, out_width, c_out).

  strides: an int or a pair (vertical, horizontal) of positive ints.
  padding: "SAME", "VALID", a non-negative int (all four sides), or
  ((top, bottom), (left, right)).
  first_layer: x is real (the input batch), not +-1; it is then used as is.
  grad_quantizer: applied to dy on entry to the backward (proposed only).
  weight_grad_quantizer: maps the raw weight gradient (proposed only; default
  sign_scaled, N = kh * kw * c_in * c_out). weight_quantizer: "ste_sign" (default) or
  "magnitude_aware_sign". key: PRNG key, needed by stochastic gradient quantizers.
  """
  common.check_method(method)
  strides = _strides(strides)
  pads = _check_shapes(x.shape, w.shape, strides, padding)
  gq = common.gradient_quantizer(grad_quantizer, method, "identity", "grad_quantizer")
  wq = common.gradient_quantizer(weight_grad_quantizer, method, "sign_scaled",
                                 "weight_grad_quantizer")
  fq = weight_quantizer_for(weight_quantizer, method, "binary_conv")
  if method == "standard":
    return _conv(x, fq(w).astype(x.dtype), strides, pads)
  common.check_not_empty(x, "binary_conv")
  return _proposed(bool(first_layer), strides, pads, gq, wq, fq)(x, w, key)


def _conv(x, w, strides: tuple[int, int], pads: Pads):
  return jax.lax.conv_general_dilated(x, w, strides, pads,
                                      dimension_numbers=_DIMENSION_NUMBERS)


@functools.lru_cache(maxsize=None)
def _proposed(first_layer: bool, strides: tuple[int, int], pads: Pads,
              gq: GradientQuantizer, wq: GradientQuantizer, fq: ForwardQuantizer):
  conv = functools.partial(_conv, strides=strides, pads=pads)

  @jax.custom_vjp
  def binary(x, w, key):
    return conv(x, binary_weights(fq, common.tie(w, x), x.dtype))  # formed when x is

  def fwd(x, w, key):
    common.check_key(gq, key, "grad_quantizer")
    kept = x if first_layer else pack(x)
    return binary(x, w, key), (kept, w, key)

  def bwd(res, dy):
    kept, w, key = res
    # tied for the first layer too: XLA would otherwise make the real input's
    # transposed copy for dW early in the forward pass and keep it to the end
    x = common.tie(kept, dy)
    if not first_layer:
      x = unpack(x, w.shape[2], dy.dtype)
    dy = gq(dy, key)
    wb = binary_weights(fq, common.tie(w, dy), dy.dtype)  # not the forward's, kept alive
    dw_raw = _correlate_in_slices(conv, x, dy, wb)
    # dx after dW: the correlation's transposed copies of x and dy are gone by then
    wb = common.tie(wb, dw_raw)
    dx, = jax.linear_transpose(lambda a: conv(a, wb), x)(dy)
    dw_raw = scaled_weight_grad(dw_raw, fq, w)
    return dx.astype(x.dtype), common.proposed_weight_grad(
        dw_raw, w, wq, None if first_layer else dx), None

  binary.defvjp(fwd, bwd)
  return binary


# The proposed weight gradient is summed over this many slices of the batch, one after
# another. XLA's correlation makes transposed float copies of x and dy, which were the
# peak of the proposed step (CNV, BinaryNet); per slice they are half as large. More
# slices save little: dy itself, alive through the correlation, is then the peak.
WEIGHT_GRAD_SLICES = 2


def _correlate_in_slices(conv, x, dy, wb):
  """dW_raw = correlate(x, dy), the transpose of W -> conv(x, W) at dy, summed over
  WEIGHT_GRAD_SLICES slices of the batch. Each slice starts when the sum before it is
  done (tie), so only one slice's transposed copies exist at a time. Slice s is every
  WEIGHT_GRAD_SLICES-th example from s: where the batch is split over devices, each
  device keeps its share of every slice, so no activations move between them (each
  slice's dW is all-reduced: one more all-reduce of the kernel's size)."""
  slices = min(WEIGHT_GRAD_SLICES, dy.shape[0])
  dw_raw = None
  for s in range(slices):
    xs, dys = x[s::slices], dy[s::slices]
    if dw_raw is not None:
      xs, dys = common.tie(xs, dw_raw), common.tie(dys, dw_raw)
    part, = jax.linear_transpose(lambda b, xs=xs: conv(xs, b), wb)(dys)
    dw_raw = part if dw_raw is None else dw_raw + part
  return dw_raw


def _int(v) -> int | None:
  """v as a Python int, or None when v is not an integer (bools are not integers here)."""
  if isinstance(v, bool):
    return None
  try:
    return operator.index(v)
  except TypeError:
    return None


def _strides(strides) -> tuple[int, int]:
  pair = (strides, strides) if _int(strides) is not None else strides
  try:
    s = tuple(_int(v) for v in pair)
  except TypeError:
    s = ()
  if len(s) != 2 or any(v is None or v < 1 for v in s):
    raise ValueError(f"binary_conv: strides={strides!r}; expected a positive int or a pair "
                     f"(vertical, horizontal) of positive ints")
  return s


def _same(n: int, k: int, s: int) -> tuple[int, int]:
  total = max((-(-n // s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def _padding(padding, in_hw, kernel_hw, strides) -> Pads:
  expected = ("expected 'SAME', 'VALID', a non-negative int or "
              "((top, bottom), (left, right)) of non-negative ints")
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return (0, 0), (0, 0)
    if padding.upper() == "SAME":
      return tuple(_same(n, k, s) for n, k, s in zip(in_hw, kernel_hw, strides))
    raise ValueError(f"binary_conv: padding={padding!r}; {expected}")
  p = _int(padding)
  if p is not None:
    if p < 0:
      raise ValueError(f"binary_conv: padding={padding!r}; {expected}")
    return (p, p), (p, p)
  try:
    pads = tuple(tuple(_int(v) for v in pair) for pair in padding)
  except TypeError:
    pads = ()
  if (len(pads) != 2 or any(len(pair) != 2 for pair in pads)
      or any(v is None or v < 0 for pair in pads for v in pair)):
    raise ValueError(f"binary_conv: padding={padding!r}; {expected}")
  return pads


def _check_shapes(x_shape, w_shape, strides, padding) -> Pads:
  """Validates x (NHWC) and w (HWIO) and returns the padding as explicit pairs."""
  if len(x_shape) != 4:
    raise ValueError(f"binary_conv: x has shape {tuple(x_shape)}; expected 4-D NHWC "
                     f"(batch, height, width, channels)")
  if len(w_shape) != 4:
    raise ValueError(f"binary_conv: w has shape {tuple(w_shape)}; expected 4-D HWIO "
                     f"(kernel_height, kernel_width, c_in, c_out)")
  if x_shape[3] != w_shape[2]:
    raise ValueError(f"binary_conv: x has {x_shape[3]} channels (shape {tuple(x_shape)}) but "
                     f"w expects c_in={w_shape[2]} (shape {tuple(w_shape)}, HWIO)")
  if min(w_shape[:2]) < 1:
    raise ValueError(f"binary_conv: w has shape {tuple(w_shape)}; the kernel must be at "
                     f"least 1x1")
  pads = _padding(padding, x_shape[1:3], w_shape[:2], strides)
  for axis, n, k, (lo, hi) in zip(("height", "width"), x_shape[1:3], w_shape[:2], pads):
    if n + lo + hi < k:
      raise ValueError(f"binary_conv: kernel {axis} {k} is larger than the padded input "
                       f"{axis} {n} + {lo} + {hi} = {n + lo + hi} (x {tuple(x_shape)}, "
                       f"w {tuple(w_shape)}, padding={padding!r})")
  return pads
