"""This run's config against a checkpoint's: the settings a resume must keep (the tokenizer, the
batch order), the model architecture (a resume's or config.init_from's), and the differences a
resume warns about. `config_json` is the config as a run saves it (config.json, checkpoint meta)."""

import dataclasses
import json
import logging
import pathlib
import types

import ml_collections

from informask_jax import checkpointing, optim, stats, tokenization
from informask_jax import model as model_lib
from informask_jax import trainer as trainer_lib

# Settings that change the corpus a vocabulary is trained on.
CORPUS_KEYS = ("config.data.sources", "config.data.max_documents",
               "config.data.validation_fraction")

# Settings that fix the order of the training batches (the checkpoint's iterator position
# means nothing under others). The data sources are not here: a corpus moved to another path
# is the same corpus, and the iterator's own check of the corpus still runs (held in memory, its
# rows and a hash of its documents; streamed, its sources' settings and files' names and sizes).
_DATA_ORDER_KEYS = (("train", "batch_size"), ("train", "seed"), ("data", "seq_len"),
                    ("data", "packing"), ("data", "validation_fraction"))


def _check_clipping(saved: dict, current: dict, workdir) -> None:
  """Clipping on or off is an element of the optimizer chain (its state) more or less, so the
  checkpoint's state would not restore; one positive threshold for another is fine."""
  before = (saved.get("optim") or {}).get("grad_clip_norm")
  after = current["optim"]["grad_clip_norm"]
  if isinstance(before, (int, float)) and (before > 0) != (after > 0):
    keep = "on (any value > 0)" if before > 0 else "off (0)"
    raise ValueError(
        f"Cannot resume the run in {workdir}: config.optim.grad_clip_norm: {before!r} -> "
        f"{after!r} turns gradient clipping {'off' if before > 0 else 'on'}, which changes the "
        f"optimizer state its checkpoints hold. Keep clipping {keep}, or keep its parameters "
        f"and start a new run: another --workdir with --config.init_from={workdir}.")


def _loss_scaling(config: dict) -> tuple[bool, str]:
  """Whether a config (as saved) scales the loss, and the settings that say so. A checkpoint
  from before config.train.loss_scaling existed never did."""
  setting = (config.get("train") or {}).get("loss_scaling")
  if setting is None:
    return False, "no config.train.loss_scaling (older than the setting)"
  dtype = (config.get("model") or {}).get("compute_dtype")
  described = f"config.train.loss_scaling={setting!r}"
  if setting == "auto":
    described += f" with config.model.compute_dtype={dtype!r}"
  return trainer_lib.uses_loss_scaling(setting, dtype), described


def _check_loss_scaling(saved: dict, current: dict, workdir) -> None:
  """Loss scaling on or off adds or removes the scale in the train state its checkpoints hold
  (under "auto", so does a change of compute_dtype to or from float16)."""
  (before, was), (after, now) = _loss_scaling(saved), _loss_scaling(current)
  if before != after:
    keep = "dynamic" if before else "off"
    raise ValueError(
        f"Cannot resume the run in {workdir}: dynamic loss scaling was {'on' if before else 'off'} "
        f"({was}) and would be {'on' if after else 'off'} ({now}), which changes the train state "
        f"its checkpoints hold (the loss scale). Resume with --config.train.loss_scaling={keep}, "
        f"or keep its parameters and start a new run: another --workdir with "
        f"--config.init_from={workdir}.")


def check_resume_settings(workdir: pathlib.Path, config) -> None:
  """Refuses, before the vocabulary, the corpus and its statistics are built (hours on a large
  corpus), a resume whose tokenizer or data-order settings differ from those of the latest
  checkpoint: the embedding rows are per token id, and the saved iterator position is per batch
  order. (With a stream the position counts packed rows too, so seq_len and packing matter.)"""
  meta = checkpointing.latest_meta(workdir)
  if (meta or {}).get("source") == "import":  # Before the model check: that is not the problem.
    raise ValueError(
        f"{workdir} holds parameters imported by convert_checkpoint.py (no optimizer state or "
        f"data position to resume): train from them in a new --workdir with "
        f"--config.init_from={workdir}.")
  check_architecture_early(meta, config, f"the latest checkpoint in {workdir}",
                           same_layout=True, resumed_run=workdir)
  saved = (meta or {}).get("config")
  if not isinstance(saved, dict):  # Unreadable: the resume itself names the damaged step.
    return
  current = config_json(config)
  changed = config_changes({"tokenizer": saved.get("tokenizer") or {}},
                           {"tokenizer": current.get("tokenizer", {})})
  if changed and _names_the_checkpoints_tokenizer(meta, config):
    logging.info("Resuming with other tokenizer settings (%s): the vocabulary is the "
                 "checkpoint's (the same tokenizer fingerprint).", "; ".join(changed))
  elif changed:
    raise ValueError(
        f"Cannot resume the run in {workdir}: its tokenizer settings changed ("
        f"{'; '.join(changed)}), and its checkpoints' embeddings belong to the old vocabulary. "
        f"Resume with the run's settings (the latest checkpoint's; its config.json), or start a "
        f"new run in another --workdir (with --config.init_from={workdir} only if the "
        f"vocabulary is the same).")
  _check_clipping(saved, current, workdir)
  _check_loss_scaling(saved, current, workdir)
  changed = [f"config.{section}.{key}: {saved[section][key]!r} -> {current[section][key]!r}"
             for section, key in _DATA_ORDER_KEYS
             if isinstance(saved.get(section), dict) and key in saved[section]
             and saved[section][key] != current[section][key]]
  if changed:
    raise ValueError(
        f"Cannot resume the run in {workdir}: {'; '.join(changed)}. The checkpoint's data "
        f"position belongs to the run's batch order, which these settings fix. Resume with the "
        f"run's settings (the latest checkpoint's; its config.json), or keep its parameters and "
        f"start a new run: another --workdir with --config.init_from={workdir}.")


def _names_the_checkpoints_tokenizer(meta: dict, config) -> bool:
  """Whether config.tokenizer.name_or_path (a file, a directory, a hub name: loaded without the
  corpus) gives the checkpoint's tokenizer, by fingerprint: a run resumed with its own saved
  WORKDIR/tokenizer changes its settings, not its vocabulary."""
  saved = meta.get("tokenizer_fingerprint")
  if not saved or not config.tokenizer.name_or_path:  # Training one needs the corpus.
    return False
  tokenizer = tokenization.load_tokenizer(config.tokenizer)
  return tokenization.tokenizer_fingerprint(tokenizer) == saved


def check_tokenizer(saved_meta: dict, fingerprint: str, changed: list[str], config,
                    where: str, tokenizer_dir: pathlib.Path | None = None) -> None:
  """Refuses a resume whose tokenizer is not the checkpoint's (token ids would mean other
  tokens), saying why it changed: the corpus a trained vocabulary follows (`changed`, this
  config against the checkpoint's), or an edited vocabulary file. `where` names the run and
  its step; `tokenizer_dir` is the run's saved tokenizer (WORKDIR/tokenizer), which a trained
  vocabulary can be resumed with."""
  saved_tokenizer = saved_meta.get("tokenizer_fingerprint")
  if saved_tokenizer not in (None, fingerprint):
    if not config.tokenizer.name_or_path:  # Trained here: the vocabulary follows the corpus.
      corpus_changes = [c for c in changed if c.startswith(CORPUS_KEYS)]
      # train.py saves the tokenizer at every start once its checks pass: the latest
      # checkpoint's, whatever the library would train now.
      own_vocabulary = (f", or with the vocabulary it saved: --config.tokenizer.name_or_path="
                        f"{tokenizer_dir}" if tokenizer_dir is not None
                        and (tokenizer_dir / "tokenizer.json").is_file() else "")
      why = ("the vocabulary is trained on the corpus (config.tokenizer.name_or_path=''), "
             "and this run's corpus (or the library that trains it) differs" + (
                 f" ({'; '.join(corpus_changes)})" if corpus_changes else "") +
             f". Resume with the run's data settings (its config.json){own_vocabulary}")
    else:
      why = (f"though the settings match, the tokenizer of config.tokenizer.name_or_path="
             f"{config.tokenizer.name_or_path!r} changed: the vocabulary file was edited? "
             "Restore it")
    raise ValueError(
        f"Cannot resume the run in {where}: this run's tokenizer is not the one the checkpoint "
        f"was trained with: {why}, or start a new run in another --workdir.")


def check_init_vocabulary(init_from: str, tokenizer) -> int | None:
  """Refuses config.init_from parameters learned on a vocabulary other than this run's
  `tokenizer`, compared token by token with the tokenizer/ the init_from workdir holds (train.py
  and convert_checkpoint.py --from-hf write one): one of the same size passes the architecture
  check, but its embedding rows belong to other tokens. The same vocabulary normalised otherwise
  (config.tokenizer.lowercase) is only warned about. Returns that tokenizer's model_max_length
  (an import's says how long its model's inputs were; None without a tokenizer/)."""
  saved_dir = pathlib.Path(init_from).expanduser() / "tokenizer"
  if not saved_dir.is_dir():  # Nothing recorded to compare with.
    return None
  try:
    saved = tokenization.load_tokenizer(ml_collections.ConfigDict({"name_or_path": str(saved_dir)}))
  except (OSError, ValueError) as e:  # Its message names config.tokenizer, not this setting.
    raise ValueError(f"config.init_from={init_from}: its tokenizer {saved_dir} cannot be "
                     f"compared with this run's: {e}") from None
  theirs = {i: t for t, i in saved.get_vocab().items()}
  ours = {i: t for t, i in tokenizer.get_vocab().items()}
  ids = theirs.keys() | ours.keys()
  moved = sum(theirs.get(i) != ours.get(i) for i in ids)
  if moved:
    raise ValueError(
        f"config.init_from={init_from} holds parameters of another vocabulary: {moved} of the "
        f"{len(ids)} token ids map to other tokens in this run's "
        f"tokenizer. Train with its vocabulary: --config.tokenizer.name_or_path={saved_dir}.")
  if tokenization.tokenizer_fingerprint(saved) != tokenization.tokenizer_fingerprint(tokenizer):
    logging.warning("config.init_from=%s: this run's tokenizer has the vocabulary of %s but "
                    "normalises text otherwise (e.g. config.tokenizer.lowercase), so words may "
                    "split into other tokens than the parameters learned.", init_from, saved_dir)
  return getattr(saved, "model_max_length", None)


def warn_evaluation_change(changed: list[str], config) -> None:
  """A resume with other masking settings (allowed: a curriculum may change the strategy), or
  another train.eval_batches, evaluates other masks or rows: say that the losses before and
  after do not compare, nor, therefore, does the choice of the checkpoint kept as the best by
  validation loss. The statistics settings count too for the strategies whose tables they
  build."""
  tables = stats.stages_needed(config.masking)
  prefixes = ("config.masking.", "config.stats.") if tables else ("config.masking.",)
  masking = [c for c in changed if c.startswith(prefixes)]
  if masking:
    logging.warning("The masking changed (%s): evaluations from here on use the new masks, so "
                    "their losses do not compare with the earlier ones; the checkpoint kept as "
                    "the best by validation loss is still chosen across both.",
                    "; ".join(masking))
  rows = [c for c in changed if c.startswith("config.train.eval_batches:")]
  if rows:
    logging.warning("The evaluation changed (%s): evaluations from here on read other "
                    "validation rows, so their losses do not compare with the earlier ones; the "
                    "checkpoint kept as the best by validation loss is still chosen across both.",
                    "; ".join(rows))


def warn_schedule_change(saved_meta: dict, config, step: int) -> None:
  """A resume with another train.num_steps (allowed: raising it continues a run) also moves the
  learning-rate decay, which ends at num_steps: say so, with the rate at the resumed step. One
  that raises the warm-up to num_steps or past it is told its rate never decays."""
  saved = ((saved_meta.get("config") or {}).get("train") or {}).get("num_steps")
  now = config.train.num_steps
  if step >= now:
    return
  warmup = config.optim.warmup_steps
  checkpoints = _saved_schedule_settings(saved_meta, config)
  if saved is None or saved == now:
    # A warm-up raised past num_steps by the resume: said as a fresh run's is (loop skips
    # that warning on a resume, for this one's).
    if checkpoints.warmup_steps != warmup:
      optim.warn_if_warmup_outlasts_run(config.optim, now)
    return
  if warmup >= max(saved, now) and checkpoints == _schedule_settings(config.optim):
    return  # Both runs end inside the same warm-up: the same rates throughout.
  # The checkpoint's rate on its own settings: a resume may change the peak rate or the
  # warm-up as well (a change config_changes lists), which the current ones would hide.
  old_rate = float(optim.learning_rate_schedule(checkpoints, saved)(step))
  new_rate = float(optim.learning_rate_schedule(config.optim, now)(step))
  if warmup >= now:  # No decay left to end: "the decay now ends at" would mislead.
    logging.warning("config.train.num_steps: %d -> %d, which ends inside the learning-rate "
                    "warm-up (config.optim.warmup_steps=%d): the rate never decays; at step %d "
                    "it is %.4g (%.4g on the checkpoint's schedule).", saved, now, warmup, step,
                    new_rate, old_rate)
    return
  logging.warning("config.train.num_steps: %d -> %d. The learning rate's %s decay now ends at "
                  "step %d: at step %d it is %.4g (%.4g on the checkpoint's schedule).", saved,
                  now, config.optim.schedule, now, step, new_rate, old_rate)


_SCHEDULE_KEYS = ("learning_rate", "warmup_steps", "schedule")


def _schedule_settings(optim_config) -> types.SimpleNamespace:
  """The optim settings learning_rate_schedule reads."""
  return types.SimpleNamespace(**{key: optim_config[key] for key in _SCHEDULE_KEYS})


def _saved_schedule_settings(saved_meta: dict, config) -> types.SimpleNamespace:
  """The checkpoint's schedule settings; the current config's for any it lacks or holds in an
  unusable form (a checkpoint of an older version)."""
  saved = (saved_meta.get("config") or {}).get("optim")
  saved = saved if isinstance(saved, dict) else {}
  settings = _schedule_settings(config.optim)
  usable = {"learning_rate": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "warmup_steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "schedule": lambda v: v in optim.SCHEDULES}
  for key, is_usable in usable.items():
    if key in saved and is_usable(saved[key]):
      setattr(settings, key, saved[key])
  return settings


def config_changes(saved: dict, current: dict, prefix: str = "",
                   newer: list[str] | None = None) -> list[str]:
  """'key: saved -> current' for every leaf that differs (train.* bookkeeping aside).

  A setting the saved config lacks was added to the code after that run started: not a change
  the user made (a new setting's default keeps the old behaviour), so it is not in the list;
  'key=current' goes to `newer` when given."""
  out = []
  for key in sorted(set(saved) | set(current)):
    name = f"{prefix}{key}"
    if name in ("train.num_steps", "train.resume", "train.overwrite",
                "train.profile_start_step", "train.profile_steps"):
      continue  # Raising num_steps to continue a run is the usual reason to resume.
    a, b = saved.get(key), current.get(key)
    if key not in saved and isinstance(b, dict):
      a = {}  # A section added since the checkpoint's run: its settings one by one.
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_changes(a, b, f"{name}.", newer)
    elif key not in saved:
      if newer is not None:
        newer.append(f"config.{name}={b!r}")
    elif a != b:
      out.append(f"config.{name}: {a!r} -> {b!r}")
  return out


def config_json(config) -> dict:
  """The config as plain JSON types (ConfigDicts nested in lists included)."""
  return json.loads(config.to_json_best_effort())


def check_architecture_early(meta, config, where: str, *, same_layout: bool,
                             resumed_run=None) -> None:
  """The model settings against a checkpoint's, before the vocabulary and the corpus are built:
  all but the vocabulary size and padding id, which follow the tokenizer (and are compared with
  the rest once it is built)."""
  saved = (meta or {}).get("mlm_config")
  if not isinstance(saved, dict):  # Unreadable: the restore names the damaged step itself.
    return
  try:
    current = model_lib.MLMConfig.from_config(config.model, vocab_size=saved["vocab_size"],
                                              pad_id=saved["pad_id"])
  except (KeyError, TypeError):
    return
  if not same_layout:  # Unrolled or scanned layers convert into each other (init_from).
    saved = {**saved, "scan_layers": current.scan_layers}
  try:
    check_architecture(model_lib.MLMConfig(**saved), current, where, resumed_run=resumed_run)
  except ValueError as e:
    raise ValueError(f"{e}{_variant_advice(meta, config)}") from None


def _variant_advice(meta, config) -> str:
  """The config variant the checkpoint was trained with, where this run's is another: a `:tiny`
  run resumed as `configs/x.py` was told the dozen model keys to set one by one (layer_norm_eps
  among them), not the variant that sets them all."""
  theirs = ((meta or {}).get("config") or {}).get("variant")
  ours = config.get("variant")
  if not isinstance(theirs, str) or ours is None or theirs == ours:
    return ""
  return (f"\nThe checkpoint's config is the {theirs!r} variant, this run's {ours!r}: choose "
          f"it as --config configs/NAME.py:{theirs}.")


def check_architecture(saved: model_lib.MLMConfig, current: model_lib.MLMConfig, where: str,
                       *, resumed_run=None):
  """ValueError listing the differences; `resumed_run`: the workdir a resume would continue,
  for the ways out."""
  diffs = checkpointing.architecture_mismatch(dataclasses.asdict(saved), current)
  if not diffs:
    return
  message = f"The model of {where} does not match this run's config:\n  " + "\n  ".join(diffs)
  if saved.layer_norm_eps != current.layer_norm_eps:
    # The one model setting a size or flavour does not fix: an imported checkpoint's own.
    message += ("\nTrain with the checkpoint's LayerNorm epsilon: "
                f"--config.model.layer_norm_eps={saved.layer_norm_eps!r}.")
  # Neither do these, for an import that is not the flavour's default (a bert run exported as
  # roberta keeps its two token types and 512 positions).
  layout = [f"--config.model.{key}={getattr(saved, key)}"
            for key in ("flavour", "max_positions", "type_vocab_size")
            if getattr(saved, key) != getattr(current, key)]
  if layout:
    message += f"\nTrain with the checkpoint's layout: {' '.join(layout)}."
  if resumed_run is not None:
    message += ("\nResume with the run's model settings (its config.json), or start a new run "
                "in another --workdir")
    if diffs == [d for d in diffs if d.startswith("model.scan_layers:")]:
      # Only the layout: init_from converts scanned and unrolled layers into each other.
      message += (f" from its parameters with --config.init_from={resumed_run} (the layers' "
                  "layout is converted; the optimizer state and data position start afresh)")
    message += "."
  raise ValueError(message)
