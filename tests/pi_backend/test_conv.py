"""Convolutions: the binary XNOR conv over packed im2col (zero padding included), the
first-layer conv with real x, and both backward passes, against NumPy (float64)."""
import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref

# (batch, h, w, c_in, c_out, kernel, strides, padding): odd sizes, channels around
# 64, kernels 1..5, strides 1..3, SAME / VALID / int / asymmetric explicit padding.
CASES = [
    (2, 5, 7, 3, 4, (3, 3), 1, "SAME"),
    (1, 6, 6, 65, 5, (3, 3), 1, "VALID"),
    (2, 7, 5, 64, 3, (3, 3), 2, "SAME"),
    (1, 9, 8, 1, 2, (5, 5), 1, "SAME"),
    (3, 4, 4, 70, 66, (1, 1), 1, "VALID"),
    (1, 8, 9, 7, 6, (2, 3), (2, 1), ((0, 2), (1, 0))),
    (2, 5, 5, 130, 3, (3, 3), 3, 1),
    (1, 3, 3, 9, 4, (3, 3), 1, 2),           # padding wider than half the kernel
    (1, 1, 1, 5, 3, (3, 3), 1, "SAME"),      # only the centre tap is valid
    (1, 11, 3, 63, 2, (4, 2), (3, 2), "SAME"),
]
# binary conv only: > 256 output positions (several popcount GEMM calls), 130 output
# channels (register blocks of 32 / 64 channels and a remainder)
BIG = len(CASES)
CASES.append((3, 12, 12, 64, 130, (3, 3), 1, "SAME"))
# ... and rows wider than a GEMM call's 256 positions: calls with padded taps (corrected
# per position) and calls without (K - 2 popcount written by the GEMM) in one conv
WIDE = len(CASES)
CASES.append((1, 3, 600, 64, 5, (3, 3), 1, "SAME"))
# ... and 300 output channels of rows of 16 bytes (a 2 x 1 kernel of 5 channels): the
# x86 GEMM sweeps 4 pairs of blocks per group of positions, in the counting mode that the
# padded taps need, then a partial pair; 70 positions, a row left after the groups
SWEEP = len(CASES)
CASES.append((2, 5, 7, 5, 300, (2, 1), 1, "SAME"))


def _case(i):
  b, h, w, c, co, kernel, strides, padding = CASES[i]
  rng = np.random.default_rng(i)
  x = rng.standard_normal((b, h, w, c)).astype(np.float32)
  wt = rng.standard_normal(kernel + (c, co)).astype(np.float32)
  wt.reshape(-1)[::9] = 0.0  # sign(0) = +1
  pads = K.conv_padding((h, w), kernel, strides, padding)
  st = (strides, strides) if isinstance(strides, int) else strides
  return x, wt, kernel, strides, padding, pads, st


@pytest.mark.parametrize("i", range(len(CASES)))
def test_binary_conv2d(i):
  x, wt, kernel, strides, padding, pads, st = _case(i)
  c = x.shape[3]
  want = ref.conv(ref.sign(x), ref.sign(wt), st, pads)
  xp, wp = K.pack(x), K.pack_conv_weights(wt)
  y = K.binary_conv2d(xp, c, wp, kernel, strides, padding)
  assert y.dtype == np.float32 and y.shape == want.shape
  np.testing.assert_array_equal(y, want)
  yi = K.binary_conv2d(xp, c, wp, kernel, strides, padding, dtype=np.int32)
  np.testing.assert_array_equal(yi, want.astype(np.int32))
  assert K.conv_output_hw(x.shape[1:3], kernel, strides, padding) == want.shape[1:3]


@pytest.mark.parametrize("i", [0, 2, 5, 8, BIG, WIDE, SWEEP])
def test_binary_conv2d_all_popcount_impls_agree(i):
  x, wt, kernel, strides, padding, pads, st = _case(i)
  xp, wp = K.pack(x), K.pack_conv_weights(wt)
  want = ref.conv(ref.sign(x), ref.sign(wt), st, pads)
  try:
    for impl in K.popcount_impls():
      assert K.set_popcount_impl(impl) == impl
      np.testing.assert_array_equal(
          K.binary_conv2d(xp, x.shape[3], wp, kernel, strides, padding), want,
          err_msg=f"popcount {impl}")
  finally:
    K.set_popcount_impl("auto")


@pytest.mark.parametrize("i", [0, 5, 6, 8])
def test_im2col_packed(i):
  x, wt, kernel, strides, padding, pads, st = _case(i)
  c = x.shape[3]
  patches, valid = K.im2col_packed(K.pack(x), c, kernel, strides, padding)
  ones = np.ones(x.shape[:3] + (1,), np.float32)
  p_valid = ref.patches(ones, kernel, st, pads)[..., 0]            # (b, oh, ow, kh, kw)
  p_x = ref.patches(ref.sign(x), kernel, st, pads)                 # zeros where padded
  taps = kernel[0] * kernel[1]
  np.testing.assert_array_equal(valid, p_valid.reshape(-1, taps).astype(np.uint8))
  bits = np.where(p_x > 0, 1.0, -1.0).astype(np.float32).reshape(-1, taps, c)
  want = ref.pack_u64(bits)                                        # (P, taps, words)
  want[p_valid.reshape(-1, taps) == 0] = 0                         # padded taps: zero
  np.testing.assert_array_equal(patches, want.reshape(patches.shape))


@pytest.mark.parametrize("i", range(BIG))
def test_first_layer_conv_and_backward(i):
  x, wt, kernel, strides, padding, pads, st = _case(i)
  b, h, w, c = x.shape
  co = wt.shape[3]
  ws = K.pack(wt)                                                  # (kh, kw, c, words(co))
  wb = ref.sign(wt)
  y = K.sign_conv2d(x, ws, co, strides, padding)
  want = ref.conv(x, wb, st, pads)
  taps = kernel[0] * kernel[1] * c
  np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * taps)
  dy = np.random.default_rng(100 + i).standard_normal(want.shape).astype(np.float32)
  dx = K.conv2d_backward_input(dy, ws, (h, w), strides, padding)
  np.testing.assert_allclose(dx, ref.conv_backward_input(dy, wb, x.shape, st, pads), rtol=0,
                             atol=1e-5 * taps * co)
  n_terms = dy.shape[0] * dy.shape[1] * dy.shape[2]
  dw = K.conv2d_backward_weight(x, dy, kernel, strides, padding)
  np.testing.assert_allclose(dw, ref.conv_backward_weight(x, dy, kernel, st, pads), rtol=0,
                             atol=1e-5 * n_terms)
  dwp = K.conv2d_backward_weight(K.pack(x), dy, kernel, strides, padding, c_in=c)
  np.testing.assert_allclose(dwp, ref.conv_backward_weight(ref.sign(x), dy, kernel, st, pads),
                             rtol=0, atol=1e-5 * n_terms)


def test_conv_padding_rules():
  # SAME: total = max((ceil(n / s) - 1) * s + k - n, 0), smaller half first
  assert K.conv_padding((5, 5), (3, 3), 1, "SAME") == ((1, 1), (1, 1))
  assert K.conv_padding((6, 7), (3, 3), 2, "SAME") == ((0, 1), (1, 1))
  assert K.conv_padding((4, 4), (2, 2), 1, "SAME") == ((0, 1), (0, 1))
  assert K.conv_padding((5, 5), (3, 3), 1, "valid") == ((0, 0), (0, 0))
  assert K.conv_padding((5, 5), (3, 3), 1, 2) == ((2, 2), (2, 2))
  assert K.conv_padding((5, 5), (3, 3), 1, ((0, 1), (2, 3))) == ((0, 1), (2, 3))
  for bad in ("FULL", -1, ((0, 1),), ((0, -1), (0, 0))):
    with pytest.raises(ValueError, match="padding="):
      K.conv_padding((5, 5), (3, 3), 1, bad)
  with pytest.raises(ValueError, match="larger than the padded input"):
    K.conv_padding((2, 2), (3, 3), 1, "VALID")


def test_zero_batch():
  y = K.binary_conv2d(np.zeros((0, 4, 4, 1), np.uint64), 3,
                      K.pack_conv_weights(np.ones((3, 3, 3, 2), np.float32)), (3, 3))
  assert y.shape == (0, 4, 4, 2)
