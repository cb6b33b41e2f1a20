"""Gradient quantizers: applied to a cotangent inside a custom backward pass."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from quantizers.base import GradientQuantizer, sign
from quantizers.registry import register


@register
@dataclasses.dataclass(frozen=True)
class Identity(GradientQuantizer):
  """Leaves the gradient as it is (float32)."""

  name = "identity"

  def __call__(self, g, key=None):
    return g


@register
@dataclasses.dataclass(frozen=True)
class Float16(GradientQuantizer):
  """Rounds to the nearest float16 value (the final paper's dX format)."""

  name = "float16"

  def __call__(self, g, key=None):
    return g.astype(jnp.float16).astype(g.dtype)


@register
@dataclasses.dataclass(frozen=True)
class BFloat16(GradientQuantizer):
  """Rounds to the nearest bfloat16 value (8 exponent bits, 7 mantissa bits)."""

  name = "bfloat16"

  def __call__(self, g, key=None):
    return g.astype(jnp.bfloat16).astype(g.dtype)


@register
@dataclasses.dataclass(frozen=True)
class SignScaled(GradientQuantizer):
  """sign(g) / sqrt(N), N = g.size: the proposed method's weight gradient.

  sign(0) = +1, as everywhere in the project.
  """

  name = "sign_scaled"

  def __call__(self, g, key=None):
    return sign(g) * jnp.asarray(1.0 / (g.size ** 0.5), g.dtype)
