import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn import digits, memory
from bnn.models import MLP

BATCH = 37  # not a layer width, so "leading dimension == batch" means per example


def _residuals(method, **kw):
  model = MLP(method=method, **kw)
  x = jax.random.uniform(jax.random.key(0), (BATCH, 784), minval=-1, maxval=1)
  labels = jnp.arange(BATCH) % 10
  variables = model.init(jax.random.key(1), x, train=False)

  def loss(params, x):
    (_, loss), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                               x, labels, train=True, mutable=["batch_stats"])
    return loss

  return memory.per_example(memory.saved_residuals(loss, variables["params"], x), BATCH)


@pytest.mark.parametrize("kw", [{}, {"grad_quantizer": "po2(bits=4, bias=8)",
                                     "bn_grad_quantizer": "identity"}])
def test_proposed_mlp_keeps_only_bits_per_example(kw):
  kept = _residuals("proposed", **kw)
  floats = [r for r in kept if r.is_float and r.source != "from the argument x"]
  assert floats == [], floats
  packed = [r for r in kept if r.dtype == np.uint8]
  # per hidden layer: BN sign bits, sign mask, next dense's packed input (32 bytes each)
  assert len(packed) >= 3 * 4
  assert all(r.shape[-1] <= 32 for r in packed)


def test_standard_mlp_keeps_float32_per_example():
  kept = _residuals("standard")
  floats = [r for r in kept if r.is_float and r.source != "from the argument x"]
  assert sum(r.nbytes for r in floats) >= 4 * BATCH * 256 * 4


@pytest.mark.real_data
@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_mlp_learns_digits(method):
  accuracy = digits.train_and_evaluate(method, epochs=40, seed=0)
  print(f"{method}: digits test accuracy {accuracy:.4f}")
  assert accuracy > 0.85


def test_stochastic_gradient_rounding_needs_a_key_only_for_gradients():
  """Evaluation takes no gradient: it runs without the "gradient" RNG stream (it used
  to fail at the first evaluation of a run with stochastic rounding)."""
  q = "po2(bits=4, bias=8, rounding='stochastic')"
  model = MLP(hidden=(32,), grad_quantizer=q, bn_grad_quantizer=q)
  x = jax.random.uniform(jax.random.key(0), (8, 784), minval=-1, maxval=1)
  labels = jnp.arange(8) % 10
  variables = model.init(jax.random.key(1), x, train=False)
  logits = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(logits, MLP(hidden=(32,)).apply(variables, x, train=False))

  def loss(params, rngs):
    (_, loss), _ = model.apply({**variables, "params": params}, x, labels, train=True,
                               mutable=["batch_stats"], rngs=rngs)
    return loss

  grads = jax.grad(loss)(variables["params"], {"gradient": jax.random.key(2)})
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="needs a PRNG `key` to take gradients"):
    jax.grad(loss)(variables["params"], {})
