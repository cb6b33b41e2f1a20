"""The points of configs/sweeps/fashion_mnist_method.py on CIFAR-10 CNV: training
method: standard, proposed.

    python main.py --mode sweep --config configs/sweeps/cifar10_cnv_method.py \
        --workdir workdirs/sweeps/cifar10_cnv_method --config.base.num_epochs=100

Needs TFDS cifar10 (README, "Data"). 2 points; the base trains up to 1000 epochs at
about 30 minutes an epoch on 2 CPU cores, so set --config.base.num_epochs and use a
GPU (hours a point). Published (proposed method, 1000 epochs): 83.08% top-1.
"""
from configs.sweeps import common
from configs.sweeps.fashion_mnist_method import get_sweep  # noqa: F401  (the same points)

BASE = "configs/cifar10_cnv.py"


def get_config(arg=None):
  return common.sweep_config(BASE, get_sweep(), arg)
