"""The bundle format (pi_backend/bundle.py, graph.py): round trips, the atomic writer,
and a clear BundleError for every kind of bad file."""
import copy
import hashlib
import json
import os
import struct

import numpy as np
import pytest

from pi_backend import atomic, bundle
from pi_backend.errors import BundleError
from tests.pi_backend import bundles


def _reseal(data: bytes, header_fn=None) -> bytes:
  """Rewrites the header with header_fn(header) and recomputes lengths and checksum."""
  hlen = struct.unpack_from("<I", data, 12)[0]
  header = json.loads(data[16:16 + hlen])
  start = -(-(16 + hlen) // 64) * 64
  body = data[start:-32]
  if header_fn is not None:
    header_fn(header)
  raw = json.dumps(header).encode()
  new_start = -(-(16 + len(raw)) // 64) * 64
  out = bytearray(data[:12]) + struct.pack("<I", len(raw)) + raw
  out += b"\0" * (new_start - len(out)) + body
  return bytes(out) + hashlib.sha256(out).digest()


def _meta_fn(fn):
  return lambda h: fn(h["metadata"])


@pytest.fixture(scope="module")
def mlp():
  return bundles.mlp()


@pytest.fixture(scope="module")
def mlp_bytes(mlp):
  return bundle.encode(*mlp)


@pytest.mark.parametrize("make", [bundles.mlp, bundles.convnet,
                                  lambda: bundles.convnet(padding="SAME", pool_before_bn=True),
                                  lambda: bundles.mlp(trainable=False),
                                  lambda: bundles.convnet(optimizer="factored_adam")])
def test_round_trip_is_exact(make):
  meta, tensors = make()
  data = bundle.encode(meta, tensors)
  b = bundle.decode(data)
  assert b.metadata == meta
  assert sorted(b.tensors) == sorted(tensors)
  for name, a in tensors.items():
    got = b.tensors[name]
    assert got.dtype == a.dtype and got.shape == a.shape, name
    np.testing.assert_array_equal(got.view(np.uint8), a.view(np.uint8))
    assert got.flags.writeable and got.flags.c_contiguous
  assert bundle.encode(b.metadata, b.tensors) == data  # deterministic


def test_layout(mlp_bytes):
  assert mlp_bytes[:8] == bundle.MAGIC == b"BNNPI\x00\r\n"
  magic, version, hlen = struct.unpack_from("<8sII", mlp_bytes)
  assert version == bundle.VERSION == 1
  header = json.loads(mlp_bytes[16:16 + hlen])
  start = -(-(16 + hlen) // 64) * 64
  assert len(mlp_bytes) == start + header["data_nbytes"] + 32
  assert hashlib.sha256(mlp_bytes[:-32]).digest() == mlp_bytes[-32:]
  for e in header["tensors"]:
    assert e["offset"] % 64 == 0
  bits = next(e for e in header["tensors"] if e["name"] == "bits/BinaryDense_0/kernel")
  assert bits["dtype"] == "<u8" and bits["shape"] == [64, 1]


def test_write_is_atomic(tmp_path, mlp, monkeypatch):
  path = tmp_path / "m.bnnpi"
  bundle.write(path, *mlp)
  before = path.read_bytes()
  meta, tensors = copy.deepcopy(mlp[0]), dict(mlp[1])
  meta["train_step"] = 7
  real_replace = atomic.os.replace

  def failing_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(atomic.os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    bundle.write(path, meta, tensors)
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ["m.bnnpi"]  # no temporary file left
  monkeypatch.setattr(atomic.os, "replace", real_replace)
  bundle.write(path, meta, tensors)
  assert bundle.read(path).graph.train_step == 7


def test_written_bundle_has_the_permissions_of_a_plain_file(tmp_path, mlp):
  """Readable by the other users the umask allows (the temporary file is 0600), and a
  bundle written over keeps its mode."""
  path = tmp_path / "m.bnnpi"
  old = os.umask(0o027)
  try:
    bundle.write(path, *mlp)
    assert path.stat().st_mode & 0o777 == 0o640
    path.chmod(0o604)
    bundle.write(path, *mlp)
    assert path.stat().st_mode & 0o777 == 0o604
  finally:
    os.umask(old)
  assert os.umask(old) == old  # and the umask is as it was


def test_write_refuses_an_inconsistent_bundle(tmp_path, mlp):
  tensors = dict(mlp[1])
  del tensors["adam_v/BatchNorm_0/beta"]
  with pytest.raises(BundleError, match="missing"):
    bundle.write(tmp_path / "x.bnnpi", mlp[0], tensors)
  assert not list(tmp_path.iterdir())


# ---- bad files -----------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [0, 10, 47, 200, -1, -33])
def test_truncated(mlp_bytes, cut):
  with pytest.raises(BundleError, match="truncated"):
    bundle.decode(mlp_bytes[:cut])


def test_trailing_bytes(mlp_bytes):
  with pytest.raises(BundleError, match="bytes after its end"):
    bundle.decode(mlp_bytes + b"\0")


def test_wrong_magic(mlp_bytes):
  with pytest.raises(BundleError, match="not a pi_backend bundle.*magic"):
    bundle.decode(b"PK\x03\x04" + mlp_bytes[4:])


def test_wrong_version(mlp_bytes):
  data = mlp_bytes[:8] + struct.pack("<I", 2) + mlp_bytes[12:]
  with pytest.raises(BundleError, match="version 2 is not supported; this reader reads version 1"):
    bundle.decode(data)


@pytest.mark.parametrize("where", [20, 300, -40, -1])
def test_bad_checksum(mlp_bytes, where):
  data = bytearray(mlp_bytes)
  data[where] ^= 0x10
  with pytest.raises(BundleError, match="checksum mismatch"):
    bundle.decode(bytes(data))


def _set_layer(i, key, value):
  def fn(meta):
    meta["layers"][i][key] = value
  return fn


@pytest.mark.parametrize("fn,message", [
    (_set_layer(1, "kind", "lstm"), r"layer 1: unknown layer kind 'lstm'"),
    (_set_layer(1, "out_shape", [33]), r"layer 2 \(batch_norm\): in_shape=\[32\] "
                                       r"contradicts the shape \[33\]"),
    (_set_layer(2, "in_shape", [31]), r"layer 2 \(batch_norm\): in_shape=\[31\] contradicts"),
    (_set_layer(0, "out_shape", [65]), r"layer 0 \(flatten\): out_shape=\[65\] contradicts"),
    (_set_layer(1, "first_layer", False), "first_layer=false; expected true"),
    (_set_layer(4, "first_layer", True), "first_layer=true; expected false"),
    (_set_layer(3, "quantizer", "approx_sign()"), "pi_backend runs only 'ste_sign"),
    (_set_layer(1, "grad_quantizer", "po2(bits=9)"), r"bits=9; expected an int in \[1, 8\]"),
    (_set_layer(1, "grad_quantizer", "magic()"), "unknown name 'magic'"),
    (_set_layer(2, "eps", -1.0), r"eps=-1.0; expected a finite number"),
    (_set_layer(2, "momentum", "0.9"), "momentum='0.9'"),
    (_set_layer(1, "strides", [1, 1]), r"unknown keys \['strides'\]"),
    (lambda m: m["layers"].pop(), "the last layer is 'batch_norm'"),
    (lambda m: m.update(num_classes=11), r"expected \[num_classes\] = \[11\]"),
    (lambda m: m.update(method="standard"), "runs only 'proposed'"),
    (lambda m: m.update(input_shape=[8, 8, 2]), "in_shape=\\[128\\]|contradicts"),
    (lambda m: m.update(trainable="yes"), "trainable='yes'"),
    (lambda m: m["optimizer"].update(lr=-1), r"lr=-1; expected a finite number in \(0"),
    # hyperparameters with which training gives NaN (found only when saving, before)
    (_set_layer(2, "eps", 0.0), r"layer 2 \(batch_norm\): eps=0.0; expected a finite number "
                                r"in \(0.0, 1.0\]"),
    (_set_layer(2, "eps", 1e-50), r"eps=1e-50 is 0 in float32"),
    (lambda m: m["optimizer"].update(eps=0.0), r"optimizer: eps=0.0; expected a finite number "
                                               r"in \(0.0, 1.0\]"),
    (lambda m: m["optimizer"].update(lr=1e30), r"optimizer: lr=1e\+30; expected a finite "
                                               r"number in \(0.0, 1.0\]"),
    (lambda m: m["optimizer"].update(lr=0), r"lr=0; expected a finite number in \(0"),
    (lambda m: m["optimizer"].update(b2=1.0), r"b2=1.0; expected a finite number in "
                                              r"\[0.0, 1.0\)"),
    (lambda m: m["optimizer"].update(b1=-0.1), r"b1=-0.1; expected"),
    (lambda m: m["optimizer"].update(name="sgd"),
     r"name='sgd'; expected one of \['adam', 'factored_adam'\]"),
    (lambda m: m.pop("optimizer"), "optimizer: expected a JSON object"),
    (lambda m: m.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda m: m.pop("layers"), r"missing keys \['layers'\]"),
])
def test_metadata_that_contradicts_itself(mlp_bytes, fn, message):
  with pytest.raises(BundleError, match=message):
    bundle.decode(_reseal(mlp_bytes, _meta_fn(fn)))


def _set_tensor(name, key, value):
  def fn(header):
    next(e for e in header["tensors"] if e["name"] == name)[key] = value
  return fn


@pytest.mark.parametrize("fn,message", [
    (_set_tensor("params/BatchNorm_0/beta", "shape", [16, 2]),
     r"params/BatchNorm_0/beta: float16\[16, 2\] contradicts the metadata, which needs "
     r"float16\[32\]"),
    (_set_tensor("params/BatchNorm_0/beta", "shape", [16]), "nbytes=64 contradicts"),
    (_set_tensor("bits/BinaryDense_0/kernel", "shape", [32, 2]),
     r"bits/BinaryDense_0/kernel: uint64\[32, 2\] contradicts the metadata, which needs "
     r"uint64\[64, 1\]"),
    (_set_tensor("params/BatchNorm_0/beta", "dtype", "<f4"), "nbytes=64 contradicts"),
    (_set_tensor("params/BatchNorm_0/beta", "dtype", "<i4"), "dtype='<i4'; expected one of"),
    (_set_tensor("params/BatchNorm_0/beta", "offset", 1), "multiple of 64"),
    (_set_tensor("params/BatchNorm_0/beta", "offset", 10 ** 9), "inside the data section"),
    (_set_tensor("params/BatchNorm_0/beta", "name", "params/BatchNorm_0/gamma"),
     "unexpected.*gamma"),
    (_set_tensor("params/BatchNorm_0/beta", "name", "adam_m/BatchNorm_0/beta"), "unique"),
    (lambda h: h["tensors"].pop(0), "missing"),
    (lambda h: h.update(extra=1), "exactly the keys"),
])
def test_tensor_table_that_contradicts_the_metadata(mlp_bytes, fn, message):
  with pytest.raises(BundleError, match=message):
    bundle.decode(_reseal(mlp_bytes, fn))


def test_overlapping_tensors(mlp_bytes):
  def fn(h):
    a, b = h["tensors"][0], h["tensors"][1]
    b["offset"] = a["offset"]
  with pytest.raises(BundleError, match="overlap|contradicts|differ"):
    bundle.decode(_reseal(mlp_bytes, fn))


@pytest.mark.parametrize("name,change,message", [
    ("batch_stats/BatchNorm_0/scale", lambda a: a.__setitem__(0, 0.0), "must be > 0"),
    ("batch_stats/BatchNorm_0/mean", lambda a: a.__setitem__(3, np.nan), "NaN or infinite"),
    ("adam_v/BinaryDense_0/kernel", lambda a: a.__setitem__((0, 0), -1.0), "negative"),
    ("bits/BinaryDense_0/kernel", lambda a: a.__setitem__((0, 0), a[0, 0] | (1 << 40)),
     "padding bits"),
    ("bits/BinaryDense_1/kernel", lambda a: a.__setitem__((0, 0), a[0, 0] ^ 1),
     "differ from the signs of params/BinaryDense_1/kernel"),
])
def test_tensor_values(mlp, name, change, message):
  meta, tensors = mlp[0], {k: v.copy() for k, v in mlp[1].items()}
  change(tensors[name])
  with pytest.raises(BundleError, match=message):
    bundle.check(meta, tensors)
  with pytest.raises(BundleError, match=message):
    bundle.encode(meta, tensors)


def _factored(count):
  meta, tensors = bundles.convnet(optimizer="factored_adam")
  meta["optimizer"]["count"] = count
  return meta, {k: v + 1e-6 if k.startswith("fadam_v") else v for k, v in tensors.items()}


@pytest.mark.parametrize("name,change,message", [
    ("fadam_vrow/BinaryConv_1/kernel", lambda a: a.__setitem__((0, 0, 0), -1.0), "negative"),
    ("fadam_vcol/BinaryDense_0/kernel", lambda a: a.__setitem__(3, 0.0),
     "is 0 after 4 updates"),
    ("adam_v/BatchNorm_0/beta", lambda a: a.__setitem__(0, np.inf), "NaN or infinite"),
])
def test_factored_adam_state_values(name, change, message):
  meta, tensors = _factored(4)
  bundle.check(meta, tensors)
  change(tensors[name])
  with pytest.raises(BundleError, match=message):
    bundle.check(meta, tensors)


def test_factored_adam_state_shapes_and_dtypes():
  """A conv kernel (3, 3, 8, 16) keeps statistics of shape (3, 3, 8) (without its largest
  axis) and (3, 3, 16) (without the second largest); the betas' Adam moments are
  float32; an Adam-shaped state under factored_adam is refused."""
  meta, tensors = _factored(0)
  assert tensors["fadam_vrow/BinaryConv_2/kernel"].shape == (3, 3, 8)
  assert tensors["fadam_vcol/BinaryConv_2/kernel"].shape == (3, 3, 16)
  bundle.check(meta, tensors)
  bad = dict(tensors, **{"fadam_vrow/BinaryConv_2/kernel": np.zeros((3, 3, 16), np.float32)})
  with pytest.raises(BundleError, match=r"fadam_vrow/BinaryConv_2/kernel: float32\[3, 3, 16\] "
                                        r"contradicts the metadata, which needs float32\[3, 3, 8\]"):
    bundle.check(meta, bad)
  bad = dict(tensors, **{"adam_m/BatchNorm_0/beta": tensors["adam_m/BatchNorm_0/beta"].astype(
      np.float16)})
  with pytest.raises(BundleError, match="adam_m/BatchNorm_0/beta: float16"):
    bundle.check(meta, bad)
  _, adam_tensors = bundles.convnet()
  with pytest.raises(BundleError, match="missing .*fadam_"):
    bundle.check(meta, adam_tensors)


def test_header_not_json(mlp_bytes):
  hlen = struct.unpack_from("<I", mlp_bytes, 12)[0]
  data = bytearray(mlp_bytes[:-32])
  data[16] = ord("[")  # '{' -> '['
  data[17:16 + hlen] = b"\xff" * (hlen - 1)
  data = bytes(data)
  with pytest.raises(BundleError, match="not valid UTF-8 JSON"):
    bundle.decode(data + hashlib.sha256(data).digest())


def test_read_names_the_file(tmp_path, mlp_bytes):
  path = tmp_path / "broken.bnnpi"
  path.write_bytes(mlp_bytes[:100])
  with pytest.raises(BundleError, match=r"broken\.bnnpi: truncated"):
    bundle.read(path)
  assert issubclass(BundleError, ValueError)


def test_conv_geometry_is_checked():
  meta, tensors = bundles.convnet()
  meta = copy.deepcopy(meta)
  meta["layers"][0]["padding"] = [[1, 1], [0, 0]]
  with pytest.raises(BundleError, match=r"layer 0 \(conv\): out_shape=\[10, 10, 8\] "
                                        r"contradicts the shape \[12, 10, 8\]"):
    bundle.check(meta, tensors)
  meta["layers"][0]["padding"] = [[0, 0], [0, 0]]
  meta["layers"][0]["kernel"] = [13, 3]
  with pytest.raises(BundleError, match="larger than the padded input"):
    bundle.check(meta, tensors)
