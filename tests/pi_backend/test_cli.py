"""python -m pi_backend infer|eval|train|bench in subprocesses: the happy paths on a
small bundle and .npz data, clear errors with exit status 1 (bad files or values) or 2
(bad arguments), and no jax anywhere in the process."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pi_backend import bundle
from pi_backend.model import Model
from tests.pi_backend import bundles

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, check=True):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-m", "pi_backend", *map(str, args)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  if check:
    assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  bundle.write(d / "m.bnnpi", *bundles.mlp(hidden=(16,), seed=0))
  rng = np.random.default_rng(0)
  np.savez(d / "data.npz", images=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
           labels=rng.integers(0, 10, 60))
  labels = rng.integers(0, 10, 60)
  labels[-1] = 12  # in the last batch: found before the first step, not after the others
  np.savez(d / "bad-labels.npz", images=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
           labels=labels)
  (d / "a-directory").mkdir()
  return d


def test_eval_and_infer(files):
  out = _run("eval", "--bundle", files / "m.bnnpi", "--data", files / "data.npz").stdout
  model = Model.load(files / "m.bnnpi")
  z = np.load(files / "data.npz")
  want = model.evaluate(z["images"], z["labels"])
  assert f"accuracy {want['accuracy']:.4f} on 60 examples" in out
  proc = _run("infer", "--bundle", files / "m.bnnpi", "--data", files / "data.npz",
              "--output", files / "logits.npy", "--limit", "10")
  np.testing.assert_array_equal(np.load(files / "logits.npy"), model.logits(z["images"][:10]))
  assert "predictions of the first 10" in proc.stdout


def test_train_writes_the_bundle_back(files, tmp_path):
  out = tmp_path / "trained.bnnpi"
  proc = _run("train", "--bundle", files / "m.bnnpi", "--data", files / "data.npz",
              "--batch-size", "20", "--epochs", "2", "--output", out, "--memory")
  assert "step 6/6 (training step 6)" in proc.stdout
  assert "peak training buffers" in proc.stdout
  trained = Model.load(out)
  assert trained.train_step_count == 6 and trained.adam_count == 6
  assert Model.load(files / "m.bnnpi").train_step_count == 0  # the input is untouched
  # --steps stops early; without --output the bundle is overwritten in place
  copy = tmp_path / "copy.bnnpi"
  copy.write_bytes(out.read_bytes())
  _run("train", "--bundle", copy, "--data", files / "data.npz", "--batch-size", "20",
       "--steps", "2")
  assert Model.load(copy).train_step_count == 8


def test_infer_writes_its_logits_atomically_to_the_path_it_prints(files, tmp_path, capsys,
                                                                   monkeypatch):
  """np.save appends .npy: the message names that file. A failed write (a full disk)
  leaves the previous logits whole and names the file."""
  from pi_backend import __main__ as cli  # in-process, to fail the write
  from pi_backend import atomic
  args = ["infer", "--bundle", str(files / "m.bnnpi"), "--data", str(files / "data.npz"),
          "--output", str(tmp_path / "x" / "logits")]
  assert cli.main(args) == 0
  assert f"logits written to {tmp_path / 'x' / 'logits.npy'}\n" in capsys.readouterr().out
  assert os.listdir(tmp_path / "x") == ["logits.npy"]
  before = (tmp_path / "x" / "logits.npy").read_bytes()

  def full_disk(*_):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(atomic.os, "fsync", full_disk)
  assert cli.main(args[:-1] + [str(tmp_path / "x" / "logits.npy")]) == 1
  err = capsys.readouterr().err
  assert (f"infer: error: cannot write {tmp_path / 'x' / 'logits.npy'}: No space left on "
          f"device") in err, err
  assert (tmp_path / "x" / "logits.npy").read_bytes() == before
  assert os.listdir(tmp_path / "x") == ["logits.npy"]  # no temporary file left


@pytest.mark.parametrize("where", ["loss", "state"])
def test_training_that_diverges_stops_and_writes_nothing(files, tmp_path, capsys, monkeypatch,
                                                         where):
  """A NaN loss stops training at that step; a NaN in the state (which the loss may not
  show: signs of NaN weights are -1) at the next report or before the save. Exit 1, the
  output untouched: a state with NaN cannot be saved."""
  from pi_backend import __main__ as cli  # in-process, to break a step
  step = Model.train_step

  def breaking_step(self, images, labels, **kw):
    metrics = step(self, images, labels, **kw)
    if self.train_step_count == 3:
      self.tensors["params/BinaryDense_0/kernel"][0, 0] = np.nan
      if where == "loss":
        metrics["loss"] = float("nan")
    return metrics

  monkeypatch.setattr(Model, "train_step", breaking_step)
  out = tmp_path / "out.bnnpi"
  out.write_bytes(b"previous")
  code = cli.main(["train", "--bundle", str(files / "m.bnnpi"), "--data",
                   str(files / "data.npz"), "--batch-size", "10", "--epochs", "3",
                   "--output", str(out)])
  captured = capsys.readouterr()
  assert code == 1
  what = ("at step 3/18: the loss is nan" if where == "loss" else
          "by step 3/18: params/BinaryDense_0/kernel holds NaN or infinite values")
  assert f"train: error: training diverged {what}; stopped, {out} not written" in captured.err
  assert "step 4/18" not in captured.out and "wrote" not in captured.out
  assert out.read_bytes() == b"previous"


def test_paths_with_a_tilde_are_expanded(files, tmp_path):
  """--bundle=~/m.bnnpi: the shell expands no ~ after an = sign."""
  (tmp_path / "m.bnnpi").write_bytes((files / "m.bnnpi").read_bytes())
  (tmp_path / "data.npz").write_bytes((files / "data.npz").read_bytes())
  env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
  proc = subprocess.run([sys.executable, "-m", "pi_backend", "infer", "--bundle=~/m.bnnpi",
                         "--data=~/data.npz", "--output=~/out/logits.npy"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert np.load(tmp_path / "out" / "logits.npy").shape == (60, 10)


def test_train_reads_the_training_files_of_a_directory_and_eval_the_test_files(files, tmp_path):
  """An MNIST-named IDX directory holds both splits: `train` without --split must not
  train on the test files (their accuracy would then mean nothing)."""
  from tests.pi_backend.test_data import _idx
  rng = np.random.default_rng(1)
  for prefix, n in (("train", 40), ("t10k", 20)):
    (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(
        _idx(rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), 0x08))
    (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(
        _idx(rng.integers(0, 10, n).astype(np.uint8), 0x08))
  out = tmp_path / "t.bnnpi"
  trained = _run("train", "--bundle", files / "m.bnnpi", "--data", tmp_path, "--batch-size",
                 "20", "--output", out).stdout
  assert f"{tmp_path} (train split): 40 examples" in trained and "step 2/2" in trained
  evaluated = _run("eval", "--bundle", out, "--data", tmp_path).stdout
  assert f"{tmp_path} (test split): 20 examples" in evaluated


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_training_after_a_whole_step_and_writes_the_bundle(files, tmp_path,
                                                                          signum):
  """Ctrl-C on the Pi, or a SIGTERM: the bundle is still written, holding the state after
  the last whole step (the same as N steps through the Python API), exit 128 + signum."""
  out = tmp_path / "stopped.bnnpi"
  proc = subprocess.Popen(
      [sys.executable, "-m", "pi_backend", "train", "--bundle", str(files / "m.bnnpi"),
       "--data", str(files / "data.npz"), "--batch-size", "20", "--epochs", "2000",
       "--output", str(out)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().startswith(str(files / "m.bnnpi"))  # loaded
  assert proc.stdout.readline().startswith("step ")  # training
  proc.send_signal(signum)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, stdout + stderr
  assert "Traceback" not in stderr
  # --output is not --bundle: the same command would start over from --bundle
  assert (f"stopped by {signal.Signals(signum).name}; to go on, train from it: --bundle {out}"
          in stderr), stderr
  stopped = Model.load(out)
  steps = stopped.train_step_count
  assert 0 < steps < 6000 and f"wrote {out} (training step {steps})" in stdout
  z = np.load(files / "data.npz")
  again = Model.load(files / "m.bnnpi")
  again.train(z["images"], z["labels"], batch_size=20, epochs=2000, max_steps=steps)
  for a, b in zip(stopped.state_arrays(), again.state_arrays()):
    np.testing.assert_array_equal(a, b)


def test_bench_with_a_bundle(files):
  proc = _run("bench", "--bundle", files / "m.bnnpi", "--data", files / "data.npz",
              "--batch-size", "20", "--repeat", "1", "--float-gemm", "numpy")
  assert "training:" in proc.stdout and "inference:" in proc.stdout
  assert "peak RSS" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (("eval", "--bundle", "{d}/nope.bnnpi", "--data", "{d}/data.npz"), "nope.bnnpi: no such file"),
    (("eval", "--bundle", "{d}/m.bnnpi", "--data", "{d}/nope.npz"), "nope.npz: no such file"),
    (("eval", "--bundle", "{d}/data.npz", "--data", "{d}/data.npz"), "not a pi_backend bundle"),
    (("train", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--batch-size", "100"),
     "--batch-size 100 is larger than the 60 examples"),
    (("bench", "--bundle", "{d}/m.bnnpi"), "needs --data"),
    # an --output that cannot be written fails before the work (which it would lose)
    (("train", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--batch-size", "20",
      "--output", "{d}"), "--output {d} is a directory; expected a file name such as "
                          "{d}/model.bnnpi"),
    (("train", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--batch-size", "20",
      "--output", "{d}/data.npz/x.bnnpi"), "--output {d}/data.npz/x.bnnpi: {d}/data.npz is a "
                                            "file, not a directory"),
    (("train", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--batch-size", "20",
      "--output", "/proc/x.bnnpi"), "--output /proc/x.bnnpi: cannot write in /proc: "),
    (("infer", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--output", "/proc/l.npy"),
     "--output /proc/l.npy: cannot write in /proc: "),
    # an --output that is an input would destroy it
    (("train", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--batch-size", "20",
      "--output", "{d}/../{d.name}/data.npz"), "is {d}/data.npz, which this command reads"),
    (("eval", "--bundle", "{d}/a-directory", "--data", "{d}/data.npz"),
     "--bundle {d}/a-directory: is a directory; expected a bundle file"),
    (("eval", "--bundle", "{d}/m.bnnpi", "--data", "{d}/data.npz", "--labels", "{d}/x"),
     "labels files go with an IDX images file; {d}/data.npz is an .npz archive"),
    (("train", "--bundle", "{d}/m.bnnpi", "--data", "{d}/bad-labels.npz", "--batch-size", "20",
      "--output", "{d}/never.bnnpi"),
     "{d}/bad-labels.npz: labels range over [0, 12]; expected class indices in [0, 9] (the "
     "model has 10 classes)"),
])
def test_errors(files, args, message):
  before = (files / "m.bnnpi").read_bytes()
  proc = _run(*(a.format(d=files) for a in args), check=False)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert message.format(d=files) in proc.stderr
  assert "Traceback" not in proc.stderr
  assert "step 1/" not in proc.stdout and "examples in" not in proc.stdout  # no work done
  assert (files / "m.bnnpi").read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (("fly",), "invalid choice"),
    (("eval", "--data", "x.npz"), "--bundle"),
    (("train", "--bundle", "m", "--data", "d", "--epochs", "0"), "expected an integer >= 1"),
    (("train", "--bundle", "m", "--data", "d", "--seed", "-1"),
     "argument --seed: -1; expected an integer >= 0"),
])
def test_bad_arguments(args, message):
  proc = _run(*args, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr


def test_no_jax_in_the_process(files):
  code = ("import sys, runpy; sys.argv = ['pi_backend', 'eval', '--bundle', {b!r}, '--data', "
          "{d!r}]; import pi_backend.__main__ as m; m.main(sys.argv[1:]); "
          "print('LOADED', sorted(k for k in sys.modules if k.split('.')[0] in "
          "('jax', 'jaxlib', 'flax', 'tensorflow')))").format(b=str(files / "m.bnnpi"),
                                                               d=str(files / "data.npz"))
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300, check=False)
  assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr


def test_only_kernels_calls_the_c_library():
  """Every ctypes call of the models, the bundle code and the command line goes through
  pi_backend/kernels.py, which checks shape, dtype and contiguity first: no other module
  touches ctypes or the loaded library (bench.py excepted: it times the bare call of one
  kernel beside the checked one, on arguments the checked call accepts)."""
  for path in (ROOT / "pi_backend").glob("*.py"):
    if path.name in ("_lib.py", "kernels.py", "bench.py"):
      continue
    text = path.read_text()
    assert "ctypes" not in text, path
    assert "_lib.loaded" not in text and "_lib.load()." not in text, path
