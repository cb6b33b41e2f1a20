"""pi_backend on ARM for real (issue 5): the C library and its C test program are
cross-compiled with Debian's gcc-aarch64-linux-gnu and gcc-arm-linux-gnueabihf (NEON, as
on a Pi 3B+ / Pi OS 32-bit) and run under qemu-user; pi_backend's Python kernel tests
run under an emulated arm64 Debian (scripts/arm64_root.sh: python3, numpy, pytest) with
the aarch64 library. binfmt_misc is not available here, so qemu is called directly:
  qemu-aarch64-static -L ROOT ROOT/usr/bin/python3 -m pytest ...

scripts/setup.sh installs the tools and builds the root. When one is missing, these
tests FAIL when run as root (CI, where setup.sh has run) and skip otherwise, naming it.
"""
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "pi_backend"
ARM64_ROOT = Path(os.environ.get("BNN_ARM64_ROOT", REPO / ".cache" / "arm64-root")).resolve()
# The numpy + C kernel tests (not the build / isolation, JAX parity, model or CLI tests).
KERNEL_TESTS = ["test_packing.py", "test_gemm.py", "test_conv.py", "test_batch_norm.py",
                "test_activations.py", "test_po2.py", "test_half_adam.py",
                "test_validation.py", "test_optimizers.py"]

TARGETS = {
    # name: compiler, CFLAGS, qemu, sysroot for qemu -L, ELF e_machine
    "aarch64": ("aarch64-linux-gnu-gcc", "-O2", "qemu-aarch64-static",
                "/usr/aarch64-linux-gnu", 183),
    "armv7-neon": ("arm-linux-gnueabihf-gcc", "-O2 -mfpu=neon", "qemu-arm-static",
                   "/usr/arm-linux-gnueabihf", 40),
}


def _require(tools, paths=()):
  missing = [t for t in tools if shutil.which(t) is None]
  missing += [str(p) for p in paths if not Path(p).exists()]
  if missing:
    msg = f"missing {', '.join(missing)} (scripts/setup.sh installs them, as root)"
    if os.geteuid() == 0:
      pytest.fail(f"{msg}; failing rather than skipping: this runs as root, as in CI")
    pytest.skip(msg)


def _elf_machine(path: Path) -> int:
  head = path.read_bytes()[:20]
  assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
  return struct.unpack("<H", head[18:20])[0]


def _make(target, build_dir, *goals):
  cc, cflags, qemu, sysroot, _ = TARGETS[target]
  cmd = ["make", "-C", str(PKG), f"-j{min(4, os.cpu_count() or 1)}", f"CC={cc}",
         f"CFLAGS={cflags}", f"BUILD_DIR={build_dir}", f"RUN={qemu} -L {sysroot}", *goals]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
  return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_cross_build_and_c_tests_under_qemu(target, tmp_path):
  cc, _, qemu, sysroot, machine = TARGETS[target]
  _require(["make", cc, qemu], [sysroot])
  out = _make(target, tmp_path / target, "lib", "test")
  assert "-Werror" in out and "-std=c99" in out, "the cross build must use the strict flags"
  assert "test_kernels: all checks passed" in out, out[-2000:]
  # the NEON popcount was compiled in, chosen, and checked against the portable one
  assert "popcount: neon (1 hardware implementation(s) checked against portable)" in out, out
  assert _elf_machine(tmp_path / target / "libbnnpi.so") == machine
  assert _elf_machine(tmp_path / target / "test_kernels") == machine


@pytest.mark.slow
def test_python_kernel_tests_under_emulated_arm64():
  qemu = "qemu-aarch64-static"
  _require(["make", "aarch64-linux-gnu-gcc", qemu], [ARM64_ROOT / ".complete"])
  # Not under /tmp: the root has a /tmp, which qemu -L puts in place of the host's.
  build = PKG / "build" / "test-arm64"
  _make("aarch64", build, "lib")
  lib = build / "libbnnpi.so"
  assert _elf_machine(lib) == 183
  env = dict(os.environ, PI_BACKEND_LIB=str(lib), PYTHONDONTWRITEBYTECODE="1")
  env.pop("PYTHONPATH", None)
  cmd = [qemu, "-L", str(ARM64_ROOT), str(ARM64_ROOT / "usr" / "bin" / "python3"), "-m",
         "pytest", "--noconftest", "-p", "no:cacheprovider", "-o", "addopts=", "-q", "-rs",
         "-W", "error::pytest.PytestUnknownMarkWarning",
         *[f"tests/pi_backend/{name}" for name in KERNEL_TESTS]]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
                        check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, f"the kernel tests failed under emulated arm64:\n{out[-6000:]}"
  passed = re.search(r"(\d+) passed", out)
  assert passed and int(passed.group(1)) >= 200, out[-3000:]
  # the only skips: the x86 popcount paths (this is an ARM CPU)
  for line in out.splitlines():
    if line.startswith("SKIPPED"):
      assert re.search(r"no x86-[\w-]+ popcount on this CPU", line), line
