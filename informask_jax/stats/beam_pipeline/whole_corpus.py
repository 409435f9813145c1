"""Whole-corpus steps, one worker each, on the merged counts: the PMI vocabulary, the row blocks
joined into one pair table and its PMI, the n-gram counts, and the n-gram vocabulary, all through
the local builder's functions (`counting`, `pmi`, `ngrams`), so the numbers are its own."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from informask_jax.stats import counting, ngrams
from informask_jax.stats import pmi as pmi_lib
from informask_jax.stats.beam_pipeline.settings import Settings


def _some_tokens(unigrams):
  """The counts, if the corpus had tokens: the local builder's error otherwise (a counts-only run
  wrote a table of zeros and exited 0)."""
  if unigrams.num_tokens == 0:
    raise ValueError("The tokenized training corpus holds no tokens: nothing to count.")
  return unigrams


def _pmi_vocab(unigrams, settings: Settings):
  s = settings.stats
  vocab_ids = counting.select_pmi_vocab(unigrams.counts, special_ids=settings.special_ids,
                                        size=s["pmi_vocab_size"], min_count=s["min_count"],
                                        drop_top_k=s["drop_top_k"])
  if vocab_ids.size < 2:  # The local builder's message: it names drop_top_k when that is why.
    raise ValueError(counting.too_few_pmi_tokens(
        unigrams.counts, special_ids=settings.special_ids, min_count=s["min_count"],
        drop_top_k=s["drop_top_k"], kept=vocab_ids.size))
  return vocab_ids


def _join_pair_blocks(blocks, vocab_ids, unigrams, settings: Settings):
  """The row blocks' pruned tables and marginals (disjoint rows) summed into one PairCounts."""
  r = len(vocab_ids)
  counts = sp.csr_matrix((r, r), dtype=np.int64)
  marginals = np.zeros(r, np.int64)
  for _, part in blocks:
    counts = counts + part.counts
    marginals += part.marginals
  counts = counts.tocsr().astype(np.int64, copy=False)
  counts.sort_indices()
  return counting.PairCounts(vocab_ids=np.asarray(vocab_ids, np.int32), counts=counts,
                             marginals=marginals, total=int(marginals.sum()),
                             num_tokens=unigrams.num_tokens,
                             min_pair_count=int(settings.stats["min_pair_count"]))


def _pmi(pairs, settings: Settings):
  s = settings.stats
  table = pmi_lib.pmi_table(pairs, vocab_size=settings.vocab_size,
                            context_alpha=s["context_alpha"], positive_only=s["positive_only"])
  if table.nnz == 0:
    raise ValueError("Every pair that passed config.stats.min_pair_count has PMI <= 0, so the "
                     "PPMI table is empty; the corpus is too small or too uniform.")
  return table


def _ngram_counts(parts, totals, settings: Settings):
  """`ngrams.NgramCounts` from the partitions' frequent keys and the summed totals."""
  def join(kind):
    got = [kc for (k, _), kc in parts if k == kind]
    keys = np.concatenate([k for k, _ in got]) if got else np.zeros(0, np.uint64)
    counts = np.concatenate([c for _, c in got]) if got else np.zeros(0, np.int64)
    order = np.argsort(keys)
    return keys[order].astype(np.uint64), counts[order].astype(np.int64)

  min_count = int(settings.stats["ngram_min_count"])
  if totals is None:  # No chunk at all.
    totals = (np.zeros(ngrams.MAX_N + 1, np.int64), np.zeros(settings.vocab_size, np.int64), 0)
  keys, counts = join("ngram")
  pair_keys, pair_counts = join("pair")
  result = ngrams.NgramCounts(keys, counts, totals[0], pair_keys, pair_counts, totals[1],
                              int(totals[2]), min_count)
  if not np.any(ngrams.key_length(result.keys) >= 2):
    raise ValueError(
        f"No word n-gram (n >= 2) occurs at least stats.ngram_min_count={min_count} times in the "
        f"corpus ({int(result.positions[1])} words): too small a corpus for these settings.")
  return result


def _candidates(counts):
  return counts.keys[ngrams.key_length(counts.keys) >= 2]


def _ngram_vocab(examples, counts, settings: Settings):
  """Scores the frequent n-grams over one occurrence of each (all `score_ngrams` reads from the
  corpus), then assembles the vocabulary and the bigram table as `build_ngram_vocab` does."""
  occurrences = [(np.asarray(t, np.int32), np.zeros(len(t), np.int32)) for t in sorted(examples)]
  size = int(settings.stats["ngram_vocab_size"])
  scored = ngrams.score_ngrams(occurrences, counts, continuation=settings.continuation,
                               special_ids=settings.special_ids)
  grams, lengths, scores, gram_counts = ngrams.assemble_vocab(scored, size)
  bigrams, bigram_scores = ngrams.bigram_table(counts, vocab_size=settings.vocab_size,
                                               size=max(1, size // 2))
  return ngrams.check_not_empty(
      ngrams.NgramVocab(grams, lengths, scores, gram_counts, bigrams, bigram_scores),
      int(settings.stats["ngram_min_count"]))
