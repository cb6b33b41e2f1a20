"""Functional binary ops: plain autodiff for "standard", jax.custom_vjp for "proposed"."""
from bnn.ops.common import METHODS, to_float
from bnn.ops.dense import binary_dense
from bnn.ops.batch_norm import batch_norm, batch_norm_eval
from bnn.ops.max_pool import max_pool
from bnn.ops.stem_pool import stem_pool
from bnn.ops.sign import sign_activation
from bnn.ops.head import classifier_loss
from bnn.ops.conv import binary_conv
