"""[ReLU ->] overlapping max pool with SAME padding, NHWC: the 3x3/2 pool of the
ResNet stems, which sees the largest float tensor of those models.

standard: jax.nn.relu, then jax.lax.reduce_window max (as flax's nn.max_pool),
differentiated by autodiff. XLA keeps the float input for the backward pass; on the
CPU its select-and-scatter also materialises int32 window indices of the padded
input.
proposed: a custom_vjp that keeps, for each output, the index 0..k*k-1 of its
window's first maximum in row-major order, or k*k where the ReLU zeroes the output
(a maximum <= 0). That is 4 bits per output, two per byte along the channels: for
the stem's stride 2, 1 bit per input element, as METHOD.md's max pool. Backward:
each output's dy goes to the position of its maximum; where windows overlap, the
contributions add.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from bnn.ops import common

MAX_WINDOW = 3  # k * k + 1 indices must fit in 4 bits


def stem_pool(x: jax.Array, *, method: str, relu: bool, window: int = 3,
              stride: int = 2) -> jax.Array:
  """x: (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), C): the max over each
  window x window patch (SAME padding), after a ReLU when relu is set."""
  common.check_method(method)
  if x.ndim != 4:
    raise ValueError(f"stem_pool: x has shape {x.shape}; expected 4 axes (B, H, W, C)")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"stem_pool: x has dtype {x.dtype}; expected a floating dtype")
  for name, v, hi in (("window", window, MAX_WINDOW), ("stride", stride, None)):
    if type(v) is not int or v < 1 or (hi is not None and v > hi):
      raise ValueError(f"stem_pool: {name}={v!r}; expected an int in [1, {hi or 'inf'}]")
  if method == "standard":
    h = jax.nn.relu(x) if relu else x
    return jax.lax.reduce_window(h, np.array(-np.inf, x.dtype), jax.lax.max,
                                 (1, window, window, 1), (1, stride, stride, 1), "SAME")
  return _proposed(x.shape[1:], window, stride, relu)(x)


def _geometry(size: int, window: int, stride: int) -> tuple[int, int, int]:
  """(output size, padding before, padding after) of SAME padding along one axis."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + window - size, 0)
  return out, total // 2, total - total // 2


def pack_nibbles(idx: jax.Array) -> jax.Array:
  """uint8 values < 16, (..., C) -> (..., ceil(C / 2)): channel 2j in the low nibble,
  2j + 1 in the high one."""
  if idx.shape[-1] % 2:
    idx = jnp.pad(idx, [(0, 0)] * (idx.ndim - 1) + [(0, 1)])
  return idx[..., 0::2] | (idx[..., 1::2] << 4)


def unpack_nibbles(packed: jax.Array, channels: int) -> jax.Array:
  idx = jnp.stack([packed & 15, packed >> 4], axis=-1)
  return idx.reshape(*packed.shape[:-1], -1)[..., :channels]


@functools.lru_cache(maxsize=None)
def _proposed(in_shape: tuple[int, int, int], window: int, stride: int, relu: bool):
  (h, w, c), k, s = in_shape, window, stride
  (ho, pt, pb), (wo, pl, pr) = _geometry(h, k, s), _geometry(w, k, s)
  offsets = [(a, b) for a in range(k) for b in range(k)]  # row-major window order

  def windows(xp):
    return [xp[:, a:a + s * (ho - 1) + 1:s, b:b + s * (wo - 1) + 1:s, :] for a, b in offsets]

  def forward(x):
    # XLA materialises xp once. Padding each window's slice instead, with the max from
    # a reduce_window, had XLA materialise five or all nine of the slices: 15-35% more
    # at ResNetE-18's peak, which is here, in the forward pass.
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
    patches = windows(xp)
    return patches, functools.reduce(jnp.maximum, patches)

  @jax.custom_vjp
  def pool(x):
    y = forward(x)[1]
    return jnp.maximum(y, 0) if relu else y

  def fwd(x):
    patches, y = forward(x)
    # The first maximum wins. With no match at all (a NaN), offset (pt, pl) does: it is
    # inside the input in every window, so each dy still goes somewhere.
    idx = jnp.full(y.shape, pt * k + pl, jnp.uint8)
    for j in reversed(range(k * k)):
      idx = jnp.where(patches[j] == y, jnp.uint8(j), idx)
    if relu:
      idx = jnp.where(y > 0, idx, jnp.uint8(k * k))
      y = jnp.maximum(y, 0)
    packed = pack_nibbles(idx)
    # Only the backward pass reads the argmax, so XLA computed it there, keeping the
    # padded input and y alive through the forward pass (Bi-Real-18's peak). Making y
    # depend on it (a nibble is at most 9, never 15) computes it here. A reduction, as in
    # common.tie: one element of the fused argmax would be recomputed for every output.
    never = jnp.max(packed.reshape(-1)[:16] & 15) == 15
    return jnp.where(never, jnp.asarray(jnp.nan, y.dtype), y), packed

  def bwd(packed, dy):
    idx = unpack_nibbles(common.tie(packed, dy), c)
    zero = jnp.zeros((), dy.dtype)
    # Padded input row R = s * m + p takes output row i = m - a // s from window
    # offset a = p (mod s). So dx is built one phase (p, q) at a time, each a sum of
    # shifted outputs, then the phases are interleaved and the padding cropped: no
    # scatter, and XLA materialises the interleaved phases and the crop. Placing each
    # window offset by interior padding instead cost 9 float tensors of the input size.
    mh, mw = -(-(h + pt + pb) // s), -(-(w + pl + pr) // s)
    phases = [[jnp.zeros((dy.shape[0], mh, mw, c), dy.dtype) for _ in range(s)]
              for _ in range(s)]
    for j, (a, b) in enumerate(offsets):
      routed = jnp.where(idx == j, dy, zero)
      da, db = a // s, b // s
      phases[a % s][b % s] = phases[a % s][b % s] + jnp.pad(
          routed, ((0, 0), (da, mh - ho - da), (db, mw - wo - db), (0, 0)))
    dx = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # (B, mh, s, mw, s, C)
    dx = dx.reshape(dy.shape[0], mh * s, mw * s, c)
    return (dx[:, pt:pt + h, pl:pl + w, :],)

  pool.defvjp(fwd, bwd)
  return pool
