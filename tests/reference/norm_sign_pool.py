"""NumPy reference for batch norm (L1 and L2), the sign STE and 2x2 max pooling.

Written from METHOD.md channel by channel and window by window, in float64, with
sign(0) = +1. Only the float16 rounding that the proposed method prescribes (dy on
entry to the batch-norm backward, and the kept per-channel scale and mean|x_hat|)
is reproduced on purpose.
"""
from __future__ import annotations

import numpy as np


def _sign(v):
  return np.where(v >= 0, 1.0, -1.0)


def _channels(x):
  """x (..., C) -> list of flat float64 columns, one per channel."""
  x = np.asarray(x, np.float64)
  flat = x.reshape(-1, x.shape[-1])
  return [flat[:, c].copy() for c in range(flat.shape[1])]


def l1_bn_forward(x, beta, eps=1e-5):
  """-> (y, mean, scale) of the proposed L1 batch norm, scale = mean|x - mean| + eps."""
  x = np.asarray(x, np.float64)
  y = np.empty_like(x).reshape(-1, x.shape[-1])
  means, scales = [], []
  for c, col in enumerate(_channels(x)):
    mu = col.sum() / col.size
    psi = np.abs(col - mu).sum() / col.size
    scale = psi + eps
    y[:, c] = (col - mu) / scale + float(beta[c])
    means.append(mu)
    scales.append(scale)
  return y.reshape(x.shape), np.array(means), np.array(scales)


def l1_bn_backward(x, dy, eps=1e-5, round_dy=True):
  """-> (dx, dbeta) of the proposed L1 batch norm (METHOD.md), with the kept scale and
  m = mean|x_hat| rounded to float16 and, if round_dy, dy rounded to float16."""
  x = np.asarray(x, np.float64)
  dy = np.asarray(dy, np.float32)
  if round_dy:
    dy = dy.astype(np.float16)
  dy = dy.astype(np.float64)
  dx = np.empty_like(x).reshape(-1, x.shape[-1])
  dbeta = np.empty(x.shape[-1])
  dys = _channels(dy)
  for c, col in enumerate(_channels(x)):
    n = col.size
    mu = col.sum() / n
    scale = np.abs(col - mu).sum() / n + eps
    x_hat = (col - mu) / scale
    s = _sign(x_hat)
    m16 = float(np.float16(np.abs(x_hat).sum() / n))
    scale16 = float(np.float16(scale))
    g = dys[c] / scale16
    mean_g = g.sum() / n
    mean_gsm = (g * s * m16).sum() / n
    dx[:, c] = g - mean_g - s * mean_gsm
    dbeta[c] = dys[c].sum()
  return dx.reshape(x.shape), dbeta


def l2_bn_forward(x, beta, eps=1e-5):
  """-> (y, mean, scale) of ordinary batch norm without gamma, scale = sqrt(var + eps)."""
  x = np.asarray(x, np.float64)
  y = np.empty_like(x).reshape(-1, x.shape[-1])
  means, scales = [], []
  for c, col in enumerate(_channels(x)):
    mu = col.sum() / col.size
    var = ((col - mu) ** 2).sum() / col.size
    scale = np.sqrt(var + eps)
    y[:, c] = (col - mu) / scale + float(beta[c])
    means.append(mu)
    scales.append(scale)
  return y.reshape(x.shape), np.array(means), np.array(scales)


def ste_sign_forward(x):
  return _sign(np.asarray(x, np.float64))


def ste_sign_backward(x, dy, clip=1.0):
  """dx = dy * 1{|x| <= clip}."""
  x = np.asarray(x, np.float64)
  return np.where(np.abs(x) <= clip, np.asarray(dy, np.float64), 0.0)


_WINDOW_ORDER = ((0, 0), (0, 1), (1, 0), (1, 1))


def max_pool_argmax(x):
  """Index (0..3, row-major) of the first maximum of each 2x2 window: (B, Ho, Wo, C)."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  idx = np.zeros((b, h // 2, w // 2, c), np.int64)
  for n in range(b):
    for i in range(h // 2):
      for j in range(w // 2):
        for k in range(c):
          vals = [x[n, 2 * i + di, 2 * j + dj, k] for di, dj in _WINDOW_ORDER]
          best = 0
          for t in range(1, 4):
            if vals[t] > vals[best]:
              best = t
          idx[n, i, j, k] = best
  return idx


def max_pool_forward(x):
  x = np.asarray(x, np.float64)
  idx = max_pool_argmax(x)
  y = np.empty(idx.shape)
  for (n, i, j, k), t in np.ndenumerate(idx):
    di, dj = _WINDOW_ORDER[t]
    y[n, i, j, k] = x[n, 2 * i + di, 2 * j + dj, k]
  return y


def max_pool_backward(x, dy):
  """dy goes to the first maximum of each window; dropped rows/columns get 0."""
  x = np.asarray(x, np.float64)
  dy = np.asarray(dy, np.float64)
  idx = max_pool_argmax(x)
  dx = np.zeros(x.shape)
  for (n, i, j, k), t in np.ndenumerate(idx):
    di, dj = _WINDOW_ORDER[t]
    dx[n, 2 * i + di, 2 * j + dj, k] = dy[n, i, j, k]
  return dx
