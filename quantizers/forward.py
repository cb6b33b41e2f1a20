"""Forward quantizers with their straight-through gradients.

Every quantizer here is differentiable by plain ``jax.grad``: the forward value is
returned exactly as written in its docstring, and the derivative with respect to
x is the pseudo-gradient written next to it (see ``_straight_through``).
sign(0) = +1 everywhere.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from quantizers.base import ForwardQuantizer, sign
from quantizers.registry import register


@jax.custom_jvp
def _straight_through(x, value, slope):
  """Returns ``value``; its derivative with respect to ``x`` is ``slope`` (elementwise).

  The tangents of ``value`` and ``slope`` are ignored (no gradient flows through
  them to first order). Unlike the
  ``stop_gradient(value - x) + x`` trick, the forward value is exact (no rounding,
  no NaN for infinite x).
  """
  del x, slope
  return value


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  x, value, slope = primals
  return value, tangents[0] * slope


def _ste(x, forward_value, mask):
  """forward_value in the forward pass; gradient = mask in the backward pass."""
  return _straight_through(x, forward_value.astype(x.dtype), mask.astype(x.dtype))


def _number(q: str, field: str, value, *, minimum: float, strict: bool) -> float:
  """Validates a finite float field (> minimum if strict else >= minimum)."""
  ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value) and (value > minimum if strict else value >= minimum))
  if not ok:
    rel = ">" if strict else ">="
    raise ValueError(f"{q}: {field}={value!r} is invalid; expected a finite number "
                     f"{rel} {minimum}")
  return float(value)


def _set_float(obj, field: str, *, minimum: float = 0.0, strict: bool = True) -> None:
  # Normalise ints to floats so that spec() prints one canonical form.
  object.__setattr__(obj, field, _number(obj.name, field, getattr(obj, field),
                                         minimum=minimum, strict=strict))


@register
@dataclasses.dataclass(frozen=True)
class SteSign(ForwardQuantizer):
  """sign(x) forward; gradient 1{|x| <= clip} (the hardtanh STE of BinaryNet)."""

  name = "ste_sign"
  binary = True
  clip: float = 1.0

  def __post_init__(self):
    _set_float(self, "clip")

  def __call__(self, x):
    return _ste(x, sign(x), self.ste_mask(x))

  def ste_mask(self, x):
    return jnp.abs(x) <= self.clip


@register
@dataclasses.dataclass(frozen=True)
class ApproxSign(ForwardQuantizer):
  """sign(x) forward; gradient 2 - 2|x| for |x| <= 1, else 0 (Bi-Real Net).

  The gradient is not an indicator, so ``ste_mask`` is None; ``ste_grad(x)`` is the
  gradient itself and ``ste_grad_range()`` its bounds, (0, 2) (used to store it in
  8 bits, bnn/ops/sign.py).
  """

  name = "approx_sign"
  binary = True

  def __call__(self, x):
    return _straight_through(x, sign(x), self.ste_grad(x))

  def ste_grad(self, x):
    return jnp.maximum(2 - 2 * jnp.abs(x), 0).astype(x.dtype)

  def ste_grad_range(self) -> tuple[float, float]:
    return 0.0, 2.0


# min over t of (2 - t tanh(t/2)) / (1 + cosh(t)), reached at |t| = 3.43584...; rounded
# down so that beta times it is a safe lower bound of swish_sign's gradient.
_SWISH_GRAD_MIN = -0.0738287464


@register
@dataclasses.dataclass(frozen=True)
class SwishSign(ForwardQuantizer):
  """sign(x) forward; gradient of 2*sigmoid(b x)*(1 + b x*(1 - sigmoid(b x))) - 1 (b = beta):

      d/dx = b * (2 - b x * tanh(b x / 2)) / (1 + cosh(b x))

  (larq's SwishSign). Computed as 2 b sigmoid(bx) sigmoid(-bx) (2 - bx tanh(bx/2)),
  which is the same value without overflow for large |bx|. ``ste_mask`` is None;
  ``ste_grad(x)`` is the gradient and ``ste_grad_range()`` its bounds,
  (-0.0738 b, b): it peaks at x = 0 and dips below 0 around |x| = 3.44 / b.
  """

  name = "swish_sign"
  binary = True
  beta: float = 5.0

  def __post_init__(self):
    _set_float(self, "beta")

  def __call__(self, x):
    return _straight_through(x, sign(x), self.ste_grad(x))

  def ste_grad(self, x):
    t = self.beta * x
    g = 2 * self.beta * jax.nn.sigmoid(t) * jax.nn.sigmoid(-t) * (2 - t * jnp.tanh(t / 2))
    return g.astype(x.dtype)

  def ste_grad_range(self) -> tuple[float, float]:
    return self.beta * _SWISH_GRAD_MIN, self.beta


@register
@dataclasses.dataclass(frozen=True)
class MagnitudeAwareSign(ForwardQuantizer):
  """For weights (Bi-Real Net): forward s * sign(x), s = mean(|x|) over every axis but
  the last (one scale per output channel); gradient s * 1{|x| <= clip}.

  s is a constant in the backward pass (no gradient flows through the mean). The
  output is +-s, not +-1, so ``binary`` is False; ``ste_mask`` is the indicator
  1{|x| <= clip} WITHOUT the factor s. x needs at least 2 axes (..., out_channels).
  """

  name = "magnitude_aware_sign"
  clip: float = 1.0

  def __post_init__(self):
    _set_float(self, "clip")

  def __call__(self, x):
    if x.ndim < 2:
      raise ValueError(f"magnitude_aware_sign expects a weight with at least 2 axes "
                       f"(..., out_channels), got shape {x.shape}")
    scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(x), axis=tuple(range(x.ndim - 1))))
    mask = self.ste_mask(x).astype(x.dtype)
    return _straight_through(x, (scale * sign(x)).astype(x.dtype), scale * mask)

  def ste_mask(self, x):
    return jnp.abs(x) <= self.clip


@register
@dataclasses.dataclass(frozen=True)
class SteHeaviside(ForwardQuantizer):
  """Forward 1 if x >= 0 else 0; gradient 1{|x| <= clip}.

  At x = 0 the output is 1 (larq uses x > 0), consistent with sign(0) = +1:
  heaviside(x) = (sign(x) + 1) / 2 exactly. Outputs are 0/1, so ``binary`` is False.
  """

  name = "ste_heaviside"
  clip: float = 1.0

  def __post_init__(self):
    _set_float(self, "clip")

  def __call__(self, x):
    return _ste(x, x >= 0, self.ste_mask(x))

  def ste_mask(self, x):
    return jnp.abs(x) <= self.clip


@register
@dataclasses.dataclass(frozen=True)
class SteTern(ForwardQuantizer):
  """Forward 0 if |x| < threshold else sign(x) (values -1, 0, +1); gradient 1{|x| <= clip}.

  larq's ste_tern with a fixed ``threshold_value``; |x| == threshold gives +-1.
  threshold = 0 reduces to sign (with sign(0) = +1).
  """

  name = "ste_tern"
  threshold: float = 0.05
  clip: float = 1.0

  def __post_init__(self):
    _set_float(self, "threshold", strict=False)
    _set_float(self, "clip")

  def __call__(self, x):
    value = jnp.where(jnp.abs(x) < self.threshold, jnp.zeros((), x.dtype), sign(x))
    return _ste(x, value, self.ste_mask(x))

  def ste_mask(self, x):
    return jnp.abs(x) <= self.clip


@register
@dataclasses.dataclass(frozen=True)
class DoReFa(ForwardQuantizer):
  """Forward round(clip(x, 0, 1) * n) / n with n = 2^bits - 1; gradient 1{0 <= x <= 1}.

  DoReFa-Net's activation quantizer (larq's DoReFa, mode "activations"). round()
  is round-half-to-even, as in jnp.round and tf.round.
  """

  name = "dorefa"
  bits: int = 2

  def __post_init__(self):
    b = self.bits
    if not (isinstance(b, numbers.Integral) and not isinstance(b, bool) and 1 <= b <= 8):
      raise ValueError(f"dorefa: bits={b!r} is invalid; expected an integer in 1..8")
    object.__setattr__(self, "bits", int(b))

  def __call__(self, x):
    n = 2 ** self.bits - 1
    value = jnp.round(jnp.clip(x, 0, 1) * n) / n
    return _ste(x, value, self.ste_mask(x))

  def ste_mask(self, x):
    return (x >= 0) & (x <= 1)
