"""Bi-Real-18 on ImageNet (ILSVRC 2012), batch 4096: approx_sign activations,
magnitude-aware weight signs, a real shortcut around every binary conv.

    python main.py --config configs/imagenet_birealnet18.py --workdir workdirs/birealnet18

Published: 54.45% top-1 with the proposed method; modelled memory saving 3.78x. Expected time: days
on a multi-GPU machine (not measured here; on 2 CPU cores only the compiled step's
memory can be studied, `--mode memory`).
On a cluster (README, "Training on a cluster"), one command per host, e.g. 4 hosts
of 8 GPUs (4096 = 32 x 128 per device), the workdir on a file system all hosts share:

    python main.py --config configs/imagenet_birealnet18.py --workdir /shared/birealnet18 \\
        --coordinator_address host0:1234 --num_processes 4 --process_id K   # K = 0..3

Add `--config.sharding.state=sharded` to split latent weights and Adam moments
over the devices (FSDP style) instead of replicating them.
Data: TFDS imagenet2012 in the array_record format: `tfds build imagenet2012
--file_format=array_record --manual_dir=DIR` with the ILSVRC tars in DIR (README, "Data").
"""
from configs import common


def get_config(arg=None):
  c = common.base()
  c.dataset.name = "imagenet2012"
  c.dataset.validation_size = 10000
  c.model.name = "birealnet18"
  c.model.activation = "approx_sign"
  c.batch_size = 4096
  c.eval_batch_size = 1024
  c.num_epochs = 120
  return common.variant(c, arg)
