"""Pluggable numerics: forward quantizers, gradient quantizers, bit packing.

    >>> import quantizers
    >>> quantizers.get("po2(bits=4, bias=8)")
    >>> quantizers.names("gradient")

Plain JAX; nothing in here imports Flax.
"""
from quantizers import forward, gradient  # noqa: F401  (registers the quantizers)
from quantizers.base import ForwardQuantizer, GradientQuantizer, sign
from quantizers.packing import pack, packed_size, unpack, unpack_bits
from quantizers.registry import Quantizer, get, names, register

__all__ = ["ForwardQuantizer", "GradientQuantizer", "Quantizer", "get", "names",
           "pack", "packed_size", "register", "sign", "unpack", "unpack_bits"]
