"""BinaryNet (C128 C128 MP C256 C256 MP C512 C512 MP FC1024 FC1024 FC10, same padding) on svhn.

    python main.py --config configs/svhn_binarynet.py --workdir workdirs/svhn_binarynet

Published (proposed method, batch 100): 95.93% top-1; modelled memory saving 3.71x.
The paper trains up to 1000 epochs with the plateau schedule. Expected time:
measured on 2 CPU cores: ~32 s per step, about 53 hours per epoch
(~5980 steps); use a GPU (GPU time not measured yet).
Data: TFDS svhn_cropped in the array_record format: on a machine with internet,
`tfds build svhn_cropped --file_format=array_record`, then copy the data_dir (README, "Data").
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "svhn_cropped"
  c.dataset.validation_size = 6000
  c.model.name = "binarynet"
  c.num_epochs = 1000
  return common.variant(c, arg)
