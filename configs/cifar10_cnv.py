"""CNV (C64 C64 MP C128 C128 MP C256 C256 FC512 FC512 FC10, valid padding) on cifar10.

    python main.py --config configs/cifar10_cnv.py --workdir workdirs/cifar10_cnv

Published (proposed method, batch 100): 83.08% top-1; modelled memory saving 4.17x.
The paper trains up to 1000 epochs with the plateau schedule. Expected time:
measured on 2 CPU cores: ~3.9 s per step, about 30 minutes per epoch
(450 steps); a GPU is the practical choice (GPU time not measured yet).
Data: TFDS cifar10 in the array_record format: on a machine with internet,
`tfds build cifar10 --file_format=array_record`, then copy the data_dir (README, "Data").
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "cifar10"
  c.model.name = "cnv"
  c.num_epochs = 1000
  return common.variant(c, arg)
