"""The paper's MLP: 784 -> 256 -> 256 -> 256 -> 256 -> 10, each Dense -> BN -> sign,
the last Dense -> BN -> softmax. All weights binary; only the first layer's input is
real (pixels scaled to [-1, 1])."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from bnn import layers, ops


class MLP(nn.Module):
  hidden: Sequence[int] = (256, 256, 256, 256)
  num_classes: int = 10
  method: str = "proposed"
  activation: str = "ste_sign"
  grad_quantizer: str | None = None         # dY entering each binary dense backward
  bn_grad_quantizer: str | None = None      # dY entering each batch-norm backward
  weight_grad_quantizer: str | None = None  # raw weight gradient (proposed: sign_scaled)

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool):
    """x: (B, ...) uint8 pixels or floats in [-1, 1]. Returns logits, or (logits, loss)
    given labels. The first BinaryDense reads pixels as they are (bnn.ops.pixel_dense)."""
    h = x.reshape(x.shape[0], -1)
    if not self.hidden:
      h = ops.to_float(h)
    quant = dict(method=self.method, grad_quantizer=self.grad_quantizer,
                 weight_grad_quantizer=self.weight_grad_quantizer)
    for i, width in enumerate(self.hidden):
      h = layers.BinaryDense(width, first_layer=i == 0, **quant)(h)
      h = layers.BatchNorm(self.method, self.bn_grad_quantizer)(h, train=train)
      h = layers.Sign(self.method, self.activation)(h)
    return layers.BinaryClassifier(self.num_classes, first_layer=not self.hidden,
                                   bn_grad_quantizer=self.bn_grad_quantizer, **quant)(
                                       h, labels, train=train)
