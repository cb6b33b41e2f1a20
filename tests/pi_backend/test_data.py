"""pi_backend.data: IDX (raw and gzip), .npz and MNIST-named directories; clear errors."""
import gzip
import struct

import numpy as np
import pytest

from pi_backend import data


def _idx(a: np.ndarray, code: int) -> bytes:
  header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
  return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def arrays():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (7, 5, 4), dtype=np.uint8), rng.integers(0, 10, 7).astype(np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_with_guessed_labels(tmp_path, arrays, gz):
  images, labels = arrays
  wrap = gzip.compress if gz else (lambda b: b)
  suffix = ".gz" if gz else ""
  (tmp_path / f"t10k-images-idx3-ubyte{suffix}").write_bytes(wrap(_idx(images, 0x08)))
  (tmp_path / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(wrap(_idx(labels, 0x08)))
  x, y = data.load(tmp_path / f"t10k-images-idx3-ubyte{suffix}")
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, labels)
  assert y.dtype == np.int64
  x2, y2 = data.load(tmp_path, split="test")  # the directory form
  np.testing.assert_array_equal(x2, images)
  with pytest.raises(data.DataError, match="no train-images-idx3-ubyte"):
    data.load(tmp_path, split="train")


def test_idx_dtypes(tmp_path):
  for code, dtype in ((0x0D, np.float32), (0x0C, np.int32), (0x0E, np.float64)):
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    (tmp_path / "a.idx").write_bytes(_idx(a, code))
    got = data.read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.dtype(dtype)


def test_npz(tmp_path, arrays):
  images, labels = arrays
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  x, y = data.load(tmp_path / "d.npz")
  np.testing.assert_array_equal(x, images)
  np.savez(tmp_path / "xy.npz", x=images.astype(np.float32) / 255, y=labels)
  x, y = data.load(tmp_path / "xy.npz")
  assert x.dtype == np.float32
  np.savez(tmp_path / "only.npz", images=images)
  with pytest.raises(data.DataError, match="expected arrays 'images'"):
    data.load(tmp_path / "only.npz")
  x, y = data.load(tmp_path / "only.npz", need_labels=False)
  assert y is None


@pytest.mark.parametrize("content,message", [
    (b"\x00\x00", "not an IDX file"),
    (b"\x01\x00\x08\x01" + b"\0" * 8, "not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (_idx(np.zeros((2, 3), np.uint8), 0x08)[:-1], r"shape \(2, 3\).*the file has"),
    (_idx(np.zeros((2, 3), np.uint8), 0x08) + b"\0", r"\(18 bytes\), the file has 19 bytes"),
    (gzip.compress(_idx(np.zeros(3, np.uint8), 0x08), mtime=0)[:-5], "corrupt or truncated gzip"),
], ids=["short", "bad-magic", "truncated-header", "missing-byte", "extra-byte", "truncated-gzip"])
def test_bad_idx(tmp_path, content, message):
  (tmp_path / "bad-images-idx3-ubyte").write_bytes(content)
  with pytest.raises(data.DataError, match=message):
    data.read_idx(tmp_path / "bad-images-idx3-ubyte")


def test_load_errors(tmp_path, arrays):
  images, labels = arrays
  with pytest.raises(data.DataError, match="no such file"):
    data.load(tmp_path / "missing.npz")
  (tmp_path / "imgs.idx").write_bytes(_idx(images, 0x08))
  with pytest.raises(data.DataError, match="cannot guess the labels file"):
    data.load(tmp_path / "imgs.idx")
  assert data.load(tmp_path / "imgs.idx", need_labels=False)[1] is None
  (tmp_path / "few-labels").write_bytes(_idx(labels[:3], 0x08))
  with pytest.raises(data.DataError, match="expected 7 integers, one per image"):
    data.load(tmp_path / "imgs.idx", labels=tmp_path / "few-labels")
  (tmp_path / "broken.npz").write_bytes(b"not a zip")
  with pytest.raises(data.DataError, match="not a readable .npz"):
    data.load(tmp_path / "broken.npz")
  np.savez(tmp_path / "int.npz", images=images.astype(np.int16), labels=labels)
  with pytest.raises(data.DataError, match="dtype int16"):
    data.load(tmp_path / "int.npz")



@pytest.mark.parametrize("bad,shown", [(255.0, r"\[-1.0, 255.0\]"), (np.nan, r"\[nan, nan\]"),
                                       (-np.inf, r"\[-inf, 1.0\]"), (-1.5, r"\[-1.5, 1.0\]")])
def test_float_images_outside_minus_one_one_are_refused(tmp_path, arrays, bad, shown):
  """Float pixels in [0, 255], or a NaN, load without complaint into NumPy but give
  meaningless logits: refused at load, naming the range found."""
  images, labels = arrays
  floats = np.linspace(-1, 1, images.size, dtype=np.float32).reshape(images.shape)
  np.savez(tmp_path / "ok.npz", images=floats, labels=labels)
  data.load(tmp_path / "ok.npz")  # [-1, 1] itself is fine
  floats[3, 2, 1] = bad
  np.savez(tmp_path / "bad.npz", images=floats, labels=labels)
  with pytest.raises(data.DataError, match=rf"bad.npz: float images range over {shown}"):
    data.load(tmp_path / "bad.npz")
