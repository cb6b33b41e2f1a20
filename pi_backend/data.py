"""Images and labels for ``python -m pi_backend``: IDX files (MNIST format, raw or
gzip) or .npz archives. NumPy and the standard library only.

``load(path, labels=None, split="test")`` accepts:
  - an .npz with arrays ``images`` (or ``x``) and ``labels`` (or ``y``);
  - an IDX images file (e.g. t10k-images-idx3-ubyte.gz), with its labels from
    ``labels=`` or, by default, the file of the same name with "images" -> "labels"
    and "idx3" -> "idx1";
  - a directory of MNIST-named IDX files: ``train-*`` (split="train") or ``t10k-*``
    (split="test"), gzipped or not.
Images: uint8 (N, H, W), (N, H, W, C) or (N, D), or floats already in [-1, 1];
labels: integers (N,), class indices (>= 0; < num_classes when ``load`` is given the
model's). Problems raise DataError naming the file and what was expected: a directory
where a file was expected, a truncated or corrupt file (gzip, zip, IDX sizes that the
file cannot hold -- checked before the array is allocated).

IDX (big-endian): bytes 0-1 zero, byte 2 the element type (0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of axes n, then
n uint32 sizes, then the elements in C order.
"""
from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGE_KEYS, _LABEL_KEYS = ("images", "x"), ("labels", "y")
_MAX_AXES = 32         # NumPy 1.x's limit (2.x: 64); images have 4 at most
_GZIP_MAX_RATIO = 1032  # deflate expands no byte of its input into more than 1032 bytes


class DataError(ValueError):
  """A data file that cannot be read as images and labels."""


def _read_exact(f, n: int) -> bytes:
  out = f.read(n)
  return out if out is not None else b""


def read_idx(path) -> np.ndarray:
  """The array in an IDX file (gzip detected from the content), read straight into the
  array (no second copy of the data in memory). The sizes in the header are checked
  against the file's before the array is allocated: against its exact length for a raw
  file, against the most that its compressed length can hold for a gzip one."""
  path = Path(path)
  if path.is_dir():
    raise DataError(f"{path}: is a directory; expected an IDX file")
  gz = False
  try:
    with open(path, "rb") as f:
      gz = f.read(2) == b"\x1f\x8b"
      file_size = os.fstat(f.fileno()).st_size
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
      head = _read_exact(f, 4)
      if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (the header {head.hex(' ')} should be "
                        f"00 00 <type> <axes>, type one of "
                        f"{[hex(t) for t in _IDX_TYPES]})")
      ndim = head[3]
      if ndim > _MAX_AXES:
        raise DataError(f"{path}: the IDX header says {ndim} axes; expected at most "
                        f"{_MAX_AXES}")
      dims = _read_exact(f, 4 * ndim)
      if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes; "
                        f"{4 + 4 * ndim} needed)")
      shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
      dtype = np.dtype(_IDX_TYPES[head[2]])
      start = 4 + 4 * ndim
      nbytes = math.prod(shape) * dtype.itemsize  # exact (Python ints)
      if not gz and start + nbytes != file_size:
        raise DataError(f"{path}: the header says shape {shape} of {dtype.name} "
                        f"({start + nbytes} bytes), the file has {file_size} bytes")
      if gz and start + nbytes > _GZIP_MAX_RATIO * file_size:
        raise DataError(f"{path}: the header says shape {shape} of {dtype.name} "
                        f"({start + nbytes} bytes), more than a gzip file of {file_size} "
                        f"bytes can hold; the file is corrupt or truncated")
      try:
        a = np.empty(shape, dtype)
      except (MemoryError, ValueError) as e:
        raise DataError(f"{path}: the header says shape {shape} of {dtype.name} "
                        f"({start + nbytes} bytes), which cannot be allocated: {e}") from None
      view = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
      filled = 0
      while filled < len(view):
        n = f.readinto(view[filled:filled + (1 << 20)])  # gzip copies through a temporary
        if not n:
          break
        filled += n
      extra = 0
      while chunk := f.read(1 << 16):
        extra += len(chunk)
  except DataError:
    raise
  except (OSError, EOFError, zlib.error) as e:
    if isinstance(e, FileNotFoundError) or not gz:
      raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
  if filled < len(view) or extra:
    raise DataError(f"{path}: the header says shape {shape} of {dtype.name} "
                    f"({start + len(view)} bytes), the file has {start + filled + extra} bytes")
  return a if dtype.itemsize == 1 else a.astype(dtype.newbyteorder("="))


def _labels_for(images: Path) -> Path:
  name = images.name.replace("images", "labels").replace("idx3", "idx1")
  if name == images.name:
    raise DataError(f"{images}: cannot guess the labels file from this name; pass --labels")
  return images.with_name(name)


def _from_dir(d: Path, split: str) -> tuple[Path, Path]:
  if split not in ("train", "test"):
    raise DataError(f"split={split!r}; expected 'train' or 'test'")
  prefix = "train" if split == "train" else "t10k"
  for suffix in (".gz", ""):
    images = d / f"{prefix}-images-idx3-ubyte{suffix}"
    labels = d / f"{prefix}-labels-idx1-ubyte{suffix}"
    if images.exists() and labels.exists():
      return images, labels
  raise DataError(f"{d}: no {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte"
                  f"[.gz] pair for split {split!r}")


def _npz(path: Path, need_labels: bool = True):
  try:
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):  # an .npy file under an .npz name
      raise DataError(f"{path}: a single .npy array, not an .npz archive; expected arrays "
                      f"'images' (or 'x') and 'labels' (or 'y') in an archive (np.savez)")
    with z:
      keys = list(z.keys())
      ik = next((k for k in _IMAGE_KEYS if k in keys), None)
      lk = next((k for k in _LABEL_KEYS if k in keys), None)
      if ik is None or (lk is None and need_labels):
        raise DataError(f"{path}: expected arrays 'images' (or 'x') and 'labels' (or 'y'); "
                        f"found {keys}")
      out = []
      for key in (ik, lk):
        a = None if key is None else z[key]
        if a is not None and not isinstance(a, np.ndarray):  # NpzFile's raw bytes
          raise DataError(f"{path}: the member {key}.npy is not in NumPy's .npy format")
        out.append(a)
      return tuple(out)
  except DataError:
    raise
  except MemoryError:
    raise DataError(f"{path}: an array's header asks for more memory than there is; the "
                    f"archive is corrupt") from None
  except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile,
          NotImplementedError) as e:
    raise DataError(f"{path}: not a readable .npz archive, corrupt or truncated "
                    f"({type(e).__name__}: {e})") from None


def load(path, labels=None, split: str = "test", *, need_labels: bool = True,
         num_classes: int | None = None):
  """(images, labels) from an .npz, an IDX images file or a directory (module docstring).
  need_labels=False: labels may be missing (then None). num_classes: the labels must be
  in [0, num_classes - 1] (checked here, naming the file, rather than in the batch that
  holds a bad one)."""
  path = Path(path)
  if not path.exists():
    raise DataError(f"{path}: no such file or directory")
  if labels and (path.is_dir() or path.suffix == ".npz"):
    raise DataError(f"--labels {labels}: labels files go with an IDX images file; "
                    f"{path} is {'a directory' if path.is_dir() else 'an .npz archive'}, "
                    f"which holds its labels")
  label_source = path
  if path.is_dir():
    image_path, label_source = _from_dir(path, split)
    images, y = read_idx(image_path), read_idx(label_source)
  elif path.suffix == ".npz":
    images, y = _npz(path, need_labels)
  else:
    images = read_idx(path)
    try:
      label_path = Path(labels) if labels else _labels_for(path)
    except DataError:
      if need_labels:
        raise
      label_path = None
    if label_path is not None and not label_path.exists():
      if need_labels or labels:
        raise DataError(f"{label_path}: labels file not found (for {path}); pass --labels")
      label_path = None
    y = None if label_path is None else read_idx(label_path)
    label_source = label_path
  return check(images, y, str(path), num_classes=num_classes, labels_where=str(label_source))


def input_files(path, labels=None, split: str = "test") -> list[Path]:
  """The files that ``load(path, labels, split)`` reads (as far as they can be told
  without reading them): to refuse an output path that would overwrite one."""
  path = Path(path)
  if path.is_dir():
    try:
      return list(_from_dir(path, split))
    except DataError:
      return []
  if path.suffix == ".npz":
    return [path]
  out = [path]
  try:
    out.append(Path(labels) if labels else _labels_for(path))
  except DataError:
    pass
  return out


def check_float_range(images: np.ndarray, where: str = "images") -> None:
  """Float images must be finite and in [-1, 1] (the range uint8 pixels are scaled to):
  pixels in [0, 255] as floats, or a NaN, would give logits and a training step without
  meaning and no error."""
  if images.dtype == np.uint8 or images.size == 0:
    return
  lo, hi = images.min(), images.max()  # a NaN makes both NaN
  if not (lo >= -1 and hi <= 1):
    raise DataError(f"{where}: float images range over [{lo}, {hi}]; expected finite values "
                    f"in [-1, 1] (or uint8 pixels, which are scaled to x / 127.5 - 1)")


def check_labels(labels: np.ndarray, num_classes: int | None = None,
                 where: str = "labels") -> None:
  """Integer labels must be class indices: >= 0, and < num_classes when given. The range
  is reported in the labels' own values (Python ints: uint64 ones above 2**63 too)."""
  if labels.size == 0:
    return
  lo, hi = int(labels.min()), int(labels.max())
  top = np.iinfo(np.int64).max if num_classes is None else num_classes - 1
  if lo < 0 or hi > top:
    model = "" if num_classes is None else f" (the model has {num_classes} classes)"
    raise DataError(f"{where}: labels range over [{lo}, {hi}]; expected class indices in "
                    f"[0, {top}]{model}")


def check(images: np.ndarray, labels: np.ndarray | None, where: str = "data", *,
          num_classes: int | None = None, labels_where: str | None = None):
  """Checks and returns (images, int64 labels or None); labels_where: the labels' file
  in messages about their values (default: where)."""
  if images.ndim < 2 or images.shape[0] == 0:
    raise DataError(f"{where}: images have shape {images.shape}; expected (N, ...) with N >= 1")
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{where}: images have dtype {images.dtype}; expected uint8 pixels or "
                    f"floats in [-1, 1]")
  check_float_range(images, where)
  if labels is None:
    return images, None
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                    f"expected {images.shape[0]} integers, one per image")
  # before the cast, which would wrap uint64 >= 2**63
  check_labels(labels, num_classes, labels_where or where)
  return images, labels.astype(np.int64)
