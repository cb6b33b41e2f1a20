"""Memory-lean binary neural network training in JAX/Flax (Wang et al., 2021)."""
