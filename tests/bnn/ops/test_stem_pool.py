"""bnn.ops.stem_pool: [ReLU ->] overlapping SAME max pool, against a loop-by-loop NumPy
reference and against autodiff of the standard method."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from bnn.ops import stem_pool
from bnn.ops.stem_pool import pack_nibbles, unpack_nibbles

# (shape, window, stride): the ResNet stem's 3x3/2, odd sizes, odd channel counts,
# windows that overlap more (stride 1) and that do not overlap.
CASES = [((2, 8, 8, 4), 3, 2), ((1, 7, 9, 5), 3, 2), ((2, 5, 6, 3), 3, 1),
         ((1, 6, 5, 7), 2, 2), ((3, 4, 4, 1), 2, 1), ((1, 3, 3, 2), 1, 1)]


def reference(x, dy, window, stride, relu):
  """Forward and backward, one window at a time, as written in the module docstring."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  b, h, w, c = x.shape
  ho, wo = math.ceil(h / stride), math.ceil(w / stride)
  pt = max((ho - 1) * stride + window - h, 0) // 2
  pl = max((wo - 1) * stride + window - w, 0) // 2
  y, dx = np.zeros((b, ho, wo, c)), np.zeros_like(x)
  for n in range(b):
    for i in range(ho):
      for j in range(wo):
        for ch in range(c):
          best, where = -np.inf, None
          for a in range(window):  # row-major; the first maximum wins
            for e in range(window):
              r, q = i * stride - pt + a, j * stride - pl + e
              if 0 <= r < h and 0 <= q < w and x[n, r, q, ch] > best:
                best, where = x[n, r, q, ch], (r, q)
          if relu and best <= 0:
            y[n, i, j, ch] = 0.0
            continue
          y[n, i, j, ch] = best
          dx[n, where[0], where[1], ch] += dy[n, i, j, ch]
  return y, dx


def _data(shape, window, stride, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  x = rng.choice([-1.0, 0.0, 1.0], size=shape) if ties else rng.normal(size=shape)
  out = (shape[0], math.ceil(shape[1] / stride), math.ceil(shape[2] / stride), shape[3])
  return jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=out), jnp.float32)


@functools.partial(jax.jit, static_argnames=("method", "window", "stride", "relu"))
def _run(x, dy, *, method, window, stride, relu):
  y, pullback = jax.vjp(
      lambda x: stem_pool(x, method=method, relu=relu, window=window, stride=stride), x)
  return y, pullback(dy)[0]


@pytest.mark.parametrize("shape,window,stride", CASES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_proposed_matches_the_loop_reference(shape, window, stride, relu, ties):
  x, dy = _data(shape, window, stride, ties=ties)
  y, dx = _run(x, dy, method="proposed", window=window, stride=stride, relu=relu)
  y_ref, dx_ref = reference(x, dy, window, stride, relu)
  np.testing.assert_array_equal(y, y_ref)
  # overlapping windows add up to window^2 / stride^2 float32 terms in another order
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,window,stride", CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_without_ties_proposed_equals_autodiff_of_standard(shape, window, stride, relu):
  x, dy = _data(shape, window, stride, seed=1)
  y_std, dx_std = _run(x, dy, method="standard", window=window, stride=stride, relu=relu)
  y, dx = _run(x, dy, method="proposed", window=window, stride=stride, relu=relu)
  np.testing.assert_array_equal(y, y_std)
  np.testing.assert_allclose(dx, dx_std, rtol=1e-6, atol=1e-6)


def test_the_stem_pool_keeps_four_bits_per_output():
  x, _ = _data((2, 112, 112, 64), 3, 2)
  res = saved_residuals(lambda x: stem_pool(x, method="proposed", relu=True).sum(), x)
  # 4 bits per output = 1 bit per input element at stride 2
  assert [(a.dtype, a.shape) for a, _ in res] == [(jnp.uint8, (2, 56, 56, 32))]
  res = saved_residuals(lambda x: stem_pool(x, method="standard", relu=True).sum(), x)
  assert any(a.dtype == jnp.float32 and a.shape == x.shape for a, _ in res), res


@pytest.mark.parametrize("channels", [1, 2, 5, 64])
def test_nibble_packing_round_trips(channels):
  idx = jnp.asarray(np.random.default_rng(channels).integers(0, 16, (3, 4, channels)),
                    jnp.uint8)
  packed = pack_nibbles(idx)
  assert packed.shape == (3, 4, (channels + 1) // 2)
  np.testing.assert_array_equal(unpack_nibbles(packed, channels), idx)


def test_nan_input_still_routes_each_gradient_once():
  x = jnp.full((1, 4, 4, 1), jnp.nan)
  _, dx = _run(x, jnp.ones((1, 2, 2, 1)), method="proposed", window=3, stride=2, relu=False)
  assert float(jnp.sum(dx)) == 4.0


def test_bad_arguments_raise_clear_errors():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="expected 4 axes"):
    stem_pool(jnp.zeros((8, 8, 3)), method="proposed", relu=True)
  with pytest.raises(ValueError, match="floating"):
    stem_pool(x.astype(jnp.int32), method="proposed", relu=True)
  with pytest.raises(ValueError, match=r"window=4; expected an int in \[1, 3\]"):
    stem_pool(x, method="proposed", relu=True, window=4)
  with pytest.raises(ValueError, match=r"stride=0"):
    stem_pool(x, method="standard", relu=True, stride=0)
  with pytest.raises(ValueError, match="method='max'"):
    stem_pool(x, method="max", relu=True)
