"""Thin NumPy wrappers around the C kernels (csrc/bnnpi.h), one per kernel.

Every wrapper checks the type, dtype, shape, C-contiguity (and, for outputs,
writability and non-overlap) of every array, and the type and range of every number,
BEFORE calling C: a bad argument raises TypeError (wrong type or dtype) or ValueError
(wrong shape, layout or value) naming the argument, what it got and what was
expected. Nothing is converted silently: pass float32 (float16, uint64, ...) arrays as
documented, e.g. ``np.ascontiguousarray(x, np.float32)``.

Layout (ARCHITECTURE.md): +1 <-> bit 1, -1 <-> bit 0 (bit = x >= 0, sign(0) = +1),
packed along the LAST axis into uint64 words, element j of each group of 64 in bit j;
a last axis of n elements packs into ``words(n)`` words, padding bits 0. The JAX side
packs the same bits into uint8 (``from_uint8`` / ``to_uint8`` convert). Tensors are
NHWC, conv weights HWIO, dense weights (n_in, n_out). Packed +-1 arrays do not carry
their logical length: functions that need it take it (``n``, ``k``, ``c_in``).
"""
from __future__ import annotations

import ctypes
import math
import operator
from typing import NamedTuple

import numpy as np

from pi_backend import _lib

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
U64 = np.dtype(np.uint64)
U32 = np.dtype(np.uint32)
U8 = np.dtype(np.uint8)
I32 = np.dtype(np.int32)

_IMPLS = {"auto": 0, "portable": 1, "hardware": 2, "x86-popcnt": 2, "neon": 2, "x86-avx2": 3,
          "x86-avx512bw": 4}


# ---- argument checks -------------------------------------------------------------------

def _shape_text(shape) -> str:
  return "(" + ", ".join("*" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _array(fn: str, name: str, a, dtype, shape=None, *, what: str = "", min_ndim: int = 0,
           writable: bool = False) -> np.ndarray:
  """Checks one array argument. shape: a tuple of ints / None (any) or None (any shape)."""
  dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
  if not isinstance(a, np.ndarray):
    names = " or ".join(np.dtype(d).name for d in dtypes)
    raise TypeError(f"{fn}: {name} must be a numpy.ndarray of dtype {names}; got "
                    f"{type(a).__name__}")
  if a.dtype not in dtypes:  # dtype equality, native byte order (tuple: `in` uses ==)
    names = " or ".join(np.dtype(d).name for d in dtypes)  # (only for the message: slow)
    raise TypeError(f"{fn}: {name} has dtype {a.dtype}; expected {names} (native byte order), e.g. "
                    f"np.ascontiguousarray({name}, np.{np.dtype(dtypes[0]).name})")
  suffix = f" {what}" if what else ""
  if a.ndim < min_ndim:
    raise ValueError(f"{fn}: {name} has shape {a.shape}; expected at least {min_ndim} "
                     f"axes{suffix}")
  if shape is not None and (a.ndim != len(shape) or any(
      want is not None and got != want for got, want in zip(a.shape, shape))):
    raise ValueError(f"{fn}: {name} has shape {a.shape}; expected {_shape_text(shape)}"
                     f"{suffix}")
  if not a.flags.c_contiguous:
    raise ValueError(f"{fn}: {name} (shape {a.shape}, strides {a.strides}) is not "
                     f"C-contiguous; pass np.ascontiguousarray({name})")
  if not a.flags.aligned:
    raise ValueError(f"{fn}: {name} is not aligned to its dtype; pass a copy "
                     f"(np.array({name}))")
  if writable and not a.flags.writeable:
    raise ValueError(f"{fn}: {name} is read-only; expected a writable array")
  return a


def _overlap(p: int, p_bytes: int, q: int, q_bytes: int) -> bool:
  """Whether the byte ranges [p, p + p_bytes) and [q, q + q_bytes) share a byte. For
  C-contiguous arrays (checked before every call) this is exact, and cheaper than
  np.may_share_memory (0.7 us) on per-layer, per-step calls."""
  return bool(p_bytes and q_bytes) and p < q + q_bytes and q < p + p_bytes


def _out(fn: str, out, shape, dtype, names: tuple, *inputs: np.ndarray) -> tuple:
  """-> (out, the data addresses of the inputs, that of out): a fresh output array or
  the checked ``out`` argument, and the addresses for the C call. The inputs (``names``
  in errors) must have been checked C-contiguous (``_array``); the overlap check uses
  the addresses the call needs anyway. Written for speed: a small GEMM's call notices
  each 0.1 us, and a loop over the inputs costs 1 us of a 35 us 200 x 256 . 256 x 256
  product, so two inputs (every GEMM and conv) take a path without one."""
  if out is None:
    out = np.empty(shape, dtype)
    return (out, *map(_ptr, inputs), _ptr(out))
  if not (type(out) is np.ndarray and out.dtype == dtype and out.shape == shape
          and (flags := out.flags).c_contiguous and flags.aligned and flags.writeable):
    _array(fn, "out", out, dtype, tuple(shape), writable=True)  # raises, naming the fault
  if len(inputs) == 2:
    a, b = inputs
    try:  # _ptr, inline; it fails for a read-only or an empty array
      p_a, p_b, p = (_ADDRESSOF(_FROM_BUFFER(a)), _ADDRESSOF(_FROM_BUFFER(b)),
                     _ADDRESSOF(_FROM_BUFFER(out)))
    except (TypeError, ValueError, BufferError):
      pass
    else:  # a test implied by any overlap (_overlap's without the empty cases)
      end = p + out.nbytes
      if not ((p_a < end and p < p_a + a.nbytes) or (p_b < end and p < p_b + b.nbytes)):
        return out, p_a, p_b, p
  p, ptrs = _ptr(out), [_ptr(a) for a in inputs]
  for name, a, q in zip(names, inputs, ptrs):
    if _overlap(p, out.nbytes, q, a.nbytes):
      raise ValueError(f"{fn}: out overlaps the input {name}; expected a separate output "
                       f"array")
  return (out, *ptrs, p)


def _int(fn: str, name: str, v, minimum: int | None = None, maximum: int | None = None) -> int:
  if type(v) is int and (minimum is None or v >= minimum) and (  # the common case, cheaply
      maximum is None or v <= maximum):
    return v
  if isinstance(v, (bool, np.bool_)):
    raise TypeError(f"{fn}: {name}={v!r} must be an int, not a bool")
  try:
    v = operator.index(v)
  except TypeError:
    raise TypeError(f"{fn}: {name}={v!r} must be an int; got {type(v).__name__}") from None
  if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
    lo = "-inf" if minimum is None else minimum
    hi = "inf" if maximum is None else maximum
    raise ValueError(f"{fn}: {name}={v}; expected an int in [{lo}, {hi}]")
  return v


def _float(fn: str, name: str, v, *, lo: float | None = None, hi: float | None = None,
           hi_open: bool = False, lo_open: bool = False) -> float:
  if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
    raise TypeError(f"{fn}: {name}={v!r} must be a real number; got {type(v).__name__}")
  try:
    v = float(v)
  except OverflowError:  # an int beyond float's range
    v = math.inf
  bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (
      hi is not None and (v >= hi if hi_open else v > hi))
  if bad:
    rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
           f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
    raise ValueError(f"{fn}: {name}={v!r}; expected a finite number in {rng}")
  return v


def _bool(fn: str, name: str, v) -> bool:
  """A bool argument: True / False (or NumPy's), not a truthy string or number."""
  if not isinstance(v, (bool, np.bool_)):
    raise TypeError(f"{fn}: {name}={v!r} must be a bool; got {type(v).__name__}")
  return bool(v)


def _rows(a: np.ndarray) -> int:
  """The number of rows of the last axis: the product of all the other axes (math.prod:
  exact Python ints, and 0.4 us against np.prod's 10)."""
  return math.prod(a.shape[:-1])


_FROM_BUFFER = ctypes.c_char.from_buffer
_ADDRESSOF = ctypes.addressof


def _ptr(a: np.ndarray | None):
  """The address of a's data. A ctypes view of a writable buffer costs a third of
  ``a.ctypes.data`` (about 1 us against 3.4 per array), which a small GEMM notices."""
  if a is None:
    return None
  try:
    return _ADDRESSOF(_FROM_BUFFER(a))
  except (TypeError, ValueError, BufferError):  # read-only, or empty
    return a.ctypes.data


_FUNCS: dict = {}  # C name -> the ctypes function of the library loaded (argtypes set)
_FUNCS_OF = [None]   # ... which is this one


def _call(fn: str, cname: str, *args) -> None:
  lib = _lib.loaded()
  if lib is not _FUNCS_OF[0]:
    _FUNCS.clear()
    _FUNCS_OF[0] = lib
  f = _FUNCS.get(cname)
  if f is None:
    f = _FUNCS[cname] = getattr(lib, cname)
  rc = f(*args)
  if rc != 0:
    _fail(fn, cname, rc)


def _fail(fn: str, cname: str, rc: int):
  """Raises for the error code rc that the C function cname returned."""
  msg = _lib.loaded().bnn_error_string(rc).decode()
  if rc == -4:
    raise MemoryError(f"{fn}: {cname} could not allocate its scratch memory")
  raise ValueError(f"{fn}: the C kernel {cname} rejected its arguments: {msg} (code {rc})")


def _pair(fn: str, name: str, v) -> tuple[int, int]:
  """An int or a pair of ints, each >= 1."""
  if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int and (
      v[0] >= 1 and v[1] >= 1):  # the common case, cheaply
    return v
  if isinstance(v, (tuple, list)):
    if len(v) != 2:
      raise ValueError(f"{fn}: {name}={v!r}; expected an int or a pair of ints")
    return _int(fn, name, v[0], 1), _int(fn, name, v[1], 1)
  v = _int(fn, name, v, 1)
  return v, v


# ---- library info ------------------------------------------------------------------

def words(n: int) -> int:
  """uint64 words that a last axis of n elements packs into: ceil(n / 64)."""
  if type(n) is not int or n < 0:
    n = _int("words", "n", n, 0)
  return -(-n // 64)


def popcount_impl() -> str:
  """The popcount implementation in use: 'portable', 'x86-popcnt', 'neon', 'x86-avx2' or
  'x86-avx512bw' (all give identical results; they differ in speed)."""
  return _lib.load().bnn_popcount_impl_name().decode()


def popcount_impls() -> list[str]:
  """The names of the popcount implementations this CPU can run, portable first."""
  lib = _lib.load()
  return [lib.bnn_popcount_impl_name_of(code).decode() for code in (1, 2, 3, 4)
          if lib.bnn_popcount_impl_available(code)]


def set_popcount_impl(impl: str) -> str:
  """Chooses the popcount implementation of the XNOR kernels: 'auto' (the fastest this
  CPU has), 'portable', 'hardware' (the scalar one: x86 POPCNT or NEON), or a name from
  ``popcount_impls()``; returns the name now in use. ValueError when it is not available
  on this CPU (the choice in use is kept). A process-wide setting (not to be changed
  while a kernel runs)."""
  if not isinstance(impl, str):
    raise TypeError(f"set_popcount_impl: impl={impl!r} must be a str, one of {list(_IMPLS)}")
  if impl not in _IMPLS:
    raise ValueError(f"set_popcount_impl: impl={impl!r}; expected one of {list(_IMPLS)}")
  lib = _lib.load()
  code = _IMPLS[impl]
  named = impl not in ("auto", "hardware")
  if not (code == 0 or lib.bnn_popcount_impl_available(code)) or (
      named and impl not in popcount_impls()):
    raise ValueError(f"set_popcount_impl: impl={impl!r} is not available on this CPU; "
                     f"available: {popcount_impls()}")
  if lib.bnn_set_popcount_impl(code) != 0:
    raise ValueError(f"set_popcount_impl: the library refused impl={impl!r}")
  return popcount_impl()


def float_impl() -> str:
  """The implementation of the float kernels (float x sign GEMMs, float16 conversions,
  Adam, the batch-norm and sign-STE rows) in use: 'portable' / 'sse' / 'neon' (4-lane
  vectors), 'x86-avx2' (AVX2 + F16C + FMA) or 'x86-avx512f' (AVX-512F GEMM blocks and
  batch-norm rows, the rest as x86-avx2). All are bit-identical except
  t_matmul (real x^T dy), where the x86 ones use FMA (float32 rounding differences; the
  sign products are exact either way)."""
  lib = _lib.load()
  return lib.bnn_float_impl_name_of(lib.bnn_float_impl()).decode()


def float_impls() -> list[str]:
  """The float implementations this CPU can run, the portable one first."""
  lib = _lib.load()
  return [lib.bnn_float_impl_name_of(code).decode() for code in (1, 3, 4)
          if lib.bnn_float_impl_available(code)]


def set_float_impl(impl: str) -> str:
  """Chooses the float implementation: 'auto' (the fastest this CPU has), 'portable'
  (the 4-lane one, whatever its name) or a name from ``float_impls()``; returns the name
  now in use. ValueError when it is not available (the choice in use is kept). A
  process-wide setting (not to be changed while a kernel runs)."""
  lib = _lib.load()
  if not isinstance(impl, str):
    raise TypeError(f"set_float_impl: impl={impl!r} must be a str: 'auto', 'portable' or "
                    f"one of {float_impls()}")
  names = {lib.bnn_float_impl_name_of(code).decode(): code for code in (1, 3, 4)
           if lib.bnn_float_impl_name_of(code)}
  code = {"auto": 0, "portable": 1}.get(impl, names.get(impl))
  if code is None or not (code == 0 or lib.bnn_float_impl_available(code)):
    raise ValueError(f"set_float_impl: impl={impl!r} is not available on this CPU; "
                     f"available: {float_impls()}")
  if lib.bnn_set_float_impl(code) != 0:
    raise ValueError(f"set_float_impl: the library refused impl={impl!r}")
  return float_impl()


# ---- packing -----------------------------------------------------------------------

def pack(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
  """x float32 (..., n) -> uint64 (..., words(n)), bit = x >= 0."""
  _array("pack", "x", x, F32, min_ndim=1, what="(..., n)")
  n = x.shape[-1]
  out, p_x, p_out = _out("pack", out, x.shape[:-1] + (words(n),), U64, ("x",), x)
  _call("pack", "bnn_pack", p_x, _rows(x), n, p_out)
  return out


def pack_f16(x: np.ndarray) -> np.ndarray:
  """pack for float16 x (..., n), on the bit patterns: bit = x >= 0 (-0.0 -> 1, NaN -> 0)."""
  _array("pack_f16", "x", x, F16, min_ndim=1, what="(..., n)")
  n = x.shape[-1]
  out = np.empty(x.shape[:-1] + (words(n),), U64)
  _call("pack_f16", "bnn_pack_f16", _ptr(x), _rows(x), n, _ptr(out))
  return out


def unpack(packed: np.ndarray, n: int, *, out: np.ndarray | None = None) -> np.ndarray:
  """packed uint64 (..., words(n)) -> float32 +-1 (..., n); padding bits are ignored."""
  n = _int("unpack", "n", n, 0)
  _array("unpack", "packed", packed, U64, min_ndim=1, what="(..., words(n))")
  if packed.shape[-1] != words(n):
    raise ValueError(f"unpack: packed has shape {packed.shape}; a last axis of n={n} "
                     f"elements packs into words(n)={words(n)} words")
  out, p_packed, p_out = _out("unpack", out, packed.shape[:-1] + (n,), F32, ("packed",),
                              packed)
  _call("unpack", "bnn_unpack", p_packed, _rows(packed), n, p_out)
  return out


def pack_transposed(w: np.ndarray) -> np.ndarray:
  """w float32 (k, n) -> uint64 (n, words(k)) = pack(w.T): the B operand of xnor_gemm
  for dense weights (n_in, n_out)."""
  _array("pack_transposed", "w", w, F32, (None, None), what="(k, n)")
  k, n = w.shape
  out = np.empty((n, words(k)), U64)
  _call("pack_transposed", "bnn_pack_transposed", _ptr(w), k, n, _ptr(out))
  return out


def pack_f16_transposed(w: np.ndarray) -> np.ndarray:
  """pack_transposed for float16 w (k, n), on the bit patterns (-0.0 -> 1, NaN -> 0)."""
  _array("pack_f16_transposed", "w", w, F16, (None, None), what="(k, n)")
  k, n = w.shape
  out = np.empty((n, words(k)), U64)
  _call("pack_f16_transposed", "bnn_pack_f16_transposed", _ptr(w), k, n, _ptr(out))
  return out


def pack_conv_weights(w: np.ndarray) -> np.ndarray:
  """w float32 HWIO (kh, kw, c_in, c_out) -> uint64 (c_out, kh * kw * words(c_in)) =
  pack(w.transpose(3, 0, 1, 2)).reshape(c_out, -1): the weights of binary_conv2d."""
  _array("pack_conv_weights", "w", w, F32, (None, None, None, None),
         what="(kh, kw, c_in, c_out), HWIO")
  kh, kw, c_in, c_out = w.shape
  if min(w.shape) < 1:
    raise ValueError(f"pack_conv_weights: w has shape {w.shape}; every axis must be >= 1")
  out = np.empty((c_out, kh * kw * words(c_in)), U64)
  _call("pack_conv_weights", "bnn_pack_conv_weights", _ptr(w), kh, kw, c_in, c_out, _ptr(out))
  return out


def from_uint8(packed: np.ndarray, n: int) -> np.ndarray:
  """The JAX side's uint8 packing (..., ceil(n / 8)) -> uint64 words (..., words(n)).
  Padding bits beyond n are cleared."""
  n = _int("from_uint8", "n", n, 0)
  _array("from_uint8", "packed", packed, U8, min_ndim=1, what="(..., ceil(n / 8))")
  nbytes = -(-n // 8)
  if packed.shape[-1] != nbytes:
    raise ValueError(f"from_uint8: packed has shape {packed.shape}; n={n} elements pack "
                     f"into {nbytes} bytes")
  lead = packed.shape[:-1]
  padded = np.zeros(lead + (8 * words(n),), U8)
  padded[..., :nbytes] = packed
  out = np.ascontiguousarray(padded.view("<u8").astype(U64))
  if n % 64 and out.size:
    out[..., -1] &= np.uint64((1 << (n % 64)) - 1)
  return out


def to_uint8(packed: np.ndarray, n: int) -> np.ndarray:
  """uint64 words (..., words(n)) -> the JAX side's uint8 packing (..., ceil(n / 8)),
  i.e. np.packbits(x >= 0, axis=-1, bitorder='little'); padding bits cleared."""
  n = _int("to_uint8", "n", n, 0)
  _array("to_uint8", "packed", packed, U64, min_ndim=1, what="(..., words(n))")
  if packed.shape[-1] != words(n):
    raise ValueError(f"to_uint8: packed has shape {packed.shape}; n={n} elements pack into "
                     f"words(n)={words(n)} words")
  nbytes = -(-n // 8)
  as_bytes = packed.astype("<u8").view(U8)
  out = np.ascontiguousarray(as_bytes[..., :nbytes])
  if n % 8 and out.size:
    out[..., -1] &= np.uint8((1 << (n % 8)) - 1)
  return out


# ---- GEMMs -------------------------------------------------------------------------

_GEMM_DTYPES = {np.int32: I32, I32: I32, np.float32: F32, F32: F32}


def _output_dtype(fn: str, dtype) -> np.dtype:
  """int32 or float32 (the objects I32 / F32, which `is` tells apart) from a spelling of
  either; TypeError naming dtype otherwise."""
  try:
    out_dtype = np.dtype(dtype)
  except (TypeError, ValueError):
    raise TypeError(f"{fn}: dtype={dtype!r}; expected int32 or float32") from None
  if out_dtype not in (I32, F32):
    raise TypeError(f"{fn}: dtype={out_dtype}; expected int32 or float32")
  return I32 if out_dtype == I32 else F32


def xnor_gemm(a: np.ndarray, b: np.ndarray, k: int, *, dtype=np.int32,
              out: np.ndarray | None = None) -> np.ndarray:
  """Binary GEMM: a (m, words(k)) and b (n, words(k)) packed +-1 rows of k elements ->
  y (m, n) = a . b^T = k - 2 popcount(a XOR b), int32 or float32. For a dense layer,
  b = pack_transposed(W)."""
  fn = "xnor_gemm"
  # The common case is checked here, inline, as _int, _output_dtype, _array, _out and
  # _call would check it; anything else goes through them, which raise naming the fault.
  # (A 200 x 256 . 256 x 256 product takes about 27 us in C; these checks 2, the ctypes
  # call 1, and each function call saved here 0.1-0.2.) flags.carray: C-contiguous,
  # aligned and writable.
  if not (type(k) is int and 0 <= k < 2**31):
    k = _int(fn, "k", k, 0, 2**31 - 1)
  try:
    out_dtype = _GEMM_DTYPES.get(dtype)  # the lookup saves np.dtype's 0.4 us
  except TypeError:  # unhashable: a list, ...
    out_dtype = None
  if out_dtype is None:
    out_dtype = _output_dtype(fn, dtype)
  wk = -(-k // 64)
  if not (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == U64
          and b.dtype == U64 and a.ndim == 2 and b.ndim == 2
          and ((a_flags := a.flags).carray or (a_flags.c_contiguous and a_flags.aligned))
          and ((b_flags := b.flags).carray or (b_flags.c_contiguous and b_flags.aligned))
          and a.shape[1] == wk and b.shape[1] == wk):
    _array(fn, "a", a, U64, (None, wk), what=f"(m, words(k)) with k={k}")
    _array(fn, "b", b, U64, (None, wk), what=f"(n, words(k)) with k={k}")
  m, n = a.shape[0], b.shape[0]
  p = None
  if (out is not None and type(out) is np.ndarray and out.dtype == out_dtype
      and out.shape == (m, n) and out.flags.carray):
    try:  # _out, inline; a read-only or an empty array takes _out's way
      p_a, p_b, p = (_ADDRESSOF(_FROM_BUFFER(a)), _ADDRESSOF(_FROM_BUFFER(b)),
                     _ADDRESSOF(_FROM_BUFFER(out)))
    except (TypeError, ValueError, BufferError):
      p = None
    else:  # _out's test of an overlap
      end = p + out.nbytes
      if (p_a < end and p < p_a + a.nbytes) or (p_b < end and p < p_b + b.nbytes):
        p = None
  if p is None:
    out, p_a, p_b, p = _out(fn, out, (m, n), out_dtype, ("a", "b"), a, b)
  cname = "bnn_xnor_gemm_i32" if out_dtype is I32 else "bnn_xnor_gemm_f32"
  f = _FUNCS.get(cname) if _lib.loaded() is _FUNCS_OF[0] else None  # _call, inline
  if f is None:
    _call(fn, cname, p_a, p_b, m, n, k, p)
  elif rc := f(p_a, p_b, m, n, k, p):
    _fail(fn, cname, rc)
  return out


def sign_matmul(x: np.ndarray, w: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
  """First-layer dense forward: x float32 (m, k) . sign(w), w float32 (k, n) -> (m, n)."""
  fn = "sign_matmul"
  _array(fn, "x", x, F32, (None, None), what="(m, k)")
  _array(fn, "w", w, F32, (x.shape[1], None), what="(k, n) with k = x.shape[1]")
  (m, k), n = x.shape, w.shape[1]
  out, p_x, p_w, p_out = _out(fn, out, (m, n), F32, ("x", "w"), x, w)
  _call(fn, "bnn_sign_matmul", p_x, p_w, m, k, n, p_out)
  return out


def sign_matmul_packed(x: np.ndarray, w_packed: np.ndarray, n: int, *,
                       out: np.ndarray | None = None) -> np.ndarray:
  """x float32 (m, k) . sign(W) with w_packed = pack(W), uint64 (k, words(n)) -> (m, n)."""
  fn = "sign_matmul_packed"
  n = _int(fn, "n", n, 0)
  _array(fn, "x", x, F32, (None, None), what="(m, k)")
  _array(fn, "w_packed", w_packed, U64, (x.shape[1], words(n)),
         what=f"(k, words(n)) with k = x.shape[1], n={n}")
  m, k = x.shape
  out, p_x, p_w_packed, p_out = _out(fn, out, (m, n), F32, ("x", "w_packed"), x, w_packed)
  _call(fn, "bnn_sign_matmul_packed", p_x, p_w_packed, m, k, n, p_out)
  return out


def matmul_sign_t(dy: np.ndarray, w: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
  """Dense backward to the input: dy float32 (m, n) . sign(w)^T, w float32 (k, n) -> (m, k)."""
  fn = "matmul_sign_t"
  _array(fn, "dy", dy, F32, (None, None), what="(m, n)")
  _array(fn, "w", w, F32, (None, dy.shape[1]), what="(k, n) with n = dy.shape[1]")
  (m, n), k = dy.shape, w.shape[0]
  out, p_dy, p_w, p_out = _out(fn, out, (m, k), F32, ("dy", "w"), dy, w)
  _call(fn, "bnn_matmul_sign_t", p_dy, p_w, m, k, n, p_out)
  return out


def matmul_sign_t_packed(dy: np.ndarray, w_packed: np.ndarray, *,
                         out: np.ndarray | None = None) -> np.ndarray:
  """dy float32 (m, n) . sign(W)^T with w_packed = pack(W), uint64 (k, words(n)) -> (m, k)."""
  fn = "matmul_sign_t_packed"
  _array(fn, "dy", dy, F32, (None, None), what="(m, n)")
  m, n = dy.shape
  _array(fn, "w_packed", w_packed, U64, (None, words(n)),
         what=f"(k, words(n)) with n = dy.shape[1] = {n}")
  k = w_packed.shape[0]
  out, p_dy, p_w_packed, p_out = _out(fn, out, (m, k), F32, ("dy", "w_packed"), dy, w_packed)
  _call(fn, "bnn_matmul_sign_t_packed", p_dy, p_w_packed, m, k, n, p_out)
  return out


def sign_t_matmul(x_packed: np.ndarray, k: int, dy: np.ndarray, *,
                  out: np.ndarray | None = None) -> np.ndarray:
  """Dense backward to the weights: sign(x)^T . dy with x_packed uint64 (m, words(k))
  and dy float32 (m, n) -> dW_raw float32 (k, n)."""
  fn = "sign_t_matmul"
  k = _int(fn, "k", k, 0)
  _array(fn, "x_packed", x_packed, U64, (None, words(k)), what=f"(m, words(k)) with k={k}")
  _array(fn, "dy", dy, F32, (x_packed.shape[0], None), what="(m, n) with m = x_packed.shape[0]")
  m, n = dy.shape
  out, p_x_packed, p_dy, p_out = _out(fn, out, (k, n), F32, ("x_packed", "dy"), x_packed, dy)
  _call(fn, "bnn_sign_t_matmul", p_x_packed, p_dy, m, k, n, p_out)
  return out


def t_matmul(x: np.ndarray, dy: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
  """First-layer dense backward to the weights: x^T . dy, x float32 (m, k), dy float32
  (m, n) -> float32 (k, n)."""
  fn = "t_matmul"
  _array(fn, "x", x, F32, (None, None), what="(m, k)")
  _array(fn, "dy", dy, F32, (x.shape[0], None), what="(m, n) with m = x.shape[0]")
  (m, k), n = x.shape, dy.shape[1]
  out, p_x, p_dy, p_out = _out(fn, out, (k, n), F32, ("x", "dy"), x, dy)
  _call(fn, "bnn_t_matmul", p_x, p_dy, m, k, n, p_out)
  return out


# ---- convolutions --------------------------------------------------------------------

Pads = tuple[tuple[int, int], tuple[int, int]]


def conv_padding(in_hw, kernel_hw, strides=1, padding="SAME") -> Pads:
  """Explicit ((top, bottom), (left, right)) padding, as bnn/ops/conv.py computes it:
  'VALID'; 'SAME' (XLA/TensorFlow: total max((ceil(n / s) - 1) * s + k - n, 0), the
  smaller half first); an int (all four sides); or ((top, bottom), (left, right))."""
  fn = "conv_padding"
  in_hw, kernel_hw, strides = (_pair(fn, nm, v) for nm, v in
                               (("in_hw", in_hw), ("kernel_hw", kernel_hw), ("strides", strides)))
  expected = ("expected 'SAME', 'VALID', a non-negative int or ((top, bottom), "
              "(left, right)) of non-negative ints")
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      pads = ((0, 0), (0, 0))
    elif padding.upper() == "SAME":
      def same(n, k, s):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
      pads = tuple(same(n, k, s) for n, k, s in zip(in_hw, kernel_hw, strides))
    else:
      raise ValueError(f"{fn}: padding={padding!r}; {expected}")
  elif isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
    p = _int(fn, "padding", padding, 0)
    pads = ((p, p), (p, p))
  else:
    try:
      pads = tuple(tuple(_int(fn, "padding", v, 0) for v in pair) for pair in padding)
    except (TypeError, ValueError):
      raise ValueError(f"{fn}: padding={padding!r}; {expected}") from None
    if len(pads) != 2 or any(len(pair) != 2 for pair in pads):
      raise ValueError(f"{fn}: padding={padding!r}; {expected}")
  for axis, n, k, (lo, hi) in zip(("height", "width"), in_hw, kernel_hw, pads):
    if n + lo + hi < k:
      raise ValueError(f"{fn}: kernel {axis} {k} is larger than the padded input {axis} "
                       f"{n} + {lo} + {hi} = {n + lo + hi} (padding={padding!r})")
  return pads


def conv_output_hw(in_hw, kernel_hw, strides=1, padding="SAME") -> tuple[int, int]:
  """(out_height, out_width) of a conv with these arguments."""
  pads = conv_padding(in_hw, kernel_hw, strides, padding)
  (h, w), (kh, kw), (sh, sw) = (_pair("conv_output_hw", nm, v) for nm, v in
                                (("in_hw", in_hw), ("kernel_hw", kernel_hw), ("strides", strides)))
  return ((h + pads[0][0] + pads[0][1] - kh) // sh + 1,
          (w + pads[1][0] + pads[1][1] - kw) // sw + 1)


def _geometry(fn, batch, in_hw, c_in, c_out, kernel_hw, strides, padding):
  """The 13 size arguments of the C conv kernels and the output (oh, ow). A pure
  function of its arguments: remembered for hashable ones of plain ints / strings (the
  per-call cost at batch 1), computed (and checked) afresh otherwise."""
  key = (fn, batch, in_hw, c_in, c_out, kernel_hw, strides, padding)
  if _plain(key):
    got = _GEOMETRY.get(key)
    if got is None:
      got = _geometry_checked(fn, batch, in_hw, c_in, c_out, kernel_hw, strides, padding)
      if len(_GEOMETRY) >= 1024:
        _GEOMETRY.clear()
      _GEOMETRY[key] = got
    return got
  return _geometry_checked(fn, batch, in_hw, c_in, c_out, kernel_hw, strides, padding)


_GEOMETRY: dict = {}


def _plain(v) -> bool:
  """v is made only of tuples, ints (not bools) and strings: hashable, compares by value."""
  t = type(v)
  if t is tuple:
    for e in v:
      te = type(e)
      if te is not int and te is not str and (te is not tuple or not _plain(e)):
        return False
    return True
  return t is int or t is str


def _geometry_checked(fn, batch, in_hw, c_in, c_out, kernel_hw, strides, padding):
  (kh, kw), (sh, sw) = _pair(fn, "kernel_hw", kernel_hw), _pair(fn, "strides", strides)
  if min(in_hw) < 1:
    raise ValueError(f"{fn}: the input has height {in_hw[0]} and width {in_hw[1]}; "
                     f"expected both >= 1")
  try:
    pads = conv_padding(in_hw, (kh, kw), (sh, sw), padding)
  except ValueError as e:
    raise ValueError(str(e).replace("conv_padding", fn, 1)) from None
  h, w = in_hw
  oh = (h + pads[0][0] + pads[0][1] - kh) // sh + 1
  ow = (w + pads[1][0] + pads[1][1] - kw) // sw + 1
  args = (batch, h, w, c_in, c_out, kh, kw, sh, sw, pads[0][0], pads[0][1], pads[1][0],
          pads[1][1])
  return args, (oh, ow)


def im2col_packed(x_packed: np.ndarray, c_in: int, kernel_hw, strides=1, padding="SAME"):
  """Packed im2col of x_packed uint64 (batch, h, w, words(c_in)) -> (patches, valid):
  patches uint64 (batch * oh * ow, kh * kw * words(c_in)), tap (ky, kx) in words
  [(ky * kw + kx) * words(c_in), ...), padded taps all zero; valid uint8
  (batch * oh * ow, kh * kw), 1 where the tap lies inside the input."""
  fn = "im2col_packed"
  c_in = _int(fn, "c_in", c_in, 1)
  _array(fn, "x_packed", x_packed, U64, (None, None, None, words(c_in)),
         what=f"(batch, h, w, words(c_in)) with c_in={c_in}")
  b, h, w, _ = x_packed.shape
  args, (oh, ow) = _geometry(fn, b, (h, w), c_in, 1, kernel_hw, strides, padding)
  kh, kw = args[5], args[6]
  patches = np.empty((b * oh * ow, kh * kw * words(c_in)), U64)
  valid = np.empty((b * oh * ow, kh * kw), U8)
  _call(fn, "bnn_im2col_packed", _ptr(x_packed), *args[:4], *args[5:], _ptr(patches),
        _ptr(valid))
  return patches, valid


def _packed_conv_operands(fn, x_packed, c_in, w_packed, kernel_hw):
  """Checks the packed input and weights of a binary conv -> (kh, kw, b, h, w, c_out)."""
  kh, kw = _pair(fn, "kernel_hw", kernel_hw)
  _array(fn, "x_packed", x_packed, U64, (None, None, None, words(c_in)),
         what=f"(batch, h, w, words(c_in)) with c_in={c_in}")
  _array(fn, "w_packed", w_packed, U64, (None, kh * kw * words(c_in)),
         what=f"(c_out, kh * kw * words(c_in)) with kernel {kh}x{kw}, c_in={c_in} "
              f"(from pack_conv_weights)")
  b, h, w, _ = x_packed.shape
  c_out = w_packed.shape[0]
  if c_out < 1:
    raise ValueError(f"{fn}: w_packed has shape {w_packed.shape}; expected c_out >= 1 rows")
  return kh, kw, b, h, w, c_out


def binary_conv2d(x_packed: np.ndarray, c_in: int, w_packed: np.ndarray, kernel_hw,
                  strides=1, padding="SAME", *, dtype=np.float32,
                  out: np.ndarray | None = None) -> np.ndarray:
  """Binary conv y = conv(x, sign(W)) of +-1 x: x_packed uint64 (batch, h, w,
  words(c_in)), w_packed = pack_conv_weights(W) uint64 (c_out, kh * kw * words(c_in))
  -> y (batch, oh, ow, c_out), float32 or int32. Zero padding: padded positions add 0."""
  fn = "binary_conv2d"
  c_in = _int(fn, "c_in", c_in, 1)
  dtype = _output_dtype(fn, dtype)
  kh, kw, b, h, w, c_out = _packed_conv_operands(fn, x_packed, c_in, w_packed, kernel_hw)
  args, (oh, ow) = _geometry(fn, b, (h, w), c_in, c_out, (kh, kw), strides, padding)
  out, p_x_packed, p_w_packed, p_out = _out(fn, out, (b, oh, ow, c_out), dtype,
                                            ("x_packed", "w_packed"), x_packed, w_packed)
  cname = "bnn_binary_conv2d_i32" if dtype == I32 else "bnn_binary_conv2d_f32"
  _call(fn, cname, p_x_packed, p_w_packed, *args, p_out)
  return out


def binary_conv2d_sign(x_packed: np.ndarray, c_in: int, w_packed: np.ndarray,
                       threshold: np.ndarray, kernel_hw, strides=1, padding="SAME", *,
                       pool: bool = False, out: np.ndarray | None = None) -> np.ndarray:
  """Inference after a binary conv in one call: pack(y - threshold) with y =
  binary_conv2d(x_packed, c_in, w_packed, ...) (int32 values) and threshold int32
  (c_out,), i.e. bits y >= threshold per output channel (a folded batch norm + sign);
  pool=True max-pools y 2x2 (stride 2, floor) first. -> uint64 (batch, oh, ow,
  words(c_out)), (oh, ow) halved (floor) when pooled."""
  fn = "binary_conv2d_sign"
  c_in = _int(fn, "c_in", c_in, 1)
  if type(pool) is not bool:
    raise TypeError(f"{fn}: pool={pool!r} must be a bool")
  kh, kw, b, h, w, c_out = _packed_conv_operands(fn, x_packed, c_in, w_packed, kernel_hw)
  _array(fn, "threshold", threshold, I32, (c_out,), what="(c_out,)")
  args, (oh, ow) = _geometry(fn, b, (h, w), c_in, c_out, (kh, kw), strides, padding)
  if pool:
    oh, ow = oh // 2, ow // 2
  out, p_x_packed, p_w_packed, p_threshold, p_out = _out(
      fn, out, (b, oh, ow, words(c_out)), U64, ("x_packed", "w_packed", "threshold"),
      x_packed, w_packed, threshold)
  _call(fn, "bnn_binary_conv2d_sign", p_x_packed, p_w_packed, p_threshold, *args, int(pool),
        p_out)
  return out


def _conv_w_sign(fn, w_sign, c_in=None):
  what = "(kh, kw, c_in, words(c_out)) = pack(W) of the HWIO weights"
  _array(fn, "w_sign", w_sign, U64, (None, None, c_in, None), what=what)
  if min(w_sign.shape) < 1:
    raise ValueError(f"{fn}: w_sign has shape {w_sign.shape}; expected {what}, every axis >= 1")
  return w_sign.shape


def sign_conv2d(x: np.ndarray, w_sign: np.ndarray, c_out: int, strides=1, padding="SAME", *,
                out: np.ndarray | None = None) -> np.ndarray:
  """First-layer conv with real x: x float32 (batch, h, w, c_in), w_sign = pack(W) uint64
  (kh, kw, c_in, words(c_out)) -> y float32 (batch, oh, ow, c_out)."""
  fn = "sign_conv2d"
  c_out = _int(fn, "c_out", c_out, 1)
  _array(fn, "x", x, F32, (None, None, None, None), what="(batch, h, w, c_in), NHWC")
  kh, kw, _, wco = _conv_w_sign(fn, w_sign, x.shape[3])
  if wco != words(c_out):
    raise ValueError(f"{fn}: w_sign has shape {w_sign.shape}; c_out={c_out} needs "
                     f"words(c_out)={words(c_out)} words on the last axis")
  b, h, w, c_in = x.shape
  if c_in < 1:
    raise ValueError(f"{fn}: x has shape {x.shape}; expected c_in >= 1")
  args, (oh, ow) = _geometry(fn, b, (h, w), c_in, c_out, (kh, kw), strides, padding)
  out, p_x, p_w_sign, p_out = _out(fn, out, (b, oh, ow, c_out), F32, ("x", "w_sign"), x, w_sign)
  _call(fn, "bnn_sign_conv2d", p_x, p_w_sign, *args, p_out)
  return out


def conv2d_backward_input(dy: np.ndarray, w_sign: np.ndarray, in_hw, strides=1,
                          padding="SAME") -> np.ndarray:
  """dx float32 (batch, h, w, c_in): the transposed conv of dy float32 (batch, oh, ow,
  c_out) with sign(W), w_sign = pack(W) uint64 (kh, kw, c_in, words(c_out)); in_hw =
  (h, w) of the layer input."""
  fn = "conv2d_backward_input"
  _array(fn, "dy", dy, F32, (None, None, None, None), what="(batch, oh, ow, c_out)")
  b, _, _, c_out = dy.shape
  kh, kw, c_in, wco = _conv_w_sign(fn, w_sign)
  if c_out < 1 or wco != words(c_out):
    raise ValueError(f"{fn}: w_sign has shape {w_sign.shape}; dy has c_out={c_out}, which "
                     f"needs words(c_out)={words(c_out)} words on its last axis")
  h, w = _pair(fn, "in_hw", in_hw)
  args, (oh, ow) = _geometry(fn, b, (h, w), c_in, c_out, (kh, kw), strides, padding)
  if dy.shape[1:3] != (oh, ow):
    raise ValueError(f"{fn}: dy has shape {dy.shape}; an input of {h}x{w} with this "
                     f"kernel, stride and padding gives ({b}, {oh}, {ow}, {c_out})")
  dx = np.empty((b, h, w, c_in), F32)
  _call(fn, "bnn_conv2d_backward_input", _ptr(dy), _ptr(w_sign), *args, _ptr(dx))
  return dx


def conv2d_backward_weight(x: np.ndarray, dy: np.ndarray, kernel_hw, strides=1,
                           padding="SAME", *, c_in: int | None = None) -> np.ndarray:
  """dW_raw float32 (kh, kw, c_in, c_out): the correlation of x with dy float32 (batch,
  oh, ow, c_out). x is the real input, float32 (batch, h, w, c_in) (first layer), or the
  +-1 input packed, uint64 (batch, h, w, words(c_in)), with c_in given."""
  fn = "conv2d_backward_weight"
  _array(fn, "x", x, (F32, U64), (None, None, None, None), what="(batch, h, w, channels)")
  if x.dtype == U64:
    if c_in is None:
      raise ValueError(f"{fn}: x is packed (uint64); pass c_in, its number of channels")
    c_in = _int(fn, "c_in", c_in, 1)
    if x.shape[3] != words(c_in):
      raise ValueError(f"{fn}: x has shape {x.shape}; packed c_in={c_in} needs "
                       f"words(c_in)={words(c_in)} words on the last axis")
  else:
    c_in = x.shape[3] if c_in is None else _int(fn, "c_in", c_in, 1)
    if x.shape[3] != c_in or c_in < 1:
      raise ValueError(f"{fn}: x has shape {x.shape}; expected c_in={c_in} >= 1 channels")
  b, h, w, _ = x.shape
  _array(fn, "dy", dy, F32, (b, None, None, None), what="(batch, oh, ow, c_out)")
  c_out = dy.shape[3]
  if c_out < 1:
    raise ValueError(f"{fn}: dy has shape {dy.shape}; expected c_out >= 1")
  args, (oh, ow) = _geometry(fn, b, (h, w), c_in, c_out, kernel_hw, strides, padding)
  if dy.shape[1:3] != (oh, ow):
    raise ValueError(f"{fn}: dy has shape {dy.shape}; x of shape {x.shape} with this "
                     f"kernel, stride and padding gives ({b}, {oh}, {ow}, {c_out})")
  dw = np.empty((args[5], args[6], c_in, c_out), F32)
  cname = ("bnn_conv2d_backward_weight_packed" if x.dtype == U64
           else "bnn_conv2d_backward_weight_f32")
  _call(fn, cname, _ptr(x), _ptr(dy), *args, _ptr(dw))
  return dw


# ---- batch norm ----------------------------------------------------------------------

class BatchNormForward(NamedTuple):
  """What the L1 batch norm's training forward returns."""
  y: np.ndarray          # float32, x's shape
  mean: np.ndarray       # float32 (c,)
  scale: np.ndarray      # float32 (c,), psi + eps
  sign_bits: np.ndarray  # uint64 (..., words(c)) = pack(x_hat), kept for the backward
  scale16: np.ndarray    # float16 (c,), kept for the backward
  m16: np.ndarray        # float16 (c,), mean|x_hat|, kept for the backward


def _bn_x(fn, name, x):
  _array(fn, name, x, F32, min_ndim=2, what="(batch, ..., c), statistics over all but the last")
  c = x.shape[-1]
  if c < 1 or x.size == 0:
    raise ValueError(f"{fn}: {name} has shape {x.shape}; expected at least one row and "
                     f"one channel")
  return x.size // c, c


def batch_norm_l1(x: np.ndarray, beta: np.ndarray, *, eps: float = 1e-5,
                  running_mean: np.ndarray | None = None,
                  running_scale: np.ndarray | None = None,
                  momentum: float = 0.9) -> BatchNormForward:
  """Training-mode L1 batch norm of x float32 (..., c) with beta float32 (c,):
  mean = mean(x), scale = mean|x - mean| + eps, y = (x - mean) / scale + beta.
  running_mean / running_scale (float32 (c,), both or neither) are updated in place:
  r = momentum * r + (1 - momentum) * batch statistic."""
  fn = "batch_norm_l1"
  n, c = _bn_x(fn, "x", x)
  _array(fn, "beta", beta, F32, (c,), what="(c,) for the last axis of x")
  eps = _float(fn, "eps", eps, lo=0.0)
  momentum = _float(fn, "momentum", momentum, lo=0.0, hi=1.0)
  if (running_mean is None) != (running_scale is None):
    raise ValueError(f"{fn}: pass both running_mean and running_scale, or neither")
  if running_mean is not None:
    _array(fn, "running_mean", running_mean, F32, (c,), writable=True)
    _array(fn, "running_scale", running_scale, F32, (c,), writable=True)
    _check_separate(fn, {"x": x, "beta": beta, "running_mean": running_mean,
                         "running_scale": running_scale},
                    written=("running_mean", "running_scale"))
  res = BatchNormForward(np.empty(x.shape, F32), np.empty(c, F32), np.empty(c, F32),
                         np.empty(x.shape[:-1] + (words(c),), U64), np.empty(c, F16),
                         np.empty(c, F16))
  _call(fn, "bnn_bn_l1_forward", _ptr(x), _ptr(beta), n, c, eps, *(_ptr(a) for a in res),
        _ptr(running_mean), _ptr(running_scale), momentum)
  return res


def batch_norm_l1_backward(dy: np.ndarray, sign_bits: np.ndarray, scale16: np.ndarray,
                           m16: np.ndarray, *, dy_float16: bool = True):
  """The proposed backward: dy float32 (..., c) and what the forward kept -> (dx float32
  of dy's shape, dbeta float32 (c,)). dy_float16: round dy to float16 first (the default
  gradient quantizer; False = identity, e.g. after po2)."""
  fn = "batch_norm_l1_backward"
  n, c = _bn_x(fn, "dy", dy)
  _array(fn, "sign_bits", sign_bits, U64, dy.shape[:-1] + (words(c),),
         what="(..., words(c)) for dy's shape, from batch_norm_l1")
  _array(fn, "scale16", scale16, F16, (c,))
  _array(fn, "m16", m16, F16, (c,))
  if not isinstance(dy_float16, (bool, np.bool_)):
    raise TypeError(f"{fn}: dy_float16={dy_float16!r}; expected a bool")
  dx = np.empty(dy.shape, F32)
  dbeta = np.empty(c, F32)
  _call(fn, "bnn_bn_l1_backward", _ptr(dy), _ptr(sign_bits), _ptr(scale16), _ptr(m16), n, c,
        int(bool(dy_float16)), _ptr(dx), _ptr(dbeta))
  return dx, dbeta


def batch_norm_eval(x: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                    scale: np.ndarray) -> np.ndarray:
  """Evaluation mode: y = (x - mean) / scale + beta, all of beta, mean, scale float32 (c,)."""
  fn = "batch_norm_eval"
  n, c = _bn_x(fn, "x", x)
  for name, a in (("beta", beta), ("mean", mean), ("scale", scale)):
    _array(fn, name, a, F32, (c,), what="(c,) for the last axis of x")
  y = np.empty(x.shape, F32)
  _call(fn, "bnn_bn_eval", _ptr(x), _ptr(beta), _ptr(mean), _ptr(scale), n, c, _ptr(y))
  return y


def batch_norm_eval_sign(x: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                         scale: np.ndarray) -> np.ndarray:
  """pack(batch_norm_eval(x, beta, mean, scale)) in one pass: uint64 (..., words(c)), the
  same bits, without the float32 array in between."""
  fn = "batch_norm_eval_sign"
  n, c = _bn_x(fn, "x", x)
  for name, a in (("beta", beta), ("mean", mean), ("scale", scale)):
    _array(fn, name, a, F32, (c,), what="(c,) for the last axis of x")
  bits = np.empty(x.shape[:-1] + (words(c),), U64)
  _call(fn, "bnn_bn_eval_sign", _ptr(x), _ptr(beta), _ptr(mean), _ptr(scale), n, c,
        _ptr(bits))
  return bits


# ---- activation, pooling ---------------------------------------------------------------

def sign_ste(x: np.ndarray, *, clip: float = 1.0):
  """Sign activation: x float32 (..., n) -> (y = +-1 float32, mask uint64 (..., words(n))
  = pack(|x| <= clip), the STE mask kept for the backward)."""
  fn = "sign_ste"
  _array(fn, "x", x, F32, min_ndim=1, what="(..., n)")
  clip = _float(fn, "clip", clip, lo=0.0)
  n = x.shape[-1]
  y = np.empty(x.shape, F32)
  mask = np.empty(x.shape[:-1] + (words(n),), U64)
  _call(fn, "bnn_sign_ste_forward", _ptr(x), _rows(x), n, clip, _ptr(y), _ptr(mask))
  return y, mask


def sign_ste_backward(dy: np.ndarray, mask: np.ndarray, *,
                      out: np.ndarray | None = None) -> np.ndarray:
  """dx = dy where the STE mask bit is set, else +0.0. out may be dy itself (in place)."""
  fn = "sign_ste_backward"
  _array(fn, "dy", dy, F32, min_ndim=1, what="(..., n)")
  n = dy.shape[-1]
  _array(fn, "mask", mask, U64, dy.shape[:-1] + (words(n),),
         what="(..., words(n)) for dy's shape, from sign_ste")
  if out is None:
    out = np.empty(dy.shape, F32)
  else:
    _array(fn, "out", out, F32, dy.shape, what="(dy's shape)", writable=True)
    if out is not dy and np.may_share_memory(out, dy):
      raise ValueError(f"{fn}: out partly overlaps dy; pass out=dy or a separate array")
    if np.may_share_memory(out, mask):
      raise ValueError(f"{fn}: out overlaps the input mask; expected a separate array")
  _call(fn, "bnn_sign_ste_backward", _ptr(dy), _ptr(mask), _rows(dy), n, _ptr(out))
  return out


def _pool_shape(fn, name, shape):
  if len(shape) != 4 or shape[1] < 2 or shape[2] < 2 or shape[3] < 1:
    raise ValueError(f"{fn}: {name} has shape {tuple(shape)}; expected (b, h, w, c) with "
                     f"h >= 2, w >= 2, c >= 1")


def max_pool2x2(x: np.ndarray):
  """2x2 / stride 2 max pool of x float32 (b, h, w, c) (an odd last row / column is
  dropped) -> (y float32 (b, h // 2, w // 2, c), mask uint64 (b, 2 * (h // 2),
  2 * (w // 2), words(c))): one bit per input of the cropped region, set for the first
  maximum of its window in row-major order."""
  fn = "max_pool2x2"
  _array(fn, "x", x, F32, (None, None, None, None), what="(b, h, w, c), NHWC")
  _pool_shape(fn, "x", x.shape)
  b, h, w, c = x.shape
  y = np.empty((b, h // 2, w // 2, c), F32)
  mask = np.empty((b, 2 * (h // 2), 2 * (w // 2), words(c)), U64)
  _call(fn, "bnn_max_pool2x2_forward", _ptr(x), b, h, w, c, _ptr(y), _ptr(mask))
  return y, mask


def max_pool2x2_backward(dy: np.ndarray, mask: np.ndarray, in_shape) -> np.ndarray:
  """dx float32 of in_shape (b, h, w, c): dy (b, h // 2, w // 2, c) routed to the masked
  input of each window, 0 elsewhere (and on a dropped odd row / column)."""
  fn = "max_pool2x2_backward"
  try:
    in_shape = tuple(_int(fn, "in_shape", v, 0) for v in in_shape)
  except TypeError:
    raise TypeError(f"{fn}: in_shape={in_shape!r}; expected a tuple (b, h, w, c)") from None
  _pool_shape(fn, "in_shape", in_shape)
  b, h, w, c = in_shape
  _array(fn, "dy", dy, F32, (b, h // 2, w // 2, c), what=f"for in_shape {in_shape}")
  _array(fn, "mask", mask, U64, (b, 2 * (h // 2), 2 * (w // 2), words(c)),
         what=f"from max_pool2x2 of an input of shape {in_shape}")
  dx = np.empty(in_shape, F32)
  _call(fn, "bnn_max_pool2x2_backward", _ptr(dy), _ptr(mask), b, h, w, c, _ptr(dx))
  return dx


# ---- gradient quantizer, float16, Adam -------------------------------------------------

def po2(g: np.ndarray, *, bits: int = 4, bias: int = 8, zeros: str = "flush",
        random_bits: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
  """Power-of-two quantizer (METHOD.md; quantizers/gradient.py Po2 for float32) over the
  whole tensor g float32 (any shape). zeros: 'flush' (zeros stay 0) or 'reference'
  (zeros give +2^(-2^(bits-1) - b)). random_bits: None for nearest rounding, or uint32 of
  g's shape for stochastic rounding (up iff (r >> 9) < mantissa field). out may be g."""
  fn = "po2"
  _array(fn, "g", g, F32)
  bits = _int(fn, "bits", bits, 1, 8)
  bias = _int(fn, "bias", bias, -256, 256)
  if zeros not in ("flush", "reference"):
    raise ValueError(f"{fn}: zeros={zeros!r}; expected 'flush' or 'reference'")
  if random_bits is not None:
    _array(fn, "random_bits", random_bits, U32, g.shape, what="(g's shape)")
  if out is None:
    out = np.empty(g.shape, F32)
  else:
    _array(fn, "out", out, F32, g.shape, writable=True)
    if out is not g and np.may_share_memory(out, g):
      raise ValueError(f"{fn}: out partly overlaps g; pass out=g or a separate array")
    if random_bits is not None and np.may_share_memory(out, random_bits):
      raise ValueError(f"{fn}: out overlaps the input random_bits; expected a separate array")
  _call(fn, "bnn_po2", _ptr(g), g.size, bits, bias, int(zeros == "reference"),
        _ptr(random_bits), _ptr(out))
  return out


def f32_to_f16(x: np.ndarray) -> np.ndarray:
  """float32 -> float16 (round to nearest even), by the C conversion."""
  _array("f32_to_f16", "x", x, F32)
  out = np.empty(x.shape, F16)
  _call("f32_to_f16", "bnn_f32_to_f16", _ptr(x), x.size, _ptr(out))
  return out


def f16_to_f32(x: np.ndarray) -> np.ndarray:
  """float16 -> float32 (exact), by the C conversion."""
  _array("f16_to_f32", "x", x, F16)
  out = np.empty(x.shape, F32)
  _call("f16_to_f32", "bnn_f16_to_f32", _ptr(x), x.size, _ptr(out))
  return out


def adam_f16(w: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, *, step: int,
             lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-8) -> None:
  """One Adam step in place on float16 w, m, v (same shape) with gradient g (float32 or
  float16, same shape); step >= 1 is the count after this update (optax.adam's)."""
  fn = "adam_f16"
  _array(fn, "w", w, F16, writable=True)
  for name, a in (("m", m), ("v", v)):
    _array(fn, name, a, F16, w.shape, what="(w's shape)", writable=True)
  _array(fn, "g", g, (F32, F16), w.shape, what="(w's shape)")
  _check_separate(fn, {"w": w, "m": m, "v": v, "g": g}, written=("w", "m", "v"))
  step, lr, b1, b2, eps = _adam_hyperparameters(fn, step, lr, b1, b2, eps)
  cname = "bnn_adam_f16" if g.dtype == F32 else "bnn_adam_f16_g16"
  _call(fn, cname, _ptr(w), _ptr(m), _ptr(v), _ptr(g), w.size, step, lr, b1, b2, eps)


def factored_adam_f16(w: np.ndarray, m: np.ndarray, g: np.ndarray, f1: np.ndarray,
                     f1_on_j: bool, f2: np.ndarray, f2_on_j: bool, *, b1: float,
                     correction: float, lr: float) -> None:
  """factored_adam's elementwise step in place on float16 w and m, of shape (..., ni, nj)
  (the leading axes are p), from float16 g of that shape and the float32 factors f1 and
  f2, of shape (..., nj) when on_j (broadcast over i), else (..., ni) (broadcast over
  j): u = (g * f1) * f2; m = float16(b1 m + (1 - b1) u); w = float16(w + (m /
  correction) * -lr), in float32 (pi_backend/optimizers.py)."""
  fn = "factored_adam_f16"
  _array(fn, "w", w, F16, writable=True)
  if w.ndim < 2:
    raise ValueError(f"{fn}: w has shape {list(w.shape)}; expected at least 2 axes")
  *lead, ni, nj = w.shape
  _array(fn, "m", m, F16, w.shape, what="(w's shape)", writable=True)
  _array(fn, "g", g, F16, w.shape, what="(w's shape)")
  on_j = [int(_bool(fn, "f1_on_j", f1_on_j)), int(_bool(fn, "f2_on_j", f2_on_j))]
  for name, f, j in (("f1", f1, on_j[0]), ("f2", f2, on_j[1])):
    _array(fn, name, f, F32, (*lead, nj if j else ni),
           what=f"(w's shape without its {'second-' if j else ''}last axis)")
  _check_separate(fn, {"w": w, "m": m, "g": g, "f1": f1, "f2": f2}, written=("w", "m"))
  correction = _float(fn, "correction", correction, lo=0.0, lo_open=True)
  lr = _float(fn, "lr", lr)
  b1 = _float(fn, "b1", b1, lo=0.0, hi=1.0, hi_open=True)
  _call(fn, "bnn_factored_adam_f16", _ptr(w), _ptr(m), _ptr(g), math.prod(lead), ni, nj, _ptr(f1),
        on_j[0], _ptr(f2), on_j[1], b1, float(np.float32(1 - b1)), correction, lr)


def factored_square_sums(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """factored_adam's statistics of g float16 or float32, of shape (..., ni, nj): with
  s = g^2 + 1e-30 in float32, -> (the sums of s over the second-last axis, float32
  (..., nj); over the last axis, float32 (..., ni)), in the order bnnpi.h states
  (pi_backend/optimizers.py)."""
  fn = "factored_square_sums"
  _array(fn, "g", g, (F16, F32), min_ndim=2, what="(..., ni, nj)")
  *lead, ni, nj = g.shape
  si, sj = np.empty((*lead, nj), F32), np.empty((*lead, ni), F32)
  p_g = _ptr(g)
  _call(fn, "bnn_factored_square_sums", p_g if g.dtype == F16 else None,
        p_g if g.dtype == F32 else None, math.prod(lead), ni, nj, _ptr(si), _ptr(sj))
  return si, sj


def sign_scaled_grad(dw: np.ndarray, w: np.ndarray, c: np.float16) -> np.ndarray:
  """The sign_scaled weight gradient, float16 of w's shape: +-c by the sign of dw float32
  (dw >= 0: +c; NaN: -c), 0 where the float16 latent weight w has |w| > 1 or is NaN."""
  fn = "sign_scaled_grad"
  _array(fn, "dw", dw, F32)
  _array(fn, "w", w, F16, dw.shape, what="(dw's shape)")
  c16 = _scale_half_bits(fn, "c", c)
  out = np.empty(dw.shape, F16)
  _call(fn, "bnn_sign_scaled_grad", _ptr(dw), _ptr(w), dw.size, c16, _ptr(out))
  return out


def dense_weight_update(x: np.ndarray, dy: np.ndarray, w: np.ndarray, m: np.ndarray,
                        v: np.ndarray, *, k: int, rows: int, c, step: int, lr: float = 1e-3,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        dw_scratch: np.ndarray | None = None,
                        g_scratch: np.ndarray | None = None,
                        x_scratch: np.ndarray | None = None) -> None:
  """A dense layer's whole weight update in one call, in place on float16 w, m, v (k, n):
  for each block of ``rows`` kernel rows, dW = X^T . dy for those rows (t_matmul /
  sign_t_matmul), g = sign_scaled_grad(dW, w rows, c), then adam_f16 on those rows --
  the same bits as those calls in turn. x: the layer input (batch, k) as float32 (real
  x), uint8 pixels (x / 127.5 - 1 in float32, a block at a time) or uint64 (batch,
  words(k)) packed signs (then rows is a multiple of 64). dy float32 (batch, n).
  Scratch (allocated when not given): dw_scratch float32 (rows, n), g_scratch float16
  (rows, n), x_scratch float32 (batch, rows) (uint8 x only)."""
  fn = "dense_weight_update"
  k = _int(fn, "k", k, 0, 2**31 - 1)
  _array(fn, "x", x, (F32, U8, U64), (None, None), what="(batch, k) or (batch, words(k))")
  kind = 2 if x.dtype == U64 else (1 if x.dtype == U8 else 0)
  if x.shape[1] != (words(k) if kind == 2 else k):
    raise ValueError(f"{fn}: x has shape {x.shape}; expected (batch, "
                     f"{'words(k)' if kind == 2 else 'k'}) with k={k}")
  batch = x.shape[0]
  _array(fn, "dy", dy, F32, (batch, None), what="(batch, n) with batch = x.shape[0]")
  n = dy.shape[1]
  rows = _int(fn, "rows", rows, 1)
  if kind == 2 and rows % 64:
    raise ValueError(f"{fn}: rows={rows}; expected a multiple of 64 for packed x")
  rb = max(1, min(rows, k))
  _array(fn, "w", w, F16, (k, n), what="(k, n)", writable=True)
  _array(fn, "m", m, F16, (k, n), what="(k, n), w's shape", writable=True)
  _array(fn, "v", v, F16, (k, n), what="(k, n), w's shape", writable=True)
  c16 = _scale_half_bits(fn, "c", c)
  step, lr, b1, b2, eps = _adam_hyperparameters(fn, step, lr, b1, b2, eps)
  if dw_scratch is None:
    dw_scratch = np.empty((rb, n), F32)
  else:
    _array(fn, "dw_scratch", dw_scratch, F32, (rb, n), writable=True)
  if g_scratch is None:
    g_scratch = np.empty((rb, n), F16)
  else:
    _array(fn, "g_scratch", g_scratch, F16, (rb, n), writable=True)
  if kind == 1:
    if x_scratch is None:
      x_scratch = np.empty((batch, rb), F32)
    else:
      _array(fn, "x_scratch", x_scratch, F32, (batch, rb), writable=True)
  else:
    x_scratch = None
  _check_separate(fn, {"x": x, "dy": dy, "w": w, "m": m, "v": v, "dw_scratch": dw_scratch,
                       "g_scratch": g_scratch, "x_scratch": x_scratch},
                  written=("w", "m", "v", "dw_scratch", "g_scratch", "x_scratch"))
  _call(fn, "bnn_dense_weight_update", _ptr(x), kind, _ptr(dy), batch, k, n, rows, c16,
        _ptr(w), _ptr(m), _ptr(v), step, lr, b1, b2, eps, _ptr(dw_scratch), _ptr(g_scratch),
        _ptr(x_scratch))


def _check_separate(fn: str, arrays: dict, written: tuple[str, ...]) -> None:
  """Raises when an array a kernel writes overlaps another of its arrays (None: absent)."""
  spans = {name: (_ptr(a), a.nbytes) for name, a in arrays.items() if a is not None}
  names = list(spans)
  for i, a_name in enumerate(names):
    for b_name in names[i + 1:]:
      if (a_name in written or b_name in written) and _overlap(*spans[a_name], *spans[b_name]):
        raise ValueError(f"{fn}: {a_name} and {b_name} overlap; expected separate arrays")


def _adam_hyperparameters(fn: str, step, lr, b1, b2, eps) -> tuple:
  """Checked (step, lr, b1, b2, eps) of one Adam step: step >= 1, b1 and b2 in [0, 1)."""
  return (_int(fn, "step", step, 1), _float(fn, "lr", lr),
          _float(fn, "b1", b1, lo=0.0, hi=1.0, hi_open=True),
          _float(fn, "b2", b2, lo=0.0, hi=1.0, hi_open=True), _float(fn, "eps", eps, lo=0.0))


def _scale_half_bits(fn: str, name: str, c) -> int:
  """The float16 bits of a scale c: a real number that rounds to a finite float16 > 0
  (None, NaN, an infinity, 0 or a value beyond float16's 65504 would make every
  gradient NaN, infinite or 0 without an error)."""
  if type(c) is not np.float16:  # the common case, a float16 from the caller, is exact
    c = _float(fn, name, c, lo=0.0, lo_open=True)
    with np.errstate(over="ignore", under="ignore"):
      c16 = np.float16(c)
  else:
    c16 = c
  if not (np.isfinite(c16) and c16 > 0):
    raise ValueError(f"{fn}: {name}={c!r} is {c16} as a float16; expected a number that "
                     f"rounds to a finite float16 > 0 (at most 65504)")
  return int(c16.view(np.uint16))


__all__ = [
    "BatchNormForward", "adam_f16", "batch_norm_eval", "batch_norm_eval_sign", "batch_norm_l1",
    "batch_norm_l1_backward", "binary_conv2d", "conv2d_backward_input",
    "conv2d_backward_weight", "conv_output_hw", "conv_padding", "dense_weight_update",
    "f16_to_f32", "f32_to_f16",
    "from_uint8", "im2col_packed", "matmul_sign_t", "matmul_sign_t_packed", "max_pool2x2",
    "max_pool2x2_backward", "pack", "pack_conv_weights", "pack_f16", "pack_f16_transposed",
    "pack_transposed", "po2",
    "popcount_impl", "popcount_impls", "set_popcount_impl", "float_impl", "float_impls",
    "set_float_impl", "sign_conv2d", "sign_matmul",
    "sign_matmul_packed", "sign_scaled_grad", "sign_ste", "sign_ste_backward",
    "sign_t_matmul", "t_matmul",
    "to_uint8", "unpack", "words", "xnor_gemm",
]
