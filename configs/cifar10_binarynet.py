"""BinaryNet (C128 C128 MP C256 C256 MP C512 C512 MP FC1024 FC1024 FC10, same padding) on cifar10.

    python main.py --config configs/cifar10_binarynet.py --workdir workdirs/cifar10_binarynet

Published (proposed method, batch 100): 89.90% top-1; modelled memory saving 3.71x.
The paper trains up to 1000 epochs with the plateau schedule. Expected time:
measured on 2 CPU cores: ~32 s per step, about 4 hours per epoch
(450 steps); use a GPU (GPU time not measured yet).
Data: TFDS cifar10 in the array_record format: on a machine with internet,
`tfds build cifar10 --file_format=array_record`, then copy the data_dir (README, "Data").
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "cifar10"
  c.model.name = "binarynet"
  c.num_epochs = 1000
  return common.variant(c, arg)
