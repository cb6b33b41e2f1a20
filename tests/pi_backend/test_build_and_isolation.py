"""pi_backend stands alone: it never imports jax / flax / tensorflow, its library builds
from scratch with make (strict flags) and on first import, and a missing tool gives a
clear error. Subprocesses, so that this test process's modules do not interfere."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "pi_backend"
FORBIDDEN = ("jax", "jaxlib", "flax", "tensorflow")

RUN_KERNELS = """
import sys
import numpy as np
import pi_backend
from pi_backend import kernels as K
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 70)).astype(np.float32)
w = rng.standard_normal((70, 9)).astype(np.float32)
assert np.array_equal(K.xnor_gemm(K.pack(x), K.pack_transposed(w), 70),
                      (np.where(x >= 0, 1, -1) @ np.where(w >= 0, 1, -1)).astype(np.int32))
K.sign_matmul(x, w); K.matmul_sign_t(rng.standard_normal((4, 9)).astype(np.float32), w)
xi = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
K.binary_conv2d(K.pack(xi), 3, K.pack_conv_weights(w[:27].reshape(3, 3, 3, 9)), (3, 3))
f = K.batch_norm_l1(x, np.zeros(70, np.float32))
K.batch_norm_l1_backward(x, f.sign_bits, f.scale16, f.m16)
y, m = K.sign_ste(x); K.sign_ste_backward(x, m)
p, pm = K.max_pool2x2(xi); K.max_pool2x2_backward(p, pm, xi.shape)
K.po2(x, bits=4, bias=6)
h = np.zeros(5, np.float16); K.adam_f16(h, h.copy(), h.copy(), np.ones(5, np.float32), step=1)
print("LIB", pi_backend._lib.library_path())
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r}))
"""


def _run(code, env_updates=None, path=None):
  env = dict(os.environ)
  env.pop("PI_BACKEND_LIB", None)
  env.pop("PI_BACKEND_BUILD_DIR", None)
  env["PYTHONPATH"] = str(ROOT)
  if path is not None:
    env["PATH"] = path
  env.update(env_updates or {})
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _loaded(proc):
  assert proc.returncode == 0, proc.stdout + proc.stderr
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED")][0]
  return line


def test_never_imports_jax_flax_or_tensorflow():
  proc = _run(RUN_KERNELS.format(forbidden=FORBIDDEN))
  assert _loaded(proc) == "LOADED []"


def test_sources_do_not_import_them():
  for path in PKG.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
      for name in names:
        assert name.split(".")[0] not in FORBIDDEN, f"{path} imports {name}"


def test_requirements_are_numpy_only():
  lines = [ln.strip() for ln in (PKG / "requirements.txt").read_text().splitlines()]
  assert [ln for ln in lines if ln and not ln.startswith("#")] == ["numpy>=1.24"]


def test_build_is_git_ignored():
  assert "build/" in (PKG / ".gitignore").read_text().split()


def test_make_from_scratch_with_strict_flags_and_the_c_tests(tmp_path):
  out = tmp_path / "build"
  proc = subprocess.run(["make", "-C", str(PKG), f"BUILD_DIR={out}", "clean", "all", "test"],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "-Werror" in proc.stdout and "-std=c99" in proc.stdout and "-fPIC" in proc.stdout
  assert "test_kernels: all checks passed" in proc.stdout
  lib = out / "libbnnpi.so"
  assert lib.exists()
  proc = _run(RUN_KERNELS.format(forbidden=FORBIDDEN), {"PI_BACKEND_LIB": str(lib)})
  assert _loaded(proc) == "LOADED []"
  assert f"LIB {lib}" in proc.stdout
  # nothing to do the second time
  again = subprocess.run(["make", "-C", str(PKG), f"BUILD_DIR={out}"], capture_output=True,
                         text=True, timeout=60, check=False)
  assert again.returncode == 0 and " -c " not in again.stdout


def test_first_import_builds_the_library(tmp_path):
  out = tmp_path / "fresh"
  proc = _run(RUN_KERNELS.format(forbidden=FORBIDDEN), {"PI_BACKEND_BUILD_DIR": str(out)})
  assert _loaded(proc) == "LOADED []"
  assert (out / "libbnnpi.so").exists()


def test_an_unloadable_library_in_the_build_dir_is_rebuilt(tmp_path):
  """E.g. a cross build for another CPU left behind: newer than the sources, but not
  loadable here."""
  out = tmp_path / "foreign"
  out.mkdir()
  (out / "libbnnpi.so").write_bytes(b"not a shared library for this machine")
  proc = _run(RUN_KERNELS.format(forbidden=FORBIDDEN), {"PI_BACKEND_BUILD_DIR": str(out)})
  assert _loaded(proc) == "LOADED []"


def test_missing_make_is_named(tmp_path):
  empty = tmp_path / "bin"
  empty.mkdir()
  proc = _run("import pi_backend", {"PI_BACKEND_BUILD_DIR": str(tmp_path / "b")},
              path=str(empty))
  assert proc.returncode != 0
  assert "BuildError" in proc.stderr and "'make' was not found" in proc.stderr
  assert "PI_BACKEND_LIB" in proc.stderr


def test_missing_compiler_is_named(tmp_path):
  proc = _run("import pi_backend", {"PI_BACKEND_BUILD_DIR": str(tmp_path / "b"),
                                    "CC": "no-such-cc-1234"})
  assert proc.returncode != 0
  assert "the C compiler (CC) 'no-such-cc-1234' was not found" in proc.stderr


def test_missing_prebuilt_library_is_named(tmp_path):
  proc = _run("import pi_backend", {"PI_BACKEND_LIB": str(tmp_path / "nope.so")})
  assert proc.returncode != 0 and "PI_BACKEND_LIB=" in proc.stderr
