"""kernels.dense_weight_update (one C call per dense layer: the weight-gradient GEMM
over blocks of rows, the sign_scaled gradient and the float16 Adam step) gives the same
bits as the calls it fuses, made one after the other, with every float implementation;
and the training step that uses it gives the same state as the block-by-block path."""
import numpy as np
import pytest

from pi_backend import kernels as K


def _unfused(x, dy, w, m, v, k, rows, c, step):
  for r0 in range(0, k, rows):
    r1 = min(k, r0 + rows)
    if x.dtype == np.uint64:
      dw = K.sign_t_matmul(np.ascontiguousarray(x[:, r0 // 64:K.words(r1)]), r1 - r0, dy)
    elif x.dtype == np.uint8:  # as layers.Batch converts pixels
      xc = x[:, r0:r1].astype(np.float32)
      xc *= np.float32(1 / 127.5)
      xc -= np.float32(1)
      dw = K.t_matmul(xc, dy)
    else:
      dw = K.t_matmul(np.ascontiguousarray(x[:, r0:r1]), dy)
    g = K.sign_scaled_grad(dw, w[r0:r1], c)
    K.adam_f16(w[r0:r1], m[r0:r1], v[r0:r1], g, step=step, lr=1e-3, b1=0.9, b2=0.999,
               eps=1e-8)


def _case(rng, kind, b, k, n):
  if kind == "packed":
    x = K.pack(rng.standard_normal((b, k)).astype(np.float32))
  elif kind == "uint8":
    x = rng.integers(0, 256, (b, k), dtype=np.uint8)
  else:
    x = rng.standard_normal((b, k)).astype(np.float32)
  dy = rng.standard_normal((b, n)).astype(np.float32)
  w = (rng.standard_normal((k, n)) * 0.8).astype(np.float16)  # some |w| > 1: zero gradient
  m = (rng.standard_normal((k, n)) * 0.01).astype(np.float16)
  v = np.abs(rng.standard_normal((k, n)) * 0.01).astype(np.float16)
  return x, dy, w, m, v


@pytest.fixture(params=K.float_impls())
def float_impl(request):
  before = K.float_impl()
  K.set_float_impl(request.param)
  yield request.param
  K.set_float_impl(before)


@pytest.mark.parametrize("kind", ["float32", "uint8", "packed"])
def test_fused_matches_unfused(float_impl, kind):
  rng = np.random.default_rng(hash((float_impl, kind)) % 2**32)
  shapes = [(200, 784, 256, 64), (200, 256, 10, 768), (1, 1, 1, 64), (0, 70, 3, 64),
            (7, 130, 33, 64), (33, 65, 17, 128), (5, 300, 70, 192)]
  for _ in range(12):
    shapes.append((int(rng.integers(0, 40)), int(rng.integers(1, 300)),
                   int(rng.integers(1, 70)), int(rng.integers(1, 4)) * 64))
  for b, k, n, rows in shapes:
    if kind != "packed" and rng.integers(0, 2):
      rows = int(rng.integers(1, 100))  # any block size for unpacked x
    x, dy, w, m, v = _case(rng, kind, b, k, n)
    c = np.float16(np.float32(1 / np.sqrt(k * n)))
    step = int(rng.integers(1, 50))
    fused, ref = [a.copy() for a in (w, m, v)], [a.copy() for a in (w, m, v)]
    K.dense_weight_update(x, dy, *fused, k=k, rows=rows, c=c, step=step, lr=1e-3)
    _unfused(x, dy, *ref, k, rows, c, step)
    for name, got, want in zip("wmv", fused, ref):
      np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16),
                                    err_msg=f"{name} b={b} k={k} n={n} rows={rows}")


def test_fused_checks_arguments():
  rng = np.random.default_rng(0)
  x, dy, w, m, v = _case(rng, "packed", 8, 100, 5)
  kw = dict(k=100, rows=64, c=np.float16(0.01), step=1)
  with pytest.raises(ValueError, match="multiple of 64"):
    K.dense_weight_update(x, dy, w, m, v, **{**kw, "rows": 32})
  with pytest.raises(TypeError, match="dy has dtype"):
    K.dense_weight_update(x, dy.astype(np.float64), w, m, v, **kw)
  with pytest.raises(ValueError, match="C-contiguous"):
    K.dense_weight_update(x, dy, np.asfortranarray(w), m, v, **kw)
  with pytest.raises(ValueError, match="overlap"):
    K.dense_weight_update(x, dy, w, w, v, **kw)
  with pytest.raises(ValueError, match="read-only"):
    w.flags.writeable = False
    K.dense_weight_update(x, dy, w, m, v, **kw)
  w.flags.writeable = True
  with pytest.raises(ValueError, match="rounds to a finite float16 > 0"):
    K.dense_weight_update(x, dy, w, m, v, **{**kw, "c": np.float16(-0.5)})
  with pytest.raises(ValueError, match="step"):
    K.dense_weight_update(x, dy, w, m, v, **{**kw, "step": 0})
  with pytest.raises(ValueError, match="x has shape"):
    K.dense_weight_update(x[:, :1].copy(), dy, w, m, v, **kw)
  with pytest.raises(ValueError, match="dw_scratch has shape"):
    K.dense_weight_update(x, dy, w, m, v, **kw, dw_scratch=np.empty((10, 5), np.float32))


@pytest.mark.parametrize("pixels", [True, False])
def test_training_step_same_state_as_block_path(monkeypatch, pixels):
  """Model.train_step with the fused call and with the block-by-block Python path."""
  from pi_backend import bundle as bundle_lib
  from pi_backend import layers as L
  from pi_backend.model import Model
  from tests.pi_backend import bundles

  meta, tensors = bundles.mlp(input_shape=(10, 13, 1), hidden=(200, 70), seed=5)
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (24, 10, 13, 1), dtype=np.uint8)
  if not pixels:
    images = (images.astype(np.float32) / np.float32(127.5) - 1).astype(np.float32)
  labels = rng.integers(0, 10, 24)
  calls = []
  fused_update = L.Dense._fused_update

  def counting(self, *a):
    done = fused_update(self, *a)
    calls.append(done)
    return done

  states = []
  for fused in (True, False):
    monkeypatch.setattr(L.Dense, "_fused_update",
                        counting if fused else (lambda *a: False))
    model = Model(bundle_lib.check(meta, {k: v.copy() for k, v in tensors.items()}))
    for _ in range(2):
      model.train_step(images, labels)
    states.append(model.to_bundle()[1])
  assert calls and all(calls)
  assert states[0].keys() == states[1].keys()
  for key in states[0]:
    np.testing.assert_array_equal(np.asarray(states[0][key]).view(np.uint8),
                                  np.asarray(states[1][key]).view(np.uint8), err_msg=key)


def test_sign_scaled_grad_every_float_impl(float_impl):
  """The C sign_scaled gradient (vectorised on x86) equals the NumPy one (quant.py's
  fallback) bit for bit, specials included (NaN, +-0, +-inf, |w| around 1)."""
  rng = np.random.default_rng(11)
  for size in (1, 15, 16, 17, 33, 1000):
    dw = rng.standard_normal(size).astype(np.float32)
    dw[rng.integers(0, size, size // 4 + 1)] = rng.choice(
        np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32),
        size // 4 + 1)
    w = rng.choice(np.array([1.0, -1.0, 0.999, -1.001, 65504, -np.inf, np.nan, 0.0, -0.0,
                             0.5, 1.5], np.float16), size)
    for c in (np.float16(0.002), np.float16(6e-8), np.float16(1.0), np.float16(65504)):
      got = K.sign_scaled_grad(dw, w, c)
      want = (~(dw >= 0)).view(np.uint8).astype(np.uint16) << np.uint16(15)
      want |= c.view(np.uint16)
      want *= (w.view(np.uint16) & np.uint16(0x7FFF)) <= np.uint16(0x3C00)
      np.testing.assert_array_equal(got.view(np.uint16), want, err_msg=f"size={size}")


def test_pack_f16_every_float_impl(float_impl):
  """pack_f16 / pack_f16_transposed (vectorised on x86) on every float16 bit pattern:
  bit = (w >= 0) with -0.0 -> 1 and NaN -> 0, as signs.nonnegative."""
  from pi_backend import signs
  allbits = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
  rng = np.random.default_rng(5)
  for shape in ((1024, 64), (512, 128), (7, 200), (130, 70), (64, 1)):
    w = rng.permutation(np.resize(allbits, shape[0] * shape[1])).reshape(shape)
    want = K.from_uint8(np.packbits(signs.nonnegative(w), axis=-1, bitorder="little"), shape[1])
    np.testing.assert_array_equal(K.pack_f16(w), want)
    want_t = K.from_uint8(np.ascontiguousarray(
        np.packbits(signs.nonnegative(w).T, axis=-1, bitorder="little")), shape[0])
    np.testing.assert_array_equal(K.pack_f16_transposed(w), want_t)
