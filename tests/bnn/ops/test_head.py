import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn import memory
from bnn.ops import batch_norm, binary_dense, classifier_loss

B, N_IN, N_CLASSES = 23, 13, 10


def _inputs(seed=0):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  h = jnp.where(jax.random.normal(k1, (B, N_IN)) >= 0, 1.0, -1.0)
  w = jax.random.uniform(k2, (N_IN, N_CLASSES), minval=-1.2, maxval=1.2)
  beta = 0.1 * jax.random.normal(k3, (N_CLASSES,))
  labels = jax.random.randint(k4, (B,), 0, N_CLASSES)
  return h, w, beta, labels


def _unfused(h, w, beta, labels, method, **kw):
  z = binary_dense(h, w, method=method, grad_quantizer=kw.get("grad_quantizer"))
  logits, _, _ = batch_norm(z, beta, method=method, grad_quantizer=kw.get("bn_grad_quantizer"))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


@pytest.mark.parametrize("method,kw", [
    ("standard", {}), ("proposed", {}),
    ("proposed", {"grad_quantizer": "po2(bits=4, bias=6)", "bn_grad_quantizer": "identity"})])
def test_fused_head_equals_unfused_ops(method, kw):
  h, w, beta, labels = _inputs()
  fused = lambda h, w, beta: classifier_loss(h, w, beta, labels, method=method, **kw)[:2]
  unfused = lambda h, w, beta: _unfused(h, w, beta, labels, method, **kw)
  for out_f, out_u in zip(fused(h, w, beta), unfused(h, w, beta)):
    np.testing.assert_allclose(out_f, out_u, rtol=1e-6, atol=1e-6)
  # cotangents on both outputs: the loss and the logits
  g_logits = jax.random.normal(jax.random.key(5), (B, N_CLASSES))
  _, vjp_f = jax.vjp(fused, h, w, beta)
  _, vjp_u = jax.vjp(unfused, h, w, beta)
  for gf, gu in zip(vjp_f((1.0, g_logits)), vjp_u((1.0, g_logits))):
    np.testing.assert_allclose(gf, gu, rtol=1e-5, atol=1e-6)


def test_proposed_head_keeps_only_packed_input():
  h, w, beta, labels = _inputs()
  loss = lambda h, w, beta: classifier_loss(h, w, beta, labels, method="proposed")[0]
  kept = memory.per_example(memory.saved_residuals(loss, h, w, beta), B)
  assert [r.dtype for r in kept if r.is_float] == []
  assert any(r.dtype == np.uint8 and r.shape == (B, 2) for r in kept)


def test_standard_head_keeps_floats():
  h, w, beta, labels = _inputs()
  loss = lambda h, w, beta: classifier_loss(h, w, beta, labels, method="standard")[0]
  kept = memory.per_example(memory.saved_residuals(loss, h, w, beta), B)
  assert any(r.is_float and r.shape == (B, N_CLASSES) for r in kept)


def test_bad_labels_raise():
  h, w, beta, labels = _inputs()
  with pytest.raises(ValueError, match="labels"):
    classifier_loss(h, w, beta, labels[:-1], method="proposed")
  with pytest.raises(ValueError, match="labels"):
    classifier_loss(h, w, beta, labels.astype(jnp.float32), method="proposed")
