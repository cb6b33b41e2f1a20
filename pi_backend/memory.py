"""Training memory of one step of a pi_backend Model.

What is counted (``measure``):
  state      every array the model holds across steps: float16 latent weights, betas
             and Adam moments, float32 running statistics, packed weight signs
  batch      the batch as given (uint8 pixels and labels)
  kept       what the forward leaves for the backward (packed bits, per-channel
             float16 statistics, and the first layer's input: the batch in float32)
  transient  the peak of NumPy allocations during the step (tracemalloc, which NumPy
             reports its buffers to), above what existed before the step: activations,
             gradients, the kept bits, the new packed signs
  peak       state + batch + transient: the training buffers, the figure to set beside
             the paper's 5.00 MiB for the MLP at batch 200 (valgrind massif: heap and
             stack of the C++ prototype)
Not counted there: the C kernels' own scratch (malloc'ed panels of at most a few
hundred KiB, freed before each kernel returns) and the interpreter. The process's peak
resident set size (getrusage ru_maxrss, which includes the Python interpreter and NumPy)
is reported beside it, with its value before the model was loaded.
"""
from __future__ import annotations

import dataclasses
import resource
import sys
import tracemalloc

import numpy as np

MIB = 1 << 20


def peak_rss_bytes() -> int:
  """The peak resident set size of this process so far (ru_maxrss)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclasses.dataclass
class MemoryReport:
  batch_size: int
  state_bytes: int
  batch_bytes: int
  kept_bytes: int
  transient_peak_bytes: int
  peak_rss_bytes: int
  peak_rss_before_bytes: int | None = None

  @property
  def peak_bytes(self) -> int:
    return self.state_bytes + self.batch_bytes + self.transient_peak_bytes

  def rows(self) -> list[tuple[str, int]]:
    rows = [("state (weights, Adam moments, statistics, signs)", self.state_bytes),
            ("batch (as given)", self.batch_bytes),
            ("kept between forward and backward", self.kept_bytes),
            ("transient peak during the step (NumPy, tracemalloc)", self.transient_peak_bytes),
            ("peak training buffers (state + batch + transient)", self.peak_bytes),
            ("peak RSS of the process", self.peak_rss_bytes)]
    if self.peak_rss_before_bytes is not None:
      rows.append(("peak RSS before loading the model", self.peak_rss_before_bytes))
    return rows

  def table(self) -> str:
    width = max(len(name) for name, _ in self.rows())
    lines = [f"training memory, batch {self.batch_size}"]
    lines += [f"  {name.ljust(width)}  {v / MIB:9.3f} MiB" for name, v in self.rows()]
    return "\n".join(lines)


def _nbytes(arrays) -> int:
  seen, total = set(), 0
  for a in arrays:
    if id(a) not in seen:
      seen.add(id(a))
      total += a.nbytes
  return total


def measure(model, images: np.ndarray, labels: np.ndarray,
            rss_before: int | None = None) -> MemoryReport:
  """Runs one training step of ``model`` on the batch (it trains!) and measures it."""
  state = _nbytes(model.state_arrays())
  batch = np.asarray(images).nbytes + np.asarray(labels).nbytes
  kept = {}

  def probe(m):
    kept["bytes"] = _nbytes(m.kept_arrays())

  was_tracing = tracemalloc.is_tracing()
  if not was_tracing:
    tracemalloc.start()
  tracemalloc.reset_peak()
  before, _ = tracemalloc.get_traced_memory()
  try:
    model.train_step(images, labels, probe=probe)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    if not was_tracing:
      tracemalloc.stop()
  return MemoryReport(batch_size=len(images), state_bytes=state, batch_bytes=batch,
                      kept_bytes=kept.get("bytes", 0),
                      transient_peak_bytes=max(peak - before, 0),
                      peak_rss_bytes=peak_rss_bytes(), peak_rss_before_bytes=rss_before)
