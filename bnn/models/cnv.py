"""The paper's CNV (FINN's CNV topology) for CIFAR-10 and SVHN, 32x32x3 inputs:

    C64, C64, MP2, C128, C128, MP2, C256, C256, flatten, FC512, FC512, FC10

3x3 binary convolutions with VALID padding (32 -> 30 -> 28 -> 14 -> 12 -> 10 -> 5 -> 3
-> 1, so the flatten has 256 features). Every conv and FC is followed by batch norm
and sign; each max pool comes AFTER the sign, so it pools +-1 values. The last FC
-> BN -> softmax is the BinaryClassifier. All weights binary, no biases; only the
first layer's input is real (pixels scaled to [-1, 1]).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from bnn import layers


class CNV(nn.Module):
  num_classes: int = 10
  method: str = "proposed"
  activation: str = "ste_sign"
  grad_quantizer: str | None = None         # dY entering each binary conv/dense backward
  bn_grad_quantizer: str | None = None      # dY entering each batch-norm backward
  weight_grad_quantizer: str | None = None  # raw weight gradient (proposed: sign_scaled)
  # (features, max pool after this conv's sign) per conv; then the hidden FC widths.
  convs: Sequence[tuple[int, bool]] = ((64, False), (64, True), (128, False), (128, True),
                                       (256, False), (256, False))
  hidden: Sequence[int] = (512, 512)

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool):
    """x: (B, H, W, C) floats in [-1, 1]. Returns logits, or (logits, loss) given labels."""
    quant = dict(method=self.method, grad_quantizer=self.grad_quantizer,
                 weight_grad_quantizer=self.weight_grad_quantizer)
    h, first = x, True  # only the first binary layer sees a real input
    for features, pool in self.convs:
      h = layers.BinaryConv(features, (3, 3), padding="VALID", first_layer=first, **quant)(h)
      h = layers.BatchNorm(self.method, self.bn_grad_quantizer)(h, train=train)
      h = layers.Sign(self.method, self.activation)(h)
      if pool:
        h = layers.MaxPool(self.method)(h)
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
