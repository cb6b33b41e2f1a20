"""TFDS mocked without TensorFlow, for datasets we cannot have offline (cifar10, svhn, imagenet).

`tfds.testing.mock_data()`'s default fake data source encodes images with
TensorFlow (and its `__getitems__` is not bound, TFDS 4.9.10), so we pass our
own `as_data_source_fn`: deterministic random examples with the shapes and
classes of the real dataset's features, PNG-encoded by Pillow when the caller
asks for undecoded images. Pixel (0, 0, 0) + 256 * pixel (0, 1, 0) is the index
of the example within its TFDS split string.
"""

import contextlib
import io
from unittest import mock

import numpy as np

SIZES = {"train": 300, "extra": 200, "test": 100, "validation": 100}


class FakeSource:
    def __init__(self, features, split: str, encoded: bool):
        self.features, self.split, self.encoded = features, split, encoded
        self.size = sum(SIZES[s] for s in split.split("+"))

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        rng = np.random.default_rng([i, len(self.split)])
        shape = [int(rng.integers(40, 90)) if d is None else d for d in self.features["image"].shape]
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        image[0, 0, 0], image[0, 1, 0] = i % 256, i // 256
        label = int(rng.integers(self.features["label"].num_classes))
        if self.encoded:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(image.squeeze(-1) if shape[-1] == 1 else image).save(buffer, format="png")
            image = buffer.getvalue()
        return {"image": image, "label": label}

    def __getitems__(self, keys):
        return [self[k] for k in keys]


@contextlib.contextmanager
def mock_tfds():
    import tensorflow_datasets as tfds

    def as_data_source(self, split=None, decoders=None, **kwargs):
        del kwargs
        return FakeSource(self.info.features, split, encoded=decoders is not None)

    with tfds.testing.mock_data(as_data_source_fn=as_data_source), mock.patch.object(
        tfds.core.DatasetBuilder, "is_prepared", return_value=True
    ):
        yield
