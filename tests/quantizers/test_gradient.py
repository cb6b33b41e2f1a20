"""Tests for quantizers/gradient.py: identity, float16, bfloat16, sign_scaled, po2."""
from __future__ import annotations

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import quantizers
from quantizers.gradient import Po2

# (bits, bias) pairs: the reference defaults, the CNV bias, and a few around them.
SETTINGS = [(4, 8), (4, 6), (4, 7), (3, 2), (5, 6), (2, 0), (1, 0), (6, 12)]


# ----------------------------------------------------------------------------------
# Independent NumPy helpers
# ----------------------------------------------------------------------------------

def exp_range(bits):
  return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def round_log2(x: float) -> int:
  """round(log2 x), half up, from math.frexp: x = m 2**E, m in [0.5, 1)."""
  m, e = math.frexp(float(x))
  return e if m >= math.sqrt(0.5) else e - 1


def expected_b(g, bias):
  a = np.abs(np.asarray(g, np.float64))
  a = a[np.isfinite(a)]
  mx = a.max() if a.size else 0.0
  return bias - (round_log2(mx) if mx > 0 else 0)


def reference_po2(g, bits, bias, zeros="flush"):
  """METHOD.md's equations written out with np.log2 in float64 (round half up)."""
  g64 = np.asarray(g, np.float64)
  lo, hi = exp_range(bits)
  mx = np.max(np.abs(g64))
  b = -np.floor(np.log2(mx) + 0.5) + bias if mx > 0 else float(bias)
  v = g64 * 2.0 ** b
  with np.errstate(divide="ignore"):
    e = np.clip(np.floor(np.log2(np.abs(v)) + 0.5), lo, hi)
  q = np.sign(v) * 2.0 ** e * 2.0 ** -b
  if zeros == "flush":
    q = np.where(g64 == 0, 0.0, q)
  else:
    q = np.where(g64 == 0, 2.0 ** lo * 2.0 ** -b, q)
  return q.astype(np.asarray(g).dtype)


def near_tie(g):
  """True where log2|g| is within 1e-9 of a half-integer (a rounding tie)."""
  a = np.abs(np.asarray(g, np.float64))
  a = a[a > 0]
  frac = np.log2(a) - np.floor(np.log2(a))
  return bool(np.any(np.abs(frac - 0.5) < 1e-9))


def bits_of(x):
  x = np.asarray(x)
  return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_bitwise_equal(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype and a.shape == b.shape
  np.testing.assert_array_equal(bits_of(a), bits_of(b))


def random_gradient(rng, shape, lo_exp=-30, hi_exp=10, p_zero=0.1):
  """Log-uniform magnitudes over 2**[lo_exp, hi_exp], random signs, some exact zeros."""
  mag = np.exp2(rng.uniform(lo_exp, hi_exp, shape))
  g = (mag * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
  g[rng.random(shape) < p_zero] = 0.0
  return g


# Hypothesis: float32 arrays of exact zeros and magnitudes in [2**-20, 2**20].
_magnitude = st.floats(2.0 ** -20, 2.0 ** 20, width=32)
_element = st.one_of(st.just(0.0), _magnitude, _magnitude.map(lambda x: -x))
_arrays = hnp.arrays(np.float32, st.sampled_from([(9,), (4, 16)]),
                     elements=_element)


# ----------------------------------------------------------------------------------
# po2: values
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,bias", SETTINGS)
@pytest.mark.parametrize("zeros", ["flush", "reference"])
def test_po2_outputs_are_signed_powers_of_two_in_range(bits, bias, zeros):
  rng = np.random.default_rng(bits * 100 + bias)
  q = Po2(bits=bits, bias=bias, zeros=zeros)
  lo, hi = exp_range(bits)
  for _ in range(3):
    g = random_gradient(rng, (16, 33))
    out = np.asarray(q(jnp.asarray(g)))
    assert out.shape == g.shape and out.dtype == g.dtype
    b = expected_b(g, bias)
    nz = out != 0
    m, e = np.frexp(np.abs(out[nz]))
    assert np.all(m == 0.5), "nonzero outputs must be exact powers of two"
    n = e - 1                                   # |q| = 2**n
    assert n.min() >= lo - b and n.max() <= hi - b
    # the extremes: the top element sits at min(hi, bias); the smallest one at its
    # own rounded exponent or the bottom of the clip range (or lo for zeros='reference')
    assert n.max() == min(hi, bias) - b
    smallest = max(lo, round_log2(np.min(np.abs(g[g != 0]))) + b)
    assert n.min() == (lo if zeros == "reference" else smallest) - b
    # signs follow g; zeros exactly where the option says
    np.testing.assert_array_equal(np.sign(out[g != 0]), np.sign(g[g != 0]))
    if zeros == "flush":
      np.testing.assert_array_equal(nz, g != 0)
      assert not np.any(np.signbit(out[g == 0])), "flushed zeros are +0.0"
    else:
      assert np.all(nz)
      np.testing.assert_array_equal(out[g == 0], np.float32(2.0 ** (lo - b)))


@pytest.mark.parametrize("bits,bias", SETTINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("zeros", ["flush", "reference"])
def test_po2_matches_numpy_reference(bits, bias, dtype, zeros):
  rng = np.random.default_rng(7 * bits + bias)
  q = Po2(bits=bits, bias=bias, zeros=zeros)
  span = (-30, 10) if dtype == np.float32 else (-12, 8)
  checked = 0
  for _ in range(20):
    g = random_gradient(rng, (50,), *span).astype(dtype)
    if near_tie(g):
      continue
    assert_bitwise_equal(q(jnp.asarray(g)), reference_po2(g, bits, bias, zeros))
    checked += 1
  assert checked >= 15


def test_po2_subnormal_inputs_are_exact():
  """XLA flushes subnormals in arithmetic; po2 works on bit patterns, so it does not."""
  tiny = np.float32(2.0 ** -149)
  g = (np.array([1, 3, 5, 100, 1000, 12345, 0, -7, 2 ** 22 + 5], np.float64) *
       2.0 ** -149).astype(np.float32)
  assert np.all(np.abs(g) < np.finfo(np.float32).tiny), "all inputs are subnormal"
  assert g[0] == tiny
  q = Po2(bits=8, bias=3)
  assert_bitwise_equal(q(jnp.asarray(g)), reference_po2(g, 8, 3))
  q = Po2(bits=4, bias=2, zeros="reference")
  assert_bitwise_equal(q(jnp.asarray(g)), reference_po2(g, 4, 2, "reference"))


def test_po2_hand_computed_example():
  # max|g| = 3 -> round(log2 3) = 2 (log2 3 = 1.58) -> b = 8 - 2 = 6 (bits=4, bias=8)
  g = jnp.array([3.0, -0.7, 0.71, 0.0, 1e-6, 2.0 ** -6], jnp.float32)
  # v = g*64: 192 -> e 8 -> clipped to 7 -> 2; -44.8 -> log2 5.49 -> 5 -> -0.5;
  # 45.44 -> log2 5.506 -> 6 -> 1; 0 -> 0; tiny -> e = -8 -> 2**-14; 1 -> e 0 -> 2**-6
  want = np.array([2.0, -0.5, 1.0, 0.0, 2.0 ** -14, 2.0 ** -6], np.float32)
  assert_bitwise_equal(Po2()(g), want)


def test_po2_all_zero_and_empty():
  z = jnp.zeros((4, 3), jnp.float32)
  out = Po2()(z)
  assert_bitwise_equal(out, np.zeros((4, 3), np.float32))
  # reference zeros: b = bias (as if max|g| were 1): +2**(-8-8)
  ref = Po2(zeros="reference")(z)
  np.testing.assert_array_equal(ref, np.full((4, 3), 2.0 ** -16, np.float32))
  assert np.all(np.isfinite(ref))
  empty = Po2()(jnp.zeros((0, 5), jnp.float16))
  assert empty.shape == (0, 5) and empty.dtype == jnp.float16


def test_po2_non_finite_elements_pass_through():
  g = np.array([np.nan, 0.3, -np.inf, 1.0, np.inf, -0.02], np.float32)
  out = np.asarray(Po2(bits=4, bias=6)(jnp.asarray(g)))
  assert np.isnan(out[0]) and out[2] == -np.inf and out[4] == np.inf
  finite = np.isfinite(g)
  # the finite elements are quantized as if the non-finite ones were absent
  np.testing.assert_array_equal(out[finite], reference_po2(g[finite], 4, 6))
  # a tensor of only NaN does not crash and stays NaN
  assert np.all(np.isnan(np.asarray(Po2()(jnp.full((3,), jnp.nan)))))


def test_po2_saturates_instead_of_overflowing():
  big = np.float32(np.finfo(np.float32).max)      # round(log2 max) = 128: 2**128 = inf
  out = np.asarray(Po2(bits=4, bias=4)(jnp.array([big, -big, 1.0], jnp.float32)))
  assert np.all(np.isfinite(out))
  assert out[0] == 2.0 ** 127 and out[1] == -(2.0 ** 127)
  half = np.float16(60000.0)                       # float16: 2**16 would be inf
  out16 = np.asarray(Po2(bits=4, bias=4)(jnp.array([half], jnp.float16)))
  assert out16.dtype == np.float16 and out16[0] == 2.0 ** 15


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_po2_keeps_shape_and_dtype(dtype, rounding):
  q = Po2(rounding=rounding)
  key = jax.random.key(0)
  shapes = [(), (2, 3, 4)] if dtype == jnp.float32 and rounding == "nearest" else [(2, 3, 4)]
  for shape in shapes:
    g = jnp.asarray(np.random.default_rng(1).normal(size=shape), dtype)
    out = q(g, key)
    assert out.shape == shape and out.dtype == dtype


def test_po2_low_precision_dtypes_agree_with_float32():
  """float16/bfloat16 inputs give the float32 result rounded back (in range)."""
  rng = np.random.default_rng(3)
  g = random_gradient(rng, (50,), -10, 6)
  for dtype in [jnp.float16, jnp.bfloat16]:
    g_low = jnp.asarray(g).astype(dtype)
    want = Po2(bias=6)(g_low.astype(jnp.float32)).astype(dtype)
    assert_bitwise_equal(Po2(bias=6)(g_low), want)


# ----------------------------------------------------------------------------------
# po2: properties
# ----------------------------------------------------------------------------------

@hypothesis.given(x=_arrays, k=st.integers(-60, 60), setting=st.sampled_from(SETTINGS),
                  zeros=st.sampled_from(["flush", "reference"]))
def test_po2_scale_equivariance_is_exact(x, k, setting, zeros):
  bits, bias = setting
  hypothesis.assume(bits <= 5)     # keep 2**(lo-b) normal for |x| >= 2**-20, |k| <= 60
  q = Po2(bits=bits, bias=bias, zeros=zeros)
  scale = np.float32(2.0 ** k)
  left = q(jnp.asarray(x * scale))
  right = np.asarray(q(jnp.asarray(x))) * scale
  assert_bitwise_equal(left, right)


@hypothesis.given(x=_arrays, k=st.integers(-40, 40), seed=st.integers(0, 2 ** 31 - 1))
def test_po2_stochastic_scale_equivariance_is_exact(x, k, seed):
  q = Po2(bits=4, bias=6, rounding="stochastic")
  key = jax.random.key(seed)
  scale = np.float32(2.0 ** k)
  assert_bitwise_equal(q(jnp.asarray(x * scale), key), np.asarray(q(jnp.asarray(x), key)) * scale)


@hypothesis.given(x=_arrays, bits=st.integers(1, 6), data=st.data(),
                  zeros=st.sampled_from(["flush", "reference"]))
def test_po2_idempotent_when_bias_fits_the_exponent(x, bits, data, zeros):
  lo, hi = exp_range(bits)
  bias = data.draw(st.integers(lo, hi), label="bias")
  q = Po2(bits=bits, bias=bias, zeros=zeros)
  once = q(jnp.asarray(x))
  assert_bitwise_equal(q(once), once)
  if zeros == "flush":   # (one zeros mode suffices here; stochastic compiles are slow)
    # powers of two are fixed points of stochastic rounding too
    qs = Po2(bits=bits, bias=bias, zeros=zeros, rounding="stochastic")
    assert_bitwise_equal(qs(once, jax.random.key(bits)), once)


def test_po2_reference_settings_clip_the_maximum_and_are_not_idempotent():
  """bits=4, bias=8: max|v| ~ 2**8 but e <= 7, so max|q| = 2**(7-b) (METHOD.md's
  equations). Applying q again halves the top elements and leaves the rest alone."""
  rng = np.random.default_rng(11)
  q = Po2(bits=4, bias=8)
  for _ in range(5):
    g = random_gradient(rng, (200,), -12, 4)
    b = expected_b(g, 8)
    once = np.asarray(q(jnp.asarray(g)))
    assert np.max(np.abs(once)) == np.float32(2.0 ** (7 - b))
    assert np.max(np.abs(once)) < np.max(np.abs(g))          # about half of max|g|
    twice = np.asarray(q(jnp.asarray(once)))
    top = np.abs(once) == np.max(np.abs(once))
    np.testing.assert_array_equal(twice[top], once[top] / 2)
    np.testing.assert_array_equal(twice[~top], once[~top])
    assert not np.array_equal(twice, once)


# ----------------------------------------------------------------------------------
# po2: stochastic rounding
# ----------------------------------------------------------------------------------

N_DRAWS = 20000
# max = 1 sets b = bias - 0 = 6 (bits=4): every |v| = |x| * 64 below lies in
# [2**-8, 2**7] together with both its neighbouring powers of two (not clipped).
X_UNBIASED = np.array([1.0, 0.3, -0.7, 0.013, -0.09, 0.55, 0.0031, 0.2, -0.8125,
                       0.75, 2.0 ** -5, 0.0], np.float32)


def _neighbours(x):
  a = np.abs(x.astype(np.float64))
  lower = np.where(a > 0, 2.0 ** np.floor(np.log2(np.where(a > 0, a, 1))), 0.0)
  upper = np.where(a == lower, lower, 2 * lower)
  return lower, upper


def _unbiased_within_5_se(samples, x):
  """True if every element's sample mean is within 5 standard errors of x, where the
  standard error comes from the exact variance of a two-point draw on the
  neighbouring powers of two: (upper - |x|) (|x| - lower) / N."""
  lower, upper = _neighbours(x)
  a = np.abs(x.astype(np.float64))
  se = np.sqrt((upper - a) * (a - lower) / samples.shape[0])
  err = np.abs(samples.astype(np.float64).mean(axis=0) - x.astype(np.float64))
  return bool(np.all(err <= 5 * se + 1e-12))


def test_po2_stochastic_rounding_is_unbiased():
  q = Po2(bits=4, bias=6, rounding="stochastic")
  keys = jax.random.split(jax.random.key(2021), N_DRAWS)
  samples = np.asarray(jax.jit(jax.vmap(lambda k: q(jnp.asarray(X_UNBIASED), k)))(keys))
  assert samples.shape == (N_DRAWS, X_UNBIASED.size)
  assert _unbiased_within_5_se(samples, X_UNBIASED)

  # only the two neighbouring powers of two occur, with x's sign, and both do occur
  lower, upper = _neighbours(X_UNBIASED)
  sgn = np.sign(X_UNBIASED)
  is_lower = samples == (sgn * lower).astype(np.float32)
  is_upper = samples == (sgn * upper).astype(np.float32)
  assert np.all(is_lower | is_upper)
  not_po2 = lower != upper
  assert np.all(is_lower[:, not_po2].any(axis=0)) and np.all(is_upper[:, not_po2].any(axis=0))
  # exact powers of two and zeros never move
  np.testing.assert_array_equal(samples[:, ~not_po2], np.broadcast_to(
      X_UNBIASED[~not_po2], (N_DRAWS, int((~not_po2).sum()))))


def test_po2_nearest_rounding_is_biased_so_the_unbiasedness_check_can_fail():
  nearest = np.asarray(Po2(bits=4, bias=6)(jnp.asarray(X_UNBIASED)))
  samples = np.broadcast_to(nearest, (N_DRAWS, X_UNBIASED.size))
  assert not _unbiased_within_5_se(samples, X_UNBIASED)


def test_po2_stochastic_needs_a_key_and_nearest_ignores_it():
  g = jnp.array([0.3, -1.0], jnp.float32)
  with pytest.raises(ValueError, match="key"):
    Po2(rounding="stochastic")(g)
  q = Po2()
  assert_bitwise_equal(q(g), q(g, jax.random.key(5)))
  # old-style uint32 keys work too
  Po2(rounding="stochastic")(g, jax.random.PRNGKey(0))


def test_po2_stochastic_depends_on_the_key():
  g = jnp.linspace(0.01, 1.0, 500, dtype=jnp.float32)
  q = Po2(bits=4, bias=6, rounding="stochastic")
  a, b = q(g, jax.random.key(0)), q(g, jax.random.key(1))
  assert_bitwise_equal(a, q(g, jax.random.key(0)))
  assert not np.array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------
# po2: jit and vmap
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_po2_under_jit_and_vmap(rounding):
  # (stochastic programs take seconds to compile on CPU, so that case is kept lean)
  rng = np.random.default_rng(5)
  g = jnp.asarray(random_gradient(rng, (3, 40)))
  key = jax.random.key(9)
  q = Po2(bits=5, bias=6, rounding=rounding)
  eager = q(g, key)
  assert_bitwise_equal(jax.jit(q)(g, key), eager)

  if rounding == "nearest":
    # the quantizer is hashable and can be a static argument
    f = jax.jit(lambda quant, x: quant(x), static_argnums=0)
    assert_bitwise_equal(f(q, g), eager)

  # vmap: per-row scale, same as calling row by row
  keys = jax.random.split(key, g.shape[0])
  batched = jax.vmap(q)(g, keys)
  rows = np.asarray(g)
  key_data = jax.random.key_data(keys)
  for i in range(g.shape[0]):
    row_key = jax.random.wrap_key_data(key_data[i])
    assert_bitwise_equal(batched[i], q(jnp.asarray(rows[i]), row_key))


# ----------------------------------------------------------------------------------
# Other gradient quantizers
# ----------------------------------------------------------------------------------

@hypothesis.given(x=hnp.arrays(np.float32, st.sampled_from([(5,), (4, 6)]),
                               elements=st.floats(width=32, allow_nan=False)))
def test_float16_matches_numpy_rounding(x):
  out = quantizers.get("float16")(jnp.asarray(x))
  assert out.dtype == jnp.float32
  with np.errstate(over="ignore"):                  # beyond 65504: inf, as in XLA
    want = x.astype(np.float16).astype(np.float32)
  assert_bitwise_equal(out, want)


@hypothesis.given(x=hnp.arrays(np.float32, st.sampled_from([(5,), (4, 6)]),
                               elements=st.floats(width=32, allow_nan=False)))
def test_bfloat16_matches_ml_dtypes_rounding(x):
  out = quantizers.get("bfloat16")(jnp.asarray(x))
  assert out.dtype == jnp.float32
  assert_bitwise_equal(out, x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_identity_is_identity():
  g = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
  assert_bitwise_equal(quantizers.get("identity")(g), g)


def test_sign_scaled():
  g = jnp.array([[0.5, -2.0, 0.0], [-0.0, 3.0, -1e-30]], jnp.float32)
  out = np.asarray(quantizers.get("sign_scaled")(g))
  want = np.array([[1, -1, 1], [1, 1, -1]], np.float32) / np.float32(math.sqrt(6))
  np.testing.assert_allclose(out, want, rtol=1e-7)
  assert out.dtype == np.float32


@pytest.mark.parametrize("name", ["identity", "float16", "bfloat16", "sign_scaled", "po2"])
def test_gradient_quantizers_jit_vmap_shape_dtype(name):
  q = quantizers.get(name, kind="gradient")
  g = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
  assert_bitwise_equal(jax.jit(q)(g), q(g))
  out = jax.vmap(q)(g)
  assert out.shape == g.shape and out.dtype == g.dtype


# ----------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------

def test_po2_registry():
  q = quantizers.get("po2(bits=5, bias=6, rounding='stochastic')")
  assert q == Po2(bits=5, bias=6, rounding="stochastic", zeros="flush")
  assert q.stochastic and not Po2().stochastic
  assert quantizers.get(q.spec()) == q
  assert quantizers.get("po2") == Po2(bits=4, bias=8)
  assert quantizers.get("po2(zeros='reference')", kind="gradient").zeros == "reference"
  assert "po2" in quantizers.names("gradient")
  assert hash(q) == hash(Po2(bits=5, bias=6, rounding="stochastic"))


@pytest.mark.parametrize("spec,exc,needle", [
    ("po2(bits=0)", ValueError, "bits=0"),
    ("po2(bits=9)", ValueError, "bits=9"),
    ("po2(rounding='up')", ValueError, "'up'"),
    ("po2(zeros='keep')", ValueError, "'keep'"),
    ("po2(bits=2.5)", TypeError, "2.5"),
    ("po2(bias='8')", TypeError, "'8'"),
    ("po2(bitz=3)", ValueError, "bitz"),
    ("po3(bits=3)", ValueError, "po3"),
])
def test_po2_bad_specs_name_the_bad_value(spec, exc, needle):
  with pytest.raises(exc, match=needle.replace(".", r"\.")):
    quantizers.get(spec)


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(bits=0), ValueError, "bits=0"),
    (dict(bits=2.5), TypeError, "bits=2.5"),
    (dict(bits=True), TypeError, "bits=True"),
    (dict(bias=1000), ValueError, "bias=1000"),
    (dict(rounding="up"), ValueError, "rounding='up'"),
    (dict(zeros=None), ValueError, "zeros=None"),
])
def test_po2_constructor_validates(kwargs, exc, needle):
  with pytest.raises(exc, match=needle.replace(".", r"\.")):
    Po2(**kwargs)


def test_po2_rejects_unsupported_dtypes():
  with pytest.raises(TypeError, match="int32"):
    Po2()(jnp.arange(3, dtype=jnp.int32))
