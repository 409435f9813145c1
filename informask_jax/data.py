"""Input pipeline: corpus -> sentence-aware tokens -> packed sequences -> host slices -> jax.Arrays.

  corpus.load_corpus        documents, "train" / "validation"
  tokenize_corpus           per document: "input_ids" and "sentence_ids" (no special tokens),
                            cached on disk by corpus, tokenizer and splitter version
  pack_sequences            token_ids / sentence_ids int32[N, L] rows "[CLS] ... [SEP] [PAD]*"
  BatchIterator             shuffled per epoch from (seed, epoch); each host takes its slice of
                            every global batch; a small state() resumes at the exact next batch
  prefetch                  turns local batches into global jax.Arrays, a few batches ahead

Sentence ids in packed rows are -1 on [CLS] / [SEP] / [PAD] and otherwise number the sentence
pieces of a row 0, 1, 2, ... so two tokens are in the same sentence iff their ids are equal and
>= 0 (the PMI statistics and InforMask's scoring look inside sentences only).

Streaming corpora (a hub source with streaming=True) are never materialised: the training rows are
tokenized and packed on the fly, a chunk of documents at a time, by `StreamingBatchIterator`, which
has the same state()/restore() contract.
"""

import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time

import datasets
import jax
import numpy as np
import tokenizers

from informask_jax import corpus as corpus_lib
from informask_jax import paths, tokenization

log = logging.getLogger(__name__)

PACKING_MODES = ("full_sentences", "doc_padded")
# Bump when the splitter or the tokenized layout changes: it is part of the cache key.
TOKENIZED_FORMAT = "sentences-v2"
# Corpora smaller than this are tokenized in one process (the Rust tokenizer is parallel already,
# and starting workers costs more than it saves).
PARALLEL_MIN_DOCUMENTS = 50_000
# A streaming corpus's validation rows come from the first this many validation documents.
STREAM_VALIDATION_DOCUMENTS = 5_000

# --- Sentence splitting -------------------------------------------------------------------------
# A sentence ends at . ! or ? (then optional closing quotes/brackets), followed by whitespace and a
# capital letter, a digit or an opening quote/bracket; and at every line break. A full stop after
# a known abbreviation, a single letter ("Arthur C. Clarke") or a dotted acronym ("U.S.") does not
# end a sentence. Simple and fast, and good enough for statistics that only need "same sentence".

_ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof sr jr st mt ft vs etc cf al approx ca no nos vol vols fig figs pp
    gen col lt sgt capt cmdr adm gov sen rep pres rev hon inc ltd co corp bros dept univ
    jan feb mar apr jun jul aug sep sept oct nov dec
    """.split())
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])|\n")
_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")


def split_sentences(text):
  """Splits a cleaned document into sentences (see the rules above)."""
  sentences, start = [], 0
  for m in _BOUNDARY.finditer(text):
    end = m.end()
    if m.group(0).rstrip(" \t") == ".":  # Only a lone full stop can follow an abbreviation.
      before = text[start:m.start()].rsplit(None, 1)
      word = before[-1].lstrip("\"'(\u201c\u2018[").lower() if before else ""
      if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or _ACRONYM.fullmatch(word):
        continue
    sentence = text[start:end].strip()
    if sentence:
      sentences.append(sentence)
    start = end
  rest = text[start:].strip()
  if rest:
    sentences.append(rest)
  return sentences


# --- Tokenization -------------------------------------------------------------------------------

def _plain_backend(tokenizer):
  """The Rust tokenizer without padding or truncation (a hub tokenizer may carry either)."""
  backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
  backend.no_padding()
  backend.no_truncation()
  return backend


def encode_documents(texts, backend):
  """Tokenizes documents sentence by sentence.

  Returns flat int32 arrays (input_ids, sentence_ids) of all tokens and int64 lengths[D], one per
  document; sentence ids count each document's non-empty sentences from 0.
  """
  sentences = [split_sentences(t) for t in texts]
  # A space before every sentence but a document's first, as in the text: byte-level BPE
  # (RoBERTa, GPT-2) encodes "The" and " The" differently; WordPiece ignores the space.
  flat = [s if j == 0 else " " + s for doc in sentences for j, s in enumerate(doc)]
  # encode_batch_fast skips character offsets, which nothing here needs.
  encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
  encodings = encode(flat, add_special_tokens=False) if flat else []
  sent_lens = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
  ids = np.fromiter((i for e in encodings for i in e.ids), np.int32, int(sent_lens.sum()))
  per_doc = np.array([len(d) for d in sentences], np.int64)  # Sentences per document.
  sent_doc = np.repeat(np.arange(len(texts)), per_doc)  # (S,)
  lengths = np.bincount(sent_doc, weights=sent_lens, minlength=len(texts)).astype(np.int64)
  # Number each document's non-empty sentences from 0: the corpus-wide count of non-empty
  # sentences before a sentence, minus that count at its document's first sentence.
  nonempty = (sent_lens > 0).astype(np.int64)
  before = np.cumsum(nonempty) - nonempty  # (S,)
  first = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)  # (S,) its document's first sentence
  sent_index = (before - before[first]).astype(np.int32)
  sids = np.repeat(sent_index, sent_lens)
  return ids, sids, lengths


def _tokenize_batch(batch, backend):
  ids, sids, lengths = encode_documents(batch["text"], backend)
  keep = lengths > 0  # A document without a single token has nothing to pack.
  cuts = np.cumsum(lengths[keep])[:-1]
  return {"input_ids": np.split(ids, cuts) if keep.any() else [],
          "sentence_ids": np.split(sids, cuts) if keep.any() else []}


_LIST = getattr(datasets, "List", datasets.Sequence)  # `List` from datasets 4 on.
_TOKENIZED_FEATURES = datasets.Features({
    "input_ids": _LIST(datasets.Value("int32")),
    "sentence_ids": _LIST(datasets.Value("int32")),
})


def tokenized_cache_key(corpus_fp, tokenizer_fp):
  blob = json.dumps([TOKENIZED_FORMAT, corpus_fp, tokenizer_fp])
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


def tokenize_corpus(dataset, tokenizer, data_config, *, fingerprint=None):
  """Tokenizes a split of the corpus ("text") into "input_ids" and "sentence_ids" per document.

  An in-memory `datasets.Dataset` is tokenized once and saved under
  `<cache_dir>/tokenized/<key>`, key = corpus fingerprint + tokenizer fingerprint + format
  version; `fingerprint` passes a corpus fingerprint already computed. A streaming
  `IterableDataset` is mapped lazily. Documents with no token are dropped.
  """
  backend = _plain_backend(tokenizer)
  if isinstance(dataset, datasets.IterableDataset):
    return dataset.map(_tokenize_batch, batched=True, fn_kwargs={"backend": backend},
                       remove_columns=["text"], features=_TOKENIZED_FEATURES)
  corpus_fp = fingerprint or corpus_lib.corpus_fingerprint(dataset)
  key = tokenized_cache_key(corpus_fp, tokenization.tokenizer_fingerprint(tokenizer))
  cache_dir = paths.cache_dir(data_config.get("cache_dir"))
  path = os.path.join(cache_dir, "tokenized", key)
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    log.info("Loading tokenized documents from %s.", path)
    try:
      cached = datasets.load_from_disk(path)
      cached.data.validate()  # Cheap structural checks; truncated files already fail to load.
      return cached
    except Exception as e:  # A damaged cache entry is rebuilt, as the statistics' are.
      log.warning("The tokenized cache %s is damaged (%s: %s); tokenizing again.", path,
                  type(e).__name__, str(e).splitlines()[0] if str(e) else "")
      shutil.rmtree(path, ignore_errors=True)

  start = time.time()
  num_proc = int(data_config.get("num_proc", 1) or 1)
  num_proc = num_proc if num_proc > 1 and len(dataset) >= PARALLEL_MIN_DOCUMENTS else None
  with _progress_bars(len(dataset) >= PARALLEL_MIN_DOCUMENTS):
    tokenized = dataset.map(
        _tokenize_batch, batched=True, batch_size=1000, fn_kwargs={"backend": backend},
        remove_columns=dataset.column_names, features=_TOKENIZED_FEATURES, num_proc=num_proc,
        new_fingerprint=key, desc="Tokenizing")
    paths.publish_dir(path, tokenized.save_to_disk)
  dropped = len(dataset) - len(tokenized)
  log.info("Tokenized %d documents%s in %.1fs; cached in %s.", len(tokenized),
           f" ({dropped} without a token dropped)" if dropped else "", time.time() - start, path)
  return datasets.load_from_disk(path)


class _progress_bars:
  """Shows `datasets`' progress bars only for work long enough to watch."""

  def __init__(self, show):
    self.show = show

  def __enter__(self):
    self.was = datasets.is_progress_bar_enabled()
    if not self.show:
      datasets.disable_progress_bars()

  def __exit__(self, *exc):
    if self.was:
      datasets.enable_progress_bars()


# --- Packing ------------------------------------------------------------------------------------

def _flat(tokenized):
  """(input_ids int32[T], sentence_ids int32[T], lengths int64[D]) of a tokenized Dataset."""
  if isinstance(tokenized, tuple):
    return tokenized
  if isinstance(tokenized, dict):
    ids = [np.asarray(x, np.int32) for x in tokenized["input_ids"]]
    sids = [np.asarray(x, np.int32) for x in tokenized["sentence_ids"]]
    lengths = np.array([len(x) for x in ids], np.int64)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)
    return cat(ids), cat(sids), lengths
  table = tokenized.with_format("arrow")[:]  # Honours selections (an indices mapping).
  columns = []
  for name in ("input_ids", "sentence_ids"):
    # Chunk by chunk: combining the chunks first would overflow Arrow's int32 list offsets past
    # 2**31 tokens (English Wikipedia + BookCorpus is ~4.3B).
    chunks = table.column(name).chunks
    flat = [c.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            for c in chunks]
    lens = [c.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64) for c in chunks]
    columns.append((np.concatenate(flat) if flat else np.zeros(0, np.int32),
                    np.concatenate(lens) if lens else np.zeros(0, np.int64)))
  (ids, lengths), (sids, sid_lengths) = columns
  if not np.array_equal(lengths, sid_lengths):
    raise ValueError("input_ids and sentence_ids differ in length in some document.")
  return ids, sids, lengths.astype(np.int64)


def _sentence_keys(sids, lengths):
  """A corpus-wide running sentence number per token: new at each document and sentence start."""
  new = np.ones(len(sids), bool)
  new[1:] = sids[1:] != sids[:-1]
  doc_starts = np.cumsum(lengths) - lengths
  new[doc_starts[lengths > 0]] = True
  return np.cumsum(new) - 1


def _rebase_rows(sent):
  """Per row, shifts sentence numbers to start at 0; -1 (no sentence) stays -1."""
  valid = sent >= 0
  low = np.where(valid, sent, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
  return np.where(valid, sent - low, -1).astype(np.int32)


def _check_packing(mode):
  if mode not in PACKING_MODES:
    raise ValueError(f"config.data.packing={mode!r} is unknown; choose one of "
                     f"{', '.join(PACKING_MODES)}.")


def pack_sequences(tokenized, seq_len, special_ids, mode):
  """Packs tokenized documents into rows of exactly `seq_len` tokens.

  full_sentences: documents are concatenated with a [SEP] between them and the stream is cut into
    rows [CLS] <seq_len - 2 tokens> [SEP] (RoBERTa's FULL-SENTENCES); only the last row is padded.
  doc_padded: each document gets its own rows [CLS] <up to seq_len - 2 tokens> [SEP] [PAD]*; a
    longer document continues on further rows (split, never dropped).
  Returns {"token_ids": int32[N, L], "sentence_ids": int32[N, L]}.
  """
  _check_packing(mode)
  if seq_len < 3:
    raise ValueError(f"config.data.seq_len={seq_len} leaves no room between [CLS] and [SEP].")
  ids, sids, lengths = _flat(tokenized)
  lengths = lengths[lengths > 0]
  if len(ids) == 0:
    raise ValueError("Nothing to pack: the tokenized corpus holds no token.")
  body = seq_len - 2
  keys = _sentence_keys(sids, lengths)  # (T,)
  doc_of = np.repeat(np.arange(len(lengths)), lengths)  # (T,)

  if mode == "full_sentences":
    size = len(ids) + len(lengths) - 1  # One [SEP] between consecutive documents.
    rows = -(-size // body)
    stream = np.full(rows * body, special_ids.pad, np.int32)
    stream_sent = np.full(rows * body, -1, np.int64)
    stream[:size] = special_ids.sep
    where = np.arange(len(ids)) + doc_of  # Each earlier document adds one [SEP].
    stream[where] = ids
    stream_sent[where] = keys
    tokens = np.full((rows, seq_len), special_ids.pad, np.int32)  # (N, L)
    sent = np.full((rows, seq_len), -1, np.int64)
    tokens[:, 1:-1] = stream.reshape(rows, body)
    sent[:, 1:-1] = stream_sent.reshape(rows, body)
    row_len = np.full(rows, body)
    row_len[-1] = size - (rows - 1) * body
  else:
    chunks = -(-lengths // body)  # Rows per document.
    rows = int(chunks.sum())
    pos = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # In-document.
    row = np.repeat(np.cumsum(chunks) - chunks, lengths) + pos // body
    tokens = np.full((rows, seq_len), special_ids.pad, np.int32)  # (N, L)
    sent = np.full((rows, seq_len), -1, np.int64)
    tokens[row, 1 + pos % body] = ids
    sent[row, 1 + pos % body] = keys
    row_len = np.bincount(row, minlength=rows)
  tokens[:, 0] = special_ids.cls
  tokens[np.arange(rows), 1 + row_len] = special_ids.sep
  return {"token_ids": tokens, "sentence_ids": _rebase_rows(sent)}


def unpack_tokens(packed, special_ids):
  """The token stream of packed rows with every special token removed (for checks)."""
  tokens = packed["token_ids"].reshape(-1)
  drop = np.isin(tokens, [special_ids.pad, special_ids.cls, special_ids.sep])
  return tokens[~drop]


# --- Batching -----------------------------------------------------------------------------------

def _host(process_index, process_count):
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} is outside [0, process_count={count}).")
  return index, count


def _local_batch_size(global_batch_size, count):
  if global_batch_size <= 0 or global_batch_size % count:
    raise ValueError(f"The global batch size {global_batch_size} must be a positive multiple of "
                     f"the number of processes {count} (each process loads "
                     f"{global_batch_size} / {count} rows).")
  return global_batch_size // count


def _num_rows(arrays):
  sizes = {k: len(v) for k, v in arrays.items()}
  if not sizes or len(set(sizes.values())) != 1:
    raise ValueError(f"Arrays to batch must share their first dimension; got {sizes}.")
  return next(iter(sizes.values()))


class BatchIterator:
  """Infinite, resumable iterator over global batches of packed rows, returning this host's slice.

  Epoch e visits the rows in the order `permutation(seed, e)` (identity when shuffle=False);
  global batch b of an epoch is rows order[b * B:(b + 1) * B], and process i of n receives rows
  [i * B / n, (i + 1) * B / n) of it. With drop_remainder the last B - 1 rows or fewer of each
  epoch's order are skipped (a different set each epoch); otherwise the last batch of an epoch is
  completed with the first rows of the same epoch's order.
  """

  def __init__(self, arrays, global_batch_size, *, seed, shuffle=True, process_index=None,
               process_count=None, drop_remainder=True):
    self.arrays = arrays
    self.num_rows = _num_rows(arrays)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = _host(process_index, process_count)
    self.local_batch_size = _local_batch_size(self.global_batch_size, self.process_count)
    if drop_remainder and self.num_rows < self.global_batch_size:
      raise ValueError(f"The data packs into {self.num_rows} rows, fewer than one global batch "
                       f"of {self.global_batch_size}; use more documents (config.data.sources, "
                       "config.data.max_documents) or a smaller config.train.batch_size.")
    self.seed, self.shuffle, self.drop_remainder = int(seed), bool(shuffle), bool(drop_remainder)
    self.batches_per_epoch = (self.num_rows // self.global_batch_size if drop_remainder
                              else -(-self.num_rows // self.global_batch_size))
    self.epoch, self.position = 0, 0
    self._order_epoch, self._order = None, None

  def order(self, epoch):
    """The row order of an epoch, a pure function of (seed, epoch)."""
    if self._order_epoch != epoch:
      if self.shuffle:
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(self.num_rows)
      else:
        self._order = np.arange(self.num_rows)
      self._order_epoch = epoch
    return self._order

  def __iter__(self):
    return self

  def __next__(self):
    order = self.order(self.epoch)
    start = self.position * self.global_batch_size + self.process_index * self.local_batch_size
    # Kept in the epoch's order, so the global batch is the same whatever the number of hosts.
    rows = np.take(order, np.arange(start, start + self.local_batch_size), mode="wrap")
    batch = {k: v[rows] for k, v in self.arrays.items()}
    self.position += 1
    if self.position == self.batches_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
    return batch

  def state(self):
    """Where the next batch starts, with what must match on restore; JSON-able."""
    return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
            "shuffle": self.shuffle, "num_rows": self.num_rows,
            "global_batch_size": self.global_batch_size}

  def restore(self, state):
    epoch, position = _saved_ints(state, ("epoch", "position"))
    _check_saved_settings(state, self, ("seed", "shuffle", "num_rows", "global_batch_size"))
    if not 0 <= position < self.batches_per_epoch:
      raise IteratorStateError(f"Iterator state position={position} is outside the epoch's "
                               f"{self.batches_per_epoch} batches.")
    self.epoch, self.position = epoch, position


class IteratorStateError(ValueError):
  """A saved iterator state that no iterator could have written: a damaged checkpoint."""


def _saved_ints(state, keys) -> list[int]:
  """The integer fields `keys` of a saved iterator state; IteratorStateError if one is not, or is
  negative (every field counts epochs, batches, chunks or rows from 0; a negative one would only
  fail at the next batch, far from the checkpoint that holds it, or give an empty batch)."""
  if not isinstance(state, dict):
    raise IteratorStateError(f"The data iterator state is {state!r}, not a JSON object.")
  for key in keys:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
      raise IteratorStateError(f"The data iterator state has {key}={value!r}, not an integer.")
    if value < 0:
      raise IteratorStateError(f"The data iterator state has {key}={value!r}, a negative count.")
  return [int(state[key]) for key in keys]


class DataSettingsChanged(ValueError):
  """A saved iterator state from other data settings (batch size, seed, corpus, seq_len...)."""


# The config keys behind each saved iterator setting, for the error.
_SETTING_KEYS = {
    "global_batch_size": "config.train.batch_size",
    "seed": "config.train.seed",
    "num_rows": "the packed training rows: config.data.seq_len, the corpus or its config.data "
                "options (max_documents, validation_fraction, packing, ...)",
}


def _check_saved_settings(state, iterator, keys):
  """DataSettingsChanged if a saved iterator state disagrees with `iterator` on a setting."""
  for key in keys:
    if key in state and state[key] != getattr(iterator, key):
      where = f" (set by {_SETTING_KEYS[key]})" if key in _SETTING_KEYS else ""
      raise DataSettingsChanged(
          f"the {type(iterator).__name__} state was saved with {key}={state[key]!r}, this run "
          f"has {key}={getattr(iterator, key)!r}{where}; resuming would not continue the same "
          "data order.")


def eval_batches(arrays, global_batch_size, num_batches, *, process_index=None,
                 process_count=None, pad_id=0):
  """Yields this host's slice of the first `num_batches` global batches, in row order.

  num_batches < 0 means all rows. A final partial batch is completed with rows of pad_id tokens
  (sentence id -1), which hold no prediction targets, so it keeps the compiled batch shape.
  """
  num_rows = _num_rows(arrays)
  index, count = _host(process_index, process_count)
  local = _local_batch_size(int(global_batch_size), count)
  total = -(-num_rows // global_batch_size)
  total = total if num_batches < 0 else min(int(num_batches), total)
  for b in range(total):
    start = b * global_batch_size + index * local
    stop = min(start + local, num_rows)
    batch = {}
    for key, value in arrays.items():
      part = value[start:stop] if start < num_rows else value[:0]
      if len(part) < local:
        fill = pad_id if key == "token_ids" else (-1 if key == "sentence_ids" else 0)
        pad = np.full((local - len(part),) + value.shape[1:], fill, value.dtype)
        part = np.concatenate([part, pad])
      batch[key] = part
    yield batch


def make_global_batch(local_batch, sharding):
  """Each host's rows -> global jax.Arrays laid out by `sharding` (one, or a dict per key)."""
  out = {}
  for key, value in local_batch.items():
    sh = sharding[key] if isinstance(sharding, dict) else sharding
    try:
      out[key] = jax.make_array_from_process_local_data(sh, value)
    except (ValueError, TypeError) as e:
      raise ValueError(f"Cannot make a global array of batch[{key!r}]: process "
                       f"{jax.process_index()} of {jax.process_count()} holds shape {value.shape} "
                       f"for sharding {sh}: {e}") from e
  return out


class Prefetcher:
  """Iterator of global batches kept `size` ahead of the consumer.

  Transfers are asynchronous, so batch t + 1 moves to the devices while step t runs. `state()` is
  the wrapped iterator's state *before the next batch this Prefetcher will return*, not the
  iterator's own (which is ahead by the prefetched batches): save this one in checkpoints.
  """

  def __init__(self, iterator, sharding, size=2):
    self.iterator, self.sharding, self.size = iterator, sharding, max(1, int(size))
    self._queue = collections.deque()

  def _fill(self):
    while len(self._queue) < self.size:
      state = self.iterator.state() if hasattr(self.iterator, "state") else None
      try:
        local = next(self.iterator)
      except StopIteration:
        return
      self._queue.append((state, make_global_batch(local, self.sharding)))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    if not self._queue:
      raise StopIteration
    _, batch = self._queue.popleft()
    self._fill()
    return batch

  def state(self):
    if self._queue:
      return self._queue[0][0]
    return self.iterator.state()


def prefetch(iterator, sharding, size=2):
  """Global batches from an iterator of local ones, `size` ahead; see `Prefetcher`."""
  return Prefetcher(iterator, sharding, size)


# --- Streaming ----------------------------------------------------------------------------------

class StreamingBatchIterator:
  """Batches for a streaming corpus, packed on the fly a chunk of documents at a time.

  Per epoch the stream is shuffled with a buffer (`IterableDataset.shuffle(seed)`, `set_epoch`),
  cut into chunks of `chunk_documents` documents; each chunk is tokenized, packed (its last row
  may be padded) and its rows shuffled with (seed, epoch, chunk). Global batches take consecutive
  rows; each host keeps its slice, so every host reads and tokenizes the whole stream. The state is
  (epoch, chunk, row within the chunk) of the next batch; restore skips the documents of earlier
  chunks and re-packs the current one, so it resumes exactly while the source's order is stable.
  """

  def __init__(self, texts, tokenizer, seq_len, special_ids, mode, global_batch_size, *, seed,
               shuffle=True, shuffle_buffer=10_000, chunk_documents=1000, process_index=None,
               process_count=None):
    self.texts, self.seq_len, self.special_ids, self.mode = texts, seq_len, special_ids, mode
    self.backend = _plain_backend(tokenizer)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = _host(process_index, process_count)
    self.local_batch_size = _local_batch_size(self.global_batch_size, self.process_count)
    self.seed, self.shuffle, self.shuffle_buffer = int(seed), bool(shuffle), int(shuffle_buffer)
    self.chunk_documents = int(chunk_documents)
    self.epoch, self.chunk, self.offset = 0, 0, 0
    self._chunks = None  # Live generator of (chunk index, rows); reset by restore.
    self._pending = collections.deque()  # [chunk index, rows dict, first unused row]

  def _chunk_stream(self):
    stream = self.texts
    if self.shuffle:
      stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
      stream.set_epoch(self.epoch)
    # The documents of the chunks already used are read and dropped here: with
    # IterableDataset.skip (datasets 5.2) set_epoch no longer reseeds the shuffle, and every
    # epoch would repeat the first one's document order.
    index, docs = self.chunk, []
    for example in itertools.islice(stream, self.chunk * self.chunk_documents, None):
      docs.append(example["text"])
      if len(docs) == self.chunk_documents:
        yield index, self._pack(docs, index)
        index, docs = index + 1, []
    if docs:
      yield index, self._pack(docs, index)

  def _pack(self, docs, index):
    flat = encode_documents(docs, self.backend)
    if not len(flat[0]):
      return None
    rows = pack_sequences(flat, self.seq_len, self.special_ids, self.mode)
    if self.shuffle:
      order = np.random.default_rng([self.seed, self.epoch, index]).permutation(
          len(rows["token_ids"]))
      rows = {k: v[order] for k, v in rows.items()}
    return rows

  def __iter__(self):
    return self

  def _fill(self):
    """Reads chunks until a global batch of rows is pending; False at the end of the epoch."""
    if self._chunks is None:
      self._chunks, self._pending = self._chunk_stream(), collections.deque()
      self._skip = self.offset  # Rows of the first chunk consumed before a restore.
    while sum(len(r["token_ids"]) - used for _, r, used in self._pending) < self.global_batch_size:
      chunk = next(self._chunks, None)
      if chunk is None:
        return False
      index, rows = chunk
      if rows is not None:
        self._pending.append([index, rows, self._skip])
        self._skip = 0
    return True

  def __next__(self):
    while not self._fill():
      if self.chunk == 0 and self.offset == 0:  # A whole epoch gave no batch.
        raise ValueError(f"The stream packs into fewer rows than one global batch of "
                         f"{self.global_batch_size}; use more documents (config.data.sources) "
                         "or a smaller config.train.batch_size.")
      # End of the epoch: the rows short of a full batch are dropped.
      self.epoch, self.chunk, self.offset, self._chunks = self.epoch + 1, 0, 0, None
    parts, need = [], self.global_batch_size
    while need:
      index, rows, used = self._pending[0]
      take = min(need, len(rows["token_ids"]) - used)
      parts.append({k: v[used:used + take] for k, v in rows.items()})
      need -= take
      if used + take == len(rows["token_ids"]):
        self._pending.popleft()
        self.chunk, self.offset = index + 1, 0
      else:
        self._pending[0][2] = used + take
        self.chunk, self.offset = index, used + take
    lo = self.process_index * self.local_batch_size
    return {k: np.concatenate([p[k] for p in parts])[lo:lo + self.local_batch_size]
            for k in parts[0]}

  def state(self):
    return {"epoch": self.epoch, "chunk": self.chunk, "offset": self.offset, "seed": self.seed,
            "shuffle": self.shuffle, "chunk_documents": self.chunk_documents,
            "global_batch_size": self.global_batch_size}

  def restore(self, state):
    epoch, chunk, offset = _saved_ints(state, ("epoch", "chunk", "offset"))
    _check_saved_settings(state, self, ("seed", "shuffle", "chunk_documents", "global_batch_size"))
    self.epoch, self.chunk, self.offset = epoch, chunk, offset
    self._chunks = None


# --- The whole pipeline -------------------------------------------------------------------------

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
      return BatchIterator(self.train, global_batch_size, seed=seed, process_index=process_index,
                           process_count=process_count)
    return StreamingBatchIterator(
        self.train_stream, self.tokenizer, self.seq_len, self.special_ids, self.packing,
        global_batch_size, seed=seed, process_index=process_index, process_count=process_count)


def max_sequence_length(model_config):
  """Longest sequence the model's position table admits."""
  flavour = model_config.get("flavour", "bert")
  positions = int(model_config.get("max_positions", -1))
  if positions < 0:
    positions = 514 if flavour == "roberta" else 512
  # RoBERTa's positions start after the padding index, so two are never used.
  return positions - 2 if flavour == "roberta" else positions


def check_config(config):
  """Errors in the data settings, raised before any corpus is read."""
  data = config.data
  _check_packing(data.packing)
  if data.seq_len < 8:
    raise ValueError(f"config.data.seq_len={data.seq_len} is too short: at least 8 (6 tokens "
                     "between [CLS] and [SEP], so that masking 15% of them picks any).")
  if "model" in config:
    limit = max_sequence_length(config.model)
    if data.seq_len > limit:
      raise ValueError(f"config.data.seq_len={data.seq_len} exceeds the model's {limit} positions "
                       f"(config.model.max_positions={config.model.get('max_positions')}, "
                       f"flavour={config.model.get('flavour')!r}).")
  cache = os.path.expanduser(data.cache_dir)
  if os.path.exists(cache) and not os.path.isdir(cache):
    raise ValueError(f"config.data.cache_dir={data.cache_dir!r} is a file; it must be a "
                     "directory (created when missing).")
  if not 0 <= data.validation_fraction < 1:
    raise ValueError(f"config.data.validation_fraction={data.validation_fraction} must be in "
                     "[0, 1).")
  for key, least in (("num_proc", 1), ("prefetch", 1)):
    value = data.get(key, least)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"config.data.{key}={value!r} must be an integer >= {least}.")
  corpus_lib.check_sources(data)
  if "tokenizer" in config:
    tokenization.check_name_or_path(config.tokenizer)


def _packed_summary(name, packed, special_ids):
  tokens = packed["token_ids"]
  pad = float(np.mean(tokens == special_ids.pad)) if tokens.size else 0.0
  log.info("%s: %d rows of %d tokens, %.1f%% padding.", name, tokens.shape[0],
           tokens.shape[1] if tokens.ndim == 2 else 0, 100 * pad)


def build_input_pipeline(config):
  """Corpus, tokenizer, tokenized and packed splits for a full config; cached where possible."""
  check_config(config)
  start = time.time()
  data = config.data
  cache_dir = paths.cache_dir(data.cache_dir)
  log.info("Input pipeline: %d source(s) %s; seq_len=%d, packing=%s, cache %s.",
           len(data.sources), [f"{s.kind}:{s.name}" for s in data.sources], data.seq_len,
           data.packing, cache_dir)
  corpus = corpus_lib.load_corpus(data)
  streaming = isinstance(corpus, datasets.IterableDatasetDict)
  # Hashed once here: the tokenizer's training cache and the tokenized caches key on these too.
  split_fps = {} if streaming else {
      name: corpus_lib.corpus_fingerprint(corpus[name]) for name in corpus}
  tokenizer = tokenization.load_tokenizer(config.tokenizer, corpus, cache_dir,
                                          train_fingerprint=split_fps.get("train"))
  ids = tokenization.special_ids(tokenizer)
  tok_fp = tokenization.tokenizer_fingerprint(tokenizer)
  log.info("Tokenizer: %d tokens (%s), fingerprint %s.", len(tokenizer),
           config.tokenizer.name_or_path or "trained", tok_fp)

  if streaming:
    sources = json.dumps([dict(s) for s in data.sources], sort_keys=True, default=str)
    corpus_fp = "stream-" + hashlib.sha256(sources.encode()).hexdigest()[:26]
    validation_docs = datasets.Dataset.from_dict(
        {"text": [ex["text"] for ex in corpus["validation"].take(STREAM_VALIDATION_DOCUMENTS)]})
    if not len(validation_docs):
      raise ValueError("The streaming corpus gave no validation document.")
    val_tok = tokenize_corpus(validation_docs, tokenizer, data)
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
    if not len(corpus[name]):
      raise ValueError(f"The {name} split is empty (config.data.validation_fraction="
                       f"{data.validation_fraction}, {len(corpus['train'])} documents).")
    tokenized = tokenize_corpus(corpus[name], tokenizer, data,
                                fingerprint=split_fps[name])
    packed = pack_sequences(tokenized, data.seq_len, ids, data.packing)
    _packed_summary(name, packed, ids)
    splits[name] = (tokenized, packed)
  log.info("Input pipeline ready in %.1fs.", time.time() - start)
  return InputPipeline(
      tokenizer=tokenizer, special_ids=ids, continuation=tokenization.continuation_table(tokenizer),
      train=splits["train"][1], validation=splits["validation"][1],
      tokenized_train=splits["train"][0], corpus_fingerprint=corpus_fp,
      tokenizer_fingerprint=tok_fp, seq_len=data.seq_len, packing=data.packing)
