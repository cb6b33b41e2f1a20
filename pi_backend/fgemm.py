"""The float-times-sign products of the dense layers, by the C kernels ("c", the default)
or by NumPy's BLAS ("numpy": the +-1 operand expanded to float32 one panel of 64 rows
at a time, so that no float copy of a whole weight matrix is made).

Both give the same products up to the order of float32 sums. "numpy" is there because
the C float GEMM multiplies and adds separately (no FMA; AVX2 / AVX-512F on x86, 4-lane
vectors elsewhere) while NumPy's OpenBLAS uses FMA and the widest
vectors the CPU has; bench/pi_backend.py times both.
"""
from __future__ import annotations

import numpy as np

from pi_backend import kernels as K

IMPLS = ("c", "numpy")
PANEL = 64


def check(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"float_gemm={impl!r}; expected one of {list(IMPLS)}")
  return impl


def batch_sign_w(batch, bits: np.ndarray, n: int, impl: str, row_chunk: int) -> np.ndarray:
  """y (m, n) = x . sign(W) for the first layer's input batch (pi_backend.layers.Batch,
  converted to float32 a block at a time), bits = pack(W) uint64 (k, words(n))."""
  y = np.empty((len(batch), n), np.float32)
  if impl == "c":  # blocks of examples, all of k
    for i in range(0, len(batch), row_chunk):
      K.sign_matmul_packed(batch.rows(i, i + row_chunk), bits, n, out=y[i:i + row_chunk])
    return y
  k = bits.shape[0]  # panels of k, all examples: each panel of signs expanded once
  for p in range(0, k, PANEL):
    wb = K.unpack(np.ascontiguousarray(bits[p:p + PANEL]), n)
    if p == 0:
      np.matmul(batch.cols(p, p + PANEL), wb, out=y)
    else:
      y += batch.cols(p, p + PANEL) @ wb
  return y


def dy_sign_wt(dy: np.ndarray, bits: np.ndarray, impl: str, out: np.ndarray | None = None):
  """dx (m, k) = dy (m, n) float32 . sign(W)^T, bits = pack(W) uint64 (k, words(n)).
  out may be dy itself when k == n ("numpy": sign(W) is expanded once, k x n float32)."""
  if impl == "c":
    if out is None or out is not dy:
      return K.matmul_sign_t_packed(dy, bits, out=out)
    for i in range(0, len(dy), 32):  # in place: a block of rows at a time
      dy[i:i + 32] = K.matmul_sign_t_packed(dy[i:i + 32], bits)
    return dy
  wbt = K.unpack(bits, dy.shape[1]).T
  if out is None:
    return dy @ wbt
  for i in range(0, len(dy), 64):
    out[i:i + 64] = dy[i:i + 64] @ wbt
  return out


def xt_dy(x: np.ndarray, dy: np.ndarray, impl: str) -> np.ndarray:
  """x^T . dy for a real x (m, k) float32 and dy (m, n) -> (k, n)."""
  if impl == "c":
    return K.t_matmul(x, dy)
  return x.T @ dy


def sign_xt_dy(x_packed: np.ndarray, k: int, dy: np.ndarray, impl: str) -> np.ndarray:
  """sign(x)^T . dy for x packed uint64 (m, words(k)) and dy (m, n) -> (k, n)."""
  if impl == "c":
    return K.sign_t_matmul(x_packed, k, dy)
  return K.unpack(x_packed, k).T @ dy
