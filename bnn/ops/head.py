"""The classifier head: binary dense -> batch norm -> softmax cross-entropy, fused.

Why fused: autodiff of the softmax cross-entropy keeps the softmax (a float per
example and class) for the backward pass. The proposed method keeps no float
tensor per example, so its head keeps only the bit-packed +-1 input of the last
dense layer (which that layer keeps anyway) and recomputes the logits from it in
the backward pass; the gradient is then the composition of the proposed dense
and batch-norm backward passes, exactly as if the three ops were separate.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from bnn.ops import common
from bnn.ops.batch_norm import batch_norm
from bnn.ops.dense import binary_dense
from quantizers import pack, unpack


def classifier_loss(h: jax.Array, w: jax.Array, beta: jax.Array, labels: jax.Array, *,
                    method: str, first_layer: bool = False, grad_quantizer=None,
                    weight_grad_quantizer=None, bn_grad_quantizer=None, eps: float = 1e-5,
                    key: jax.Array | None = None):
  """Returns (mean cross-entropy loss, logits, batch mean, batch scale).

  h: (B, n_in) input (+-1 unless first_layer), w: (n_in, n_classes), beta:
  (n_classes,), labels: (B,) integer classes. Training mode (batch statistics);
  the statistics are returned for the running averages, their cotangents ignored.
  """
  common.check_method(method)
  if labels.shape != h.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"classifier_loss: labels must be integers of shape {h.shape[:1]}, "
                     f"got {labels.dtype}{list(labels.shape)}")
  static = dict(first_layer=bool(first_layer), grad_quantizer=grad_quantizer,
                weight_grad_quantizer=weight_grad_quantizer,
                bn_grad_quantizer=bn_grad_quantizer, eps=float(eps))
  if method == "standard":
    return _composed(h, w, beta, labels, key, method="standard", **static)
  return _proposed(tuple(sorted(static.items())))(h, w, beta, labels, key)


def _composed(h, w, beta, labels, key, *, method, first_layer, grad_quantizer,
              weight_grad_quantizer, bn_grad_quantizer, eps):
  dense_key, bn_key = jax.random.split(key) if key is not None else (None, None)
  z = binary_dense(h, w, method=method, first_layer=first_layer,
                   grad_quantizer=grad_quantizer,
                   weight_grad_quantizer=weight_grad_quantizer, key=dense_key)
  logits, mean, scale = batch_norm(z, beta, method=method, grad_quantizer=bn_grad_quantizer,
                                   eps=eps, key=bn_key)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, logits, mean, scale


@functools.lru_cache(maxsize=None)
def _proposed(static: tuple):
  composed = functools.partial(_composed, method="proposed", **dict(static))
  first_layer = dict(static)["first_layer"]

  @jax.custom_vjp
  def head(h, w, beta, labels, key):
    return composed(h, w, beta, labels, key)

  def fwd(h, w, beta, labels, key):
    kept = h if first_layer else pack(h)
    return composed(h, w, beta, labels, key), (kept, w, beta, labels, key)

  def bwd(res, cotangents):
    kept, w, beta, labels, key = res
    g_loss, g_logits, _, _ = cotangents
    h = kept if first_layer else unpack(common.tie(kept, g_logits), w.shape[0],
                                        g_logits.dtype)  # h's dtype
    _, vjp = jax.vjp(lambda h, w, beta: composed(h, w, beta, labels, key)[:2], h, w, beta)
    dh, dw, dbeta = vjp((g_loss, g_logits))
    return dh, dw, dbeta, None, None

  head.defvjp(fwd, bwd)
  return head
