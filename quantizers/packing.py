"""Bit packing along the last axis, the one layout shared with pi_backend.

Convention (ARCHITECTURE.md): +1 <-> bit 1, -1 <-> bit 0, i.e. bit = (x >= 0), so
sign(0) = +1. Eight consecutive elements of the last axis go into one uint8,
element j of a group in bit j (little bit order). A last axis of length n packs
into ceil(n / 8) bytes; the padding bits of the final byte are always 0 and
``unpack`` drops them, so any length round-trips.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def packed_size(n: int) -> int:
  """Bytes needed for a last axis of n elements."""
  return -(-n // 8)


def pack(x: jnp.ndarray) -> jnp.ndarray:
  """Packs ``x >= 0`` (or a boolean array) along the last axis into uint8."""
  if x.ndim == 0:
    raise ValueError("pack() needs at least one axis; got a scalar")
  if x.size == 0:  # e.g. an empty batch, which XLA cannot reshape into groups of 8
    raise ValueError(f"pack() got an array of shape {x.shape} with no elements; expected "
                     f"at least one")
  bits = x if x.dtype == jnp.bool_ else x >= 0
  pad = -bits.shape[-1] % 8
  if pad:
    bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, pad)])
  # a uint8 sum of the shifted bits (disjoint, so the sum is their OR), not
  # jnp.packbits: packbits sums in uint32, and XLA keeps that uint32 array (4x the
  # bytes) when the bits are saved for the backward pass. An add, not an or: a
  # reduce split over devices becomes an all-reduce, which the CPU has for add only.
  groups = bits.reshape(*bits.shape[:-1], -1, 8).astype(jnp.uint8)
  shifted = groups << jnp.arange(8, dtype=jnp.uint8)
  return jax.lax.reduce(shifted, jnp.uint8(0), jax.lax.add, (shifted.ndim - 1,))


def unpack_bits(packed: jnp.ndarray, n: int) -> jnp.ndarray:
  """The boolean array of length ``n`` on the last axis that ``pack`` stored."""
  _check(packed, n)
  return jnp.unpackbits(packed, axis=-1, count=n, bitorder="little").astype(jnp.bool_)


def unpack(packed: jnp.ndarray, n: int, dtype=jnp.float32) -> jnp.ndarray:
  """The +-1 array of length ``n`` on the last axis that ``pack`` stored."""
  bits = unpack_bits(packed, n)
  return jnp.where(bits, jnp.ones((), dtype), -jnp.ones((), dtype))


def _check(packed: jnp.ndarray, n: int) -> None:
  if packed.dtype != jnp.uint8:
    raise TypeError(f"unpack() expects uint8 packed bits, got {packed.dtype}")
  if packed.ndim == 0 or packed.shape[-1] != packed_size(n):
    raise ValueError(f"unpack(): a last axis of {n} elements packs into "
                     f"{packed_size(n)} bytes, but the packed array has shape {packed.shape}")
