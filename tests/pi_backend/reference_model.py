"""A plain NumPy (float64) reading of a bundle, written straight from METHOD.md, to check
pi_backend's Model without JAX: evaluation-mode logits of any graph, and one proposed
training step of a dense-only (MLP) graph with the default quantizers."""
from __future__ import annotations

import numpy as np

from pi_backend import kernels as K


def _sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def _weights(b, spec):
  shape = ((spec.in_shape[0], spec.out_shape[0]) if spec.kind == "dense" else
           (*spec.kernel, spec.in_shape[2], spec.out_shape[2]))
  return K.unpack(b.tensors[f"bits/{spec.name}/kernel"], shape[-1]).astype(np.float64).reshape(
      shape)


def _conv(x, w, spec):
  (pt, pb), (pl, pr) = spec.padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw = spec.kernel
  sh, sw = spec.strides
  oh, ow = spec.out_shape[:2]
  y = np.zeros((len(x), oh, ow, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      y += np.einsum("bhwc,cd->bhwd", x[:, i:i + sh * oh:sh, j:j + sw * ow:sw], w[i, j])
  return y


def _pool(x):
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _prepare(images, input_shape):
  x = images.reshape((len(images),) + tuple(input_shape))
  return x.astype(np.float64) / 127.5 - 1 if x.dtype == np.uint8 else x.astype(np.float64)


def logits(b, images):
  """Evaluation mode: running statistics."""
  x = _prepare(images, b.graph.input_shape)
  for spec in b.graph.layers[:-1]:
    t = b.tensors
    if spec.kind == "flatten":
      x = x.reshape(len(x), -1)
    elif spec.kind == "dense":
      x = x @ _weights(b, spec)
    elif spec.kind == "conv":
      x = _conv(x, _weights(b, spec), spec)
    elif spec.kind == "batch_norm":
      x = ((x - t[f"batch_stats/{spec.name}/mean"]) / t[f"batch_stats/{spec.name}/scale"]
           + t[f"params/{spec.name}/beta"].astype(np.float64))
    elif spec.kind == "sign":
      x = _sign(x)
    elif spec.kind == "max_pool":
      x = _pool(x)
  return x


def mlp_train_step(b, images, labels):
  """One proposed-method step of an MLP bundle (flatten, then dense -> batch_norm ->
  sign blocks, then dense -> batch_norm -> softmax) with the default quantizers
  (identity dY, float16 dY into batch norm, sign(dW)/sqrt(N) weights). Returns
  (loss, new tensors); the inputs are not changed."""
  t = {k: v.copy() for k, v in b.tensors.items()}
  o = b.graph.optimizer
  step = o.count + 1
  specs = [s for s in b.graph.layers if s.kind in ("dense", "batch_norm", "sign")]
  x = _prepare(images, b.graph.input_shape).reshape(len(images), -1)
  saved = []
  for spec in specs:
    if spec.kind == "dense":
      w = t[f"params/{spec.name}/kernel"].astype(np.float64)
      saved.append((spec, x))
      x = x @ _sign(w)
    elif spec.kind == "batch_norm":
      mean = x.mean(0)
      scale = np.abs(x - mean).mean(0) + spec.eps
      xhat = (x - mean) / scale
      saved.append((spec, (xhat, scale)))
      for name, stat in (("mean", mean), ("scale", scale)):
        r = t[f"batch_stats/{spec.name}/{name}"]
        t[f"batch_stats/{spec.name}/{name}"] = (spec.momentum * r + (1 - spec.momentum) * stat
                                                ).astype(np.float32)
      x = xhat + t[f"params/{spec.name}/beta"].astype(np.float64)
    else:
      saved.append((spec, x))
      x = _sign(x)
  p = np.exp(x - x.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  loss = -np.log(p[np.arange(len(labels)), labels]).mean()
  dy = p
  dy[np.arange(len(labels)), labels] -= 1
  dy /= len(labels)

  def adam(name, g):
    w, m, v = (t[f"{k}/{name}"].astype(np.float64) for k in ("params", "adam_m", "adam_v"))
    m = o.b1 * m + (1 - o.b1) * g
    v = o.b2 * v + (1 - o.b2) * g * g
    w = w - o.lr * (m / (1 - o.b1 ** step)) / (np.sqrt(v / (1 - o.b2 ** step)) + o.eps)
    for k, a in (("params", w), ("adam_m", m), ("adam_v", v)):
      t[f"{k}/{name}"] = a.astype(np.float16)

  for spec, s in reversed(saved):
    if spec.kind == "sign":
      dy = dy * (np.abs(s) <= spec.clip)
    elif spec.kind == "batch_norm":
      xhat, scale = s
      d = dy.astype(np.float16).astype(np.float64)
      sg = _sign(xhat)
      m16 = np.abs(xhat).mean(0).astype(np.float16).astype(np.float64)
      g = d / scale.astype(np.float16).astype(np.float64)
      dy = g - g.mean(0) - sg * ((g * sg).mean(0) * m16)
      adam(f"{spec.name}/beta", d.sum(0).astype(np.float16).astype(np.float64))
    else:
      name = f"{spec.name}/kernel"
      w = t[f"params/{name}"].astype(np.float64)
      dw = _sign(s.T @ dy) / np.sqrt(w.size)
      dw = np.where(np.abs(w) <= 1, dw, 0.0).astype(np.float16).astype(np.float64)
      dy = dy @ _sign(w).T
      adam(name, dw)
  for spec, _ in saved:
    if spec.kind == "dense":
      t[f"bits/{spec.name}/kernel"] = K.pack(t[f"params/{spec.name}/kernel"].astype(np.float32))
  return loss, t
