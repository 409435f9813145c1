# The command line of the Beam pipeline; its usage is the package's docstring.

import sys

from informask_jax import cli
from informask_jax.stats import beam_pipeline

__doc__ = beam_pipeline.__doc__  # What --help prints: absl reads __main__'s docstring.


def _main() -> None:
  """Command line: this module's flags (below) and the config's; the rest goes to Beam."""
  from absl import app, flags
  from ml_collections import config_flags

  from informask_jax.stats.beam_pipeline.launch import MissingBeamError, run
  from informask_jax.stats.beam_pipeline.settings import BEAM_STAGES

  config = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, e.g. configs/informask.py:paper.", lock_config=True)
  output = flags.DEFINE_string(
      "output", "", "Directory (local or gs://, s3://, hdfs://...) for the tables; empty: the "
      "config's statistics cache (local inputs only), where train.py looks.")
  files = flags.DEFINE_list("files", [], "File patterns of .txt/.jsonl/.parquet shards replacing "
                            "config.data.sources.")
  text_field = flags.DEFINE_string("text_field", "", "Record field holding the text "
                                   "(.jsonl/.parquet); empty: the config's sources' text_field, "
                                   "which --files keeps.")
  what = flags.DEFINE_list("what", list(BEAM_STAGES), f"Stages to build, from {BEAM_STAGES}.")
  pair_blocks = flags.DEFINE_integer("pair_blocks", 32, "Row blocks of the pair table (parallel "
                                     "merges; ~ a few per worker).")
  partitions = flags.DEFINE_integer("ngram_partitions", 32, "Hash partitions of the n-gram keys.")

  def parse(argv):  # Known flags are ours; the others are Beam pipeline options.
    return cli.parse_flags(argv, known_only=True)

  def main(argv):
    cli.quiet_library_logs()  # absl's handler is in place now.
    if config.value is None:  # One line (absl's UsageError would print the whole --help).
      print(f"{sys.argv[0]}: error: --config is required, e.g. --config "
            "configs/informask.py:paper (--help for the flags).", file=sys.stderr)
      sys.exit(2)
    with cli.user_errors("python -m informask_jax.stats.beam_pipeline", (MissingBeamError,)):
      print(run(config.value, output=output.value or None, files=files.value,
                text_field=text_field.value or None, what=what.value, beam_args=argv[1:],
                pair_blocks=pair_blocks.value, ngram_partitions=partitions.value))

  app.run(main, flags_parser=parse)


if __name__ == "__main__":
  sys.argv[0] = "python -m informask_jax.stats.beam_pipeline"  # Errors name the command typed.
  _main()
