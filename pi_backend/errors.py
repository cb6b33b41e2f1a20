"""The one exception type of the bundle reader (pi_backend.bundle, pi_backend.graph)."""
from __future__ import annotations


class BundleError(ValueError):
  """A bundle file that cannot be used: truncated, wrong magic or version, bad
  checksum, malformed metadata, unknown layer kinds or quantizers, or tensors whose
  shape, dtype or values contradict the metadata. The message names what is wrong
  and what was expected."""
