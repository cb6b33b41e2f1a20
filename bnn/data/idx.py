"""Reader and writer for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is (all integers big-endian):

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions n
    4*n bytes   the size of each dimension (uint32)
    the rest    the elements, row-major

Files may be gzip-compressed (`*.gz`); compression is detected from the
content, not from the file name. Pure Python + NumPy, no TensorFlow.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

# IDX type code -> big-endian NumPy dtype.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """A file is not a valid IDX file (bad magic, truncated, trailing bytes, bad gzip)."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxFormatError(f"{path}: corrupt or truncated gzip stream ({e})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Returns the array stored in the IDX file `path` (optionally gzipped).

    The result has native byte order and the dtype the file declares (uint8 for
    MNIST images and labels). Raises IdxFormatError if the header is not IDX,
    or if the data is shorter or longer than the header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes, too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxFormatError(
            f"{path}: bad IDX magic {data[:4].hex(' ')}; expected 00 00 <type> <ndim> "
            f"with type in {sorted(f'0x{c:02X}' for c in _DTYPES)}"
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes, need {header_size})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: {what}: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in all), file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Writes `array` as an IDX file; gzip-compressed if `compress` (default: path ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; expected one of {sorted(map(str, _CODES))}")
    if array.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


# Split prefixes used by MNIST-format datasets.
IDX_SPLITS = {"train": "train", "test": "t10k"}


def find_idx_file(directory: str | os.PathLike, prefix: str, kind: str) -> Path | None:
    """The file for `prefix` ("train" / "t10k") and `kind` ("images" / "labels") in `directory`.

    Accepts the usual spellings: `train-images-idx3-ubyte`, `train-images.idx3-ubyte`,
    each optionally with `.gz`. Returns None if there is none.
    """
    rank = 3 if kind == "images" else 1
    directory = Path(directory)
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = directory / f"{prefix}-{kind}{sep}idx{rank}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read_idx_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels uint8 [N]) of the MNIST-format `split` ("train"/"test")."""
    if split not in IDX_SPLITS:
        raise ValueError(f"unknown IDX split {split!r}; expected one of {sorted(IDX_SPLITS)}")
    prefix = IDX_SPLITS[split]
    paths = {kind: find_idx_file(directory, prefix, kind) for kind in ("images", "labels")}
    missing = [f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte(.gz)" for kind, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(f"{directory}: missing {', '.join(missing)}")
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(f"{paths['images']}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{paths['labels']}: expected uint8 labels [N], got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{directory}: {len(images)} images in {paths['images'].name} but {len(labels)} labels in {paths['labels'].name}"
        )
    return images, labels
