"""TF-free TFDS builders for MNIST-format (IDX) files on local disk.

TFDS's own `mnist` / `fashion_mnist` / `kmnist` builders download the IDX files
and read them with `tf.io.gfile`, and `tfds.features.Image` encodes NumPy images
to PNG with TensorFlow. Everything else in `GeneratorBasedBuilder.download_and_prepare`
works without TensorFlow (TFDS tests exactly that, with file_format=array_record).

So we subclass the official builder, keeping its name, version, features and
metadata, and replace only the two TF-dependent steps: the files come from a
local directory (read by bnn.data.idx), and images are handed to TFDS already
PNG-encoded (by Pillow). The result in the data_dir is laid out like
`tfds build fashion_mnist --file_format=array_record` would lay it out, with the
same example keys (so the same record order), and is read back with
`tfds.data_source("fashion_mnist", data_dir=...)`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from bnn.data import catalog, idx

# TFDS builders that read the four standard MNIST IDX files and nothing else.
# (EMNIST also derives from tfds' MNIST builder but has other files and layout.)
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image  # TFDS itself decodes with Pillow when OpenCV is absent.

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def local_idx_builder(name: str, source_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """A TFDS builder for dataset `name` (see IDX_DATASETS) that reads IDX files from `source_dir`.

    It is the official TFDS builder (same name, version, features) with a local,
    TensorFlow-free `_split_generators` / `_generate_examples`.
    """
    import tensorflow_datasets as tfds

    if name not in IDX_DATASETS:
        raise ValueError(f"no IDX builder for {name!r}; expected one of {IDX_DATASETS}")
    official = tfds.builder_cls(name)
    source_dir = Path(source_dir)

    class LocalIdxBuilder(official, skip_registration=True):
        __doc__ = f"{official.__name__} read from local IDX files in {source_dir}."

        def _split_generators(self, dl_manager):
            del dl_manager  # Nothing to download.
            return {split: self._generate_examples(split) for split in idx.IDX_SPLITS}

        def _generate_examples(self, split):  # pylint: disable=arguments-differ
            images, labels = idx.read_idx_split(source_dir, split)
            shape = tuple(self.info.features["image"].shape)
            if images.shape[1:] != shape[:2]:
                raise idx.IdxFormatError(
                    f"{source_dir}: {split} images are {images.shape[1:]}, {name} expects {shape[:2]}"
                )
            num_classes = self.info.features["label"].num_classes
            if len(labels) and labels.max() >= num_classes:
                raise idx.IdxFormatError(
                    f"{source_dir}: {split} label {labels.max()} out of range for {num_classes} classes"
                )
            # Keys are the example's index in the file, as in the official builder.
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": _png(image), "label": int(label)}  # 2-D: a grayscale PNG.

    LocalIdxBuilder.name = official.name
    LocalIdxBuilder.__name__ = LocalIdxBuilder.__qualname__ = f"LocalIdx{official.__name__}"
    return LocalIdxBuilder(data_dir=None if data_dir is None else os.fspath(data_dir))


def prepare_idx_dataset(name: str, source_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """Prepares dataset `name` from the IDX files in `source_dir` into the TFDS `data_dir`.

    Writes array_record files (no TensorFlow involved); a no-op if the dataset is
    already prepared there. Returns the builder (its `data_dir` is where it went).
    """
    builder = local_idx_builder(name, source_dir, data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare(file_format="array_record")
    return builder


def default_idx_dir(name: str) -> Path | None:
    """Where to look for the IDX files of `name`: $BNN_<NAME>_DIR, then the Debian package."""
    env = catalog.IDX_DIR_ENV.get(name)
    if env and os.environ.get(env):
        return Path(os.environ[env])
    if name == "fashion_mnist":
        return Path(catalog.FASHION_MNIST_DEBIAN_DIR)
    return None


def has_idx_files(directory: str | os.PathLike | None) -> bool:
    if directory is None or not Path(directory).is_dir():
        return False
    return all(
        idx.find_idx_file(directory, prefix, kind) is not None
        for prefix in idx.IDX_SPLITS.values()
        for kind in ("images", "labels")
    )
