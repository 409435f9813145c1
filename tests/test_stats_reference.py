"""The statistics against a second, plain-Python implementation written from the definitions
(collections.Counter over sentences and words, no NumPy in the references), end to end through
`build_artifacts`: unigram counts, within-sentence pair counts and PMI (the definition of
`stats/pmi.py`: p(x, y) = C[x, y] / P, p(x) = m(x) / P over the ordered pair table; PPMI,
min_pair_count, context smoothing), PMI-Masking's PMI_n of word n-grams (Levine et al. 2021: the
minimum over segmentations into contiguous parts) and its length-quota vocabulary, the bigram
table, InforMask's informative relevance of the masker's candidates (Sadeq et al. 2022), and the
token-specific rates (smoothing, rescaling to mask_prob with clipping at 1, solved here by
bisection). The corpus has the awkward cases: empty documents, one-token sentences, sentence ids
that do not start at 0, sentences that start with a "##" piece, [UNK] inside words."""

import collections
import itertools
import math
import types

import numpy as np
import pytest

from configs import base
from informask_jax import stats
from informask_jax.stats import ngrams, rates
from tests.test_stats import pack  # The same special ids: [CLS] ... [SEP] rows of documents.

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
V = 64
PIECES = range(56, 64)  # "##" continuation pieces
CONT = np.array([i in PIECES for i in range(V)])


def corpus(num_docs=160, seed=0):
  """(token ids, sentence ids) documents from a small Zipf-like vocabulary with collocations."""
  rng = np.random.default_rng(seed)
  words = np.arange(5, 56)
  p = 1.0 / np.arange(1, words.size + 1) ** 0.8
  p /= p.sum()
  docs = [(np.zeros(0, np.int32), np.zeros(0, np.int32))]  # An empty document first.
  for d in range(num_docs):
    ids, sids = [], []
    first = int(rng.integers(0, 3))  # Sentence ids need not start at 0.
    for s in range(int(rng.integers(1, 5))):
      n = int(rng.integers(1, 14))  # One-token sentences too.
      sentence = []
      for w in rng.choice(words, n, p=p).tolist():
        sentence.append(w)
        if rng.random() < 0.15:
          sentence.append(int(rng.choice(PIECES)))
      if rng.random() < 0.25:  # A collocation: 7 8 ##piece 9, at a word boundary.
        starts = [i for i, t in enumerate(sentence) if t not in PIECES] + [len(sentence)]
        at = int(rng.choice(starts))
        sentence[at:at] = [7, 8, 60, 9]
      if rng.random() < 0.1:
        sentence.insert(0, 57)  # A sentence that starts with a piece.
      if rng.random() < 0.05:
        sentence.append(UNK)
      ids += sentence
      sids += [first + s] * len(sentence)
    docs.append((np.array(ids, np.int32), np.array(sids, np.int32)))
    if d == num_docs // 2:
      docs.append((np.zeros(0, np.int32), np.zeros(0, np.int32)))
  return docs


def sentences(docs):
  """Every sentence as a list of token ids: runs of one sentence id within a document."""
  for ids, sids in docs:
    run, prev = [], None
    for t, s in zip(ids.tolist(), sids.tolist(), strict=True):
      if run and s != prev:
        yield run
        run = []
      run.append(t)
      prev = s
    if run:
      yield run


def words_of(sentence):
  """WordPiece words: a token and the "##" pieces after it (a sentence's first token starts a
  word even when it is a piece)."""
  words = []
  for i, t in enumerate(sentence):
    if i == 0 or t not in PIECES:
      words.append([])
    words[-1].append(t)
  return [tuple(w) for w in words]


# --- Plain-Python references --------------------------------------------------------------------


def ref_pair_counts(docs, vocab):
  """C[x, y] = number of ordered position pairs (i != j) of one sentence holding x and y: per
  sentence, n_x * n_y for x != y and n_x * (n_x - 1) for x == y."""
  vocab = set(vocab)
  table = collections.Counter()
  for sentence in sentences(docs):
    n = collections.Counter(t for t in sentence if t in vocab)
    for x, y in itertools.product(n, n):
      table[x, y] += n[x] * n[y] - (n[x] if x == y else 0)
  return +table


def ref_pmi(table, *, min_pair_count, alpha, positive_only):
  total = sum(table.values())
  margin = collections.Counter()
  for (x, _), c in table.items():
    margin[x] += c
  z = sum(m ** alpha for m in margin.values())
  out = {}
  for (x, y), c in table.items():
    times = c // 2 if x == y else c  # Co-occurrences: C[x, x] counts each twice.
    if times < min_pair_count:
      continue
    value = (math.log(c / total) - math.log(margin[x] ** alpha / z)
             - math.log(margin[y] ** alpha / z))
    if positive_only and value <= 1e-9:
      continue
    out[x, y] = value
  return out


def ref_ngram_counts(docs, max_n=5):
  counts, positions = collections.Counter(), collections.Counter()
  for sentence in sentences(docs):
    words = words_of(sentence)
    for n in range(1, max_n + 1):
      for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if any(t in SPECIALS for w in gram for t in w):
          continue
        counts[gram] += 1
        positions[n] += 1
  return counts, positions


def all_splits(n):
  """Every split of range(n) into >= 2 contiguous parts, as lists of (start, stop)."""
  for k in range(1, n):
    for cuts in itertools.combinations(range(1, n), k):
      bounds = (0,) + cuts + (n,)
      yield list(zip(bounds[:-1], bounds[1:], strict=True))


def ref_ngram_vocab(docs, *, size, min_count):
  """PMI_n = log p(g) - max over splits of sum log p(part), p(g) = count / positions of its
  length; kept when PMI_n > 0 and count >= min_count; per length the best by (PMI_n, count,
  token ids) up to a quota of 50/25/12.5/12.5 % of `size`; merged by rank / quota."""
  counts, positions = ref_ngram_counts(docs)
  def log_p(g):
    return math.log(counts[g] / positions[len(g)])
  quota = {n: int(size * share) for n, share in ((2, 0.5), (3, 0.25), (4, 0.125), (5, 0.125))}
  quota[2] += size - sum(quota.values())
  entries = []
  for n, q in quota.items():
    scored = []
    for g, c in counts.items():
      if len(g) == n and c >= min_count:
        score = log_p(g) - max(sum(log_p(g[a:b]) for a, b in split) for split in all_splits(n))
        if score > 1e-9:
          tokens = [t for w in g for t in w]
          scored.append((-score, -c, tokens))
    for rank, (_, _, tokens) in enumerate(sorted(scored)[:q]):
      entries.append(((rank + 0.5) / q, -n, tokens))
  return [tokens for _, _, tokens in sorted(entries, key=lambda e: e[:2])]


def ref_bigrams(docs, *, min_count):
  """PMI of adjacent non-special token pairs of one sentence seen >= min_count times, > 0 only:
  p(ab) over all such pairs, p(a) over all non-special tokens."""
  pairs, tokens = collections.Counter(), collections.Counter()
  for sentence in sentences(docs):
    tokens.update(t for t in sentence if t not in SPECIALS)
    pairs.update((a, b) for a, b in zip(sentence, sentence[1:], strict=False)
                 if a not in SPECIALS and b not in SPECIALS)
  n_pairs, n_tokens = sum(pairs.values()), sum(tokens.values())
  out = {}
  for (a, b), c in pairs.items():
    value = math.log(c / n_pairs) - math.log(tokens[a] / n_tokens) - math.log(tokens[b] / n_tokens)
    if c >= min_count and value > 1e-9:
      out[a, b] = value
  return out


def ref_rates(chosen, seen, unigram, *, measured, mask_prob, smoothing):
  """rate = min(1, c * (chosen + s * mean) / (seen + s)), c by bisection so that the
  unigram-weighted mean over non-special tokens is mask_prob; unmeasured tokens count as unseen."""
  ids = [t for t in range(len(chosen)) if t not in SPECIALS]
  chosen = {t: (chosen[t] if measured[t] else 0) for t in ids}
  seen = {t: (seen[t] if measured[t] else 0) for t in ids}
  mean = sum(chosen.values()) / sum(seen.values())
  smoothed = {t: (chosen[t] + smoothing * mean) / (seen[t] + smoothing) if seen[t] + smoothing
              else mean for t in ids}
  weight = sum(unigram[t] for t in ids)

  def share(c):
    return sum(unigram[t] * min(1.0, c * smoothed[t]) for t in ids) / weight

  lo, hi = 0.0, 1.0
  while share(hi) < mask_prob:
    hi *= 2
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if share(mid) < mask_prob else (lo, mid)
  out = np.zeros(len(unigram))
  for t in ids:
    out[t] = min(1.0, hi * smoothed[t])
  return out


# --- The build, once ----------------------------------------------------------------------------


class _Tok:
  def convert_ids_to_tokens(self, ids):
    return [f"##p{i}" if CONT[i] else f"w{i}" for i in ids]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  import datasets

  docs = corpus()
  pipeline = types.SimpleNamespace(
      tokenizer=_Tok(), continuation=CONT, train=pack(docs, 24),
      tokenized_train=datasets.Dataset.from_dict({"input_ids": [d[0].tolist() for d in docs],
                                                  "sentence_ids": [d[1].tolist() for d in docs]}),
      special_ids=types.SimpleNamespace(pad=PAD, unk=UNK, cls=CLS, sep=SEP, mask=MASK),
      corpus_fingerprint="reference-corpus", tokenizer_fingerprint="reference-tok")
  c = base.get_base_config("tiny")
  c.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  c.data.num_proc = 1
  c.stats.pmi_vocab_size = 40  # Below the eligible tokens: the size cap applies.
  c.stats.min_count = 3
  c.stats.min_pair_count = 2
  c.stats.context_alpha = 0.75
  c.stats.ngram_vocab_size = 40
  c.stats.ngram_min_count = 3
  c.stats.rate_sample_sequences = 0
  c.stats.rate_smoothing = 5.0
  # Neither at its default (16, 0.15): the rate stage's masker must take the configured ones.
  c.masking.num_candidates = 8
  c.masking.mask_prob = 0.2
  recorded = {}
  count_choices = rates.count_choices

  def recording(masker, *args, **kwargs):
    recorded["masker"] = masker
    recorded["chosen"], recorded["seen"] = count_choices(masker, *args, **kwargs)
    return recorded["chosen"], recorded["seen"]

  mp = pytest.MonkeyPatch()
  mp.setattr(rates, "count_choices", recording)
  try:
    directory = stats.build_artifacts(c, pipeline, progress=False)
  finally:
    mp.undo()
  tables = stats.load_artifacts(directory, tokenizer_fingerprint="reference-tok", vocab_size=V)
  return types.SimpleNamespace(docs=docs, config=c, pipeline=pipeline, tables=tables, **recorded)


def ref_unigrams(docs):
  return collections.Counter(t for ids, _ in docs for t in ids.tolist())


def ref_pmi_vocab(docs, config):
  """The pmi_vocab_size most frequent non-special tokens seen >= min_count times (ties: id)."""
  uni = ref_unigrams(docs)
  eligible = [t for t, c in uni.items() if c >= config.stats.min_count and t not in SPECIALS]
  return sorted(eligible, key=lambda t: (-uni[t], t))[:config.stats.pmi_vocab_size]


# --- The tests ----------------------------------------------------------------------------------


def test_unigram_counts_equal_a_counter(built):
  uni = ref_unigrams(built.docs)
  assert built.tables.unigram_counts.tolist() == [uni[t] for t in range(V)]
  counts = built.tables.meta["counts"]
  assert counts["num_tokens"] == sum(uni.values())
  assert counts["num_sentences"] == sum(1 for _ in sentences(built.docs))
  assert counts["num_documents"] == len(built.docs)


def test_pmi_table_equals_the_definition(built):
  s = built.config.stats
  vocab = ref_pmi_vocab(built.docs, built.config)
  assert len(vocab) == s.pmi_vocab_size
  want = ref_pmi(ref_pair_counts(built.docs, vocab), min_pair_count=s.min_pair_count,
                 alpha=s.context_alpha, positive_only=s.positive_only)
  coo = built.tables.pmi.tocoo()
  got = {(int(r), int(c)): float(v) for r, c, v in zip(coo.row, coo.col, coo.data, strict=True)}
  assert set(got) == set(want) and len(want) > 100
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("min_pair_count,alpha,positive_only", [(1, 1.0, False), (3, 1.0, True)])
def test_pmi_options_equal_the_definition(min_pair_count, alpha, positive_only):
  from informask_jax.stats import counting
  from informask_jax.stats import pmi as pmi_lib

  docs = corpus(80, seed=1)
  vocab = sorted({t for ids, _ in docs for t in ids.tolist() if t not in SPECIALS})
  pairs = counting.count_pairs(docs, np.array(vocab), vocab_size=V, min_pair_count=min_pair_count,
                               chunk_tokens=64)
  table = pmi_lib.pmi_table(pairs, vocab_size=V, context_alpha=alpha, positive_only=positive_only)
  want = ref_pmi(ref_pair_counts(docs, vocab), min_pair_count=min_pair_count, alpha=alpha,
                 positive_only=positive_only)
  coo = table.tocoo()
  got = {(int(r), int(c)): float(v) for r, c, v in zip(coo.row, coo.col, coo.data, strict=True)}
  assert set(got) == set(want)
  assert all(got[k] == pytest.approx(v, rel=1e-6, abs=1e-6) for k, v in want.items())


def test_ngram_vocabulary_equals_pmi_masking_definition(built):
  s = built.config.stats
  want = ref_ngram_vocab(built.docs, size=s.ngram_vocab_size, min_count=s.ngram_min_count)
  assert [7, 8, 60, 9] in want[:4]  # The planted collocation ranks near the top.
  assert built.tables.ngrams == want


def test_bigram_table_equals_the_definition(built):
  """The table holds the highest-PMI pairs, highest first, with their PMI (half the n-gram
  vocabulary's size); ties at the cut may go either way."""
  s = built.config.stats
  size = s.ngram_vocab_size // 2
  want = ref_bigrams(built.docs, min_count=s.ngram_min_count)
  assert len(want) > size
  got = [tuple(p) for p in built.tables.bigrams]
  best = sorted(want.values(), reverse=True)[:size]
  np.testing.assert_allclose([want[p] for p in got], best, rtol=1e-12)
  counts = ngrams.count_ngrams(built.docs, vocab_size=V, special_ids=SPECIALS, continuation=CONT,
                               min_count=s.ngram_min_count)
  pairs, scores = ngrams.bigram_table(counts, vocab_size=V, size=size)
  assert [tuple(p) for p in pairs.tolist()] == got
  np.testing.assert_allclose(scores, best, rtol=1e-12)


def test_informative_relevance_of_every_candidate_equals_the_definition(built):
  """IR(M) = sum over masked i and unmasked j of one sentence of PMI(x_i, x_j), on the masker
  the rate stage ran: masking.num_candidates candidates of exactly round(masking.mask_prob * n)
  tokens each; the kept mask is the best candidate."""
  import jax

  pmi = built.tables.pmi.todok()
  rows = built.pipeline.train
  ids, sids = rows["token_ids"][:16], rows["sentence_ids"][:16]
  out, aux = built.masker(jax.random.key(3), ids, sentence_ids=sids, with_aux=True)
  candidates, scores = np.asarray(aux["candidates"]), np.asarray(aux["scores"])
  mask_prob = built.config.masking.mask_prob
  assert candidates.shape[1] == built.config.masking.num_candidates
  for b in range(ids.shape[0]):
    maskable = [t not in SPECIALS for t in ids[b].tolist()]
    for k in range(candidates.shape[1]):
      m = candidates[b, k]
      assert m.sum() == round(mask_prob * sum(maskable))
      assert not (m & ~np.array(maskable)).any()
      ir = sum(float(pmi[int(ids[b, i]), int(ids[b, j])])
               for i in range(ids.shape[1]) for j in range(ids.shape[1])
               if m[i] and not m[j] and maskable[j] and sids[b, i] == sids[b, j] >= 0)
      assert scores[b, k] == pytest.approx(ir, rel=1e-5, abs=1e-5), (b, k)
    assert np.array_equal(np.asarray(out["mask"][b]), candidates[b, int(np.argmax(scores[b]))])


def test_rates_equal_the_definition(built):
  s, t = built.config.stats, built.tables
  uni = ref_unigrams(built.docs)
  measured = [bool(built.tables.pmi[i].nnz) for i in range(V)]
  want = ref_rates(built.chosen.tolist(), built.seen.tolist(), [uni[i] for i in range(V)],
                   measured=measured, mask_prob=built.config.masking.mask_prob,
                   smoothing=s.rate_smoothing)
  np.testing.assert_allclose(t.rates, want, rtol=2e-6, atol=1e-7)
  # seen: every maskable occurrence of the packed rows (all rows: rate_sample_sequences=0).
  packed = built.pipeline.train["token_ids"]
  assert built.seen.tolist() == [int(np.sum(packed == i)) if i not in SPECIALS else 0
                                 for i in range(V)]


@pytest.mark.parametrize("mask_prob,smoothing,seed", [(0.15, 10.0, 0), (0.4, 0.0, 1),
                                                      (0.7, 0.0, 2), (0.05, 1.0, 3)])
def test_rate_rescaling_and_clipping_equal_bisection(mask_prob, smoothing, seed):
  rng = np.random.default_rng(seed)
  seen = rng.integers(0, 500, V)
  seen[list(SPECIALS)] = 0
  chosen = rng.binomial(seen, rng.beta(0.5, 2.0, V))  # Skewed: some tokens near 1.
  unigram = seen * 2 + rng.integers(0, 30, V)
  measured = rng.random(V) < 0.8
  got = rates.finalize_rates(chosen, seen, unigram_counts=unigram, special_ids=SPECIALS,
                             mask_prob=mask_prob, smoothing=smoothing, measured=measured)
  want = ref_rates(chosen.tolist(), seen.tolist(), unigram.tolist(), measured=measured.tolist(),
                   mask_prob=mask_prob, smoothing=smoothing)
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
  if mask_prob >= 0.4:
    assert np.sum(want >= 1.0) > 0  # The clipping was exercised.
