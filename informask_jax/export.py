"""Hugging Face model directories: export a checkpoint to one, import one as a checkpoint.

The parameter mapping itself (name table, layout changes, configs) is `hf_mapping`'s; this module
reads and writes the files around it (weights, config, tokenizer) and checks an export the only
way that matters: both models run on the same inputs and their logits are compared.
"""

import dataclasses
import fnmatch
import functools
import json
import os
import shutil

import numpy as np
from absl import logging

from informask_jax import hf_mapping, paths

# The mapping's public names, importable from here as they were before it had its own module.
from informask_jax.hf_mapping import (  # noqa: F401
    FORMATS,
    MLM_ARCHITECTURE,
    SUPPORTED_ARCHITECTURES,
    convert_layout,
    fresh_head,
    from_hf_state_dict,
    hf_config_for,
    is_scanned,
    mlm_config_from_hf,
    to_hf_state_dict,
)
from informask_jax.lama.models import FRESH_HEAD_KEY, PROVENANCE_KEY, read_provenance
from informask_jax.model import MLMConfig

# Tolerance of the export check, in float32 logits: the acceptance bar, or, where more,
# ROUNDING_FACTOR times the float32 rounding of transformers' own logits on the same inputs (its
# model rerun in float64). That rounding grows with the logits: those of a trained base model
# reach 15-25, where it is ~1e-3, and a fixed 1e-4 refused correct exports; ours is of the same
# order, so the two sides differ by up to about twice it. A share of the largest |logit| instead
# let mapping errors through (a tanh GELU, another LayerNorm eps) whenever the logits were large.
MAX_ABS_DIFF = 1e-4
ROUNDING_FACTOR = 4
# Two logits closer than this count as a tie: a flipped top-1 between them is float noise.
TIE_GAP = 1e-6


# --- Reading Hugging Face model directories -----------------------------------------------------
def _load_weights(path: str, loader) -> dict:
  """The tensors of one weights file; a damaged one is named in a one-line ValueError."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Weights file {path} does not exist.")
  try:
    return loader(path)
  except MemoryError:
    raise
  except Exception as e:  # safetensors' SafetensorError, torch's UnpicklingError, EOFError...
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise ValueError(f"Cannot read {path}: the file is damaged or truncated "
                     f"({type(e).__name__}: {first}).") from e


def _read_json(path: str):
  """A JSON file; a damaged one is named in a one-line ValueError."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: the file is damaged or truncated ({e}).") from e


# The weights of a Hugging Face model directory in the order transformers' from_pretrained takes
# them, which _read_state_dict follows (a directory holding two layouts is then read alike): per
# format, safetensors before PyTorch's pickle, the single file before a shard index.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# The shards the indexes name, per format; and the files of the tokenizers transformers saves.
# Top-level names only: a hub download is fetched by them (_resolve), and their "*" also matches
# "/" there, so none starts with one.
HF_WEIGHT_SHARDS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                    "sentencepiece.bpe.model")


def is_hf_model_dir(path) -> bool:
  """A directory with config.json and weights in a layout _read_state_dict reads (an export, a
  save_pretrained, a hub download)."""
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      os.path.isfile(os.path.join(path, name)) for name in HF_WEIGHT_INDEXES + HF_WEIGHT_FILES)


def _read_state_dict(model_dir: str) -> dict:
  """Tensors of a Hugging Face checkpoint directory (safetensors or .bin, sharded or not)."""
  import torch
  from safetensors.torch import load_file

  def load_bin(path):
    return torch.load(path, map_location="cpu", weights_only=True)

  for name, index_name, loader in zip(HF_WEIGHT_FILES, HF_WEIGHT_INDEXES, (load_file, load_bin),
                                      strict=True):
    if os.path.exists(os.path.join(model_dir, name)):
      return _load_weights(os.path.join(model_dir, name), loader)
    index_path = os.path.join(model_dir, index_name)
    if os.path.exists(index_path):
      index = _read_json(index_path)
      if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise ValueError(f"{index_path} has no weight_map: the file is damaged.")
      state = {}
      for shard in sorted(set(index["weight_map"].values())):
        state.update(_load_weights(os.path.join(model_dir, shard), loader))
      return state
  raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin in {model_dir}.")


def _resolve(dir_or_name: str, flag: str = "Hugging Face model") -> str:
  """A local directory for a path or a hub name (from the local cache when offline).

  `flag` names the input in errors ("--from-hf"). A path that does not exist and can only be
  local by its form (paths.meant_as_local) is not asked of the hub, whose error would speak of
  repo id formats or the network; nor is a file (a config.json given for its directory).
  """
  if os.path.isdir(dir_or_name):
    return dir_or_name
  if os.path.exists(dir_or_name):
    raise NotADirectoryError(f"{flag} {dir_or_name!r} is a file: give the directory that holds "
                             "the model's config.json and weights, or a hub name.")
  if paths.meant_as_local(dir_or_name):
    raise FileNotFoundError(f"{flag} {dir_or_name!r}: no such directory (a local path by its "
                            "form, so the Hugging Face hub was not asked).")
  from huggingface_hub import snapshot_download

  try:
    # The config, the tokenizer's files and the weights _read_state_dict reads, in one layout:
    # safetensors, else .bin. "*.bin" asked at once fetched both copies of a model that has both
    # (bert-base-uncased: 440 MB each), plus CoreML weights in subfolders.
    for layout in zip(HF_WEIGHT_FILES, HF_WEIGHT_INDEXES, HF_WEIGHT_SHARDS, strict=True):
      folder = snapshot_download(dir_or_name,
                                 allow_patterns=["config.json", *_TOKENIZER_FILES, *layout])
      if any(os.path.isfile(os.path.join(folder, name)) for name in layout[:2]):
        break
    return folder
  except Exception as e:  # Offline, unknown name, or no access: say which input failed.
    raise FileNotFoundError(f"{dir_or_name!r} is neither a local directory nor a Hugging Face "
                            f"model available here ({type(e).__name__}: {e}).") from e


def _read_hf_config(model_dir: str):
  """The directory's config, refused here if unsupported (before any weights are read)."""
  import transformers

  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path) and os.path.isdir(os.path.join(model_dir, "checkpoints")):
    raise FileNotFoundError(f"No config.json in {model_dir}: it is a workdir of checkpoints (an "
                            f"import's, or a run's), not a Hugging Face model: use it as "
                            f"--config.init_from={model_dir} directly, or export it with "
                            f"convert_checkpoint.py --workdir {model_dir} --out DIR.")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config.json in {model_dir}.")
  # Read here first: transformers reports a damaged file with a long chained traceback.
  config = _read_json(path)
  if not isinstance(config, dict):
    raise ValueError(f"{path} does not hold a JSON object: it is not a model config.")
  if "model_type" not in config and os.path.isdir(os.path.join(model_dir, "checkpoints")):
    # A train.py workdir: its config.json is the run's config, which transformers would refuse
    # as an "Unrecognized model" asking for a model_type key.
    raise ValueError(f"{model_dir} is a training workdir (its config.json is the run's config), "
                     f"not a Hugging Face model: use it as --config.init_from={model_dir} "
                     f"directly, or export it with convert_checkpoint.py --workdir {model_dir} "
                     "--out DIR.")
  hf_config = transformers.AutoConfig.from_pretrained(model_dir)
  hf_mapping.mlm_config_from_hf(hf_config)
  return hf_config


def load_hf_as_flax(dir_or_name: str, *, scan_layers: bool = False, head_seed: int = 0,
                    require_head: bool = False) -> tuple[dict, MLMConfig]:
  """Reads a Hugging Face BERT/RoBERTa (MLM or encoder-only) into our tree and MLMConfig."""
  model_dir = _resolve(dir_or_name)
  hf_config = _read_hf_config(model_dir)
  return hf_mapping.from_hf_state_dict(_read_state_dict(model_dir), hf_config,
                                       scan_layers=scan_layers, head_seed=head_seed,
                                       require_head=require_head,
                                       config_name=os.path.join(model_dir, "config.json"))


# --- Export and verification --------------------------------------------------------------------
# A few ordinary sentences for the check on real text (any text works; these are ours).
_SENTENCES = (
    "The river flows through the old city before it reaches the sea.",
    "Paris is the capital and largest city of France.",
    "She played the violin in an orchestra for many years.",
    "Photosynthesis converts light energy into chemical energy in plants.",
)


def _copy_tokenizer(tokenizer_dir: str, out_dir: str, tokenizer, type_vocab_size: int,
                    max_seq_len: int):
  # The tokenizer's files only: every file there was copied over the staged model, so weights
  # left in tokenizer/ (an earlier export into it) replaced the checkpoint's.
  others = []
  for name in sorted(os.listdir(tokenizer_dir)):
    src = os.path.join(tokenizer_dir, name)
    if not os.path.isfile(src):
      continue
    if name in _TOKENIZER_FILES:
      shutil.copy2(src, os.path.join(out_dir, name))
    else:
      others.append(name)
  if others:
    logging.warning("%s holds %s, not tokenizer files: not exported.", tokenizer_dir,
                    ", ".join(others))
  _frame_as_trained(out_dir, tokenizer)
  vocab_settings = _write_wordpiece_vocab(out_dir)
  path = os.path.join(out_dir, "tokenizer_config.json")
  settings = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:  # transformers writes it so, with ensure_ascii off.
      settings = json.load(f)
  for key, value in vocab_settings.items():
    settings.setdefault(key, value)
  # How the training run's transformers loaded it (from a local folder, offline), which its
  # save_pretrained records: said of a model others download, local_files_only=True would read.
  for key in ("is_local", "local_files_only"):
    settings.pop(key, None)
  # Without tokenizer_class, AutoTokenizer would pick the tokenizer of the model type (RoBERTa's
  # byte-level BPE) for a WordPiece vocabulary.
  settings.setdefault("tokenizer_class", type(tokenizer).__name__)
  if settings["tokenizer_class"] == "TokenizersBackend":
    # transformers 5's name for a tokenizer built from a `tokenizers` object; 4.x only knows
    # PreTrainedTokenizerFast, which 5 loads as the same class.
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
  # Stated, not left to the tokenizer class: transformers 5 gives a tokenizer built from a
  # `tokenizers` object (ours, trained here) no token_type_ids, so sentence pairs (GLUE, SQuAD)
  # would all get segment 0; with one token type (RoBERTa) a segment id of 1 has no row.
  names = ["input_ids", "attention_mask"]
  settings["model_input_names"] = names if type_vocab_size == 1 else [
      "input_ids", "token_type_ids", "attention_mask"]
  # Training tokenizes whole documents (no limit); the export's users truncate to the positions
  # the model has, as bert-base-uncased's tokenizer does at 512.
  settings["model_max_length"] = int(max_seq_len)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2, sort_keys=True)


def _frame_as_trained(out_dir: str, tokenizer) -> None:
  """Gives the exported tokenizer.json the framing training gave every row where the run's
  tokenizer adds none (tokenization.bare_text_framing: a workdir whose tokenizer/ was saved
  without it; load_tokenizer frames a run's). Else the export's users (fill-mask, run_glue.py,
  a classifier reading the first token) feed the model inputs it never saw; the ids of the text
  itself, and so the fingerprint, are unchanged."""
  import tokenizers

  from informask_jax import tokenization

  path = os.path.join(out_dir, "tokenizer.json")
  framing = tokenization.bare_text_framing(tokenizer)
  if framing is None or not os.path.exists(path):
    return
  backend = tokenizers.Tokenizer.from_file(path)
  backend.post_processor = framing(backend.post_processor)
  backend.save(path)
  logging.warning("The run's tokenizer adds no special tokens around a text (no "
                  "post-processor): the export's tokenizer frames a text as training framed its "
                  "rows, %s ... %s.", tokenizer.cls_token, tokenizer.sep_token)


def _write_wordpiece_vocab(out_dir: str) -> dict:
  """vocab.txt, one token per line in id order, beside the tokenizer.json of a WordPiece
  vocabulary (one trained here is saved as tokenizer.json alone): BertTokenizer, transformers
  4's slow class, and the original LAMA and InforMask code read a vocabulary from that file.

  Returns the tokenizer_config.json settings that make BertTokenizer normalise as tokenizer.json
  does ({} when no vocab.txt was written): it lower-cases unless told otherwise, which would turn
  a cased vocabulary's "The" into "the", another id."""
  spec_file = os.path.join(out_dir, "tokenizer.json")
  vocab_file = os.path.join(out_dir, "vocab.txt")
  if not os.path.exists(spec_file):
    return {}
  with open(spec_file, encoding="utf-8") as f:
    spec = json.load(f)
  model = spec.get("model") or {}
  if model.get("type") != "WordPiece":
    return {}
  by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
  if [i for _, i in by_id] != list(range(len(by_id))) or any("\n" in t for t, _ in by_id):
    return {}  # A file of lines cannot hold gaps in the ids or a token with a line break.
  # Written from tokenizer.json (which the export verifies) even over a vocab.txt copied from
  # the tokenizer folder: a stale one there gave BertTokenizer other ids, unseen by the check.
  with open(vocab_file, "w", encoding="utf-8") as f:
    f.write("".join(f"{token}\n" for token, _ in by_id))
  normalizer = spec.get("normalizer") or {}
  if normalizer.get("type") != "BertNormalizer":
    return {}
  settings = {"do_lower_case": bool(normalizer.get("lowercase", True))}
  if normalizer.get("strip_accents") is not None:  # None follows lowercase, as BertTokenizer's.
    settings["strip_accents"] = bool(normalizer["strip_accents"])
  return settings


def _nesting(path: str, other: str) -> str | None:
  """How `path` relates to directory `other` (symlinks resolved): "is", "is inside", "contains",
  or None when neither holds the other."""
  path, other = os.path.realpath(path), os.path.realpath(other)
  common = os.path.commonpath([path, other])
  if path == other:
    return "is"
  return "is inside" if common == other else "contains" if common == path else None


# The files of a model directory that an export over it (--overwrite) replaces as a whole: weights
# in another layout (shards, a .bin) or another kind of tokenizer's files left beside the new ones
# would be read instead of them, by transformers or by our own readers.
_MODEL_FILE_PATTERNS = (HF_WEIGHT_FILES + HF_WEIGHT_INDEXES + HF_WEIGHT_SHARDS
                        + ("tf_model.h5", "flax_model.msgpack") + _TOKENIZER_FILES)


def _check_out_dir(out_dir: str, overwrite: bool):
  from informask_jax import checkpointing

  if os.path.isdir(os.path.join(out_dir, checkpointing.CHECKPOINT_DIR)):  # --overwrite or not.
    raise FileExistsError(f"Export directory {out_dir} holds a training run (checkpoints/): an "
                          "export would replace its config.json and tokenizer files, and the run "
                          "would no longer resume. Choose another --out.")
  # Inside another run (its tokenizer/ or checkpoints/ with --overwrite): that run's vocabulary
  # was replaced, and model files left in its tokenizer/.
  above = os.path.realpath(out_dir)
  while os.path.dirname(above) != above:
    above = os.path.dirname(above)
    if checkpointing.has_finalized_checkpoint(above):
      raise FileExistsError(f"Export directory {out_dir} lies inside the training run {above}: "
                            "export to a directory outside any training run.")
  # A killed export's staging copy inside a mount-point out_dir is no model there: named by
  # export_to_hf's leftover warning, not refused as content that only --overwrite may replace.
  prefix = _staging_prefix(out_dir)
  if os.path.isdir(out_dir) and not overwrite and any(
      not (name.startswith(prefix) and name.endswith(".tmp")) for name in os.listdir(out_dir)):
    raise FileExistsError(f"Export directory {out_dir} is not empty; choose another --out, or "
                          "pass --overwrite (overwrite=True from Python) to replace the model "
                          "there (its weights and tokenizer files), keeping other files.")
  # sibling: the staging directory is made next to out_dir (or in it, see _staging_parent).
  paths.check_writable_dir(out_dir, "Export directory",
                           sibling=_staging_parent(out_dir) != os.path.abspath(out_dir))


def _staging_prefix(out_dir: str) -> str:
  return f".{os.path.basename(os.path.abspath(out_dir))}."


def _staging_parent(out_dir: str) -> str:
  """Where the export is written before it is moved in: beside out_dir, unless out_dir is a
  mount point (another file system: a volume, a separate disk), where os.replace could not move
  the files (EXDEV, after the whole verification); then inside it, as a hidden directory."""
  target = os.path.abspath(out_dir)
  parent = os.path.dirname(target)
  if os.path.isdir(target) and os.stat(target).st_dev != os.stat(parent).st_dev:
    return target
  return parent


def _remove_stale_model_files(out_dir: str, written) -> None:
  """After an export over a model directory: its weights and tokenizer files that the export did
  not write (see _MODEL_FILE_PATTERNS)."""
  stale = sorted(name for name in os.listdir(out_dir) if name not in written and any(
      fnmatch.fnmatch(name, pattern) for pattern in _MODEL_FILE_PATTERNS))
  for name in stale:
    os.remove(os.path.join(out_dir, name))
  if stale:
    logging.warning("Removed the earlier model's files from %s that the export replaces: %s.",
                    out_dir, ", ".join(stale))


def export_to_hf(params, cfg: MLMConfig, out_dir: str, *, tokenizer_dir: str | None = None,
                 tokenizer=None, fmt: str | None = None, verify: bool = True,
                 overwrite: bool = False, provenance: dict | None = None,
                 max_length: int | None = None) -> dict:
  """Writes config.json, model.safetensors and the tokenizer files; returns a report.

  `max_length`: the exported tokenizer's model_max_length, the longest input training gave the
  model (default: the longest its position table can have been trained on, cfg.max_trained_len).

  `provenance` (JSON types: the run's workdir, step, masking) is recorded in config.json under
  PROVENANCE_KEY; transformers keeps such a key as a config attribute and ignores it otherwise.

  `tokenizer` is the tokenizer in `tokenizer_dir` where the caller has loaded it already
  (export_workdir, to check its vocabulary), so that it is not loaded twice; the files are still
  copied from `tokenizer_dir`. With `verify` the written directory is loaded by `transformers`
  and compared with our model (`verify_export`), which raises if the logits differ by more than
  `MAX_ABS_DIFF` (or ROUNDING_FACTOR x transformers' own float32 rounding, where more).
  """
  import transformers
  from safetensors import SafetensorError
  from safetensors.numpy import save_file

  if tokenizer is not None and tokenizer_dir is None:
    raise ValueError("tokenizer= needs tokenizer_dir=, the directory whose files are exported.")
  fmt = hf_mapping.check_format(fmt or cfg.flavour)
  _check_out_dir(out_dir, overwrite)
  if tokenizer_dir is not None:
    if not os.path.isdir(tokenizer_dir):
      raise FileNotFoundError(f"Tokenizer directory {tokenizer_dir} does not exist.")
    if tokenizer is None:
      tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    from informask_jax import tokenization
    tokens = tokenization.vocab_rows(tokenizer)
    if tokens > cfg.vocab_size:  # Fewer is fine (a vocabulary padded with unused rows).
      # The exported pair would fail in transformers on every text with such an id (an
      # IndexError from torch's embedding, or, with verify, from the check's first sentence).
      raise ValueError(f"The tokenizer in {tokenizer_dir} has {tokens} token ids but the model "
                       f"has vocab_size {cfg.vocab_size} embedding rows: export the tokenizer "
                       "the model was trained with.")
  hf_config = hf_mapping.hf_config_for(cfg, tokenizer, fmt)
  if provenance:
    setattr(hf_config, PROVENANCE_KEY, provenance)
  state = hf_mapping.to_hf_state_dict(params, cfg, fmt)
  bad = [name for name, x in state.items() if not np.isfinite(x).all()]
  if bad:
    raise ValueError(f"The parameters to export hold NaN or Inf in {len(bad)} tensor(s) "
                     f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}).")
  # Hugging Face stores each tied tensor once; the aliases are rebuilt when the model loads.
  tensors = {k: v for k, v in state.items() if k not in hf_mapping.TIED_ALIASES[fmt]}

  # Written and verified in a sibling directory, then moved in: a failed export leaves no
  # unverified model in out_dir (nor files that would make a retry need --overwrite).
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  prefix = _staging_prefix(out_dir)
  staging_parent = _staging_parent(out_dir)
  # A killed export (SIGKILL, a lost machine) could not remove its staging copy of the model.
  paths.warn_leftover_folders(staging_parent, (prefix,), "a killed export", logging)
  with paths.scratch_dir(prefix=prefix, suffix=".tmp", dir=staging_parent) as staging:
    try:
      hf_config.save_pretrained(staging)
      save_file(tensors, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
      if tokenizer_dir is not None:
        _copy_tokenizer(tokenizer_dir, staging, tokenizer, cfg.type_vocab_size,
                        cfg.max_trained_len if max_length is None else max_length)
    except (OSError, SafetensorError) as e:  # A full disk: a Rust IoError from safetensors.
      raise paths.WriteError(f"The export to {out_dir} could not be written (staged in "
                             f"{staging}): {type(e).__name__}: {e}. {out_dir} was left as it "
                             "was.") from e
    report = {"out_dir": out_dir, "format": fmt,
              "architecture": hf_mapping.MLM_ARCHITECTURE[fmt],
              "num_parameters": int(sum(v.size for v in tensors.values())),
              "files": sorted(os.listdir(staging))}
    if verify:
      report.update(verify_export(params, cfg, staging, name=out_dir))
    os.makedirs(out_dir, exist_ok=True)
    # The mode of a file written with open() (the config), i.e. what the umask allows, for
    # every file: safetensors writes 0600. (Reading the umask itself means setting it.)
    mode = os.stat(os.path.join(staging, "config.json")).st_mode & 0o777
    for name in report["files"]:  # Same file system: each file is replaced atomically.
      os.chmod(os.path.join(staging, name), mode)
      os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    _remove_stale_model_files(out_dir, report["files"])
  return report  # Printed by convert_checkpoint.py; eval_lama's temporary export says nothing.


def _verification_inputs(cfg: MLMConfig, out_dir: str, seed: int = 0):
  """Right-padded (ids, token types) batches: real sentences (with a tokenizer) and random ids."""
  # Both formats hold max_seq_len tokens (see hf_mapping._position_offset).
  max_len = min(cfg.max_seq_len, 64)
  rng = np.random.default_rng(seed)
  batches = []
  if any(os.path.exists(os.path.join(out_dir, f)) for f in ("tokenizer.json", "vocab.txt")):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    enc = tok(list(_SENTENCES), padding=True, truncation=True, max_length=max_len,
              return_tensors="np")
    ids = enc["input_ids"].astype(np.int32)  # (B, L)
    if tok.mask_token_id is not None:  # Mask every fifth real token, as a fill-mask query would.
      real = (ids != cfg.pad_id) & (np.arange(ids.shape[1]) % 5 == 2)
      ids = np.where(real, tok.mask_token_id, ids).astype(np.int32)
    batches.append((ids, np.zeros_like(ids)))
  length = min(max_len, 24)
  ids = rng.integers(0, cfg.vocab_size - 1, (4, length))
  ids = np.where(ids >= cfg.pad_id, ids + 1, ids)  # Never the pad id inside a sequence.
  lengths = np.array([length, length - 3, length // 2, 2])
  ids = np.where(np.arange(length) < lengths[:, None], ids, cfg.pad_id).astype(np.int32)
  types = (rng.integers(0, cfg.type_vocab_size, ids.shape) * (ids != cfg.pad_id)).astype(np.int32)
  batches.append((ids, types))
  return batches


def verify_export(params, cfg: MLMConfig, out_dir: str, *, seed: int = 0,
                  name: str | None = None) -> dict:
  """Compares our logits with `AutoModelForMaskedLM.from_pretrained(out_dir)` in float32.

  Returns {"max_abs_diff", "top1_agree", "positions", "near_ties"} over all non-padding
  positions; raises `ExportMismatchError` if the difference exceeds MAX_ABS_DIFF, or
  ROUNDING_FACTOR x transformers' float32 rounding (against float64) where that is more, or a top-1
  prediction differs (flips between logits within TIE_GAP are counted as near_ties, not errors).
  `name` stands for `out_dir` in the messages (the export's destination, when checking a staged
  copy).
  """
  import jax
  import torch
  import transformers

  from informask_jax.model import BertMLM

  params = hf_mapping.numpy_params(params)
  # Numerics of the check: float32 activations and true float32 matmuls (no TF32 on GPUs).
  cfg = dataclasses.replace(cfg, compute_dtype="float32", attention="xla", remat="none",
                            scan_layers=hf_mapping.is_scanned(params))
  model = BertMLM(cfg)
  hf_model, info = transformers.AutoModelForMaskedLM.from_pretrained(
      out_dir, dtype=torch.float32, output_loading_info=True)
  problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
  if problems or info.get("error_msgs"):
    raise ExportMismatchError(f"transformers did not load {name or out_dir} cleanly: "
                              f"{problems} {info.get('error_msgs')}")
  hf_model.eval()

  apply = jax.jit(lambda p, ids, types: model.apply({"params": p}, ids, types))
  inputs = _verification_inputs(cfg, out_dir, seed)

  def hf_logits(ids, types):
    with torch.no_grad():
      return hf_model(input_ids=torch.from_numpy(ids).long(),
                      attention_mask=torch.from_numpy(ids != cfg.pad_id).long(),
                      token_type_ids=torch.from_numpy(types).long()).logits.double().numpy()
  hf32 = [hf_logits(ids, types) for ids, types in inputs]
  hf_model.double()  # In place, after the float32 pass: no second copy of the weights.
  rounding = max(float(np.abs(a - hf_logits(ids, types)).max())
                 for a, (ids, types) in zip(hf32, inputs, strict=True))
  rounding = rounding if np.isfinite(rounding) else 0.0
  max_diff, agree, ties, total = 0.0, 0, 0, 0
  for (ids, types), theirs in zip(inputs, hf32, strict=True):
    with jax.default_matmul_precision("float32"):
      ours = np.asarray(apply(params, ids, types))  # (B, L, V)
    keep = ids != cfg.pad_id  # Padding positions are never read by anyone.
    ours, theirs = ours[keep], theirs[keep]  # (N, V)
    diff = np.abs(ours - theirs)
    # NaN logits on both sides would "agree" (max() skips NaN, argmax of NaN rows is 0).
    max_diff = max(max_diff, float(diff.max()) if np.isfinite(diff).all() else float("inf"))
    top_ours, top_theirs = ours.argmax(-1), theirs.argmax(-1)
    rows = np.arange(len(theirs))
    gap = theirs[rows, top_theirs] - theirs[rows, top_ours]  # >= 0; 0 where they agree.
    agree += int((top_ours == top_theirs).sum())
    ties += int(((top_ours != top_theirs) & (gap <= TIE_GAP)).sum())
    total += len(theirs)
  allowed = max(MAX_ABS_DIFF, ROUNDING_FACTOR * rounding)
  result = {"max_abs_diff": max_diff, "allowed_diff": allowed, "float32_rounding": rounding,
            "top1_agree": agree / total, "positions": total, "near_ties": ties}
  if max_diff > allowed or agree + ties < total:
    raise ExportMismatchError(
        f"Export of {name or out_dir} does not match our model: max |logit diff| = "
        f"{max_diff:.3g} (allowed {allowed:.3g}: {MAX_ABS_DIFF:g}, or {ROUNDING_FACTOR}x "
        f"transformers' own float32 rounding, {rounding:.3g}), top-1 agreement {agree}/{total} "
        f"({ties} near-ties).")
  return result


class ExportMismatchError(RuntimeError):
  """The exported Hugging Face model does not compute what ours computes."""


# --- Workdir entry points (convert_checkpoint.py) -----------------------------------------------
def _run_provenance(workdir: str, step: int, tokenizer_fingerprint: str, meta: dict) -> dict:
  """Where an export comes from: the run, its step, the masking that step was trained with, and
  the fingerprint of the tokenizer exported with it (checked by eval_lama.py). `meta`: the
  step's checkpoint meta. Its config, not WORKDIR/config.json, names the masking: a resume with
  another masking rewrites config.json, and an earlier step was not trained with that. An
  imported encoder's untrained head is recorded so that eval_lama.py refuses the export and an
  import of it carries the record on (else one export lost it, its full head looking trained)."""
  provenance = {"workdir": os.path.abspath(workdir), "checkpoint_step": int(step),
                "tokenizer_fingerprint": tokenizer_fingerprint}
  from informask_jax import checkpointing

  if meta.get(checkpointing.FRESH_HEAD_META):
    provenance[FRESH_HEAD_KEY] = True
  config = meta.get("config")  # None for an import: trained with no masking of ours.
  if not meta:  # An unreadable meta: the run's config.json is the next best record.
    try:
      with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    except (OSError, ValueError):
      pass
  masking = config.get("masking") if isinstance(config, dict) else None
  if isinstance(masking, dict):
    provenance["masking"] = {k: masking[k] for k in ("name", "budget", "mask_prob") if k in masking}
  return provenance


def _usable_tokenizer(directory: str, action: str, needs: str):
  """AutoTokenizer of `directory`; FileNotFoundError naming it when its files are missing or
  unreadable (a cut-off tokenizer.json: JSONDecodeError) or hold special tokens only."""
  import transformers

  from informask_jax import tokenization
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  except Exception as e:
    raise FileNotFoundError(f"No usable tokenizer in {directory} ({type(e).__name__}: {e}); "
                            f"{needs}.") from e
  missing = tokenization.missing_vocabulary(tokenizer, directory)
  if missing:
    raise FileNotFoundError(f"No usable tokenizer to {action}: {missing}")
  return tokenizer


def export_workdir(workdir: str, out_dir: str, *, step: int | None = None,
                   fmt: str | None = None, verify: bool = True, overwrite: bool = False,
                   untrained_head: str = "warn") -> dict:
  """Restores a training checkpoint on this host's CPU and exports it with its tokenizer.
  `untrained_head`: as checkpointing.restore_params takes it, for a bare encoder's import."""
  from informask_jax import checkpointing

  if fmt is not None:
    hf_mapping.check_format(fmt)
  if not os.path.exists(workdir):
    raise FileNotFoundError(f"Workdir {workdir} does not exist.")
  if not os.path.isdir(workdir):
    raise ValueError(f"Workdir {workdir} is not a directory.")
  relation = _nesting(out_dir, workdir)
  if relation:  # With --overwrite it would replace the run's config.json, mix in tokenizer files.
    raise ValueError(f"Export directory {out_dir} {relation} the workdir {workdir}: export to a "
                     "directory outside the training run.")
  _check_out_dir(out_dir, overwrite)  # Before the restore, which may take a while.
  # Not a training workdir at all: say so, rather than name the first file it lacks.
  checkpointing.require_checkpoint_dir(workdir)
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  if not os.path.isdir(tokenizer_dir):
    raise FileNotFoundError(f"No tokenizer in {tokenizer_dir}: the export needs the tokenizer the "
                            "model was trained with.")
  from informask_jax import tokenization
  # Before the restore, which may take a while: a damaged file is named at once.
  tokenizer = _usable_tokenizer(tokenizer_dir, "export",
                                "the export needs the tokenizer the model was trained with")
  fingerprint = tokenization.tokenizer_fingerprint(tokenizer)
  params, cfg, restored_step = checkpointing.restore_params(
      workdir, step, step_flag="--step", tokenizer_fingerprint=fingerprint,
      untrained_head=untrained_head)
  tokens = tokenization.vocab_rows(tokenizer)
  if tokens != cfg.vocab_size:
    raise ValueError(f"The tokenizer in {tokenizer_dir} has {tokens} token ids but the "
                     f"checkpoint's model has vocab_size {cfg.vocab_size}: they are not from the "
                     "same run.")
  meta = checkpointing.step_meta(workdir, restored_step)
  report = export_to_hf(params, cfg, out_dir, tokenizer_dir=tokenizer_dir, tokenizer=tokenizer,
                        fmt=fmt, verify=verify, overwrite=overwrite,
                        provenance=_run_provenance(workdir, restored_step, fingerprint, meta),
                        max_length=checkpointing.trained_length(
                            cfg, meta, tokenizer.model_max_length))
  return {"step": restored_step, **report}


def import_to_workdir(dir_or_name: str, workdir: str, *, scan_layers: bool = False,
                      head_seed: int = 0) -> dict:
  """Writes a Hugging Face BERT/RoBERTa as a step-0 checkpoint for `--config.init_from`."""
  from informask_jax import checkpointing, tokenization

  if os.path.isdir(dir_or_name) and _nesting(workdir, dir_or_name) == "is":
    raise ValueError(f"The new workdir {workdir} is the Hugging Face directory being imported: "
                     "choose another --out.")
  if is_hf_model_dir(workdir):  # eval_lama and init_from would read the import, not the model.
    raise FileExistsError(f"{workdir} holds a Hugging Face model (config.json and weights); "
                          "choose an empty --out for the imported run.")
  owner = checkpointing.run_above(workdir)
  if owner is not None:  # As train.py refuses it: a numbered --out became a damaged step of
    # that run, which its resume and export then stopped at (or its rotation deleted).
    raise FileExistsError(f"--out {workdir} is (inside) the checkpoints folder of the run in "
                          f"{owner}: choose a folder outside it for the imported run.")
  # A run that never finished a checkpoint: its config.json and metrics stayed beside the
  # import's step 0 (an export then described the old run's masking), its tokenizer replaced.
  traces = [n for n in ("config.json", "metrics.jsonl", "tensorboard")
            if os.path.exists(os.path.join(workdir, n))]
  if traces:
    raise FileExistsError(f"{workdir} holds a training run's {', '.join(traces)}: an import "
                          "there would mix with it. Choose an empty --out.")
  paths.check_writable_dir(workdir, "Workdir")
  existing = checkpointing.checkpoint_dir(workdir)
  checkpointing.check_path_usable(existing, f"--out {workdir}")
  if checkpointing.finalized_steps(workdir):  # Checked again by the save; fail early.
    raise FileExistsError(f"{existing} already holds checkpoints; choose an empty workdir.")
  model_dir = _resolve(dir_or_name, "--from-hf")
  # An unsupported model fails first, whatever else is missing. Read once: load_hf_as_flax would
  # resolve and parse config.json again.
  hf_config = _read_hf_config(model_dir)
  # An import of the special tokens alone would fail in train.py, named elsewhere.
  tokenizer = _usable_tokenizer(model_dir, "import", "the workdir needs the model's tokenizer")
  state_dict = _read_state_dict(model_dir)
  if any(name.split(".")[-3:-1] == ["pooler", "dense"] for name in state_dict):
    # Said, not silent: a classifier fine-tuned on an export of this run starts the pooler
    # transformers initialises afresh, not the one this model was trained with (BERT's NSP).
    logging.warning("%s has a pooler (pooler.dense), which is not imported: the model trained "
                    "here has none, so its exports get a freshly initialised one, as a "
                    "BertForMaskedLM save does.", dir_or_name)
  convert = functools.partial(hf_mapping.from_hf_state_dict, state_dict, hf_config,
                              scan_layers=scan_layers, head_seed=head_seed,
                              config_name=os.path.join(model_dir, "config.json"))
  try:  # A bare encoder's head is made fresh, and the checkpoint says so (eval_lama refuses it).
    (params, cfg), fresh_head = convert(require_head=True), False
  except hf_mapping.NoMLMHead:
    (params, cfg), fresh_head = convert(), True
  if not fresh_head and (read_provenance(model_dir) or {}).get(FRESH_HEAD_KEY):
    # Our export of such an import: its head is the fresh one, still untrained.
    logging.warning("%s is an export of an imported encoder whose masked-LM head was never "
                    "trained (its config.json says so); the import records it too: --config."
                    "init_from trains it, eval_lama.py refuses it.", model_dir)
    fresh_head = True
  tokens = tokenization.vocab_rows(tokenizer)
  if tokens != cfg.vocab_size:  # train.py and the export take one embedding row per token id.
    raise ValueError(f"The tokenizer in {model_dir} has {tokens} token ids but the model's "
                     f"embedding has {cfg.vocab_size} rows: save the model's own tokenizer "
                     "there, or resize the embedding to this one (model.resize_token_embeddings("
                     "len(tokenizer)); model.save_pretrained(DIR)) and import DIR.")
  if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != cfg.pad_id:
    # A RoBERTa's positions start after its config's pad_token_id; here, after the tokenizer's
    # padding id (the one padding is made of), so the two must agree for the positions to.
    roberta = (" A RoBERTa model whose positions start after another id than its tokenizer's "
               "padding (InformBERT's release: pad_token_id 1, [PAD] = 0) cannot be imported: "
               "its positions would shift by one." if cfg.flavour == "roberta" else "")
    raise ValueError(f"Tokenizer pad id {tokenizer.pad_token_id} differs from the config's "
                     f"pad_token_id {cfg.pad_id} in {model_dir}.{roberta}")
  old_tokenizer = os.path.join(workdir, "tokenizer")  # After every refusal: replaced now.
  if os.path.isdir(old_tokenizer) and os.listdir(old_tokenizer):  # A failed import's: retried.
    logging.warning("%s already holds tokenizer files (an import that failed?); the model's "
                    "tokenizer replaces them.", old_tokenizer)
  checkpointing.save_initial_checkpoint(workdir, params, cfg, tokenizer,
                                        fresh_mlm_head=fresh_head)
  return {"workdir": workdir, "config": dataclasses.asdict(cfg)}
