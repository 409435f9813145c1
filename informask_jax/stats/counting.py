"""Unigram and within-sentence co-occurrence counts over a tokenized corpus.

Conventions (the PMI module and the tests rely on them):
- The PMI vocabulary is R token ids; row r of every [R, R] table is token `vocab_ids[r]`.
- Pair counts are *ordered*: C[x, y] = #{(i, j): i != j, same sentence, (within the window),
  token_i = x, token_j = y}. C is symmetric; an unordered co-occurrence of two different tokens
  adds 1 to C[x, y] and 1 to C[y, x], a co-occurrence of a token with itself adds 2 to C[x, x].
  Tokens outside the PMI vocabulary take no part in pairs (but still count for window distances).
- `whole_words`: a word is a non-"##" token and the "##" pieces after it; pieces of one word are
  never paired with each other (their co-occurrence is spelling, not context), and the window is
  measured in words.

A chunk's pair table is `S^T S` for S the [sentences, R] count matrix of the chunk (SciPy's
sparse product does the O(sum of squared sentence lengths) work in C++), minus the i == j (or
same-word) pairs. Tables of chunks are sums, so any split of the corpus (chunks, processes, a
Beam combiner) gives the same totals. The accumulator keeps a running sum below
`memory_cap_mb` and spills partial tables to disk above it; the final merge reads them back in
row blocks, so memory is bounded by the cap and the (pruned) result, not by the corpus.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from informask_jax import paths
from informask_jax.stats import chunks as chunks_lib

# The spill folders' prefix (the build names those a killed run left in its directory).
PAIRS_SPILL_PREFIX = "informask-pairs-"
# Bytes per stored nonzero of an int64 CSR table (int32 column index + int64 count).
_BYTES_PER_NNZ = 12
# Spill files merged into one past this many (bounds the disk footprint and the final merge).
_MAX_SPILLS = 8
# Pending chunk tables are summed into the running total once they hold this many entries, or
# as many as the total: adding a small table to a large one costs the large one's size.
_MIN_MERGE_NNZ = 1 << 22


@dataclasses.dataclass
class UnigramCounts:
  counts: np.ndarray  # (V,) int64
  num_tokens: int
  num_sentences: int
  num_documents: int


def check_token_ids(chunk: chunks_lib.Chunk, vocab_size: int) -> None:
  """ValueError for an id outside [0, vocab_size): NumPy indexing would count a negative one as
  another token (-1 as the last) and fail on a large one with a bare IndexError."""
  t = chunk.token_ids
  if t.size and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
    bad = int(t.max()) if int(t.max()) >= vocab_size else int(t.min())
    raise ValueError(f"Token id {bad} is outside the vocabulary [0, {vocab_size}): the tokenized "
                     "corpus was made with another tokenizer than the one given.")


def chunk_unigram_counts(chunk: chunks_lib.Chunk, vocab_size: int) -> UnigramCounts:
  check_token_ids(chunk, vocab_size)
  t = chunk.token_ids
  return UnigramCounts(counts=np.bincount(t, minlength=vocab_size).astype(np.int64),
                       num_tokens=chunk.num_tokens,
                       num_sentences=int(chunk.sentence_starts().sum()),
                       num_documents=chunk.num_documents)


def merge_unigrams(a: UnigramCounts | None, b: UnigramCounts) -> UnigramCounts:
  if a is None:
    return b
  return UnigramCounts(a.counts + b.counts, a.num_tokens + b.num_tokens,
                       a.num_sentences + b.num_sentences, a.num_documents + b.num_documents)


def count_unigrams(documents, vocab_size: int, *,
                   chunk_tokens: int = chunks_lib.DEFAULT_CHUNK_TOKENS,
                   progress: bool = False) -> UnigramCounts:
  """Token counts over the whole corpus (bincount per chunk, summed)."""
  corpus = chunks_lib.as_corpus(documents)
  total = UnigramCounts(np.zeros(vocab_size, np.int64), 0, 0, 0)
  with tqdm(total=corpus.num_documents, desc="unigram counts", unit="doc",
            disable=not progress) as bar:
    for chunk in chunks_lib.iter_chunks(corpus, chunk_tokens):
      total = merge_unigrams(total, chunk_unigram_counts(chunk, vocab_size))
      bar.update(chunk.num_documents)
  return total


def select_pmi_vocab(unigram_counts: np.ndarray, *, special_ids: Sequence[int], size: int,
                     min_count: int, drop_top_k: int = 0) -> np.ndarray:
  """The PMI vocabulary: int32 token ids, most frequent first (ties: lower id first).

  Non-special tokens with count >= min_count, ordered by count; the `drop_top_k` most frequent are
  left out (stop-word-like tokens whose PMI is uninformative), then the next `size` are kept.
  """
  counts = np.asarray(unigram_counts, dtype=np.int64)
  eligible = counts >= max(int(min_count), 1)
  eligible[np.asarray([s for s in special_ids if 0 <= s < counts.size], dtype=np.int64)] = False
  ids = np.flatnonzero(eligible)
  order = np.lexsort((ids, -counts[ids]))  # by count desc, then id asc
  ids = ids[order][int(drop_top_k):int(drop_top_k) + int(size)]
  return ids.astype(np.int32)


def too_few_pmi_tokens(unigram_counts: np.ndarray, *, special_ids: Sequence[int], min_count: int,
                       drop_top_k: int, kept: int) -> str:
  """Why the PMI vocabulary holds fewer than 2 tokens, naming the setting that limits it:
  drop_top_k, or min_count (the corpus), whichever left too few. Shared by the local builder and
  the Beam pipeline, so that both give the same advice."""
  eligible = select_pmi_vocab(unigram_counts, special_ids=special_ids,
                              size=np.asarray(unigram_counts).size, min_count=min_count).size
  if eligible >= 2:
    return (f"{eligible} tokens occur at least config.stats.min_count={min_count} times, and "
            f"config.stats.drop_top_k={drop_top_k} drops the most frequent of them, leaving "
            f"{kept}; a PMI table needs at least 2. Lower stats.drop_top_k.")
  return (f"Only {kept} token(s) occur at least config.stats.min_count={min_count} times "
          f"(after dropping config.stats.drop_top_k={drop_top_k}); the corpus is too small "
          "for a PMI table. Lower stats.min_count or use a larger corpus.")


def row_lookup(vocab_ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """int32[V]: row of each token id in the PMI vocabulary, -1 outside it."""
  rows = np.full(vocab_size, -1, dtype=np.int32)
  rows[vocab_ids] = np.arange(len(vocab_ids), dtype=np.int32)
  return rows


def word_index(chunk: chunks_lib.Chunk, continuation: np.ndarray | None) -> np.ndarray:
  """int64 (N,): running word index; a "##" piece joins the word before it within a sentence."""
  starts = chunk.sentence_starts()
  if continuation is not None:
    starts |= ~np.asarray(continuation, dtype=bool)[chunk.token_ids]
  return np.cumsum(starts) - 1


def chunk_pair_counts(chunk: chunks_lib.Chunk, rows: np.ndarray, num_rows: int, *,
                      window: int = 0, whole_words: bool = False,
                      continuation: np.ndarray | None = None) -> sp.csr_matrix:
  """Ordered within-sentence pair counts of one chunk: int64 CSR [R, R] (see module docstring)."""
  if whole_words and continuation is None:
    raise ValueError("stats.whole_words=True needs the tokenizer's continuation table.")
  check_token_ids(chunk, len(rows))  # rows has one entry per vocabulary id.
  r = rows[chunk.token_ids]  # (N,) row or -1
  sentence = np.cumsum(chunk.sentence_starts()) - 1  # (N,) sentence index within the chunk
  word = word_index(chunk, continuation) if whole_words else None
  shape = (num_rows, num_rows)
  if window > 0:
    return _window_pairs(r, sentence, word, window, shape)
  keep = r >= 0
  rk, sk = r[keep], sentence[keep]
  n_sent = int(sentence[-1]) + 1 if sentence.size else 0
  # int32 products are faster and exact while no entry can reach 2^31: an entry is at most
  # sum over sentences of n_s^2 <= (longest sentence) * (tokens).
  longest = int(np.bincount(sk).max()) if sk.size else 0
  dtype = np.int32 if longest * max(rk.size, 1) < 2**31 else np.int64
  ones = np.ones(rk.size, dtype=dtype)
  s = sp.csr_matrix((ones, (sk, rk)), shape=(n_sent, num_rows))  # (S, R) token counts
  counts = s.T.tocsr() @ s  # (R, R), includes i == j
  if whole_words:
    n_words = int(word[-1]) + 1 if word.size else 0
    w = sp.csr_matrix((ones, (word[keep], rk)), shape=(n_words, num_rows))  # (W, R)
    counts = counts - w.T.tocsr() @ w  # same-word pairs, i == j included
  else:
    # Remove the i == j pairs in place: every token present has its diagonal entry.
    row = np.repeat(np.arange(num_rows, dtype=np.int32), np.diff(counts.indptr))
    diag = np.flatnonzero(counts.indices == row)
    counts.data[diag] -= np.bincount(rk, minlength=num_rows).astype(dtype)[row[diag]]
  # The product's column indices come out unsorted; the table is symmetric, so its transpose
  # converted back to CSR is the same table with sorted indices (a linear-time pass).
  counts = counts.T.tocsr().astype(np.int64, copy=False)
  counts.eliminate_zeros()
  return counts


def _window_pairs(r, sentence, word, window, shape):
  """Pairs at most `window` positions (words with whole_words) apart, offset by offset."""
  n = r.size
  position = word if word is not None else np.arange(n)
  active = np.arange(n - 1)  # left ends that may still have partners at larger offsets
  left, right = [], []
  d = 1
  while active.size:
    b = active + d
    # Offsets only grow, so a left end that failed the sentence or distance test is done.
    dist = position[b] - position[active]
    alive = (sentence[b] == sentence[active]) & (dist <= window)
    active, b, dist = active[alive], b[alive], dist[alive]
    pair = (dist >= 1) & (r[active] >= 0) & (r[b] >= 0)
    left.append(r[active[pair]])
    right.append(r[b[pair]])
    d += 1
    active = active[active + d < n]
  a = np.concatenate(left) if left else np.zeros(0, np.int32)
  b = np.concatenate(right) if right else np.zeros(0, np.int32)
  return _table_from_pairs(a, b, shape[0])


def _table_from_pairs(a: np.ndarray, b: np.ndarray, num_rows: int) -> sp.csr_matrix:
  """Ordered counts C from unordered position pairs (a_k, b_k): C = U + U^T, U upper triangular.

  Keys min * R + max sort into row-major order, so the unique keys are U in canonical CSR form
  (uint32 keys while R^2 fits: NumPy's SIMD sort is fastest on them).
  """
  lo, hi = np.minimum(a, b), np.maximum(a, b)
  dtype = np.uint32 if num_rows * num_rows < 2**32 else np.uint64
  keys = np.sort(lo.astype(dtype) * dtype(num_rows) + hi.astype(dtype))
  if keys.size:
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(first, keys.size)).astype(np.int64)
    keys = keys[first]
  else:
    counts = np.zeros(0, np.int64)
  rows = (keys // dtype(num_rows)).astype(np.int64)
  indptr = np.searchsorted(rows, np.arange(num_rows + 1))
  upper = sp.csr_matrix((counts, (keys % dtype(num_rows)).astype(np.int32), indptr),
                        shape=(num_rows, num_rows))
  table = (upper + upper.T.tocsr()).tocsr()
  table.sort_indices()
  return table


@dataclasses.dataclass
class PairCounts:
  """Pair counts over the PMI vocabulary, pruned to pairs seen >= min_pair_count times."""

  vocab_ids: np.ndarray  # (R,) int32 token id of each row
  counts: sp.csr_matrix  # (R, R) int64 ordered counts, pruned
  marginals: np.ndarray  # (R,) int64 row sums of the unpruned table
  total: int  # sum of the unpruned table
  num_tokens: int  # tokens read (all tokens, in or out of the vocabulary)
  min_pair_count: int


class PairAccumulator:
  """Running sum of [R, R] pair tables under a memory cap, spilling to disk above it."""

  def __init__(self, num_rows: int, *, memory_cap_mb: float, spill_dir: str | None = None):
    self.num_rows = num_rows
    self.cap_bytes = max(float(memory_cap_mb), 1e-6) * 2**20
    self.spill_dir = spill_dir
    self.total: sp.csr_matrix | None = None
    self.pending: list[sp.csr_matrix] = []
    self.spills: list[str] = []  # path prefixes of spilled tables
    self.num_tokens = 0

  @property
  def nbytes(self) -> int:
    nnz = (self.total.nnz if self.total is not None else 0) + sum(p.nnz for p in self.pending)
    return nnz * _BYTES_PER_NNZ

  def add(self, counts: sp.csr_matrix, num_tokens: int = 0) -> None:
    self.num_tokens += int(num_tokens)
    self.pending.append(counts)
    pending_nnz = sum(p.nnz for p in self.pending)
    if pending_nnz >= max(_MIN_MERGE_NNZ, self.total.nnz if self.total is not None else 0):
      self._merge_pending()
    if self.nbytes > self.cap_bytes:
      self.spill()

  def absorb(self, other: PairAccumulator) -> None:
    """Adds another accumulator's sum (e.g. a worker's), taking over its spill files."""
    other._merge_pending()  # Tables it has not summed yet (Beam merges live accumulators).
    self.spills.extend(other.spills)
    if other.total is not None:
      self.add(other.total, other.num_tokens)
    else:
      self.num_tokens += other.num_tokens
    if len(self.spills) >= _MAX_SPILLS:
      self.compact_spills()

  def _merge_pending(self) -> None:
    tables = ([self.total] if self.total is not None else []) + self.pending
    self.pending = []
    self.total = _sum_tables(tables) if tables else None

  def spill(self) -> None:
    """Writes the running sum to disk; past _MAX_SPILLS files they are merged into one."""
    self._merge_pending()
    if self.total is None:
      return
    prefix = self._new_prefix()
    _write_spill(prefix, [self.total], self.num_rows)
    self.spills.append(prefix)
    self.total = None
    if len(self.spills) >= _MAX_SPILLS:
      self.compact_spills()

  def _new_prefix(self) -> str:
    if self.spill_dir is None:
      self.spill_dir = tempfile.mkdtemp(prefix=PAIRS_SPILL_PREFIX)
    return os.path.join(self.spill_dir, f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}")

  def compact_spills(self) -> None:
    """Merges the spill files into one, row block by row block.

    Keeps the disk footprint at most the distinct pairs seen plus a few caps, whatever the
    corpus size (each spill repeats the pairs common to every part of the corpus).
    """
    if len(self.spills) < 2:
      return
    prefix = self._new_prefix()
    _write_spill(prefix, (block for _, _, block in self._blocks(with_total=False)),
                 self.num_rows)
    for old in self.spills:
      _remove_spill(old)
    self.spills = [prefix]

  def _blocks(self, with_total: bool):
    """Yields (lo, hi, rows lo..hi of the sum of every spill and the running total)."""
    r = self.num_rows
    total = self.total if with_total else None
    row_nnz = np.zeros(r, np.int64)
    for prefix in self.spills:
      row_nnz += np.diff(np.load(f"{prefix}.indptr.npy"))
    if total is not None:
      row_nnz += np.diff(total.indptr)
    # Rows per block so that one block of all sources together stays under half the cap.
    budget = max(1, int(self.cap_bytes / 2 / _BYTES_PER_NNZ))
    for lo, hi in _row_blocks(row_nnz, budget):
      # Spills are memory-mapped afresh for each block and copied out, so the pages of earlier
      # blocks are released: resident memory follows the block, not the spilled total.
      parts = [_row_slice(_load_spill(p), lo, hi, r) for p in self.spills]
      if total is not None:
        parts.append(total[lo:hi] if (lo, hi) != (0, r) else total)
      yield lo, hi, (_sum_tables(parts) if parts
                     else sp.csr_matrix((hi - lo, r), dtype=np.int64))

  def finalize(self, vocab_ids: np.ndarray, min_pair_count: int) -> PairCounts:
    """Merges everything (in row blocks when spilled) and prunes rare pairs."""
    self._merge_pending()
    r = self.num_rows
    marginals = np.zeros(r, np.int64)
    blocks = []
    for lo, hi, block in self._blocks(with_total=True):
      marginals[lo:hi] = np.asarray(block.sum(axis=1)).reshape(-1)
      blocks.append(_prune(block, lo, min_pair_count))
    if len(blocks) == 1:
      counts = blocks[0]
    elif blocks:
      counts = sp.vstack(blocks, format="csr")
    else:
      counts = sp.csr_matrix((r, r), dtype=np.int64)
    counts = counts.astype(np.int64, copy=False)
    counts.sort_indices()
    return PairCounts(vocab_ids=np.asarray(vocab_ids, np.int32), counts=counts,
                      marginals=marginals, total=int(marginals.sum()), num_tokens=self.num_tokens,
                      min_pair_count=int(min_pair_count))


def _sum_tables(tables: list[sp.csr_matrix]) -> sp.csr_matrix:
  # Pairwise tree sum: each level adds tables of similar size.
  tables = [t.tocsr() for t in tables]
  while len(tables) > 1:
    nxt = [tables[i] + tables[i + 1] for i in range(0, len(tables) - 1, 2)]
    if len(tables) % 2:
      nxt.append(tables[-1])
    tables = nxt
  out = tables[0].astype(np.int64, copy=False)
  out.sum_duplicates()
  return out


def _write_spill(prefix: str, blocks, num_rows: int) -> None:
  """Writes consecutive row blocks (together all rows) as one CSR table: raw int32 indices and
  int64 counts (appendable, memory-mapped on reading) and an .npy row pointer."""
  row_counts = []
  with open(f"{prefix}.indices.bin", "wb") as fi, open(f"{prefix}.data.bin", "wb") as fd:
    for block in blocks:
      block.indices.astype(np.int32, copy=False).tofile(fi)
      block.data.astype(np.int64, copy=False).tofile(fd)
      row_counts.append(np.diff(block.indptr).astype(np.int64))
  indptr = np.zeros(num_rows + 1, np.int64)
  if row_counts:
    np.cumsum(np.concatenate(row_counts), out=indptr[1:])
  np.save(f"{prefix}.indptr.npy", indptr)


def _load_spill(prefix: str):
  indptr = np.load(f"{prefix}.indptr.npy")
  nnz = int(indptr[-1])
  if nnz == 0:
    return indptr, np.zeros(0, np.int32), np.zeros(0, np.int64)
  return (indptr, np.memmap(f"{prefix}.indices.bin", np.int32, "r", shape=(nnz,)),
          np.memmap(f"{prefix}.data.bin", np.int64, "r", shape=(nnz,)))


def _remove_spill(prefix: str) -> None:
  for suffix in (".indptr.npy", ".indices.bin", ".data.bin"):
    if os.path.exists(prefix + suffix):
      os.remove(prefix + suffix)


def _row_slice(src, lo, hi, num_cols) -> sp.csr_matrix:
  indptr, indices, data = src
  a, b = int(indptr[lo]), int(indptr[hi])
  ptr = np.array(indptr[lo:hi + 1], dtype=np.int64) - a
  return sp.csr_matrix((np.array(data[a:b]), np.array(indices[a:b]), ptr),
                       shape=(hi - lo, num_cols))


def _row_blocks(row_nnz: np.ndarray, budget: int) -> list[tuple[int, int]]:
  r = row_nnz.size
  if r == 0:
    return []
  cum = np.cumsum(row_nnz)
  bounds, lo = [], 0
  while lo < r:
    base = cum[lo - 1] if lo else 0
    hi = int(np.searchsorted(cum, base + budget, side="right"))
    hi = min(max(hi, lo + 1), r)
    bounds.append((lo, hi))
    lo = hi
  return bounds


def _prune(block: sp.csr_matrix, row_offset: int, min_pair_count: int) -> sp.csr_matrix:
  """Drops pairs co-occurring fewer than min_pair_count times (diagonal counts are doubled)."""
  m = max(int(min_pair_count), 1)
  if m == 1:
    return block  # Every stored count is >= 1 already.
  num = block.shape[0]
  row = np.repeat(np.arange(num, dtype=np.int64), np.diff(block.indptr))  # (nnz,)
  keep = block.data >= m
  diag = np.flatnonzero(block.indices == row + row_offset)
  keep[diag] = block.data[diag] >= 2 * m  # n(x, x) = C[x, x] / 2
  indptr = np.zeros(num + 1, np.int64)
  np.cumsum(np.bincount(row[keep], minlength=num), out=indptr[1:])
  return sp.csr_matrix((block.data[keep], block.indices[keep], indptr), shape=block.shape)


def _count_shard(args, corpus, start, stop):
  rows, num_rows, window, whole_words, continuation, chunk_tokens, cap_mb, spill_dir = args
  acc = PairAccumulator(num_rows, memory_cap_mb=cap_mb, spill_dir=spill_dir)
  docs = 0
  for chunk in corpus.chunks(start, stop, chunk_tokens):
    acc.add(chunk_pair_counts(chunk, rows, num_rows, window=window, whole_words=whole_words,
                              continuation=continuation), chunk.num_tokens)
    docs += chunk.num_documents
  acc._merge_pending()
  return acc, docs


class _ShardFn:
  """Picklable closure for worker processes."""

  def __init__(self, args):
    self.args = args

  def __call__(self, corpus, start, stop):
    return _count_shard(self.args, corpus, start, stop)


def count_pairs(documents, vocab_ids: np.ndarray, *, vocab_size: int, window: int = 0,
                whole_words: bool = False, continuation: np.ndarray | None = None,
                min_pair_count: int = 1, memory_cap_mb: float = 2048, num_workers: int = 1,
                chunk_tokens: int = chunks_lib.DEFAULT_CHUNK_TOKENS,
                shard_tokens: int | None = None, spill_dir: str | None = None,
                progress: bool = False) -> PairCounts:
  """Counts within-sentence pairs of `vocab_ids` tokens over the corpus.

  documents: a Corpus, a `datasets.Dataset` (input_ids / sentence_ids) or an iterable of
  (token_ids, sentence_ids) arrays. With num_workers > 1 the documents are cut into shards of
  about `shard_tokens` tokens counted in worker processes, each under memory_cap_mb / workers.
  """
  if window < 0:
    raise ValueError(f"stats.window must be >= 0 (0: whole sentences), got {window}.")
  corpus = chunks_lib.as_corpus(documents)
  vocab_ids = np.asarray(vocab_ids, np.int32)
  rows = row_lookup(vocab_ids, vocab_size)
  num_workers = max(1, int(num_workers))
  shard_tokens = shard_tokens or 8 * chunk_tokens
  num_shards = 1
  if num_workers > 1:
    total_tokens = chunks_lib.estimate_tokens(corpus)
    num_shards = max(1, int(np.ceil(total_tokens / shard_tokens)))
    if num_shards < 2:
      num_workers = 1
  # A signal between the folder's making and the block that removes it would leave it behind.
  with paths.scratch_dir(prefix=PAIRS_SPILL_PREFIX, dir=spill_dir) as tmp:
    acc = PairAccumulator(len(vocab_ids), memory_cap_mb=memory_cap_mb, spill_dir=tmp)
    worker_cap = memory_cap_mb / (num_workers + 1) if num_workers > 1 else memory_cap_mb
    fn = _ShardFn((rows, len(vocab_ids), int(window), bool(whole_words), continuation,
                   int(chunk_tokens), worker_cap, tmp))
    if num_workers == 1:
      # One process: stream chunks straight into the accumulator, with a live progress bar.
      with tqdm(total=corpus.num_documents, desc="pair counts", unit="doc",
                disable=not progress) as bar:
        for chunk in chunks_lib.iter_chunks(corpus, chunk_tokens):
          acc.add(chunk_pair_counts(chunk, rows, len(vocab_ids), window=window,
                                    whole_words=whole_words, continuation=continuation),
                  chunk.num_tokens)
          bar.update(chunk.num_documents)
    else:
      with tqdm(total=corpus.num_documents, desc=f"pair counts ({num_workers} procs)", unit="doc",
                disable=not progress) as bar:
        for part, docs in chunks_lib.map_shards(fn, corpus, num_workers=num_workers,
                                                num_shards=num_shards):
          acc.absorb(part)
          bar.update(docs)
    return acc.finalize(vocab_ids, min_pair_count)
