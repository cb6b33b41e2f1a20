"""Fuzzing the bundle reader: whatever the bytes, bundle.decode either returns a bundle
that a Model runs (inference and one training step) or raises BundleError -- never any
other exception, never a crash.

Three kinds of damage to valid bundles (an MLP and a small conv net, with Adam or
factored_adam state):
  - raw: byte flips, truncations, insertions, deletions (the checksum or the length
    catches nearly all);
  - resealed header: the same done to the JSON header, then lengths and checksum
    recomputed, so that the schema and graph checks are what stands in the way;
  - resealed values: a metadata field replaced by an arbitrary JSON value, or tensor
    bytes changed, checksum recomputed.
Bounded by the "ci" hypothesis profile (tests/conftest.py): a few seconds.
"""
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi_backend import bundle
from pi_backend.errors import BundleError
from pi_backend.model import Model
from tests.pi_backend import bundles
from tests.pi_backend.test_bundle import _reseal

VALID = {
    "mlp": bundle.encode(*bundles.mlp(hidden=(16,), seed=1)),
    "conv": bundle.encode(*bundles.convnet(input_shape=(6, 6, 2), convs=((4, True),),
                                           hidden=(), seed=2)),
    "conv_factored_adam": bundle.encode(*bundles.convnet(
        input_shape=(6, 6, 2), convs=((4, True),), hidden=(), seed=3, optimizer="factored_adam")),
}
FAST = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _decodes_or_bundle_error(data: bytes) -> None:
  try:
    b = bundle.decode(data)
  except BundleError as e:
    assert str(e)  # a message
    return
  model = Model(b)
  n = int(np.prod(b.graph.input_shape))
  if n > 100_000:
    return
  x = np.random.default_rng(0).integers(0, 256, (2, n), dtype=np.uint8)
  with np.errstate(all="ignore"):
    logits = model.logits(x)
    assert logits.shape == (2, b.graph.num_classes)
    if b.graph.trainable:
      model.train_step(x, np.array([0, b.graph.num_classes - 1]))


@st.composite
def _raw_damage(draw, data: bytes):
  out = bytearray(data)
  for _ in range(draw(st.integers(1, 4))):
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if not out:
      break
    i = draw(st.integers(0, len(out) - 1))
    if kind == "flip":
      out[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
      del out[i:]
    elif kind == "insert":
      out[i:i] = draw(st.binary(min_size=1, max_size=8))
    else:
      del out[i:i + draw(st.integers(1, 8))]
  return bytes(out)


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_raw_damage(which, data):
  _decodes_or_bundle_error(data.draw(_raw_damage(VALID[which])))


def _header_bytes(data: bytes) -> bytes:
  hlen = struct.unpack_from("<I", data, 12)[0]
  return data[16:16 + hlen]


def _with_header(data: bytes, raw_header: bytes) -> bytes:
  """data with its header replaced by raw bytes (maybe not JSON), resealed."""
  hlen = struct.unpack_from("<I", data, 12)[0]
  start = -(-(16 + hlen) // 64) * 64
  body = data[start:-32]
  out = bytearray(data[:12]) + struct.pack("<I", len(raw_header)) + raw_header
  out += b"\0" * (-(-len(out) // 64) * 64 - len(out)) + body
  import hashlib  # pylint: disable=import-outside-toplevel
  return bytes(out) + hashlib.sha256(out).digest()


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_resealed_header_bytes(which, data):
  header = _header_bytes(VALID[which])
  _decodes_or_bundle_error(_with_header(VALID[which], data.draw(_raw_damage(header))))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["dense", "conv", "sign", "float16()", "VALID"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(obj, prefix=()):
  yield prefix
  if isinstance(obj, dict):
    for k, v in obj.items():
      yield from _paths(v, prefix + (k,))
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      yield from _paths(v, prefix + (i,))


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_resealed_json_values(which, data):
  header = json.loads(_header_bytes(VALID[which]))
  paths = [p for p in _paths(header) if p]
  for _ in range(data.draw(st.integers(1, 3))):
    path = data.draw(st.sampled_from(paths))
    parent = header
    try:
      for key in path[:-1]:
        parent = parent[key]
      value = data.draw(st.one_of(_JSON, st.just(None)))
      if data.draw(st.booleans()) and isinstance(parent, (dict, list)):
        if isinstance(parent, dict):
          parent.pop(path[-1], None)
        elif isinstance(path[-1], int) and path[-1] < len(parent):
          parent.pop(path[-1])
      else:
        parent[path[-1]] = value
    except (KeyError, IndexError, TypeError):
      continue  # an earlier change removed this path
  raw = json.dumps(header).encode()
  _decodes_or_bundle_error(_with_header(VALID[which], raw))


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_resealed_tensor_bytes(which, data):
  valid = VALID[which]
  hlen = struct.unpack_from("<I", valid, 12)[0]
  start = -(-(16 + hlen) // 64) * 64
  body = bytearray(valid[start:-32])
  for _ in range(data.draw(st.integers(1, 6))):
    i = data.draw(st.integers(0, len(body) - 1))
    body[i] ^= data.draw(st.integers(1, 255))
  out = bytes(valid[:start]) + bytes(body)
  import hashlib  # pylint: disable=import-outside-toplevel
  _decodes_or_bundle_error(out + hashlib.sha256(out).digest())


@pytest.mark.parametrize("which", sorted(VALID))
def test_the_valid_bundles_run(which):
  _decodes_or_bundle_error(VALID[which])
  assert _reseal(VALID[which]) == VALID[which] or bundle.decode(_reseal(VALID[which]))
