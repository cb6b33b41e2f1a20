"""JAX <-> pi_backend: export and import (bnn/export.py), and parity of pi_backend's
inference and training with the JAX proposed method.

Parity tolerances, and why:
  - logits (evaluation mode): identical argmax on every input, max |difference| <= 1e-4.
    Both sides compute in float32; they differ only in the order of the sums of the
    first layer (real inputs) and of the batch-norm statistics, which moves logits by
    about 1e-6. A hidden sign could flip only where its input is within rounding of 0.
  - one training step from the same state (float16 optimizer state on both sides, the
    storage pi_backend uses): the loss to 1e-5 relative; weight signs identical; running
    batch-norm statistics to 1e-5 relative (XLA sums in float32, the C kernels in
    double); latent weights and Adam moments within one float16 step (ulp); betas and
    their moments within 4 ulps plus 0.2% of the tensor's largest value (their
    gradient sum(dy) is summed in double in C, in float32 by XLA, before it is rounded
    to float16, and a moment can be a small difference of larger gradients); except
    (a) where a weight gradient is within rounding of 0, so that sign(dW_raw) may go
    either way: at most 2% of a kernel, by at most 2 lr (the weight) or 0.2 / sqrt(N)
    (the first moment: (1 - b1) times the two signs of sign(dW)/sqrt(N)). Inputs that
    are constant over a batch make this common (the border pixels of the digits are 0
    in every image, so their gradient is 0 in exact arithmetic), and then a weight
    within 2 lr of 0 may even end with another sign; the digits here carry a little
    noise so that the test can ask for identical signs;
    (b) Adam's first moment rounds (1 - b1) g + b1 m with 1 - float32(0.9) in C and
    float32(0.1) in optax, which can move a float16 rounding by one ulp.
  Both optimizers pi_backend continues are checked: Adam, and factored_adam (the proposed
  method's default, the memory-lean state), whose first moment is the EMA of g / sqrt(v_hat), of
  magnitude ~1, so that (a) bounds it by 0.2; its row and column statistics average g^2,
  which (a) does not change, and agree to 1e-5 relative.
"""
import contextlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from bnn import checkpoints as ckpt
from bnn import export, optim, train
from bnn.models import MLP
from bnn.models.convnet import ConvNet
from configs import common, fashion_mnist_mlp
from pi_backend import bundle
from pi_backend.model import Model

ROOT = Path(__file__).resolve().parents[2]


def _config(state_dtype="float16", optimizer="adam"):
  c = common.base()
  c.optimizer.state_dtype = state_dtype
  c.optimizer.name = optimizer
  return c


class Run:
  """A JAX model trained a few steps, with what the tests need to continue from it."""

  def __init__(self, model, images, labels, input_shape, steps=3, batch=100,
               state_dtype="float16", optimizer="adam"):
    self.model, self.images, self.labels = model, images, labels
    self.input_shape, self.batch = input_shape, batch
    self.config = _config(state_dtype, optimizer)
    self.tx = optim.make_optimizer(self.config, 10)
    self.step = train.make_train_step(model, self.tx)
    self.state = self.fresh_state()
    for i in range(steps):
      self.state, _ = self.step(self.state, *self.batch_at(i))
    self._apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def fresh_state(self):
    return train.create_train_state(self.model, self.tx, jnp.zeros((1, *self.input_shape)), 0,
                                    lambda p: optim.initial_params(self.config, p))

  def batch_at(self, i):
    sl = slice(i * self.batch, (i + 1) * self.batch)
    return self.images[sl], self.labels[sl]

  def copy(self):
    return jax.tree.map(jnp.copy, self.state)

  def bundle(self, state=None):
    meta, tensors, rounded = export.state_to_bundle(
        self.model, self.state if state is None else state, input_shape=self.input_shape,
        base_lr=self.config.optimizer.lr)
    return bundle.check(meta, tensors), rounded

  def logits(self, state, images):
    return np.asarray(self._apply({"params": state.params, "batch_stats": state.batch_stats},
                                  jnp.asarray(images)))


def _digits():
  """scikit-learn's 8x8 digits as uint8, with a little noise (see (a) above)."""
  x, y = load_digits(return_X_y=True)
  noise = np.random.default_rng(0).integers(0, 16, x.shape)
  return (np.round(x * 15 + noise).astype(np.uint8).reshape(-1, 8, 8, 1), y.astype(np.int32))


@pytest.fixture(scope="module", params=["adam", "factored_adam"])
def mlp_run(request):
  """The MLP trained with each optimizer pi_backend continues."""
  images, labels = _digits()
  return Run(MLP(hidden=(64, 64)), images, labels, (8, 8, 1), optimizer=request.param)


def _random_images(n, shape, seed):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
          rng.integers(0, 10, n).astype(np.int32))


@pytest.fixture(scope="module", params=["adam", "factored_adam"])
def cnv_run(request):
  images, labels = _random_images(300, (12, 12, 3), 0)
  model = ConvNet(convs=((8, False), (16, True)), hidden=(16,), padding="VALID")
  return Run(model, images, labels, (12, 12, 3), steps=2, optimizer=request.param)


def _check_logits(run, state, b, images):
  want = run.logits(state, images)
  got = Model(b).logits(images)
  np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  return got


def _check_step(run, state, b, images, labels):
  """One JAX step and one pi_backend step from the same state (module docstring)."""
  jax_state, metrics = run.step(jax.tree.map(jnp.copy, state), images, labels)
  model = Model(b)
  got = model.train_step(images, labels)
  assert got["loss"] == pytest.approx(float(metrics["loss"]), rel=1e-5)
  want_b, _ = run.bundle(jax_state)
  _, tensors = model.to_bundle()
  lr = b.graph.optimizer.lr
  checked = 0
  for name, want in want_b.tensors.items():
    have = tensors[name]
    if name.startswith("bits/"):
      np.testing.assert_array_equal(have, want, err_msg=f"{name}: weight signs differ")
    elif name.startswith("batch_stats/"):
      np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=name)
    elif name.startswith("fadam_v"):  # factored statistics of g^2, which a sign flip of
      np.testing.assert_allclose(have, want, rtol=1e-5, err_msg=name)  # (a) leaves alone
    else:
      w, h = want.astype(np.float64), have.astype(np.float64)
      diff = np.abs(h - w)
      ulp = np.spacing(np.maximum(np.abs(w), np.abs(h)).astype(np.float16)).astype(np.float64)
      if not name.endswith("/kernel"):  # betas and their moments (module docstring)
        bound = 4 * ulp + 2e-3 * np.abs(w).max()
        assert np.all(diff <= bound), f"{name}: differences {diff.max()}"
        checked += 1
        continue
      off = diff > ulp
      assert off.mean() <= 0.02, f"{name}: {off.mean():.2%} of the values differ"
      if name.startswith("params/"):
        bound = 2 * lr + ulp
      else:  # (1 - b1) times the two signs of g, Adam's g or factored_adam's g / sqrt(v)
        bound = (0.2 if name.startswith("fadam_m/") else 0.2 / np.sqrt(w.size)) + ulp
      assert np.all(diff[off] <= bound[off]), f"{name}: differences {diff[off].max()}"
    checked += 1
  assert checked == len(tensors)
  assert model.adam_count == int(jax_state.step) == model.train_step_count


def test_mlp_parity(mlp_run):
  b, rounded = mlp_run.bundle()
  assert not rounded  # float16 state: the bundle holds it exactly
  _check_logits(mlp_run, mlp_run.state, b, mlp_run.images[:600])
  _check_step(mlp_run, mlp_run.state, b, *mlp_run.batch_at(5))


def test_cnv_parity(cnv_run):
  b, _ = cnv_run.bundle()
  assert [l["kind"] for l in b.metadata["layers"]][:6] == [
      "conv", "batch_norm", "sign", "conv", "batch_norm", "sign"]
  _check_logits(cnv_run, cnv_run.state, b, cnv_run.images)
  _check_step(cnv_run, cnv_run.state, b, *cnv_run.batch_at(2))


@pytest.mark.slow
def test_binarynet_like_parity():
  """SAME padding and the pool before the batch norm (BinaryNet's placement)."""
  images, labels = _random_images(300, (12, 12, 3), 1)
  model = ConvNet(convs=((8, False), (16, True)), hidden=(32,), padding="SAME",
                  pool_before_bn=True)
  run = Run(model, images, labels, (12, 12, 3), steps=2)
  b, _ = run.bundle()
  assert b.metadata["layers"][4]["kind"] == "max_pool"  # conv, bn, sign, conv, *pool*, bn
  _check_logits(run, run.state, b, images)
  _check_step(run, run.state, b, *run.batch_at(2))


def test_round_trip_jax_pi_jax(mlp_run, tmp_path):
  """JAX trains -> export -> pi_backend trains more -> import -> JAX evaluates: the same
  accuracy as pi_backend's own evaluation on the same data."""
  b, _ = mlp_run.bundle()
  path = tmp_path / "mlp.bnnpi"
  bundle.write(path, b.metadata, b.tensors)
  pi = Model.load(path)
  for i in range(3, 13):
    pi.train_step(*mlp_run.batch_at(i))
  pi.save(path)
  test_x, test_y = mlp_run.images[1300:], mlp_run.labels[1300:]
  pi_eval = Model.load(path).evaluate(test_x, test_y)

  state = export.bundle_to_state(bundle.read(path), mlp_run.fresh_state(), mlp_run.model,
                                 input_shape=(8, 8, 1), base_lr=mlp_run.config.optimizer.lr)
  assert int(state.step) == 13
  assert int(export._one(state.opt_state, optax.ScaleByAdamState).count) == 13
  result = jax.device_get(train.make_eval_step(mlp_run.model)(state, test_x, test_y))
  jax_accuracy = float(result["correct"]) / float(result["count"])
  assert jax_accuracy == pi_eval["accuracy"]
  assert float(result["loss_sum"]) / len(test_y) == pytest.approx(pi_eval["loss"], rel=1e-4)
  exported = np.asarray(mlp_run.state.params["BinaryDense_1"]["kernel"])
  assert not np.array_equal(np.asarray(state.params["BinaryDense_1"]["kernel"]), exported)
  # and JAX can go on training the imported state
  _, metrics = mlp_run.step(state, *mlp_run.batch_at(0))
  assert np.isfinite(float(metrics["loss"]))


def test_float16_state_goes_over_bit_for_bit(mlp_run):
  b, _ = mlp_run.bundle()
  state = export.bundle_to_state(b, mlp_run.fresh_state(), mlp_run.model,
                                 input_shape=(8, 8, 1), base_lr=mlp_run.config.optimizer.lr)
  ours, theirs = mlp_run.state, state
  for a, c in zip(jax.tree.leaves((ours.params, ours.batch_stats, ours.step)),
                  jax.tree.leaves((theirs.params, theirs.batch_stats, theirs.step))):
    assert a.dtype == c.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  for cls in (optax.ScaleByAdamState, optax.FactoredState, optax.EmaState):
    mine = export._one(ours.opt_state, cls, required=False)
    if mine is None:
      continue
    for a, c in zip(jax.tree.leaves(mine), jax.tree.leaves(export._one(theirs.opt_state, cls))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  assert float(optim.plateau_scale(theirs.opt_state)) == 1.0


def test_float32_state_is_rounded_and_said_so():
  images, labels = _digits()
  run = Run(MLP(hidden=(16,)), images, labels, (8, 8, 1), steps=0, state_dtype="default")
  b, rounded = run.bundle()
  assert rounded == ["latent weights", "betas", "Adam moments"]
  w = np.asarray(run.state.params["BinaryDense_0"]["kernel"])
  assert w.dtype == np.float32
  np.testing.assert_array_equal(b.tensors["params/BinaryDense_0/kernel"], w.astype(np.float16))
  back = export.bundle_to_state(b, run.fresh_state(), run.model, input_shape=(8, 8, 1),
                                base_lr=run.config.optimizer.lr)
  assert back.params["BinaryDense_0"]["kernel"].dtype == jnp.float32


def test_import_refuses_a_bundle_of_another_optimizer(mlp_run):
  b, _ = mlp_run.bundle()
  other = "adam" if mlp_run.config.optimizer.name == "factored_adam" else "factored_adam"
  images, labels = _digits()
  run = Run(MLP(hidden=(64, 64)), images, labels, (8, 8, 1), steps=0, optimizer=other)
  with pytest.raises(export.ExportError, match=f"--config.optimizer.name="
                                              f"{mlp_run.config.optimizer.name}"):
    export.bundle_to_state(b, run.fresh_state(), run.model, input_shape=(8, 8, 1),
                           base_lr=1e-3)


def test_import_refuses_another_model(mlp_run):
  b, _ = mlp_run.bundle()
  with pytest.raises(export.ExportError, match="layer graph differs"):
    export.bundle_to_state(b, mlp_run.fresh_state(), MLP(hidden=(64, 32)), input_shape=(8, 8, 1),
                           base_lr=1e-3)


@pytest.mark.parametrize("config_file,override,message", [
    ("fashion_mnist_mlp", dict(method="standard"), "runs only the 'proposed' method"),
    ("imagenet_resnete18", {}, "config.model.name='resnete18'"),
    ("fashion_mnist_mlp", dict(activation="approx_sign"), "runs only 'ste_sign'"),
    ("fashion_mnist_mlp", dict(optimizer="bop"), "trains only with 'adam'"),
])
def test_unsupported_configs(config_file, override, message):
  config = importlib.import_module(f"configs.{config_file}").get_config()
  for key, value in override.items():
    if key == "optimizer":
      config.optimizer.name = value
    else:
      config.model[key] = value
  with pytest.raises(export.ExportError, match=message):
    export.check_config(config)


@pytest.mark.parametrize("name,flat", [("cnv", 256), ("binarynet", 8192)])
def test_layer_graph_of_the_paper_models(name, flat):
  """The exported graph names exactly the Flax model's parameters, with its shapes."""
  from bnn import models  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.cifar10_{name}").get_config()
  model = models.create(config.model, 10)
  layers = export.layer_graph(model, (32, 32, 3))
  flatten = next(l for l in layers if l["kind"] == "flatten")
  assert flatten["out_shape"] == [flat]
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 32, 32, 3)), train=False))
  params = {f"{m}/{k}": v.shape for m, d in variables["params"].items() for k, v in d.items()}
  from pi_backend import graph  # pylint: disable=import-outside-toplevel
  meta = {"method": "proposed", "input_shape": [32, 32, 3], "num_classes": 10,
          "trainable": False, "layers": layers}
  g = graph.parse(meta)
  want = {}
  for spec in g.layers:
    if spec.kind in ("dense", "conv"):
      want[f"{spec.name}/kernel"] = graph.kernel_shape(spec)
    elif spec.kind == "batch_norm":
      want[f"{spec.name}/beta"] = spec.in_shape[-1:]
  assert want == params


def _main(*args, timeout=600, returncode=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr if returncode else proc.stdout


@pytest.mark.slow
@pytest.mark.real_data
def test_main_export_pi_train_import_eval(tmp_path):
  """main.py --mode train -> export -> python -m pi_backend train -> main.py --mode import
  -> main.py --mode eval: JAX's test accuracy equals pi_backend's on the same test set.
  With the memory-lean state (:lean, all 16-bit), whose optimizer is factored_adam;
  Adam's bundles go the same way in the round trip test above."""
  flags = ["--config=configs/fashion_mnist_mlp.py:lean,quick", "--config.num_train_steps=20",
           "--config.batch_size=50", "--config.eval_steps=-1", "--config.eval_batch_size=1000",
           "--config.optimizer.weight_dtype=float16"]
  first, second = tmp_path / "jax", tmp_path / "imported"
  _main("main.py", "--mode=train", f"--workdir={first}", *flags)
  blocker = tmp_path / "a_file"  # a bundle path under a file cannot be written
  blocker.write_text("")
  out = _main("main.py", "--mode=export", f"--workdir={first}", f"--bundle={blocker}/m.bnnpi",
              *flags, returncode=1)
  assert f"ExportError: cannot write the bundle {blocker}/m.bnnpi" in out, out
  assert "Traceback" not in out and blocker.read_text() == "", out
  _main("main.py", "--mode=export", f"--workdir={first}", f"--bundle={tmp_path}/m.bnnpi",
        *flags)
  data = "/usr/share/datasets/fashion-mnist"
  _main("-m", "pi_backend", "train", "--bundle", tmp_path / "m.bnnpi", "--data", data,
        "--split", "train", "--limit", "2000", "--batch-size", "50", "--steps", "10")
  out = _main("-m", "pi_backend", "eval", "--bundle", tmp_path / "m.bnnpi", "--data", data,
              "--batch-size", "1000")
  pi_accuracy = float(out.split("accuracy ")[1].split()[0])
  _main("main.py", "--mode=import", f"--workdir={second}", f"--bundle={tmp_path}/m.bnnpi",
        *flags)
  # without --config: the workdir's config.json, which the import wrote, and overrides on it
  out = _main("main.py", "--mode=eval", f"--workdir={second}", "--config.eval_batch_size=500")
  assert f"config: {second}/config.json, the workdir's own" in out
  assert "eval_batch_size: 500" in out and "eval_steps: -1" in out
  result = json.loads(out[out.index("{"):])
  assert result["step"] == 30
  assert result["test"]["accuracy"] == pytest.approx(pi_accuracy, abs=5e-5)  # 4 decimals


def test_export_and_import_read_no_data(tmp_path, monkeypatch):
  """A checkpoint is exported, and a bundle imported, on a machine without the dataset:
  shapes come from the dataset catalog, not from the data."""
  from bnn import data, experiment
  config = fashion_mnist_mlp.get_config("quick")
  exp = experiment.Experiment(config, tmp_path / "w")
  with contextlib.closing(exp.checkpoints()) as manager:
    ckpt.save(manager, 3, exp.initial_state(), force=True)
    manager.wait_until_finished()

  def no_data(*args, **kwargs):
    raise data.DatasetNotFoundError("the dataset is not on this machine")

  monkeypatch.setattr(data, "make_dataset", no_data)
  path = export.export(config, tmp_path / "w", tmp_path / "m.bnnpi")
  step = export.import_bundle(config, path, tmp_path / "imported")  # the state's: 0
  assert (tmp_path / "imported" / "checkpoints" / str(step)).is_dir()
  with pytest.raises(data.DatasetNotFoundError):  # training does need it
    experiment.Experiment(config, tmp_path / "w").load_data()


def test_import_into_a_workdir_of_another_experiment_is_refused(tmp_path):
  """A proposed-method bundle imported into a standard-method run's workdir would be
  resumed by that run; a new workdir gets the config.json that says what it holds."""
  from bnn import experiment
  config = fashion_mnist_mlp.get_config("quick")
  exp = experiment.Experiment(config, tmp_path / "w")
  with contextlib.closing(exp.checkpoints()) as manager:
    ckpt.save(manager, 3, exp.initial_state(), force=True)
    manager.wait_until_finished()
  path = export.export(config, tmp_path / "w", tmp_path / "m.bnnpi")

  export.import_bundle(config, path, tmp_path / "new")
  assert experiment.saved_config(tmp_path / "new").to_json() == config.to_json()

  standard = fashion_mnist_mlp.get_config("quick,standard")
  other = tmp_path / "standard"
  other.mkdir()
  (other / "config.json").write_text(standard.to_json_best_effort())
  with pytest.raises(ckpt.CheckpointMismatchError,
                     match="model.method: 'standard' in the checkpoint's config, 'proposed'"):
    export.import_bundle(config, path, other)
  assert not (other / "checkpoints").exists() or not any((other / "checkpoints").iterdir())


def test_export_of_a_best_checkpoint_a_run_does_not_have_says_why(tmp_path):
  """A run without a validation split has no best/ checkpoint: the error says so and
  names --which latest (not "train first"), and nothing follows it (orbax's cleanup
  thread, which close() did not wait for, printed a traceback at exit 5 times in 6)."""
  from bnn import experiment
  config = fashion_mnist_mlp.get_config("quick")
  config.dataset.validation_size = 0
  exp = experiment.Experiment(config, tmp_path / "w")
  with contextlib.closing(exp.checkpoints()) as manager:
    ckpt.save(manager, 3, exp.initial_state(), force=True)
    manager.wait_until_finished()
  (tmp_path / "w" / "best").mkdir()
  (tmp_path / "w" / "config.json").write_text(config.to_json_best_effort())
  out = _main("main.py", "--mode=export", "--which=best", f"--workdir={tmp_path / 'w'}",
              returncode=1)
  assert out.rstrip().endswith(
      f"error: NoCheckpointError: no best-validation checkpoint in {tmp_path / 'w' / 'best'}: "
      f"the run has none (no validation split, config.dataset.validation_size=0, or no "
      f"epoch ended yet); --which latest exports its newest checkpoint, step 3"), out[-2000:]
  assert "Traceback" not in out and "cannot schedule" not in out, out[-3000:]


def _saved_workdir(tmp_path, config):
  from bnn import experiment
  exp = experiment.Experiment(config, tmp_path / "w")
  with contextlib.closing(exp.checkpoints()) as manager:
    ckpt.save(manager, 3, exp.initial_state(), force=True)
    manager.wait_until_finished()
  return exp


def test_readers_leave_a_checkpoint_being_written_alone(tmp_path):
  """export (and eval) may run while a training run writes a checkpoint into the same
  workdir: only a writer removes half-written checkpoints (an export used to delete the
  training run's, which then failed)."""
  config = fashion_mnist_mlp.get_config("quick")
  exp = _saved_workdir(tmp_path, config)
  being_written = exp.workdir / "checkpoints" / "5.orbax-checkpoint-tmp-1234"
  being_written.mkdir()
  (being_written / "part").write_text("")
  export.export(config, exp.workdir, tmp_path / "m.bnnpi")
  with contextlib.closing(exp.checkpoints(read_only=True)) as manager:
    assert manager.latest_step() == 3
  assert (being_written / "part").exists()
  with contextlib.closing(exp.checkpoints()):  # a writer (training) cleans up
    pass
  assert not being_written.exists()


def test_export_replaces_only_a_bundle(tmp_path):
  config = fashion_mnist_mlp.get_config("quick")
  exp = _saved_workdir(tmp_path, config)
  (exp.workdir / "config.json").write_text(config.to_json_best_effort())
  before = (exp.workdir / "config.json").read_bytes()
  with pytest.raises(export.ExportError, match="exists and is not a bundle"):
    export.export(config, exp.workdir, exp.workdir / "config.json")
  assert (exp.workdir / "config.json").read_bytes() == before
  with pytest.raises(export.ExportError, match="is a directory"):
    export.export(config, exp.workdir, tmp_path)
  path = export.export(config, exp.workdir, tmp_path / "m.bnnpi")
  export.export(config, exp.workdir, path)  # an earlier bundle is replaced
  assert bundle.read(path).metadata["source"]["step"] == 3


def test_import_refuses_a_bundle_of_another_dataset(tmp_path):
  from configs import mnist_mlp
  exp = _saved_workdir(tmp_path, fashion_mnist_mlp.get_config("quick"))
  path = export.export(exp.config, exp.workdir, tmp_path / "m.bnnpi")
  with pytest.raises(export.ExportError, match="trained on 'fashion_mnist'; the config "
                                               "trains on 'mnist'"):
    export.import_bundle(mnist_mlp.get_config("quick"), path, tmp_path / "other")
  assert not (tmp_path / "other" / "checkpoints").exists()
