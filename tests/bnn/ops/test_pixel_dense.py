"""The first dense layer on uint8 pixels (bnn.ops.pixel_dense): the C++ handlers and
the XLA formulas against an explicit float64 NumPy reference of METHOD.md's
equations, and binary_dense on pixels against binary_dense on their float values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quantizers
from bnn.ops import binary_dense, native, pixel_dense, to_float

SHAPES = [(1, 1, 1), (7, 13, 5), (13, 29, 33), (6, 96, 32), (100, 784, 256)]
WEIGHT_DTYPES = [np.float32, np.float16, jnp.bfloat16]

needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler")


def _lut64():
  return np.arange(256, dtype=np.float64) / 127.5 - 1


def _inputs(seed, b, k, n, dtype):
  """Pixels, latent W with +-0, NaN, +-inf, +-1 and just-over-1 entries, and dy."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (b, k), dtype=np.uint8)
  w = rng.uniform(-1.5, 1.5, (k, n))
  specials = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.0, -1.0, 1.01, -1.01]
  for i, v in enumerate(specials):
    if i < w.size:
      w.flat[(7 * i) % w.size] = v
  dy = rng.normal(size=(b, n)).astype(np.float32)
  return pixels, np.asarray(w).astype(dtype), dy


def _reference(pixels, w, dy):
  """y = x . sign(W); dW = |W| <= 1 ? sign(x^T dy) / sqrt(N) : 0 (float16), sign(0) =
  +1 and sign(NaN) = -1 (quantizers.sign); float64 sums."""
  x = _lut64()[pixels]
  w64 = np.asarray(w, np.float64)
  y = x @ np.where(w64 >= 0, 1.0, -1.0)
  raw = x.T @ dy.astype(np.float64)
  scale = np.float16(np.float32(1 / np.sqrt(w.size)))
  dw = np.where(np.abs(w64) <= 1, np.where(raw >= 0, scale, -scale), 0).astype(np.float16)
  return y, raw, dw


def _check(pixels, w, dy, y, dw):
  y_ref, raw, dw_ref = _reference(pixels, w, dy)
  k = pixels.shape[1]
  # float32 sums of k terms of size <= 1: the rounding bound, generously
  np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=0, atol=k * 2e-7 + 1e-6)
  dw = np.asarray(dw)
  assert dw.dtype == np.float16 and dw.shape == w.shape
  # a float32 sum's sign may differ from the float64 sum's only where that is ~0
  decided = np.abs(raw) > pixels.shape[0] * 4 * 2e-7 * np.abs(dy).max() + 1e-12
  np.testing.assert_array_equal(dw[decided], dw_ref[decided])
  np.testing.assert_array_equal(np.abs(dw), np.abs(dw_ref))  # the mask and the scale


@needs_native
@pytest.mark.parametrize("dtype", WEIGHT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_handlers_follow_the_reference(shape, dtype):
  pixels, w, dy = _inputs(sum(shape), *shape, dtype)
  y = jax.jit(pixel_dense._forward_native)(pixels, w)
  dw = jax.jit(pixel_dense._weight_grad_native)(pixels, dy, w)
  _check(pixels, w, dy, y, dw)


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_forward_handler_sums_exactly(shape):
  """y = x_scale * A + x_offset * C with A = p . sign(W) and C = colsum(sign(W)) exact
  integers, rounded as stated in first_dense.cc: bit for bit."""
  pixels, w, _ = _inputs(7, *shape, np.float16)
  s = np.where(np.asarray(w, np.float64) >= 0, 1, -1)
  a, c = pixels.astype(np.int64) @ s, s.sum(axis=0)
  expected = (a.astype(np.float32) * np.float32(1 / 127.5)) + np.float32(-1) * c.astype(np.float32)
  np.testing.assert_array_equal(jax.jit(pixel_dense._forward_native)(pixels, w), expected)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_xla_formulas_follow_the_reference(shape):
  """What a GPU (or a machine without a compiler) runs."""
  pixels, w, dy = _inputs(1, *shape, np.float16)
  y = jax.jit(pixel_dense._forward_xla)(pixels, w)
  dw = jax.jit(pixel_dense._weight_grad_xla)(pixels, dy, w)
  _check(pixels, w, dy, y, dw)


def test_the_table_is_to_float():
  np.testing.assert_array_equal(pixel_dense._lut(), to_float(jnp.arange(256, dtype=jnp.uint8)))


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "xla"])
def test_pixels_give_the_float_inputs_values_and_gradient(use_native, monkeypatch):
  """binary_dense(pixels) == binary_dense(to_float(pixels)) (first layer, proposed):
  the same logits up to float32 summation order, the same float16 weight gradient
  wherever its sign is decided, and the same batch shape handling."""
  if use_native and not native.available():
    pytest.skip("no C++ compiler")
  monkeypatch.setattr(native, "available", lambda: use_native)
  pixel_dense._op.cache_clear()
  pixels, w, dy = _inputs(5, 24, 40, 12, np.float32)
  pixels, dy = pixels.reshape(2, 12, 40), dy.reshape(2, 12, 12)

  def vjp(x):
    y, pull = jax.vjp(lambda w: binary_dense(x, w, method="proposed", first_layer=True), w)
    return y, pull(dy)[0]

  y_p, dw_p = jax.jit(vjp)(pixels)
  y_f, dw_f = jax.jit(vjp)(to_float(pixels))
  np.testing.assert_allclose(y_p, y_f, rtol=0, atol=1e-5)
  assert dw_p.dtype == dw_f.dtype == w.dtype
  _, raw, _ = _reference(pixels.reshape(24, 40), w, dy.reshape(24, 12))
  decided = np.abs(raw) > 1e-4
  np.testing.assert_array_equal(np.asarray(dw_p)[decided], np.asarray(dw_f)[decided])
  pixel_dense._op.cache_clear()


def test_pixels_need_a_first_layer():
  pixels = jnp.zeros((2, 4), jnp.uint8)
  with pytest.raises(ValueError, match="uint8 x of shape \\(2, 4\\) with first_layer=False"):
    binary_dense(pixels, jnp.zeros((4, 3)), method="proposed")


def test_other_quantizers_and_the_standard_method_read_the_float_values():
  """Only ste_sign weights with the sign_scaled gradient have a pixel path; the rest
  scale the pixels first and give what the float input gives."""
  pixels, w, dy = _inputs(2, 8, 16, 4, np.float32)
  cases = [dict(method="standard"),
           dict(method="proposed", weight_grad_quantizer="identity"),
           dict(method="proposed", weight_quantizer="magnitude_aware_sign")]
  for kw in cases:
    f = lambda x, w: binary_dense(x, w, first_layer=True, **kw)
    y_p, dw_p = jax.jit(jax.value_and_grad(lambda w: jnp.sum(f(pixels, w) * dy)))(w)
    y_f, dw_f = jax.jit(jax.value_and_grad(lambda w: jnp.sum(f(to_float(pixels), w) * dy)))(w)
    np.testing.assert_array_equal(y_p, y_f)
    np.testing.assert_array_equal(dw_p, dw_f)


@needs_native
def test_stochastic_gradient_rounding_draws_from_the_key():
  """A stochastic dY quantizer is applied before the weight gradient, as in
  binary_dense: two keys give two gradients, one key the same one twice."""
  pixels, w, dy = _inputs(3, 32, 24, 8, np.float16)
  q = quantizers.get('po2(bits=4, bias=8, rounding="stochastic")', "gradient")

  def grad(key):
    return jax.grad(lambda w: jnp.sum(pixel_dense.pixel_dense(pixels, w, q, key) * dy))(w)

  a, b = jax.jit(grad)(jax.random.key(0)), jax.jit(grad)(jax.random.key(1))
  np.testing.assert_array_equal(a, jax.jit(grad)(jax.random.key(0)))
  assert (np.asarray(a) != np.asarray(b)).any()
  with pytest.raises(ValueError, match="needs a PRNG `key`"):
    grad(None)
