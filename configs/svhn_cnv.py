"""CNV (C64 C64 MP C128 C128 MP C256 C256 FC512 FC512 FC10, valid padding) on svhn.

    python main.py --config configs/svhn_cnv.py --workdir workdirs/svhn_cnv

Published (proposed method, batch 100): 94.28% top-1; modelled memory saving 4.17x.
The paper trains up to 1000 epochs with the plateau schedule. Expected time:
measured on 2 CPU cores: ~3.9 s per step, about 6.5 hours per epoch
(train+extra, ~5980 steps); use a GPU (GPU time not measured yet).
Data: TFDS svhn_cropped in the array_record format: on a machine with internet,
`tfds build svhn_cropped --file_format=array_record`, then copy the data_dir (README, "Data").
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "svhn_cropped"
  c.dataset.validation_size = 6000
  c.model.name = "cnv"
  c.num_epochs = 1000
  return common.variant(c, arg)
