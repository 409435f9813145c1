"""LAMA factual-recall probe of a masked language model.

  python eval_lama.py --model M --data_dir D [--protocol lama|informask] [--common_vocab FILE]
      [--batch_size N] [--backend torch|flax] [--out DIR]

M: an exported Hugging Face directory, a hub name, or a training workdir. D: LAMA's unzipped
data.zip. The logic lives in `informask_jax/lama/`; this file only parses flags.
"""

import argparse
import logging

from informask_jax import cli, lama, paths, progress_bar


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", required=True,
                 help="Exported Hugging Face directory, hub name, or training workdir.")
  p.add_argument("--data_dir", required=True, help="Folder with LAMA's data.zip layout.")
  p.add_argument("--protocol", default="lama", choices=lama.PROTOCOLS,
                 help="lama: the LAMA paper's; informask: the InforMask repository's.")
  p.add_argument("--common_vocab", default=None,
                 help="Word list (LAMA's common_vocab_cased.txt, or InforMask's "
                      "vocab_merged.txt for --protocol informask): the papers' numbers all "
                      "use one.")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--backend", default="torch", choices=lama.BACKENDS)
  p.add_argument("--device", default=None,
                 help="torch device, --backend torch only (default: cuda if available).")
  p.add_argument("--use_masked_sentences", action="store_true",
                 help="lama protocol: ask T-REx / Google-RE with masked sentences, not templates.")
  p.add_argument("--step", type=int, default=None,
                 help="Checkpoint step of a training workdir (refused for any other --model).")
  p.add_argument("--limit", type=int, default=0, help="Read at most N lines per file (0: all).")
  p.add_argument("--out", default=None,
                 help="Write results.csv, summary.json, run.json and results.md here.")
  p.add_argument("--no_progress", action="store_true",
                 help="Hide the progress bars (shown on a terminal only).")
  return p.parse_args(argv)


def main(argv=None, *, exit_now: bool = False) -> lama.Report:
  """`exit_now` (the script's own call, not the tests'): see cli.user_errors."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  cli.quiet_library_logs()
  # Bars only on a terminal (not in a log file), unless --no_progress; transformers' too:
  # loading the weights, writing the export of a workdir.
  progress = not args.no_progress and progress_bar.on_terminal()
  progress_bar.transformers_bars(progress)
  # A full disk: OutputError writing --out, paths.WriteError writing a workdir's export.
  with cli.user_errors("eval_lama.py", extra=(lama.OutputError, paths.WriteError),
                       exit_now=exit_now):
    # The table is printed before --out is written: a failed write loses nothing.
    return lama.evaluate(
        args.model, args.data_dir, protocol=args.protocol, common_vocab=args.common_vocab,
        batch_size=args.batch_size, out_dir=args.out, backend=args.backend, device=args.device,
        use_masked_sentences=args.use_masked_sentences, step=args.step, limit=args.limit,
        progress=progress, on_table=print)


if __name__ == "__main__":
  cli.exit_on_sigterm()  # A killed run removes its temporary export of a workdir (lama_export_*).
  try:
    main(exit_now=True)
  except KeyboardInterrupt:  # A traceback through the model's forward; the export is removed.
    cli.exit_interrupted("eval_lama.py", "nothing was left half-written (--out's files, where "
                         "given, are each the earlier version or the new one); the same command "
                         "evaluates again")
