"""The profiler window: a jax.profiler trace of config.train.profile_steps steps from
config.train.profile_start_step."""

import logging
import pathlib

import jax


class Profiler:
  """A jax.profiler trace of the steps after `start` (config.train.profile_*) into `directory`."""

  def __init__(self, directory: pathlib.Path, start: int, count: int):
    self.directory, self.start, self.end, self.active = directory, start, start + count, False

  def before_step(self, step: int) -> None:
    if step == self.start and not self.active:
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after_step(self, step: int, state) -> None:
    if self.active and step >= self.end:
      jax.block_until_ready(state)  # Dispatch is asynchronous: the traced steps must finish.
      self.stop()
      logging.info("Profiled steps %d-%d into %s (TensorBoard's profile plugin or "
                   "ui.perfetto.dev).", self.start + 1, step, self.directory)

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
