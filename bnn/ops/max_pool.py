"""2x2 max pooling, stride 2, VALID padding, NHWC.

With an odd height or width the last row or column is dropped; its gradient is 0.

standard: jax.lax.reduce_window max, differentiated by autodiff.
proposed: a custom_vjp that keeps only which input of each window was the max,
as a 1-bit mask per input element of the cropped region, packed along the
channels (exactly one bit set per window). Ties go to the FIRST maximum in
row-major window order (0,0), (0,1), (1,0), (1,1). In CNV, pooling follows sign,
so its inputs are +-1 and ties are the rule, not the exception. Backward: dy is
routed to the masked position of each window, everything else gets 0.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bnn.ops import common
from quantizers import pack, unpack_bits


def max_pool(x: jax.Array, *, method: str) -> jax.Array:
  """x: (B, H, W, C) -> (B, H // 2, W // 2, C)."""
  common.check_method(method)
  if x.ndim != 4:
    raise ValueError(f"max_pool: x has shape {x.shape}; expected 4 axes (B, H, W, C)")
  if x.shape[1] < 2 or x.shape[2] < 2:
    raise ValueError(f"max_pool: x has shape {x.shape}; a 2x2 window needs H >= 2 and "
                     f"W >= 2")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"max_pool: x has dtype {x.dtype}; expected a floating dtype")
  if method == "standard":
    # A concrete (NumPy) -inf lets JAX recognise the max monoid, which has a gradient.
    return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max,
                                 (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return _proposed(x.shape[1] % 2, x.shape[2] % 2)(x)


def _windows(x):
  """(B, H, W, C) with even H, W -> (B, H/2, W/2, 4, C), window order row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4, c)


def _unwindows(x):
  """Inverse of _windows."""
  b, ho, wo, _, c = x.shape
  x = x.reshape(b, ho, wo, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * ho, 2 * wo, c)


@functools.lru_cache(maxsize=None)
def _proposed(drop_h: int, drop_w: int):
  def crop(x):
    return x[:, :x.shape[1] - drop_h, :x.shape[2] - drop_w, :]

  @jax.custom_vjp
  def pool(x):
    return jnp.max(_windows(crop(x)), axis=3)

  def fwd(x):
    win = _windows(crop(x))
    y = jnp.max(win, axis=3)
    # First maximum wins: a position is chosen if it equals the max and no earlier
    # one did. The last position takes whatever is left, so exactly one is chosen
    # per window (also when a NaN makes every comparison false).
    chosen, taken = [], jnp.zeros(y.shape, jnp.bool_)
    for k in range(3):
      hit = (win[:, :, :, k] == y) & ~taken
      chosen.append(hit)
      taken = taken | hit
    chosen.append(~taken)
    mask = _unwindows(jnp.stack(chosen, axis=3))
    return y, pack(mask)

  def bwd(bits, dy):
    mask = _windows(unpack_bits(common.tie(bits, dy), dy.shape[-1]))
    dx = _unwindows(jnp.where(mask, dy[:, :, :, None, :], jnp.zeros((), dy.dtype)))
    dx = jnp.pad(dx, ((0, 0), (0, drop_h), (0, drop_w), (0, 0)))
    return (dx,)

  pool.defvjp(fwd, bwd)
  return pool
