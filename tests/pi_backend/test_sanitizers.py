"""pi_backend's C code under the memory and undefined-behaviour checkers (issue 8):
  - the C test program and one training step (csrc/train_step.c) built with
    AddressSanitizer + UndefinedBehaviorSanitizer (make SANITIZE=1);
  - the pi_backend Python test suite (every module here except the build, ARM, JAX
    parity and these tests) in a subprocess against that build (LD_PRELOAD of libasan,
    since python itself is not instrumented; leak detection off, as CPython keeps
    memory until exit by design). A report aborts the process (SIGABRT), so that one in
    a subprocess of a test (the CLI tests) cannot pass for an expected exit status;
  - valgrind memcheck on the training step and the C test program (plain -O2 -g build;
    valgrind hides AVX-512, so the AVX2 kernels are the ones it checks);
  - a libFuzzer harness (csrc/fuzz_kernels.c, clang) on every C entry point for 20 s.
Each expects zero reports. Two canaries check that the Python setup does report: an
out-of-bounds write and a misaligned load through ctypes.

scripts/setup.sh installs valgrind, clang and libclang-rt-14-dev. When a tool is missing
these tests FAIL when run as root (CI) and skip otherwise, naming it.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pi_backend import _lib
from pi_backend import kernels as K
from tests.pi_backend import suite_run

REPO = suite_run.REPO
PKG = REPO / "pi_backend"
REPORT = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer")


def _require(tools, files=()):
  missing = [t for t in tools if shutil.which(t) is None]
  missing += [str(f) for f in files if not Path(f).exists()]
  if missing:
    msg = (f"missing {', '.join(missing)} (scripts/setup.sh installs valgrind, clang and "
           f"libclang-rt-14-dev, as root)")
    if os.geteuid() == 0:
      pytest.fail(f"{msg}; failing rather than skipping: this runs as root, as in CI")
    pytest.skip(msg)


def _libasan() -> Path:
  if shutil.which("gcc") is None:
    _require(["gcc"])
  out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                       check=False).stdout.strip()
  path = Path(out)
  _require([], [path] if path.is_absolute() else [f"libasan.so ({out!r} from gcc)"])
  return path.resolve()


def _make(name, *goals, env=None, **variables):
  """make -C pi_backend into pi_backend/build/<name> (under a lock: xdist workers share it).
  Not under /tmp, like the ARM tests' builds: a fixed place that make keeps up to date."""
  out = PKG / "build" / name
  out.mkdir(parents=True, exist_ok=True)
  cmd = ["make", "-C", str(PKG), f"BUILD_DIR={out}",
         *[f"{k}={v}" for k, v in variables.items()], *goals]
  with _lib._FileLock(out / ".lock"):  # pylint: disable=protected-access
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                          env=env)
  text = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{text[-6000:]}"
  return out, text


def _sanitizer_env(log_dir: Path, **extra):
  """ASan reports go to files in log_dir; UBSan's (whose runtime here ignores log_path) to
  stderr. Both abort the process (SIGABRT), an exit no test expects of a subprocess."""
  log_dir.mkdir(parents=True, exist_ok=True)
  return dict(os.environ,
              ASAN_OPTIONS=f"detect_leaks=0:abort_on_error=1:log_path={log_dir}/asan",
              UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1",
              **extra)


def _reports(log_dir: Path) -> str:
  return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                 for p in sorted(log_dir.iterdir()))


def _asan_build():
  _require(["make", "gcc"])
  _libasan()
  return _make("test-sanitize", "lib", SANITIZE="1")[0]


@pytest.mark.slow
def test_c_tests_and_a_training_step_under_asan_ubsan(tmp_path):
  _require(["make", "gcc"])
  _libasan()
  logs = tmp_path / "logs"
  env = _sanitizer_env(logs)
  env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=0", "detect_leaks=1")
  out, text = _make("test-sanitize", "lib", "test", "step", SANITIZE="1", env=env)
  assert "test_kernels: all checks passed" in text, text[-3000:]
  step = subprocess.run([str(out / "train_step")], capture_output=True, text=True, env=env,
                        timeout=600, check=False)
  assert step.returncode == 0, step.stdout + step.stderr + _reports(logs)
  assert "train_step: ok" in step.stdout
  assert not list(logs.iterdir()), _reports(logs)
  assert not REPORT.search(text + step.stdout + step.stderr)


@pytest.mark.slow
def test_python_suite_under_asan_ubsan(tmp_path):
  lib = _asan_build() / "libbnnpi.so"
  assert {"test_gemm.py", "test_conv.py", "test_batch_norm.py", "test_po2.py"} <= \
      set(suite_run.modules())
  logs = tmp_path / "logs"
  env = _sanitizer_env(logs, PI_BACKEND_LIB=str(lib), LD_PRELOAD=str(_libasan()),
                       PYTHONDONTWRITEBYTECODE="1")
  proc = subprocess.run(suite_run.command(tmp_path / "basetemp"), cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
                        check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"{out[-6000:]}\n{_reports(logs)[-6000:]}"
  assert not list(logs.iterdir()), _reports(logs)[-8000:]
  assert not REPORT.search(out), out[-6000:]
  assert suite_run.passed(out) >= 300, out[-3000:]


CANARY = """
import sys
import numpy as np
from pi_backend import _lib
from pi_backend import kernels as K
lib = _lib.load()
if sys.argv[1] == "overflow":   # bnn_pack writes one 8-byte word into 4 bytes
  x, out = np.ones(64, np.float32), np.zeros(1, np.uint32)
  lib.bnn_pack(x.ctypes.data, 1, 64, out.ctypes.data)
else:                           # 3 floats read from an odd address
  x, out = np.ones(4, np.float32), np.zeros(1, np.uint64)
  lib.bnn_pack(x.ctypes.data + 1, 1, 3, out.ctypes.data)
print("no report")
"""


@pytest.mark.slow
@pytest.mark.parametrize("bug,report", [("overflow", "heap-buffer-overflow"),
                                        ("misaligned", "misaligned address")])
def test_the_sanitized_python_setup_does_report(tmp_path, bug, report):
  lib = _asan_build() / "libbnnpi.so"
  logs = tmp_path / "logs"
  env = _sanitizer_env(logs, PI_BACKEND_LIB=str(lib), LD_PRELOAD=str(_libasan()),
                       PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", CANARY, bug], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == -6, proc.stdout + proc.stderr  # SIGABRT
  assert "no report" not in proc.stdout
  assert report in _reports(logs) + proc.stderr


@pytest.mark.slow
def test_valgrind_memcheck_training_step_and_c_tests():
  _require(["make", "gcc", "valgrind"])
  out, _ = _make("test-valgrind", "step", "test", CFLAGS="-O2 -g")
  for program, ok in [("train_step", "train_step: ok"),
                      ("test_kernels", "test_kernels: all checks passed")]:
    proc = subprocess.run(["valgrind", "--error-exitcode=99", "--leak-check=full",
                           "--errors-for-leak-kinds=definite", "--track-origins=yes",
                           str(out / program)], capture_output=True, text=True, timeout=900,
                          check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert ok in proc.stdout and "ERROR SUMMARY: 0 errors" in proc.stderr, text[-3000:]
    if program == "train_step" and "x86-avx2" in K.popcount_impls():
      assert "popcount x86-avx2" in proc.stdout, "valgrind should still run the AVX2 kernels"


def _libfuzzer() -> Path:
  _require(["clang"])
  resource = subprocess.run(["clang", "--print-resource-dir"], capture_output=True, text=True,
                            check=False).stdout.strip()
  path = Path(resource) / "lib" / "linux" / f"libclang_rt.fuzzer-{os.uname().machine}.a"
  _require([], [path])
  return path


@pytest.mark.slow
def test_libfuzzer_on_the_kernels(tmp_path):
  _require(["make"])
  _libfuzzer()
  out, _ = _make("test-fuzz", "fuzz")
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  proc = subprocess.run([str(out / "fuzz_kernels"), "-max_total_time=20", "-seed=20240501",
                         "-timeout=20", "-rss_limit_mb=6144", "-malloc_limit_mb=1024",
                         "-print_final_stats=1", f"-artifact_prefix={tmp_path}/", str(corpus)],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                        # ASan's quarantine of freed buffers counts as RSS: keep it small
                        env={**os.environ, "ASAN_OPTIONS": "quarantine_size_mb=32"})
  text = proc.stdout + proc.stderr
  assert proc.returncode == 0, text[-6000:]
  runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
  assert runs and int(runs.group(1)) >= 1000, text[-3000:]
  assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))
