"""The layers of pi_backend's models: forward (training and evaluation) and the proposed
method's backward, over the C kernels (pi_backend.kernels).

Each layer follows its JAX counterpart in bnn/ops (method="proposed") equation for
equation, and keeps for the backward only what that op keeps:

  dense / conv   its +-1 input bit-packed (the first layer: the input batch itself)
  batch_norm     packed sign(x_hat), per channel float16 scale and mean|x_hat|
  sign           the packed STE mask 1{|x| <= clip}
  max_pool       a 1-bit argmax mask per input
Weights are used as sign(W), from packed bits recomputed after each update.

Backward of a dense / conv layer (METHOD.md), dy' = grad_quantizer(dy):
  dx = dy' . sign(W)^T (transposed conv) with the signs from before the update;
  dW = weight_grad_quantizer(sign(x)^T . dy') (default sign(.)/sqrt(N_weights)), zeroed
  where |W| > 1, rounded to float16, then one Adam step (float16 storage) at once, or,
  for factored_adam, once the kernel's whole gradient is there (its statistics average
  over it; pi_backend/optimizers.py).
The float x sign products of dense layers go through pi_backend/fgemm.py (the C kernels,
or NumPy's BLAS with float_gemm="numpy"); everything else through pi_backend.kernels.
Each parameter's update only needs its own gradient, so updating during the backward
gives the same result as JAX's update after the whole backward, and only one layer's
weight gradient is alive at a time.
"""
from __future__ import annotations

import numpy as np

from pi_backend import kernels as K
from pi_backend import fgemm, optimizers, quant, signs

F16, F32 = np.float16, np.float32


class Param:
  """A trainable tensor in float16 with its optimizer state (None when not trainable):
  Adam's m and v, or factored_adam's m and row and column statistics (v None)."""

  def __init__(self, name: str, value: np.ndarray, m=None, v=None, vrow=None, vcol=None):
    self.name, self.value, self.m, self.v = name, value, m, v
    self.vrow, self.vcol = vrow, vcol

  def arrays(self):
    return [a for a in (self.value, self.m, self.v, self.vrow, self.vcol) if a is not None]


class Optimizer:
  """One step of the bundle's optimizer: "adam" (kernels.adam_f16, float16 storage) or
  "factored_adam" (pi_backend/optimizers.py); count is the update number of this step
  (>= 1); rng feeds stochastic gradient quantizers."""

  def __init__(self, lr, b1, b2, eps, count, rng, name="adam"):
    self.lr, self.b1, self.b2, self.eps, self.count, self.rng = lr, b1, b2, eps, count, rng
    self.name = name

  @property
  def whole_tensor(self) -> bool:
    """Whether an update needs the whole gradient of a tensor (the factored statistics
    average over it), not a block of its rows."""
    return self.name == "factored_adam"

  def update(self, p: Param, g: np.ndarray) -> None:
    if p.m is None:
      raise ValueError(f"{p.name} has no Adam state: this bundle was written for inference "
                       f"only (trainable=false)")
    if p.vrow is not None:
      optimizers.factored_adam(p.value, p.m, p.vrow, p.vcol, g, count=self.count,
                               lr=self.lr, b1=self.b1, b2=self.b2)
    elif p.m.dtype == F32:
      optimizers.adam_f32(p.value, p.m, p.v, g, count=self.count, lr=self.lr, b1=self.b1,
                          b2=self.b2, eps=self.eps)
    else:
      K.adam_f16(p.value, p.m, p.v, g, step=self.count, lr=self.lr, b1=self.b1, b2=self.b2,
                 eps=self.eps)


class Layer:
  """forward(x, train) -> y; backward(dy, opt) -> dx (None for the first binary layer);
  recompute(): the forward output again from what was kept (see Model.train_step)."""

  def __init__(self, spec):
    self.spec = spec

  def kept(self) -> list:
    """The arrays held between forward and backward."""
    return [a for a in getattr(self, "_kept", ()) if isinstance(a, np.ndarray)]

  def params(self) -> list:
    return []

  def buffers(self) -> list:
    """Arrays the layer holds across steps (weights, moments, statistics, packed signs)."""
    out = []
    for p in self.params():
      out += p.arrays()
    return out

  def release(self) -> None:
    self._kept = ()


class Flatten(Layer):
  def forward(self, x, train):
    if isinstance(x, Packed):
      if x.n % 64 == 0:  # whole words per position: the flat order keeps the words
        return Packed(x.bits.reshape(x.bits.shape[0], -1), int(np.prod(x.shape[1:])))
      x = x.floats()
    return x.reshape(x.shape[0], -1)

  def backward(self, dy, opt):
    return dy.reshape((dy.shape[0],) + self.spec.in_shape)


class Batch:
  """The input batch as given -- uint8 pixels (scaled here to x / 127.5 - 1) or floats
  already in [-1, 1] -- shaped (B, *in_shape) of the first binary layer. That layer
  keeps this (the batch itself, nothing new) and converts the rows or columns it needs
  to float32 when it needs them."""

  _SCALE = np.float32(1 / 127.5)

  def __init__(self, raw: np.ndarray):
    self.raw = raw

  def __len__(self):
    return self.raw.shape[0]

  def _f32(self, a):
    if a.dtype != np.uint8:
      return np.ascontiguousarray(a, F32)
    x = a.astype(F32)  # x * (1 / 127.5) - 1 in float32, as bnn/train.py to_float
    x *= self._SCALE
    x -= np.float32(1)
    return x

  def rows(self, i0=0, i1=None) -> np.ndarray:
    return self._f32(self.raw[i0:i1])

  def cols(self, c0, c1) -> np.ndarray:
    """Flat inputs (B, n): float32 columns [c0, c1)."""
    return self._f32(self.raw[:, c0:c1])


class Packed:
  """A +-1 activation as bits (evaluation mode): bits uint64 (..., words(n)), n the
  length of the last axis (channels). What sign produces and binary layers consume."""

  def __init__(self, bits: np.ndarray, n: int):
    self.bits, self.n = bits, n

  @property
  def shape(self):
    return self.bits.shape[:-1] + (self.n,)

  def floats(self) -> np.ndarray:
    return K.unpack(self.bits, self.n)


ROW_CHUNK = 32              # examples per first-layer forward chunk
GRAD_CHUNK_BYTES = 1 << 15  # float32 weight-gradient bytes per block (elementwise quantizers)


class Binary(Layer):
  """What dense and conv share: the kernel, its packed signs, the weight update."""

  def __init__(self, spec, bits: np.ndarray, kernel: Param | None, float_gemm: str = "c"):
    super().__init__(spec)
    self.kernel = kernel
    self.float_gemm = fgemm.check(float_gemm)  # dense layers: pi_backend/fgemm.py
    self.bits = bits  # pack(W) along the outputs, the bundle's layout
    self._derive()
    self._kept = ()

  def params(self):
    return [self.kernel] if self.kernel is not None else []

  def buffers(self):
    return super().buffers() + [a for a in (self.bits, self.bits_b) if a is not None]

  def kept(self):
    return [a.raw if isinstance(a, Batch) else a for a in self._kept]

  def _latent_or_signs(self) -> np.ndarray:
    """The latent weights, or +-1 float32 from the packed signs (inference bundles)."""
    if self.kernel is not None:
      return self.kernel.value
    return K.unpack(self.bits, self.spec.out_shape[-1])

  def _update_rows(self, r0: int, dw_raw: np.ndarray, opt: Optimizer, n_weights: int,
                   whole: np.ndarray | None):
    """Adam on rows [r0, r0 + len(dw_raw)) of the kernel (its first axis) from their raw
    gradient; n_weights: the size of the whole kernel (sign_scaled's N). whole: where
    the rows' gradient goes instead, when the optimizer needs the whole tensor's."""
    p = self.kernel
    r1 = r0 + dw_raw.shape[0]
    g = quant.weight_gradient(self.spec.weight_grad_quantizer, dw_raw, p.value[r0:r1],
                              opt.rng, n_weights=n_weights)
    if whole is not None:
      whole[r0:r1] = g
    else:
      opt.update(Param(p.name, p.value[r0:r1], p.m[r0:r1], p.v[r0:r1]), g)

  def _refresh(self):
    self.bits = signs.pack_signs(self.kernel.value)
    self._derive()

  def forward(self, x, train):
    return self._apply(self._input(x, train))

  def recompute(self):
    return self._apply(self._kept[0])

  def _input(self, x, train):
    """The first layer keeps the Batch as it is; the others pack their +-1 input (and
    keep it when training)."""
    if self.spec.first_layer:
      if not isinstance(x, Batch):
        raise TypeError("the first binary layer takes the input Batch")
      if train:
        self._kept = (x,)
      return x
    xp = x.bits if isinstance(x, Packed) else K.pack(np.ascontiguousarray(x, F32))
    if train:
      self._kept = (xp,)
    return xp


class Dense(Binary):
  def _derive(self):
    # the first layer multiplies by pack(W) directly; the others use XNOR with pack(W^T)
    self.bits_b = None if self.spec.first_layer else signs.dense_bits_t(
        self._latent_or_signs())

  def _apply(self, xin):
    n = self.spec.out_shape[0]
    if not self.spec.first_layer:
      return K.xnor_gemm(xin, self.bits_b, self.spec.in_shape[0], dtype=F32)
    return fgemm.batch_sign_w(xin, self.bits, n, self.float_gemm, ROW_CHUNK)

  def backward(self, dy, opt):
    (xin,) = self._kept
    dy = np.ascontiguousarray(quant.apply(self.spec.grad_quantizer, dy, opt.rng), F32)
    k, n = self.spec.in_shape[0], self.spec.out_shape[0]
    if self.kernel is None:
      raise ValueError(f"{self.spec.name}: no latent weights (an inference-only bundle)")
    # dW = sign(x)^T dy (real x in the first layer), a block of input rows at a time when
    # the weight quantizer is elementwise; each block goes through Adam at once.
    rows = k
    if quant.elementwise(self.spec.weight_grad_quantizer):
      rows = max(64, GRAD_CHUNK_BYTES // (4 * n) // 64 * 64)
    fused = self._fused_update(xin, dy, rows, opt)  # then no blocks are left below
    whole = None if fused or not opt.whole_tensor else np.empty((k, n), F16)
    dw_raw = None
    for r0 in range(0, 0 if fused else k, rows):
      r1 = min(k, r0 + rows)
      if self.spec.first_layer:
        dw_raw = fgemm.xt_dy(xin.cols(r0, r1), dy, self.float_gemm)
      else:  # r0 is a multiple of 64: whole packed words
        xp = np.ascontiguousarray(xin[:, r0 // 64:K.words(r1)])
        dw_raw = fgemm.sign_xt_dy(xp, r1 - r0, dy, self.float_gemm)
      self._update_rows(r0, dw_raw, opt, k * n, whole)
    del dw_raw
    if whole is not None:
      opt.update(self.kernel, whole)
      del whole
    self.release()
    old_bits = self.bits
    self._refresh()
    if self.spec.first_layer:
      return None
    # dx with the signs from before the update. When dx has dy's shape and dy is this
    # step's own buffer, dx overwrites dy a block of rows at a time (dy's rows are not
    # needed once their dx rows exist): one activation-sized buffer instead of two.
    in_place = dy.shape[1] == k and dy.flags.writeable and dy.flags.owndata
    return fgemm.dy_sign_wt(dy, old_bits, self.float_gemm, out=dy if in_place else None)


  def _fused_update(self, xin, dy, rows, opt) -> bool:
    """The whole weight update of the default path (C GEMMs, sign_scaled) by one kernel
    call, kernels.dense_weight_update (the same bits as the blocks of the loop in
    backward); False when it does not apply (then backward loops over the blocks)."""
    if (self.float_gemm != "c" or self.spec.weight_grad_quantizer.name != "sign_scaled"
        or opt.name != "adam"):
      return False
    if self.spec.first_layer:
      x = xin.raw
      x = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
      if x.dtype not in (K.U8, K.F32) or not x.flags.c_contiguous:
        return False
    else:
      x = xin
    p = self.kernel
    if p.m is None:
      raise ValueError(f"{p.name} has no Adam state: this bundle was written for inference "
                       f"only (trainable=false)")
    k, n = p.value.shape
    c = np.float16(np.float32(1.0 / ((k * n) ** 0.5)))
    K.dense_weight_update(x, dy, p.value, p.m, p.v, k=k, rows=rows, c=c, step=opt.count,
                          lr=opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    return True


class Conv(Binary):
  def _derive(self):
    self.bits_b = None if self.spec.first_layer else signs.conv_bits(self._latent_or_signs())

  def _apply(self, xin):
    s = self.spec
    if s.first_layer:
      oh, ow, c_out = s.out_shape
      y = np.empty((len(xin), oh, ow, c_out), F32)
      for i in range(0, len(xin), ROW_CHUNK):
        K.sign_conv2d(xin.rows(i, i + ROW_CHUNK), self.bits, c_out, s.strides, s.padding,
                      out=y[i:i + ROW_CHUNK])
      return y
    return K.binary_conv2d(xin, s.in_shape[2], self.bits_b, s.kernel, s.strides, s.padding)

  def backward(self, dy, opt):
    (xin,) = self._kept
    s = self.spec
    if self.kernel is None:
      raise ValueError(f"{s.name}: no latent weights (an inference-only bundle)")
    dy = np.ascontiguousarray(quant.apply(s.grad_quantizer, dy, opt.rng), F32)
    dx = None
    if not s.first_layer:
      dx = K.conv2d_backward_input(dy, self.bits, s.in_shape[:2], s.strides, s.padding)
      dw_raw = K.conv2d_backward_weight(xin, dy, s.kernel, s.strides, s.padding,
                                        c_in=s.in_shape[2])
    else:
      dw_raw = K.conv2d_backward_weight(xin.rows(), dy, s.kernel, s.strides, s.padding)
    self.release()
    w = self.kernel.value
    g = quant.weight_gradient(s.weight_grad_quantizer, dw_raw, w, opt.rng, n_weights=w.size)
    del dw_raw
    opt.update(self.kernel, g)
    self._refresh()
    return dx


class BatchNorm(Layer):
  """L1 batch norm with beta only; running statistics move with the momentum."""

  def __init__(self, spec, beta: Param, mean: np.ndarray, scale: np.ndarray):
    super().__init__(spec)
    self.beta, self.mean, self.scale = beta, mean, scale
    self._kept = ()

  def params(self):
    return [self.beta]

  def buffers(self):
    return super().buffers() + [self.mean, self.scale]

  def eval_arguments(self) -> tuple:
    """(beta, mean, scale) float32, as K.batch_norm_eval and K.batch_norm_eval_sign take."""
    return self.beta.value.astype(F32), self.mean, self.scale

  def forward(self, x, train):
    x = np.ascontiguousarray(x.floats() if isinstance(x, Packed) else x, F32)
    if not train:
      return K.batch_norm_eval(x, *self.eval_arguments())
    beta = self.beta.value.astype(F32)
    r = K.batch_norm_l1(x, beta, eps=self.spec.eps, running_mean=self.mean,
                        running_scale=self.scale, momentum=self.spec.momentum)
    self._kept = (r.sign_bits, r.scale16, r.m16)
    return r.y

  def thresholds(self, limit: int = 1 << 24) -> np.ndarray:
    """Per channel the smallest integer t in [-limit, limit] with sign(BN_eval(t)) = +1,
    i.e. float32 (t - mean) / scale + beta >= 0, computed exactly as batch_norm_eval
    does (limit: none, +limit: all -1). That test is monotone in t (scale > 0), so for
    integer inputs (the outputs of XNOR layers) sign(BN_eval(x)) = +1 iff x >= t."""
    mean, scale, beta = self.mean, self.scale, self.beta.value.astype(F32)

    def positive(t):
      return (t.astype(F32) - mean) / scale + beta >= 0

    lo = np.full(mean.shape, -limit, np.int64)  # answer in (lo, hi]: ...
    hi = np.full(mean.shape, limit, np.int64)
    lo_ok = positive(lo)
    while np.any(hi - lo > 1):
      mid = (lo + hi) // 2
      ok = positive(mid)
      hi = np.where(ok, mid, hi)
      lo = np.where(ok, lo, mid)
    return np.where(lo_ok, lo, hi).astype(F32)

  def recompute_from(self, x):
    """The training-mode output for x again (batch statistics; nothing updated)."""
    return K.batch_norm_l1(np.ascontiguousarray(x, F32), self.beta.value.astype(F32),
                           eps=self.spec.eps).y

  def backward(self, dy, opt):
    bits, scale16, m16 = self._kept
    q = self.spec.grad_quantizer
    dy = np.ascontiguousarray(dy, F32)
    # float16: the kernel rounds dy itself (dy_float16=True; beyond 65504: inf, as the
    # cast in JAX), a row at a time, vectorised where the CPU has F16C
    if q.name not in ("identity", "float16"):
      dy = np.ascontiguousarray(quant.apply(q, dy, opt.rng), F32)
    dx, dbeta = K.batch_norm_l1_backward(dy, bits, scale16, m16,
                                         dy_float16=q.name == "float16")
    self.release()
    opt.update(self.beta, dbeta.astype(F16))  # beta is float16: its gradient is rounded
    return dx


class Sign(Layer):
  def forward(self, x, train):
    x = np.ascontiguousarray(x, F32)
    if not train:  # the bits are the signs (bit = x >= 0)
      return Packed(K.pack(x), x.shape[-1])
    y, mask = K.sign_ste(x, clip=self.spec.clip)
    self._kept = (mask,)
    return y

  def backward(self, dy, opt):
    """dx = dy where the mask bit is set, else +0.0; in place in dy when it is a
    writable float32 array of its own (the layer above's dx), else in a new one."""
    (mask,) = self._kept
    self.release()
    if not (isinstance(dy, np.ndarray) and dy.dtype == F32 and dy.flags.c_contiguous
            and dy.flags.writeable and dy.flags.owndata):
      return K.sign_ste_backward(np.ascontiguousarray(dy, F32), mask)
    return K.sign_ste_backward(dy, mask, out=dy)


class MaxPool(Layer):
  def forward(self, x, train):
    if isinstance(x, Packed):  # evaluation: the max of +-1 values is the OR of their bits
      b, h, w, words = x.bits.shape
      win = x.bits[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, words)
      return Packed(np.bitwise_or.reduce(np.bitwise_or.reduce(win, axis=4), axis=2), x.n)
    y, mask = K.max_pool2x2(np.ascontiguousarray(x, F32))
    if train:
      self._kept = (mask,)
    return y

  def backward(self, dy, opt):
    (mask,) = self._kept
    self.release()
    in_shape = (dy.shape[0],) + self.spec.in_shape
    return K.max_pool2x2_backward(np.ascontiguousarray(dy, F32), mask, in_shape)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-example softmax cross-entropy with integer labels (as optax's)."""
  return -np.take_along_axis(log_softmax(logits), labels[:, None].astype(np.int64), 1)[:, 0]


def cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """d mean(cross_entropy) / d logits = (softmax - onehot) / batch."""
  g = np.exp(log_softmax(logits))
  g[np.arange(len(labels)), labels] -= 1
  return (g * np.float32(1.0 / len(labels))).astype(F32)


def build(spec, tensors: dict, trainable: bool, float_gemm: str = "c") -> Layer:
  """The runtime layer for one LayerSpec, over the bundle's tensors (shared, not copied);
  float_gemm: how dense layers multiply floats by signs (pi_backend/fgemm.py)."""

  def param(leaf):
    name = f"{spec.name}/{leaf}"
    if not trainable:
      return Param(name, tensors.get(f"params/{name}"))
    if f"fadam_m/{name}" in tensors:
      return Param(name, tensors[f"params/{name}"], tensors[f"fadam_m/{name}"],
                   vrow=tensors[f"fadam_vrow/{name}"], vcol=tensors[f"fadam_vcol/{name}"])
    return Param(name, tensors[f"params/{name}"], tensors[f"adam_m/{name}"],
                 tensors[f"adam_v/{name}"])

  if spec.kind == "flatten":
    return Flatten(spec)
  if spec.kind in ("dense", "conv"):
    cls = Dense if spec.kind == "dense" else Conv
    return cls(spec, tensors[f"bits/{spec.name}/kernel"], param("kernel") if trainable else None,
               float_gemm)
  if spec.kind == "batch_norm":
    return BatchNorm(spec, param("beta"), tensors[f"batch_stats/{spec.name}/mean"],
                     tensors[f"batch_stats/{spec.name}/scale"])
  if spec.kind == "sign":
    return Sign(spec)
  if spec.kind == "max_pool":
    return MaxPool(spec)
  raise ValueError(f"no runtime layer for kind {spec.kind!r}")
