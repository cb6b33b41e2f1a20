"""Every shipped sweep (configs/sweeps/): it names its base, says how to run it, and
all its points pass the up-front validation (the CIFAR-10 ones too: no data needed)."""
import importlib
import itertools
import re
from pathlib import Path

import pytest

from bnn import sweep

SWEEPS = sorted(p.stem for p in Path(__file__).resolve().parents[2].joinpath("configs", "sweeps")
                .glob("*.py") if p.stem not in ("__init__", "common"))
KINDS = ("po2", "grad_format", "activation", "method")


def _module(name):
  return importlib.import_module(f"configs.sweeps.{name}")


def test_the_issue_sweeps_exist_for_both_models():
  assert set(SWEEPS) == {f"{base}_{kind}" for base in ("fashion_mnist", "cifar10_cnv")
                         for kind in KINDS}


@pytest.mark.parametrize("name", SWEEPS)
def test_every_point_validates_and_docstring_gives_the_command(name):
  module = _module(name)
  assert f"python main.py --mode sweep --config configs/sweeps/{name}.py" in module.__doc__
  assert "minute" in module.__doc__ or "hour" in module.__doc__
  assert module.BASE == f"configs/{'fashion_mnist_mlp' if name.startswith('fashion') else 'cifar10_cnv'}.py"
  for arg in (None, "quick"):
    config = module.get_config(arg)
    points = sweep.plan(config)
    assert len(points) == len(module.get_sweep()) >= 2
    assert config.base_file == module.BASE
    expected_model = "mlp" if name.startswith("fashion") else "cnv"
    assert all(p.config.model.name == expected_model for p in points)
    assert all((p.config.num_train_steps > 0) == (arg == "quick") for p in points)


def _values(name, key):
  return [p.config.model[key] for p in sweep.plan(_module(name).get_config())]


@pytest.mark.parametrize("base", ["fashion_mnist", "cifar10_cnv"])
def test_points_are_the_ones_the_issue_asks_for(base):
  po2 = {tuple(map(int, re.fullmatch(r"po2\(bits=(\d), bias=(\d)\)", s).groups()))
         for s in _values(f"{base}_po2", "grad_quantizer")}
  assert po2 == set(itertools.product((3, 4, 5, 6), (6, 8)))
  formats = list(zip(_values(f"{base}_grad_format", "grad_quantizer"),
                     _values(f"{base}_grad_format", "bn_grad_quantizer")))
  assert formats == [("identity", "identity"), ("identity", "float16"),
                     ("identity", "bfloat16"), ("po2(bits=4, bias=8)", "identity")]
  assert [p.name for p in sweep.plan(_module(f"{base}_grad_format").get_config())] == [
      "float32", "float16", "bfloat16", "po2"]
  assert _values(f"{base}_activation", "activation") == ["ste_sign", "approx_sign", "swish_sign"]
  assert _values(f"{base}_method", "method") == ["standard", "proposed"]
