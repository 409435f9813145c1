"""informask_jax/cli.py in-process: reading --config from argv, one-line errors (user errors, full
disks, config files), and leaving the process after an error with several processes."""

import errno
import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import pytest

from configs import base
from informask_jax import cli


@pytest.fixture
def quiet_exit(monkeypatch):
  """user_errors' logging.shutdown() would close handlers pytest still needs."""
  monkeypatch.setattr(cli.logging, "shutdown", lambda: None)


def test_config_values_are_read_in_order_and_a_trailing_config_flag_has_none():
  argv = ["prog", "--config", "a.py:tiny", "--config.train.seed=3", "--config=b.py"]
  assert cli._config_values(argv) == ["a.py:tiny", "b.py"]
  assert cli._config_file(argv) == "b.py"
  # `--config` last, its value forgotten: absl names the missing value, not an IndexError here.
  assert cli._config_values(["prog", "--config"]) == []
  assert cli._config_file(["prog", "--config"]) is None
  cli.config_package_on_path(["prog", "--config"])


def test_a_configs_package_is_put_on_the_path_once(tmp_path, monkeypatch):
  (tmp_path / "proj" / "configs").mkdir(parents=True)
  (tmp_path / "proj" / "configs" / "base.py").write_text("")
  monkeypatch.setattr(sys, "path", list(sys.path))
  argv = ["prog", f"--config={tmp_path / 'proj' / 'configs' / 'x.py'}:tiny"]
  cli.config_package_on_path(argv)
  cli.config_package_on_path(argv)
  assert sys.path.count(str(tmp_path / "proj")) == 1


def test_a_disk_error_is_found_in_the_context_of_an_error_raised_while_handling_it():
  """An error raised in an `except OSError` block without `from` (as libraries wrap them)."""
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/cache/x.arrow")
    except OSError:
      raise RuntimeError("An error occurred while generating the dataset")  # noqa: B904
  except RuntimeError as e:
    error = e
  assert cli.disk_failure(error) == (
      "OSError: [Errno 28] No space left on device: '/cache/x.arrow'")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_a_quota_and_a_read_only_file_system_are_disk_failures(code):
  assert cli.disk_failure(OSError(code, "refused")) == f"OSError: [Errno {code}] refused"
  assert cli.disk_failure(OSError(errno.EIO, "Input/output error")) is None


def test_a_disk_failure_found_in_a_long_message_is_cut_to_500_characters():
  line = "No space left on device " + "x" * 2000
  assert cli.disk_failure(RuntimeError(line)) == f"RuntimeError: {line[:500]}"


def test_informask_traceback_lets_user_errors_through(monkeypatch, quiet_exit):
  monkeypatch.setenv("INFORMASK_TRACEBACK", "1")
  with pytest.raises(ValueError, match="bad value"), cli.user_errors("prog"):
    raise ValueError("bad value")
  with pytest.raises(OSError), cli.user_errors("prog"):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_user_error_about_a_full_disk_keeps_its_own_line(capsys, quiet_exit):
  """Our own errors already say what failed and why; the disk advice is for errors that do not."""
  with pytest.raises(SystemExit) as exited, cli.user_errors("prog"):
    raise ValueError("Writing x failed (OSError: [Errno 28] No space left on device)")
  assert exited.value.code == 1
  assert capsys.readouterr().err == (
      "prog: error: ValueError: Writing x failed (OSError: [Errno 28] No space left on device)\n")


def test_user_errors_with_extra_types(capsys, quiet_exit):
  class Refused(Exception):
    pass

  with pytest.raises(SystemExit) as exited, cli.user_errors("prog", (Refused,)):
    raise Refused("no")
  assert exited.value.code == 1 and capsys.readouterr().err == "prog: error: Refused: no\n"
  with pytest.raises(Refused), cli.user_errors("prog"):
    raise Refused("no")


@pytest.fixture
def processes(monkeypatch):
  """A stand-in jax (two processes) and informask_jax.distributed; returns what they were asked."""
  calls = []
  state = types.SimpleNamespace(posted=False)
  jax = types.SimpleNamespace(
      process_count=lambda: pytest.fail("process_count() starts the backends"),
      distributed=types.SimpleNamespace(shutdown=lambda: calls.append("shutdown"),
                                        is_initialized=lambda: True))
  distributed = types.SimpleNamespace(failure_posted=lambda: state.posted,
                                      leave_after_failure=lambda: calls.append("leave"))
  monkeypatch.setitem(sys.modules, "jax", jax)
  monkeypatch.setitem(sys.modules, "informask_jax.distributed", distributed)
  return calls, state


def test_an_error_exit_shuts_jax_distributed_down_unless_a_failure_was_posted(processes):
  calls, state = processes
  cli._leave_jax_distributed()
  assert calls == ["shutdown"]
  calls.clear()
  state.posted = True  # The peers have stopped: the shutdown's barrier would wait for them.
  cli._leave_jax_distributed()
  assert calls == []


def test_an_error_exit_of_one_process_starts_no_backend():
  """A flag or config error exits without starting CUDA or opening a TPU only to leave
  (jax.process_count() starts the backends)."""
  code = ("import jax; from jax._src import xla_bridge; from informask_jax import cli; "
          "cli._leave_jax_distributed(); print(xla_bridge.backends_are_initialized())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=pathlib.Path(__file__).parent.parent)
  assert out.stdout == "False\n", out.stderr


def test_an_immediate_exit_after_a_posted_failure_leaves_as_distributed_says(processes,
                                                                              monkeypatch):
  calls, state = processes
  monkeypatch.setattr(cli.logging, "shutdown", lambda: None)
  monkeypatch.setattr(cli, "_unlink_semaphores", lambda: None)
  monkeypatch.setattr(cli.os, "_exit", lambda code: calls.append(("exit", code)))
  cli.exit_now_with(3)
  assert calls == [("exit", 3)]
  calls.clear()
  state.posted = True
  cli.exit_now_with(143)
  assert calls == ["leave", ("exit", 143)]


def test_an_override_given_without_its_dashes_is_named(monkeypatch):
  monkeypatch.setattr(cli, "_config_of", lambda argv: base.get_base_config("tiny"))
  hint = " Config overrides are --config.KEY=VALUE flags: did you mean --config.train.num_steps?"
  assert cli.override_hint("config.train.num_steps=5", []) == hint
  assert cli.override_hint("train.num_steps=5", []) == hint
  assert cli.override_hint("--num_steps", []) == hint
  assert cli.override_hint("no_such_key=1", []) == ""


def test_a_config_files_error_is_placed_at_its_innermost_line_in_that_file(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("def _sizes(arg):\n  return {'tiny': 1}[arg]\n\n\n"
                  "def get_config(arg=None):\n  return _sizes(arg)\n")
  spec = importlib.util.spec_from_file_location("mine_config_for_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with pytest.raises(KeyError) as raised:
    module.get_config("huge")
  argv = ["prog", f"--config={path}:huge"]
  assert cli._raised_in_config_file(raised.value, argv)
  assert cli._config_file_line(raised.value, argv) == f"{path}, line 2"
  assert cli._config_file_line(raised.value, ["prog", "--config=other.py"]) is None


@pytest.fixture
def sigterm_exits(monkeypatch):
  """cli.exit_on_sigterm() installed, with the handlers it replaces restored after; returns the
  signals it would post again (threading.Timer recorded, not run) and the unraisable exceptions
  passed on to the previous hook."""
  import signal

  posted, reported = [], []
  previous = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  monkeypatch.setattr(cli, "_sigterm_received", False)
  monkeypatch.setattr(cli.threading, "Timer",
                      lambda delay, fn, args: types.SimpleNamespace(
                          start=lambda: posted.append((fn, args))))
  cli.exit_on_sigterm()
  yield posted, reported
  signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_system_exit_143_and_is_recorded(sigterm_exits):
  import os
  import signal

  assert not cli.sigterm_received()
  with pytest.raises(SystemExit) as exited:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10**8):  # The handler runs between bytecodes; never finishes.
      pass
  assert exited.value.code == 143 and cli.sigterm_received()


def test_only_a_dropped_exit_of_a_received_sigterm_or_a_ctrl_c_is_posted_again(sigterm_exits):
  import os
  import signal

  posted, reported = sigterm_exits
  dropped = lambda kind: types.SimpleNamespace(exc_type=kind, exc_value=kind())  # noqa: E731
  # A SystemExit dropped in a __del__ without a SIGTERM (sys.exit in a callback) is reported as
  # before, not turned into a signal.
  sys.unraisablehook(dropped(SystemExit))
  sys.unraisablehook(dropped(ValueError))
  assert posted == [] and [u.exc_type for u in reported] == [SystemExit, ValueError]
  sys.unraisablehook(dropped(KeyboardInterrupt))
  assert posted == [(os.kill, (os.getpid(), signal.SIGINT))]
  cli._sigterm_received = True
  sys.unraisablehook(dropped(SystemExit))
  assert posted[1:] == [(os.kill, (os.getpid(), signal.SIGTERM))] and len(reported) == 2


def test_a_variant_of_a_files_own_naming_is_still_checked_for_keys():
  """c.variant = "mine" (a record only) skipped the key check: a misspelt key set beside it was
  ignored, the run trained on the default. Every variant has the same keys."""
  config = base.get_base_config("tiny")
  config.variant = "mine"
  assert cli.config_structure_problem(config) is None
  config.train.batch_sise = 16
  assert cli.config_structure_problem(config).startswith(
      "it sets config.train.batch_sise, which is not a setting (did you mean "
      "config.train.batch_size?")
  config = base.get_base_config("tiny")
  config.train.batch_sise = 16
  assert cli.config_structure_problem(config).startswith(
      "it sets config.train.batch_sise, which is not a setting (did you mean "
      "config.train.batch_size?")
  assert cli.config_structure_problem({"train": {}}).startswith("get_config returned a dict")


def test_an_unknown_key_is_named_after_an_override_with_a_bad_index(monkeypatch):
  monkeypatch.setattr(cli, "_config_of", lambda argv: base.get_base_config("tiny"))
  argv = ["prog", "--config.data.sources[7].kind=files", "--config.train.bach_size=3"]
  assert cli._unknown_key(argv).startswith(
      "--config.train.bach_size: `config.train` has no key 'bach_size'. Did you mean "
      "\"config.train.batch_size\"? `config.train` has: batch_size, ")
  assert cli._unknown_key(["prog", "--config.data.sources[0].kindd=x"]).startswith(
      "--config.data.sources[0].kindd: `config.data.sources[0]` has no key 'kindd'. Did you "
      "mean \"config.data.sources[0].kind\"?")
  assert cli._unknown_key(["prog", "--config.train.batch_size=3", "--workdir=w"]) is None
  # absl takes a flag with one dash too.
  assert cli._unknown_key(["prog", "-config.train.bach_size=3"]).startswith(
      "--config.train.bach_size: `config.train` has no key 'bach_size'.")
  # A key of that name in another section is named, not the nearest spelling in this one
  # (train.warmup_steps suggested config.train.num_steps; train.learning_rate nothing).
  assert cli._unknown_key(["prog", "--config.train.warmup_steps=5"]).startswith(
      "--config.train.warmup_steps: `config.train` has no key 'warmup_steps'. Did you mean "
      "\"config.optim.warmup_steps\"?")
  assert cli._unknown_key(["prog", "--config.train.learning_rate=3e-4"]).startswith(
      "--config.train.learning_rate: `config.train` has no key 'learning_rate'. Did you mean "
      "\"config.optim.learning_rate\"?")


def test_a_config_flag_with_one_dash_is_the_config_flag():
  """absl takes -config as --config: the CLI's own checks (two config files, the file named in
  an error) missed it ("--config None: it sets ...")."""
  assert cli._config_values(["prog", "-config", "a.py:tiny", "-config=b.py"]) == ["a.py:tiny",
                                                                                 "b.py"]
  assert cli._config_file(["prog", "-config", "configs/x.py:tiny"]) == "configs/x.py"


def test_a_config_files_error_quoted_by_ml_collections_names_its_line(tmp_path):
  """ml_collections quotes the config file's traceback as text: the innermost frame is the
  file's own code (its error, on one line) or another file's (a flag's fault: not rewritten)."""
  path = str(tmp_path / "mine.py")
  argv = ["prog", f"--config={path}:tiny"]
  quoted = ("Error whilst parsing config file:\nTraceback (most recent call last):\n"
            f'  File "/lib/config_flags.py", line 9, in parse\n  File "{path}", line 4, in '
            "get_config\n{}")
  assert cli._quoted_config_file_error(quoted.format("ValueError: bad: value"), argv) == (
      f"ValueError: {path}, line 4: bad: value")
  assert cli._quoted_config_file_error(quoted.format("AssertionError"), argv) == (
      f"{path}: AssertionError")
  elsewhere = quoted + '\n  File "/repo/configs/base.py", line 7, in get_base_config\n{}'
  assert cli._quoted_config_file_error(elsewhere.format("", "ValueError: x"), argv) is None
  # The same lines not quoted as a config file's failure.
  assert cli._quoted_config_file_error(
      quoted.format("ValueError: x").replace("Error whilst parsing config file", "Failed"),
      argv) is None


def test_only_an_asked_for_help_turns_absls_exit_1_into_success(monkeypatch):
  """absl prints --help (--helpfull, --helpshort, --helpxml, -?) and exits with status 1: asked
  for, that is a success; any other exit of the parsing keeps its status."""
  class Flags:  # Stands in for absl's parser, exiting as its help flags do.
    def __contains__(self, name):
      return False

    def __call__(self, argv, known_only=False):
      raise SystemExit(1)
  monkeypatch.setattr(cli.flags, "FLAGS", Flags())
  for argv, code in ((["prog", "--helpfull"], 0), (["prog", "-?"], 0), (["prog", "--help"], 0),
                     (["prog", "--workdir=w"], 1), (["prog", "--helpme"], 1),
                     (["--help"], 1)):  # argv[0] is the program, whatever its name.
    with pytest.raises(SystemExit) as exited:
      cli.parse_flags(argv)
    assert exited.value.code == code, argv


def test_an_immediate_exit_on_a_user_error_leaves_jax_distributed_first(monkeypatch, capsys,
                                                                         quiet_exit):
  calls = []
  monkeypatch.setattr(cli, "_leave_jax_distributed", lambda: calls.append("leave"))
  monkeypatch.setattr(cli, "exit_now_with", lambda code: calls.append(("exit", code)))
  with pytest.raises(SystemExit):  # The stand-in exit_now_with returns: sys.exit(1) follows.
    with cli.user_errors("prog", exit_now=True):
      raise ValueError("bad")
  assert calls == ["leave", ("exit", 1)]
  assert capsys.readouterr().err == "prog: error: ValueError: bad\n"


def test_an_immediate_exit_unlinks_the_named_semaphores_only(monkeypatch):
  """os._exit skips multiprocessing's exit hook: its semaphores' own cleanup is run (else the
  resource tracker reports them leaked after the error line), not its other finalizers (which
  join worker pools)."""
  calls = []

  class SemLock:
    @staticmethod
    def _cleanup(name):
      calls.append(("unlink", name))

  def finalizer(callback, *args):
    def run():
      callback(*args)
    run._callback = callback
    return run

  def failing(name):
    raise FileNotFoundError(name)

  registry = {1: finalizer(SemLock._cleanup, "/mp-1"), 2: finalizer(calls.append, "join pool"),
              3: finalizer(SemLock._cleanup, "/mp-2")}
  monkeypatch.setitem(sys.modules, "multiprocessing.util",
                      types.SimpleNamespace(_finalizer_registry=registry))
  monkeypatch.setitem(sys.modules, "multiprocessing.synchronize",
                      types.SimpleNamespace(SemLock=SemLock))
  monkeypatch.delitem(sys.modules, "multiprocess.util", raising=False)
  cli._unlink_semaphores()
  assert calls == [("unlink", "/mp-1"), ("unlink", "/mp-2")]
  SemLock._cleanup = staticmethod(failing)  # Already gone: the exit goes on.
  registry = {1: finalizer(SemLock._cleanup, "/mp-3"), 2: finalizer(SemLock._cleanup, "/mp-4")}
  sys.modules["multiprocessing.util"]._finalizer_registry = registry
  cli._unlink_semaphores()


def test_flags_this_program_lacks_are_passed_on_when_asked(monkeypatch):
  """The Beam pipeline hands the flags it does not define to Beam."""
  asked = []

  class Flags:
    def __contains__(self, name):
      return False

    def __call__(self, argv, known_only=False):
      asked.append(known_only)
      return argv[:1] + (["--runner=X"] if known_only else [])
  monkeypatch.setattr(cli.flags, "FLAGS", Flags())
  assert cli.parse_flags(["prog", "--runner=X"], known_only=True) == ["prog", "--runner=X"]
  assert cli.parse_flags(["prog"]) == ["prog"]
  assert asked == [True, False]


def test_an_error_chain_that_loops_is_read_once():
  first, second = RuntimeError("a"), RuntimeError("b")
  first.__context__, second.__context__ = second, first
  assert cli.disk_failure(first) is None
  third = OSError(errno.ENOSPC, "No space left on device")
  second.__context__ = third
  third.__context__ = first
  assert cli.disk_failure(first) == "OSError: [Errno 28] No space left on device"


def test_quiet_library_logs_filters_every_handler_and_absls_logger(monkeypatch):
  import logging

  root, absl = logging.getLogger(), logging.getLogger("absl")
  handlers = (logging.NullHandler(), logging.NullHandler())
  root.addHandler(handlers[0])
  absl.addHandler(handlers[1])
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  try:
    cli.quiet_library_logs()
    for filtered in (*handlers, absl):
      assert any(isinstance(f, cli._LibraryInfoFilter) for f in filtered.filters), filtered
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("other"))
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert seen == [other]
  finally:
    root.removeHandler(handlers[0])
    absl.removeHandler(handlers[1])
    for f in [f for f in absl.filters if isinstance(f, cli._LibraryInfoFilter)]:
      absl.removeFilter(f)
    for h in root.handlers + absl.handlers:
      for f in [f for f in h.filters if isinstance(f, cli._LibraryInfoFilter)]:
        h.removeFilter(f)


def test_an_immediate_exit_flushes_what_was_written_before_it_leaves(monkeypatch):
  """os._exit discards Python's buffers: the logs, stdout and stderr are flushed first."""
  calls = []
  monkeypatch.setattr(cli, "_distributed_after_failure", lambda: None)
  monkeypatch.setattr(cli.logging, "shutdown", lambda: calls.append("logging"))
  monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(flush=lambda: calls.append("stdout")))
  monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(flush=lambda: calls.append("stderr")))
  monkeypatch.setattr(cli, "_unlink_semaphores", lambda: calls.append("semaphores"))
  monkeypatch.setattr(cli.os, "_exit", lambda code: calls.append(code))
  cli.exit_now_with(2)
  assert calls == ["logging", "stdout", "stderr", "semaphores", 2]


def test_orbax_warnings_for_a_manager_opened_read_only_are_dropped():
  """A run exported or evaluated opens its checkpoints read-only, by design."""
  import logging

  keep = cli._LibraryInfoFilter().filter
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  for message in ("Checkpoint manager is read only: not deleting steps",
                  "CheckpointManager created with read_only=True"):
    assert not keep(logging.makeLogRecord(dict(pathname=orbax, levelno=logging.WARNING,
                                               msg=message)))
  assert keep(logging.makeLogRecord(dict(pathname=orbax, levelno=logging.WARNING,
                                         msg="Checkpoint is read from step 4")))


def test_a_full_disks_orbax_error_loses_a_traceback_already_formatted_too():
  """Another handler may have formatted the record first (its traceback cached as exc_text)."""
  import logging

  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/futures/future.py"
  try:
    raise OSError(errno.ENOSPC, "No space left on device")
  except OSError:
    record = logging.makeLogRecord(dict(pathname=orbax, levelno=logging.ERROR, msg="failed",
                                        exc_info=sys.exc_info()))
  assert "Traceback" in logging.Formatter().format(record)  # Caches record.exc_text.
  assert cli._LibraryInfoFilter().filter(record)
  assert logging.Formatter().format(record) == "failed"


def test_the_error_line_is_printed_after_the_logs_are_flushed(monkeypatch):
  """What was logged before the error shows before it: the error line is the last one."""
  calls = []
  monkeypatch.setattr(cli.logging, "shutdown", lambda: calls.append("logs flushed"))
  monkeypatch.setattr(sys, "stderr", types.SimpleNamespace(write=calls.append,
                                                           flush=lambda: None))
  with pytest.raises(SystemExit), cli.user_errors("prog"):
    raise ValueError("bad")
  assert "".join(calls) == "logs flushedprog: error: ValueError: bad\n"


def test_an_import_failing_in_a_module_the_config_file_imports_names_the_config_files_line(
    tmp_path, monkeypatch, capsys):
  """The innermost frame is the imported module's, not the config file's: still the config
  file's fault (its import), status 1, not a bad flag."""
  from absl import flags
  from ml_collections import config_flags

  defined = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file.", flag_values=defined,
                                  lock_config=True)
  monkeypatch.setattr(cli.flags, "FLAGS", defined)
  (tmp_path / "helper_for_this_test.py").write_text("import nosuch_module_for_this_test\n")
  config = tmp_path / "mine.py"
  config.write_text("\nimport helper_for_this_test\n\n\ndef get_config(arg=None):\n"
                    "  return None\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delenv("INFORMASK_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as exited:
    cli.parse_flags(["prog", f"--config={config}"])
  assert exited.value.code == 1
  assert capsys.readouterr().err == (
      f"prog: error: ModuleNotFoundError: {config}, line 2: No module named "
      "'nosuch_module_for_this_test'\n")


@pytest.mark.parametrize("script, patched, args, remains", [
    ("convert_checkpoint.py", "informask_jax.export.export_workdir",
     ["--workdir", "run", "--out", "out"],
     "the files in --out are whole, each the earlier version or the new one; the same command "
     "(with --overwrite for an export) writes them all."),
    ("eval_lama.py", "informask_jax.lama.evaluate", ["--model", "m", "--data_dir", "d"],
     "nothing was left half-written (--out's files, where given, are each the earlier version "
     "or the new one); the same command evaluates again."),
])
def test_ctrl_c_in_the_export_and_the_probe_is_one_line_and_status_130(script, patched, args,
                                                                        remains):
  """As train.py and the stats CLI leave: Ctrl-C printed a traceback through torch's forward."""
  root = pathlib.Path(__file__).resolve().parents[1]
  module, name = patched.rsplit(".", 1)
  code = (f"import runpy, sys, {module}\n"
          "def interrupted(*a, **k): raise KeyboardInterrupt\n"
          f"{module}.{name} = interrupted\n"
          f"sys.argv = [{script!r}, *{args!r}]\n"
          f"runpy.run_path({script!r}, run_name='__main__')\n"
          "print('not reached')")
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
  assert out.returncode == 130, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and "not reached" not in out.stdout
  assert out.stderr.strip().splitlines()[-1] == f"{script}: interrupted (Ctrl-C): {remains}"
