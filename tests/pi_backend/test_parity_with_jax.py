"""Golden values from the JAX side: the pi_backend kernels agree with quantizers/ and
bnn/ops (method="proposed"). The only pi_backend test that imports jax (pi_backend
itself never does); skipped where jax is not installed (e.g. on the Pi)."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import quantizers  # noqa: E402
from bnn import ops  # noqa: E402
from pi_backend import kernels as K  # noqa: E402
from quantizers import packing  # noqa: E402


def _rand(shape, seed, scale=1.0):
  return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 8, 63, 64, 65, 130])
def test_packing_bytes_identical(n):
  x = _rand((3, 2, n), n)
  x.reshape(-1)[::5] = 0.0
  jax_bytes = np.asarray(packing.pack(jnp.asarray(x)))
  words = K.pack(x)
  np.testing.assert_array_equal(K.to_uint8(words, n), jax_bytes)
  np.testing.assert_array_equal(K.from_uint8(jax_bytes, n), words)
  np.testing.assert_array_equal(words.astype("<u8").view(np.uint8)[..., :jax_bytes.shape[-1]],
                                jax_bytes)


def _grads(seed):
  rng = np.random.default_rng(seed)
  g = rng.standard_normal(3000) * 10.0 ** rng.uniform(-8, 2, 3000)
  g[::23] = 0.0
  g = g.astype(np.float32)
  g[1:4] = [1e-45, -3e-39, np.float32(np.sqrt(2))]  # subnormals, the threshold
  return g.reshape(30, 100)


@pytest.mark.parametrize("spec", ["po2(bits=4, bias=8)", "po2(bits=4, bias=6)",
                                  "po2(bits=4, bias=8, zeros='reference')",
                                  "po2(bits=5, bias=3)"])
def test_po2_identical(spec):
  q = quantizers.get(spec, "gradient")
  for seed in range(3):
    g = _grads(seed)
    want = np.asarray(q(jnp.asarray(g)))
    got = K.po2(g, bits=q.bits, bias=q.bias, zeros=q.zeros)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
  tiny = _grads(9) * np.float32(1e-35)  # max in the subnormal range
  np.testing.assert_array_equal(K.po2(tiny, bits=q.bits, bias=q.bias, zeros=q.zeros),
                                np.asarray(q(jnp.asarray(tiny))))


def test_po2_stochastic_identical_given_the_same_random_bits():
  q = quantizers.get("po2(bits=4, bias=8, rounding='stochastic')", "gradient")
  g = _grads(4)
  key = jax.random.key(7)
  want = np.asarray(q(jnp.asarray(g), key))
  bits = np.asarray(jax.random.bits(key, g.shape, jnp.uint32))
  np.testing.assert_array_equal(K.po2(g, bits=4, bias=8, random_bits=bits), want)


@pytest.mark.parametrize("shape", [(100, 65), (2, 5, 5, 7), (3, 130)])
def test_batch_norm_forward_and_backward(shape):
  c = shape[-1]
  x = _rand(shape, 1, 2.0) + _rand((c,), 2)
  beta = _rand((c,), 3)
  dy = _rand(shape, 4, 0.01)
  (y, mean, scale), vjp = jax.vjp(
      lambda a, b: ops.batch_norm(a, b, method="proposed", eps=1e-5), jnp.asarray(x),
      jnp.asarray(beta))
  dx, dbeta = vjp((jnp.asarray(dy), jnp.zeros(c), jnp.zeros(c)))
  res = K.batch_norm_l1(x, beta, eps=1e-5)
  np.testing.assert_allclose(res.y, y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(res.mean, mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.scale, scale, rtol=1e-5)
  got_dx, got_db = K.batch_norm_l1_backward(dy, res.sign_bits, res.scale16, res.m16)
  np.testing.assert_allclose(got_dx, dx, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got_db, dbeta, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 70), (2, 3, 3, 64)])
def test_sign_activation(shape):
  x = _rand(shape, 5, 1.5)
  x.reshape(-1)[::7] = 0.0
  x.reshape(-1)[1::9] = 1.0
  dy = _rand(shape, 6)
  y, vjp = jax.vjp(lambda a: ops.sign_activation(a, method="proposed"), jnp.asarray(x))
  got_y, mask = K.sign_ste(x)
  np.testing.assert_array_equal(got_y, y)
  np.testing.assert_array_equal(K.sign_ste_backward(dy, mask), vjp(jnp.asarray(dy))[0])


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (1, 5, 7, 65)])
def test_max_pool_with_ties(shape):
  x = np.where(_rand(shape, 7) >= 0, 1.0, -1.0).astype(np.float32)
  dy_shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  dy = _rand(dy_shape, 8)
  y, vjp = jax.vjp(lambda a: ops.max_pool(a, method="proposed"), jnp.asarray(x))
  got_y, mask = K.max_pool2x2(x)
  np.testing.assert_array_equal(got_y, y)
  np.testing.assert_array_equal(K.max_pool2x2_backward(dy, mask, shape), vjp(jnp.asarray(dy))[0])


def _weight_grad_from_raw(dw_raw, w):
  """The proposed weight gradient (METHOD.md) from a raw gradient."""
  dw = np.where(dw_raw >= 0, 1.0, -1.0) / np.sqrt(w.size)
  return np.where(np.abs(w) <= 1, dw, 0.0).astype(np.float16).astype(np.float32)


def _agree_where_clear(got_raw, want, w, dw_raw_ref):
  clear = np.abs(dw_raw_ref) > 1e-4 * np.abs(dw_raw_ref).max()
  np.testing.assert_array_equal(_weight_grad_from_raw(got_raw, w)[clear], np.asarray(want)[clear])


@pytest.mark.parametrize("first_layer", [True, False])
def test_dense(first_layer):
  m, k, n = 6, 65, 9
  x = _rand((m, k), 9)
  if not first_layer:
    x = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
  w = _rand((k, n), 10, 0.8)
  dy = _rand((m, n), 11)
  y, vjp = jax.vjp(lambda a, b: ops.binary_dense(a, b, method="proposed",
                                                 first_layer=first_layer),
                   jnp.asarray(x), jnp.asarray(w))
  dx, dw = vjp(jnp.asarray(dy))
  if first_layer:
    np.testing.assert_allclose(K.sign_matmul(x, w), y, rtol=1e-5, atol=1e-4)
    raw = K.t_matmul(x, dy)
  else:
    np.testing.assert_array_equal(K.xnor_gemm(K.pack(x), K.pack_transposed(w), k,
                                              dtype=np.float32), y)
    raw = K.sign_t_matmul(K.pack(x), k, dy)
  np.testing.assert_allclose(K.matmul_sign_t(dy, w), dx, rtol=1e-5, atol=1e-5)
  _agree_where_clear(raw, dw, w, x.astype(np.float64).T @ dy)


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), 1, "SAME"), ((3, 3), 2, "VALID"),
                                                    ((2, 3), (2, 1), ((0, 2), (1, 0))),
                                                    ((5, 5), 1, 2)])
@pytest.mark.parametrize("first_layer", [True, False])
def test_conv(kernel, strides, padding, first_layer):
  b, h, wd, c, co = 2, 7, 6, 5, 4
  x = _rand((b, h, wd, c), 12)
  if not first_layer:
    x = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
  w = _rand(kernel + (c, co), 13, 0.8)
  fwd = lambda a, bb: ops.binary_conv(a, bb, method="proposed", strides=strides,  # noqa: E731
                                      padding=padding, first_layer=first_layer)
  y, vjp = jax.vjp(fwd, jnp.asarray(x), jnp.asarray(w))
  dy = _rand(y.shape, 14)
  dx, dw = vjp(jnp.asarray(dy))
  if first_layer:
    got_y = K.sign_conv2d(x, K.pack(w), co, strides, padding)
    np.testing.assert_allclose(got_y, y, rtol=1e-5, atol=1e-4)
    raw = K.conv2d_backward_weight(x, dy, kernel, strides, padding)
  else:
    got_y = K.binary_conv2d(K.pack(x), c, K.pack_conv_weights(w), kernel, strides, padding)
    np.testing.assert_array_equal(got_y, y)
    raw = K.conv2d_backward_weight(K.pack(x), dy, kernel, strides, padding, c_in=c)
  np.testing.assert_allclose(K.conv2d_backward_input(dy, K.pack(w), (h, wd), strides, padding),
                             dx, rtol=1e-5, atol=1e-4)
  ref_raw = np.asarray(jax.linear_transpose(
      lambda ww: jax.lax.conv_general_dilated(
          jnp.asarray(x), ww, (strides, strides) if isinstance(strides, int) else strides,
          K.conv_padding((h, wd), kernel, strides, padding),
          dimension_numbers=("NHWC", "HWIO", "NHWC")), jnp.asarray(w))(jnp.asarray(dy))[0])
  np.testing.assert_allclose(raw, ref_raw, rtol=1e-4, atol=1e-4)
  _agree_where_clear(raw, dw, w, ref_raw)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8), (3, 3, 3, 8), (3, 3, 8, 8),
                                   (3, 3, 16, 8)])
def test_factored_adam_step_for_step(shape):
  """pi_backend/optimizers.py against bnn/optim.py's factored_adam (optax) with float16
  moment and weights: the statistics to float32 rounding, the stored float16 moment and
  weights within one ulp, over steps that start each from the JAX state."""
  import optax  # pylint: disable=import-outside-toplevel

  from bnn import optim  # pylint: disable=import-outside-toplevel
  from pi_backend import optimizers  # pylint: disable=import-outside-toplevel

  tx = optax.chain(optim.factored_adam(jnp.float16), optax.scale_by_learning_rate(1e-3))
  rng = np.random.default_rng(shape[-2] * 10 + len(shape))
  params = {"k": jnp.asarray((rng.uniform(-1, 1, shape) * 0.1).astype(np.float16))}
  state = tx.init(params)
  for count in range(1, 5):
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, -1)).astype(np.float16)
    factored, ema = state[0][0], state[0][1]
    w = np.array(params["k"])
    m = np.array(ema.ema["k"])
    vrow, vcol = np.array(factored.v_row["k"]), np.array(factored.v_col["k"])
    optimizers.factored_adam(w, m, vrow, vcol, g, count=count, lr=1e-3)
    updates, state = tx.update({"k": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(vrow, np.asarray(state[0][0].v_row["k"]), rtol=1e-6)
    np.testing.assert_allclose(vcol, np.asarray(state[0][0].v_col["k"]), rtol=1e-6)
    for ours, theirs in ((m, state[0][1].ema["k"]), (w, params["k"])):
      theirs = np.asarray(theirs)
      assert ours.dtype == theirs.dtype == np.float16
      spacing = np.spacing(np.maximum(np.abs(ours), np.abs(theirs)))
      assert np.all(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) <= spacing)
