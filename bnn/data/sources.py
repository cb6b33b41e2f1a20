"""Random-access sources of (image, label) examples, read from a TFDS data_dir.

Layers, bottom up:

1. `open_builder(name)`: the TFDS builder for a prepared dataset. MNIST-format
   datasets missing from the data_dir are prepared from local IDX files
   (builders.py); anything else missing raises DatasetNotFoundError saying how
   to get it. Only the array_record file format is accepted (random access).
2. `builder.as_data_source(split)`: TFDS's random-access data source. No
   TensorFlow: records are parsed with NumPy and images decoded with Pillow.
3. For small datasets (spec.in_memory) every image is decoded ONCE into a
   NumPy array, cached on disk as .npy next to a fingerprint of the TFDS files,
   and memory-mapped afterwards (`ArraySource`). Reason: decoding through the
   data source costs ~0.8 ms per example on a 2-core 2 GHz Xeon (~0.2 ms
   parsing the record in Python, ~0.4 ms Pillow PNG decode), i.e. ~1 minute per
   Fashion-MNIST epoch; a batch gathered from the array costs ~0.3 ms.
   Large datasets (ImageNet) are decoded record by record (`TfdsSource`).
4. `load_split(name, split)`: our splits "train" / "validation" / "test".
   "validation" is a fixed random subset (seeded by `validation_seed`, NOT by
   the training seed) of the pooled TFDS training splits (`spec.train_splits`,
   e.g. SVHN train+extra); "train" is the rest; "test" is `spec.test_split`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bnn.data import builders, catalog

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_CACHE_FORMAT = 1
# Below this many examples, decoding in worker processes costs more than it saves.
_PARALLEL_DECODE_MIN = 20_000
_DECODE_CHUNK = 2_000


class SplitTooSmall(ValueError):
    """A split cannot give what a size parameter asks of it: `param` ("validation_size",
    "batch_size") = `value`, where `limit` examples are there."""

    def __init__(self, param: str, value: int, limit: int, message: str):
        super().__init__(message)
        self.param, self.value, self.limit = param, value, limit


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not in the TFDS data_dir and cannot be prepared locally."""


# --------------------------------------------------------------------------------------
# 1. TFDS builders.


def _tfds():
    import tensorflow_datasets as tfds  # Heavy import, deferred; never imports TensorFlow.

    return tfds


def open_builder(name: str, *, data_dir: str | os.PathLike | None = None, idx_dir: str | os.PathLike | None = None):
    """The TFDS builder of the prepared dataset `name` in `data_dir` (None: TFDS's default).

    MNIST-format datasets that are missing are prepared first from the IDX files
    in `idx_dir` (default: $BNN_MNIST_DIR / $BNN_FASHION_MNIST_DIR, then the
    Debian package's /usr/share/datasets/fashion-mnist for fashion_mnist).
    """
    spec = catalog.get_spec(name)
    tfds = _tfds()
    data_dir = None if data_dir is None else os.fspath(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared() and name in builders.IDX_DATASETS:
        source = Path(idx_dir) if idx_dir is not None else builders.default_idx_dir(name)
        if builders.has_idx_files(source):
            log.info("preparing %s from the IDX files in %s into %s", name, source, data_dir or "the TFDS data_dir")
            try:
                builders.prepare_idx_dataset(name, source, data_dir)
            except DatasetNotFoundError:
                raise
            except OSError as e:  # a read-only or full data_dir; TFDS leaves no half dataset
                raise DatasetNotFoundError(
                    f"cannot prepare {name} from {source} into {data_dir or Path(builder.data_dir).parents[1]}: "
                    f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}; set $TFDS_DATA_DIR "
                    f"or config.dataset.data_dir to a directory with room that you can write"
                ) from e
            builder = tfds.builder(name, data_dir=data_dir)
        elif idx_dir is not None:
            raise DatasetNotFoundError(f"{idx_dir}: no MNIST-format IDX files for {name}.\n{spec.how_to_get}")
    if not builder.is_prepared():
        version_dir = Path(builder.data_dir)
        found = sorted(p.name for p in version_dir.parent.glob("*") if p.is_dir()) if version_dir.parent.is_dir() else []
        found_msg = f" (versions there: {', '.join(found)})" if found else ""
        raise DatasetNotFoundError(
            f"Dataset {name!r} version {builder.version} is not prepared in the TFDS data_dir: "
            f"no {version_dir}{found_msg}.\nHow to get it:\n{spec.how_to_get}"
        )
    return builder


def tfds_split_name(name: str, split: str) -> str:
    """The TFDS split holding our `split` (before the validation carve-out)."""
    spec = catalog.get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return spec.test_split if split == "test" else "+".join(spec.train_splits)


# --------------------------------------------------------------------------------------
# 2./3. Example sources.


class Source(Protocol):
    """What the pipeline reads from: a sized, random-access set of examples."""

    image_shape: tuple[int, ...] | None  # None: images vary in size.

    def __len__(self) -> int: ...

    def get_batch(self, indices: np.ndarray) -> dict[str, Any]:
        """{"image": uint8 [B, H, W, C] (or a list of encoded images), "label": int32 [B]}."""


class ArraySource:
    """Images and labels in NumPy arrays (in memory or memory-mapped .npy files).

    Pickles as file paths when memory-mapped, so worker processes reopen the files
    instead of receiving a copy of the data.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, paths: tuple[Path, Path] | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self._paths = images, labels, paths
        self.image_shape = tuple(images.shape[1:])

    @classmethod
    def from_npy(cls, images_path: Path, labels_path: Path) -> "ArraySource":
        return cls(np.load(images_path, mmap_mode="r"), np.load(labels_path, mmap_mode="r"), (images_path, labels_path))

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: np.ndarray) -> dict[str, Any]:
        return {"image": np.asarray(self.images[indices]), "label": np.asarray(self.labels[indices], np.int32)}

    def __reduce__(self):
        if self._paths is not None:
            return (ArraySource.from_npy, self._paths)
        return (ArraySource, (self.images, self.labels))


class TfdsSource:
    """Examples read record by record from a TFDS data source.

    With `encoded=True` images come back undecoded (a list of bytes, e.g. JPEG)
    so that the pipeline can decode and crop them in one step.
    """

    def __init__(self, data_source, *, image_shape, encoded: bool = False):
        self.data_source, self.image_shape, self.encoded = data_source, image_shape, encoded

    def __len__(self) -> int:
        return len(self.data_source)

    def get_batch(self, indices: np.ndarray) -> dict[str, Any]:
        records = self.data_source.__getitems__([int(i) for i in indices])
        images = [r["image"] for r in records]
        labels = np.asarray([r["label"] for r in records], np.int32)
        if not self.encoded:
            images = np.stack(images) if images else np.zeros((0, *self.image_shape), np.uint8)
        return {"image": images, "label": labels}


def _data_source(builder, tfds_split: str, *, encoded: bool = False):
    """TFDS's random-access data source for `tfds_split` (only the array_record format has one)."""
    decoders = {"image": _tfds().decode.SkipDecoding()} if encoded else None
    try:
        return builder.as_data_source(split=tfds_split, decoders=decoders)
    except NotImplementedError as e:  # Raised by TFDS for file formats without random access.
        raise DatasetNotFoundError(
            f"Dataset {builder.name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format}, but random-access data sources need array_record.\n"
            f"How to get it:\n{catalog.get_spec(builder.name).how_to_get}"
        ) from e


def _fingerprint(builder, tfds_split: str) -> dict[str, Any] | None:
    """What identifies the TFDS files of a split; None when it cannot be known (e.g. mocked TFDS)."""
    try:
        files = [Path(p) for p in builder.info.splits[tfds_split].filepaths]
        stats = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    except Exception:  # pylint: disable=broad-except
        return None
    return {
        "format": _CACHE_FORMAT,
        "dataset": builder.name,
        "version": str(builder.version),
        "split": tfds_split,
        "data_dir": str(Path(builder.data_dir).resolve()),
        "files": stats,
    }


def default_cache_dir() -> Path:
    """$BNN_DATA_CACHE, else ~/.cache/bnn/data."""
    return Path(os.environ.get("BNN_DATA_CACHE", Path.home() / ".cache" / "bnn" / "data"))


def _decode_range(data_source, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    records = data_source.__getitems__(list(range(start, stop)))
    images = np.stack([r["image"] for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images, labels


def _decode_all(data_source, image_shape, images_out: np.ndarray, labels_out: np.ndarray, num_workers: int) -> None:
    """Decodes every record of `data_source` into the preallocated outputs."""
    n = len(data_source)
    chunks = [(start, min(start + _DECODE_CHUNK, n)) for start in range(0, n, _DECODE_CHUNK)]

    def store(start, stop, images, labels):
        if images.shape[1:] != tuple(image_shape):
            raise ValueError(f"records {start}..{stop} have images of shape {images.shape[1:]}, expected {image_shape}")
        images_out[start:stop], labels_out[start:stop] = images, labels

    if num_workers <= 1 or n < _PARALLEL_DECODE_MIN:
        for start, stop in chunks:
            store(start, stop, *_decode_range(data_source, start, stop))
        return
    # "spawn": forking a process that may already run JAX threads is unsafe.
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            futures = {pool.submit(_decode_range, data_source, start, stop): (start, stop) for start, stop in chunks}
            for future in concurrent.futures.as_completed(futures):
                store(*futures[future], *future.result())
    except concurrent.futures.process.BrokenProcessPool as e:
        raise RuntimeError(
            "a decoding worker process died. Workers are started with the 'spawn' method, which re-imports "
            "the main module: guard the script's entry point with `if __name__ == '__main__':`, "
            "or decode in this process (num_workers=0)."
        ) from e


def _array_source(builder, tfds_split: str, image_shape, *, cache_dir: Path | None, num_workers: int) -> ArraySource:
    """All of a TFDS split decoded into arrays, from the .npy cache when it is current."""
    data_source = _data_source(builder, tfds_split)
    n = len(data_source)
    fingerprint = _fingerprint(builder, tfds_split) if cache_dir is not None else None
    if fingerprint is None:  # No cache: decode into memory.
        images, labels = np.empty((n, *image_shape), np.uint8), np.empty((n,), np.int32)
        _decode_all(data_source, image_shape, images, labels, num_workers)
        return ArraySource(images, labels)

    # One cache per TFDS data_dir, so that two copies of a dataset do not evict each other.
    where = hashlib.sha256(fingerprint["data_dir"].encode()).hexdigest()[:12]
    stem = Path(cache_dir) / builder.name / str(builder.version) / where / tfds_split
    meta_path, images_path, labels_path = (stem.with_name(f"{stem.name}.{s}") for s in ("json", "images.npy", "labels.npy"))
    if meta_path.exists() and json.loads(meta_path.read_text()) == fingerprint:
        return ArraySource.from_npy(images_path, labels_path)

    log.info("decoding %s %s (%d examples) into the cache %s", builder.name, tfds_split, n, stem.parent)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # The metadata file, written last, marks a complete cache.
    tmp = f".tmp{os.getpid()}"
    images_tmp, labels_tmp = images_path.with_name(images_path.name + tmp), labels_path.with_name(labels_path.name + tmp)
    images = np.lib.format.open_memmap(images_tmp, mode="w+", dtype=np.uint8, shape=(n, *image_shape))
    labels = np.lib.format.open_memmap(labels_tmp, mode="w+", dtype=np.int32, shape=(n,))
    try:
        _decode_all(data_source, image_shape, images, labels, num_workers)
        images.flush(), labels.flush()
        del images, labels
        os.replace(images_tmp, images_path)
        os.replace(labels_tmp, labels_path)
    finally:
        images_tmp.unlink(missing_ok=True), labels_tmp.unlink(missing_ok=True)
    meta_tmp = meta_path.with_name(meta_path.name + tmp)
    meta_tmp.write_text(json.dumps(fingerprint))
    os.replace(meta_tmp, meta_path)
    return ArraySource.from_npy(images_path, labels_path)


# --------------------------------------------------------------------------------------
# 4. Our splits.


def split_indices(pool_size: int, validation_size: int, validation_seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted indices of "train" and "validation" within the pooled training set.

    Validation is a uniformly random subset of `validation_size` examples chosen
    with `validation_seed` alone, so it does not move when the training seed does.
    """
    if not 0 <= validation_size < pool_size:
        raise SplitTooSmall("validation_size", validation_size, pool_size,
                            f"validation_size={validation_size} must be in [0, {pool_size}) for a pool of {pool_size}")
    permutation = np.random.default_rng(np.random.SeedSequence([validation_seed, 0x7A11D])).permutation(pool_size)
    return {
        "validation": np.sort(permutation[:validation_size]),
        "train": np.sort(permutation[validation_size:]),
    }


@dataclasses.dataclass(frozen=True)
class SplitView:
    """Our split: the examples `indices` of `source` (indices None: all of it)."""

    name: str
    split: str
    source: Source
    indices: np.ndarray | None
    num_classes: int

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    @property
    def image_shape(self):
        return self.source.image_shape

    def get_batch(self, positions: np.ndarray) -> dict[str, Any]:
        """The examples at `positions` (0 <= p < len(self)) of this split."""
        positions = np.asarray(positions, np.int64)
        return self.source.get_batch(positions if self.indices is None else self.indices[positions])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the whole split; only for in-memory sources."""
        batch = self.get_batch(np.arange(len(self)))
        return batch["image"], batch["label"]


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
    validation_size: int | None = None,
    validation_seed: int = 0,
    in_memory: bool | None = None,
    cache_dir: str | os.PathLike | None | bool = True,
    decode_workers: int = 0,
) -> SplitView:
    """Our `split` ("train" / "validation" / "test") of dataset `name`.

    validation_size: examples held out of training for "validation" (default:
        the dataset's, e.g. 5000 for fashion_mnist; 0 allowed, then "validation" is empty).
    in_memory: decode everything once into arrays (default: spec.in_memory).
    cache_dir: where decoded arrays are cached (True: default_cache_dir();
        None/False: keep them in memory only).
    decode_workers: processes for the one-time decode into the cache (default 0: in
        this process). Workers are spawned, so the main module must be guarded by
        `if __name__ == "__main__":`.
    """
    spec = catalog.get_spec(name)
    validation_size = spec.validation_size if validation_size is None else int(validation_size)
    tfds_split = tfds_split_name(name, split)
    builder = open_builder(name, data_dir=data_dir, idx_dir=idx_dir)
    in_memory = spec.in_memory if in_memory is None else in_memory
    if in_memory and not spec.fixed_size:
        raise ValueError(f"{name} images vary in size; in_memory=True is not supported")
    if in_memory:
        cache = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
        source: Source = _array_source(builder, tfds_split, spec.image_shape, cache_dir=cache, num_workers=decode_workers)
    else:
        source = TfdsSource(
            _data_source(builder, tfds_split, encoded=not spec.fixed_size),
            image_shape=spec.image_shape if spec.fixed_size else None,
            encoded=not spec.fixed_size,
        )
    indices = None
    if split != "test":
        indices = split_indices(len(source), validation_size, validation_seed)[split]
    return SplitView(name=name, split=split, source=source, indices=indices, num_classes=spec.num_classes)
