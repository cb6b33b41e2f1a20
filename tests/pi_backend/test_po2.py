"""The power-of-two gradient quantizer against a NumPy implementation of METHOD.md's
equation (float64 logs), for the paper's settings bits=4 with bias 8 and 6, and more."""
import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref


def _grads(seed, n=2000):
  rng = np.random.default_rng(seed)
  g = rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 3, n)
  g[::17] = 0.0
  g[1::19] = -0.0
  # values right at the rounding threshold: mantissas around sqrt(2)
  t = np.float32(np.sqrt(2))
  g[2:8] = [t, np.nextafter(t, np.float32(2)), np.nextafter(t, np.float32(1)),
            -t * 2 ** -20, 2.0 ** -30, -(2.0 ** 5)]
  return g.astype(np.float32)


@pytest.mark.parametrize("bits,bias", [(4, 8), (4, 6), (4, 0), (1, 0), (3, -2), (5, 16), (8, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_equation(bits, bias, seed):
  g = _grads(seed).reshape(40, 50)
  q = K.po2(g, bits=bits, bias=bias)
  assert q.shape == g.shape and q.dtype == np.float32
  np.testing.assert_array_equal(q, ref.po2(g, bits, bias))


@pytest.mark.parametrize("bias", [8, 6])
def test_reference_zeros(bias):
  g = _grads(3)
  np.testing.assert_array_equal(K.po2(g, bits=4, bias=bias, zeros="reference"),
                                ref.po2(g, 4, bias, zeros="reference"))


def test_hand_computed():
  # max|g| = 3 -> round(log2 3) = 2, b = 6; v = 48, -6.4, 0, 192 -> e = 6, 3, -, 7 (clip)
  g = np.array([0.75, -0.1, 0.0, 3.0], np.float32)
  np.testing.assert_array_equal(K.po2(g), [1.0, -0.125, 0.0, 2.0])


def test_special_values_and_in_place():
  g = np.array([np.nan, np.inf, -np.inf, 0.5, -3.0, 0.0], np.float32)
  q = K.po2(g.copy())
  assert np.isnan(q[0]) and q[1] == np.inf and q[2] == -np.inf
  np.testing.assert_array_equal(q[3:], ref.po2(g, 4, 8)[3:])
  np.testing.assert_array_equal(K.po2(np.zeros(3, np.float32)), np.zeros(3))
  g2 = _grads(5)
  want = ref.po2(g2, 4, 8)
  assert K.po2(g2, out=g2) is g2
  np.testing.assert_array_equal(g2, want)
  assert K.po2(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_stochastic_rounding_with_given_random_bits():
  """Round up iff (r >> 9) < mantissa field: r = 0 rounds every non-power of two up,
  r = 2^32 - 1 rounds everything down (floor of log2), inside the clip range."""
  g = np.array([3.0, -0.3, 0.7, 1.0, 0.01, -2.5], np.float32)  # max 3: b = 8 - 2 = 6
  up = K.po2(g, random_bits=np.zeros(6, np.uint32))
  down = K.po2(g, random_bits=np.full(6, 2**32 - 1, np.uint32))
  mant, exp = np.frexp(np.abs(g).astype(np.float64))             # |g| = mant 2^exp
  floor = exp - 1
  ceil = np.where(mant == 0.5, floor, floor + 1)
  b, lo, hi = 6, -8, 7
  want_up = np.sign(g) * 2.0 ** (np.clip(ceil + b, lo, hi) - b)
  want_down = np.sign(g) * 2.0 ** (np.clip(floor + b, lo, hi) - b)
  np.testing.assert_array_equal(up, want_up.astype(np.float32))
  np.testing.assert_array_equal(down, want_down.astype(np.float32))


def test_stochastic_rounding_is_unbiased():
  rng = np.random.default_rng(0)
  g = np.full(200_000, 0.3, np.float32)
  g[0] = 1.0                                     # max 1: b = bias, 0.3 well inside range
  q = K.po2(g, bias=8, random_bits=rng.integers(0, 2**32, g.size, dtype=np.uint32))
  assert set(np.unique(q[1:])) == {np.float32(0.25), np.float32(0.5)}
  assert abs(q[1:].mean() - 0.3) < 2e-3
