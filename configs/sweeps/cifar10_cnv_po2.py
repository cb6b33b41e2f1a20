"""The points of configs/sweeps/fashion_mnist_po2.py on CIFAR-10 CNV: power-of-two dY
quantizer, exponent bits {3,4,5,6} x bias {6,8} (the paper reports bias 6 better for
CNV).

    python main.py --mode sweep --config configs/sweeps/cifar10_cnv_po2.py \
        --workdir workdirs/sweeps/cifar10_cnv_po2 --config.base.num_epochs=100

Needs TFDS cifar10 (README, "Data"). 8 points; the base trains up to 1000 epochs at
about 30 minutes an epoch on 2 CPU cores, so set --config.base.num_epochs and use a
GPU (hours a point). Published (proposed method, 1000 epochs): 83.08% top-1.
"""
from configs.sweeps import common
from configs.sweeps.fashion_mnist_po2 import get_sweep  # noqa: F401  (the same points)

BASE = "configs/cifar10_cnv.py"


def get_config(arg=None):
  return common.sweep_config(BASE, get_sweep(), arg)
