"""Synthetic bundles for the pi_backend tests (NumPy only, no JAX): random weights in
the layouts of pi_backend/bundle.py, for an MLP and a small CNV / BinaryNet-like net."""
from __future__ import annotations

import numpy as np

from pi_backend import signs
from pi_backend.graph import factored_shapes

QUANT = {"grad_quantizer": "identity()", "weight_grad_quantizer": "sign_scaled()"}
BN_QUANT = "float16()"


class _Builder:
  def __init__(self, input_shape, rng, quant=None, bn_quant=BN_QUANT):
    self.layers, self.shape, self.rng = [], list(input_shape), rng
    self.first = True
    self.quant = dict(QUANT, **(quant or {}))
    self.bn_quant = bn_quant

  def add(self, kind, out, **f):
    self.layers.append({"kind": kind, "in_shape": list(self.shape), "out_shape": list(out), **f})
    self.shape = list(out)

  def flatten(self):
    self.add("flatten", [int(np.prod(self.shape))])

  def binary(self, kind, name, out, **f):
    self.add(kind, out, name=name, first_layer=self.first, **self.quant, **f)
    self.first = False

  def bn(self, name):
    self.add("batch_norm", self.shape, name=name, eps=1e-5, momentum=0.9,
             grad_quantizer=self.bn_quant)

  def sign(self):
    self.add("sign", self.shape, quantizer="ste_sign(clip=1.0)")

  def pool(self):
    h, w, c = self.shape
    self.add("max_pool", [h // 2, w // 2, c], window=[2, 2], strides=[2, 2])


def _tensors(layers, rng, trainable, optimizer="adam"):
  t = {}
  for d in layers:
    if d["kind"] in ("dense", "conv"):
      if d["kind"] == "dense":
        shape = (d["in_shape"][0], d["out_shape"][0])
      else:
        shape = (*d["kernel"], d["in_shape"][2], d["out_shape"][2])
      w = (rng.uniform(-1, 1, shape) * np.sqrt(3.0 / shape[-2])).astype(np.float16)
      t[f"bits/{d['name']}/kernel"] = signs.pack_signs(w)
      if trainable:
        t[f"params/{d['name']}/kernel"] = w
    elif d["kind"] == "batch_norm":
      c = d["in_shape"][-1]
      t[f"params/{d['name']}/beta"] = (rng.standard_normal(c) * 0.1).astype(np.float16)
      t[f"batch_stats/{d['name']}/mean"] = rng.standard_normal(c).astype(np.float32)
      t[f"batch_stats/{d['name']}/scale"] = rng.uniform(0.5, 5, c).astype(np.float32)
  if trainable:
    for name in [n for n in t if n.startswith("params/")]:
      leaf = name[len("params/"):]
      if optimizer == "factored_adam" and leaf.endswith("/kernel"):
        rows, cols = factored_shapes(t[name].shape)
        t[f"fadam_m/{leaf}"] = np.zeros_like(t[name])
        t[f"fadam_vrow/{leaf}"] = np.zeros(rows, np.float32)
        t[f"fadam_vcol/{leaf}"] = np.zeros(cols, np.float32)
      else:
        moment = np.float32 if optimizer == "factored_adam" else np.float16
        t[f"adam_m/{leaf}"] = np.zeros(t[name].shape, moment)
        t[f"adam_v/{leaf}"] = np.zeros(t[name].shape, moment)
  return t


def _meta(b, input_shape, num_classes, trainable, model, optimizer="adam"):
  meta = {"method": "proposed", "model": model, "input_shape": list(input_shape),
          "num_classes": num_classes, "trainable": trainable, "train_step": 0,
          "layers": b.layers}
  if trainable:
    meta["optimizer"] = {"name": optimizer, "lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                         "count": 0}
  return meta


def mlp(input_shape=(8, 8, 1), hidden=(32, 32), num_classes=10, seed=0, trainable=True,
        quant=None, bn_quant=BN_QUANT, optimizer="adam"):
  """(metadata, tensors) of a random MLP; optimizer: "adam" or "factored_adam"."""
  rng = np.random.default_rng(seed)
  b = _Builder(input_shape, rng, quant, bn_quant)
  b.flatten()
  for i, width in enumerate(hidden):
    b.binary("dense", f"BinaryDense_{i}", [width])
    b.bn(f"BatchNorm_{i}")
    b.sign()
  b.binary("dense", "BinaryClassifier_0", [num_classes])
  b.bn("BinaryClassifier_0")
  b.add("softmax_cross_entropy", [num_classes])
  return (_meta(b, input_shape, num_classes, trainable, "mlp", optimizer),
          _tensors(b.layers, rng, trainable, optimizer))


def convnet(input_shape=(12, 12, 3), convs=((8, False), (8, True), (16, False)), hidden=(32,),
            num_classes=10, padding="VALID", pool_before_bn=False, seed=0, trainable=True,
            quant=None, bn_quant=BN_QUANT, optimizer="adam"):
  """(metadata, tensors) of a random CNV-like (VALID, pool after sign) or
  BinaryNet-like (SAME, pool before batch norm) net of 3x3 convs."""
  rng = np.random.default_rng(seed)
  b = _Builder(input_shape, rng, quant, bn_quant)
  for j, (features, pool) in enumerate(convs):
    h, w, _ = b.shape
    pads = [[0, 0], [0, 0]] if padding == "VALID" else [[1, 1], [1, 1]]
    out = [h + sum(pads[0]) - 2, w + sum(pads[1]) - 2, features]
    b.binary("conv", f"BinaryConv_{j}", out, kernel=[3, 3], strides=[1, 1], padding=pads)
    if pool and pool_before_bn:
      b.pool()
    b.bn(f"BatchNorm_{j}")
    b.sign()
    if pool and not pool_before_bn:
      b.pool()
  b.flatten()
  for k, width in enumerate(hidden):
    b.binary("dense", f"BinaryDense_{k}", [width])
    b.bn(f"BatchNorm_{len(convs) + k}")
    b.sign()
  b.binary("dense", "BinaryClassifier_0", [num_classes])
  b.bn("BinaryClassifier_0")
  b.add("softmax_cross_entropy", [num_classes])
  return (_meta(b, input_shape, num_classes, trainable, "convnet", optimizer),
          _tensors(b.layers, rng, trainable, optimizer))
