"""Per-chunk work, the unit of work on the workers: a batch of cleaned documents -> a `Chunk`;
a chunk -> its pair table cut into row blocks, its n-gram and adjacent-pair counts cut into hash
partitions, and one occurrence of each frequent n-gram it holds."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from informask_jax.stats import chunks as chunks_lib
from informask_jax.stats import counting, ngrams
from informask_jax.stats.beam_pipeline.settings import Settings

try:  # Optional dependency: `pip install -e ".[beam]"`.
  import apache_beam as beam
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  beam = None


class _Tokenize(beam.DoFn if beam else object):
  """A batch of cleaned training documents -> one `Chunk` (documents without a token dropped)."""

  def __init__(self, tokenizer_json: str):
    self.tokenizer_json = tokenizer_json  # The Rust tokenizer, set up by data.corpus_backend.

  def setup(self):
    from informask_jax import data

    self.backend = data.corpus_backend(self.tokenizer_json)

  def process(self, texts):
    from informask_jax import data

    ids, sids, lengths = data.encode_documents(list(texts), self.backend)
    lengths = lengths[lengths > 0]
    if lengths.size:
      offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
      yield chunks_lib.Chunk(ids, sids, offsets)


def _row_blocks(num_rows: int, blocks: int) -> list[tuple[int, int]]:
  bounds = np.linspace(0, num_rows, max(1, min(blocks, num_rows)) + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _pair_blocks(chunk, vocab_ids, settings: Settings):
  """The chunk's [R, R] pair table, as (block, table holding only that block's rows)."""
  s = settings.stats
  r = len(vocab_ids)
  table = counting.chunk_pair_counts(
      chunk, counting.row_lookup(vocab_ids, settings.vocab_size), r, window=int(s["window"]),
      whole_words=bool(s["whole_words"]), continuation=settings.continuation)
  for block, (lo, hi) in enumerate(_row_blocks(r, settings.pair_blocks)):
    a, b = table.indptr[lo], table.indptr[hi]
    if a == b:
      continue
    indptr = np.clip(table.indptr, a, b) - a  # Rows outside [lo, hi) become empty.
    yield block, sp.csr_matrix((table.data[a:b], table.indices[a:b], indptr), shape=(r, r))


def _ngram_parts(chunk, settings: Settings):
  """Partial n-gram and adjacent-pair counts of a chunk, keyed by hash partition; the totals go
  to the "totals" output."""
  part = ngrams.chunk_ngram_counts(chunk, vocab_size=settings.vocab_size,
                                   continuation=settings.continuation,
                                   special=settings.special_mask)
  parts = np.uint64(settings.ngram_partitions)
  for kind, keys, counts in (("ngram", part.keys, part.counts),
                             ("pair", part.pair_keys, part.pair_counts)):
    where = (keys % parts).astype(np.int64)  # The keys' low bits are hash output.
    for p in np.unique(where).tolist():
      sel = where == p
      yield (kind, p), (keys[sel], counts[sel])
  yield beam.pvalue.TaggedOutput(
      "totals", (part.positions, part.token_counts, np.int64(part.num_adjacent)))


def _examples(chunk, candidates, settings: Settings):
  """(key, token ids) of one occurrence in this chunk of each frequent n-gram it holds."""
  if candidates.size == 0:
    return
  words = ngrams.chunk_words(chunk, settings.continuation, settings.special_mask)
  t = chunk.token_ids
  for n in range(2, ngrams.MAX_N + 1):
    pos = np.flatnonzero(words.valid[n])
    keys = ngrams.tagged_key(words.raw[n][pos], n)  # The counters' key of each n-gram.
    idx = np.minimum(np.searchsorted(candidates, keys), candidates.size - 1)
    hit = candidates[idx] == keys
    found, first = np.unique(keys[hit], return_index=True)
    for key, p in zip(found.tolist(), pos[hit][first].tolist(), strict=True):
      yield key, tuple(t[words.start[p]:words.end[p + n - 1]].tolist())
