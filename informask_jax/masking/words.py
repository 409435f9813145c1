"""Word-level strategies: whole-word masking and SpanBERT's span masking.

Words are derived on device from the `continuation` table (True for WordPiece "##" pieces): a word
starts at every maskable token that is not a continuation, or that follows a special token.

Budget rule (exact): units are drawn in random order and taken while the token count stays within
round(mask_prob * n_maskable).
  whole_word  skips a unit that would exceed the budget and goes on with the next ones that
              still fit, as BERT's whole-word masking (select.FILL_STEPS): words are never
              split and the count never exceeds the budget.
  span        cuts the first span that does not fit to the remaining budget, as SpanBERT does:
              exactly the budget, at the price of one span (possibly one word) cut short. The
              cut keeps the tokens from a random word of the span on, not its first ones: the
              words that always start a span (after [CLS] / [SEP]) were a target 3.4x as often
              as the others in a 6-word row. Edge words stay favoured in short rows (about
              1.5x in rows of 6-7 one-token words, the last word as much as the first; a few
              percent in full 128-token rows): spans touching [CLS] / [SEP] are cut short by
              them, and a shorter span fits the budget more often. budget=bernoulli is flat.

Corruption: whole_word decides [MASK] / random / keep per token, as BERT's whole-word masking;
span decides it per span (all [MASK], all random, or all kept), as SpanBERT trains
(`--replacement-method span`), adjacent selected spans counting as one, as SpanBERT merges them.

SpanBERT draws span lengths (in words) from Geometric(p) restricted to 1..max_span_len and
renormalised (mean 3.8 words for p = 0.2, max 10) and starts spans at random words. Here the word
sequence is cut into consecutive segments with i.i.d. lengths from that distribution (positions
of the cuts are random because the lengths are), segments are also cut at special tokens, and
whole segments are then drawn as units: the same span-length law, computed without a loop. Not
the same runs, though: segments tile the words, so two drawn side by side always touch and join
(the 80/10/10 decision then covers both), where SpanBERT's randomly started spans touch less
often. In 256-token rows at p = 0.2, max 10 (a simulation against SpanBERT's masking code): the
joined runs average 4.15 words against 3.79, 9.2 runs a row against 10.0, and 2.8% of runs are
over 10 words against 1.3%.
"""

import jax.numpy as jnp
import numpy as np

from informask_jax.masking import prng, select


def _units_mask(settings, seed, unit_start, maskable, budget, *, truncate, word_start=None):
  words = prng.bits(seed, prng.UNITS, (unit_start.shape[-1],))
  if settings.budget == "bernoulli":
    return select.bernoulli_units(unit_start, maskable, words, settings.mask_prob)
  return select.select_units(unit_start, maskable, words, budget, fill=not truncate,
                             truncate=truncate, word_start=word_start)


def make_whole_word(settings):
  def select_targets(tables, seed, tokens, sentences, maskable, budget):
    starts = select.word_starts(maskable, tables["continuation"][tokens], sentences)  # (L,)
    target = _units_mask(settings, seed, starts, maskable, budget, truncate=False)
    return target, {"unit_start": starts}
  return select_targets


MAX_SPAN_WORDS = 1024  # SpanBERT clips at 10 words.


def span_length_cdf(geometric_p, max_span_len):
  """CDF of SpanBERT's span length: Geometric(p) on 1..max_span_len, renormalised."""
  k = np.arange(1, max_span_len + 1)
  pmf = geometric_p * (1.0 - geometric_p) ** (k - 1)
  return np.cumsum(pmf / pmf.sum())


def check_span_options(geometric_p, max_span_len):
  if isinstance(geometric_p, bool) or not isinstance(
      geometric_p, int | float | np.integer | np.floating) or \
      not 0.0 < geometric_p <= 1.0:
    raise ValueError(f"geometric_p (masking.span_geometric_p) must be in (0, 1], got "
                     f"{geometric_p!r}.")
  # Each token compares its draw with all max_span_len CDF entries, so a huge bound costs
  # memory (L x max_span_len per sequence) for spans no sequence can hold.
  if isinstance(max_span_len, bool) or not isinstance(max_span_len, int | np.integer) or \
      not 1 <= max_span_len <= MAX_SPAN_WORDS:
    raise ValueError(f"max_span_len (masking.span_max_len) must be an integer in "
                     f"[1, {MAX_SPAN_WORDS}], got {max_span_len!r}.")


def make_span(settings, geometric_p, max_span_len):
  cdf = span_length_cdf(geometric_p, max_span_len)[:-1].astype(np.float32)

  def select_targets(tables, seed, tokens, sentences, maskable, budget):
    length = tokens.shape[-1]
    starts = select.word_starts(maskable, tables["continuation"][tokens], sentences)  # (L,)
    word_index = select.cumsum(starts.astype(jnp.int32)) - 1  # (L,) index of each token's word
    u = prng.uniform(prng.bits(seed, prng.LENGTHS, (length,)))
    span_words = 1 + jnp.sum(u[:, None] > cdf[None, :], axis=-1)  # (L,) i.i.d. span lengths
    first_word = select.cumsum(span_words) - span_words  # (L,) word index where span k begins
    begins = jnp.zeros((length,), bool).at[first_word].set(True, mode="drop")
    prev = jnp.concatenate([jnp.zeros((1,), bool), maskable[:-1]])
    unit_start = starts & (begins[jnp.clip(word_index, 0, length - 1)] | ~prev)
    target = _units_mask(settings, seed, unit_start, maskable, budget, truncate=True,
                         word_start=starts)
    # One decision per run of consecutive targets: adjacent spans merge first, as SpanBERT's
    # merge_intervals does.
    run_start = target & ~jnp.concatenate([jnp.zeros((1,), bool), target[:-1]])
    return target, {"unit_start": unit_start, "word_start": starts,
                    "decide": select.unit_decisions(seed, run_start)}
  return select_targets
