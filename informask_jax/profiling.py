"""The profiler window: a jax.profiler trace of config.train.profile_steps steps from
config.train.profile_start_step."""

import logging
import pathlib

import jax

from informask_jax import paths


class Profiler:
  """A jax.profiler trace of the steps after `start` (config.train.profile_*) into `directory`,
  ended at the run's last step `num_steps` if the window reaches past it (the cleanup's stop
  traced the final evaluation and checkpoint too)."""

  def __init__(self, directory: pathlib.Path, start: int, count: int,
               num_steps: int | None = None):
    self.directory, self.start, self.count, self.active = directory, start, count, False
    self.end = start + count if num_steps is None else min(start + count, num_steps)
    self.done = start  # The last step traced.

  def before_step(self, step: int) -> None:
    if step == self.start and not self.active:
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after_step(self, step: int, state) -> None:
    if self.active:
      self.done = step
      if step >= self.end:
        jax.block_until_ready(state)  # Dispatch is asynchronous: the traced steps must finish.
        self.stop()

  def stop(self) -> None:
    """Ends the trace (the window's end, or the loop's cleanup: a run stopped mid-window)."""
    if not self.active:
      return
    self.active = False
    try:
      jax.profiler.stop_trace()  # Writes the trace's files.
    except jax.errors.JaxRuntimeError as e:
      # A full disk reads as RESOURCE_EXHAUSTED, which the run took for device memory and
      # answered with advice to lower the batch size: named as the write that failed instead.
      line = (str(e).strip().splitlines() or [""])[0][:300]
      raise paths.WriteError(
          f"Writing the profile trace to {self.directory} failed ({type(e).__name__}: {line}). "
          "Free disk space (or make the folder writable) and run the same command to resume "
          "from the latest checkpoint; leave out config.train.profile_start_step to train "
          "without a trace.") from e
    traced = self.done - self.start
    short = (f" ({traced} of the {self.count} steps of config.train.profile_steps: the run "
             "ended or stopped first)" if traced < self.count else "")
    logging.info("Profiled steps %d-%d into %s (TensorBoard's profile plugin or "
                 "ui.perfetto.dev)%s.", self.start + 1, self.done, self.directory, short)
