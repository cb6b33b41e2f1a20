"""Independent NumPy implementations of METHOD.md's equations, for checking the JAX ops.

Written from the equations, not from the JAX code: explicit loops or einsum, float64
where it helps, the same sign(0) = +1 convention.
"""
