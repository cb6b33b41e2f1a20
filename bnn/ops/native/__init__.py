"""Builds, loads and registers the project's XLA FFI handlers for the CPU (C++ in this
directory), so that jitted code can call them through ``jax.ffi.ffi_call``.

The library is compiled on first use with the machine's C++ compiler ($CXX, default
``c++``) against the headers jaxlib ships (``jax.ffi.include_dir()``), for this CPU
(-march=native, or $BNN_NATIVE_MARCH), into ``build/`` here (or $BNN_NATIVE_BUILD_DIR).
Its file name carries a hash of the sources, the flags, jaxlib's version and the CPU,
so a change to any of them builds anew; concurrent first uses (pytest -n) each compile to a
temporary name and rename it into place, which is atomic.

Without a compiler ``available()`` is False and says why once (a warning): callers
then use plain XLA, which computes the same values in more memory. The handlers:
first_dense.cc (bnn.ops.pixel_dense) and square_sums.cc (bnn.optim's factored_adam).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jaxlib

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("first_dense.cc", "square_sums.cc")
# name in XLA -> symbol in the library
TARGETS = {"bnn_first_dense_forward": "BnnFirstDenseForward",
           "bnn_first_dense_weight_grad": "BnnFirstDenseWeightGrad",
           "bnn_square_sums": "BnnSquareSums"}
FLAGS = ("-std=c++17", "-O3", "-ffp-contract=off", "-fPIC", "-shared")


def _march() -> str:
  """-march: $BNN_NATIVE_MARCH, default native (x86-64 builds the portable loops on x86,
  which the tests check too)."""
  return "-march=" + os.environ.get("BNN_NATIVE_MARCH", "native")


_lock = threading.Lock()
_state: dict = {}  # "lib" (a loaded, registered library) or "error" (why not)


class BuildError(RuntimeError):
  """The FFI library could not be built: no compiler, or a compiler error."""


def build_dir() -> Path:
  env = os.environ.get("BNN_NATIVE_BUILD_DIR")
  return Path(env).resolve() if env else SOURCE_DIR / "build"


def _cpu() -> str:
  """What -march=native depends on: the CPU model and its feature flags."""
  try:
    text = Path("/proc/cpuinfo").read_text(errors="replace")
  except OSError:
    return platform.processor()
  keep = [line for line in text.splitlines()
          if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
  return "\n".join(sorted(set(keep)))


def library_path(compiler: list[str]) -> Path:
  digest = hashlib.sha256()
  for name in SOURCES:
    digest.update((SOURCE_DIR / name).read_bytes())
  for part in (*compiler, *FLAGS, _march(), jaxlib.__version__, platform.machine(), _cpu()):
    digest.update(part.encode() + b"\0")
  return build_dir() / f"libbnn_ffi-{digest.hexdigest()[:16]}.so"


def _compiler() -> list[str]:
  cxx = shlex.split(os.environ.get("CXX", "c++"))
  if not cxx or shutil.which(cxx[0]) is None:
    raise BuildError(f"no C++ compiler ({' '.join(cxx) or 'CXX is empty'} not found; "
                     f"Debian: apt-get install g++, or set CXX)")
  return cxx


def build() -> Path:
  """The library for this machine, compiled first if it is not there yet."""
  cxx = _compiler()
  lib = library_path(cxx)
  if lib.exists():
    return lib
  lib.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=lib.name + ".", suffix=".tmp", dir=lib.parent)
  os.close(fd)
  cmd = [*cxx, *FLAGS, _march(), "-isystem", jax.ffi.include_dir(),
         *(str(SOURCE_DIR / s) for s in SOURCES), "-o", tmp]
  try:
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
      raise BuildError(f"building {lib.name} failed ({shlex.join(cmd)}):\n{run.stderr[-4000:]}")
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return lib


def load() -> ctypes.CDLL:
  """The library, built if needed and its handlers registered with XLA (once)."""
  with _lock:
    if "lib" not in _state:
      lib = ctypes.cdll.LoadLibrary(str(build()))
      for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      _state["lib"] = lib
    return _state["lib"]


def available() -> bool:
  """Whether the handlers can be used; the first failure is reported as a warning
  (what is missing, and that plain XLA is used instead) and remembered."""
  if "lib" in _state:
    return True
  if "error" in _state:
    return False
  try:
    load()
    return True
  except BuildError as e:
    _state["error"] = str(e)
    warnings.warn(f"bnn.ops.native: {e}\nThe first dense layer on uint8 pixels and "
                  f"factored_adam's statistics fall back to XLA: the same values, in more "
                  f"memory.", RuntimeWarning, stacklevel=2)
    return False
