"""The PMI n-gram vocabulary of PMI-Masking (Levine et al., ICLR 2021) and the bigram table of the
InforMask repository's simpler `pmi_masking` variant.

Words are WordPiece words: a non-"##" token and the "##" pieces after it. Word n-grams (n = 2..5)
never cross a sentence, and words holding a special token ([UNK]) take part in none. Each n-gram
is scored by

  PMI_n(w_1..w_n) = min over segmentations s of w_1..w_n into >= 2 contiguous parts of
                    log p(w_1..w_n) / prod_{part in s} p(part),

with p(g) = count(g) / (number of k-gram positions) for a k-word g: an n-gram ranks high only
when it is more than the sum of *every* way of splitting it (so "new york city" is not carried by
"new york" alone). N-grams seen >= min_count times are ranked per length and assembled 50%
bigrams, 25% trigrams, 12.5% 4-grams and 12.5% 5-grams (only PMI_n > 0 is kept, so a small
corpus gives a smaller vocabulary). The list is in priority order: entries are sorted by rank
within their length divided by that length's quota, so every prefix keeps the proportions.

Counting is vectorised: each word gets a 64-bit hash of its pieces and each n-gram a chained
hash of its words (with the length in the top 3 bits); a chunk's keys are counted with a sort,
and chunk counts are merged (a commutative sum, as a Beam combiner would do). Above the memory
cap, counts spill to disk in hash partitions that are merged one at a time. With 64-bit keys two
distinct n-grams share a key with probability ~ k^2 / 2^62 for k distinct keys (about 1e-5 for
ten million): a merged count, never a crash.

The bigram table: adjacent token pairs (pieces, within a sentence, no specials) seen >=
min_count times with PMI log p(ab) / (p(a) p(b)) > 0, highest first, at most half the n-gram
vocabulary's size.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import uuid
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from informask_jax import paths
from informask_jax.stats import chunks as chunks_lib
from informask_jax.stats.pmi import MIN_POSITIVE_PMI

MAX_N = 5
# The spill folders' prefix (the build names those a killed run left in its directory).
NGRAMS_SPILL_PREFIX = "informask-ngrams-"
# Share of the vocabulary per n-gram length (Levine et al.).
LENGTH_SHARES = {2: 0.5, 3: 0.25, 4: 0.125, 5: 0.125}

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW61 = np.uint64((1 << 61) - 1)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
  x = x ^ (x >> np.uint64(30))
  x = x * _M1
  x = x ^ (x >> np.uint64(27))
  x = x * _M2
  return x ^ (x >> np.uint64(31))


def tagged_key(raw: np.ndarray, n: int) -> np.ndarray:
  """The counters' key of an n-gram: the low 61 bits of its raw hash, its length n in the top 3."""
  return (raw & _LOW61) | (np.uint64(n) << np.uint64(61))


def key_length(keys: np.ndarray) -> np.ndarray:
  return (keys >> np.uint64(61)).astype(np.int64)


@dataclasses.dataclass
class ChunkWords:
  """The words of a chunk and the raw (untagged) hashes of every n-gram starting at each word."""

  start: np.ndarray  # (W,) first token of each word
  end: np.ndarray  # (W,) one past its last token
  raw: dict[int, np.ndarray]  # n -> (W - n + 1,) uint64 chained hash of words i..i+n-1
  valid: dict[int, np.ndarray]  # n -> (W - n + 1,) bool: same sentence, no special token


def chunk_words(chunk: chunks_lib.Chunk, continuation: np.ndarray, special: np.ndarray,
                max_n: int = MAX_N) -> ChunkWords:
  t = chunk.token_ids
  n_tok = t.size
  sent_start = chunk.sentence_starts()
  starts = sent_start | ~continuation[t]
  start = np.flatnonzero(starts)
  end = np.append(start[1:], n_tok).astype(np.int64)
  w = start.size
  raw, valid = {}, {}
  if w == 0:
    for n in range(1, max_n + 1):
      raw[n] = np.zeros(0, np.uint64)
      valid[n] = np.zeros(0, bool)
    return ChunkWords(start, end, raw, valid)
  word_of = np.cumsum(starts) - 1  # (N,)
  piece = (np.arange(n_tok) - start[word_of]).astype(np.uint64)  # position within the word
  token_hash = _mix((t.astype(np.uint64) + np.uint64(1)) ^ (piece * _GOLDEN))
  word_hash = _mix(np.add.reduceat(token_hash, start))  # (W,) wraps mod 2^64
  sentence = (np.cumsum(sent_start) - 1)[start]  # (W,)
  clean = np.add.reduceat(special[t].astype(np.int32), start) == 0  # (W,)
  raw[1], valid[1] = word_hash, clean
  for n in range(2, max_n + 1):
    m = w - n + 1
    if m <= 0:
      raw[n], valid[n] = np.zeros(0, np.uint64), np.zeros(0, bool)
      continue
    raw[n] = _mix(raw[n - 1][:m] * _GOLDEN + word_hash[n - 1:])
    valid[n] = valid[n - 1][:m] & clean[n - 1:] & (sentence[n - 1:] == sentence[:m])
  return ChunkWords(start, end, raw, valid)


def _unique_sum(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  if keys.size == 0:
    return keys.astype(np.uint64), counts.astype(np.int64)
  order = np.argsort(keys, kind="stable")
  k, c = keys[order], counts[order].astype(np.int64)
  first = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
  return k[first], np.add.reduceat(c, first)


class KeyCounter:
  """Counts of uint64 keys: compacted in memory, spilled to disk in hash partitions above a cap."""

  _PARTITIONS = 32
  _MAX_SPILLS = 8  # Spills merged into one past this many: disk ~ distinct keys, not corpus.

  def __init__(self, *, memory_cap_mb: float, spill_dir: str | None = None):
    self.cap_bytes = max(float(memory_cap_mb), 1e-6) * 2**20
    self.spill_dir = spill_dir
    self.keys = np.zeros(0, np.uint64)
    self.counts = np.zeros(0, np.int64)
    self.buffer: list[tuple[np.ndarray, np.ndarray]] = []
    self.buffered = 0
    self.spills: list[str] = []

  def add(self, keys: np.ndarray, counts: np.ndarray | None = None) -> None:
    if counts is None:
      keys, counts = np.unique(keys, return_counts=True)
    self.buffer.append((keys.astype(np.uint64), counts.astype(np.int64)))
    self.buffered += keys.size
    if self.buffered * 16 > self.cap_bytes / 4 or self.buffered > 2 * self.keys.size + (1 << 22):
      self.compact()
    if (self.keys.size + self.buffered) * 16 > self.cap_bytes / 2:
      self.spill()

  def compact(self) -> None:
    if not self.buffer:
      return
    ks = [self.keys] + [k for k, _ in self.buffer]
    cs = [self.counts] + [c for _, c in self.buffer]
    self.keys, self.counts = _unique_sum(np.concatenate(ks), np.concatenate(cs))
    self.buffer, self.buffered = [], 0

  def absorb(self, other: KeyCounter) -> None:
    self.spills.extend(other.spills)
    if self.spills and self.spill_dir is None:
      self.spill_dir = other.spill_dir
    other.compact()
    self.add(other.keys, other.counts)
    if len(self.spills) >= self._MAX_SPILLS:
      self.compact_spills()

  def spill(self) -> None:
    self.compact()
    if self.keys.size == 0:
      return
    if self.spill_dir is None:
      self.spill_dir = tempfile.mkdtemp(prefix=NGRAMS_SPILL_PREFIX)
    part = _partition(self.keys, self._PARTITIONS)
    prefix = os.path.join(self.spill_dir, f"keys-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    for p in range(self._PARTITIONS):
      sel = part == p
      np.save(f"{prefix}.p{p}.keys.npy", self.keys[sel])
      np.save(f"{prefix}.p{p}.counts.npy", self.counts[sel])
    self.spills.append(prefix)
    self.keys = np.zeros(0, np.uint64)
    self.counts = np.zeros(0, np.int64)
    if len(self.spills) >= self._MAX_SPILLS:
      self.compact_spills()

  def _load_part(self, prefix: str, p: int) -> tuple[np.ndarray, np.ndarray]:
    return np.load(f"{prefix}.p{p}.keys.npy"), np.load(f"{prefix}.p{p}.counts.npy")

  def compact_spills(self) -> None:
    """Merges the spill files into one, one hash partition at a time."""
    if len(self.spills) < 2:
      return
    prefix = os.path.join(self.spill_dir, f"keys-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    for p in range(self._PARTITIONS):
      parts = [self._load_part(s, p) for s in self.spills]
      k, c = _unique_sum(np.concatenate([k for k, _ in parts]),
                         np.concatenate([c for _, c in parts]))
      np.save(f"{prefix}.p{p}.keys.npy", k)
      np.save(f"{prefix}.p{p}.counts.npy", c)
    for old in self.spills:
      for p in range(self._PARTITIONS):
        for what in ("keys", "counts"):
          os.remove(f"{old}.p{p}.{what}.npy")
    self.spills = [prefix]

  def result(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys with count >= min_count, merged one hash partition at a time."""
    self.compact()
    if not self.spills:
      keep = self.counts >= min_count
      return self.keys[keep], self.counts[keep]
    part = _partition(self.keys, self._PARTITIONS)
    out_k, out_c = [], []
    for p in range(self._PARTITIONS):
      parts = [(self.keys[part == p], self.counts[part == p])]
      parts += [self._load_part(s, p) for s in self.spills]
      k, c = _unique_sum(np.concatenate([k for k, _ in parts]),
                         np.concatenate([c for _, c in parts]))
      keep = c >= min_count
      out_k.append(k[keep])
      out_c.append(c[keep])
    k, c = np.concatenate(out_k), np.concatenate(out_c)
    order = np.argsort(k)
    return k[order], c[order]


def _partition(keys: np.ndarray, parts: int) -> np.ndarray:
  return (_mix(keys) & np.uint64(parts - 1)).astype(np.int64)


@dataclasses.dataclass
class NgramCounts:
  """Counts of frequent word n-grams (n = 1..max_n) and of frequent adjacent token pairs."""

  keys: np.ndarray  # (K,) uint64 sorted, tagged with the length
  counts: np.ndarray  # (K,) int64, every one >= min_count
  positions: np.ndarray  # (max_n + 1,) int64: number of n-gram positions of each length
  pair_keys: np.ndarray  # (P,) uint64 a * V + b, sorted
  pair_counts: np.ndarray  # (P,) int64
  token_counts: np.ndarray  # (V,) int64 non-special tokens
  num_adjacent: int  # adjacent within-sentence non-special token pairs
  min_count: int


@dataclasses.dataclass
class ChunkNgramCounts:
  """One chunk's counts; partial counts of any split of the corpus add up (a Beam combiner's
  accumulator): n-gram and pair keys are merged with `KeyCounter`, the rest by summing."""

  keys: np.ndarray  # (K,) uint64 tagged n-gram keys, unique
  counts: np.ndarray  # (K,) int64
  pair_keys: np.ndarray  # (P,) uint64 a * V + b, unique
  pair_counts: np.ndarray  # (P,) int64
  positions: np.ndarray  # (max_n + 1,) int64 n-gram positions per length
  token_counts: np.ndarray  # (V,) int64 non-special tokens
  num_adjacent: int


def chunk_ngram_counts(chunk: chunks_lib.Chunk, *, vocab_size: int, continuation: np.ndarray,
                       special: np.ndarray, max_n: int = MAX_N) -> ChunkNgramCounts:
  """Word n-gram counts (n = 1..max_n) and adjacent token pair counts of one chunk."""
  words = chunk_words(chunk, continuation, special, max_n)
  positions = np.zeros(max_n + 1, np.int64)
  keys = []
  for n in range(1, max_n + 1):
    keys.append(tagged_key(words.raw[n][words.valid[n]], n))
    positions[n] = keys[-1].size
  keys, counts = np.unique(np.concatenate(keys), return_counts=True)
  t = chunk.token_ids
  ok = ~special[t]
  adjacent = ok[:-1] & ok[1:] & ~chunk.sentence_starts()[1:]
  pair = t[:-1][adjacent].astype(np.uint64) * np.uint64(vocab_size) + t[1:][adjacent]
  pair_keys, pair_counts = np.unique(pair, return_counts=True)
  return ChunkNgramCounts(keys, counts.astype(np.int64), pair_keys, pair_counts.astype(np.int64),
                          positions, np.bincount(t[ok], minlength=vocab_size).astype(np.int64),
                          int(pair.size))


def _count_shard(args, corpus, start, stop):
  vocab_size, continuation, special, max_n, chunk_tokens, cap_mb, spill_dir = args
  grams = KeyCounter(memory_cap_mb=cap_mb * 0.75, spill_dir=spill_dir)
  pairs = KeyCounter(memory_cap_mb=cap_mb * 0.25, spill_dir=spill_dir)
  positions = np.zeros(max_n + 1, np.int64)
  tokens = np.zeros(vocab_size, np.int64)
  num_adjacent, docs = 0, 0
  for chunk in corpus.chunks(start, stop, chunk_tokens):
    part = chunk_ngram_counts(chunk, vocab_size=vocab_size, continuation=continuation,
                              special=special, max_n=max_n)
    grams.add(part.keys, part.counts)
    pairs.add(part.pair_keys, part.pair_counts)
    positions += part.positions
    tokens += part.token_counts
    num_adjacent += part.num_adjacent
    docs += chunk.num_documents
  grams.compact()
  pairs.compact()
  return grams, pairs, positions, tokens, num_adjacent, docs


class _ShardFn:
  def __init__(self, args):
    self.args = args

  def __call__(self, corpus, start, stop):
    return _count_shard(self.args, corpus, start, stop)


def count_ngrams(documents, *, vocab_size: int, special_ids: Sequence[int],
                 continuation: np.ndarray, min_count: int, max_n: int = MAX_N,
                 memory_cap_mb: float = 2048, num_workers: int = 1,
                 chunk_tokens: int = chunks_lib.DEFAULT_CHUNK_TOKENS,
                 shard_tokens: int | None = None, spill_dir: str | None = None,
                 progress: bool = False) -> NgramCounts:
  """Word n-gram counts (n = 1..max_n) and adjacent token pair counts, both >= min_count."""
  corpus = chunks_lib.as_corpus(documents)
  continuation = np.asarray(continuation, bool)
  if continuation.shape != (vocab_size,):
    raise ValueError(f"Continuation table has shape {continuation.shape}, expected "
                     f"({vocab_size},).")
  special = np.zeros(vocab_size, bool)
  special[list(special_ids)] = True
  # A signal between the folder's making and the block that removes it would leave it behind.
  with paths.scratch_dir(prefix=NGRAMS_SPILL_PREFIX, dir=spill_dir) as tmp:
    num_workers = max(1, int(num_workers))
    tokens_per_shard = shard_tokens or 8 * chunk_tokens
    num_shards = max(1, int(np.ceil(chunks_lib.estimate_tokens(corpus) / tokens_per_shard)))
    if num_shards < 2:
      num_workers = 1
    # Shards also run one after the other in this process (num_workers=1), for the progress bar.
    cap = memory_cap_mb / (num_workers + 1) if num_workers > 1 else memory_cap_mb
    fn = _ShardFn((vocab_size, continuation, special, max_n, chunk_tokens, cap, tmp))
    grams = KeyCounter(memory_cap_mb=memory_cap_mb * 0.75, spill_dir=tmp)
    pairs = KeyCounter(memory_cap_mb=memory_cap_mb * 0.25, spill_dir=tmp)
    positions = np.zeros(max_n + 1, np.int64)
    tokens = np.zeros(vocab_size, np.int64)
    num_adjacent = 0
    with tqdm(total=corpus.num_documents, desc="n-gram counts", unit="doc",
              disable=not progress) as bar:
      for g, p, pos, tok, adj, docs in chunks_lib.map_shards(
          fn, corpus, num_workers=num_workers, num_shards=num_shards):
        grams.absorb(g)
        pairs.absorb(p)
        positions += pos
        tokens += tok
        num_adjacent += adj
        bar.update(docs)
    keys, counts = grams.result(min_count)
    pair_keys, pair_counts = pairs.result(min_count)
    return NgramCounts(keys, counts, positions, pair_keys, pair_counts, tokens, num_adjacent,
                       int(min_count))


def _rank_key(scores: np.ndarray) -> np.ndarray:
  """Scores as ranked: rounded to MIN_POSITIVE_PMI. PMIs equal in exact arithmetic (common with
  small counts: 2 / (2 * 12) = 3 / (4 * 9)) come out of different log sums 1 ulp apart, which
  decided their order, and so which of them made a quota's cut, before the tie-breaks by count
  and token ids could."""
  return np.round(np.asarray(scores, np.float64) / MIN_POSITIVE_PMI) * MIN_POSITIVE_PMI


def segmentations(n: int) -> list[list[tuple[int, int]]]:
  """Every split of n words into >= 2 contiguous parts, as (start, stop) word ranges."""
  out = []
  for cuts in itertools.product((False, True), repeat=n - 1):
    if not any(cuts):
      continue
    bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
    out.append(list(zip(bounds[:-1], bounds[1:], strict=True)))
  return out


@dataclasses.dataclass
class ScoredNgrams:
  """Every frequent n-gram found in the corpus (n >= 2), with the place of one occurrence instead
  of its token ids: at ~27 bytes a candidate, not the ~500 of a Python tuple and its sub-span
  keys, the candidates of a large corpus fit. `tokens_of` reads the ids of the few kept."""
  lengths: np.ndarray  # (M,) words
  counts: np.ndarray  # (M,)
  scores: np.ndarray  # (M,) PMI_n
  starts: np.ndarray  # (M,) int64 offset of an occurrence's first token in the corpus's tokens
  sizes: np.ndarray  # (M,) int32 its number of tokens
  corpus: chunks_lib.Corpus
  chunk_tokens: int

  def tokens_of(self, rows) -> list[tuple[int, ...]]:
    """WordPiece ids of the n-grams at `rows`, read from the corpus in one pass."""
    rows = np.asarray(rows, np.int64)
    out: list[tuple[int, ...] | None] = [None] * rows.size
    order = np.argsort(self.starts[rows], kind="stable")
    begin = self.starts[rows][order]
    base, k = 0, 0
    for chunk in chunks_lib.iter_chunks(self.corpus, self.chunk_tokens):
      if k == order.size:
        break
      stop = base + chunk.token_ids.size
      j = int(np.searchsorted(begin, stop))  # The occurrences starting in this chunk.
      t = chunk.token_ids
      for i in order[k:j].tolist():
        first = int(self.starts[rows[i]]) - base
        out[i] = tuple(t[first:first + int(self.sizes[rows[i]])].tolist())
      k, base = j, stop
    return out


def _sorted_search(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """np.searchsorted(table, keys), the keys looked up in sorted order: with a table of millions
  of keys, neighbouring lookups then share cache lines (3.5x faster for 2.5M keys in 2M)."""
  order = np.argsort(keys)
  out = np.empty(keys.size, np.int64)
  out[order] = np.searchsorted(table, keys[order])
  return out


def score_ngrams(documents, counts: NgramCounts, *, continuation: np.ndarray,
                 special_ids: Sequence[int], max_n: int = MAX_N,
                 chunk_tokens: int = chunks_lib.DEFAULT_CHUNK_TOKENS,
                 progress: bool = False) -> ScoredNgrams:
  """PMI_n of every frequent n-gram (n >= 2), reading the corpus again to find one occurrence
  of each: its score is computed there, from the keys of its parts, and its place kept."""
  corpus = chunks_lib.as_corpus(documents)
  continuation = np.asarray(continuation, bool)
  special = np.zeros(continuation.size, bool)
  special[list(special_ids)] = True
  multi_word = key_length(counts.keys) >= 2
  cand = counts.keys[multi_word]  # sorted
  found = np.zeros(cand.size, bool)
  scores = np.full(cand.size, -np.inf)
  starts = np.zeros(cand.size, np.int64)
  sizes = np.zeros(cand.size, np.int32)
  log_n = np.log(np.maximum(counts.positions, 1).astype(np.float64))

  def log_p(keys):  # keys all present in the frequent table
    i = np.minimum(_sorted_search(counts.keys, keys), counts.keys.size - 1)
    ok = counts.keys[i] == keys
    lp = np.log(np.maximum(counts.counts[i], 1).astype(np.float64)) - log_n[key_length(keys)]
    return np.where(ok, lp, np.inf)  # a missing part (hash clash) disqualifies the n-gram

  base = 0
  with tqdm(total=cand.size, desc="n-gram examples", unit="ngram", disable=not progress) as bar:
    for chunk in chunks_lib.iter_chunks(corpus, chunk_tokens):
      if found.all():
        break
      words = chunk_words(chunk, continuation, special, max_n)
      for n in range(2, max_n + 1):
        pos = np.flatnonzero(words.valid[n])
        keys = tagged_key(words.raw[n][pos], n)
        idx = np.minimum(_sorted_search(cand, keys), max(cand.size - 1, 0))
        hit = (cand[idx] == keys) & ~found[idx] if cand.size else np.zeros(keys.size, bool)
        idx, first = np.unique(idx[hit], return_index=True)
        pos = pos[hit][first]
        if idx.size == 0:
          continue
        # PMI_n: the n-gram's log-probability over that of its best split into parts.
        part = {(a, b): log_p(tagged_key(words.raw[b - a][pos + a], b - a))
                for a in range(n) for b in range(a + 1, n + 1)}
        best = np.full(idx.size, -np.inf)
        for seg in segmentations(n):
          best = np.maximum(best, sum(part[a, b] for a, b in seg))
        scores[idx] = log_p(cand[idx]) - best
        starts[idx] = base + words.start[pos]
        sizes[idx] = words.end[pos + n - 1] - words.start[pos]
        found[idx] = True
        bar.update(idx.size)
      base += chunk.token_ids.size
  keep = np.flatnonzero(found & np.isfinite(scores))
  return ScoredNgrams(lengths=key_length(cand[keep]), counts=counts.counts[multi_word][keep],
                      scores=scores[keep],
                      starts=starts[keep], sizes=sizes[keep], corpus=corpus,
                      chunk_tokens=chunk_tokens)


def quotas(size: int, max_n: int = MAX_N) -> dict[int, int]:
  shares = {n: s for n, s in LENGTH_SHARES.items() if n <= max_n}
  total = sum(shares.values())
  q = {n: int(size * s / total) for n, s in shares.items()}
  q[2] += size - sum(q.values())
  return q


def assemble_vocab(scored: ScoredNgrams, size: int, max_n: int = MAX_N):
  """The n-gram vocabulary in priority order: (tokens, lengths, scores, counts) of the entries."""
  if size <= 0:
    raise ValueError(f"stats.ngram_vocab_size must be > 0, got {size}.")
  q = quotas(size, max_n)
  rank_key = _rank_key(scored.scores)
  chosen, priority = [], []
  for n, quota in q.items():
    if quota == 0:
      continue
    rows = np.flatnonzero((scored.lengths == n) & (scored.scores > MIN_POSITIVE_PMI))
    # Highest PMI_n first; ties by count, then by the token ids for determinism. Only the quota's
    # rows, and those tied with its last, need their tokens (read from the corpus) to be ordered.
    by_value = rows[np.lexsort((-scored.counts[rows], -rank_key[rows]))]
    if by_value.size > quota:
      last = by_value[quota - 1]
      tied = (rank_key[by_value] == rank_key[last]) & (
          scored.counts[by_value] == scored.counts[last])
      by_value = by_value[:int(np.flatnonzero(tied)[-1]) + 1]
    tokens = dict(zip(by_value.tolist(), scored.tokens_of(by_value), strict=True))
    order = sorted(by_value.tolist(), key=lambda i: (-rank_key[i], -scored.counts[i],
                                                     tokens[i]))[:quota]
    chosen.extend((i, tokens[i]) for i in order)
    priority.extend((rank + 0.5) / max(quota, 1) for rank in range(len(order)))
  # Sort by relative rank; at equal relative rank the longer n-gram first.
  order = sorted(range(len(chosen)), key=lambda k: (priority[k], -scored.lengths[chosen[k][0]]))
  rows = [chosen[k][0] for k in order]
  return ([list(chosen[k][1]) for k in order], scored.lengths[rows], scored.scores[rows],
          scored.counts[rows])


def bigram_table(counts: NgramCounts, *, vocab_size: int, size: int):
  """Adjacent token pairs ranked by PMI (> 0 only): (pairs int64[K, 2], pmi float64[K])."""
  a = (counts.pair_keys // np.uint64(vocab_size)).astype(np.int64)
  b = (counts.pair_keys % np.uint64(vocab_size)).astype(np.int64)
  n_tok = max(int(counts.token_counts.sum()), 1)
  log_u = np.log(np.maximum(counts.token_counts, 1).astype(np.float64)) - np.log(n_tok)
  pmi = (np.log(counts.pair_counts.astype(np.float64)) - np.log(max(counts.num_adjacent, 1))
         - log_u[a] - log_u[b])
  keep = np.flatnonzero(pmi > MIN_POSITIVE_PMI)
  order = keep[np.lexsort((a[keep], b[keep], -counts.pair_counts[keep],
                           -_rank_key(pmi[keep])))][:size]
  return np.stack([a[order], b[order]], axis=1), pmi[order]


@dataclasses.dataclass
class NgramVocab:
  ngrams: list[list[int]]  # priority order
  lengths: np.ndarray  # words per entry
  scores: np.ndarray  # PMI_n per entry
  counts: np.ndarray
  bigrams: np.ndarray  # (K, 2) int64 token pairs, highest PMI first
  bigram_scores: np.ndarray


def build_ngram_vocab(documents, *, vocab_size: int, special_ids: Sequence[int],
                      continuation: np.ndarray, size: int, min_count: int,
                      max_n: int = MAX_N, memory_cap_mb: float = 2048, num_workers: int = 1,
                      chunk_tokens: int = chunks_lib.DEFAULT_CHUNK_TOKENS,
                      spill_dir: str | None = None, progress: bool = False) -> NgramVocab:
  """Counts, scores and assembles the n-gram vocabulary and the bigram table."""
  if min_count < 1:
    raise ValueError(f"stats.ngram_min_count must be >= 1, got {min_count}.")
  corpus = chunks_lib.as_corpus(documents)
  counts = count_ngrams(corpus, vocab_size=vocab_size, special_ids=special_ids,
                        continuation=continuation, min_count=min_count, max_n=max_n,
                        memory_cap_mb=memory_cap_mb, num_workers=num_workers,
                        chunk_tokens=chunk_tokens, spill_dir=spill_dir, progress=progress)
  if not np.any(key_length(counts.keys) >= 2):
    raise ValueError(
        f"No word n-gram (n >= 2) occurs at least stats.ngram_min_count={min_count} times in the "
        f"corpus ({int(counts.positions[1])} words): too small a corpus for these settings. "
        "Only pmi_span needs the n-grams: `stats build --what=counts,pmi,rates` builds the "
        "other tables.")
  scored = score_ngrams(corpus, counts, continuation=continuation, special_ids=special_ids,
                        max_n=max_n, chunk_tokens=chunk_tokens, progress=progress)
  ngrams, lengths, scores, ngram_counts = assemble_vocab(scored, size, max_n)
  bigrams, bigram_scores = bigram_table(counts, vocab_size=vocab_size, size=max(1, size // 2))
  return check_not_empty(
      NgramVocab(ngrams, lengths, scores, ngram_counts, bigrams, bigram_scores), min_count)


def check_not_empty(vocab: NgramVocab, min_count: int) -> NgramVocab:
  """Refuses tables neither pmi_span variant could use: every frequent n-gram and adjacent pair
  with a PMI of 0 or less (a tiny or repetitive corpus). They were cached as built, and every
  run with these settings then failed at the masker, naming neither the corpus nor the setting."""
  if not vocab.ngrams and not len(vocab.bigrams):
    raise ValueError(
        f"No word n-gram or token pair that occurs at least stats.ngram_min_count={min_count} "
        "times has a positive PMI: the corpus is too small or too repetitive for PMI masking "
        "(more text, or a lower stats.ngram_min_count).")
  return vocab
