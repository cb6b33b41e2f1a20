"""Pure-NumPy references for the pi_backend kernels (no jax), written from METHOD.md and
the JAX ops' docstrings, independently of the C code."""
from __future__ import annotations

import numpy as np


def sign(x):
  """+-1 float32 with sign(0) = +1 (and NaN -> -1, as x >= 0 is false)."""
  return np.where(np.asarray(x) >= 0, np.float32(1), np.float32(-1))


def packbits_u8(x):
  """The JAX side's layout: np.packbits(x >= 0, bitorder='little') along the last axis."""
  return np.packbits(np.asarray(x) >= 0, axis=-1, bitorder="little")


def pack_u64(x):
  """The C layout from packbits: bytes zero-padded to whole uint64 words, little endian."""
  b = packbits_u8(x)
  nbytes = -(-b.shape[-1] // 8) * 8
  padded = np.zeros(b.shape[:-1] + (nbytes,), np.uint8)
  padded[..., :b.shape[-1]] = b
  return padded.view("<u8").astype(np.uint64)


def pack_bool_u64(bits):
  """Packs a boolean array along the last axis into uint64 words (the C layout)."""
  bits = np.asarray(bits, bool)
  return pack_u64(np.where(bits, 1.0, -1.0))


# ---- conv ------------------------------------------------------------------------------

def patches(x, kernel_hw, strides, pads):
  """(b, oh, ow, kh, kw, c) windows of x zero-padded with pads ((t, b), (l, r))."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  b, hp, wp, c = xp.shape
  oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  out = np.zeros((b, oh, ow, kh, kw, c), x.dtype)
  for ky in range(kh):
    for kx in range(kw):
      out[:, :, :, ky, kx, :] = xp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :]
  return out


def conv(x, w, strides, pads):
  """y = conv(x, w), x (b, h, w, c), w HWIO, in float64."""
  p = patches(np.asarray(x, np.float64), w.shape[:2], strides, pads)
  return np.einsum("bijyxc,yxco->bijo", p, np.asarray(w, np.float64))


def conv_backward_input(dy, w, in_shape, strides, pads):
  """The transpose of x -> conv(x, w): scatter dy . w^T back onto the padded input."""
  (kh, kw), (sh, sw) = w.shape[:2], strides
  b, h, wd, c = in_shape
  dp = np.einsum("bijo,yxco->bijyxc", np.asarray(dy, np.float64), np.asarray(w, np.float64))
  oh, ow = dy.shape[1:3]
  dxp = np.zeros((b, h + pads[0][0] + pads[0][1], wd + pads[1][0] + pads[1][1], c))
  for ky in range(kh):
    for kx in range(kw):
      dxp[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :] += dp[:, :, :, ky, kx, :]
  return dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd, :]


def conv_backward_weight(x, dy, kernel_hw, strides, pads):
  """The transpose of w -> conv(x, w): correlation of x with dy."""
  p = patches(np.asarray(x, np.float64), kernel_hw, strides, pads)
  return np.einsum("bijyxc,bijo->yxco", p, np.asarray(dy, np.float64))


# ---- batch norm ----------------------------------------------------------------------

def _mean64(a):
  return (a.astype(np.float64).sum(axis=0) / a.shape[0]).astype(np.float32)


def bn_l1_forward(x2, beta, eps):
  """METHOD.md's L1 batch norm on x2 (n, c), float32 per element, float64 sums."""
  mean = _mean64(x2)
  scale = _mean64(np.abs(x2 - mean)) + np.float32(eps)
  x_hat = (x2 - mean) / scale
  y = x_hat + beta
  m = _mean64(np.abs(x_hat))
  return y, mean, scale, x_hat, scale.astype(np.float16), m.astype(np.float16)


def bn_l1_backward(dy2, s, scale16, m16, dy_float16=True):
  """The proposed backward with s = +-1 (n, c): bnn/ops/batch_norm.py's equations."""
  d = dy2.astype(np.float16).astype(np.float32) if dy_float16 else dy2
  g = d / scale16.astype(np.float32)
  mg = _mean64(g)
  k = _mean64(g * s) * m16.astype(np.float32)
  dx = (g - mg) - s * k
  return dx, d.astype(np.float64).sum(axis=0).astype(np.float32)


# ---- pooling -------------------------------------------------------------------------

def max_pool2x2(x):
  """(y, mask bool of the cropped input) with the first maximum in row-major order."""
  b, h, w, c = x.shape
  ho, wo = h // 2, w // 2
  xc = x[:, :2 * ho, :2 * wo, :]
  win = xc.reshape(b, ho, 2, wo, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, ho, wo, 4, c)
  y = np.max(win, axis=3)
  chosen = np.zeros(win.shape, bool)
  taken = np.zeros(y.shape, bool)
  for k in range(3):
    hit = (win[:, :, :, k] == y) & ~taken
    chosen[:, :, :, k] = hit
    taken |= hit
  chosen[:, :, :, 3] = ~taken
  mask = chosen.reshape(b, ho, wo, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * ho, 2 * wo, c)
  return y, mask


def max_pool2x2_backward(dy, mask, in_shape):
  b, h, w, c = in_shape
  ho, wo = h // 2, w // 2
  up = np.repeat(np.repeat(dy, 2, axis=1), 2, axis=2)
  dx = np.zeros(in_shape, np.float32)
  dx[:, :2 * ho, :2 * wo, :] = np.where(mask, up, 0)
  return dx


# ---- po2 -------------------------------------------------------------------------------

def po2(g, bits, bias, zeros="flush"):
  """METHOD.md's power-of-two quantizer, literally, in float64 logs:
    b = -round(log2(max|g|)) + bias; v = g 2^b;
    e = clip(round(log2|v|), -2^(k-1), 2^(k-1) - 1); q = sign(v) 2^e 2^-b
  zeros flushed (or, 'reference', +2^(-2^(k-1)) 2^-b); NaN/inf unchanged and left out
  of the max; no finite nonzero element: max taken as 1. float32 in and out (outputs
  below the smallest subnormal round to 0). No two-sided tie exists: log2 of a float is
  never exactly k + 0.5.
  """
  g = np.asarray(g, np.float32)
  g64 = g.astype(np.float64)
  finite = np.isfinite(g64)
  live = finite & (g64 != 0)
  mx = np.max(np.abs(g64[live])) if live.any() else 1.0
  b = -np.round(np.log2(mx)) + bias
  lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
  with np.errstate(divide="ignore", invalid="ignore"):
    v = g64 * 2.0 ** b
    e = np.clip(np.round(np.log2(np.abs(v))), lo, hi)
    q = np.sign(v) * 2.0 ** e * 2.0 ** -b
  q = np.where(live, q, 0.0)
  if zeros == "reference":
    q = np.where(finite & (g64 == 0), 2.0 ** (lo - b), q)
  out = q.astype(np.float32)
  return np.where(finite, out, g)


# ---- Adam ------------------------------------------------------------------------------

def adam_f16(w, m, v, g, step, lr, b1, b2, eps):
  """One optax-style Adam step in float32 on float16 storage; returns new (w, m, v)."""
  f = np.float32
  g = g.astype(f)
  b1, b2, lr, eps = f(b1), f(b2), f(lr), f(eps)
  bc1 = f(1.0 - np.float64(b1) ** step)
  bc2 = f(1.0 - np.float64(b2) ** step)
  mi = (f(1) - b1) * g + b1 * m.astype(f)
  vi = (f(1) - b2) * (g * g) + b2 * v.astype(f)
  upd = (mi / bc1) / (np.sqrt(vi / bc2) + eps)
  wi = w.astype(f) - lr * upd
  return wi.astype(np.float16), mi.astype(np.float16), vi.astype(np.float16)
