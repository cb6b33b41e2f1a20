"""Sign activation with a straight-through gradient.

standard: the forward quantizer itself (default ste_sign: sign(x), gradient
1{|x| <= 1}), differentiated by autodiff, which keeps a float mask per element.
proposed: a custom_vjp with the quantizer's forward value whose only residual is
the quantizer's STE mask, packed to 1 bit per element along the last axis:
  dx = dy * mask
This needs a binary quantizer whose gradient is an indicator (``ste_mask`` not
None), e.g. ste_sign. sign(0) = +1, as everywhere in the project.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import quantizers
from bnn.ops import common
from quantizers import ForwardQuantizer, pack, unpack_bits


def sign_activation(x: jax.Array, *, method: str, quantizer="ste_sign") -> jax.Array:
  """x (any shape) -> the quantizer's forward value (+-1 for a binary quantizer).

  quantizer: a forward-quantizer spec string (e.g. "ste_sign(clip=1.0)") or object.
  """
  common.check_method(method)
  q = quantizers.get(quantizer, "forward")
  if method == "standard":
    return q(x)
  if not _qualifies(q):
    raise ValueError(
        f"sign_activation(method='proposed'): quantizer {q.spec()} cannot be kept as a "
        f"1-bit mask: the proposed method needs a binary quantizer (+-1 output) whose "
        f"gradient is a 0/1 indicator (ste_mask not None). Registered forward "
        f"quantizers that qualify: {', '.join(_qualifying_names()) or '(none)'}; or use "
        f"method='standard'")
  return _proposed(q)(x)


def _qualifies(q: ForwardQuantizer) -> bool:
  return bool(q.binary) and q.ste_mask(jnp.zeros((1,), jnp.float32)) is not None


def _qualifying_names() -> list[str]:
  found = []
  for name in quantizers.names("forward"):
    try:
      if _qualifies(quantizers.get(name, "forward")):
        found.append(name)
    except Exception:  # pylint: disable=broad-except  # a quantizer without defaults
      continue
  return found


@functools.lru_cache(maxsize=None)
def _proposed(q: ForwardQuantizer):
  @jax.custom_vjp
  def sign_act(x):
    return q(x)

  def fwd(x):
    mask = jnp.atleast_1d(q.ste_mask(x))
    return q(x), pack(mask)

  def bwd(bits, dy):
    n = dy.shape[-1] if dy.ndim else 1
    mask = unpack_bits(bits, n).reshape(dy.shape)
    return (jnp.where(mask, dy, jnp.zeros((), dy.dtype)),)

  sign_act.defvjp(fwd, bwd)
  return sign_act
