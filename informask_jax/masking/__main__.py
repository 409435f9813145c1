"""`python -m informask_jax.masking show ...`: see informask_jax/masking/show.py."""

import sys

from informask_jax import cli
from informask_jax.masking import show

USAGE = ("usage: python -m informask_jax.masking show [--strategy NAME] [--text TEXT] "
         "[--html FILE] ... (show --help for all options)")


def _main():
  argv = sys.argv[1:]
  if argv[:1] in (["-h"], ["--help"]):
    print(USAGE)
    return
  if not argv or argv[0] != "show":  # Status 2, as argparse for a bad command line.
    problem = f"unknown command {argv[0]!r}" if argv else "no command given"
    print(f"python -m informask_jax.masking: error: {problem}; the command is show.\n{USAGE}",
          file=sys.stderr)
    sys.exit(2)
  with cli.user_errors("python -m informask_jax.masking show"):
    show.main(argv[1:])


if __name__ == "__main__":
  _main()
