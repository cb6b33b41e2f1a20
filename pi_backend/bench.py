"""Micro-benchmark of the kernels against NumPy float32, on one thread.

    python -m pi_backend.bench [--repeat 50] [--gemm-only]

Re-runs itself with OMP/OpenBLAS/MKL thread counts set to 1 (they must be set before
NumPy is imported), so that NumPy's BLAS and the C kernels both use one core. Prints
the best time of each kernel over the repeats (the best, not the median: on a shared
machine the other processes only ever add time).

First table: the binary GEMM (XNOR-popcount on packed operands, int32 out) with every
popcount implementation against np.matmul of float32 (m, k) @ (k, n), the same logical
shape, timed in turns (numpy, then each implementation, repeat times) so that both see
the same load. "xnor_gemm" is the Python call (argument checks included); "C" the bare
ctypes call. Second table: the other kernels.
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


# (m, k, n, what): the MLP's dense layers at batch 200 and 1, CNV's 3x3 convs as im2col
# GEMMs (m = batch * output pixels, k = 9 * c_in, n = c_out).
GEMM_SHAPES = [
    (200, 256, 256, "MLP 256 -> 256, batch 200"),
    (200, 784, 256, "MLP 784 -> 256, batch 200"),
    (1, 256, 256, "MLP 256 -> 256, batch 1"),
    (100 * 28 * 28, 9 * 64, 64, "CNV conv 64 -> 64 (28x28), batch 100"),
    (10 * 28 * 28, 9 * 64, 64, "CNV conv 64 -> 64 (28x28), batch 10"),
    (100 * 10 * 10, 9 * 128, 128, "CNV conv 128 -> 128 (10x10), batch 100"),
    (100 * 3 * 3, 9 * 256, 256, "CNV conv 256 -> 256 (3x3), batch 100"),
]


def gemm_table(np, K, repeat: int) -> list[str]:
  """Lines of the binary GEMM table (see the module docstring)."""
  from pi_backend import _lib  # pylint: disable=import-outside-toplevel
  lib = _lib.load()
  rng = np.random.default_rng(0)
  impls = K.popcount_impls()
  codes = {name: K._IMPLS.get(name, 2) for name in impls}  # pylint: disable=protected-access
  head = (f"{'shape m x k x n':>20}  {'what':<38} {'numpy f32':>10}" +
          "".join(f"  {name + ' (x)':>22}" for name in impls) + f"  {'C ' + impls[-1]:>22}")
  lines = [head]
  for m, k, n, what in GEMM_SHAPES:
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    xp, wpt = K.pack(x), K.pack_transposed(w)
    out_f, out_i = np.empty((m, n), np.float32), np.empty((m, n), np.int32)
    reps = max(3, min(repeat, int(4e9 / (m * k * n))))
    args = (xp.ctypes.data, wpt.ctypes.data, m, n, k, out_i.ctypes.data)
    fns = {"numpy": lambda: np.matmul(x, w, out=out_f),
           **{name: lambda: K.xnor_gemm(xp, wpt, k, out=out_i) for name in impls},
           "C": lambda: lib.bnn_xnor_gemm_i32(*args)}
    best = {name: float("inf") for name in fns}
    for r in range(reps + 1):
      for name, fn in fns.items():
        if name != "numpy":  # (not timed)
          lib.bnn_set_popcount_impl(codes[impls[-1] if name == "C" else name])
        t0 = time.perf_counter()
        fn()
        if r:  # the first round warms up
          best[name] = min(best[name], time.perf_counter() - t0)
    np.testing.assert_array_equal(out_i, np.where(x >= 0, 1, -1) @ np.where(w >= 0, 1, -1))
    cells = "".join(f"  {best[name] * 1e3:9.3f} ms {best['numpy'] / best[name]:6.1f}x"
                    for name in [*impls, "C"])
    lines.append(f"{m:>7} x {k:>4} x {n:>4}  {what:<38} {best['numpy'] * 1e3:7.3f} ms{cells}")
  K.set_popcount_impl("auto")
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeat", type=int, default=50)
  parser.add_argument("--gemm-only", action="store_true", help="only the binary GEMM table")
  args = parser.parse_args(argv)
  if any(os.environ.get(v) != "1" for v in _THREAD_VARS):
    env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
    os.execve(sys.executable, [sys.executable, "-m", "pi_backend.bench", *sys.argv[1:]], env)

  import numpy as np  # pylint: disable=import-outside-toplevel
  from pi_backend import kernels as K  # pylint: disable=import-outside-toplevel

  print(f"binary GEMM vs numpy float32 matmul, one thread, best of up to {args.repeat}; "
        f"(x): numpy time / this time")
  print("\n".join(gemm_table(np, K, args.repeat)))
  if args.gemm_only:
    return
  print()
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
  for impl in K.popcount_impls():
    name = K.set_popcount_impl(impl)
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
