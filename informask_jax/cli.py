"""Command-line plumbing shared by train.py and the `python -m informask_jax.*` tools.

`parse_flags` turns ml_collections' override errors (an unknown key, a wrong type) into one line
naming the key, with its nearest valid name, instead of a traceback.
"""

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"{argv[0]}: bad command-line flag: {message}", file=sys.stderr)
    sys.exit(2)
