"""Gradient format of dX between layers, on the Fashion-MNIST MLP, proposed method:
float32 (no rounding), float16 and bfloat16 (rounded on entry to each batch-norm
backward, the final paper's place), and po2 (4 exponent bits, bias 8, at each binary
dense layer's dY: the first version's place).

    python main.py --mode sweep --config configs/sweeps/fashion_mnist_grad_format.py \
        --workdir workdirs/sweeps/fashion_mnist_grad_format [--sweep_workers 2]

4 points x 20 epochs, about 3-5 minutes a point on 2 CPU cores (about 15 minutes);
`:quick` runs 3 steps a point. Measured: docs/RESULTS.md (about 87% test accuracy
for every format).
"""
from configs.sweeps import common

BASE = "configs/fashion_mnist_mlp.py"


def get_sweep():
  return common.zip({
      "name": ["float32", "float16", "bfloat16", "po2"],
      "model.grad_quantizer": ["identity", "identity", "identity", "po2(bits=4, bias=8)"],
      "model.bn_grad_quantizer": ["identity", "float16", "bfloat16", "identity"],
  })


def get_config(arg=None):
  return common.sweep_config(BASE, get_sweep(), arg)
