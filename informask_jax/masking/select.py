"""Exact-budget selection without sorting, and the unit (word / span / PMI n-gram) machinery.

XLA's sort and top-k are slow on CPU (argsort of 256 x 512 floats: ~20 ms on 2 cores), so targets
are chosen by a bitwise search for a key threshold instead: `threshold_select` finds the largest t
with sum(weight[key < t]) <= budget, one masked sum per key bit, in a loop (unrolled, it ran
5-50% slower on XLA:CPU). With weight 1 per token this selects exactly `budget` tokens (the ones
with the smallest keys, i.e. a uniformly random subset for random keys); with weight = unit
length at unit starts it selects the longest prefix of units, in random key order, whose token
count stays within the budget.

All functions here work on one sequence (last axis L) and are vmapped by the caller.
"""

import jax
import jax.numpy as jnp
import numpy as np

from informask_jax.masking import prng
from informask_jax.masking.prng import uniform

RANDOM_KEY_BITS = 16  # Random bits per selection key; the position fills the low bits.
# select_units' fill, after the prefix of units within the budget: one more pass takes, in key
# order, the units that still fit until one does not; then FILL_STEPS steps take one unit each,
# the next in key order that still fits. Together they take what BERT's greedy (every unit in
# key order, taken if it still fits) takes unless it takes more than FILL_STEPS units after the
# pass. (The pass alone left 157 of 2,000 rows of 20 words short with a word that still fit.) A
# step is one reduction, a pass one per key bit (~25): three passes, as before, cost whole_word
# 1.4x as much at 256 x 512 and ended short of the greedy as often in a simulation
# (bench/RESULTS.md).
# A fixed count, not a while_loop: under vmap and a sharded batch its exit test would be an
# all-reduce per iteration.
FILL_STEPS = 4


def position_bits(length):
  return max(1, int(np.ceil(np.log2(length))))


def unique_keys(words, length):
  """uint32 keys, unique within a sequence: 16 random bits, then the position (tie-break).

  Returns (keys, nbits) with keys < 2**nbits - 1 (`threshold_select` cannot select the key
  2**nbits - 1, so the random part stops at 2**16 - 2). Two tokens share the random part with
  probability ~2**-16, and only then does the lower position win: a negligible bias.
  """
  pb = position_bits(length)
  pos = jnp.arange(length, dtype=jnp.uint32)
  top = np.uint32((1 << RANDOM_KEY_BITS) - 2)
  keys = (jnp.minimum(words >> (32 - RANDOM_KEY_BITS), top) << pb) | pos
  return keys, RANDOM_KEY_BITS + pb


def threshold_select(keys, weights, budget, nbits):
  """Selects key < t for the largest t with sum(weights[keys < t]) <= budget.

  keys: uint32[..., L] < 2**nbits - 1 (t is at most 2**nbits - 1, so a key of that value could
  never be selected); weights: int32[..., L] >= 0 summing below 2**24 (0 for non-candidates,
  whose keys do not matter); budget: int32[...]. Returns (selected bool[..., L], used int32[...]).
  """
  # The masked sums as dot products in float32: exact (integers below 2**24, HIGHEST precision)
  # and on XLA:CPU 5-30% faster per masker call than a reduction (interleaved A/B, exact budget
  # of random and informask at 32 x 128 - 256 x 512; bitwise the same masks).
  w = weights.astype(jnp.float32)
  limit = jnp.asarray(budget).astype(jnp.float32)

  def step(i, t):  # One key bit, from the highest; a loop over bits, not over B or L.
    cand = t | (jnp.uint32(1) << (nbits - 1 - i).astype(jnp.uint32))
    below = (keys < cand[..., None]).astype(jnp.float32)
    total = jnp.einsum("...l,...l->...", below, w, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(total <= limit, cand, t)

  # Zeros made of the inputs (XLA folds them to constants): under shard_map the carry then varies
  # over the devices as they do, which plain zeros did not ("carry input and output types differ").
  zeros = (keys[..., 0] | weights[..., 0].astype(jnp.uint32) | limit.astype(jnp.uint32)) & 0
  t = jax.lax.fori_loop(0, nbits, step, zeros)
  selected = (keys < t[..., None]) & (weights > 0)
  return selected, jnp.sum(jnp.where(selected, weights, 0), axis=-1)


def cumsum(x):
  # lax.cumsum compiles in a fraction of associative_scan's time (it matters for the tests).
  return jax.lax.cumsum(x, axis=x.ndim - 1)


def word_starts(maskable, continuation, sentences):
  """A maskable token that is not a continuation piece ("##"; in BPE and SentencePiece, one
  without the word-start mark), the first maskable token after a special, or a sentence's first
  token (sentence_starts), as the statistics count words."""
  prev = jnp.concatenate([jnp.zeros_like(maskable[..., :1]), maskable[..., :-1]], axis=-1)
  return maskable & (~continuation | ~prev) | sentence_starts(sentences, maskable)


def sentence_starts(sentences, maskable):
  """bool[L]: a maskable token whose sentence id differs from the token before it.

  The statistics count n-grams and bigrams within sentences, so a unit never crosses one: in a
  packed row, sentences of a document follow each other with no special token between them. A
  line break ends a sentence, and a byte-level BPE or SentencePiece token after one carries no
  word-start marker (the break's own token took the whitespace): the sentence start starts its
  word.
  """
  changed = jnp.concatenate([jnp.zeros((1,), bool), sentences[1:] != sentences[:-1]])
  return maskable & changed


def next_boundary(boundary):
  """For each position i, the smallest j > i with boundary[j], or L."""
  length = boundary.shape[-1]
  pos = jnp.arange(length, dtype=jnp.int32)
  at = jnp.where(boundary, pos, length)
  shifted = jnp.concatenate([at[1:], jnp.array([length], jnp.int32)])
  return jax.lax.cummin(shifted, axis=0, reverse=True)


def unit_lengths(unit_start, maskable):
  """Token length of each unit at its start position, 0 elsewhere. A unit runs from its start
  up to the next unit start or non-maskable token."""
  pos = jnp.arange(unit_start.shape[-1], dtype=jnp.int32)
  end = next_boundary(unit_start | ~maskable)
  return jnp.where(unit_start, end - pos, 0)


def unit_owner(unit_start):
  """For each position, the start position of the unit it lies in (-1 before the first)."""
  pos = jnp.arange(unit_start.shape[-1], dtype=jnp.int32)
  return jax.lax.cummax(jnp.where(unit_start, pos, -1), axis=0)


def expand_units(selected_starts, unit_start, maskable):
  """Token mask of the units whose start is selected."""
  owner = unit_owner(unit_start)
  return maskable & (owner >= 0) & selected_starts[jnp.maximum(owner, 0)]


def select_units(unit_start, maskable, words, budget, *, fill=True, truncate=False,
                 word_start=None):
  """Target mask covering whole units drawn in random order until the token budget.

  The prefix of units (in key order) whose total stays within `budget` is taken. Then either
  `fill`: one more pass and FILL_STEPS single-unit steps take, in the same order, further units
  that still fit (units stay whole, count <= budget, as BERT's whole-word masking); or
  `truncate`: of the first unit that did not fit, a window of the remaining budget's length from
  a random token of the unit, moved back to the start of its word when `word_start` is given, is
  taken (count == budget, one word cut at most, as SpanBERT's cut of a span drawn from a random
  anchor). The start is random so that unit starts are not favoured: a unit always starts after
  [CLS] and [SEP], and keeping the cut unit's first tokens made the first word of a short
  sequence a target 3x as often as the others. (Units are drawn per unit, not per token, so
  the shorter units at a row's edges still fit the budget more often: see words.py.)
  """
  length = unit_start.shape[-1]
  keys, nbits = unique_keys(words, length)
  lens = unit_lengths(unit_start, maskable)  # (L,)
  sel, used = threshold_select(keys, lens, budget, nbits)
  remaining = budget - used
  if fill:
    lens2 = jnp.where(~sel & (lens <= remaining), lens, 0)
    sel2, used2 = threshold_select(keys, lens2, remaining, nbits)
    sel, remaining = sel | sel2, remaining - used2
    none = np.uint32((1 << nbits) - 1)  # Above every key: no unit fits.
    for _ in range(FILL_STEPS):
      fits = ~sel & (lens > 0) & (lens <= remaining)
      take = fits & (keys == jnp.min(jnp.where(fits, keys, none)))  # Keys are unique.
      sel, remaining = sel | take, remaining - jnp.sum(jnp.where(take, lens, 0))
  mask = expand_units(sel, unit_start, maskable)
  if truncate:
    # The unit right after the accepted prefix: smallest key among the units left out.
    left = unit_start & ~sel & (lens > 0)
    big = np.uint32((1 << nbits) - 1)
    first = jnp.argmin(jnp.where(left, keys, big))
    owner = unit_owner(unit_start)
    pos = jnp.arange(length, dtype=jnp.int32)
    # The window's first token, uniform over the lens - remaining + 1 places where it fits, from
    # the low 16 bits of the unit's word (its key holds the top 16): (w * n) >> 16, n < 2**16.
    places = jnp.maximum(lens[first] - remaining + 1, 1).astype(jnp.uint32)
    start = first + (((words[first] & np.uint32(0xFFFF)) * places) >> np.uint32(16)).astype(
        jnp.int32)
    if word_start is not None:  # Back to its word's start (the unit's start is a word start).
      start = jnp.max(jnp.where(word_start & (pos <= start), pos, first))
    cut = maskable & (owner == first) & left[first] & (pos >= start) & (pos < start + remaining)
    mask = mask | cut
  return mask


def unit_decisions(seed, unit_start):
  """float[L]: one [MASK] / random / keep draw per unit, shared by all of its tokens.

  SpanBERT (`--replacement-method span`) and PMI-Masking decide the corruption per span / unit,
  not per token: a masked span is all [MASK], all random tokens, or all kept.
  """
  u = uniform(prng.bits(seed, prng.DECIDE, (unit_start.shape[-1],)))
  return u[jnp.maximum(unit_owner(unit_start), 0)]


def bernoulli_units(unit_start, maskable, words, prob):
  """Each unit independently with probability `prob` (expected token fraction = prob)."""
  return expand_units(unit_start & (uniform(words) < prob), unit_start, maskable)
