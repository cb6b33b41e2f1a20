"""The quantizer registry: names, get (by spec string or pass-through), register."""
import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import quantizers
from quantizers import ForwardQuantizer, GradientQuantizer, Quantizer, get, names, register
from quantizers import registry

FORWARD = {"ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "ste_heaviside",
           "ste_tern", "dorefa"}
GRADIENT = {"identity", "float16", "bfloat16", "sign_scaled"}  # po2 may be there too


@pytest.fixture
def isolated_registry(monkeypatch):
  """Registrations made by a test vanish after it."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# ---------------------------------------------------------------- names

def test_names_lists_every_quantizer_by_kind():
  everything = names()
  assert everything == sorted(everything)
  assert FORWARD <= set(names("forward")) and GRADIENT <= set(names("gradient"))
  assert sorted(names("forward") + names("gradient")) == everything
  assert not set(names("forward")) & set(names("gradient"))
  for name in everything:
    cls = type(get(name))
    assert cls.name == name
    expected = ForwardQuantizer if name in names("forward") else GradientQuantizer
    assert issubclass(cls, expected) and cls.kind == expected.kind


# ---------------------------------------------------------------- get

def test_get_by_name_and_arguments():
  assert get("ste_sign") == get("ste_sign()") == quantizers.forward.SteSign()
  assert get("  ste_sign( clip = 0.5 ) ") == quantizers.forward.SteSign(clip=0.5)
  assert get("ste_tern(clip=2.0, threshold=0.1)") == quantizers.forward.SteTern(0.1, 2.0)
  assert get("dorefa(bits=4)").bits == 4
  # An int where a float is expected is accepted and stored as a float.
  q = get("ste_sign(clip=2)")
  assert q.clip == 2.0 and isinstance(q.clip, float) and q.spec() == "ste_sign(clip=2.0)"


def test_get_passes_a_quantizer_through():
  q = quantizers.forward.SteSign(clip=0.25)
  assert get(q) is q
  assert get(q, "forward") is q
  g = get("identity")
  assert get(g, "gradient") is g
  with pytest.raises(ValueError, match="forward quantizer where a gradient quantizer"):
    get(q, "gradient")


@pytest.mark.parametrize("name", names())
def test_spec_round_trips_for_every_registered_quantizer(name):
  q = get(name)
  assert q == type(q)()  # default arguments
  again = get(q.spec())
  assert again == q and type(again) is type(q)
  assert str(q) == q.spec() and q.spec().startswith(name + "(")
  assert get(q.spec(), q.kind) == q


@pytest.mark.parametrize("spec", ["ste_sign(clip=0.5)", "swish_sign(beta=2.5)",
                                  "magnitude_aware_sign(clip=3.0)", "ste_heaviside(clip=0.75)",
                                  "ste_tern(threshold=0.125, clip=1.5)", "dorefa(bits=8)"])
def test_spec_round_trips_with_arguments(spec):
  assert get(spec).spec() == spec
  assert get(get(spec).spec()) == get(spec)


@pytest.mark.parametrize("name", names())
def test_quantizers_are_frozen_and_hashable(name):
  q = get(name)
  twin = get(q.spec())
  assert twin is not q and hash(twin) == hash(q) and {q: 1}[twin] == 1
  for field in dataclasses.fields(q):
    with pytest.raises(dataclasses.FrozenInstanceError):
      setattr(q, field.name, getattr(q, field.name))


def test_quantizers_are_static_arguments_of_jit():
  traces = []
  run = jax.jit(lambda x, q: (traces.append(q), q(x))[1], static_argnums=1)
  x = jnp.asarray([-0.5, 0.0, 2.0])
  np.testing.assert_array_equal(np.asarray(run(x, get("ste_sign"))), [-1, 1, 1])
  run(x, get("ste_sign(clip=1.0)"))  # equal quantizer, new instance: no retrace
  assert len(traces) == 1
  np.testing.assert_array_equal(np.asarray(run(x, get("ste_heaviside"))), [0, 1, 1])
  run(x, get("ste_sign(clip=0.5)"))  # different argument: a new program
  assert len(traces) == 3
  # Gradient quantizers too.
  run_g = jax.jit(lambda g, q: q(g), static_argnums=1)
  np.testing.assert_array_equal(np.asarray(run_g(x, get("identity"))), np.asarray(x))


# ---------------------------------------------------------------- errors

def test_unknown_name_lists_the_known_quantizers():
  with pytest.raises(ValueError) as e:
    get("stesign(clip=1.0)")
  msg = str(e.value)
  assert "'stesign'" in msg
  for name in names():
    assert f"{name}(" in msg  # each with its signature
  assert "ste_sign(clip: float = 1.0)" in msg
  with pytest.raises(ValueError) as e:
    get("nope", "gradient")
  msg = str(e.value)
  assert all(f"{name}(" in msg for name in names("gradient"))
  assert "ste_sign(" not in msg


@pytest.mark.parametrize("spec", ["", "(", "ste_sign(clip=", "ste_sign(clip=1.0", "1.0",
                                  "ste_sign.x", "ste_sign[1]", "ste_sign(clip=1.0)(x=1)",
                                  "a b", "ste_sign; import os", "lambda: 0"])
def test_bad_syntax(spec):
  with pytest.raises(ValueError, match=r"cannot parse quantizer spec .*expected NAME"):
    get(spec)


def test_positional_arguments_are_refused():
  with pytest.raises(ValueError, match=r"'ste_sign\(1.0\)'.*by keyword"):
    get("ste_sign(1.0)")
  with pytest.raises(ValueError, match="by keyword"):
    get("ste_tern(0.1, clip=1.0)")


@pytest.mark.parametrize("value", ["foo", "1+x", "-x", "abs(1)", "[i for i in x]"])
def test_values_must_be_literals(value):
  with pytest.raises(ValueError, match=r"the value of 'clip' must be a literal"):
    get(f"ste_sign(clip={value})")


@pytest.mark.parametrize("spec,message", [
    ("ste_sign(clip='1.0')", r"clip='1.0' has type str, expected float"),
    ("ste_sign(clip=True)", r"clip=True has type bool, expected float"),
    ("ste_sign(clip=None)", r"clip=None has type NoneType, expected float"),
    ("ste_sign(clip=(1, 2))", r"clip=\(1, 2\) has type tuple, expected float"),
    ("dorefa(bits=2.0)", r"bits=2.0 has type float, expected int"),
    ("dorefa(bits=True)", r"bits=True has type bool, expected int"),
])
def test_wrong_types(spec, message):
  with pytest.raises(TypeError, match=message) as e:
    get(spec)
  assert "signature: " in str(e.value)  # and says what is expected


def test_unknown_argument():
  with pytest.raises(ValueError, match=r"'ste_sign' has no argument 'clop'; "
                                       r"expected: ste_sign\(clip: float = 1.0\)"):
    get("ste_sign(clop=1.0)")
  with pytest.raises(ValueError, match=r"'approx_sign' has no argument 'clip'"):
    get("approx_sign(clip=1.0)")


def test_invalid_values_are_refused_at_construction():
  with pytest.raises(ValueError, match=r"ste_sign: clip=-1.0"):
    get("ste_sign(clip=-1.0)")
  with pytest.raises(ValueError, match=r"ste_sign: clip=inf"):
    get("ste_sign(clip=1e400)")


def test_kind_mismatch():
  with pytest.raises(ValueError) as e:
    get("ste_sign", "gradient")
  msg = str(e.value)
  assert "ste_sign(clip=1.0) is a forward quantizer where a gradient quantizer is expected" in msg
  assert all(name in msg for name in names("gradient"))
  with pytest.raises(ValueError, match="gradient quantizer where a forward quantizer"):
    get("identity", "forward")


@pytest.mark.parametrize("spec", [None, 1.0, ["ste_sign"], quantizers.forward.SteSign])
def test_get_needs_a_string_or_a_quantizer(spec):
  with pytest.raises(TypeError, match="expected a quantizer spec string or a Quantizer"):
    get(spec)


def test_repeated_argument():
  with pytest.raises(ValueError, match="twice"):
    get("ste_sign(clip=1.0, clip=2.0)")


def test_double_star_arguments():
  with pytest.raises(ValueError, match=r"\*\*"):
    get("ste_sign(**{'clip': 1.0})")


# ---------------------------------------------------------------- register

@dataclasses.dataclass(frozen=True)
class _Toy(ForwardQuantizer):
  """A quantizer with one field of each kind the registry checks."""

  name = "toy_for_registry_test"
  count: int = 1
  scale: float = 0.5
  mode: typing.Literal["up", "down"] = "up"
  flag: bool = False
  label: str = "a'b"

  def __call__(self, x):
    return x * self.scale


def test_register_a_new_quantizer(isolated_registry):
  assert register(_Toy) is _Toy
  assert register(_Toy) is _Toy  # registering the same class again is harmless
  assert "toy_for_registry_test" in names() and "toy_for_registry_test" in names("forward")
  q = get("toy_for_registry_test(count=3, scale=2, mode='down', flag=True, label='x\"y')")
  assert q == _Toy(count=3, scale=2.0, mode="down", flag=True, label='x"y')
  assert get(q.spec()) == q and get(_Toy().spec()) == _Toy()
  with pytest.raises(ValueError, match=r"mode='sideways' is not allowed; expected one of "
                                       r"\['up', 'down'\]"):
    get("toy_for_registry_test(mode='sideways')")
  with pytest.raises(TypeError, match=r"flag=1 has type int, expected bool"):
    get("toy_for_registry_test(flag=1)")
  with pytest.raises(TypeError, match=r"count=1.5 has type float, expected int"):
    get("toy_for_registry_test(count=1.5)")


def test_register_refuses_a_duplicate_name(isolated_registry):
  @dataclasses.dataclass(frozen=True)
  class Impostor(ForwardQuantizer):
    name = "ste_sign"

  with pytest.raises(ValueError, match=r"'ste_sign' is already registered \(SteSign\)"):
    register(Impostor)
  assert type(get("ste_sign")) is quantizers.forward.SteSign


def test_register_refuses_what_is_not_a_quantizer_dataclass(isolated_registry):
  class Plain:
    name = "plain"

  for thing in (Plain, Plain(), int, "ste_sign"):
    with pytest.raises(TypeError, match="expects a Quantizer subclass"):
      register(thing)

  @dataclasses.dataclass(frozen=True)
  class Nameless(GradientQuantizer):
    pass

  with pytest.raises(ValueError, match="has no `name`"):
    register(Nameless)
  assert "plain" not in names()


def test_register_refuses_an_undecorated_subclass(isolated_registry):
  class NotADataclass(ForwardQuantizer):
    name = "not_a_dataclass"
    clip: float = 1.0  # not a field: there is no @dataclasses.dataclass

  with pytest.raises(TypeError, match="frozen dataclass"):
    register(NotADataclass)


def test_the_isolated_registry_is_restored():
  assert "toy_for_registry_test" not in names()
  assert isinstance(get("ste_sign"), Quantizer)


def test_names_of_an_unknown_kind():
  with pytest.raises(ValueError, match="bogus"):
    names("bogus")
