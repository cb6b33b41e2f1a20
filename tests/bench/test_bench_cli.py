"""The bench/ scripts refuse a bad count or an --output they could not write at once,
with argparse's one-line usage error, rather than after minutes or hours of measuring."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["accuracy", "memory", "pi_backend", "scaling", "step_time"]


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, f"bench/{script}.py", *map(str, args)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_output_under_a_file_is_refused_before_the_work(script, tmp_path):
  (tmp_path / "file").write_text("")
  proc = _run(script, "--output", tmp_path / "file" / "out.md")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"{script}.py: error: --output {tmp_path}/file/out.md: {tmp_path}/file is a file, "
      f"not a directory")
  assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("script,args,message", [
    ("step_time", ["--repeats", "0"], "argument --repeats: 0; expected an integer >= 1"),
    ("step_profile", ["--steps", "-1"], "argument --steps: -1; expected an integer >= 1"),
    ("scaling", ["--devices", "0"], "argument --devices: 0; expected an integer >= 1"),
    ("scaling", ["--config", "nope"], "argument --config: invalid choice: 'nope'"),
    ("accuracy", ["--epochs", "0"], "argument --epochs: 0; expected an integer >= 1"),
    ("pi_backend", ["--repeat", "x"], "argument --repeat: 'x' is not an integer"),
])
def test_bad_counts_are_usage_errors(script, args, message):
  proc = _run(script, *args)
  assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, \
      proc.stderr[-2000:]
