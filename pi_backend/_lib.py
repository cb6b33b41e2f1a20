"""Finds, builds when needed, and loads libbnnpi (pi_backend/csrc) through ctypes.

Which library is loaded:
  - $PI_BACKEND_LIB, when set: that file, as is (never built here);
  - else ``<build dir>/libbnnpi.so``, the build dir being $PI_BACKEND_BUILD_DIR or
    pi_backend/build. When it is missing, or older than any file in csrc/ or the
    Makefile, it is (re)built first with ``make -C pi_backend lib`` (C compiler from
    $CC, default ``cc``). That automatic build turns -Werror off, so that a newer
    compiler's new warning cannot stop an import on the device; ``make -C pi_backend``
    by hand keeps -Werror. Concurrent imports (pytest -n) build once, under a file lock.

Only the standard library is used here (ctypes, subprocess); NumPy is used by kernels.py.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_NAME = "libbnnpi.so"
ABI_VERSION = 5  # must match BNN_ABI_VERSION in csrc/bnnpi.h

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


class BuildError(RuntimeError):
  """The C library could not be built (missing tool or a compiler error)."""


def build_dir() -> Path:
  """Where ``make`` puts the library: $PI_BACKEND_BUILD_DIR or pi_backend/build."""
  env = os.environ.get("PI_BACKEND_BUILD_DIR")
  return Path(env).resolve() if env else PACKAGE_DIR / "build"


def library_path() -> Path:
  """The library that ``load`` uses: $PI_BACKEND_LIB or <build dir>/libbnnpi.so."""
  env = os.environ.get("PI_BACKEND_LIB")
  return Path(env).resolve() if env else build_dir() / LIB_NAME


# Programs in csrc/ that are not part of the library (tests, valgrind driver, fuzzer).
_PROGRAMS = ("test_kernels.c", "train_step.c", "fuzz_kernels.c")


def _sources() -> list[Path]:
  """The files the library is built from (not the C test programs)."""
  csrc = PACKAGE_DIR / "csrc"
  files = [p for p in csrc.iterdir() if p.suffix in (".c", ".h", ".inc")]
  return [PACKAGE_DIR / "Makefile"] + [p for p in files if p.name not in _PROGRAMS]


def _stale(lib: Path) -> bool:
  if not lib.exists():
    return True
  newest = max(p.stat().st_mtime for p in _sources())
  return lib.stat().st_mtime < newest


def _missing_tool_message(tool: str, what: str, lib: Path) -> str:
  return (f"pi_backend: cannot build the C library {lib}: {what} {tool!r} was not found "
          f"on PATH. Install make and a C compiler (Debian / Raspberry Pi OS: "
          f"sudo apt-get install make gcc), or set CC to your compiler, or set "
          f"PI_BACKEND_LIB to a prebuilt libbnnpi.so.")


def build(directory: str | os.PathLike | None = None, *, strict: bool = False) -> Path:
  """Runs ``make -C pi_backend lib`` into ``directory`` (default: ``build_dir()``) and
  returns the library's path. strict: keep -Werror (as a plain ``make`` does).

  Raises BuildError naming the missing tool when make or the compiler is absent, or
  with the compiler's output when the build fails.
  """
  out_dir = Path(directory).resolve() if directory is not None else build_dir()
  lib = out_dir / LIB_NAME
  make = shutil.which("make")
  if make is None:
    raise BuildError(_missing_tool_message("make", "the build tool", lib))
  cc = os.environ.get("CC", "cc")
  cc_words = shlex.split(cc) or ["cc"]
  if shutil.which(cc_words[0]) is None:
    raise BuildError(_missing_tool_message(cc_words[0], "the C compiler (CC)", lib))
  out_dir.mkdir(parents=True, exist_ok=True)
  jobs = max(1, min(8, os.cpu_count() or 1))
  cmd = [make, "-C", str(PACKAGE_DIR), f"-j{jobs}", f"BUILD_DIR={out_dir}", f"CC={cc}", "lib"]
  if not strict:
    cmd.append("WERROR=")
  with _FileLock(out_dir / ".build.lock"):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
  if proc.returncode != 0 or not lib.exists():
    raise BuildError(f"pi_backend: building {lib} failed (exit status {proc.returncode}) "
                     f"with: {' '.join(cmd)}\n{proc.stdout[-4000:]}")
  return lib


class _FileLock:
  """An exclusive lock on a file (POSIX flock); a no-op where fcntl does not exist."""

  def __init__(self, path: Path):
    self.path = path
    self.fd = None

  def __enter__(self):
    try:
      import fcntl  # pylint: disable=import-outside-toplevel
    except ImportError:
      return self
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(self.fd, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    if self.fd is not None:
      os.close(self.fd)  # closing releases the flock
      self.fd = None


def load() -> ctypes.CDLL:
  """The loaded library (built first when needed; see the module docstring)."""
  global _lib
  with _lock:
    if _lib is None:
      path = _locate()
      try:
        lib = ctypes.CDLL(str(path))
      except OSError as e:
        if os.environ.get("PI_BACKEND_LIB"):
          raise OSError(f"pi_backend: cannot load PI_BACKEND_LIB={path}: {e}") from e
        # e.g. a cross build for another CPU left in the build dir: rebuild natively
        # (the Makefile rebuilds everything when CC or the flags change), then retry.
        build(path.parent)
        lib = ctypes.CDLL(str(path))
      _lib = _declare(lib)
  return _lib


def loaded() -> ctypes.CDLL:
  """``load()`` without the lock once the library is loaded (the per-call fast path)."""
  return _lib if _lib is not None else load()


def _locate() -> Path:
  if os.environ.get("PI_BACKEND_LIB"):
    lib = library_path()
    if not lib.exists():
      raise FileNotFoundError(f"pi_backend: PI_BACKEND_LIB={os.environ['PI_BACKEND_LIB']!r} "
                              f"does not exist; expected the path of a built libbnnpi.so")
    return lib
  lib = library_path()
  if _stale(lib):
    try:
      build(lib.parent)  # make itself skips the work when another process just did it
    except (BuildError, OSError) as e:
      if not lib.exists():
        raise
      warnings.warn(f"pi_backend: {lib} looks older than its sources but could not be "
                    f"rebuilt ({e}); loading it as it is", RuntimeWarning, stacklevel=3)
  return lib


# ---- signatures ---------------------------------------------------------------------

_P = ctypes.c_void_p
_I = ctypes.c_int64
_INT = ctypes.c_int
_F = ctypes.c_float
_D = ctypes.c_double
_CONV = [_I] * 13  # batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr

_SIGNATURES = {
    "bnn_abi_version": (_INT, []),
    "bnn_error_string": (ctypes.c_char_p, [_INT]),
    "bnn_set_popcount_impl": (_INT, [_INT]),
    "bnn_popcount_impl": (_INT, []),
    "bnn_popcount_impl_available": (_INT, [_INT]),
    "bnn_popcount_impl_name": (ctypes.c_char_p, []),
    "bnn_popcount_impl_name_of": (ctypes.c_char_p, [_INT]),
    "bnn_set_float_impl": (_INT, [_INT]),
    "bnn_float_impl": (_INT, []),
    "bnn_float_impl_available": (_INT, [_INT]),
    "bnn_float_impl_name_of": (ctypes.c_char_p, [_INT]),
    "bnn_words": (_I, [_I]),
    "bnn_pack": (_INT, [_P, _I, _I, _P]),
    "bnn_unpack": (_INT, [_P, _I, _I, _P]),
    "bnn_pack_transposed": (_INT, [_P, _I, _I, _P]),
    "bnn_pack_f16": (_INT, [_P, _I, _I, _P]),
    "bnn_sign_scaled_grad": (_INT, [_P, _P, _I, ctypes.c_uint16, _P]),
    "bnn_pack_f16_transposed": (_INT, [_P, _I, _I, _P]),
    "bnn_pack_conv_weights": (_INT, [_P, _I, _I, _I, _I, _P]),
    "bnn_xnor_gemm_i32": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_xnor_gemm_f32": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_sign_matmul": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_sign_matmul_packed": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_matmul_sign_t": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_matmul_sign_t_packed": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_sign_t_matmul": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_t_matmul": (_INT, [_P, _P, _I, _I, _I, _P]),
    "bnn_dense_weight_update": (_INT, [_P, _INT, _P, _I, _I, _I, _I, ctypes.c_uint16, _P, _P,
                                       _P, _I, _F, _F, _F, _F, _P, _P, _P]),
    "bnn_conv_output_size": (_INT, [_I] * 10 + [_P, _P]),
    "bnn_im2col_packed": (_INT, [_P] + [_I] * 12 + [_P, _P]),
    "bnn_binary_conv2d_i32": (_INT, [_P, _P] + _CONV + [_P]),
    "bnn_binary_conv2d_f32": (_INT, [_P, _P] + _CONV + [_P]),
    "bnn_binary_conv2d_sign": (_INT, [_P, _P, _P] + _CONV + [_INT, _P]),
    "bnn_sign_conv2d": (_INT, [_P, _P] + _CONV + [_P]),
    "bnn_conv2d_backward_input": (_INT, [_P, _P] + _CONV + [_P]),
    "bnn_conv2d_backward_weight_packed": (_INT, [_P, _P] + _CONV + [_P]),
    "bnn_conv2d_backward_weight_f32": (_INT, [_P, _P] + _CONV + [_P]),
    "bnn_bn_l1_forward": (_INT, [_P, _P, _I, _I, _F, _P, _P, _P, _P, _P, _P, _P, _P, _D]),
    "bnn_bn_eval": (_INT, [_P, _P, _P, _P, _I, _I, _P]),
    "bnn_bn_eval_sign": (_INT, [_P, _P, _P, _P, _I, _I, _P]),
    "bnn_bn_l1_backward": (_INT, [_P, _P, _P, _P, _I, _I, _INT, _P, _P]),
    "bnn_sign_ste_forward": (_INT, [_P, _I, _I, _F, _P, _P]),
    "bnn_sign_ste_backward": (_INT, [_P, _P, _I, _I, _P]),
    "bnn_max_pool2x2_forward": (_INT, [_P, _I, _I, _I, _I, _P, _P]),
    "bnn_max_pool2x2_backward": (_INT, [_P, _P, _I, _I, _I, _I, _P]),
    "bnn_po2": (_INT, [_P, _I, _INT, _INT, _INT, _P, _P]),
    "bnn_f32_to_f16": (_INT, [_P, _I, _P]),
    "bnn_f16_to_f32": (_INT, [_P, _I, _P]),
    "bnn_adam_f16": (_INT, [_P, _P, _P, _P, _I, _I, _F, _F, _F, _F]),
    "bnn_adam_f16_g16": (_INT, [_P, _P, _P, _P, _I, _I, _F, _F, _F, _F]),
    "bnn_factored_adam_f16": (_INT, [_P, _P, _P, _I, _I, _I, _P, ctypes.c_int, _P,
                                     ctypes.c_int, _F, _F, _F, _F]),
    "bnn_factored_square_sums": (_INT, [_P, _P, _I, _I, _I, _P, _P]),
}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
  for name, (restype, argtypes) in _SIGNATURES.items():
    try:
      fn = getattr(lib, name)
    except AttributeError as e:
      raise ImportError(f"pi_backend: {lib._name} has no function {name}; it is out of date "
                        f"or not libbnnpi (rebuild: make -C pi_backend clean all)") from e
    fn.restype = restype
    fn.argtypes = argtypes
  version = lib.bnn_abi_version()
  if version != ABI_VERSION:
    raise ImportError(f"pi_backend: {lib._name} has ABI version {version}, expected "
                      f"{ABI_VERSION}; rebuild it: make -C pi_backend clean all")
  return lib
