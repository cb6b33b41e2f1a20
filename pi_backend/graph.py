"""The bundle's metadata: the layer graph, checked and turned into LayerSpecs, and the
tensors it implies (names, dtypes, shapes) with their value checks.

Everything wrong raises BundleError naming the layer or tensor, the bad value and what
was expected; nothing here raises any other exception for any JSON input (the reader's
fuzz test holds it to that). The schema is documented in pi_backend/bundle.py.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from pi_backend import kernels as K
from pi_backend import quant, signs
from pi_backend.errors import BundleError

KINDS = ("flatten", "dense", "conv", "batch_norm", "sign", "max_pool",
         "softmax_cross_entropy")
_LAYER_KEYS = {
    "flatten": (),
    "dense": ("name", "first_layer", "grad_quantizer", "weight_grad_quantizer"),
    "conv": ("name", "first_layer", "grad_quantizer", "weight_grad_quantizer", "kernel",
             "strides", "padding"),
    "batch_norm": ("name", "eps", "momentum", "grad_quantizer"),
    "sign": ("quantizer",),
    "max_pool": ("window", "strides"),
    "softmax_cross_entropy": (),
}
_TOP_KEYS = ("method", "model", "input_shape", "num_classes", "layers", "trainable",
             "optimizer", "train_step", "source")
_OPTIMIZER_KEYS = ("name", "lr", "b1", "b2", "eps", "count")
OPTIMIZERS = ("adam", "factored_adam")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
MAX_DIM = 1 << 24            # largest size of one axis
MAX_ELEMENTS = 1 << 26       # largest activation of one example
MAX_LAYERS = 1000

F16, F32, U64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.uint64)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One layer. name: the JAX module that owns its parameters (dense, conv, batch_norm);
  the other fields are set for the kinds that use them."""
  kind: str
  in_shape: tuple
  out_shape: tuple
  name: str = ""
  first_layer: bool = False
  grad_quantizer: quant.Quantizer | None = None
  weight_grad_quantizer: quant.Quantizer | None = None
  kernel: tuple = ()
  strides: tuple = ()
  padding: tuple = ()
  eps: float = 0.0
  momentum: float = 0.0
  clip: float = 1.0


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """name "adam": Adam (optax.adam, eps_root = 0) on every parameter; "factored_adam":
  the JAX side's factored_adam (bnn/optim.py) on the kernels and float32 Adam on the
  betas. lr already includes any schedule factor; count is the number of updates done."""
  lr: float
  b1: float
  b2: float
  eps: float
  count: int
  name: str = "adam"


@dataclasses.dataclass(frozen=True)
class Graph:
  input_shape: tuple
  num_classes: int
  layers: tuple
  trainable: bool
  optimizer: Optimizer | None
  train_step: int
  model: str


def _fail(where: str, msg: str):
  raise BundleError(f"bundle metadata, {where}: {msg}")


def _int(where, key, v, lo=0, hi=MAX_DIM):
  if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
    _fail(where, f"{key}={v!r}; expected an int in [{lo}, {hi}]")
  return v


def _float(where, key, v, lo=None, hi=None, hi_open=False, lo_open=False):
  try:
    finite = (not isinstance(v, bool) and isinstance(v, (int, float))
              and math.isfinite(float(v)))
  except OverflowError:  # an int too large for a float
    finite = False
  ok = (finite
        and (lo is None or (v > lo if lo_open else v >= lo))
        and (hi is None or (v < hi if hi_open else v <= hi)))
  if not ok:
    rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    _fail(where, f"{key}={v!r}; expected a finite number in {rng}")
  return float(v)


def _positive_float32(where, key, v):
  """A number in (0, 1] that stays > 0 in float32, the precision the kernels use it in
  (0, or 1e-50, would divide by zero there)."""
  v = _float(where, key, v, 0.0, 1.0, lo_open=True)
  if np.float32(v) == 0:
    _fail(where, f"{key}={v!r} is 0 in float32; expected a number in (0.0, 1.0] that "
                 f"float32 can hold (>= {np.finfo(np.float32).smallest_subnormal})")
  return v


def _ints(where, key, v, n=None, lo=1):
  if not isinstance(v, list) or (n is not None and len(v) != n) or not 1 <= len(v) <= 4:
    _fail(where, f"{key}={v!r}; expected a list of {n or '1 to 4'} ints")
  return tuple(_int(where, key, d, lo) for d in v)


def _elements(shape) -> int:
  return math.prod(shape)


def _dict(where, v, keys, required=None):
  if not isinstance(v, dict):
    _fail(where, f"expected a JSON object; got {type(v).__name__}")
  unknown = sorted(set(v) - set(keys))
  if unknown:
    _fail(where, f"unknown keys {unknown}; expected only {list(keys)}")
  missing = [k for k in (keys if required is None else required) if k not in v]
  if missing:
    _fail(where, f"missing keys {missing}")
  return v


def _quantizer(where, key, spec):
  try:
    return quant.parse(spec)
  except ValueError as e:
    _fail(where, f"{key}: {e}")


def _padding(where, v):
  if (not isinstance(v, list) or len(v) != 2
      or any(not isinstance(p, list) or len(p) != 2 for p in v)):
    _fail(where, f"padding={v!r}; expected [[top, bottom], [left, right]] of ints >= 0")
  return tuple(tuple(_int(where, "padding", p, 0) for p in pair) for pair in v)


def _layer(i: int, d, in_shape: tuple) -> LayerSpec:
  where = f"layer {i}"
  if not isinstance(d, dict):
    _fail(where, f"expected a JSON object; got {type(d).__name__}")
  kind = d.get("kind")
  if kind not in KINDS:
    _fail(where, f"unknown layer kind {kind!r}; expected one of {list(KINDS)}")
  where = f"layer {i} ({kind})"
  keys = ("kind", "in_shape", "out_shape") + _LAYER_KEYS[kind]
  _dict(where, d, keys)
  stated_in = _ints(where, "in_shape", d["in_shape"])
  stated_out = _ints(where, "out_shape", d["out_shape"])
  if stated_in != in_shape:
    _fail(where, f"in_shape={list(stated_in)} contradicts the shape {list(in_shape)} "
                 f"that the layers before it produce")
  f = {}
  if kind in ("dense", "conv", "batch_norm"):
    if not isinstance(d["name"], str) or not _NAME.match(d["name"]):
      _fail(where, f"name={d['name']!r}; expected 1 to 100 characters of [A-Za-z0-9_.-]")
    f["name"] = d["name"]
    f["grad_quantizer"] = _quantizer(where, "grad_quantizer", d["grad_quantizer"])
  if kind in ("dense", "conv"):
    if not isinstance(d["first_layer"], bool):
      _fail(where, f"first_layer={d['first_layer']!r}; expected true or false")
    f["first_layer"] = d["first_layer"]
    f["weight_grad_quantizer"] = _quantizer(where, "weight_grad_quantizer",
                                            d["weight_grad_quantizer"])
  if kind == "flatten":
    out = (_elements(in_shape),)
  elif kind == "dense":
    if len(in_shape) != 1:
      _fail(where, f"in_shape={list(in_shape)}; a dense layer takes a vector (add a "
                   f"flatten layer before it)")
    if len(stated_out) != 1:
      _fail(where, f"out_shape={list(stated_out)}; expected [features]")
    out = stated_out
  elif kind == "conv":
    if len(in_shape) != 3:
      _fail(where, f"in_shape={list(in_shape)}; a conv takes [height, width, channels]")
    f["kernel"] = _ints(where, "kernel", d["kernel"], 2)
    f["strides"] = _ints(where, "strides", d["strides"], 2)
    f["padding"] = _padding(where, d["padding"])
    dims = []
    for n, k, s, (lo, hi) in zip(in_shape[:2], f["kernel"], f["strides"], f["padding"]):
      if n + lo + hi < k:
        _fail(where, f"kernel {list(f['kernel'])} is larger than the padded input "
                     f"{list(in_shape)} with padding {[list(p) for p in f['padding']]}")
      dims.append((n + lo + hi - k) // s + 1)
    if len(stated_out) != 3:
      _fail(where, f"out_shape={list(stated_out)}; expected [height, width, features]")
    out = (*dims, stated_out[2])
  elif kind == "batch_norm":
    f["eps"] = _positive_float32(where, "eps", d["eps"])  # scale = mean|x - mean| + eps
    f["momentum"] = _float(where, "momentum", d["momentum"], 0.0, 1.0)
    out = in_shape
  elif kind == "sign":
    try:
      f["clip"] = quant.parse_activation(d["quantizer"])
    except ValueError as e:
      _fail(where, str(e))
    out = in_shape
  elif kind == "max_pool":
    if _ints(where, "window", d["window"], 2) != (2, 2) or _ints(
        where, "strides", d["strides"], 2) != (2, 2):
      _fail(where, f"window={d['window']!r}, strides={d['strides']!r}; pi_backend pools "
                   f"2x2 windows with stride 2")
    if len(in_shape) != 3 or in_shape[0] < 2 or in_shape[1] < 2:
      _fail(where, f"in_shape={list(in_shape)}; expected [height >= 2, width >= 2, channels]")
    out = (in_shape[0] // 2, in_shape[1] // 2, in_shape[2])
  else:  # softmax_cross_entropy
    if len(in_shape) != 1:
      _fail(where, f"in_shape={list(in_shape)}; expected [num_classes]")
    out = in_shape
  if stated_out != out:
    _fail(where, f"out_shape={list(stated_out)} contradicts the shape {list(out)} that "
                 f"this layer produces from in_shape={list(in_shape)}")
  if _elements(out) > MAX_ELEMENTS:
    _fail(where, f"out_shape={list(out)} has more than {MAX_ELEMENTS} elements per example")
  return LayerSpec(kind=kind, in_shape=in_shape, out_shape=out, **f)


def parse(meta) -> Graph:
  """The metadata JSON object -> Graph; BundleError on anything inconsistent."""
  _dict("top level", meta, _TOP_KEYS,
        required=("method", "input_shape", "num_classes", "layers", "trainable"))
  if meta["method"] != "proposed":
    _fail("top level", f"method={meta['method']!r}; pi_backend runs only 'proposed'")
  model = meta.get("model", "")
  if not isinstance(model, str) or len(model) > 100:
    _fail("top level", f"model={model!r}; expected a short string")
  input_shape = _ints("top level", "input_shape", meta["input_shape"])
  if _elements(input_shape) > MAX_ELEMENTS:
    _fail("top level", f"input_shape={list(input_shape)} has more than {MAX_ELEMENTS} "
                       f"elements")
  num_classes = _int("top level", "num_classes", meta["num_classes"], 1)
  trainable = meta["trainable"]
  if not isinstance(trainable, bool):
    _fail("top level", f"trainable={trainable!r}; expected true or false")
  train_step = _int("top level", "train_step", meta.get("train_step", 0), 0, 2 ** 62)
  layers_in = meta["layers"]
  if not isinstance(layers_in, list) or not 1 <= len(layers_in) <= MAX_LAYERS:
    _fail("top level", f"layers: expected a list of 1 to {MAX_LAYERS} layer objects")
  layers, shape = [], input_shape
  for i, d in enumerate(layers_in):
    spec = _layer(i, d, shape)
    layers.append(spec)
    shape = spec.out_shape
  _check_structure(layers, num_classes)
  optimizer = None
  if trainable:
    o = _dict("optimizer", meta.get("optimizer"), _OPTIMIZER_KEYS)
    if o["name"] not in OPTIMIZERS:
      _fail("optimizer", f"name={o['name']!r}; expected one of {list(OPTIMIZERS)}")
    # lr <= 1: an Adam step moves a weight by about lr, and the latent weights live in
    # [-1, 1] (the clip); eps > 0: Adam divides by sqrt(v) + eps, and v can be 0
    optimizer = Optimizer(name=o["name"],
                          lr=_positive_float32("optimizer", "lr", o["lr"]),
                          b1=_float("optimizer", "b1", o["b1"], 0.0, 1.0, hi_open=True),
                          b2=_float("optimizer", "b2", o["b2"], 0.0, 1.0, hi_open=True),
                          eps=_positive_float32("optimizer", "eps", o["eps"]),
                          count=_int("optimizer", "count", o["count"], 0, 2 ** 62))
  return Graph(input_shape=input_shape, num_classes=num_classes, layers=tuple(layers),
               trainable=trainable, optimizer=optimizer, train_step=train_step, model=model)


def _check_structure(layers, num_classes):
  last = layers[-1]
  if last.kind != "softmax_cross_entropy":
    _fail(f"layer {len(layers) - 1}", f"the last layer is {last.kind!r}; expected "
                                      f"'softmax_cross_entropy'")
  if last.in_shape != (num_classes,):
    _fail(f"layer {len(layers) - 1}", f"in_shape={list(last.in_shape)}; expected "
                                      f"[num_classes] = [{num_classes}]")
  seen_binary, names = False, {"dense/conv": set(), "batch_norm": set()}
  for i, spec in enumerate(layers):
    where = f"layer {i} ({spec.kind})"
    if spec.kind == "softmax_cross_entropy" and i != len(layers) - 1:
      _fail(where, "softmax_cross_entropy must be the last layer")
    if spec.kind in ("dense", "conv"):
      if spec.first_layer != (not seen_binary):
        _fail(where, f"first_layer={str(spec.first_layer).lower()}; expected "
                     f"{str(not seen_binary).lower()} (only the first dense/conv layer "
                     f"takes the real input)")
      seen_binary = True
    elif not seen_binary and spec.kind != "flatten":
      _fail(where, "only flatten layers may come before the first dense/conv layer "
                   "(which takes the real input)")
    if spec.name:
      group = "batch_norm" if spec.kind == "batch_norm" else "dense/conv"
      if spec.name in names[group]:
        _fail(where, f"name={spec.name!r} is used by another {group} layer")
      names[group].add(spec.name)
  if not seen_binary:
    _fail("layers", "no dense or conv layer")


# ---- tensors ----------------------------------------------------------------------------

def kernel_shape(spec: LayerSpec) -> tuple:
  """The latent weights of a dense (n_in, n_out) or conv (kh, kw, c_in, c_out) layer."""
  if spec.kind == "dense":
    return (spec.in_shape[0], spec.out_shape[0])
  return (*spec.kernel, spec.in_shape[2], spec.out_shape[2])


def factored_dims(shape: tuple) -> tuple[int, int]:
  """(d1, d0) of optax's factored second moment (scale_by_factored_rms with
  min_dim_size_to_factor=1): d0 the largest axis, d1 the second largest, ties to the
  lower axis first. The row statistics drop d0, the column statistics drop d1."""
  order = np.argsort(shape, kind="stable")
  return int(order[-2]), int(order[-1])


def factored_shapes(shape: tuple) -> tuple[tuple, tuple]:
  """The shapes of the row and column statistics of a kernel of this shape."""
  d1, d0 = factored_dims(shape)
  return (tuple(n for i, n in enumerate(shape) if i != d0),
          tuple(n for i, n in enumerate(shape) if i != d1))


def expected_tensors(graph: Graph) -> dict:
  """Tensor name -> (dtype, shape) that the graph needs (bundle.py lists the names)."""
  out = {}
  for spec in graph.layers:
    if spec.kind in ("dense", "conv"):
      shape = kernel_shape(spec)
      out[f"bits/{spec.name}/kernel"] = (U64, shape[:-1] + (K.words(shape[-1]),))
      if graph.trainable:
        out[f"params/{spec.name}/kernel"] = (F16, shape)
    elif spec.kind == "batch_norm":
      c = (spec.in_shape[-1],)
      out[f"params/{spec.name}/beta"] = (F16, c)
      out[f"batch_stats/{spec.name}/mean"] = (F32, c)
      out[f"batch_stats/{spec.name}/scale"] = (F32, c)
  if graph.trainable:
    factored = graph.optimizer.name == "factored_adam"
    for name, (dtype, shape) in list(out.items()):
      if not name.startswith("params/"):
        continue
      leaf = name[len("params/"):]
      if factored and leaf.endswith("/kernel"):
        rows, cols = factored_shapes(shape)
        out[f"fadam_m/{leaf}"] = (F16, shape)
        out[f"fadam_vrow/{leaf}"] = (F32, rows)
        out[f"fadam_vcol/{leaf}"] = (F32, cols)
      else:  # factored_adam keeps the betas' Adam state in float32, as the JAX side does
        moment = F32 if factored else F16
        out[f"adam_m/{leaf}"] = (moment, shape)
        out[f"adam_v/{leaf}"] = (moment, shape)
  return out


def check_tensors(graph: Graph, tensors: dict) -> None:
  """Names, dtypes, shapes and values of the tensors against the graph."""
  want = expected_tensors(graph)
  missing = sorted(set(want) - set(tensors))
  extra = sorted(set(tensors) - set(want))
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} that the "
                   f"layer graph needs")
    if extra:
      parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''} that no "
                   f"layer of the graph uses")
    raise BundleError("bundle tensors: " + "; ".join(parts))
  for name, (dtype, shape) in want.items():
    a = tensors[name]
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
      got = f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
      raise BundleError(f"bundle tensor {name}: {got} contradicts the metadata, which needs "
                        f"{dtype}{list(shape)}")
  for name, a in tensors.items():
    group = name.split("/", 1)[0]
    if group == "bits":
      continue
    if not np.all(np.isfinite(a)):
      raise BundleError(f"bundle tensor {name}: holds NaN or infinite values")
    if group in ("adam_v", "fadam_vrow", "fadam_vcol") and np.any(a < 0):
      raise BundleError(f"bundle tensor {name}: Adam's second moment has negative values")
    if group in ("fadam_vrow", "fadam_vcol") and graph.optimizer.count and np.any(a == 0):
      raise BundleError(f"bundle tensor {name}: a factored second moment is 0 after "
                        f"{graph.optimizer.count} updates; expected > 0 (the update "
                        f"divides by its square root)")
    if name.endswith("/scale") and group == "batch_stats" and np.any(a <= 0):
      raise BundleError(f"bundle tensor {name}: batch-norm scales must be > 0")
  for spec in graph.layers:
    if spec.kind not in ("dense", "conv"):
      continue
    shape = kernel_shape(spec)
    bits = tensors[f"bits/{spec.name}/kernel"]
    if not signs.padding_bits_clear(bits, shape[-1]):
      raise BundleError(f"bundle tensor bits/{spec.name}/kernel: padding bits beyond "
                        f"{shape[-1]} outputs are set; expected 0")
    latent = tensors.get(f"params/{spec.name}/kernel")
    if latent is not None and not np.array_equal(signs.pack_signs(latent), bits):
      raise BundleError(f"bundle tensor bits/{spec.name}/kernel: the packed signs differ "
                        f"from the signs of params/{spec.name}/kernel")
