import json

import numpy as np
import pytest

from bnn.data import builders, idx
from tests.bnn.data.tiny_idx import TINY_TEST, TINY_TRAIN, image_ids, tiny_arrays, write_tiny_idx


def test_prepared_idx_dataset_reads_back_through_tfds_data_source(tiny_data_dir):
    import tensorflow_datasets as tfds

    sources = tfds.data_source("mnist", data_dir=tiny_data_dir, download=False)
    assert {k: len(v) for k, v in sources.items()} == {"train": TINY_TRAIN, "test": TINY_TEST}
    for split, (n, offset) in {"train": (TINY_TRAIN, 0), "test": (TINY_TEST, 1000)}.items():
        records = sources[split].__getitems__(list(range(n)))
        images = np.stack([r["image"] for r in records])
        labels = np.array([r["label"] for r in records])
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        expected_images, expected_labels = tiny_arrays(n, offset)
        order = image_ids(images) - offset  # TFDS stores records in its own (key-hash) order.
        assert sorted(order) == list(range(n))
        np.testing.assert_array_equal(images[..., 0], expected_images[order])
        np.testing.assert_array_equal(labels, expected_labels[order])


def test_layout_is_the_official_one(tiny_data_dir):
    import tensorflow_datasets as tfds

    official = tfds.builder("mnist", data_dir=tiny_data_dir)
    version_dir = tiny_data_dir / "mnist" / str(official.version)
    info = json.loads((version_dir / "dataset_info.json").read_text())
    assert info["name"] == "mnist" and info["fileFormat"] == "array_record"
    assert sorted(p.name for p in version_dir.glob("*.array_record*")) == [
        "mnist-test.array_record-00000-of-00001",
        "mnist-train.array_record-00000-of-00001",
    ]
    # Readable without the builder code, too.
    assert len(tfds.builder_from_directory(version_dir).as_data_source(split="test")) == TINY_TEST


def test_prepare_is_a_noop_when_prepared(tiny_data_dir, tiny_idx_dir):
    files = sorted(tiny_data_dir.rglob("*.array_record*"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    builders.prepare_idx_dataset("mnist", tiny_idx_dir, tiny_data_dir)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_fashion_mnist_keeps_official_class_names(tmp_path):
    (tmp_path / "src").mkdir()
    write_tiny_idx(tmp_path / "src", gz=False)
    builder = builders.prepare_idx_dataset("fashion_mnist", tmp_path / "src", tmp_path / "tfds")
    assert builder.info.features["label"].names[:2] == ["T-shirt/top", "Trouser"]
    assert builder.info.splits["train"].num_examples == TINY_TRAIN


def test_wrong_image_size_is_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for prefix in ("train", "t10k"):
        idx.write_idx(src / f"{prefix}-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
        idx.write_idx(src / f"{prefix}-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(Exception, match=r"\(32, 32\), mnist expects \(28, 28\)"):
        builders.prepare_idx_dataset("mnist", src, tmp_path / "tfds")


def test_unknown_idx_dataset():
    with pytest.raises(ValueError, match="no IDX builder for 'cifar10'"):
        builders.local_idx_builder("cifar10", "/nonexistent")
