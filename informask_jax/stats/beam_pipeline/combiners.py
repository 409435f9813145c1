"""Beam combiners around the stats package's merges: the hash split's document counts, unigram
sums, one row block's pair table (`PairAccumulator`), one hash partition of n-gram keys
(`KeyCounter`) and element-wise sums. Any worker may merge another's accumulator."""

from __future__ import annotations

import numpy as np

from informask_jax.stats import counting, ngrams

try:  # Optional dependency: `pip install -e ".[beam]"`.
  import apache_beam as beam
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  beam = None

# Accumulators are held whole: how much one holds is bounded by the keys (row blocks, hash
# partitions), not by a spill file that a worker could not hand to another.
_NO_SPILL_MB = 1e12


class _SplitCounts(beam.CombineFn if beam else object):
  """(documents, validation documents, lowest bucket, highest bucket)."""

  def __init__(self, fraction):
    self.fraction = fraction

  def create_accumulator(self):
    return (0, 0, float("inf"), float("-inf"))

  def add_input(self, acc, bucket):
    return (acc[0] + 1, acc[1] + int(bucket < self.fraction), min(acc[2], bucket),
            max(acc[3], bucket))

  def merge_accumulators(self, accs):
    accs = list(accs)
    return (sum(a[0] for a in accs), sum(a[1] for a in accs), min(a[2] for a in accs),
            max(a[3] for a in accs))

  def extract_output(self, acc):
    return acc


class _UnigramSum(beam.CombineFn if beam else object):
  def __init__(self, vocab_size):
    self.vocab_size = vocab_size

  def create_accumulator(self):
    return None

  def add_input(self, acc, chunk_counts):
    return counting.merge_unigrams(acc, chunk_counts)

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is not None:
        out = counting.merge_unigrams(out, a)
    return out

  def extract_output(self, acc):
    return acc or counting.UnigramCounts(np.zeros(self.vocab_size, np.int64), 0, 0, 0)


class _PairSum(beam.CombineFn if beam else object):
  """One row block's pair table: `PairAccumulator` sums, `finalize` prunes (min_pair_count)."""

  def __init__(self, min_pair_count):
    self.min_pair_count = min_pair_count

  def create_accumulator(self):
    return None

  def add_input(self, acc, table):
    if acc is None:
      acc = counting.PairAccumulator(table.shape[0], memory_cap_mb=_NO_SPILL_MB)
    acc.add(table)
    return acc

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is None:
        continue
      if out is None:
        out = a
      else:
        out.absorb(a)
    return out

  def extract_output(self, acc):
    # Row ids stand in for token ids until the blocks are joined with the vocabulary.
    return acc.finalize(np.arange(acc.num_rows, dtype=np.int32), self.min_pair_count)


class _KeySum(beam.CombineFn if beam else object):
  """One hash partition of n-gram (or adjacent pair) keys: `KeyCounter`, then >= min_count."""

  def __init__(self, min_count):
    self.min_count = min_count

  def create_accumulator(self):
    return ngrams.KeyCounter(memory_cap_mb=_NO_SPILL_MB)

  def add_input(self, acc, keys_counts):
    acc.add(*keys_counts)
    return acc

  def merge_accumulators(self, accs):
    accs = list(accs)
    for other in accs[1:]:
      accs[0].absorb(other)
    return accs[0]

  def compact(self, acc):
    acc.compact()
    return acc

  def extract_output(self, acc):
    return acc.result(self.min_count)


class _ArraySum(beam.CombineFn if beam else object):
  """Element-wise sum of tuples of arrays and numbers (n-gram positions, token counts, ...)."""

  def create_accumulator(self):
    return None

  def add_input(self, acc, value):
    return value if acc is None else tuple(a + b for a, b in zip(acc, value, strict=True))

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is not None:
        out = self.add_input(out, a)
    return out

  def extract_output(self, acc):
    return acc
