"""progress_bar: log lines printed while the training bar is drawn start on their own line;
`datasets`' bars show only on a terminal, for long work, and are restored as they were."""

import logging
import sys

import datasets
import pytest

from informask_jax import progress_bar


def test_log_lines_start_on_their_own_line_under_the_progress_bar():
  """On a terminal a log line printed after the bar's text, mid-line; cleared first, it starts
  its own line (the bar, text then carriage returns, is redrawn below it at the next step)."""
  import io

  import tqdm
  screen = io.StringIO()
  handler = logging.StreamHandler(screen)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    with tqdm.tqdm(total=10, file=screen, desc="train") as bar:
      bar.update(3)
      bar.refresh()  # As a step's update draws it (after tqdm's minimum interval).
      logging.getLogger("informask_jax.loop").warning("Step 3: eval loss 7.1")
      bar.update(1)
      bar.refresh()
      with progress_bar.log_lines_clear(bar):
        logging.getLogger("informask_jax.loop").warning("Step 4: eval loss 7.0")
      bar.update(1)
      bar.refresh()  # Drawn again below the line.
  finally:
    root.removeHandler(handler)
  text = screen.getvalue()
  lines = [part for row in text.split("\n") for part in row.split("\r")]
  assert not any(part.startswith("Step 3") for part in lines), text  # Glued to the bar.
  # The cleared bar leaves spaces before a carriage return; the line itself starts clean.
  assert "Step 4: eval loss 7.0" in lines, text
  assert "5/10" in text.split("Step 4: eval loss 7.0")[1]
  assert not handler.filters  # The filter leaves with the bar.


@pytest.mark.parametrize("terminal", [False, True])
def test_datasets_bars_show_only_on_a_terminal_and_are_restored(terminal, monkeypatch):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
  was = datasets.is_progress_bar_enabled()
  try:
    for before in (False, True):
      (datasets.enable_progress_bars if before else datasets.disable_progress_bars)()
      with progress_bar.datasets_bars(False):  # Short work: never a bar.
        assert not datasets.is_progress_bar_enabled()
      # Bars a user turned off stay off after a short tokenization.
      assert datasets.is_progress_bar_enabled() == before
      with progress_bar.datasets_bars(True):  # Long work: a bar on a terminal, not in a file.
        assert datasets.is_progress_bar_enabled() == (before and terminal)
      assert datasets.is_progress_bar_enabled() == before
  finally:
    (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


@pytest.mark.parametrize("show", [False, True])
def test_transformers_bars_are_turned_off_unless_shown(show, monkeypatch):
  from transformers.utils import logging as hf_logging

  calls = []
  monkeypatch.setattr(hf_logging, "disable_progress_bar", lambda: calls.append("off"))
  progress_bar.transformers_bars(show)
  assert calls == ([] if show else ["off"])


@pytest.mark.parametrize("terminal", [False, True])
def test_bars_are_wanted_when_stderr_is_a_terminal(terminal, monkeypatch):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
  monkeypatch.setattr(sys.stdout, "isatty", lambda: not terminal)
  assert progress_bar.on_terminal() is terminal
