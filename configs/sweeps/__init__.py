"""Sweeps: one file per sweep, each naming its base config and its points
(`python main.py --mode sweep --config configs/sweeps/<x>.py`; bnn/sweep.py)."""
