"""binary_dense against the NumPy reference (tests/reference/dense_conv.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import quantizers
from bnn.ops import binary_dense
from tests.reference import dense_conv as ref

TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(seed, batch_shape, n_in, n_out, first_layer):
  """x (+-1 unless first_layer), latent w with exact zeros and |w| > 1 entries, dy."""
  rng = np.random.default_rng(seed)
  if first_layer:
    x = rng.uniform(-1, 1, batch_shape + (n_in,))
  else:
    x = rng.choice([-1.0, 1.0], batch_shape + (n_in,))
  w = rng.uniform(-1.5, 1.5, (n_in, n_out))
  w.flat[::3] = 0.0  # sign(0) = +1
  dy = rng.normal(size=batch_shape + (n_out,))
  return (jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
          jnp.asarray(dy, jnp.float32))


@functools.partial(jax.jit, static_argnames=("method", "first_layer", "grad_quantizer"))
def _vjp(x, w, dy, key=None, *, method, first_layer=False, grad_quantizer=None):
  """(y, dx, dW), jitted: eager bit packing compiles many tiny programs."""
  y, vjp = jax.vjp(lambda x, w: binary_dense(x, w, method=method, first_layer=first_layer,
                                             grad_quantizer=grad_quantizer, key=key), x, w)
  return (y, *vjp(dy))


def _float_formulation(x, w):
  """The standard method written out: sign(W) forward, the clip STE backward."""
  w_in = jnp.where(jnp.abs(w) <= 1, w, jax.lax.stop_gradient(w))
  wb = w_in + jax.lax.stop_gradient(jnp.where(w >= 0, 1.0, -1.0) - w_in)
  return x @ wb


@jax.jit
def _vjp_float(x, w, dy):
  y, vjp = jax.vjp(_float_formulation, x, w)
  return (y, *vjp(dy))


SHAPES = [((4,), 1, 3), ((4,), 5, 1), ((3,), 13, 17), ((2, 3), 17, 8), ((5,), 16, 5)]


@pytest.mark.parametrize("batch_shape,n_in,n_out,first_layer",
                         [s + (False,) for s in SHAPES] + [s + (True,) for s in SHAPES[2:4]])
def test_proposed_matches_reference(batch_shape, n_in, n_out, first_layer):
  x, w, dy = _inputs(0, batch_shape, n_in, n_out, first_layer)
  y, dx, dw = _vjp(x, w, dy, method="proposed", first_layer=first_layer)
  np.testing.assert_allclose(y, ref.dense_forward(x, w), **TOL)
  dx_ref, dw_ref, dw_raw_ref = ref.dense_backward_proposed(x, w, dy, first_layer=first_layer)
  np.testing.assert_allclose(dx, dx_ref, **TOL)
  assert dw.dtype == w.dtype
  ref.assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w)


@pytest.mark.parametrize("batch_shape,n_in,n_out", SHAPES)
def test_standard_matches_float_formulation_and_reference(batch_shape, n_in, n_out):
  x, w, dy = _inputs(1, batch_shape, n_in, n_out, first_layer=True)
  y, dx, dw = _vjp(x, w, dy, method="standard")
  y_f, dx_f, dw_f = _vjp_float(x, w, dy)
  np.testing.assert_allclose(y, y_f, **TOL)
  np.testing.assert_allclose(dx, dx_f, **TOL)
  np.testing.assert_allclose(dw, dw_f, **TOL)
  np.testing.assert_allclose(y, ref.dense_forward(x, w), **TOL)
  dx_ref, dw_ref = ref.dense_backward_standard(x, w, dy)
  np.testing.assert_allclose(dx, dx_ref, **TOL)
  np.testing.assert_allclose(dw, dw_ref, **TOL)


@pytest.mark.parametrize("rounding", ["float16", "bfloat16"])
@pytest.mark.parametrize("first_layer", [False, True])
def test_grad_quantizer_rounds_dy(rounding, first_layer):
  x, w, dy = _inputs(2, (6,), 13, 9, first_layer)
  dy = dy * 3.1
  _, dx, dw = _vjp(x, w, dy, method="proposed", first_layer=first_layer,
                   grad_quantizer=rounding)
  dx_ref, dw_ref, dw_raw_ref = ref.dense_backward_proposed(x, w, dy, first_layer=first_layer,
                                                           rounding=rounding)
  np.testing.assert_allclose(dx, dx_ref, **TOL)
  ref.assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w)
  dx_unrounded, _, _ = ref.dense_backward_proposed(x, w, dy, first_layer=first_layer)
  assert not np.allclose(dx, dx_unrounded, **TOL)  # the rounding is visible


def _batch_sized_floats(residuals, batch):
  return [(aval, why) for aval, why in residuals
          if aval.ndim and aval.shape[0] == batch and jnp.issubdtype(aval.dtype, jnp.floating)]


def test_proposed_keeps_input_packed():
  batch, n_in, n_out = 7, 13, 5
  x, w, _ = _inputs(3, (batch,), n_in, n_out, first_layer=False)
  loss = lambda method: lambda x, w: binary_dense(x, w, method=method).sum()
  residuals = saved_residuals(loss("proposed"), x, w)
  assert not _batch_sized_floats(residuals, batch), residuals
  assert any(aval.dtype == jnp.uint8 and aval.shape == (batch, 2) for aval, _ in residuals)
  # The check above would catch float32 activations: the standard method keeps x.
  assert _batch_sized_floats(saved_residuals(loss("standard"), x, w), batch)


def test_proposed_first_layer_keeps_nothing_new():
  x, w, _ = _inputs(3, (7,), 13, 5, first_layer=True)
  f = lambda x, w: binary_dense(x, w, method="proposed", first_layer=True).sum()
  for aval, why in saved_residuals(f, x, w):
    assert "argument" in why, (aval, why)  # only x and w themselves


@pytest.mark.parametrize("arg", ["grad_quantizer", "weight_grad_quantizer"])
def test_standard_rejects_gradient_quantizers(arg):
  x, w, _ = _inputs(4, (2,), 3, 2, first_layer=True)
  with pytest.raises(ValueError, match="standard"):
    binary_dense(x, w, method="standard", **{arg: "float16"})


def _stochastic_quantizer():
  q = quantizers.get("po2(rounding='stochastic')", "gradient")
  assert q.stochastic
  return q


def test_stochastic_quantizer_needs_key():
  q = _stochastic_quantizer()
  x, w, dy = _inputs(5, (4,), 5, 3, first_layer=False)
  np.testing.assert_array_equal(binary_dense(x, w, method="proposed", grad_quantizer=q),  # no gradient: no key
                                binary_dense(x, w, method="proposed"))
  with pytest.raises(ValueError, match="needs a PRNG `key` to take gradients"):
    jax.vjp(lambda x: binary_dense(x, w, method="proposed", grad_quantizer=q), x)
  key = jax.random.key(0)
  _, dx, dw = _vjp(x, w, dy, key, method="proposed", grad_quantizer=q)
  assert np.all(np.isfinite(dx)) and np.all(np.abs(dw) <= 1)
  _, dx_other_key, _ = _vjp(x, w, dy, jax.random.key(1), method="proposed", grad_quantizer=q)
  assert not np.array_equal(dx, dx_other_key)  # the key drives the rounding


def test_bad_method_and_shapes():
  x, w, _ = _inputs(6, (2,), 3, 2, first_layer=True)
  with pytest.raises(ValueError, match="method='nope'"):
    binary_dense(x, w, method="nope")
  with pytest.raises(ValueError, match=r"\(2, 4\)"):
    binary_dense(jnp.zeros((2, 4)), w, method="proposed")
  with pytest.raises(ValueError, match=r"\(3, 2, 1\)"):
    binary_dense(x, jnp.zeros((3, 2, 1)), method="standard")


@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_jit_and_vmap(method):
  x, w, dy = _inputs(7, (3, 4), 13, 6, first_layer=False)  # 3 independent layers
  ws = jnp.stack([w, -w, 2 * w])

  def grads(x, w, dy):
    y, vjp = jax.vjp(lambda x, w: binary_dense(x, w, method=method), x, w)
    return (y, *vjp(dy))

  eager = grads(x[0], ws[0], dy[0])
  jitted = jax.jit(grads)(x[0], ws[0], dy[0])
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, **TOL)
  batched = jax.jit(jax.vmap(grads))(x, ws, dy)
  for i in range(3):
    for a, b in zip(jitted if i == 0 else jax.jit(grads)(x[i], ws[i], dy[i]), batched):
      np.testing.assert_allclose(a, b[i], **TOL)
