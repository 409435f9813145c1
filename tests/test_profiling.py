"""profiling.Profiler: the trace starts before the window's first step, ends (after the traced
steps have finished) at its last, once, and a run stopped mid-window still ends it."""

import logging
import pathlib

import pytest

from informask_jax import paths, profiling


@pytest.fixture
def events(monkeypatch):
  seen = []
  monkeypatch.setattr(profiling.jax.profiler, "start_trace", lambda d: seen.append(("start", d)))
  monkeypatch.setattr(profiling.jax.profiler, "stop_trace", lambda: seen.append(("stop",)))
  monkeypatch.setattr(profiling.jax, "block_until_ready", lambda s: seen.append(("ready", s)))
  return seen


def _run(profiler, num_steps, seen):
  """The loop's calls: before_step with the steps done, after_step with the step just done."""
  for step in range(num_steps):
    profiler.before_step(step)
    seen.append(("step", step + 1))
    profiler.after_step(step + 1, f"state{step + 1}")


def test_the_window_traces_its_steps_once(events, caplog):
  directory = pathlib.Path("/tmp/profile/process_0")
  profiler = profiling.Profiler(directory, start=2, count=3)
  with caplog.at_level(logging.INFO):
    _run(profiler, 9, events)
  profiler.stop()  # The loop's cleanup: the trace has ended already.
  assert events == [("step", 1), ("step", 2), ("start", str(directory)), ("step", 3),
                    ("step", 4), ("step", 5), ("ready", "state5"), ("stop",), ("step", 6),
                    ("step", 7), ("step", 8), ("step", 9)]
  assert f"Profiled steps 3-5 into {directory}" in caplog.text


def test_a_run_stopped_in_the_window_ends_the_trace_and_one_before_it_has_none(events):
  profiler = profiling.Profiler(pathlib.Path("p"), start=1, count=5)
  _run(profiler, 3, events)
  profiler.stop()
  profiler.stop()
  assert [e for e in events if e[0] != "step"] == [("start", "p"), ("stop",)]
  events.clear()
  profiler = profiling.Profiler(pathlib.Path("p"), start=10, count=2)
  _run(profiler, 5, events)
  profiler.stop()
  assert [e for e in events if e[0] != "step"] == []


def test_a_window_past_the_runs_end_ends_at_its_last_step_and_says_so(events, caplog):
  """profile_start_step=6, profile_steps=5 in an 8-step run: the trace ran on until the loop's
  cleanup, through the final evaluation and checkpoint (5x the size), and said nothing; now it
  ends after step 8, saying 2 of the 5 steps were traced. A run stopped mid-window says so too."""
  profiler = profiling.Profiler(pathlib.Path("p"), start=6, count=5, num_steps=8)
  with caplog.at_level(logging.INFO):
    _run(profiler, 8, events)
  assert events[-3:] == [("step", 8), ("ready", "state8"), ("stop",)]
  assert ("Profiled steps 7-8 into p (TensorBoard's profile plugin or ui.perfetto.dev) (2 of the "
          "5 steps of config.train.profile_steps: the run ended or stopped first).") in caplog.text
  caplog.clear()
  profiler = profiling.Profiler(pathlib.Path("p"), start=1, count=5, num_steps=100)
  with caplog.at_level(logging.INFO):
    _run(profiler, 3, events)  # A signal after step 3.
    profiler.stop()
  assert "Profiled steps 2-3 into p" in caplog.text and "2 of the 5 steps" in caplog.text


def test_a_full_disk_while_the_trace_is_written_is_a_write_error_naming_the_folder(events,
                                                                                  monkeypatch):
  """jax.profiler's write on a full disk fails as RESOURCE_EXHAUSTED, which train_and_evaluate
  took for device memory (OutOfDeviceMemory: "lower config.train.batch_size")."""
  def disk_full():
    raise profiling.jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: /w/profile/process_0/plugins/profile/x/vm.xplane.pb; No space left "
        "on device")

  monkeypatch.setattr(profiling.jax.profiler, "stop_trace", disk_full)
  profiler = profiling.Profiler(pathlib.Path("/w/profile/process_0"), start=0, count=1)
  with pytest.raises(paths.WriteError, match=r"Writing the profile trace to /w/profile/process_0 "
                     r"failed \(JaxRuntimeError: RESOURCE_EXHAUSTED: .*No space left on device\)"
                     r"\. Free disk space"):
    _run(profiler, 2, events)
  assert not profiler.active
  profiler.stop()  # The loop's cleanup after the error: nothing raised a second time.
