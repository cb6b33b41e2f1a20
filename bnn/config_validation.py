"""Checks an experiment config before anything is built or compiled, so that a bad
value fails at once with a message that names the key, the value and what is
expected. Every check raises ConfigError (tests/bnn/test_config_validation.py feeds
it random invalid configs)."""
from __future__ import annotations

import difflib
import math
import os

import ml_collections

import quantizers
from bnn.ops import METHODS

_POSITIVE_INTS = ("batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps",
                  "log_every_steps")
_GRADIENT_QUANTIZERS = ("grad_quantizer", "bn_grad_quantizer", "weight_grad_quantizer")
_DTYPES = ("default", "float32", "float16", "bfloat16")


class ConfigError(ValueError):
  """A config value that cannot work."""


def _fail(key: str, value, expected: str):
  raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def _int(config, key: str, minimum: int, expected: str | None = None, allow=()) -> None:
  value = _get(config, key)
  if isinstance(value, int) and not isinstance(value, bool) and value in allow:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    _fail(key, value, expected or (f"an integer >= {minimum}" if minimum != 1
                                   else "a positive integer"))


def _number(config, key: str, low: float, high: float = math.inf, *,
            low_open: bool = False, expected: str = "") -> None:
  value = _get(config, key)
  ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        and (value > low if low_open else value >= low) and value <= high)
  if not ok:
    _fail(key, value, expected or f"a number in {'(' if low_open else '['}{low}, {high}]")


def _choice(config, key: str, options) -> None:
  value = _get(config, key)
  if not isinstance(value, str) or value not in options:
    _fail(key, value, f"one of {list(options)}")


def _check_known_keys(config, reference, prefix: str = "") -> None:
  """Keys the experiment reads are those of configs/common.py base(); any other key
  is a typo that would otherwise be ignored."""
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f"; did you mean {prefix}{close[0]}?" if close else ""
      raise ConfigError(f"config.{path}: unknown key (known under config.{prefix or ''}: "
                        f"{sorted(reference.keys())}){hint}")
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        _fail(path, value, f"a group of keys {sorted(ref.keys())}")
      _check_known_keys(value, ref, f"{path}.")
  for key in reference.keys():
    if key not in config:
      raise ConfigError(f"config.{prefix}{key}: missing (configs/common.py base() has it)")


def validate(config: ml_collections.ConfigDict) -> None:
  from bnn import data, models
  from configs import common

  if "base" in config and "points" in config:  # its keys would read as unknown ones
    raise ConfigError(
        f"this config is a sweep of {len(config.points)} points over "
        f"{config.get('base_file', 'a base config')}: run it with --mode sweep, or one "
        f"experiment with --config {config.get('base_file', '<the base config>')}")
  _check_known_keys(config, common.base())
  for key in _POSITIVE_INTS:
    _int(config, key, 1)
  for key in ("num_train_steps", "eval_steps"):
    _int(config, key, 1, "-1 (no limit) or a positive integer", allow=(-1,))
  _int(config, "seed", 0)

  _choice(config, "dataset.name", sorted(data.DATASETS))
  _int(config, "dataset.validation_size", 0)
  augment = config.dataset.augment
  if not isinstance(augment, str):
    _fail("dataset.augment", augment, "'default', 'none' or a spec such as 'shift(0.15)+flip'")
  if augment != "default":
    try:
      data.parse_augment(augment)
    except ValueError as e:
      raise ConfigError(f"config.dataset.augment={augment!r}: {e}") from e
  data_dir = config.dataset.data_dir
  if not isinstance(data_dir, str):
    _fail("dataset.data_dir", data_dir, "a directory path, or '' for TFDS's default")
  if data_dir and not os.path.isdir(data_dir):
    _fail("dataset.data_dir", data_dir, "an existing directory (or '' for TFDS's default)")

  _choice(config, "model.method", list(METHODS))
  _choice(config, "model.name", sorted(models.registry()))
  m = config.model
  _quantizer("model.activation", m.activation, "forward")
  for key in _GRADIENT_QUANTIZERS:
    if m[key] == "default":
      continue
    q = _quantizer(f"model.{key}", m[key], "gradient")
    if m.method == "standard" and q.name != "identity":
      _fail(f"model.{key}", m[key], "'default' or 'identity' with model.method='standard' "
            "(the standard method keeps float32 gradients)")

  _choice(config, "optimizer.name", ("default", "adam", "factored_adam", "bop"))
  for key in ("state_dtype", "weight_dtype"):
    _choice(config, f"optimizer.{key}", _DTYPES)
  _number(config, "optimizer.lr", 0, low_open=True, expected="a positive finite number")
  _number(config, "optimizer.bop_gamma", 0, 1, low_open=True)
  _number(config, "optimizer.bop_threshold", 0, expected="a finite number >= 0")
  _number(config, "optimizer.plateau_factor", 0, 1, low_open=True)
  _int(config, "optimizer.plateau_patience", 1, "a positive number of epochs")
  _number(config, "optimizer.plateau_min_delta", 0, expected="a finite number >= 0")

  _choice(config, "sharding.state", ("replicated", "sharded"))
  _int(config, "sharding.num_devices", 1, "-1 (all devices) or a positive integer",
       allow=(-1,))

  _check_model_fits_images(config)


def _check_model_fits_images(config: ml_collections.ConfigDict) -> None:
  """Traces the model on the dataset's image shape (shapes only, nothing compiled), so
  that e.g. a kernel larger than its input is a ConfigError before any data is read."""
  import jax
  import jax.numpy as jnp
  from bnn import data, models

  spec = data.get_spec(config.dataset.name)
  model = models.create(config.model, spec.num_classes)
  image = jax.ShapeDtypeStruct((1, *spec.image_shape), jnp.float32)
  try:
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
  except ValueError as e:
    raise ConfigError(f"config.model.name={config.model.name!r} does not fit "
                      f"config.dataset.name={config.dataset.name!r} (images "
                      f"{'x'.join(map(str, spec.image_shape))}): {e}") from e


def check_num_devices(config: ml_collections.ConfigDict, available: int) -> None:
  """sharding.num_devices against the devices JAX sees (known only at run time)."""
  n = config.sharding.num_devices
  if n != -1 and not 1 <= n <= available:
    _fail("sharding.num_devices", n, f"-1 (all) or 1..{available}, the devices JAX sees")


def check_batch_split(config: ml_collections.ConfigDict, num_devices: int,
                      num_processes: int = 1) -> None:
  """The global batches must split evenly over the devices (and so over the
  processes); checked when the mesh is known, before anything is compiled."""
  for key in ("batch_size", "eval_batch_size"):
    for count, what in ((num_devices, "devices"), (num_processes, "processes")):
      if config[key] % count:
        hint = ""
        if what == "devices" and num_processes == 1:
          fewer = max(d for d in range(1, count) if config[key] % d == 0)
          hint = f", or fewer devices: --config.sharding.num_devices={fewer}"
        _fail(key, config[key], f"a multiple of the {count} {what} it is split over "
              f"(e.g. {max(count, config[key] // count * count)} or "
              f"{(config[key] // count + 1) * count}){hint}")


def _quantizer(key: str, spec, kind: str):
  if not isinstance(spec, str):
    _fail(key, spec, "a quantizer spec string such as 'po2(bits=4)'")
  try:
    return quantizers.get(spec, kind)
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"config.{key}={spec!r}: {e}") from e
