import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn import memory, memory_report, optim
from bnn.ops import common, native
from configs import fashion_mnist_mlp


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"BinaryDense_0": {"kernel": jax.random.uniform(k1, (7, 5), minval=-1, maxval=1)},
          "BatchNorm_0": {"beta": jax.random.normal(k2, (5,))}}


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_adam_stores_16_bits_and_tracks_float32_adam(dtype):
  params = _params()
  tx32, tx16 = optax.adam(1e-2), optim.low_precision_state(optax.adam(1e-2), dtype)
  s32, s16 = tx32.init(params), tx16.init(params)
  p32, p16 = params, params
  for i in range(20):
    g = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
    u32, s32 = tx32.update(g, s32, p32)
    u16, s16 = tx16.update(g, s16, p16)
    p32, p16 = optax.apply_updates(p32, u32), optax.apply_updates(p16, u16)
  per_param = [x for x in jax.tree.leaves(s16) if x.ndim]
  assert per_param and all(x.dtype == dtype for x in per_param)
  # each step rounds |p| <= ~2 once: at most eps per step over 20 steps
  eps = float(jnp.finfo(dtype).eps)
  for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(p16)):
    np.testing.assert_allclose(a, np.asarray(b, np.float32), atol=20 * eps, rtol=0)


def test_zero_gradients_give_no_nan_in_float16():
  params = _params()
  tx = optim.low_precision_state(optax.adam(1e-3), jnp.float16)
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((updates, state)))


def test_bop_flips_only_where_momentum_is_large_and_agrees():
  w = jnp.array([1.0, 1.0, -1.0, -1.0])
  g = jnp.array([1.0, -1.0, -1.0, 1.0])
  tx = optim.bop(gamma=0.5, threshold=0.1)
  state = tx.init(w)
  updates, state = tx.update(g, state, w)
  # m = 0.5 g: flips where sign(m) == sign(w), i.e. elements 0 and 2
  np.testing.assert_array_equal(optax.apply_updates(w, updates), [-1.0, 1.0, 1.0, -1.0])
  np.testing.assert_allclose(state.momentum, 0.5 * g)
  small = optim.bop(gamma=0.5, threshold=0.6)
  updates, _ = small.update(g, small.init(w), w)
  np.testing.assert_array_equal(updates, 0)


def test_bop_config_binarises_kernels_and_leaves_beta_to_adam():
  config = fashion_mnist_mlp.get_config()
  config.optimizer.name = "bop"
  config.optimizer.state_dtype = "float16"
  params = optim.initial_params(config, _params())
  assert set(np.unique(np.asarray(params["BinaryDense_0"]["kernel"], np.float32))) <= {-1.0, 1.0}
  assert params["BinaryDense_0"]["kernel"].dtype == jnp.float16
  tx = optim.make_optimizer(config, steps_per_epoch=10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params, value=jnp.ones(()))
  kernel_update = np.asarray(updates["BinaryDense_0"]["kernel"], np.float32)
  assert set(np.unique(kernel_update)) <= {0.0, -2.0, 2.0}
  assert np.all(np.asarray(updates["BatchNorm_0"]["beta"]) < 0)  # Adam step against +1 gradients


@pytest.mark.parametrize("method,name,state_dtype,expected", [
    ("standard", "default", "default", "float32"), ("proposed", "default", "default", "float16"),
    ("proposed", "adam", "default", "float32"), ("proposed", "bop", "default", "float32"),
    ("standard", "factored_adam", "default", "float16"),
    ("proposed", "adam", "float16", "float16"), ("proposed", "default", "bfloat16", "bfloat16")])
def test_state_dtype(method, name, state_dtype, expected):
  """"default": METHOD.md's 16-bit state where the optimizer keeps it accurate
  (factored_adam), float32 where its float16 moments underflow (Adam, Bop)."""
  config = fashion_mnist_mlp.get_config(method)
  config.optimizer.name, config.optimizer.state_dtype = name, state_dtype
  assert optim.state_dtype(config) == expected
  params = optim.initial_params(config, _params())
  assert params["BinaryDense_0"]["kernel"].dtype == jnp.dtype(expected)


@pytest.mark.parametrize("method,name,expected", [
    ("proposed", "default", "factored_adam"), ("standard", "default", "adam"),
    ("proposed", "adam", "adam"), ("standard", "bop", "bop")])
def test_the_default_optimizer_is_the_methods(method, name, expected):
  config = fashion_mnist_mlp.get_config(method)
  config.optimizer.name = name
  assert optim.optimizer_name(config) == expected
  state = optim.make_optimizer(config, 10).init(_params())
  kinds = {type(s).__name__ for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, (optax.FactoredState, optax.ScaleByAdamState)))}
  assert ("FactoredState" in kinds) == (expected == "factored_adam")


def test_describe_says_what_the_defaults_resolve_to():
  assert optim.describe(fashion_mnist_mlp.get_config()) == \
      "optimizer: factored_adam, state float16, latent weights float16"
  assert optim.describe(fashion_mnist_mlp.get_config("lean")) == \
      "optimizer: factored_adam, state float16, latent weights float32"
  assert optim.describe(fashion_mnist_mlp.get_config("standard")) == \
      "optimizer: adam, state float32, latent weights float32"


def test_plateau_halves_the_learning_rate_after_patience_epochs():
  config = fashion_mnist_mlp.get_config("standard")
  config.optimizer.plateau_patience = 2
  tx = optim.make_optimizer(config, steps_per_epoch=3)
  params = _params()
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  scales = []
  for _ in range(5 * 3):  # five epochs of a validation error that never improves
    _, state = tx.update(grads, state, params, value=jnp.asarray(0.3))
    scales.append(float(optim.plateau_scale(state)))
  # best set in epoch 1; two epochs without improvement halve it (end of epochs 3 and 5)
  assert scales[2::3] == [1.0, 1.0, 0.5, 0.5, 0.25]


def _sign_scaled_grads(shape, steps, seed=0):
  c = 1 / np.sqrt(np.prod(shape))
  keys = jax.random.split(jax.random.key(seed), steps)
  return [c * jnp.sign(jax.random.normal(k, shape)) for k in keys]


def _optax_factored_adam(b1=0.9, b2=0.999):
  """The reference: optax's own transformations, chained (float32 state)."""
  return optax.chain(
      optax.scale_by_factored_rms(decay_rate=b2, min_dim_size_to_factor=1,
                                  decay_rate_fn=lambda t, d: d * (1 - d**t) / (1 - d**(t + 1))),
      optax.ema(b1, debias=True))


def test_factored_adam_is_optax_factored_rms_then_ema():
  """Same state (structure, shapes, dtypes, values) and updates as optax's chain, on
  random gradients of every rank it distinguishes: a vector (not factored), a dense
  kernel, a conv kernel whose two largest axes are not the last two, and a masked
  multi_transform tree."""
  keys = iter(jax.random.split(jax.random.key(3), 64))
  params = {"v": jnp.zeros(7), "dense": {"kernel": jnp.zeros((9, 4))},
            "conv": {"kernel": jnp.zeros((3, 11, 2, 6))}}
  ours, ref = optim.factored_adam(jnp.float32), _optax_factored_adam()
  s_ours, s_ref = ours.init(params), ref.init(params)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
  for _ in range(6):
    grads = jax.tree.map(lambda p: 1e-3 * jax.random.normal(next(keys), p.shape), params)
    u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params)
    u_ref, s_ref = jax.jit(ref.update)(grads, s_ref, params)
    for a, b in zip(jax.tree.leaves((u_ours, s_ours)), jax.tree.leaves((u_ref, s_ref))):
      assert a.dtype == b.dtype and a.shape == b.shape
      # float32 rounding (reduction order, fusion); an EMA of terms of both signs
      # loses relative precision where it nears 0, hence atol on the leaf's scale
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()))
  labels = {"v": "other", "dense": {"kernel": "binary"}, "conv": {"kernel": "binary"}}
  masked = optax.multi_transform({"binary": optim.factored_adam(jnp.float16),
                                  "other": optax.scale_by_adam()}, labels)
  state = masked.init(params)
  updates, state = jax.jit(masked.update)(grads, state, params)
  assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))


def test_factored_adam_is_adam_for_constant_magnitude_gradients():
  """sign(dW)/sqrt(N) gradients: the factored second moment is exactly Adam's."""
  w = jax.random.uniform(jax.random.key(1), (6, 9), minval=-1, maxval=1)
  adam, factored = optax.scale_by_adam(), optim.factored_adam(jnp.float32)
  sa, sf = adam.init(w), factored.init(w)
  for g in _sign_scaled_grads(w.shape, 25):
    ua, sa = adam.update(g, sa, w)
    uf, sf = factored.update(g, sf, w)
    np.testing.assert_allclose(uf, ua, rtol=1e-4, atol=1e-6)
  assert sorted(x.size for x in jax.tree.leaves(sf) if x.ndim) == [1, 6, 9, 54]  # v: 6 + 9


@pytest.mark.parametrize("shape", [(784, 256), (3, 3, 256, 512)])
def test_factored_adam_in_float16_matches_float32(shape):
  """c^2 = 1/N is below float16's smallest normal (and for N > 2^24 its smallest
  subnormal): the second moment must stay float32 while the moment m is float16."""
  w = jnp.zeros(shape, jnp.float16)
  f16, f32 = optim.factored_adam(jnp.float16), optim.factored_adam(jnp.float32)
  s16, s32 = f16.init(w), f32.init(w.astype(jnp.float32))
  for g in _sign_scaled_grads(shape, 3):
    u16, s16 = f16.update(g.astype(jnp.float16), s16, w)
    u32, s32 = f32.update(g, s32, w.astype(jnp.float32))
  m16 = [x for x in jax.tree.leaves(s16) if x.shape == shape]
  assert m16 and all(x.dtype == jnp.float16 for x in m16)
  assert np.isfinite(np.asarray(u16, np.float32)).all()
  np.testing.assert_allclose(np.asarray(u16, np.float32), u32, rtol=2e-3, atol=2e-3)


def test_factored_adam_config_keeps_small_gradients_finite_in_float16():
  """Batch-norm shifts see gradients ~1e-4: (1 - b2) g^2 underflows a float16 v, and
  m / (0 + eps) would blow up; their Adam state stays float32."""
  config = fashion_mnist_mlp.get_config("lean")
  config.optimizer.weight_dtype = "float16"
  params = optim.initial_params(config, _params())
  tx = optim.make_optimizer(config, steps_per_epoch=10)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e-4, p.dtype), params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params, value=jnp.ones(()))
  for u in jax.tree.leaves(updates):
    u = np.asarray(u, np.float32)
    assert np.isfinite(u).all() and np.abs(u).max() <= 1.01e-3  # at most lr per step


@pytest.mark.parametrize("model_name", ["mlp", "cnv", "binarynet", "resnete18", "birealnet18"])
def test_binary_kernels_are_found_by_the_optimizer_in_every_model(model_name):
  """The optimizer tells binary kernels (factored 16-bit state, Bop) from real ones by
  name; here they are found by layer class instead, and both must agree."""
  import flax.linen as nn

  from bnn import layers, models
  from configs import common

  config = common.base()
  config.model.name = model_name
  model = models.create(config.model, num_classes=10)
  image = (1, 64, 64, 3) if model_name.endswith("18") else (1, 32, 32, 3)
  binary_layers = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (layers.BinaryDense, layers.BinaryConv,
                                   layers.BinaryClassifier)):
      binary_layers.add(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image),
                                                  train=False))
  labelled = {tuple(getattr(k, "key", str(k)) for k in path[:-1])
              for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
              if optim.is_binary_kernel(path)}
  assert binary_layers and labelled == binary_layers


def _nan_marked_paths(config, params):
  """Paths of the optimizer-state leaves that after_params marks with NaN when
  BinaryDense_0's kernel is NaN (and the state otherwise unchanged)."""
  tx = optim.make_optimizer(config, steps_per_epoch=10)
  state = tx.init(params)
  state = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
  tied = jax.jit(optim.after_params)(state, params)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(tied)):
    np.testing.assert_array_equal(a, b)  # finite parameters: the identity
  bad = {**params, "BinaryDense_0": {"kernel": params["BinaryDense_0"]["kernel"].at[0, 0].set(jnp.nan)}}
  marked = jax.tree_util.tree_leaves_with_path(jax.jit(optim.after_params)(state, bad))
  return {jax.tree_util.keystr(p): x.shape for p, x in marked
          if jnp.issubdtype(x.dtype, jnp.floating) and bool(jnp.isnan(x).any())}


def test_after_params_ties_each_buffer_to_its_own_parameter():
  """Per-parameter buffers (Adam's moments) depend on their parameter's new value and
  on nothing else; counts and other leaves are left alone."""
  config = fashion_mnist_mlp.get_config()
  config.optimizer.name = "adam"
  marked = _nan_marked_paths(config, _params())
  assert len(marked) == 2 and all("BinaryDense_0" in p for p in marked), marked  # mu, nu
  assert set(marked.values()) == {(7, 5)}


def test_after_params_leaves_stored_moments_alone():
  """factored_adam's stored moments are ordered by the weight update reading
  them; after_params does not tie them (nor the factored statistics)."""
  config = fashion_mnist_mlp.get_config()
  config.optimizer.name = "factored_adam"
  assert _nan_marked_paths(config, _params()) == {}


def test_after_params_lets_xla_update_in_place(monkeypatch):
  """The MLP's training step with Adam's moments in float16 and float32 weights needs
  less memory when the optimizer state is updated after the weights (no copies)."""
  config = fashion_mnist_mlp.get_config()
  config.optimizer.name = "adam"
  config.optimizer.state_dtype, config.optimizer.weight_dtype = "float16", "float32"
  proposed = memory_report._for_method(config, "proposed")
  ordered = memory.measure_step(proposed).peak
  monkeypatch.setattr(optim, "after_params", lambda opt_state, params: opt_state)
  unordered = memory.measure_step(proposed).peak
  assert ordered < unordered, (ordered, unordered)


def test_materialized_gradient_and_moment_let_xla_update_in_place(monkeypatch):
  """The all-16-bit factored_adam MLP step needs less memory with the weight gradient
  and the stored moment computed once into memory (common.materialize) than with
  XLA free to recompute them inside each update."""
  config = fashion_mnist_mlp.get_config()
  config.optimizer.name, config.optimizer.state_dtype = "factored_adam", "float16"
  proposed = memory_report._for_method(config, "proposed")
  materialized = memory.measure_step(proposed).peak
  monkeypatch.setattr(common, "materialize", lambda x: x)
  fused = memory.measure_step(proposed).peak
  assert materialized < fused, (materialized, fused)


@pytest.mark.parametrize("name,state_dtype", [("adam", "default"), ("adam", "float16"),
                                              ("factored_adam", "float16"), ("bop", "float16")])
def test_the_initial_state_does_not_depend_on_steps_per_epoch(name, state_dtype):
  """bnn/experiment.py builds the initial state and the checkpoints' structure with
  steps_per_epoch=1, without loading the data (export and import need none)."""
  config = fashion_mnist_mlp.get_config()
  config.optimizer.name, config.optimizer.state_dtype = name, state_dtype
  params = optim.initial_params(config, _params())
  one, many = (optim.make_optimizer(config, n).init(params) for n in (1, 937))
  assert jax.tree.structure(one) == jax.tree.structure(many)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(9, 4), (784, 256), (1, 13), (300, 7), (3, 11, 2, 6)], ids=str)
def test_square_sums_are_the_sums_of_g_squared(shape, dtype):
  """factored_adam's statistics (one C++ pass for a 2-D kernel on the CPU, XLA's sums
  otherwise) against float64 NumPy, over each of the two factored axes, with zeros,
  float16 subnormals and large values in g."""
  g = jax.random.normal(jax.random.key(0), shape) * 1e-2
  g = g.at[(0,) * len(shape)].set(0.0).at[(-1,) * len(shape)].set(3e-7).astype(dtype)
  d1, d0 = optim.factored_dims(shape)
  for a0, a1 in ((d0, d1), (d1, d0)):
    rows, cols = jax.jit(lambda g: optim._square_sums(g, a0, a1, 1e-30))(g)
    g2 = np.asarray(g.astype(jnp.float32), np.float64) ** 2 + 1e-30
    # float32 sums of n positive terms in order: within n * 2^-24 relative
    np.testing.assert_allclose(rows, g2.sum(axis=a0), rtol=shape[a0] * 6e-8 + 1e-6)
    np.testing.assert_allclose(cols, g2.sum(axis=a1), rtol=shape[a1] * 6e-8 + 1e-6)


def test_square_sums_keep_no_float32_copy_of_g_squared():
  """XLA's memory for the two sums of a 784 x 256 float16 gradient: none of the
  784 KiB of float32 g^2 that jnp.sum of g^2 takes (CPU, with the native library)."""
  if not native.available():
    pytest.skip("no C++ compiler")
  g = jax.ShapeDtypeStruct((784, 256), jnp.float16)
  whole = jax.jit(lambda g: (jnp.sum(g.astype(jnp.float32) ** 2 + 1e-30, 0),
                             jnp.sum(g.astype(jnp.float32) ** 2 + 1e-30, 1)))
  native_sums = jax.jit(lambda g: optim._square_sums(g, 0, 1, 1e-30))
  temp = lambda f: f.lower(g).compile().memory_analysis().temp_size_in_bytes
  assert temp(whole) >= 784 * 256 * 4
  assert temp(native_sums) < 64 * 1024
