"""Tests for informask_jax.stats: counts and PMI against brute-force Python, chunked / spilled /
parallel counting against one pass, planted collocations, masking rates, the cached artifacts and
their errors."""

import collections
import itertools
import json
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import scipy.sparse as sp

from configs import base
from informask_jax import paths, stats
from informask_jax.stats import artifacts, chunks, counting, ngrams, rates
from informask_jax.stats import build as build_lib
from informask_jax.stats import pmi as pmi_lib

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
V = 300
N_CONT = 40  # ids V - 40 .. V - 1 are "##" pieces
CONT = np.zeros(V, bool)
CONT[V - N_CONT:] = True
# Planted words; "york" and "states" are two WordPiece pieces each.
NEW, YORK, UNITED, STATES, OF, AMERICA = [10], [11, V - 1], [12], [13, V - 2], [14], [15]


def synthetic_docs(num_docs, seed=0, planted=True, max_sentences=5):
  """Zipfian filler words (10% with a "##" piece), a few [UNK]s, and planted phrases."""
  rng = np.random.default_rng(seed)
  fill = np.arange(20, V - N_CONT)
  p = 1.0 / np.arange(1, fill.size + 1)
  p /= p.sum()
  docs = []
  for _ in range(num_docs):
    ids, sids = [], []
    for s in range(int(rng.integers(1, max_sentences + 1))):
      words = [[int(w)] for w in rng.choice(fill, int(rng.integers(3, 18)), p=p)]
      for w in words:
        if rng.random() < 0.1:
          w.append(int(rng.integers(V - N_CONT, V - 2)))
      if planted:
        if rng.random() < 0.3:
          words.insert(int(rng.integers(0, len(words) + 1)), NEW + YORK)
        if rng.random() < 0.2:
          words.insert(int(rng.integers(0, len(words) + 1)), UNITED + STATES + OF + AMERICA)
        if rng.random() < 0.3:  # "new" and "of" also occur on their own
          words.insert(int(rng.integers(0, len(words) + 1)), NEW if rng.random() < 0.5 else OF)
      if rng.random() < 0.05:
        words.append([UNK])
      for w in words:
        ids += w
        sids += [s] * len(w)
    docs.append((np.array(ids, np.int32), np.array(sids, np.int32)))
  return docs


def word_positions(ids, sids):
  pos, k = [], -1
  for i, t in enumerate(ids):
    if i == 0 or sids[i] != sids[i - 1] or not CONT[t]:
      k += 1
    pos.append(k)
  return pos


def brute_pairs(docs, vocab, *, window=0, whole_words=False):
  """Ordered pair counts by definition: every (i, j), i != j, same sentence (and window)."""
  vs = set(int(v) for v in vocab)
  c = collections.Counter()
  for ids, sids in docs:
    ids, sids = ids.tolist(), sids.tolist()
    pos = word_positions(ids, sids) if whole_words else list(range(len(ids)))
    for i, j in itertools.permutations(range(len(ids)), 2):
      if sids[i] != sids[j] or ids[i] not in vs or ids[j] not in vs:
        continue
      dist = abs(pos[i] - pos[j])
      if (whole_words and dist == 0) or (window and dist > window):
        continue
      c[(ids[i], ids[j])] += 1
  return c


def brute_pmi(pairs, *, min_pair_count, alpha, positive_only):
  total = sum(pairs.values())
  m = collections.Counter()
  for (x, _), n in pairs.items():
    m[x] += n
  z = sum(float(v) ** alpha for v in m.values())
  out = {}
  for (x, y), n in pairs.items():
    if (n // 2 if x == y else n) < min_pair_count:
      continue
    v = (math.log(n) - math.log(total) - math.log(float(m[x]) ** alpha / z)
         - math.log(float(m[y]) ** alpha / z))
    if positive_only and v <= 0:
      continue
    out[(x, y)] = v
  return out


def to_dict(table):
  coo = table.tocoo()
  return {(int(r), int(c)): v for r, c, v in zip(coo.row, coo.col, coo.data, strict=True)}


# --- Counts and PMI against brute force --------------------------------------------------------


def test_select_pmi_vocab_orders_by_count_and_drops():
  counts = np.array([50, 9, 9, 0, 1, 7, 7, 3, 2, 100])  # ids 0..4 are specials
  got = counting.select_pmi_vocab(counts, special_ids=SPECIALS, size=3, min_count=3)
  np.testing.assert_array_equal(got, [9, 5, 6])  # by count, ties by id, specials out
  got = counting.select_pmi_vocab(counts, special_ids=SPECIALS, size=10, min_count=3,
                                  drop_top_k=1)
  np.testing.assert_array_equal(got, [5, 6, 7])


@pytest.mark.parametrize("window,whole_words,alpha,positive_only,min_pair_count", [
    (0, False, 1.0, True, 1),
    (0, False, 0.75, False, 2),
    (3, False, 1.0, True, 1),
    (0, True, 1.0, False, 1),
    (2, True, 0.75, True, 2),
])
def test_pmi_equals_bruteforce(window, whole_words, alpha, positive_only, min_pair_count):
  docs = synthetic_docs(40, seed=1)
  uni = counting.count_unigrams(docs, V)
  vocab = counting.select_pmi_vocab(uni.counts, special_ids=SPECIALS, size=60, min_count=2)
  pairs = counting.count_pairs(docs, vocab, vocab_size=V, window=window, whole_words=whole_words,
                               continuation=CONT, min_pair_count=min_pair_count)
  ref = brute_pairs(docs, vocab, window=window, whole_words=whole_words)
  # Counts: exact, before pruning (marginals, total) and after.
  assert pairs.total == sum(ref.values())
  marg = collections.Counter()
  for (x, _), n in ref.items():
    marg[x] += n
  np.testing.assert_array_equal(pairs.marginals, [marg[int(t)] for t in vocab])
  kept = {k: n for k, n in ref.items() if (n // 2 if k[0] == k[1] else n) >= min_pair_count}
  got = {(int(vocab[r]), int(vocab[c])): n for (r, c), n in to_dict(pairs.counts).items()}
  assert got == kept
  # PMI: computed in float64 like the reference, equal once both are rounded to float32.
  table = pmi_lib.pmi_table(pairs, vocab_size=V, context_alpha=alpha,
                            positive_only=positive_only)
  want = brute_pmi(ref, min_pair_count=min_pair_count, alpha=alpha, positive_only=positive_only)
  got = to_dict(table)
  assert set(got) == set(want) and len(want) > 50
  keys = sorted(want)
  np.testing.assert_array_equal(np.array([got[k] for k in keys], np.float32),
                                np.array([want[k] for k in keys], np.float32))
  assert table.dtype == np.float32 and (table != table.T).nnz == 0
  if positive_only:
    assert table.data.min() > 0
  else:
    assert table.data.min() < 0


def with_leading_pieces(docs, piece=V - 3):
  """`docs` with a "##" piece at the start of every sentence. Byte-level BPE gives such starts
  (a document's first word lacks the "Ġ" of a leading space), and a sentence start still starts
  a word."""
  out = []
  for ids, sids in docs:
    starts = np.flatnonzero(np.diff(sids, prepend=-1))
    out.append((np.insert(ids, starts, piece).astype(np.int32),
                np.insert(sids, starts, sids[starts]).astype(np.int32)))
  return out


def test_whole_words_start_at_a_sentence_that_starts_with_a_piece():
  # A piece joined to the previous sentence's last word would make their (never counted) pair a
  # same-word pair, subtracted from the counts.
  docs = with_leading_pieces(synthetic_docs(40, seed=1))
  uni = counting.count_unigrams(docs, V)
  vocab = counting.select_pmi_vocab(uni.counts, special_ids=SPECIALS, size=60, min_count=2)
  assert V - 3 in vocab
  pairs = counting.count_pairs(docs, vocab, vocab_size=V, whole_words=True, continuation=CONT)
  ref = brute_pairs(docs, vocab, whole_words=True)
  got = {(int(vocab[r]), int(vocab[c])): n for (r, c), n in to_dict(pairs.counts).items()}
  assert got == dict(ref)


def test_chunked_spilled_and_parallel_counts_equal_one_pass(monkeypatch):
  docs = synthetic_docs(600, seed=2)
  uni = counting.count_unigrams(docs, V, chunk_tokens=10**9)
  uni_chunked = counting.count_unigrams(docs, V, chunk_tokens=300)
  np.testing.assert_array_equal(uni.counts, uni_chunked.counts)
  assert (uni.num_sentences, uni.num_documents) == (uni_chunked.num_sentences, 600)
  vocab = counting.select_pmi_vocab(uni.counts, special_ids=SPECIALS, size=200, min_count=1)
  kw = dict(vocab_size=V, min_pair_count=2, window=0)
  one = counting.count_pairs(docs, vocab, chunk_tokens=10**9, **kw)
  variants = {
      "chunked": dict(chunk_tokens=500),
      # A cap far below the table's size: partial tables spill and merge in row blocks.
      "spilled": dict(chunk_tokens=500, memory_cap_mb=0.05),
      "parallel": dict(chunk_tokens=500, num_workers=2, shard_tokens=2000, memory_cap_mb=0.1),
  }
  spills = collections.Counter()
  spill = counting.PairAccumulator.spill
  monkeypatch.setattr(counting.PairAccumulator, "spill",
                      lambda self: (spills.update([name]), spill(self)))
  for name, extra in variants.items():
    other = counting.count_pairs(docs, vocab, **kw, **extra)
    assert other.total == one.total, name
    np.testing.assert_array_equal(other.marginals, one.marginals, err_msg=name)
    assert (other.counts != one.counts).nnz == 0, name
    assert other.num_tokens == one.num_tokens == uni.num_tokens, name
  assert spills["spilled"] >= 2 and not spills["chunked"]


def test_accumulator_spills_above_cap_and_merges_exactly(tmp_path):
  rng = np.random.default_rng(3)
  tables = [sp.random(50, 50, density=0.3, random_state=rng, format="csr",
                      data_rvs=lambda n: rng.integers(1, 5, n)).astype(np.int64)
            for _ in range(20)]
  tables = [(t + t.T).tocsr() for t in tables]
  # ~5 KB: spills every table. In tmp_path: a spill folder of its own making is the caller's to
  # remove (the builder's scratch_dir), and it was left in /tmp by every run of the suite.
  acc = counting.PairAccumulator(50, memory_cap_mb=0.005, spill_dir=str(tmp_path))
  for t in tables:
    acc.add(t)
  # 20 spills, merged into one file set every 8: the disk holds a bounded number of them.
  assert 1 <= len(acc.spills) < 8
  assert len(os.listdir(acc.spill_dir)) == 3 * len(acc.spills)
  out = acc.finalize(np.arange(50), min_pair_count=1)
  want = sum(tables[1:], tables[0])
  assert (out.counts != want).nnz == 0
  np.testing.assert_array_equal(out.marginals, np.asarray(want.sum(axis=1)).ravel())


def test_key_counter_spills_compacts_and_counts_exactly(tmp_path):
  rng = np.random.default_rng(12)
  counter = ngrams.KeyCounter(memory_cap_mb=0.01, spill_dir=str(tmp_path))
  want = collections.Counter()
  compactions = 0
  for _ in range(30):
    keys = rng.integers(0, 3000, 400).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    want.update(keys.tolist())
    before = len(counter.spills)
    counter.add(keys)
    compactions += len(counter.spills) < before
  assert compactions >= 1 and len(counter.spills) < ngrams.KeyCounter._MAX_SPILLS
  keys, counts = counter.result(min_count=2)
  expect = sorted((k, c) for k, c in want.items() if c >= 2)
  assert list(zip(keys.tolist(), counts.tolist(), strict=True)) == expect


def test_too_small_corpus_errors():
  docs = [(np.array([20, 21, 22]), np.array([0, 1, 2]))]  # three one-token sentences
  pairs = counting.count_pairs(docs, np.array([20, 21, 22]), vocab_size=V, min_pair_count=1)
  with pytest.raises(ValueError, match="min_pair_count=1"):
    pmi_lib.pmi_table(pairs, vocab_size=V)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    counting.count_unigrams([(np.array([5, V]), np.array([0, 0]))], V)
  with pytest.raises(ValueError, match=r"ngram_min_count=5 .* Only pmi_span needs the n-grams: "
                                       r"`stats build --what=counts,pmi,rates`"):
    ngrams.build_ngram_vocab(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                             size=10, min_count=5)


def test_pair_counts_refuse_ids_that_numpy_would_count_as_other_tokens():
  """count_unigrams refused an id outside the vocabulary; count_pairs counted -1 as the last
  token (paired with its sentence's others) and failed on V with a bare IndexError, and both
  truncated float ids: sentence id 0.5 joined sentence 0, pairing across the boundary."""
  vocab = np.arange(V)
  good = [(np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1]))]
  assert counting.count_pairs(good, vocab, vocab_size=V).counts.nnz == 4  # (1,2),(2,1),(3,4),(4,3)
  for ids, match in ((np.array([1, 2, 3, -1]), "Token id -1 is outside the vocabulary"),
                     (np.array([1, 2, 3, V]), f"Token id {V} is outside the vocabulary")):
    with pytest.raises(ValueError, match=match):
      counting.count_pairs([(ids, np.array([0, 0, 1, 1]))], vocab, vocab_size=V)
  with pytest.raises(ValueError, match="Document 1: sentence_ids must hold integer ids, got "
                                       "dtype float64"):
    counting.count_pairs([good[0], (np.array([1, 2, 3]), np.array([0, 0.5, 0.9]))], vocab,
                         vocab_size=V)
  with pytest.raises(ValueError, match="Document 0: token_ids must hold integer ids"):
    counting.count_unigrams([(np.array([1.0, 2.7]), np.array([0, 0]))], V)
  with pytest.raises(ValueError, match="Document 0: token_ids must hold integer ids"):
    chunks.chunk_from_documents([(np.array([1.0, 2.7]), np.array([0, 0]))])
  # An empty document (NumPy makes [] float64) is still a document.
  assert counting.count_unigrams([([], []), good[0]], V).num_documents == 2


# --- N-grams -------------------------------------------------------------------------------------


def brute_word_ngrams(docs, max_n=5):
  """Word n-gram counts (within sentences, no word holding a special) by definition."""
  counts = collections.Counter()
  for ids, sids in docs:
    ids, sids = ids.tolist(), sids.tolist()
    pos = word_positions(ids, sids)
    words, sent = [], []
    for i, t in enumerate(ids):
      if i == 0 or pos[i] != pos[i - 1]:
        words.append([])
        sent.append(sids[i])
      words[-1].append(t)
    words = [tuple(w) for w in words]
    for n in range(1, max_n + 1):
      for i in range(len(words) - n + 1):
        span = words[i:i + n]
        if len(set(sent[i:i + n])) == 1 and not any(t in SPECIALS for w in span for t in w):
          counts[tuple(span)] += 1
  return counts


def test_ngram_scores_equal_bruteforce():
  docs = synthetic_docs(200, seed=4)
  min_count = 3
  counts = ngrams.count_ngrams(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                               min_count=min_count)
  scored = ngrams.score_ngrams(docs, counts, continuation=CONT, special_ids=SPECIALS)
  ref = brute_word_ngrams(docs)
  totals = collections.Counter()
  for g, c in ref.items():
    totals[len(g)] += c
  want = {}
  for g, c in ref.items():
    n = len(g)
    if n < 2 or c < min_count:
      continue
    best = max(sum(math.log(ref[g[a:b]]) - math.log(totals[b - a]) for a, b in seg)
               for seg in ngrams.segmentations(n))
    want[tuple(t for w in g for t in w)] = (math.log(c) - math.log(totals[n]) - best, c)
  tokens = scored.tokens_of(np.arange(scored.scores.size))
  got = {t: (s, c) for t, s, c in zip(tokens, scored.scores, scored.counts, strict=True)}
  assert set(got) == set(want) and len(want) > 100
  for k, (s, c) in want.items():
    assert got[k][1] == c
    assert got[k][0] == pytest.approx(s, rel=1e-12, abs=1e-12)
  assert len(ngrams.segmentations(5)) == 15


def test_bigram_table_pmi_values_match_a_brute_force_count():
  """PMI of adjacent pairs from counts made by definition: within a sentence and a document, no
  specials; p(ab) over all adjacent pairs, p(a) over all non-special tokens; >= min_count, > 0."""
  docs = synthetic_docs(300, seed=11)
  counts = ngrams.count_ngrams(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                               min_count=3, chunk_tokens=700)  # Several chunks, merged.
  pairs, scores = ngrams.bigram_table(counts, vocab_size=V, size=10**6)
  special = set(SPECIALS)
  pair_count, token_count = collections.Counter(), collections.Counter()
  for ids, sids in docs:
    ids, sids = ids.tolist(), sids.tolist()
    token_count.update(t for t in ids if t not in special)
    pair_count.update((ids[i], ids[i + 1]) for i in range(len(ids) - 1)
                      if sids[i] == sids[i + 1] and special.isdisjoint(ids[i:i + 2]))
  n_pairs, n_tokens = sum(pair_count.values()), sum(token_count.values())
  want = {}
  for (a, b), c in pair_count.items():
    pmi = math.log(c / n_pairs) - math.log(token_count[a] / n_tokens) - \
        math.log(token_count[b] / n_tokens)
    if c >= 3 and pmi > 0:
      want[(a, b)] = pmi
  got = {(int(a), int(b)): float(v) for (a, b), v in zip(pairs, scores, strict=True)}
  assert len(want) > 50 and set(got) == set(want)
  for k, v in want.items():
    assert got[k] == pytest.approx(v, rel=1e-9)
  # Highest PMI first; PMIs equal but for rounding rank by count.
  assert np.all(np.diff(scores) <= 1e-12)
  top, _ = ngrams.bigram_table(counts, vocab_size=V, size=10)
  np.testing.assert_array_equal(top, pairs[:10])


def test_planted_collocations_rank_first():
  docs = synthetic_docs(1500, seed=5)
  vocab = ngrams.build_ngram_vocab(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                                   size=400, min_count=5)
  new_york, usa = NEW + YORK, UNITED + STATES + OF + AMERICA
  by_len = {n: [g for g, k in zip(vocab.ngrams, vocab.lengths, strict=True) if k == n]
            for n in (2, 3, 4, 5)}
  # Each planted phrase is the best of its length; its sub-phrases follow closely.
  assert by_len[2][0] in (new_york, UNITED + STATES)
  assert new_york in by_len[2][:4]
  assert by_len[4][0] == usa
  assert usa in vocab.ngrams[:8] and new_york in vocab.ngrams[:8]
  # Proportions: 50 / 25 / 12.5 / 12.5 % of the size at most, every prefix roughly so.
  assert [len(by_len[n]) <= q for n, q in ngrams.quotas(400).items()] == [True] * 4
  assert len(by_len[2]) == 200
  head = vocab.lengths[:100]
  assert 40 <= np.sum(head == 2) <= 60
  # The bigram table (token pairs) holds the planted adjacent pairs near its top.
  top = [tuple(p) for p in vocab.bigrams[:8].tolist()]
  assert (NEW[0], YORK[0]) in top and (YORK[0], YORK[1]) in top and (OF[0], AMERICA[0]) in top


def test_ngram_words_start_at_a_sentence_that_starts_with_a_piece():
  docs = with_leading_pieces(synthetic_docs(40, seed=1))
  counts = ngrams.count_ngrams(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                               min_count=1)
  ref = brute_word_ngrams(docs)
  for n in range(1, ngrams.MAX_N + 1):
    assert counts.positions[n] == sum(c for g, c in ref.items() if len(g) == n), n


def _scored(documents, starts, sizes, counts, scores):
  """ScoredNgrams of bigrams whose occurrences are at token offsets `starts` of `documents`."""
  corpus = chunks.as_corpus([(np.asarray(d, np.int32), np.zeros(len(d), np.int32))
                             for d in documents])
  return ngrams.ScoredNgrams(lengths=np.full(len(starts), 2), counts=np.asarray(counts),
                             scores=np.asarray(scores, float), starts=np.asarray(starts),
                             sizes=np.asarray(sizes), corpus=corpus, chunk_tokens=4)


def test_ngram_vocab_ranks_by_pmi_not_by_count():
  scored = _scored([range(21, 27)], [0, 2, 4], [2, 2, 2], [1000, 5, 50], [0.1, 3.0, 1.0])
  tokens, _, scores, _ = ngrams.assemble_vocab(scored, 2)
  assert tokens == [[23, 24], [25, 26]]  # The most frequent bigram has the lowest PMI_2.
  np.testing.assert_array_equal(scores, [3.0, 1.0])


def test_ngram_vocab_breaks_ties_at_the_quota_by_token_ids():
  """Only the rows that reach the quota have their tokens read from the corpus (documents over
  several chunks, occurrences out of order); rows tied with the last one are read too, so the
  token-id tie-break picks the same entries as a sort of every row."""
  docs = [[40, 41, 9, 9], [30, 31, 9, 9], [50, 51, 20, 21, 9], [35, 36]]
  starts, sizes = [0, 4, 8, 10, 13], [2, 2, 2, 2, 2]
  scored = _scored(docs, starts, sizes, [7, 7, 7, 9, 7], [1.0, 1.0, 1.0, 1.0, 1.0])
  assert scored.tokens_of([2, 0, 4, 1, 3]) == [(50, 51), (40, 41), (35, 36), (30, 31), (20, 21)]
  tokens, _, _, counts = ngrams.assemble_vocab(scored, 3)
  # Count 9 first, then the two lowest token ids among the four tied at count 7.
  assert tokens == [[20, 21], [30, 31], [35, 36]] and counts.tolist() == [9, 7, 7]


def test_quotas_sum_to_the_vocabulary_size():
  for size in (1, 7, 10, 33, 401):
    assert sum(ngrams.quotas(size).values()) == size, size
    assert sum(ngrams.quotas(size, max_n=3).values()) == size, size


def test_ngram_counts_parallel_and_spilled_equal_one_pass(monkeypatch):
  docs = synthetic_docs(400, seed=6)
  kw = dict(vocab_size=V, special_ids=SPECIALS, continuation=CONT, min_count=2)
  one = ngrams.count_ngrams(docs, chunk_tokens=10**9, **kw)
  spills = []
  spill = ngrams.KeyCounter.spill
  monkeypatch.setattr(ngrams.KeyCounter, "spill", lambda self: (spills.append(1), spill(self)))
  for extra in (dict(chunk_tokens=2000, memory_cap_mb=0.5),
                dict(chunk_tokens=2000, num_workers=2, shard_tokens=4000)):
    other = ngrams.count_ngrams(docs, **kw, **extra)
    np.testing.assert_array_equal(other.keys, one.keys)
    np.testing.assert_array_equal(other.counts, one.counts)
    np.testing.assert_array_equal(other.pair_keys, one.pair_keys)
    np.testing.assert_array_equal(other.pair_counts, one.pair_counts)
    np.testing.assert_array_equal(other.positions, one.positions)
  assert spills  # the capped run did go through disk


# --- Rates ---------------------------------------------------------------------------------------


def test_rates_rescale_to_mask_prob_and_smooth():
  rng = np.random.default_rng(7)
  seen = rng.integers(0, 400, V).astype(np.int64)
  seen[list(SPECIALS)] = 0
  chosen = rng.binomial(seen, rng.uniform(0.05, 0.4, V))
  unigram = seen * 3 + rng.integers(0, 5, V)
  r = rates.finalize_rates(chosen, seen, unigram_counts=unigram, special_ids=SPECIALS,
                           mask_prob=0.15, smoothing=10.0)
  assert r.dtype == np.float32 and r.shape == (V,)
  assert rates.expected_fraction(r, unigram, SPECIALS) == pytest.approx(0.15, abs=1e-6)
  assert np.all(r[list(SPECIALS)] == 0)
  # Rank order of the smoothed rates is the raw order for well-observed tokens.
  well = np.flatnonzero(seen > 300)
  raw = chosen[well] / seen[well]
  assert np.corrcoef(np.argsort(np.argsort(raw)), np.argsort(np.argsort(r[well])))[0, 1] > 0.99
  # A token never seen gets the mean rate (times the rescale factor), not 0.
  seen2, chosen2 = seen.copy(), chosen.copy()
  seen2[50] = chosen2[50] = 0
  r2 = rates.finalize_rates(chosen2, seen2, unigram_counts=unigram, special_ids=SPECIALS,
                            mask_prob=0.15, smoothing=10.0)
  mean = chosen2.sum() / seen2.sum()
  w = well[0]
  scale = r2[w] / ((chosen2[w] + 10 * mean) / (seen2[w] + 10))
  assert r2[50] == pytest.approx(scale * mean, rel=1e-5)
  # Extreme rates are clipped at 1 and the mean is still met.
  chosen3 = chosen.copy()
  chosen3[30] = seen[30] = 400
  unigram3 = unigram.copy()
  unigram3[30] = unigram.sum() // 10
  r3 = rates.finalize_rates(chosen3, seen, unigram_counts=unigram3, special_ids=SPECIALS,
                            mask_prob=0.3, smoothing=0.0)
  assert r3.max() <= 1.0 and r3[30] == 1.0
  assert rates.expected_fraction(r3, unigram3, SPECIALS) == pytest.approx(0.3, abs=1e-6)
  # A token chosen every time it was seen is not pinned at 1 when the scale is below 1: with
  # mask_prob 0.05 every rate is scaled by the same factor (0.41 here) and none is clipped.
  r4 = rates.finalize_rates([0, 1, 3, 1, 0], [0, 1, 20, 10, 10], unigram_counts=[0, 1, 20, 10, 10],
                            special_ids=[0], mask_prob=0.05, smoothing=0.0)
  np.testing.assert_allclose(r4, [0, 0.41, 0.0615, 0.041, 0], rtol=1e-5)


def test_tokens_without_pmi_get_the_rate_of_unseen_tokens():
  # Token 3 was seen and chosen rarely, but it has no PMI entry: sample-and-score could not
  # rate it, so it counts as never shown (the mean), and the mean leaves its counts out.
  chosen, seen, unigram = [0, 4, 1, 1, 0], [0, 10, 20, 20, 0], [0, 10, 20, 20, 10]
  measured = np.array([True, True, True, False, True])
  r = rates.finalize_rates(chosen, seen, unigram_counts=unigram, special_ids=[0], mask_prob=0.1,
                           smoothing=0.0, measured=measured)
  mean = 5 / 30  # Tokens 1 and 2 only.
  assert r[3] == pytest.approx(r[4]) and r[3] / r[1] == pytest.approx(mean / 0.4)
  assert r[2] / r[1] == pytest.approx(0.05 / 0.4)
  assert rates.expected_fraction(r, unigram, [0]) == pytest.approx(0.1, abs=1e-6)
  unmeasured = rates.finalize_rates(chosen, seen, unigram_counts=unigram, special_ids=[0],
                                    mask_prob=0.1, smoothing=0.0)
  assert unmeasured[3] == pytest.approx(unmeasured[2])  # Without `measured`: its own count.
  with pytest.raises(ValueError, match="No token of the rate sample has a PMI entry"):
    rates.finalize_rates(chosen, seen, unigram_counts=unigram, special_ids=[0], mask_prob=0.1,
                         smoothing=0.0, measured=np.zeros(5, bool))


def pack(docs, length):
  """[CLS] tokens [SEP] rows (documents concatenated, separated by [SEP]), padded at the end;
  sentence ids made global (a document's may start anywhere); empty documents left out."""
  toks, sents, next_sid = [], [], 0
  for ids, sids in docs:
    if ids.size == 0:
      continue
    toks += ids.tolist() + [SEP]
    sents += (sids - sids.min() + next_sid).tolist() + [-1]
    next_sid += int(sids.max() - sids.min()) + 1
  body = length - 2
  n = -(-len(toks) // body)
  toks += [PAD] * (n * body - len(toks))
  sents += [-1] * (n * body - len(sents))
  t = np.array(toks, np.int32).reshape(n, body)
  s = np.array(sents, np.int32).reshape(n, body)
  t = np.concatenate([np.full((n, 1), CLS), t, np.full((n, 1), SEP)], axis=1).astype(np.int32)
  s = np.concatenate([np.full((n, 1), -1), s, np.full((n, 1), -1)], axis=1).astype(np.int32)
  s[t == PAD] = -1
  return {"token_ids": t, "sentence_ids": s}


def test_count_choices_runs_the_real_online_masker():
  from informask_jax import masking

  docs = synthetic_docs(120, seed=8)
  packed = pack(docs, 32)
  uni = counting.count_unigrams(docs, V)
  vocab = counting.select_pmi_vocab(uni.counts, special_ids=SPECIALS, size=100, min_count=2)
  table = pmi_lib.pmi_table(counting.count_pairs(docs, vocab, vocab_size=V), vocab_size=V)
  masker = masking.get_masker("informask_online", vocab_size=V, mask_id=MASK,
                              special_ids=SPECIALS, mask_prob=0.15, budget="exact", pmi=table,
                              num_candidates=4)
  chosen, seen = rates.count_choices(masker, packed["token_ids"], packed["sentence_ids"],
                                     vocab_size=V, special_ids=SPECIALS, pad_id=PAD,
                                     batch_size=16)
  t = packed["token_ids"]
  maskable = ~np.isin(t, SPECIALS)
  np.testing.assert_array_equal(seen, np.bincount(t[maskable], minlength=V))
  # The exact budget: round(0.15 * maskable) targets per row, none on specials.
  assert chosen.sum() == sum(round(0.15 * int(m)) for m in maskable.sum(axis=1))
  assert np.all(chosen <= seen) and np.all(chosen[list(SPECIALS)] == 0)
  # Same seed -> same counts (the last batch is padded, so it has the same compiled shape).
  again, _ = rates.count_choices(masker, t, packed["sentence_ids"], vocab_size=V,
                                 special_ids=SPECIALS, pad_id=PAD, batch_size=16)
  np.testing.assert_array_equal(chosen, again)


def test_sample_rows_depends_on_the_seed():
  rows = rates.sample_rows(1000, 50, seed=1)
  np.testing.assert_array_equal(rows, rates.sample_rows(1000, 50, seed=1))
  assert not np.array_equal(rows, rates.sample_rows(1000, 50, seed=2))
  assert rows.size == 50 and np.all(np.diff(rows) > 0)


def test_count_choices_draws_from_the_seed_with_a_new_key_per_batch():
  import jax

  def masker(key, ids, sentence_ids):  # 30% of the non-special tokens, drawn from `key` alone.
    return {"mask": jax.random.bernoulli(key, 0.3, ids.shape) & (ids >= len(SPECIALS))}

  ids = np.random.default_rng(0).integers(len(SPECIALS), V, (16, 32)).astype(np.int32)
  sids = np.zeros_like(ids)
  kw = dict(vocab_size=V, special_ids=SPECIALS, pad_id=PAD, batch_size=16)
  chosen, seen = rates.count_choices(masker, ids, sids, seed=0, **kw)
  other, _ = rates.count_choices(masker, ids, sids, seed=1, **kw)
  assert not np.array_equal(chosen, other)
  # The same rows again as a second batch: masked with that batch's own key, not the first's.
  twice, seen_twice = rates.count_choices(masker, np.concatenate([ids, ids]),
                                          np.concatenate([sids, sids]), seed=0, **kw)
  np.testing.assert_array_equal(seen_twice, 2 * seen)
  assert not np.array_equal(twice, 2 * chosen)


def test_id_mask_prob_json_roundtrip(tmp_path):
  r = np.linspace(0, 0.5, V).astype(np.float32)
  path = tmp_path / "id_mask_prob.json"
  rates.write_id_mask_prob(r, str(path))
  obj = json.loads(path.read_text())
  assert set(obj) == {str(i) for i in range(V)} and obj["7"] == pytest.approx(float(r[7]))
  np.testing.assert_array_equal(rates.read_id_mask_prob(str(path), V), r)


# --- Artifacts, caching and errors --------------------------------------------------------------


class _Tok:
  def convert_ids_to_tokens(self, ids):
    return [f"##w{i}" if CONT[i] else f"w{i}" for i in ids]


def fake_pipeline(docs, *, tokenizer_fp="tok-A", corpus_fp="corpus-1"):
  import datasets

  ds = datasets.Dataset.from_dict({"input_ids": [d[0].tolist() for d in docs],
                                   "sentence_ids": [d[1].tolist() for d in docs]})
  return types.SimpleNamespace(
      tokenizer=_Tok(), continuation=CONT, tokenized_train=ds, train=pack(docs, 32),
      special_ids=types.SimpleNamespace(pad=PAD, unk=UNK, cls=CLS, sep=SEP, mask=MASK),
      corpus_fingerprint=corpus_fp, tokenizer_fingerprint=tokenizer_fp)


def small_config(cache_dir):
  c = base.get_base_config("tiny")
  c.data.cache_dir = str(cache_dir)
  c.data.num_proc = 1
  c.stats.pmi_vocab_size = 120
  c.stats.min_count = 2
  c.stats.ngram_vocab_size = 200
  c.stats.ngram_min_count = 3
  c.stats.rate_sample_sequences = 48
  c.masking.num_candidates = 4
  return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cache = tmp_path_factory.mktemp("cache")
  config = small_config(cache)
  pipeline = fake_pipeline(synthetic_docs(300, seed=9))
  directory = stats.build_artifacts(config, pipeline, progress=False)
  return config, pipeline, directory


def test_load_artifacts_takes_a_stage_name_and_names_an_unknown_one(built):
  """As ensure_artifacts does: need="rates" was read as the stages "r", "a", ... (KeyError: 'r'),
  and a misspelt stage was a bare KeyError."""
  directory = built[2]
  a = stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V, need="rates")
  assert a.rates is not None and a.pmi is None
  with pytest.raises(ValueError, match=r"Unknown statistics stage\(s\) \['rate'\]; choose from"):
    stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V, need=["rate"])


def test_build_writes_every_artifact(built):
  config, pipeline, directory = built
  assert directory == stats.artifact_dir(config, pipeline)
  assert directory.parent == pathlib.Path(config.data.cache_dir) / "stats"
  a = stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)
  meta = a.meta
  assert meta["tokenizer_fingerprint"] == "tok-A" and meta["corpus_fingerprint"] == "corpus-1"
  assert meta["vocab_size"] == V and meta["format_version"] == artifacts.FORMAT_VERSION
  assert meta["params"]["pmi_vocab_size"] == 120 and meta["params"]["mask_prob"] == 0.15
  for stage in artifacts.STAGES:
    for name in artifacts.STAGE_FILES[stage]:
      assert meta["files"][name]["sha256"] == artifacts.sha256_file(directory / name)
  uni = counting.count_unigrams(pipeline.tokenized_train, V)
  np.testing.assert_array_equal(a.unigram_counts, uni.counts)
  assert meta["counts"]["num_tokens"] == uni.num_tokens
  assert a.pmi.shape == (V, V) and a.pmi.dtype == np.float32 and (a.pmi != a.pmi.T).nnz == 0
  assert rates.expected_fraction(a.rates, a.unigram_counts, SPECIALS) == pytest.approx(0.15,
                                                                                       abs=1e-6)
  np.testing.assert_array_equal(
      rates.read_id_mask_prob(str(directory / "id_mask_prob.json"), V), a.rates)
  # Tokens without a PMI entry (here outside the 120-token PMI vocabulary, many of them in the
  # sample) all get the rate of a token the sample never showed: one value.
  no_pmi = (np.diff(a.pmi.indptr) == 0) & (a.unigram_counts > 0)
  no_pmi[list(SPECIALS)] = False
  assert no_pmi.sum() > 20 and np.ptp(a.rates[no_pmi]) < 1e-7 * a.rates[no_pmi].max()
  assert all(isinstance(g, list) and len(g) >= 2 for g in a.ngrams)
  assert NEW + YORK in a.ngrams[:10]
  assert all(len(p) == 2 for p in a.bigrams)


def test_the_pmi_stage_uses_the_configured_pair_options(tmp_path):
  """stats.window, whole_words, context_alpha, positive_only and min_pair_count reach the PMI
  stage: its table equals the definition under those settings. (The other builds leave them at
  their defaults, or where min_pair_count = 2 or 3 keep the same positive pairs, so a stage
  passing other values went unseen; the cache key alone did change.)"""
  docs = synthetic_docs(40, seed=1)
  config = small_config(tmp_path)
  s = config.stats
  s.pmi_vocab_size, s.min_pair_count = 60, 3  # Not stats.min_count (2), a name it resembles.
  s.window, s.whole_words, s.context_alpha, s.positive_only = 2, True, 0.75, False
  directory = stats.build_artifacts(config, fake_pipeline(docs), what=("pmi",), progress=False)
  got = to_dict(sp.load_npz(directory / "pmi.npz"))
  vocab = counting.select_pmi_vocab(counting.count_unigrams(docs, V).counts,
                                    special_ids=SPECIALS, size=60, min_count=s.min_count)
  want = brute_pmi(brute_pairs(docs, vocab, window=2, whole_words=True), min_pair_count=3,
                   alpha=0.75, positive_only=False)
  assert set(got) == set(want) and min(want.values()) < 0 and len(want) > 50
  keys = sorted(want)
  np.testing.assert_array_equal(np.array([got[k] for k in keys], np.float32),
                                np.array([want[k] for k in keys], np.float32))


def test_cache_key_changes_with_parameters_not_memory_cap(built):
  config, pipeline, directory = built
  other = small_config(config.data.cache_dir)
  other.stats.memory_cap_mb = 64
  assert stats.artifact_dir(other, pipeline) == directory
  other.stats.window = 5
  assert stats.artifact_dir(other, pipeline) != directory
  assert stats.artifact_dir(config, fake_pipeline([], tokenizer_fp="tok-B")) != directory


def test_ensure_reuses_then_rebuilds_corrupted(built):
  config, pipeline, directory = built
  stamp = (directory / "pmi.npz").stat().st_mtime_ns
  assert stats.ensure_artifacts(config, pipeline, ("rates",)) == directory
  assert (directory / "pmi.npz").stat().st_mtime_ns == stamp  # nothing rebuilt
  good = (directory / "pmi.npz").read_bytes()
  (directory / "pmi.npz").write_bytes(good[: len(good) // 2])  # truncated
  with pytest.raises(stats.CorruptArtifactError, match="pmi.npz.*truncated"):
    stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)
  stats.ensure_artifacts(config, pipeline, ("pmi",))
  assert (directory / "pmi.npz").read_bytes() == good  # deterministic rebuild
  # Same size, altered content: caught by the sha256.
  data = bytearray((directory / "rates.npy").read_bytes())
  data[-3] ^= 0xFF
  (directory / "rates.npy").write_bytes(bytes(data))
  with pytest.raises(stats.CorruptArtifactError, match="rates.npy: sha256"):
    stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)
  stats.ensure_artifacts(config, pipeline, ("rates",))
  stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)


def test_a_damaged_file_of_a_stage_the_run_does_not_read_is_left_alone(built, tmp_path):
  """train.py with informask reads counts, PMI and rates: a cut-off pmi_ngrams.json in the same
  statistics directory (which ensure_artifacts neither checks nor rebuilds for it) does not stop
  the run; with pmi_span, which reads it, it is rebuilt."""
  from informask_jax import loop

  config, pipeline, directory = built
  config = small_config(tmp_path)
  copy = stats.artifact_dir(config, pipeline)
  shutil.copytree(directory, copy)
  good = (copy / "pmi_ngrams.json").read_bytes()
  (copy / "pmi_ngrams.json").write_bytes(good[:6])
  run_pipeline = types.SimpleNamespace(**vars(pipeline), vocab_size=V)
  config.masking.name = "informask"
  assert loop.build_masker(config, run_pipeline).name == "informask"
  assert (copy / "pmi_ngrams.json").read_bytes() == good[:6]
  config.masking.name = "pmi_span"
  assert loop.build_masker(config, run_pipeline).name == "pmi_span"
  assert (copy / "pmi_ngrams.json").read_bytes() == good
  # The PMI table the rates were computed from is not read by informask either: a damaged one
  # was hashed, loaded and rebuilt (hours at scale) at every start; informask_online reads it.
  good = (copy / "pmi.npz").read_bytes()
  (copy / "pmi.npz").write_bytes(good[: len(good) // 2])
  config.masking.name = "informask"
  assert loop.build_masker(config, run_pipeline).name == "informask"
  assert (copy / "pmi.npz").read_bytes() == good[: len(good) // 2]
  config.masking.name = "informask_online"
  assert loop.build_masker(config, run_pipeline).name == "informask_online"
  assert (copy / "pmi.npz").read_bytes() == good


def test_the_rate_stage_bound_on_k_is_checked_for_the_stages_built(tmp_path):
  """The bound on masking.num_candidates (which only the rate stage uses) followed the training
  strategy: a full build under a pmi_span config counted the corpus and built the PMI table
  before the rate stage refused K; a build of n-grams only under informask was refused."""
  config = small_config(tmp_path / "cache")
  config.masking.num_candidates = 1000
  pipeline = fake_pipeline(synthetic_docs(40, seed=2))
  config.masking.name = "pmi_span"
  with pytest.raises(ValueError, match=r"config\.masking\.num_candidates=1000 \(the K with"):
    stats.build_artifacts(config, pipeline, progress=False)
  assert not (tmp_path / "cache" / "stats").exists()  # Refused before anything was counted.
  config.masking.name = "informask"
  directory = stats.build_artifacts(config, pipeline, what=("ngrams",), progress=False)
  assert (directory / "pmi_ngrams.json").is_file()


@pytest.mark.parametrize("field", ["seconds", "counts", "params", None])
def test_a_meta_json_without_a_field_every_build_writes_is_rebuilt(built, tmp_path, field,
                                                                   caplog):
  """Valid JSON without 'seconds' (or 'counts', 'params'), or a cut-off meta.json (None), and a
  damaged pmi.npz: the rebuild starts from a fresh meta.json, not a KeyError from the stage that
  reads the field, and says why every stage is built again."""
  config, pipeline, directory = built
  config = small_config(tmp_path)
  copy = stats.artifact_dir(config, pipeline)
  shutil.copytree(directory, copy)
  good = (copy / "pmi.npz").read_bytes()
  text = (copy / "meta.json").read_text()
  meta = json.loads(text)
  if field:
    del meta[field]
  (copy / "meta.json").write_text(json.dumps(meta) if field else text[:-5])
  (copy / "pmi.npz").write_bytes(b"damaged")
  with caplog.at_level(logging.WARNING):
    assert stats.ensure_artifacts(config, pipeline, ("pmi",)) == copy
  assert (copy / "pmi.npz").read_bytes() == good
  assert (field or "seconds") in stats.load_artifacts(copy, tokenizer_fingerprint="tok-A",
                                                      vocab_size=V).meta
  said = (f"{copy / 'meta.json'} lacks {field}; building every stage afresh." if field else
          f"{copy / 'meta.json'} is not valid JSON")
  assert any(r.getMessage().startswith(said) and r.getMessage().endswith(
      "building every stage afresh.") for r in caplog.records), caplog.text


def test_another_seed_copies_the_counts_pmi_and_ngrams_and_reruns_the_rates(built,
                                                                            monkeypatch):
  config, pipeline, directory = built
  other = small_config(config.data.cache_dir)
  other.train.seed = 7
  assert stats.artifact_dir(other, pipeline) != directory
  ran = []
  for stage, fn in list(build_lib._STAGE_FNS.items()):
    monkeypatch.setitem(build_lib._STAGE_FNS, stage,
                        lambda *a, _s=stage, _f=fn, **k: (ran.append(_s), _f(*a, **k)))
  new = stats.build_artifacts(other, pipeline, progress=False)
  assert ran == ["rates"]  # Only the stage that depends on the seed ran.
  ours = stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V).meta
  theirs = stats.load_artifacts(new, tokenizer_fingerprint="tok-A", vocab_size=V).meta
  for name in ("unigram_counts.npy", "pmi.npz", "pmi_ngrams.json", "pmi_bigrams.json"):
    assert theirs["files"][name] == ours["files"][name]
  assert theirs["counts"]["pmi_nnz"] == ours["counts"]["pmi_nnz"]
  # Linked, not copied: a seed sweep held one copy of the PMI table per seed.
  assert (directory / "pmi.npz").samefile(new / "pmi.npz")
  other.stats.window = 3  # A PMI setting: counts are copied, PMI (and the rates) are rebuilt.
  ran.clear()
  stats.build_artifacts(other, pipeline, progress=False)
  assert ran == ["pmi", "rates"]
  ran.clear()
  stats.build_artifacts(other, pipeline, what=("counts",), force=True, progress=False)
  assert ran == ["counts"]  # --force rebuilds, never copies.
  # The rebuild renamed its file over the link: the directory it was taken from keeps its own.
  rebuilt = stats.artifact_dir(other, pipeline)
  assert not (directory / "unigram_counts.npy").samefile(rebuilt / "unigram_counts.npy")
  stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)


def test_spill_folders_a_killed_build_left_are_named(tmp_path, caplog):
  """A build killed mid-count leaves its spill folder in the statistics directory (gigabytes for
  a large corpus): the next build names it with its size, and leaves it (another run sharing the
  cache may be writing it)."""
  config = small_config(tmp_path)
  pipeline = fake_pipeline(synthetic_docs(60, seed=3))
  directory = stats.artifact_dir(config, pipeline)
  left = directory / f"{counting.PAIRS_SPILL_PREFIX}killed"
  left.mkdir(parents=True)
  (left / "spill-0.npz").write_bytes(b"x" * 2_000_000)
  with caplog.at_level(logging.WARNING):
    stats.build_artifacts(config, pipeline, what=("counts",), progress=False)
  assert (f"holds 1 folder(s) left by interrupted statistics builds (0.00 GB): "
          f"{left.name}.") in caplog.text
  assert left.is_dir()


def test_runs_of_two_strategies_building_one_directory_keep_each_others_stages(tmp_path,
                                                                               monkeypatch,
                                                                               another_run):
  """pmi_span and informask runs started together share one statistics directory (its key is not
  the strategy's): each kept its own meta.json, and the last to write it dropped the stages the
  other had built, so the next pmi_span run counted its n-grams again (hours at scale). The
  second builder now waits for the first, then builds only what is still missing."""
  config = small_config(tmp_path)
  pipeline = fake_pipeline(synthetic_docs(60, seed=3))
  other = another_run(lambda: stats.ensure_artifacts(config, pipeline, ("counts",),
                                                     progress=False))
  real_ngrams = build_lib._STAGE_FNS["ngrams"]

  def ngrams_while_the_other_runs(*args):
    other.start_and_wait()
    real_ngrams(*args)

  monkeypatch.setitem(build_lib._STAGE_FNS, "ngrams", ngrams_while_the_other_runs)
  directory = stats.ensure_artifacts(config, pipeline, ("ngrams",), progress=False)
  other.join()
  files = artifacts.read_meta(directory)["files"]
  assert {"unigram_counts.npy", "pmi_ngrams.json", "pmi_bigrams.json"} <= set(files), files


def test_a_run_whose_stages_are_built_does_not_wait_for_another_builder(built):
  """A run whose rates were built and intact waited for any other run building into the same
  directory (a `stats build --what=ngrams --force`, hours at scale) before it could train; the
  processes of a multi-host run checked the checksums one after another."""
  config, pipeline, directory = built
  done = []
  run = threading.Thread(target=lambda: done.append(stats.ensure_artifacts(
      config, pipeline, ("rates",), progress=False)), daemon=True)
  with paths.one_builder(directory.parent.parent, directory, logging.getLogger("other run")):
    run.start()
    run.join(30)
    assert done == [directory], "ensure_artifacts waited for the other builder's lock"
  run.join(60)


def _read_only(monkeypatch, folder):
  """Makes `folder` (and what lies under it) refuse new entries, as a read-only mount does: the
  tests run as root, whom a chmod does not stop."""
  from informask_jax import paths

  real = paths.tempfile.mkdtemp

  def mkdtemp(**kwargs):
    if str(kwargs.get("dir", "")).startswith(str(folder)):
      raise OSError(30, "Read-only file system", kwargs["dir"])
    return real(**kwargs)
  monkeypatch.setattr(paths.tempfile, "mkdtemp", mkdtemp)


def test_an_unwritable_statistics_directory_is_refused_before_any_stage(built, tmp_path,
                                                                        monkeypatch):
  """A read-only statistics directory is named, with config.data.cache_dir, before a stage runs:
  the stage (hours at paper scale) ran in full and failed only when it saved. Statistics built
  and intact are still read from it."""
  built_config, pipeline, directory = built
  config = small_config(tmp_path)
  copy = tmp_path / "stats" / directory.name
  copy.mkdir(parents=True)

  def ran(*args):
    raise AssertionError("a stage ran on an unwritable statistics directory")
  for stage in artifacts.STAGES:
    monkeypatch.setitem(build_lib._STAGE_FNS, stage, ran)
  _read_only(monkeypatch, copy)
  with pytest.raises(PermissionError,
                     match=rf"Statistics directory {copy} cannot be written: creating a directory "
                           rf"in {copy} fails \(Read-only file system\)\. Statistics are written "
                           rf"under config\.data\.cache_dir \({tmp_path}\): fix its permissions, "
                           r"or set --config\.data\.cache_dir to a folder you can write\."):
    stats.build_artifacts(config, pipeline, progress=False)
  _read_only(monkeypatch, directory)  # Built and intact: nothing to write, nothing refused.
  assert stats.build_artifacts(built_config, pipeline, progress=False) == directory


def test_a_statistics_stage_that_fills_the_disk_names_the_directory(tmp_path, monkeypatch):
  """A full disk while a stage saves its table (numpy's "[Errno 28] No space left on device",
  no file named) is a WriteError naming the statistics directory, which lies under
  config.data.cache_dir, often on another disk than the workdir."""
  config, pipeline = small_config(tmp_path), fake_pipeline(synthetic_docs(300, seed=9))

  def disk_full(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setitem(build_lib._STAGE_FNS, "pmi", disk_full)
  directory = stats.artifact_dir(config, pipeline)
  with pytest.raises(paths.WriteError, match=rf"Writing statistics to {directory} failed "
                     r"\(OSError: \[Errno 28\] No space left on device\)\. Free disk space"
                     r", or set --config\.data\.cache_dir"):
    stats.build_artifacts(config, pipeline, progress=False)


# Runs `python -m informask_jax.stats build` with the counting of pairs held at its first chunk,
# its spill folder made (in argv[1]), after logging JAX's line about a backend it probes; argv[2:]
# are more flags of the command.
_HELD_BUILD = """
import logging, runpy, sys, time
import numpy as np
from informask_jax.stats import build, counting

spill_dir, more_flags = sys.argv[1], sys.argv[2:]


def held(*args, **kwargs):
  print("counting", flush=True)
  # Short sleeps, as chunks are counted one by one: a signal that the kernel gives one of JAX's
  # threads is acted on by the main thread only between its own calls.
  for _ in range(600):
    time.sleep(0.1)


def fake_build(config, what, force, progress):
  record = logging.makeLogRecord(dict(
      name="jax._src.xla_bridge", levelno=logging.INFO, levelname="INFO",
      pathname="/site-packages/jax/_src/xla_bridge.py", msg="Unable to initialize backend 'tpu'"))
  logging.getLogger("jax._src.xla_bridge").handle(record)
  logging.info("a line of ours")
  counting.chunk_pair_counts = held
  docs = [(np.arange(5, 20, dtype=np.int32), np.zeros(15, np.int32))]
  counting.count_pairs(docs, np.arange(5, 20), vocab_size=32, spill_dir=spill_dir)

build.build_artifacts = fake_build
sys.argv = ["x", "build", "--config", "configs/informask.py:tiny", *more_flags]
runpy.run_module("informask_jax.stats", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("signum, flags, rerun", [
    ("SIGTERM", [], None), ("SIGINT", [], "the same command"),
    ("SIGINT", ["--force"], "the same command without --force")])
def test_a_stopped_build_removes_its_spill_folder_and_says_so_in_one_line(tmp_path, signum,
                                                                           flags, rerun):
  """SIGTERM (a scheduler's limit) and Ctrl-C during the pair counts: the spill folder (gigabytes
  at scale) goes, and the status is a shell's 128 + the signal; Ctrl-C says what is kept in one
  line, not a traceback, and how to build the rest: without --force, which would redo the stages
  kept. JAX's line for each backend it probes stays out of the log."""
  import signal

  proc = subprocess.Popen([sys.executable, "-c", _HELD_BUILD, str(tmp_path), *flags],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=pathlib.Path(__file__).parent.parent,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert proc.stdout.readline() == "counting\n", proc.stderr.read()
    assert len(list(tmp_path.glob(f"{counting.PAIRS_SPILL_PREFIX}*"))) == 1
    proc.send_signal(getattr(signal, signum))
    _, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + getattr(signal, signum), stderr
  assert not list(tmp_path.glob(f"{counting.PAIRS_SPILL_PREFIX}*"))
  assert "Traceback" not in stderr and "a line of ours" in stderr, stderr
  assert "Unable to initialize backend" not in stderr, stderr
  if rerun:
    assert stderr.strip().splitlines()[-1] == (
        "python -m informask_jax.stats build: interrupted (Ctrl-C): the stages finished before "
        f"it are kept; {rerun} builds the rest."), stderr



def test_a_dead_statistics_worker_is_one_line_of_error(tmp_path):
  """WorkerDied's message says what to do, yet it came at the end of a traceback through the
  counters: the CLI's one-line error is for it too."""
  script = ("import runpy, sys\n"
            "from informask_jax.stats import build, chunks\n"
            "def dies(*a, **k): raise chunks.WorkerDied('A worker process ... died.')\n"
            "build.build_artifacts = dies\n"
            "sys.argv = ['x', 'build', '--config', 'configs/informask.py:tiny']\n"
            "runpy.run_module('informask_jax.stats', run_name='__main__', alter_sys=True)\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=pathlib.Path(__file__).parent.parent, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].endswith("A worker process ... died."), proc.stderr

def test_mismatched_tokenizer_is_refused(built, tmp_path):
  _, _, directory = built
  with pytest.raises(stats.TokenizerMismatchError, match="tok-A.*tok-B"):
    stats.load_artifacts(directory, tokenizer_fingerprint="tok-B", vocab_size=V)
  with pytest.raises(stats.TokenizerMismatchError, match=f"vocab size {V}.*vocab size 512"):
    stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=512)
  with pytest.raises(FileNotFoundError, match="meta.json"):
    stats.load_artifacts(directory.parent, tokenizer_fingerprint="tok-A", vocab_size=V)
  with pytest.raises(ValueError, match=r"meta.json is a file; give the directory"):
    stats.load_artifacts(directory / "meta.json", tokenizer_fingerprint="tok-A", vocab_size=V)
  # A table given by path (masking.rates_path) is checked against the directory it lies in ...
  rates_path = str(directory / "rates.npy")
  stats.check_table_tokenizer(rates_path, "tok-A", "masking.rates_path")
  with pytest.raises(stats.TokenizerMismatchError,
                     match=r"masking.rates_path=.*rates.npy' lies in statistics built for "
                           r"tokenizer tok-A .* this run's tokenizer is tok-B"):
    stats.check_table_tokenizer(rates_path, "tok-B", "masking.rates_path")
  # ... the directory the file is in, not a link's (beside which no meta.json lies) ...
  (tmp_path / "rates_link.npy").symlink_to(rates_path)
  with pytest.raises(stats.TokenizerMismatchError, match=r"built for tokenizer tok-A"):
    stats.check_table_tokenizer(str(tmp_path / "rates_link.npy"), "tok-B", "masking.rates_path")
  # ... and one without a statistics directory around it has nothing to compare.
  stats.check_table_tokenizer(str(directory.parent / "id_mask_prob.json"), "tok-B", "x")


def test_bad_config_and_empty_corpus_fail_early(tmp_path):
  config = small_config(tmp_path)
  config.stats.min_pair_count = 0
  with pytest.raises(ValueError, match="config.stats.min_pair_count=0"):
    stats.build_artifacts(config, fake_pipeline([]), progress=False)
  with pytest.raises(ValueError, match="Unknown statistics stage"):
    stats.build_artifacts(small_config(tmp_path), fake_pipeline([]), what=("pmix",))
  with pytest.raises(ValueError, match="holds no tokens"):
    stats.build_artifacts(small_config(tmp_path), fake_pipeline([]), progress=False)
  config = small_config(tmp_path)
  config.stats.min_pair_count = 10**6
  docs = synthetic_docs(20, seed=10)
  with pytest.raises(ValueError, match="min_pair_count=1000000"):
    stats.build_artifacts(config, fake_pipeline(docs), what=("pmi",), progress=False)
  # A streaming corpus has no tokenized corpus to count: the way out fits every strategy.
  streaming = fake_pipeline(docs)
  streaming.tokenized_train = None
  with pytest.raises(ValueError, match=r"streaming=True\) has none\. Set streaming=False .*, "
                                       r"for informask only, .*masking.rates_path"):
    stats.build_artifacts(small_config(tmp_path), streaming, progress=False)


def test_report_cli_writes_png_and_summary(built, tmp_path):
  _, _, directory = built
  out = tmp_path / "r.png"
  proc = subprocess.run([sys.executable, "-m", "informask_jax.stats", "report", str(directory),
                         f"--out={out}"], capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
  summary = out.with_suffix(".txt").read_text()
  assert "corpus-level expected share 0.1500" in summary and "w10" in summary
  assert summary.strip() in proc.stdout


def test_report_of_tokens_in_a_script_the_font_lacks_says_so_once(built, tmp_path, caplog):
  """Chinese token labels drew one matplotlib "Glyph ... missing from font" warning per character
  and drawing (dozens of lines for a Chinese corpus); now one log line names them."""
  import warnings

  from informask_jax.stats import report

  _, _, directory = built
  copy = tmp_path / "stats"
  shutil.copytree(directory, copy)
  meta = artifacts.read_meta(copy)
  tokens = ["[PAD]"] + [chr(0x4E00 + i) for i in range(meta["vocab_size"] - 1)]
  (copy / artifacts.VOCAB).write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
  artifacts.record_file(copy, meta, artifacts.VOCAB)
  artifacts.write_meta(copy, meta)
  with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
    warnings.simplefilter("always")
    png, summary = report.write_report(copy, tmp_path / "r.png")
  assert not [w for w in caught if "missing from" in str(w.message)], caught[:3]
  lines = [r.getMessage() for r in caplog.records if "token labels" in r.getMessage()]
  assert len(lines) == 1 and "show as boxes" in lines[0], lines
  assert any("\u4e00" <= ch <= "\u9fff" for ch in summary) and png.stat().st_size > 20_000


def test_report_out_is_the_file_written(built, tmp_path, monkeypatch):
  """--out as a directory (existing, or new with a trailing /), a name without a suffix or a path
  with ~ (which the shell leaves in --out=~/x.png): the returned (and printed) path is the PNG
  written, next to its .txt."""
  from informask_jax.stats import report

  _, _, directory = built
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  for out, expected in ((tmp_path, tmp_path / "report.png"),
                        (tmp_path / "rates", tmp_path / "rates.png"),
                        ("~/r.png", tmp_path / "home" / "r.png"),
                        (f"{tmp_path / 'new'}/", tmp_path / "new" / "report.png")):
    png, _ = report.write_report(directory, out)
    assert png == expected and png.read_bytes()[:4] == b"\x89PNG", (out, png)
    assert png.with_suffix(".txt").is_file()
  assert not (tmp_path / "~").exists() and not (tmp_path.parent / f"{tmp_path.name}.png").exists()
  for out in ("notes.txt", "rates.docx"):  # Not images, or the summary's own name.
    with pytest.raises(ValueError, match=rf"--out .*{out}: '\.\w+' is not an image format"):
      report.write_report(directory, tmp_path / out)
    assert not (tmp_path / out).exists()
  # The summary beside DIR/vocab.png would replace DIR/vocab.txt, the tables' vocabulary.
  vocab = (directory / "vocab.txt").read_bytes()
  for out in (directory / "vocab.png", directory / "vocab"):
    with pytest.raises(ValueError, match=r"vocab\.txt is a file of the statistics directory"):
      report.write_report(directory, out)
  assert (directory / "vocab.txt").read_bytes() == vocab
  assert not (directory / "vocab.png").exists()


def test_report_names_out_when_its_folder_cannot_be_written(built, tmp_path, monkeypatch):
  """--out under a file (/dev/full/x.png) was a bare FileExistsError, and a read-only statistics
  directory (the default place) a hint to free disk space: both name --out, before the figure
  is drawn, and write nothing."""
  from informask_jax.stats import report

  _, _, copy = copy_of_built(built, tmp_path / "cache")
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileExistsError, match=rf"^--out's folder {tmp_path}/file exists and is not "
                                            r"a directory\. Give --out a path in a folder you can "
                                            r"write, e\.g\. --out ~/report\.png\.$"):
    report.write_report(copy, tmp_path / "file" / "x.png")
  _read_only(monkeypatch, copy)
  with pytest.raises(PermissionError, match=rf"^The statistics directory \(where the report goes "
                                            rf"without --out\) {copy} cannot be written: .*"
                                            r"Read-only file system\)\. Give --out a path"):
    report.write_report(copy)
  assert not list(copy.glob("report*"))
  png, _ = report.write_report(copy, tmp_path / "r.png")  # The way out it names.
  assert png.is_file()


def test_cli_errors_name_the_command_not_the_file():
  """A bad override or a missing subcommand starts with `python -m informask_jax.stats`, not
  the absolute path of its __main__.py."""
  for args, expected in ((["build", "--config", "configs/informask.py:tiny",
                           "--config.train.num_step=3"],
                          "python -m informask_jax.stats: bad command-line flag: "
                          "--config.train.num_step: "),
                         ([], "python -m informask_jax.stats: error: no command given"),
                         (["biuld"], "error: unknown command 'biuld'; did you mean 'build'?"),
                         (["build"], "error: build needs --config, e.g. --config configs/"),
                         (["build", "extra"], "error: build takes no positional arguments, got "
                                              "['extra']"),
                         (["report"], "error: report takes one directory, got none")):
    proc = subprocess.run([sys.executable, "-m", "informask_jax.stats", *args],
                          capture_output=True, text=True, timeout=120,
                          cwd=pathlib.Path(__file__).parent.parent,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and "__main__.py" not in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr
    # The problem first, then the two usage lines, not the whole --help.
    assert len(proc.stderr.splitlines()) <= 4 and "--[no]force" not in proc.stderr, proc.stderr


def test_cli_help_lists_its_flags_and_succeeds():
  # The flags are filed under the command's name (argv[0] is renamed before they are defined),
  # which absl's --help looks them up by; asked-for help exits 0, not absl's 1.
  proc = subprocess.run([sys.executable, "-m", "informask_jax.stats", "build", "--help"],
                        capture_output=True, text=True, timeout=120,
                        cwd=pathlib.Path(__file__).parent.parent,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  for flag in ("--config:", "--what:", "--[no]force:", "--out:"):
    assert flag in proc.stdout, proc.stdout


def test_cli_refuses_the_flags_of_the_other_command(tmp_path):
  """report reads no --what / --force / --config and build no --out: typed, even at the default
  value (--noforce), they are a usage error rather than ignored. Each command's own flags still
  reach it (the errors after them are the command's own, about the inputs)."""
  config = "configs/informask.py:tiny"
  missing = str(tmp_path / "missing")
  # (args, status, message): cache_dir /dev/null/x would make a build fail at once, after the
  # flags were taken: the refusal must come first.
  cases = ((["report", missing, "--what=pmi"], 2,
            "python -m informask_jax.stats: error: --what applies to build only; report reads DIR"),
           (["report", missing, "--noforce", "--config", config], 2,
            "error: --force, --config apply to build only;"),
           (["build", "--config", config, "--config.data.cache_dir=/dev/null/x",
             f"--out={tmp_path / 'r.png'}"], 2,
            "error: --out applies to report only; build writes into the config's statistics"),
           (["report", missing, f"--out={tmp_path / 'r.png'}"], 1,
            "Statistics directory " + missing + " does not exist"),
           (["build", "--config", config, "--what=pmix", "--force"], 1,
            "Unknown statistics stage"))
  for args, status, expected in cases:
    proc = subprocess.run([sys.executable, "-m", "informask_jax.stats", *args],
                          capture_output=True, text=True, timeout=120,
                          cwd=pathlib.Path(__file__).parent.parent,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == status and expected in proc.stderr, (args, proc.stderr)
    if status == 2:  # The problem, then the usage lines, as for a mistyped command.
      assert len(proc.stderr.splitlines()) <= 4 and "usage:" in proc.stderr, proc.stderr
  assert not (tmp_path / "r.png").exists()


def test_chunks_from_dataset_match_documents():
  import datasets

  docs = synthetic_docs(50, seed=11)
  ds = datasets.Dataset.from_dict({"input_ids": [d[0].tolist() for d in docs],
                                   "sentence_ids": [d[1].tolist() for d in docs]})
  a = list(chunks.as_corpus(ds).chunks(5, 45, 100))
  b = list(chunks.as_corpus(docs).chunks(5, 45, 100))
  cat = lambda cs, f: np.concatenate([getattr(c, f) for c in cs])  # noqa: E731
  for f in ("token_ids", "sentence_ids"):
    np.testing.assert_array_equal(cat(a, f), cat(b, f))
  assert sum(c.num_documents for c in a) == sum(c.num_documents for c in b) == 40


def test_dataset_chunks_stay_near_max_tokens_when_long_documents_follow_short_ones():
  """Sized from the first 256 documents' mean alone, a corpus of 2-token documents followed by
  3000-token ones came in chunks of 732k tokens at max_tokens=1000. Now cut as the in-memory
  corpus cuts: the same chunks, none past max_tokens plus one document."""
  import datasets

  docs = [[5, 6]] * 256 + [list(range(5, 35)) * 100] * 40 + [[7]] * 500
  ds = datasets.Dataset.from_dict({"input_ids": docs,
                                   "sentence_ids": [[0] * len(d) for d in docs]})
  ours = list(chunks.as_corpus(ds).chunks(0, len(docs), 1000))
  in_memory = list(chunks.as_corpus([(np.asarray(d, np.int32), np.zeros(len(d), np.int32))
                                     for d in docs]).chunks(0, len(docs), 1000))
  assert max(c.num_tokens for c in ours) <= 1000 + 3000
  assert [c.num_tokens for c in ours] == [c.num_tokens for c in in_memory]
  for a, b in zip(ours, in_memory, strict=True):
    np.testing.assert_array_equal(a.doc_offsets, b.doc_offsets)


@pytest.mark.slow
def test_build_cli_on_the_embedded_corpus(tmp_path):
  """The real glue: config flags -> input pipeline -> every stage -> the directory, last line.
  Run from another directory: the config file's `from configs import base` must still resolve."""
  config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "informask.py")
  cmd = [sys.executable, "-m", "informask_jax.stats", "build", "--config", f"{config}:tiny",
         f"--config.data.cache_dir={tmp_path}", "--config.data.max_documents=300",
         "--config.stats.rate_sample_sequences=32"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  directory = pathlib.Path(proc.stdout.strip().splitlines()[-1])
  assert directory.parent == tmp_path / "stats"
  meta = json.loads((directory / "meta.json").read_text())
  assert sorted(meta["seconds"]) == sorted(artifacts.STAGES)
  a = stats.load_artifacts(directory, tokenizer_fingerprint=meta["tokenizer_fingerprint"],
                           vocab_size=meta["vocab_size"])
  assert a.pmi.nnz > 0 and a.rates.shape == (meta["vocab_size"],) and a.ngrams
  # A second build finds everything intact and rebuilds nothing.
  stamp = (directory / "pmi.npz").stat().st_mtime_ns
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
  assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(directory)
  assert (directory / "pmi.npz").stat().st_mtime_ns == stamp


def test_pmi_table_is_exactly_symmetric_for_independent_tokens():
  # Independent tokens have PMI exactly 0, so the float64 result is pure rounding noise that
  # float32 keeps: computing (x, y) and (y, x) in different orders made the table asymmetric and
  # the loader rejected it as corrupt (seen on wiki-vital at V=8192).
  rng = np.random.default_rng(0)
  size = 300
  a = rng.integers(1, 10**4, size).astype(np.int64)
  counts = sp.csr_matrix(np.outer(a, a))  # C(x, y) = a_x a_y: p(x, y) = p(x) p(y).
  s = int(a.sum())
  pairs = counting.PairCounts(vocab_ids=np.arange(size, dtype=np.int32), counts=counts,
                              marginals=a * s, total=s * s, num_tokens=s * s, min_pair_count=1)
  table = pmi_lib.pmi_table(pairs, vocab_size=size, positive_only=False)
  assert table.nnz == size * size and np.abs(table.data).max() < 1e-12
  pmi_lib.check_table(table, size)  # Raises if not exactly symmetric.
  kept = pmi_lib.pmi_table(pairs, vocab_size=size, positive_only=True)
  assert (kept != kept.T).nnz == 0


def test_check_table_refuses_an_asymmetric_table():
  """The loader's guard on pmi.npz: PMI is symmetric, so any asymmetry means a damaged table."""
  dense = np.array([[0, 1.5, 0], [1.5, 0, 0.5], [0, 0.5, 0]], np.float32)
  assert (pmi_lib.check_table(sp.csr_matrix(dense), 3) != sp.csr_matrix(dense)).nnz == 0
  other_value, no_mirror = dense.copy(), dense.copy()
  other_value[0, 1] = 1.25  # PMI(x, y) != PMI(y, x)
  no_mirror[0, 2] = 0.25  # PMI(x, y) stored, PMI(y, x) missing
  for bad in (other_value, no_mirror):
    with pytest.raises(ValueError, match="pmi.npz is not symmetric"):
      pmi_lib.check_table(sp.csr_matrix(bad), 3, "pmi.npz")


# --- Edge cases -----------------------------------------------------------------------------------


def test_select_pmi_vocab_keeps_size_tokens_after_the_dropped_ones():
  counts = np.array([0, 0, 0, 0, 0, 90, 80, 70, 60, 50, 40])  # ids 0..4 are specials
  got = counting.select_pmi_vocab(counts, special_ids=SPECIALS, size=3, min_count=1, drop_top_k=2)
  np.testing.assert_array_equal(got, [7, 8, 9])  # size counts from the first kept token


def test_pair_counts_stay_exact_past_int32():
  # One sentence of 46,400 copies of a token: C[x, x] = n (n - 1) > 2^31 needs int64 products.
  n = 46_400
  ids = np.array([20] * n + [21], np.int32)
  pairs = counting.count_pairs([(ids, np.zeros(n + 1, np.int32))], np.array([20, 21]),
                               vocab_size=V)
  assert to_dict(pairs.counts) == {(0, 0): n * (n - 1), (0, 1): n, (1, 0): n}
  np.testing.assert_array_equal(pairs.marginals, [n * (n - 1) + n, n])


@pytest.mark.parametrize("window,whole_words", [(2, False), (3, True)])
def test_windowed_counts_over_many_small_chunks_equal_bruteforce(window, whole_words):
  # Chunks of about one document: the last pair of every chunk must be counted too.
  docs = synthetic_docs(60, seed=3)
  uni = counting.count_unigrams(docs, V)
  vocab = counting.select_pmi_vocab(uni.counts, special_ids=SPECIALS, size=60, min_count=2)
  pairs = counting.count_pairs(docs, vocab, vocab_size=V, window=window, whole_words=whole_words,
                               continuation=CONT, chunk_tokens=20)
  ref = brute_pairs(docs, vocab, window=window, whole_words=whole_words)
  got = {(int(vocab[r]), int(vocab[c])): n for (r, c), n in to_dict(pairs.counts).items()}
  assert got == dict(ref) and pairs.total == sum(ref.values())


def test_windowed_counts_with_more_rows_than_fit_uint32_keys():
  # R^2 >= 2^32: the pair keys min * R + max need 64 bits.
  big = 70_000
  doc = (np.array([big - 1, big - 2, 5, big - 1, big - 3], np.int32), np.zeros(5, np.int32))
  vocab = np.arange(big, dtype=np.int32)
  pairs = counting.count_pairs([doc], vocab, vocab_size=big, window=2)
  assert to_dict(pairs.counts) == dict(brute_pairs([doc], vocab, window=2))


def test_counters_refuse_bad_arguments():
  docs = synthetic_docs(5, seed=0)
  with pytest.raises(ValueError, match="stats.window must be >= 0"):
    counting.count_pairs(docs, np.array([20, 21]), vocab_size=V, window=-1)
  pairs = counting.count_pairs(docs, np.arange(20, 60), vocab_size=V)
  with pytest.raises(ValueError, match="context_alpha must be > 0"):
    pmi_lib.pmi_table(pairs, vocab_size=V, context_alpha=0.0)
  with pytest.raises(ValueError, match="ngram_min_count must be >= 1"):
    ngrams.build_ngram_vocab(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                             size=10, min_count=0)
  kw = dict(unigram_counts=[0, 5, 5], special_ids=[0])
  for mask_prob in (0.0, 1.0):
    with pytest.raises(ValueError, match="mask_prob must be in"):
      rates.finalize_rates([0, 1, 1], [0, 5, 5], mask_prob=mask_prob, smoothing=1.0, **kw)
  with pytest.raises(ValueError, match="rate_smoothing must be >= 0"):
    rates.finalize_rates([0, 1, 1], [0, 5, 5], mask_prob=0.15, smoothing=-1.0, **kw)


def test_word_keys_depend_on_the_order_of_their_pieces():
  # "w ##a ##b" and "w ##b ##a" are different words (and so different n-grams).
  a, b = V - 5, V - 6
  ids = np.array([20, a, b, 20, b, a, 20, a, b], np.int32)
  docs = [(ids, np.zeros(ids.size, np.int32))]
  counts = ngrams.count_ngrams(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                               min_count=1)
  ref = brute_word_ngrams(docs)
  lengths = ngrams.key_length(counts.keys)
  for n in (1, 2, 3):
    want = sorted(c for g, c in ref.items() if len(g) == n)
    assert sorted(counts.counts[lengths == n].tolist()) == want, n


def test_ngrams_and_bigrams_with_pmi_exactly_zero_are_left_out():
  """Nothing is kept, and tables neither pmi_span variant could use are refused at the build,
  naming the setting (they were cached, and every run failed at the masker)."""
  empty = r"No word n-gram or token pair .* stats.ngram_min_count=1 times has a positive PMI"
  # One token repeated: every n-gram and adjacent pair is exactly as likely as its parts.
  docs = [(np.full(3, 20, np.int32), np.zeros(3, np.int32))]
  with pytest.raises(ValueError, match=empty):
    ngrams.build_ngram_vocab(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                             size=10, min_count=1)
  # Independent pairs at several corpus sizes: their PMI rounds to +-1 ulp, kept by none.
  for k in (1, 3, 5, 6):
    docs = [(np.array(pair, np.int32), np.zeros(2, np.int32))
            for pair in ([20, 21], [21, 20], [20, 20], [21, 21])] * k
    with pytest.raises(ValueError, match=empty):
      ngrams.build_ngram_vocab(docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                               size=10, min_count=1)
    pairs = counting.count_pairs(docs, np.array([20, 21], np.int32), vocab_size=V)
    assert pmi_lib.pmi_table(pairs, vocab_size=V).nnz == 0, k


def test_check_table_refuses_a_wrong_shape_and_non_finite_values():
  good = sp.csr_matrix(np.array([[0, 1.5], [1.5, 0]], np.float32))
  with pytest.raises(ValueError, match=r"has shape \(2, 2\), expected \(3, 3\)"):
    pmi_lib.check_table(good, 3)
  bad = sp.csr_matrix(np.array([[0, np.inf], [np.inf, 0]], np.float32))
  with pytest.raises(ValueError, match="non-finite"):
    pmi_lib.check_table(bad, 2)


def test_count_choices_refuses_a_masker_that_picks_specials():
  def masker(key, ids, sentence_ids):
    return {"mask": ids >= 0}  # every position, [CLS] and [PAD] included

  ids = np.array([[CLS, 20, 21, SEP, PAD]], np.int32)
  with pytest.raises(ValueError, match="chose special or padding tokens"):
    rates.count_choices(masker, ids, np.zeros_like(ids), vocab_size=V, special_ids=SPECIALS,
                        pad_id=PAD)


def test_read_id_mask_prob_refuses_ids_outside_the_vocabulary(tmp_path):
  path = tmp_path / "id_mask_prob.json"
  for bad in ("-1", str(V)):
    path.write_text(json.dumps({"5": 0.1, bad: 0.2}))
    with pytest.raises(ValueError, match=f"token id {bad} is outside"):
      rates.read_id_mask_prob(str(path), V)


def test_chunks_hold_exactly_the_requested_document_range():
  import datasets

  docs = synthetic_docs(50, seed=11)
  ds = datasets.Dataset.from_dict({"input_ids": [d[0].tolist() for d in docs],
                                   "sentence_ids": [d[1].tolist() for d in docs]})
  for start, stop, max_tokens in ((0, 50, 100), (3, 44, 100), (7, 20, 1000), (9, 10, 5)):
    want = np.concatenate([d[0] for d in docs[start:stop]])
    for corpus in (chunks.as_corpus(ds), chunks.as_corpus(docs)):
      got = list(corpus.chunks(start, stop, max_tokens))
      np.testing.assert_array_equal(np.concatenate([c.token_ids for c in got]), want)
      assert sum(c.num_documents for c in got) == stop - start


def test_chunks_refuse_token_and_sentence_ids_of_different_lengths():
  import datasets

  with pytest.raises(ValueError, match="Document 0: 3 token ids but 2 sentence ids"):
    chunks.chunk_from_documents([(np.array([20, 21, 22]), np.array([0, 0]))])
  ds = datasets.Dataset.from_dict({"input_ids": [[20, 21, 22]], "sentence_ids": [[0, 0]]})
  with pytest.raises(ValueError, match="differ in length"):
    list(chunks.as_corpus(ds).chunks(0, 1, 100))


def test_cache_key_covers_the_corpus_format_and_rate_settings(built, monkeypatch):
  config, pipeline, directory = built
  assert stats.artifact_dir(config, fake_pipeline([], corpus_fp="corpus-2")) != directory
  for key, value in (("masking.mask_prob", 0.2), ("masking.num_candidates", 8),
                     ("data.seq_len", 64), ("data.packing", "other"),
                     ("stats.rate_smoothing", 5.0), ("stats.rate_sample_sequences", 10)):
    other = small_config(config.data.cache_dir)
    other.update_from_flattened_dict({key: value})
    assert stats.artifact_dir(other, pipeline) != directory, key
  monkeypatch.setattr(rates, "METHOD", rates.METHOD + 1)  # Rates of another method: rebuilt.
  assert stats.artifact_dir(config, pipeline) != directory
  monkeypatch.undo()
  monkeypatch.setattr(artifacts, "FORMAT_VERSION", artifacts.FORMAT_VERSION + 1)
  assert stats.artifact_dir(config, pipeline) != directory


def copy_of_built(built, tmp_path):
  """The built directory copied into a cache of its own, and a config pointing there."""
  _, pipeline, directory = built
  config = small_config(tmp_path)
  copy = tmp_path / "stats" / directory.name
  shutil.copytree(directory, copy)
  assert stats.artifact_dir(config, pipeline) == copy
  return config, pipeline, copy


def test_the_rate_stage_scores_a_sample_of_rate_sample_sequences_rows_drawn_from_the_seed(
    built, tmp_path, monkeypatch):
  """The rate stage masks stats.rate_sample_sequences rows (48 of the 419 here), sampled and
  masked from config.train.seed. (The other builds passed as well on all rows, or on seed 0.)"""
  config, pipeline, _ = copy_of_built(built, tmp_path)
  calls, count_choices = [], rates.count_choices

  def recording(masker, token_ids, sentence_ids, **kwargs):
    calls.append((token_ids, kwargs["seed"]))
    return count_choices(masker, token_ids, sentence_ids, **kwargs)

  monkeypatch.setattr(rates, "count_choices", recording)
  rows = pipeline.train["token_ids"]
  for seed in (0, 7):
    config.train.seed = seed
    stats.build_artifacts(config, pipeline, what=("rates",), force=True, progress=False)
  assert [seed for _, seed in calls] == [0, 7]
  assert rows.shape[0] > config.stats.rate_sample_sequences == 48
  for sample, seed in calls:
    np.testing.assert_array_equal(sample, rows[rates.sample_rows(rows.shape[0], 48, seed)])


def test_load_artifacts_refuses_bad_contents_that_match_their_checksums(built, tmp_path):
  def altered(name, write, match):
    directory = tmp_path / f"copy-{name}"
    shutil.copytree(built[2], directory)
    meta = artifacts.read_meta(directory)
    write(directory / name, meta)
    if name != artifacts.META:
      artifacts.record_file(directory, meta, name)
    artifacts.write_meta(directory, meta)
    with pytest.raises(artifacts.ArtifactError, match=match):
      stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)

  altered("unigram_counts.npy", lambda p, _: artifacts.save_npy(p, np.ones(V - 1, np.int64)),
          rf"unigram_counts.npy has shape \({V - 1},\)")
  altered("rates.npy", lambda p, _: artifacts.save_npy(p, np.full(V, np.nan, np.float32)),
          "rates.npy holds non-finite")
  altered("pmi_ngrams.json", lambda p, _: artifacts.save_json(p, [[20, V]]),
          r"pmi_ngrams.json holds token ids outside")
  altered(artifacts.META, lambda p, meta: meta.update(format_version=0),
          "statistics format 0, this code reads")


def test_summary_orders_tokens_by_frequency_and_rate(built):
  from informask_jax.stats import report

  _, _, directory = built
  a = stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)
  _, numbers = report.summarize(directory)
  counts, r = a.unigram_counts, a.rates
  by_freq = sorted((i for i in range(V) if counts[i] > 0 and i not in SPECIALS),
                   key=lambda i: (-counts[i], i))
  assert numbers["by_freq"].tolist() == by_freq
  in_table = np.diff(a.pmi.indptr) > 0
  ranked = sorted((i for i in by_freq if in_table[i]), key=lambda i: (-r[i], i))
  assert numbers["ranked"].tolist() == ranked
  # The headline correlation is over the measured (PMI-table) tokens, not the fill-rate ties.
  import scipy.stats
  table = [i for i in by_freq if in_table[i]]
  assert numbers["rho"] == pytest.approx(
      scipy.stats.spearmanr(r[table], np.log(counts[table])).statistic)


def test_stages_are_reused_only_from_the_same_corpus_and_stage_settings(built, tmp_path):
  config, pipeline, source = copy_of_built(built, tmp_path)

  def reused(stage, config, pipeline=pipeline):
    directory = stats.artifact_dir(config, pipeline)
    assert directory != source
    directory.mkdir(parents=True, exist_ok=True)
    meta = build_lib.fresh_meta(config, pipeline, directory)
    return build_lib._reuse_stage(stage, directory, meta) == source

  for key, value in (("pmi_vocab_size", 100), ("min_count", 3), ("min_pair_count", 3),
                     ("window", 4), ("drop_top_k", 1), ("whole_words", True),
                     ("context_alpha", 0.75), ("positive_only", False)):
    other = small_config(tmp_path)
    other.stats[key] = value
    assert reused("counts", other) and reused("ngrams", other), key
    assert not reused("pmi", other), key
  for key, value in (("ngram_vocab_size", 100), ("ngram_min_count", 4)):
    other = small_config(tmp_path)
    other.stats[key] = value
    assert reused("pmi", other) and not reused("ngrams", other), key
  other_corpus = fake_pipeline([], corpus_fp="corpus-2")
  assert not any(reused(s, config, other_corpus) for s in ("counts", "pmi", "ngrams"))
  # A source whose file fails its checksum is not copied.
  data = bytearray((source / "pmi.npz").read_bytes())
  data[-3] ^= 0xFF
  (source / "pmi.npz").write_bytes(bytes(data))
  other = small_config(tmp_path)
  other.train.seed = 7
  assert reused("counts", other) and not reused("pmi", other)


def test_force_rebuilds_only_the_named_stages(built, tmp_path, monkeypatch):
  config, pipeline, _ = copy_of_built(built, tmp_path)
  ran = []
  for stage in build_lib._STAGE_FNS:
    monkeypatch.setitem(build_lib._STAGE_FNS, stage, lambda *a, _s=stage, **k: ran.append(_s))
  stats.build_artifacts(config, pipeline, what=("pmi",), force=True, progress=False)
  assert ran == ["pmi"]  # Its dependency "counts" is intact: not rebuilt.


def test_an_interrupted_force_leaves_the_stages_it_did_not_reach_to_the_next_build(
    built, tmp_path, monkeypatch):
  """Interrupted in pmi, a --force build left rates and ngrams listed as intact in meta.json: the
  advised rerun without --force rebuilt nothing, and the tables it was forced to redo stayed."""
  config, pipeline, directory = copy_of_built(built, tmp_path)
  ran = []

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  for stage in build_lib._STAGE_FNS:
    monkeypatch.setitem(build_lib._STAGE_FNS, stage, lambda *a, _s=stage, **k: ran.append(_s))
  monkeypatch.setitem(build_lib._STAGE_FNS, "pmi", interrupted)
  with pytest.raises(KeyboardInterrupt):
    stats.build_artifacts(config, pipeline, force=True, progress=False)
  assert ran == ["counts"]
  listed = json.loads((directory / artifacts.META).read_text())["files"]
  assert not {"pmi.npz", "rates.npy", "pmi_ngrams.json"} & set(listed)
  monkeypatch.undo()
  stats.build_artifacts(config, pipeline, progress=False)  # The rerun builds what was left.
  listed = json.loads((directory / artifacts.META).read_text())["files"]
  assert {"pmi.npz", "rates.npy", "pmi_ngrams.json", "unigram_counts.npy"} <= set(listed)


@pytest.mark.parametrize("key,value", [
    ("pmi_vocab_size", 1), ("min_count", 0), ("min_pair_count", 0), ("window", -1),
    ("drop_top_k", -1), ("context_alpha", 0.0), ("ngram_vocab_size", 0), ("ngram_min_count", 0),
    ("rate_smoothing", -1.0), ("memory_cap_mb", 0), ("context_alpha", math.inf),
    ("rate_smoothing", math.nan), ("rate_sample_sequences", -1),
])
def test_check_config_refuses_each_bad_stats_setting(tmp_path, key, value):
  config = small_config(tmp_path)
  config.stats[key] = value
  with pytest.raises(ValueError, match=f"config.stats.{key}={value!r} must be"):
    build_lib.check_config(config)


def test_statistics_go_to_the_default_cache_when_cache_dir_is_empty(tmp_path, monkeypatch):
  """data.cache_dir='' means the default cache for the statistics too, as for the corpus and the
  tokenizer (it meant ./stats, beside wherever the command ran)."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  config = small_config(tmp_path)
  config.data.cache_dir = ""
  directory = stats.build.artifact_dir(config, fake_pipeline(synthetic_docs(3, seed=1)))
  assert directory.parent == tmp_path / "xdg" / "informask_jax" / "stats"


def test_rate_sample_sequences_0_still_means_every_row(tmp_path):
  config = small_config(tmp_path)
  config.stats.rate_sample_sequences = 0  # As bench/RESULTS.md runs it: every row scored.
  build_lib.check_config(config)


def test_an_empty_what_is_refused_naming_the_stages(tmp_path):
  """--what= built nothing and still reported the directory "built and intact"."""
  with pytest.raises(ValueError, match=r"what= names no statistics stage; choose from \('counts'"):
    stats.build_artifacts(small_config(tmp_path), fake_pipeline([]), what=(), progress=False)
  proc = subprocess.run([sys.executable, "-m", "informask_jax.stats", "build", "--config",
                         "configs/informask.py:tiny", "--what="], capture_output=True, text=True,
                        timeout=120, cwd=pathlib.Path(__file__).parent.parent,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert ("python -m informask_jax.stats: error: --what is empty; give stages from counts, pmi, "
          "rates, ngrams (e.g. --what=pmi,rates), or leave --what out to build them all."
          ) in proc.stderr, proc.stderr


def _written_meta(directory, **fields):
  directory.mkdir(exist_ok=True)
  meta = {"format_version": artifacts.FORMAT_VERSION, "vocab_size": 5, "files": {}, **fields}
  artifacts.write_meta(directory, meta)
  return directory


@pytest.mark.parametrize("fields,match", [
    ({"counts": "oops"}, r"'counts' is str 'oops', expected an object"),
    ({"files": {"rates.npy": "x"}}, r"'files'\['rates.npy'\] is str 'x', expected an object"),
    ({"vocab_size": "5"}, r"'vocab_size' is str '5', expected an integer"),
    ({"vocab_size": True}, r"'vocab_size' is bool True, expected an integer"),
    ({"special_ids": {"pad": "0"}}, r"'special_ids'\['pad'\] is str '0', expected an integer"),
])
def test_meta_json_of_the_wrong_structure_is_a_corrupt_artifact(tmp_path, fields, match):
  """Valid JSON of the wrong shape ended `stats report` in an AttributeError traceback."""
  directory = _written_meta(tmp_path / "stats", **fields)
  with pytest.raises(artifacts.CorruptArtifactError,
                     match=rf"meta.json is damaged: {match}; delete the directory or run"):
    artifacts.read_meta(directory)


def test_meta_json_without_the_fields_every_build_writes_is_a_corrupt_artifact(tmp_path):
  """Without vocab_size `stats report` ended in a KeyError traceback."""
  directory = _written_meta(tmp_path / "stats")
  meta = json.loads((directory / "meta.json").read_text())
  del meta["vocab_size"]
  (directory / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(artifacts.CorruptArtifactError,
                     match=r"meta.json is damaged: it lacks 'vocab_size'; delete the "
                           r"directory or run the build again"):
    artifacts.load_artifacts(directory, tokenizer_fingerprint=None, vocab_size=None)


def test_report_names_the_fields_its_summary_lacks(tmp_path):
  from informask_jax.stats import report

  directory = tmp_path / "stats"
  directory.mkdir()
  artifacts.save_npy(directory / "unigram_counts.npy", np.arange(5, dtype=np.int64))
  artifacts.save_npy(directory / "rates.npy", np.full(5, 0.1, np.float32))
  (directory / "id_mask_prob.json").write_text("{}")
  meta = {"format_version": artifacts.FORMAT_VERSION, "vocab_size": 5, "files": {}}
  for name in ("unigram_counts.npy", "rates.npy", "id_mask_prob.json"):
    artifacts.record_file(directory, meta, name)
  artifacts.write_meta(directory, meta)
  with pytest.raises(artifacts.CorruptArtifactError,
                     match=r"meta.json lacks corpus_fingerprint, tokenizer_fingerprint, a number "
                           r"params.mask_prob; delete the directory or run the build again"):
    report.summarize(directory)


def test_a_streaming_source_is_refused_before_the_pipeline_is_built(tmp_path, monkeypatch):
  """The stream cannot be counted: refused before the tokenizer is trained and the stream read
  (stats build built the whole pipeline first), naming the source, and nothing is written."""
  from informask_jax import data

  config = small_config(tmp_path)
  config.data.sources[0].streaming = True
  monkeypatch.setattr(data, "build_input_pipeline",
                      lambda *a, **k: pytest.fail("the input pipeline was built"))
  with pytest.raises(ValueError, match=r"^Corpus statistics need the tokenized corpus in memory "
                                       r"or on disk; a streaming source \(config\.data\."
                                       r"sources\[0\]\.streaming=True\) has none\."):
    stats.build_artifacts(config, progress=False)
  assert not (tmp_path / "stats").exists()


def test_a_pmi_vocabulary_of_under_2_tokens_names_the_setting_that_limits_it(tmp_path):
  """drop_top_k or min_count: the message names the one to change (it always blamed min_count,
  even for --config.stats.pmi_vocab_size=1, which check_config now refuses before counting)."""
  docs = synthetic_docs(60, seed=11)
  eligible = counting.select_pmi_vocab(counting.count_unigrams(fake_pipeline(docs)
                                                               .tokenized_train, V).counts,
                                       special_ids=SPECIALS, size=V, min_count=2).size
  assert eligible > 10
  for key, value, match in (
      ("drop_top_k", eligible - 1, rf"^{eligible} tokens occur at least config\.stats\."
                                   rf"min_count=2 times, and config\.stats\.drop_top_k="
                                   rf"{eligible - 1} drops .* leaving 1; .* Lower stats\."
                                   r"drop_top_k\.$"),
      ("min_count", 10**6, r"^Only 0 token\(s\) occur at least config\.stats\.min_count=1000000 "
                           r"times .* Lower stats\.min_count")):
    config = small_config(tmp_path / key)
    config.stats[key] = value
    with pytest.raises(ValueError, match=match):
      stats.build_artifacts(config, fake_pipeline(docs), what=("pmi",), progress=False)


def test_report_legend_says_what_the_rate_method_does_past_the_pmi_vocabulary(built, tmp_path,
                                                                              monkeypatch):
  """Since rates method 2 the tokens without PMI get the mean rate, a flat line past the PMI
  vocabulary's end, not falling rates; a directory from before the method was recorded (1)
  still reads "rates fall"."""
  import matplotlib.pyplot as plt

  from informask_jax.stats import report

  figures = []
  close = plt.close
  monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))

  def legend(directory):
    report.write_report(directory, tmp_path / "r.png")
    return [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]

  _, _, directory = built
  a = stats.load_artifacts(directory, tokenizer_fingerprint="tok-A", vocab_size=V)
  assert a.meta["params"]["rates_method"] == rates.METHOD == 2
  no_pmi = (np.diff(a.pmi.indptr) == 0) & (a.unigram_counts > 0)
  no_pmi[list(SPECIALS)] = False
  fill = float(a.rates[no_pmi].mean())
  assert (f"end of the PMI vocabulary (no PMI beyond: the mean rate, {fill:.3f})"
          in legend(directory))
  old = tmp_path / "method1"
  shutil.copytree(directory, old)
  meta = artifacts.read_meta(old)
  del meta["params"]["rates_method"]
  artifacts.write_meta(old, meta)
  assert "end of the PMI vocabulary (no PMI beyond: rates fall)" in legend(old)


def test_report_names_tokens_by_id_when_a_token_holds_a_line_break(tmp_path, caplog):
  """vocab.txt has one token per line: a "\\n" token made every later token take its
  neighbour's name in the report's lists."""
  from informask_jax.stats import report

  meta = {"files": {}}
  for name, tokens in (("good", ["[PAD]", "a", "b", "c"]), ("shifted", ["[PAD]", "\n", "b", "c"])):
    directory = tmp_path / name
    directory.mkdir()
    (directory / artifacts.VOCAB).write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    artifacts.record_file(directory, meta, artifacts.VOCAB)
    names = report._token_names(directory, meta, len(tokens))
    assert names == (tokens if name == "good" else ["#0", "#1", "#2", "#3"]), name
  assert "holds 5 lines for 4 tokens (a token with a line break?)" in caplog.text


def test_rates_that_cannot_reach_mask_prob_are_said(caplog):
  """With no smoothing, tokens the sample never chose keep rate 0; when the chosen ones, all at
  1, carry less than mask_prob of the corpus the table falls short, and the build says so."""
  seen, chosen = np.array([0, 0, 10, 10, 10, 10]), np.array([0, 0, 10, 0, 0, 0])
  counts = np.array([0, 0, 10, 30, 30, 30])
  table = rates.finalize_rates(chosen, seen, unigram_counts=counts, special_ids=(0, 1),
                               mask_prob=0.15, smoothing=0.0)
  np.testing.assert_array_equal(table, [0, 0, 1, 0, 0, 0])
  assert "reach an expected 0.1 of the maskable tokens, short of masking.mask_prob=0.15: the 1 " \
         "tokens with a positive rate are all at 1" in caplog.text
  caplog.clear()
  table = rates.finalize_rates(chosen, seen, unigram_counts=counts, special_ids=(0, 1),
                               mask_prob=0.15, smoothing=1.0)
  assert rates.expected_fraction(table, counts, (0, 1)) == pytest.approx(0.15)
  assert "short of" not in caplog.text


def _sigint_ignored(corpus, start, stop):
  import signal

  return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_statistics_workers_leave_ctrl_c_to_the_parent():
  """Ctrl-C in a terminal reaches every process of the group: each worker printed its own
  KeyboardInterrupt traceback over the parent's one line."""
  docs = [(np.arange(5, 20, dtype=np.int32), np.zeros(15, np.int32)) for _ in range(4)]
  corpus = chunks.as_corpus(docs)
  assert list(chunks.map_shards(_sigint_ignored, corpus, num_workers=2, num_shards=2)) == [
      True, True]



def _killed_on_first_shard(corpus, start, stop):
  import os
  import signal

  if start == 0:
    os.kill(os.getpid(), signal.SIGKILL)  # What the out-of-memory killer does to a worker.
  return stop - start


@pytest.mark.timeout(120)
def test_a_statistics_worker_killed_fails_the_build_rather_than_hanging_it():
  """multiprocessing.Pool replaced a killed worker and then waited for its shard forever: a
  statistics build whose worker the out-of-memory killer took hung with no message."""
  docs = [(np.arange(5, 20, dtype=np.int32), np.zeros(15, np.int32)) for _ in range(8)]
  corpus = chunks.as_corpus(docs)
  with pytest.raises(chunks.WorkerDied, match=r"exit code -9: killed.*config\.data\.num_proc"):
    list(chunks.map_shards(_killed_on_first_shard, corpus, num_workers=2, num_shards=4))


def _second_shard_slow(corpus, start, stop):
  import time

  if start > 0:
    time.sleep(60)
  return stop - start


@pytest.mark.timeout(120)
def test_leaving_parallel_counting_early_ends_its_workers():
  """An error in the parent while it merges a shard (or Ctrl-C) ends the workers still counting
  rather than waiting for shards nobody will read."""
  import multiprocessing
  import time

  docs = [(np.arange(5, 20, dtype=np.int32), np.zeros(15, np.int32)) for _ in range(4)]
  before = set(multiprocessing.active_children())
  shards = chunks.map_shards(_second_shard_slow, chunks.as_corpus(docs), num_workers=2,
                             num_shards=2)
  assert next(shards) == 2
  started = time.monotonic()
  shards.close()  # What an exception in the loop over it does.
  assert time.monotonic() - started < 30
  assert not set(multiprocessing.active_children()) - before

def _hand_built_stats(directory, *, vocab=None, record_vocab=True, mask_prob=0.15,
                      counts=(0, 0, 0, 0, 10, 6, 2, 4, 1)):
  """A statistics directory written by hand: nine tokens, four of them special; "new", "york" and
  "##er" are in the PMI table, "city" is not, and "rare" is in it but seen once."""
  directory.mkdir()
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "new", "york", "##er", "city", "rare"]
  v = len(vocab or tokens)  # A longer vocabulary's later tokens are never seen.
  artifacts.save_npy(directory / "unigram_counts.npy",
                     np.pad(np.array(counts, np.int64), (0, v - len(tokens))))
  artifacts.save_npy(directory / "rates.npy", np.pad(
      np.array([0, 0, 0, 0, 0.1, 0.3, 0.2, 0.15, 0.5], np.float32), (0, v - len(tokens))))
  (directory / "id_mask_prob.json").write_text("{}")
  pairs = [(4, 5), (5, 6), (4, 8)]
  rows = [a for a, b in pairs] + [b for a, b in pairs]
  cols = [b for a, b in pairs] + [a for a, b in pairs]
  artifacts.save_npz(directory / "pmi.npz",
                     sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(v, v)))
  artifacts.save_json(directory / "pmi_ngrams.json", [[4, 5], [7, 6]])
  artifacts.save_json(directory / "pmi_bigrams.json", [[4, 5]])
  (directory / artifacts.VOCAB).write_text("".join(f"{t}\n" for t in (vocab or tokens)),
                                           encoding="utf-8")
  meta = {"format_version": artifacts.FORMAT_VERSION, "vocab_size": v, "files": {},
          "corpus_fingerprint": "corpus-1", "tokenizer_fingerprint": "tok-1",
          "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3},
          "params": {"mask_prob": mask_prob, "min_count": 2, "drop_top_k": 1},
          "counts": {"pmi_vocab_size": 4, "ngrams_per_length": {"2": 2}}}
  names = [n for stage in artifacts.STAGES for n in artifacts.STAGE_FILES[stage]]
  for name in names + ([artifacts.VOCAB] if record_vocab else []):
    artifacts.record_file(directory, meta, name)
  artifacts.write_meta(directory, meta)
  return directory


def test_summary_lines_of_a_hand_built_directory(tmp_path):
  """The figures of the summary, worked out by hand: tokens seen at least params.min_count times
  are listed (the rare one is not), the lowest rates lowest first, the share of occurrences
  outside the PMI table, n-grams joined into words, and the PMI vocabulary's end counted after
  the drop_top_k dropped tokens."""
  from informask_jax.stats import report

  text, numbers = report.summarize(_hand_built_stats(tmp_path / "stats"))
  lines = text.splitlines()
  assert ("tokens outside the PMI table: 1 (17.4% of occurrences), mean rate 0.1500"
          in lines)
  assert ("rate over PMI-table tokens seen >= 2 times: min 0.1000  median 0.2000  max 0.3000"
          in lines)
  assert "10 most frequent: new 0.100, york 0.300, city 0.150, ##er 0.200, rare 0.500" in lines
  assert "highest rates: york 0.300, ##er 0.200, new 0.100" in lines
  assert "lowest rates: new 0.100, ##er 0.200, york 0.300" in lines
  assert "top n-grams: new york | cityer" in lines
  assert numbers["ranked"].tolist() == [5, 6, 4] and numbers["min_count"] == 2
  assert numbers["pmi_end"] == 5
  # A byte-level BPE vocabulary marks word starts ("Ġ"): its lists and n-grams read as words (the
  # n-grams were "Ġnew Ġyork | Ġcity er").
  bpe = ["<pad>", "<unk>", "<s>", "</s>", *("\u0120" + w for w in ("new", "york")), "er",
         *("\u0120" + w for w in ("city", "rare"))]
  text, _ = report.summarize(_hand_built_stats(tmp_path / "bpe", vocab=bpe))
  lines = text.splitlines()
  assert "10 most frequent: new 0.100, york 0.300, city 0.150, er 0.200, rare 0.500" in lines
  assert "top n-grams: new york | cityer" in lines
  # Its pieces are bytes written as characters ("Ã©" is "é"): shown as the text they encode,
  # once the vocabulary holds the 256 byte characters; part of a character ("Ã", C3) as \xc3,
  # so that the piece "é" (the byte E9) is not shown as "Ã©" is, and a space or line break
  # ("Ġ", "Ċ") as \x20, \x0a, not as the letters Ġ and Ċ, which are text pieces too.
  import tokenizers
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  bpe = ["<pad>", "<unk>", "<s>", "</s>", "\u0120caf", "\u00c3\u00a9", "er",
         "\u0120\u00e6\u013f\u00b1\u00e4\u00ba\u00ac", "\u0120\u00c3", *alphabet]
  text, numbers = report.summarize(_hand_built_stats(tmp_path / "bytes", vocab=bpe))
  lines = text.splitlines()
  assert ("10 most frequent: caf 0.100, \u00e9 0.300, \u6771\u4eac 0.150, er 0.200, "
          "\\xc3 0.500") in lines
  assert "top n-grams: caf\u00e9 | \u6771\u4eacer" in lines
  names = numbers["names"]
  assert len(set(names)) == len(names) and names[names.index("\\xe9")] != "\u00e9"
  byte = dict(zip(alphabet, names[9:], strict=True))
  assert byte["a"] == "a" and byte["\u0120"] == "\\x20" and byte["\u010a"] == "\\x0a"


def test_summary_names_tokens_by_id_when_vocab_txt_is_not_the_recorded_one(tmp_path, caplog):
  """vocab.txt names the tokens only when it matches the checksum meta.json records for it; one
  altered since is said, with the command that writes it again."""
  from informask_jax.stats import report

  unrecorded = _hand_built_stats(tmp_path / "unrecorded", record_vocab=False)
  altered = _hand_built_stats(tmp_path / "altered")
  (altered / artifacts.VOCAB).write_text("".join(f"t{i}\n" for i in range(9)), encoding="utf-8")
  for directory in (unrecorded, altered):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      text, numbers = report.summarize(directory)
    assert numbers["names"] == [f"#{i}" for i in range(9)], directory
    assert "highest rates: #5 0.300, #6 0.200, #4 0.100" in text.splitlines(), directory
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ([] if directory == unrecorded else [
        f"{altered}: vocab.txt: 27 bytes, meta.json says 48 (truncated or altered), so the "
        "report names tokens by id; `python -m informask_jax.stats build --config ...` with the "
        "directory's config rewrites it."]), warned


def test_report_refuses_a_mask_prob_that_is_a_boolean(tmp_path):
  """JSON true is no masking probability, though Python counts a bool as an int."""
  from informask_jax.stats import report

  directory = _hand_built_stats(tmp_path / "stats", mask_prob=True)
  with pytest.raises(artifacts.CorruptArtifactError,
                     match=r"meta.json lacks a number params.mask_prob; delete the directory"):
    report.summarize(directory)


def test_a_second_report_in_the_statistics_directory_replaces_the_first(tmp_path):
  """report.png and report.txt are the report's own files, written again without --out; other
  files of the directory are not overwritten."""
  from informask_jax.stats import report

  directory = _hand_built_stats(tmp_path / "stats")
  png, first = report.write_report(directory)
  (directory / "report.txt").write_text("an earlier summary\n")
  assert report.write_report(directory) == (png, first)
  assert png == directory / "report.png"
  assert (directory / "report.txt").read_text(encoding="utf-8") == first + "\n"


def test_only_a_statistics_meta_json_ties_a_table_to_a_tokenizer(tmp_path):
  """A meta.json without the checksum table is some other tool's file: a table beside it is not
  checked against the tokenizer fingerprint it happens to hold."""
  (tmp_path / "meta.json").write_text(json.dumps({"tokenizer_fingerprint": "tok-A"}))
  stats.check_table_tokenizer(str(tmp_path / "rates.npy"), "tok-B", "masking.rates_path")
  (tmp_path / "meta.json").write_text(json.dumps({"tokenizer_fingerprint": "tok-A", "files": {}}))
  with pytest.raises(stats.TokenizerMismatchError, match=r"built for tokenizer tok-A"):
    stats.check_table_tokenizer(str(tmp_path / "rates.npy"), "tok-B", "masking.rates_path")


def test_a_stage_counts_as_built_only_when_meta_json_records_all_its_files(tmp_path):
  """rates.npy recorded without id_mask_prob.json: the rates stage is not built, so nothing of it
  is loaded or checked; asked for by name, it is unusable."""
  directory = _hand_built_stats(tmp_path / "stats")
  meta = artifacts.read_meta(directory)
  del meta["files"]["id_mask_prob.json"]
  artifacts.write_meta(directory, meta)
  a = stats.load_artifacts(directory, tokenizer_fingerprint=None, vocab_size=None)
  assert a.rates is None and a.unigram_counts is not None and a.pmi is not None
  with pytest.raises(artifacts.CorruptArtifactError, match=r"id_mask_prob.json: not built"):
    stats.load_artifacts(directory, tokenizer_fingerprint=None, vocab_size=None, need=["rates"])


def test_a_chunk_closes_at_the_document_that_reaches_max_tokens():
  """Documents that fill max_tokens exactly make a chunk of their own, in memory and from a
  dataset alike; the next document starts the next chunk."""
  import datasets

  docs = [[20, 21], [22, 23], [24, 25]]
  ds = datasets.Dataset.from_dict({"input_ids": docs, "sentence_ids": [[0, 0]] * 3})
  in_memory = [(np.asarray(d, np.int32), np.zeros(2, np.int32)) for d in docs]
  for corpus in (chunks.as_corpus(ds), chunks.as_corpus(in_memory)):
    got = list(corpus.chunks(0, 3, 4))
    assert [c.token_ids.tolist() for c in got] == [[20, 21, 22, 23], [24, 25]], corpus
    assert [c.doc_offsets.tolist() for c in got] == [[0, 2, 4], [0, 2]], corpus


def test_shards_cover_the_documents_and_are_sized_from_the_token_estimate():
  """No shard is empty (an empty corpus has none), and the estimate that sizes them is exact
  for documents in memory and the mean length times the documents for a dataset."""
  import datasets

  assert chunks.shard_ranges(0, 4) == []
  assert chunks.shard_ranges(5, 2) == [(0, 2), (2, 5)]
  assert chunks.shard_ranges(3, 8) == [(0, 1), (1, 2), (2, 3)]
  calls = list(chunks.map_shards(lambda corpus, a, b: (a, b), chunks.as_corpus([]),
                                 num_workers=1, num_shards=4))
  assert calls == []
  docs = [[20, 21, 22], [23], [24, 25]]
  in_memory = [(np.asarray(d, np.int32), np.zeros(len(d), np.int32)) for d in docs]
  assert chunks.estimate_tokens(chunks.as_corpus(in_memory)) == 6
  ds = datasets.Dataset.from_dict({"input_ids": docs + [[26, 27]],
                                   "sentence_ids": [[0] * len(d) for d in docs] + [[0, 0]]})
  assert chunks.estimate_tokens(chunks.as_corpus(ds)) == 8
  assert chunks.estimate_tokens(object()) == 0


def test_a_dataset_without_a_token_or_sentence_column_is_refused_naming_it():
  import datasets

  ds = datasets.Dataset.from_dict({"input_ids": [[20, 21]], "text": ["a b"]})
  with pytest.raises(ValueError, match=r"^The tokenized corpus has no column 'sentence_ids' "
                                       r"\(columns: \['input_ids', 'text'\]\)\.$"):
    chunks.as_corpus(ds)
  ds = datasets.Dataset.from_dict({"sentence_ids": [[0, 0]]})
  with pytest.raises(ValueError, match=r"no column 'input_ids'"):
    chunks.as_corpus(ds)


def test_bigram_ties_are_ranked_by_the_second_token_then_the_first():
  """Pairs of equal PMI and count come in a fixed order, (second id, first id), so the table's
  cut at its size keeps the same pairs on every run and shard layout."""
  v = 10
  pairs = [(1, 7), (2, 3), (4, 3), (6, 5)]
  keys = np.array(sorted(a * v + b for a, b in pairs), np.uint64)
  counts = ngrams.NgramCounts(
      keys=np.zeros(0, np.uint64), counts=np.zeros(0, np.int64), positions=np.zeros(6, np.int64),
      pair_keys=keys, pair_counts=np.array([2, 2, 2, 2], np.int64),
      token_counts=np.array([0, 2, 2, 4, 2, 2, 2, 2, 0, 0], np.int64), num_adjacent=8,
      min_count=1)
  table, pmi = ngrams.bigram_table(counts, vocab_size=v, size=10)
  # One PMI for all but the pairs ending in the twice as frequent token 3, which rank below.
  assert table.tolist() == [[6, 5], [1, 7], [2, 3], [4, 3]]
  assert pmi[0] == pmi[1] > pmi[2] == pmi[3]
  assert ngrams.bigram_table(counts, vocab_size=v, size=3)[0].tolist() == [[6, 5], [1, 7],
                                                                           [2, 3]]


def test_spills_absorbed_from_shards_are_merged_past_the_spill_limit(tmp_path):
  """The parent's spill files stay fewer than _MAX_SPILLS however many shards spilled (the disk
  holds about the distinct keys, not the corpus), and the counts stay exact."""
  limit = ngrams.KeyCounter._MAX_SPILLS
  parent = ngrams.KeyCounter(memory_cap_mb=64, spill_dir=str(tmp_path))
  want = collections.Counter()
  for i in range(limit + 3):
    shard = ngrams.KeyCounter(memory_cap_mb=64, spill_dir=str(tmp_path))
    keys = np.arange(i, i + 50, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    shard.add(keys)
    shard.spill()
    want.update(keys.tolist())
    parent.absorb(shard)
    assert len(parent.spills) < limit, i
  assert len(list(tmp_path.iterdir())) < limit * 2 * ngrams.KeyCounter._PARTITIONS
  keys, counts = parent.result()
  assert dict(zip(keys.tolist(), counts.tolist(), strict=True)) == dict(want)


def test_a_meta_json_without_its_checksum_table_is_a_corrupt_artifact(tmp_path):
  directory = tmp_path / "stats"
  directory.mkdir()
  (directory / "meta.json").write_text(json.dumps({"format_version": artifacts.FORMAT_VERSION,
                                                   "vocab_size": 5}))
  with pytest.raises(artifacts.CorruptArtifactError, match=r"meta.json lacks the 'files' "
                                                           r"checksum table"):
    artifacts.read_meta(directory)


def test_quotas_share_the_vocabulary_among_the_lengths_up_to_max_n():
  assert ngrams.quotas(100, max_n=3) == {2: 67, 3: 33}
  assert ngrams.quotas(100, max_n=2) == {2: 100}
  with pytest.raises(ValueError, match=r"^stats.ngram_vocab_size must be > 0, got 0\.$"):
    ngrams.assemble_vocab(None, 0)


def test_a_summary_needs_the_rates_stage(tmp_path):
  from informask_jax.stats import report

  directory = _hand_built_stats(tmp_path / "stats")
  meta = artifacts.read_meta(directory)
  del meta["files"]["rates.npy"]
  artifacts.write_meta(directory, meta)
  with pytest.raises(ValueError, match=r"stats has no masking rates yet; build them with "
                                       r"`python -m informask_jax.stats build"):
    report.summarize(directory)


def test_report_folds_missing_glyph_warnings_into_one_line_and_passes_others_on(caplog):
  import warnings

  from informask_jax.stats import report

  def caught(message, category=UserWarning):
    return warnings.WarningMessage(message, category, "figure.py", 1)

  found = [caught("Glyph 19968 (\\N{CJK UNIFIED IDEOGRAPH-4E00}) missing from font(s) "
                  "DejaVu Sans."),
           caught("Glyph 19969 (\\N{CJK UNIFIED IDEOGRAPH-4E01}) missing from current font."),
           caught("tight layout not applied", RuntimeWarning)]
  with pytest.warns(RuntimeWarning, match="tight layout not applied") as passed, \
      caplog.at_level(logging.WARNING):
    report._warn_missing_glyphs(found, "r.png")
  assert len(passed) == 1
  assert ("2 characters of the token labels are not in DejaVu Sans, the current font and show "
          "as boxes in r.png (e.g. \u4e00 \u4e01)") in caplog.text


def test_summary_without_tokens_outside_the_pmi_table_has_no_mean_rate_for_them(tmp_path):
  """No token outside the table (the unseen "city"): no fill rate to report, nor to write in the
  legend of rates method 2."""
  from informask_jax.stats import report

  directory = _hand_built_stats(tmp_path / "stats", counts=(0, 0, 0, 0, 10, 6, 2, 0, 1))
  text, numbers = report.summarize(directory)
  assert "tokens outside the PMI table: 0 (0.0% of occurrences)" in text.splitlines()
  assert report._pmi_end_label({"rates_method": 2}, float("nan")) == (
      "end of the PMI vocabulary (no PMI beyond: the mean rate)")


def test_report_names_tokens_by_id_when_vocab_txt_has_a_line_too_many(tmp_path, caplog):
  """A last line without its line break is a token too: vocab.txt then holds one more token than
  the tables, and which one is extra cannot be told."""
  from informask_jax.stats import report

  meta = {"files": {}}
  (tmp_path / artifacts.VOCAB).write_text("[PAD]\na\nb\nc", encoding="utf-8")
  artifacts.record_file(tmp_path, meta, artifacts.VOCAB)
  with caplog.at_level(logging.WARNING):
    assert report._token_names(tmp_path, meta, 3) == ["#0", "#1", "#2"]
  assert "holds 4 lines for 3 tokens (a token with a line break?): the report names tokens by " \
         "id." in caplog.text


@pytest.mark.parametrize("cap", ["0", "-1"])
def test_the_statistics_bench_refuses_a_cap_it_would_not_measure(cap, tmp_path):
  """bench/stats.py --cap_mb 0 measured the config's 2048 MB cap and recorded 0 MB: refused
  before any work, naming the flag."""
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, str(root / "bench" / "stats.py"), "--cap_mb", cap,
                        "--out", str(tmp_path / "stats.json")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(root)), timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      f"stats.py: error: --cap_mb {cap}: give a cap above 0 MB.")
  assert not (tmp_path / "stats.json").exists()


def test_the_rates_bench_matches_a_word_start_marked_vocabulary_in_wordpiece_spelling():
  """bench/rates_vs_original.py matched our tokens to bert-base-uncased's by string as they were:
  in a byte-level BPE vocabulary "Ġthe" matched nothing and the piece "ing" inside a word took
  the rate of the word "ing" (a table equal to the original, token for token, scored rho 0.005)."""
  import runpy

  bench = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "bench" /
                             "rates_vs_original.py"))
  original_vocab = ["[PAD]", "the", "ing", "##ing", "play", "##s", ".", "##."]
  original = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.05}
  # "." after a word is unmarked in byte-level BPE; WordPiece splits it off as a word: ".".
  vocab = ["<pad>", "\u0120the", "\u0120ing", "ing", "\u0120play", "s", "[CLS]", "."]
  ours = np.array([0.0, 0.1, 0.9, 0.2, 0.3, 0.4, 0.0, 0.05])
  tokens, _, a, b = bench["match"](ours, np.ones(len(vocab)), vocab, original, original_vocab)
  assert list(tokens) == ["the", "ing", "##ing", "play", "##s", "."]
  np.testing.assert_array_equal(a, b)
  # A WordPiece vocabulary is matched as it is.
  tokens, _, a, b = bench["match"](ours[1:6], np.ones(5), original_vocab[1:6], original,
                                   original_vocab)
  assert list(tokens) == original_vocab[1:6]


def test_pmi_ties_in_exact_arithmetic_are_ranked_by_count_not_by_rounding():
  """2 / (2 * 12) = 3 / (4 * 9): the two pairs' PMIs are equal, but their log sums came out 1 ulp
  apart, so the pair seen twice ranked above the one seen three times, and took the only place."""
  token_counts = np.array([2, 12, 4, 9, 973, 0, 0, 0], np.int64)  # 1,000 tokens
  counts = ngrams.NgramCounts(
      keys=np.zeros(0, np.uint64), counts=np.zeros(0, np.int64),
      positions=np.zeros(ngrams.MAX_N + 1, np.int64),
      pair_keys=np.array([0 * 8 + 1, 2 * 8 + 3], np.uint64), pair_counts=np.array([2, 3]),
      token_counts=token_counts, num_adjacent=900, min_count=1)
  pairs, scores = ngrams.bigram_table(counts, vocab_size=8, size=2)
  assert scores[0] == pytest.approx(scores[1], rel=1e-12)
  assert pairs.tolist() == [[2, 3], [0, 1]]
  assert ngrams.bigram_table(counts, vocab_size=8, size=1)[0].tolist() == [[2, 3]]
