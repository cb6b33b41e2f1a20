"""The paper's MNIST MLP (784-256-256-256-256-10), batch 100, Adam 1e-3.

    python main.py --config configs/mnist_mlp.py --workdir workdirs/mnist_mlp

Published (proposed method): 96.90% top-1; modelled memory saving 2.78x.
Data: TFDS mnist, or MNIST IDX files (see README, "Data"). About 3 minutes for
20 epochs on 2 CPU cores (the paper trains up to 1000 epochs: --config.num_epochs=1000).
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "mnist"
  c.model.name = "mlp"
  return common.variant(c, arg)
