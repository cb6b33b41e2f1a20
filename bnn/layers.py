"""Flax Linen layers over the binary ops. The method and the quantizers are fields
of each layer (static configuration), never globals.

Randomness for stochastic gradient quantizers comes from the "gradient" RNG stream
(``model.apply(..., rngs={"gradient": key})``); layers ask for it only when one of
their quantizers is stochastic.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import quantizers
from bnn import ops

Spec = str | None
default_kernel_init = nn.initializers.glorot_uniform()


def _key(module: nn.Module, *specs: Spec) -> jax.Array | None:
  """The layer's key from the "gradient" stream when one of its gradient quantizers is
  stochastic. None without that stream: an evaluation, which takes no gradient, need
  not supply one (the ops then refuse only a gradient)."""
  stochastic = any(s is not None and quantizers.get(s, "gradient").stochastic for s in specs)
  return module.make_rng("gradient") if stochastic and module.has_rng("gradient") else None


class BinaryDense(nn.Module):
  """y = x . sign(W), no bias. ``first_layer``: x is the real input batch."""

  features: int
  method: str = "proposed"
  first_layer: bool = False
  grad_quantizer: Spec = None
  weight_grad_quantizer: Spec = None
  weight_quantizer: str = "ste_sign"  # or "magnitude_aware_sign" (Bi-Real Net)
  kernel_init: nn.initializers.Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    return ops.binary_dense(x, w, method=self.method, first_layer=self.first_layer,
                            grad_quantizer=self.grad_quantizer,
                            weight_grad_quantizer=self.weight_grad_quantizer,
                            weight_quantizer=self.weight_quantizer,
                            key=_key(self, self.grad_quantizer, self.weight_grad_quantizer))


class BinaryConv(nn.Module):
  """NHWC binary convolution with sign(W), no bias; any kernel, stride and padding."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence[tuple[int, int]] = "SAME"
  method: str = "proposed"
  first_layer: bool = False
  grad_quantizer: Spec = None
  weight_grad_quantizer: Spec = None
  weight_quantizer: str = "ste_sign"  # or "magnitude_aware_sign" (Bi-Real Net)
  kernel_init: nn.initializers.Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    w = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
    return ops.binary_conv(x, w, method=self.method, strides=self.strides, padding=self.padding,
                           first_layer=self.first_layer, grad_quantizer=self.grad_quantizer,
                           weight_grad_quantizer=self.weight_grad_quantizer,
                           weight_quantizer=self.weight_quantizer,
                           key=_key(self, self.grad_quantizer, self.weight_grad_quantizer))


class BatchNorm(nn.Module):
  """Beta-only batch norm: L1 with the sign-bit backward (proposed) or ordinary L2 by
  autodiff (standard), as METHOD.md prescribes for each method.

  Running statistics ("batch_stats": mean, scale) move with ``momentum`` (0.9: new =
  0.9 * old + 0.1 * batch), start at 0 and 1, and are used when ``train`` is false.
  For L2, scale is the standard deviation sqrt(var + eps).
  """

  method: str = "proposed"
  grad_quantizer: Spec = None
  momentum: float = 0.9
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, *, train: bool):
    beta, mean, scale = _bn_variables(self, x.shape[-1])
    if not train:
      return ops.batch_norm_eval(x, beta, mean.value, scale.value)
    y, batch_mean, batch_scale = ops.batch_norm(x, beta, method=self.method,
                                                grad_quantizer=self.grad_quantizer,
                                                eps=self.eps, key=_key(self, self.grad_quantizer))
    _update_running(self, mean, scale, batch_mean, batch_scale)
    return y


def _bn_variables(module: nn.Module, channels: int):
  beta = module.param("beta", nn.initializers.zeros, (channels,), jnp.float32)
  mean = module.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
  scale = module.variable("batch_stats", "scale", jnp.ones, (channels,), jnp.float32)
  return beta, mean, scale


def _update_running(module, mean, scale, batch_mean, batch_scale):
  if module.is_initializing():
    return
  m = module.momentum
  mean.value = m * mean.value + (1 - m) * batch_mean
  scale.value = m * scale.value + (1 - m) * batch_scale


class Sign(nn.Module):
  """Binary activation; the proposed method keeps its STE mask as 1 bit per element."""

  method: str = "proposed"
  quantizer: str = "ste_sign"

  def __call__(self, x):
    return ops.sign_activation(x, method=self.method, quantizer=self.quantizer)


class MaxPool(nn.Module):
  """2x2 max pool, stride 2; the proposed method keeps a 1-bit argmax mask."""

  method: str = "proposed"

  def __call__(self, x):
    return ops.max_pool(x, method=self.method)


class StemPool(nn.Module):
  """[ReLU ->] 3x3/2 SAME max pool of the ResNet stems; the proposed method keeps a
  4-bit argmax per output (bnn/ops/stem_pool.py)."""

  method: str = "proposed"
  relu: bool = True

  def __call__(self, x):
    return ops.stem_pool(x, method=self.method, relu=self.relu)


class BinaryClassifier(nn.Module):
  """Last block of the paper's models: BinaryDense(num_classes) -> BatchNorm -> softmax.

  ``__call__(h, train=...)`` returns logits. ``__call__(h, labels, train=True)``
  returns (logits, mean cross-entropy): in training the three steps run as one fused
  op (bnn.ops.head) so that the proposed method keeps no float per example.
  """

  num_classes: int
  method: str = "proposed"
  first_layer: bool = False
  grad_quantizer: Spec = None
  weight_grad_quantizer: Spec = None
  bn_grad_quantizer: Spec = None
  momentum: float = 0.9
  eps: float = 1e-5
  kernel_init: nn.initializers.Initializer = default_kernel_init

  @nn.compact
  def __call__(self, h, labels=None, *, train: bool):
    w = self.param("kernel", self.kernel_init, (h.shape[-1], self.num_classes), jnp.float32)
    beta, mean, scale = _bn_variables(self, self.num_classes)
    if train and labels is not None:
      key = _key(self, self.grad_quantizer, self.weight_grad_quantizer, self.bn_grad_quantizer)
      loss, logits, batch_mean, batch_scale = ops.classifier_loss(
          h, w, beta, labels, method=self.method, first_layer=self.first_layer,
          grad_quantizer=self.grad_quantizer, weight_grad_quantizer=self.weight_grad_quantizer,
          bn_grad_quantizer=self.bn_grad_quantizer, eps=self.eps, key=key)
      _update_running(self, mean, scale, batch_mean, batch_scale)
      return logits, loss
    z = ops.binary_dense(h, w, method=self.method, first_layer=self.first_layer,
                         grad_quantizer=self.grad_quantizer,
                         weight_grad_quantizer=self.weight_grad_quantizer,
                         key=_key(self, self.grad_quantizer, self.weight_grad_quantizer))
    if train:
      logits, batch_mean, batch_scale = ops.batch_norm(
          z, beta, method=self.method, grad_quantizer=self.bn_grad_quantizer, eps=self.eps,
          key=_key(self, self.bn_grad_quantizer))
      _update_running(self, mean, scale, batch_mean, batch_scale)
    else:
      logits = ops.batch_norm_eval(z, beta, mean.value, scale.value)
    if labels is None:
      return logits
    return logits, cross_entropy(logits, labels)


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
