"""float16 conversions (bit manipulation in C) and Adam with float16 storage."""
import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref


def test_f16_to_f32_every_value():
  h = np.arange(2**16, dtype=np.uint16).view(np.float16)
  got = K.f16_to_f32(h)
  want = h.astype(np.float32)
  nan = np.isnan(want)
  np.testing.assert_array_equal(np.isnan(got), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _finite_midpoints():
  """float32 midpoints between neighbouring positive finite float16 values (exact in
  float32: they need 12 significant bits)."""
  lo = np.arange(0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float64)
  hi = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
  mid = ((lo + hi) / 2).astype(np.float32)
  assert np.array_equal(mid.astype(np.float64), (lo + hi) / 2)
  return np.concatenate([mid, -mid])


def test_f32_to_f16_rounds_like_numpy():
  rng = np.random.default_rng(0)
  x = np.concatenate([
      rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
      # every float16 value, and the midpoints between neighbours (ties to even)
      np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32),
      _finite_midpoints(),
      np.array([65504, 65519.996, 65520, 1e-8, 2.0**-25, 2.0**-24 * 1.5, -0.0, np.inf],
               np.float32),
  ])
  with np.errstate(over="ignore", invalid="ignore"):
    want = x.astype(np.float16)
  got = K.f32_to_f16(x)
  nan = np.isnan(want)
  np.testing.assert_array_equal(np.isnan(got), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))


@pytest.mark.parametrize("g_dtype", [np.float32, np.float16])
def test_adam_matches_numpy(g_dtype):
  rng = np.random.default_rng(1)
  shape = (37, 5)
  w = rng.standard_normal(shape).astype(np.float16)
  m = (rng.standard_normal(shape) * 0.01).astype(np.float16)
  v = (rng.random(shape) * 1e-3).astype(np.float16)
  want = (w.copy(), m.copy(), v.copy())
  for step in range(1, 6):
    g = (rng.standard_normal(shape) * 0.1).astype(g_dtype)
    want = ref.adam_f16(*want, g, step, 1e-3, 0.9, 0.999, 1e-8)
    K.adam_f16(w, m, v, g, step=step)
    for got, exp in zip((w, m, v), want):
      np.testing.assert_array_equal(got.view(np.uint16), exp.view(np.uint16))


def test_adam_hand_computed():
  # w = 1, g = 0.5, step 1: m_hat = 0.5, v_hat = 0.25, update ~ 1 -> w = 0.999 ->
  # nearest float16 0.99902344
  w, m, v = np.ones(1, np.float16), np.zeros(1, np.float16), np.zeros(1, np.float16)
  K.adam_f16(w, m, v, np.array([0.5], np.float32), step=1)
  assert w[0] == np.float16(0.99902344) and w.view(np.uint16)[0] == 0x3BFE
  assert abs(float(m[0]) - 0.05) < 1e-4
