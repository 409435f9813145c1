"""train.py's plumbing around the loop, with the loop and jax.distributed stood in for: the exit
status of a stopped run, what the other processes are told when this one ends, and how it leaves
once a failure was posted. In a child process: importing train.py defines its absl flags, which
must not meet another module's in this one."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, logging, signal, sys, types
sys.argv = ["train.py"]
import train
from informask_jax import cli, distributed, loop

_train = train._train
results = {}
told = []
distributed.tell_peers_of_failure = lambda what, code=1: told.append([what, code])


class Exited(BaseException):
  pass


def exit_now_with(code):
  raise Exited(code)
cli.exit_now_with = exit_now_with


def outcome(fn, *args):
  try:
    fn(*args)
    return "returned"
  except Exited as e:
    return ["exit_now_with", e.args[0]]
  except SystemExit as e:
    return ["SystemExit", e.code]
  except BaseException as e:
    return [type(e).__name__, str(e)]


def raising(error):
  def fn():
    with train._peers_told_of_errors():
      raise error
  return fn

for name, error in [("error", ValueError("bad\nthing")), ("ctrl_c", KeyboardInterrupt()),
                    ("sigterm", SystemExit(143)), ("exit_2", SystemExit(2)),
                    ("exit_0", SystemExit(0)), ("exit_none", SystemExit(None)),
                    ("exit_text", SystemExit("stopped"))]:
  told.clear()
  results["told_" + name] = [outcome(raising(error)), list(told)]

# main() once a failure was posted (this process's or a peer's), and before.
for posted in (False, True):
  distributed.failure_posted = lambda posted=posted: posted
  for name, error in [("error", RuntimeError("boom")), ("exit_143", SystemExit(143)),
                      ("exit_0", SystemExit(0)), ("exit_text", SystemExit("stopped"))]:
    def failing(argv, error=error):
      raise error
    train._train = failing
    results[f"main_{name}_{posted}"] = outcome(train.main, ["train.py"])

# The thread's stop for a failed peer: the error named, the peer's exit status taken.
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger().addHandler(handler)
for code in (1, 143):
  records.clear()
  results[f"peer_{code}"] = [outcome(train._stop_for_failed_peer, "process 0 of 2 failed: X",
                                     code), list(records)]
"""

_TRAIN = r"""
train._train = _train
setup = []
distributed.initialize = lambda: setup.append("initialize")
distributed.stop_with_failed_peers = lambda stop: setup.append(
    "watch peers" if stop is train._stop_for_failed_peer else "?")
cli.exit_on_sigterm = lambda: setup.append("sigterm")
cli.quiet_library_logs = lambda: setup.append("quiet")
train._CONFIG = types.SimpleNamespace(value="the config")
train._WORKDIR = types.SimpleNamespace(value="the workdir")
advice = loop.resume_advice
loop.resume_advice = lambda config: f"how to resume {config}"
for name, result in [("sigint", dict(preempted=True, stopped_by="SIGINT", step=3)),
                     ("sigterm", dict(preempted=True, stopped_by="SIGTERM", step=3)),
                     ("peer", dict(preempted=True, stopped_by="a signal to another process",
                                   step=3)),
                     ("done", dict(preempted=False, stopped_by=None, step=9))]:
  seen, setup[:] = [], []
  def trained(config, workdir, name=name, result=result):
    seen.append([config, workdir])
    results["setup_" + name] = list(setup)  # What was done before the loop.
    return result
  loop.train_and_evaluate = trained
  results["train_" + name] = [outcome(train._train, ["train.py"]), seen]
loop.resume_advice = advice

# The loop's refusals end in one line (status 1), a bug with its traceback; the others are told.
from informask_jax import checkpointing
for name, error in [("stopped", loop.TrainingStopped("too many non-finite steps")),
                    ("unsaved", checkpointing.CheckpointWriteError("step 4 was not saved")),
                    ("bug", RuntimeError("a bug"))]:
  def failing(config, workdir, error=error):
    raise error
  loop.train_and_evaluate = failing
  told.clear()
  print(f"<{name}>", file=sys.stderr, flush=True)
  results["loop_" + name] = [outcome(train._train, ["train.py"]), list(told)]
  print(f"</{name}>", file=sys.stderr, flush=True)

# A Ctrl-C outside the loop's handler: one line saying what remains, after an overwrite too.
interrupts = []
loop.after_interrupt = lambda workdir, config: interrupts.append([workdir, advice(config)]) or "?"
cli.exit_interrupted = lambda program, remains: interrupts.append([program, remains])
def interrupted(argv):
  raise KeyboardInterrupt
train._train = interrupted
for settings in ((False, False), (True, True), (True, False), None):
  train._CONFIG = types.SimpleNamespace(value=None if settings is None else types.SimpleNamespace(
      train=types.SimpleNamespace(overwrite=settings[0], resume=settings[1])))
  results.setdefault("interrupted", []).append(outcome(train.main, ["train.py"]))
results["interrupts"] = interrupts
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results():
  out = subprocess.run([sys.executable, "-c", _SCRIPT + _TRAIN], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  return dict(json.loads(out.stdout.strip().splitlines()[-1]), stderr=out.stderr)


def test_the_other_processes_are_told_why_this_one_ends(results):
  assert results["told_error"] == [["ValueError", "bad\nthing"],
                                   [["failed: ValueError: bad; thing", 1]]]
  assert results["told_ctrl_c"] == [["KeyboardInterrupt", ""],
                                    [["was interrupted (Ctrl-C)", 130]]]
  assert results["told_sigterm"] == [["SystemExit", 143], [["received SIGTERM", 143]]]
  assert results["told_exit_2"] == [["SystemExit", 2], [["exited (2)", 2]]]
  assert results["told_exit_text"] == [["SystemExit", "stopped"], [["exited (stopped)", 1]]]
  # A successful exit is no failure.
  assert results["told_exit_0"] == [["SystemExit", 0], []]
  assert results["told_exit_none"] == [["SystemExit", None], []]


def test_after_a_posted_failure_main_leaves_at_once_with_the_errors_status(results):
  for name in ("error", "exit_143", "exit_0", "exit_text"):  # Before: as Python would.
    assert results[f"main_{name}_False"] == {
        "error": ["RuntimeError", "boom"], "exit_143": ["SystemExit", 143],
        "exit_0": ["SystemExit", 0], "exit_text": ["SystemExit", "stopped"]}[name]
  assert results["main_error_True"] == ["exit_now_with", 1]
  assert results["main_exit_143_True"] == ["exit_now_with", 143]
  assert results["main_exit_text_True"] == ["exit_now_with", 1]
  assert results["main_exit_0_True"] == ["SystemExit", 0]  # A success stays one.
  # An error (not an exit) keeps its traceback, printed before leaving.
  assert results["stderr"].count("Traceback (most recent call last)") == 1
  assert "RuntimeError: boom" in results["stderr"]


def test_a_failed_peer_stops_this_process_with_its_status_and_says_why(results):
  (outcome, (line,)) = results["peer_1"]
  assert outcome == ["exit_now_with", 1]
  assert line.startswith("Stopping: process 0 of 2 failed: X. Every step, evaluation and save "
                         "waits for all processes")
  assert line.endswith("intact: once the cause is fixed, run the same command on every process "
                       "to resume.")
  (outcome, (line,)) = results["peer_143"]
  assert outcome == ["exit_now_with", 143]
  assert line.endswith("intact: run the same command on every process to resume.")


def test_a_stopped_run_exits_with_its_signals_status_and_a_finished_one_with_0(results):
  assert results["train_sigint"] == [["SystemExit", 130], [["the config", "the workdir"]]]
  assert results["train_sigterm"] == [["SystemExit", 143], [["the config", "the workdir"]]]
  # Stopped because another process got a SIGTERM: unfinished too.
  assert results["train_peer"] == [["SystemExit", 143], [["the config", "the workdir"]]]
  assert results["train_done"] == ["returned", [["the config", "the workdir"]]]
  # How to resume, as the run's config says (a run that started over would do so again).
  assert "Stopped at step 3 by SIGTERM: exit status 143; how to resume the config." in \
      results["stderr"]


def test_before_the_loop_the_processes_start_watch_each_other_and_take_sigterm(results):
  """jax.distributed first; then the peers' watcher; SIGTERM is taken again after it (JAX's
  preemption service took it over); the libraries' logs quieted, all before the loop."""
  assert results["setup_done"] == ["initialize", "watch peers", "sigterm", "quiet"]


def test_a_ctrl_c_outside_the_loop_says_what_remains_of_an_overwrite_too(results):
  """An overwrite (with resume off) started over: the same command would overwrite again."""
  assert results["interrupted"] == ["returned"] * 4
  said, same = ["train.py", "?"], "run the same command to resume"
  assert results["interrupts"] == [
      ["the workdir", "run the same command without --config.train.resume=False to resume (as "
       "it is, it would be refused)"], said,
      ["the workdir", same], said,
      ["the workdir", "run the same command without --config.train.overwrite=True and "
       "--config.train.resume=False to resume (as it is, it would start over)"], said,
      ["the workdir", same], said]


def test_the_loops_refusals_end_in_one_line_and_a_bug_keeps_its_traceback(results):
  def printed(name):
    return results["stderr"].split(f"<{name}>\n")[1].split(f"</{name}>")[0]

  assert results["loop_stopped"] == [["exit_now_with", 1], [
      ["failed: TrainingStopped: too many non-finite steps", 1]]]
  assert printed("stopped") == "train.py: error: TrainingStopped: too many non-finite steps\n"
  assert results["loop_unsaved"][0] == ["exit_now_with", 1]
  assert printed("unsaved") == "train.py: error: CheckpointWriteError: step 4 was not saved\n"
  assert results["loop_bug"] == [["RuntimeError", "a bug"], [["failed: RuntimeError: a bug", 1]]]
  assert printed("bug") == ""
