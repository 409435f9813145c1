"""Batches of a streaming corpus, tokenized and packed on the fly, never materialised."""

import collections
import itertools
import logging

import numpy as np

from informask_jax.data.batches import local_batch_size, process_slot
from informask_jax.data.iterator_state import (
  DataSettingsChanged,
  TooFewRows,
  check_kind,
  check_saved_settings,
  saved_ints,
)
from informask_jax.data.packing import pack_sequences
from informask_jax.data.sentences import encode_documents, plain_backend

log = logging.getLogger(__name__)


class StreamingBatchIterator:
  """Batches for a streaming corpus, packed on the fly a chunk of documents at a time.

  Per epoch the stream is shuffled with a buffer (`IterableDataset.shuffle(seed)`, `set_epoch`),
  cut into chunks of `chunk_documents` documents; each chunk is tokenized, packed (its last row
  may be padded) and its rows shuffled with (seed, epoch, chunk). Global batches take consecutive
  rows; each host keeps its slice, so every host reads and tokenizes the whole stream. The state is
  (epoch, chunk, row within the chunk) of the next batch; restore skips the documents of earlier
  chunks and re-packs the current one, so it resumes exactly while the source's order is stable.
  `corpus`: an identity of the stream (its sources, files and sizes), saved with the state: a
  stream holds no row count to check, and a position in an edited one means nothing.
  """

  def __init__(self, texts, tokenizer, seq_len, special_ids, mode, global_batch_size, *, seed,
               shuffle=True, shuffle_buffer=10_000, chunk_documents=1000, process_index=None,
               process_count=None, corpus=None):
    self.texts, self.seq_len, self.special_ids, self.mode = texts, seq_len, special_ids, mode
    self.corpus = corpus
    self.backend = plain_backend(tokenizer)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = process_slot(process_index, process_count)
    self.local_batch_size = local_batch_size(self.global_batch_size, self.process_count)
    self.seed, self.shuffle, self.shuffle_buffer = int(seed), bool(shuffle), int(shuffle_buffer)
    self.chunk_documents = int(chunk_documents)
    self.epoch, self.chunk, self.offset = 0, 0, 0
    self._chunks = None  # Live generator of (chunk index, rows); reset by restore.
    self._pending = collections.deque()  # [chunk index, rows dict, first unused row]
    self._restored = False  # The position came from a saved state: checked at the first read.

  def _chunk_stream(self):
    stream = self.texts
    if self.shuffle:
      stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
      stream.set_epoch(self.epoch)
    # The documents of the chunks already used are read and dropped here: with
    # IterableDataset.skip (datasets 5.2) set_epoch no longer reseeds the shuffle, and every
    # epoch would repeat the first one's document order.
    index, docs = self.chunk, []
    if self.chunk:  # Minutes on a large stream, with nothing else said: not a hang.
      log.info("Streaming: reading past the %d documents of epoch %d used before the resumed "
               "position.", self.chunk * self.chunk_documents, self.epoch)
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
      try:
        chunk = next(self._chunks, None)
      except Exception:
        # A generator that raised is finished: a retry reads again from the position of the next
        # batch, not past the end of the data.
        self._chunks = None
        raise
      if chunk is None:
        self._check_restored_position(None, {"token_ids": ()})
        return False
      index, rows = chunk
      if rows is not None:
        self._check_restored_position(index, rows)
        self._pending.append([index, rows, self._skip])
        self._skip = 0
    return True

  def _check_restored_position(self, index, rows):
    """A restored position inside a chunk (a row offset) that the chunk does not reach, or a
    chunk the stream no longer has, would otherwise give a broken batch or quietly start the
    next epoch: the stream is not the one the state was saved from. (A position at the start of
    a chunk may be the end of the epoch, or precede chunks without a token.)"""
    if not self._restored:
      return
    self._restored = False
    if self.offset and (index != self.chunk or self.offset >= len(rows["token_ids"])):
      found = ("the stream ends before it" if index is None else
               f"its chunk {index} packs into {len(rows['token_ids'])} rows")
      raise DataSettingsChanged(
          f"the saved data position (epoch {self.epoch}, chunk {self.chunk}, row {self.offset}) "
          f"is not in this stream: {found}. The stream is not the one the state was saved from "
          "(config.data.sources, config.data.max_documents, or the data behind them); "
          "resuming would not continue the same data order.")

  def __next__(self):
    while not self._fill():
      if self.chunk == 0 and self.offset == 0:  # A whole epoch gave no batch.
        raise TooFewRows(f"The stream packs into fewer rows than one global batch of "
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
    # seq_len and mode: the offset counts rows packed under them (train.py refuses a resume that
    # changes them before this; the state says it to any other caller).
    return {"kind": "streaming", "epoch": self.epoch, "chunk": self.chunk, "offset": self.offset,
            "seed": self.seed, "shuffle": self.shuffle, "chunk_documents": self.chunk_documents,
            "global_batch_size": self.global_batch_size, "seq_len": self.seq_len,
            "mode": self.mode, **({} if self.corpus is None else {"corpus": self.corpus})}

  def restore(self, state):
    check_kind(state, "streaming")
    epoch, chunk, offset = saved_ints(state, ("epoch", "chunk", "offset"))
    check_saved_settings(state, self, ("seed", "shuffle", "chunk_documents", "global_batch_size",
                                       "seq_len", "mode")
                         + (("corpus",) if self.corpus is not None else ()))
    self.epoch, self.chunk, self.offset = epoch, chunk, offset
    self._chunks, self._restored = None, True
