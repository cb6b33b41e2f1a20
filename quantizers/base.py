"""The two kinds of quantizer and what the binary ops ask of them."""
from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp

from quantizers.registry import Quantizer


@dataclasses.dataclass(frozen=True)
class GradientQuantizer(Quantizer):
  """Applied to a cotangent inside a hand-written backward pass.

  ``__call__(g, key)`` returns an array of g's shape and dtype whose values are
  representable in the quantizer's format. ``key`` is a PRNG key, needed only when
  ``stochastic`` is true.
  """

  kind: typing.ClassVar[str] = "gradient"

  @property
  def stochastic(self) -> bool:
    return False

  def __call__(self, g: jax.Array, key: jax.Array | None = None) -> jax.Array:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ForwardQuantizer(Quantizer):
  """Quantizes activations or weights; its gradient is a straight-through estimator.

  ``__call__(x)`` is differentiable by autodiff (the standard method).
  ``binary``: the output is exactly +-1, so the next binary layer may keep it as 1 bit.
  ``ste_mask(x)``: where the gradient is a 0/1 indicator, the boolean mask of that
  indicator, so the proposed method can keep it as 1 bit; quantizers whose
  derivative is not an indicator return None.
  """

  kind: typing.ClassVar[str] = "forward"
  binary: typing.ClassVar[bool] = False

  def __call__(self, x: jax.Array) -> jax.Array:
    raise NotImplementedError

  def ste_mask(self, x: jax.Array) -> jax.Array | None:
    return None


def sign(x: jax.Array) -> jax.Array:
  """sign with sign(0) = +1, the project-wide convention."""
  return jnp.where(x >= 0, jnp.ones((), x.dtype), -jnp.ones((), x.dtype))
