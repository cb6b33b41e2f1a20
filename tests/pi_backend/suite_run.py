"""The pi_backend test suite run again in a subprocess against another build of the
library (PI_BACKEND_LIB): under sanitizers (test_sanitizers.py) or with emulated
AVX-512 (test_avx512_emulated.py)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# not run that way: ARM (qemu), builds of their own, JAX, and the two runners
SKIP_MODULES = {"test_arm.py", "test_sanitizers.py", "test_build_and_isolation.py",
                "test_parity_with_jax.py", "test_avx512_emulated.py"}


def modules() -> list[str]:
  return sorted(p.name for p in (REPO / "tests" / "pi_backend").glob("test_*.py")
                if p.name not in SKIP_MODULES)


def command(basetemp: Path, *options: str) -> list[str]:
  """pytest over modules(), without the project's addopts (no -n), skips listed."""
  return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
          "-rs", "--basetemp", str(basetemp), *options,
          *[f"tests/pi_backend/{m}" for m in modules()]]


def passed(out: str) -> int:
  """The number of tests pytest's summary line says passed (0 if none)."""
  found = re.search(r"(\d+) passed", out)
  return int(found.group(1)) if found else 0
