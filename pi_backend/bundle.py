"""The bundle: one file with a trained binary network, for inference and training on
the device. Written by ``python main.py --mode export`` (from an orbax checkpoint) and
by ``python -m pi_backend train``; read back into JAX by ``--mode import``.

File layout (version 1; all integers little-endian)::

  offset     size  content
  0          8     magic b"BNNPI\\x00\\r\\n"
  8          4     version, uint32 (= 1)
  12         4     header length H, uint32
  16         H     header: a UTF-8 JSON object {"metadata": {...}, "tensors": [...],
                   "data_nbytes": D}
  16 + H     P     zero bytes up to the next multiple of 64 (0 <= P < 64): A = 16 + H + P
  A          D     data: each tensor at A + offset, C order, little-endian; offsets are
                   multiples of 64, tensors do not overlap, gaps are zero bytes
  A + D      32    SHA-256 of bytes [0, A + D)

and the file is exactly A + D + 32 bytes. ``tensors`` lists {"name", "dtype" ("<u8"
uint64, "<f2" float16 or "<f4" float32), "shape" (list of ints), "offset", "nbytes"}.

``metadata`` (checked by pi_backend/graph.py)::

  method        "proposed" (the only method pi_backend runs)
  model         informational name: "mlp", "cnv", "binarynet", ...
  input_shape   per-example input, e.g. [28, 28, 1] or [32, 32, 3] (NHWC without N);
                uint8 pixels are scaled to [-1, 1] as x / 127.5 - 1, floats are taken
                as already scaled
  num_classes   int
  trainable     whether latent weights and Adam state are included
  train_step    training steps done so far
  optimizer     (trainable) {"name", "lr", "b1", "b2", "eps", "count"}; name "adam":
                optax.adam with eps_root = 0 on every parameter; "factored_adam": the
                JAX side's factored_adam (bnn/optim.py, pi_backend/optimizers.py) on
                the kernels, Adam on the betas; lr includes the plateau schedule's
                factor; count = updates done
  source        optional free-form object (where the bundle came from)
  layers        list of layers, in order; each has "kind", "in_shape", "out_shape"
                (per example; each must follow from the one before) and:
    flatten                  -
    dense                    name, first_layer, grad_quantizer, weight_grad_quantizer
    conv                     the same, and kernel [kh, kw], strides [sh, sw],
                             padding [[top, bottom], [left, right]] (explicit zeros)
    batch_norm               name, eps, momentum, grad_quantizer  (L1, beta only)
    sign                     quantizer "ste_sign(clip=1.0)"
    max_pool                 window [2, 2], strides [2, 2] (an odd row/column dropped)
    softmax_cross_entropy    the last layer; in_shape [num_classes]
  Quantizers are the JAX side's spec strings (pi_backend/quant.py). ``name`` is the
  JAX module that owns the parameters (e.g. "BinaryDense_0"; a BinaryClassifier's dense
  and batch norm share one name); only the first dense/conv has first_layer = true,
  and only flatten layers come before it.

Tensors (``<name>`` the layer's name):

  bits/<name>/kernel         uint64   sign(W) packed along the last (output) axis:
                                      dense (n_in, words(n_out)), conv (kh, kw, c_in,
                                      words(c_out)); words(n) = ceil(n / 64), bit j of a
                                      word = element j (+1 <-> 1), padding bits 0 -- the
                                      JAX side's uint8 packing, widened to 64-bit words
  params/<name>/kernel       float16  latent W (trainable bundles)
  params/<name>/beta         float16  batch-norm shift
  batch_stats/<name>/mean    float32  running mean
  batch_stats/<name>/scale   float32  running scale (L1: mean|x - mean| + eps)
  adam_m/<param>, adam_v/<param>  float16  Adam moments of every params/ tensor
                                      (trainable bundles, optimizer "adam")
  factored_adam bundles instead:
  fadam_m/<name>/kernel      float16  first moment (the EMA of g / sqrt(v_hat))
  fadam_vrow/<name>/kernel   float32  second-moment statistics of the kernel without
  fadam_vcol/<name>/kernel   float32  its largest axis d0 / second largest d1 (ties to
                                      the lower axis first: dense (n_in, n_out) with
                                      n_in > n_out: vrow (n_out,), vcol (n_in,))
  adam_m/<name>/beta, adam_v/<name>/beta  float32  Adam moments of the betas

Latent weights, betas and first moments are float16 (the memory-lean storage of the
proposed method); a JAX checkpoint with float32 state is rounded to nearest on export.
The factored statistics (rows + columns per kernel) and the betas' moments of
factored_adam are float32, as on the JAX side.

``read`` / ``decode`` check everything -- length, magic, version, checksum, the JSON
schema, the layer graph's shapes, the hyperparameters (eps > 0, 0 < lr <= 1, betas in
[0, 1): values with which training gives NaN), tensor names, dtypes, shapes, offsets and
values
(finite; scales > 0; padding bits 0; packed signs equal to the latent signs) -- and
raise BundleError naming what is wrong. ``write`` checks the same before it writes,
then writes atomically (a temporary file in the same directory, fsync, os.replace).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from pi_backend import atomic
from pi_backend import graph as graph_lib
from pi_backend.errors import BundleError

MAGIC = b"BNNPI\x00\r\n"
VERSION = 1
ALIGN = 64
DIGEST = 32
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_DTYPES = {"<u8": np.dtype(np.uint64), "<f2": np.dtype(np.float16),
           "<f4": np.dtype(np.float32)}
_HEADER_KEYS = ("metadata", "tensors", "data_nbytes")
_TENSOR_KEYS = ("name", "dtype", "shape", "offset", "nbytes")
MAX_TENSORS = 10000

__all__ = ["ALIGN", "Bundle", "BundleError", "MAGIC", "VERSION", "decode", "encode", "read",
           "write"]


@dataclasses.dataclass
class Bundle:
  """A checked bundle: metadata (the JSON object), tensors (name -> native-endian,
  contiguous, writable arrays) and the parsed layer graph."""
  metadata: dict
  tensors: dict
  graph: graph_lib.Graph


def _align(n: int) -> int:
  return -(-n // ALIGN) * ALIGN


def _dtype_code(a: np.ndarray) -> str:
  for code, dtype in _DTYPES.items():
    if a.dtype == dtype:
      return code
  raise ValueError(f"bundle tensors must be uint64, float16 or float32; got {a.dtype}")


def check(metadata: dict, tensors: dict) -> Bundle:
  """Checks metadata and tensors together (BundleError) and returns the Bundle."""
  g = graph_lib.parse(metadata)
  graph_lib.check_tensors(g, tensors)
  return Bundle(metadata, tensors, g)


def encode(metadata: dict, tensors: dict) -> bytes:
  """The bytes of a bundle (checked first: BundleError when inconsistent)."""
  check(metadata, tensors)
  table, offset = [], 0
  for name in sorted(tensors):
    a = tensors[name]
    table.append({"name": name, "dtype": _dtype_code(a), "shape": list(a.shape),
                  "offset": offset, "nbytes": a.nbytes})
    offset = _align(offset + a.nbytes)
  data_nbytes = table[-1]["offset"] + table[-1]["nbytes"] if table else 0
  try:
    header = json.dumps({"metadata": metadata, "tensors": table, "data_nbytes": data_nbytes},
                        allow_nan=False, sort_keys=True).encode()
  except (TypeError, ValueError) as e:
    raise BundleError(f"bundle metadata is not plain JSON: {e}") from None
  start = _align(_PREFIX.size + len(header))
  out = bytearray(start + data_nbytes)
  _PREFIX.pack_into(out, 0, MAGIC, VERSION, len(header))
  out[_PREFIX.size:_PREFIX.size + len(header)] = header
  for entry in table:
    a = np.ascontiguousarray(tensors[entry["name"]])
    raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    out[start + entry["offset"]:start + entry["offset"] + len(raw)] = raw
  out += hashlib.sha256(out).digest()
  return bytes(out)


def write(path, metadata: dict, tensors: dict) -> Path:
  """Writes a bundle atomically: nothing at ``path`` changes unless the whole file was
  written (pi_backend/atomic.py)."""
  return atomic.write_bytes(path, encode(metadata, tensors))


def read(path) -> Bundle:
  """Reads and checks a bundle file (BundleError naming the problem; OSError when the
  file cannot be read)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return decode(data)
  except BundleError as e:
    raise BundleError(f"{path}: {e}") from None


def _header(data: bytes):
  """(header object, data start A) or raises BundleError; assumes the prefix is valid."""
  end = _PREFIX.size + _PREFIX.unpack_from(data, 0)[2]
  try:
    header = json.loads(data[_PREFIX.size:end].decode("utf-8"),
                        parse_constant=lambda c: _bad_constant(c))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
    raise BundleError(f"bundle header is not valid UTF-8 JSON: {e}") from None
  if not isinstance(header, dict) or sorted(header) != sorted(_HEADER_KEYS):
    raise BundleError(f"bundle header: expected a JSON object with exactly the keys "
                      f"{list(_HEADER_KEYS)}")
  n = header["data_nbytes"]
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise BundleError(f"bundle header: data_nbytes={n!r}; expected an int >= 0")
  return header, _align(end)


def _bad_constant(c):
  raise ValueError(f"{c} is not allowed")


def decode(data: bytes) -> Bundle:
  """Parses and checks the bytes of a bundle; BundleError naming what is wrong."""
  data = bytes(data)
  if len(data) < _PREFIX.size + DIGEST:
    raise BundleError(f"truncated bundle: {len(data)} bytes; a bundle has at least "
                      f"{_PREFIX.size + DIGEST}")
  magic, version, _ = _PREFIX.unpack_from(data, 0)
  if magic != MAGIC:
    raise BundleError(f"not a pi_backend bundle: the file starts with {magic!r}; expected "
                      f"the magic {MAGIC!r}")
  if version != VERSION:
    raise BundleError(f"bundle version {version} is not supported; this reader reads "
                      f"version {VERSION}")
  hlen = _PREFIX.unpack_from(data, 0)[2]
  if _PREFIX.size + hlen + DIGEST > len(data):
    raise BundleError(f"truncated bundle: {len(data)} bytes, but the header alone needs "
                      f"{_PREFIX.size + hlen} bytes (and the checksum {DIGEST} more)")
  header_error = None
  try:
    header, start = _header(data)
  except BundleError as e:
    header, header_error = None, e
  if header is not None:
    expected = start + header["data_nbytes"] + DIGEST
    if len(data) < expected:
      raise BundleError(f"truncated bundle: {len(data)} bytes; its header describes "
                        f"{expected}")
    if len(data) > expected:
      raise BundleError(f"bundle has {len(data) - expected} bytes after its end (the header "
                        f"describes {expected} bytes)")
  digest = hashlib.sha256(data[:-DIGEST]).digest()
  if digest != data[-DIGEST:]:
    raise BundleError(f"bundle checksum mismatch: the SHA-256 of the content is "
                      f"{digest.hex()[:16]}..., the file says {data[-DIGEST:].hex()[:16]}...; "
                      f"the file is corrupt")
  if header_error is not None:
    raise header_error
  tensors = _tensors(data, header["tensors"], start, header["data_nbytes"])
  try:
    return check(header["metadata"], tensors)
  except BundleError:
    raise
  except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError) as e:
    # A safety net: the checks above name every problem they know of.
    raise BundleError(f"bundle metadata is malformed: {type(e).__name__}: {e}") from None


def _tensors(data: bytes, table, start: int, data_nbytes: int) -> dict:
  if not isinstance(table, list) or len(table) > MAX_TENSORS:
    raise BundleError(f"bundle header: tensors must be a list of at most {MAX_TENSORS} entries")
  tensors, spans = {}, []
  for i, e in enumerate(table):
    if not isinstance(e, dict) or sorted(e) != sorted(_TENSOR_KEYS):
      raise BundleError(f"bundle header: tensor entry {i} must be an object with exactly the "
                        f"keys {list(_TENSOR_KEYS)}")
    name, code, shape, offset, nbytes = (e[k] for k in _TENSOR_KEYS)
    where = f"bundle tensor {i} ({name!r})"
    if not isinstance(name, str) or not name or name in tensors:
      raise BundleError(f"{where}: the name must be a non-empty string, unique in the bundle")
    if not isinstance(code, str) or code not in _DTYPES:
      raise BundleError(f"{where}: dtype={code!r}; expected one of {list(_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > 8 or any(
        isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= graph_lib.MAX_DIM
        for d in shape)):
      raise BundleError(f"{where}: shape={shape!r}; expected a list of at most 8 ints in "
                        f"[0, {graph_lib.MAX_DIM}]")
    for key, v in (("offset", offset), ("nbytes", nbytes)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BundleError(f"{where}: {key}={v!r}; expected an int >= 0")
    dtype = _DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if nbytes != count * dtype.itemsize:
      raise BundleError(f"{where}: nbytes={nbytes} contradicts its dtype {code} and shape "
                        f"{shape} ({count * dtype.itemsize} bytes)")
    if offset % ALIGN or offset + nbytes > data_nbytes:
      raise BundleError(f"{where}: offset={offset}, nbytes={nbytes} do not lie inside the "
                        f"data section of {data_nbytes} bytes at a multiple of {ALIGN}")
    spans.append((offset, offset + nbytes, name))
    raw = np.frombuffer(data, dtype.newbyteorder("<"), count, start + offset)
    tensors[name] = raw.astype(dtype).reshape(shape)  # a native, writable copy
  spans.sort()
  for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
    if begin_b < end_a:
      raise BundleError(f"bundle tensors {a!r} and {b!r} overlap in the data section")
  return tensors
