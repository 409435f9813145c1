"""Stopping a run on SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C): after the step, which
is saved, and at the same step on every process."""

import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopSignal:
  """SIGTERM / SIGINT set a flag; the loop finishes its step, saves and exits cleanly."""

  def __init__(self, sync_every: int = 1, received: str | None = None):
    """`sync_every`: config.train.stop_sync_every, for the message (see stop_now). `received`: a
    signal taken before (whose exit was lost), which stops the run after its first step."""
    self.received = received
    self._sync_every = sync_every
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if name == "SIGINT" and self.received == "SIGINT":
      # A second Ctrl-C: the user will not wait for the step (a hung one, a long evaluation).
      # The checkpoints already written are complete; only this step's is given up.
      self.restore()  # A third one is Python's own KeyboardInterrupt, wherever it lands.
      raise KeyboardInterrupt
    if self.received is None:
      when = ("this step" if jax.process_count() == 1 or self._sync_every == 1 else
              f"the next step that is a multiple of {self._sync_every} (config.train."
              "stop_sync_every, where all processes agree)")
      logging.warning("Received %s: stopping after %s, which is saved.%s", name, when,
                      " Ctrl-C again stops at once, without saving it (nor finishing a save "
                      "in progress)." if name == "SIGINT"
                      else "")
    self.received = name

  def stop_now(self, step: int, sync_every: int) -> str | None:
    """Why to stop after `step`, or None; with several processes, the same answer on each.

    A signal may reach one process only, or the processes at different steps; saving is a
    collective, so they agree (an all-gather of the flags) every `sync_every` steps.
    """
    if jax.process_count() == 1:
      return self.received
    if step % sync_every:
      return None
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if not np.any(flags):
      return None
    if self.received is None:
      self.received = "a signal to another process"
    return self.received

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
