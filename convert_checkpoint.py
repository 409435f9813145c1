r"""Converts between our checkpoints and Hugging Face PyTorch BERT / RoBERTa.

Export (restores on this host's CPU, whatever mesh saved the checkpoint):
  python convert_checkpoint.py --workdir W [--step N] --out DIR [--format bert|roberta] \
      [--no-verify]
Import (a step-0 checkpoint that train.py --config.init_from=WORKDIR and the export read):
  python convert_checkpoint.py --from-hf DIR_OR_NAME --out WORKDIR [--scan-layers]

The logic lives in informask_jax/export.py (the parameter mapping in hf_mapping.py); this file
only parses flags.
"""

import argparse
import json
import os


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="Training workdir to export (its checkpoints/ and "
                      "tokenizer/).")
  source.add_argument("--from-hf", help="Hugging Face model directory or hub name to import.")
  parser.add_argument("--out", required=True, help="Export directory, or the new workdir.")
  parser.add_argument("--step", type=int, default=None, help="Checkpoint step (default: latest).")
  parser.add_argument("--format", choices=("bert", "roberta"), default=None,
                      help="Hugging Face architecture (default: the model's flavour).")
  parser.add_argument("--no-verify", dest="verify", action="store_false",
                      help="Skip the logits comparison with the exported PyTorch model.")
  parser.add_argument("--overwrite", action="store_true", help="Export into a non-empty --out.")
  parser.add_argument("--scan-layers", action="store_true",
                      help="Import with the scanned layer layout (config.model.scan_layers=True).")
  args = parser.parse_args(argv)
  for name in ("workdir", "from_hf", "out"):  # An unset $VAR: "" is no path (nor the cwd).
    value = getattr(args, name)
    if value is not None and not value.strip():
      parser.error(f"--{name.replace('_', '-')} is empty: give a path"
                   + (" or a hub name." if name == "from_hf" else "."))
  # "--out=~/x" arrives as typed: a shell expands "~" at the start of a word only.
  for name in ("workdir", "from_hf", "out"):
    value = getattr(args, name)
    if value and value.startswith("~"):
      setattr(args, name, os.path.expanduser(value))
  # The conversion runs on the host: never grab an accelerator for it.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  from informask_jax import export

  if args.workdir is not None:
    if args.scan_layers:
      parser.error("--scan-layers applies to --from-hf only.")
    report = export.export_workdir(args.workdir, args.out, step=args.step, fmt=args.format,
                                   verify=args.verify, overwrite=args.overwrite)
  else:
    if args.step is not None or args.format is not None:
      parser.error("--step and --format apply to --workdir (export) only.")
    # Not honoured: a workdir's checkpoints are a run's work, which a step 0 should not wipe
    # as a side effect of a flag (import_to_workdir refuses them); and the import compares no
    # logits (the export of the workdir does).
    if args.overwrite:
      parser.error("--overwrite applies to --workdir (export) only; the import never replaces "
                   "checkpoints: give an --out that holds none.")
    if not args.verify:
      parser.error("--no-verify applies to --workdir (export) only; the import has no logits "
                   "comparison to skip.")
    report = export.import_to_workdir(args.from_hf, args.out, scan_layers=args.scan_layers)
  print(json.dumps(report, indent=2, default=str))
  return report


if __name__ == "__main__":
  from informask_jax import cli, paths, progress_bar

  cli.exit_on_sigterm()  # A killed export removes its staging directory, a copy of the model.

  # Bad input, a failed verification (RuntimeError) or a full disk: one line that says what, no
  # traceback.
  cli.quiet_library_logs()
  progress_bar.transformers_bars(progress_bar.on_terminal())  # Writing, loading: not in a log.
  try:
    with cli.user_errors("convert_checkpoint.py", (RuntimeError, paths.WriteError),
                         exit_now=True):
      main()
  except KeyboardInterrupt:  # A traceback through torch's forward; the staging copy is removed.
    cli.exit_interrupted("convert_checkpoint.py",
                         "the files in --out are whole, each the earlier version or the new "
                         "one; the same command (with --overwrite for an export) writes them all")
