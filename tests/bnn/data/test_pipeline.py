import itertools
import json

import numpy as np
import pytest

from bnn import data
from tests.bnn.data.tiny_idx import TINY_TEST, TINY_TRAIN, image_ids
from tests.bnn.data.fake_tfds import SIZES, mock_tfds

VALIDATION = 20  # Tiny train: 130 = 110 train + 20 validation.


@pytest.fixture
def make(tiny_data_dir, tmp_path):
    def make(split="train", **kwargs):
        kwargs = {"batch_size": 32, "validation_size": VALIDATION, "cache_dir": tmp_path / "cache", **kwargs}
        return data.make_dataset("mnist", split=split, data_dir=tiny_data_dir, **kwargs)

    return make


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _ids(batches):
    return [image_ids(b["image"]).tolist() for b in batches]


def test_batches_and_counts(make):
    train = make(seed=0)
    assert (train.num_examples, train.steps_per_epoch, train.num_epochs) == (TINY_TRAIN - VALIDATION, 3, None)
    batch = next(iter(train))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (32, 28, 28, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], image_ids(batch["image"]) % 10)

    test = make("test")
    assert (test.num_examples, test.steps_per_epoch, len(test)) == (TINY_TEST, 2, 2)
    sizes = [len(b["label"]) for b in test.iterator()]
    assert sizes == [32, 8]  # Evaluation keeps the last, partial batch; the iterator stops after one epoch.


def test_each_epoch_is_a_new_permutation(make):
    train = make(seed=0, batch_size=10)  # 110 examples: 11 full batches per epoch.
    ids = _ids(_take(train.iterator(), 33))
    epochs = [sum(ids[11 * e : 11 * (e + 1)], []) for e in range(3)]
    validation_ids = set(image_ids(make("validation").dataset[0]["image"]).tolist())
    for epoch in epochs:
        assert len(epoch) == 110 and set(epoch) == set(range(TINY_TRAIN)) - validation_ids
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != sorted(epochs[0])


def test_same_seed_same_order_different_seed_different_order(make):
    a = _ids(_take(make(seed=5).iterator(), 7))
    b = _ids(_take(make(seed=5).iterator(num_threads=0), 7))
    c = _ids(_take(make(seed=6).iterator(), 7))
    assert a == b and a != c and a[:3] != c[:3]


def test_resume_from_state_gives_identical_remaining_batches(make):
    pipeline = make(seed=1)
    iterator = pipeline.iterator()
    _take(iterator, 4)
    state = json.loads(json.dumps(iterator.get_state()))  # Survives a JSON checkpoint.
    expected = _take(iterator, 5)
    resumed = pipeline.iterator()
    resumed.set_state(state)
    fresh = make(seed=1).iterator()  # A new process would rebuild the pipeline.
    fresh.set_state(state)
    for got in (_take(resumed, 5), _take(fresh, 5)):
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(e["image"], g["image"])
            np.testing.assert_array_equal(e["label"], g["label"])


def test_validation_is_disjoint_from_train_and_ignores_the_training_seed(make):
    validation = make("validation", batch_size=VALIDATION)
    assert validation.num_examples == VALIDATION and validation.augment == data.Augment()
    validation_ids = set(image_ids(validation.dataset[0]["image"]).tolist())
    for seed in (0, 1):
        train_ids = set(itertools.chain(*_ids(_take(make(seed=seed, batch_size=10).iterator(), 11))))
        assert not train_ids & validation_ids and len(train_ids | validation_ids) == TINY_TRAIN
    assert validation_ids == set(image_ids(make("validation", batch_size=VALIDATION, seed=9).dataset[0]["image"]).tolist())
    other = set(image_ids(make("validation", batch_size=VALIDATION, validation_seed=1).dataset[0]["image"]).tolist())
    assert other != validation_ids


def test_validation_size_zero(make):
    assert make(validation_size=0).num_examples == TINY_TRAIN
    with pytest.raises(ValueError, match="split 'validation' is empty"):
        make("validation", validation_size=0)


def test_argument_errors(make):
    with pytest.raises(ValueError, match="batch_size"):
        make(batch_size=0)
    with pytest.raises(ValueError, match="exceeds"):
        make(batch_size=500)
    with pytest.raises(ValueError, match="inception_crop is for datasets of varying image size"):
        make(augment="inception_crop")
    with pytest.raises(ValueError, match="num_epochs"):
        make(num_epochs=0)


def test_num_epochs_bounds_the_iterator(make):
    assert len(list(make(seed=0, num_epochs=2).iterator())) == 6


def test_to_float():
    images = np.array([0, 127, 128, 255], np.uint8)
    np.testing.assert_allclose(data.to_float(images), [-1, -1 / 255, 1 / 255, 1], atol=1e-6)
    assert data.to_float(images).dtype == np.float32

    import jax.numpy as jnp

    np.testing.assert_allclose(data.to_float(jnp.asarray(images)), [-1, -1 / 255, 1 / 255, 1], atol=1e-6)


# Datasets we cannot have offline go through the same TFDS code path with a mocked TFDS.


def test_cifar10_through_mocked_tfds_with_augmentation():
    with mock_tfds():
        kwargs = dict(split="train", batch_size=50, seed=3, validation_size=100, cache_dir=None)
        plain = data.make_dataset("cifar10", augment="none", **kwargs)
        augmented = data.make_dataset("cifar10", **kwargs)
        again = data.make_dataset("cifar10", **kwargs)
        assert augmented.augment == data.parse_augment("shift(0.15)+flip")
        assert (augmented.num_examples, augmented.steps_per_epoch) == (SIZES["train"] - 100, 4)
        a, b, p = (next(x.iterator()) for x in (augmented, again, plain))
    assert a["image"].shape == p["image"].shape == (50, 32, 32, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], b["image"])  # Augmentation is seeded.
    np.testing.assert_array_equal(a["label"], p["label"])  # Same examples, ...
    assert not np.array_equal(a["image"], p["image"])  # ... augmented.


def test_svhn_trains_on_train_plus_extra():
    with mock_tfds():
        train = data.make_dataset("svhn_cropped", split="train", batch_size=100, validation_size=50, cache_dir=None)
        test = data.make_dataset("svhn_cropped", split="test", batch_size=100, cache_dir=None)
    assert train.num_examples == SIZES["train"] + SIZES["extra"] - 50 and test.num_examples == SIZES["test"]
    assert train.augment == data.parse_augment("shift(0.15)")  # No flip for digits.


def test_imagenet_crops_images_of_varying_size():
    with mock_tfds():
        train = data.make_dataset("imagenet2012", split="train", batch_size=4, validation_size=10, seed=0)
        test = data.make_dataset("imagenet2012", split="test", batch_size=4)
        a, b = next(train.iterator()), next(data.make_dataset(
            "imagenet2012", split="train", batch_size=4, validation_size=10, seed=0).iterator())
        t = next(test.iterator())
    assert a["image"].shape == t["image"].shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert test.num_examples == SIZES["validation"]  # ImageNet's TFDS "validation" is our test split.


# One shard per process (multi-host data parallelism): the shards of a batch, put
# together, are the batch one process would make, augmentation included.


def _assert_shards_make_the_batch(make_pipeline, count, steps):
    whole = make_pipeline(shard_index=0, shard_count=1)
    shards = [make_pipeline(shard_index=i, shard_count=count) for i in range(count)]
    assert all(s.local_batch_size == whole.batch_size // count for s in shards)
    for k in steps:
        expected, parts = whole.dataset[k], [s.dataset[k] for s in shards]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])
        assert len(parts[0]["label"]) == min(whole.batch_size // count, len(expected["label"]))


@pytest.mark.parametrize("count", [2, 4])
def test_shards_of_shuffled_train_batches(make, count):
    _assert_shards_make_the_batch(lambda **kw: make(seed=3, **kw), count, steps=[0, 2, 3, 7])


def test_shards_of_the_short_last_evaluation_batch(make):
    # 40 test examples in batches of 32: the last batch has 8, all in the first shard
    # of 4 (rows 0..7); the other shards get no rows of it.
    _assert_shards_make_the_batch(lambda **kw: make("test", **kw), 4, steps=[0, 1])
    assert [len(make("test", shard_index=i, shard_count=4).dataset[1]["label"]) for i in range(4)] == [8, 0, 0, 0]


def test_shards_with_shift_flip_and_with_crops():
    with mock_tfds():
        _assert_shards_make_the_batch(
            lambda **kw: data.make_dataset("cifar10", split="train", batch_size=20, seed=3, validation_size=100, cache_dir=None, **kw),
            4,
            steps=[0, 5],
        )
        _assert_shards_make_the_batch(
            lambda **kw: data.make_dataset("imagenet2012", split="train", batch_size=4, seed=0, validation_size=10, **kw), 2, steps=[1]
        )


def test_shard_argument_errors(make):
    with pytest.raises(ValueError, match="shard_count=3.*divides batch_size=32"):
        make(shard_count=3)
    with pytest.raises(ValueError, match=r"shard_index=2: expected an int in \[0, 2\)"):
        make(shard_index=2, shard_count=2)
