"""Training memory: what the backward pass keeps (saved residuals)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

try:  # public in some JAX releases, private in the pinned one
  from jax.ad_checkpoint import saved_residuals as _saved_residuals
except ImportError:
  from jax._src.ad_checkpoint import saved_residuals as _saved_residuals


@dataclasses.dataclass(frozen=True)
class Residual:
  shape: tuple[int, ...]
  dtype: np.dtype
  source: str

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

  @property
  def is_float(self) -> bool:
    return np.issubdtype(self.dtype, np.floating)


def saved_residuals(f: Callable, *args) -> list[Residual]:
  """The tensors that reverse-mode autodiff of f keeps from forward to backward."""
  return [Residual(tuple(aval.shape), np.dtype(aval.dtype), source)
          for aval, source in _saved_residuals(f, *args)]


def per_example(residuals: list[Residual], batch_size: int) -> list[Residual]:
  """The residuals whose leading dimension is the batch."""
  return [r for r in residuals if r.shape and r.shape[0] == batch_size]
