"""The optimizer of factored_adam bundles, in NumPy with float32 arithmetic, step for step
as the JAX side computes it (bnn/optim.py factored_adam: optax's factored second moment,
then a float16 first moment; the betas: optax.scale_by_adam in float32).

A kernel of any rank, t = count - 1 the updates before this one, (d1, d0) the two
largest axes (pi_backend/graph.py factored_dims):

  decay = b2 (1 - b2^t) / (1 - b2^(t + 1))     (the EMA whose value is Adam's v_hat)
  s     = g^2 + 1e-30
  vrow <- decay vrow + (1 - decay) mean(s over d0)
  vcol <- decay vcol + (1 - decay) mean(s over d1)
  u     = g (vrow / mean(vrow over d1))^-1/2 vcol^-1/2      (broadcast over d0 and d1)
  m    <- float16(b1 m + (1 - b1) u)
  w    <- float16(w - lr m / (1 - b1^count))

vrow and vcol are float32 vectors, O(rows + columns), where Adam keeps a float16 v for
every weight; for the proposed gradient sign(dW)/sqrt(N) they are exact (every entry has
the same magnitude). Adam's float16 v underflows there: (1 - b2) / N is below float16's
smallest value for N > 17,000 weights.

The betas (few): Adam with eps_root = 0 and float32 moments.

When d0 and d1 are the last two axes (every kernel of the paper's models but a first
conv's), the statistics are one C pass (kernels.factored_square_sums, in a stated order
of additions), and, when g is float16, so is the moment and weight update
(kernels.factored_adam_f16, the same float32 operations in the same order as the NumPy
blocks: the same bits). Otherwise both are NumPy, a block of rows at a time.
"""
from __future__ import annotations

import numpy as np

from pi_backend import kernels as K
from pi_backend.graph import factored_dims, factored_shapes

F16, F32 = np.float16, np.float32


def _check(fn: str, name: str, a, dtype, shape) -> None:
  if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != tuple(shape):
    got = f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
    raise ValueError(f"{fn}: {name} is {got}; expected {np.dtype(dtype)}{list(shape)}")
  if not a.flags.writeable:
    raise ValueError(f"{fn}: {name} is read-only; it is updated in place")


def _check_gradient(fn: str, g, shape) -> None:
  if not isinstance(g, np.ndarray) or g.dtype not in (F16, F32) or g.shape != tuple(shape):
    got = f"{g.dtype}{list(g.shape)}" if isinstance(g, np.ndarray) else type(g).__name__
    raise ValueError(f"{fn}: g is {got}; expected float16 or float32{list(shape)}")


def _check_count(fn: str, count) -> int:
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
    raise ValueError(f"{fn}: count={count!r}; expected the number of this update, >= 1")
  return int(count)


CHUNK_ELEMENTS = 1 << 15  # float32 temporaries of 128 KiB: the update goes a block at a time


def _f32(a: np.ndarray) -> np.ndarray:
  """float32 of a block (float16 by the C conversion, F16C where the CPU has it: NumPy's
  own takes most of the step's time)."""
  return K.f16_to_f32(a) if a.dtype == F16 else a.astype(F32)


def _chunks(shape):
  """Slices of the first axis with about CHUNK_ELEMENTS elements each."""
  per_row = max(1, int(np.prod(shape[1:])))
  rows = max(1, CHUNK_ELEMENTS // per_row)
  return [slice(r, min(r + rows, shape[0])) for r in range(0, shape[0], rows)]


def _part(a: np.ndarray, axis_removed: int, rows: slice) -> np.ndarray:
  """The part of a statistic (the kernel's shape without axis_removed, then broadcast
  back over it) that a block of the kernel's first axis uses."""
  a = np.expand_dims(a, axis_removed)
  return a if axis_removed == 0 else a[rows]


def factored_adam(w: np.ndarray, m: np.ndarray, vrow: np.ndarray, vcol: np.ndarray,
                  g: np.ndarray, *, count: int, lr: float, b1: float = 0.9,
                  b2: float = 0.999) -> None:
  """One step in place: w, m float16 (the kernel's shape), vrow, vcol float32 (the
  shape without d0, without d1), g float16 or float32 (the kernel's shape). Works
  through the kernel a block of its first axis at a time, so that its float32
  temporaries stay small whatever the kernel's size."""
  fn = "factored_adam"
  count = _check_count(fn, count)
  shape = w.shape
  if len(shape) < 2:
    raise ValueError(f"{fn}: w has shape {list(shape)}; expected a kernel of rank >= 2")
  d1, d0 = factored_dims(shape)
  rows_shape, cols_shape = factored_shapes(shape)
  _check(fn, "w", w, F16, shape)
  _check(fn, "m", m, F16, shape)
  _check(fn, "vrow", vrow, F32, rows_shape)
  _check(fn, "vcol", vcol, F32, cols_shape)
  _check_gradient(fn, g, shape)
  t = F32(count - 1)
  b2_ = F32(b2)
  decay = b2_ * (F32(1) - b2_ ** t) / (F32(1) - b2_ ** (t + F32(1)))
  # the sums of s = g^2 + 1e-30 over d0 and over d1: one C pass when they are the last two
  # axes (every kernel of the paper's models but a first conv's), else NumPy, a block
  # of the first axis at a time
  last_two = {d0, d1} == {len(shape) - 2, len(shape) - 1}
  if last_two:
    sums = dict(zip((len(shape) - 2, len(shape) - 1), K.factored_square_sums(g)))
  else:
    sums = {d: np.zeros(stat.shape, F32) for d, stat in ((d0, vrow), (d1, vcol))}
    for rows in _chunks(shape):
      gb = _f32(g[rows])
      s = gb * gb + F32(1e-30)
      for d, total in sums.items():
        if d == 0:
          total += s.sum(axis=0, dtype=F32)
        else:
          total[rows] = s.sum(axis=d, dtype=F32)
  vrow[...] = decay * vrow + (F32(1) - decay) * (sums[d0] / F32(shape[d0]))
  vcol[...] = decay * vcol + (F32(1) - decay) * (sums[d1] / F32(shape[d1]))
  reduced_d1 = d1 - 1 if d1 > d0 else d1
  row_factor = (vrow / vrow.mean(axis=reduced_d1, keepdims=True, dtype=F32)) ** F32(-0.5)
  col_factor = vcol ** F32(-0.5)
  correction = F32(1) - F32(b1) ** F32(count)
  if g.dtype == F16 and last_two:
    # one C pass (every kernel of the paper's models): a factor that leaves out the
    # second-last axis varies along the last one
    K.factored_adam_f16(w, m, g, row_factor, d0 == len(shape) - 2, col_factor,
                        d1 == len(shape) - 2, b1=b1, correction=float(correction), lr=lr)
    return
  for rows in _chunks(shape):
    u = _f32(g[rows])
    u *= _part(row_factor, d0, rows)
    u *= _part(col_factor, d1, rows)
    mb = F32(b1) * K.f16_to_f32(m[rows])
    mb += F32(1 - b1) * u
    m[rows] = K.f32_to_f16(mb)
    mb = K.f16_to_f32(m[rows])  # the stored moment is what the weights move by
    mb /= correction
    mb *= F32(-lr)
    mb += K.f16_to_f32(w[rows])
    w[rows] = K.f32_to_f16(mb)


def adam_f32(w: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, *, count: int,
             lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
  """One Adam step in place (optax.adam, eps_root = 0): w float16, m and v float32,
  g float16 or float32, all of one shape."""
  fn = "adam_f32"
  count = _check_count(fn, count)
  _check(fn, "w", w, F16, w.shape)
  _check(fn, "m", m, F32, w.shape)
  _check(fn, "v", v, F32, w.shape)
  _check_gradient(fn, g, w.shape)
  g = g.astype(F32)
  m[...] = F32(1 - b1) * g + F32(b1) * m
  v[...] = F32(1 - b2) * (g * g) + F32(b2) * v
  m_hat = m / (F32(1) - F32(b1) ** F32(count))
  v_hat = v / (F32(1) - F32(b2) ** F32(count))
  w[...] = (w.astype(F32) + (m_hat / (np.sqrt(v_hat) + F32(eps))) * F32(-lr)).astype(F16)
