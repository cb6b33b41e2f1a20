"""A tiny MNIST-format dataset: IDX files whose images carry their own index."""

import numpy as np

from bnn.data import idx

TINY_TRAIN, TINY_TEST = 130, 40


def tiny_arrays(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first two pixels spell their index (offset + i), labels (offset + i) % 10."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
    return images, (ids % 10).astype(np.uint8)


def image_ids(images: np.ndarray) -> np.ndarray:
    """Inverse of tiny_arrays' id encoding, for uint8 [N, 28, 28, 1] batches."""
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 1, 0].astype(np.int64)


def write_tiny_idx(directory, *, gz: bool = True) -> None:
    suffix = ".gz" if gz else ""
    for prefix, (n, offset) in {"train": (TINY_TRAIN, 0), "t10k": (TINY_TEST, 1000)}.items():
        images, labels = tiny_arrays(n, offset)
        idx.write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        idx.write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
