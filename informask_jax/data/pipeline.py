"""The whole input pipeline for a config: corpus, tokenizer, tokenized and packed splits."""

import dataclasses
import hashlib
import json
import logging
import os
import time

import datasets
import numpy as np

from informask_jax import corpus as corpus_lib
from informask_jax import corpus_files, paths, tokenization
from informask_jax.data.batches import BatchIterator
from informask_jax.data.iterator_state import TooFewRows
from informask_jax.data.packing import check_packing, pack_sequences
from informask_jax.data.sentences import tokenize_corpus
from informask_jax.data.streaming import StreamingBatchIterator

log = logging.getLogger(__name__)

# A streaming corpus's validation rows come from the first this many validation documents.
STREAM_VALIDATION_DOCUMENTS = 5_000


@dataclasses.dataclass
class InputPipeline:
  """Everything the trainer, the maskers and the statistics need from the data."""
  tokenizer: object  # transformers.PreTrainedTokenizerFast
  special_ids: tokenization.SpecialIds
  continuation: np.ndarray  # bool[V]: WordPiece "##" pieces.
  train: dict | None  # Packed rows {"token_ids", "sentence_ids"}: int32[N, L]; None if streaming.
  validation: dict  # Packed validation rows, always in memory.
  tokenized_train: datasets.Dataset | None  # Per-document tokens; None if streaming.
  corpus_fingerprint: str
  tokenizer_fingerprint: str
  train_stream: datasets.IterableDataset | None = None  # Cleaned train texts of a stream.
  seq_len: int = 0
  packing: str = "full_sentences"

  @property
  def vocab_size(self) -> int:
    """Rows of the embedding and of every per-token table: past the largest id, which is
    len(tokenizer) - 1 unless the vocabulary has gaps."""
    return int(np.asarray(self.continuation).shape[0])

  def train_iterator(self, global_batch_size, *, seed, process_index=None, process_count=None):
    """A resumable iterator of this host's training batches (in memory or streaming)."""
    if self.train is not None:
      self._check_train_rows(global_batch_size)
      return BatchIterator(self.train, global_batch_size, seed=seed, process_index=process_index,
                           process_count=process_count, corpus=self.corpus_fingerprint)
    return StreamingBatchIterator(
        self.train_stream, self.tokenizer, self.seq_len, self.special_ids, self.packing,
        global_batch_size, seed=seed, process_index=process_index, process_count=process_count,
        corpus=self.corpus_fingerprint)

  def _check_train_rows(self, global_batch_size):
    """BatchIterator refuses fewer rows than one global batch, suggesting more documents or a
    smaller batch; when the validation split holds most rows, lowering its share is the fix."""
    rows, held_out = (len(split["token_ids"]) for split in (self.train, self.validation))
    if rows < global_batch_size and held_out > rows:
      raise TooFewRows(
          f"The data packs into {rows} training rows, fewer than one global batch of "
          f"{global_batch_size}, because the validation split holds {held_out} of the "
          f"{rows + held_out} rows: lower config.data.validation_fraction (e.g. to 0.02), use "
          "more documents (config.data.sources, config.data.max_documents) or a smaller "
          "config.train.batch_size.")


def max_sequence_length(model_config):
  """Longest sequence the model's position table admits."""
  positions = max_positions_rows(model_config)
  # RoBERTa's positions start after the padding index, so two are never used.
  return positions - 2 if model_config.get("flavour", "bert") == "roberta" else positions


def max_positions_rows(model_config) -> int:
  """Rows of the model's position table: config.model.max_positions, or its flavour's default."""
  # Lazy: importing model loads Flax (about 0.1 s on top of JAX), needed only from here.
  from informask_jax.model import default_max_positions

  positions = int(model_config.get("max_positions", -1))
  return positions if positions >= 0 else default_max_positions(model_config.get("flavour",
                                                                                 "bert"))


# Why a fraction of 0, which the statistics' Beam pipeline takes, fails here.
NONE_HELD_OUT = (": 0 holds out no document, and runs evaluate (and keep their best checkpoint) "
                  "on the held-out split; give a fraction in (0, 1), e.g. 0.02.")


def check_config(config):
  """Errors in the data settings, raised before any corpus is read."""
  data = config.data
  check_packing(data.packing)
  if data.seq_len < 8:
    raise ValueError(f"config.data.seq_len={data.seq_len} is too short: at least 8 (6 tokens "
                     "between [CLS] and [SEP], so that masking 15% of them picks any).")
  if "model" in config:
    limit = max_sequence_length(config.model)
    if data.seq_len > limit:
      # RoBERTa's table has rows it never uses: "the model's 127 positions" of a 129-row table
      # read as one row too few for a model whose padding id is 0, and two for Hugging Face's.
      rows = config.model.get("max_positions", -1)
      rows = f"{rows}" + (f": the flavour's {max_positions_rows(config.model)} rows" if rows < 0
                          else " rows")
      layout = (", less 2: flavour='roberta' numbers positions from after the padding id, 1 in "
                "Hugging Face's RoBERTa" if config.model.get("flavour") == "roberta" else "")
      raise ValueError(f"config.data.seq_len={data.seq_len} exceeds the {limit} tokens the "
                       f"model's position table takes (config.model.max_positions={rows}"
                       f"{layout}).")
  cache = paths.cache_dir(data.cache_dir)
  if os.path.exists(cache) and not os.path.isdir(cache):
    raise ValueError(f"config.data.cache_dir={data.cache_dir!r} is a file; it must be a "
                     "directory (created when missing).")
  paths.check_writable_dir(cache, "config.data.cache_dir")  # Else a traceback from a cache write.
  corpus_lib.check_validation_fraction(data.validation_fraction)
  for key, least in (("num_proc", 1), ("prefetch", 1)):
    value = data.get(key, least)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"config.data.{key}={value!r} must be an integer >= {least}.")
  corpus_lib.check_sources(data)
  if "tokenizer" in config:
    tokenization.check_name_or_path(config.tokenizer)
    if not config.tokenizer.get("name_or_path"):
      # A vocabulary is trained on the corpus: the trainer refuses a bad size only once the
      # corpus is read and cleaned (hours for the paper's). Here for every command that reads
      # the corpus (train.py, stats build).
      tokenization.check_vocab_size_to_train(config.tokenizer.vocab_size)


def _usable_cpus() -> int:
  # The CPUs this process may run on: a container's or a job scheduler's share, not the host's.
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _warn_num_proc_above_cpus(num_proc: int) -> None:
  cpus = _usable_cpus()
  if num_proc > cpus:  # Each worker holds a copy of the tokenizer and of its share of the rows.
    log.warning("config.data.num_proc=%d is more than the %d CPUs this process may use: the "
                "worker processes take turns on them, no faster than "
                "--config.data.num_proc=%d and with more memory.", num_proc, cpus, cpus)


def _tokenizer_ready(tokenizer, config, check_tokenizer) -> str:
  """Says which tokenizer the run uses, runs the caller's check of it; returns its fingerprint."""
  tok_fp = tokenization.tokenizer_fingerprint(tokenizer)
  log.info("Tokenizer: %d tokens (%s), fingerprint %s.", len(tokenizer),
           config.tokenizer.name_or_path or "trained", tok_fp)
  if check_tokenizer is not None:
    check_tokenizer(tok_fp, tokenizer)
  return tok_fp


def _packed_summary(name, packed, special_ids):
  tokens = packed["token_ids"]
  pad = float(np.mean(tokens == special_ids.pad)) if tokens.size else 0.0
  log.info("%s: %d rows of %d tokens, %.1f%% padding.", name, tokens.shape[0],
           tokens.shape[1] if tokens.ndim == 2 else 0, 100 * pad)


def _stream_validation_documents(corpus, data):
  """The first STREAM_VALIDATION_DOCUMENTS validation documents of a streaming corpus."""
  if data.validation_fraction > 0:  # Said: a small fraction reads far into the stream first.
    log.info("Streaming: reading the first %d validation documents (about %d documents of the "
             "stream at config.data.validation_fraction=%g).", STREAM_VALIDATION_DOCUMENTS,
             STREAM_VALIDATION_DOCUMENTS / data.validation_fraction, data.validation_fraction)
  docs = datasets.Dataset.from_dict(
      {"text": [ex["text"] for ex in corpus["validation"].take(STREAM_VALIDATION_DOCUMENTS)]})
  if len(docs):
    return docs
  if data.validation_fraction == 0:
    raise ValueError("The streaming corpus gave no validation document (config.data."
                     f"validation_fraction=0.0){NONE_HELD_OUT}")
  if next(iter(corpus["train"].take(1)), None) is None:
    raise ValueError("The corpus is empty: config.data.sources gave no document with text after "
                     f"cleaning ({', '.join(_source_names(data))}).")
  raise ValueError(f"The streaming corpus gave no validation document: none of its documents "
                   f"falls in the held-out config.data.validation_fraction="
                   f"{data.validation_fraction} (a small corpus); raise it, or read the corpus "
                   "in memory (streaming=False), which holds out at least one document.")


def _check_splits(corpus, data):
  """Refuses an in-memory corpus with an empty split, saying why: a validation_fraction of 0, or
  a single document (most often a .txt file of one document per line, read as one)."""
  total = len(corpus["train"]) + len(corpus["validation"])
  for name in ("train", "validation"):
    if len(corpus[name]):
      continue
    message = (f"The {name} split is empty (config.data.validation_fraction="
               f"{data.validation_fraction}, {total} document{'s' * (total != 1)} in all)")
    if name == "validation" and data.validation_fraction == 0:
      raise ValueError(message + NONE_HELD_OUT)
    message += (": documents are held out whole, so a corpus needs at least two different "
                "ones.")
    limit = int(data.get("max_documents", -1))
    if limit > 0:  # The cap may be what left too few: named first, before the files' format.
      message += (f" config.data.max_documents={limit} reads at most {limit} document"
                  f"{'s' * (limit != 1)}: raise it, or -1 for all.")
    txt = corpus_lib.txt_sources(data.sources)
    if txt:
      message += f" {'; '.join(txt)}: {corpus_files.TXT_FORMAT}."
    raise ValueError(message)


def _source_names(data):
  return [f"{s['kind']}:{s.get('name')}" for s in data.sources]  # A source may be a plain dict.


def _local_files(source, where):
  """The files behind a source that names local data, each (path within it, size): what a stream
  reads, without reading it. None for a hub data set."""
  name = os.path.expanduser(source.get("name") or "")
  if source["kind"] == "files":
    files = corpus_files.expand_files(name, where)
  elif source["kind"] == "hub" and os.path.isdir(name):
    files = []
    for root, folders, names in os.walk(name):
      folders[:] = [d for d in folders if not d.startswith(".")]  # .git, .cache: not the data.
      files += [os.path.join(root, f) for f in names if not f.startswith(".")]
  else:
    return None
  root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
  # Not the folder itself nor modification times: a corpus moved or copied stays the same one.
  return sorted((os.path.relpath(f, root), os.path.getsize(f)) for f in files)


def _stream_fingerprint(data):
  """The identity of a streaming corpus, which no content hash gives (that would read it all):
  "stream-<settings>_<files>", hashes of its sources' settings, max_documents and the cleaning
  (corpus.CLEANING_VERSION, which draws the validation split of documents hashed by their text:
  all but wiki_vital's, split by title), then of the names and sizes of its local files. A resume
  checks it, since a position in another stream means nothing (one saved when a file failed to
  read forgives a change of the files only: stream_settings_part); it keys no cache."""
  settings, files = [], []
  for i, source in enumerate(data.sources):
    source = dict(source)
    local = _local_files(source, f"config.data.sources[{i}]")
    if local is not None:
      source["name"] = None  # Named by its files: a corpus moved or copied stays the same one.
    if source["kind"] != "wiki_vital":
      source["cleaning"] = corpus_lib.CLEANING_VERSION
    settings.append(source)
    files.append(local)

  def digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return (f"stream-{digest({'sources': settings, 'max_documents': data.max_documents})}"
          f"_{digest(files)}")


def stream_settings_part(fingerprint) -> str | None:
  """The settings part of a streaming corpus's fingerprint (_stream_fingerprint); None for any
  other fingerprint (an in-memory corpus's, or a stream's from before the two parts)."""
  if not isinstance(fingerprint, str) or not fingerprint.startswith("stream-"):
    return None
  head, sep, _ = fingerprint.partition("_")
  return head if sep else None


def build_input_pipeline(config, check_tokenizer=None):
  """Corpus, tokenizer, tokenized and packed splits for a full config; cached where possible.

  check_tokenizer(fingerprint, tokenizer): called once the tokenizer is loaded or trained,
  before the corpus is tokenized (hours for a large one), e.g. to refuse a resume, or
  parameters to start from (init_from), with another vocabulary.
  """
  check_config(config)
  start = time.time()
  data = config.data
  _warn_num_proc_above_cpus(data.get("num_proc", 1))
  cache_dir = paths.cache_dir(data.cache_dir)
  log.info("Input pipeline: %d source(s) %s; seq_len=%d, packing=%s, cache %s.",
           len(data.sources), _source_names(data), data.seq_len,
           data.packing, cache_dir)
  # A tokenizer given by name needs no corpus: loaded first, a missing [MASK] or another
  # vocabulary than the checkpoint's is refused before the corpus is downloaded and cleaned.
  tokenizer = None
  if config.tokenizer.get("name_or_path"):
    tokenizer = tokenization.load_tokenizer(config.tokenizer, None, cache_dir)
    tok_fp = _tokenizer_ready(tokenizer, config, check_tokenizer)
  corpus = corpus_lib.load_corpus(data)
  streaming = isinstance(corpus, datasets.IterableDatasetDict)
  # Before the tokenizer is trained on the corpus: an empty split stops the run here.
  if streaming:
    validation_docs = _stream_validation_documents(corpus, data)
  else:
    _check_splits(corpus, data)
  # Hashed once here: the tokenizer's training cache and the tokenized caches key on these too.
  split_fps = {} if streaming else {
      name: corpus_lib.corpus_fingerprint(corpus[name]) for name in corpus}
  if tokenizer is None:
    tokenizer = tokenization.load_tokenizer(config.tokenizer, corpus, cache_dir,
                                            train_fingerprint=split_fps.get("train"))
    tok_fp = _tokenizer_ready(tokenizer, config, check_tokenizer)
  ids = tokenization.special_ids(tokenizer)

  if streaming:
    corpus_fp = _stream_fingerprint(data)
    val_tok = tokenize_corpus(validation_docs, tokenizer, data, what="validation")
    validation = pack_sequences(val_tok, data.seq_len, ids, data.packing)
    _packed_summary("validation (streamed sample)", validation, ids)
    log.info("Training rows are tokenized and packed on the fly (streaming); set up in %.1fs.",
             time.time() - start)
    return InputPipeline(tokenizer, ids, tokenization.continuation_table(tokenizer), None,
                         validation, None, corpus_fp, tok_fp, train_stream=corpus["train"],
                         seq_len=data.seq_len, packing=data.packing)

  corpus_fp = corpus_lib.combine_fingerprints(split_fps)
  log.info("Corpus: %d train and %d validation documents, fingerprint %s.",
           len(corpus["train"]), len(corpus["validation"]), corpus_fp)
  splits = {}
  for name in ("train", "validation"):
    tokenized = tokenize_corpus(corpus[name], tokenizer, data,
                                fingerprint=split_fps[name], what=name)
    packed = pack_sequences(tokenized, data.seq_len, ids, data.packing)
    _packed_summary(name, packed, ids)
    splits[name] = (tokenized, packed)
  log.info("Input pipeline ready in %.1fs.", time.time() - start)
  return InputPipeline(
      tokenizer=tokenizer, special_ids=ids, continuation=tokenization.continuation_table(tokenizer),
      train=splits["train"][1], validation=splits["validation"][1],
      tokenized_train=splits["train"][0], corpus_fingerprint=corpus_fp,
      tokenizer_fingerprint=tok_fp, seq_len=data.seq_len, packing=data.packing)
