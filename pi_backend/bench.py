"""Micro-benchmark of the kernels against NumPy float32, on one thread.

    python -m pi_backend.bench [--repeat 50]

Re-runs itself with OMP/OpenBLAS/MKL thread counts set to 1 (they must be set before
NumPy is imported), so that NumPy's BLAS and the C kernels both use one core. Prints
the best time of each kernel over the repeats.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _best(fn, repeat: int) -> float:
  fn()  # warm up
  best = float("inf")
  for _ in range(repeat):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeat", type=int, default=50)
  args = parser.parse_args(argv)
  if any(os.environ.get(v) != "1" for v in _THREAD_VARS):
    env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
    os.execve(sys.executable, [sys.executable, "-m", "pi_backend.bench", *sys.argv[1:]], env)

  import numpy as np  # pylint: disable=import-outside-toplevel
  from pi_backend import kernels as K  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  rows = []

  def row(name, seconds, flops=None):
    rows.append((name, seconds, flops))

  # dense: 200 x 256 by 256 x 256 (the paper's MLP hidden layer at batch 200)
  m, k, n = 200, 256, 256
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  xb, wb = np.sign(x) + (x == 0), np.sign(w) + (w == 0)
  xp, wpt = K.pack(x), K.pack_transposed(w)
  out_i, out_f = np.empty((m, n), np.int32), np.empty((m, n), np.float32)
  macs = m * k * n
  row(f"numpy float32 matmul {m}x{k} @ {k}x{n}", _best(lambda: np.matmul(xb, wb, out=out_f),
                                                        args.repeat), macs)
  for impl in ("portable", "hardware"):
    try:
      name = K.set_popcount_impl(impl)
    except ValueError:
      continue
    row(f"xnor_gemm int32 ({name}), packed operands",
        _best(lambda: K.xnor_gemm(xp, wpt, k, out=out_i), args.repeat), macs)
  K.set_popcount_impl("auto")
  row("xnor_gemm float32 out", _best(lambda: K.xnor_gemm(xp, wpt, k, dtype=np.float32,
                                                         out=out_f), args.repeat), macs)
  row(f"pack x ({m}x{k})", _best(lambda: K.pack(x, out=xp), args.repeat))
  row(f"pack_transposed w ({k}x{n})", _best(lambda: K.pack_transposed(w), args.repeat))
  row("sign_matmul (first layer, float x . sign W)", _best(lambda: K.sign_matmul(x, w, out=out_f),
                                                          args.repeat), macs)
  dy = rng.standard_normal((m, n)).astype(np.float32)
  row("matmul_sign_t (dx = dy . sign W^T)", _best(lambda: K.matmul_sign_t(dy, w), args.repeat),
      macs)
  row("sign_t_matmul (dW = sign x^T . dy)", _best(lambda: K.sign_t_matmul(xp, k, dy),
                                                 args.repeat), macs)
  row("numpy float32 x^T . dy", _best(lambda: x.T @ dy, args.repeat), macs)

  # conv: CNV's second layer shape, batch 10: 30x30x64 -> 28x28x64, 3x3 VALID
  b, h, c, co = 10, 30, 64, 64
  xc = np.sign(rng.standard_normal((b, h, h, c))).astype(np.float32)
  wc = rng.standard_normal((3, 3, c, co)).astype(np.float32)
  xcp, wcp = K.pack(xc), K.pack_conv_weights(wc)
  conv_macs = b * 28 * 28 * 9 * c * co
  row(f"binary_conv2d {b}x{h}x{h}x{c} -> {co}, 3x3 VALID",
      _best(lambda: K.binary_conv2d(xcp, c, wcp, (3, 3), 1, "VALID"), max(3, args.repeat // 10)),
      conv_macs)

  dyc = rng.standard_normal((b, 28, 28, co)).astype(np.float32)
  wcs = K.pack(wc)
  few = max(3, args.repeat // 10)
  row("conv2d_backward_input (dx), same shapes",
      _best(lambda: K.conv2d_backward_input(dyc, wcs, (h, h), 1, "VALID"), few), conv_macs)
  row("conv2d_backward_weight (dW, packed x), same shapes",
      _best(lambda: K.conv2d_backward_weight(xcp, dyc, (3, 3), 1, "VALID", c_in=c), few),
      conv_macs)
  x0 = rng.standard_normal((b, 32, 32, 3)).astype(np.float32)
  w0 = K.pack(rng.standard_normal((3, 3, 3, 64)).astype(np.float32))
  row(f"sign_conv2d (first layer) {b}x32x32x3 -> 64, 3x3 VALID",
      _best(lambda: K.sign_conv2d(x0, w0, 64, 1, "VALID"), few), b * 30 * 30 * 27 * 64)

  width = max(len(r[0]) for r in rows)
  print(f"one thread; popcount {K.popcount_impl()}; best of {args.repeat}")
  print(f"{'kernel'.ljust(width)}  {'time':>10}  {'GMAC/s':>8}")
  for name, seconds, flops in rows:
    rate = f"{flops / seconds / 1e9:8.2f}" if flops else " " * 8
    print(f"{name.ljust(width)}  {seconds * 1e6:8.1f}us  {rate}")


if __name__ == "__main__":
  main()
