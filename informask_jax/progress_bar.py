"""Progress bars on a terminal only (the training bar, with log lines that print clear of it;
`datasets`' and the statistics' bars), never in a log file."""

import contextlib
import logging
import sys


def on_terminal() -> bool:
  """Whether bars are wanted: stderr is a terminal. In a log file, a pipe or a Slurm output,
  tqdm's redraws would leave a line (joined by carriage returns) per update."""
  return sys.stderr.isatty()


def transformers_bars(show: bool) -> None:
  """Turns transformers' bars (loading weights, writing a model) off for this process unless
  `show`; for a command's entry point, which owns the process."""
  if not show:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def datasets_bars(show: bool):
  """`datasets`' progress bars while inside, only when `show` (work long enough to watch) and on
  a terminal; bars a user turned off stay off, and are restored as they were."""
  import datasets

  was = datasets.is_progress_bar_enabled()
  if not (show and on_terminal()):
    datasets.disable_progress_bars()
  try:
    yield
  finally:
    if was:
      datasets.enable_progress_bars()


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
