"""Checks an experiment config before anything is built or compiled, so that a bad
override fails at once with a message that names the key, the value and what is
expected."""
from __future__ import annotations

import ml_collections

import quantizers
from bnn.ops import METHODS

_POSITIVE_INTS = ("batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps",
                  "log_every_steps")
_GRADIENT_QUANTIZERS = ("grad_quantizer", "bn_grad_quantizer", "weight_grad_quantizer")


class ConfigError(ValueError):
  """A config value that cannot work."""


def _fail(key: str, value, expected: str):
  raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def validate(config: ml_collections.ConfigDict) -> None:
  from bnn import data, models

  for key in _POSITIVE_INTS:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      _fail(key, value, "a positive integer")
  for key in ("num_train_steps", "eval_steps"):
    if config[key] == 0 or config[key] < -1:
      _fail(key, config[key], "-1 (no limit) or a positive integer")
  if not config.seed >= 0:
    _fail("seed", config.seed, "a non-negative integer")

  if config.dataset.name not in data.DATASETS:
    _fail("dataset.name", config.dataset.name, f"one of {sorted(data.DATASETS)}")
  if config.dataset.validation_size < 0:
    _fail("dataset.validation_size", config.dataset.validation_size, "an integer >= 0")

  m = config.model
  if m.method not in METHODS:
    _fail("model.method", m.method, f"one of {list(METHODS)}")
  if m.name not in models.registry():
    _fail("model.name", m.name, f"one of {sorted(models.registry())}")
  _quantizer("model.activation", m.activation, "forward")
  for key in _GRADIENT_QUANTIZERS:
    if m[key] == "default":
      continue
    q = _quantizer(f"model.{key}", m[key], "gradient")
    if m.method == "standard" and q.name != "identity":
      _fail(f"model.{key}", m[key], "'default' or 'identity' with model.method='standard' "
            "(the standard method keeps float32 gradients)")

  o = config.optimizer
  if o.name not in ("adam", "factored_adam", "bop"):
    _fail("optimizer.name", o.name, "'adam', 'factored_adam' or 'bop'")
  for key in ("state_dtype", "weight_dtype"):
    if o[key] not in ("default", "float32", "float16", "bfloat16"):
      _fail(f"optimizer.{key}", o[key], "one of 'default', 'float32', 'float16', 'bfloat16'")
  if not 0 < o.bop_gamma <= 1:
    _fail("optimizer.bop_gamma", o.bop_gamma, "a number in (0, 1]")
  if o.bop_threshold < 0:
    _fail("optimizer.bop_threshold", o.bop_threshold, "a number >= 0")
  if not o.lr > 0:
    _fail("optimizer.lr", o.lr, "a positive number")
  if not 0 < o.plateau_factor <= 1:
    _fail("optimizer.plateau_factor", o.plateau_factor, "a number in (0, 1]")
  if o.plateau_patience < 1:
    _fail("optimizer.plateau_patience", o.plateau_patience, "a positive number of epochs")
  if o.plateau_min_delta < 0:
    _fail("optimizer.plateau_min_delta", o.plateau_min_delta, "a number >= 0")

  s = config.sharding
  if s.state not in ("replicated", "sharded"):
    _fail("sharding.state", s.state, "'replicated' or 'sharded'")
  if isinstance(s.num_devices, bool) or not isinstance(s.num_devices, int) or \
     not (s.num_devices == -1 or s.num_devices >= 1):
    _fail("sharding.num_devices", s.num_devices, "-1 (all devices) or a positive integer")


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


def _quantizer(key: str, spec: str, kind: str):
  try:
    return quantizers.get(spec, kind)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.{key}={spec!r}: {e}") from e
