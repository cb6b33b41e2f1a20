"""pi_backend/optimizers.py against an explicit float64 NumPy reference of the equations
in its docstring (float16 rounding where the state is stored), the property that makes
the factored second moment exact for the proposed gradient, and its input checks. The
comparison with optax itself is in test_parity_with_jax.py."""
import math

import numpy as np
import pytest

from pi_backend import kernels as K
from pi_backend import optimizers
from pi_backend.graph import factored_dims, factored_shapes


# The constants as float32 holds them, on both sides (b2 = 0.999 is 0.99900001 there,
# which moves 1 - b2 by 1.3e-5 relative): the reference differs only in its arithmetic.
B1, B2 = float(np.float32(0.9)), float(np.float32(0.999))
ONE_MINUS_B1, ONE_MINUS_B2 = float(np.float32(1 - 0.9)), float(np.float32(1 - 0.999))


def _reference_statistics(shape, vrow, vcol, g, count, b2=B2):
  """float64: the new row and column statistics."""
  vrow, vcol, g = (np.asarray(a, np.float64) for a in (vrow, vcol, g))
  d1, d0 = factored_dims(shape)
  t = count - 1
  decay = b2 * (1 - b2 ** t) / (1 - b2 ** (t + 1))
  s = g * g + 1e-30
  return (decay * vrow + (1 - decay) * s.mean(axis=d0),
          decay * vcol + (1 - decay) * s.mean(axis=d1))


def _reference_moment(m, vrow, vcol, g, b1=B1):
  """float64 from the new statistics: the new first moment, rounded to float16."""
  m, vrow, vcol, g = (np.asarray(a, np.float64) for a in (m, vrow, vcol, g))
  d1, d0 = factored_dims(g.shape)
  reduced_d1 = d1 - 1 if d1 > d0 else d1
  v_hat = (np.expand_dims(vrow / vrow.mean(axis=reduced_d1, keepdims=True), d0)
           * np.expand_dims(vcol, d1))
  return (b1 * m + ONE_MINUS_B1 * g / np.sqrt(v_hat)).astype(np.float16)


def _reference_weights(w, m, count, lr, b1=B1):
  """float64 from the new moment: the new weights, rounded to float16."""
  return (np.asarray(w, np.float64) - lr * np.asarray(m, np.float64) / (1 - b1 ** count)
          ).astype(np.float16)


def _ulps(a, b):
  a, b = np.asarray(a, np.float16), np.asarray(b, np.float16)
  spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)))
  return np.abs(a.astype(np.float64) - b.astype(np.float64)) / spacing


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (64, 64), (1, 9), (3, 3, 3, 5),
                                   (3, 3, 8, 8), (2, 5, 1, 3)])
def test_factored_adam_matches_the_reference_over_steps(shape):
  """Each equation against float64 from the state actually stored before it: float32
  arithmetic may round a float16 value the other way (one ulp), and a moment or weight
  one ulp off would move the next equation's reference by many ulps of a small value."""
  rng = np.random.default_rng(len(shape) * 100 + shape[-1])
  w = (rng.uniform(-1, 1, shape) * 0.1).astype(np.float16)
  m = np.zeros(shape, np.float16)
  vrow, vcol = (np.zeros(s, np.float32) for s in factored_shapes(shape))
  for count in range(1, 6):
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, -1)).astype(np.float32)
    before = (w.copy(), m.copy(), vrow.copy(), vcol.copy())
    optimizers.factored_adam(w, m, vrow, vcol, g, count=count, lr=1e-3)
    want_row, want_col = _reference_statistics(shape, before[2], before[3], g, count)
    # 1 - b2^(t + 1) cancels: float32 has it (and so 1 - decay) to about 2e-5
    np.testing.assert_allclose(vrow, want_row, rtol=5e-5)
    np.testing.assert_allclose(vcol, want_col, rtol=5e-5)
    assert _ulps(m, _reference_moment(before[1], vrow, vcol, g)).max() <= 1
    assert _ulps(w, _reference_weights(before[0], m, count, 1e-3)).max() <= 1


def test_a_constant_magnitude_gradient_gets_unit_steps():
  """The proposed gradient sign(dW)/sqrt(N): the factored v_hat is exactly c^2 for every
  weight, so the normalised gradient is sign(g) and the first step moves every weight by
  lr (Adam's first step), whatever c is."""
  shape = (40, 24)
  rng = np.random.default_rng(1)
  g = (np.where(rng.standard_normal(shape) >= 0, 1, -1) / np.sqrt(960)).astype(np.float32)
  w = (rng.uniform(-0.5, 0.5, shape)).astype(np.float16)
  m = np.zeros(shape, np.float16)
  vrow, vcol = (np.zeros(s, np.float32) for s in factored_shapes(shape))
  w0 = w.astype(np.float64)
  optimizers.factored_adam(w, m, vrow, vcol, g, count=1, lr=1e-3)
  np.testing.assert_array_equal(m, (0.1 * np.sign(g)).astype(np.float16))
  step = (w0 - w.astype(np.float64)) / np.sign(g)
  np.testing.assert_allclose(step, 1e-3, atol=np.spacing(np.float16(0.5)))


def test_adam_f32_matches_the_reference():
  rng = np.random.default_rng(2)
  w = rng.standard_normal(17).astype(np.float16)
  m, v = np.zeros(17, np.float32), np.zeros(17, np.float32)
  rw, rm, rv = w.astype(np.float64), np.zeros(17), np.zeros(17)
  for count in range(1, 5):
    g = (rng.standard_normal(17) * 1e-4).astype(np.float16)
    optimizers.adam_f32(w, m, v, g, count=count, lr=1e-3)
    gg = g.astype(np.float64)
    rm, rv = B1 * rm + ONE_MINUS_B1 * gg, B2 * rv + ONE_MINUS_B2 * gg * gg
    upd = (rm / (1 - B1 ** count)) / (np.sqrt(rv / (1 - B2 ** count)) + 1e-8)
    rw = (rw - 1e-3 * upd).astype(np.float16)
    np.testing.assert_allclose(m, rm, rtol=2e-6)
    np.testing.assert_allclose(v, rv, rtol=5e-5)  # 1 - b2^count cancels in float32
    assert _ulps(w, rw).max() <= 1
    rw = w.astype(np.float64)


@pytest.mark.parametrize("change,message", [
    (dict(vrow=np.zeros(9, np.float32)), r"vrow is float32\[9\]; expected float32\[6\]"),
    (dict(m=np.zeros((9, 6), np.float32)), r"m is float32\[9, 6\]; expected float16\[9, 6\]"),
    (dict(g=np.zeros((6, 9), np.float32)), r"g is float32\[6, 9\]"),
    (dict(count=0), "count=0; expected the number of this update, >= 1"),
    (dict(w=np.zeros(9, np.float16)), r"w has shape \[9\]; expected a kernel of rank >= 2"),
])
def test_factored_adam_names_bad_arguments(change, message):
  args = dict(w=np.zeros((9, 6), np.float16), m=np.zeros((9, 6), np.float16),
              vrow=np.zeros(6, np.float32), vcol=np.zeros(9, np.float32),
              g=np.zeros((9, 6), np.float32), count=1)
  args.update(change)
  count = args.pop("count")
  with pytest.raises(ValueError, match=message):
    optimizers.factored_adam(**args, count=count, lr=1e-3)


def test_factored_adam_refuses_read_only_state():
  m = np.zeros((4, 3), np.float16)
  m.flags.writeable = False
  with pytest.raises(ValueError, match="m is read-only"):
    optimizers.factored_adam(np.zeros((4, 3), np.float16), m, np.zeros(3, np.float32),
                             np.zeros(4, np.float32), np.zeros((4, 3), np.float32),
                             count=1, lr=1e-3)


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (64, 64), (9, 13), (2, 37), (3, 3, 8, 16),
                                   (3, 3, 16, 8), (3, 3, 8, 8), (1, 1, 3, 70)])
@pytest.mark.parametrize("impl", K.float_impls())
def test_the_c_step_is_bit_identical_to_the_numpy_one(shape, impl):
  """A float16 gradient goes through kernels.factored_adam_f16 (one C pass, SIMD rows of
  8 or 4 with a scalar tail); a float32 one through the NumPy blocks: the same bits, in
  every float implementation, for both factor orientations (a square kernel's row
  factor varies along the rows, its column factor along the columns)."""
  rng = np.random.default_rng(sum(shape))
  w = (rng.uniform(-1, 1, shape) * 0.1).astype(np.float16)
  m = (rng.standard_normal(shape) * 0.3).astype(np.float16)
  vrow, vcol = (rng.uniform(1e-6, 1e-4, s).astype(np.float32) for s in factored_shapes(shape))
  g = (rng.standard_normal(shape) * 1e-3).astype(np.float16)
  ours = [a.copy() for a in (w, m, vrow, vcol)]
  theirs = [a.copy() for a in (w, m, vrow, vcol)]
  before = K.float_impl()
  K.set_float_impl(impl)
  try:
    optimizers.factored_adam(*ours, g, count=3, lr=1e-3)
  finally:
    K.set_float_impl(before)
  optimizers.factored_adam(*theirs, g.astype(np.float32), count=3, lr=1e-3)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_the_c_step_names_bad_arguments():
  w, m, g = (np.zeros((4, 6), np.float16) for _ in range(3))
  rows, cols = np.ones(6, np.float32), np.ones(4, np.float32)
  K.factored_adam_f16(w, m, g, rows, True, cols, False, b1=0.9, correction=0.1, lr=1e-3)
  with pytest.raises(ValueError, match=r"f1.*\[4\]|f1.*\(w's shape without its last axis\)"):
    K.factored_adam_f16(w, m, g, rows, False, cols, False, b1=0.9, correction=0.1, lr=1e-3)
  with pytest.raises(ValueError, match="correction=0.0"):
    K.factored_adam_f16(w, m, g, rows, True, cols, False, b1=0.9, correction=0.0, lr=1e-3)
  with pytest.raises((ValueError, TypeError), match="m"):
    K.factored_adam_f16(w, m.astype(np.float32), g, rows, True, cols, False, b1=0.9,
                        correction=0.1, lr=1e-3)


def _square_sums_in_order(g):
  """bnnpi.h's order of bnn_factored_square_sums, one float32 addition at a time."""
  s = g.astype(np.float32) ** 2 + np.float32(1e-30)
  *lead, ni, nj = s.shape
  s = s.reshape(math.prod(lead), ni, nj)
  over_i, over_j = np.zeros((len(s), nj), np.float32), np.zeros((len(s), ni), np.float32)
  nj8 = nj - nj % 8
  for p in range(len(s)):
    for i in range(ni):
      over_i[p] += s[p, i]
      lane = np.zeros(8, np.float32)
      for j in range(0, nj8, 8):
        lane += s[p, i, j:j + 8]
      t = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
      for j in range(nj8, nj):
        t += s[p, i, j]
      over_j[p, i] = t
  return over_i.reshape(*lead, nj), over_j.reshape(*lead, ni)


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (64, 64), (9, 13), (2, 37), (3, 3, 8, 16),
                                   (1, 1, 3, 70), (4, 0), (0, 4), (2, 3, 0)])
@pytest.mark.parametrize("impl", K.float_impls())
def test_square_sums_add_in_the_stated_order(shape, impl):
  """kernels.factored_square_sums (the statistics' one C pass) gives the bits of its
  stated order of additions in every float implementation, from float16 and float32 g
  alike; a zero gradient counts 1e-30."""
  rng = np.random.default_rng(sum(shape) + 7)
  g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, -1, shape)).astype(np.float16)
  if g.size:
    g.reshape(-1)[::3] = 0
  want = _square_sums_in_order(g)
  before = K.float_impl()
  K.set_float_impl(impl)
  try:
    for x in (g, g.astype(np.float32)):
      got = K.factored_square_sums(x)
      for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
  finally:
    K.set_float_impl(before)


def test_square_sums_name_bad_arguments():
  with pytest.raises(TypeError, match=r"factored_square_sums: g has dtype float64"):
    K.factored_square_sums(np.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"factored_square_sums: g has shape \(4,\); expected "
                                       r"at least 2 axes"):
    K.factored_square_sums(np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="not C-contiguous"):
    K.factored_square_sums(np.zeros((4, 3), np.float32).T)
