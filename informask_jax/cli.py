"""Command-line plumbing shared by train.py and the `python -m informask_jax.*` tools.

`parse_flags` turns ml_collections' override errors (an unknown key, a wrong type) into one line
naming the key, with its nearest valid name, instead of a traceback.
"""

import logging
import sys

from absl import flags


class _LibraryInfoFilter(logging.Filter):
  """Drops INFO records from orbax, which logs every step of every save at that level."""

  def filter(self, record):
    return record.levelno > logging.INFO or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_LibraryInfoFilter())
  logging.getLogger("absl").addFilter(_LibraryInfoFilter())


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"{argv[0]}: bad command-line flag: {message}", file=sys.stderr)
    sys.exit(2)
