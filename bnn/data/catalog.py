"""What we know about each dataset: TFDS splits, shapes, defaults, and how to get it."""

from __future__ import annotations

import dataclasses

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Environment variables naming a directory of MNIST-format IDX files, per dataset.
IDX_DIR_ENV = {"mnist": "BNN_MNIST_DIR", "fashion_mnist": "BNN_FASHION_MNIST_DIR"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset, by its TFDS name.

    train_splits: the TFDS splits pooled into our "train" pool (our "validation"
        is carved out of this pool, see sources.py).
    test_split: the TFDS split used as our "test".
    image_shape: (H, W, C) of the batches; for datasets whose images vary in
        size (ImageNet) this is the crop size the pipeline resizes to.
    fixed_size: whether the stored images all have `image_shape` already.
    in_memory: decode the whole split once into a NumPy array (cached on
        disk) instead of decoding records on the fly.
    validation_size: default number of training examples held out as validation.
    augment: default augmentation for training (see augment.py).
    how_to_get: printed when the dataset is missing.
    """

    name: str
    train_splits: tuple[str, ...]
    test_split: str
    image_shape: tuple[int, int, int]
    num_classes: int
    validation_size: int
    augment: str
    fixed_size: bool = True
    in_memory: bool = True
    how_to_get: str = ""


def _tfds_build_hint(name: str, extra: str = "") -> str:
    return (
        f"On a machine with internet access and TensorFlow installed, run\n"
        f"    tfds build {name} --file_format=array_record{extra}\n"
        f"then copy ~/tensorflow_datasets/{name} into the data_dir (or set TFDS_DATA_DIR).\n"
        f"The array_record file format is required: data sources need random access, so a\n"
        f"dataset built in the default tfrecord format must be rebuilt (or converted with\n"
        f"`tfds convert_format`, which needs TensorFlow)."
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="mnist",
            train_splits=("train",),
            test_split="test",
            image_shape=(28, 28, 1),
            num_classes=10,
            validation_size=5000,
            augment="none",
            how_to_get=(
                "Put the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; .gz optional) in a directory and\n"
                "pass it as idx_dir=... or set BNN_MNIST_DIR; they are then prepared once into the\n"
                "TFDS data_dir. Or: " + _tfds_build_hint("mnist")
            ),
        ),
        DatasetSpec(
            name="fashion_mnist",
            train_splits=("train",),
            test_split="test",
            image_shape=(28, 28, 1),
            num_classes=10,
            validation_size=5000,
            augment="none",
            how_to_get=(
                "Install the Debian package:  apt-get install dataset-fashion-mnist\n"
                f"(IDX files in {FASHION_MNIST_DEBIAN_DIR}; they are prepared once into the TFDS\n"
                "data_dir), or put the IDX files in a directory and pass idx_dir=... or set\n"
                "BNN_FASHION_MNIST_DIR. Or: " + _tfds_build_hint("fashion_mnist")
            ),
        ),
        DatasetSpec(
            name="cifar10",
            train_splits=("train",),
            test_split="test",
            image_shape=(32, 32, 3),
            num_classes=10,
            validation_size=5000,
            augment="shift(0.15)+flip",
            how_to_get=_tfds_build_hint("cifar10"),
        ),
        DatasetSpec(
            name="svhn_cropped",
            train_splits=("train", "extra"),
            test_split="test",
            image_shape=(32, 32, 3),
            num_classes=10,
            validation_size=6000,
            augment="shift(0.15)",
            how_to_get=_tfds_build_hint("svhn_cropped"),
        ),
        DatasetSpec(
            name="imagenet2012",
            train_splits=("train",),
            test_split="validation",
            image_shape=(224, 224, 3),
            num_classes=1000,
            validation_size=10000,
            augment="inception_crop+flip",
            fixed_size=False,
            in_memory=False,
            how_to_get=(
                "ImageNet needs a manual download (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar\n"
                "from image-net.org). "
                + _tfds_build_hint("imagenet2012", " --manual_dir=DIR_WITH_THE_TARS")
            ),
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
