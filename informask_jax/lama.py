"""LAMA factual-recall probe (Petroni et al., EMNLP 2019) for our masked language models.

Reads a directory laid out as LAMA's `data.zip`, turns each fact into a query with one mask,
runs a model (PyTorch through Hugging Face, or our jitted Flax `BertMLM`) and reports P@1, P@10
and MRR per relation and per source. Two protocols:

`lama` -- the paper's, as its released code computes it:
  * a fact is kept when its object is one token of the model's vocabulary (and, given a common
    vocabulary, one of its words; the ranking is then restricted to those words, as LAMA does);
  * T-REx and Google-RE queries are the relation template with the subject at [X] and the mask
    at [Y], each (subject, object) pair asked once, Google-RE facts that most annotators rejected
    left out; ConceptNet and SQuAD (and, on request, T-REx / Google-RE) use their first masked
    sentence, left out above 100 words; a sentence with several [MASK] is scored at the first;
  * the gold token's rank among all (or the common) tokens gives P@1, P@10 and MRR; a source's
    score is the mean over its relations. MRR uses the exact rank, where LAMA's code gives 0
    beyond its top 1000 (later 5000) predictions: a difference below 0.001 per fact.

`informask` -- the evaluation of the InforMask repository, kept with its quirks so that numbers
can be compared with the ones it published:
  * the first evidence's masked sentence for T-REx, `masked_sentences[0]` elsewhere; the object's
    surface form lower-cased, commas separating alternatives; no filtering of objects;
  * the 30 most likely tokens, those in the word list (`common_vocab`) or among the gold
    alternatives kept in order; reciprocal rank of the first gold one, 0 when there is none;
  * sentences without [MASK] or over 500 tokens are left out; sentences with several [MASK]
    count as misses (the original's fill-mask call returns nested lists for them, which its
    filter drops), reported under `scored_as_miss`.

Everything that cannot be asked (bad JSON, missing fields, masks, multi-token objects, unknown
relations) is skipped and counted by reason; nothing in the data stops a run, unless no fact at
all is left to ask (then the error says why).
"""

import collections
import csv
import dataclasses
import functools
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from informask_jax import paths

log = logging.getLogger(__name__)

SOURCES = ("Google_RE", "TREx", "ConceptNet", "Squad")
PROTOCOLS = ("lama", "informask")
BACKENDS = ("torch", "flax")

# LAMA ships the Google-RE templates in its code rather than in data.zip.
GOOGLE_RE_TEMPLATES = {
    "date_of_birth": "[X] (born [Y]).",
    "place_of_birth": "[X] was born in [Y] .",
    "place_of_death": "[X] died in [Y] .",
}
LAMA_MASK = "[MASK]"  # The mask as written in the data, whatever the model's mask token is.
SUBJECT_SLOT, OBJECT_SLOT = "[X]", "[Y]"
MAX_SENTENCE_WORDS = 100  # LAMA's max_sentence_length for masked-sentence queries.
INFORMASK_TOP_K = 30  # Predictions the InforMask script looks at.
INFORMASK_MAX_TOKENS = 500  # Longer sentences (in tokens, no specials) it leaves out.


# --- Data layout -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RelationFile:
  """One file of facts: a T-REx relation, a Google-RE relation, or a whole source."""

  source: str  # One of SOURCES.
  name: str  # "P19", "place_of_birth", "test".
  path: pathlib.Path
  template: str | None = None  # "[X] was born in [Y] ." for T-REx / Google-RE; None if unknown.


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _valid_template(template: Any) -> bool:
  return (isinstance(template, str) and SUBJECT_SLOT in template
          and template.count(OBJECT_SLOT) == 1)


def read_relation_templates(path: pathlib.Path) -> dict[str, str]:
  """`relations.jsonl` -> {relation id: template}; unreadable or template-less lines are logged."""
  templates, bad = {}, 0
  for record in read_records(path):
    if record is None or not isinstance(record.get("relation"), str):
      bad += 1
    elif not _valid_template(record.get("template")):
      bad += 1
      log.warning("%s: relation %s has no usable template (needs %s and one %s): %r", path,
                  record["relation"], SUBJECT_SLOT, OBJECT_SLOT, record.get("template"))
    else:
      templates[record["relation"]] = record["template"]
  if bad:
    log.warning("%s: %d line(s) without a usable relation and template were ignored.", path, bad)
  return templates


def discover(data_dir: str | os.PathLike) -> tuple[list[RelationFile], list[str]]:
  """Relation files under `data_dir` (LAMA's data.zip layout) and the sources that are absent.

  Accepts the folder that holds `TREx/`, `Google_RE/`, ... or the one above it holding `data/`.
  """
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"--data_dir {str(data_dir)!r} is not a directory. Point it at the "
                            "unzipped LAMA data.zip (the folder holding TREx/, Google_RE/, ...).")
  if not any((root / s).is_dir() for s in SOURCES) and (root / "data").is_dir():
    root = root / "data"  # data.zip unzips into data/.
  relations, missing = [], []
  for source in SOURCES:
    folder = root / source
    files = sorted(folder.glob("*.jsonl"), key=lambda p: _natural_key(p.name))
    if source == "TREx":
      # relations.jsonl sits beside TREx/ in data.zip; also accept it inside.
      rel_path = next((p for p in (root / "relations.jsonl", folder / "relations.jsonl")
                       if p.is_file()), None)
      templates = read_relation_templates(rel_path) if rel_path else {}
      files = [p for p in files if p.name != "relations.jsonl"]
      if files and rel_path is None:
        log.warning("No relations.jsonl beside %s: T-REx template queries cannot be built.",
                    folder)
      relations += [RelationFile(source, p.stem, p, templates.get(p.stem)) for p in files]
    elif source == "Google_RE":
      for p in files:
        name = p.stem.removesuffix("_test")
        relations.append(RelationFile(source, name, p, GOOGLE_RE_TEMPLATES.get(name)))
    else:
      relations += [RelationFile(source, p.stem, p) for p in files]
    if not files:
      missing.append(source)
  if not relations:
    raise FileNotFoundError(
        f"--data_dir {str(data_dir)!r} holds none of LAMA's sources: expected "
        "Google_RE/*_test.jsonl, TREx/P*.jsonl (with relations.jsonl beside TREx/), "
        "ConceptNet/test.jsonl or Squad/test.jsonl.")
  return relations, missing


def read_records(path: pathlib.Path, limit: int = 0) -> Iterator[dict | None]:
  """JSON objects of a .jsonl file, None for each line that is not one; blank lines ignored."""
  count = 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if not line.strip():
        continue
      if limit and count >= limit:
        return
      count += 1
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        yield None
        continue
      yield record if isinstance(record, dict) else None


# --- Tokens and words --------------------------------------------------------------------------


class WordTable:
  """What the probe needs from a tokenizer: single-token objects, token strings, encoding."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    if tokenizer.mask_token is None or tokenizer.pad_token_id is None:
      raise ValueError(f"Tokenizer {type(tokenizer).__name__} has no mask or pad token; a masked "
                       "language model's tokenizer is needed.")
    self.mask_token = tokenizer.mask_token
    self.mask_id = tokenizer.mask_token_id
    self.pad_id = tokenizer.pad_token_id
    # Byte-level BPE (RoBERTa) spells a word after a space differently; LAMA's objects follow a
    # space in the templates, so their token is the spaced form.
    self.space_prefix = tokenizer.tokenize(" a") != tokenizer.tokenize("a")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    self._normalize = normalizer.normalize_str if normalizer is not None else (lambda s: s)
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    k = next(i for i in range(len(full)) if full[i:i + len(probe)] == probe)
    self.prefix, self.suffix = full[:k], full[k + len(probe):]  # [CLS] / [SEP] and the like.
    self._token_ids: dict[str, int | None] = {}
    self._strings: dict[int, str] = {}

  def single_token_id(self, word: str) -> int | None:
    """The token that spells `word` by itself (after the tokenizer's normalisation), or None.

    As LAMA: the word must tokenize to one piece that decodes back to it, which rules out
    [UNK] and words the vocabulary only has in another case.
    """
    if word not in self._token_ids:
      text = " " + word.strip() if self.space_prefix else word.strip()
      ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
      found = None
      if len(ids) == 1:
        decoded = self.tokenizer.decode(ids).strip()
        if decoded and decoded == self._normalize(word.strip()).strip():
          found = ids[0]
      self._token_ids[word] = found
    return self._token_ids[word]

  def token_string(self, token_id: int) -> str:
    """A prediction as the InforMask script compares it: decoded, spaces removed, lower-cased."""
    if token_id not in self._strings:
      self._strings[token_id] = self.tokenizer.decode([token_id]).replace(" ", "").lower()
    return self._strings[token_id]

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens, for many texts at once."""
    if not texts:
      return []
    return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def read_word_list(path: str | os.PathLike) -> list[str]:
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"--common_vocab {str(path)!r}: no such file (one word per line, "
                            "e.g. LAMA's common_vocab_cased.txt).")
  expects = "a UTF-8 text file, one word per line"
  try:
    text = p.read_text(encoding="utf-8-sig")  # A byte-order mark is tolerated.
  except UnicodeDecodeError as e:
    raise ValueError(f"--common_vocab {str(path)!r} is not UTF-8 (byte {e.object[e.start]:#04x} "
                     f"at offset {e.start}; UTF-16?): expects {expects}.") from None
  if "\x00" in text:  # UTF-16 without a byte-order mark can decode as UTF-8 with NULs.
    raise ValueError(f"--common_vocab {str(path)!r} holds NUL characters (UTF-16?): expects "
                     f"{expects}.")
  words = [w.strip() for w in text.replace("\r", "\n").split("\n") if w.strip()]
  if not words:
    raise ValueError(f"--common_vocab {str(path)!r} is empty: expects {expects} (every fact "
                     "would be skipped).")
  return words


# --- Queries -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Query:
  relation: int  # Index into the evaluated relation list.
  text: str  # The cloze, with the tokenizer's mask token.
  gold_id: int = -1  # lama: the object's token.
  gold_words: tuple[str, ...] = ()  # informask: lower-cased surface alternatives.
  miss: bool = False  # informask: scored as a miss without running the model.


@dataclasses.dataclass
class RelationScore:
  """Sums for one relation; metrics are divided out at the end."""

  source: str
  name: str
  facts: int = 0
  hits1: int = 0
  hits10: int = 0
  rr: float = 0.0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  scored_as_miss: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, rank: int | None):
    """Counts one scored fact; `rank` is 1-based, None when the gold is not found."""
    self.facts += 1
    if rank is not None:
      self.hits1 += rank == 1
      self.hits10 += rank <= 10
      self.rr += 1.0 / rank

  def as_dict(self) -> dict:
    n = self.facts
    return {"P@1": self.hits1 / n if n else None, "P@10": self.hits10 / n if n else None,
            "MRR": self.rr / n if n else None, "facts": n, "skipped": dict(sorted(
                self.skipped.items())), "scored_as_miss": dict(sorted(
                    self.scored_as_miss.items()))}


def _first_masked_sentence(record: dict, source: str) -> tuple[str | None, str | None]:
  """(sentence, surface form of the object) as the data gives them; None where absent."""
  if source == "TREx":
    evidences = record.get("evidences")
    first = evidences[0] if isinstance(evidences, list) and evidences else None
    if not isinstance(first, dict):
      return None, None
    sentence, surface = first.get("masked_sentence"), first.get("obj_surface")
  else:
    sentences = record.get("masked_sentences")
    sentence = sentences[0] if isinstance(sentences, list) and sentences else None
    surface = record.get("obj_label")
  return (sentence if isinstance(sentence, str) else None,
          surface if isinstance(surface, str) else None)


def _rejected_by_annotators(record: dict) -> bool:
  """Google-RE: LAMA leaves out facts whose "no" judgments outnumber the "yes" ones."""
  judgments = record.get("judgments")
  if not isinstance(judgments, list):
    return False
  yes = sum(1 for j in judgments if isinstance(j, dict) and j.get("judgment") == "yes")
  return len(judgments) - yes > yes


def lama_queries(index: int, rel: RelationFile, records: Iterable[dict | None], words: WordTable,
                 common: set[int] | None, use_masked_sentences: bool,
                 score: RelationScore) -> list[Query]:
  """Queries of one relation under the `lama` protocol; skips are counted into `score`."""
  templated = rel.source in ("TREx", "Google_RE") and not use_masked_sentences
  queries, seen = [], set()
  for record in records:
    if record is None:
      score.skipped["malformed_json"] += 1
      continue
    if templated and rel.template is None:
      score.skipped["unknown_relation"] += 1
      continue
    obj = record.get("obj_label")
    if not isinstance(obj, str) or not obj.strip():
      score.skipped["missing_field"] += 1
      continue
    if templated:
      sub = record.get("sub_label")
      if not isinstance(sub, str) or not sub.strip():
        score.skipped["missing_field"] += 1
        continue
      text = rel.template.replace(SUBJECT_SLOT, sub.strip()).replace(OBJECT_SLOT,
                                                                     words.mask_token)
    else:
      sentence, _ = _first_masked_sentence(record, rel.source)
      if sentence is None:
        score.skipped["missing_field"] += 1
        continue
      if len(sentence.split()) > MAX_SENTENCE_WORDS:
        score.skipped["too_long"] += 1
        continue
      if LAMA_MASK not in sentence:
        score.skipped["no_mask"] += 1
        continue
      text = sentence.replace(LAMA_MASK, words.mask_token)  # Several: the first is scored.
    gold = words.single_token_id(obj)
    if common is not None and gold not in common:
      score.skipped["object_not_in_common_vocab"] += 1
      continue
    if gold is None:
      score.skipped["object_not_single_token"] += 1
      continue
    if _rejected_by_annotators(record):
      score.skipped["negative_judgments"] += 1
      continue
    if templated:
      key = (sub.strip(), obj)
      if key in seen:
        score.skipped["duplicate_fact"] += 1
        continue
      seen.add(key)
    queries.append(Query(index, text, gold_id=gold))
  return queries


def informask_queries(index: int, rel: RelationFile, records: Iterable[dict | None],
                      words: WordTable, score: RelationScore) -> list[Query]:
  """Queries of one relation under the `informask` protocol; skips are counted into `score`."""
  queries = []
  for record in records:
    if record is None:
      score.skipped["malformed_json"] += 1
      continue
    sentence, surface = _first_masked_sentence(record, rel.source)
    if sentence is None or surface is None:
      score.skipped["missing_field"] += 1
      continue
    if LAMA_MASK not in sentence:
      score.skipped["no_mask"] += 1
      continue
    gold = tuple(w for w in (x.strip() for x in surface.lower().split(",")) if w)
    queries.append(Query(index, sentence.replace(LAMA_MASK, words.mask_token), gold_words=gold,
                         miss=sentence.count(LAMA_MASK) > 1))
  return queries


@dataclasses.dataclass
class Encoded:
  query: Query
  ids: list[int]  # With special tokens, at most the model's length.
  position: int  # Of the mask in `ids`.
  truncated: bool


def encode_queries(queries: Sequence[Query], words: WordTable, max_len: int,
                   scores: Sequence[RelationScore], max_tokens: int | None = None,
                   first_mask: bool = False) -> list[Encoded]:
  """Tokenizes queries; keeps a window of `max_len` tokens around the mask for long ones.

  `max_tokens` (informask) leaves out sentences longer than that, counted as `too_long`.
  `first_mask` (lama): a query with several masks is scored at its first, as LAMA's code does;
  otherwise it is skipped (`several_masks`).
  """
  budget = max_len - len(words.prefix) - len(words.suffix)
  if budget < 1:
    raise ValueError(f"Model length {max_len} leaves no room between its special tokens.")
  out = []
  for query, ids in zip(queries, words.encode([q.text for q in queries]), strict=True):
    score = scores[query.relation]
    if max_tokens is not None and len(ids) > max_tokens:
      score.skipped["too_long"] += 1
      continue
    if query.miss:
      out.append(Encoded(query, [], -1, False))
      continue
    positions = [i for i, t in enumerate(ids) if t == words.mask_id]
    if not positions or (len(positions) > 1 and not first_mask):
      score.skipped["no_mask" if not positions else "several_masks"] += 1
      continue
    m, start = positions[0], 0
    if len(ids) > budget:  # Centre the window on the mask, clipped to the sentence.
      start = min(max(m - budget // 2, 0), len(ids) - budget)
    window = ids[start:start + budget]
    out.append(Encoded(query, words.prefix + window + words.suffix,
                       len(words.prefix) + m - start, len(window) < len(ids)))
  return out


# --- Scoring -----------------------------------------------------------------------------------


def lama_ranks(logits: np.ndarray, gold_ids: np.ndarray, subset: np.ndarray | None) -> np.ndarray:
  """1-based rank of each gold token among all tokens, or among `subset` (sorted token ids).

  logits (B, V), gold_ids (B,) -> (B,). Tokens tied with the gold token rank before it, so a
  collapsed model (equal logits everywhere) scores nothing rather than everything.
  """
  gold = logits[np.arange(len(gold_ids)), gold_ids]  # (B,)
  candidates = logits if subset is None else logits[:, subset]  # (B, V) or (B, S)
  # `>=` counts the gold token itself too (it is always among the candidates): rank >= 1.
  return (candidates >= gold[:, None]).sum(axis=1)


def informask_ranks(logits: np.ndarray, queries: Sequence[Query], words: WordTable,
                    word_list: set[str] | None) -> list[int | None]:
  """Rank of the first gold alternative among the filtered top 30, None when absent.

  logits (B, V). Without a word list every prediction is kept.
  """
  k = min(INFORMASK_TOP_K, logits.shape[1])
  top = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (B, k), unordered
  order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
  top = np.take_along_axis(top, order, axis=1)  # (B, k), best first
  ranks = []
  for query, row in zip(queries, top, strict=True):
    kept = [s for s in map(words.token_string, row.tolist())
            if word_list is None or s in word_list or s in query.gold_words]
    ranks.append(next((i + 1 for i, s in enumerate(kept) if s in query.gold_words), None))
  return ranks


# --- Model backends ----------------------------------------------------------------------------


def is_workdir(path: str | os.PathLike) -> bool:
  """A training workdir: checkpoints/ or a config.json next to a tokenizer/ folder."""
  p = pathlib.Path(path)
  return p.is_dir() and ((p / "checkpoints").is_dir()
                         or ((p / "config.json").is_file() and (p / "tokenizer").is_dir()))


def check_model_path(model: str) -> None:
  """FileNotFoundError for a --model that is meant as a local path but does not exist.

  Without this, such a path is taken for a hub name and the hub is retried for a minute when
  offline. A hub name has one '/' and does not start at a local directory.
  """
  if os.path.exists(os.path.expanduser(model)):
    return
  first = model.split("/", 1)[0]
  local = (os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
           or model.endswith("/") or ("/" in model and os.path.isdir(first)))
  if local:
    raise FileNotFoundError(f"--model {model!r}: no such file or directory.")


def _neither_model_nor_workdir(model: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"--model {model!r} holds neither a model (config.json + weights, as written by "
      "save_pretrained or the export) nor a training workdir (checkpoints/ + tokenizer/).")


def check_model(model: str, step: int | None = None) -> None:
  """Refuses, before anything is loaded, a --model (and --step) that cannot be evaluated.

  A missing local path; an empty directory; a training workdir (checkpoints/, or tokenizer/ with
  config.json or alone) without a finished checkpoint; --step given for anything but a workdir
  (an exported directory or a hub name is one model: the step would be ignored).
  """
  check_model_path(model)
  path = pathlib.Path(model).expanduser()
  if path.name == "checkpoints" and not is_workdir(path):  # Only then import orbax.
    from informask_jax import checkpointing

    run = checkpointing.run_above(path)
    if run is not None:
      raise FileNotFoundError(f"--model {model!r} is a run's checkpoints folder; give the run's "
                              f"workdir, {str(run)!r}, which holds it.")
  if path.is_dir() and (is_workdir(path) or (path / "tokenizer").is_dir()):
    from informask_jax import checkpointing

    if not checkpointing.has_finalized_checkpoint(path):
      raise FileNotFoundError(
          f"--model {model!r} is a training workdir without a checkpoint: no finished checkpoint "
          f"in {str(checkpointing.checkpoint_dir(path))!r}. Train first (train.py --workdir) or "
          "pass an exported Hugging Face directory.")
    if step is not None:  # Now, not after the queries are built and the model is loading.
      steps = checkpointing.checkpoint_steps(path)
      if step not in steps:
        raise ValueError(f"--step {step}: no checkpoint at that step in --model {model!r}; "
                         f"its steps are {steps}.")
    return
  if path.is_dir() and not any(path.iterdir()):
    raise _neither_model_nor_workdir(model)
  if step is not None:
    kind = ("a hub name" if not path.exists() else "an exported Hugging Face directory"
            if (path / "config.json").is_file() else "not a training workdir (no checkpoints/)")
    raise ValueError(f"--step {step} picks a checkpoint of a training workdir, but --model "
                     f"{model!r} is {kind}, a single model: leave out --step.")


def load_tokenizer(model: str):
  """The tokenizer of an exported directory, a hub name or a training workdir."""
  from transformers import AutoTokenizer

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
  # Without its vocabulary files, transformers builds a tokenizer of the special tokens alone
  # from config.json: every object would be "not a single token" and every fact skipped.
  needed = sorted(set(getattr(tokenizer, "vocab_files_names", {}).values()))
  if os.path.isdir(where) and needed and not any(os.path.isfile(os.path.join(where, n))
                                                 for n in needed):
    raise FileNotFoundError(
        f"--model {model!r}: {where!r} has no tokenizer files ({type(tokenizer).__name__} needs "
        f"one of: {', '.join(needed)}). Save the tokenizer beside the model "
        "(tokenizer.save_pretrained(DIR)).")
  if set(tokenizer.get_vocab()) <= set(tokenizer.all_special_tokens):
    raise FileNotFoundError(
        f"--model {model!r}: the tokenizer loaded from {where!r} has no vocabulary, only its "
        f"{len(tokenizer)} special tokens (tokenizer files missing?).")
  return tokenizer


def _model_load_error(name_or_dir: str, e: Exception) -> FileNotFoundError:
  """One line for a model that cannot be read (missing or damaged files, e.g. safetensors'
  SafetensorError for a download cut short), naming --model."""
  first = (str(e).strip().splitlines() or [""])[0]
  return FileNotFoundError(f"--model {name_or_dir!r}: no masked LM could be loaded "
                           f"({type(e).__name__}: {first})")


class TorchBackend:
  """A Hugging Face masked LM in PyTorch; the vocabulary projection runs at the mask only."""

  def __init__(self, model, tokenizer, device: str | None = None):
    import torch

    self.torch = torch
    try:
      self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
      raise ValueError(f"--device {device!r}: {e}") from None
    if self.device.type == "cuda" and not torch.cuda.is_available():
      raise ValueError(f"--device {device!r}: this torch ({torch.__version__}) has no CUDA "
                       "device; use --device cpu.")
    if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
      raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s).")
    self.model = model.to(self.device).eval()
    config = model.config
    limit = config.max_position_embeddings
    if "roberta" in config.model_type or config.model_type == "camembert":
      limit -= config.pad_token_id + 1  # Positions count from pad_token_id + 1.
    if tokenizer.model_max_length < 1_000_000:
      limit = min(limit, tokenizer.model_max_length)
    self.max_len = int(limit)
    self.pad_id = tokenizer.pad_token_id
    self.head = next((getattr(model, n) for n in ("cls", "lm_head") if hasattr(model, n)), None)
    self.name = f"torch ({self.device})"

  @classmethod
  def from_pretrained(cls, name_or_dir: str, tokenizer, device: str | None = None):
    import torch
    from transformers import AutoModelForMaskedLM

    try:
      model = AutoModelForMaskedLM.from_pretrained(name_or_dir, dtype=torch.float32)
    except MemoryError:
      raise
    except Exception as e:  # Missing or damaged files (safetensors raises its own error type).
      raise _model_load_error(name_or_dir, e) from e
    return cls(model, tokenizer, device)

  def __call__(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """ids (B, L) padded with the pad id, positions (B,) of the masks -> logits (B, V)."""
    torch = self.torch
    with torch.inference_mode():
      ids_t = torch.as_tensor(ids, device=self.device)
      rows = torch.arange(len(positions), device=self.device)
      pos_t = torch.as_tensor(positions, device=self.device)
      mask = (ids_t != self.pad_id).long()
      if self.head is not None:  # BERT / RoBERTa: encoder, gather, then the head.
        hidden = self.model.base_model(input_ids=ids_t, attention_mask=mask)[0]  # (B, L, H)
        logits = self.head(hidden[rows, pos_t])  # (B, V)
      else:
        logits = self.model(input_ids=ids_t, attention_mask=mask).logits[rows, pos_t]
      return logits.float().cpu().numpy()


class FlaxBackend:
  """Our `BertMLM` under jit, in float32. Batches are padded to a fixed batch size and to a few
  length buckets so that a whole run compiles a handful of times."""

  def __init__(self, params, cfg, batch_size: int, tokenizer_pad_id: int):
    import flax.linen as nn
    import jax

    if tokenizer_pad_id != cfg.pad_id:
      raise ValueError(f"The tokenizer pads with id {tokenizer_pad_id} but the model's pad_id is "
                       f"{cfg.pad_id}; the attention mask would be wrong.")
    # Numbers must match the PyTorch backend: float32 activations and plain XLA attention.
    cfg = dataclasses.replace(cfg, compute_dtype="float32", attention="xla", remat="none")
    self.cfg, self.batch_size = cfg, batch_size
    self.max_len, self.pad_id = cfg.max_seq_len, cfg.pad_id
    self.params = jax.device_put(nn.meta.unbox(params))
    self._jax = jax
    self.name = f"flax ({jax.devices()[0].platform})"

  def _bucket(self, length: int) -> int:
    return min(max(16, 1 << (length - 1).bit_length()), self.max_len)

  def __call__(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    b, length = ids.shape
    rows = max(b, self.batch_size)
    padded = np.full((rows, self._bucket(length)), self.pad_id, np.int32)
    padded[:b, :length] = ids
    padded[b:] = padded[0]  # Filler rows copy a real one: no all-padding attention rows.
    pos = np.zeros((rows,), np.int32)
    pos[:b] = positions
    pos[b:] = positions[0]
    # True float32 matmuls: XLA would use TF32 on recent GPUs, PyTorch does not by default.
    with self._jax.default_matmul_precision("float32"):
      logits = _flax_logits_fn(self.cfg)(self.params, padded, pos)  # (rows, V)
    return np.asarray(logits)[:b]


@functools.cache
def _flax_logits_fn(cfg):
  """Jitted (params, ids (B, L), positions (B,)) -> logits (B, V), one per model config, so that
  runs on the same model share compilations."""
  import jax

  from informask_jax import model as model_lib

  module = model_lib.BertMLM(cfg)

  def logits_at(params, ids, positions):
    return module.apply({"params": params}, ids, masked_positions=positions[:, None])[:, 0]

  return jax.jit(logits_at)


def load_backend(model: str, backend: str, tokenizer, *, batch_size: int,
                 device: str | None = None, step: int | None = None):
  """The model behind `--model` as a callable (ids, positions) -> logits.

  A training workdir is restored through `checkpointing.restore_params`; the torch backend then
  goes through an export to a temporary Hugging Face directory.
  """
  if backend == "flax":
    if is_workdir(model):
      from informask_jax import checkpointing

      params, cfg, _ = checkpointing.restore_params(model, step=step)
    else:
      from informask_jax import export

      try:
        params, cfg = export.load_hf_as_flax(model)
      except MemoryError:
        raise
      except Exception as e:  # As the torch backend: missing or damaged files, one line.
        raise _model_load_error(model, e) from e
    return FlaxBackend(params, cfg, batch_size, tokenizer.pad_token_id)
  if is_workdir(model):
    from informask_jax import export

    tmp = tempfile.mkdtemp(prefix="lama_export_")
    try:
      # The export checks its own logits against ours, so both backends see the same model.
      export.export_workdir(model, tmp, step=step)
      return TorchBackend.from_pretrained(tmp, tokenizer, device)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)  # The weights are in memory by now.
  return TorchBackend.from_pretrained(model, tokenizer, device)


# --- Running and reporting ---------------------------------------------------------------------


def run_queries(runner, encoded: Sequence[Encoded], batch_size: int, rank_fn,
                progress: bool = True) -> list[int | None]:
  """Ranks of all encoded queries, in their order; batches group queries of similar length."""
  from tqdm.auto import tqdm

  ranks: list[int | None] = [None] * len(encoded)
  todo = sorted((i for i, e in enumerate(encoded) if not e.query.miss),
                key=lambda i: len(encoded[i].ids))
  with tqdm(total=len(todo), unit="fact", desc="LAMA", disable=not progress) as bar:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      length = max(len(encoded[i].ids) for i in chunk)
      ids = np.full((len(chunk), length), runner.pad_id, np.int32)  # (B, L)
      for row, i in enumerate(chunk):
        ids[row, :len(encoded[i].ids)] = encoded[i].ids
      positions = np.array([encoded[i].position for i in chunk], np.int32)  # (B,)
      logits = runner(ids, positions)  # (B, V)
      if not np.all(np.isfinite(logits)):  # NaN compares false: every fact would rank first.
        raise ValueError(f"--model {getattr(runner, 'name', 'the model')} gives non-finite "
                         "logits (a diverged checkpoint?): LAMA scores would be meaningless.")
      for i, rank in zip(chunk, rank_fn(logits, [encoded[i].query for i in chunk]), strict=True):
        ranks[i] = None if rank is None else int(rank)
      bar.update(len(chunk))
  return ranks


def summarize(scores: Sequence[RelationScore]) -> dict:
  """{SOURCE: {"P@1", "P@10", "MRR", "facts", "skipped", "scored_as_miss", "relations"}}.

  A source's P@k and MRR are means over its relations that have facts (LAMA's macro average).
  """
  summary = {}
  for source in SOURCES:
    rels = [s for s in scores if s.source == source]
    if not rels:
      continue
    entries = {r.name: r.as_dict() for r in rels}
    used = [e for e in entries.values() if e["facts"]]
    skipped, missed = collections.Counter(), collections.Counter()
    for r in rels:
      skipped.update(r.skipped)
      missed.update(r.scored_as_miss)
    summary[source] = {
        **{k: float(np.mean([e[k] for e in used])) if used else None
           for k in ("P@1", "P@10", "MRR")},
        "facts": sum(e["facts"] for e in used), "skipped": dict(sorted(skipped.items())),
        "scored_as_miss": dict(sorted(missed.items())), "relations": entries}
  return summary


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


def markdown_table(summary: dict, missing: Sequence[str] = ()) -> str:
  lines = ["| Source | Relations | Facts | Skipped | P@1 (%) | P@10 (%) | MRR |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for source, s in summary.items():
    mrr = "-" if s["MRR"] is None else f"{s['MRR']:.4f}"
    lines.append(f"| {source} | {len(s['relations'])} | {s['facts']} | "
                 f"{sum(s['skipped'].values())} | {_pct(s['P@1'])} | {_pct(s['P@10'])} | {mrr} |")
  lines += [f"| {source} | not in data_dir | | | | | |" for source in missing]
  return "\n".join(lines)


def _reasons(counter: dict) -> str:
  return ";".join(f"{k}={v}" for k, v in counter.items())


class OutputError(OSError):
  """The results could not be written to --out (after the run; the table was shown first)."""


def write_outputs(out_dir: str | os.PathLike, summary: dict, run_info: dict, table: str):
  """results.csv (a row per relation), summary.json, run.json (settings) and results.md."""
  out = pathlib.Path(out_dir).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["source", "relation", "facts", "skipped", "P@1", "P@10", "MRR",
                     "skipped_reasons", "scored_as_miss"])
    for source, s in summary.items():
      for name, r in s["relations"].items():
        writer.writerow([source, name, r["facts"], sum(r["skipped"].values()),
                         *("" if r[k] is None else repr(r[k]) for k in ("P@1", "P@10", "MRR")),
                         _reasons(r["skipped"]), _reasons(r["scored_as_miss"])])
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
  (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
  (out / "results.md").write_text(table + "\n", encoding="utf-8")


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


def evaluate(model: str, data_dir: str, *, protocol: str = "lama",
             common_vocab: str | None = None, batch_size: int = 64,
             out_dir: str | None = None, backend: str = "torch", device: str | None = None,
             use_masked_sentences: bool = False, step: int | None = None, limit: int = 0,
             progress: bool = True, on_table: Callable[[str], None] | None = None) -> Report:
  """Runs the LAMA probe on `model` over `data_dir`; writes to `out_dir` when given.

  model: an exported Hugging Face directory, a hub name or a training workdir.
  protocol: "lama" or "informask" (see the module docstring).
  common_vocab: word list; lama: facts and predictions restricted to it; informask: the list
    that filters the top 30.
  limit: read at most this many lines per file (0: all), for quick runs.
  on_table: called with the Markdown table before anything is written to `out_dir` (the CLI
    prints it), so that a failed write loses nothing.

  A run in which every fact is skipped is a ValueError that says why, not a table of "-".
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}.")
  if out_dir:  # Checked before the run, not after it.
    paths.check_writable_dir(os.path.expanduser(out_dir), "--out")  # As write_outputs.
  if backend not in BACKENDS:
    raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
  if batch_size < 1:
    raise ValueError(f"--batch_size must be positive, got {batch_size}.")
  if limit < 0:
    raise ValueError(f"--limit must be >= 0, got {limit}.")
  # The flags first: discover() logs about the data (relations.jsonl) before any error of theirs.
  word_list = read_word_list(common_vocab) if common_vocab else None
  check_model(model, step)
  relations, missing = discover(data_dir)
  for source in missing:
    log.info("LAMA source %s not found under %s: skipped.", source, data_dir)

  # Queries first (tokenizer only), so that data problems show before the model loads.
  words = WordTable(load_tokenizer(model))
  common_ids = None
  if word_list is not None and protocol == "lama":
    common_ids = {words.single_token_id(w) for w in word_list} - {None}
    log.info("Common vocabulary: %d of %d words are single tokens of the model.",
             len(common_ids), len(word_list))
    if not common_ids:
      raise ValueError(f"--common_vocab {common_vocab!r}: none of its {len(word_list)} words is "
                       f"a single token of the model's vocabulary ({len(words.tokenizer)} "
                       "tokens); every fact would be skipped.")
  scores = [RelationScore(r.source, r.name) for r in relations]
  queries = []
  for i, rel in enumerate(relations):
    records = read_records(rel.path, limit)
    if protocol == "lama":
      queries += lama_queries(i, rel, records, words, common_ids, use_masked_sentences, scores[i])
    else:
      queries += informask_queries(i, rel, records, words, scores[i])
  if not queries:  # Before the model loads.
    raise ValueError(_nothing_to_ask(scores, words, common_vocab))

  runner = load_backend(model, backend, words.tokenizer, batch_size=batch_size, device=device,
                        step=step)
  encoded = encode_queries(queries, words, runner.max_len, scores,
                           INFORMASK_MAX_TOKENS if protocol == "informask" else None,
                           first_mask=protocol == "lama")
  if not encoded:
    raise ValueError(_nothing_to_ask(scores, words, common_vocab))
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
      "model": str(model), "data_dir": str(data_dir), "protocol": protocol,
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
