import importlib
from pathlib import Path

import numpy as np
import pytest

from bnn import memory, memory_report
from bnn.models import MLP
from tests.configs.test_configs import CONFIGS

B = 100
HIDDEN = 4 * 256


def _hand_count(method):
  """Bits of the MLP 784-256-256-256-256-10 at batch 100, written out by hand."""
  kernels = 784 * 256 + 3 * 256 * 256 + 256 * 10
  betas = 4 * 256 + 10
  params = kernels + betas
  w, kept, grad = (32, 32, 32) if method == "standard" else (16, 1, 16)
  stat = 32 if method == "standard" else 16
  bits = {
      "weights": params * w,
      "weight_grads": params * w,
      "optimizer": 2 * params * w,                        # Adam's two moments
      "bn_state": 2 * 32 * betas,                         # running mean and scale
      "activations": (
          4 * (B * 256 * kept + 2 * 256 * stat)            # 4 batch norms: x_hat or its sign
          + 4 * B * 256 * kept                            # 4 sign activations
          + 3 * B * 256 * kept                            # dense 1..3 inputs (dense 0: the batch)
          + B * 256 * kept                                # the head's dense input
          + (2 * B * 10 * 32 if method == "standard" else 0)),  # head: x_hat and softmax
      "grad_buffers": 2 * B * 256 * grad,                 # the two largest activation gradients
  }
  return {k: v / 8 for k, v in bits.items()}


@pytest.mark.parametrize("method", ["standard", "proposed"])
def test_modelled_mlp_matches_a_hand_count(method):
  layers = memory.modelled(MLP(), (B, 28, 28, 1))
  got = memory.totals(layers, method)
  want = _hand_count(method)
  for category in memory.CATEGORIES:
    assert got[category] == pytest.approx(want[category]), category
  assert len(layers) == 13 and sum(l.params for l in layers) == 400_906


def test_modelled_ratio_is_the_ratio_of_totals():
  layers = memory.modelled(MLP(), (B, 784))
  s = sum(memory.totals(layers, "standard").values())
  p = sum(memory.totals(layers, "proposed").values())
  assert 2.0 < s / p < 3.0
  assert "total" in memory.format_table(layers)


def test_bop_models_one_moment():
  adam = memory.totals(memory.modelled(MLP(), (B, 784)), "proposed")["optimizer"]
  bop = memory.totals(memory.modelled(MLP(), (B, 784), optimizer="bop"), "proposed")["optimizer"]
  assert bop == pytest.approx(adam / 2)


def test_measured_step_memory_of_the_mlp():
  config = importlib.import_module("configs.fashion_mnist_mlp").get_config()
  standard = memory.measure_step(memory_report._for_method(config, "standard"))
  config.optimizer.state_dtype = "float16"
  proposed = memory.measure_step(config)
  # the 16-bit state halves the arguments; the peak must drop
  assert proposed.arguments < 0.55 * standard.arguments, (proposed, standard)
  assert proposed.peak < standard.peak


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_memory_mode_works_for_every_config(name, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config("quick")
  result = memory_report.report(config, tmp_path)
  assert all(m.peak > 0 for m in result["measured"].values())
  assert "ratio standard / proposed" in (tmp_path / "memory.txt").read_text()
  assert (tmp_path / "memory.png").stat().st_size > 0
  assert "total" in (tmp_path / "memory.txt").read_text()
