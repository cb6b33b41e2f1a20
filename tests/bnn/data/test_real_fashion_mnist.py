"""Fashion-MNIST from the Debian package dataset-fashion-mnist, through the default TFDS data_dir.

The first run prepares it into the TFDS data_dir (~/tensorflow_datasets unless
$TFDS_DATA_DIR) and decodes it into the cache (~/.cache/bnn/data unless
$BNN_DATA_CACHE): about 1.5 minutes on 2 slow cores, once. Later runs take seconds.
"""

import numpy as np
import pytest

from bnn import data
from bnn.data import builders, catalog, idx

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def splits():
    return {
        split: data.load_split("fashion_mnist", split, validation_size=size).arrays()
        for split, size in [("train", 0), ("test", 0), ("validation", 5000)]
    }


def test_sizes_shapes_and_labels(splits):
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int32
    # Fashion-MNIST is balanced: 6000 / 1000 of each of the 10 classes.
    assert np.bincount(train_y).tolist() == [6000] * 10 and np.bincount(test_y).tolist() == [1000] * 10


def test_same_examples_as_the_idx_files(splits):
    for split, (images, labels) in [("train", splits["train"]), ("test", splits["test"])]:
        raw_images, raw_labels = idx.read_idx_split(catalog.FASHION_MNIST_DEBIAN_DIR, split)
        ours = sorted(zip(map(bytes, images.reshape(len(images), -1)), labels.tolist()))
        theirs = sorted(zip(map(bytes, raw_images.reshape(len(raw_images), -1)), raw_labels.tolist()))
        assert ours == theirs


def test_default_pipeline_holds_out_validation():
    train = data.make_dataset("fashion_mnist", split="train", batch_size=100, seed=0)
    validation = data.make_dataset("fashion_mnist", split="validation", batch_size=100)
    test = data.make_dataset("fashion_mnist", split="test", batch_size=100)
    assert (train.num_examples, validation.num_examples, test.num_examples) == (55000, 5000, 10000)
    assert (train.steps_per_epoch, validation.steps_per_epoch, test.steps_per_epoch) == (550, 50, 100)
    batch = next(train.iterator())
    assert batch["image"].shape == (100, 28, 28, 1) and set(np.unique(batch["label"])) <= set(range(10))
