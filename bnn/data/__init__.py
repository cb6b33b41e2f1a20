"""Training data, offline by default, without TensorFlow.

Datasets are read by TFDS name (mnist, fashion_mnist, cifar10, svhn_cropped,
imagenet2012) from a TFDS data_dir in the array_record format, through TFDS
data sources, and batched with grain. MNIST-format datasets missing from the
data_dir are prepared from local IDX files (fashion_mnist: the Debian package
`dataset-fashion-mnist`). See pipeline.py for the usage in a training loop.

Modules: idx (IDX files), builders (TF-free TFDS builders for IDX files),
catalog (per-dataset facts), sources (TFDS -> random-access examples, splits),
augment (shift / flip / crops), pipeline (seeded, resumable batches).
"""

from bnn.data.augment import Augment, parse_augment
from bnn.data.builders import prepare_idx_dataset
from bnn.data.catalog import DATASETS, DatasetSpec, get_spec
from bnn.data.idx import IdxFormatError, read_idx, write_idx
from bnn.data.pipeline import DataPipeline, make_dataset, to_float
from bnn.data.sources import DatasetNotFoundError, SplitTooSmall, load_split, open_builder

__all__ = [
    "Augment",
    "DATASETS",
    "DataPipeline",
    "DatasetNotFoundError",
    "DatasetSpec",
    "IdxFormatError",
    "get_spec",
    "load_split",
    "make_dataset",
    "open_builder",
    "parse_augment",
    "prepare_idx_dataset",
    "read_idx",
    "SplitTooSmall",
    "to_float",
    "write_idx",
]
