"""The offline default: the paper's binary MLP (784-256-256-256-256-10) on
Fashion-MNIST from the Debian package dataset-fashion-mnist.

    python main.py --config configs/fashion_mnist_mlp.py --workdir workdirs/fmnist_mlp

Expected: 87.0-87.5% test accuracy after 20 epochs with either method (the proposed
method with its default 16-bit factored_adam state: 87.07% final, 87.44% at the best
validation checkpoint, seed 0; docs/accuracy.md); 1-3 minutes on 2 CPU cores, plus
about 1.5 minutes the first time, to prepare the dataset.
Variants: `:standard`, `:po2` (power-of-two dY), `:quick` (3 steps).
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "fashion_mnist"
  c.model.name = "mlp"
  return common.variant(c, arg)
