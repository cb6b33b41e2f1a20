"""python -m pi_backend infer|eval|train|bench: run a bundle on the device (NumPy + C only).

    python -m pi_backend eval  --bundle mlp.bnnpi --data t10k-images-idx3-ubyte.gz
    python -m pi_backend infer --bundle mlp.bnnpi --data test.npz --output logits.npy
    python -m pi_backend train --bundle mlp.bnnpi --data /usr/share/datasets/fashion-mnist \\
        --batch-size 100 --epochs 1 [--steps N] [--output new.bnnpi] [--memory]
    python -m pi_backend bench [--bundle mlp.bnnpi --data D --batch-size 200]

--data: an .npz (images, labels), an IDX images file (labels from --labels or the
matching *labels* file) or a directory of MNIST-named IDX files (--split train|test;
the default is train for ``train`` and test otherwise);
see pi_backend/data.py; every label is checked against the model's classes before the
work starts. ``train`` writes the trained bundle back to --output (default: the input
bundle; never one of the data files), atomically; SIGINT (Ctrl-C) or SIGTERM stops it
after the step under way, and it still writes the bundle. A NaN or infinite loss (or
state) stops it with an error and writes nothing. ``infer --output`` writes the logits
atomically too (np.save's name: .npy appended). ``bench`` without a bundle times the kernels
(pi_backend/bench.py); with one, a training step and inference, and the memory report.
Exit status: 0, 1 for a bad file or value (the message says which), 2 for bad arguments,
130 or 143 for training stopped by SIGINT or SIGTERM (its bundle written).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from pi_backend import argtypes

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m pi_backend",
                              description="Inference and training of binary networks "
                                          "(pi_backend bundles) with NumPy and C.")
  sub = p.add_subparsers(dest="command", required=True, metavar="{infer,eval,train,bench}")

  def common(sp, data_required=True, split="test"):
    sp.add_argument("--bundle", type=argtypes.path, required=data_required,
                    help="the model (python main.py --mode export writes one)")
    sp.add_argument("--data", type=argtypes.path, required=data_required,
                    help=".npz, IDX images file, or directory of MNIST-named IDX files")
    sp.add_argument("--labels", type=argtypes.path, help="IDX labels file (default: guessed)")
    sp.add_argument("--split", choices=("train", "test"), default=split,
                    help=f"which files of a --data directory (default {split})")
    sp.add_argument("--limit", type=argtypes.positive_int, help="use only the first N examples")
    sp.add_argument("--batch-size", type=argtypes.positive_int, default=100)
    sp.add_argument("--float-gemm", choices=("c", "numpy"), default="c",
                    help="dense float x sign products: the C kernels or NumPy's BLAS")

  sp = sub.add_parser("infer", help="logits and predictions")
  common(sp)
  sp.add_argument("--output", type=argtypes.path, help="write the logits (N, classes) here (.npy)")
  sp = sub.add_parser("eval", help="loss and accuracy")
  common(sp)
  sp = sub.add_parser("train", help="train with the proposed method, write the bundle back")
  common(sp, split="train")  # training on the test files by default would spoil them
  sp.add_argument("--epochs", type=argtypes.positive_int, default=1)
  sp.add_argument("--steps", type=argtypes.positive_int, help="stop after this many steps")
  sp.add_argument("--output", type=argtypes.path, help="where to write the trained bundle "
                                              "(default: over --bundle)")
  sp.add_argument("--seed", type=argtypes.nonnegative_int, default=0)
  sp.add_argument("--memory", action="store_true",
                  help="measure the first step's memory and print the report")
  sp = sub.add_parser("bench", help="time the kernels, or a bundle's training and inference")
  common(sp, data_required=False)
  sp.add_argument("--repeat", type=argtypes.positive_int, default=5)
  return p


def _load(args, need_labels=True):
  from pi_backend import data  # pylint: disable=import-outside-toplevel
  from pi_backend.model import Model  # pylint: disable=import-outside-toplevel
  if args.bundle.is_dir():
    raise ValueError(f"--bundle {args.bundle}: is a directory; expected a bundle file "
                     f"(python main.py --mode export writes one)")
  if not args.bundle.is_file():
    raise FileNotFoundError(f"--bundle {args.bundle}: no such file")
  model = Model.load(args.bundle, float_gemm=args.float_gemm,
                     **({"seed": args.seed} if hasattr(args, "seed") else {}))
  # every label against the model's classes now, not in the batch that holds a bad one
  images, labels = data.load(args.data, args.labels, args.split, need_labels=need_labels,
                             num_classes=model.num_classes)
  if args.limit:
    images = images[:args.limit]
    labels = None if labels is None else labels[:args.limit]
  print(f"{args.bundle}: {model.graph.model or 'model'}, {len(model.graph.layers)} layers, "
        f"input {list(model.graph.input_shape)}, {model.num_classes} classes, trained "
        f"{model.train_step_count} steps"
        f"{f' ({model.graph.optimizer.name})' if model.graph.optimizer else ''}; {args.data}"
        f"{f' ({args.split} split)' if args.data.is_dir() else ''}: {len(images)} examples",
        flush=True)
  return model, images, labels


def _check_output(args, output: Path, *inputs: Path) -> None:
  """Refuses an --output that cannot be written, or that is one of the files the
  command reads (--data, --labels, the files of a --data directory, and ``inputs``):
  the output would replace what it was computed from."""
  from pi_backend import data  # pylint: disable=import-outside-toplevel
  argtypes.check_writable(output, "model.bnnpi" if args.command == "train" else "logits.npy")
  for f in (*data.input_files(args.data, args.labels, args.split), *inputs):
    if _same_file(output, f):
      raise ValueError(f"--output {output} is {f}, which this command reads; expected "
                       f"another file")


def _same_file(a: Path, b: Path) -> bool:
  try:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
  except OSError:
    return False


def _write(path: Path, write) -> None:
  """write(); an OSError (a full disk, ...) names the file. The writes are atomic: the
  file is replaced whole or not at all (pi_backend/atomic.py)."""
  try:
    write()
  except OSError as e:
    raise OSError(f"cannot write {path}: {e.strerror or e}") from None


def _infer(args) -> None:
  import io  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from pi_backend import atomic  # pylint: disable=import-outside-toplevel
  output = None
  if args.output:
    argtypes.check_writable(args.output, "logits.npy")  # a directory is refused as such
    # np.save's name: .npy appended unless there
    output = args.output if args.output.name.endswith(".npy") else args.output.with_name(
        args.output.name + ".npy")
    _check_output(args, output, args.bundle)
  model, images, labels = _load(args, need_labels=False)
  t0 = time.perf_counter()
  logits = model.logits(images, args.batch_size)
  seconds = time.perf_counter() - t0
  pred = logits.argmax(1)
  print(f"{len(images)} examples in {seconds:.2f} s ({seconds / len(images) * 1e3:.2f} ms "
        f"each); predictions of the first {min(10, len(pred))}: {pred[:10].tolist()}")
  if labels is not None:
    print(f"accuracy {np.mean(pred == labels):.4f}")
  if output is not None:
    buf = io.BytesIO()
    np.save(buf, logits)
    _write(output, lambda: atomic.write_bytes(output, buf.getvalue()))
    print(f"logits written to {output}")


def _eval(args) -> None:
  model, images, labels = _load(args)
  t0 = time.perf_counter()
  m = model.evaluate(images, labels, args.batch_size)
  print(f"loss {m['loss']:.4f} accuracy {m['accuracy']:.4f} on {m['count']} examples "
        f"({time.perf_counter() - t0:.2f} s)")


def _train(args) -> int:
  from pi_backend import memory  # pylint: disable=import-outside-toplevel
  rss_before = memory.peak_rss_bytes()
  _check_output(args, args.output or args.bundle)
  model, images, labels = _load(args)
  if not model.graph.trainable:
    raise ValueError(f"{args.bundle} is inference-only (trainable=false); export a "
                     f"trainable bundle")
  if args.batch_size > len(images):
    raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(images)} "
                     f"examples")
  output = args.output or args.bundle
  total = (len(images) // args.batch_size) * args.epochs
  total = total if args.steps is None else min(total, args.steps)
  first = 0
  if args.memory:  # the second step is measured (the first one allocates one-time caches)
    if total < 2:
      raise ValueError("--memory measures the second training step: train 2 steps or more")
    x, y = images[:args.batch_size], labels[:args.batch_size]
    model.train_step(x, y)
    print(memory.measure(model, x, y, rss_before=rss_before).table(), flush=True)
    first = 2
  t0 = time.perf_counter()
  window = []

  def diverged(when, what):
    o = model.graph.optimizer
    raise ValueError(f"training diverged {when}: {what}; stopped, {output} not "
                     f"written (a NaN or infinite state cannot be saved). Check the bundle's "
                     f"hyperparameters (lr {o.lr}, eps {o.eps}, the batch norms' eps) and "
                     f"the data")

  def progress(done, _, metrics):
    done += first
    if not math.isfinite(metrics["loss"]):
      diverged(f"at step {done}/{total}", f"the loss is {metrics['loss']}")
    window.append(metrics)
    if done % max(1, total // 20) == 0 or done == total:
      bad = model.nonfinite_tensor()  # at the reports: a pass over the state
      if bad is not None:
        diverged(f"by step {done}/{total}", f"{bad} holds NaN or infinite values")
      loss = sum(m["loss"] for m in window) / len(window)
      accuracy = sum(m["accuracy"] for m in window) / len(window)
      print(f"step {done}/{total} (training step {model.train_step_count}): loss {loss:.4f} "
            f"accuracy {accuracy:.4f} ({(time.perf_counter() - t0) / (done - first):.3f} "
            f"s/step)", flush=True)
      window.clear()

  from pi_backend import interrupt  # pylint: disable=import-outside-toplevel
  with interrupt.on_signal(f"after this step, writing {output}") as watch:

    def progress_or_stop(done, n, metrics):
      progress(done, n, metrics)
      if watch.signum is not None:  # a step is whole here: every layer has its update
        raise interrupt.Interrupted(watch.signum, "training stopped")

    try:
      if total > first:
        model.train(images, labels, batch_size=args.batch_size, epochs=args.epochs,
                    max_steps=total - first, progress=progress_or_stop)
    except interrupt.Interrupted:
      pass
  bad = model.nonfinite_tensor()
  if bad is not None:
    diverged(f"by training step {model.train_step_count}",
             f"{bad} holds NaN or infinite values")
  _write(output, lambda: model.save(output))
  print(f"wrote {output} (training step {model.train_step_count})")
  if watch.signum is not None:
    how = ("run the same command to go on from it" if output == args.bundle else
           f"to go on, train from it: --bundle {output}")  # the same command restarts
    print(f"stopped by {interrupt.name(watch.signum)}; {how}", file=sys.stderr)
    return 128 + watch.signum
  return 0


def _bench(args) -> None:
  if any(os.environ.get(v) != "1" for v in _THREAD_VARS):  # one thread, set before NumPy
    env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
    os.execve(sys.executable, [sys.executable, "-m", "pi_backend", *sys.argv[1:]], env)
  if args.bundle is None:
    from pi_backend import bench  # pylint: disable=import-outside-toplevel
    bench.main(["--repeat", str(args.repeat)])
    return
  if args.data is None:
    raise ValueError("bench --bundle needs --data too (a batch to train on)")
  import statistics  # pylint: disable=import-outside-toplevel
  from pi_backend import memory  # pylint: disable=import-outside-toplevel
  args.seed = 0
  rss_before = memory.peak_rss_bytes()
  model, images, labels = _load(args)
  x, y = images[:args.batch_size], labels[:args.batch_size]

  def median(fn):
    fn()
    times = []
    for _ in range(args.repeat):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    return statistics.median(times)

  print(f"one thread; batch {len(x)}; median of {args.repeat}")
  print(f"inference: {median(lambda: model.logits(x, len(x))) * 1e3:.2f} ms per batch")
  if model.graph.trainable:
    print(f"training:  {median(lambda: model.train_step(x, y)) * 1e3:.2f} ms per batch "
          f"(the bundle file is not changed)")
    print(memory.measure(model, x, y, rss_before=rss_before).table())


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from pi_backend.data import DataError  # pylint: disable=import-outside-toplevel
  from pi_backend.errors import BundleError  # pylint: disable=import-outside-toplevel
  try:
    code = {"infer": _infer, "eval": _eval, "train": _train, "bench": _bench}[args.command](args)
  except (BundleError, DataError, FileNotFoundError, ValueError, TypeError, OSError) as e:
    print(f"python -m pi_backend {args.command}: error: {e}", file=sys.stderr)
    return 1
  return code or 0


if __name__ == "__main__":
  sys.exit(main())
