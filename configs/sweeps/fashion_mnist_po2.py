"""Power-of-two dY quantizer (the paper's first version): exponent bits x bias, on
the Fashion-MNIST MLP, proposed method. po2 replaces the identity at each binary
dense layer's dY; the batch-norm dY is left in float32 (as the `:po2` variant).

    python main.py --mode sweep --config configs/sweeps/fashion_mnist_po2.py \
        --workdir workdirs/sweeps/fashion_mnist_po2 [--sweep_workers 2]

8 points x 20 epochs, about 3-5 minutes a point on 2 CPU cores (about 30 minutes);
`:quick` runs 3 steps a point. Measured: docs/RESULTS.md (about 84-87% test accuracy;
bits >= 4 close to the float16 default).
"""
from configs.sweeps import common

BASE = "configs/fashion_mnist_mlp.py"


def get_sweep():
  return common.product(
      {"model.grad_quantizer": common.specs("po2", bits=[3, 4, 5, 6], bias=[6, 8])},
      {"model.bn_grad_quantizer": ["identity"]})


def get_config(arg=None):
  return common.sweep_config(BASE, get_sweep(), arg)
