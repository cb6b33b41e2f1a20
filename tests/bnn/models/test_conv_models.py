"""CNV and BinaryNet: parameter count, shapes, one training step per method, eval
equality, and what the proposed method keeps for the backward pass."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn import memory
from bnn.models import BinaryNet, CNV, registry
from tests.bnn.models import common

NUM_CLASSES = 10
BATCH = 5  # not a layer width nor the kernel size 3: "leading dim == batch" = per example

# Hand counts for 32x32x3 inputs and 10 classes: every layer's kernel (no biases) plus
# one BN beta per output channel (BN has no gamma).
EXPECTED_PARAMS = {
    "cnv": sum([
        3 * 3 * 3 * 64 + 64,       # C64    32x32 -> 30x30 (VALID)
        3 * 3 * 64 * 64 + 64,      # C64    30 -> 28, MP2 -> 14
        3 * 3 * 64 * 128 + 128,    # C128   14 -> 12
        3 * 3 * 128 * 128 + 128,   # C128   12 -> 10, MP2 -> 5
        3 * 3 * 128 * 256 + 256,   # C256   5 -> 3
        3 * 3 * 256 * 256 + 256,   # C256   3 -> 1: flatten 1 * 1 * 256 = 256
        256 * 512 + 512,           # FC512
        512 * 512 + 512,           # FC512
        512 * 10 + 10,             # FC10 (BinaryClassifier: kernel + BN beta)
    ]),
    "binarynet": sum([
        3 * 3 * 3 * 128 + 128,     # C128        32x32 (SAME)
        3 * 3 * 128 * 128 + 128,   # C128 + MP2  32 -> 16
        3 * 3 * 128 * 256 + 256,   # C256        16
        3 * 3 * 256 * 256 + 256,   # C256 + MP2  16 -> 8
        3 * 3 * 256 * 512 + 512,   # C512        8
        3 * 3 * 512 * 512 + 512,   # C512 + MP2  8 -> 4: flatten 4 * 4 * 512 = 8192
        8192 * 1024 + 1024,        # FC1024
        1024 * 1024 + 1024,        # FC1024
        1024 * 10 + 10,            # FC10 (BinaryClassifier: kernel + BN beta)
    ]),
}
# At least the float32 inputs the standard method keeps for two of the convs after
# the first (CNV: 30x30x64 and 14x14x64; BinaryNet: 32x32x128 and 16x16x128).
STANDARD_FLOAT_FLOOR = {"cnv": 30 * 30 * 64 + 14 * 14 * 64,
                        "binarynet": 32 * 32 * 128 + 16 * 16 * 128}
MODELS = {"cnv": CNV, "binarynet": BinaryNet}
# compiling BinaryNet's two training steps takes ~20 s on 2 cores
NAMES = ["cnv", pytest.param("binarynet", marks=pytest.mark.slow)]


def _data(batch, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (batch, 32, 32, 3), minval=-1, maxval=1)
  return x, jnp.arange(batch) % NUM_CLASSES


def _model(name, method="proposed"):
  return MODELS[name](num_classes=NUM_CLASSES, method=method)


@pytest.mark.parametrize("name", ["cnv", "binarynet"])
def test_registered_with_pinned_parameter_count(name):
  assert registry()[name] is MODELS[name]
  x, _ = _data(2)
  shapes = jax.eval_shape(lambda: _model(name).init(jax.random.key(0), x, train=False))
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"])) == \
      EXPECTED_PARAMS[name]


@functools.lru_cache(maxsize=None)
def _steps(name):
  """Per method: (loss, logits, gradients, running statistics after the step, eval
  logits), from one jitted program per method on the same variables and batch."""
  x, labels = _data(4, seed=2)
  return common.one_step_per_method(lambda method: _model(name, method), x, labels)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_training_step_gives_finite_gradients(name, method):
  variables, out = _steps(name)
  loss, logits, grads, stats, _ = jax.device_get(out[method])  # NumPy from here on
  assert logits.shape == (4, NUM_CLASSES) and np.isfinite(loss)
  assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads))
  # The running statistics moved.
  assert not np.array_equal(stats["BatchNorm_0"]["mean"],
                            variables["batch_stats"]["BatchNorm_0"]["mean"])


@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_identical_for_both_methods(name):
  _, out = _steps(name)
  logits = {m: out[m][-1] for m in out}
  assert logits["proposed"].shape == (4, NUM_CLASSES)
  np.testing.assert_array_equal(logits["proposed"], logits["standard"])


@functools.lru_cache(maxsize=None)
def _per_example_residuals(name, method):
  model = _model(name, method)
  x, labels = _data(BATCH)
  variables = common.random_variables(model, x)

  def loss(params, x):
    (_, loss), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                               x, labels, train=True, mutable=["batch_stats"])
    return loss

  kept = memory.per_example(memory.saved_residuals(loss, variables["params"], x), BATCH)
  return tuple(r for r in kept if r.source != "from the argument x")


@pytest.mark.parametrize("name", ["cnv", "binarynet"])
def test_proposed_keeps_no_float_per_example(name):
  kept = _per_example_residuals(name, "proposed")
  floats = [r for r in kept if r.is_float]
  assert floats == [], floats
  # The rest: bit-packed uint8 (BN signs, STE masks, max-pool masks, conv inputs), and
  # the integer labels (the head's softmax gradient is recomputed from them).
  assert all(r.dtype == np.uint8 or (r.dtype == np.int32 and r.shape == (BATCH,))
             for r in kept), kept
  assert sum(r.dtype == np.uint8 for r in kept) >= 3 * 8


@pytest.mark.parametrize("name", ["cnv", "binarynet"])
def test_standard_keeps_float32_per_example(name):
  kept = _per_example_residuals(name, "standard")
  floats = [r for r in kept if r.dtype == np.float32]
  assert sum(r.nbytes for r in floats) >= BATCH * 4 * STANDARD_FLOAT_FLOOR[name]


@pytest.mark.parametrize("name", ["cnv", "binarynet"])
def test_proposed_keeps_at_most_one_sixteenth_of_standard(name):
  proposed = sum(r.nbytes for r in _per_example_residuals(name, "proposed")) / BATCH
  standard = sum(r.nbytes for r in _per_example_residuals(name, "standard")) / BATCH
  print(f"{name} saved residuals per example: proposed {proposed:.0f} B, standard "
        f"{standard:.0f} B, ratio 1/{standard / proposed:.1f}")
  assert proposed * 16 <= standard
