"""BinaryNet (Courbariaux et al. 2016) for CIFAR-10 and SVHN, 32x32x3 inputs:

    C128, C128+MP2, C256, C256+MP2, C512, C512+MP2, flatten, FC1024, FC1024, FC10

3x3 binary convolutions with SAME padding (32 -> 32 -> 16 -> 16 -> 8 -> 8 -> 4, so
the flatten has 4 * 4 * 512 = 8192 features). The max pool comes BEFORE the batch
norm: conv -> MP -> BN -> sign (it pools the real conv outputs). The last FC -> BN ->
softmax is the BinaryClassifier. All weights binary, no biases; only the first
layer's input is real (pixels scaled to [-1, 1]).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from bnn import layers


class BinaryNet(nn.Module):
  num_classes: int = 10
  method: str = "proposed"
  activation: str = "ste_sign"
  grad_quantizer: str | None = None         # dY entering each binary conv/dense backward
  bn_grad_quantizer: str | None = None      # dY entering each batch-norm backward
  weight_grad_quantizer: str | None = None  # raw weight gradient (proposed: sign_scaled)
  # (features, max pool between this conv and its batch norm) per conv; FC widths.
  convs: Sequence[tuple[int, bool]] = ((128, False), (128, True), (256, False), (256, True),
                                       (512, False), (512, True))
  hidden: Sequence[int] = (1024, 1024)

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool):
    """x: (B, H, W, C) floats in [-1, 1]. Returns logits, or (logits, loss) given labels."""
    quant = dict(method=self.method, grad_quantizer=self.grad_quantizer,
                 weight_grad_quantizer=self.weight_grad_quantizer)
    h, first = x, True  # only the first binary layer sees a real input
    for features, pool in self.convs:
      h = layers.BinaryConv(features, (3, 3), padding="SAME", first_layer=first, **quant)(h)
      if pool:
        h = layers.MaxPool(self.method)(h)
      h = layers.BatchNorm(self.method, self.bn_grad_quantizer)(h, train=train)
      h = layers.Sign(self.method, self.activation)(h)
      first = False
    h = h.reshape(h.shape[0], -1)
    for width in self.hidden:
      h = layers.BinaryDense(width, first_layer=first, **quant)(h)
      h = layers.BatchNorm(self.method, self.bn_grad_quantizer)(h, train=train)
      h = layers.Sign(self.method, self.activation)(h)
      first = False
    return layers.BinaryClassifier(self.num_classes, first_layer=first,
                                   bn_grad_quantizer=self.bn_grad_quantizer, **quant)(
                                       h, labels, train=train)
