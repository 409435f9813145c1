"""Tests of informask_jax.masking on a synthetic vocabulary (no data pipeline, no statistics).

Vocabulary (V = 1000): 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]; 5..599 ordinary word starts;
600..799 word starts reserved for planted PMI n-grams / bigrams; 800..999 are "##" pieces.
Each strategy is compiled once on a batch of 1024 x 64 and every property is checked on that run.
"""

import json
import logging
import os
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.stats
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from informask_jax import masking
from informask_jax.masking import informask as informask_lib
from informask_jax.masking import online as online_lib
from informask_jax.masking import pmi_span as pmi_span_lib
from informask_jax.masking import prng, select
from informask_jax.masking import words as words_lib

V = 1000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
CONT = np.zeros(V, bool)
CONT[800:] = True
COMMON = dict(vocab_size=V, mask_id=MASK, special_ids=SPECIAL)
B, L = 1024, 64

# Planted n-grams: 40 disjoint word n-grams of 2-4 words over ids 600..759, some words with a
# "##" piece (ids 900+), so every occurrence can be found and must be masked as one unit.
_ng_rng = np.random.default_rng(7)
NGRAMS = []
_next = 600
for _ in range(40):
  gram = []
  for _ in range(_ng_rng.integers(2, 5)):
    if _next >= 760:
      break
    gram.append(_next)
    if _ng_rng.random() < 0.3:
      gram.append(900 + _next % 100)
    _next += 1
  if len(gram) >= 2:
    NGRAMS.append(tuple(gram))
# Bigram chains x -> y -> z over ids 760..799.
CHAINS = [(760 + 3 * i, 761 + 3 * i, 762 + 3 * i) for i in range(13)]
BIGRAMS = [(a, b) for a, b, _ in CHAINS] + [(b, c) for _, b, c in CHAINS]


def synthetic_batch(seed, batch=B, length=L, plant=(), mid_sep=True):
  """Tokens int32[B, L] with [CLS] ... [SEP] (an inner [SEP] splitting two sentences in about
  half the rows), padding after a random length, ~25% "##" pieces; `plant` sequences inserted
  at random non-overlapping places. Returns (tokens, sentence_ids, planted [(row, start, len)])."""
  rng = np.random.default_rng(seed)
  cont = rng.random((batch, length)) < 0.25
  tokens = np.where(cont, rng.integers(800, 900, (batch, length)),
                    rng.integers(5, 600, (batch, length)))
  planted = []
  for b in range(batch):
    for _ in range(3 if plant else 0):
      item = plant[rng.integers(len(plant))]
      start = 1 + 8 * rng.integers(0, (length - 16) // 8)
      if any(r == b and abs(s - start) < 8 for r, s, _ in planted):
        continue
      tokens[b, start:start + len(item)] = item
      # The token after a planted unit starts a new word (no stray "##" continuing it).
      tokens[b, start + len(item)] = rng.integers(5, 600)
      planted.append((b, start, len(item)))
  n = rng.integers(length // 2, length + 1, batch)
  tokens[:, 0] = CLS
  tokens[np.arange(batch), n - 1] = SEP
  mid = (rng.random(batch) < 0.5) & mid_sep
  cut = rng.integers(6, length // 2 - 2, batch)
  tokens[mid, cut[mid]] = SEP
  tokens[np.arange(length)[None, :] >= n[:, None]] = PAD
  planted = [(r, s, k) for r, s, k in planted if s + k < n[r] - 1 and
             not (mid[r] and s <= cut[r] < s + k + 1)]
  special = np.isin(tokens, SPECIAL)
  sentence = np.cumsum(tokens == SEP, axis=1)
  sentence = np.where(special, -1, sentence).astype(np.int32)
  return tokens.astype(np.int32), sentence, planted


def word_starts(tokens):
  maskable = ~np.isin(tokens, SPECIAL)
  prev = np.concatenate([np.zeros_like(maskable[:, :1]), maskable[:, :-1]], axis=1)
  return maskable & (~CONT[tokens] | ~prev), maskable


def budgets(tokens, mask_prob=0.15):
  n = (~np.isin(tokens, SPECIAL)).sum(1)
  return np.array([round(mask_prob * x) for x in n])


RATES = np.random.default_rng(3).permutation(np.linspace(0.02, 0.5, V)).astype(np.float32)


def _pmi_matrix():
  rng = np.random.default_rng(5)
  dense = np.where(rng.random((V, V)) < 0.02, rng.random((V, V)) * 4, 0.0)
  dense = np.triu(dense, 1)
  return scipy.sparse.coo_matrix(dense + dense.T)


def build(name, budget="exact", **extra):
  options = {
      "whole_word": dict(continuation=CONT),
      "span": dict(continuation=CONT),
      "pmi_span": dict(continuation=CONT, ngrams=NGRAMS),
      "pmi_bigram": dict(continuation=CONT, variant="bigram", bigrams=BIGRAMS),
      "informask": dict(rates=RATES),
      "informask_online": dict(pmi=_pmi_matrix(), num_candidates=4),
  }.get(name, {})
  options.update(extra)
  return masking.get_masker("pmi_span" if name == "pmi_bigram" else name, budget=budget,
                            **COMMON, **options)


CONFIGS = [("random", "exact"), ("random", "bernoulli"), ("whole_word", "exact"),
           ("whole_word", "bernoulli"), ("span", "exact"), ("span", "bernoulli"),
           ("pmi_span", "exact"), ("pmi_span", "bernoulli"), ("pmi_bigram", "exact"),
           ("informask", "exact"), ("informask", "bernoulli"), ("informask_online", "exact"),
           ("informask_online", "bernoulli")]
_cache = {}


def run(name, budget, key=0, batch_seed=0, **options):
  """Runs (and caches) a strategy on the planted synthetic batch; one compile per config."""
  cache_key = (name, budget, tuple(sorted(options.items())))
  if cache_key not in _cache:
    masker = build(name, budget, **options)
    _cache[cache_key] = (masker, jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s,
                                                                    with_aux=True)))
  masker, fn = _cache[cache_key]
  plant = NGRAMS if name == "pmi_span" else CHAINS if name == "pmi_bigram" else ()
  tokens, sentences, planted = synthetic_batch(batch_seed, plant=plant)
  out, aux = fn(jax.random.key(key), tokens, sentences)
  return tokens, jax.tree.map(np.asarray, out), jax.tree.map(np.asarray, aux), planted


@pytest.mark.parametrize("name,budget", CONFIGS)
def test_contract_budget_and_specials(name, budget):
  tokens, out, _, _ = run(name, budget)
  mask = out["mask"]
  assert mask.shape == tokens.shape and mask.dtype == bool
  assert out["input_ids"].dtype == np.int32 and out["labels"].dtype == np.int32
  special = np.isin(tokens, SPECIAL)
  assert not (mask & special).any(), "a special or padding token became a target"
  np.testing.assert_array_equal(out["labels"], np.where(mask, tokens, -100))
  np.testing.assert_array_equal(out["input_ids"][~mask], tokens[~mask])
  count, budget_n = mask.sum(1), budgets(tokens)
  fraction = count.sum() / (~special).sum()
  if budget == "exact":
    assert (count <= budget_n).all(), "the exact budget was exceeded"
    if name in ("random", "span", "informask", "informask_online", "pmi_bigram"):
      # Token-level, truncating or (bigram) mostly one-token units: the budget is met exactly
      # (bigram: fills with short units; allow a rare shortfall).
      if name == "pmi_bigram":
        assert (count == budget_n).mean() > 0.95
      else:
        np.testing.assert_array_equal(count, budget_n)
    else:
      assert count.sum() >= 0.98 * budget_n.sum()
    assert abs(fraction - 0.15) < 0.01
  else:
    assert abs(fraction - 0.15) < 0.01, fraction
    assert count.std() > 0  # Bernoulli counts vary between sequences.


@pytest.mark.parametrize("name", ["random", "informask_online"])
def test_bernoulli_counts_vary_as_binomials_around_the_rows_budget(name):
  """The Bernoulli budget draws each row's count (informask_online: one Binomial(n, p) size per
  row for its K candidates), not round(p * n): counts that differ only because rows differ in
  length passed the contract test's std > 0 while the budget was in fact the exact one."""
  tokens, out, _, _ = run(name, "bernoulli")
  n = (~np.isin(tokens, SPECIAL)).sum(1)
  count = out["mask"].sum(1)
  assert (count == budgets(tokens)).mean() < 0.5
  # Binomial spread: the squared deviations from n p add up to about sum n p (1 - p).
  ratio = ((count - 0.15 * n) ** 2).sum() / (0.15 * 0.85 * n).sum()
  assert 0.8 < ratio < 1.2, ratio


def _corruption_shares(name, budget, keys=3, **options):
  """(share [MASK], share random, share kept, the random replacements) over a few keys."""
  orig, new = [], []
  for key in range(keys):
    tokens, out, _, _ = run(name, budget, key=key, batch_seed=key, **options)
    orig.append(tokens[out["mask"]])
    new.append(out["input_ids"][out["mask"]])
  orig, new = np.concatenate(orig), np.concatenate(new)
  randomised = (new != MASK) & (new != orig)
  return (new == MASK).mean(), randomised.mean(), (new == orig).mean(), new[randomised], len(new)


# The decision must not reuse the selection's draw: with raw rates (all below 0.8 here) a
# decision taken from u itself would make every target [MASK].
@pytest.mark.parametrize("name,budget,options", [
    ("random", "exact", {}), ("random", "bernoulli", {}), ("informask", "exact", {}),
    ("informask", "bernoulli", {}), ("informask", "bernoulli", {"rescale": False})])
def test_corruption_split_80_10_10(name, budget, options):
  masked, randomised, kept, replaced, n = _corruption_shares(name, budget, **options)
  assert n > 20_000
  tol = 4 * np.sqrt(0.1 * 0.9 / n)
  assert abs(masked - 0.8) < 4 * np.sqrt(0.16 / n)
  # A random replacement equals the original token with probability 1/995.
  assert abs(randomised - 0.1 * (1 - 1 / 995)) < tol
  assert abs(kept - (0.1 + 0.1 / 995)) < tol
  assert not np.isin(replaced, SPECIAL).any(), "a random replacement was a special token"
  # Replacements are uniform over the 995 non-special ids (5..999): chi-square over 10 bins.
  bins = (replaced - 5) * 10 // 995
  sizes = np.bincount(np.arange(995) * 10 // 995, minlength=10)
  observed = np.bincount(bins, minlength=10)
  assert scipy.stats.chisquare(observed, sizes / sizes.sum() * observed.sum()).pvalue > 1e-3


@pytest.mark.parametrize("name,budget", [("random", "exact"), ("random", "bernoulli"),
                                         ("informask", "bernoulli"), ("whole_word", "exact")])
def test_bert_layout_specials_inside_the_input_are_never_targets(name, budget):
  """BERT's ids: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, amid ordinary ids and at
  the end of the vocabulary; [MASK] left out of special_ids (as in the issue's example) is
  special all the same. Specials inside the text are never targets nor random replacements."""
  specials, mask_id = (0, 100, 101, 102, V - 1), 103
  options = {"informask": dict(rates=RATES), "whole_word": dict(continuation=CONT)}.get(name, {})
  masker = masking.get_masker(name, vocab_size=V, mask_id=mask_id, special_ids=specials,
                              budget=budget, **options)
  rng = np.random.default_rng(11)
  tokens = rng.integers(5, 800, (B, L)).astype(np.int32)
  inner = rng.random((B, L)) < 0.05  # [UNK], [CLS], [SEP], [MASK] and the last id in the text.
  tokens[inner] = rng.choice([100, 101, 102, 103, V - 1], inner.sum())
  tokens[:, 0], tokens[:, -1] = 101, 102
  tokens[:, -4:-1] = 0
  out = jax.tree.map(np.asarray, jax.jit(masker)(jax.random.key(3), tokens))
  never = np.isin(tokens, [*specials, mask_id])
  assert never.sum() > B * 5
  assert not out["mask"][never].any(), "a special token (or [MASK]) became a target"
  assert (out["input_ids"][never] == tokens[never]).all()
  replaced = out["input_ids"][out["mask"] & (out["input_ids"] != mask_id) &
                               (out["input_ids"] != tokens)]
  assert len(replaced) > 500
  assert not np.isin(replaced, [*specials, mask_id]).any(), "a special random replacement"
  # Uniform over the 994 non-special ids: 99 of them lie below [UNK].
  share, expected = np.mean(replaced < 100), 99 / 994
  assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / len(replaced)), share


@pytest.mark.parametrize("name", ["span", "pmi_span", "pmi_bigram"])
def test_span_and_pmi_units_are_corrupted_as_a_whole(name):
  """SpanBERT and PMI-Masking decide [MASK] / random / keep per unit, not per token."""
  shares, units = [], 0
  for key in range(3):
    tokens, out, aux, _ = run(name, "exact", key=key, batch_seed=key)
    starts = aux["unit_start"]
    if name == "span":  # Adjacent spans merge into one before the decision (SpanBERT).
      starts = out["mask"] & ~np.concatenate([np.zeros((B, 1), bool), out["mask"][:, :-1]], 1)
    owner = np.maximum.accumulate(np.where(starts, np.arange(L), -1), axis=1)
    is_mask = out["input_ids"] == MASK
    for b, pos in zip(*np.nonzero(starts & out["mask"]), strict=True):
      members = out["mask"][b] & (owner[b] == pos)
      if members.sum() < 2:
        continue
      units += 1
      assert len(set(is_mask[b][members].tolist())) == 1, f"unit at row {b}, {pos} mixed"
      shares.append(is_mask[b][members][0])
  assert units > 1000
  assert abs(np.mean(shares) - 0.8) < 4 * np.sqrt(0.16 / units)


def test_whole_word_corruption_is_decided_per_token():
  """BERT's whole-word masking picks whole words but decides [MASK] / random / keep for each
  token (create_pretraining_data.py), unlike SpanBERT and PMI-Masking: in a masked two-token word
  the tokens agree ([MASK] both or neither) with probability 0.8^2 + 0.2^2 = 0.68, not always.
  The share of [MASK] alone (0.8) is the same either way, so the 80/10/10 tests cannot tell."""
  mixed = []
  for key in range(2):
    tokens, out, _, _ = run("whole_word", "exact", key=key, batch_seed=key)
    starts, maskable = word_starts(tokens)
    mask, is_mask = out["mask"], out["input_ids"] == MASK
    # Masked words of exactly two tokens: a start, a "##" piece, then a start or no word.
    piece = np.pad(maskable & ~starts, ((0, 0), (0, 2)))
    ends = np.pad(starts | ~maskable, ((0, 0), (0, 2)), constant_values=True)
    rows, cols = np.nonzero(starts & mask & piece[:, 1:-1] & ends[:, 2:])
    assert mask[rows, cols + 1].all()  # Whole words: the piece is a target with its start.
    mixed.append(is_mask[rows, cols] != is_mask[rows, cols + 1])
  mixed = np.concatenate(mixed)
  # ~1,800 such words: sd of the share ~0.011, so 4 sd is ~0.044 (these keys: 0.314);
  # per-word decisions give 0.
  assert len(mixed) > 1000
  assert abs(mixed.mean() - 0.32) < 4 * np.sqrt(0.32 * 0.68 / len(mixed)), mixed.mean()


@pytest.mark.parametrize("name,budget", [("random", "exact"), ("random", "bernoulli"),
                                         ("informask", "exact"), ("informask", "bernoulli"),
                                         ("span", "exact"), ("whole_word", "bernoulli"),
                                         ("informask_online", "exact")])
def test_options_other_than_the_defaults_are_honoured(name, budget):
  """mask_prob = 0.3 and a 50/30/20 corruption: counts, fractions and shares follow them."""
  options = dict(mask_prob=0.3, replace_prob=0.5, random_prob=0.3)
  tokens, out, _, _ = run(name, budget, **options)
  maskable = ~np.isin(tokens, SPECIAL)
  count = out["mask"].sum(1)
  if budget == "exact":
    np.testing.assert_array_equal(count, budgets(tokens, 0.3))
  else:
    assert abs(count.sum() / maskable.sum() - 0.3) < 0.01
  masked, randomised, kept, _, n = _corruption_shares(name, budget, **options)
  tol = 4 * np.sqrt(0.25 / n)
  if name == "span":  # One decision per span of ~5 tokens: the token shares vary ~sqrt(5)x more.
    tol *= 3
  assert abs(masked - 0.5) < tol and abs(randomised - 0.3 * (1 - 1 / 995)) < tol
  assert abs(kept - (0.2 + 0.3 / 995)) < tol


def test_exact_count_matches_mlm_pytorch_rule():
  # mlm-pytorch's per-sequence count with its ceil replaced by round: a uniform subset of size
  # round(mask_prob * n_maskable), every maskable position equally likely.
  tokens, out, _, _ = run("random", "exact")
  np.testing.assert_array_equal(out["mask"].sum(1), budgets(tokens))
  maskable = ~np.isin(tokens, SPECIAL)
  # Every maskable position of a row is a target with probability budget / n_maskable; the
  # per-position counts against those expectations (chi-square; a fixed count per row makes the
  # counts less variable than independent draws, so the test is conservative).
  expected = (maskable * (budgets(tokens) / maskable.sum(1))[:, None]).sum(0)
  cols = maskable.sum(0) > 500
  observed = out["mask"].sum(0)[cols]
  assert cols.sum() > 30
  expected = expected[cols] * observed.sum() / expected[cols].sum()
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("name", ["whole_word", "span", "pmi_span", "pmi_bigram"])
def test_whole_words_never_split(name):
  tokens, out, _, _ = run(name, "exact")
  starts, maskable = word_starts(tokens)
  inner = maskable & ~starts  # "##" pieces continuing a word
  prev_mask = np.concatenate([np.zeros_like(out["mask"][:, :1]), out["mask"][:, :-1]], axis=1)
  split = inner & (out["mask"] != prev_mask)
  if name == "span":
    # SpanBERT truncates the last span at the budget: at most one cut per sequence.
    assert split.sum(1).max() <= 1
  else:
    assert not split.any(), f"{split.sum()} words split"


def test_whole_word_bernoulli_keeps_words():
  tokens, out, _, _ = run("whole_word", "bernoulli")
  starts, maskable = word_starts(tokens)
  prev_mask = np.concatenate([np.zeros_like(out["mask"][:, :1]), out["mask"][:, :-1]], axis=1)
  assert not (maskable & ~starts & (out["mask"] != prev_mask)).any()


@pytest.mark.parametrize("geometric_p,max_span_len", [(0.2, 10), (0.5, 4)])
def test_span_length_mean_matches_spanbert(geometric_p, max_span_len):
  # At L = 512 (SpanBERT's setting, budget ~76 tokens) so that the budget boundary, where
  # short spans are likelier to fit, barely biases the lengths of the spans taken. The second
  # setting checks that the options are used (mean 1.9 words against SpanBERT's 3.8).
  masker = build("span", geometric_p=geometric_p, max_span_len=max_span_len)
  length = 512
  tokens, sentences, _ = synthetic_batch(11, batch=96, length=length, mid_sep=False)
  fn = jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s, with_aux=True))
  out, aux = jax.tree.map(np.asarray, fn(jax.random.key(1), tokens, sentences))
  unit_start, starts = aux["unit_start"], aux["word_start"]
  maskable = ~np.isin(tokens, SPECIAL)
  taken, every = [], []
  for b in range(tokens.shape[0]):
    boundary = np.flatnonzero(unit_start[b] | ~maskable[b])
    for s in np.flatnonzero(unit_start[b]):
      after = boundary[boundary > s]
      e = after[0] if after.size else length
      if e == length or not unit_start[b, e]:
        continue  # Cut by a special or the sequence end: not a complete span.
      every.append(starts[b, s:e].sum())
      if out["mask"][b, s:e].all():
        taken.append(starts[b, s:e].sum())
  cdf = words_lib.span_length_cdf(geometric_p, max_span_len)
  expected = np.sum(np.arange(1, max_span_len + 1) * np.diff(np.concatenate([[0], cdf])))
  if geometric_p == 0.2:
    assert abs(expected - 3.8) < 0.01  # SpanBERT reports a mean span of 3.8 words
  assert len(taken) > 800 and len(every) > 5000
  assert abs(np.mean(every) - expected) < 0.12, np.mean(every)
  assert abs(np.mean(taken) - expected) < 0.3, np.mean(taken)
  assert max(every) == max_span_len and min(taken) == 1


@pytest.mark.parametrize("words,limit", [(6, 1.4), (32, 1.25)])
def test_span_targets_do_not_favour_the_first_words(words, limit):
  """Every word of [CLS] w1 .. wn [SEP] is a target about equally often. A span always starts at
  w1, and the cut span used to keep its first tokens: w1 was a target 3.4x as often as the mean
  with 6 words (budget 1) and 1.4x with 32 (SpanBERT's uniform anchors give no such peak)."""
  masker = build("span")
  rng = np.random.default_rng(5)
  tokens = np.concatenate([np.full((4000, 1), CLS), rng.integers(10, 800, (4000, words)),
                           np.full((4000, 1), SEP)], axis=1).astype(np.int32)
  share = np.asarray(jax.jit(masker)(jax.random.key(3), tokens)["mask"])[:, 1:-1].mean(0)
  assert share.max() / share.mean() < limit, np.round(share / share.mean(), 2)


@pytest.mark.parametrize("budget", ["exact", "bernoulli"])
def test_pmi_ngram_units_never_split(budget):
  tokens, out, aux, planted = run("pmi_span", budget)
  assert len(planted) > 1000
  whole = 0
  for b, s, k in planted:
    m = out["mask"][b, s:s + k]
    assert m.all() or not m.any(), f"n-gram at row {b} [{s}, {s + k}) was split: {m}"
    whole += m.all()
    # The segmentation found the planted n-gram as one unit.
    assert aux["unit_start"][b, s] and not aux["unit_start"][b, s + 1:s + k].any()
    assert aux["ngram_len"][b, s] == k
  assert whole > 0.05 * len(planted), "planted n-grams are never masked"


def test_pmi_ngram_segmentation_longest_match_at_word_boundaries():
  """Greedy left-to-right longest match; a match must end where a word ends."""
  a, b, c, d, e, f, g, h = 600, 601, 602, 603, 604, 605, 606, 607
  piece = 900  # a "##" piece
  ngrams = [(a, b), (a, b, c), (c, d), (e, f), (g, h, piece)]
  masker = build("pmi_span", ngrams=ngrams)
  rows = [
      [CLS, a, b, c, d, 10, SEP],  # (a b c) is longer than (a b); then d is a word of its own
      [CLS, 10, e, f, piece, 11, SEP],  # "f##" continues: (e, f) would end inside a word
      [CLS, g, h, piece, 12, 13, SEP],  # a match may contain "##" pieces
      [CLS, 10, c, d, 11, 12, SEP],  # (c d) where nothing longer starts earlier
  ]
  tokens = np.array(rows, np.int32)
  out, aux = masker(jax.random.key(0), tokens, with_aux=True)
  starts, ngram_len = np.asarray(aux["unit_start"]), np.asarray(aux["ngram_len"])
  np.testing.assert_array_equal(starts[0], [0, 1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(ngram_len[0], [0, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(starts[1], [0, 1, 1, 1, 0, 1, 0])  # e | f## | 11
  assert not ngram_len[1].any()
  np.testing.assert_array_equal(starts[2], [0, 1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(ngram_len[2], [0, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(starts[3], [0, 1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(ngram_len[3], [0, 0, 2, 0, 0, 0, 0])


def test_pmi_bigram_chains_never_split():
  tokens, out, aux, planted = run("pmi_bigram", "exact")
  assert len(planted) > 1000
  whole = 0
  for b, s, k in planted:
    m = out["mask"][b, s:s + k]
    assert m.all() or not m.any()
    assert not aux["unit_start"][b, s + 1:s + k].any()
    whole += m.all()
  assert whole > 0.05 * len(planted)
  # A run is drawn as a random start position would hit it: a 3-token chain about 3 times as
  # often as a one-token unit, so its tokens are targets about twice as often (ratio ~1.9 in a
  # brute-force simulation of start positions; 0.78 when every run was equally likely).
  starts, mask = aux["unit_start"], out["mask"]
  maskable = ~np.isin(tokens, SPECIAL)
  next_start = np.concatenate([starts[:, 1:] | ~maskable[:, 1:], np.ones((len(starts), 1), bool)],
                              axis=1)
  lone = starts & next_start
  in_chain = np.zeros_like(mask)
  for b, s, k in planted:
    in_chain[b, s:s + k] = True
  ratio = mask[in_chain].mean() / mask[lone & ~in_chain].mean()
  assert 1.5 < ratio < 2.6, ratio


def test_pmi_units_never_cross_a_sentence():
  """In a packed document, sentences follow each other with no special token between them; the
  statistics count n-grams and bigrams within sentences, so a unit stops at a sentence change."""
  a, b, c = CHAINS[0]
  bigram = build("pmi_bigram")
  ngram = build("pmi_span", ngrams=[(600, 601), (600, 601, 602)])
  rows = {bigram: [CLS, a, b, c, 10, SEP], ngram: [CLS, 600, 601, 602, 10, SEP]}
  one = np.array([[-1, 0, 0, 0, 0, -1]], np.int32)
  two = np.array([[-1, 0, 0, 1, 1, -1]], np.int32)
  for masker, row in rows.items():
    tokens = np.array([row], np.int32)
    starts = [np.asarray(masker(jax.random.key(0), tokens, sentence_ids=s,
                                with_aux=True)[1]["unit_start"])[0] for s in (one, two)]
    np.testing.assert_array_equal(starts[0], [0, 1, 0, 0, 1, 0])  # (x y z) is one unit
    np.testing.assert_array_equal(starts[1], [0, 1, 0, 1, 1, 0])  # (x y) | z: z opens sentence 1


@pytest.mark.parametrize("name", ["whole_word", "span"])
def test_a_sentence_start_starts_a_word_as_for_pmi_span_and_the_statistics(name):
  """With byte-level BPE or SentencePiece, the token after a line break (which ends a sentence)
  carries no word-start marker: read as a continuation, it joined the line's last word into one
  unit (and the break's token into the target), unlike pmi_span and the statistics."""
  masker = build(name)
  tokens = np.array([[CLS, 10, 11, 800, 12, 801, SEP]], np.int32)  # 800 opens sentence 1.
  sentences = np.array([[-1, 0, 0, 1, 1, 1, -1]], np.int32)
  aux = masker(jax.random.key(0), tokens, sentence_ids=sentences, with_aux=True)[1]
  # whole_word's units are its words; span counts its lengths in them.
  words = np.asarray(aux["unit_start" if name == "whole_word" else "word_start"])[0]
  np.testing.assert_array_equal(words, [0, 1, 1, 1, 1, 0, 0])


def test_bigram_lookup_at_the_largest_vocabulary():
  """At V = 2**16 the pairs pack to every uint32, 0 and 2**32 - 1 included; only stored pairs
  match, whatever the empty slots of the hash table hold."""
  query = jnp.array([10 * 65536 + 11, 65535 * 65536 + 65535, 10 * 65536 + 12, 0], jnp.uint32)
  for pairs, want in (([(10, 11)], [True, False, False, False]),
                      ([(65535, 65535)], [False, True, False, False]),
                      ([(0, 0), (10, 12)], [False, False, True, True])):
    tables = pmi_span_lib.bigram_tables(pairs, 65536)
    np.testing.assert_array_equal(pmi_span_lib.in_bigram_table(tables, query), want)


def test_hash_buckets_find_exactly_the_stored_pairs():
  """Every stored (h1, h2) is found, once per duplicate or not; no other pair is, in particular
  none that shares a stored h1 or h2, none equal to an empty slot's filler, and none in a full
  row (some rows hold several pairs)."""
  rng = np.random.default_rng(5)
  h1 = rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32)
  h2 = rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32)
  h1[:50] = h1[50:100]  # Pairs sharing h1 (the same row), with another h2.
  table = pmi_span_lib.hash_buckets(np.concatenate([h1, h1[:7]]), np.concatenate([h2, h2[:7]]))
  t1, t2 = table["ngram_h1"], table["ngram_h2"]
  assert t1.shape == t2.shape and t1.shape[1] > 2  # Rows of several slots.
  stored = set(zip(h1.tolist(), h2.tolist(), strict=True))
  rows = np.arange(t1.shape[0], dtype=np.uint32)
  q1 = np.concatenate([h1, h1, rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32),
                       (rows + 1) % rows.size, rows])
  q2 = np.concatenate([h2, h2[::-1], h2, np.zeros_like(rows), np.zeros_like(rows)])
  want = [(a, b) in stored for a, b in zip(q1.tolist(), q2.tolist(), strict=True)]
  assert sum(want) == 3000  # The stored pairs only: h1 with a stored but foreign h2 is not.
  found = pmi_span_lib.in_hash_buckets(t1, t2, jnp.asarray(q1), jnp.asarray(q2))
  np.testing.assert_array_equal(np.asarray(found), want)


def test_selection_keys_can_all_be_selected():
  """The largest random word at the last position of a power-of-two length still gets a key
  that threshold_select can take: a budget of every token selects every token."""
  for length in (8, 64):
    words = jnp.full((length,), 0xFFFFFFFF, jnp.uint32).at[:3].set(jnp.uint32(12345))
    keys, nbits = select.unique_keys(words, length)
    chosen, used = select.threshold_select(keys, jnp.ones(length, jnp.int32), length, nbits)
    assert bool(chosen.all()) and int(used) == length


def test_below_is_the_exact_high_half_of_word_times_n():
  """prng.below(w, n) == floor(w * n / 2**32) exactly, so every id of even a huge vocabulary is
  drawn (a 23-bit float uniform times n never reaches 2 of every 3 ids at n = 3 * 2**22)."""
  rng = np.random.default_rng(0)
  words = np.concatenate([rng.integers(0, 2**32, 20_000, dtype=np.uint64),
                          [0, 1, 2**16 - 1, 2**16, 2**31, 2**32 - 1]]).astype(np.uint32)
  for n in (1, 2, 995, 30_517, 65_536, 250_002, 3 * 2**22, 2**31 + 12_345, 2**32 - 1):
    got = np.asarray(jax.jit(lambda w, n=n: prng.below(w, n))(words))
    want = (words.astype(object) * n) >> 32
    np.testing.assert_array_equal(got.astype(object), want, err_msg=f"n={n}")
    # The smallest word of each of a few ids maps to that id (none is unreachable).
    ids = np.array([0, 1, n // 3, n - 1], dtype=object) if n > 1 else np.array([0], object)
    first = -((-ids << 32) // n)  # ceil(id * 2**32 / n)
    np.testing.assert_array_equal(
        np.asarray(prng.below(jnp.asarray(first.astype(np.uint64).astype(np.uint32)), n)), ids)


def test_example_seeds_of_key_zero_are_not_degenerate():
  seeds = np.asarray(prng.example_seeds(jax.random.key(0), 4))
  assert (seeds != 0).all() and len({tuple(r) for r in seeds}) == 4
  many = np.asarray(prng.example_seeds(jax.random.key(0), 1 << 14))
  assert len({tuple(r) for r in many}) == 1 << 14, "two examples of a batch share a seed"
  u = np.asarray(prng.uniform(prng.bits(jnp.asarray(seeds[0]), prng.SELECT, (4096,))))
  assert abs(u.mean() - 0.5) < 0.02 and (u > 0).all() and (u < 1).all()
  top = prng.uniform(jnp.array([0xFFFFFFFF, 0], jnp.uint32))
  assert float(top[0]) < 1.0 and float(top[1]) > 0.0


@pytest.mark.parametrize("budget", ["exact", "bernoulli"])
def test_informask_frequency_follows_rates(budget):
  counts, seen = np.zeros(V), np.zeros(V)
  for seed in range(4):
    tokens, out, _, _ = run("informask", budget, key=seed, batch_seed=seed)
    np.add.at(counts, tokens[out["mask"]], 1)
    np.add.at(seen, tokens.ravel(), 1)
  ids = np.flatnonzero(seen > 100)
  ids = ids[~np.isin(ids, SPECIAL)]
  assert len(ids) > 600
  freq = counts[ids] / seen[ids]
  rho = scipy.stats.spearmanr(freq, RATES[ids]).statistic
  assert rho > 0.9, rho
  if budget == "bernoulli":
    # p = rate * (mask_prob * n / sum of the row's rates): proportional to the rate, not just
    # increasing with it (sqrt(rate) rescaled would pass the rank test above).
    fit = scipy.stats.linregress(RATES[ids], freq)
    assert fit.rvalue > 0.95 and abs(fit.intercept) < 0.01, fit


def test_informask_exact_single_target_is_drawn_in_proportion_to_rate():
  """Budget 1 (8 maskable tokens, mask_prob 0.125): Gumbel-top-k's one draw picks token i with
  probability rate_i / sum(rates) (weights rate**2 or sqrt(rate) would not)."""
  rates = np.full(V, 0.1, np.float32)
  ids = np.arange(10, 18)
  rates[ids] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.82]
  masker = build("informask", "exact", rates=rates, mask_prob=0.125)
  tokens = np.tile(np.concatenate([[CLS], ids, [SEP]]).astype(np.int32), (B, 1))
  counts = np.zeros(len(ids))
  for key in range(8):
    out = np.asarray(jax.jit(masker)(jax.random.key(key), tokens)["mask"])
    assert (out.sum(1) == 1).all()
    counts += out[:, 1:-1].sum(0)
  expected = rates[ids] / rates[ids].sum() * counts.sum()
  assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected)


def test_informask_exact_draws_zero_rate_tokens_last_and_uniformly():
  """Zero-rate tokens come after every positive-rate token, however small its rate (1e-9 of the
  largest, below the 1e-6 floor): both floored to the same weight, 12 of 16 zero-rate tokens
  would be among 3 draws ~ 3/4 of the time. Beyond the positive-rate tokens the budget is filled
  from the zero-rate ones in uniformly random order."""
  rates = np.full(V, 0.1, np.float32)
  rates[11], rates[12] = 1e-10, 0.0  # The largest rate, 0.1, is on ids absent from the rows.
  row = np.concatenate([[CLS], [11] * 4, [12] * 16, [SEP]]).astype(np.int32)  # 20 maskable
  tokens = np.tile(row, (B, 1))
  low = build("informask", "exact", rates=rates, mask_prob=0.15)  # 3 targets
  out = np.asarray(jax.jit(low)(jax.random.key(0), tokens)["mask"])
  assert (out.sum(1) == 3).all()
  assert not out[:, 5:-1].any(), f"{int(out[:, 5:-1].sum())} zero-rate targets before rate 1e-10"
  high = build("informask", "exact", rates=rates, mask_prob=0.3)  # 6: all four, then two of 16
  out = np.asarray(jax.jit(high)(jax.random.key(1), tokens)["mask"])
  assert out[:, 1:5].all() and (out[:, 5:-1].sum(1) == 2).all()
  counts = out[:, 5:-1].sum(0)
  assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts
  # However small the ratio to the largest rate: 3e-49 underflowed to 0 in float32.
  rates[13] = 3e38  # 1e-10 / 3e38 is below float32's smallest subnormal.
  weights = informask_lib.weights_from_rates(rates, (PAD, UNK, CLS, SEP, MASK))
  assert weights[11] == np.float32(informask_lib.MIN_RELATIVE_RATE) and weights[12] == 0


def test_informask_bernoulli_corruption_split_when_rescaled_rates_exceed_one():
  """A rare token with a high rate gets p = rate * scale > 1 (always a target): its targets are
  still 80% [MASK], 10% random, 10% kept (a decision from u / p, not uniform for p > 1, made
  them all [MASK] once)."""
  rates = np.full(V, 0.01, np.float32)
  rates[5:25] = 1.0  # ~1.6 per row among ~48 maskable: scale ~3.5, p ~3.5 for these ids.
  masker = build("informask", "bernoulli", rates=rates)
  fn = jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s))
  masked = randomised = n = 0
  for seed in range(4):
    tokens, sentences, _ = synthetic_batch(seed)
    out = jax.tree.map(np.asarray, fn(jax.random.key(seed), tokens, sentences))
    rare = (tokens >= 5) & (tokens < 25)
    assert out["mask"][rare].all(), "p > 1 must always make a target"
    hit = rare & out["mask"]
    n += hit.sum()
    masked += (out["input_ids"][hit] == MASK).sum()
    randomised += ((out["input_ids"][hit] != MASK) & (out["input_ids"][hit] != tokens[hit])).sum()
  assert n > 3000
  assert abs(masked / n - 0.8) < 4 * np.sqrt(0.16 / n), masked / n
  assert abs(randomised / n - 0.1) < 4 * np.sqrt(0.09 / n), randomised / n


def test_informask_bernoulli_without_rescaling_uses_the_rates_as_probabilities():
  """rescale=False (the original repository): p = rate as stored."""
  counts, seen = np.zeros(V), np.zeros(V)
  for seed in range(4):
    tokens, out, _, _ = run("informask", "bernoulli", key=seed, batch_seed=seed, rescale=False)
    np.add.at(counts, tokens[out["mask"]], 1)
    np.add.at(seen, tokens.ravel(), 1)
  ids = np.flatnonzero(seen > 100)
  ids = ids[~np.isin(ids, SPECIAL)]
  freq = counts[ids] / seen[ids]
  sd = np.sqrt(RATES[ids] * (1 - RATES[ids]) / seen[ids])
  assert np.mean(np.abs(freq - RATES[ids]) / sd) < 1.0  # ~0.8 for unbiased binomial draws
  fit = scipy.stats.linregress(RATES[ids], freq)
  assert abs(fit.slope - 1) < 0.05 and abs(fit.intercept) < 0.01, fit


def test_informask_bernoulli_rescale_counts_zero_rate_tokens_in_the_row():
  """Rescaled, a row's expected targets are mask_prob x all of its maskable tokens, zero-rate
  ones included: the positive rates carry their share. (Scaling to the positive-rate tokens
  only masks 0.15 of those, ~0.09 of the row here, where RATES has no zero and hid it.)"""
  rates = RATES.copy()
  rates[5:300] = 0.0  # About half the word starts: ~37% of the maskable tokens.
  masker = build("informask", "bernoulli", rates=rates)
  tokens, sentences, _ = synthetic_batch(0)
  mask = np.asarray(jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s))(
      jax.random.key(0), tokens, sentences)["mask"])
  maskable = ~np.isin(tokens, SPECIAL)
  zero = maskable & (rates[tokens] == 0)
  assert 0.3 < zero.sum() / maskable.sum() < 0.45
  assert not mask[zero].any(), "a zero-rate token became a target"
  # The documented p = rate * mask_prob * n / sum(rates), capped at 1, per row.
  rate = np.where(maskable, rates[tokens], 0.0).astype(np.float64)
  p = np.minimum(rate * (0.15 * maskable.sum(1) / rate.sum(1))[:, None], 1.0)
  assert abs(p.sum() / maskable.sum() - 0.15) < 0.002  # No p reaches the cap here.
  # ~7,000 targets, sd ~70 (this key: 1.4 sd off): 4 sd is ~280; scaling to the positive-rate
  # tokens only falls ~2,600 short.
  assert abs(mask.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum()), (mask.sum(), p.sum())


def _brute_force_ir(tokens, sentences, candidates, dense_pmi):
  scores = np.zeros(candidates.shape[0])
  for k, cand in enumerate(candidates):
    for i in range(len(tokens)):
      if not cand[i]:
        continue
      for j in range(len(tokens)):
        if j != i and not cand[j] and sentences[i] >= 0 and sentences[i] == sentences[j]:
          scores[k] += dense_pmi[tokens[i], tokens[j]]
  return scores


@pytest.mark.parametrize("table", ["dense", "sparse"])
def test_online_picks_best_candidate_brute_force(table):
  pmi = _pmi_matrix()
  masker = masking.get_masker("informask_online", pmi=pmi, num_candidates=6, pmi_table=table,
                              **COMMON)
  dense = pmi.toarray()
  # Rows of 24: PMI partners on both sides of an inner [SEP] (rows 0, 2, 4), padding in 1, 3, 5.
  rng = np.random.default_rng(21)
  firsts = rng.choice(np.arange(5, 600), (6, 9))
  partners = np.array([[rng.choice(np.flatnonzero(dense[i])) for i in row] for row in firsts])
  tokens = np.concatenate([[[CLS]] * 6, firsts, [[SEP]] * 6, partners, rng.integers(5, 600, (6, 3)),
                           [[SEP]] * 6], axis=1).astype(np.int32)
  tokens[1::2, 10] = rng.integers(5, 600, 3)  # One sentence in the odd rows ...
  tokens[1::2, 19:] = [SEP, PAD, PAD, PAD, PAD]  # ... and padding.
  sentences = np.where(np.isin(tokens, SPECIAL), -1, np.cumsum(tokens == SEP, 1)).astype(np.int32)
  out, aux = jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s, with_aux=True))(
      jax.random.key(2), tokens, sentences)
  out, aux = jax.tree.map(np.asarray, (out, aux))
  one_sentence = np.where(sentences >= 0, 0, -1)
  crossing = 0  # Rows where pairs across the [SEP] would change the scores.
  for b in range(tokens.shape[0]):
    expect = _brute_force_ir(tokens[b], sentences[b], aux["candidates"][b], dense)
    crossing += not np.allclose(
        expect, _brute_force_ir(tokens[b], one_sentence[b], aux["candidates"][b], dense))
    np.testing.assert_allclose(aux["scores"][b], expect, rtol=1e-5, atol=1e-4)
    assert aux["best"][b] == np.argmax(expect)
    np.testing.assert_array_equal(out["mask"][b], aux["candidates"][b, np.argmax(expect)])
    assert (aux["candidates"][b].sum(1) == budgets(tokens[b:b + 1])[0]).all()
  assert len(set(np.round(aux["scores"].ravel(), 3))) > 10  # candidates do differ
  assert crossing >= 2


def test_online_restricted_pmi_vocab():
  pmi = _pmi_matrix()
  row_of, size = online_lib.restrict_vocab(pmi, pmi_vocab_size=50)
  assert size == 50 and (row_of >= 0).sum() == 50
  counts = np.bincount(pmi.row, minlength=V) + np.bincount(pmi.col, minlength=V)
  kept = np.flatnonzero(row_of >= 0)
  assert counts[kept].min() >= np.sort(counts)[-50]
  tables, _ = online_lib.build_tables(pmi, pmi_vocab_size=50)
  dense = np.asarray(tables["pmi_dense"])
  assert dense.shape == (51, 51) and not dense[50].any()
  np.testing.assert_allclose(dense[row_of[kept]][:, row_of[kept]],
                             pmi.toarray()[np.ix_(kept, kept)])


@pytest.mark.parametrize("name,budget", CONFIGS)
def test_a_rows_masks_do_not_depend_on_how_far_it_is_padded(name, budget):
  """Batches padded to another length (dynamic padding, `masking show`, another seq_len) give
  each row the same masks: informask_online's candidates changed with L (224 of 256 rows)."""
  tokens, sentences, _ = synthetic_batch(4, batch=64, length=48)
  masker = build(name, budget)
  masks = []
  for extra in (0, 1, 16):
    padded = np.pad(tokens, ((0, 0), (0, extra)), constant_values=PAD)
    ids = np.pad(sentences, ((0, 0), (0, extra)), constant_values=-1)
    masks.append(np.asarray(masker(jax.random.key(2), padded, sentence_ids=ids)["mask"])[:, :48])
  np.testing.assert_array_equal(masks[0], masks[1])
  np.testing.assert_array_equal(masks[0], masks[2])


def test_informask_masks_do_not_depend_on_padding_past_a_power_of_two():
  """The exact budget's race keys kept 32 - ceil(log2 L) bits of the race beside the position:
  padding 500 tokens to 513 instead of 512 dropped one more bit, and rows whose two races
  then tied at the budget's edge changed mask (3 of these 2,048)."""
  tokens = np.random.default_rng(0).integers(5, 1000, (2048, 500)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = CLS, SEP
  masker = jax.jit(lambda key, t: build("informask")(key, t)["mask"])
  masks = [np.asarray(masker(jax.random.key(1), np.pad(tokens, ((0, 0), (0, extra)),
                                                       constant_values=PAD)))[:, :500]
           for extra in (0, 12, 13)]
  assert masks[0].sum() == 2048 * round(0.15 * 498)
  np.testing.assert_array_equal(masks[0], masks[1])
  np.testing.assert_array_equal(masks[0], masks[2])


def test_same_key_same_masks_other_key_differs():
  _, a, _, _ = run("span", "exact", key=5)
  _, b, _, _ = run("span", "exact", key=5)
  _, c, _, _ = run("span", "exact", key=6)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert (a["mask"] != c["mask"]).any()
  # Raw uint32 keys (jax.random.PRNGKey) work and equal the typed key's masks.
  masker = build("random")
  tokens, _, _ = synthetic_batch(0, batch=8)
  fn = jax.jit(masker)
  raw = fn(jax.random.PRNGKey(3), tokens)["mask"]
  typed = fn(jax.random.key(3), tokens)["mask"]
  np.testing.assert_array_equal(raw, typed)
  # A seed where a key belongs is a ValueError that says what a key is.
  for not_a_key in (3, None):
    with pytest.raises(ValueError, match="Expected a JAX key"):
      masker(not_a_key, tokens)
  # A float pair was cast to uint32 zeros: key 0's masks, whatever the numbers.
  for floats in (np.array([0.3, 0.9]), jnp.array([3.0, 7.0])):
    with pytest.raises(ValueError, match=r"A raw key must be uint32\[2\] .*, got dtype float"):
      masker(floats, tokens)


@pytest.mark.parametrize("name", ["span", "informask_online"])
def test_same_masks_on_1_and_8_devices(name):
  # Under jit a deterministic program has the same result however it is sharded; what this
  # guards is the random bits: a generator whose values follow the sharding (rbg keys,
  # non-partitionable threefry, a per-shard index) would fail it.
  devices = jax.devices()
  assert len(devices) >= 8, "conftest simulates 8 CPU devices"
  masker = build(name)
  tokens, sentences, _ = synthetic_batch(4, batch=64)
  results = []
  for n in (1, 8):
    mesh = Mesh(np.array(devices[:n]), ("data",))
    batch = NamedSharding(mesh, P("data"))
    fn = jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s),
                 in_shardings=(NamedSharding(mesh, P()), batch, batch), out_shardings=batch)
    out = fn(jax.random.key(9), jax.device_put(tokens, batch), jax.device_put(sentences, batch))
    if n == 8:
      assert len(out["mask"].sharding.device_set) == 8
    results.append(jax.tree.map(np.asarray, out))
  for k in results[0]:
    np.testing.assert_array_equal(results[0][k], results[1][k])


@pytest.mark.parametrize("name", ["random", "span", "informask", "informask_online"])
def test_inside_shard_map_with_the_example_offset_the_masks_are_the_global_batchs(name):
  """A manual-SPMD step masks its slice of the batch inside shard_map: the selection loop's
  carry failed JAX's check there ("carry input and output types differ"), and each slice drew
  the first slice's masks (the row's index is local there) unless example_offset gives it."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  masker = build(name)
  tokens, sentences, _ = synthetic_batch(4, batch=16, length=32)
  key = jax.random.key(9)

  def local(t, s):
    offset = jax.lax.axis_index("data") * t.shape[0]
    return masker(key, t, sentence_ids=s, example_offset=offset)["mask"]

  sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")),
                                  out_specs=P("data")))
  np.testing.assert_array_equal(np.asarray(sharded(tokens, sentences)),
                                np.asarray(masker(key, tokens, sentence_ids=sentences)["mask"]))
  with pytest.raises(ValueError, match=r"example_offset must be an integer scalar, got float32"):
    masker(key, tokens, example_offset=np.float32(2))


# --- Construction errors ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(mask_prob=0.0), "mask_prob"),
    (dict(mask_prob=1.0), "mask_prob"),
    (dict(mask_prob=float("nan")), "mask_prob"),
    (dict(replace_prob=0.8, random_prob=0.3), "replace_prob"),
    (dict(random_prob=-0.1), "random_prob"),
    (dict(budget="poisson"), "budget"),
    (dict(mask_id=V), "outside"),
    (dict(special_ids=(0, 5000)), "outside"),
    (dict(special_ids=()), "special_ids is empty"),
    (dict(special_ids="0123"), "integer token ids"),
    (dict(mask_id=4.7), "integer token ids"),
    (dict(colour="red"), "Unknown option"),
  (dict(replace_prob=True), "replace_prob must be a finite number, got True"),
  # Token ids are int32: a larger vocabulary failed inside the trace, or wrapped ids negative.
  (dict(vocab_size=2**31), r"vocab_size must be an integer in \[2, 2\*\*31\), got 2147483648"),
  (dict(mask_prob=np.bool_(True)), "mask_prob must be a finite number"),
])
def test_bad_shared_options_raise(kwargs, match):
  args = dict(COMMON, **kwargs)
  with pytest.raises(ValueError, match=match):
    masking.get_masker("random", **args)


def test_bad_strategy_options_raise(tmp_path):
  with pytest.raises(ValueError, match="Unknown masking strategy"):
    masking.get_masker("bert", **COMMON)
  with pytest.raises(ValueError, match="continuation"):
    masking.get_masker("whole_word", **COMMON)
  with pytest.raises(ValueError, match="geometric_p"):
    masking.get_masker("span", continuation=CONT, geometric_p=0.0, **COMMON)
  with pytest.raises(ValueError, match="max_span_len"):
    masking.get_masker("span", continuation=CONT, max_span_len=0, **COMMON)
  with pytest.raises(ValueError, match=r"max_span_len \(masking.span_max_len\) .* \[1, 1024\]"):
    masking.get_masker("span", continuation=CONT, max_span_len=10**6, **COMMON)
  with pytest.raises(ValueError, match="geometric_p"):  # Not coerced to 1.0.
    masking.get_masker("span", continuation=CONT, geometric_p=True, **COMMON)
  # A numpy integer is a number, as a Python int is (it was called out of (0, 1]).
  masking.get_masker("span", continuation=CONT, geometric_p=np.int64(1), **COMMON)
  with pytest.raises(ValueError, match="variant"):
    masking.get_masker("pmi_span", continuation=CONT, variant="trigram", **COMMON)
  with pytest.raises(ValueError, match="ngrams"):
    masking.get_masker("pmi_span", continuation=CONT, **COMMON)
  with pytest.raises(ValueError, match="token ids"):
    masking.get_masker("pmi_span", continuation=CONT, ngrams=[(5, V + 1)], **COMMON)
  with pytest.raises(ValueError, match="num_candidates"):
    masking.get_masker("informask_online", pmi=_pmi_matrix(), num_candidates=0, **COMMON)
  with pytest.raises(ValueError, match="shape"):
    masking.get_masker("informask_online", pmi=scipy.sparse.eye(10), **COMMON)
  with pytest.raises(FileNotFoundError, match="pmi.npz"):
    masking.get_masker("informask_online", pmi=str(tmp_path / "pmi.npz"), **COMMON)


@pytest.mark.parametrize("rates,match", [
    (np.ones(V - 1), "shape"),
    (np.where(np.arange(V) == 7, -0.1, 0.2), "negative"),
    (np.where(np.arange(V) == 7, np.nan, 0.2), "non-finite"),
    (np.zeros(V), "all zeros"),
    (np.where(np.arange(V) == 7, 1e300, 0.2), "float32"),
    (np.where(np.arange(V) < 5, 0.5, 0.0), "non-special"),
    (None, "rates"),
])
def test_bad_rate_tables_raise(rates, match):
  with pytest.raises(ValueError, match=match):
    masking.get_masker("informask", rates=rates, **COMMON)


def test_rate_table_errors_name_the_file_and_config_key(tmp_path):
  """A table of the wrong size, or zero on every non-special id, is named with its file and
  masking.rates_path (--rates in `masking show`), and the size with the one expected."""
  np.save(tmp_path / "long.npy", np.full(V + 1, 0.1))
  np.save(tmp_path / "2d.npy", np.full((1, V), 0.1))
  np.save(tmp_path / "specials.npy", np.where(np.arange(V) < 5, 0.5, 0.0))
  with pytest.raises(ValueError, match=rf"^The rate table '{tmp_path}/long.npy' "
                                       rf"\(masking.rates_path\) has shape \({V + 1},\); "
                                       rf"expected \({V},\): one rate per token id of the "
                                       rf"tokenizer's {V}-token vocabulary\.$"):
    masking.get_masker("informask", rates=str(tmp_path / "long.npy"), **COMMON)
  with pytest.raises(ValueError, match=rf"^The rate table '{tmp_path}/2d.npy' has shape "
                                       rf"\(1, {V}\); expected \(V,\): masking.rates_path must "):
    informask_lib.check_rates_file(tmp_path / "2d.npy")
  with pytest.raises(ValueError, match=rf"^The rate table '{tmp_path}/specials.npy' "
                                       r"\(masking.rates_path\) is zero on every non-special "
                                       r"token \(all but the ids \[0, 1, 2, 3, 4\]\)"):
    masking.get_masker("informask", rates=str(tmp_path / "specials.npy"), **COMMON)
  too_big = tmp_path / "big.npy"
  np.save(too_big, np.full(V, 2.0))
  with pytest.raises(ValueError, match=r"big.npy' \(masking.rates_path\) has 995 rates above 1"):
    masking.get_masker("informask", rates=str(too_big), rescale=False, budget="bernoulli",
                       **COMMON)


def test_bad_tables_and_ids_raise():
  with pytest.raises(ValueError, match="booleans"):
    masking.get_masker("whole_word", continuation=np.where(CONT, "True", "False"), **COMMON)
  with pytest.raises(ValueError, match="all zeros"):
    masking.get_masker("informask_online", pmi=scipy.sparse.coo_matrix((V, V)), **COMMON)
  masker = masking.get_masker("random", **COMMON)
  tokens = np.full((2, 8), 7, np.int32)
  for bad in (V, -3):
    tokens[1, 3] = bad
    with pytest.raises(ValueError, match="outside the masker's vocabulary"):
      masker(jax.random.key(0), tokens)
  with pytest.raises(ValueError, match="integer ids, got dtype float32"):  # Not truncated.
    masker(jax.random.key(0), np.full((2, 8), 7.6, np.float32))
  with pytest.raises(ValueError, match=r"no positions \(shape \(2, 0\)\)"):
    masker(jax.random.key(0), np.zeros((2, 0), np.int32))
  with pytest.raises(ValueError, match="sentence_ids must hold integer ids, got dtype float"):
    masker(jax.random.key(0), np.full((2, 8), 7, np.int32),
           sentence_ids=np.full((2, 8), 0.5, np.float32))
  masker(jax.random.key(0), np.full((2, 8), 7, np.int32),
         sentence_ids=np.zeros((2, 8), np.int16))
  masker(jax.random.key(0), np.full((2, 8), 7, np.int32), sentence_ids=[[0] * 8, [1] * 8])
  # Concrete ids closed over by a jitted function are checked too (on the host), not traced.
  good = jnp.full((2, 8), 7, jnp.int32)
  assert jax.jit(lambda k: masker(k, good)["mask"])(jax.random.key(0)).shape == (2, 8)
  bad_ids = jnp.asarray(tokens)
  with pytest.raises(ValueError, match="outside the masker's vocabulary"):
    jax.jit(lambda k: masker(k, bad_ids))(jax.random.key(0))


def test_informask_rescale_option_is_checked():
  with pytest.raises(ValueError, match="rescale"):
    masking.get_masker("informask", rates=RATES, rescale="no", **COMMON)
  too_big = np.where(np.arange(V) == 7, 3.0, 0.1)
  with pytest.raises(ValueError, match="rates above 1"):
    masking.get_masker("informask", rates=too_big, rescale=False, budget="bernoulli", **COMMON)
  # Relative weights: rescaled, or compared by the exact budget (which has nothing to rescale,
  # so rescale=False there is an option that would change nothing: refused, not ignored).
  masking.get_masker("informask", rates=too_big, rescale=True, budget="bernoulli", **COMMON)
  masking.get_masker("informask", rates=too_big, budget="exact", **COMMON)
  with pytest.raises(ValueError, match="rescale=False applies to the bernoulli budget"):
    masking.get_masker("informask", rates=too_big, rescale=False, budget="exact", **COMMON)
  # A special id's rate is never used: above 1 it is no reason to refuse the table.
  masking.get_masker("informask", rates=np.where(np.arange(V) == CLS, 3.0, 0.1), rescale=False,
                     budget="bernoulli", **COMMON)
  # missing_rate fills a JSON table's unlisted ids; a bad value is refused whatever the table.
  for bad in ("bogus", -3, float("nan"), float("inf"), True):
    with pytest.raises(ValueError, match="missing_rate must be 'mean' or a finite number >= 0"):
      masking.get_masker("informask", rates=RATES, missing_rate=bad, **COMMON)
  # A valid fill rate for a table that lists every id would change nothing.
  with pytest.raises(ValueError, match="missing_rate=0.0 fills the ids an id_mask_prob JSON"):
    masking.get_masker("informask", rates=RATES, missing_rate=0.0, **COMMON)


@pytest.mark.parametrize("rates,match", [
    (RATES.astype(np.complex64) + 1j, "got dtype complex64"),
    (RATES.astype(str), "got dtype <U"),
    ((RATES * 100).astype(np.int64), "holds int64 values, not rates"),
    (RATES > 0.1, "holds bool values, not rates"),
    ([[0.1, 0.2], [0.3]], "rates must be a float array"),
])
def test_rate_arrays_that_are_not_real_numbers_are_refused(rates, match):
  with pytest.raises(ValueError, match=match):
    masking.get_masker("informask", rates=rates, **COMMON)
  # Plain Python floats are a float array.
  masking.get_masker("informask", rates=[float(r) for r in RATES], **COMMON)


@pytest.mark.parametrize("text,match", [
    ('{"5": 0.1, "6": true}', r"'6': true is not token id -> rate \(a number\)"),
    ('{"5": 0.1, "6": "0.2"}', r"'6': \"0.2\" is not token id -> rate"),
    ('{"5": 0.1, "six": 0.2}', r"'six': 0.2 is not token id -> rate"),
    ('{"5": 0.1, "05": 0.2}', r"gives token id 5 twice \(keys '5' and '05'\)"),
    ('{"5": 0.1, "5": 0.2}', r"gives token id 5 twice \(keys '5' and '5'\)"),
    ('{"5": 1' + "0" * 400 + "}", "id 5 has rate inf"),  # An integer beyond float's range.
    # Arrays are not objects, even when their items look like pairs.
    ("[0.1, 0.2]", r"must be a non-empty JSON object: token id -> rate \(it holds an array"),
    ('[["5", 0.1], ["6", 0.3]]', "must be a non-empty JSON object"),
    ("[[5, 0.1, 7]]", "must be a non-empty JSON object"),
    ('{"5.7": 0.1}', r"'5.7': 0.1 is not token id -> rate"),
    ("{}", r"must be a non-empty JSON object: token id -> rate\.$"),
])
def test_json_rate_entries_must_be_distinct_ids_with_numbers(tmp_path, text, match):
  path = tmp_path / "id_mask_prob.json"
  path.write_text(text)
  with pytest.raises(ValueError, match=match):
    informask_lib.load_rates(str(path), V)


def test_pmi_span_refuses_the_other_variants_options():
  with pytest.raises(ValueError, match=r"bigrams= is the table of the other variant; "
                                       r"variant='ngram' \(masking.pmi_variant\) reads ngrams="):
    build("pmi_span", bigrams=BIGRAMS)
  with pytest.raises(ValueError, match="ngrams= is the table of the other variant"):
    build("pmi_bigram", ngrams=NGRAMS)
  with pytest.raises(ValueError, match="variant='bigram' has none"):
    build("pmi_bigram", max_ngram_tokens=4)


def test_informask_bernoulli_draws_a_sequence_of_zero_rate_tokens_uniformly():
  """Rescaled Bernoulli: a sequence whose tokens all have rate 0 (an id_mask_prob.json with
  missing_rate=0 never lists them) had no target at all; it gets mask_prob per token, as the
  exact budget draws such tokens uniformly. Other sequences keep their rescaled rates."""
  rates = np.full(V, 0.2, np.float32)
  rates[20:40] = 0.0
  masker = build("informask", budget="bernoulli", rates=rates)
  rng = np.random.default_rng(0)
  tokens = np.full((2048, 32), PAD, np.int32)
  tokens[:, 0], tokens[:, 31] = CLS, SEP
  tokens[:1024, 1:31] = rng.integers(20, 40, (1024, 30))  # Only zero-rate tokens.
  tokens[1024:, 1:16] = rng.integers(20, 40, (1024, 15))  # Half zero-rate, half 0.2.
  tokens[1024:, 16:31] = rng.integers(100, 200, (1024, 15))
  mask = np.asarray(masker(jax.random.key(3), tokens)["mask"])
  assert abs(mask[:1024].mean() * 32 / 30 - 0.15) < 0.01
  assert not mask[1024:, 1:16].any()  # Beside positive rates, rate 0 is never a target.
  assert abs(mask[1024:].sum() / (1024 * 30) - 0.15) < 0.01


def test_informask_exact_weights_ignore_special_rates():
  """A huge rate on [CLS] (never a target) must not squash the other weights to the floor:
  tokens of rate 0.4 stay ~20x as likely to be drawn as tokens of rate 0.02."""
  ids = np.array([10, 11])
  base = np.full(V, 0.02, np.float32)
  base[11] = 0.4
  counts = []
  for cls_rate in (0.0, 1e7):
    rates = base.copy()
    rates[CLS] = cls_rate
    masker = build("informask", "exact", rates=rates, mask_prob=0.5)
    row = np.concatenate([[CLS], np.repeat(ids, 2), [SEP]]).astype(np.int32)  # 4 maskable, 2 drawn
    out = np.asarray(jax.jit(masker)(jax.random.key(1), np.tile(row, (4000, 1)))["mask"])
    picked = np.tile(np.repeat(ids, 2), (4000, 1))[out[:, 1:-1]]
    counts.append(np.bincount(picked - 10, minlength=2))
  for drawn in counts:
    assert drawn[1] > 3 * drawn[0], counts  # Uniform weights would give ~1:1.
  np.testing.assert_array_equal(counts[0], counts[1])  # The special's rate changes nothing.


def test_unreadable_rate_files_name_the_file(tmp_path):
  (tmp_path / "empty.npy").write_bytes(b"")
  np.save(tmp_path / "words.npy", np.array(["a", "b"]))
  np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  for name in ("empty.npy", "words.npy", "objects.npy"):
    with pytest.raises(ValueError, match=rf"{name}' \(masking.rates_path\) is not a readable"):
      informask_lib.load_rates(str(tmp_path / name), V)
  with pytest.raises(ValueError, match=r"\(masking.rates_path\) is a directory"):
    informask_lib.load_rates(str(tmp_path), V)


def test_rate_files_npy_and_original_json(tmp_path):
  np.save(tmp_path / "rates.npy", RATES)
  np.testing.assert_array_equal(informask_lib.load_rates(str(tmp_path / "rates.npy"), V), RATES)
  listed = {str(i): float(RATES[i]) for i in range(0, V, 2)}  # odd ids missing
  (tmp_path / "id_mask_prob.json").write_text(json.dumps(listed))
  table = informask_lib.load_rates(str(tmp_path / "id_mask_prob.json"), V)
  np.testing.assert_allclose(table[::2], RATES[::2])
  np.testing.assert_allclose(table[1::2], np.mean(RATES[::2]), rtol=1e-6)
  zero = informask_lib.load_rates(str(tmp_path / "id_mask_prob.json"), V, missing_rate=0.0)
  assert not zero[1::2].any()
  fixed = informask_lib.load_rates(str(tmp_path / "id_mask_prob.json"), V, missing_rate=0.07)
  np.testing.assert_array_equal(fixed[1::2], np.float32(0.07))
  np.testing.assert_allclose(fixed[::2], RATES[::2])
  (tmp_path / "big.json").write_text(json.dumps({str(V + 3): 0.1}))
  with pytest.raises(ValueError, match="outside the vocabulary"):
    informask_lib.load_rates(str(tmp_path / "big.json"), V)
  with pytest.raises(FileNotFoundError, match="rates_path"):
    informask_lib.load_rates(str(tmp_path / "none.npy"), V)
  masker = masking.get_masker("informask", rates=str(tmp_path / "id_mask_prob.json"), **COMMON)
  assert masker.name == "informask"


def test_binary_rate_files_are_named_and_never_unpickled(tmp_path):
  """A binary (non-UTF-8) .json and a .npy that is not an array of numbers: one ValueError
  naming the file and masking.rates_path, never numpy's hint to load with allow_pickle."""
  (tmp_path / "binary.json").write_bytes(bytes(range(256)))
  with pytest.raises(ValueError, match=r"binary.json' \(masking.rates_path\) is not UTF-8 text "
                                       r"\(byte 0x80 at offset 128\)"):
    informask_lib.load_rates(str(tmp_path / "binary.json"), V)
  (tmp_path / "garbage.npy").write_bytes(np.random.default_rng(0).bytes(256))
  np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  for name in ("garbage.npy", "objects.npy"):
    with pytest.raises(ValueError, match=rf"{name}' \(masking.rates_path\) is not a readable "
                                         r"\.npy array") as caught:
      informask_lib.load_rates(str(tmp_path / name), V)
    assert "pickle" not in str(caught.value).replace("(dtype object)", ""), caught.value
  # Integer counts (a statistics directory's unigram_counts.npy) are no rates, whatever their size.
  np.save(tmp_path / "unigram_counts.npy", np.arange(V, dtype=np.int64) + 1)
  with pytest.raises(ValueError, match=r"holds int64 values, not rates: counts .* rates.npy"):
    informask_lib.load_rates(str(tmp_path / "unigram_counts.npy"), V)
  listed = {str(i): float(RATES[i]) for i in range(V)}
  (tmp_path / "bom.json").write_text(json.dumps(listed), encoding="utf-8-sig")
  np.testing.assert_allclose(informask_lib.load_rates(str(tmp_path / "bom.json"), V), RATES)


def test_bad_json_rates_are_reported_as_listed_not_after_the_fill(tmp_path):
  """One NaN in a JSON table must not read as V - n non-finite entries (NaN mean as fill)."""
  listed = {str(i): float(RATES[i]) for i in range(0, V, 2)}
  for value, what in ((float("nan"), "non-finite"), (float("inf"), "non-finite"),
                      (-0.5, "negative")):
    (tmp_path / "bad.json").write_text(json.dumps({**listed, "17": value}))
    with pytest.raises(ValueError, match=rf"bad.json' \(masking.rates_path\) lists 1 {what} "
                                         rf"rate\(s\): id 17 has rate {value}; rates must be"):
      informask_lib.load_rates(str(tmp_path / "bad.json"), V)


def test_a_json_rate_table_listing_few_ids_warns(tmp_path, caplog):
  """3 ids of V: every other id gets the fill rate, close to uniform masking; say so."""
  (tmp_path / "few.json").write_text(json.dumps({"7": 0.1, "8": 0.2, "9": 0.6}))
  with caplog.at_level("WARNING", logger=informask_lib.__name__):
    table = informask_lib.load_rates(str(tmp_path / "few.json"), V)
  np.testing.assert_allclose(table[10:], 0.3)
  (record,) = [r for r in caplog.records if r.name == informask_lib.__name__]
  assert record.levelname == "WARNING"
  message = record.getMessage()
  assert "few.json" in message and "masking.rates_path" in message, message
  assert f"lists only 3 of the vocabulary's {V} token ids" in message, message
  assert f"other {V - 3} get the fill rate 0.3 " in message, message
  caplog.clear()
  half = {str(i): float(RATES[i]) for i in range(0, V, 2)}  # Half the ids: no warning.
  (tmp_path / "half.json").write_text(json.dumps(half))
  with caplog.at_level("WARNING", logger=informask_lib.__name__):
    informask_lib.load_rates(str(tmp_path / "half.json"), V)
  assert not [r for r in caplog.records if r.name == informask_lib.__name__]


def test_masker_from_config(tmp_path):
  from configs import base
  c = base.get_base_config("tiny", strategy="span")
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK,
                                 continuation=CONT)
  assert m.name == "span" and dict(m.options)["max_span_len"] == c.masking.span_max_len
  c = base.get_base_config("tiny", strategy="informask")
  with pytest.raises(ValueError, match="rates_path"):
    masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK)
  np.save(tmp_path / "r.npy", RATES)
  c.masking.rates_path = str(tmp_path / "r.npy")
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK)
  assert m.settings.mask_prob == c.masking.mask_prob and dict(m.options)["rescale"] is True
  # The original repository's setting: raw rates, ids missing from its JSON never masked.
  (tmp_path / "id_mask_prob.json").write_text(json.dumps({"7": 0.5}))
  c.masking.update(rates_path=str(tmp_path / "id_mask_prob.json"), rescale=False,
                   missing_rate="0", budget="bernoulli")
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK)
  assert dict(m.options)["rescale"] is False
  np.testing.assert_array_equal(np.flatnonzero(m.tables["rates"]), [7])
  c.masking.missing_rate = "0.07"  # A string field: a number in it is the fill rate.
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK)
  assert m.tables["rates"][7] == np.float32(0.5)
  np.testing.assert_array_equal(np.delete(m.tables["rates"], 7), np.float32(0.07))
  c.masking.pmi_variant = "bigram"
  c.masking.name = "pmi_span"
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK,
                                 continuation=CONT, bigrams=BIGRAMS)
  assert dict(m.options)["variant"] == "bigram"
  assert set(masking.MASKERS) == {"random", "whole_word", "span", "pmi_span", "informask",
                                  "informask_online"}


def test_options_of_another_strategy_are_named_as_ignored(caplog):
  from configs import base
  c = base.get_base_config("tiny", strategy="informask")

  def warned(**changes):
    """The check's warnings after `changes` to config.masking (kept for the next call)."""
    c.masking.update(changes)
    caplog.clear()
    with caplog.at_level("WARNING"):
      masking.check_config(c.masking)
    return caplog.text

  assert "ignores" not in warned()  # The shipped config sets nothing for other strategies.
  text = warned(span_max_len=5, num_candidates=16, rates_path="", name="random")  # 16: default.
  assert "masking.name='random' ignores config.masking.span_max_len=5 (span only)" in text
  assert "num_candidates" not in text
  # informask: K sizes the corpus statistics' rate computation, unless a table is given; the
  # missing rate fills a JSON table's unlisted ids only.
  text = warned(name="informask", num_candidates=64, missing_rate="0")
  assert "num_candidates" not in text
  assert "config.masking.missing_rate='0' (a .json rates_path only)" in text
  text = warned(rates_path="table.json")
  assert "config.masking.num_candidates=64 (informask_online only)" in text
  assert "missing_rate" not in text
  # rescale acts on the Bernoulli budget only; there, unscaled rates are the targets' own
  # probabilities and a given table's share, not mask_prob, sets how many there are.
  text = warned(rescale=False, mask_prob=0.3)
  assert "config.masking.rescale=False (the bernoulli budget only)" in text
  assert "mask_prob" not in text
  text = warned(budget="bernoulli")
  assert "rescale=False (the" not in text
  assert "config.masking.mask_prob=0.3 when drawing targets" in text
  # Built from the corpus for mask_prob, the table does set the share.
  assert "mask_prob" not in warned(rates_path="")


def test_masker_is_a_pytree_jit_argument():
  masker = build("informask")
  tokens, _, _ = synthetic_batch(0, batch=8)
  direct = jax.jit(masker)(jax.random.key(0), tokens)
  passed = jax.jit(lambda m, k, t: m(k, t))(masker, jax.random.key(0), jnp.asarray(tokens))
  np.testing.assert_array_equal(direct["mask"], passed["mask"])
  with pytest.raises(ValueError, match="int\\[B, L\\]"):
    masker(jax.random.key(0), tokens[0])


def test_show_cli_marks_targets(tmp_path, capsys, monkeypatch):
  from informask_jax.masking import show
  text = "Mount Everest is the highest mountain on Earth above sea level."
  show.main(["--strategy", "random", "--text", text, "--samples", "2", "--no-colour"])
  printed = capsys.readouterr().out
  rows = [line.strip() for line in printed.splitlines() if line.startswith("  ")]
  assert len(rows) == 2
  # 13 word pieces, budget round(0.15 * 13) = 2 targets per row, each shown as [word] ({word}
  # when left unchanged).
  assert all(row.count("[") + row.count("{") == 2 for row in rows), rows
  assert all(row.replace("[", "").replace("]", "").split(">")[0].startswith("mount")
             for row in rows)
  page = tmp_path / "masks.html"
  show.main(["--strategy", "informask", "--text", text, "--html", str(page)])
  content = page.read_text()
  # 3 samples x 2 targets, and the legend's three marks.
  assert "STAND-IN" in content and content.count("<span style=") == 3 * 2 + 3
  assert show.default_text().startswith("Mount Everest")
  with pytest.raises(SystemExit):
    show.main(["--strategy", "random", "--text", "  "])
  assert "--text is empty" in capsys.readouterr().err
  # Named by the flag, without train.py's advice (a config key, training a vocabulary).
  with pytest.raises(SystemExit, match=r"^error: --tokenizer '.*nope' does not exist; give a "
                                       r"vocab.txt or a tokenizer directory, e.g. a run's "
                                       r"WORKDIR/tokenizer.$"):
    show.main(["--strategy", "random", "--tokenizer", str(tmp_path / "nope")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit, match=r"--tokenizer '.*empty' holds no tokenizer.json"):
    show.main(["--strategy", "random", "--tokenizer", str(tmp_path / "empty")])
  monkeypatch.setenv("HOME", str(tmp_path))  # Unexpanded by the shell in --tokenizer=~/...
  with pytest.raises(SystemExit, match=r"--tokenizer '~/empty' holds no tokenizer.json"):
    show.main(["--strategy", "random", "--tokenizer", "~/empty"])
  (tmp_path / "notes.md").write_text("# Notes\nsome words\n")  # Not a vocabulary.
  with pytest.raises(SystemExit) as caught:
    show.main(["--strategy", "random", "--tokenizer", str(tmp_path / "notes.md")])
  assert re.fullmatch(r"error: --tokenizer '.*notes\.md': no tokenizer could be loaded \(the "
                      r"vocabulary lacks \[.*\]\.\)", str(caught.value)), caught.value
  # A statistics directory of a byte-level BPE run: its vocab.txt lists Ġ pieces, no [PAD].
  bpe_stats = tmp_path / "bpe_stats"
  bpe_stats.mkdir()
  (bpe_stats / "vocab.txt").write_text("<s>\n<pad>\n</s>\n<unk>\n<mask>\n\u0120the\n")
  (bpe_stats / "meta.json").write_text(json.dumps(dict(
      tokenizer_fingerprint="f" * 32, tokenizer_name_or_path="/runs/bpe/tokenizer")))
  with pytest.raises(SystemExit) as caught:
    show.main(["--strategy", "random", "--tokenizer", str(bpe_stats)])
  assert re.fullmatch(r"error: --tokenizer '.*bpe_stats' is a statistics directory whose "
                      r"vocab\.txt rebuilds only a WordPiece tokenizer, .* "
                      r"\(/runs/bpe/tokenizer\); "
                      r"pass that tokenizer: --tokenizer /runs/bpe/tokenizer, with --stats .*",
                      str(caught.value)), caught.value
  (tmp_path / "tokenizer.json").write_text("{}")  # The loader's other wording: "'X' is a".
  with pytest.raises(SystemExit) as caught:
    show.main(["--strategy", "random", "--tokenizer", str(tmp_path / "tokenizer.json")])
  assert re.fullmatch(r"error: --tokenizer '.*tokenizer\.json': no tokenizer could be loaded \(it "
                      r"is a \.json file; point it at the directory that holds tokenizer\.json "
                      r".*\)", str(caught.value)), caught.value
  # A table given by flag is named by its flag, not by train.py's config key.
  with pytest.raises(SystemExit, match=r"no\.npy' \(--rates\) does not exist"):
    show.main(["--strategy", "informask", "--rates", str(tmp_path / "no.npy")])


def test_show_cli_warns_in_its_own_flags_of_tables_it_cannot_check(tmp_path, caplog, capsys):
  """A rate JSON listing few ids is warned of as --rates's (show has no missing_rate); an n-gram
  table with no meta.json beside it (so no record of its tokenizer) is used with a warning."""
  from informask_jax.masking import show

  text = "Mount Everest is the highest mountain on Earth above sea level."
  (tmp_path / "id_mask_prob.json").write_text('{"2000": 0.5, "2001": 0.25}')
  (tmp_path / "pmi_ngrams.json").write_text("[[2000, 2001]]")
  with caplog.at_level(logging.WARNING):
    show.main(["--strategy", "informask", "--text", text, "--samples", "1", "--rates",
               str(tmp_path / "id_mask_prob.json")])
    show.main(["--strategy", "pmi_span", "--text", text, "--samples", "1", "--ngrams",
               str(tmp_path / "pmi_ngrams.json")])
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warned) == 2, warned
  assert re.fullmatch(r"Rate table '.*id_mask_prob\.json' \(--rates\) lists only 2 of the "
                      r"vocabulary's 30522 token ids; the other 30520 get the fill rate 0\.375\. "
                      r"Is it the table of this tokenizer\?", warned[0]), warned[0]
  assert warned[1] == (f"--ngrams {tmp_path / 'pmi_ngrams.json'} has no meta.json beside it, so "
                       "the tokenizer it was built with is unknown: its ids are read as "
                       "--tokenizer's. Pass the statistics directory's own file, or --stats DIR.")


def test_show_cli_says_when_a_text_is_too_short_for_any_target(capsys):
  from informask_jax.masking import show
  show.main(["--strategy", "random", "--text", "Mount Everest", "--no-colour"])
  assert "= 0 targets per sequence: give a longer --text" in capsys.readouterr().out
  show.main(["--strategy", "random", "--text", "Mount Everest is the highest mountain on Earth.",
             "--no-colour"])
  assert "0 targets" not in capsys.readouterr().out
  # [UNK] is never a target: 2 maskable of 4 tokens here, round(0.2 x 2) = 0.
  show.main(["--strategy", "random", "--text", "hi \u2603\u2603\u2603\u2603 \U0001d11e x",
             "--mask-prob", "0.2", "--no-colour"])
  out = capsys.readouterr().out
  assert "4 tokens;" in out and "round(0.2 x 2 maskable tokens) = 0 targets" in out, out


@pytest.mark.parametrize("flags,message", [
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*31\), got -1"),
    (["--seed", str(2**32)], r"--seed must be in \[0, 2\*\*31\), got 4294967296"),
    (["--seed", str(2**31)], r"--seed must be in \[0, 2\*\*31\), got 2147483648"),
    (["--samples", "0"], r"--samples must be in \[1, 1000\], got 0"),
    (["--samples", str(10**12)], r"--samples must be in \[1, 1000\]"),
    # Named by the maskers as "mask_prob" / "masking.num_candidates", once the tables had loaded
    # (and --num-candidates not at all unless informask_online was shown).
    (["--mask-prob", "2"], r"--mask-prob must be in \(0, 1\), got 2.0"),
    (["--mask-prob", "0"], r"--mask-prob must be in \(0, 1\), got 0.0"),
    (["--mask-prob", "nan"], r"--mask-prob must be in \(0, 1\), got nan"),
    (["--num-candidates", "0"], r"--num-candidates must be in \[1, 512\], got 0"),
    (["--num-candidates", "513"], r"--num-candidates must be in \[1, 512\], got 513"),
    # An empty path was taken as not given: stand-in rates without a word, no page written.
    (["--stats", ""], r"--stats is empty: give a path, or leave --stats out"),
    (["--rates", ""], r"--rates is empty"),
    (["--html", ""], r"--html is empty"),
    (["--tokenizer", ""], r"--tokenizer is empty"),
])
def test_show_cli_refuses_out_of_range_flags_by_name(flags, message, capsys):
  from informask_jax.masking import show
  with pytest.raises(SystemExit) as caught:
    show.main(["--strategy", "random", *flags])
  assert caught.value.code == 2
  assert re.search(f"^python -m informask_jax.masking show: error: {message}",
                   capsys.readouterr().err, re.M)


def test_masking_cli_names_a_missing_or_unknown_command(capsys, monkeypatch):
  from informask_jax.masking import __main__ as masking_cli
  for argv, problem in (([], "no command given"), (["shwo"], "unknown command 'shwo'")):
    monkeypatch.setattr(sys, "argv", ["python -m informask_jax.masking", *argv])
    with pytest.raises(SystemExit) as caught:
      masking_cli._main()
    assert caught.value.code == 2
    error, usage = capsys.readouterr().err.splitlines()
    assert error == f"python -m informask_jax.masking: error: {problem}; the command is show."
    assert usage.startswith("usage: python -m informask_jax.masking show")


def test_show_cli_html_names_a_bad_path_by_its_flag(tmp_path, capsys, monkeypatch):
  """--html naming a folder, or a file under a regular file, stops with a line naming --html
  (not IsADirectoryError's traceback after the work); --html=~/x.html is expanded."""
  from informask_jax.masking import show
  args = ["--strategy", "random", "--samples", "1", "--text", "The cat sat on the mat."]
  with pytest.raises(SystemExit):
    show.main([*args, "--html", str(tmp_path)])
  assert f"--html {tmp_path} is a directory" in capsys.readouterr().err
  (tmp_path / "file").write_text("")
  with pytest.raises(FileExistsError, match=r"--html's folder .*file.* exists and is not a"):
    show.main([*args, "--html", str(tmp_path / "file" / "masks.html")])
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  show.main([*args, "--html=~/masks.html"])
  assert (tmp_path / "masks.html").is_file() and not (tmp_path / "~").exists()


def test_show_cli_html_writes_through_a_link_and_to_a_device(tmp_path, capsys):
  """--html on a link writes the file it points to, as `> LINK` does: the page was renamed onto
  the link, which became a file and left its target as it was (and, run as root, --html
  /dev/stdout replaced the system's link with a file). A device is written as it is, with no
  "Wrote" line after the page."""
  from informask_jax.masking import show
  args = ["--strategy", "random", "--samples", "1", "--text", "The cat sat on the mat."]
  (tmp_path / "pages").mkdir()
  page = tmp_path / "pages" / "masks.html"
  page.write_text("<p>the earlier page</p>")
  link = tmp_path / "masks.html"
  link.symlink_to(page)
  show.main([*args, "--html", str(link)])
  assert link.is_symlink() and "<!doctype html>" in page.read_text()
  assert capsys.readouterr().out == f"Wrote {link}\n"
  stdout = tmp_path / "stdout"
  stdout.symlink_to(os.devnull)  # As /dev/stdout -> /proc/self/fd/1.
  show.main([*args, "--html", str(stdout)])
  assert stdout.is_symlink() and capsys.readouterr().out == ""


def test_show_cli_html_to_dev_stdout_that_is_a_log_file_adds_the_page_to_it(tmp_path):
  """--html /dev/stdout in a job whose output goes to a log file: the page was renamed onto the
  file /dev/stdout resolves to, so the log lost its earlier lines, and the job's later output
  went to the removed file. It is written through the descriptor, between the two."""
  import pathlib
  import subprocess

  root = pathlib.Path(__file__).resolve().parents[1]
  log = tmp_path / "job.log"
  with open(log, "w") as out:
    out.write("earlier line\n")
    out.flush()
    subprocess.run([sys.executable, "-m", "informask_jax.masking", "show", "--strategy",
                    "random", "--samples", "1", "--text", "The cat sat.", "--html",
                    "/dev/stdout"], cwd=root, stdout=out, check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(root)})
    out.write("later line\n")
  text = log.read_text()
  assert text.startswith("earlier line\n<!doctype html>") and text.endswith("later line\n")


def test_show_cli_refuses_a_text_that_is_not_utf8(capsys):
  """A command-line byte that is not UTF-8 (a Latin-1 file's "café" through $(cat FILE)) reaches
  Python as a lone surrogate, on which the tokenizer raised a TypeError's traceback."""
  from informask_jax.masking import show
  with pytest.raises(SystemExit) as caught:
    show.main(["--strategy", "random", "--samples", "1", "--text", "caf\udce9 au lait"])
  assert caught.value.code == 2
  assert "--text is not UTF-8: byte 0xe9 at character 4" in capsys.readouterr().err


def test_show_cli_html_on_a_full_disk_keeps_the_earlier_page(tmp_path, monkeypatch):
  """The page is written under a temporary name and renamed: a disk that fills up halfway
  leaves the earlier page whole (it was cut to the bytes written) and no temporary file."""
  import pathlib

  from informask_jax.masking import show
  page = tmp_path / "masks.html"
  page.write_text("<p>the earlier page</p>")
  write_text = pathlib.Path.write_text

  def full_halfway(self, text, *args, **kwargs):
    write_text(self, text[:len(text) // 2], *args, **kwargs)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(pathlib.Path, "write_text", full_halfway)
  with pytest.raises(OSError, match="No space left on device"):
    show.main(["--strategy", "random", "--samples", "1", "--text", "The cat sat on the mat.",
               "--html", str(page)])
  assert os.listdir(tmp_path) == ["masks.html"]
  assert page.read_text() == "<p>the earlier page</p>"


def test_show_cli_takes_the_tables_of_a_statistics_directory(tmp_path, capsys, caplog):
  """--stats: the rates of the directory drive informask (all weight on "earth": every row
  masks it), and a directory built with another tokenizer is refused, naming both."""
  from informask_jax import tokenization
  from informask_jax.masking import show
  from informask_jax.stats import artifacts
  tok = show.load_tokenizer()
  text = "Mount Everest is the highest mountain on Earth above sea level."
  rates = np.full(len(tok), 1e-6, np.float32)
  rates[tok.convert_tokens_to_ids("earth")] = 1.0
  directory = tmp_path / "stats"
  directory.mkdir()
  np.save(directory / "rates.npy", rates)
  (directory / "id_mask_prob.json").write_text("{}")
  meta = {"format_version": artifacts.FORMAT_VERSION, "vocab_size": len(tok),
          "tokenizer_fingerprint": tokenization.tokenizer_fingerprint(tok),
          "tokenizer_name_or_path": ""}
  for name in ("rates.npy", "id_mask_prob.json"):
    artifacts.record_file(directory, meta, name)
  artifacts.write_meta(directory, meta)
  show.main(["--strategy", "informask", "--text", text, "--samples", "4", "--no-colour",
             "--stats", str(directory)])
  rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
  # A kept target is in braces ("{earth}"): a target still.
  assert len(rows) == 4 and all(re.search(r"[\[{]earth\b", row) for row in rows), rows
  # A table given by its own flag is used instead of the directory's.
  own = rates.copy()
  own[tok.convert_tokens_to_ids(["earth", "mountain"])] = [1e-6, 1.0]
  np.save(tmp_path / "own.npy", own)
  show.main(["--strategy", "informask", "--text", text, "--samples", "4", "--no-colour",
             "--stats", str(directory), "--rates", str(tmp_path / "own.npy")])
  rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
  assert len(rows) == 4 and all(re.search(r"[\[{]mountain\b", row) for row in rows), rows
  artifacts.write_meta(directory, {**meta, "tokenizer_fingerprint": "another"})
  with caplog.at_level(logging.WARNING), pytest.raises(
      SystemExit, match=r"--stats .* built with another tokenizer .*--tokenizer"):
    show.main(["--strategy", "informask", "--text", text, "--stats", str(directory)])
  # Trying the default vocabulary cased warned of config.tokenizer.lowercase, a key show lacks.
  assert "config.tokenizer.lowercase" not in caplog.text
  # A table of that directory given by its own flag: refused alike (it was used as it was).
  for flag in ("--rates", "--ngrams"):
    table = directory / ("rates.npy" if flag == "--rates" else "pmi_ngrams.json")
    strategy = "informask" if flag == "--rates" else "pmi_span"
    with pytest.raises(SystemExit, match=rf"{flag}='.*' lies in statistics built for tokenizer "
                                         r"another .*pass the tokenizer it was built with"):
      show.main(["--strategy", strategy, "--text", text, flag, str(table)])
  # Through a link elsewhere too: its directory was the link's, without a meta.json.
  (tmp_path / "linked.npy").symlink_to(directory / "rates.npy")
  with pytest.raises(SystemExit, match=r"--rates='.*linked.npy' lies in statistics built for "
                                       r"tokenizer another"):
    show.main(["--strategy", "informask", "--text", text, "--rates", str(tmp_path / "linked.npy")])
  with pytest.raises(SystemExit, match=r"--stats: No statistics metadata"):
    show.main(["--strategy", "informask", "--stats", str(tmp_path)])


def test_both_key_words_reach_the_seeds():
  """`jax.random.key(s)` has key data (0, s): keys that differ in their first word only (from
  split / fold_in) must still give other seeds and masks."""
  raw = [jnp.array([a, 7], jnp.uint32) for a in (1, 2)]
  seeds = [np.asarray(prng.example_seeds(k, 64)) for k in raw]
  assert not (seeds[0] == seeds[1]).any(axis=-1).any()
  typed = jax.random.split(jax.random.key(0))
  masker = build("random")
  tokens, _, _ = synthetic_batch(0, batch=64)
  masks = [np.asarray(masker(k, tokens)["mask"]) for k in (*raw, *typed)]
  for i in range(len(masks)):
    for j in range(i):
      assert (masks[i] != masks[j]).any(), (i, j)


def test_every_word_of_a_wider_key_reaches_the_seeds():
  """An rbg key holds 4 words (threefry's 2): keys that differ in their third or fourth word only
  must give other seeds (key_words folds the extra words in), else such keys give one mask."""
  data = np.array([[1, 7, 0, 0], [1, 7, 5, 0], [1, 7, 0, 5]], np.uint32)
  seeds = [np.asarray(prng.example_seeds(jax.random.wrap_key_data(d, impl="rbg"), 64))
           for d in data]
  for i in range(len(seeds)):
    for j in range(i):
      assert not (seeds[i] == seeds[j]).all(axis=-1).any(), (i, j)


def test_random_replacements_cover_every_non_special_id():
  """In a small vocabulary every non-special id is drawn, uniformly, the last one included
  (an off-by-one in the draw or the shift past the specials would leave one out)."""
  specials = (0, 3, 9, 19)  # Amid the ids and at the end: 10..18 and 4..8 shift past them.
  masker = masking.get_masker("random", vocab_size=20, mask_id=3, special_ids=specials,
                              replace_prob=0.0, random_prob=1.0, mask_prob=0.5)
  tokens = np.full((512, 64), 5, np.int32)
  tokens[:, 0], tokens[:, -1] = 0, 19
  out = jax.tree.map(np.asarray, jax.jit(masker)(jax.random.key(4), tokens))
  replaced = out["input_ids"][out["mask"]]
  ordinary = np.setdiff1d(np.arange(20), specials)
  counts = np.bincount(replaced, minlength=20)
  assert not counts[list(specials)].any()
  assert scipy.stats.chisquare(counts[ordinary]).pvalue > 1e-3, counts
  assert counts[18] > 0 and counts[1] > 0


# --- Pieces of the masking package: select, pmi_span, online, words, show -------------------------

def _reference_pmi_segmentation(row, ngram_set, max_tokens, sentence):
  """Greedy left-to-right longest match in plain Python: (unit_start, ngram_len) of one row."""
  length = len(row)
  maskable = ~np.isin(row, SPECIAL)
  new_sentence = maskable & np.concatenate([[False], sentence[1:] != sentence[:-1]])
  starts = maskable & (~CONT[row] | ~np.concatenate([[False], maskable[:-1]]) | new_sentence)
  boundary = np.concatenate([starts | ~maskable, [True]])  # A unit may end before j.
  unit_start, ngram_len = np.zeros(length, bool), np.zeros(length, np.int32)
  i = 0
  while i < length:
    if not maskable[i]:
      i += 1
      continue
    unit_start[i] = True
    for n in range(2, max_tokens + 1):
      if i + n <= length and maskable[i:i + n].all() and boundary[i + n] and \
          not new_sentence[i + 1:i + n].any() and tuple(row[i:i + n].tolist()) in ngram_set:
        ngram_len[i] = n
    i += ngram_len[i] if ngram_len[i] else 1 + np.argmax(boundary[i + 1:])
  return unit_start, ngram_len


def test_pmi_ngram_segmentation_matches_a_brute_force_reference():
  """Rows over a few ids (n-grams overlap and nest), with [SEP] / [PAD] inside and rows that end
  without one; the vocabulary is cut from the rows at random places (some across a special or
  inside a word, which must not match), up to max_ngram_tokens = 6 tokens long. Sentences change
  inside rows with no special token between them (as in a packed document): a match never crosses
  one, and a "##" piece opening a sentence starts a word."""
  rng = np.random.default_rng(31)
  length, max_tokens = 24, 6
  ids = np.array([600, 601, 602, 603, 900, 901, SEP])  # 900, 901: "##" pieces
  p = [0.22, 0.22, 0.15, 0.15, 0.1, 0.1, 0.06]
  source = rng.choice(ids, (64, length), p=p)
  ngrams = set()
  for n in range(2, max_tokens + 1):
    while len(ngrams) < 12 * (n - 1):
      b, s = rng.integers(64), rng.integers(0, length - n + 1)
      ngrams.add(tuple(source[b, s:s + n].tolist()))
  vocab = sorted(ngrams)
  tokens = np.full((256, length), PAD, np.int32)
  for b in range(256):  # N-grams of the vocabulary amid random tokens.
    row = [CLS]
    while len(row) < length:
      row += vocab[rng.integers(len(vocab))] if rng.random() < 0.5 else [rng.choice(ids, p=p)]
    tokens[b] = row[:length]
  ends = rng.integers(length - 6, length + 1, 256)  # length: no [SEP] / [PAD] at the end
  tokens[np.arange(length)[None, :] >= ends[:, None]] = PAD
  sentences = np.cumsum(rng.random((256, length)) < 0.08, axis=1).astype(np.int32)
  sentences[np.isin(tokens, SPECIAL)] = -1
  masker = build("pmi_span", ngrams=vocab, max_ngram_tokens=max_tokens)
  _, aux = jax.jit(lambda k, t, s: masker(k, t, sentence_ids=s, with_aux=True))(
      jax.random.key(0), tokens, sentences)
  unit_start, ngram_len = np.asarray(aux["unit_start"]), np.asarray(aux["ngram_len"])
  lengths, edge, cut = np.zeros(max_tokens + 1, int), 0, 0
  for b in range(len(tokens)):
    want_start, want_len = _reference_pmi_segmentation(tokens[b], ngrams, max_tokens,
                                                       sentences[b])
    one_sentence = _reference_pmi_segmentation(tokens[b], ngrams, max_tokens,
                                               np.zeros(length, np.int32))
    cut += (one_sentence[1] != want_len).any()
    np.testing.assert_array_equal(unit_start[b], want_start, err_msg=f"row {b}: {tokens[b]}")
    np.testing.assert_array_equal(ngram_len[b], want_len, err_msg=f"row {b}: {tokens[b]}")
    lengths += np.bincount(want_len, minlength=max_tokens + 1)
    stops = np.flatnonzero(want_len) + want_len[want_len > 0]
    edge += sum(e == length or tokens[b, e] in SPECIAL for e in stops)
  assert (lengths[2:] > 20).all(), lengths  # Matches of every length, the longest included.
  assert edge > 20, edge  # Matches that end right before a special or at the row's end.
  assert cut > 20, cut  # Rows where a sentence change stopped a match.


def test_pmi_ngram_found_when_another_ngram_shares_its_first_hash():
  """Two n-grams whose first 32-bit hashes collide share a row of the hash table; the second
  hash tells them apart, so both must be found."""
  vocab = 1 << 16
  ids = np.arange(5, vocab, dtype=np.uint32)
  first = prng.mix32(pmi_span_lib._SEED1 ^ ids)  # h1 after the first token
  order = np.argsort(first >> 16, kind="stable")
  i = np.flatnonzero((first[order][1:] >> 16) == (first[order][:-1] >> 16))[0]
  a, c = ids[order[i]], ids[order[i + 1]]
  b = np.uint32(7)
  d = first[order[i]] ^ first[order[i + 1]] ^ b  # mix32(A ^ b) == mix32(C ^ d)
  ngrams = [(int(a), int(b)), (int(c), int(d))]
  h1, h2 = pmi_span_lib.hash_ngrams(ngrams)
  assert h1[0] == h1[1] and h2[0] != h2[1]
  masker = masking.get_masker("pmi_span", vocab_size=vocab, mask_id=MASK, special_ids=SPECIAL,
                              continuation=np.zeros(vocab, bool), ngrams=ngrams)
  tokens = np.array([[CLS, *ngram, 9, SEP] for ngram in ngrams], np.int32)
  _, aux = masker(jax.random.key(0), tokens, with_aux=True)
  np.testing.assert_array_equal(np.asarray(aux["ngram_len"])[:, 1], [2, 2])


def test_pmi_ngram_found_among_three_that_share_their_first_hash():
  """Three n-grams with one 32-bit h1 (found by search; a 2M-n-gram vocabulary holds such a
  triple with probability ~7%), in every order and with one listed twice: each is found (a
  lookup of a sorted table's two slots at the first equal h1 missed the third)."""
  a, b, c = (58214, 23033), (53211, 57415), (2105, 5000)
  h1, _ = pmi_span_lib.hash_ngrams([a, b, c])
  assert h1[0] == h1[1] == h1[2]
  tokens = np.array([[CLS, *g, SEP] for g in (a, b, c)], np.int32)
  for ngrams in ([a, b, c], [c, b, a], [a, a, b, c]):
    masker = masking.get_masker("pmi_span", vocab_size=1 << 16, mask_id=MASK,
                                special_ids=SPECIAL, continuation=np.zeros(1 << 16, bool),
                                ngrams=ngrams)
    _, aux = masker(jax.random.key(0), tokens, with_aux=True)
    np.testing.assert_array_equal(np.asarray(aux["ngram_len"])[:, 1], [2, 2, 2])


def _reference_select_units(keys, words, unit_start, maskable, budget, fill, truncate, seen):
  """select_units in plain Python: the prefix of units in key order within the budget; then
  (fill) the prefix, in the same order, of the units left out no longer than what is left, then
  FILL_STEPS times the next of them that still fits, or (truncate) a window of what is left from
  the first unit left out, at the offset drawn from the low 16 bits of that unit's word.
  `seen["short"]` counts fills that end below BERT's greedy (every unit in key order taken if it
  still fits)."""
  length = len(keys)
  boundary = np.concatenate([unit_start | ~maskable, [True]])
  starts = np.flatnonzero(unit_start)
  lens = {s: 1 + int(np.argmax(boundary[s + 1:])) for s in starts}
  order = sorted(starts, key=lambda s: keys[s])
  taken, used = [], 0
  while len(taken) < len(order) and used + lens[order[len(taken)]] <= budget:
    used += lens[order[len(taken)]]
    taken.append(order[len(taken)])
  rest = order[len(taken):]
  remaining = budget - used
  mask = np.zeros(length, bool)
  if fill:
    greedy = remaining
    for s in rest:
      greedy -= lens[s] if lens[s] <= greedy else 0
    left, extra = remaining, 0
    for s in [s for s in rest if lens[s] <= left]:  # One pass: the prefix that fits.
      if extra + lens[s] > left:
        break
      seen["fit"] += lens[s] == left - extra  # a unit of just the budget left
      extra += lens[s]
      taken.append(s)
    left -= extra
    for _ in range(select.FILL_STEPS):  # Then the next unit that still fits, one at a time.
      fits = [s for s in rest if s not in taken and lens[s] <= left]
      if fits:
        seen["fit"] += lens[fits[0]] == left
        taken.append(fits[0])
        left -= lens[fits[0]]
    seen["short"] += left > greedy
  for s in taken:
    mask[s:s + lens[s]] = True
  if truncate and rest:
    places = lens[rest[0]] - remaining + 1
    shift = (int(words[rest[0]]) & 0xFFFF) * places >> 16
    mask[rest[0] + shift:rest[0] + shift + remaining] = True
    seen["cut"] += 0 < remaining
  return mask & maskable


@pytest.mark.parametrize("fill,truncate", [(True, False), (False, True), (False, False)])
def test_select_units_matches_a_brute_force_reference(fill, truncate):
  """Random units (cut by non-maskable tokens), words and budgets at lengths that are and are not
  powers of two; keys rebuilt here: 16 random bits over ceil(log2 L) position bits."""
  rng = np.random.default_rng(17)
  seen = {"fit": 0, "cut": 0, "short": 0}
  for length in (13, 24, 64):
    n = 300
    maskable = rng.random((n, length)) > 0.1
    unit_start = maskable & (rng.random((n, length)) < 0.45)
    unit_start |= maskable & ~np.concatenate([np.zeros((n, 1), bool), maskable[:, :-1]], 1)
    words = rng.integers(0, 2**32, (n, length), dtype=np.uint64).astype(np.uint32)
    words[:, ::5] = words[:, 1::5][:, :words[:, ::5].shape[1]] | 0xFFFF  # ties in the top bits
    words[:, 3::7] |= np.uint32(0xFFFF0000)  # the largest words share the clamped key 2**16 - 2
    budget = rng.integers(0, maskable.sum(1) + 1).astype(np.int32)
    fn = jax.jit(jax.vmap(lambda u, m, w, k: select.select_units(u, m, w, k, fill=fill,
                                                                 truncate=truncate)))
    got = np.asarray(fn(unit_start, maskable, words, budget))
    pb = int(np.ceil(np.log2(length)))
    keys = (np.minimum(words >> 16, 2**16 - 2).astype(np.int64) << pb) | np.arange(length)
    for b in range(n):
      want = _reference_select_units(keys[b], words[b], unit_start[b], maskable[b], budget[b],
                                     fill, truncate, seen)
      np.testing.assert_array_equal(got[b], want, err_msg=f"L={length}, row {b}")
  assert seen["fit"] > 50 or not fill, seen  # Cases the fill and the cut decide.
  assert seen["short"] == 0, seen  # The fill ends where BERT's greedy does.
  assert seen["cut"] > 50 or not truncate, seen


def test_online_restricted_pmi_vocab_ties_keep_the_lower_ids():
  """pmi_vocab_size keeps the tokens with the most PMI entries, ties going to the lower id."""
  pairs = [(12, 13), (12, 14), (12, 15), (9, 10), (3, 4), (5, 6), (7, 8)]  # 12: 3 partners
  rows, cols = np.array(pairs).T
  pmi = scipy.sparse.coo_matrix((np.ones(14), (np.r_[rows, cols], np.r_[cols, rows])),
                                shape=(20, 20))
  row_of, size = online_lib.restrict_vocab(pmi, pmi_vocab_size=4)
  assert size == 4
  np.testing.assert_array_equal(np.flatnonzero(row_of >= 0), [3, 4, 5, 12])
  np.testing.assert_array_equal(row_of[[3, 4, 5, 12]], [0, 1, 2, 3])


def test_online_sparse_table_from_unsorted_entries_and_bfloat16_dense():
  """build_tables sorts the sparse keys itself (a COO matrix may list its entries in any order):
  every pair's value equals the dense table's; pmi_dtype='bfloat16' stores the dense table in
  bfloat16 (half the memory) with the values rounded to it."""
  dense_pmi = _pmi_matrix()
  order = np.random.default_rng(2).permutation(dense_pmi.nnz)
  shuffled = scipy.sparse.coo_matrix(
      (dense_pmi.data[order], (dense_pmi.row[order], dense_pmi.col[order])), shape=(V, V))
  sparse, size = online_lib.build_tables(shuffled, pmi_table="sparse", pmi_vocab_size=300)
  dense, _ = online_lib.build_tables(dense_pmi, pmi_vocab_size=300)
  rows = jnp.asarray(np.r_[np.arange(size), size])  # every row, and the zero row
  want = np.asarray(online_lib.pair_pmi(dense, rows, size))
  assert np.count_nonzero(want) > 1000
  np.testing.assert_array_equal(np.asarray(online_lib.pair_pmi(sparse, rows, size)), want)
  half, _ = online_lib.build_tables(dense_pmi, pmi_vocab_size=300, pmi_dtype="bfloat16")
  assert half["pmi_dense"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(online_lib.pair_pmi(half, rows, size)), want, rtol=1e-2)


@pytest.mark.parametrize("table", ["dense", "sparse"])
def test_online_pmi_entries_listed_twice_add_up_as_in_scipy(table):
  """A COO matrix may list a pair twice (scipy sums them: that is the matrix's value); the
  masker's table must hold the sum, as the matrix reads, not one of the two entries."""
  rows, cols = np.array([5, 5, 6, 6, 7, 8]), np.array([6, 6, 5, 5, 8, 7])
  values = np.array([1.0, 2.5, 1.0, 2.5, 0.5, 0.5])
  pmi = scipy.sparse.coo_matrix((values, (rows, cols)), shape=(V, V))
  masker = build("informask_online", pmi=pmi, pmi_table=table)
  tables = jax.tree.map(jnp.asarray, masker.tables)
  row_of = np.asarray(tables["pmi_row"])
  size = int(row_of.max()) + 1
  got = np.asarray(online_lib.pair_pmi(tables, jnp.asarray(row_of[[5, 6, 7, 8]]), size))
  np.testing.assert_array_equal(got, pmi.toarray()[np.ix_([5, 6, 7, 8], [5, 6, 7, 8])])
  assert got[0, 1] == 3.5


def test_online_sparse_table_row_limit():
  """uint32 keys row * (R + 1) + col with a sentinel R * (R + 1) + R + 1 past them: R = 65,534
  rows is the most that fits (its largest pairs still look up right); R = 65,535 is refused,
  and the message says what the limit is."""
  vocab = 1 << 16

  def chain(rows):  # Tokens 0..rows-1, each with a PMI entry to the next.
    i = np.arange(rows - 1)
    one_way = scipy.sparse.coo_matrix((i + 1.0, (i, i + 1)), shape=(vocab, vocab))
    return (one_way + one_way.T).tocoo()

  tables, size = online_lib.build_tables(chain(65_534), pmi_table="sparse")
  assert size == 65_534
  rows = jnp.array([65_532, 65_533, 0, 1, size])  # The last: a token without PMI.
  want = np.zeros((5, 5), np.float32)
  want[0, 1] = want[1, 0] = 65_533.0
  want[2, 3] = want[3, 2] = 1.0
  np.testing.assert_array_equal(np.asarray(online_lib.pair_pmi(tables, rows, size)), want)
  with pytest.raises(ValueError, match=r"supports up to 65,534 PMI rows, got 65535"):
    online_lib.build_tables(chain(65_535), pmi_table="sparse")


def test_online_pmi_dtype_of_the_sparse_table_is_refused():
  """pmi_dtype='bfloat16' with the sparse table kept float32 values: half the memory asked for,
  none saved, and no word of it."""
  with pytest.raises(ValueError, match=r"pmi_dtype='bfloat16' applies to pmi_table='dense'"):
    masking.get_masker("informask_online", pmi=_pmi_matrix(), pmi_table="sparse",
                       pmi_dtype="bfloat16", **COMMON)


def test_online_num_candidates_bounds():
  """K = 1 (a random mask of the budget's size) and K = 512 are taken; 513 is refused, in
  get_masker and in check_config (before a run reads its corpus)."""
  from configs import base
  for k in (1, 512):
    masker = masking.get_masker("informask_online", pmi=_pmi_matrix(), num_candidates=k,
                                **COMMON)
    assert dict(masker.options)["num_candidates"] == k
  tokens, _, _ = synthetic_batch(0, batch=8)
  _, aux = masker(jax.random.key(0), tokens[:, :16], with_aux=True)
  assert aux["candidates"].shape == (8, 512, 16)
  c = base.get_base_config("tiny", strategy="informask_online")
  for k in (0, 513):
    with pytest.raises(ValueError, match="num_candidates"):
      masking.get_masker("informask_online", pmi=_pmi_matrix(), num_candidates=k, **COMMON)
    c.masking.num_candidates = k
    with pytest.raises(ValueError, match="num_candidates"):
      masking.check_config(c.masking)


def test_online_candidates_beyond_one_random_stream_are_refused_by_name():
  """K * L candidate keys are drawn from one counter stream of 2**20 words: K = 512 at L = 2049
  passed every check, and the first trace failed with "bits: 1049088 words of stream 16 exceed
  the counter layout" (for informask, after the statistics had counted the corpus)."""
  from configs import base
  from informask_jax import loop, stats
  masker = masking.get_masker("informask_online", pmi=_pmi_matrix(), num_candidates=512, **COMMON)
  with pytest.raises(ValueError, match=r"num_candidates=512 candidates over sequences of 2049 "
                                       r"tokens take 1049088 random words per sequence, more than "
                                       r"the 1048576 of a stream: at this length K can be at most "
                                       r"511\."):
    masker(jax.random.key(0), np.full((1, 2049), 7, np.int32))
  c = base.get_base_config("tiny", strategy="informask_online")
  c.masking.num_candidates, c.data.seq_len, c.model.max_positions = 512, 2049, 2049
  with pytest.raises(ValueError, match=r"^config.masking.num_candidates with config.data.seq_len="
                                       r"2049: num_candidates=512 .* K can be at most 511"):
    loop.check_config(c)
  c.masking.name = "informask"  # Its rates are computed with the online masker at this K.
  with pytest.raises(ValueError, match=r"config.masking.num_candidates=512 \(the K with which the "
                                       r"statistics compute informask's rates, over config.data."
                                       r"seq_len=2049 tokens\): .* K can be at most 511"):
    loop.check_config(c)
  c.data.seq_len = c.model.max_positions = 2048  # 512 * 2048 = 2**20 words: taken.
  stats.build.check_config(c)


@pytest.mark.parametrize("geometric_p,max_span_len", [(1.0, 10), (0.2, 1)])
def test_span_options_at_their_bounds_give_one_word_spans(geometric_p, max_span_len):
  """geometric_p = 1 and max_span_len = 1 are valid (every span one word: whole-word units cut
  to the budget); each is accepted by get_masker and check_config."""
  from configs import base
  c = base.get_base_config("tiny", strategy="span")
  c.masking.update(span_geometric_p=geometric_p, span_max_len=max_span_len)
  masking.check_config(c.masking)
  tokens, out, aux, _ = run("span", "exact", geometric_p=geometric_p, max_span_len=max_span_len)
  np.testing.assert_array_equal(aux["unit_start"], aux["word_start"])
  np.testing.assert_array_equal(out["mask"].sum(1), budgets(tokens))


def test_pmi_span_max_ngram_tokens_bounds():
  for bad in (1, 65, True, 12.0):
    with pytest.raises(ValueError, match=r"max_ngram_tokens must be an integer in \[2, 64\]"):
      build("pmi_span", max_ngram_tokens=bad)
  long = tuple(range(600, 664))  # 64 word starts: an n-gram of the largest length
  masker = build("pmi_span", ngrams=[*NGRAMS, long], max_ngram_tokens=64)
  tokens = np.array([[CLS, *long, SEP]], np.int32)
  _, aux = masker(jax.random.key(0), tokens, with_aux=True)
  assert np.asarray(aux["ngram_len"])[0, 1] == 64


def test_pmi_span_matches_its_longest_ngram_by_default(caplog):
  """The statistics rank n-grams of words, whatever their token count: a 5-word name of 3 pieces
  a word (15 tokens, as a small vocabulary splits rare names) is matched, not skipped by a fixed
  bound of 12 tokens (which dropped some of the best-ranked n-grams with a warning)."""
  name = tuple(t for w in range(5) for t in (600 + w, 800 + 2 * w, 801 + 2 * w))
  with caplog.at_level(logging.WARNING):
    masker = build("pmi_span", ngrams=[*NGRAMS, name])
  assert "skipped" not in caplog.text
  assert dict(masker.options)["max_ngram_tokens"] == 15
  tokens = np.array([[CLS, *name, SEP]], np.int32)
  _, aux = masker(jax.random.key(0), tokens, with_aux=True)
  assert np.asarray(aux["ngram_len"])[0, 1] == 15
  with caplog.at_level(logging.WARNING):  # An explicit bound still holds.
    build("pmi_span", ngrams=[*NGRAMS, name], max_ngram_tokens=12)
  assert "skipped 1 n-grams with fewer than 2 or more than 12 tokens" in caplog.text


def test_shared_options_at_their_bounds():
  """special_ids (with [MASK]) covering all but one id is a valid vocabulary; covering all of it
  is refused. A continuation table longer than the vocabulary (a tokenizer with added tokens)
  is cut to it."""
  masker = masking.get_masker("random", vocab_size=3, mask_id=0, special_ids=(1,),
                              replace_prob=0.0, random_prob=1.0, mask_prob=0.5)
  out = masker(jax.random.key(0), np.array([[1, 2, 2, 2, 2, 1]], np.int32))
  assert int(out["mask"].sum()) == 2  # Replaced by the one non-special id, 2.
  np.testing.assert_array_equal(np.asarray(out["input_ids"]), [[1, 2, 2, 2, 2, 1]])
  with pytest.raises(ValueError, match="cover the whole vocabulary"):
    masking.get_masker("random", vocab_size=2, mask_id=0, special_ids=(1,))
  longer = np.concatenate([CONT, np.ones(24, bool)])
  tokens, sentences, _ = synthetic_batch(3, batch=16)
  masks = [np.asarray(masking.get_masker("whole_word", continuation=table, **COMMON)(
      jax.random.key(1), tokens, sentence_ids=sentences)["mask"]) for table in (CONT, longer)]
  np.testing.assert_array_equal(masks[0], masks[1])


def test_masker_from_config_passes_every_strategy_option():
  """Each config.masking field reaches its strategy (not only fields set to their defaults)."""
  from configs import base
  c = base.get_base_config("tiny", strategy="span")
  c.masking.update(span_geometric_p=0.5, span_max_len=4)
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK,
                                 continuation=CONT)
  assert dict(m.options) == {"geometric_p": 0.5, "max_span_len": 4}
  c = base.get_base_config("tiny", strategy="informask_online")
  c.masking.num_candidates = 3
  m = masking.masker_from_config(c.masking, vocab_size=V, special_ids=SPECIAL, mask_id=MASK,
                                 pmi=_pmi_matrix())
  assert dict(m.options)["num_candidates"] == 3
  c = base.get_base_config("tiny", strategy="pmi_span")
  c.masking.pmi_variant = "trigram"
  with pytest.raises(ValueError, match="pmi_variant"):
    masking.check_config(c.masking)


def test_show_render_marks_each_kind_of_target():
  """[MASK], a random token (orig>new) and a kept token, on the right pieces ("##" joined)."""
  from informask_jax.masking import show
  tok = show.load_tokenizer()
  ids = tok.convert_tokens_to_ids(["[CLS]", "mount", "ever", "##est", "is", "high", "[SEP]"])
  new = list(ids)
  new[1], new[3] = tok.mask_token_id, tok.convert_tokens_to_ids("cat")
  result = {"input_ids": np.array(new), "mask": np.array([0, 1, 0, 1, 1, 0, 0], bool)}
  assert show.render(tok, ids, result, colour=False) == "[mount] ever[est>cat] {is} high"
  assert show.render(tok, ids, result, colour="html") == (
      '<span style="background:#d33;color:#fff">mount</span> ever'
      '<span style="background:#eb3;color:#000">est&gt;cat</span> '
      '<span style="background:#4b4;color:#000">is</span> high')
  ansi = show.render(tok, ids, result, colour=True)
  assert ansi == (f"{show._ANSI['mask']}mount{show._ANSI['end']} ever{show._ANSI['random']}"
                  f"est>cat{show._ANSI['end']} {show._ANSI['keep']}is{show._ANSI['end']} high")
  # Byte-level BPE ("Ġ") and SentencePiece ("▁") mark a word's first piece: the others join it.
  for mark in ("\u0120", "\u2581"):
    vocab = ["<s>", "H", "ell", "o", mark + "world", ",", mark + "the", mark + "m", "at", "</s>",
             "<mask>"]
    marked = types.SimpleNamespace(mask_token_id=10, convert_ids_to_tokens=lambda ids, v=vocab: [
        v[i] for i in ids])
    ids = list(range(10))
    result = {"input_ids": np.array(ids[:7] + [10, 8, 9]),
              "mask": np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)}
    assert show.render(marked, ids, result, colour=False) == "Hello world, the [m]{at}", mark
  # Without colours the text's own brackets (a typed special token) are escaped, so that they
  # do not read as targets; targets' own brackets too.
  ids = tok.convert_tokens_to_ids(["[CLS]", "[", "x", "]", "[MASK]", "{", "[SEP]", "[SEP]"])
  new = list(ids)
  new[1], new[5] = tok.mask_token_id, tok.convert_tokens_to_ids("[")
  result = {"input_ids": np.array(new), "mask": np.array([0, 1, 0, 0, 0, 1, 0, 0], bool)}
  assert show.render(tok, ids, result, colour=False) == r"[\[] x \] \[MASK\] [\{>\[] \[SEP\]"
  assert show.render(tok, ids, result, colour=True).count("\\") == 0
  # The legend is written in the same marks.
  assert show.legend(False).startswith("targets: [word] -> [MASK], [word>new]")
  assert "text's own" not in show.legend(False) and "text's own" in show.legend(False, True)
  assert f"{show._ANSI['mask']}-> [MASK]{show._ANSI['end']}" in show.legend(True)
  assert f"{show._ANSI['keep']}unchanged{show._ANSI['end']}" in show.legend(True)
  assert f'<span style="{show._CSS["random"]}">-&gt; a random token' in show.legend("html")


def test_show_cli_mask_prob(capsys):
  from informask_jax.masking import show
  text = "Mount Everest is the highest mountain on Earth above sea level."  # 12 pieces
  show.main(["--strategy", "random", "--text", text, "--samples", "3", "--no-colour",
             "--mask-prob", "0.5"])
  out = capsys.readouterr().out
  rows = [line.strip() for line in out.splitlines() if line.startswith("  ")]
  assert len(rows) == 3 and all(row.count("[") + row.count("{") == 6 for row in rows), rows
  assert "12 tokens; mask_prob=0.5" in out
  # A text longer than a sequence is cut, and the header says so.
  show.main(["--strategy", "random", "--text", " ".join([text] * 60), "--no-colour"])
  assert ("510 tokens (the first of 720: a sequence holds 512 with [CLS] and [SEP]); "
          in capsys.readouterr().out)


def test_show_counts_an_over_long_text_without_the_tokenizers_length_warning(tmp_path, capfd):
  """A run's tokenizer has model_max_length 512: counting the pieces of a longer --text must not
  print transformers' 'longer than the specified maximum sequence length' warning."""
  from informask_jax.masking import show
  tok = show.load_tokenizer()
  tok.model_max_length = 512
  tok.save_pretrained(tmp_path / "tok")
  show.main(["--strategy", "random", "--tokenizer", str(tmp_path / "tok"), "--no-colour",
             "--text", " ".join(["Mount Everest is high."] * 200)])
  out, err = capfd.readouterr()
  assert "510 tokens (the first of 1000: " in out
  assert "longer than the specified maximum" not in out + err


def test_online_tokens_without_pmi_look_up_the_zero_row():
  """Tokens with no PMI entries, or left out by pmi_vocab_size, add nothing to a score: the
  scores equal the brute force over the table restricted to the kept tokens."""
  rng = np.random.default_rng(8)
  dense = np.where(rng.random((V, V)) < 0.3, rng.random((V, V)) * 4, 0.0)
  dense[300:], dense[:, 300:] = 0.0, 0.0  # Ids 300 and above have no PMI entries ...
  dense[:5], dense[:, :5] = 0.0, 0.0  # ... nor the specials.
  dense = np.triu(dense, 1) + np.triu(dense, 1).T
  pmi = scipy.sparse.coo_matrix(dense)
  row_of, _ = online_lib.restrict_vocab(pmi, pmi_vocab_size=120)
  kept = row_of >= 0
  restricted = np.where(kept[:, None] & kept[None, :], dense, 0.0)
  tokens, sentences, _ = synthetic_batch(5, batch=16, length=32)
  assert (~kept[tokens] & ~np.isin(tokens, SPECIAL)).mean() > 0.5
  for table in ("dense", "sparse"):
    masker = masking.get_masker("informask_online", pmi=pmi, num_candidates=6,
                                pmi_vocab_size=120, pmi_table=table, **COMMON)
    _, aux = masker(jax.random.key(4), tokens, sentence_ids=sentences, with_aux=True)
    for b in range(len(tokens)):
      expect = _brute_force_ir(tokens[b], sentences[b], np.asarray(aux["candidates"][b]),
                               restricted)
      np.testing.assert_allclose(np.asarray(aux["scores"][b]), expect, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["whole_word", "span", "pmi_span"])
def test_a_row_that_starts_with_a_continuation_piece_starts_a_word_there(name):
  """Without [CLS], a "##" piece at position 0 is the first token of a word (not a token of no
  word, which would never be masked)."""
  tokens = np.array([[900, 901, 10, 902, 11, 12, 13, 14, 15, 16]], np.int32)
  masker = build(name, mask_prob=0.5)
  _, aux = masker(jax.random.key(0), tokens, with_aux=True)
  starts = aux["word_start" if name == "span" else "unit_start"]
  np.testing.assert_array_equal(np.asarray(starts)[0], [1, 0, 1, 0, 1, 1, 1, 1, 1, 1])
  masks = jax.jit(masker)(jax.random.key(1), np.repeat(tokens, 64, 0))["mask"]
  assert np.asarray(masks)[:, 0].any()


def test_rates_file_checks_before_the_vocabulary_is_known(tmp_path):
  """train.py's config check reads the table before the tokenizer exists: the fill rate counts
  (a table listing only zero rates is valid with a positive missing_rate), and an id beyond any
  vocabulary is left to the masker's check (no table of max id + 1 entries is allocated)."""
  zeros = tmp_path / "zeros.json"
  zeros.write_text(json.dumps({"5": 0.0, "6": 0.0}))
  informask_lib.check_rates_file(str(zeros), 0.15)
  with pytest.raises(ValueError, match=r"all zeros \(masking.missing_rate=0.0"):
    informask_lib.check_rates_file(str(zeros), 0.0)
  huge = tmp_path / "huge.json"
  huge.write_text(json.dumps({"90000000000000": 0.2, "3": 0.1}))
  informask_lib.check_rates_file(str(huge))
  with pytest.raises(ValueError, match=r"token id 90000000000000 outside the vocabulary"):
    informask_lib.load_rates(str(huge), V)
  table = tmp_path / "table.npy"
  np.save(table, np.zeros((2, V)))
  with pytest.raises(ValueError, match=r"shape \(2, 1000\); expected \(V,\)"):
    informask_lib.check_rates_file(str(table))
  np.save(table, np.r_[np.zeros(V - 1), np.nan])
  with pytest.raises(ValueError, match="1 non-finite"):
    informask_lib.check_rates_file(str(table))


def test_select_units_cut_with_word_starts_keeps_the_budget_and_splits_one_word_at_most():
  """span's cut (truncate with word_start): random word and unit layouts (units start at words),
  budgets from 0 to every maskable token: exactly the budget, only maskable tokens, and the cut
  window starts at a word, so at most one word (the window's last) is split."""
  rng = np.random.default_rng(0)
  cuts = 0
  for length in (7, 24, 64):
    n = 200
    maskable = rng.random((n, length)) > 0.15
    prev = np.concatenate([np.zeros((n, 1), bool), maskable[:, :-1]], 1)
    word_start = maskable & ((rng.random((n, length)) < 0.5) | ~prev)
    unit_start = maskable & ((word_start & (rng.random((n, length)) < 0.4)) | ~prev)
    words = rng.integers(0, 2**32, (n, length), dtype=np.uint64).astype(np.uint32)
    budget = rng.integers(0, maskable.sum(1) + 1).astype(np.int32)
    fn = jax.jit(jax.vmap(lambda u, m, w, k, s: select.select_units(
        u, m, w, k, fill=False, truncate=True, word_start=s)))
    got = np.asarray(fn(unit_start, maskable, words, budget, word_start))
    np.testing.assert_array_equal(got.sum(1), budget)
    assert not (got & ~maskable).any()
    for b in range(n):
      word = np.cumsum(word_start[b]) - 1
      split = [w for w in np.unique(word[maskable[b]])
               if 0 < got[b][(word == w) & maskable[b]].sum() < ((word == w) & maskable[b]).sum()]
      assert len(split) <= 1, (b, split)
      cuts += len(split)
  assert cuts > 50  # Cut words happen: the check above is exercised.


def test_show_refuses_ngrams_with_bigrams_before_reading_them(tmp_path, capsys):
  """Both given, --bigrams used to win and --ngrams was dropped without a word."""
  from informask_jax.masking import show
  with pytest.raises(SystemExit) as exit_info:
    show.main(["--strategy", "pmi_span", "--ngrams", str(tmp_path / "pmi_ngrams.json"),
               "--bigrams", str(tmp_path / "pmi_bigrams.json")])
  assert exit_info.value.code == 2
  assert ("error: --ngrams and --bigrams pick two variants of pmi_span (n-gram, bigram); give one "
          "of them.") in capsys.readouterr().err


def test_show_gives_the_masker_the_sentence_ids_of_training(monkeypatch, capsys):
  """show numbers the sentences of --text as the training data does (split at ". K" and at line
  breaks, -1 on [CLS] / [SEP]) and hands them to the masker: pmi_span's units and
  informask_online's pairs stop at sentence ends, as in training."""
  from informask_jax.masking import show
  parts = ["Mount Everest is high.", "It lies in Nepal.", "K2 is second"]
  text = f"{parts[0]} {parts[1]}\n{parts[2]}"
  tok = show.load_tokenizer()
  sizes = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in parts]
  expected = [-1, *np.repeat(np.arange(3), sizes).tolist(), -1]
  ids, sentence_ids, pieces = show.encode_text(tok, text)
  assert ids == tok(text)["input_ids"] and pieces == sum(sizes)  # WordPiece: the same pieces.
  assert sentence_ids == expected

  def recording_masker(key, token_ids, *, sentence_ids=None):
    missing = jnp.full_like(token_ids, -2)  # What the masker got, returned for render to see.
    return {"input_ids": token_ids, "labels": token_ids, "mask": jnp.zeros_like(token_ids, bool),
            "sentence_ids": missing if sentence_ids is None else sentence_ids}

  seen = []
  render = show.render
  monkeypatch.setattr(show, "build_maskers", lambda *a: [("pmi_span", recording_masker, "")])
  monkeypatch.setattr(show, "render", lambda tok, ids, result, colour: (
      seen.append(result["sentence_ids"].tolist()) or render(tok, ids, result, colour)))
  show.main(["--strategy", "pmi_span", "--text", text, "--samples", "2", "--no-colour"])
  assert seen == [expected, expected]


def _q(path):
  return re.escape(str(path))  # A path inside a pattern.


def _wrong_shape(path):
  scipy.sparse.save_npz(path, scipy.sparse.random(100, 50, density=0.1, format="csr"))


def _with_nan(path):
  scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(([np.nan], ([5], [6])), shape=(V, V)))


_NPY = ("is a NumPy .npy array; give the statistics module's pmi.npz (a scipy.sparse matrix "
        "saved by scipy.sparse.save_npz).")


@pytest.mark.parametrize("write,expected", [
    (_wrong_shape, f"has shape (100, 50); expected ({V}, {V}), a row and a column per token of "
                   "the tokenizer."),
    (_with_nan, "has non-finite entries."),
    (lambda p: np.save(p, np.ones((V, V), np.float32)), _NPY),
    (lambda p: np.save(p, np.array([{}], object), allow_pickle=True), _NPY),
])
def test_a_bad_pmi_file_is_named_with_the_file_that_is_expected(tmp_path, write, expected):
  """Every message names the file. For a .npy, scipy's own text spoke of the context manager
  protocol (dense) or suggested allow_pickle, which runs code from the file (pickled)."""
  path = tmp_path / "pmi.npz"
  with open(path, "wb") as f:  # np.save would append .npy to a bare path.
    write(f)
  with pytest.raises(ValueError) as e:
    masking.get_masker("informask_online", pmi=str(path), **COMMON)
  assert str(e.value) == f"PMI matrix '{path}' {expected}"


@pytest.mark.parametrize("content,match", [
    ({"ngrams": [[1, 2]]}, r"must be a list of lists of token ids, e.g. \[\[2047, 2259\], "
                           r"\.\.\.\]; found \{'ngrams': \[\[1, 2\]\]\}"),
    (["12", "34"], "must be a list of lists of token ids.*; found '12'"),  # Not ids (1, 2).
    ([[5, V]], rf"holds token ids outside \[0, {V}\), the tokenizer's vocabulary"),
    (b"\x93NUMPY binary", r"is not a text file; give the statistics' pmi_ngrams.json"),
])
def test_a_bad_ngram_file_is_named_in_every_message(tmp_path, content, match):
  path = tmp_path / "table.json"
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(json.dumps(content))
  with pytest.raises(ValueError, match=rf"ngrams file '{_q(path)}' {match}"):
    masking.get_masker("pmi_span", continuation=CONT, ngrams=str(path), **COMMON)


def test_show_names_the_flag_of_a_bad_table(tmp_path):
  """show's tables come from flags: an error about the file starts with the flag. (Bad numbers
  are refused by their own flags before any table loads: the test of out-of-range flags.)"""
  from informask_jax.masking import show
  text = "Mount Everest is the highest mountain on Earth."
  small = tmp_path / "small.npz"
  scipy.sparse.save_npz(small, scipy.sparse.eye(10, format="csr"))
  with pytest.raises(SystemExit,
                     match=rf"^error: --pmi: PMI matrix '{_q(small)}' has shape \(10, "):
    show.main(["--strategy", "informask_online", "--text", text, "--pmi", str(small)])
  bigrams = tmp_path / "bigrams.json"
  bigrams.write_text("[[1, 2, 3]]")
  with pytest.raises(SystemExit, match=rf"^error: --bigrams: pmi_span: bigrams file "
                                       rf"'{_q(bigrams)}' must hold \(id, id\) pairs"):
    show.main(["--strategy", "pmi_span", "--text", text, "--bigrams", str(bigrams)])
  rates = tmp_path / "rates.npy"
  np.save(rates, np.ones(5, np.float32))
  with pytest.raises(SystemExit,
                     match=rf"^error: --ngrams: ngrams file '{_q(rates)}' is not a text file"):
    show.main(["--strategy", "pmi_span", "--text", text, "--ngrams", str(rates)])
  # A directory was said not to exist.
  for strategy, flag, message in (("pmi_span", "--ngrams", "ngrams file '{}' is a directory; "
                                   "give the pmi_ngrams.json file in it"),
                                  ("pmi_span", "--bigrams", "bigrams file '{}' is a directory"),
                                  ("informask_online", "--pmi", "PMI matrix '{}' is a directory; "
                                   "give the pmi.npz file in it")):
    with pytest.raises(SystemExit, match=rf"^error: {flag}: {message.format(_q(tmp_path))}"):
      show.main(["--strategy", strategy, "--text", text, flag, str(tmp_path)])


def test_check_config_refuses_a_bad_value_without_first_calling_it_ignored(caplog):
  from configs import base
  c = base.get_base_config("tiny", strategy="informask")
  for bad in ("abc", "inf", "nan"):  # get_masker refuses them all, but only after the data.
    c.masking.missing_rate = bad  # rates_path is empty: a JSON table's fill would go unused.
    with caplog.at_level("WARNING"), pytest.raises(
        ValueError, match=rf"masking.missing_rate='{bad}': expected 'mean' or a finite number"):
      masking.check_config(c.masking)
    assert "ignores" not in caplog.text


def test_show_a_one_word_text_shows_every_strategy(capsys):
  """One word gives the stand-in n-gram table no adjacent pair: pmi_span is skipped, saying why,
  and the other strategies run (the command failed for all of them on the empty table)."""
  from informask_jax.masking import show
  show.main(["--no-colour", "--text", "word", "--samples", "2", "--mask-prob", "0.9"])
  out = capsys.readouterr().out
  blocks = dict(re.findall(r"\n\n(\w+)[^\n]*((?:\n  [^\n]*)*)", out))
  assert list(blocks) == list(show.STRATEGIES)
  for name in ("random", "whole_word", "span", "informask"):
    rows = blocks[name].split("\n")[1:]
    assert len(rows) == 2 and all(re.fullmatch(r"  (\[word(>\S+)?\]|\{word\})", r) for r in rows)
  assert ("\npmi_span  (skipped: a text of fewer than two words has no adjacent word pair to "
          "stand in for a PMI n-gram; give a longer --text, or --ngrams / --stats for the "
          "corpus table)\n") in out and not blocks["pmi_span"]


def test_show_reads_a_statistics_directory_of_a_cased_vocabulary(tmp_path, capsys):
  """--tokenizer STATS --stats STATS with a vocabulary trained with tokenizer.lowercase=False:
  its vocab.txt is read cased, the case the statistics were built with (it was read
  lower-cased and refused as another tokenizer). A mismatch suggests that directory, and one
  with the same vocabulary in neither case says the normalisation differs."""
  import datasets
  import ml_collections

  from informask_jax import tokenization
  from informask_jax.masking import show
  from informask_jax.stats import artifacts
  from informask_jax.stats import build as build_lib
  text = "Mount Everest is the highest mountain on Earth above sea level."
  docs = [text, "The Earth and the Moon.", "Sea level rose on Earth."] * 10
  cased = tokenization.load_tokenizer(
      ml_collections.ConfigDict(dict(name_or_path="", vocab_size=300, lowercase=False)),
      datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}),
      str(tmp_path / "cache"))
  assert cased.tokenize("Earth") == ["Earth"]
  directory = tmp_path / "stats"
  directory.mkdir()
  rates = np.full(len(cased), 1e-6, np.float32)
  rates[cased.convert_tokens_to_ids("Earth")] = 1.0
  np.save(directory / "rates.npy", rates)
  (directory / "id_mask_prob.json").write_text("{}")
  meta = {"format_version": artifacts.FORMAT_VERSION, "vocab_size": len(cased),
          "tokenizer_fingerprint": tokenization.tokenizer_fingerprint(cased),
          "tokenizer_name_or_path": "", "files": {}}
  build_lib._write_vocab(directory, meta, types.SimpleNamespace(
      tokenizer=cased, continuation=tokenization.continuation_table(cased)))  # As stats build.
  for name in ("rates.npy", "id_mask_prob.json"):
    artifacts.record_file(directory, meta, name)
  artifacts.write_meta(directory, meta)
  show.main(["--strategy", "informask", "--text", text, "--samples", "3", "--no-colour",
             "--tokenizer", str(directory), "--stats", str(directory)])
  rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
  assert len(rows) == 3 and all(re.search(r"[\[{]Earth\b", row) for row in rows), rows
  # Without --stats the directory's own meta.json says the case (its vocab.txt was read
  # lower-cased: "earth", and maskers of other ids than training's).
  show.main(["--strategy", "random", "--text", text, "--samples", "1", "--no-colour",
             "--tokenizer", str(directory)])
  rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
  assert len(rows) == 1 and "Earth" in rows[0] and "earth" not in rows[0], rows
  # Another tokenizer (the default bert-base-uncased vocab.txt): the directory's is suggested.
  with pytest.raises(SystemExit, match=rf"built with another tokenizer \(a vocabulary trained on "
                                       rf"the corpus\) than --tokenizer bert-base-uncased \(the "
                                       rf"default\); pass --tokenizer {re.escape(str(directory))}:"
                                       r" a statistics directory built by .* holds the vocab.txt "
                                       r"of its tokenizer\.$"):
    show.main(["--strategy", "informask", "--text", text, "--stats", str(directory)])
  # The same vocabulary, normalised otherwise (here: a fingerprint no reading gives).
  artifacts.write_meta(directory, {**meta, "tokenizer_fingerprint": "another"})
  with pytest.raises(SystemExit, match=r"than --tokenizer .*stats, with the same vocabulary: "
                                       r"--tokenizer is a vocab.txt, read lower-cased or cased, "
                                       r"and the tokenizer of the statistics normalises text "
                                       r"otherwise .*; pass the run's tokenizer"):
    show.main(["--strategy", "informask", "--text", text, "--tokenizer", str(directory),
               "--stats", str(directory)])


def test_show_stand_in_tables():
  """Without corpus tables: the stand-in n-grams are the sentence's words taken two by two
  (pieces kept with their word), and the stand-in rates grow with the token id, 0 on specials."""
  from informask_jax.masking import show
  continuation = np.zeros(40, bool)
  continuation[[12, 13]] = True
  assert show._stand_in_ngrams([10, 11, 12, 20, 21, 13, 22], continuation) == [
      (10, 11, 12), (20, 21, 13)]  # The last word, 22, has no partner.
  assert show._stand_in_ngrams([10], continuation) == []
  rates = show._stand_in_rates(6, (0, 3))
  assert rates.dtype == np.float32 and rates.tolist() == [0, 2, 3, 0, 5, 6]


def test_show_html_escapes_the_text_around_the_targets():
  from informask_jax.masking import show
  tok = show.load_tokenizer()
  ids = tok.convert_tokens_to_ids(["[CLS]", "a", "<", "b", ">", "&", "c", "[SEP]"])
  result = {"input_ids": np.array(ids), "mask": np.zeros(len(ids), bool)}
  assert show.render(tok, ids, result, colour="html") == "a &lt; b &gt; &amp; c"
  result["mask"][6] = True
  assert show.render(tok, ids, result, colour="html") == (
      f'a &lt; b &gt; &amp; <span style="{show._CSS["keep"]}">c</span>')


def test_show_legend_explains_escaped_brackets_only_when_a_row_has_them(capsys):
  from informask_jax.masking import show
  note = "\\[ \\] \\{ \\} are the text's own or a token's"
  for text, explained in (("The [SEP] token ends a sentence of words here.", True),
                          ("The token ends a sentence of plain words here.", False)):
    show.main(["--strategy", "random", "--text", text, "--samples", "1", "--no-colour"])
    out = capsys.readouterr().out
    assert (note in out) == explained, out


def test_show_header_says_when_the_text_is_cut_to_a_sequence(capsys):
  """510 pieces fill a sequence with [CLS] and [SEP]; from 511 on the header names the cut."""
  from informask_jax.masking import show
  text = " ".join(["Mount Everest is high."] * 102)  # 5 pieces each.
  for extra, header in (("", "510 tokens; "),
                        (" x", "510 tokens (the first of 511: a sequence holds 512 with [CLS] "
                               "and [SEP]); ")):
    show.main(["--strategy", "random", "--text", text + extra, "--samples", "1", "--no-colour"])
    assert header in capsys.readouterr().out, extra


def test_show_draws_a_strategy_alone_as_among_the_others(capsys):
  """The seed is folded with the strategy's place in STRATEGIES: --strategy span shows the masks
  of the span rows of the default run (it was folded with the place in the list shown, the same
  for random alone, other draws for the rest)."""
  from informask_jax.masking import show
  text = "Mount Everest is the highest mountain on Earth above sea level."
  flags = ["--text", text, "--samples", "4", "--no-colour"]

  def rows(strategies):
    show.main(["--strategy", strategies, *flags])
    blocks = capsys.readouterr().out.split("\n\n")[1:]
    return {block.splitlines()[0].split()[0]: block.splitlines()[1:] for block in blocks}

  together = rows("all")
  assert set(together) == set(show.STRATEGIES)
  for name in ("whole_word", "span"):
    alone = rows(name)
    assert alone == {name: together[name]} and len(alone[name]) == 4, (alone, together[name])
  assert together["whole_word"] != together["span"]


def test_show_writes_byte_fallback_pieces_and_line_breaks_as_text():
  """Llama's BPE spells a character it lacks as "<0xE6><0x9D><0xB1>", which show printed as
  such; a line break in the text (a byte-level BPE's "Ċ") broke the sample's line."""
  import json as json_lib

  import tokenizers
  import transformers
  from tokenizers import models, pre_tokenizers, trainers

  from informask_jax.masking import show
  bpe = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
  bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
  bpe.train_from_iterator(["Tokyo is big . Tokyo again ."] * 20, trainers.BpeTrainer(
      vocab_size=120, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<mask>"]))
  spec = json_lib.loads(bpe.to_str())
  vocab = spec["model"]["vocab"]
  for b in range(256):
    vocab.setdefault(f"<0x{b:02X}>", len(vocab))
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizers.Tokenizer.from_str(json_lib.dumps(spec)), bos_token="<s>",
      eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
      mask_token="<mask>")
  text = "Tokyo 東京"
  ids = [tok.cls_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.sep_token_id]
  assert "<0xE6>" in tok.convert_ids_to_tokens(ids)
  nothing = {"input_ids": np.array(ids), "mask": np.zeros(len(ids), bool)}
  assert show.render(tok, ids, nothing, colour=False) == text
  # A SentencePiece (Unigram) vocabulary with byte fallback, which says so in its JSON only.
  pieces = ["<unk>", "<s>", "</s>", "<pad>", "<mask>", "\u2581Tokyo", "\u2581"] + [
      f"<0x{b:02X}>" for b in range(256)]
  unigram = tokenizers.Tokenizer(models.Unigram([(p, -1.0) for p in pieces], 0, True))
  unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=unigram, cls_token="<s>", sep_token="</s>", pad_token="<pad>",
      unk_token="<unk>", mask_token="<mask>")
  ids = [tok.cls_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.sep_token_id]
  assert "<0xE6>" in tok.convert_ids_to_tokens(ids)
  nothing = {"input_ids": np.array(ids), "mask": np.zeros(len(ids), bool)}
  assert show.render(tok, ids, nothing, colour=False) == text
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["One line .\nTwo lines ."] * 20, vocab_size=300,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe._tokenizer, cls_token="<s>", sep_token="</s>", pad_token="<pad>",
      unk_token="<unk>", mask_token="<mask>")
  ids = [tok.cls_token_id, *tok("One line .\nTwo", add_special_tokens=False)["input_ids"],
         tok.sep_token_id]
  nothing = {"input_ids": np.array(ids), "mask": np.zeros(len(ids), bool)}
  assert show.render(tok, ids, nothing, colour=False) == "One line .\u23ceTwo"


def test_show_writes_byte_level_bpe_tokens_as_text():
  """A byte-level BPE vocabulary (RoBERTa's) spells bytes with stand-in characters: show wrote
  "CafÃ©" and "[word>Ġnew]". A character whose bytes span two pieces is shown with the piece
  that completes it; a replacement alone, a part of a character as U+FFFD."""
  import tokenizers
  import transformers

  from informask_jax.masking import show
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["Café in the town , and the café again ."] * 20, vocab_size=300,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>",
      sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
  text = "Café Müller and 東京"
  ids = [tok.cls_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.sep_token_id]
  assert "\u00c3\u00a9" in "".join(tok.convert_ids_to_tokens(ids))  # é is stored as "Ã©"...
  assert len(ids) > 2 + len(text.split())  # ... and ü, 東, 京 as bytes over several pieces.
  nothing = {"input_ids": np.array(ids), "mask": np.zeros(len(ids), bool)}
  assert show.render(tok, ids, nothing, colour=False) == text
  # "and" turned into another word.
  at = tok.convert_ids_to_tokens(ids).index("\u0120and")
  new = list(ids)
  new[at] = tok.convert_tokens_to_ids("\u0120town")
  result = {"input_ids": np.array(new), "mask": np.arange(len(ids)) == at}
  assert show.render(tok, ids, result, colour=False) == "Café Müller [and>town] 東京"
  assert show._pieces(tok, [tok.convert_tokens_to_ids("\u00c3")], alone=True) == ["\ufffd"]
  # A target on the first byte of 東 (completed by the next piece) is drawn, not "[]".
  pieces = show._pieces(tok, ids)
  at = pieces.index("東") - 1
  assert pieces[at] == ""
  result = {"input_ids": np.array(ids), "mask": np.arange(len(ids)) == at}
  assert show.render(tok, ids, result, colour=False) == "Café Müller and {\ufffd}東京"


def test_show_draws_a_word_start_mark_alone_at_the_start_as_a_space():
  """A SentencePiece "\u2581" (or byte-level "\u0120") alone as the text's first token, a
  target, was drawn as U+FFFD, the mark of a character's first byte, not as the space it is."""
  import tokenizers
  import transformers
  from tokenizers import models, pre_tokenizers

  from informask_jax.masking import show
  pieces = ["<unk>", "<s>", "</s>", "<pad>", "<mask>", "\u2581", "T", "h", "e", "\u2581cat"]
  unigram = tokenizers.Tokenizer(models.Unigram([(p, -1.0) for p in pieces], 0, False))
  unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=unigram, cls_token="<s>", sep_token="</s>", pad_token="<pad>",
      unk_token="<unk>", mask_token="<mask>")
  ids = [tok.cls_token_id, *tok("The cat", add_special_tokens=False)["input_ids"],
         tok.sep_token_id]
  assert tok.convert_ids_to_tokens(ids)[1] == "\u2581"
  masked = np.array(ids)
  masked[1] = tok.mask_token_id
  result = {"input_ids": masked, "mask": np.arange(len(ids)) == 1}
  assert show.render(tok, ids, result, colour=False) == "[\u2423]The cat"


def test_show_default_text_is_the_first_sentence_of_the_article(tmp_path, monkeypatch):
  from informask_jax.masking import show

  class Distribution:
    def locate_file(self, path):
      return tmp_path / "summaries.json"

  monkeypatch.setattr(show.importlib.metadata, "distribution", lambda name: Distribution())
  (tmp_path / "summaries.json").write_text(json.dumps(
      {show.DEFAULT_ARTICLE: {"extract": " Mount Everest is high. It is in Nepal. "}}))
  assert show.default_text() == "Mount Everest is high."
  (tmp_path / "summaries.json").write_text(json.dumps({"Another article": {"extract": "A."}}))
  assert show.default_text() == show.FALLBACK_TEXT


def test_show_encodes_a_text_without_pieces_as_cls_and_sep():
  from informask_jax.masking import show
  tok = show.load_tokenizer()
  assert show.encode_text(tok, "\u200b") == ([tok.cls_token_id, tok.sep_token_id], [-1, -1], 0)


def test_show_pmi_span_takes_the_ngrams_of_a_statistics_directory(tmp_path, capsys):
  from informask_jax import tokenization
  from informask_jax.masking import show
  from informask_jax.stats import artifacts
  tok = show.load_tokenizer()
  directory = tmp_path / "stats"
  directory.mkdir()
  artifacts.save_json(directory / "pmi_ngrams.json",
                      [tok.convert_tokens_to_ids(["mount", "everest"])])
  artifacts.save_json(directory / "pmi_bigrams.json", [])
  meta = {"format_version": artifacts.FORMAT_VERSION, "vocab_size": len(tok), "files": {},
          "tokenizer_fingerprint": tokenization.tokenizer_fingerprint(tok)}
  for name in ("pmi_ngrams.json", "pmi_bigrams.json"):
    artifacts.record_file(directory, meta, name)
  artifacts.write_meta(directory, meta)
  text = "Mount Everest is the highest mountain on Earth above sea level."
  show.main(["--strategy", "pmi_span", "--text", text, "--samples", "2", "--no-colour",
             "--stats", str(directory)])
  out = capsys.readouterr().out
  assert "\npmi_span\n" in out and "STAND-IN" not in out, out


def test_show_uses_a_table_beside_a_meta_json_that_names_no_tokenizer(tmp_path, capsys):
  """A meta.json of some other tool beside --rates is no statistics directory to check."""
  from informask_jax.masking import show
  tok = show.load_tokenizer()
  rates = np.full(len(tok), 1e-6, np.float32)
  rates[tok.convert_tokens_to_ids("earth")] = 1.0
  np.save(tmp_path / "rates.npy", rates)
  (tmp_path / "meta.json").write_text(json.dumps({"files": {}}))
  show.main(["--strategy", "informask", "--text", "Mount Everest is the highest mountain on "
             "Earth above sea level.", "--samples", "2", "--no-colour",
             "--rates", str(tmp_path / "rates.npy")])
  rows = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
  assert len(rows) == 2 and all(re.search(r"[\[{]earth\b", row) for row in rows), rows


def test_pmi_ngram_starting_with_a_continuation_id_counts_its_first_token_as_a_word():
  """A byte-level BPE vocabulary's sentence-initial word ("The", no "Ġ") is a continuation id,
  yet the statistics store n-grams that start with it. Counted as in a sequence, its first token
  starts a word: (The, ĠNew, ĠYork) is 3 words. Counted as 2, only 2-word spans were looked up
  and the n-gram never matched."""
  the, new, york = 850, 600, 601  # 850 is a continuation id (CONT).
  masker = build("pmi_span", ngrams=[(the, new, york)])
  tokens = np.array([[CLS, the, new, york, 10, SEP]], np.int32)
  _, aux = masker(jax.random.key(0), tokens, with_aux=True)
  np.testing.assert_array_equal(np.asarray(aux["ngram_len"])[0], [0, 3, 0, 0, 0, 0])
