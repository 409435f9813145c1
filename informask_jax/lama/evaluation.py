"""The probe's run: checks of the flags, queries, the model, ranks and scores, then the table
and the files written to `--out` (`evaluate`, which eval_lama.py calls)."""

import collections
import csv
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from informask_jax import paths
from informask_jax.lama.backends import BACKENDS, check_device, load_backend
from informask_jax.lama.data_files import discover, read_records
from informask_jax.lama.models import check_model, load_tokenizer, read_provenance
from informask_jax.lama.queries import (
    INFORMASK_MAX_TOKENS,
    encode_queries,
    informask_queries,
    lama_queries,
)
from informask_jax.lama.ranking import informask_ranks, lama_ranks, run_queries
from informask_jax.lama.scores import RelationScore, markdown_table, summarize
from informask_jax.lama.words import WordTable, read_word_list

log = logging.getLogger(__name__)

PROTOCOLS = ("lama", "informask")
RESULT_FILES = ("results.csv", "summary.json", "run.json", "results.md")
# The word list every number of the LAMA paper is restricted to (common_vocab_lowercased.txt
# beside it, for uncased models).
LAMA_COMMON_VOCAB_URL = "https://dl.fbaipublicfiles.com/LAMA/common_vocab_cased.txt"


def _reasons(counter: dict) -> str:
  return ";".join(f"{k}={v}" for k, v in counter.items())


class OutputError(OSError):
  """The results could not be written to --out (after the run; the table was shown first)."""


def write_outputs(out_dir: str | os.PathLike, summary: dict, run_info: dict, table: str):
  """results.csv (a row per relation), summary.json, run.json (settings) and results.md.

  All four are written to a staging folder inside `out_dir` first, then moved over the old ones:
  a write that fails (a full disk) leaves a previous run's four files as they were, not a mix of
  the two runs or a cut-off summary.json.
  """
  out = pathlib.Path(out_dir).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".lama-results.", dir=out))
  try:
    with open(staging / "results.csv", "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["source", "relation", "facts", "skipped", "P@1", "P@10", "MRR",
                       "skipped_reasons", "scored_as_miss"])
      for source, s in summary.items():
        for name, r in s["relations"].items():
          writer.writerow([source, name, r["facts"], sum(r["skipped"].values()),
                           *("" if r[k] is None else repr(r[k]) for k in ("P@1", "P@10", "MRR")),
                           _reasons(r["skipped"]), _reasons(r["scored_as_miss"])])
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (staging / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    (staging / "results.md").write_text(table + "\n", encoding="utf-8")
    for name in RESULT_FILES:  # Renames within one folder: they do not need free space.
      os.replace(staging / name, out / name)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _nothing_to_ask(scores: Sequence[RelationScore], words: WordTable,
                    common_vocab: str | None) -> str:
  """Why a run has no fact left to score: the skip reasons, most frequent first, and a hint."""
  reasons = collections.Counter()
  for s in scores:
    reasons.update(s.skipped)
  counts = ", ".join(f"{k}={v}" for k, v in reasons.most_common()) or "the files hold no facts"
  message = (f"Every fact was skipped, nothing to score ({sum(reasons.values())} in "
             f"{len(scores)} relation file(s): {counts}).")
  top = reasons.most_common(1)[0][0] if reasons else None
  if top == "object_not_single_token":
    message += (f" No fact's object is a single token of the model's vocabulary "
                f"({len(words.tokenizer)} tokens): is the tokenizer the model's own?")
  elif top == "object_not_in_common_vocab":
    message += f" No fact's object is a word of --common_vocab {common_vocab!r}."
  elif top == "malformed_json":
    message += " Are these LAMA's .jsonl files?"
  return message


@dataclasses.dataclass
class Report:
  summary: dict  # As written to summary.json.
  missing_sources: list[str]
  run_info: dict  # Settings and counts, as written to run.json.
  table: str  # Markdown.


def _informask_word_list_tokens(words: WordTable, word_list: Sequence[str],
                                common_vocab: str) -> set[int]:
  """The token ids whose predictions the informask protocol's word list keeps. None of them
  would keep only the gold among the top 30: any gold there would rank first."""
  strings = words.token_strings()
  listed = set(word_list)
  kept = {i for i, s in enumerate(strings) if s in listed}
  matched = len(listed & set(strings))
  if not kept:
    raise ValueError(
        f"--common_vocab {common_vocab!r}: none of its {len(listed)} words is a prediction as "
        "--protocol informask compares them (a token decoded, spaces removed, lower-cased; e.g. "
        f"{sorted(listed)[0]!r}): every prediction but the gold would be filtered out of the top "
        "30. Give one word per line, lower-cased (InforMask's vocab_merged.txt).")
  log.info("Word list: %d of its %d words are predictions the model can make (%d token ids).",
           matched, len(listed), len(kept))
  if matched < len(listed) / 2:
    log.warning("--common_vocab %r: only %d of its %d words match a token as --protocol "
                "informask compares predictions (decoded, lower-cased): is it the list for this "
                "tokenizer?", common_vocab, matched, len(listed))
  return kept


def _checkpoint_of(model: str, step: int | None) -> dict:
  """run.json's checkpoint fields: the step of a workdir, or what an export recorded."""
  if step is not None or not os.path.isdir(model):  # `model` is expanded by evaluate.
    return {"checkpoint_step": step}
  recorded = read_provenance(model)
  if recorded is None:  # Another model: no step to record.
    return {"checkpoint_step": None}
  return {"checkpoint_step": recorded.get("checkpoint_step"), "exported_from": recorded}


def evaluate(model: str, data_dir: str, *, protocol: str = "lama",
             common_vocab: str | None = None, batch_size: int = 64,
             out_dir: str | None = None, backend: str = "torch", device: str | None = None,
             use_masked_sentences: bool = False, step: int | None = None, limit: int = 0,
             progress: bool = True, on_table: Callable[[str], None] | None = None) -> Report:
  """Runs the LAMA probe on `model` over `data_dir`; writes to `out_dir` when given.

  model: an exported Hugging Face directory, a hub name or a training workdir.
  protocol: "lama" or "informask" (see the `informask_jax.lama` docstring).
  common_vocab: word list; lama: facts and predictions restricted to it; informask: the list
    that filters the top 30.
  limit: read at most this many lines per file (0: all), for quick runs.
  on_table: called with the Markdown table before anything is written to `out_dir` (the CLI
    prints it), so that a failed write loses nothing.

  A run in which every fact is skipped is a ValueError that says why, not a table of "-".
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}.")
  for flag, value in (("--common_vocab", common_vocab), ("--out", out_dir)):
    if value is not None and not str(value).strip():  # Not "no word list" / "no output".
      raise ValueError(f"{flag} is empty (an unset shell variable?): give a path, or leave the "
                       "flag out.")
  model = os.path.expanduser(model)  # --model=~/run: the shell leaves ~ after "=" as it is.
  if out_dir:  # Checked before the run, not after it.
    paths.check_writable_dir(os.path.expanduser(out_dir), "--out")  # As write_outputs.
  if backend not in BACKENDS:
    raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
  check_device(backend, device)  # Here too: before the data and the model are read.
  if use_masked_sentences and protocol != "lama":
    raise ValueError("--use_masked_sentences applies to --protocol lama only; --protocol "
                     "informask always asks the first masked sentence.")
  if batch_size < 1:
    raise ValueError(f"--batch_size must be positive, got {batch_size}.")
  if limit < 0:
    raise ValueError(f"--limit must be >= 0, got {limit}.")
  # The flags first: discover() logs about the data (relations.jsonl) before any error of theirs.
  word_list = read_word_list(common_vocab) if common_vocab else None
  step = check_model(model, step)
  if word_list is None:
    # Published numbers are never without one: LAMA's run_experiments.py restricts every
    # relation to common_vocab_cased.txt, InforMask's run_lama.py filters by vocab_merged.txt.
    log.warning("No --common_vocab: %s. Numbers comparable with the paper's need %s.",
                "facts and rankings span the model's whole vocabulary" if protocol == "lama"
                else "the top 30 predictions are not filtered by a word list",
                f"LAMA's common vocabulary ({LAMA_COMMON_VOCAB_URL})" if protocol == "lama"
                else "the InforMask repository's vocab_merged.txt")
  relations, missing = discover(data_dir,
                                templated=protocol == "lama" and not use_masked_sentences)
  for source in missing:
    log.info("LAMA source %s not found under %s: skipped.", source, data_dir)

  # Queries first (tokenizer only), so that data problems show before the model loads.
  words = WordTable(load_tokenizer(model))
  common_ids = listed = None
  if word_list is not None and protocol == "lama":
    listed = {words.normalized(w) for w in word_list}
    common_ids = {words.single_token_id(w) for w in word_list} - {None}
    log.info("Common vocabulary: %d of %d words are single tokens of the model.",
             len(common_ids), len(word_list))
    if not common_ids:
      raise ValueError(f"--common_vocab {common_vocab!r}: none of its {len(word_list)} words is "
                       f"a single token of the model's vocabulary ({len(words.tokenizer)} "
                       "tokens); every fact would be skipped.")
  if word_list is not None and protocol == "informask":
    common_ids = _informask_word_list_tokens(words, word_list, common_vocab)
  scores = [RelationScore(r.source, r.name) for r in relations]
  queries = []
  for i, rel in enumerate(relations):
    records = read_records(rel.path, limit)
    if protocol == "lama":
      queries += lama_queries(i, rel, records, words, common_ids, use_masked_sentences, scores[i],
                              listed)
    else:
      queries += informask_queries(i, rel, records, words, scores[i])
  if not queries:  # Before the model loads.
    raise ValueError(_nothing_to_ask(scores, words, common_vocab))

  runner = load_backend(model, backend, words.tokenizer, batch_size=batch_size, device=device,
                        step=step)
  from informask_jax import tokenization  # Lazily, as the model modules: it loads corpus readers.

  rows = tokenization.vocab_rows(words.tokenizer)  # Past the largest id, gaps included.
  if rows > runner.vocab_size:  # A gold id past the logits: an IndexError.
    size = len(words.tokenizer)
    raise ValueError(f"--model {model!r}: its tokenizer has {size} tokens"
                     f"{f' (ids up to {rows - 1}: its vocabulary has gaps)' if rows > size else ''}"
                     f" but the model predicts {runner.vocab_size} (tokens added to the tokenizer "
                     "without model.resize_token_embeddings?).")
  words.fit_token_types(runner.type_vocab_size)
  encoded = encode_queries(queries, words, runner.max_len, scores,
                           INFORMASK_MAX_TOKENS if protocol == "informask" else None,
                           first_mask=protocol == "lama")
  if not encoded:
    raise ValueError(_nothing_to_ask(scores, words, common_vocab))
  top_type = max((max(e.types) for e in encoded if e.types), default=0)
  # A sentence pair's segment B the model cannot embed; one of no token types (DeBERTa-v3's 0)
  # reads type 0, as a one-type model does.
  if top_type >= max(runner.type_vocab_size, 1):
    raise ValueError(f"--model {model!r} embeds {runner.type_vocab_size} token type(s) but its "
                     f"tokenizer gives a sentence pair's second sentence type {top_type}: "
                     "is the tokenizer the model's own?")
  if protocol == "lama":
    subset = None if common_ids is None else np.array(sorted(common_ids), np.int64)
    rank_fn = lambda logits, qs: lama_ranks(
        logits, np.array([q.gold_id for q in qs], np.int64), subset)
  else:
    vocab = None if word_list is None else set(word_list)
    rank_fn = lambda logits, qs: informask_ranks(logits, qs, words, vocab)
  ranks = run_queries(runner, encoded, batch_size, rank_fn, progress)
  for e, rank in zip(encoded, ranks, strict=True):
    score = scores[e.query.relation]
    if e.query.miss:
      score.scored_as_miss["several_masks"] += 1
    score.add(rank)

  summary = summarize(scores)
  table = markdown_table(summary, missing)
  run_info = {
      "model": str(model), "data_dir": str(data_dir),
      # An export says which run and step it holds (export.PROVENANCE_KEY in its config.json).
      **_checkpoint_of(model, step),
      "protocol": protocol,
      "backend": runner.name, "common_vocab": common_vocab,
      "common_vocab_words": None if word_list is None else len(word_list),
      "common_vocab_tokens": None if common_ids is None else len(common_ids),
      "use_masked_sentences": use_masked_sentences, "limit": limit, "max_len": runner.max_len,
      "queries_truncated": sum(e.truncated for e in encoded), "missing_sources": missing}
  if on_table is not None:
    on_table(table)
  if out_dir:
    try:
      write_outputs(out_dir, summary, run_info, table)
    except OSError as e:
      raise OutputError(f"--out {out_dir!r}: the results could not be written: {e}") from e
  return Report(summary, missing, run_info, table)
