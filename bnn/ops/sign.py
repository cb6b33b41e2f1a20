"""Sign activation with a straight-through gradient.

standard: the forward quantizer itself (default ste_sign: sign(x), gradient
1{|x| <= 1}), differentiated by autodiff, which keeps a float mask per element.
proposed: a custom_vjp with the quantizer's forward value. What it keeps depends on
the quantizer's pseudo-derivative:
  - an indicator (``ste_mask`` not None, e.g. ste_sign): the mask, packed to 1 bit
    per element along the last axis; dx = dy * mask.
  - any other bounded derivative (``ste_grad`` and ``ste_grad_range``, e.g.
    approx_sign, swish_sign): the derivative in 8-bit fixed point (one uint8 per
    element, see ``derivative_codec``); dx = dy * decoded derivative.
The quantizer must be binary (+-1 output). sign(0) = +1, as everywhere in the project.

The 8-bit format. With the derivative's range [lo, hi] (lo <= 0 <= hi), a step s
and a zero code z (an integer in 0..255, so that a derivative of 0 is exact):
    code  = clip(round(g / s) + z, 0, 255)          (uint8; round half to even)
    value = (code - z) * s
z and s are chosen to cover [lo, hi] with the smallest s: -z * s <= lo and
(255 - z) * s >= hi. For every g in [lo, hi] the error |value - g| <= s / 2, up to
float rounding of g / s (``derivative_codec`` returns s/2 as ``max_error``):
    approx_sign       [0, 2]           z = 0,  s = 2/255,  max error 1/255 ~ 0.0039
    swish_sign(b=5)   [-0.369, 5]      z = 18, s = 5/237,  max error ~ 0.0105
(0.2% of the derivative's peak in both cases).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

import quantizers
from bnn.ops import common
from quantizers import ForwardQuantizer, pack, unpack_bits

_LEVELS = 255  # largest uint8 code


def sign_activation(x: jax.Array, *, method: str, quantizer="ste_sign") -> jax.Array:
  """x (any shape) -> the quantizer's forward value (+-1 for a binary quantizer).

  quantizer: a forward-quantizer spec string (e.g. "ste_sign(clip=1.0)") or object.
  """
  common.check_method(method)
  q = quantizers.get(quantizer, "forward")
  if method == "standard":
    return q(x)
  if _has_mask(q):
    return _proposed_mask(q)(x)
  if _has_graded_derivative(q):
    return _proposed_graded(q)(x)
  raise ValueError(
      f"sign_activation(method='proposed'): quantizer {q.spec()} cannot be kept in a few "
      f"bits: the proposed method needs a binary quantizer (+-1 output) whose gradient "
      f"is either a 0/1 indicator (ste_mask not None; kept as 1 bit) or a bounded "
      f"derivative (ste_grad and ste_grad_range; kept as 8 bits). Registered forward "
      f"quantizers that qualify: {', '.join(_qualifying_names()) or '(none)'}; or use "
      f"method='standard'")


class DerivativeCodec(NamedTuple):
  """8-bit fixed point for a pseudo-derivative: value = (code - zero) * step."""

  step: float
  zero: int
  max_error: float  # step / 2: the rounding error bound inside the quantizer's range

  def encode(self, g: jax.Array) -> jax.Array:
    s = jnp.asarray(self.step, g.dtype)
    return jnp.clip(jnp.round(g / s) + self.zero, 0, _LEVELS).astype(jnp.uint8)

  def decode(self, code: jax.Array, dtype) -> jax.Array:
    return (code.astype(dtype) - jnp.asarray(self.zero, dtype)) * jnp.asarray(self.step, dtype)


def derivative_codec(q: ForwardQuantizer) -> DerivativeCodec:
  """The 8-bit format of q's pseudo-derivative (module docstring)."""
  return _codec(*(float(v) for v in q.ste_grad_range()))


@functools.lru_cache(maxsize=None)
def _codec(lo: float, hi: float) -> DerivativeCodec:
  if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi and lo < hi):
    raise ValueError(f"ste_grad_range() = ({lo}, {hi}); expected finite lo <= 0 <= hi, "
                     f"lo < hi")
  best = None
  for z in range(_LEVELS + 1):
    if (lo < 0 and z == 0) or (hi > 0 and z == _LEVELS):
      continue
    step = max(-lo / z if lo < 0 else 0.0, hi / (_LEVELS - z) if hi > 0 else 0.0)
    if best is None or step < best[0]:
      best = (step, z)
  step, z = best
  return DerivativeCodec(step, z, step / 2)


def _has_mask(q: ForwardQuantizer) -> bool:
  return bool(q.binary) and q.ste_mask(jnp.zeros((1,), jnp.float32)) is not None


def _has_graded_derivative(q: ForwardQuantizer) -> bool:
  return (bool(q.binary) and callable(getattr(q, "ste_grad", None))
          and callable(getattr(q, "ste_grad_range", None)))


def _qualifying_names() -> list[str]:
  found = []
  for name in quantizers.names("forward"):
    try:
      q = quantizers.get(name, "forward")
      if _has_mask(q) or _has_graded_derivative(q):
        found.append(name)
    except Exception:  # pylint: disable=broad-except  # a quantizer without defaults
      continue
  return found


@functools.lru_cache(maxsize=None)
def _proposed_mask(q: ForwardQuantizer):
  @jax.custom_vjp
  def sign_act(x):
    return q(x)

  def fwd(x):
    mask = jnp.atleast_1d(q.ste_mask(x))
    return q(x), pack(mask)

  def bwd(bits, dy):
    n = dy.shape[-1] if dy.ndim else 1
    mask = unpack_bits(common.tie(bits, dy), n).reshape(dy.shape)
    return (jnp.where(mask, dy, jnp.zeros((), dy.dtype)),)

  sign_act.defvjp(fwd, bwd)
  return sign_act


@functools.lru_cache(maxsize=None)
def _proposed_graded(q: ForwardQuantizer):
  codec = derivative_codec(q)

  @jax.custom_vjp
  def sign_act(x):
    return q(x)

  def fwd(x):
    return q(x), codec.encode(q.ste_grad(x))

  def bwd(codes, dy):
    return (dy * codec.decode(common.tie(codes, dy), dy.dtype),)

  sign_act.defvjp(fwd, bwd)
  return sign_act
