"""Sign STE mask and 2x2 max pooling (1-bit argmax mask, first maximum wins)."""
import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 64), (2, 65), (2, 3, 130), (4, 5, 5, 3)])
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_sign_ste(shape, clip):
  rng = np.random.default_rng(len(shape) + shape[-1])
  x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
  x.reshape(-1)[::6] = 0.0
  x.reshape(-1)[1::11] = clip         # |x| == clip is inside the mask
  x.reshape(-1)[2::13] = -clip
  y, mask = K.sign_ste(x, clip=clip)
  np.testing.assert_array_equal(y, ref.sign(x))
  np.testing.assert_array_equal(mask, ref.pack_bool_u64(np.abs(x) <= clip))
  dy = rng.standard_normal(shape).astype(np.float32)
  np.testing.assert_array_equal(K.sign_ste_backward(dy, mask),
                                np.where(np.abs(x) <= clip, dy, 0))


def test_sign_ste_nan_and_inf():
  x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
  y, mask = K.sign_ste(x)
  np.testing.assert_array_equal(y, [-1, 1, -1, 1])
  np.testing.assert_array_equal(K.unpack(mask, 4), [-1, -1, -1, 1])


SHAPES = [(1, 2, 2, 1), (2, 4, 6, 3), (1, 5, 7, 65), (2, 3, 3, 64), (1, 6, 5, 130)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("binary", [False, True])
def test_max_pool(shape, binary):
  rng = np.random.default_rng(sum(shape) + binary)
  if binary:  # +-1 inputs (CNV pools after sign): ties everywhere
    x = ref.sign(rng.standard_normal(shape)).astype(np.float32)
  else:
    x = rng.integers(-3, 4, shape).astype(np.float32)  # small ints: some ties
  y, mask = K.max_pool2x2(x)
  want_y, want_mask = ref.max_pool2x2(x)
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_array_equal(mask, ref.pack_bool_u64(want_mask))
  # exactly one bit per window
  m = K.unpack(mask, shape[3]) > 0
  b, h2, w2, c = m.shape
  per_window = m.reshape(b, h2 // 2, 2, w2 // 2, 2, c).sum(axis=(2, 4))
  assert np.all(per_window == 1)
  dy = rng.standard_normal(want_y.shape).astype(np.float32)
  np.testing.assert_array_equal(K.max_pool2x2_backward(dy, mask, shape),
                                ref.max_pool2x2_backward(dy, want_mask, shape))


def test_max_pool_ties_go_to_the_first_in_row_major_order():
  x = np.array([[1, 3], [3, 3]], np.float32).reshape(1, 2, 2, 1)
  y, mask = K.max_pool2x2(x)
  assert y.item() == 3
  np.testing.assert_array_equal(K.unpack(mask, 1).reshape(2, 2), [[-1, 1], [-1, -1]])


def test_max_pool_nan_window():
  x = np.array([[1, np.nan], [5, 2]], np.float32).reshape(1, 2, 2, 1)
  y, mask = K.max_pool2x2(x)
  assert np.isnan(y.item())
  np.testing.assert_array_equal(K.unpack(mask, 1).reshape(2, 2), [[-1, -1], [-1, 1]])
