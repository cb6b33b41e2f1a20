"""config_validation.validate: every shipped config passes; random invalid configs
(hypothesis) always raise ConfigError naming the bad key, never another exception."""
import importlib
import pkgutil
import re

import ml_collections
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import configs
from bnn.config_validation import ConfigError, validate


def _shipped_configs():
  for m in pkgutil.iter_modules(configs.__path__):
    if m.name in ("common", "sweeps"):
      continue
    module = importlib.import_module(f"configs.{m.name}")
    for variant in [None, *sorted(set(re.findall(r"`:(\w+)`", module.__doc__ or "")))]:
      yield pytest.param(module, variant, id=f"{m.name}:{variant or ''}")


@pytest.mark.parametrize("module,variant", list(_shipped_configs()))
def test_every_shipped_config_and_variant_is_valid(module, variant):
  validate(module.get_config(variant))


_junk = st.one_of(st.text(max_size=8), st.booleans(), st.none(),
                  st.lists(st.integers(), max_size=2), st.floats(allow_nan=True))
_non_positive = st.integers(max_value=0)
_not_a_positive_int = st.one_of(_non_positive, _junk,
                                st.floats(min_value=1, max_value=1e6).filter(lambda x: x != int(x)))
_quantizer_junk = st.one_of(
    st.text(max_size=12), st.sampled_from(["po2(bits=0)", "po2(bits=-3)", "po2(bits=4, bias=x)",
                                           "float7", "po2(", "po2(bits=4))", "ste_sign(",
                                           "fp16(bits=4)"]))

# key -> strategy of values that must be refused for it
INVALID = {
    **{k: _not_a_positive_int for k in ("batch_size", "eval_batch_size", "num_epochs",
                                        "checkpoint_every_steps", "log_every_steps")},
    "num_train_steps": st.one_of(st.just(0), st.integers(max_value=-2), _junk),
    "eval_steps": st.one_of(st.just(0), st.integers(max_value=-2), _junk),
    "seed": st.one_of(st.integers(max_value=-1), _junk),
    "dataset.name": st.one_of(st.text(max_size=10).filter(lambda s: s not in (
        "mnist", "fashion_mnist", "cifar10", "svhn_cropped", "imagenet2012")), _junk),
    "dataset.validation_size": st.one_of(st.integers(max_value=-1), _junk),
    "dataset.augment": st.one_of(st.sampled_from(["shift(2)", "flip(1)", "rotate", "shift+shift",
                                                  "shift(0.1, fill=blue)"]),
                                 st.integers(), st.none()),
    "dataset.data_dir": st.one_of(st.just("/no/such/dir"), st.integers(), st.none()),
    "model.name": st.one_of(st.text(max_size=10).filter(
        lambda s: s not in ("mlp", "cnv", "binarynet", "resnete18", "birealnet18")), _junk),
    "model.method": st.one_of(st.text(max_size=10).filter(
        lambda s: s not in ("standard", "proposed")), _junk),
    "model.activation": _quantizer_junk.filter(lambda s: s.strip() not in (
        "ste_sign", "approx_sign", "swish_sign")),
    "model.grad_quantizer": _quantizer_junk.filter(lambda s: s.strip() not in (
        "default", "identity", "float16", "bfloat16", "float32", "po2")),
    "optimizer.name": st.one_of(st.text(max_size=8).filter(
        lambda s: s not in ("adam", "factored_adam", "bop")), _junk),
    "optimizer.state_dtype": st.one_of(st.sampled_from(["float64", "int8", "fp16", ""]), _junk),
    "optimizer.weight_dtype": st.one_of(st.sampled_from(["float64", "half"]), _junk),
    "optimizer.lr": st.one_of(st.floats(max_value=0), st.just(float("inf")), st.just(float("nan")),
                              st.text(max_size=4), st.none(), st.booleans()),
    "optimizer.bop_gamma": st.one_of(st.floats(max_value=0), st.floats(min_value=1.0001), _junk),
    "optimizer.bop_threshold": st.one_of(st.floats(max_value=-1e-12), st.just(float("inf")),
                                         st.text(max_size=3)),
    "optimizer.plateau_factor": st.one_of(st.floats(max_value=0),
                                          st.floats(min_value=1.0001), _junk),
    "optimizer.plateau_patience": st.one_of(_non_positive, _junk),
    "optimizer.plateau_min_delta": st.one_of(st.floats(max_value=-1e-12), st.text(max_size=3)),
    "sharding.state": st.one_of(st.text(max_size=8).filter(
        lambda s: s not in ("replicated", "sharded")), _junk),
    "sharding.num_devices": st.one_of(st.just(0), st.integers(max_value=-2), _junk),
}


def _with(base: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
  """base with key=value, bypassing ConfigDict's type lock (a config file can hold any
  type; the command line's parser already refuses some)."""
  tree = base.to_dict()
  node = tree
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return ml_collections.ConfigDict(tree)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), key=st.sampled_from(sorted(INVALID)),
       base=st.sampled_from(["fashion_mnist_mlp", "cifar10_cnv"]))
def test_random_invalid_value_raises_config_error_naming_the_key(data, key, base):
  value = data.draw(INVALID[key], label=key)
  config = _with(importlib.import_module(f"configs.{base}").get_config(), key, value)
  with pytest.raises(ConfigError) as e:
    validate(config)
  assert f"config.{key}" in str(e.value)


@settings(max_examples=50, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       group=st.sampled_from(["", "model.", "optimizer.", "dataset."]))
def test_unknown_key_is_refused(key, group):
  tree = importlib.import_module("configs.fashion_mnist_mlp").get_config().to_dict()
  node = tree
  for part in filter(None, group.split(".")):
    node = node[part]
  assume(key not in node)
  node[key] = 1
  with pytest.raises(ConfigError, match=f"config.{re.escape(group + key)}: unknown key"):
    validate(ml_collections.ConfigDict(tree))


def test_a_sweep_given_where_one_experiment_is_expected_says_to_use_mode_sweep():
  """main.py --config configs/sweeps/x.py without --mode sweep: not 'unknown key base'."""
  sweep = importlib.import_module("configs.sweeps.fashion_mnist_po2").get_config()
  with pytest.raises(ConfigError, match=re.escape(
      f"this config is a sweep of {len(sweep.points)} points over "
      "configs/fashion_mnist_mlp.py: run it with --mode sweep, or one experiment with "
      "--config configs/fashion_mnist_mlp.py")):
    validate(sweep)


@pytest.mark.parametrize("overrides,message", [
    ({"model.grad_quantizer": "po2(bits=4)", "model.method": "standard"},
     re.escape("config.model.grad_quantizer='po2(bits=4)': expected 'default' or "
               "'identity' with model.method='standard'")),
    ({"model.name": "cnv"}, r"config.model.name='cnv' does not fit "
                            r"config.dataset.name='fashion_mnist' \(images 28x28x1\): "
                            r"binary_conv: kernel height 3 is larger than the padded input"),
    ({"optimzer": {"lr": 1.0}}, r"config.optimzer: unknown key .*did you mean optimizer\?"),
])
def test_incompatible_combinations(overrides, message):
  config = importlib.import_module("configs.fashion_mnist_mlp").get_config()
  for key, value in overrides.items():
    config = _with(config, key, value) if "." in key else ml_collections.ConfigDict(
        {**config.to_dict(), key: value})
  with pytest.raises(ConfigError, match=message):
    validate(config)
