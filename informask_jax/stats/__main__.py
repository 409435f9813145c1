"""Corpus statistics from the command line.

  python -m informask_jax.stats build --config configs/informask.py:tiny [--config.stats.window=10]
      Builds every statistic of the config's corpus (or --what=pmi,rates) into its cache
      directory, skipping what is built and intact (--force rebuilds), and prints that
      directory as the last line.
  python -m informask_jax.stats report DIR [--out FILE.png]
      Writes a PNG (masking rate vs frequency rank, highest- and lowest-rate tokens) and a text
      summary (printed, and saved beside the PNG).
"""

import difflib
import sys

from absl import app, flags
from ml_collections import config_flags

from informask_jax import cli, progress_bar
from informask_jax.stats import artifacts, build, chunks, report

if __name__ == "__main__":
  # The name errors and usage start with: the command typed, not this file's path. Set before
  # the flags below are defined: absl files them under the main module's name then, and --help
  # lists the flags filed under that name when it prints.
  sys.argv[0] = "python -m informask_jax.stats"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/informask.py:tiny.", lock_config=True)
_WHAT = flags.DEFINE_list("what", list(artifacts.STAGES),
                          f"build: stages to (re)build, from {list(artifacts.STAGES)}.")
_FORCE = flags.DEFINE_bool("force", False, "build: rebuild the stages even if built and intact.")
_OUT = flags.DEFINE_string("out", "", "report: PNG path, or a directory to write report.png into "
                           "(default DIR/report.png).")

_USAGE = ("usage: python -m informask_jax.stats build --config CONFIG[:VARIANT] [--config.x=y]\n"
          "       python -m informask_jax.stats report DIR [--out FILE.png]")


def _usage_error(message: str):
  """The problem and the two usage lines, status 2 as for a bad flag (absl's UsageError would
  print the whole --help first)."""
  print(f"{sys.argv[0]}: error: {message}\n{_USAGE}\n(--help for the flags)", file=sys.stderr)
  sys.exit(2)


def _refuse_flags_of_the_other_command(command: str):
  """A usage error for a flag typed on the command line that only the other command reads: it
  would be ignored without a word. `present` counts a flag as typed even at its default value
  (--noforce): the value cannot tell typed from not."""
  if command == "build":
    if flags.FLAGS["out"].present:
      _usage_error("--out applies to report only; build writes into the config's statistics "
                   "directory, which it prints.")
    return
  given = [f"--{name}" for name in ("what", "force", "config") if flags.FLAGS[name].present]
  if given:
    _usage_error(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to build "
                 "only; report reads DIR as it was built.")


def _run(command: str, what_remains: str, fn):
  """fn() with its errors as one line; Ctrl-C too, not a traceback through the counters (their
  `finally` blocks have removed the spill folders by then)."""
  program = f"python -m informask_jax.stats {command}"
  try:
    with cli.user_errors(program, (chunks.WorkerDied,)):
      return fn()
  except KeyboardInterrupt:
    cli.exit_interrupted(program, what_remains)


def main(argv):
  cli.quiet_library_logs()  # absl's handler is in place now (JAX's 'Unable to initialize backend').
  if len(argv) < 2:
    _usage_error("no command given; the commands are build and report.")
  if argv[1] not in ("build", "report"):
    nearest = difflib.get_close_matches(argv[1], ("build", "report"), 1)
    _usage_error(f"unknown command {argv[1]!r}" + (
        f"; did you mean {nearest[0]!r}?" if nearest else "; the commands are build and report."))
  _refuse_flags_of_the_other_command(argv[1])
  if argv[1] == "build":
    if len(argv) != 2:
      _usage_error(f"build takes no positional arguments, got {argv[2:]}.")
    if _CONFIG.value is None:
      _usage_error("build needs --config, e.g. --config configs/informask.py:tiny.")
    if not _WHAT.value:  # --what= would build nothing and call the directory intact.
      _usage_error(f"--what is empty; give stages from {', '.join(artifacts.STAGES)} (e.g. "
                   "--what=pmi,rates), or leave --what out to build them all.")
    # --force redoes every stage in --what: rerunning it would redo the finished ones too.
    rest = ("the same command without --force builds the rest" if _FORCE.value
            else "the same command builds the rest")
    directory = _run("build", f"the stages finished before it are kept; {rest}",
                     lambda: build.build_artifacts(
                         _CONFIG.value, what=tuple(_WHAT.value), force=_FORCE.value,
                         progress=progress_bar.on_terminal()))
    print(directory)
    return
  if len(argv) != 3:
    _usage_error(f"report takes one directory, got {argv[2:] or 'none'}.")
  png, text = _run("report", "an earlier report there is left whole",
                   lambda: report.write_report(argv[2], _OUT.value or None))
  print(text)
  print(f"wrote {png} and {png.with_suffix('.txt')}")


if __name__ == "__main__":
  # SIGTERM (a scheduler's limit, `kill`) raises SystemExit: the counters' `finally` blocks
  # remove their spill folders (gigabytes at scale), which the default action left behind.
  cli.exit_on_sigterm()
  app.run(main, flags_parser=cli.parse_flags)
