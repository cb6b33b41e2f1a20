"""Helpers that make a sweep file a few lines: ``product`` and ``zip`` build the list
of points (override dicts with dotted keys such as "model.grad_quantizer"),
``specs`` writes quantizer spec strings, and ``sweep_config`` turns a base config
file and the points into the ConfigDict that `main.py --mode sweep` runs.

A point is a dict {dotted key: value}; the optional key "name" names the point (its
sub-workdir), else the name is made from its values (bnn/sweep.py).
"""
from __future__ import annotations

import builtins
import importlib.util
import itertools
from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[2]


def _axis(axis) -> list[dict]:
  """{"a": [1, 2], "b": [3, 4]} -> the points of those keys zipped: [{a: 1, b: 3},
  {a: 2, b: 4}]; a list of dicts is already an axis."""
  if isinstance(axis, dict):
    lengths = {key: len(values) for key, values in axis.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"the value lists of an axis must have one length; got {lengths}")
    return [dict(builtins.zip(axis, values)) for values in builtins.zip(*axis.values())]
  if isinstance(axis, list) and all(isinstance(p, dict) for p in axis):
    return [dict(p) for p in axis]
  raise TypeError(f"a sweep axis is a dict of value lists or a list of dicts; got {axis!r}")


def _merge(points) -> dict:
  merged = {}
  for point in points:
    repeated = merged.keys() & point.keys()
    if repeated:
      raise ValueError(f"key(s) {sorted(repeated)} set by two axes of one sweep")
    merged.update(point)
  return merged


def product(*axes) -> list[dict]:
  """Every combination of the axes' points (itertools.product), first axis slowest.

  product({"model.method": ["standard", "proposed"]}, {"seed": [0, 1]}) -> 4 points.
  """
  return [_merge(combo) for combo in itertools.product(*map(_axis, axes))]


def zip(*axes) -> list[dict]:  # noqa: A001  (the sweep vocabulary: product and zip)
  """The axes' points side by side (they must have one length).

  zip({"name": ["f32", "f16"], "model.bn_grad_quantizer": ["identity", "float16"]}).
  """
  lists = [_axis(a) for a in axes]
  if len({len(l) for l in lists}) > 1:
    raise ValueError(f"zip() needs axes of one length; got {[len(l) for l in lists]}")
  return [_merge(points) for points in builtins.zip(*lists)]


def specs(name: str, **arguments) -> list[str]:
  """Quantizer specs for every combination of the arguments' values:
  specs("po2", bits=[3, 4], bias=[8]) -> ["po2(bits=3, bias=8)", "po2(bits=4, bias=8)"]."""
  keys = list(arguments)
  return [f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in builtins.zip(keys, values)) + ")"
          for values in itertools.product(*arguments.values())]


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of a config file, named relative to the repository root."""
  file = ROOT / path
  if not file.is_file():
    raise FileNotFoundError(f"base config {path!r} not found (looked for {file})")
  spec = importlib.util.spec_from_file_location(f"_sweep_base_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def sweep_config(base: str, points: list[dict], arg: str | None = None
                 ) -> ml_collections.ConfigDict:
  """The ConfigDict of a sweep: the base config file's config (with the variant
  ``arg``, e.g. "quick", passed on to it) under ``base``, and the points.

  Override the base for every point from the command line with
  --config.base.num_epochs=5; the points are applied on top.
  """
  if not points:
    raise ValueError("a sweep needs at least one point")
  c = ml_collections.ConfigDict()
  c.base_file = base
  c.variant = arg or ""
  c.base = load_config(base, arg)
  c.points = [dict(p) for p in points]
  return c
