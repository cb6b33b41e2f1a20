"""Every wrapper checks its arguments before calling C and raises a clear error that
names the argument, what it got and what was expected, instead of crashing."""
import numpy as np
import pytest

from pi_backend import kernels as K

f32, u64 = np.float32, np.uint64


def _x(*shape):
  return np.ones(shape, f32)


def test_wrong_type_and_dtype():
  with pytest.raises(TypeError, match=r"pack: x must be a numpy.ndarray of dtype float32; got list"):
    K.pack([1.0, -1.0])
  with pytest.raises(TypeError, match=r"pack: x has dtype float64; expected float32"):
    K.pack(np.ones(3))
  with pytest.raises(TypeError, match=r"pack: x has dtype >f4; expected float32"):
    K.pack(np.ones(3, ">f4"))
  with pytest.raises(TypeError, match=r"xnor_gemm: b has dtype int64; expected uint64"):
    K.xnor_gemm(np.zeros((2, 1), u64), np.zeros((2, 1), np.int64), 5)
  with pytest.raises(TypeError, match=r"sign_matmul: w has dtype float16; expected float32"):
    K.sign_matmul(_x(2, 3), np.ones((3, 4), np.float16))
  with pytest.raises(TypeError, match=r"adam_f16: w has dtype float32; expected float16"):
    K.adam_f16(_x(3), np.zeros(3, np.float16), np.zeros(3, np.float16), _x(3), step=1)
  with pytest.raises(TypeError, match=r"adam_f16: g has dtype float64; expected float32 or float16"):
    h = np.zeros(3, np.float16)
    K.adam_f16(h, h.copy(), h.copy(), np.ones(3), step=1)
  with pytest.raises(TypeError, match=r"xnor_gemm: dtype=float64; expected int32 or float32"):
    K.xnor_gemm(np.zeros((2, 1), u64), np.zeros((2, 1), u64), 5, dtype=np.float64)


def test_wrong_shape():
  with pytest.raises(ValueError, match=r"xnor_gemm: b has shape \(2, 2\); expected \(\*, 1\)"):
    K.xnor_gemm(np.zeros((2, 1), u64), np.zeros((2, 2), u64), 5)
  with pytest.raises(ValueError, match=r"sign_matmul: w has shape \(4, 4\); expected \(3, \*\)"):
    K.sign_matmul(_x(2, 3), _x(4, 4))
  with pytest.raises(ValueError, match=r"unpack: packed has shape \(3, 1\); a last axis of n=65"):
    K.unpack(np.zeros((3, 1), u64), 65)
  with pytest.raises(ValueError, match=r"pack: x has shape \(\); expected at least 1 axes"):
    K.pack(np.array(1.0, f32))
  with pytest.raises(ValueError, match=r"batch_norm_l1: x has shape \(5,\); expected at least 2"):
    K.batch_norm_l1(_x(5), _x(5))
  with pytest.raises(ValueError, match=r"batch_norm_l1: beta has shape \(3,\); expected \(4,\)"):
    K.batch_norm_l1(_x(2, 4), _x(3))
  with pytest.raises(ValueError, match=r"batch_norm_l1_backward: sign_bits has shape"):
    K.batch_norm_l1_backward(_x(2, 4), np.zeros((2, 2), u64), np.ones(4, np.float16),
                             np.ones(4, np.float16))
  with pytest.raises(ValueError, match=r"max_pool2x2: x has shape \(1, 1, 4, 3\); expected"):
    K.max_pool2x2(_x(1, 1, 4, 3))
  with pytest.raises(ValueError, match=r"max_pool2x2_backward: mask has shape"):
    K.max_pool2x2_backward(_x(1, 1, 1, 3), np.zeros((1, 2, 2, 2), u64), (1, 2, 2, 3))
  with pytest.raises(ValueError, match=r"binary_conv2d: w_packed has shape \(4, 1\); expected \(\*, 9\)"):
    K.binary_conv2d(np.zeros((1, 5, 5, 1), u64), 3, np.zeros((4, 1), u64), (3, 3))
  with pytest.raises(ValueError, match=r"conv2d_backward_input: dy has shape \(1, 4, 4, 2\); an input of 5x5"):
    K.conv2d_backward_input(_x(1, 4, 4, 2), K.pack(_x(3, 3, 1, 2)), (5, 5))
  with pytest.raises(ValueError, match=r"conv2d_backward_weight: x is packed \(uint64\); pass c_in"):
    K.conv2d_backward_weight(np.zeros((1, 5, 5, 1), u64), _x(1, 5, 5, 2), (3, 3))
  with pytest.raises(ValueError, match=r"po2: random_bits has shape \(2,\); expected \(3,\)"):
    K.po2(_x(3), random_bits=np.zeros(2, np.uint32))


def test_not_contiguous():
  x = _x(4, 6)
  with pytest.raises(ValueError, match=r"pack: x \(shape \(4, 3\), strides \(24, 8\)\) is not C-contiguous"):
    K.pack(x[:, ::2])
  with pytest.raises(ValueError, match=r"sign_matmul: x .* is not C-contiguous"):
    K.sign_matmul(x.T, _x(4, 2))
  with pytest.raises(ValueError, match=r"batch_norm_l1: x .* is not C-contiguous"):
    K.batch_norm_l1(np.asfortranarray(_x(3, 4)), _x(4))
  w = np.zeros((4, 2), np.float16)
  with pytest.raises(ValueError, match=r"adam_f16: m .* is not C-contiguous"):
    K.adam_f16(w[:, 0].copy(), w[:, 0], w[:, 1].copy(), _x(4), step=1)


def test_outputs_read_only_or_overlapping():
  x = _x(3, 70)
  out = np.empty((3, 2), u64)
  out.flags.writeable = False
  with pytest.raises(ValueError, match=r"pack: out is read-only"):
    K.pack(x, out=out)
  with pytest.raises(ValueError, match=r"pack: out has shape \(3, 3\); expected \(3, 2\)"):
    K.pack(x, out=np.empty((3, 3), u64))
  buf = np.zeros(12, f32)
  with pytest.raises(ValueError, match=r"sign_matmul: out overlaps the input x"):
    K.sign_matmul(buf[:6].reshape(2, 3), _x(3, 2), out=buf[2:6].reshape(2, 2))
  # byte ranges: sharing only the input's last element is an overlap, adjacency is not
  with pytest.raises(ValueError, match=r"sign_matmul: out overlaps the input x"):
    K.sign_matmul(buf[:6].reshape(2, 3), _x(3, 2), out=buf[5:9].reshape(2, 2))
  K.sign_matmul(buf[:6].reshape(2, 3), _x(3, 2), out=buf[6:10].reshape(2, 2))
  h = np.zeros(4, np.float16)
  with pytest.raises(ValueError, match=r"adam_f16: w and m overlap"):
    K.adam_f16(h, h, np.zeros(4, np.float16), _x(4), step=1)
  g = _x(6)
  with pytest.raises(ValueError, match=r"po2: out partly overlaps g"):
    K.po2(g[:3], out=g[1:4])
  rm = _x(4)
  rm.flags.writeable = False
  with pytest.raises(ValueError, match=r"batch_norm_l1: running_mean is read-only"):
    K.batch_norm_l1(_x(2, 4), _x(4), running_mean=rm, running_scale=_x(4))


def test_overlap_of_each_input():
  """The output is checked against every input, on each of _out's paths: two writable
  inputs (inline), a read-only or empty one (addresses taken the slow way), three."""
  buf = np.zeros(16, f32)
  with pytest.raises(ValueError, match=r"sign_matmul: out overlaps the input w"):
    K.sign_matmul(_x(2, 3), buf[:6].reshape(3, 2), out=buf[4:8].reshape(2, 2))
  read_only = buf[:6].reshape(2, 3)
  read_only.flags.writeable = False
  with pytest.raises(ValueError, match=r"sign_matmul: out overlaps the input x"):
    K.sign_matmul(read_only, _x(3, 2), out=buf[4:8].reshape(2, 2))
  K.sign_matmul(read_only, _x(3, 2), out=buf[6:10].reshape(2, 2))
  # k = 0: empty inputs, one of them a view inside out, overlap nothing
  out = np.full((2, 4), 7, np.int32)
  assert K.xnor_gemm(out.view(u64)[:, 1:1], np.zeros((4, 0), u64), 0, out=out) is out
  np.testing.assert_array_equal(out, 0)
  xp, wp = K.pack(_x(1, 3, 3, 8)), K.pack_conv_weights(_x(3, 3, 8, 4))
  out = np.zeros((1, 3, 3, 1), u64)
  with pytest.raises(ValueError, match=r"binary_conv2d_sign: out overlaps the input threshold"):
    K.binary_conv2d_sign(xp, 8, wp, out.view(np.int32).reshape(-1)[:4], (3, 3), out=out)


def test_xnor_gemm_dtype_spellings():
  """Every spelling of the two output dtypes picks its kernel (the fast path tells them
  apart by identity)."""
  a, b = K.pack(_x(2, 70)), K.pack(-_x(3, 70))
  for dtype in (np.float32, "float32", np.dtype("f4"), np.dtype(f32, metadata={"u": 1})):
    y = K.xnor_gemm(a, b, 70, dtype=dtype)
    assert y.dtype == f32 and (y == -70).all()
  for dtype in (np.int32, "int32", np.dtype("i4"), np.dtype(np.int32, metadata={"u": 1})):
    y = K.xnor_gemm(a, b, 70, dtype=dtype, out=np.empty((2, 3), np.int32))
    assert y.dtype == np.int32 and (y == -70).all()
  with pytest.raises(TypeError, match=r"xnor_gemm: dtype=>f4; expected int32 or float32"):
    K.xnor_gemm(a, b, 70, dtype=">f4")


def test_xnor_gemm_out_and_inputs(monkeypatch):
  """xnor_gemm checks a given out inline (dtype, shape, C-contiguous, aligned, writable,
  no overlap with a or b), and anything it does not pass goes through _out, which names
  the fault; read-only inputs take that way too, and are accepted. A C error code
  raises on the inline call as through _call."""
  a, b = K.pack(_x(4, 70)), K.pack(-_x(3, 70))
  want = np.full((4, 3), -70, np.int32)
  read_only = np.array(a)
  read_only.flags.writeable = False
  np.testing.assert_array_equal(K.xnor_gemm(read_only, b, 70, out=np.empty((4, 3), np.int32)),
                                want)
  with pytest.raises(ValueError, match=r"xnor_gemm: a .* is not C-contiguous"):
    K.xnor_gemm(np.zeros((4, 4), u64)[:, ::2], b[:, :2].copy(), 70)
  with pytest.raises(TypeError, match=r"xnor_gemm: out has dtype int32; expected float32"):
    K.xnor_gemm(a, b, 70, dtype=np.float32, out=np.empty((4, 3), np.int32))
  with pytest.raises(ValueError, match=r"xnor_gemm: out has shape \(3, 4\); expected \(4, 3\)"):
    K.xnor_gemm(a, b, 70, out=np.empty((3, 4), np.int32))
  with pytest.raises(ValueError, match=r"xnor_gemm: out .* is not C-contiguous"):
    K.xnor_gemm(a, b, 70, out=np.empty((3, 4), np.int32).T)
  unaligned = np.frombuffer(bytearray(4 * 12 + 1), np.int32, 12, offset=1).reshape(4, 3)
  with pytest.raises(ValueError, match=r"xnor_gemm: out is not aligned"):
    K.xnor_gemm(a, b, 70, out=unaligned)
  out = np.empty((4, 3), np.int32)
  out.flags.writeable = False
  with pytest.raises(ValueError, match=r"xnor_gemm: out is read-only"):
    K.xnor_gemm(a, b, 70, out=out)
  buf = np.zeros(16, u64)  # a (4 x 2 words), then b (3 x 2): out overlaps one, the other
  a2, b2 = buf[:8].reshape(4, 2), buf[8:14].reshape(3, 2)
  a2[:], b2[:] = a, b
  with pytest.raises(ValueError, match=r"xnor_gemm: out overlaps the input a"):
    K.xnor_gemm(a2, b2, 70, out=buf.view(np.int32)[14:26].reshape(4, 3))
  with pytest.raises(ValueError, match=r"xnor_gemm: out overlaps the input b"):
    K.xnor_gemm(a2, b2, 70, out=buf.view(np.int32)[20:32].reshape(4, 3))
  out = buf.view(np.int32)[:12].reshape(4, 3)
  with pytest.raises(ValueError, match=r"xnor_gemm: out overlaps the input a"):
    K.xnor_gemm(a2, b2, 70, out=out)
  K.xnor_gemm(a, b, 70)  # the C function is looked up and kept
  monkeypatch.setitem(K._FUNCS, "bnn_xnor_gemm_i32", lambda *args: -4)
  with pytest.raises(MemoryError, match=r"xnor_gemm: bnn_xnor_gemm_i32 could not allocate"):
    K.xnor_gemm(a, b, 70)
  monkeypatch.setitem(K._FUNCS, "bnn_xnor_gemm_i32", lambda *args: -1)
  with pytest.raises(ValueError, match=r"xnor_gemm: the C kernel bnn_xnor_gemm_i32 rejected"):
    K.xnor_gemm(a, b, 70)


def test_bad_numbers():
  with pytest.raises(TypeError, match=r"unpack: n=True must be an int, not a bool"):
    K.unpack(np.zeros((1, 1), u64), True)
  with pytest.raises(TypeError, match=r"unpack: n=2.0 must be an int"):
    K.unpack(np.zeros((1, 1), u64), 2.0)
  with pytest.raises(ValueError, match=r"xnor_gemm: k=-1; expected an int in \[0, 2147483647\]"):
    K.xnor_gemm(np.zeros((1, 1), u64), np.zeros((1, 1), u64), -1)
  with pytest.raises(ValueError, match=r"po2: bits=9; expected an int in \[1, 8\]"):
    K.po2(_x(3), bits=9)
  with pytest.raises(ValueError, match=r"po2: zeros='none'"):
    K.po2(_x(3), zeros="none")
  with pytest.raises(ValueError, match=r"batch_norm_l1: eps=-1.0; expected a finite number"):
    K.batch_norm_l1(_x(2, 3), _x(3), eps=-1)
  with pytest.raises(ValueError, match=r"batch_norm_l1: momentum=1.5"):
    K.batch_norm_l1(_x(2, 3), _x(3), momentum=1.5)
  with pytest.raises(ValueError, match=r"sign_ste: clip=nan"):
    K.sign_ste(_x(3), clip=float("nan"))
  h = np.zeros(3, np.float16)
  with pytest.raises(ValueError, match=r"adam_f16: step=0; expected an int in \[1, inf\]"):
    K.adam_f16(h, h.copy(), h.copy(), _x(3), step=0)
  with pytest.raises(ValueError, match=r"adam_f16: b1=1.0; expected a finite number in \[0.0, 1.0\)"):
    K.adam_f16(h, h.copy(), h.copy(), _x(3), step=1, b1=1.0)
  with pytest.raises(ValueError, match=r"binary_conv2d: strides=0; expected an int in \[1, inf\]"):
    K.binary_conv2d(np.zeros((1, 5, 5, 1), u64), 3, np.zeros((2, 9), u64), (3, 3), strides=0)
  with pytest.raises(ValueError, match=r"binary_conv2d: kernel height 3 is larger than the padded"):
    K.binary_conv2d(np.zeros((1, 2, 5, 1), u64), 3, np.zeros((2, 9), u64), (3, 3),
                    padding="VALID")
  with pytest.raises(TypeError, match=r"dy_float16=1; expected a bool"):
    K.batch_norm_l1_backward(_x(2, 4), np.zeros((2, 1), u64), np.ones(4, np.float16),
                             np.ones(4, np.float16), dy_float16=1)


def test_errors_reported_by_c_become_exceptions():
  w = K.pack_conv_weights(_x(3, 3, 3, 2))
  w[0, 0] |= np.uint64(1) << np.uint64(10)  # a padding bit (c_in = 3)
  with pytest.raises(ValueError, match=r"binary_conv2d: the C kernel bnn_binary_conv2d_f32 "
                                        r"rejected its arguments: packed weights have nonzero "
                                        r"padding bits"):
    K.binary_conv2d(np.zeros((1, 4, 4, 1), u64), 3, w, (3, 3))


@pytest.mark.parametrize("c,error,message", [
    (None, TypeError, r"c=None must be a real number; got NoneType"),
    ("0.1", TypeError, r"c='0.1' must be a real number"),
    (float("nan"), ValueError, r"c=nan; expected a finite number in \(0.0, inf\]"),
    (float("inf"), ValueError, r"c=inf; expected a finite number"),
    (np.float16(np.inf), ValueError, r"c=.* is inf as a float16; expected a number that rounds to "
                                     r"a finite float16 > 0"),
    (1e6, ValueError, r"c=1000000.0 is inf as a float16; expected"),
    (0.0, ValueError, r"c=0.0; expected a finite number in \(0.0, inf\]"),
    (np.float16(0.0), ValueError, r"c=.* is 0.0 as a float16"),
    (1e-9, ValueError, r"c=1e-09 is 0.0 as a float16"),
    (np.float16(-0.5), ValueError, r"c=.* is -0.5 as a float16"),
])
def test_sign_scaled_scale_c_is_checked(c, error, message):
  """A bad scale would make every weight gradient NaN, infinite or 0 without an error."""
  dw, w = _x(2, 3), np.zeros((2, 3), np.float16)
  with pytest.raises(error, match=rf"sign_scaled_grad: {message}"):
    K.sign_scaled_grad(dw, w, c)
  x, dy = _x(4, 2), _x(4, 3)
  state = [np.zeros((2, 3), np.float16) for _ in range(3)]
  with pytest.raises(error, match=rf"dense_weight_update: {message}"):
    K.dense_weight_update(x, dy, *state, k=2, rows=2, c=c, step=1)
  assert K.sign_scaled_grad(dw, w, 0.25)[0, 0] == np.float16(0.25)  # a Python float is fine


def test_every_written_array_is_checked_against_every_other():
  x, beta = _x(2, 4), _x(4)
  r = np.ones(4, f32)
  with pytest.raises(ValueError, match=r"batch_norm_l1: running_mean and running_scale "
                                       r"overlap; expected separate arrays"):
    K.batch_norm_l1(x, beta, running_mean=r, running_scale=r)
  buf = np.ones(6, f32)
  with pytest.raises(ValueError, match=r"running_mean and running_scale overlap"):
    K.batch_norm_l1(x, beta, running_mean=buf[:4], running_scale=buf[2:])
  with pytest.raises(ValueError, match=r"x and running_scale overlap"):
    K.batch_norm_l1(x, beta, running_mean=_x(4), running_scale=x[1])
  bits = np.zeros(3, np.uint32)
  with pytest.raises(ValueError, match=r"po2: out overlaps the input random_bits"):
    K.po2(_x(3), random_bits=bits, out=bits.view(f32))


def test_arguments_of_the_wrong_type_are_named():
  a = np.zeros((2, 1), u64)
  with pytest.raises(TypeError, match=r"xnor_gemm: dtype=\[1\]; expected int32 or float32"):
    K.xnor_gemm(a, a, 5, dtype=[1])
  with pytest.raises(TypeError, match=r"binary_conv2d: dtype=\[1\]; expected int32 or float32"):
    K.binary_conv2d(np.zeros((1, 5, 5, 1), u64), 3, np.zeros((2, 9), u64), (3, 3), dtype=[1])
  with pytest.raises(TypeError, match=r"set_popcount_impl: impl=\['portable'\] must be a str"):
    K.set_popcount_impl(["portable"])
  with pytest.raises(TypeError, match=r"set_float_impl: impl=\['portable'\] must be a str"):
    K.set_float_impl(["portable"])
  w, m, g = (np.zeros((4, 6), np.float16) for _ in range(3))
  rows, cols = np.ones(6, f32), np.ones(4, f32)
  kw = dict(b1=0.9, correction=0.1, lr=1e-3)
  for name, value, message in (("lr", "x", r"lr='x' must be a real number; got str"),
                               ("b1", None, r"b1=None must be a real number; got NoneType"),
                               ("correction", float("nan"), r"correction=nan; expected a finite "
                                                            r"number in \(0.0, inf\]")):
    with pytest.raises((TypeError, ValueError), match=rf"factored_adam_f16: {message}"):
      K.factored_adam_f16(w, m, g, rows, True, cols, False, **{**kw, name: value})
  with pytest.raises(TypeError, match=r"factored_adam_f16: f1_on_j='False' must be a bool"):
    K.factored_adam_f16(w, m, g, rows, "False", cols, False, **kw)
  with pytest.raises(TypeError, match=r"factored_adam_f16: f2_on_j=0 must be a bool"):
    K.factored_adam_f16(w, m, g, rows, True, cols, 0, **kw)
  K.factored_adam_f16(w, m, g, rows, np.True_, cols, np.False_, **kw)  # NumPy's bools are
