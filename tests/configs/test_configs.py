"""Every config: its docstring says how to run it, and its quick variant trains a
few steps and evaluates (mocked TFDS for the datasets that cannot be had offline)."""
import contextlib
import importlib
import json
from pathlib import Path

import pytest

from bnn import experiment
from tests.bnn.data.fake_tfds import mock_tfds

CONFIGS = sorted(p.stem for p in Path(__file__).resolve().parents[2].joinpath("configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))
OFFLINE = {"fashion_mnist"}


def _config(name, arg="quick"):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def test_all_published_configs_exist():
  assert set(CONFIGS) >= {"fashion_mnist_mlp", "mnist_mlp", "cifar10_cnv", "svhn_cnv",
                          "cifar10_binarynet", "svhn_binarynet", "imagenet_resnete18",
                          "imagenet_birealnet18"}


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_gives_command_accuracy_and_time(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert f"python main.py --config configs/{name}.py" in doc
  assert "%" in doc                                   # the published / expected accuracy
  assert "minute" in doc or "hour" in doc or "day" in doc  # the expected run time


@pytest.mark.parametrize("name", CONFIGS)
def test_variants(name):
  full, quick = _config(name, None), _config(name, "quick")
  assert quick.num_train_steps > 0 and full.num_train_steps == -1
  assert _config(name, "standard").model.method == "standard"
  assert _config(name, "po2").model.grad_quantizer.startswith("po2")
  lean = _config(name, "lean,quick").optimizer
  assert (lean.name, lean.state_dtype, lean.weight_dtype) == ("factored_adam", "float16", "float32")
  with pytest.raises(ValueError, match="variant"):
    _config(name, "nonsense")


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_quick_variant_trains_and_evaluates(name, tmp_path):
  config = _config(name)
  mock = contextlib.nullcontext() if config.dataset.name in OFFLINE else mock_tfds()
  with mock:
    results = experiment.train_and_evaluate(config, tmp_path)
    evaluated = experiment.evaluate(config, tmp_path)
  assert results["step"] == config.num_train_steps
  assert 0.0 <= results["test"]["accuracy"] <= 1.0
  assert evaluated["test"]["accuracy"] == pytest.approx(results["best_test"]["accuracy"])
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == config.model.name
  assert (tmp_path / "curves.png").stat().st_size > 0
