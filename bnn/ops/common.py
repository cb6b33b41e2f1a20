"""What every binary op shares: the method switch, weight binarisation, the proposed
weight gradient, and resolving quantizer arguments into static configuration."""
from __future__ import annotations

import jax
import jax.numpy as jnp

import quantizers
from quantizers import GradientQuantizer, sign

METHODS = ("standard", "proposed")
_IDENTITY = quantizers.get("identity")
_SIGN_SCALED = quantizers.get("sign_scaled")
_STE_SIGN = quantizers.get("ste_sign")


def check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"method={method!r}; expected one of {METHODS}")
  return method


def gradient_quantizer(spec, method: str, default_proposed: str, what: str) -> GradientQuantizer:
  """Resolves a gradient-quantizer argument of an op for the given method.

  None means the method's default: identity for "standard", ``default_proposed``
  for "proposed". The standard method keeps float32 gradients, so any other
  quantizer there is an error rather than silently ignored.
  """
  check_method(method)
  if spec is None:
    return _IDENTITY if method == "standard" else quantizers.get(default_proposed, "gradient")
  q = quantizers.get(spec, "gradient")
  if method == "standard" and q != _IDENTITY:
    raise ValueError(f"{what}={q.spec()} with method='standard': the standard method keeps "
                     f"float32 gradients; gradient quantizers apply to method='proposed'")
  return q


def check_key(q: GradientQuantizer, key, what: str) -> None:
  if q.stochastic and key is None:
    raise ValueError(f"{what}={q.spec()} rounds stochastically and needs a PRNG `key`")


def binarize_weights_ste(w: jax.Array) -> jax.Array:
  """sign(clip(W, -1, 1)) with the clip STE: the standard method's weights."""
  return _STE_SIGN(w)


def proposed_weight_grad(dw_raw: jax.Array, w: jax.Array, q: GradientQuantizer) -> jax.Array:
  """METHOD.md: dW = q(dW_raw) (sign(dW_raw)/sqrt(N) by default), zeroed where
  |W| > 1 (the clip STE), rounded to float16."""
  dw = jnp.where(jnp.abs(w) <= 1, q(dw_raw), jnp.zeros((), dw_raw.dtype))
  return dw.astype(jnp.float16).astype(w.dtype)


__all__ = ["METHODS", "binarize_weights_ste", "check_key", "check_method",
           "gradient_quantizer", "proposed_weight_grad", "sign"]
