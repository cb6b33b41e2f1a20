import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn.ops import binary_conv, binary_dense, common


@pytest.mark.parametrize("x", [jnp.arange(12, dtype=jnp.uint8).reshape(3, 4),
                               jnp.linspace(-1, 1, 12, dtype=jnp.float16).reshape(3, 4)])
def test_tie_is_the_identity_on_finite_dependencies(x):
  deps = (jnp.ones((5, 2)), jnp.zeros(3, jnp.float16))
  tied = jax.jit(common.tie)(x, *deps)
  assert tied.dtype == x.dtype and tied.shape == x.shape
  np.testing.assert_array_equal(tied, x)


def test_tie_marks_a_nan_dependency():
  """The dependency is real (XLA cannot drop it): a NaN in a dep changes x."""
  nan = jnp.array([jnp.nan, 1.0])
  bits = jnp.array([0, 1, 254], jnp.uint8)
  np.testing.assert_array_equal(common.tie(bits, nan), [1, 0, 255])
  assert np.isnan(np.asarray(common.tie(jnp.ones(3), jnp.ones(2), nan))).all()
  # any of a dep's first 16 elements (a reduction XLA computes once)
  late_nan = jnp.ones((4, 5)).at[3, 0].set(jnp.nan)  # element 15
  np.testing.assert_array_equal(common.tie(bits, late_nan), [1, 0, 255])


def test_tie_refuses_an_integer_dependency_which_could_not_order_anything():
  with pytest.raises(ValueError, match="dtype int8; expected floating point"):
    common.tie(jnp.ones(3), jnp.ones(3, jnp.int8))


def test_tie_keeps_unpacking_out_of_the_forward_pass():
  """With the tie, the compiled gradient of sign -> dense keeps no float tensor
  of the unpacked activation's size from the forward into the backward pass: the
  step's temporaries stay well below one float copy of x per layer. (The weights are
  small next to the activations, so that their gradients' buffers do not count.)"""
  from bnn.ops import dense, sign

  x = jax.random.normal(jax.random.key(0), (2048, 256))
  ws = [jax.random.normal(jax.random.key(i), (256, 256)) * 0.1 for i in range(1, 4)]

  def loss(ws, x):
    h = x
    for w in ws:
      h = sign.sign_activation(dense.binary_dense(h, w, method="proposed"), method="proposed")
    return jnp.sum(h * h)

  compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
  temps = compiled.memory_analysis().temp_size_in_bytes
  assert temps < 3.5 * x.nbytes, temps  # without the ties: 5.06 x.nbytes; with: 3.09


@pytest.mark.parametrize("x", [
    np.array([-0.0, 1.5, np.nan, -2.0], np.float32),   # -0.0 stays -0.0
    np.array([np.nan, 0.0, -np.inf], np.float16),      # the NaN branch: NaN stays NaN
    np.arange(6, dtype=np.int32).reshape(2, 3),
    np.zeros((0, 3), np.float32)])
def test_materialize_is_the_identity_and_survives_compilation(x):
  out = np.asarray(jax.jit(common.materialize)(x))
  assert out.dtype == x.dtype and out.shape == x.shape
  np.testing.assert_array_equal(out.view(f"u{x.itemsize}"), x.view(f"u{x.itemsize}"))  # bits
  if x.size and x.dtype.kind == "f":  # XLA keeps the conditional (it would drop one with
    # identical branches; for integers isnan is constant and it goes, which is harmless)
    assert "conditional" in jax.jit(common.materialize).lower(x).compile().as_text()


def test_materialize_takes_a_tree_through_one_conditional():
  tree = {"a": np.array([[np.nan, -0.0], [3.0, -1.0]], np.float32),
          "b": (np.array([1.0, -np.inf, 5e-8], np.float16), np.zeros((0, 3), np.float32))}
  out = jax.jit(common.materialize)(tree)
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(f"u{want.itemsize}"), want.view(f"u{want.itemsize}"))
  hlo = jax.jit(common.materialize).lower(tree).compile().as_text()
  assert sum(" conditional(" in line for line in hlo.splitlines()) == 1, hlo


@pytest.mark.parametrize("first_layer", [False, True])
def test_proposed_ops_name_an_empty_batch(first_layer):
  cases = [(binary_conv, jnp.zeros((0, 5, 5, 3)), jnp.ones((3, 3, 3, 4))),
           (binary_dense, jnp.zeros((0, 6)), jnp.ones((6, 4)))]
  for op, x, w in cases:
    with pytest.raises(ValueError, match=rf"{op.__name__}: x has shape .* no elements"):
      op(x, w, method="proposed", first_layer=first_layer)
