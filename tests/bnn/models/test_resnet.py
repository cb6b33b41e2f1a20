"""ResNetE-18 and Bi-Real-18, and the two op extensions Bi-Real needs in the proposed
method: the 8-bit derivative of approx_sign / swish_sign and the magnitude-aware
weight sign of binary_conv / binary_dense.

Parameter counts and shapes are checked at full size with jax.eval_shape (no
compute). The training steps run at 32x32 on a shallow variant (two blocks in each of
two stages: every kind of block and shortcut, half the compile time of the full
depth, which repeats the same blocks).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import quantizers
from bnn.models import registry, resnet
from tests.bnn.models import common
from bnn.ops import binary_conv, binary_dense, sign_activation
from bnn.ops.sign import derivative_codec
from tests.reference import dense_conv as ref

MODELS = [resnet.ResNetE18, resnet.BiRealNet18]
SHALLOW = dict(stem_features=16, stages=((16, 2), (32, 2)))
# Compiling the two training steps takes ~10-15 s per model on 2 cores, so
# ResNetE-18's are marked slow: Bi-Real-18 runs the same blocks and shortcuts.
STEP_MODELS = [pytest.param(resnet.ResNetE18, marks=pytest.mark.slow), resnet.BiRealNet18]
BATCH = 4


def _expected_params(num_classes: int) -> int:
  """Hand count of ResNet-18 with one binary conv per block: kernels (no conv biases),
  one BN beta per channel (BN has no gamma), and the classifier's kernel and bias."""
  def block(c_in, c_out):  # binary 3x3 conv + BN
    return 3 * 3 * c_in * c_out + c_out

  def shortcut(c_in, c_out):  # AvgPool -> real 1x1 conv + BN
    return c_in * c_out + c_out

  return sum([
      7 * 7 * 3 * 64 + 64,                                          # stem conv + BN
      4 * block(64, 64),                                            # stage 1
      block(64, 128) + shortcut(64, 128) + 3 * block(128, 128),     # stage 2
      block(128, 256) + shortcut(128, 256) + 3 * block(256, 256),   # stage 3
      block(256, 512) + shortcut(256, 512) + 3 * block(512, 512),   # stage 4
      512 * num_classes + num_classes,                              # Dense
  ])


def test_registered():
  assert registry()["resnete18"] is resnet.ResNetE18
  assert registry()["birealnet18"] is resnet.BiRealNet18


def _shapes(model, x_shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x_shape), train=False))


@pytest.mark.parametrize("cls", MODELS)
def test_imagenet_parameter_count_and_shapes(cls):
  model = cls(num_classes=1000)
  shapes = _shapes(model, (2, 224, 224, 3))
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
  # larq-zoo's Keras BinaryResNetE18 reports 11 699 368: the same kernels and Dense,
  # 4 numbers per BN channel (gamma, beta, moving mean and variance) instead of beta
  # only, and one more BN (64 channels) after the stem's max pool.
  assert count == _expected_params(1000) == 11_684_712
  params = shapes["params"]
  assert params["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  assert params["stage2_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 128)
  assert "shortcut_conv" not in params["stage2_block2"]
  assert params["stage4_block4"]["binary_conv"]["kernel"].shape == (3, 3, 512, 512)
  assert params["classifier"]["bias"].shape == (1000,)
  for size in (224, 32):
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes,
                         jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    assert out.shape == (2, 1000)


def test_quantizer_defaults():
  e, b = resnet.ResNetE18(), resnet.BiRealNet18()
  assert (e.activation, e.weight_quantizer, e.relu) == ("ste_sign", "ste_sign", True)
  assert (b.activation, b.weight_quantizer, b.relu) == ("approx_sign",
                                                        "magnitude_aware_sign", False)


@functools.lru_cache(maxsize=None)
def _steps(cls):
  """Per method: (loss, logits, gradients, eval logits) of the shallow variant, one
  jitted program per method, on the same variables and batch."""
  x = jax.random.uniform(jax.random.key(2), (BATCH, 32, 32, 3), minval=-1, maxval=1)
  labels = jnp.arange(BATCH) % 10
  return common.one_step_per_method(
      lambda method: cls(num_classes=10, method=method, **SHALLOW), x, labels)


@pytest.mark.parametrize("method", ["standard", "proposed"])
@pytest.mark.parametrize("cls", STEP_MODELS)
def test_training_step_gives_finite_gradients(cls, method):
  variables, out = _steps(cls)
  loss, logits, grads, _, _ = jax.device_get(out[method])  # NumPy from here on
  assert logits.shape == (BATCH, 10) and np.isfinite(loss)
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("cls", STEP_MODELS)
def test_eval_logits_identical_for_both_methods(cls):
  _, out = _steps(cls)
  np.testing.assert_array_equal(out["proposed"][-1], out["standard"][-1])


# ----------------------------------------------------------------- 8-bit derivative


def _sign_inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.5, 1.5, size=shape)
  special = rng.choice([0.0, -0.0, 1.0, -1.0, 0.5, -0.25, 1e-3], size=shape)
  x = np.where(rng.random(size=shape) < 0.2, special, x)
  return jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=shape), jnp.float32)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sign_vjp(x, dy, method, quantizer):
  y, pullback = jax.vjp(lambda x: sign_activation(x, method=method, quantizer=quantizer), x)
  return y, pullback(dy)[0]


def test_codec_of_approx_sign_is_documented():
  codec = derivative_codec(quantizers.get("approx_sign"))
  assert codec.zero == 0 and codec.step == 2 / 255 and codec.max_error == 1 / 255
  codec = derivative_codec(quantizers.get("swish_sign"))
  assert codec.zero == 18 and codec.step == pytest.approx(5 / 237)
  lo, hi = quantizers.get("swish_sign").ste_grad_range()
  assert -codec.zero * codec.step <= lo and (255 - codec.zero) * codec.step >= hi


@pytest.mark.parametrize("spec", ["approx_sign", "swish_sign", "swish_sign(beta=2.0)"])
def test_ste_grad_range_is_tight(spec):
  q = quantizers.get(spec)
  lo, hi = q.ste_grad_range()
  g32 = q.ste_grad(jnp.linspace(-8, 8, 400_001, dtype=jnp.float32))
  g = np.asarray(g32, np.float64)
  tol = 1e-6 * (hi - lo)  # the range is exact in real arithmetic; g is float32
  assert abs(g.min() - lo) <= tol and abs(g.max() - hi) <= tol
  # Over the whole range, the 8-bit round trip is within the documented error.
  codec = derivative_codec(q)
  back = np.asarray(codec.decode(codec.encode(g32), jnp.float32), np.float64)
  assert np.max(np.abs(back - g)) <= codec.max_error * (1 + 1e-5)


@pytest.mark.parametrize("spec", ["approx_sign", "swish_sign", "swish_sign(beta=2.0)"])
def test_graded_sign_backward_is_the_quantized_derivative(spec):
  q = quantizers.get(spec)
  codec = derivative_codec(q)
  x, dy = _sign_inputs((3, 5, 7, 11))
  y, dx = _sign_vjp(x, dy, "proposed", spec)
  y_std, dx_exact = _sign_vjp(x, dy, "standard", spec)   # autodiff: dy * exact derivative
  np.testing.assert_array_equal(y, y_std)
  np.testing.assert_array_equal(y, ref.sign(x))
  g = np.asarray(q.ste_grad(x), np.float64)
  expected = np.asarray(dy, np.float64) * ref.quantized_derivative(g, codec.step, codec.zero)
  # The same formula, up to float32 rounding; a code may differ by one only where
  # g / step is within float rounding of a rounding tie (x.5).
  frac = np.abs(g / codec.step - np.floor(g / codec.step) - 0.5)
  near_tie = frac < 1e-4
  close = np.isclose(dx, expected, rtol=1e-6, atol=1e-7)
  assert np.all(close | near_tie), np.argwhere(~(close | near_tie))[:5]
  # Within the documented error of the exact derivative.
  dy64 = np.abs(np.asarray(dy, np.float64))
  err = np.abs(np.asarray(dx, np.float64) - np.asarray(dx_exact, np.float64))
  assert np.all(err <= dy64 * codec.max_error * (1 + 1e-5) + 1e-6)
  # The derivative is 0 outside |x| <= 1 for approx_sign: exactly 0 here too.
  if spec == "approx_sign":
    assert np.all(np.asarray(dx)[np.abs(np.asarray(x)) >= 1] == 0)


def test_graded_sign_keeps_one_byte_per_element():
  x, _ = _sign_inputs((2, 5, 7, 13))
  res = saved_residuals(lambda x: sign_activation(x, method="proposed",
                                                  quantizer="approx_sign").sum(), x)
  assert [(a.dtype, a.shape) for a, _ in res] == [(jnp.uint8, x.shape)]


# ----------------------------------------------------------------- magnitude-aware sign

CONV_CASES = [  # (x shape NHWC, kernel, c_out, strides, padding, first_layer)
    ((2, 7, 9, 5), (3, 3), 4, 1, "SAME", False),
    ((2, 7, 9, 6), (3, 3), 5, 2, "SAME", False),
    ((2, 8, 6, 3), (3, 3), 4, 1, "VALID", True),
    ((2, 6, 6, 4), (1, 1), 3, 2, "SAME", False),
]


def _conv_inputs(x_shape, kernel, c_out, strides, padding, first_layer, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, x_shape) if first_layer else rng.choice([-1.0, 1.0], x_shape)
  w = rng.uniform(-1.5, 1.5, tuple(kernel) + (x_shape[3], c_out))
  w.flat[::5] = 0.0
  dy = rng.normal(size=ref.conv_forward_magnitude_aware(x, w, strides, padding).shape)
  return tuple(jnp.asarray(a, jnp.float32) for a in (x, w, dy))


@functools.partial(jax.jit, static_argnames=("method", "strides", "padding", "first_layer",
                                             "weight_grad_quantizer"))
def _conv_vjp(x, w, dy, *, method, strides, padding, first_layer, weight_grad_quantizer=None):
  op = functools.partial(binary_conv, method=method, strides=strides, padding=padding,
                         first_layer=first_layer, weight_quantizer="magnitude_aware_sign",
                         weight_grad_quantizer=weight_grad_quantizer)
  y, vjp = jax.vjp(op, x, w)
  return (y, *vjp(dy))


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_magnitude_aware_conv_matches_reference(case):
  x_shape, kernel, c_out, strides, padding, first_layer = case
  x, w, dy = _conv_inputs(*case)
  geometry = dict(strides=strides, padding=padding)
  y_ref = ref.conv_forward_magnitude_aware(x, w, **geometry)
  dx_ref, dw_ref, dw_raw_ref = ref.conv_backward_proposed_magnitude_aware(
      x, w, dy, first_layer=first_layer, **geometry)
  y, dx, dw = _conv_vjp(x, w, dy, method="proposed", first_layer=first_layer, **geometry)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  ref.assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w)
  # With the identity weight-gradient quantizer, the raw gradient alpha * corr(sign(x),
  # dy) comes through exactly (zeroed where |W| > 1, rounded to float16).
  _, _, dw_id = _conv_vjp(x, w, dy, method="proposed", first_layer=first_layer,
                          weight_grad_quantizer="identity", **geometry)
  expected = np.where(np.abs(w) <= 1, dw_raw_ref, 0).astype(np.float16)
  np.testing.assert_allclose(dw_id, expected, rtol=2e-3, atol=1e-5)
  # The standard method: autodiff of magnitude_aware_sign, the same forward.
  y_std, dx_std, dw_std = _conv_vjp(x, w, dy, method="standard", first_layer=first_layer,
                                    **geometry)
  dx_sref, dw_sref = ref.conv_backward_standard_magnitude_aware(x, w, dy, **geometry)
  np.testing.assert_array_equal(y_std, y)
  np.testing.assert_allclose(dx_std, dx_sref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw_std, dw_sref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first_layer", [False, True])
def test_magnitude_aware_dense_matches_reference(first_layer):
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (6, 13)) if first_layer else rng.choice([-1.0, 1.0], (6, 13))
  w = rng.uniform(-1.5, 1.5, (13, 7))
  dy = rng.normal(size=(6, 7))
  x, w, dy = (jnp.asarray(a, jnp.float32) for a in (x, w, dy))
  op = functools.partial(binary_dense, method="proposed", first_layer=first_layer,
                         weight_quantizer="magnitude_aware_sign")

  @jax.jit
  def run(x, w, dy):
    y, vjp = jax.vjp(op, x, w)
    return (y, *vjp(dy))

  y, dx, dw = run(x, w, dy)
  wb, _ = ref.magnitude_aware_weights(w)
  dx_ref, dw_ref, dw_raw_ref = ref.dense_backward_proposed_magnitude_aware(
      x, w, dy, first_layer=first_layer)
  np.testing.assert_allclose(y, np.asarray(x, np.float64) @ wb, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  ref.assert_proposed_weight_grad(dw, dw_ref, dw_raw_ref, w)


def test_weight_quantizer_errors():
  x, w = jnp.ones((2, 4)), jnp.ones((4, 3))
  with pytest.raises(ValueError, match="weight_quantizer=ste_tern.*expected one of"):
    binary_dense(x, w, method="standard", weight_quantizer="ste_tern")
  with pytest.raises(ValueError, match="clip must be 1.0"):
    binary_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), method="proposed",
                weight_quantizer="magnitude_aware_sign(clip=0.5)")
  # The standard method differentiates the quantizer itself: any clip is fine.
  assert binary_dense(x, w, method="standard",
                      weight_quantizer="magnitude_aware_sign(clip=0.5)").shape == (2, 3)
