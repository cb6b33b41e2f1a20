"""Training memory: what the backward pass keeps (saved residuals)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

try:  # public in some JAX releases, private in the pinned one
  from jax.ad_checkpoint import saved_residuals as _saved_residuals
except ImportError:
  from jax._src.ad_checkpoint import saved_residuals as _saved_residuals


@dataclasses.dataclass(frozen=True)
class Residual:
  shape: tuple[int, ...]
  dtype: np.dtype
  source: str

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

  @property
  def is_float(self) -> bool:
    return np.issubdtype(self.dtype, np.floating)


def saved_residuals(f: Callable, *args) -> list[Residual]:
  """The tensors that reverse-mode autodiff of f keeps from forward to backward."""
  return [Residual(tuple(aval.shape), np.dtype(aval.dtype), source)
          for aval, source in _saved_residuals(f, *args)]


def per_example(residuals: list[Residual], batch_size: int) -> list[Residual]:
  """The residuals whose leading dimension is the batch."""
  return [r for r in residuals if r.shape and r.shape[0] == batch_size]


# --------------------------------------------------------------------------------------
# Modelled training memory, per layer and category.
# --------------------------------------------------------------------------------------

CATEGORIES = ("weights", "weight_grads", "optimizer", "bn_state", "activations", "grad_buffers")

# Bits per element, per method (METHOD.md, "Memory accounting"). Weight gradients of
# the proposed method are 1 bit (a sign) when formed and 16 bits once scaled.
_BITS = {
    "standard": dict(weight=32, weight_grad=32, moment=32, kept=32, grad_buffer=32),
    "proposed": dict(weight=16, weight_grad=16, moment=16, kept=1, grad_buffer=16),
}
_BINARY_LAYERS = ("BinaryDense", "BinaryConv", "BinaryClassifier")
_REAL_LAYERS = ("Conv", "Dense")


@dataclasses.dataclass
class LayerMemory:
  name: str
  kind: str
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  params: int
  bytes: dict[str, dict[str, float]]  # method -> category -> bytes

  def total(self, method: str) -> float:
    return sum(self.bytes[method].values())


def _elements(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


def _layer_bits(kind: str, first_layer: bool, inputs: int, outputs: int, channels: int,
                params: int, bits: dict, moments: int, method: str) -> dict[str, float]:
  """Bits one layer keeps in a training step, by category.

  weights      = params * bits(weight)           weight_grads = params * bits(weight_grad)
  optimizer    = moments * params * bits(moment) (Adam: 2; factored_adam, Bop: 1)
  bn_state     = 2 * channels * 32               (running mean and scale)
  activations  = what the backward pass keeps:
    binary dense/conv: its input * bits(kept), 0 for the first layer (the batch itself)
    batch norm: its output * bits(kept) (x_hat, or sign(x_hat)) + 2 per-channel stats
    sign, max pools: its input * bits(kept) (the input, or 1 bit per input element)
    classifier head: dense input * bits(kept) + batch-norm output (standard: x_hat and
    the softmax, 2 * 32 bits; proposed: nothing, logits are recomputed)
    real conv/dense (ResNet stems, shortcuts, heads): its input * 32 in both methods
  """
  out = dict.fromkeys(CATEGORIES, 0.0)
  out["weights"] = params * bits["weight"]
  out["weight_grads"] = params * bits["weight_grad"]
  out["optimizer"] = moments * params * bits["moment"]
  stat_bits = 16 if method == "proposed" else 32
  if kind in ("BinaryDense", "BinaryConv"):
    out["activations"] = 0 if first_layer else inputs * bits["kept"]
  elif kind == "BinaryClassifier":
    out["activations"] = (0 if first_layer else inputs * bits["kept"])
    out["activations"] += 0 if method == "proposed" else 2 * outputs * 32
    out["bn_state"] = 2 * channels * 32
  elif kind == "BatchNorm":
    out["activations"] = outputs * bits["kept"] + 2 * channels * stat_bits
    out["bn_state"] = 2 * channels * 32
  elif kind in ("Sign", "MaxPool", "StemPool"):
    out["activations"] = inputs * bits["kept"]
  elif kind in _REAL_LAYERS:
    out["activations"] = 0 if first_layer else inputs * 32
  return out


def modelled(model, input_shape: tuple[int, ...], optimizer: str = "adam",
             grad_buffer_bits: dict[str, int] | None = None) -> list[LayerMemory]:
  """The per-layer modelled training memory of ``model`` for a batch of
  ``input_shape`` (batch first), for both methods. The same model definition is
  used for both: only the bit widths differ.

  grad_buffers (the two largest activation gradients alive during the backward
  pass, METHOD.md) are charged to the layers whose outputs they are: bits per
  element 32 (standard), 16 (proposed; 5 with the power-of-two dY quantizer, pass
  grad_buffer_bits={"proposed": 5}).
  """
  import flax.linen as nn
  import jax.numpy as jnp

  records = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    kind = type(context.module).__name__
    if context.method_name == "__call__" and kind in (*_BINARY_LAYERS, "BatchNorm", "Sign",
                                                       "MaxPool", "StemPool", *_REAL_LAYERS):
      first = bool(getattr(context.module, "first_layer", False))
      params = context.module.variables.get("params", {})
      result = out[0] if isinstance(out, tuple) else out
      records.append((context.module.path, kind, first, tuple(args[0].shape),
                      tuple(result.shape), sum(int(np.prod(p.shape)) for p in
                                               jax.tree.leaves(params))))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))
  if records and records[0][1] in _REAL_LAYERS:  # a real stem sees the batch itself
    records[0] = (*records[0][:2], True, *records[0][3:])

  # Adam: 2 moments per weight. The proposed method's optimizer as configured:
  # factored_adam and Bop keep one (their per-tensor factors are negligible).
  moments = {"standard": 2, "proposed": 2 if optimizer == "adam" else 1}
  layers = []
  for path, kind, first, in_shape, out_shape, params in records:
    per_method = {}
    for method, bits in _BITS.items():
      b = _layer_bits(kind, first, _elements(in_shape), _elements(out_shape), out_shape[-1],
                      params, bits, moments[method], method)
      per_method[method] = {k: v / 8 for k, v in b.items()}
    layers.append(LayerMemory("/".join(path), kind, in_shape, out_shape, params, per_method))

  # the two largest activation gradients, charged where they occur
  bits = {m: _BITS[m]["grad_buffer"] for m in _BITS} | (grad_buffer_bits or {})
  for layer in sorted(layers, key=lambda l: -_elements(l.output_shape))[:2]:
    for method in _BITS:
      layer.bytes[method]["grad_buffers"] = _elements(layer.output_shape) * bits[method] / 8
  return layers


def totals(layers: list[LayerMemory], method: str) -> dict[str, float]:
  return {c: sum(l.bytes[method][c] for l in layers) for c in CATEGORIES}


def format_table(layers: list[LayerMemory]) -> str:
  """A per-layer table in the spirit of larq's model summary, with the training
  memory of each method."""
  rows = [("layer", "kind", "output", "params", "standard", "proposed", "ratio")]
  for l in layers:
    s, p = l.total("standard"), l.total("proposed")
    rows.append((l.name, l.kind, "x".join(map(str, l.output_shape[1:])) or "-", f"{l.params:,}",
                 _human(s), _human(p), f"{s / p:.2f}x" if p else "-"))
  s, p = (sum(totals(layers, m).values()) for m in ("standard", "proposed"))
  rows.append(("total", "", "", f"{sum(l.params for l in layers):,}", _human(s), _human(p),
               f"{s / p:.2f}x"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  line = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                             enumerate(zip(r, widths)))
  rule = "-" * len(line(rows[0]))
  body = [line(rows[0]), rule, *map(line, rows[1:-1]), rule, line(rows[-1])]
  cats = [f"{c:>13}: {_human(totals(layers, 'standard')[c]):>10} -> "
          f"{_human(totals(layers, 'proposed')[c]):>10}" for c in CATEGORIES]
  return "\n".join(body + ["", "by category (standard -> proposed):", *cats])


def _human(n: float) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.0f} B"


# --------------------------------------------------------------------------------------
# Measured: what XLA allocates for one compiled training step.
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes of one compiled training step (XLA's memory analysis). peak = arguments +
  outputs + temporaries - aliased (outputs written into donated arguments)."""
  arguments: int
  outputs: int
  temporaries: int
  aliased: int

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs + self.temporaries - self.aliased


def training_setup(config, batch_size: int | None = None):
  """(model, optimizer, abstract train state, abstract images, abstract labels) for
  config, without reading any data: shapes come from the dataset catalog."""
  import jax.numpy as jnp

  from bnn import models, optim, train
  from bnn.data import catalog

  spec = catalog.get_spec(config.dataset.name)
  batch_size = batch_size or config.batch_size
  model = models.create(config.model, spec.num_classes)
  tx = optim.make_optimizer(config, steps_per_epoch=1)
  example = jnp.zeros((1, *spec.image_shape), jnp.float32)
  state = jax.eval_shape(lambda: train.create_train_state(
      model, tx, example, config.seed, lambda p: optim.initial_params(config, p)))
  images = jax.ShapeDtypeStruct((batch_size, *spec.image_shape), jnp.uint8)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  return model, tx, state, images, labels


def measure_step(config, batch_size: int | None = None) -> StepMemory:
  """Compiles (does not run) the training step of config and returns its memory."""
  from bnn import train

  model, tx, state, images, labels = training_setup(config, batch_size)
  compiled = train.make_train_step(model, tx).lower(state, images, labels).compile()
  m = compiled.memory_analysis()
  return StepMemory(m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes,
                    m.alias_size_in_bytes)


def step_residuals(config, batch_size: int | None = None) -> list[Residual]:
  """The residuals the training loss of config keeps between forward and backward."""
  from bnn import train

  model, _, state, images, labels = training_setup(config, batch_size)

  def loss(params, x):
    return train.loss_fn(model, params, state.batch_stats, x, labels, state.rng)[0]

  x = jax.ShapeDtypeStruct(images.shape, np.float32)
  return saved_residuals(loss, state.params, x)
