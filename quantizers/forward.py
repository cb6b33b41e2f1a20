"""Forward quantizers with their straight-through gradients."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from quantizers.base import ForwardQuantizer, sign
from quantizers.registry import register


@register
@dataclasses.dataclass(frozen=True)
class SteSign(ForwardQuantizer):
  """sign(x) forward; gradient 1{|x| <= clip} (the hardtanh STE of BinaryNet)."""

  name = "ste_sign"
  binary = True
  clip: float = 1.0

  def __post_init__(self):
    if not self.clip > 0:
      raise ValueError(f"ste_sign: clip={self.clip!r} must be > 0")

  def __call__(self, x):
    return _ste(x, sign(x), self.ste_mask(x))

  def ste_mask(self, x):
    return jnp.abs(x) <= self.clip


def _ste(x, forward_value, mask):
  """forward_value in the forward pass; gradient = mask in the backward pass."""
  mask = mask.astype(x.dtype)
  return jax.lax.stop_gradient(forward_value - x * mask) + x * mask
