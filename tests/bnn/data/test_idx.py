import gzip

import numpy as np
import pytest

from bnn.data import idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_roundtrip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = idx.write_idx(tmp_path / name, array)
    out = idx.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_handwritten_bytes(tmp_path):
    """A file written by hand: 2 images of 2x3 uint8, big-endian header."""
    header = bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "x").write_bytes(header + bytes(range(12)))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "x"), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    # int16 labels, big-endian: 0x0102 = 258.
    (tmp_path / "y").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 1, 2, 0xFF, 0xFE]))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "y"), np.array([258, -2], np.int16))


def test_gzip_detected_by_content_not_name(tmp_path):
    payload = bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9])
    (tmp_path / "plain-but-named.gz").write_bytes(payload)
    (tmp_path / "gzipped-without-suffix").write_bytes(gzip.compress(payload))
    for name in ("plain-but-named.gz", "gzipped-without-suffix"):
        np.testing.assert_array_equal(idx.read_idx(tmp_path / name), [7, 8, 9])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x05", "bad IDX magic"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(idx.IdxFormatError, match=message) as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 100]) + bytes(100))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(idx.IdxFormatError, match="gzip"):
        idx.read_idx(tmp_path / "cut.gz")


def test_read_split_finds_spellings_and_checks_counts(tmp_path):
    idx.write_idx(tmp_path / "train-images.idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    idx.write_idx(tmp_path / "train-labels.idx1-ubyte.gz", np.arange(3, dtype=np.uint8))
    images, labels = idx.read_idx_split(tmp_path, "train")
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        idx.read_idx_split(tmp_path, "test")
    idx.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(idx.IdxFormatError, match="3 images .* 2 labels"):
        idx.read_idx_split(tmp_path, "test")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="IDX cannot store dtype"):
        idx.write_idx(tmp_path / "x", np.zeros(3, np.uint32))
