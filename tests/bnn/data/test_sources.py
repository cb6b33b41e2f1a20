import json
import os
import shutil

import numpy as np
import pytest

from bnn.data import sources
from tests.bnn.data.tiny_idx import TINY_TEST, TINY_TRAIN, image_ids


@pytest.fixture
def no_idx_env(monkeypatch, tmp_path):
    """IDX lookups find nothing: both env variables point at an empty directory."""
    empty = tmp_path / "no_idx_here"
    empty.mkdir()
    monkeypatch.setenv("BNN_MNIST_DIR", str(empty))
    monkeypatch.setenv("BNN_FASHION_MNIST_DIR", str(empty))


@pytest.mark.parametrize(
    "name, fix",
    [
        ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
        ("mnist", "BNN_MNIST_DIR"),
        ("cifar10", "tfds build cifar10 --file_format=array_record"),
        ("svhn_cropped", "tfds build svhn_cropped --file_format=array_record"),
        ("imagenet2012", "--manual_dir="),
    ],
)
def test_missing_dataset_error_names_the_fix(tmp_path, no_idx_env, name, fix):
    with pytest.raises(sources.DatasetNotFoundError) as info:
        sources.load_split(name, "train", data_dir=tmp_path / "empty_tfds")
    assert fix in str(info.value) and str(tmp_path / "empty_tfds") in str(info.value)


def test_idx_dir_without_files_is_an_error(tmp_path):
    with pytest.raises(sources.DatasetNotFoundError, match="no MNIST-format IDX files"):
        sources.open_builder("mnist", data_dir=tmp_path / "tfds", idx_dir=tmp_path)


def test_tfrecord_dataset_is_refused_with_the_fix(tmp_path, tiny_data_dir):
    copy = tmp_path / "tfds"
    shutil.copytree(tiny_data_dir, copy)
    [info_path] = copy.glob("mnist/*/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(sources.DatasetNotFoundError, match="need array_record(.|\n)*--file_format=array_record"):
        sources.load_split("mnist", "test", data_dir=copy)


def test_missing_mnist_is_prepared_from_idx_dir(tmp_path, tiny_idx_dir):
    view = sources.load_split("mnist", "test", data_dir=tmp_path / "tfds", idx_dir=tiny_idx_dir, cache_dir=None)
    assert len(view) == TINY_TEST and (tmp_path / "tfds" / "mnist").is_dir()


def test_a_data_dir_that_cannot_be_written_names_it_and_the_fix(tmp_path, tiny_idx_dir):
    """Preparing MNIST into a data_dir that cannot be made (here under a file): one
    DatasetNotFoundError naming the directory, not an OSError traceback from TFDS."""
    (tmp_path / "file").write_text("")
    data_dir = tmp_path / "file" / "tfds"
    with pytest.raises(sources.DatasetNotFoundError) as e:
        sources.load_split("mnist", "test", data_dir=data_dir, idx_dir=tiny_idx_dir, cache_dir=None)
    assert str(e.value).startswith(f"cannot prepare mnist from {tiny_idx_dir} into {data_dir}: ")
    assert "set $TFDS_DATA_DIR or config.dataset.data_dir to a directory" in str(e.value)


def test_missing_mnist_is_prepared_from_env_dir(tmp_path, tiny_idx_dir, monkeypatch):
    monkeypatch.setenv("BNN_MNIST_DIR", str(tiny_idx_dir))
    assert len(sources.load_split("mnist", "test", data_dir=tmp_path / "tfds", cache_dir=None)) == TINY_TEST


def test_split_indices_partition_the_pool():
    parts = sources.split_indices(1000, 150, validation_seed=3)
    train, validation = parts["train"], parts["validation"]
    assert len(validation) == 150 and len(train) == 850
    assert np.array_equal(np.sort(np.concatenate([train, validation])), np.arange(1000))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(validation) > 0)
    assert not np.array_equal(validation, sources.split_indices(1000, 150, validation_seed=4)["validation"])
    assert not np.array_equal(validation, np.arange(150))  # Not simply the first examples.
    assert len(sources.split_indices(1000, 0)["validation"]) == 0
    with pytest.raises(ValueError, match="validation_size=1000"):
        sources.split_indices(1000, 1000)


def test_train_validation_test_are_disjoint_and_complete(tiny_data_dir):
    kwargs = dict(data_dir=tiny_data_dir, validation_size=30, cache_dir=None)
    ids = {split: image_ids(sources.load_split("mnist", split, **kwargs).arrays()[0]) for split in sources.SPLITS}
    assert len(ids["train"]) == TINY_TRAIN - 30 and len(ids["validation"]) == 30 and len(ids["test"]) == TINY_TEST
    assert not set(ids["train"]) & set(ids["validation"])
    assert set(ids["train"]) | set(ids["validation"]) == set(range(TINY_TRAIN))
    assert set(ids["test"]) == set(range(1000, 1000 + TINY_TEST))


def test_unknown_names_are_rejected(tiny_data_dir):
    with pytest.raises(ValueError, match="unknown dataset 'cifar100'"):
        sources.load_split("cifar100", "train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        sources.load_split("mnist", "val", data_dir=tiny_data_dir)


def test_decoded_arrays_are_cached_and_reused(tmp_path, tiny_data_dir):
    tiny_data_dir = shutil.copytree(tiny_data_dir, tmp_path / "tfds")  # We touch its files below.
    cache = tmp_path / "cache"
    first = sources.load_split("mnist", "train", data_dir=tiny_data_dir, cache_dir=cache, validation_size=0)
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert files == ["train.images.npy", "train.json", "train.labels.npy"]
    second = sources.load_split("mnist", "train", data_dir=tiny_data_dir, cache_dir=cache, validation_size=0)
    assert isinstance(second.source.images, np.memmap)
    uncached = sources.load_split("mnist", "train", data_dir=tiny_data_dir, cache_dir=None, validation_size=0)
    for a, b in zip(first.arrays(), uncached.arrays()):
        np.testing.assert_array_equal(a, b)

    # A changed TFDS file (here: its mtime) invalidates the cache.
    [meta] = cache.rglob("train.json")
    before = meta.stat().st_mtime_ns
    [record_file] = tiny_data_dir.glob("mnist/*/mnist-train.array_record*")
    stat = record_file.stat()
    os.utime(record_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    sources.load_split("mnist", "train", data_dir=tiny_data_dir, cache_dir=cache, validation_size=0)
    assert json.loads(meta.read_text())["files"][0][2] == stat.st_mtime_ns + 1 and meta.stat().st_mtime_ns != before
