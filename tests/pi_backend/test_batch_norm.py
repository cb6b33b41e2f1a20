"""L1 batch norm: training forward, running statistics, evaluation and the proposed
backward, against NumPy written from METHOD.md / bnn/ops/batch_norm.py."""
import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref

SHAPES = [(2, 1), (7, 3), (100, 65), (4, 130), (2, 3, 5, 7), (3, 5, 5, 64), (1, 9)]


def _x(shape, seed):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape) * 3 + rng.standard_normal(shape[-1])).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward(shape):
  x = _x(shape, sum(shape))
  c = shape[-1]
  beta = np.random.default_rng(1).standard_normal(c).astype(np.float32)
  res = K.batch_norm_l1(x, beta, eps=1e-5)
  y, mean, scale, x_hat, s16, m16 = ref.bn_l1_forward(x.reshape(-1, c), beta, 1e-5)
  np.testing.assert_allclose(res.mean, mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(res.scale, scale, rtol=1e-6)
  np.testing.assert_allclose(res.y.reshape(-1, c), y, rtol=1e-5, atol=1e-5)
  assert res.y.shape == shape and res.sign_bits.shape == shape[:-1] + (K.words(c),)
  # sign(x_hat) bits, except where x_hat is within rounding of zero
  bits = K.unpack(res.sign_bits, c).reshape(-1, c)
  sure = np.abs(x_hat) > 1e-5
  np.testing.assert_array_equal(bits[sure], ref.sign(x_hat)[sure])
  assert res.scale16.dtype == np.float16 and res.m16.dtype == np.float16
  np.testing.assert_array_equal(res.scale16, res.scale.astype(np.float16))
  np.testing.assert_allclose(res.m16.astype(np.float32), m16.astype(np.float32), rtol=1e-3)


def test_forward_constant_channel_and_eps():
  x = np.ones((5, 2), np.float32)
  res = K.batch_norm_l1(x, np.zeros(2, np.float32), eps=1e-5)
  np.testing.assert_array_equal(res.y, np.zeros((5, 2)))
  np.testing.assert_allclose(res.scale, 1e-5)
  assert np.all(K.unpack(res.sign_bits, 2) == 1)  # x_hat = 0 -> sign +1


def test_running_statistics():
  x = _x((10, 4), 3)
  rm, rs = np.zeros(4, np.float32), np.ones(4, np.float32)
  res = K.batch_norm_l1(x, np.zeros(4, np.float32), running_mean=rm, running_scale=rs,
                        momentum=0.9)
  np.testing.assert_array_equal(rm, np.float32(0.9) * 0 + np.float32(0.1) * res.mean)
  np.testing.assert_array_equal(rs, np.float32(0.9) * 1 + np.float32(0.1) * res.scale)
  y = K.batch_norm_eval(x, np.full(4, 0.5, np.float32), rm, rs)
  np.testing.assert_allclose(y, (x - rm) / rs + np.float32(0.5), rtol=1e-6)
  with pytest.raises(ValueError, match="both running_mean and running_scale"):
    K.batch_norm_l1(x, np.zeros(4, np.float32), running_mean=rm)


def _eval_inputs(shape, seed):
  """x with the awkward values mixed in (signed zeros, infinities, NaN, denormals, and
  values whose normalised result is exactly 0), and channel parameters."""
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = _x(shape, seed)
  mean = rng.standard_normal(c).astype(np.float32)
  scale = rng.uniform(0.1, 3, c).astype(np.float32)
  beta = rng.standard_normal(c).astype(np.float32)
  beta[::3] = 0
  flat = x.reshape(-1, c)
  specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40], np.float32)
  pick = rng.random(flat.shape) < 0.2
  flat[pick] = rng.choice(specials, pick.sum())
  on_mean = rng.random(flat.shape) < 0.1  # x - mean = 0: y = beta, +-0 where beta = 0
  flat[on_mean] = np.broadcast_to(mean, flat.shape)[on_mean]
  return x, beta, mean, scale


@pytest.mark.parametrize("shape", SHAPES + [(3, 63), (2, 64), (5, 200)])
def test_eval_and_its_packed_signs_are_numpy_float32_exactly(shape):
  """Each operation is one correctly rounded float32 operation, in the vector loops as in
  the scalar tail, so the results are NumPy's bits; the fused sign is their packing."""
  x, beta, mean, scale = _eval_inputs(shape, 11 + sum(shape))
  with np.errstate(invalid="ignore"):
    want = (x - mean) / scale + beta
  np.testing.assert_array_equal(K.batch_norm_eval(x, beta, mean, scale), want)
  bits = K.batch_norm_eval_sign(x, beta, mean, scale)
  assert bits.shape == shape[:-1] + (K.words(shape[-1]),) and bits.dtype == np.uint64
  np.testing.assert_array_equal(bits, ref.pack_u64(want))


def test_eval_sign_argument_errors():
  x, beta, mean, scale = _eval_inputs((4, 5), 0)
  with pytest.raises(ValueError, match=r"batch_norm_eval_sign: scale .*\(c,\)"):
    K.batch_norm_eval_sign(x, beta, mean, scale[:4])
  with pytest.raises(TypeError, match="batch_norm_eval_sign: x .*float32"):
    K.batch_norm_eval_sign(x.astype(np.float64), beta, mean, scale)
  with pytest.raises(ValueError, match="batch_norm_eval_sign: x .*contiguous"):
    K.batch_norm_eval_sign(x[:, ::2], beta[:3], mean[:3], scale[:3])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dy_float16", [True, False])
def test_backward(shape, dy_float16):
  c = shape[-1]
  x = _x(shape, 7 + sum(shape))
  fwd = K.batch_norm_l1(x, np.zeros(c, np.float32))
  dy = (np.random.default_rng(2).standard_normal(shape) * 0.01).astype(np.float32)
  dx, dbeta = K.batch_norm_l1_backward(dy, fwd.sign_bits, fwd.scale16, fwd.m16,
                                       dy_float16=dy_float16)
  s = K.unpack(fwd.sign_bits, c).reshape(-1, c)
  want_dx, want_db = ref.bn_l1_backward(dy.reshape(-1, c), s, fwd.scale16, fwd.m16, dy_float16)
  assert dx.shape == shape
  np.testing.assert_allclose(dx.reshape(-1, c), want_dx, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dbeta, want_db, rtol=1e-5, atol=1e-7)
  if dy_float16:  # dbeta sums the float16-rounded dy
    np.testing.assert_allclose(
        dbeta, dy.astype(np.float16).astype(np.float64).reshape(-1, c).sum(0), rtol=1e-5)


def test_backward_hand_computed():
  # x = [1, 3]: x_hat = [-1, 1], m = 1, scale = 1 (eps = 0); dy = [1, 0]:
  # g = [1, 0], mean(g) = 0.5, mean(g s) = -0.5 -> dx = g - 0.5 + 0.5 s = [0, 0]
  fwd = K.batch_norm_l1(np.array([[1.0], [3.0]], np.float32), np.zeros(1, np.float32), eps=0.0)
  dx, db = K.batch_norm_l1_backward(np.array([[1.0], [0.0]], np.float32), fwd.sign_bits,
                                    fwd.scale16, fwd.m16)
  np.testing.assert_array_equal(dx, [[0.0], [0.0]])
  np.testing.assert_array_equal(db, [1.0])
