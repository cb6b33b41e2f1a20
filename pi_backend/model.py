"""A bundle as a runnable model: inference, evaluation and training with the proposed
method (pi_backend/layers.py), and back to a bundle.

    model = Model.load("mlp.bnnpi")
    logits = model.logits(images)                 # uint8 pixels or floats in [-1, 1]
    metrics = model.train_step(images, labels)    # one Adam step, in place
    model.save("mlp.bnnpi")                       # atomic

One training step is the JAX step of bnn/train.py for method="proposed": the forward in
training mode (batch statistics, running statistics updated with the momentum), the
softmax cross-entropy averaged over the batch, the hand-written backward and one Adam
update of every parameter. As the JAX head (bnn/ops/head.py), the classifier keeps no
float per example: its logits are recomputed in the backward from the packed input of
the last binary layer.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from pi_backend import bundle as bundle_lib
from pi_backend import data
from pi_backend import kernels as K
from pi_backend import layers as L


def _without_ones(shape) -> tuple:
  return tuple(d for d in shape if d != 1)


class Model:
  """Layers over the tensors of a checked Bundle (shared, updated in place by training)."""

  def __init__(self, b: bundle_lib.Bundle, *, seed: int = 0, float_gemm: str = "c"):
    """seed: for shuffling and stochastic quantizers; float_gemm: "c" or "numpy", how
    dense layers multiply floats by signs (pi_backend/fgemm.py)."""
    self.metadata = copy.deepcopy(b.metadata)
    self.graph = b.graph
    # training updates the tensors in place: own writable, contiguous copies where needed
    self.tensors = {k: v if v.flags.writeable and v.flags.c_contiguous and v.flags.aligned
                    else np.array(v, order="C") for k, v in b.tensors.items()}
    self.seed = seed
    self.layers = [L.build(s, self.tensors, b.graph.trainable, float_gemm)
                   for s in b.graph.layers[:-1]]
    self._first = next(i for i, layer in enumerate(self.layers) if isinstance(layer, L.Binary))
    self.train_step_count = b.graph.train_step
    self._threshold_cache = {}
    self.adam_count = b.graph.optimizer.count if b.graph.optimizer else 0

  @classmethod
  def load(cls, path, **kw) -> "Model":
    return cls(bundle_lib.read(path), **kw)

  @property
  def num_classes(self) -> int:
    return self.graph.num_classes

  # ---- inputs ---------------------------------------------------------------------------

  def prepare(self, images: np.ndarray) -> L.Batch:
    """(B, ...) uint8 pixels (scaled to x / 127.5 - 1 where used) or floats in [-1, 1]
    -> the Batch of the first binary layer (no copy); ValueError when an example is
    neither of the bundle's input_shape (axes of size 1 aside: (28, 28) for [28, 28, 1])
    nor flat, or float images are not finite in [-1, 1]."""
    images = np.asarray(images)
    input_shape = tuple(self.graph.input_shape)
    size = math.prod(input_shape)
    if images.ndim < 1 or math.prod(images.shape[1:]) != size:
      raise ValueError(f"images have shape {images.shape}; expected (batch, ...) with "
                       f"{size} values per example (input_shape {list(input_shape)})")
    example = images.shape[1:]
    if (len(input_shape) > 1 and example != (size,)
        and _without_ones(example) != _without_ones(input_shape)):
      # the same number of values in another layout (NCHW for NHWC, a transposed image)
      # would be read in the wrong order without an error; a flat input_shape takes any
      raise ValueError(f"images have shape {images.shape}: examples of shape "
                       f"{list(example)}, which is neither the bundle's input_shape "
                       f"{list(input_shape)} (axes of size 1 aside) nor flat [{size}]; "
                       f"NCHW images need images.transpose(0, 2, 3, 1)")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
      raise TypeError(f"images have dtype {images.dtype}; expected uint8 pixels or floats "
                      f"in [-1, 1]")
    data.check_float_range(images)
    # only flatten layers come before the first binary layer (graph.py): a reshape
    first = self.layers[self._first].spec
    return L.Batch(images.reshape((images.shape[0],) + first.in_shape))

  def _labels(self, labels, batch: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels have shape {labels.shape} and dtype {labels.dtype}; "
                       f"expected integers of shape ({batch},)")
    if batch and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"labels range over [{labels.min()}, {labels.max()}]; expected "
                       f"classes in [0, {self.num_classes - 1}]")
    return labels.astype(np.int64)

  # ---- inference ------------------------------------------------------------------------

  def _forward(self, x: L.Batch, train: bool, fold: bool = True) -> np.ndarray:
    if train or not fold:
      for layer in self.layers[self._first:]:
        x = layer.forward(x, train)
      return x.floats() if isinstance(x, L.Packed) else x
    return self._evaluate(x)

  def _evaluate(self, x: L.Batch) -> np.ndarray:
    """Evaluation with batch norm and sign folded into one integer threshold per channel
    where the batch norm's input is integer (an XNOR layer's output, maybe max-pooled):
    bits = x >= t (BatchNorm.thresholds), the same bits as sign(BN_eval(x)); on float
    input (the first layer's output) both in one C pass, K.batch_norm_eval_sign. +-1
    activations stay packed (Sign, MaxPool, Flatten handle them)."""
    layers = self.layers[self._first:]
    integer, i = False, 0
    while i < len(layers):
      layer = layers[i]
      nxt = layers[i + 1] if i + 1 < len(layers) else None
      fused = self._fused_conv(layers, i, x)
      if fused is not None:  # binary conv [+ max pool] + batch norm + sign: one C call
        x, i = fused
        continue
      if isinstance(layer, L.BatchNorm) and isinstance(nxt, L.Sign) and isinstance(
          x, np.ndarray):
        x = np.ascontiguousarray(x, np.float32)
        if integer:
          x -= self._thresholds(layer)  # exact: integers below 2**24
          x = L.Packed(K.pack(x), x.shape[-1])
        else:  # the float first layer's output: batch norm and sign in one pass
          x = L.Packed(K.batch_norm_eval_sign(x, *layer.eval_arguments()), x.shape[-1])
        i += 2
        continue
      x = layer.forward(x, False)
      if isinstance(layer, L.Binary):
        integer = not layer.spec.first_layer
      elif not isinstance(layer, L.MaxPool):
        integer = False
      i += 1
    return x.floats() if isinstance(x, L.Packed) else x

  def _fused_conv(self, layers, i, x):
    """(Packed output, next index) when layers[i:] starts with a binary (not first) conv
    on packed input, then batch norm and sign, with a max pool before the batch norm or
    after the sign, or none: K.binary_conv2d_sign, the same bits as those layers in turn
    (integer conv outputs, a threshold increasing in them: pooling the bits, their OR,
    is thresholding the pooled maximum)."""
    conv = layers[i]
    if not (isinstance(conv, L.Conv) and not conv.spec.first_layer and isinstance(x, L.Packed)):
      return None
    j = i + 1
    pool = j < len(layers) and isinstance(layers[j], L.MaxPool)
    j += pool
    if not (j + 1 < len(layers) and isinstance(layers[j], L.BatchNorm)
            and isinstance(layers[j + 1], L.Sign)):
      return None
    end = j + 2
    if not pool and end < len(layers) and isinstance(layers[end], L.MaxPool):
      pool, end = True, end + 1
    key = ("int32", id(layers[j]))
    t = self._threshold_cache.get(key)
    if t is None:
      t = self._threshold_cache[key] = self._thresholds(layers[j]).astype(np.int32)
    s = conv.spec
    bits = K.binary_conv2d_sign(x.bits, s.in_shape[2], conv.bits_b, t, s.kernel, s.strides,
                                s.padding, pool=bool(pool))
    return L.Packed(bits, s.out_shape[-1]), end

  def _thresholds(self, layer) -> np.ndarray:
    key = id(layer)
    cached = self._threshold_cache.get(key)
    if cached is None:
      cached = self._threshold_cache[key] = layer.thresholds()
    return cached

  def logits(self, images: np.ndarray, batch_size: int = 256, *, fold: bool = True
             ) -> np.ndarray:
    """Evaluation-mode logits (running statistics), float32 (N, num_classes). fold=False
    runs batch norm and sign one after the other (the same logits, slower)."""
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}; expected >= 1")
    n = len(images)
    out = np.empty((n, self.num_classes), np.float32)
    for i in range(0, n, batch_size):
      out[i:i + batch_size] = self._forward(self.prepare(images[i:i + batch_size]), False,
                                            fold)
    return out

  def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> dict:
    """{"loss": mean cross-entropy, "accuracy", "count"} in evaluation mode."""
    labels = self._labels(labels, len(images))
    logits = self.logits(images, batch_size)
    if not len(labels):
      return {"loss": float("nan"), "accuracy": float("nan"), "count": 0}
    return {"loss": float(L.cross_entropy(logits, labels).mean()),
            "accuracy": float(np.mean(np.argmax(logits, 1) == labels)),
            "count": int(len(labels))}

  # ---- training -------------------------------------------------------------------------

  def _optimizer(self) -> L.Optimizer:
    o = self.graph.optimizer
    if o is None:
      raise ValueError("this bundle was written for inference only (trainable=false); "
                       "export a trainable bundle to train on the device")
    rng = np.random.default_rng([self.seed, self.train_step_count])
    return L.Optimizer(o.lr, o.b1, o.b2, o.eps, self.adam_count + 1, rng, o.name)

  def train_step(self, images: np.ndarray, labels: np.ndarray, *, probe=None) -> dict:
    """One training step on a batch, in place; returns {"loss", "accuracy"} of the batch
    (training-mode logits, before the update). probe(model), if given, is called between
    the forward and the backward (memory measurement)."""
    opt = self._optimizer()
    self._threshold_cache = {}
    x = self.prepare(images)
    labels = self._labels(labels, len(x))
    if len(x) < 1:
      raise ValueError("train_step needs a batch of at least one example")
    try:
      logits = self._forward(x, True)
      loss = float(L.cross_entropy(logits, labels).mean())
      accuracy = float(np.mean(np.argmax(logits, 1) == labels))
      del logits  # recomputed from the kept bits below, as the JAX head does
      if probe is not None:
        probe(self)
      dy = L.cross_entropy_grad(self._recompute_logits(), labels)
      for layer in reversed(self.layers[self._first:]):
        dy = layer.backward(dy, opt)
    finally:
      for layer in self.layers:
        layer.release()
    self.adam_count += 1
    self.train_step_count += 1
    self._threshold_cache = {}  # the statistics and betas have changed
    return {"loss": loss, "accuracy": accuracy}

  def _recompute_logits(self) -> np.ndarray:
    """The training-mode logits again, from the kept input of the last binary layer."""
    start = max(i for i, layer in enumerate(self.layers) if isinstance(layer, L.Binary))
    x = self.layers[start].recompute()
    for layer in self.layers[start + 1:]:
      if isinstance(layer, L.BatchNorm):
        x = layer.recompute_from(x)
      else:
        x = layer.forward(x, False)
    return x.floats() if isinstance(x, L.Packed) else x

  def train(self, images, labels, *, batch_size: int, epochs: int = 1,
            max_steps: int | None = None, shuffle: bool = True, progress=None) -> list:
    """Epochs of train_step over (images, labels), at most max_steps steps; the last
    partial batch of an epoch is dropped. Returns the per-step metrics;
    progress(step_in_run, total, metrics) is called after each step."""
    n = len(images)
    if not 1 <= batch_size <= n:
      raise ValueError(f"batch_size={batch_size}; expected 1 <= batch_size <= {n} examples")
    # every label and the images' shape and range before the first step, not in the
    # batch that holds a bad one (after the steps before it)
    labels = self._labels(labels, n)
    self.prepare(images)
    rng = np.random.default_rng([self.seed, self.train_step_count, 1])
    steps = n // batch_size
    total = steps * epochs if max_steps is None else min(steps * epochs, max_steps)
    history = []
    while len(history) < total:
      order = rng.permutation(n) if shuffle else np.arange(n)
      for i in range(min(steps, total - len(history))):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
        history.append(self.train_step(images[idx], labels[idx]))
        if progress is not None:
          progress(len(history), total, history[-1])
    return history

  def nonfinite_tensor(self) -> str | None:
    """The name of the first float tensor of the state holding a NaN or an infinity
    (training diverged), else None. A sum per tensor: no temporary of its size."""
    for name, a in self.tensors.items():
      if a.dtype.kind == "f" and not math.isfinite(float(a.sum(dtype=np.float64))):
        return name
    return None

  # ---- buffers and saving ------------------------------------------------------------------

  def state_arrays(self) -> list:
    """Every array the model holds across steps (weights, moments, statistics, signs)."""
    out = []
    for layer in self.layers:
      out += layer.buffers()
    return out

  def kept_arrays(self) -> list:
    """The arrays held between forward and backward (during a step)."""
    out = []
    for layer in self.layers:
      out += layer.kept()
    return out

  def to_bundle(self) -> tuple[dict, dict]:
    """(metadata, tensors) of the current state."""
    meta = copy.deepcopy(self.metadata)
    meta["train_step"] = self.train_step_count
    if meta.get("optimizer") is not None:
      meta["optimizer"]["count"] = self.adam_count
    tensors = dict(self.tensors)
    for layer in self.layers:
      if isinstance(layer, L.Binary):
        tensors[f"bits/{layer.spec.name}/kernel"] = layer.bits
    return meta, tensors

  def save(self, path) -> Path:
    """Writes the current state as a bundle (checked, atomic)."""
    return bundle_lib.write(path, *self.to_bundle())
