"""NumPy (float64) reference for METHOD.md's binary dense and conv layers.

Written from the equations, not from the JAX code (no jax in here):
  forward          y = x . Wb                 Wb = sign(W), sign(0) = +1
  proposed         dy' = rounding(dy)         (None, "float16" or "bfloat16")
                   dx = dy' . Wb^T
                   dW_raw = sign(x)^T . dy'   (the first layer: real x)
                   dW = sign(dW_raw) / sqrt(N), N = W.size, zeroed where |W| > 1,
                        rounded to float16
  standard         dx = dy . Wb^T;  dW = x^T . dy zeroed where |W| > 1 (float)
Conv is the same with the dot products taken over (kh, kw, c_in) patches of the
zero-padded input: x NHWC, W HWIO, y NHWC. Padding is applied after sign(x), so
padded positions contribute 0. SAME padding as XLA/TensorFlow: total per axis
max((ceil(n / s) - 1) * s + k - n, 0), top/left = total // 2.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np


def sign(a) -> np.ndarray:
  """+1 where a >= 0 (so sign(0) = +1), else -1; float64."""
  return np.where(np.asarray(a) >= 0, 1.0, -1.0)


def round_dy(dy, rounding: str | None) -> np.ndarray:
  """dy as float64 after rounding to the given format (None: unchanged)."""
  dy = np.asarray(dy, np.float64)
  if rounding is None:
    return dy
  dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[rounding]
  return dy.astype(dtype).astype(np.float64)


def proposed_weight_grad(dw_raw, w) -> np.ndarray:
  """sign(dW_raw) / sqrt(N) with N all the weights, 0 where |W| > 1, rounded to float16."""
  w = np.asarray(w, np.float64)
  dw = sign(dw_raw) / math.sqrt(w.size)
  dw[np.abs(w) > 1] = 0.0
  return dw.astype(np.float16).astype(np.float64)


def standard_weight_grad(dw_raw, w) -> np.ndarray:
  """The clip STE on the float gradient: 0 where |W| > 1."""
  return np.where(np.abs(np.asarray(w)) <= 1, dw_raw, 0.0)


# --------------------------------------------------------------------------- dense


def dense_forward(x, w) -> np.ndarray:
  """x (..., n_in), W (n_in, n_out) -> (..., n_out)."""
  return np.asarray(x, np.float64) @ sign(w)


def _dense_grads(x_used, w, dy):
  wb = sign(w)
  n_in, n_out = wb.shape
  dx = dy @ wb.T
  dw_raw = x_used.reshape(-1, n_in).T @ dy.reshape(-1, n_out)
  return dx, dw_raw


def dense_backward_proposed(x, w, dy, *, first_layer: bool, rounding: str | None = None):
  """(dx, dW, dW_raw) of the proposed method."""
  x = np.asarray(x, np.float64)
  dx, dw_raw = _dense_grads(x if first_layer else sign(x), w, round_dy(dy, rounding))
  return dx, proposed_weight_grad(dw_raw, w), dw_raw


def dense_backward_standard(x, w, dy):
  """(dx, dW) of the standard method (float, the clip STE on W)."""
  dx, dw_raw = _dense_grads(np.asarray(x, np.float64), w, np.asarray(dy, np.float64))
  return dx, standard_weight_grad(dw_raw, w)


# --------------------------------------------------------------------------- conv


def conv_padding(padding, in_hw, kernel_hw, strides):
  """((top, bottom), (left, right)) for "SAME", "VALID", an int or explicit pairs."""
  if isinstance(padding, str):
    if padding == "VALID":
      return ((0, 0), (0, 0))
    assert padding == "SAME", padding
    pads = []
    for n, k, s in zip(in_hw, kernel_hw, strides):
      total = max((math.ceil(n / s) - 1) * s + k - n, 0)
      pads.append((total // 2, total - total // 2))
    return tuple(pads)
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return tuple(tuple(p) for p in padding)


def _strides(strides):
  return (strides, strides) if isinstance(strides, int) else tuple(strides)


def _setup(x, w, strides, padding):
  """Zero-padded x, output size and, per kernel offset (i, j), the strided window."""
  x = np.asarray(x, np.float64)
  sh, sw = _strides(strides)
  kh, kw = np.shape(w)[:2]
  (top, bottom), (left, right) = conv_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  assert ho >= 1 and wo >= 1, (x.shape, np.shape(w), strides, padding)

  def window(i, j):
    # Input rows i, i + sh, ..., i + sh * (ho - 1) meet kernel row i, for outputs 0..ho-1.
    return (slice(None), slice(i, i + sh * (ho - 1) + 1, sh),
            slice(j, j + sw * (wo - 1) + 1, sw), slice(None))

  return xp, (top, left), (ho, wo), window


def conv_forward(x, w, strides=1, padding="SAME") -> np.ndarray:
  """y[n, a, b, o] = sum_{i, j, c} xpad[n, a*sh + i, b*sw + j, c] * sign(W)[i, j, c, o]."""
  xp, _, (ho, wo), window = _setup(x, w, strides, padding)
  wb = sign(w)
  kh, kw, _, c_out = wb.shape
  y = np.zeros((xp.shape[0], ho, wo, c_out))
  for i in range(kh):
    for j in range(kw):
      y += np.einsum("nabc,co->nabo", xp[window(i, j)], wb[i, j])
  return y


def _conv_grads(x_used, w, dy, strides, padding):
  xp, (top, left), (ho, wo), window = _setup(x_used, w, strides, padding)
  wb = sign(w)
  kh, kw = wb.shape[:2]
  assert dy.shape == (xp.shape[0], ho, wo, wb.shape[3]), (dy.shape, ho, wo)
  dxp = np.zeros_like(xp)
  dw_raw = np.zeros(wb.shape)
  for i in range(kh):
    for j in range(kw):
      dxp[window(i, j)] += np.einsum("nabo,co->nabc", dy, wb[i, j])
      dw_raw[i, j] = np.einsum("nabc,nabo->co", xp[window(i, j)], dy)
  h, w_ = np.shape(x_used)[1:3]
  return dxp[:, top:top + h, left:left + w_, :], dw_raw


def conv_backward_proposed(x, w, dy, strides=1, padding="SAME", *, first_layer: bool,
                           rounding: str | None = None):
  """(dx, dW, dW_raw) of the proposed method."""
  x = np.asarray(x, np.float64)
  dx, dw_raw = _conv_grads(x if first_layer else sign(x), w, round_dy(dy, rounding),
                           strides, padding)
  return dx, proposed_weight_grad(dw_raw, w), dw_raw


def conv_backward_standard(x, w, dy, strides=1, padding="SAME"):
  """(dx, dW) of the standard method (float, the clip STE on W)."""
  dx, dw_raw = _conv_grads(np.asarray(x, np.float64), w, np.asarray(dy, np.float64),
                           strides, padding)
  return dx, standard_weight_grad(dw_raw, w)


# --------------------------------------------------------------------------- checks


def assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w) -> None:
  """dW equals the reference, except where dW_raw is so close to 0 that float32
  accumulation may legitimately flip its sign: there only |dW| is checked."""
  dw = np.asarray(dw, np.float64)
  tie = np.abs(dw_raw_ref) <= 1e-5 * max(1.0, float(np.max(np.abs(dw_raw_ref), initial=0.0)))
  np.testing.assert_array_equal(np.where(tie, 0.0, dw), np.where(tie, 0.0, dw_ref))
  np.testing.assert_array_equal(np.abs(dw), np.abs(dw_ref))
  assert np.all(dw[np.abs(np.asarray(w)) > 1] == 0)


# --------------------------------------------------------------------------- magnitude-aware
# Bi-Real Net's weight sign: Wb = alpha * sign(W), alpha = mean(|W|) per output channel
# (the last axis), alpha a constant in the gradient.
#   forward          y = conv(x, Wb)
#   proposed         dy' = rounding(dy); dx = conv^T(dy', Wb)
#                    dW_raw = alpha * corr(sign(x), dy')   (the first layer: real x)
#                    dW = sign(dW_raw) / sqrt(N), zeroed where |W| > 1, rounded to float16
#   standard         dx = conv^T(dy, Wb); dW = alpha * corr(x, dy) zeroed where |W| > 1


def magnitude_aware_weights(w) -> tuple[np.ndarray, np.ndarray]:
  """(Wb, alpha): alpha = mean(|W|) over every axis but the last, Wb = alpha * sign(W)."""
  w = np.asarray(w, np.float64)
  alpha = np.mean(np.abs(w), axis=tuple(range(w.ndim - 1)))
  return alpha * sign(w), alpha


def _conv_grads_wb(x_used, wb, dy, strides, padding):
  """dx and corr(x_used, dy) for the given (already quantized) kernel Wb."""
  xp, (top, left), (ho, wo), window = _setup(x_used, wb, strides, padding)
  kh, kw = wb.shape[:2]
  assert dy.shape == (xp.shape[0], ho, wo, wb.shape[3]), (dy.shape, ho, wo)
  dxp = np.zeros_like(xp)
  corr = np.zeros(wb.shape)
  for i in range(kh):
    for j in range(kw):
      dxp[window(i, j)] += np.einsum("nabo,co->nabc", dy, wb[i, j])
      corr[i, j] = np.einsum("nabc,nabo->co", xp[window(i, j)], dy)
  h, w_ = np.shape(x_used)[1:3]
  return dxp[:, top:top + h, left:left + w_, :], corr


def conv_forward_magnitude_aware(x, w, strides=1, padding="SAME") -> np.ndarray:
  """y = conv(x, alpha * sign(W)), x NHWC, W HWIO."""
  xp, _, (ho, wo), window = _setup(x, w, strides, padding)
  wb, _ = magnitude_aware_weights(w)
  kh, kw, _, c_out = wb.shape
  y = np.zeros((xp.shape[0], ho, wo, c_out))
  for i in range(kh):
    for j in range(kw):
      y += np.einsum("nabc,co->nabo", xp[window(i, j)], wb[i, j])
  return y


def conv_backward_proposed_magnitude_aware(x, w, dy, strides=1, padding="SAME", *,
                                           first_layer: bool, rounding: str | None = None):
  """(dx, dW, dW_raw) of the proposed method with the magnitude-aware weight sign."""
  x = np.asarray(x, np.float64)
  wb, alpha = magnitude_aware_weights(w)
  dx, corr = _conv_grads_wb(x if first_layer else sign(x), wb, round_dy(dy, rounding),
                            strides, padding)
  dw_raw = alpha * corr
  return dx, proposed_weight_grad(dw_raw, w), dw_raw


def conv_backward_standard_magnitude_aware(x, w, dy, strides=1, padding="SAME"):
  """(dx, dW) of the standard method with the magnitude-aware weight sign."""
  wb, alpha = magnitude_aware_weights(w)
  dx, corr = _conv_grads_wb(np.asarray(x, np.float64), wb, np.asarray(dy, np.float64),
                            strides, padding)
  return dx, standard_weight_grad(alpha * corr, w)


def dense_backward_proposed_magnitude_aware(x, w, dy, *, first_layer: bool):
  """(dx, dW, dW_raw) of the proposed dense layer with the magnitude-aware weight sign."""
  x = np.asarray(x, np.float64)
  dy = np.asarray(dy, np.float64)
  wb, alpha = magnitude_aware_weights(w)
  x_used = x if first_layer else sign(x)
  dx = dy @ wb.T
  dw_raw = alpha * (x_used.reshape(-1, wb.shape[0]).T @ dy.reshape(-1, wb.shape[1]))
  return dx, proposed_weight_grad(dw_raw, w), dw_raw


# --------------------------------------------------------------------------- 8-bit derivative


def quantized_derivative(g, step: float, zero: int) -> np.ndarray:
  """bnn.ops.sign's 8-bit fixed point: code = clip(round(g / step) + zero, 0, 255)
  (round half to even), value = (code - zero) * step; float64."""
  code = np.clip(np.round(np.asarray(g, np.float64) / step) + zero, 0, 255)
  return (code - zero) * step
