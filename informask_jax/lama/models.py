"""What `--model` names -- a training workdir, an exported Hugging Face directory or a hub
name: the checks that refuse one that cannot be evaluated before anything loads, and its
tokenizer."""

import json
import os
import pathlib

from informask_jax import paths

# The config.json key where an export records where it comes from (export.export_workdir);
# here, so that eval_lama.py reads it without importing the Flax model.
PROVENANCE_KEY = "informask_jax"
# The provenance entry of an export whose masked-LM head is an import's fresh, untrained one.
FRESH_HEAD_KEY = "fresh_mlm_head"


def read_provenance(model_dir) -> dict | None:
  """The provenance an export recorded in `model_dir`'s config.json; None for other models."""
  try:
    with open(os.path.join(os.path.expanduser(os.fspath(model_dir)), "config.json")) as f:
      recorded = json.load(f).get(PROVENANCE_KEY)
  except (OSError, ValueError, AttributeError):
    return None
  return recorded if isinstance(recorded, dict) else None


def is_workdir(path: str | os.PathLike) -> bool:
  """A training workdir: checkpoints/, or a config.json next to a tokenizer/ folder in a folder
  without a model's weights (a save_pretrained folder may keep a tokenizer/ copy too)."""
  p = pathlib.Path(path)
  return p.is_dir() and ((p / "checkpoints").is_dir() or (
      (p / "config.json").is_file() and (p / "tokenizer").is_dir() and not _holds_weights(p)))


def _holds_weights(path: pathlib.Path) -> bool:
  from informask_jax import export  # Here: export imports this module.

  return export.is_hf_model_dir(path)


def check_model_path(model: str) -> None:
  """FileNotFoundError for a --model that is meant as a local path but does not exist.

  Without this, such a path is taken for a hub name and the hub is retried for a minute when
  offline (see paths.meant_as_local).
  """
  if os.path.exists(os.path.expanduser(model)):
    return
  if paths.meant_as_local(model):
    raise FileNotFoundError(f"--model {model!r}: no such file or directory.")


def _neither_model_nor_workdir(model: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"--model {model!r} holds neither a model (config.json + weights, as written by "
      "save_pretrained or the export) nor a training workdir (checkpoints/ + tokenizer/).")


def check_model(model: str, step: int | None = None) -> int | None:
  """Refuses, before anything is loaded, a --model (and --step) that cannot be evaluated.

  A missing local path; an empty directory; a training workdir (checkpoints/, or tokenizer/ with
  config.json or alone) without a finished checkpoint; --step given for anything but a workdir
  (an exported directory or a hub name is one model: the step would be ignored).

  Returns the checkpoint step to evaluate for a workdir (`step`, or its latest finished one,
  fixed now: a run still training may save a newer one before the model loads), else None.
  """
  check_model_path(model)
  path = pathlib.Path(model).expanduser()
  if path.is_file():  # Else taken for a hub name, whose error speaks of repo id formats.
    raise NotADirectoryError(f"--model {model!r} is a file: give the directory that holds it (a "
                             "model's config.json and weights, or a training workdir), or a "
                             "hub name.")
  if "checkpoints" in path.parts and not is_workdir(path):  # Only then import orbax.
    from informask_jax import checkpointing

    run = checkpointing.run_above(path)
    if run is not None:
      inside = path.resolve().relative_to(checkpointing.checkpoint_dir(run)).parts
      at = (f" (with --step {inside[0]} for that step)" if inside and inside[0].isdigit()
            else "")
      raise FileNotFoundError(
          f"--model {model!r} is {'inside ' if inside else ''}a run's checkpoints folder; give "
          f"the run's workdir, {str(run)!r}, which holds it{at}.")
  if path.is_dir() and (is_workdir(path) or (
      (path / "tokenizer").is_dir() and not _holds_weights(path))):
    from informask_jax import checkpointing

    if not checkpointing.has_finalized_checkpoint(path):
      raise FileNotFoundError(
          f"--model {model!r} is a training workdir without a checkpoint: no finished checkpoint "
          f"in {str(checkpointing.checkpoint_dir(path))!r}. Train first (train.py --workdir) or "
          "pass an exported Hugging Face directory.")
    steps = checkpointing.checkpoint_steps(path)
    if step is None:
      return steps[-1]
    if step not in steps:  # Now, not after the queries are built and the model is loading.
      raise ValueError(f"--step {step}: no checkpoint at that step in --model {model!r}; "
                       f"its steps are {steps}.")
    return step
  if path.is_dir() and not any(path.iterdir()):
    raise _neither_model_nor_workdir(model)
  if step is not None:
    kind = ("a hub name" if not path.exists() else "an exported Hugging Face directory"
            if (path / "config.json").is_file() else "not a training workdir (no checkpoints/)")
    raise ValueError(f"--step {step} picks a checkpoint of a training workdir, but --model "
                     f"{model!r} is {kind}, a single model: leave out --step.")
  return None


def load_tokenizer(model: str):
  """The tokenizer of an exported directory, a hub name or a training workdir."""
  from transformers import AutoTokenizer

  from informask_jax import tokenization

  check_model_path(model)
  where = str(pathlib.Path(model) / "tokenizer") if is_workdir(model) else model
  try:
    tokenizer = AutoTokenizer.from_pretrained(where)
  except (OSError, ValueError) as e:
    if os.path.isdir(where) and not is_workdir(model) and not os.path.isfile(
        os.path.join(where, "config.json")):
      # Transformers' own message then blames missing sentencepiece / tiktoken packages.
      raise _neither_model_nor_workdir(model) from e
    raise FileNotFoundError(
        f"--model {model!r}: no tokenizer could be loaded from {where!r} (an exported Hugging "
        f"Face directory, a hub name, or a training workdir with tokenizer/): {e}") from e
  missing = tokenization.missing_vocabulary(tokenizer, where)
  if missing:  # Every object would be "not a single token" and every fact skipped.
    raise FileNotFoundError(f"--model {model!r}: {missing}")
  _check_exported_tokenizer(model, tokenizer)
  return tokenizer


def _check_exported_tokenizer(model: str, tokenizer) -> None:
  """Refuses an export whose tokenizer files are not those it was exported with (the export
  records their fingerprint, as a checkpoint does): a vocabulary of the same size, or a smaller
  one, was scored into a table of meaningless numbers."""
  from informask_jax import tokenization

  expected = (read_provenance(model) or {}).get("tokenizer_fingerprint") if os.path.isdir(
      os.path.expanduser(model)) and not is_workdir(model) else None
  if not expected or not hasattr(tokenizer, "backend_tokenizer"):
    return
  found = tokenization.tokenizer_fingerprint(tokenizer)
  if found != expected:
    raise ValueError(
        f"--model {model!r}: its tokenizer (fingerprint {found}) is not the one the model was "
        f"exported with ({expected}, recorded in its config.json): token ids would mean other "
        "tokens. Put back the tokenizer files the export wrote, or export the run again.")
