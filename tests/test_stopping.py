"""stopping.StopSignal: a signal stops after the step on every process; a second Ctrl-C does not
wait, a repeated SIGTERM does."""

import logging
import os
import signal
import time

import numpy as np
import pytest

from informask_jax import stopping


def test_a_stop_signal_is_acted_on_at_once_alone_and_at_a_sync_step_with_others(monkeypatch):
  stop = stopping.StopSignal()
  try:
    stop.received = "SIGTERM"  # One process: no one to agree with, stop after this step.
    assert stop.stop_now(3, 10) == "SIGTERM"
    stop.received = None
    assert stop.stop_now(10, 10) is None
    monkeypatch.setattr(stopping.jax, "process_count", lambda: 2)
    flags = [np.array([0, 1], np.int32)]  # Process 1 got the signal, this process did not.
    monkeypatch.setattr(stopping.multihost_utils, "process_allgather", lambda x: flags[0])
    assert stop.stop_now(3, 10) is None  # Not a sync step: no collective, no stop.
    assert stop.stop_now(20, 10) == "a signal to another process"
    stop.received, flags[0] = None, np.array([0, 0], np.int32)
    assert stop.stop_now(30, 10) is None
  finally:
    stop.restore()


def test_a_second_ctrl_c_stops_at_once_and_sigterm_never_does(caplog):
  """The first SIGINT asks for a saved stop after the step (and says Ctrl-C again skips it); a
  second one raises KeyboardInterrupt at once, for a step or evaluation the user will not wait
  for. A scheduler repeating SIGTERM must not abort the save it asked for."""
  before = signal.getsignal(signal.SIGINT)
  stop = stopping.StopSignal()
  try:
    with caplog.at_level(logging.WARNING):
      os.kill(os.getpid(), signal.SIGTERM)
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.received == "SIGTERM"
      stop.received = None
      os.kill(os.getpid(), signal.SIGINT)
      assert stop.received == "SIGINT"
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # The handler runs between bytecodes; never reached.
    assert signal.getsignal(signal.SIGINT) is before  # A third Ctrl-C is Python's own.
    hints = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Received")]
    assert hints == ["Received SIGTERM: stopping after this step, which is saved.",
                     "Received SIGINT: stopping after this step, which is saved. Ctrl-C again "
                     "stops at once, without saving it (nor finishing a save in progress)."]
  finally:
    stop.restore()


def test_with_several_processes_the_message_names_the_step_they_stop_at(caplog, monkeypatch):
  monkeypatch.setattr(stopping.jax, "process_count", lambda: 2)
  stop = stopping.StopSignal(sync_every=10)
  try:
    with caplog.at_level(logging.WARNING):
      os.kill(os.getpid(), signal.SIGTERM)
  finally:
    stop.restore()
  assert "Received SIGTERM: stopping after the next step that is a multiple of 10 (config.train." \
         "stop_sync_every, where all processes agree), which is saved." in caplog.text


@pytest.mark.parametrize("where", ["gc callback", "weakref callback"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_handled_where_exceptions_are_dropped_stops_once_out_of_there(monkeypatch, where,
                                                                               signame):
  """The SystemExit of a SIGTERM handled inside a garbage-collector callback (JAX registers one)
  or a weakref callback was printed and dropped ("Exception ignored in"), and eval_lama.py,
  killed during its export, finished with status 0; a Ctrl-C there was lost too. Each is raised
  once out of there now."""
  import gc
  import sys
  import weakref

  from informask_jax import cli

  monkeypatch.setattr(cli, "_sigterm_received", False)
  calls, outlived = [], []

  def callback(*args):
    if calls or where == "gc callback" and args[0] != "start":
      return
    calls.append(where)
    os.kill(os.getpid(), getattr(signal, signame))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
      pass  # The handler runs between these bytecodes: its SystemExit ends the callback here.
    outlived.append(where)

  class Referent:
    pass

  previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
              sys.unraisablehook)
  signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: KeyboardInterrupt.
  cli.exit_on_sigterm()
  gc.callbacks.append(callback)
  referent = Referent()
  ref = weakref.ref(referent, callback)  # noqa: F841 (kept alive: its callback runs at the del)
  try:
    with pytest.raises(SystemExit if signame == "SIGTERM" else KeyboardInterrupt) as exit_info:
      if where == "gc callback":
        gc.collect()
      else:
        del referent
      time.sleep(5)  # Interrupted by the posted signal's handler.
  finally:
    gc.callbacks.remove(callback)
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])
    sys.unraisablehook = previous[2]
  assert calls == [where] and not outlived  # Handled inside the callback, and dropped there.
  if signame == "SIGTERM":
    assert exit_info.value.code == 128 + signal.SIGTERM


def test_each_process_reports_its_own_flag_and_keeps_its_own_signals_name(monkeypatch):
  """The all-gather is what the processes agree on: each must put in 1 when it received a
  signal and 0 when not (inverted, an idle process would stop every run at the first sync step
  and a signalled one would never stop). A process that got the signal itself names it."""
  monkeypatch.setattr(stopping.jax, "process_count", lambda: 2)
  sent = []

  def allgather(flag):  # The peer got nothing; this process's flag decides.
    sent.append(int(flag))
    return np.array([int(flag), 0], np.int32)
  monkeypatch.setattr(stopping.multihost_utils, "process_allgather", allgather)
  stop = stopping.StopSignal()
  try:
    assert stop.stop_now(10, 10) is None
    stop.received = "SIGTERM"
    assert stop.stop_now(20, 10) == "SIGTERM"
  finally:
    stop.restore()
  assert sent == [0, 1]


def test_a_signal_taken_before_the_loop_stops_after_the_first_step():
  """A SIGTERM taken before the loop set up its handlers (cli.sigterm_received, during the
  corpus build) is passed on as `received`: the run must still stop and save."""
  stop = stopping.StopSignal(received="SIGTERM")
  try:
    assert stop.stop_now(1, 1) == "SIGTERM"
  finally:
    stop.restore()


def test_sigterm_after_a_ctrl_c_never_aborts_and_ctrl_c_after_sigterm_counts_as_the_first():
  """A scheduler's SIGTERM after a Ctrl-C still lets the step be saved (no KeyboardInterrupt);
  after a SIGTERM, a Ctrl-C is the user's first (the save goes on), and only a second one stops
  at once."""
  stop = stopping.StopSignal()
  try:
    try:  # A KeyboardInterrupt escaping here would end the whole pytest session, not fail.
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.stop_now(1, 1) == "SIGTERM"
      os.kill(os.getpid(), signal.SIGINT)
      assert stop.stop_now(1, 1) == "SIGINT"
    except KeyboardInterrupt:
      pytest.fail("stopped at once without saving the step")
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # The handler runs between bytecodes; never reached.
  finally:
    stop.restore()
