"""Command-line plumbing shared by train.py and the `python -m informask_jax.*` tools.

`parse_flags` turns ml_collections' override errors (an unknown key, a wrong type) into one line
naming the key, with its nearest valid name, instead of a traceback.
"""

import contextlib
import difflib
import errno
import logging
import os
import re
import signal
import sys
import threading
import traceback

from absl import flags
from absl import logging as absl_logging  # noqa: F401 (imported first: see quiet_library_logs)

from informask_jax import paths


class _LibraryInfoFilter(logging.Filter):
  """Drops INFO records from orbax, which logs every step of every save and restore at that
  level, and its warnings for what we do by design: a save without metrics (steps saved between
  evaluations have none), a manager opened read-only (to export or evaluate a run). Drops JAX's
  INFO line for each platform it probes and does not find ('Unable to initialize backend').
  From Apache Beam: its INFO lines for each string type hint it reads as Any and its batch-size
  tuning statistics; not its other INFO lines (a Dataflow job's id and progress)."""

  _BY_DESIGN = ("did not provide metrics", "read only", "read_only=True")

  def filter(self, record):
    if "/jax/_src/xla_bridge" in record.pathname or "/datasets/config.py" in record.pathname:
      return record.levelno > logging.INFO  # And datasets' "JAX version ... available".
    if "/apache_beam/" in record.pathname:
      message = record.getMessage()
      return record.levelno > logging.INFO or not (
          "/typehints/" in record.pathname or message.startswith("BatchElements statistics"))
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno >= logging.ERROR and _is_io_failure(record.exc_info):
      # A save that failed on a full disk or a permission: orbax logs it from three threads,
      # each with a hundred-line traceback; the run's own error names the step and the cause.
      record.exc_info, record.exc_text = None, None
    return record.levelno > logging.INFO and not any(
        text in record.getMessage() for text in self._BY_DESIGN)


def _is_io_failure(exc_info) -> bool:
  if not exc_info or exc_info[1] is None:
    return False
  error = exc_info[1]
  # Tensorstore's status codes for a disk's refusals, besides the disk errors themselves.
  return (isinstance(error, OSError) or disk_failure(error) is not None
          or any(code in str(error) for code in ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED")))


def quiet_library_logs() -> None:
  # absl.logging (imported above) has made "absl" its ABSLLogger, which records the real caller's
  # file; a plain Logger got here first would record absl's own file and the filter would miss.
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_LibraryInfoFilter())
  logging.getLogger("absl").addFilter(_LibraryInfoFilter())
  sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)


def _without_closed_loop_callbacks(hook):
  """An unraisable-exception hook that drops RuntimeError('Event loop is closed'): tensorstore's
  threads still completing a failed checkpoint read schedule into orbax's closed event loop, and
  printed dozens of partial tracebacks around the one-line error (about half the runs)."""
  def drop_or_pass(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and \
        str(unraisable.exc_value) == "Event loop is closed":
      return
    hook(unraisable)
  return drop_or_pass


# What our code raises on purpose for bad input, a refused action or a stopped run, always with a
# message that names the file, key or step: the message is the whole story, the stack is noise.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               paths.WriteError)

# A full disk, a quota, a read-only file system: the machine's state, not a bug, wherever it
# surfaces (a cache, the workdir's lock, a library's writer).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def disk_failure(error) -> str | None:
  """'<type>: <the line that says so>' when `error` or an error in its chain is a full disk, a
  quota or a read-only file system; else None."""
  seen, e = [], error
  while e is not None and not any(e is s for s in seen):
    seen.append(e)
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      return f"{type(e).__name__}: {one_line(e)}"
    e = e.__cause__ or e.__context__
  for line in str(error).splitlines():
    if any(text in line for text in paths.DISK_ERROR_TEXTS):
      return f"{type(error).__name__}: {line.strip()[:500]}"
  return None


def _leave_jax_distributed() -> None:
  """With several processes, leaves the coordination service cleanly (process 0 hosts it)."""
  jax = sys.modules.get("jax")
  if jax is None:
    return
  try:
    if _distributed_after_failure():  # exit_now_with leaves as it says; the shutdown's
      return  # barrier would wait for the peers the error stopped.
    # Not jax.process_count(): that starts the backends (CUDA's memory, the TPU) of a process
    # leaving on an error in its flags or config.
    started = getattr(jax.distributed, "is_initialized", None)  # Public since JAX 0.4.3x.
    if started() if started else jax.process_count() > 1:
      jax.distributed.shutdown()
  except Exception:  # Exiting on an error already; the other processes see a lost peer.
    pass


def _distributed_after_failure():
  """informask_jax.distributed once this process's error (or a peer's) has stopped the other
  processes; else None."""
  distributed = sys.modules.get("informask_jax.distributed")
  return distributed if distributed is not None and distributed.failure_posted() else None


def _unlink_semaphores() -> None:
  """os._exit skips multiprocessing's exit hook, so the named semaphores made since a spawn start
  method was set (worker_processes; tqdm's lock) stay registered, and the resource tracker
  reports them as leaked after the error line. Runs their own cleanup only (unlink, unregister):
  the hook's other finalizers join worker pools, which an immediate exit must not wait for."""
  for name in ("multiprocessing", "multiprocess"):
    util, synchronize = (sys.modules.get(f"{name}.util"), sys.modules.get(f"{name}.synchronize"))
    if util is None or synchronize is None:
      continue
    for finalizer in list(getattr(util, "_finalizer_registry", {}).values()):
      if getattr(finalizer, "_callback", None) is synchronize.SemLock._cleanup:
        try:
          finalizer()
        except Exception:  # Exiting anyway; at worst the tracker's warning.
          pass


def one_line(error) -> str:
  """An error's text on one line: lines of a list joined with "; " (after a line ending in ":"
  with a space, after "(" directly), so that a wrapped library message (the hub client's,
  several lines) does not break the promise of one line per error."""
  out = ""
  for line in (part.strip() for part in str(error).splitlines()):
    if line:
      sep = "" if out.endswith("(") else " " if out.endswith(":") else "; "
      out += line if not out else sep + line
  return out


@contextlib.contextmanager
def user_errors(program: str, extra: tuple = (), *, exit_now: bool = False):
  """Turns USER_ERRORS (and `extra`), and any error that is a full disk, a quota or a read-only
  file system (see disk_failure), into one line on stderr and exit status 1.

  `exit_now` (for a script's top level, never a function tests call): leave with os._exit, so
  that threads a failed checkpoint read leaves behind (tensorstore's, scheduling into orbax's
  closed event loop) cannot print tracebacks after the line during interpreter shutdown.
  INFORMASK_TRACEBACK=1 lets the errors through with their traceback, for debugging.
  """
  try:
    yield
  except Exception as e:
    disk = None if isinstance(e, (*USER_ERRORS, *extra)) else disk_failure(e)
    if os.environ.get("INFORMASK_TRACEBACK") or not (
        disk or isinstance(e, (*USER_ERRORS, *extra))):
      raise
    logging.shutdown()  # Flush what was logged before the error, then the error last.
    line = (f"{disk}. Free disk space (or choose another folder) and run the same command again."
            if disk else f"{type(e).__name__}: {one_line(e)}")
    print(f"{program}: error: {line}", file=sys.stderr)
    if exit_now:
      _leave_jax_distributed()  # os._exit skips the atexit hook that would do it.
      exit_now_with(1)
    sys.exit(1)


def exit_now_with(code: int) -> None:
  """Leaves the process with `code` at once: threads of a step or a save in flight, a worker
  pool, are not waited for, and no exit hook runs (jax.distributed.shutdown's among them). After
  an error that stopped the processes, leaves as informask_jax.distributed says."""
  distributed = _distributed_after_failure()
  if distributed is not None:
    distributed.leave_after_failure()
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  _unlink_semaphores()
  os._exit(code)


_sigterm_received = False


def exit_on_sigterm() -> None:
  """Makes SIGTERM (a scheduler's time limit, `kill`) raise SystemExit(143) in the main thread,
  for the tools without train.py's step-aware stop: their `finally` blocks then remove what they
  staged (a model export, a full copy of the weights) that the default action left behind.

  Python runs a handler between any two bytecodes, also inside code whose exceptions it prints
  and drops ("Exception ignored in"): a garbage-collector callback (JAX registers one), a weakref
  callback, a __del__. The SystemExit was lost there and the tool ran to the end with status 0
  (one in three kills of eval_lama.py during its export). So such a dropped SystemExit posts the
  signal again (sys.unraisablehook), 10 ms later, from a thread; so does a dropped
  KeyboardInterrupt, Ctrl-C's, for SIGINT. The signal is also recorded (sigterm_received), for code
  that swallows it with an `except BaseException`."""
  def stop(signum, frame):
    global _sigterm_received
    _sigterm_received = True
    raise SystemExit(128 + signum)

  report_unraisable = sys.unraisablehook

  def post_again_if_dropped(unraisable):
    if _sigterm_received and unraisable.exc_type is SystemExit:
      signum = signal.SIGTERM
    elif unraisable.exc_type is KeyboardInterrupt:
      signum = signal.SIGINT
    else:
      report_unraisable(unraisable)
      return
    threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()

  signal.signal(signal.SIGTERM, stop)
  sys.unraisablehook = post_again_if_dropped


def sigterm_received() -> bool:
  """Whether exit_on_sigterm's handler ran: a SIGTERM whose SystemExit may have been lost."""
  return _sigterm_received


def exit_interrupted(program: str, what_remains: str) -> None:
  """Leaves a script interrupted by Ctrl-C with one line and status 130 (128 + SIGINT, as a
  shell reports it), at once: threads of a step or a save in flight are not waited for."""
  logging.shutdown()
  print(f"\n{program}: interrupted (Ctrl-C): {what_remains}.", file=sys.stderr)
  exit_now_with(130)  # Not jax.distributed.shutdown: a peer in a collective would hang it.


def _config_values(argv: list[str]) -> list[str]:
  """The values of argv's --config flags (`--config F` or `--config=F`, or with one dash), in
  order."""
  values = []
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):  # absl takes one dash as well as two.
      values.append(arg.split("=", 1)[1])
    elif arg in ("--config", "-config") and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def _config_file(argv: list[str]) -> str | None:
  """The file of argv's last --config value (`configs/x.py` of `configs/x.py:tiny`), or None."""
  value = (_config_values(argv) or [None])[-1]
  return value.split(":", 1)[0] if value is not None else None


def config_package_on_path(argv: list[str]) -> None:
  """Puts the directory holding a --config file's `configs/` package on sys.path.

  Config files import their siblings (`from configs import base`), which resolves from the
  repository root only; `python -m informask_jax.stats ... --config /abs/configs/x.py` run from
  elsewhere would fail with ModuleNotFoundError.
  """
  for value in _config_values(argv):
    package = os.path.dirname(os.path.abspath(value.split(":", 1)[0]))
    root = os.path.dirname(package)
    if os.path.isfile(os.path.join(package, "base.py")) and root not in sys.path:
      sys.path.insert(0, root)


def _config_of(argv: list[str]):
  """The config that argv's --config names (overrides left out), or None."""
  value = (_config_values(argv) or [None])[-1]
  if value is None or "config" not in flags.FLAGS:
    return None
  try:  # The failed parse kept no config: load the file again (it is cheap and already imported).
    return flags.FLAGS["config"].parser.parse(value)
  except Exception:
    return None


def _config_keys(node, prefix="config") -> list[str]:
  """Every leaf of a config as its dotted flag name, e.g. "config.train.num_steps"."""
  if not hasattr(node, "keys"):
    return [prefix]
  return [key for k in node.keys() for key in _config_keys(node[k], f"{prefix}.{k}")]


def _keys_named(config, name: str) -> list[str]:
  """The config's leaves whose dotted name ends with `name` ("warmup_steps", "train.num_steps")."""
  return [k for k in _config_keys(config) if k == f"config.{name}" or k.endswith(f".{name}")]


def override_hint(name: str, argv: list[str]) -> str:
  """For `name` given as a flag of its own (--num_steps, or `train.num_steps=5` as MaxText takes
  it): the --config.* override(s) it may have meant, as a sentence; "" when no config key ends
  with it."""
  config = _config_of(argv)
  name = name.split("=", 1)[0].lstrip("-")
  if config is None or not name:
    return ""
  keys = _keys_named(config, name.removeprefix("config."))
  if not keys:
    return ""
  return f" Config overrides are --config.KEY=VALUE flags: did you mean --{' or --'.join(keys)}?"


def _unknown_key(argv: list[str]) -> str | None:
  """For an override of a key the config lacks, e.g. --config.train.steps=4: the flag, the valid
  keys of its parent and the nearest one; None when no override names a missing key.

  ml_collections' own error names the last key alone ("steps"), and suggests a key only when one
  is very close.
  """
  config = _config_of(argv)
  if config is None:
    return None
  for arg in argv:
    match = re.match(r"--?config\.([^=]+)", arg)
    if not match:
      continue
    node, parent = config, "config"
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", match.group(1)):
      if part.startswith("["):
        try:
          node, parent = node[int(part[1:-1])], parent + part
        except (IndexError, KeyError, TypeError):
          break  # Reported by the caller's own message.
        continue
      if not hasattr(node, "keys"):
        break
      keys = sorted(str(k) for k in node.keys())
      if part not in keys:
        # A key of that name in another section first (--config.train.warmup_steps is
        # config.optim.warmup_steps, not the nearest spelling in train, num_steps).
        elsewhere = _keys_named(config, part)
        nearest = elsewhere or [f"{parent}.{k}" for k in difflib.get_close_matches(part, keys, 1)]
        hint = f' Did you mean "{nearest[0]}"?' if len(nearest) == 1 else (
            f" Did you mean {' or '.join(nearest)}?" if nearest else "")
        return (f"--config.{match.group(1)}: `{parent}` has no key {part!r}.{hint} "
                f"`{parent}` has: {', '.join(keys)}.")
      node, parent = node[part], f"{parent}.{part}"
  return None


_HELP_FLAG = re.compile(r"--?(help|helpfull|helpshort|helpxml|\?)(=\S*)?")


def parse_flags(argv: list[str], *, known_only: bool = False) -> list[str]:
  """absl's flag parsing, with a one-line message (status 2) for every kind of bad flag.

  `known_only`: flags this program does not define are returned with the arguments (the Beam
  pipeline hands them to Beam as its options) instead of being refused.
  """
  config_package_on_path(argv)
  try:
    variant = [a.split("=", 1)[0] for a in argv if re.fullmatch(r"--?config\.variant(=.*)?", a)]
    given = _config_values(argv)
    if len(given) > 1:  # absl's own error blamed the first override, "defined twice".
      raise ValueError(f"--config is given {len(given)} times ({', '.join(given)}); give one "
                       "config file, and change it with --config.KEY=VALUE overrides")
    if variant:  # Recorded by the config file; set, it would change nothing.
      raise ValueError(f"{variant[0]}: the variant is chosen with the config file's argument, "
                       "e.g. --config configs/informask.py:tiny; config.variant only records it")
    try:
      rest = flags.FLAGS(argv, known_only=known_only)
    except SystemExit as e:
      # absl's --help (--helpfull, --helpshort, --helpxml) prints and exits with status 1; asked
      # for, the help is a success, as argparse's and other tools' (`train.py --help && ...`).
      if e.code == 1 and any(_HELP_FLAG.fullmatch(arg) for arg in argv[1:]):
        sys.exit(0)
      raise
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      # A config file that failed to load stands in as an object raising on any attribute.
      getattr(flags.FLAGS.config, "get", None)
      problem = config_structure_problem(flags.FLAGS.config)
      if problem:
        print(f"{argv[0]}: error: --config {_config_file(argv)}: {problem}", file=sys.stderr)
        sys.exit(1)
    return rest
  except (flags.Error, AttributeError, KeyError, IndexError, TypeError, ValueError,
          OSError, ImportError) as e:
    # The config file's own code raised ({}["b"] in it, which ml_collections lets through, or
    # int("x"), which it quotes as text): its file and line, not a flag.
    from_file = isinstance(e, ImportError) or _raised_in_config_file(e, argv)
    where = _config_file_line(e, argv) if from_file else None
    message = str(e).strip()
    quoted = None if where else _quoted_config_file_error(message, argv)
    if where or quoted:
      if os.environ.get("INFORMASK_TRACEBACK"):
        raise  # For a quoted error too: ml_collections' text holds the file's traceback.
      if where:
        _exit_config_file_error(argv, e, where)
      print(f"{argv[0]}: error: {quoted}", file=sys.stderr)
      sys.exit(1)
    if isinstance(e, KeyError | AttributeError):  # Their str() is the quoted repr of a message.
      message = message.strip("'\"").replace("\\n", " ").replace("\\'", "'")
      message = _unknown_key(argv) or message
    if isinstance(e, IndexError):  # A list index past the end: --config.data.sources[3].kind=x
      indexed = [a.split("=", 1)[0] for a in argv if re.match(r"--?config\.[^=]*\[-?\d+\]", a)]
      message = (f"{' or '.join(indexed) or 'a --config.x[i] flag'}: an index past the end of "
                 f"that list ({message})")
    unsupported = re.search(r"Type <class '(\w+)'> of field (\S+) is not supported", message)
    if unsupported:  # ml_collections lists its supported types; say what to do instead.
      kind, field = unsupported.groups()
      message = (f"--{field}: a {kind} field cannot be set from the command line; write a small "
                 "config file that imports one of configs/ and sets it.")
    if re.search(r"get_config\(\) takes 0 positional arguments", message):
      message = (f"--config {(_config_values(argv) or [''])[-1]}: its get_config() takes no "
                 "argument; it is called with the text after ':' (None without one), so define "
                 "get_config(arg=None)")
    if re.search(r"has no attribute 'get_config", message):  # e.g. --config configs/base.py
      path = (_config_values(argv) or [""])[-1]
      message = (f"--config {path}: the file defines no get_config(arg) function, so it is not "
                 "an experiment config; pass one such as configs/informask.py:tiny (configs/"
                 "base.py is the base they share).")
    unknown_flag = re.fullmatch(r"Unknown command line flag '([^']+)'", message)
    hint = override_hint(unknown_flag.group(1), argv) if unknown_flag else ""
    if hint:
      message += "." + hint
    if "--config=None: Flag --config must have a value" in message:
      message = ("--config is required: e.g. --config configs/informask.py:tiny (then overrides "
                 "such as --config.train.batch_size=64)")
    elif "before a value for --config" in message:
      message += " (put --config FILE first, then the --config.x=... overrides)"
    boolean = re.search(r"flag (--config\.\S+?)=(\S*): \('Non-boolean argument to boolean flag'",
                        message)
    if boolean:  # absl quotes a tuple here.
      message = f"{boolean.group(1)}={boolean.group(2)}: expected True or False"
    # ml_collections quotes a config file's failure with its traceback: keep the last line.
    message = message.splitlines()[-1].strip() if message else type(e).__name__
    print(f"{argv[0]}: bad command-line flag: {message}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:
    # Not a flag's fault: the config file does not compile, or its own code raised (absl and
    # ml_collections let these through untouched, as a 36-line traceback). Bad input: one line
    # naming the file and line, status 1, as cli.user_errors reports it once the run starts.
    where = _config_file_line(e, argv)
    if where is None or os.environ.get("INFORMASK_TRACEBACK"):
      raise  # Not from the config file (a bug of ours or a library's): the traceback is wanted.
    _exit_config_file_error(argv, e, where)


def _raised_in_config_file(error: Exception, argv: list[str]) -> bool:
  """Whether the innermost Python frame of `error`'s traceback is the --config file's."""
  path = _config_file(argv)
  frames = list(traceback.walk_tb(error.__traceback__))
  return bool(path and frames) and os.path.realpath(frames[-1][0].f_code.co_filename) == \
      os.path.realpath(path)


def _quoted_config_file_error(message: str, argv: list[str]) -> str | None:
  """`ValueError: FILE, line N: text` when ml_collections quotes (as text) a traceback whose
  innermost frame, ml_collections' own aside, is the --config file's code; None otherwise (e.g.
  a refused :variant, raised in configs/base.py, which is a flag's fault)."""
  import ml_collections

  path = _config_file(argv)
  # ml_collections' own frames (a ConfigDict refusing a value the file's line assigns) belong to
  # the line that called it.
  library = os.path.dirname(os.path.realpath(ml_collections.__file__)) + os.sep
  frames = [(file, line) for file, line in re.findall(r'File "([^"]+)", line (\d+)', message)
            if not os.path.realpath(file).startswith(library)]
  if not path or not frames or "Error whilst parsing config file" not in message:
    return None
  if os.path.realpath(frames[-1][0]) != os.path.realpath(path):
    return None
  error = message.splitlines()[-1].strip()
  kind, _, text = error.partition(": ")
  changed = _TYPE_CHANGE.fullmatch(text)
  if changed:  # ml_collections' wording names neither the key's section nor what to write.
    key, value, given, held = changed.groups()
    a = lambda name: f"{'an' if name[0] in 'aeiou' else 'a'} {name}"  # noqa: E731
    text = (f"{key} = {value} is {a(given)}, and the config's {key} takes {a(held)} (a "
            f"value of another type is refused): write the value as {a(held)}")
  return f"{kind}: {path}, line {frames[-1][1]}: {text}" if text else f"{path}: {error}"


# A type-safe ConfigDict's refusal of an assignment of another type (`c.train.num_steps = 1e4`).
_TYPE_CHANGE = re.compile(r"Could not override field '([^']+)' \(reference\)\. (.*) is of "
                          r"original type <class '(\w+)'> and cannot be casted to type "
                          r"<class '(\w+)'>")


def config_structure_problem(config) -> str | None:
  """What a config file's config adds to or lacks from configs/base.py's, as a sentence; None
  when the keys agree (or configs.base cannot be imported, as for a config package of one's own).

  Overrides are checked by the locked config itself, but a key set inside a config file is not:
  `c.train.batch_sise = 16` trained at the default batch size without a word, and a file built
  without base.get_base_config failed deep in the run on the first key it lacks.
  """
  import ml_collections
  try:
    from configs import base
  except ImportError:
    return None
  if not isinstance(config, ml_collections.ConfigDict):
    return (f"get_config returned a {type(config).__name__}, not an ml_collections.ConfigDict; "
            "build it on configs.base.get_base_config(arg).")
  try:
    reference = base.get_base_config(config.get("variant") or "paper")
  except ValueError:  # A variant a file names for itself (c.variant = "mine"): the keys are
    reference = base.get_base_config("paper")  # every variant's alike, so still checked.
  return _structure_difference(config, reference, "config")


def _structure_difference(config, reference, parent: str) -> str | None:
  import ml_collections
  for key in sorted(set(config.keys()) | set(reference.keys())):
    name = f"{parent}.{key}"
    if key not in reference:
      nearest = difflib.get_close_matches(key, list(reference.keys()), 1)
      hint = f"did you mean {parent}.{nearest[0]}? " if nearest else ""
      return (f"it sets {name}, which is not a setting ({hint}`{parent}` has: "
              f"{', '.join(sorted(reference.keys()))}); the run would ignore it.")
    if key not in config:
      return (f"it lacks {name}; configs.base.get_base_config(arg) sets every key, so build the "
              "config on it and change what differs.")
    mine, theirs = config[key], reference[key]
    if all(isinstance(node, ml_collections.ConfigDict) for node in (mine, theirs)):
      problem = _structure_difference(mine, theirs, name)
      if problem:
        return problem
  return None


def _exit_config_file_error(argv: list[str], error: Exception, where: str) -> None:
  text = error.msg if isinstance(error, SyntaxError) else one_line(error)
  print(f"{argv[0]}: error: {type(error).__name__}: {where}: {text}", file=sys.stderr)
  sys.exit(1)


def _config_file_line(error: Exception, argv: list[str]) -> str | None:
  """`FILE, line N` for an error of the --config file: where a SyntaxError is (that file or one
  it imports), else the config file's last line in the traceback; None when it is not there."""
  if isinstance(error, SyntaxError) and error.filename:
    return f"{error.filename}, line {error.lineno}"
  path = _config_file(argv)
  if path is None:
    return None
  lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
           if os.path.realpath(frame.f_code.co_filename) == os.path.realpath(path)]
  return f"{path}, line {lines[-1]}" if lines else None


def reject_arguments(program: str, argv: list[str]) -> None:
  """Exits (status 2, as a bad flag) on arguments after the flags, which absl hands to main and
  train.py would ignore: `train.num_steps=5` (MaxText's override syntax) ran the full schedule."""
  if len(argv) <= 1:
    return
  hint = (override_hint(argv[1], sys.argv) if "=" in argv[1] else "") or (
      " Config overrides are --config.KEY=VALUE flags.")
  print(f"{program}: bad command-line flag: unexpected argument(s) {argv[1:]}.{hint}",
        file=sys.stderr)
  sys.exit(2)
