"""pi_backend's AVX-512 paths on a CPU without AVX-512: the AVX-512BW popcount GEMM
("x86-avx512bw") and the AVX-512F float paths ("x86-avx512f": +-1 unpacking, the batch
norm rows, the 4 x 32 float GEMM blocks), compiled against SIMDe's emulation of the
AVX-512 intrinsics (make EMULATE_AVX512=1 into pi_backend/build/test-avx512-emulated;
see pi_backend/csrc/x86_intrin.h), then checked
  - by the C test program (every popcount impl against the portable one);
  - by the pi_backend test suite, in a subprocess against that build (PI_BACKEND_LIB),
    as test_sanitizers.py runs it: its tests take every impl the library offers, so both
    AVX-512 impls are checked against the portable ones and NumPy with the suite's shapes
    and tolerances (bit-identical, except the real x^T dy of t_matmul: FMA);
  - on random shapes, odd sizes and non-multiples of the 16 / 32 / 64-lane widths
    included, against the portable impls (RANDOM_SHAPES below).
The emulation runs on AVX2 + FMA + F16C: natively on an AVX-512 CPU the real paths run in
the plain suite, and this still runs. scripts/setup.sh installs libsimde-dev; without it
these tests FAIL when run as root (CI) and skip otherwise.
"""
import os
import shutil
import subprocess
import sys

import pytest

from pi_backend import _lib
from pi_backend import kernels as K
from tests.pi_backend import suite_run

REPO = suite_run.REPO
PKG = REPO / "pi_backend"
BUILD = PKG / "build" / "test-avx512-emulated"


def _require_simde():
  cc = os.environ.get("CC", "cc")
  missing = [t for t in ("make", cc) if shutil.which(t) is None]
  if not missing:
    proc = subprocess.run([cc, "-E", "-x", "c", "-", "-o", os.devnull],
                          input="#include <simde/x86/avx512.h>\n", capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
      missing.append("the SIMDe headers (simde/x86/avx512.h, Debian package libsimde-dev)")
  if missing:
    msg = f"missing {', '.join(missing)} (scripts/setup.sh installs libsimde-dev, as root)"
    if os.geteuid() == 0:
      pytest.fail(f"{msg}; failing rather than skipping: this runs as root, as in CI")
    pytest.skip(msg)


def _build():
  """make EMULATE_AVX512=1 lib test into BUILD (under a lock: xdist workers share it);
  returns make's output, the C test program's included."""
  if "x86-avx2" not in K.float_impls():
    pytest.skip(f"the emulation builds AVX-512 on AVX2 + FMA + F16C, which this CPU lacks "
                f"(float impls: {K.float_impls()})")
  _require_simde()
  BUILD.mkdir(parents=True, exist_ok=True)
  cmd = ["make", "-C", str(PKG), f"BUILD_DIR={BUILD}", "EMULATE_AVX512=1", "lib", "test"]
  with _lib._FileLock(BUILD / ".lock"):  # pylint: disable=protected-access
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
  text = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{text[-6000:]}"
  return text


def _run(cmd, timeout):
  env = dict(os.environ, PI_BACKEND_LIB=str(BUILD / "libbnnpi.so"),
             PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO))
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  return proc.returncode, proc.stdout + proc.stderr


def test_c_tests_with_emulated_avx512():
  text = _build()
  assert "test_kernels: all checks passed" in text, text[-3000:]
  # auto = x86-avx512bw, and popcnt, avx2 and avx512bw each checked against portable
  assert "popcount: x86-avx512bw (3 hardware implementation(s)" in text, text[-3000:]


RANDOM_SHAPES = r"""
import numpy as np
from pi_backend import kernels as K

assert "x86-avx512bw" in K.popcount_impls(), K.popcount_impls()
assert K.float_impls()[-1] == "x86-avx512f", K.float_impls()
rng = np.random.default_rng(20261126)
ODD = [1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 96, 127, 129, 191, 255,
       256, 257, 319, 513]


def size(top):
  return int(rng.choice([s for s in ODD if s <= top])) if rng.random() < 0.7 else \
      int(rng.integers(1, top + 1))


def each(setter, impls, fn):
  out = []
  for name in impls:
    setter(name)
    out.append((name, fn()))
  setter("auto")
  return out


def same(got, want, what):
  for g, w in zip(got, want):
    assert g.shape == w.shape and np.array_equal(g.view(np.uint8), w.view(np.uint8)), what


checks = 0
for trial in range(40):
  m, n, k = size(300), size(520), size(520)
  if trial < 2:  # rows of at most 32 bytes: counted in one pass of byte counters (0 ~ 256)
    k = (256, 250)[trial]
  a, b = rng.random((m, k)) < 0.5, rng.random((n, k)) < 0.5
  b[rng.integers(n)] = a[rng.integers(m)]       # a count at 0 and one at k
  b[rng.integers(n)] = ~a[rng.integers(m)]
  pa, pb = K.pack(np.where(a, 1, -1).astype(np.float32)), K.pack(np.where(b, 1, -1).astype(np.float32))
  (_, want), *rest = each(K.set_popcount_impl, K.popcount_impls(),
                          lambda: [K.xnor_gemm(pa, pb, k), K.xnor_gemm(pa, pb, k, dtype=np.float32)])
  assert np.array_equal(want[0], k - 2 * (a[:, None, :] != b[None, :, :]).sum(-1))
  for name, got in rest:
    same(got, want, f"{name} xnor_gemm m={m} n={n} k={k}")
    checks += 1

  m, n, k = size(70), size(140), size(140)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  dy = rng.standard_normal((m, n)).astype(np.float32)
  beta = rng.standard_normal(n).astype(np.float32)
  g = (rng.standard_normal((m, n)) * 10.0 ** rng.integers(-4, 4, (m, n))).astype(np.float32)
  wp, xp = K.pack(w), K.pack(x)

  def floats():
    r = K.batch_norm_l1(dy, beta)
    return ([K.sign_matmul(x, w), K.sign_matmul_packed(x, wp, n), K.matmul_sign_t(dy, w),
             K.matmul_sign_t_packed(dy, wp), K.sign_t_matmul(xp, k, dy), K.unpack(wp, n)]
            + [np.asarray(v) for v in r]
            + list(K.batch_norm_l1_backward(g, r.sign_bits, r.scale16, r.m16)),
            K.t_matmul(x, dy))

  (_, (want, want_t)), *rest = each(K.set_float_impl, K.float_impls(), floats)
  for name, (got, got_t) in rest:
    same(got, want, f"{name} float paths m={m} n={n} k={k}")
    # FMA rounds once per multiply-add: test_float_impls.py's tolerance
    ref = x.astype(np.float64).T @ dy.astype(np.float64)
    np.testing.assert_allclose(got_t, want_t, rtol=0, atol=2e-7 * m * max(1.0, np.abs(ref).max()),
                               err_msg=f"{name} t_matmul m={m} n={n} k={k}")
    checks += 1
print(f"random shapes: {checks} checks against portable")
"""


def test_random_shapes_match_portable():
  _build()
  rc, out = _run([sys.executable, "-c", RANDOM_SHAPES], timeout=600)
  assert rc == 0, out[-6000:]
  assert "random shapes: 200 checks against portable" in out, out[-3000:]


@pytest.mark.slow  # 13-18 s alone on 2 cores, more beside other tests
def test_python_suite_against_emulated_avx512(tmp_path):
  _build()
  assert {"test_gemm.py", "test_float_impls.py", "test_conv.py", "test_batch_norm.py"} <= \
      set(suite_run.modules())
  # the library's impls against /proc/cpuinfo: emulated AVX-512 is not in it
  cpuinfo = "tests/pi_backend/test_gemm.py::test_popcount_impls_match_cpuinfo"
  rc, out = _run(suite_run.command(tmp_path / "basetemp", "--deselect", cpuinfo), timeout=1500)
  assert rc == 0, out[-6000:]
  assert "no x86-avx512bw popcount" not in out, out[-3000:]  # test_gemm.py's impl skips
  assert suite_run.passed(out) >= 800, out[-3000:]
