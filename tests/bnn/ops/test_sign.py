"""bnn.ops.sign_activation: sign with the straight-through gradient, both methods."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import quantizers
from bnn.ops import sign_activation
from tests.reference import norm_sign_pool as ref

SHAPES = [(16, 1), (9, 17), (2, 5, 7, 13), (2, 3, 3, 3)]


def _data(shape, seed=0):
  """Values spread over [-2, 2], with exact 0 and +-1 (the STE boundary) mixed in."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2, 2, size=shape)
  special = rng.choice([0.0, 1.0, -1.0, 0.9999999, -1.0000001], size=shape)
  x = np.where(rng.random(size=shape) < 0.2, special, x)
  return jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=shape), jnp.float32)


def _run(x, dy, method, quantizer="ste_sign"):
  return _run_jit(x, dy, method, quantizer)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _run_jit(x, dy, method, quantizer):
  y, pullback = jax.vjp(lambda x: sign_activation(x, method=method, quantizer=quantizer), x)
  return y, pullback(dy)[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_matches_reference(shape, method):
  x, dy = _data(shape)
  y, dx = _run(x, dy, method=method)
  np.testing.assert_array_equal(y, ref.ste_sign_forward(x))
  np.testing.assert_array_equal(dx, ref.ste_sign_backward(x, dy))


@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_sign_of_zero_is_plus_one_and_mask_is_inclusive(method):
  x = jnp.array([[0.0, -0.0, 1.0, -1.0, 1.5, -1.5]])
  y, dx = _run(x, jnp.ones_like(x), method=method)
  np.testing.assert_array_equal(y, [[1, 1, 1, -1, 1, -1]])
  np.testing.assert_array_equal(dx, [[1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("shape", [(9, 17), (2, 5, 7, 13)])
def test_proposed_equals_standard_for_other_clip(shape):
  """standard = autodiff through the quantizer itself; proposed must agree."""
  x, dy = _data(shape, seed=1)
  q = "ste_sign(clip=0.5)"
  y_std, dx_std = _run(x, dy, method="standard", quantizer=q)
  y_new, dx_new = _run(x, dy, method="proposed", quantizer=q)
  np.testing.assert_array_equal(y_new, y_std)
  np.testing.assert_array_equal(dx_new, dx_std)
  np.testing.assert_array_equal(dx_new, ref.ste_sign_backward(x, dy, clip=0.5))


def test_accepts_quantizer_object():
  x, dy = _data((9, 17), seed=2)
  q = quantizers.get("ste_sign")
  np.testing.assert_array_equal(_run(x, dy, method="proposed", quantizer=q)[1],
                                _run(x, dy, method="proposed")[1])


@pytest.mark.parametrize("shape", [(9, 17), (2, 5, 7, 13)])
def test_proposed_keeps_only_packed_mask(shape):
  x, _ = _data(shape)
  res = saved_residuals(lambda x: sign_activation(x, method="proposed").sum(), x)
  assert [(a.dtype, a.shape) for a, _ in res] == [(jnp.uint8, shape[:-1] + (-(-shape[-1] // 8),))]


@pytest.mark.parametrize("shape", [(9, 17), (2, 5, 7, 13)])
def test_standard_keeps_float32_per_example_tensor(shape):
  x, _ = _data(shape)
  res = saved_residuals(lambda x: sign_activation(x, method="standard").sum(), x)
  assert any(a.dtype == jnp.float32 and a.shape == shape for a, _ in res), res


@dataclasses.dataclass(frozen=True)
class _NotBinary(quantizers.ForwardQuantizer):
  name = "test_not_binary"  # deliberately not registered

  def __call__(self, x):
    return jnp.clip(x, -1, 1)


@dataclasses.dataclass(frozen=True)
class _NoMask(quantizers.ForwardQuantizer):
  name = "test_no_mask"
  binary = True

  def __call__(self, x):
    return quantizers.sign(x)


@pytest.mark.parametrize("q", [_NotBinary(), _NoMask()])
def test_proposed_rejects_quantizers_without_1_bit_mask(q):
  x, _ = _data((9, 17))
  with pytest.raises(ValueError, match=rf"{q.name}.*qualify: .*ste_sign"):
    sign_activation(x, method="proposed", quantizer=q)
  # The standard method uses the quantizer by autodiff, whatever it is.
  assert sign_activation(x, method="standard", quantizer=q).shape == x.shape


def test_bad_arguments_raise_clear_errors():
  x, _ = _data((9, 17))
  with pytest.raises(ValueError, match="method='both'"):
    sign_activation(x, method="both")
  with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
    sign_activation(x, method="proposed", quantizer="nope")
  with pytest.raises(ValueError, match="gradient quantizer where a forward quantizer"):
    sign_activation(x, method="proposed", quantizer="float16")


def test_jit_matches_eager_and_vmap_works():
  x, dy = _data((3, 9, 13), seed=3)
  y, pullback = jax.vjp(lambda x: sign_activation(x, method="proposed"), x)
  np.testing.assert_array_equal(pullback(dy)[0], _run(x, dy, method="proposed")[1])
  y_v, dx_v = jax.jit(jax.vmap(lambda x, dy: _run(x, dy, "proposed")))(x, dy)
  np.testing.assert_array_equal(y_v, ref.ste_sign_forward(x))
  np.testing.assert_array_equal(dx_v, ref.ste_sign_backward(x, dy))


def test_scalar_input():
  for x in (jnp.float32(0.5), jnp.float32(-3.0)):
    y, dx = _run(x, jnp.float32(2.0), method="proposed")
    assert y == ref.ste_sign_forward(x) and dx == ref.ste_sign_backward(x, 2.0)
