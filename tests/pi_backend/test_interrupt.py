"""pi_backend.interrupt: the first SIGINT / SIGTERM is recorded, not fatal; a second Ctrl-C is;
the previous handlers come back. (End to end with real training processes:
tests/bnn/test_experiment.py, tests/bnn/test_sweep.py, tests/pi_backend/test_cli.py.)"""
import os
import signal
import threading

import pytest

from pi_backend import interrupt


def _handlers():
  return {s: signal.getsignal(s) for s in interrupt.SIGNALS}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_recorded_and_forwarded_once(signum):
  before, forwarded = _handlers(), []
  with interrupt.on_signal("then", forward=forwarded.append) as watch:
    assert watch.signum is None
    os.kill(os.getpid(), signum)
    os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM changes nothing
    assert watch.signum == signum
  assert forwarded == [signum]
  assert _handlers() == before


def test_second_ctrl_c_raises_at_once_and_handlers_come_back():
  before = _handlers()
  with pytest.raises(KeyboardInterrupt):
    with interrupt.on_signal("then") as watch:
      os.kill(os.getpid(), signal.SIGINT)
      assert watch.signum == signal.SIGINT
      os.kill(os.getpid(), signal.SIGINT)
      pytest.fail("the second SIGINT did not interrupt")
  assert _handlers() == before


def test_disabled_or_off_the_main_thread_installs_nothing():
  before = _handlers()
  with interrupt.on_signal("then", enabled=False) as watch:
    assert _handlers() == before and watch.signum is None
  seen = []

  def body():
    with interrupt.on_signal("then") as w:
      seen.append((_handlers() == before, w.signum))
  thread = threading.Thread(target=body)
  thread.start()
  thread.join()
  assert seen == [(True, None)]


def test_interrupted_is_a_keyboard_interrupt_with_the_shell_exit_code():
  e = interrupt.Interrupted(signal.SIGTERM, "stopped at step 3")
  assert isinstance(e, KeyboardInterrupt) and not isinstance(e, Exception)
  assert e.exit_code == 143 and str(e) == "stopped at step 3"
  assert interrupt.name(signal.SIGINT) == "SIGINT"
