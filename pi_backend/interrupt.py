"""Stopping training at a step boundary on SIGINT (Ctrl-C) or SIGTERM (what Slurm,
Kubernetes and cloud preemption send), so that the steps since the last save are kept
instead of lost. Standard library only: the JAX training loop (bnn/experiment.py, the
sweeps) and ``python -m pi_backend train`` share it.

    with interrupt.on_signal("after this step, with a checkpoint") as watch:
      for step ...:
        ...
        if watch.signum is not None:  # save, then
          raise interrupt.Interrupted(watch.signum, "...")

The first signal only sets ``watch.signum``; the loop finishes its step, saves and
raises ``Interrupted``. A second Ctrl-C raises KeyboardInterrupt at once, for a user
who will not wait for the save.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """A run stopped on a signal after saving its state. A KeyboardInterrupt, so that
  code which records other exceptions as failures (a sweep point) lets it through.
  ``exit_code`` is the shell's convention for death by that signal (130, 143)."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum


class Watch:
  """``signum``: the first signal received inside ``on_signal``, else None."""

  def __init__(self):
    self.signum: int | None = None


def name(signum: int) -> str:
  return signal.Signals(signum).name


@contextlib.contextmanager
def on_signal(then: str, enabled: bool = True,
              forward: Callable[[int], None] | None = None) -> Iterator[Watch]:
  """Within: SIGINT and SIGTERM set ``watch.signum`` (the first one) instead of ending
  the process, and say that the run is stopping ``then`` (when, and what it saves);
  ``forward(signum)`` is called then too (a sweep passes it on to its workers). A
  second SIGINT raises KeyboardInterrupt. The previous handlers come back on exit.
  Does nothing when not enabled (a multi-process run, whose processes would have to
  agree on the step to stop at) or outside the main thread, where Python cannot
  install handlers."""
  watch = Watch()
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield watch
    return

  def handler(signum, frame):  # pylint: disable=unused-argument
    if watch.signum is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      return
    watch.signum = signum
    print(f"\n{name(signum)} received: stopping {then} (Ctrl-C again to quit at once, "
          f"without saving)", file=sys.stderr, flush=True)
    if forward is not None:
      forward(signum)

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield watch
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
