"""The float kernel implementations (kernels.set_float_impl: portable 4-lane vectors,
x86 AVX2 + F16C + FMA, AVX-512F) give bit-identical float16 conversions, Adam, batch
norm, sign STE and float x sign GEMMs (x * +-1 is exact, so FMA changes nothing there), and the real
x^T dy up to float32 rounding (FMA), on odd sizes (not multiples of the vector widths)
included; and each agrees with NumPy."""
import contextlib

import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref

IMPLS = K.float_impls()


@contextlib.contextmanager
def _impl(name):
  before = K.float_impl()
  K.set_float_impl(name)
  try:
    yield
  finally:
    K.set_float_impl(before)


def _each(fn):
  """fn() under every implementation, the portable one first."""
  out = []
  for name in IMPLS:
    with _impl(name):
      out.append((name, fn()))
  return out


def test_names_and_choice():
  assert IMPLS[0] in ("portable", "sse", "neon")
  assert K.float_impl() == IMPLS[-1]  # automatic: the fastest
  with pytest.raises(ValueError):
    K.set_float_impl("no-such-impl")
  assert K.float_impl() == IMPLS[-1]
  assert _each(K.float_impl) == [(n, n) for n in IMPLS]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 4099])
def test_f16_conversions_identical(n):
  rng = np.random.default_rng(n)
  x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
  x[: n // 3] = rng.standard_normal(n // 3).astype(np.float32) * 1e-5  # subnormal f16
  h = rng.integers(0, 2**16, n, dtype=np.uint64).astype(np.uint16).view(np.float16)
  with np.errstate(over="ignore", invalid="ignore"):
    want16, want32 = x.astype(np.float16), h.astype(np.float32)
  for name, (g16, g32) in _each(lambda: (K.f32_to_f16(x), K.f16_to_f32(h))):
    np.testing.assert_array_equal(g16.view(np.uint16)[~np.isnan(want16)],
                                  want16.view(np.uint16)[~np.isnan(want16)], err_msg=name)
    np.testing.assert_array_equal(np.isnan(g16), np.isnan(want16), err_msg=name)
    np.testing.assert_array_equal(g32.view(np.uint32)[~np.isnan(want32)],
                                  want32.view(np.uint32)[~np.isnan(want32)], err_msg=name)
    np.testing.assert_array_equal(np.isnan(g32), np.isnan(want32), err_msg=name)
  # NaN payloads: every implementation gives the portable one's bits
  got = _each(lambda: (K.f32_to_f16(x).view(np.uint16), K.f16_to_f32(h).view(np.uint32)))
  for name, (a, b) in got[1:]:
    np.testing.assert_array_equal(a, got[0][1][0], err_msg=name)
    np.testing.assert_array_equal(b, got[0][1][1], err_msg=name)


@pytest.mark.parametrize("n", [1, 5, 8, 13, 16, 100, 1031])
@pytest.mark.parametrize("g_dtype", [np.float32, np.float16])
def test_adam_identical(n, g_dtype):
  rng = np.random.default_rng(n)
  w0 = rng.standard_normal(n).astype(np.float16)
  m0 = (rng.standard_normal(n) * 0.01).astype(np.float16)
  v0 = (rng.random(n) * 1e-3).astype(np.float16)
  # tiny and huge gradients too: subnormal moments, overflow to inf
  g = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 5, n)).astype(g_dtype)

  def run():
    w, m, v = w0.copy(), m0.copy(), v0.copy()
    for step in (1, 2, 7):
      K.adam_f16(w, m, v, g, step=step, lr=1e-2)
    return w.view(np.uint16), m.view(np.uint16), v.view(np.uint16)

  results = _each(run)
  want = (w0.copy(), m0.copy(), v0.copy())
  with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    for step in (1, 2, 7):
      want = ref.adam_f16(*want, g, step, 1e-2, 0.9, 0.999, 1e-8)
  for name, got in results:
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b.view(np.uint16), err_msg=name)


SHAPES = [(1, 1, 1), (3, 5, 7), (4, 8, 8), (5, 17, 9), (13, 65, 31), (64, 64, 64),
          (37, 130, 47), (200, 100, 33), (8, 3, 129)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_sign_gemms_identical(m, k, n):
  rng = np.random.default_rng(m * 1000 + k * 10 + n)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  dy = rng.standard_normal((m, n)).astype(np.float32)
  wp, xp = K.pack(w), K.pack(x)

  def run():
    return [K.sign_matmul(x, w), K.sign_matmul_packed(x, wp, n), K.matmul_sign_t(dy, w),
            K.matmul_sign_t_packed(dy, wp), K.sign_t_matmul(xp, k, dy), K.t_matmul(x, dy)]

  results = _each(run)
  wb = ref.sign(w).astype(np.float64)
  xb = ref.sign(x).astype(np.float64)
  x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
  wants = [(x64 @ wb, k), (x64 @ wb, k), (dy64 @ wb.T, n), (dy64 @ wb.T, n),
           (xb.T @ dy64, m), (x64.T @ dy64, m)]
  for name, got in results:
    for g, (want, terms) in zip(got, wants):
      np.testing.assert_allclose(g, want, rtol=0,
                                 atol=1e-6 * terms * max(1.0, np.abs(want).max()),
                                 err_msg=name)
    # the float and packed forms of one product agree bit for bit within an impl
    np.testing.assert_array_equal(got[0], got[1], err_msg=name)
    np.testing.assert_array_equal(got[2], got[3], err_msg=name)
    # x * (+-1) is exact, so FMA (the x86 GEMM blocks) changes nothing for the sign
    # products: bit-identical; the real x^T dy (t_matmul) rounds once per multiply-add
    for g, g0 in zip(got[:5], results[0][1][:5]):
      np.testing.assert_array_equal(g.view(np.uint32), g0.view(np.uint32), err_msg=name)
    np.testing.assert_allclose(got[5], results[0][1][5], rtol=0,
                               atol=2e-7 * m * max(1.0, np.abs(wants[5][0]).max()),
                               err_msg=name)


def test_t_matmul_x86_blocks_are_used():
  """On a CPU with the x86 paths, their real x^T dy differs from the portable one
  somewhere on a large random product (FMA rounds once): the dispatch really switches."""
  if len(IMPLS) < 2:
    pytest.skip(f"only {IMPLS} on this CPU")
  rng = np.random.default_rng(5)
  x = rng.standard_normal((300, 64)).astype(np.float32)
  dy = rng.standard_normal((300, 96)).astype(np.float32)
  (_, y0), *rest = _each(lambda: K.t_matmul(x, dy))
  for name, y in rest:
    assert not np.array_equal(y, y0), name


@pytest.mark.parametrize("n,c", [(1, 1), (3, 15), (7, 16), (5, 17), (2, 63), (9, 64),
                                 (4, 65), (6, 130), (200, 256)])
@pytest.mark.parametrize("dy_float16", [True, False])
def test_batch_norm_identical(n, c, dy_float16):
  """The batch-norm kernels (AVX2 or AVX-512F rows, float16 rounding of dy by F16C) give
  the portable kernels' bits: forward outputs, statistics, sign bits, backward."""
  rng = np.random.default_rng(n * 1000 + c)
  x = (rng.standard_normal((n, c)) * 3 + 0.5).astype(np.float32)
  x[0, 0] = 0.0
  beta = rng.standard_normal(c).astype(np.float32)
  dy = (rng.standard_normal((n, c)) * 10.0 ** rng.integers(-6, 6, (n, c))).astype(np.float32)

  def run():
    rm, rs = np.ones(c, np.float32), np.ones(c, np.float32)
    r = K.batch_norm_l1(x, beta, running_mean=rm, running_scale=rs, momentum=0.9)
    dx, dbeta = K.batch_norm_l1_backward(dy, r.sign_bits, r.scale16, r.m16,
                                         dy_float16=dy_float16)
    return [np.asarray(a) for a in r] + [rm, rs, dx, dbeta]

  (_, want), *rest = _each(run)
  for name, got in rest:
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8), err_msg=name)
  assert not np.any(want[3][:, -1] >> np.uint64(c % 64) if c % 64 else 0)  # padding bits 0


@pytest.mark.parametrize("k,n", [(1, 1), (3, 5), (64, 64), (65, 63), (130, 257), (7, 200)])
def test_pack_float16_matches_numpy_packbits(k, n):
  """kernels.pack_f16 / pack_f16_transposed (bit patterns in C) = the NumPy packing of
  pi_backend.signs: -0.0 -> 1, NaN -> 0, padding bits 0."""
  from pi_backend import signs  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(k * 1000 + n)
  u = rng.integers(0, 2**16, (k, n), dtype=np.uint64).astype(np.uint16)
  u.flat[0] = 0x8000
  w = u.view(np.float16)
  want = K.from_uint8(np.packbits(signs.nonnegative(w), axis=-1, bitorder="little"), n)
  want_t = K.from_uint8(np.ascontiguousarray(
      np.packbits(signs.nonnegative(w).T, axis=-1, bitorder="little")), k)
  np.testing.assert_array_equal(K.pack_f16(w), want)
  np.testing.assert_array_equal(K.pack_f16_transposed(w), want_t)
  np.testing.assert_array_equal(signs.pack_signs(w), want)
  np.testing.assert_array_equal(signs.dense_bits_t(w), want_t)
  with np.errstate(invalid="ignore"):
    np.testing.assert_array_equal(K.pack_f16(w), K.pack(w.astype(np.float32)))
    np.testing.assert_array_equal(K.pack_f16_transposed(w),
                                  K.pack_transposed(w.astype(np.float32)))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (64, 256), (13, 17)])
def test_sign_scaled_grad_matches_numpy(shape):
  """quant.weight_gradient's sign_scaled by the C kernel (contiguous float32 dw, float16
  w) = its NumPy path (here forced by a non-contiguous dw): every bit, NaN and +-0
  gradients, |w| = 1 exactly, |w| > 1, NaN and inf weights included."""
  from pi_backend import quant  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(sum(shape))
  dw = rng.standard_normal(shape).astype(np.float32)
  w = (rng.standard_normal(shape) * 1.2).astype(np.float16)
  special_dw = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf], np.float32)
  special_w = np.array([1.0, -1.0, np.nan, np.inf, -0.0], np.float16)
  dw.flat[:min(5, dw.size)] = special_dw[:min(5, dw.size)]
  w.flat[:min(5, w.size)] = special_w[:min(5, w.size)]
  q = quant.parse("sign_scaled()")
  got = quant.weight_gradient(q, dw, w, n_weights=1000)
  dw_strided = np.empty(shape + (2,), np.float32)[..., 0]
  dw_strided[...] = dw
  want = quant.weight_gradient(q, dw_strided, w, n_weights=1000)
  assert got.dtype == want.dtype == np.float16
  np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("rows,n", [(1, 1), (2, 7), (3, 8), (2, 9), (4, 63), (3, 64), (2, 65),
                                    (5, 130), (200, 256)])
def test_sign_ste_identical(rows, n):
  """The sign STE (AVX2 rows of 8, the rest in C) gives the portable kernel's bits and
  NumPy's: NaN, infinities, -0.0 and |x| == clip in every lane position included."""
  rng = np.random.default_rng(rows * 1000 + n)
  x = (rng.standard_normal((rows, n)) * 1.5).astype(np.float32)
  specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0], np.float32)
  x.reshape(-1)[::3] = specials[np.arange(x.size)[::3] % len(specials)]
  dy = rng.standard_normal((rows, n)).astype(np.float32)

  def run():
    y, mask = K.sign_ste(x, clip=1.0)
    return [y, mask, K.sign_ste_backward(dy, mask)]

  (_, want), *rest = _each(run)
  with np.errstate(invalid="ignore"):
    inside = np.abs(x) <= 1.0
  np.testing.assert_array_equal(want[0], np.where(x >= 0, 1, -1).astype(np.float32))
  np.testing.assert_array_equal(want[1], ref.pack_bool_u64(inside))
  np.testing.assert_array_equal(want[2].view(np.uint32),
                                np.where(inside, dy, np.float32(0)).view(np.uint32))
  for name, got in rest:
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8), err_msg=name)
