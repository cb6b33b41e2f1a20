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

from bnn.models.convnet import ConvNet


class BinaryNet(ConvNet):
  convs: Sequence[tuple[int, bool]] = ((128, False), (128, True), (256, False), (256, True),
                                       (512, False), (512, True))
  hidden: Sequence[int] = (1024, 1024)
  padding: str = "SAME"
  pool_before_bn: bool = True
