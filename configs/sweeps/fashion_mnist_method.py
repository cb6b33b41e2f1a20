"""The two training methods, standard (float32 autodiff, L2 batch norm, float32 Adam)
and proposed (bit-packed residuals, L1 batch norm, float16 dX, 16-bit factored_adam
state), on the Fashion-MNIST MLP, each with its own default gradient quantizers and
optimizer.

    python main.py --mode sweep --config configs/sweeps/fashion_mnist_method.py \
        --workdir workdirs/sweeps/fashion_mnist_method [--sweep_workers 2]

2 points x 20 epochs, about 3-5 minutes a point on 2 CPU cores (about 8 minutes);
`:quick` runs 3 steps a point (the end-to-end sweep test uses it). Expected: 87.0-87.5%
test accuracy for both (docs/accuracy.md).
"""
from configs.sweeps import common

BASE = "configs/fashion_mnist_mlp.py"


def get_sweep():
  return common.product({"model.method": ["standard", "proposed"]})


def get_config(arg=None):
  return common.sweep_config(BASE, get_sweep(), arg)
