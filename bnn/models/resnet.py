"""ResNet-18-shaped binary networks for ImageNet: ResNetE-18 and Bi-Real-18.

Both have one binary 3x3 convolution per residual block and a real shortcut around
every one of them (Bethge et al. 2019, "Back to Simplicity"; Liu et al. 2018,
"Bi-Real Net"):

    stem    real 7x7/2 conv 64 (no bias) -> BN [-> ReLU] -> 3x3/2 max pool (SAME)
    stages  widths 64, 128, 256, 512; 4 blocks each (16 blocks)
    block   out = BN(binary_conv3x3(sign(x))) + shortcut(x)
            the first block of stages 2-4 has stride 2 and the downsampling shortcut
            AvgPool 2x2/2 -> real 1x1 conv (no bias) -> BN; every other shortcut is x
    head    [ReLU ->] global average pool -> real Dense(num_classes) (with bias)

ResNetE-18: ste_sign activations, sign(W) weights, both ReLUs (as METHOD.md).
Bi-Real-18: approx_sign activations, magnitude-aware weights (alpha * sign(W),
alpha = mean |W| per output channel) and no ReLU anywhere, as in Bi-Real Net and
larq-zoo's BiRealNet (``relu`` switches the two ReLUs).

The binary convolutions are never the first layer (their input is sign(x)); the
stem conv, the shortcut convs and the classifier are real layers differentiated by
autodiff in both methods. The stem's [ReLU ->] max pool is layers.StemPool: for
"proposed" it keeps a 4-bit argmax per output instead of its float input. Batch norm
is the project's beta-only norm (layers.BatchNorm: L1 with the sign-bit backward for
"proposed", L2 for "standard"). Given labels, returns (logits, mean softmax
cross-entropy).

Works at any input size for which every stage keeps at least one pixel (224: 112
-> 56 -> 56, 28, 14, 7; 32: 16 -> 8 -> 8, 4, 2, 1).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bnn import layers, ops


class ResidualBlock(nn.Module):
  """sign -> binary 3x3 conv (stride ``strides``) -> BN, plus the shortcut."""

  features: int
  strides: int = 1
  method: str = "proposed"
  activation: str = "ste_sign"
  weight_quantizer: str = "ste_sign"
  grad_quantizer: str | None = None
  bn_grad_quantizer: str | None = None
  weight_grad_quantizer: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.strides != 1:
        s = (self.strides, self.strides)
        shortcut = nn.avg_pool(shortcut, s, strides=s, padding="SAME", count_include_pad=False)
      shortcut = nn.Conv(self.features, (1, 1), use_bias=False,
                         kernel_init=nn.initializers.glorot_normal(),
                         name="shortcut_conv")(shortcut)
      shortcut = layers.BatchNorm(self.method, self.bn_grad_quantizer,
                                  name="shortcut_bn")(shortcut, train=train)
    h = layers.Sign(self.method, self.activation, name="sign")(x)
    h = layers.BinaryConv(self.features, (3, 3), strides=self.strides, padding="SAME",
                          method=self.method, grad_quantizer=self.grad_quantizer,
                          weight_grad_quantizer=self.weight_grad_quantizer,
                          weight_quantizer=self.weight_quantizer, name="binary_conv")(h)
    h = layers.BatchNorm(self.method, self.bn_grad_quantizer, name="bn")(h, train=train)
    return h + shortcut


class ResNetE18(nn.Module):
  """ResNetE-18 (module docstring)."""

  num_classes: int = 1000
  method: str = "proposed"
  activation: str = "ste_sign"
  grad_quantizer: str | None = None         # dY entering each binary conv backward
  bn_grad_quantizer: str | None = None      # dY entering each batch-norm backward
  weight_grad_quantizer: str | None = None  # raw weight gradient (proposed: sign_scaled)
  weight_quantizer: str = "ste_sign"
  relu: bool = True                         # ReLU after the stem BN and before the pool
  stem_features: int = 64
  stages: Sequence[tuple[int, int]] = ((64, 4), (128, 4), (256, 4), (512, 4))  # (width, blocks)

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool):
    """x: (B, H, W, 3) uint8 pixels or floats in [-1, 1]. Returns logits, or (logits,
    loss) given labels."""
    h = nn.Conv(self.stem_features, (7, 7), strides=(2, 2), padding="SAME", use_bias=False,
                kernel_init=nn.initializers.he_normal(), name="stem_conv")(ops.to_float(x))
    h = layers.BatchNorm(self.method, self.bn_grad_quantizer, name="stem_bn")(h, train=train)
    h = layers.StemPool(self.method, self.relu, name="stem_pool")(h)
    for stage, (features, blocks) in enumerate(self.stages):
      for block in range(blocks):
        h = ResidualBlock(features, strides=2 if stage > 0 and block == 0 else 1,
                          method=self.method, activation=self.activation,
                          weight_quantizer=self.weight_quantizer,
                          grad_quantizer=self.grad_quantizer,
                          bn_grad_quantizer=self.bn_grad_quantizer,
                          weight_grad_quantizer=self.weight_grad_quantizer,
                          name=f"stage{stage + 1}_block{block + 1}")(h, train=train)
    if self.relu:
      h = nn.relu(h)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_normal(),
                      name="classifier")(h)
    if labels is None:
      return logits
    return logits, layers.cross_entropy(logits, labels)


class BiRealNet18(ResNetE18):
  """Bi-Real-18: approx_sign activations, magnitude-aware weight sign, no ReLU."""

  activation: str = "approx_sign"
  weight_quantizer: str = "magnitude_aware_sign"
  relu: bool = False
