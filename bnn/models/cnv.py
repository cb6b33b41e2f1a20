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

from bnn.models.convnet import ConvNet


class CNV(ConvNet):
  convs: Sequence[tuple[int, bool]] = ((64, False), (64, True), (128, False), (128, True),
                                       (256, False), (256, False))
  hidden: Sequence[int] = (512, 512)
  padding: str = "VALID"
  pool_before_bn: bool = False  # the pool comes after the sign: it pools +-1 values
