"""bnn.ops.batch_norm: L1 (proposed) and L2 (standard) batch norm, against the NumPy
reference and plain autodiff, and what the proposed method keeps for backward."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import quantizers
from bnn.ops import batch_norm, batch_norm_eval
from tests.reference import norm_sign_pool as ref

# Dense (B, C) and conv (B, H, W, C) shapes; channel counts not multiples of 8.
SHAPES = [(16, 1), (9, 17), (2, 5, 7, 13), (2, 3, 3, 3)]
EPS = 1e-5


def _data(shape, seed=0):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=c) + rng.normal(size=c)
  dy = rng.normal(size=shape)
  beta = rng.normal(size=c)
  return (jnp.asarray(x, jnp.float32), jnp.asarray(beta, jnp.float32),
          jnp.asarray(dy, jnp.float32))


def _close(actual, expected, rtol=2e-5):
  """Float32 tolerance relative to the magnitude of the expected tensor."""
  expected = np.asarray(expected, np.float64)
  atol = rtol * max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def _run(x, beta, dy, method, grad_quantizer=None):
  """(y, mean, scale, dx, dbeta), jitted; the same shapes and arguments reuse one
  compiled program across tests."""
  return _run_jit(x, beta, dy, method, grad_quantizer)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _run_jit(x, beta, dy, method, grad_quantizer):
  f = lambda x, b: batch_norm(x, b, method=method, grad_quantizer=grad_quantizer)  # noqa: E731
  (y, mean, scale), pullback = jax.vjp(f, x, beta)
  dx, dbeta = pullback((dy, jnp.zeros_like(mean), jnp.zeros_like(scale)))
  return y, mean, scale, dx, dbeta


def _vjp(x, beta, dy, **kw):
  return _run(x, beta, dy, **kw)[3:]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gq", ["identity", "float16"])
def test_proposed_matches_reference(shape, gq):
  x, beta, dy = _data(shape, seed=1)
  y, mean, scale, dx, dbeta = _run(x, beta, dy, method="proposed", grad_quantizer=gq)
  y_ref, mean_ref, scale_ref = ref.l1_bn_forward(x, beta, EPS)
  assert y.shape == x.shape and mean.shape == scale.shape == (shape[-1],)
  _close(y, y_ref)
  _close(mean, mean_ref)
  _close(scale, scale_ref)
  dx_ref, dbeta_ref = ref.l1_bn_backward(x, dy, EPS, round_dy=gq == "float16")
  _close(dx, dx_ref)
  _close(dbeta, dbeta_ref)


def test_default_gradient_quantizer_is_float16():
  x, beta, dy = _data((2, 5, 7, 13), seed=2)
  dx_default, _ = _vjp(x, beta, dy, method="proposed")
  dx16, _ = _vjp(x, beta, dy, method="proposed", grad_quantizer="float16")
  dx32, _ = _vjp(x, beta, dy, method="proposed", grad_quantizer="identity")
  np.testing.assert_array_equal(dx_default, dx16)
  assert not np.array_equal(dx16, dx32)


def test_proposed_ignores_cotangents_of_statistics():
  x, beta, dy = _data((2, 5, 7, 13), seed=4)

  @jax.jit
  def grads(dmean, dscale):
    _, pullback = jax.vjp(lambda x, b: batch_norm(x, b, method="proposed"), x, beta)
    return pullback((dy, dmean, dscale))

  zero = jnp.zeros(13)
  a = grads(zero, zero)
  b = grads(zero + 3, zero - 2)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_statistics_carry_no_gradient(method):
  x, beta, _ = _data((9, 17))
  stats = lambda x: jnp.sum(sum(s.sum() for s in batch_norm(x, beta, method=method)[1:]))  # noqa: E731
  g = jax.jit(jax.grad(stats))(x)
  np.testing.assert_array_equal(g, 0.0)


def _plain_l2(x, beta):
  """Ordinary batch norm written independently: jnp.var and rsqrt."""
  axes = tuple(range(x.ndim - 1))
  return (x - x.mean(axis=axes)) * jax.lax.rsqrt(x.var(axis=axes) + EPS) + beta


@pytest.mark.parametrize("shape", SHAPES)
def test_standard_matches_reference_and_plain_autodiff(shape):
  x, beta, w = _data(shape, seed=5)
  y, mean, scale, dx, dbeta = _run(x, beta, w, method="standard")
  y_ref, mean_ref, scale_ref = ref.l2_bn_forward(x, beta, EPS)
  _close(y, y_ref, rtol=1e-4)
  _close(mean, mean_ref)
  _close(scale, scale_ref)
  # The pullback of w is the gradient of sum(y * w).
  loss = lambda x, b: jnp.sum(_plain_l2(x, b) * w)  # noqa: E731
  dx_want, dbeta_want = jax.jit(jax.grad(loss, (0, 1)))(x, beta)
  _close(dx, dx_want, rtol=2e-4)
  _close(dbeta, dbeta_want, rtol=2e-4)


@pytest.mark.parametrize("shape", [(10, 3), (2, 5, 7, 13)])
def test_proposed_keeps_only_packed_bits_and_float16_channel_stats(shape):
  x, beta, _ = _data(shape)
  res = saved_residuals(lambda x: batch_norm(x, beta, method="proposed")[0].sum(), x)
  assert res, "expected some residuals"
  c = shape[-1]
  for aval, origin in res:
    if aval.dtype == jnp.uint8:
      assert aval.shape == shape[:-1] + (-(-c // 8),), origin
    else:
      assert aval.dtype == jnp.float16 and aval.shape == (c,), (aval, origin)


@pytest.mark.parametrize("shape", [(10, 3), (2, 5, 7, 13)])
def test_standard_keeps_float32_per_example_tensors(shape):
  x, beta, _ = _data(shape)
  res = saved_residuals(lambda x: batch_norm(x, beta, method="standard")[0].sum(), x)
  assert any(a.dtype == jnp.float32 and a.shape == shape for a, _ in res), res


@pytest.mark.parametrize("shape", [(9, 17), (2, 5, 7, 13)])
def test_eval(shape):
  x, beta, _ = _data(shape)
  rng = np.random.default_rng(7)
  mean = rng.normal(size=shape[-1]).astype(np.float32)
  scale = rng.uniform(0.5, 2, size=shape[-1]).astype(np.float32)
  y = batch_norm_eval(x, beta, jnp.asarray(mean), jnp.asarray(scale))
  x64 = np.asarray(x, np.float64)
  _close(y, (x64 - mean) / scale + np.asarray(beta))


def test_eval_with_batch_statistics_reproduces_training_output():
  x, beta, dy = _data((2, 5, 7, 13))
  for method, gq in (("standard", None), ("proposed", "float16")):
    y, mean, scale, _, _ = _run(x, beta, dy, method=method, grad_quantizer=gq)
    _close(jax.jit(batch_norm_eval)(x, beta, mean, scale), y)


@pytest.mark.parametrize("method,gq", [("standard", None), ("proposed", "float16")])
@pytest.mark.parametrize("shape", [(9, 17), (2, 5, 7, 13)])
def test_constant_channel_gives_no_nan(method, gq, shape):
  x, beta, dy = _data(shape)
  x = x.at[..., 0].set(3.0)
  y, mean, scale, dx, dbeta = _run(x, beta, dy, method=method, grad_quantizer=gq)
  for a in (y, mean, scale, dx, dbeta):
    assert np.all(np.isfinite(a))
  np.testing.assert_allclose(y[..., 0], beta[0], atol=1e-6)


def test_bad_arguments_raise_clear_errors():
  x, beta, _ = _data((10, 3))
  with pytest.raises(ValueError, match=r"beta has shape \(4,\); expected \(3,\)"):
    batch_norm(x, jnp.zeros(4), method="proposed")
  with pytest.raises(ValueError, match="beta has shape"):
    batch_norm(x, jnp.zeros((1, 3)), method="standard")
  with pytest.raises(ValueError, match="at least 2 axes"):
    batch_norm(jnp.zeros(3), jnp.zeros(3), method="proposed")
  with pytest.raises(ValueError, match="method='l1'"):
    batch_norm(x, beta, method="l1")
  with pytest.raises(ValueError, match="standard method keeps float32"):
    batch_norm(x, beta, method="standard", grad_quantizer="float16")
  with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
    batch_norm(x, beta, method="proposed", grad_quantizer="nope")
  with pytest.raises(ValueError, match="eps"):
    batch_norm(x, beta, method="proposed", eps=-1.0)
  with pytest.raises(ValueError, match="scale has shape"):
    batch_norm_eval(x, beta, jnp.zeros(3), jnp.ones(5))
  with pytest.raises(ValueError, match="at least 2 axes"):
    batch_norm_eval(jnp.zeros(3), beta, beta, beta)


def test_jit_matches_eager():
  """Every other test runs jitted; this one checks the eager path of the custom_vjp."""
  x, beta, dy = _data((9, 17), seed=8)
  (y, mean, scale), pullback = jax.vjp(
      lambda x, b: batch_norm(x, b, method="proposed"), x, beta)
  dx, dbeta = pullback((dy, jnp.zeros_like(mean), jnp.zeros_like(scale)))
  for a, b in zip((y, mean, scale, dx, dbeta),
                  _run(x, beta, dy, method="proposed", grad_quantizer="float16")):
    _close(a, b)


@pytest.mark.parametrize("method,gq", [("standard", None), ("proposed", "float16")])
def test_vmap_normalises_each_group_separately(method, gq):
  xs, beta, dys = _data((3, 9, 17), seed=9)  # 3 groups of (9, 17)
  f = lambda x, dy: _run(x, beta, dy, method=method, grad_quantizer=gq)  # noqa: E731
  batched = jax.jit(jax.vmap(f))(xs, dys)
  for i in range(3):
    for a, b in zip(batched, f(xs[i], dys[i])):
      _close(a[i], b)


def test_stochastic_gradient_quantizer_needs_and_uses_a_key():
  q = quantizers.get("po2(rounding='stochastic')", "gradient")
  assert q.stochastic
  x, beta, dy = _data((9, 17))
  y = batch_norm(x, beta, method="proposed", grad_quantizer=q)[0]  # no gradient: no key
  np.testing.assert_array_equal(y, batch_norm(x, beta, method="proposed")[0])
  with pytest.raises(ValueError, match="needs a PRNG `key`"):
    jax.vjp(lambda x: batch_norm(x, beta, method="proposed", grad_quantizer=q)[0], x)

  @jax.jit
  def dx(key):
    f = lambda x: batch_norm(x, beta, method="proposed", grad_quantizer=q, key=key)[0]  # noqa: E731
    return jax.vjp(f, x)[1](dy)[0]

  d = dx(jax.random.PRNGKey(0))
  assert np.all(np.isfinite(d))
  np.testing.assert_array_equal(d, dx(jax.random.PRNGKey(0)))
