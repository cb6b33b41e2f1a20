"""Gradient quantizers of the proposed method, in NumPy (the JAX side: quantizers/).

A quantizer is named by the JAX side's canonical spec string, e.g. ``identity()``,
``float16()``, ``bfloat16()``, ``sign_scaled()`` or
``po2(bits=4, bias=8, rounding='nearest', zeros='flush')``; ``parse`` checks it and
``apply`` runs it on a float32 array. The results are bit-identical with the JAX
quantizers, except stochastic po2 rounding, which draws its random bits from a NumPy
generator here (the same distribution, other draws).

The sign activation is the forward quantizer ``ste_sign(clip=c)``: sign(x) (sign(0) =
+1) with the straight-through mask 1{|x| <= c}.
"""
from __future__ import annotations

import ast
from typing import NamedTuple

import numpy as np

from pi_backend import kernels as K

GRADIENT = ("identity", "float16", "bfloat16", "sign_scaled", "po2")
_PO2_DEFAULTS = {"bits": 4, "bias": 8, "rounding": "nearest", "zeros": "flush"}


class Quantizer(NamedTuple):
  """A parsed spec: the name and its arguments (po2: bits, bias, rounding, zeros)."""
  name: str
  args: tuple = ()

  def arg(self, key):
    return dict(self.args)[key]

  def spec(self) -> str:
    inner = ", ".join(f"{k}={v!r}" for k, v in self.args)
    return f"{self.name}({inner})"

  @property
  def stochastic(self) -> bool:
    return self.name == "po2" and self.arg("rounding") == "stochastic"


def _call(spec) -> tuple[str, dict]:
  """'name(k=v, ...)' or 'name' -> (name, {k: v}) with literal values only."""
  if not isinstance(spec, str) or not spec.strip() or len(spec) > 200:
    raise ValueError(f"quantizer spec {spec!r}: expected a string such as 'float16()' or "
                     f"\"po2(bits=4, bias=8)\"")
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    raise ValueError(f"quantizer spec {spec!r} is not of the form name(key=value, ...)") from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if (not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args
      or any(k.arg is None for k in node.keywords)):
    raise ValueError(f"quantizer spec {spec!r} is not of the form name(key=value, ...)")
  kwargs = {}
  for k in node.keywords:
    if k.arg in kwargs:
      raise ValueError(f"quantizer spec {spec!r} repeats the argument {k.arg!r}")
    try:
      kwargs[k.arg] = ast.literal_eval(k.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
      raise ValueError(f"quantizer spec {spec!r}: the value of {k.arg!r} is not a "
                       f"literal") from None
  return node.func.id, kwargs


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def parse(spec) -> Quantizer:
  """A gradient quantizer spec -> Quantizer; ValueError naming what is wrong."""
  name, kwargs = _call(spec)
  if name not in GRADIENT:
    raise ValueError(f"gradient quantizer {spec!r}: unknown name {name!r}; pi_backend "
                     f"has {list(GRADIENT)}")
  if name != "po2":
    if kwargs:
      raise ValueError(f"gradient quantizer {spec!r}: {name} takes no arguments")
    return Quantizer(name)
  unknown = sorted(set(kwargs) - set(_PO2_DEFAULTS))
  if unknown:
    raise ValueError(f"gradient quantizer {spec!r}: unknown po2 arguments {unknown}; "
                     f"expected {list(_PO2_DEFAULTS)}")
  a = {**_PO2_DEFAULTS, **kwargs}
  if not _is_int(a["bits"]) or not 1 <= a["bits"] <= 8:
    raise ValueError(f"gradient quantizer {spec!r}: bits={a['bits']!r}; expected an int "
                     f"in [1, 8]")
  if not _is_int(a["bias"]) or not -256 <= a["bias"] <= 256:
    raise ValueError(f"gradient quantizer {spec!r}: bias={a['bias']!r}; expected an int "
                     f"in [-256, 256]")
  if a["rounding"] not in ("nearest", "stochastic"):
    raise ValueError(f"gradient quantizer {spec!r}: rounding={a['rounding']!r}; expected "
                     f"'nearest' or 'stochastic'")
  if a["zeros"] not in ("flush", "reference"):
    raise ValueError(f"gradient quantizer {spec!r}: zeros={a['zeros']!r}; expected "
                     f"'flush' or 'reference'")
  return Quantizer("po2", tuple((k, a[k]) for k in _PO2_DEFAULTS))


def parse_activation(spec) -> float:
  """'ste_sign(clip=c)' -> c (the only activation pi_backend runs)."""
  name, kwargs = _call(spec)
  clip = kwargs.get("clip", 1.0)
  if name != "ste_sign" or set(kwargs) - {"clip"}:
    raise ValueError(f"activation {spec!r}: pi_backend runs only 'ste_sign(clip=c)'")
  if (isinstance(clip, bool) or not isinstance(clip, (int, float))
      or not 0 <= clip < float("inf")):
    raise ValueError(f"activation {spec!r}: clip={clip!r}; expected a finite number >= 0")
  return float(clip)


def _bfloat16(g: np.ndarray) -> np.ndarray:
  """Round to the nearest bfloat16 (ties to even), returned as float32; NaN stays NaN."""
  u = g.view(np.uint32)
  rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
  out = rounded.view(np.float32)
  return np.where(np.isnan(g), g, out).astype(np.float32)


def apply(q: Quantizer, g: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
  """q(g) for a float32 array g (a new array, or g itself for identity)."""
  if q.name == "identity":
    return g
  if q.name == "float16":
    with np.errstate(over="ignore"):  # beyond 65504: inf, as the cast in JAX
      return g.astype(np.float16).astype(np.float32)
  if q.name == "bfloat16":
    return _bfloat16(np.ascontiguousarray(g, np.float32))
  if q.name == "sign_scaled":
    c = np.float32(1.0 / (g.size ** 0.5))
    return np.where(g >= 0, c, -c).astype(np.float32)
  bits = None
  if q.stochastic:
    if rng is None:
      raise ValueError(f"{q.spec()} rounds stochastically and needs a numpy Generator rng")
    bits = rng.integers(0, 2 ** 32, size=g.shape, dtype=np.uint32)
  return K.po2(np.ascontiguousarray(g, np.float32), bits=q.arg("bits"), bias=q.arg("bias"),
               zeros=q.arg("zeros"), random_bits=bits)


def elementwise(q: Quantizer) -> bool:
  """Whether q acts on each element alone (given the tensor size): then a weight
  gradient can go through it a block of rows at a time. po2 scales per tensor."""
  return q.name != "po2"


def weight_gradient(q: Quantizer, dw_raw: np.ndarray, w: np.ndarray,
                    rng: np.random.Generator | None = None, *,
                    n_weights: int | None = None) -> np.ndarray:
  """The proposed weight gradient (bnn/ops/common.py proposed_weight_grad): q(dW_raw),
  zeroed where |W| > 1 (the clip STE), rounded to float16. w: the latent weights of
  the same rows; n_weights: the size of the whole kernel (sign_scaled's N) when dw_raw
  is a block of its rows."""
  if w.shape != dw_raw.shape:
    raise ValueError(f"weight_gradient: dw_raw has shape {dw_raw.shape}, w {w.shape}; "
                     f"expected the same")
  n = dw_raw.size if n_weights is None else n_weights
  if q.name == "sign_scaled":  # float16(float32(+-1/sqrt(N))), built on the bit patterns
    c = np.float16(np.float32(1.0 / (n ** 0.5)))
    if (dw_raw.dtype == np.float32 and w.dtype == np.float16 and dw_raw.flags.c_contiguous
        and w.flags.c_contiguous):  # the same bits by one C pass
      return K.sign_scaled_grad(dw_raw, w, c)
    g = (~(dw_raw >= 0)).view(np.uint8).astype(np.uint16)  # sign(NaN) = -1, as jnp.where
    g <<= np.uint16(15)
    g |= np.float16(np.float32(1.0 / (n ** 0.5))).view(np.uint16)
    g *= within_clip(w)
    return g.view(np.float16)
  else:
    if n != dw_raw.size and not elementwise(q):
      raise ValueError(f"weight_gradient: {q.spec()} needs the whole tensor, not a block")
    with np.errstate(over="ignore"):
      g = apply(q, dw_raw, rng).astype(np.float16)
  np.copyto(g, np.float16(0), where=~within_clip(w))
  return g


def within_clip(w: np.ndarray) -> np.ndarray:
  """|w| <= 1 as bools (NaN -> False); for float16 on the bit patterns (1.0 = 0x3C00)."""
  if w.dtype != np.float16:
    return np.abs(w) <= 1
  return (w.view(np.uint16) & np.uint16(0x7FFF)) <= np.uint16(0x3C00)
