"""pi_backend packing: the C layout, round trips, the byte identity with the JAX side's
uint8 packing (np.packbits(x >= 0, bitorder='little'), which quantizers/packing.py uses),
and the weight packings for the XNOR kernels."""
import sys

import numpy as np
import pytest

from pi_backend import kernels as K
from tests.pi_backend import reference as ref

LENGTHS = [1, 2, 7, 8, 9, 31, 63, 64, 65, 127, 128, 129, 130, 200]
LEADING = [(), (1,), (3,), (2, 5)]


def _inputs(shape, seed):
  """Random floats with exact zeros, negative zeros and tiny values of both signs."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  flat = x.reshape(-1)
  specials = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45], np.float32)
  flat[::4] = specials[np.arange(flat[::4].size) % specials.size]
  return x


def test_words():
  assert [K.words(n) for n in (0, 1, 63, 64, 65, 128, 129)] == [0, 1, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("n", LENGTHS)
def test_pack_matches_the_reference_and_round_trips(n):
  lead = LEADING[n % len(LEADING)]
  x = _inputs(lead + (n,), seed=n)
  p = K.pack(x)
  assert p.dtype == np.uint64 and p.shape == lead + (K.words(n),)
  np.testing.assert_array_equal(p, ref.pack_u64(x))
  np.testing.assert_array_equal(K.unpack(p, n), ref.sign(x))
  if n % 64:  # padding bits are zero
    assert not np.any(p[..., -1] >> np.uint64(n % 64))


@pytest.mark.parametrize("n", LENGTHS)
def test_packed_bytes_equal_the_jax_uint8_packing(n):
  """Byte for byte: the C words, read as little-endian bytes, are np.packbits(x >= 0,
  bitorder='little') (the JAX side's layout) followed by zero bytes up to 8 * words."""
  x = _inputs((3, n), seed=100 + n)
  jax_layout = ref.packbits_u8(x)                          # (3, ceil(n / 8)) uint8
  c_words = K.pack(x)
  c_bytes = c_words.astype("<u8").view(np.uint8)            # (3, 8 * words(n))
  nbytes = jax_layout.shape[-1]
  np.testing.assert_array_equal(c_bytes[:, :nbytes], jax_layout)
  assert not c_bytes[:, nbytes:].any()
  if sys.byteorder == "little":  # the raw memory itself, with no conversion
    np.testing.assert_array_equal(c_words.view(np.uint8)[:, :nbytes], jax_layout)
  np.testing.assert_array_equal(K.to_uint8(c_words, n), jax_layout)
  np.testing.assert_array_equal(K.from_uint8(jax_layout, n), c_words)


def test_from_uint8_clears_padding_bits():
  b = np.full((2, 2), 0xFF, np.uint8)                      # n = 10: 6 padding bits set
  words = K.from_uint8(b, 10)
  np.testing.assert_array_equal(words, np.full((2, 1), 0x3FF, np.uint64))
  np.testing.assert_array_equal(K.to_uint8(np.full((1, 1), ~np.uint64(0)), 10),
                                [[0xFF, 0x03]])


def test_special_values():
  x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45], np.float32)
  np.testing.assert_array_equal(K.unpack(K.pack(x), x.size), [1, 1, 1, -1, -1, 1, -1])


def test_unpack_ignores_padding_bits():
  p = np.array([[0xFFFF_FFFF_FFFF_FFF0]], np.uint64)
  np.testing.assert_array_equal(K.unpack(p, 5), [[-1, -1, -1, -1, 1]])


def test_zero_sizes():
  assert K.pack(np.zeros((0, 5), np.float32)).shape == (0, 1)
  assert K.pack(np.zeros((3, 0), np.float32)).shape == (3, 0)
  assert K.unpack(np.zeros((3, 0), np.uint64), 0).shape == (3, 0)


def test_out_argument():
  x = _inputs((4, 70), 1)
  out = np.empty((4, 2), np.uint64)
  assert K.pack(x, out=out) is out
  np.testing.assert_array_equal(out, ref.pack_u64(x))


@pytest.mark.parametrize("k,n", [(1, 1), (7, 3), (64, 5), (65, 2), (130, 9)])
def test_pack_transposed(k, n):
  w = _inputs((k, n), k * n)
  np.testing.assert_array_equal(K.pack_transposed(w), ref.pack_u64(np.ascontiguousarray(w.T)))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 3, 7, 5), (2, 3, 65, 4), (5, 1, 64, 3)])
def test_pack_conv_weights(shape):
  w = _inputs(shape, sum(shape))
  want = ref.pack_u64(np.ascontiguousarray(w.transpose(3, 0, 1, 2))).reshape(shape[3], -1)
  np.testing.assert_array_equal(K.pack_conv_weights(w), want)
