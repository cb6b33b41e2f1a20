"""Binary XNOR-popcount GEMM and the float-times-sign GEMMs against NumPy."""
import platform
from pathlib import Path

import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref

KS = [1, 7, 63, 64, 65, 130, 257]
# Every dispatch path of the XNOR kernels; the ones this CPU lacks are skipped (the x86
# ones run here, "neon" under qemu in test_arm.py; test_popcount_impls_match_cpuinfo
# checks that the detection does not skip one that this CPU has).
IMPLS = ["portable", "x86-popcnt", "neon", "x86-avx2", "x86-avx512bw"]


@pytest.fixture(params=IMPLS)
def impl(request):
  if request.param not in K.popcount_impls():
    pytest.skip(f"no {request.param} popcount on this CPU ({K.popcount_impls()})")
  assert K.set_popcount_impl(request.param) == request.param
  yield request.param
  K.set_popcount_impl("auto")


def _pm1(rng, shape):
  return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("m,n", [(1, 1), (3, 5), (9, 4), (2, 13)])
def test_xnor_gemm_matches_numpy(impl, k, m, n):
  rng = np.random.default_rng(k * 100 + m * 10 + n)
  a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
  want = (a @ b.T).astype(np.int32)
  pa, pb = K.pack(a), K.pack(b)
  np.testing.assert_array_equal(K.xnor_gemm(pa, pb, k), want)
  yf = K.xnor_gemm(pa, pb, k, dtype=np.float32)
  assert yf.dtype == np.float32
  np.testing.assert_array_equal(yf, want.astype(np.float32))


@pytest.mark.parametrize("m,n,k", [(11, 150, 65), (9, 64, 576), (200, 256, 256), (17, 193, 1),
                                   (4, 128, 8191), (2, 40, 66000), (13, 33, 130)])
def test_xnor_gemm_register_blocks_and_long_rows(impl, m, n, k):
  """Shapes around the SIMD kernels' blocks (4 x 2 or 3 x 2, and 8 x 1 vectors of 32 / 64
  rows), remainders in both directions, rows split into equal chunks of at most 31 bytes
  (k = 256: 16 + 16; k = 576: 3 x 24), and k past their 16-bit counters (> 8184 bytes)."""
  rng = np.random.default_rng(m * n + k)
  a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
  b[0] = -a[0] if m else b[0]  # a counter at its maximum: y = -k
  want = (a.astype(np.float64) @ b.T.astype(np.float64)).astype(np.int32)
  y = K.xnor_gemm(K.pack(a), K.pack(b), k)
  np.testing.assert_array_equal(y, want)
  assert y[0, 0] == -k
  np.testing.assert_array_equal(K.xnor_gemm(K.pack(a), K.pack(b), k, dtype=np.float32), want)


@pytest.mark.parametrize("m,n,k", [(200, 256, 256), (7, 300, 200), (10, 1000, 255), (8, 450, 320),
                                   (5, 640, 64), (13, 513, 1), (4, 1024, 129)])
def test_xnor_gemm_sweeps_of_blocks(impl, m, n, k):
  """The SIMD kernels take each group of rows of a through several pairs of blocks of b
  before the next group, as many as fit in 16 KiB of panel (XG_SWEEP_BYTES in
  xgemm_x86.c), whole pairs only; then a partial pair or a last single block, and the
  rows left after the groups through each pair of a sweep. Here: several sweeps of 4
  pairs (n = 1000, 1024), sweeps of 3 (k = 320: rows of 40 bytes), a partial last block
  (n = 300, 450, 513), rows counted in one pass (k <= 256) or in chunks (k > 256), int32
  and float32, into outputs at each of the 16 offsets of 4 bytes modulo 64."""
  rng = np.random.default_rng(m + n + k)
  a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
  b[n - 1] = -a[m - 1]  # a count at its maximum in the last block: y = -k
  want = (a @ b.T).astype(np.int32)
  pa, pb = K.pack(a), K.pack(b)
  np.testing.assert_array_equal(K.xnor_gemm(pa, pb, k), want)
  for dtype in (np.int32, np.float32):
    buf = np.full(m * n + 32, 77, dtype)
    for skip in range(16):  # the view's offset from buf's start (16-byte aligned)
      out = buf[skip:skip + m * n].reshape(m, n)
      assert K.xnor_gemm(pa, pb, k, dtype=dtype, out=out) is out
      np.testing.assert_array_equal(out, want.astype(dtype))
      assert np.all(buf[skip + m * n:] == 77)  # nothing written past the output
      buf[:] = 77


@pytest.mark.parametrize("k", [200, 249, 255, 256])
def test_xnor_gemm_rows_at_the_byte_counters_limit(impl, k):
  """Rows of 32 bytes (k 249..256) are counted in one pass of byte counters by the SIMD
  kernels: a byte holds 0..255, so a count of 0 and one of 256 (a row of a equal to a
  row of b, and its complement) look alike there and are counted again. Whole groups
  of rows and the rows left over, whole and partial blocks of b, int32 and float32."""
  rng = np.random.default_rng(k)
  m, n = 7, 130
  a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
  b[5], b[70], b[129], b[64] = a[1], -a[4], a[6], -a[0]   # c = 0, k, 0, k
  want = (a @ b.T).astype(np.int32)
  assert want[1, 5] == k and want[4, 70] == -k and want[6, 129] == k and want[0, 64] == -k
  pa, pb = K.pack(a), K.pack(b)
  np.testing.assert_array_equal(K.xnor_gemm(pa, pb, k), want)
  np.testing.assert_array_equal(K.xnor_gemm(pa, pb, k, dtype=np.float32), want)
  ones = np.ones((6, k), np.float32)   # every count 0 (or 256)
  np.testing.assert_array_equal(K.xnor_gemm(K.pack(ones), K.pack(np.ones((64, k), np.float32)), k),
                                np.full((6, 64), k))
  np.testing.assert_array_equal(K.xnor_gemm(K.pack(ones), K.pack(-np.ones((64, k), np.float32)), k),
                                np.full((6, 64), -k))


def test_popcount_impls_match_cpuinfo():
  impls = K.popcount_impls()
  assert impls[0] == "portable" and K.popcount_impl() == impls[-1]  # auto = the fastest
  machine = platform.machine().lower()
  if machine in ("x86_64", "amd64") and Path("/proc/cpuinfo").exists():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
    want = ["portable"] + [name for name, need in [
        ("x86-popcnt", {"popcnt"}), ("x86-avx2", {"avx2"}),
        ("x86-avx512bw", {"avx512f", "avx512bw"})] if need <= flags]
    assert impls == want, f"CPU flags say {want}, the library found {impls}"
  elif machine in ("aarch64", "arm64"):
    assert impls == ["portable", "neon"]


@pytest.mark.parametrize("k", [7, 65, 130])
def test_xnor_gemm_ignores_garbage_padding_bits(impl, k):
  rng = np.random.default_rng(k)
  a, b = _pm1(rng, (4, k)), _pm1(rng, (6, k))
  pa, pb = K.pack(a), K.pack(b)
  pad = ~np.uint64((1 << (k % 64)) - 1)
  pa[:, -1] |= pad
  pb[::2, -1] |= pad
  np.testing.assert_array_equal(K.xnor_gemm(pa, pb, k), a @ b.T)


def test_xnor_gemm_k_zero_and_empty():
  np.testing.assert_array_equal(K.xnor_gemm(np.zeros((2, 0), np.uint64),
                                            np.zeros((3, 0), np.uint64), 0), np.zeros((2, 3)))
  assert K.xnor_gemm(np.zeros((0, 1), np.uint64), np.zeros((3, 1), np.uint64), 5).shape == (0, 3)


def test_xnor_gemm_dense_layer_with_pack_transposed():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 70)).astype(np.float32)
  w = rng.standard_normal((70, 33)).astype(np.float32)
  y = K.xnor_gemm(K.pack(x), K.pack_transposed(w), 70, dtype=np.float32)
  np.testing.assert_array_equal(y, ref.sign(x) @ ref.sign(w))


def _close(got, want, terms):
  """float32 sums in another order: error ~ eps * (number of terms) * magnitude."""
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * terms * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("m,n", [(1, 1), (5, 3), (4, 65), (3, 130)])
def test_float_sign_gemms(k, m, n):
  rng = np.random.default_rng(k + 7 * m + 13 * n)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  w.reshape(-1)[::5] = 0.0  # sign(0) = +1
  w.reshape(-1)[1::7] = -0.0
  dy = rng.standard_normal((m, n)).astype(np.float32)
  wb = ref.sign(w).astype(np.float64)
  x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
  wp = K.pack(w)                                          # (k, words(n))
  # forward, first layer: x . sign(W)
  _close(K.sign_matmul(x, w), x64 @ wb, k)
  _close(K.sign_matmul_packed(x, wp, n), x64 @ wb, k)
  np.testing.assert_array_equal(K.sign_matmul(x, w), K.sign_matmul_packed(x, wp, n))
  # backward to the input: dy . sign(W)^T
  _close(K.matmul_sign_t(dy, w), dy64 @ wb.T, n)
  np.testing.assert_array_equal(K.matmul_sign_t(dy, w), K.matmul_sign_t_packed(dy, wp))
  # backward to the weights: sign(x)^T . dy (packed x) and x^T . dy (real x)
  _close(K.sign_t_matmul(K.pack(x), k, dy), ref.sign(x).astype(np.float64).T @ dy64, m)
  _close(K.t_matmul(x, dy), x64.T @ dy64, m)


def test_float_gemms_zero_sizes():
  z = np.zeros
  assert K.sign_matmul(z((0, 3), np.float32), z((3, 4), np.float32)).shape == (0, 4)
  np.testing.assert_array_equal(K.sign_matmul(z((2, 0), np.float32), z((0, 4), np.float32)),
                                z((2, 4)))
  np.testing.assert_array_equal(K.matmul_sign_t(z((2, 0), np.float32), z((3, 0), np.float32)),
                                z((2, 3)))
  np.testing.assert_array_equal(K.sign_t_matmul(z((0, 1), np.uint64), 5, z((0, 3), np.float32)),
                                z((5, 3)))
  np.testing.assert_array_equal(K.t_matmul(z((0, 5), np.float32), z((0, 3), np.float32)),
                                z((5, 3)))


def test_popcount_impl_names():
  assert K.popcount_impl() in IMPLS
  assert K.set_popcount_impl("portable") == "portable"
  assert K.set_popcount_impl("auto") == K.popcount_impl()
  with pytest.raises(ValueError, match="impl='fast'"):
    K.set_popcount_impl("fast")
  missing = [name for name in IMPLS if name not in K.popcount_impls()]
  for name in missing:  # e.g. neon on x86: refused, and the choice in use is kept
    with pytest.raises(ValueError, match=f"impl='{name}' is not available on this CPU"):
      K.set_popcount_impl(name)
    assert K.popcount_impl() == K.popcount_impls()[-1]
