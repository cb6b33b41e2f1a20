"""pi_backend: the NumPy + C side of the project, for training on a Raspberry Pi.

Needs only NumPy and a C compiler; never imports jax, flax or tensorflow. Importing
the package loads the C library (pi_backend/csrc), building it with ``make`` first
when it is missing or out of date (see pi_backend/_lib.py). The kernels are in
``pi_backend.kernels``; models (bundles, inference, training) in ``pi_backend.bundle``
and ``pi_backend.model``; the command line is ``python -m pi_backend`` (README.md).
"""
from pi_backend import _lib
from pi_backend import kernels

_lib.load()

__all__ = ["kernels"]
