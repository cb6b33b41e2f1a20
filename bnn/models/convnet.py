"""The shared shape of CNV and BinaryNet: binary 3x3 convs with batch norm, sign and
2x2 max pools, then binary FC layers, then the BinaryClassifier head. All weights
binary, no biases; only the first layer's input is real (pixels scaled to [-1, 1]).
The two models differ only in their widths, their padding and where the pool sits."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from bnn import layers, ops


class ConvNet(nn.Module):
  num_classes: int = 10
  method: str = "proposed"
  activation: str = "ste_sign"
  grad_quantizer: str | None = None         # dY entering each binary conv/dense backward
  bn_grad_quantizer: str | None = None      # dY entering each batch-norm backward
  weight_grad_quantizer: str | None = None  # raw weight gradient (proposed: sign_scaled)
  convs: Sequence[tuple[int, bool]] = ()    # (features, followed by a max pool) per conv
  hidden: Sequence[int] = ()                # widths of the binary FC layers
  padding: str = "VALID"
  pool_before_bn: bool = False              # conv -> MP -> BN -> sign, else conv -> BN -> sign -> MP

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool):
    """x: (B, H, W, C) uint8 pixels or floats in [-1, 1]. Returns logits, or (logits,
    loss) given labels."""
    quant = dict(method=self.method, grad_quantizer=self.grad_quantizer,
                 weight_grad_quantizer=self.weight_grad_quantizer)
    h, first = ops.to_float(x), True  # only the first binary layer sees a real input
    for features, pool in self.convs:
      h = layers.BinaryConv(features, (3, 3), padding=self.padding, first_layer=first,
                            **quant)(h)
      if pool and self.pool_before_bn:
        h = layers.MaxPool(self.method)(h)
      h = layers.BatchNorm(self.method, self.bn_grad_quantizer)(h, train=train)
      h = layers.Sign(self.method, self.activation)(h)
      if pool and not self.pool_before_bn:
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
