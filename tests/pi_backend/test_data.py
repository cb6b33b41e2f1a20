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


def test_a_directory_where_a_file_is_expected(tmp_path, arrays):
  """--labels naming a directory, or a --data directory whose member is one: a clear
  error, not an UnboundLocalError from the reader."""
  images, labels = arrays
  (tmp_path / "imgs.idx").write_bytes(_idx(images, 0x08))
  (tmp_path / "labels-dir").mkdir()
  with pytest.raises(data.DataError, match=r"labels-dir: is a directory; expected an IDX file"):
    data.load(tmp_path / "imgs.idx", labels=tmp_path / "labels-dir")
  d = tmp_path / "mnist"
  (d / "t10k-images-idx3-ubyte").mkdir(parents=True)
  (d / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels, 0x08))
  with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte: is a directory; "
                                           r"expected an IDX file"):
    data.load(d)


def _corrupt_npz(path, how):
  good = path.with_name("good.npz")
  rng = np.random.default_rng(0)
  np.savez(good, images=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8),
           labels=rng.integers(0, 10, 50))
  raw = good.read_bytes()
  if how == "truncated":
    path.write_bytes(raw[:len(raw) // 2])
  elif how == "flipped":  # a byte of images.npy's data: the zip's CRC-32 catches it
    b = bytearray(raw)
    b[1000] ^= 0xFF
    path.write_bytes(bytes(b))
  elif how == "not-npy":
    import zipfile  # pylint: disable=import-outside-toplevel
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("images.npy", b"not the NumPy format")
      z.writestr("labels.npy", b"nor this")
  elif how == "npy":
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").rename(path)


@pytest.mark.parametrize("how,message", [
    ("truncated", r"not a readable .npz archive, corrupt or truncated \(BadZipFile"),
    ("flipped", r"not a readable .npz archive, corrupt or truncated \(BadZipFile: Bad CRC-32"),
    ("not-npy", r"the member images.npy is not in NumPy's .npy format"),
    ("npy", r"a single .npy array, not an .npz archive"),
])
def test_corrupt_npz_is_a_data_error_naming_the_file(tmp_path, how, message):
  path = tmp_path / "bad.npz"
  _corrupt_npz(path, how)
  with pytest.raises(data.DataError, match=rf"{path}: {message}"):
    data.load(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_sizes_are_checked_against_the_file_before_allocating(tmp_path, gz):
  """A header claiming 2**93 bytes (or 2**50 in a gzip file of 32 bytes) is refused by
  its sizes, naming the file, not by a MemoryError or NumPy's "array is too big"."""
  header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2 ** 31, 2 ** 31, 2 ** 31)
  path = tmp_path / "huge-images-idx3-ubyte"
  path.write_bytes(gzip.compress(header + b"\0" * 10) if gz else header + b"\0" * 10)
  message = ("more than a gzip file of .* bytes can hold" if gz
             else r"\(9903520314283042199192993808 bytes\), the file has 26 bytes")
  with pytest.raises(data.DataError, match=rf"{path}: the header says shape "
                                           rf"\(2147483648, 2147483648, 2147483648\) of uint8 "
                                           rf".*{message}"):
    data.read_idx(path)
  path.write_bytes(bytes([0, 0, 0x08, 200]) + b"\0" * 800)  # NumPy's limit is 32 or 64 axes
  with pytest.raises(data.DataError, match=rf"{path}: the IDX header says 200 axes; expected "
                                           rf"at most 32"):
    data.read_idx(path)


def test_labels_are_checked_against_the_classes_naming_the_file(tmp_path, arrays):
  images, labels = arrays
  (tmp_path / "imgs.idx").write_bytes(_idx(images, 0x08))
  (tmp_path / "labs.idx").write_bytes(_idx(labels, 0x08))
  x, y = data.load(tmp_path / "imgs.idx", tmp_path / "labs.idx", num_classes=10)
  np.testing.assert_array_equal(y, labels)
  with pytest.raises(data.DataError, match=rf"{tmp_path / 'labs.idx'}: labels range over "
                                           rf"\[{labels.min()}, {labels.max()}\]; expected "
                                           rf"class indices in \[0, 2\] \(the model has 3 "
                                           rf"classes\)"):
    data.load(tmp_path / "imgs.idx", tmp_path / "labs.idx", num_classes=3)
  # uint64 labels >= 2**63 are reported as what they are (the int64 cast wrapped them)
  big = np.zeros(7, np.uint64)
  big[4] = 2 ** 64 - 1
  np.savez(tmp_path / "big.npz", images=images, labels=big)
  with pytest.raises(data.DataError, match=r"big.npz: labels range over "
                                           r"\[0, 18446744073709551615\]"):
    data.load(tmp_path / "big.npz")
  np.savez(tmp_path / "neg.npz", images=images, labels=-labels.astype(np.int64) - 1)
  with pytest.raises(data.DataError, match=r"neg.npz: labels range over \[-"):
    data.load(tmp_path / "neg.npz")


def test_labels_file_with_npz_or_directory_data_is_refused(tmp_path, arrays):
  """--labels goes with an IDX images file; the other forms hold their labels, and a
  --labels silently ignored would give results for labels other than the user's."""
  images, labels = arrays
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  (tmp_path / "labs.idx").write_bytes(_idx(labels, 0x08))
  with pytest.raises(data.DataError, match=r"--labels .*labs.idx: labels files go with an "
                                           r"IDX images file; .*d.npz is an .npz archive"):
    data.load(tmp_path / "d.npz", tmp_path / "labs.idx")
  with pytest.raises(data.DataError, match=r"is a directory, which holds its labels"):
    data.load(tmp_path, tmp_path / "labs.idx")


def test_input_files(tmp_path, arrays):
  images, labels = arrays
  for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    (tmp_path / name).write_bytes(b"")
  assert data.input_files(tmp_path) == [tmp_path / "t10k-images-idx3-ubyte",
                                        tmp_path / "t10k-labels-idx1-ubyte"]
  assert data.input_files(tmp_path, split="train") == []
  assert data.input_files(tmp_path / "d.npz") == [tmp_path / "d.npz"]
  assert data.input_files(tmp_path / "a-images.idx") == [tmp_path / "a-images.idx",
                                                         tmp_path / "a-labels.idx"]
  assert data.input_files(tmp_path / "x", tmp_path / "y") == [tmp_path / "x", tmp_path / "y"]
  assert data.input_files(tmp_path / "x") == [tmp_path / "x"]
