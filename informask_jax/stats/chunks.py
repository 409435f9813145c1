"""Tokenized documents as flat chunks, and a process pool that maps a function over shards.

Every counter in this package works on a `Chunk`: many documents concatenated into one flat
int32 array, so that a chunk is processed with a handful of vectorised NumPy calls instead of a
Python loop over documents or sentences. A corpus is anything that can cut itself into chunks by
document range (`DocumentCorpus` for in-memory lists, `DatasetCorpus` for the input pipeline's
Arrow-backed `datasets.Dataset`); both pickle cheaply, so worker processes can read their own
shard.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any, Protocol

import numpy as np
import pyarrow.compute as pc

# Tokens per chunk: large enough that NumPy call overheads vanish, small enough that the per-chunk
# temporaries (a few arrays of this length, the chunk's pair table) stay in the tens of MB.
DEFAULT_CHUNK_TOKENS = 1 << 20


@dataclasses.dataclass
class Chunk:
  """Documents concatenated: tokens, their sentence index within the document, doc offsets."""

  token_ids: np.ndarray  # (N,) int32
  sentence_ids: np.ndarray  # (N,) int32, 0-based sentence index within each document
  doc_offsets: np.ndarray  # (D + 1,) int64, document d is token_ids[off[d]:off[d + 1]]

  @property
  def num_tokens(self) -> int:
    return int(self.token_ids.shape[0])

  @property
  def num_documents(self) -> int:
    return int(self.doc_offsets.shape[0] - 1)

  def sentence_starts(self) -> np.ndarray:
    """bool (N,): True at the first token of every sentence (and of every document)."""
    n = self.num_tokens
    starts = np.ones(n, dtype=bool)
    if n > 1:
      starts[1:] = self.sentence_ids[1:] != self.sentence_ids[:-1]
    doc_starts = self.doc_offsets[:-1]
    starts[doc_starts[doc_starts < n]] = True
    return starts


def _integer_ids(values, what: str, document: int) -> np.ndarray:
  """`values` as flat int32, refusing other dtypes: a float sentence id would be truncated
  (0.5 joining sentence 0: pairs across a sentence boundary) and a float token id another
  token's (2.7 counted as 2), with no error. An empty list (NumPy makes it float64) is fine."""
  array = np.asarray(values)
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"Document {document}: {what} must hold integer ids, got dtype "
                     f"{array.dtype}.")
  return array.astype(np.int32, copy=False).reshape(-1)


def chunk_from_documents(documents: Sequence[tuple[np.ndarray, np.ndarray]]) -> Chunk:
  """Concatenates (token_ids, sentence_ids) pairs of equal length into one chunk."""
  lengths = np.array([len(ids) for ids, _ in documents], dtype=np.int64)
  for i, (ids, sids) in enumerate(documents):
    if len(ids) != len(sids):
      raise ValueError(f"Document {i}: {len(ids)} token ids but {len(sids)} sentence ids.")
  offsets = np.zeros(len(documents) + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  if len(documents):
    tokens = np.concatenate([_integer_ids(ids, "token_ids", d)
                             for d, (ids, _) in enumerate(documents)])
    sents = np.concatenate([_integer_ids(s, "sentence_ids", d)
                            for d, (_, s) in enumerate(documents)])
  else:
    tokens = np.zeros(0, np.int32)
    sents = np.zeros(0, np.int32)
  return Chunk(tokens, sents, offsets)


class Corpus(Protocol):
  num_documents: int

  def chunks(self, start: int, stop: int, max_tokens: int) -> Iterator[Chunk]: ...


class DocumentCorpus:
  """An in-memory list of (token_ids, sentence_ids) documents."""

  def __init__(self, documents: Iterable[tuple[Any, Any]]):
    self.documents = [(_integer_ids(i, "token_ids", d), _integer_ids(s, "sentence_ids", d))
                      for d, (i, s) in enumerate(documents)]
    self.num_documents = len(self.documents)
    lengths = np.array([len(i) for i, _ in self.documents], dtype=np.int64)
    self._offsets = np.concatenate([[0], np.cumsum(lengths)])

  def chunks(self, start: int, stop: int, max_tokens: int) -> Iterator[Chunk]:
    d = start
    while d < stop:
      # The first document at or past max_tokens from d closes the chunk (at least one doc).
      end = int(np.searchsorted(self._offsets, self._offsets[d] + max_tokens, side="left"))
      end = min(max(end, d + 1), stop)
      yield chunk_from_documents(self.documents[d:end])
      d = end


class DatasetCorpus:
  """The input pipeline's tokenized corpus: columns "input_ids" and "sentence_ids" (lists)."""

  def __init__(self, dataset):
    for column in ("input_ids", "sentence_ids"):
      if column not in dataset.column_names:
        raise ValueError(f"The tokenized corpus has no column {column!r} "
                         f"(columns: {dataset.column_names}).")
    self.dataset = dataset
    self.num_documents = len(dataset)
    probe = dataset.with_format("arrow")[: min(len(dataset), 256)].column("input_ids")
    n_probe = max(len(probe), 1)
    self._mean_len = max(1.0, sum(len(x) for x in probe.to_pylist()) / n_probe)

  def chunks(self, start: int, stop: int, max_tokens: int) -> Iterator[Chunk]:
    # Documents per read from the mean length of those read last (the first 256 to start with),
    # then cut as DocumentCorpus cuts: the first document at or past max_tokens closes the
    # chunk. A mean alone let chunks grow hundreds of times past max_tokens where long
    # documents follow short ones, and the counters' temporaries with them.
    arrow = self.dataset.with_format("arrow")
    mean_len, a = self._mean_len, start
    while a < stop:
      step = max(1, int(max_tokens / mean_len))
      while True:  # Too few tokens (shorter documents than the last ones): read twice as many.
        table = arrow[a: min(a + step, stop)]
        ends = np.cumsum(pc.list_value_length(table.column("input_ids")).to_numpy(),
                         dtype=np.int64)
        if ends[-1] >= max_tokens or a + step >= stop:
          break
        step *= 2
      n = min(int(np.searchsorted(ends, max_tokens, side="left")) + 1, len(ends))
      yield _chunk_from_arrow(table.slice(0, n))
      a += n
      mean_len = max(1.0, float(ends[n - 1]) / n)


def _chunk_from_arrow(table) -> Chunk:
  ids = table.column("input_ids").combine_chunks()
  sids = table.column("sentence_ids").combine_chunks()
  lengths = ids.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
  offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  tokens = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
  sents = sids.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
  if tokens.shape != sents.shape:
    raise ValueError(f"input_ids ({tokens.shape[0]} tokens) and sentence_ids "
                     f"({sents.shape[0]}) differ in length.")
  return Chunk(tokens, sents, offsets)


def estimate_tokens(corpus) -> int:
  """Tokens in the corpus (exact for documents in memory, from the mean length for a dataset);
  0 when unknown. Sizes the shards of parallel counting."""
  if isinstance(corpus, DocumentCorpus):
    return int(corpus._offsets[-1])
  if isinstance(corpus, DatasetCorpus):
    return int(corpus._mean_len * corpus.num_documents)
  return 0


def as_corpus(documents) -> Corpus:
  """A Corpus from a Corpus, a `datasets.Dataset`, or an iterable of (ids, sentence_ids)."""
  if hasattr(documents, "chunks") and hasattr(documents, "num_documents"):
    return documents
  if hasattr(documents, "column_names") and hasattr(documents, "with_format"):
    return DatasetCorpus(documents)
  return DocumentCorpus(documents)


def iter_chunks(corpus: Corpus, max_tokens: int = DEFAULT_CHUNK_TOKENS) -> Iterator[Chunk]:
  return corpus.chunks(0, corpus.num_documents, max_tokens)


def shard_ranges(num_documents: int, num_shards: int) -> list[tuple[int, int]]:
  """Contiguous, near-equal document ranges (no empty ones)."""
  num_shards = max(1, min(num_shards, num_documents))
  bounds = np.linspace(0, num_documents, num_shards + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def map_shards(fn: Callable[[Corpus, int, int], Any], corpus: Corpus, *, num_workers: int,
               num_shards: int) -> Iterator[Any]:
  """Yields fn(corpus, start, stop) for document shards, in worker processes when num_workers > 1.

  Results come back in completion order: every caller merges them with a commutative sum. The
  "spawn" start method keeps workers safe when the parent has already started JAX's threads.
  """
  shards = shard_ranges(corpus.num_documents, num_shards)
  if num_workers <= 1 or len(shards) <= 1:
    for a, b in shards:
      yield fn(corpus, a, b)
    return
  # concurrent.futures rather than multiprocessing.Pool: a Pool replaces a worker that died (the
  # out-of-memory killer, a script without a __main__ guard re-running itself under spawn) and
  # then waits for its lost result forever; an executor fails every pending shard instead.
  pool = futures.ProcessPoolExecutor(min(num_workers, len(shards)),
                                     mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_ignore_interrupts)
  workers = []
  finished = False
  try:
    pending = {pool.submit(fn, corpus, a, b) for a, b in shards}
    workers = list((getattr(pool, "_processes", None) or {}).values())
    while pending:
      done, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
      while done:  # Popped, so a shard's partial counts are freed once the caller merged them.
        future = done.pop()
        try:
          result = future.result()
        except futures.process.BrokenProcessPool:
          raise WorkerDied(_died_message(workers, num_workers)) from None
        del future
        yield result
    finished = True
  finally:
    if not finished:  # Ctrl-C, an error, or the caller stopped reading: the shards left go.
      for process in workers:
        if process.is_alive():
          process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


class WorkerDied(RuntimeError):
  """A worker process of parallel counting ended without returning its shard."""


def _died_message(workers, num_workers: int) -> str:
  for process in workers:  # The executor ends the others: their codes come within moments.
    process.join(timeout=1.0)
  codes = sorted({p.exitcode for p in workers if p.exitcode not in (None, 0)})
  # The executor terminates the survivors of a broken pool: their SIGTERM is not the cause.
  codes = [c for c in codes if c != -signal.SIGTERM] or codes
  killed = any(c == -signal.SIGKILL for c in codes)
  return (f"A worker process of the parallel count ended abruptly (exit code "
          f"{', '.join(map(str, codes)) or 'unknown'}"
          f"{': killed, most often by the out-of-memory killer' if killed else ''}). Lower "
          f"config.data.num_proc (now {num_workers}; each worker holds its own shard's counts) "
          "or config.stats.memory_cap_mb and run again. A script of your own that calls this "
          "library with num_proc > 1 must start it under `if __name__ == \"__main__\":` "
          "(workers are spawned: each imports the script).")


def _ignore_interrupts() -> None:
  """A terminal's Ctrl-C reaches the whole process group: only the parent acts on it (leaving
  the pool terminates the workers), rather than every worker printing its own traceback."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
