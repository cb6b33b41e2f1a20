"""Building and loading the FFI library (bnn.ops.native)."""
import os
import platform
import subprocess
import sys

import pytest

from bnn.ops import native


def test_the_library_name_follows_its_sources_and_compiler(monkeypatch, tmp_path):
  a = native.library_path(["c++"])
  assert a == native.library_path(["c++"])
  assert a != native.library_path(["g++-12"])
  monkeypatch.setattr(native, "FLAGS", native.FLAGS + ("-DSOMETHING",))
  assert a != native.library_path(["c++"])


def test_a_missing_compiler_is_a_build_error_naming_it(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", "no-such-compiler-xyz")
  monkeypatch.setenv("BNN_NATIVE_BUILD_DIR", str(tmp_path))
  with pytest.raises(native.BuildError, match="no-such-compiler-xyz not found"):
    native.build()


def test_without_a_compiler_the_op_falls_back_with_one_warning(tmp_path):
  """A fresh process with no compiler and an empty build directory: available() is
  False, says why once, and the MLP's first layer still trains (on XLA's dot)."""
  code = """
import warnings, jax, jax.numpy as jnp
from bnn.ops import native, binary_dense
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  assert not native.available() and not native.available()
  g = jax.grad(lambda w: binary_dense(jnp.ones((2, 3), jnp.uint8), w, method="proposed",
                                      first_layer=True).sum())(jnp.zeros((3, 2)))
messages = [str(w.message) for w in caught if "bnn.ops.native" in str(w.message)]
assert len(messages) == 1 and "fall back" in messages[0], messages
assert g.shape == (3, 2)
"""
  env = {"CXX": "no-such-compiler-xyz", "BNN_NATIVE_BUILD_DIR": str(tmp_path),
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": "."}
  run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]


def test_a_compiler_error_is_reported_with_its_output(monkeypatch, tmp_path):
  monkeypatch.setenv("BNN_NATIVE_BUILD_DIR", str(tmp_path))
  monkeypatch.setattr(native, "FLAGS", native.FLAGS + ("-DBNN_AVX2", "-include", "/nonexistent.h"))
  with pytest.raises(native.BuildError, match="failed"):
    native.build()
  assert not list(tmp_path.iterdir())  # no half-written library left behind


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the portable build is checked on x86")
def test_the_portable_loops_pass_the_same_tests(tmp_path):
  """The handlers built without AVX2 (-march=x86-64: the loops an ARM host runs) pass
  the reference tests of the handlers and of the square sums, in a fresh process."""
  env = dict(os.environ, BNN_NATIVE_MARCH="x86-64", BNN_NATIVE_BUILD_DIR=str(tmp_path),
             JAX_PLATFORMS="cpu")
  run = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
       "tests/bnn/ops/test_pixel_dense.py", "tests/bnn/test_optim.py", "-k",
       "handler or square_sums"], env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
  assert "passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-2000:]
  built = list(tmp_path.glob("libbnn_ffi-*.so"))
  assert len(built) == 1
  assert b"vpmaddubsw" not in subprocess.run(["objdump", "-d", str(built[0])],
                                              capture_output=True).stdout
