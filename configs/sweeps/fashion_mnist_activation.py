"""Input (activation) quantizer of every sign layer, on the Fashion-MNIST MLP,
proposed method: ste_sign (hardtanh STE), approx_sign (Bi-Real's piecewise
polynomial), swish_sign (BNN+'s SignSwish, beta 5).

    python main.py --mode sweep --config configs/sweeps/fashion_mnist_activation.py \
        --workdir workdirs/sweeps/fashion_mnist_activation [--sweep_workers 2]

3 points x 20 epochs, about 3-5 minutes a point on 2 CPU cores (about 12 minutes);
`:quick` runs 3 steps a point. Expected: about 87% test accuracy (ste_sign,
docs/accuracy.md); the others not measured yet.
"""
from configs.sweeps import common

BASE = "configs/fashion_mnist_mlp.py"


def get_sweep():
  return common.product({"model.activation": ["ste_sign", "approx_sign", "swish_sign"]})


def get_config(arg=None):
  return common.sweep_config(BASE, get_sweep(), arg)
