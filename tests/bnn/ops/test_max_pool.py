"""bnn.ops.max_pool: 2x2/2 VALID max pooling, the 1-bit argmax mask and its tie rule."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from bnn.ops import max_pool
from tests.reference import norm_sign_pool as ref

# Odd H and W included (the last row/column is dropped); channels not multiples of 8.
SHAPES = [(2, 4, 4, 1), (2, 5, 7, 13), (1, 6, 3, 17), (3, 2, 2, 3)]


def _data(shape, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  if ties:  # what pooling sees in CNV: the output of sign
    x = rng.choice([-1.0, 1.0], size=shape)
  else:
    x = rng.normal(size=shape)
  out = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  return jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=out), jnp.float32)


@functools.partial(jax.jit, static_argnames="method")
def _run(x, dy, method):
  y, pullback = jax.vjp(lambda x: max_pool(x, method=method), x)
  return y, pullback(dy)[0]


@jax.jit
def _plain(x, dy):
  """Independent formulation: reshape into windows and take jnp.max."""
  def f(x):
    b, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))
  y, pullback = jax.vjp(f, x)
  return y, pullback(dy)[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_proposed_matches_reference(shape, ties):
  x, dy = _data(shape, ties=ties)
  y, dx = _run(x, dy, method="proposed")
  np.testing.assert_array_equal(y, ref.max_pool_forward(x))
  np.testing.assert_array_equal(dx, ref.max_pool_backward(x, dy))


@pytest.mark.parametrize("shape", SHAPES)
def test_without_ties_both_methods_equal_plain_autodiff(shape):
  x, dy = _data(shape, seed=1)
  y_plain, dx_plain = _plain(x, dy)
  for method in ("standard", "proposed"):
    y, dx = _run(x, dy, method=method)
    np.testing.assert_array_equal(y, y_plain)
    np.testing.assert_array_equal(dx, dx_plain)
  np.testing.assert_array_equal(dx, ref.max_pool_backward(x, dy))


@pytest.mark.parametrize("shape", SHAPES)
def test_ties_route_to_exactly_one_first_max_per_window(shape):
  x, _ = _data(shape, seed=2, ties=True)
  b, h, w, c = shape
  _, dx = _run(x, jnp.ones((b, h // 2, w // 2, c)), method="proposed")
  dx = np.asarray(dx)
  assert np.all(dx[:, h // 2 * 2:] == 0) and np.all(dx[:, :, w // 2 * 2:] == 0)
  win = dx[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  np.testing.assert_array_equal(win.sum(axis=(2, 4)), 1.0)  # one 1 per window
  xw = np.asarray(x)[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  order = np.moveaxis(xw, (2, 4), (-2, -1)).reshape(b, h // 2, w // 2, c, 4)
  chosen = np.moveaxis(win, (2, 4), (-2, -1)).reshape(b, h // 2, w // 2, c, 4).argmax(-1)
  np.testing.assert_array_equal(chosen, order.argmax(-1))  # numpy: first maximum


def test_tie_rule_truth_table():
  # One window per channel; row-major order (0,0), (0,1), (1,0), (1,1).
  windows = {  # values -> index that gets the gradient
      (1, 1, 1, 1): 0, (-1, -1, -1, -1): 0, (-1, 1, 1, -1): 1, (-1, -1, 1, 1): 2,
      (-1, -1, -1, 1): 3, (1, -1, -1, 1): 0, (-1, 1, -1, 1): 1,
  }
  vals = np.array(list(windows), np.float32).T.reshape(2, 2, -1)  # (2, 2, C)
  x = jnp.asarray(vals[None])
  y, dx = _run(x, jnp.ones((1, 1, 1, vals.shape[-1])), method="proposed")
  np.testing.assert_array_equal(y.ravel(), vals.reshape(4, -1).max(0))
  got = np.asarray(dx)[0].reshape(4, -1).argmax(0)
  np.testing.assert_array_equal(got, list(windows.values()))
  np.testing.assert_array_equal(np.asarray(dx).sum(axis=(1, 2)), 1.0)


def test_proposed_keeps_only_packed_mask():
  shape = (2, 5, 7, 13)
  x, _ = _data(shape)
  res = saved_residuals(lambda x: max_pool(x, method="proposed").sum(), x)
  assert [(a.dtype, a.shape) for a, _ in res] == [(jnp.uint8, (2, 4, 6, 2))]


def test_standard_keeps_float32_per_example_tensor():
  shape = (2, 5, 7, 13)
  x, _ = _data(shape)
  res = saved_residuals(lambda x: max_pool(x, method="standard").sum(), x)
  assert any(a.dtype == jnp.float32 and a.shape == shape for a, _ in res), res


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="expected 4 axes"):
    max_pool(jnp.zeros((4, 4, 3)), method="proposed")
  with pytest.raises(ValueError, match="H >= 2 and W >= 2"):
    max_pool(jnp.zeros((1, 1, 4, 3)), method="proposed")
  with pytest.raises(ValueError, match="H >= 2 and W >= 2"):
    max_pool(jnp.zeros((1, 4, 1, 3)), method="standard")
  with pytest.raises(ValueError, match="floating"):
    max_pool(jnp.zeros((1, 4, 4, 3), jnp.int32), method="proposed")
  with pytest.raises(ValueError, match="method='max'"):
    max_pool(jnp.zeros((1, 4, 4, 3)), method="max")


def test_jit_matches_eager_and_vmap_works():
  x, dy = _data((1, 3, 2, 3), seed=3, ties=True)  # eager: op by op, kept small
  y, pullback = jax.vjp(lambda x: max_pool(x, method="proposed"), x)
  np.testing.assert_array_equal(pullback(dy)[0], ref.max_pool_backward(x, dy))
  x, dy = _data((2, 5, 7, 13), seed=3, ties=True)
  xs = jnp.stack([x, -x])
  dys = jnp.stack([dy, 2 * dy])
  y_v, dx_v = jax.jit(jax.vmap(functools.partial(_run, method="proposed")))(xs, dys)
  for i in range(2):
    np.testing.assert_array_equal(y_v[i], ref.max_pool_forward(xs[i]))
    np.testing.assert_array_equal(dx_v[i], ref.max_pool_backward(xs[i], dys[i]))
