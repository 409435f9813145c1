"""The training progress bar on a terminal, and log lines that print clear of it."""

import contextlib
import logging


class _ClearBar(logging.Filter):
  """Clears the progress bar before a log record prints: the line then starts at column 0
  instead of after the bar, and the bar redraws itself below it at the next step."""

  def __init__(self, bar):
    super().__init__()
    self.bar = bar

  def filter(self, record):
    self.bar.clear()
    return True


@contextlib.contextmanager
def log_lines_clear(bar):
  """While the bar shows: every handler of the root logger (absl's, under train.py) clears it
  first. Not tqdm's logging_redirect_tqdm, which adds its own handler beside absl's, which is no
  StreamHandler itself: each line would print twice."""
  handlers, clear = list(logging.getLogger().handlers), _ClearBar(bar)
  for handler in handlers:
    handler.addFilter(clear)
  try:
    yield
  finally:
    for handler in handlers:
      handler.removeFilter(clear)
