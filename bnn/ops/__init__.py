"""Functional binary ops: plain autodiff for "standard", jax.custom_vjp for "proposed"."""
from bnn.ops.common import METHODS
from bnn.ops.dense import binary_dense
