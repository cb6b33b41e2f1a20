"""Sign bits of latent weights of any float dtype (float16 here), in the kernels'
layouts: bit = w >= 0 (sign(0) = sign(-0.0) = +1), packed along the last axis into
uint64 words (pi_backend.kernels' layout). float16 dense weights by the C kernels
(kernels.pack_f16 / pack_f16_transposed on the bit patterns), the rest by NumPy packbits plus
kernels.from_uint8, so that no float32 copy of the weights is made."""
from __future__ import annotations

import numpy as np

from pi_backend import kernels as K


def nonnegative(w: np.ndarray) -> np.ndarray:
  """w >= 0 as bools (NaN -> False); for float16 by integer operations on the bit
  patterns (NumPy compares float16 slowly): +0 ... +inf and -0.0 are >= 0."""
  if w.dtype != np.float16:
    return w >= 0
  u = w.view(np.uint16)
  return (u <= np.uint16(0x7C00)) | (u == np.uint16(0x8000))


def _packbits(b: np.ndarray) -> np.ndarray:
  """Bools (..., n) -> uint8 (..., ceil(n / 8)), little bit order, C-contiguous."""
  return np.ascontiguousarray(np.packbits(b, axis=-1, bitorder="little"))


def pack_signs(w: np.ndarray, block: int = 1 << 15) -> np.ndarray:
  """w (..., n) float -> uint64 (..., words(n)) = kernels.pack(w) for float32 w; float16
  by the C kernel (kernels.pack_f16), other dtypes a block of about
  ``block`` elements at a time, so that the temporary bools stay small."""
  if w.dtype == np.float16 and w.ndim >= 1 and w.flags.c_contiguous:
    return K.pack_f16(w)
  n = w.shape[-1]
  flat = w.reshape(-1, n) if n else w.reshape(0, 0)
  out = np.empty((flat.shape[0], K.words(n)), np.uint64)
  step = max(1, block // max(n, 1))
  for r in range(0, flat.shape[0], step):
    out[r:r + step] = K.from_uint8(_packbits(nonnegative(flat[r:r + step])), n)
  return out.reshape(w.shape[:-1] + (K.words(n),))


def dense_bits_t(w: np.ndarray) -> np.ndarray:
  """Dense weights (n_in, n_out) -> uint64 (n_out, words(n_in)) = kernels.pack_transposed(w):
  the B operand of kernels.xnor_gemm."""
  if w.dtype == np.float16 and w.flags.c_contiguous:
    return K.pack_f16_transposed(w)
  n_in = w.shape[0]
  return K.from_uint8(_packbits(nonnegative(w).T), n_in)


def conv_bits(w: np.ndarray) -> np.ndarray:
  """HWIO conv weights (kh, kw, c_in, c_out) -> uint64 (c_out, kh * kw * words(c_in)) =
  kernels.pack_conv_weights(w): the weights of kernels.binary_conv2d."""
  c_out, c_in = w.shape[3], w.shape[2]
  return K.from_uint8(_packbits(nonnegative(w).transpose(3, 0, 1, 2)), c_in).reshape(
      c_out, -1)


def padding_bits_clear(bits: np.ndarray, n: int) -> bool:
  """Whether the padding bits (beyond n elements on the last axis) are all 0."""
  if n % 64 == 0 or bits.size == 0:
    return True
  mask = np.uint64((1 << (n % 64)) - 1)
  return not np.any(bits[..., -1] & ~mask)
