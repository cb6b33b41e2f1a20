"""pi_backend.model without JAX: logits against a float64 NumPy reading of the bundle,
one training step against a float64 reference of the proposed method, what is kept
between forward and backward, learning, saving, and clear errors."""
import copy

import numpy as np
import pytest

from pi_backend import bundle, memory
from pi_backend.model import Model
from tests.pi_backend import bundles, reference_model

MODELS = {
    "mlp": lambda **kw: bundles.mlp(**kw),
    "cnv": lambda **kw: bundles.convnet(**kw),
    "binarynet": lambda **kw: bundles.convnet(padding="SAME", pool_before_bn=True, **kw),
}


def _model(name="mlp", **kw):
  return Model(bundle.check(*MODELS[name](**kw)))


def _images(shape, n=50, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("float_gemm", ["c", "numpy"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_a_float64_reference(name, float_gemm):
  """Tolerance 1e-4: the kernels sum in float32 (the reference in float64); a sign
  activation could flip where its input is within rounding of 0, which random weights
  make unlikely (and argmax would show it)."""
  b = bundle.check(*MODELS[name]())
  model = Model(b, float_gemm=float_gemm)
  images = _images(model.graph.input_shape)
  want = reference_model.logits(b, images)
  got = model.logits(images, batch_size=16)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
  # float pixels already in [-1, 1] give the same logits
  np.testing.assert_allclose(model.logits(images.astype(np.float32) / np.float32(127.5) - 1),
                             got, atol=1e-5)


@pytest.mark.parametrize("float_gemm", ["c", "numpy"])
def test_train_step_matches_a_float64_reference(float_gemm):
  """Tolerances: the loss to 1e-5; BN running statistics to 1e-5 relative (float32 vs
  float64 sums); latent weights, betas and Adam moments within one float16 step of the
  reference except where a rounding decides a sign (a weight gradient within rounding
  of 0: at most 1% of the weights, differing by at most 2 lr); weight signs identical."""
  meta, tensors = bundles.mlp(input_shape=(8, 8, 1), hidden=(32, 32), seed=3)
  rng = np.random.default_rng(4)  # Adam moments as after a few steps, so that g matters
  meta["optimizer"]["count"] = 5
  for name in tensors:
    if name.startswith(("adam_m/", "adam_v/")):
      m = rng.normal(0, 0.02, tensors[name].shape)
      tensors[name] = (m if name.startswith("adam_m/") else m * m).astype(np.float16)
  b = bundle.check(meta, tensors)
  images = _images((8, 8, 1), n=40, seed=1)
  labels = np.random.default_rng(2).integers(0, 10, 40)
  want_loss, want = reference_model.mlp_train_step(b, images, labels)
  model = Model(bundle.check(meta, {k: v.copy() for k, v in tensors.items()}),
                float_gemm=float_gemm)
  got_loss = model.train_step(images, labels)["loss"]
  assert got_loss == pytest.approx(want_loss, rel=1e-5)
  _, got = model.to_bundle()
  lr = meta["optimizer"]["lr"]
  for name, w in want.items():
    g = got[name]
    if name.startswith("bits/"):
      np.testing.assert_array_equal(g, w, err_msg=name)
    elif name.startswith("batch_stats/"):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
    else:
      diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
      ulp = np.spacing(np.abs(w).astype(np.float16)).astype(np.float64)
      off = diff > ulp
      assert off.mean() <= 0.01, (name, off.mean())
      assert np.all(diff[off] <= 2.001 * lr if name.startswith("params/") else
                    diff[off] <= 0.21 * np.abs(w.astype(np.float64)[off]) + 1e-3), name
  assert model.adam_count == 6 and model.train_step_count == 1


def test_only_bits_and_per_channel_values_are_kept_between_forward_and_backward():
  model = _model("cnv")
  images = _images(model.graph.input_shape, n=20)
  labels = np.arange(20) % 10
  seen = {}

  def probe(m):
    seen["kept"] = m.kept_arrays()

  model.train_step(images, labels, probe=probe)
  batch_elements = images.size
  for a in seen["kept"]:
    if a.dtype == np.uint8:  # the batch itself, for the first layer
      assert a.size == batch_elements and np.shares_memory(a, images)
    elif a.dtype == np.float16:
      assert a.ndim == 1  # per-channel scale and mean|x_hat|
    else:
      assert a.dtype == np.uint64, a.dtype
  assert model.kept_arrays() == []  # released after the step


def test_learns_a_learnable_task():
  rng = np.random.default_rng(0)
  model = _model("mlp", hidden=(64,), seed=0)
  proto = rng.integers(0, 256, (10, 8, 8, 1))
  labels = rng.integers(0, 10, 400)
  images = np.clip(proto[labels] + rng.normal(0, 40, (400, 8, 8, 1)), 0, 255).astype(np.uint8)
  before = model.evaluate(images, labels)
  model.train(images, labels, batch_size=50, epochs=4)
  after = model.evaluate(images, labels)
  assert after["loss"] < before["loss"] - 0.3
  assert after["accuracy"] > 0.8


def test_save_load_round_trip(tmp_path):
  model = _model("cnv")
  images, labels = _images(model.graph.input_shape, n=30), np.arange(30) % 10
  model.train_step(images, labels)
  path = model.save(tmp_path / "m.bnnpi")
  again = Model.load(path)
  np.testing.assert_array_equal(again.logits(images), model.logits(images))
  assert again.train_step_count == 1 and again.adam_count == 1
  for a, b in zip(again.state_arrays(), model.state_arrays()):
    np.testing.assert_array_equal(a, b)
  # and training goes on identically from the saved state
  model.train_step(images, labels)
  again.train_step(images, labels)
  np.testing.assert_array_equal(again.logits(images), model.logits(images))


def test_inference_only_bundle():
  full = bundles.mlp(seed=4)
  meta, tensors = bundles.mlp(seed=4, trainable=False)
  assert not any(k.startswith(("adam_", "params/BinaryDense")) for k in tensors)
  images = _images((8, 8, 1))
  model = Model(bundle.check(meta, tensors))
  np.testing.assert_array_equal(model.logits(images), Model(bundle.check(*full)).logits(images))
  with pytest.raises(ValueError, match="inference only"):
    model.train_step(images, np.zeros(len(images), np.int64))


def test_quantizer_choices_run_and_matter():
  images, labels = _images((8, 8, 1), n=40), np.arange(40) % 10
  results = {}
  for key, kw in {"default": {},
                  "po2": dict(quant={"grad_quantizer": "po2(bits=4, bias=8)"},
                              bn_quant="identity()"),
                  "bf16": dict(bn_quant="bfloat16()"),
                  "po2_sr": dict(quant={"grad_quantizer": "po2(bits=4, bias=6, "
                                                          "rounding='stochastic')"})}.items():
    model = _model("mlp", seed=5, **kw)
    for _ in range(3):
      model.train_step(images, labels)
    results[key] = model.to_bundle()[1]["params/BinaryDense_0/kernel"]
  assert not np.array_equal(results["default"], results["po2"])
  assert not np.array_equal(results["default"], results["po2_sr"])


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((4, 9, 9), np.uint8), np.zeros(4, np.int64), "64 values per example"),
    (np.zeros((4, 8, 8), np.int32), np.zeros(4, np.int64), "dtype int32"),
    (np.zeros((4, 8, 8), np.uint8), np.zeros(3, np.int64), r"expected integers of shape \(4,\)"),
    (np.zeros((4, 8, 8), np.uint8), np.full(4, 10), r"classes in \[0, 9\]"),
    (np.zeros((4, 8, 8), np.uint8), np.zeros(4, np.float32), "dtype float32"),
    (np.full((4, 8, 8), 255, np.float32), np.zeros(4, np.int64), r"range over \[255.0, 255.0\]"),
    (np.full((4, 8, 8), np.nan, np.float32), np.zeros(4, np.int64), r"expected finite values"),
])
def test_bad_inputs(images, labels, message):
  model = _model()
  before = copy.deepcopy([a.copy() for a in model.state_arrays()])
  with pytest.raises((ValueError, TypeError), match=message):
    model.train_step(images, labels)
  if np.issubdtype(images.dtype, np.floating):
    with pytest.raises(ValueError, match=message):  # inference checks the images too
      model.logits(images)
  for a, b in zip(model.state_arrays(), before):
    np.testing.assert_array_equal(a, b)  # nothing changed


def test_memory_of_the_paper_mlp_at_batch_200_is_under_the_pi_figure():
  """The issue's target: peak training buffers <= 5.00 MiB (the paper's Pi, valgrind
  massif) for 784-256x4-10 at batch 200; about 3 MiB here (docs/pi_backend.md)."""
  model = _model("mlp", input_shape=(28, 28, 1), hidden=(256,) * 4)
  images, labels = _images((28, 28, 1), n=200), np.arange(200) % 10
  model.train_step(images, labels)  # warm up
  report = memory.measure(model, images, labels)
  state = 3 * 2 * (784 * 256 + 3 * 256 * 256 + 256 * 10 + 4 * 256 + 10)  # w, m, v float16
  assert state <= report.state_bytes <= state + 200_000  # + statistics and packed signs
  assert report.kept_bytes < 300_000  # bits, per-channel values and the uint8 batch
  assert report.peak_bytes <= 5.00 * memory.MIB, report.table()
  assert report.peak_rss_bytes > report.peak_bytes
  assert "peak training buffers" in report.table()


def test_float_gemm_is_checked():
  with pytest.raises(ValueError, match="float_gemm='blas'; expected one of"):
    Model(bundle.check(*bundles.mlp()), float_gemm="blas")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_folded_evaluation_gives_the_same_logits(name):
  """Batch norm + sign folded into integer thresholds (Model._evaluate) against running
  them one after the other, bit for bit -- also where an XNOR output sits exactly on a
  threshold (means set to integers, betas to 0: (x - mean) / scale + beta = 0 there, and
  sign(0) = +1)."""
  meta, tensors = MODELS[name](seed=6)
  tensors = {k: v.copy() for k, v in tensors.items()}
  for key in tensors:
    if key.startswith("batch_stats/") and key.endswith("/mean") and "BatchNorm_0" not in key:
      tensors[key] = np.round(tensors[key] * 3).astype(np.float32)
      tensors[key.replace("batch_stats/", "params/").replace("/mean", "/beta")][:] = 0
  model = Model(bundle.check(meta, tensors))
  images = _images(model.graph.input_shape, n=40, seed=7)
  slow = model.logits(images, fold=False)
  np.testing.assert_array_equal(model.logits(images, fold=True), slow)
  assert model._threshold_cache  # the folded path ran
  model.train_step(images, np.arange(40) % 10)  # new statistics: new thresholds
  assert not model._threshold_cache
  slow = model.logits(images, fold=False)
  np.testing.assert_array_equal(model.logits(images, fold=True), slow)


def test_examples_of_another_layout_are_refused():
  """NCHW images of an NHWC model have the right number of values in the wrong order:
  refused, naming both shapes. Axes of size 1 do not matter, nor does a flat input."""
  model = _model("cnv")  # input_shape [12, 12, 3]
  images = _images((12, 12, 3), n=4)
  with pytest.raises(ValueError, match=r"examples of shape \[3, 12, 12\], which is neither "
                                       r"the bundle's input_shape \[12, 12, 3\] .* nor flat "
                                       r"\[432\]"):
    model.logits(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  want = model.logits(images)
  np.testing.assert_array_equal(model.logits(images.reshape(4, -1)), want)
  np.testing.assert_array_equal(model.logits(images.reshape(4, 1, 12, 12, 3)), want)
  mlp = _model("mlp")  # input_shape [8, 8, 1]: MNIST-like IDX files are (N, 8, 8)
  np.testing.assert_array_equal(mlp.logits(_images((8, 8), n=4)),
                                mlp.logits(_images((8, 8, 1), n=4)))


def test_train_checks_every_label_before_the_first_step():
  """A label out of range in the last batch fails before any step, not after the others."""
  model = _model()
  before = [a.copy() for a in model.state_arrays()]
  labels = np.arange(40) % 10
  labels[-1] = 10
  with pytest.raises(ValueError, match=r"labels range over \[0, 10\]; expected classes in "
                                       r"\[0, 9\]"):
    model.train(_images((8, 8, 1), n=40), labels, batch_size=10, shuffle=False)
  assert model.train_step_count == 0
  for a, b in zip(model.state_arrays(), before):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_tensor_names_the_first_tensor_with_nan_or_inf():
  model = _model()
  assert model.nonfinite_tensor() is None
  model.tensors["adam_v/BinaryDense_1/kernel"][2, 3] = np.inf
  assert model.nonfinite_tensor() == "adam_v/BinaryDense_1/kernel"
