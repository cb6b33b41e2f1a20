"""Gradient quantizers: applied to a cotangent inside a custom backward pass."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

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


# --------------------------------------------------------------------------------------
# Power-of-two gradient quantizer (arXiv 2102.04270 v1).
# --------------------------------------------------------------------------------------

# IEEE binary float layouts po2 knows: dtype name -> (width, exponent bits, mantissa bits).
_LAYOUTS = {"float16": (16, 5, 10), "bfloat16": (16, 8, 7), "float32": (32, 8, 23),
            "float64": (64, 11, 52)}


def _sqrt2_threshold(nmant: int) -> int:
  """Smallest mantissa field F with 1 + F / 2**nmant >= sqrt(2), in exact integers.

  sqrt(2) is irrational, so no representable mantissa equals it: there are no ties.
  (float32: T = 3474676, i.e. 1 + T/2**23 = 1.41421366.)
  """
  two_scaled = 2 << (2 * nmant)          # 2 * (2**nmant)**2
  s = math.isqrt(two_scaled)
  if s * s < two_scaled:
    s += 1
  return s - (1 << nmant)


@register
@dataclasses.dataclass(frozen=True)
class Po2(GradientQuantizer):
  """Power-of-two quantizer of the paper's first version: a sign bit and a k-bit exponent.

  Per tensor (METHOD.md), with k = ``bits``:

      b = -round(log2(max|g|)) + bias
      v = g * 2**b
      e = clip(round(log2|v|), -2**(k-1), 2**(k-1) - 1)
      q = sign(v) * 2**e * 2**-b

  so every nonzero output is +-2**n with n in [-2**(k-1) - b, 2**(k-1) - 1 - b].

  How it is computed. Nothing goes through a floating-point log2, pow or multiply:
  the quantizer reads the sign, exponent and mantissa fields of each element's bit
  pattern, does the equations in integer exponent arithmetic (``round(log2|v|) =
  round(log2|g|) + b`` because b is an integer) and writes +-2**n back as a bit
  pattern. So the result is exactly what the equations give in real arithmetic,
  whatever the backend does with subnormals (XLA on CPU flushes them to zero in
  float arithmetic, GPUs usually do too; here they are decoded and produced exactly). It works natively on
  float16, bfloat16, float32 and float64 (and keeps the input's shape and dtype).

  Rounding in the log domain. Write |g| = (1 + F / 2**p) * 2**L, with L the unbiased
  exponent, F the p-bit mantissa field (subnormals are normalised first); then
  log2|g| - L = log2(1 + F/2**p) lies in [0, 1):

      case                               | nearest | stochastic
      -----------------------------------+---------+----------------------------------
      F == 0         (|g| == 2**L)       |   L     |   L
      1 + F/2**p <  sqrt(2)              |   L     |   L + 1 with probability F/2**p
      1 + F/2**p >= sqrt(2)              |   L + 1 |   L + 1 with probability F/2**p

  nearest: round half up in the log domain (a tie would be 1 + F/2**p == sqrt(2),
  which no float hits, so half-up and half-even agree). In frexp terms, |g| = m * 2**E
  with m in [0.5, 1): round(log2|g|) = E if m >= sqrt(0.5) else E - 1.
  stochastic: up with probability 2m - 1 = F/2**p, which makes E[|q|] = |g| exactly
  (unbiased in the linear domain) for every element whose two neighbouring powers of
  two both lie inside the clip range. The draw is an integer u, uniform on
  [0, 2**p), compared with F: the probability is exactly F/2**p. The per-tensor scale
  b always uses nearest rounding (it is not random). Needs ``key``; nearest ignores it.

  Special values:
    - zeros="flush" (default): exact zeros (and -0.0) give +0.0.
      zeros="reference": exact zeros give +2**(-2**(k-1)) * 2**-b, the smallest
      magnitude of the format (the reference code's +2**(-8-b) for k = 4).
    - a tensor with no finite nonzero element: b is computed as if max|g| were 1
      (b = bias); so it returns zeros (flush) or +2**(-2**(k-1) - bias) (reference),
      never NaN/inf.
    - NaN and +-inf elements are returned unchanged (NaN propagates) and are left out
      of max|g|; the finite elements are quantized as usual.
    - outputs beyond the dtype's range: a power of two above the largest finite one
      saturates to the largest finite power of two (only when round(log2 max|g|)
      exceeds the dtype's maximum exponent); one below the smallest subnormal
      underflows to zero (as round-to-nearest-even would).

  Idempotence. With -2**(k-1) <= bias <= 2**(k-1) - 1 (the top element is not
  clipped, so max|q| = 2**round(log2 max|g|) and b is unchanged), q(q(g)) == q(g)
  exactly. With bias > 2**(k-1) - 1, as at the reference settings bits=4, bias=8,
  it is not: the largest |v| is about 2**bias but e is clipped to 2**(k-1) - 1, so
  max|q| = 2**(2**(k-1)-1-b) (bits=4, bias=8: 2**(7-b) = 2**(R-1), with
  R = round(log2 max|g|)). Applying q again sees a max one (or more) octave lower,
  so b grows and the top elements are halved again:

      bits=4, bias=8, elements at e (in q(g))  | q(q(g))
      -----------------------------------------+------------------------------
      e = 7 (the top, clipped)                 | halved: 2**(6-b)
      -8 <= e <= 6                             | unchanged
      zero (flush)                             | zero

  This follows from METHOD.md's equations; it is faithful, not a defect of this code.
  (Symmetrically, a bias below -2**(k-1) clips every element up to the bottom
  exponent, and q is not idempotent either.)

  Exact scale equivariance: q(2**j * g) == 2**j * q(g) bit for bit, as long as no
  element of g, 2**j g or the outputs leaves the dtype's normal range.
  """

  name = "po2"
  bits: int = 4
  bias: int = 8
  rounding: Literal["nearest", "stochastic"] = "nearest"
  zeros: Literal["flush", "reference"] = "flush"

  def __post_init__(self):
    if not isinstance(self.bits, int) or isinstance(self.bits, bool):
      raise TypeError(f"po2: bits={self.bits!r} must be an int in [1, 8] "
                      f"(exponent bits)")
    if not 1 <= self.bits <= 8:
      raise ValueError(f"po2: bits={self.bits!r} is out of range; expected an int in "
                       f"[1, 8] (exponent bits)")
    if not isinstance(self.bias, int) or isinstance(self.bias, bool):
      raise TypeError(f"po2: bias={self.bias!r} must be an int in [-256, 256]")
    if not -256 <= self.bias <= 256:
      raise ValueError(f"po2: bias={self.bias!r} is out of range; expected an int in "
                       f"[-256, 256]")
    if self.rounding not in ("nearest", "stochastic"):
      raise ValueError(f"po2: rounding={self.rounding!r} is not allowed; expected one "
                       f"of ['nearest', 'stochastic']")
    if self.zeros not in ("flush", "reference"):
      raise ValueError(f"po2: zeros={self.zeros!r} is not allowed; expected one of "
                       f"['flush', 'reference']")

  @property
  def stochastic(self) -> bool:
    return self.rounding == "stochastic"

  @property
  def exponent_range(self) -> tuple[int, int]:
    """(lo, hi): the clip range of e, -2**(k-1) and 2**(k-1) - 1."""
    return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1

  def __call__(self, g, key=None):
    if self.stochastic and key is None:
      raise ValueError(f"{self.spec()} rounds stochastically and needs a PRNG key: "
                       f"call it as q(g, key) with key from jax.random.key(...)")
    g = jnp.asarray(g)
    dtype = jnp.dtype(g.dtype)
    if dtype.name not in _LAYOUTS:
      raise TypeError(f"po2: gradient dtype {dtype.name} is not supported; expected "
                      f"one of {sorted(_LAYOUTS)}")
    if g.size == 0:
      return g
    lo, hi = self.exponent_range
    return _po2(g, key if self.stochastic else None, self.bias, lo, hi, self.stochastic,
                self.zeros == "reference")


@functools.partial(jax.jit, static_argnums=(5, 6))
def _po2(g: jax.Array, key: jax.Array | None, bias, lo, hi, stochastic: bool,
         reference_zeros: bool) -> jax.Array:
  """Po2.__call__ after its checks. bias, lo, hi are traced (int32 scalars), so one
  compiled program serves every (bits, bias) of a given shape, dtype and mode."""
  dtype = jnp.dtype(g.dtype)
  width, nexp, nmant = _LAYOUTS[dtype.name]
  raw_t = jnp.dtype(f"uint{width}")
  wt = jnp.uint64 if width == 64 else jnp.uint32    # working unsigned type
  wbits = 64 if width == 64 else 32
  exp_bias = (1 << (nexp - 1)) - 1
  emin, emax = 1 - exp_bias, exp_bias               # normal exponent range
  bias, lo, hi = (jnp.asarray(x, jnp.int32) for x in (bias, lo, hi))

  def u(x):
    return jnp.asarray(x, wt)

  raw = jax.lax.bitcast_convert_type(g, raw_t).astype(wt)
  neg = (raw >> u(width - 1)) & u(1)
  expf = ((raw >> u(nmant)) & u((1 << nexp) - 1)).astype(jnp.int32)
  mant = raw & u((1 << nmant) - 1)
  finite = expf != (1 << nexp) - 1
  zero = (expf == 0) & (mant == 0)
  live = finite & ~zero                              # the elements that get quantized

  # |g| = (1 + F / 2**nmant) * 2**L; subnormals normalised so that F has no leading 1.
  lead = (wbits - 1) - jax.lax.clz(mant).astype(jnp.int32)   # leading-one position
  subnormal = (expf == 0) & (mant != 0)
  shift = jnp.clip(nmant - lead, 0, nmant).astype(wt)
  frac = jnp.where(subnormal, (mant << shift) & u((1 << nmant) - 1), mant)
  log2_floor = jnp.where(subnormal, lead + 1 - exp_bias - nmant, expf - exp_bias)

  r_nearest = log2_floor + (frac >= u(_sqrt2_threshold(nmant))).astype(jnp.int32)
  big_r = jnp.max(jnp.where(live, r_nearest, jnp.iinfo(jnp.int32).min),
                  initial=jnp.iinfo(jnp.int32).min)
  big_r = jnp.where(jnp.any(live), big_r, 0)        # nothing to scale: as if max == 1
  b = bias - big_r

  if stochastic:
    draw = jax.random.bits(key, g.shape, wt) >> u(wbits - nmant)   # uniform [0, 2**p)
    r = log2_floor + (draw < frac).astype(jnp.int32)
  else:
    r = r_nearest
  n = jnp.clip(r + b, lo, hi) - b                   # log2|q|
  if reference_zeros:
    n = jnp.where(zero, lo - b, n)
    sign_bit = jnp.where(zero, u(0), neg)
    nonzero_out = finite
  else:
    sign_bit = neg
    nonzero_out = live

  # +-2**n as a bit pattern: saturate above, subnormal or zero below.
  n = jnp.minimum(n, emax)
  normal_bits = (jnp.clip(n + exp_bias, 1, (1 << nexp) - 2).astype(wt)) << u(nmant)
  sub_shift = jnp.clip(n - emin + nmant, 0, nmant - 1).astype(wt)
  sub_bits = jnp.where(n >= emin - nmant, u(1) << sub_shift, u(0))
  mag = jnp.where(n >= emin, normal_bits, sub_bits)
  out = mag | (sign_bit << u(width - 1))
  out = jnp.where(nonzero_out, out, u(0))
  out = jnp.where(finite, out, raw)                 # NaN / inf pass through unchanged
  return jax.lax.bitcast_convert_type(out.astype(raw_t), dtype)
