"""Bit packing (quantizers/packing.py): layout, round trips, padding, jit/vmap, errors.

Layout under test: +1 <-> bit 1 (bit = x >= 0, so sign(0) = +1), packed along the
last axis, element j of each group of 8 in bit j of one uint8 (little bit order),
padding bits of the last byte zero.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantizers import packing, sign

# Leading shapes for the length sweep. Each length compiles its own program (about
# 0.1-0.25 s of CPU each), so rather than the full (length x leading shape) product,
# length n uses LEADING[(n + n // 8) % 4]: every length is covered, and every
# leading shape sees every residue mod 8 and several byte counts.
LEADING = [(), (3,), (2, 5), (1, 3, 7)]
# Lengths up to 3 bytes and around 4 and 8 bytes run always; the rest of 1..70 is
# marked slow (deselect with -m "not slow").
CORE_LENGTHS = set(range(1, 18)) | {31, 32, 33, 63, 64, 65, 70}
LENGTHS = [n if n in CORE_LENGTHS else pytest.param(n, marks=pytest.mark.slow)
           for n in range(1, 71)]


def _np_pack(x):
  """The pure-numpy reference layout."""
  return np.packbits(np.asarray(x) >= 0, axis=-1, bitorder="little")


def _inputs(shape, seed):
  """Random floats with exact zeros, negative zeros and tiny values of both signs."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  flat = x.reshape(-1)
  specials = np.array([0.0, -0.0, 1e-30, -1e-30], np.float32)
  flat[::5] = specials[np.arange(flat[::5].size) % 4]
  return x


@jax.jit
def _round_trip(x):
  packed = packing.pack(x)
  return packed, packing.unpack(packed, x.shape[-1]), packing.unpack_bits(packed, x.shape[-1])


def test_the_sweep_covers_every_leading_shape_and_residue():
  assert {LEADING[(n + n // 8) % 4] for n in CORE_LENGTHS} == set(LEADING)
  seen_all = {(LEADING[(n + n // 8) % 4], n % 8) for n in range(1, 71)}
  assert len(seen_all) == 32


def test_packed_size():
  for n in range(0, 200):
    assert packing.packed_size(n) == -(-n // 8) == (n + 7) // 8


@pytest.mark.parametrize("n", LENGTHS)
def test_every_length_round_trips_and_matches_numpy(n):
  lead = LEADING[(n + n // 8) % 4]
  x = _inputs(lead + (n,), seed=n)
  packed, unpacked, bits = (np.asarray(a) for a in _round_trip(jnp.asarray(x)))
  nbytes = packing.packed_size(n)
  assert packed.dtype == np.uint8 and packed.shape == lead + (nbytes,)
  np.testing.assert_array_equal(packed, _np_pack(x))
  assert unpacked.dtype == np.float32 and unpacked.shape == x.shape
  np.testing.assert_array_equal(unpacked, np.where(x >= 0, 1.0, -1.0))
  assert bits.dtype == np.bool_
  np.testing.assert_array_equal(bits, x >= 0)
  # Padding bits of the last byte are zero: all +1 sets exactly the n % 8 low bits.
  # (Same shape as x: no new compilation.)
  all_ones = np.asarray(_round_trip(jnp.ones(x.shape, jnp.float32))[0])
  full = np.full(lead + (nbytes - 1,), 0xFF, np.uint8)
  last = np.full(lead + (1,), (1 << (n % 8)) - 1 if n % 8 else 0xFF, np.uint8)
  np.testing.assert_array_equal(all_ones, np.concatenate([full, last], axis=-1))


def test_hand_built_layout():
  #            j: 0   1   2   3   4   5   6   7 | 0   1   2
  x = np.array([+1, -1, -1, +1, +1, +1, -1, -1, +1, -1, +1], np.float32)
  # byte 0: bits 0, 3, 4, 5 set -> 0b00111001 = 0x39; byte 1: bits 0, 2 -> 0b101 = 0x05
  expected = np.array([0x39, 0x05], np.uint8)
  np.testing.assert_array_equal(np.asarray(packing.pack(jnp.asarray(x))), expected)
  np.testing.assert_array_equal(_np_pack(x), expected)
  both = np.stack([x, -x])  # rows pack independently; -x flips the 11 data bits only
  np.testing.assert_array_equal(np.asarray(packing.pack(jnp.asarray(both))),
                                [[0x39, 0x05], [0xC6, 0x02]])
  # And back: 0b10100101 is +1 at j = 0, 2, 5, 7.
  np.testing.assert_array_equal(
      np.asarray(packing.unpack(jnp.asarray([0b10100101], jnp.uint8), 8)),
      [1, -1, 1, -1, -1, 1, -1, 1])


def test_sign_of_zero_packs_as_plus_one():
  x = jnp.asarray([0.0, -0.0, 1e-30, -1e-30, -1.0, 2.0], jnp.float32)
  packed = packing.pack(x)
  np.testing.assert_array_equal(np.asarray(packed), [0b100111])
  np.testing.assert_array_equal(np.asarray(packing.unpack(packed, 6)), [1, 1, 1, -1, -1, 1])
  np.testing.assert_array_equal(np.asarray(packing.unpack(packed, 6)), np.asarray(sign(x)))
  np.testing.assert_array_equal(np.asarray(packing.pack(sign(x))), np.asarray(packed))


def test_input_dtypes():
  x = _inputs((4, 13), seed=7)
  expected = _np_pack(x)
  for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
    # (+-1e-30 becomes +-0 in float16, so compare with the cast values)
    xd = jnp.asarray(x, dtype)
    np.testing.assert_array_equal(np.asarray(packing.pack(xd)),
                                  _np_pack(np.asarray(xd.astype(jnp.float32))))
  # Booleans are taken as the bits themselves; integers by their sign.
  np.testing.assert_array_equal(np.asarray(packing.pack(jnp.asarray(x >= 0))), expected)
  ints = np.where(x >= 0, 1, -1).astype(np.int8)
  np.testing.assert_array_equal(np.asarray(packing.pack(jnp.asarray(ints))), expected)


def test_unpack_output_dtypes():
  packed = jnp.asarray([[0x39, 0x05]], jnp.uint8)
  expected = [[1, -1, -1, 1, 1, 1, -1, -1, 1, -1, 1]]
  for dtype in (jnp.float32, jnp.float16, jnp.bfloat16, jnp.int8):
    out = packing.unpack(packed, 11, dtype)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), expected)


def test_jit_and_vmap():
  x = jnp.asarray(_inputs((4, 3, 13), seed=8))
  expected = _np_pack(np.asarray(x))
  np.testing.assert_array_equal(np.asarray(jax.jit(packing.pack)(x)), expected)
  np.testing.assert_array_equal(np.asarray(jax.vmap(packing.pack)(x)), expected)
  packed = jnp.asarray(expected)
  unpack = jax.jit(packing.unpack, static_argnums=(1, 2))
  signs = np.where(np.asarray(x) >= 0, 1.0, -1.0)
  np.testing.assert_array_equal(np.asarray(unpack(packed, 13, jnp.float32)), signs)
  np.testing.assert_array_equal(np.asarray(jax.vmap(lambda p: packing.unpack(p, 13))(packed)),
                                signs)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(jax.vmap(lambda p: packing.unpack_bits(p, 13)))(packed)),
      np.asarray(x) >= 0)
  # vmap of a 1-D pack: each example is a vector.
  np.testing.assert_array_equal(np.asarray(jax.vmap(packing.pack)(x[0])), expected[0])


def test_pack_of_a_scalar_raises():
  with pytest.raises(ValueError, match="at least one axis"):
    packing.pack(jnp.float32(1.0))
  # Under vmap, a vector's elements are scalars.
  with pytest.raises(ValueError, match="at least one axis"):
    jax.vmap(packing.pack)(jnp.ones(5))


@pytest.mark.parametrize("fn", [packing.unpack, packing.unpack_bits])
def test_unpack_with_the_wrong_byte_count_raises(fn):
  packed = jnp.zeros((4, 2), jnp.uint8)
  fn(packed, 9)
  fn(packed, 16)
  for n in (8, 17, 0):  # 1, 3 and 0 bytes
    with pytest.raises(ValueError, match=rf"{n} elements packs into {packing.packed_size(n)} "
                                         r"bytes.*\(4, 2\)"):
      fn(packed, n)
  with pytest.raises(ValueError, match=r"packs into"):
    fn(jnp.zeros((), jnp.uint8), 8)


@pytest.mark.parametrize("fn", [packing.unpack, packing.unpack_bits])
@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.float32, jnp.bool_])
def test_unpack_with_the_wrong_dtype_raises(fn, dtype):
  with pytest.raises(TypeError, match=r"uint8.*" + jnp.dtype(dtype).name):
    fn(jnp.zeros((3, 2), dtype), 13)


def test_pack_of_an_empty_array_raises():
  with pytest.raises(ValueError, match=r"shape \(0, 6\) with no elements"):
    packing.pack(jnp.ones((0, 6)))
