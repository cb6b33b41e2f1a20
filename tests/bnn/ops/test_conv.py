"""binary_conv against the NumPy reference (tests/reference/dense_conv.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import quantizers
from bnn.ops import binary_conv
from bnn.ops import conv as conv_module
from tests.reference import dense_conv as ref

TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(seed, x_shape, kernel, c_out, strides, padding, first_layer):
  """x (+-1 unless first_layer), latent w with exact zeros and |w| > 1 entries, dy."""
  rng = np.random.default_rng(seed)
  if first_layer:
    x = rng.uniform(-1, 1, x_shape)
  else:
    x = rng.choice([-1.0, 1.0], x_shape)
  w = rng.uniform(-1.5, 1.5, tuple(kernel) + (x_shape[3], c_out))
  w.flat[::3] = 0.0  # sign(0) = +1
  y_shape = ref.conv_forward(x, w, strides, padding).shape
  dy = rng.normal(size=y_shape)
  return (jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
          jnp.asarray(dy, jnp.float32))


@functools.partial(jax.jit, static_argnames=("method", "strides", "padding", "first_layer",
                                             "grad_quantizer"))
def _vjp(x, w, dy, key=None, *, method, strides=1, padding="SAME", first_layer=False,
         grad_quantizer=None):
  """(y, dx, dW), jitted: eager bit packing compiles many tiny programs."""
  op = functools.partial(binary_conv, method=method, strides=strides, padding=padding,
                         first_layer=first_layer, grad_quantizer=grad_quantizer, key=key)
  y, vjp = jax.vjp(op, x, w)
  return (y, *vjp(dy))


@functools.partial(jax.jit, static_argnames=("strides", "padding"))
def _vjp_standard_and_float(x, w, dy, *, strides, padding):
  """(y, dx, dW) of method="standard" and of the standard method written out here:
  sign(W) forward, the clip STE backward, jax.lax's own strides and padding."""
  lax_strides = (strides, strides) if isinstance(strides, int) else strides
  lax_padding = ((padding, padding),) * 2 if isinstance(padding, int) else padding

  def conv(x, w):
    w_in = jnp.where(jnp.abs(w) <= 1, w, jax.lax.stop_gradient(w))
    wb = w_in + jax.lax.stop_gradient(jnp.where(w >= 0, 1.0, -1.0) - w_in)
    return jax.lax.conv_general_dilated(x, wb, lax_strides, lax_padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  y, vjp = jax.vjp(conv, x, w)
  return _vjp(x, w, dy, method="standard", strides=strides, padding=padding), (y, *vjp(dy))


# (x shape NHWC, kernel (kh, kw), c_out, strides, padding)
CASES = [
    ((2, 7, 9, 5), (1, 1), 3, 1, "SAME"),
    ((2, 7, 9, 13), (3, 3), 4, 1, "SAME"),
    ((2, 7, 9, 1), (3, 3), 5, 2, "SAME"),
    ((1, 7, 9, 17), (5, 5), 2, 1, "VALID"),
    ((2, 7, 9, 5), (5, 5), 3, 2, "SAME"),
    ((2, 7, 9, 8), (3, 3), 3, 2, "VALID"),
    ((2, 7, 9, 3), (3, 3), 4, 1, 1),
    ((2, 7, 9, 5), (2, 3), 3, (2, 1), ((1, 0), (2, 1))),
    ((2, 8, 6, 9), (1, 3), 3, (1, 2), "SAME"),
    ((2, 7, 9, 5), (3, 1), 2, 2, 2),
    ((1, 5, 5, 3), (5, 5), 2, 1, "VALID"),  # the kernel covers the whole input
    ((3, 6, 5, 7), (3, 3), 3, 1, "SAME"),  # an odd batch: weight-gradient slices of 2 and 1
]


def _params(cases, first_layer=None):
  """pytest params with readable ids; the geometry does not depend on first_layer, so
  the first-layer variant (real x, nothing packed) runs on a subset to keep this fast."""
  out = []
  for c in cases:
    name = f"x{'x'.join(map(str, c[0]))}-k{c[1][0]}x{c[1][1]}-s{c[3]}-p{c[4]}".replace(" ", "")
    for fl in ([] if first_layer is None else [first_layer]):
      out.append(pytest.param(*c, fl, id=f"{name}-{'first' if fl else 'pm1'}"))
    if first_layer is None:
      out.append(pytest.param(*c, id=name))
  return out


PROPOSED = _params(CASES, False) + _params([CASES[i] for i in (2, 4, 7, 10, 11)], True)
STANDARD = _params([CASES[i] for i in (0, 2, 3, 4, 6, 7, 8)])


@pytest.mark.parametrize("x_shape,kernel,c_out,strides,padding,first_layer", PROPOSED)
def test_proposed_matches_reference(x_shape, kernel, c_out, strides, padding, first_layer):
  x, w, dy = _inputs(0, x_shape, kernel, c_out, strides, padding, first_layer)
  y, dx, dw = _vjp(x, w, dy, method="proposed", strides=strides, padding=padding,
                   first_layer=first_layer)
  np.testing.assert_allclose(y, ref.conv_forward(x, w, strides, padding), **TOL)
  dx_ref, dw_ref, dw_raw_ref = ref.conv_backward_proposed(x, w, dy, strides, padding,
                                                          first_layer=first_layer)
  np.testing.assert_allclose(dx, dx_ref, **TOL)
  assert dw.dtype == w.dtype
  ref.assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w)


@pytest.mark.parametrize("x_shape,kernel,c_out,strides,padding", STANDARD)
def test_standard_matches_float_formulation_and_reference(x_shape, kernel, c_out, strides,
                                                           padding):
  x, w, dy = _inputs(1, x_shape, kernel, c_out, strides, padding, first_layer=True)
  (y, dx, dw), expected = _vjp_standard_and_float(x, w, dy, strides=strides, padding=padding)
  for a, b in zip((y, dx, dw), expected):
    np.testing.assert_allclose(a, b, **TOL)
  np.testing.assert_allclose(y, ref.conv_forward(x, w, strides, padding), **TOL)
  dx_ref, dw_ref = ref.conv_backward_standard(x, w, dy, strides, padding)
  np.testing.assert_allclose(dx, dx_ref, **TOL)
  np.testing.assert_allclose(dw, dw_ref, **TOL)


@pytest.mark.parametrize("rounding", ["float16", "bfloat16"])
@pytest.mark.parametrize("first_layer", [False, True])
def test_grad_quantizer_rounds_dy(rounding, first_layer):
  x, w, dy = _inputs(2, (2, 5, 7, 13), (3, 3), 9, 1, "SAME", first_layer)
  dy = dy * 3.1
  _, dx, dw = _vjp(x, w, dy, method="proposed", first_layer=first_layer,
                   grad_quantizer=rounding)
  dx_ref, dw_ref, dw_raw_ref = ref.conv_backward_proposed(x, w, dy, first_layer=first_layer,
                                                          rounding=rounding)
  np.testing.assert_allclose(dx, dx_ref, **TOL)
  ref.assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w)
  dx_unrounded, _, _ = ref.conv_backward_proposed(x, w, dy, first_layer=first_layer)
  assert not np.allclose(dx, dx_unrounded, **TOL)  # the rounding is visible


def _batch_sized_floats(residuals, batch):
  return [(aval, why) for aval, why in residuals
          if aval.ndim and aval.shape[0] == batch and jnp.issubdtype(aval.dtype, jnp.floating)]


def test_proposed_keeps_input_packed():
  batch, c_in = 6, 13
  x, w, _ = _inputs(3, (batch, 5, 7, c_in), (3, 3), 4, 1, "SAME", first_layer=False)
  loss = lambda method: lambda x, w: binary_conv(x, w, method=method).sum()
  residuals = saved_residuals(loss("proposed"), x, w)
  assert not _batch_sized_floats(residuals, batch), residuals
  assert any(aval.dtype == jnp.uint8 and aval.shape == (batch, 5, 7, 2)
             for aval, _ in residuals), residuals
  # The check above would catch float32 activations: the standard method keeps x.
  assert _batch_sized_floats(saved_residuals(loss("standard"), x, w), batch)


def test_weight_gradient_in_slices_needs_fewer_temporaries(monkeypatch):
  """The proposed backward sums dW over slices of the batch (conv.WEIGHT_GRAD_SLICES):
  XLA's transposed copies of x and dy are then a slice's, not the batch's."""
  x = jax.ShapeDtypeStruct((16, 16, 16, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)

  def temporaries():
    def step(x, w, dy):
      y, vjp = jax.vjp(lambda x, w: binary_conv(x, w, method="proposed"), x, w)
      return vjp(2 * dy)  # a dy computed in the step, as a layer above would
    return jax.jit(step).lower(x, w, x).compile().memory_analysis().temp_size_in_bytes

  sliced = temporaries()
  monkeypatch.setattr(conv_module, "WEIGHT_GRAD_SLICES", 1)
  whole = temporaries()
  assert sliced < 0.9 * whole, (sliced, whole)


def test_proposed_first_layer_keeps_nothing_new():
  x, w, _ = _inputs(3, (6, 5, 7, 3), (3, 3), 4, 1, "SAME", first_layer=True)
  f = lambda x, w: binary_conv(x, w, method="proposed", first_layer=True).sum()
  for aval, why in saved_residuals(f, x, w):
    assert "argument" in why, (aval, why)  # only x and w themselves


@pytest.mark.parametrize("arg", ["grad_quantizer", "weight_grad_quantizer"])
def test_standard_rejects_gradient_quantizers(arg):
  x, w, _ = _inputs(4, (1, 3, 3, 2), (1, 1), 2, 1, "SAME", first_layer=True)
  with pytest.raises(ValueError, match="standard"):
    binary_conv(x, w, method="standard", **{arg: "float16"})


def test_stochastic_quantizer_needs_key():
  q = quantizers.get("po2(rounding='stochastic')", "gradient")
  assert q.stochastic
  x, w, dy = _inputs(5, (2, 5, 5, 3), (3, 3), 2, 1, "SAME", first_layer=False)
  np.testing.assert_array_equal(binary_conv(x, w, method="proposed", grad_quantizer=q),  # no gradient: no key
                                binary_conv(x, w, method="proposed"))
  with pytest.raises(ValueError, match="needs a PRNG `key` to take gradients"):
    jax.vjp(lambda x: binary_conv(x, w, method="proposed", grad_quantizer=q), x)
  key = jax.random.key(0)
  _, dx, dw = _vjp(x, w, dy, key, method="proposed", grad_quantizer=q)
  assert np.all(np.isfinite(dx)) and np.all(np.abs(dw) <= 1)
  _, dx_other_key, _ = _vjp(x, w, dy, jax.random.key(1), method="proposed", grad_quantizer=q)
  assert not np.array_equal(dx, dx_other_key)  # the key drives the rounding


@pytest.mark.parametrize("x_shape,w_shape,kwargs,match", [
    ((7, 9, 3), (3, 3, 3, 4), {}, r"x has shape \(7, 9, 3\); expected 4-D NHWC"),
    ((2, 7, 9, 3), (3, 3, 4), {}, r"w has shape \(3, 3, 4\); expected 4-D HWIO"),
    ((2, 7, 9, 3), (3, 3, 5, 4), {}, r"x has 3 channels .* c_in=5"),
    ((2, 4, 9, 3), (5, 3, 3, 4), {"padding": "VALID"}, r"kernel height 5 .* 4 \+ 0 \+ 0"),
    ((2, 7, 4, 3), (3, 6, 3, 4), {"padding": ((1, 1), (0, 1))}, r"kernel width 6 .* = 5"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"strides": 0}, r"strides=0"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"strides": (1, -2)}, r"strides=\(1, -2\)"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"strides": 1.5}, r"strides=1.5"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"padding": "FULL"}, r"padding='FULL'"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"padding": -1}, r"padding=-1"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"padding": (1, 1)}, r"padding=\(1, 1\)"),
    ((2, 7, 9, 3), (3, 3, 3, 4), {"method": "nope"}, r"method='nope'"),
])
def test_bad_arguments(x_shape, w_shape, kwargs, match):
  kwargs = {"method": "proposed", **kwargs}
  with pytest.raises(ValueError, match=match):
    binary_conv(jnp.zeros(x_shape), jnp.zeros(w_shape), **kwargs)


@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_jit_and_vmap(method):
  # 3 independent layers, each with its own input, weights and cotangent (eager
  # use is covered by the saved_residuals and error tests, jit by all the others).
  x, w, dy = _inputs(7, (3 * 2, 5, 7, 13), (3, 3), 4, 2, "SAME", first_layer=False)
  x, dy = x.reshape((3, 2) + x.shape[1:]), dy.reshape((3, 2) + dy.shape[1:])
  ws = jnp.stack([w, -w, 2 * w])

  def grads(x, w, dy):
    y, vjp = jax.vjp(lambda x, w: binary_conv(x, w, method=method, strides=2), x, w)
    return (y, *vjp(dy))

  jitted = [jax.jit(grads)(x[i], ws[i], dy[i]) for i in range(3)]
  batched = jax.jit(jax.vmap(grads))(x, ws, dy)
  for i in range(3):
    for a, b in zip(jitted[i], batched):
      np.testing.assert_allclose(a, b[i], **TOL)
