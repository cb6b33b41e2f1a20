"""The kernels pi_backend's models call never write past their output: each output is
the front of a larger buffer filled with a canary value, which must survive. Shapes are
those of the models (MLP and CNV heads: n = 10 outputs; batches of 100 and 200) and a
few odd ones. A kernel writing past its output corrupts the heap of the process (seen
as a crash much later, elsewhere), so this is checked directly."""
import numpy as np
import pytest

from pi_backend import kernels as K

CANARY = 4096


def _guarded(shape, dtype):
  n = int(np.prod(shape))
  big = np.full(n + CANARY, 77, dtype)
  return big, big[:n].reshape(shape)


def _intact(big, shape):
  tail = big[int(np.prod(shape)):]
  assert np.all(tail == 77), f"{np.count_nonzero(tail != 77)} elements written past the output"


def _rand(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m,k,n", [(100, 512, 10), (200, 256, 10), (1, 512, 10),
                                   (200, 784, 256), (100, 256, 512), (7, 130, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_xnor_gemm(m, k, n, dtype):
  a, b = K.pack(_rand((m, k), 0)), K.pack_transposed(_rand((k, n), 1))
  big, out = _guarded((m, n), dtype)
  K.xnor_gemm(a, b, k, dtype=dtype, out=out)
  _intact(big, (m, n))
  want = K.unpack(a, k) @ K.unpack(b, k).T
  np.testing.assert_array_equal(out, want.astype(dtype))


@pytest.mark.parametrize("m,k,n", [(100, 512, 10), (200, 256, 10), (32, 784, 256), (5, 70, 3)])
def test_float_sign_products(m, k, n):
  x, w, dy = _rand((m, k), 2), _rand((k, n), 3), _rand((m, n), 4)
  big, out = _guarded((m, n), np.float32)
  K.sign_matmul_packed(x, K.pack(w), n, out=out)
  _intact(big, (m, n))
  big, out = _guarded((m, k), np.float32)
  K.matmul_sign_t_packed(dy, K.pack(w), out=out)
  _intact(big, (m, k))
  big, out = _guarded((k, n), np.float32)
  K.sign_t_matmul(K.pack(x), k, dy, out=out)
  _intact(big, (k, n))
  big, out = _guarded((k, n), np.float32)
  K.t_matmul(x, dy, out=out)
  _intact(big, (k, n))


@pytest.mark.parametrize("b,h,c,co,padding", [(100, 14, 64, 128, "VALID"), (1, 30, 64, 64, "VALID"),
                                              (20, 8, 16, 10, "SAME"), (3, 5, 3, 7, "SAME")])
def test_convs(b, h, c, co, padding):
  x, w = _rand((b, h, h, c), 5), _rand((3, 3, c, co), 6)
  oh = h - 2 if padding == "VALID" else h
  for dtype in (np.float32, np.int32):
    big, out = _guarded((b, oh, oh, co), dtype)
    K.binary_conv2d(K.pack(x), c, K.pack_conv_weights(w), (3, 3), 1, padding, dtype=dtype,
                    out=out)
    _intact(big, (b, oh, oh, co))
  big, out = _guarded((b, oh, oh, co), np.float32)
  K.sign_conv2d(x, K.pack(w), co, 1, padding, out=out)
  _intact(big, (b, oh, oh, co))


@pytest.mark.parametrize("kind", ["float32", "uint8", "packed"])
@pytest.mark.parametrize("b,k,n,rows", [(200, 784, 256, 64), (200, 256, 10, 768),
                                        (7, 130, 3, 64), (5, 70, 33, 128)])
def test_dense_weight_update(kind, b, k, n, rows):
  rng = np.random.default_rng(7)
  x = _rand((b, k), 8)
  x = K.pack(x) if kind == "packed" else (
      rng.integers(0, 256, (b, k), dtype=np.uint8) if kind == "uint8" else x)
  dy = _rand((b, n), 9)
  rb = min(rows, k)
  state = [_guarded((k, n), np.float16) for _ in range(3)]
  for _, a in state:
    a[...] = (_rand((k, n), 10) * 0.5).astype(np.float16)
  dws, dw = _guarded((rb, n), np.float32)
  gs, g = _guarded((rb, n), np.float16)
  xs, xsc = _guarded((b, rb), np.float32)
  K.dense_weight_update(x, dy, *(a for _, a in state), k=k, rows=rows,
                        c=np.float16(0.01), step=3, dw_scratch=dw, g_scratch=g,
                        x_scratch=xsc if kind == "uint8" else None)
  for big, _ in state:
    _intact(big, (k, n))
  _intact(dws, (rb, n))
  _intact(gs, (rb, n))
  _intact(xs, (b, rb))


@pytest.mark.parametrize("b,h,w,c,co,padding", [(1, 30, 30, 64, 64, "VALID"), (2, 7, 9, 3, 70, "SAME"),
                                                (3, 5, 4, 65, 1, ((1, 0), (2, 1))),
                                                (1, 3, 3, 256, 256, "VALID")])
@pytest.mark.parametrize("pool", [False, True])
def test_binary_conv2d_sign(b, h, w, c, co, padding, pool):
  """The fused inference call equals binary_conv2d, [max pool], y >= threshold, pack, and
  writes nothing past its output."""
  rng = np.random.default_rng(11)
  x, wt = _rand((b, h, w, c), 9), _rand((3, 3, c, co), 10)
  xp, wp = K.pack(x), K.pack_conv_weights(wt)
  y = K.binary_conv2d(xp, c, wp, (3, 3), 1, padding, dtype=np.int32)
  t = rng.integers(-12, 13, co).astype(np.int32) * 2 + rng.integers(0, 2, co).astype(np.int32)
  if pool:
    oh, ow = y.shape[1] // 2, y.shape[2] // 2
    y = y[:, :oh * 2, :ow * 2].reshape(b, oh, 2, ow, 2, co).max(axis=(2, 4))
  want = K.pack(np.ascontiguousarray(y - t, np.float32))
  big, out = _guarded(want.shape, np.uint64)
  got = K.binary_conv2d_sign(xp, c, wp, t, (3, 3), 1, padding, pool=pool, out=out)
  _intact(big, want.shape)
  assert got is out
  np.testing.assert_array_equal(out, want)
  np.testing.assert_array_equal(K.binary_conv2d_sign(xp, c, wp, t, (3, 3), 1, padding, pool=pool),
                                want)


def test_binary_conv2d_sign_checks():
  xp, wp = K.pack(_rand((1, 4, 4, 8), 1)), K.pack_conv_weights(_rand((3, 3, 8, 5), 2))
  t = np.zeros(5, np.int32)
  with pytest.raises(TypeError):
    K.binary_conv2d_sign(xp, 8, wp, t.astype(np.float32), (3, 3))
  with pytest.raises(ValueError):
    K.binary_conv2d_sign(xp, 8, wp, np.zeros(4, np.int32), (3, 3))
  with pytest.raises(TypeError):
    K.binary_conv2d_sign(xp, 8, wp, t, (3, 3), pool=1)
  with pytest.raises(ValueError):
    K.binary_conv2d_sign(xp, 8, wp, t, (3, 3), out=np.zeros((1, 4, 4, 2), np.uint64))
