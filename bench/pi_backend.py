"""pi_backend against NumPy float32 and JAX, one thread, this machine (issue 5 targets).

    python bench/pi_backend.py [--repeat 5] [--output docs/pi_backend.md]

Rows, all in the same run:
  - MLP 784-256x4-10, batch 200, one training step: pi_backend (proposed method) vs a
    NumPy float32 standard-method step written here (BinaryNet: sign STE, L2 batch norm,
    float32 Adam, everything autograd would keep kept in float32), and JAX on the CPU
    (both methods; XLA limited to one thread). Target: pi_backend no slower than NumPy,
    stretch 1.5x faster.
  - CNV (32x32x3) inference at batch 1 and 100: pi_backend vs NumPy float32 inference
    of the same model (im2col + BLAS). Target: 4x faster.
  - Peak training-buffer memory of the MLP step at batch 200 (pi_backend.memory) vs the
    paper's Raspberry Pi figure, 5.00 MiB. Target: <= 5.00 MiB, stretch 3 MiB. The NumPy
    standard step's peak is measured the same way (tracemalloc), for comparison with
    the paper's 12.62 MiB for the standard method.
  - Binary GEMM (XNOR-popcount, packed operands) vs NumPy float32 matmul of the same
    logical shape. Target: 8x.
Times are the median of --repeat runs after a warm-up. Writes the table to --output.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS"):
  os.environ[_v] = "1"  # before NumPy is imported
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_backend import argtypes  # noqa: E402
from pi_backend import bundle as bundle_lib  # noqa: E402
from pi_backend import kernels as K  # noqa: E402
from pi_backend import memory as pi_memory  # noqa: E402
from pi_backend.model import Model  # noqa: E402

MIB = 1 << 20
PAPER_PI_MIB = 5.00


def _median(fn, repeat: int) -> float:
  return _interleaved({"": fn}, repeat)[""]


def _interleaved(fns: dict, repeat: int) -> dict:
  """Median seconds of each function, run in turn (so that a busy machine slows all of
  them alike), after one warm-up call each."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeat):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


# ---- NumPy float32 standard method (the baseline) --------------------------------------------

def _sign(x):
  return np.where(x >= 0, np.float32(1), np.float32(-1))


class NumpyStandardMLP:
  """BinaryNet-style training in float32: latent W, Wb = sign(clip(W)), L2 batch norm
  (beta only, as our models), sign with the hardtanh STE, softmax cross-entropy, Adam.
  What autograd would keep (inputs, normalised values, STE masks) is kept in float32."""

  def __init__(self, sizes, seed=0, lr=1e-3, eps=1e-5):
    rng = np.random.default_rng(seed)
    self.w = [rng.uniform(-1, 1, (a, b)).astype(np.float32) * np.float32(np.sqrt(6 / (a + b)))
              for a, b in zip(sizes[:-1], sizes[1:])]
    self.beta = [np.zeros(b, np.float32) for b in sizes[1:]]
    self.params = self.w + self.beta
    self.m = [np.zeros_like(p) for p in self.params]
    self.v = [np.zeros_like(p) for p in self.params]
    self.t, self.lr, self.eps = 0, np.float32(lr), np.float32(eps)

  def step(self, images, labels):
    h = images.reshape(len(images), -1).astype(np.float32) * np.float32(1 / 127.5) - 1
    cache = []
    n_layers = len(self.w)
    for i in range(n_layers):
      wb = _sign(np.clip(self.w[i], -1, 1))
      z = h @ wb
      mean = z.mean(0)
      std = np.sqrt(((z - mean) ** 2).mean(0) + self.eps)
      xhat = (z - mean) / std
      y = xhat + self.beta[i]
      cache.append((h, wb, xhat, std, y))
      h = _sign(y) if i < n_layers - 1 else y
    logits = h
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(labels)), labels] + 1e-30).mean()
    dy = p
    dy[np.arange(len(labels)), labels] -= 1
    dy /= len(labels)
    grads_w, grads_b = [None] * n_layers, [None] * n_layers
    for i in reversed(range(n_layers)):
      h, wb, xhat, std, y = cache.pop()
      if i < n_layers - 1:
        dy = dy * (np.abs(y) <= 1)
      grads_b[i] = dy.sum(0)
      n = len(dy)
      dz = (n * dy - dy.sum(0) - xhat * (dy * xhat).sum(0)) / (n * std)
      grads_w[i] = (h.T @ dz) * (np.abs(self.w[i]) <= 1)
      if i:  # no gradient for the input batch
        dy = dz @ wb.T
    self.t += 1
    b1, b2 = np.float32(0.9), np.float32(0.999)
    for p_, m, v, g in zip(self.params, self.m, self.v, grads_w + grads_b):
      m *= b1
      m += (1 - b1) * g
      v *= b2
      v += (1 - b2) * g * g
      p_ -= self.lr * (m / (1 - b1 ** self.t)) / (np.sqrt(v / (1 - b2 ** self.t)) + 1e-8)
    return float(loss)

  def state_bytes(self):
    return sum(a.nbytes for a in self.params + self.m + self.v)


class NumpyFloatCNV:
  """Float32 inference of a bundle's conv net (weights +-1 as float32; im2col + BLAS)."""

  def __init__(self, b: bundle_lib.Bundle):
    self.layers = []
    for spec in b.graph.layers:
      t = b.tensors
      if spec.kind in ("dense", "conv"):
        shape = ((spec.in_shape[0], spec.out_shape[0]) if spec.kind == "dense" else
                 (*spec.kernel, spec.in_shape[2], spec.out_shape[2]))
        w = K.unpack(t[f"bits/{spec.name}/kernel"], shape[-1]).reshape(shape)
        self.layers.append((spec, w.reshape(-1, shape[-1])))
      elif spec.kind == "batch_norm":
        self.layers.append((spec, (t[f"params/{spec.name}/beta"].astype(np.float32),
                                   t[f"batch_stats/{spec.name}/mean"],
                                   t[f"batch_stats/{spec.name}/scale"])))
      else:
        self.layers.append((spec, None))

  def logits(self, images):
    x = images.astype(np.float32) * np.float32(1 / 127.5) - 1
    for spec, p in self.layers:
      if spec.kind == "conv":
        (pt, pb), (pl, pr) = spec.padding
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        oh, ow = spec.out_shape[:2]
        cols = np.concatenate([x[:, i:i + oh, j:j + ow, :] for i in range(spec.kernel[0])
                               for j in range(spec.kernel[1])], axis=-1)
        x = (cols.reshape(-1, cols.shape[-1]) @ p).reshape(len(x), oh, ow, -1)
      elif spec.kind == "dense":
        x = x @ p
      elif spec.kind == "batch_norm":
        beta, mean, scale = p
        x = (x - mean) / scale + beta
      elif spec.kind == "sign":
        x = _sign(x)
      elif spec.kind == "max_pool":
        b, h, w, c = x.shape
        x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))
      elif spec.kind == "flatten":
        x = x.reshape(len(x), -1)
    return x


# ---- bundles from freshly initialised JAX models --------------------------------------------

def _bundle(config_module: str, batch: int, optimizer: str = "adam"):
  import importlib  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from bnn import export, models, optim, train  # pylint: disable=import-outside-toplevel
  from bnn.data import catalog  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.{config_module}").get_config()
  config.optimizer.state_dtype = "float16"
  config.optimizer.name = optimizer
  spec = catalog.get_spec(config.dataset.name)
  model = models.create(config.model, spec.num_classes)
  tx = optim.make_optimizer(config, 100)
  state = train.create_train_state(model, tx, jnp.zeros((1, *spec.image_shape)), 0,
                                   lambda p: optim.initial_params(config, p))
  meta, tensors, _ = export.state_to_bundle(model, state, input_shape=spec.image_shape,
                                            base_lr=config.optimizer.lr)
  return bundle_lib.check(meta, tensors), model, tx, state, spec


def _jax_step_time(config_module, method, images, labels, repeat):
  import importlib  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from bnn import models, optim, train  # pylint: disable=import-outside-toplevel
  from bnn.data import catalog  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.{config_module}").get_config()
  config.model.method = method
  spec = catalog.get_spec(config.dataset.name)
  model = models.create(config.model, spec.num_classes)
  tx = optim.make_optimizer(config, 100)
  state = [train.create_train_state(model, tx, jnp.zeros((1, *spec.image_shape)), 0,
                                    lambda p: optim.initial_params(config, p))]
  step = train.make_train_step(model, tx)
  x, y = jnp.asarray(images), jnp.asarray(labels.astype(np.int32))

  def run():
    state[0], metrics = step(state[0], x, y)
    jax.block_until_ready(metrics)

  return _median(run, repeat)


# ---- the bench ----------------------------------------------------------------------------------

def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeat", type=argtypes.positive_int, default=5)
  parser.add_argument("--output", type=Path, default=Path("docs/pi_backend.md"))
  parser.add_argument("--no-jax", action="store_true", help="skip the JAX rows")
  args = parser.parse_args(argv)
  argtypes.check_output(parser, args.output, "pi_backend.md")
  rng = np.random.default_rng(0)
  rows = []

  def row(what, ours, theirs, target, unit="ms", better="lower"):
    ratio = theirs / ours if better == "lower" else ours / theirs
    rows.append((what, ours, theirs, ratio, target, unit))

  # MLP training, batch 200
  batch = 200
  images = rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, batch)
  mlp_bundle, *_ = _bundle("mnist_mlp", batch)
  rss_before = pi_memory.peak_rss_bytes()
  pi_mlp = Model(mlp_bundle)
  pi_blas = Model(bundle_lib.check(mlp_bundle.metadata,
                                   {k: v.copy() for k, v in mlp_bundle.tensors.items()}),
                  float_gemm="numpy")
  pi_lean = Model(_bundle("mnist_mlp", batch, "factored_adam")[0])
  np_mlp = NumpyStandardMLP([784, 256, 256, 256, 256, 10])
  t = _interleaved({"pi": lambda: pi_mlp.train_step(images, labels),
                    "pi_blas": lambda: pi_blas.train_step(images, labels),
                    "pi_lean": lambda: pi_lean.train_step(images, labels),
                    "numpy": lambda: np_mlp.step(images, labels)}, args.repeat)
  t_pi = t["pi"]
  row("MLP train step, batch 200 (vs NumPy float32 standard)", t["pi"] * 1e3,
      t["numpy"] * 1e3, ">= 1.0x (stretch 1.5x)")
  row("the same, dense float x sign products by NumPy's BLAS (float_gemm='numpy')",
      t["pi_blas"] * 1e3, t["numpy"] * 1e3, ">= 1.0x (stretch 1.5x)")
  row("the same, factored_adam state (the proposed method's default)", t["pi_lean"] * 1e3,
      t["numpy"] * 1e3, ">= 1.0x (stretch 1.5x)")
  jax_rows = {}
  if not args.no_jax:
    for method in ("proposed", "standard"):
      jax_rows[method] = _jax_step_time("mnist_mlp", method, images, labels, args.repeat)

  # memory of the MLP step
  mem = pi_memory.measure(pi_mlp, images, labels, rss_before=rss_before)
  mem_lean = pi_memory.measure(pi_lean, images, labels)
  tracemalloc.start()
  before, _ = tracemalloc.get_traced_memory()
  tracemalloc.reset_peak()
  np_mlp.step(images, labels)
  np_peak = np_mlp.state_bytes() + images.nbytes + labels.nbytes + (
      tracemalloc.get_traced_memory()[1] - before)
  tracemalloc.stop()

  # CNV inference
  cnv_bundle, *_ = _bundle("cifar10_cnv", 100)
  pi_cnv, np_cnv = Model(cnv_bundle), NumpyFloatCNV(cnv_bundle)
  cifar = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_allclose(pi_cnv.logits(cifar[:8]), np_cnv.logits(cifar[:8]), atol=1e-3)
  for b in (1, 100):
    t = _interleaved({"pi": lambda: pi_cnv.logits(cifar[:b], batch_size=b),
                      "numpy": lambda: np_cnv.logits(cifar[:b])}, args.repeat)
    row(f"CNV inference, batch {b} (vs NumPy float32)", t["pi"] * 1e3, t["numpy"] * 1e3,
        ">= 4x")

  # binary GEMM. OpenBLAS runs small products slowly (5 instead of 18 GMAC/s on an AMD
  # EPYC) until its first large one, which the MLP rows above have made; made here too,
  # so that the baseline is at its fastest however the rows are run.
  big = np.ones((512, 512), np.float32)
  np.matmul(big, big)
  for m, k, n in ((200, 256, 256), (200, 784, 256), (1000, 1152, 256)):
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    ap, wpt = K.pack(a), K.pack_transposed(w)
    out_i = np.empty((m, n), np.int32)
    af, wf, out_f = np.sign(a), np.sign(w), np.empty((m, n), np.float32)
    t = _interleaved({"x": lambda: K.xnor_gemm(ap, wpt, k, out=out_i),
                      "f": lambda: np.matmul(af, wf, out=out_f)}, args.repeat * 200)
    t_x, t_f = t["x"], t["f"]
    macs = m * k * n
    rows.append((f"binary GEMM {m}x{k} . {k}x{n} (vs NumPy float32 matmul), GMAC/s",
                 macs / t_x / 1e9, macs / t_f / 1e9, t_f / t_x, ">= 8x", "GMAC/s"))

  lines = _table(rows, jax_rows, mem, mem_lean, np_peak, t_pi)
  text = "\n".join(lines) + "\n"
  print(text)
  args.output.parent.mkdir(parents=True, exist_ok=True)
  args.output.write_text(text)
  print(f"wrote {args.output}")


def _cpu() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _table(rows, jax_rows, mem, mem_lean, np_peak, t_pi) -> list[str]:
  lines = ["# pi_backend benchmark", "",
           f"`python bench/pi_backend.py` on {_cpu()} ({platform.machine()}), one thread "
           f"(OpenBLAS/OMP = 1, XLA single-threaded), popcount `{K.popcount_impl()}`, "
           f"float kernels `{K.float_impl()}`, "
           f"NumPy {np.__version__}. Medians after a warm-up. The machine is shared, so "
           f"times move by 10-30% between runs.", "",
           "| what | pi_backend | baseline | pi_backend advantage | target | met |",
           "|---|---|---|---|---|---|"]
  for what, ours, theirs, ratio, target, unit in rows:
    want = float(target.split("x")[0].replace(">=", "").strip())
    lines.append(f"| {what} | {ours:.2f} {unit} | {theirs:.2f} {unit} | {ratio:.2f}x | "
                 f"{target} | {'yes' if ratio >= want else 'no'} |")
  for what, m in (("", mem), (", factored_adam state", mem_lean)):
    peak = m.peak_bytes / MIB
    lines.append(f"| MLP peak training buffers, batch 200{what} (vs the paper's Pi figure) | "
                 f"{peak:.2f} MiB | {PAPER_PI_MIB:.2f} MiB | {PAPER_PI_MIB / peak:.2f}x | "
                 f"<= 5.00 MiB (stretch 3) | {'yes' if peak <= PAPER_PI_MIB else 'no'}"
                 f"{' (stretch met)' if peak <= 3 else ''} |")
  lines += ["", "JAX on the CPU (one thread), the same MLP step at batch 200: " + (", ".join(
      f"{m} {t * 1e3:.1f} ms" for m, t in jax_rows.items()) or "not run") +
      f"; pi_backend {t_pi * 1e3:.1f} ms.", "",
      f"NumPy float32 standard step, peak buffers measured the same way (state + batch + "
      f"tracemalloc peak): {np_peak / MIB:.2f} MiB (the paper's C++ standard method: "
      f"12.62 MiB).", "", "```", mem.table(), "```", "",
      "Notes. pi_backend's training step runs the proposed backward, whose products are "
      "float x sign GEMMs (the same multiply-adds as float32), plus Adam on float16 "
      "storage. The float kernels (float x sign GEMMs with FMA, float16 conversions, "
      "Adam, the batch-norm and sign-STE rows) take an x86 AVX2 + F16C + FMA or AVX-512F "
      "path chosen "
      "at run time (`kernels.float_impl()`; bit-identical to the portable 4-lane code "
      "except the FMA rounding of the real x^T dy). Each dense layer's weight update "
      "(sign(x)^T dy or x^T dy, the sign_scaled gradient and Adam, a block of 64 kernel "
      "rows at a time for the memory bound) is one C call "
      "(`kernels.dense_weight_update`), so a step makes about 70 kernel calls. Of an "
      "8.6 ms step on an AMD EPYC (Zen 3, AVX2), 6.9 ms are in C: the weight updates "
      "3.1 (mostly their x^T dy GEMMs), the float x sign products of the first layer's "
      "forward and of every dx 2.8, the batch norms 0.45, the rest (XNOR forward, sign "
      "packing, STE) 0.6; Python per-call overhead and NumPy glue make up the "
      "difference. The float GEMMs run 6 x 16 register blocks (AVX2; 4 x 32 with "
      "AVX-512F) without packing, at about 80% of OpenBLAS's speed (the first layer's "
      "x^T dy: 1.08 ms against NumPy's 0.87). `float_gemm='numpy'` hands the dense "
      "float x sign products to NumPy's BLAS. CNV inference folds each batch norm + sign after an "
      "XNOR layer into one integer threshold per channel (exact) and keeps +-1 "
      "activations packed; each binary conv with its max pool (before the batch norm or "
      "after the sign), batch norm and sign is one C call (`kernels.binary_conv2d_sign`), "
      "and the first layer's float batch norm and sign another "
      "(`kernels.batch_norm_eval_sign`): 13 kernel calls an inference. At batch 1 the "
      "binary convs take about 0.25 ms of 0.67 (AMD EPYC, Zen 3 with AVX2), the first "
      "layer's float conv 0.12 ms. The binary GEMM rows time `kernels.xnor_gemm` with its "
      "argument checks and the ctypes call, 1000 calls interleaved with NumPy's. The "
      "200x256 . 256x256 product takes 26 us in a C loop (AMD EPYC, Zen 3 at 3.2 GHz), "
      "27.5 through a bare ctypes call, 31.5 through `xnor_gemm` and 33.5-35 when each "
      "call follows NumPy's matmul, which evicts its data from the caches. Of the 26: "
      "0.7 us to rearrange b (AVX2 transposes), 1.4 to turn the byte counts into the "
      "51,200 int32 outputs (a shift, an and and a subtraction per 8) and store them, a "
      "row of outputs at a time, and about 23 in the AVX2 kernel's loop, which the table "
      "lookups bound: Zen 3 runs two vpshufb a cycle, so the 2 lookups per byte of a and "
      "32 outputs take at least 1 cycle; with their byte adds they take 1.2 in "
      "isolation, and 1.3 in the loop. Giving the idle scalar units a share of the "
      "outputs in the same loop (xor and POPCNT of 64-bit words) did not pay: 1 to 4 "
      "words per 2 bytes of a, 2.1 to 8.3% more outputs, cost 1.6 to 12.6% more time. "
      "The peak training buffers are 0.5 MiB of transients over "
      "2.4 MiB of float16 weights and Adam moments. A factored_adam bundle (the JAX "
      "side's default for the proposed method) keeps 1.6 MiB of state (no float16 v per "
      "weight: float32 row and column statistics instead); its dense layers collect "
      "each kernel's float16 gradient (the largest, 0.4 MiB, is most of the transients) "
      "and update it by two C passes: the row and column statistics "
      "(`kernels.factored_square_sums`), then the moment and weights "
      "(`kernels.factored_adam_f16`). The optimizer takes about 0.87 ms a step (1.7 "
      "when the statistics were NumPy); with the separate gradient blocks it is the "
      "step time the bundle adds over the fused Adam call."]
  return lines


if __name__ == "__main__":
  main()
