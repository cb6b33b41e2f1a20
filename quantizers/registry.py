"""One registry for every quantizer, found by a string such as ``"po2(bits=4, bias=8)"``.

A quantizer is a small frozen dataclass: hashable, so it can be a static argument
of a jitted function or of a ``jax.custom_vjp`` op, and comparable, so two configs
that name the same quantizer produce the same compiled program.
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Any, Callable, TypeVar

_REGISTRY: dict[str, type["Quantizer"]] = {}

Q = TypeVar("Q", bound=type)


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """Base class. Subclasses set ``name`` and ``kind`` and implement ``__call__``.

  kind is "forward" (activations/weights, with a straight-through gradient) or
  "gradient" (applied to a cotangent inside a custom backward pass).
  """

  name: typing.ClassVar[str] = ""
  kind: typing.ClassVar[str] = ""

  def spec(self) -> str:
    """The registry string that rebuilds this quantizer: ``get(q.spec()) == q``."""
    args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
    return f"{self.name}({args})"

  def __str__(self) -> str:
    return self.spec()


def register(cls: Q) -> Q:
  """Class decorator: makes ``cls`` available to ``get(cls.name)``."""
  if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
    raise TypeError(f"register() expects a Quantizer subclass, got {cls!r}")
  if not cls.name:
    raise ValueError(f"{cls.__name__} has no `name`; set the class attribute `name`.")
  if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
    raise ValueError(f"a quantizer named {cls.name!r} is already registered "
                     f"({_REGISTRY[cls.name].__qualname__})")
  own = cls.__dict__.get("__dataclass_params__")  # is_dataclass() would see the base's
  if own is None or not own.frozen:
    raise TypeError(f"{cls.__name__} must be a frozen dataclass: decorate it with @dataclasses.dataclass(frozen=True)")
  _REGISTRY[cls.name] = cls
  return cls


def names(kind: str | None = None) -> list[str]:
  """Sorted names of the registered quantizers, optionally only of one kind."""
  if kind not in (None, "forward", "gradient"):
    raise ValueError(f"kind={kind!r}; expected None, 'forward' or 'gradient'")
  return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def _signature(cls: type[Quantizer]) -> str:
  hints = typing.get_type_hints(cls)
  parts = []
  for f in dataclasses.fields(cls):
    t = hints.get(f.name, Any)
    tname = getattr(t, "__name__", str(t).replace("typing.", ""))
    parts.append(f"{f.name}: {tname} = {f.default!r}")
  return f"{cls.name}({', '.join(parts)})"


def _parse(spec: str) -> tuple[str, dict[str, Any]]:
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"cannot parse quantizer spec {spec!r}: expected NAME or "
                     f"NAME(key=value, ...), e.g. 'po2(bits=4, bias=8)'") from e
  if isinstance(node, ast.Name):
    return node.id, {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f"cannot parse quantizer spec {spec!r}: expected NAME or "
                     f"NAME(key=value, ...)")
  if node.args:
    raise ValueError(f"quantizer spec {spec!r}: arguments must be given by keyword, "
                     f"e.g. 'po2(bits=4)'")
  kwargs = {}
  for kw in node.keywords:
    if kw.arg is None:
      raise ValueError(f"quantizer spec {spec!r}: '**' is not allowed; name each argument, "
                       f"e.g. 'po2(bits=4)'")
    if kw.arg in kwargs:
      raise ValueError(f"quantizer spec {spec!r}: argument {kw.arg!r} is given twice")
    try:
      kwargs[kw.arg] = ast.literal_eval(kw.value)
    except ValueError as e:
      raise ValueError(f"quantizer spec {spec!r}: the value of {kw.arg!r} must be a "
                       f"literal (number, string, bool)") from e
  return node.func.id, kwargs


def _check_type(cls: type[Quantizer], key: str, value: Any, expected: Any) -> Any:
  if expected is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  origin = typing.get_origin(expected)
  if origin is typing.Literal:
    if value not in typing.get_args(expected):
      raise ValueError(f"{cls.name}: {key}={value!r} is not allowed; expected one of "
                       f"{list(typing.get_args(expected))}")
    return value
  if isinstance(expected, type) and (not isinstance(value, expected) or
                                     (expected is int and isinstance(value, bool))):
    raise TypeError(f"{cls.name}: {key}={value!r} has type {type(value).__name__}, "
                    f"expected {expected.__name__}; signature: {_signature(cls)}")
  return value


def get(spec: "str | Quantizer", kind: str | None = None) -> Quantizer:
  """Returns the quantizer named by ``spec`` (a string, or a quantizer passed through).

  ``kind`` ("forward" or "gradient"), when given, is checked too.
  """
  if isinstance(spec, Quantizer):
    q = spec
  elif isinstance(spec, str):
    name, kwargs = _parse(spec)
    if name not in _REGISTRY:
      raise ValueError(f"unknown quantizer {name!r} in {spec!r}; known quantizers: "
                       + ", ".join(_signature(_REGISTRY[n]) for n in names(kind)))
    cls = _REGISTRY[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in kwargs:
      if key not in fields:
        raise ValueError(f"quantizer {name!r} has no argument {key!r}; "
                         f"expected: {_signature(cls)}")
    kwargs = {k: _check_type(cls, k, v, hints[k]) for k, v in kwargs.items()}
    q = cls(**kwargs)
  else:
    raise TypeError(f"expected a quantizer spec string or a Quantizer, got {spec!r}")
  if kind is not None and q.kind != kind:
    raise ValueError(f"{q.spec()} is a {q.kind} quantizer where a {kind} quantizer is "
                     f"expected; {kind} quantizers: {', '.join(names(kind))}")
  return q
