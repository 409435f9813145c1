"""PMI-Masking (Levine et al., ICLR 2021) and the InforMask repository's bigram variant.

variant="ngram": the sequence is segmented left to right into units by the longest match against
a vocabulary of high-PMI word n-grams (n = 2..5 words, each stored as its WordPiece tokens, at most
`max_ngram_tokens`: by default the vocabulary's longest, up to 64); tokens outside any match form
whole-word units. A match must start at a word start and end at a word boundary, within one
sentence (`sentence_ids`: the statistics count n-grams within sentences). On device: two 32-bit
chained hashes of the token spans of whole words starting at each word start (as many words as
the vocabulary's n-grams have, at most max_ngram_tokens tokens), looked up in a hash table of the
vocabulary's hashes (`hash_buckets`; a false match needs both hashes to collide with one of the
N entries: ~N * 2**-64 per lookup, about 0.03 false units over a paper-length run at N = 1M).
The greedy left-to-right segmentation is a chain of jumps (each unit start points to
the next); its starts are found by pointer doubling, log2(L) gathers, with no loop over L.

variant="bigram": the InforMask repository's simpler scheme extends a random start left and right
while adjacent token pairs are in a high-PMI bigram table; the units it can produce are the maximal
runs of linked pairs, so those runs are the units here (a "##" piece is always linked to its word,
so words are never split); a pair across sentences is never linked. Under the exact budget a run
is drawn as a random start position would hit it: its key is the smallest of its tokens' random
keys, so a run of k tokens comes first about k times as often as a lone token (over a whole
budget, drawing a fraction q of the positions hits it with probability about 1 - (1 - q)^k, and
a long run that no longer fits the budget is skipped: measured 1.75x for k = 2 and 3.3x for
k = 6 at mask_prob 0.15 on the tiny corpus). Under the Bernoulli
budget each run is a target with probability mask_prob, which keeps the expected fraction.

Corruption is decided per unit, as PMI-Masking does: a masked unit is all [MASK], all random
tokens, or all kept.

Budget (exact): units are drawn in random order while the token count stays within
round(mask_prob * n_maskable), then the remaining budget is filled with the next units that fit:
units are never split and the count never exceeds the budget. Bernoulli: each unit independently
with probability mask_prob.
"""

import json
import logging
import os

import jax.numpy as jnp
import numpy as np

from informask_jax.masking import prng, select

log = logging.getLogger(__name__)

VARIANTS = ("ngram", "bigram")
_SEED1 = np.uint32(0x243F6A88)
_SEED2 = np.uint32(0x85A308D3)


def check_variant(variant) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"pmi_span variant (masking.pmi_variant) must be one of {VARIANTS}, got "
                     f"{variant!r}.")


def _read_json_list(value, what):
  """(token-id tuples, the name of the table for errors: "ngrams file '...'" when read from a
  file, so that every later message says which file to fix)."""
  where = what
  if isinstance(value, str | os.PathLike):
    path = os.fspath(value)
    where = f"{what} file {path!r}"
    if os.path.isdir(path):
      raise ValueError(f"{where} is a directory; give the pmi_{what}.json file in it.")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{where} does not exist.")
    with open(path, encoding="utf-8") as f:
      try:
        value = json.load(f)
      except UnicodeDecodeError:  # A binary file, e.g. a rates.npy given for the n-grams.
        raise ValueError(f"{where} is not a text file; give the statistics' "
                         f"pmi_{what}.json (a JSON list of token-id lists).") from None
      except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from None
  if value is None:
    raise ValueError(f"pmi_span needs {what}= (a list of token-id lists or a JSON file of them).")
  return [_token_tuple(item, where) for item in _sequence(value, where)], where


def _sequence(value, where):
  # Only real sequences: a string or a dict iterates too, and "12" would read as ids (1, 2).
  if not isinstance(value, list | tuple | np.ndarray):
    raise ValueError(f"{where} must be a list of lists of token ids, e.g. [[2047, 2259], ...]; "
                     f"found {_short(value)}.")
  return value


def _token_tuple(item, where):
  item = _sequence(item, where)
  if not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in item):
    raise ValueError(f"{where} must be a list of lists of token ids, e.g. [[2047, 2259], ...]; "
                     f"found {_short(item)}.")
  return tuple(int(t) for t in item)


def _short(item):
  text = repr(item.tolist() if isinstance(item, np.ndarray) else item)  # Cut: one line.
  return text if len(text) <= 60 else text[:57] + "..."


def hash_ngrams(ngrams):
  """(h1, h2) uint32 chained hashes of token tuples, as computed on device."""
  h1 = np.full(len(ngrams), _SEED1, np.uint32)
  h2 = np.full(len(ngrams), _SEED2, np.uint32)
  longest = max(len(g) for g in ngrams)
  padded = np.zeros((len(ngrams), longest), np.uint32)
  lengths = np.array([len(g) for g in ngrams])
  for i, g in enumerate(ngrams):
    padded[i, :len(g)] = g
  out1, out2 = h1.copy(), h2.copy()
  for k in range(longest):
    h1 = prng.mix32(h1 ^ padded[:, k])
    h2 = prng.mix32(h2 + padded[:, k])
    done = lengths == k + 1
    out1[done], out2[done] = h1[done], h2[done]
  return out1, out2


# The longest match in tokens that pmi_span looks up (the hashes of the spans from each word
# start are chained over this many tokens at most).
MAX_NGRAM_TOKENS = 64


def ngram_tables(ngrams, vocab_size, max_ngram_tokens, continuation):
  """(device tables, (fewest, most) words of an n-gram, max_ngram_tokens). Words are counted as
  in a sequence: the first token starts one, and so does every later token that is not a "##"
  piece. max_ngram_tokens=None takes the table's longest n-gram (up to MAX_NGRAM_TOKENS): the
  statistics rank n-grams of words, whatever their token count, and a fixed bound of 12 dropped
  some of the best-ranked ones (rare names, split into many pieces by a small vocabulary)."""
  ngrams, where = _read_json_list(ngrams, "ngrams")
  if max_ngram_tokens is None:
    max_ngram_tokens = max(2, min(max((len(g) for g in ngrams), default=2), MAX_NGRAM_TOKENS))
  kept = [g for g in ngrams if 2 <= len(g) <= max_ngram_tokens]
  if len(kept) < len(ngrams):
    log.warning("pmi_span: skipped %d n-grams with fewer than 2 or more than %d tokens.",
                len(ngrams) - len(kept), max_ngram_tokens)
  if not kept:
    raise ValueError(f"pmi_span: the n-gram vocabulary ({where}) is empty: no frequent word "
                     "n-gram of the corpus has a positive PMI (more text, or a lower "
                     "stats.ngram_min_count), or masking.pmi_variant='bigram' uses the bigrams.")
  flat = np.concatenate([np.asarray(g) for g in kept])
  if flat.min() < 0 or flat.max() >= vocab_size:
    raise ValueError(f"pmi_span: {where} holds token ids outside [0, {vocab_size}), the "
                     "tokenizer's vocabulary.")
  first = np.cumsum([0] + [len(g) for g in kept[:-1]])
  word_start = ~np.asarray(continuation, bool)[flat]
  word_start[first] = True
  words = np.add.reduceat(word_start.astype(np.int32), first)
  return (hash_buckets(*hash_ngrams(kept)), (int(words.min()), int(words.max())),
          max_ngram_tokens)


def hash_buckets(h1, h2):
  """The n-gram hashes as a hash table: row b of ngram_h1 / ngram_h2 (uint32[R, W]) holds the
  n-grams with h1 mod R = b, R = ceil(count / 2) (at least 2), W the fullest row's count (8 for
  20k n-grams, 11-13 for 200k-2M). A lookup compares one row's W slots at once, where a binary
  search over the sorted hashes took log2(count) dependent steps. An empty slot of row b holds
  h1 = (b + 1) mod R, a value of another row, so it never matches. Memory: 8 W bytes per row,
  32-52 bytes per n-gram (46 MB for 1M n-grams, 109 MB for 2M, on every device; the sorted
  hashes took 8)."""
  pairs = np.unique((h1.astype(np.uint64) << np.uint64(32)) | h2)  # An n-gram listed twice.
  h1, h2 = (pairs >> np.uint64(32)).astype(np.uint32), pairs.astype(np.uint32)
  rows = max(2, -(-len(h1) // 2))
  row = (h1 % np.uint32(rows)).astype(np.int64)
  counts = np.bincount(row, minlength=rows)
  order = np.argsort(row, kind="stable")
  slot = np.arange(len(h1)) - np.repeat(np.cumsum(counts) - counts, counts)
  filler = ((np.arange(rows) + 1) % rows).astype(np.uint32)
  table1 = np.repeat(filler[:, None], counts.max(), axis=1)
  table2 = np.zeros_like(table1)
  table1[row[order], slot] = h1[order]
  table2[row[order], slot] = h2[order]
  return {"ngram_h1": table1, "ngram_h2": table2}


def bigram_tables(bigrams, vocab_size):
  pairs, where = _read_json_list(bigrams, "bigrams")
  if not pairs:
    raise ValueError(f"pmi_span: the bigram table ({where}) is empty.")
  if any(len(p) != 2 for p in pairs):
    raise ValueError(f"pmi_span: {where} must hold (id, id) pairs.")
  if vocab_size > 65536:
    raise ValueError("pmi_span variant='bigram' supports vocabularies up to 65,536 tokens.")
  arr = np.asarray(pairs, np.int64)
  if arr.min() < 0 or arr.max() >= vocab_size:
    raise ValueError(f"pmi_span: {where} holds token ids outside [0, {vocab_size}), the "
                     "tokenizer's vocabulary.")
  keys = (arr[:, 0] * vocab_size + arr[:, 1]).astype(np.uint32)
  table = hash_buckets(prng.mix32(keys), keys)  # Rows by a hash: the key's low bits are one id's.
  return {"bigram_h1": table["ngram_h1"], "bigram_h2": table["ngram_h2"]}


def in_bigram_table(tables, pair):
  return in_hash_buckets(tables["bigram_h1"], tables["bigram_h2"], prng.mix32(pair), pair)


def longest_match(tables, tokens, starts, maskable, max_ngram_tokens, new_sentence,
                  ngram_words):
  """int32[L]: token length of the longest vocabulary n-gram at each word start (0: none).

  ngram_words = (fewest, most) words of a vocabulary n-gram: only spans of that many whole words are
  looked up (4 per position for n = 2..5, where every token length up to max_ngram_tokens would
  be 11), since a match must end at a word boundary."""
  length = tokens.shape[-1]
  pos = jnp.arange(length, dtype=jnp.int32)
  toks = jnp.concatenate([tokens, jnp.zeros((max_ngram_tokens,), jnp.int32)]).astype(jnp.uint32)
  # The end of the k-th word from each position: a unit may end before a word start, a special
  # token or the row's end; it must not reach past the first special / pad / sentence start.
  next_end = jnp.concatenate([select.next_boundary(starts | ~maskable),
                              jnp.array([length], jnp.int32)])
  run_end = select.next_boundary(~maskable | new_sentence)
  fewest, most = ngram_words
  end = pos
  lengths = []
  for k in range(1, most + 1):
    end = next_end[end]
    if k >= fewest:
      lengths.append(end - pos)
  n = jnp.stack(lengths)  # (Q, L) token lengths of the spans of fewest..most words
  ok = starts[None, :] & (n >= 2) & (n <= max_ngram_tokens) & (pos + n <= run_end[None, :])
  # Chained hashes of the 1..max_ngram_tokens tokens from each position, each kept where it is
  # the hash of a span above (no (N, L) array of all of them: elementwise, one fused loop).
  h1 = jnp.full((length,), _SEED1)
  h2 = jnp.full((length,), _SEED2)
  q1 = jnp.zeros(n.shape, jnp.uint32)
  q2 = jnp.zeros(n.shape, jnp.uint32)
  for size in range(1, max_ngram_tokens + 1):  # A loop over n-gram lengths, not over L.
    t = toks[size - 1:size - 1 + length]
    h1 = prng.mix32(h1 ^ t)
    h2 = prng.mix32(h2 + t)
    q1 = jnp.where(n == size, h1[None, :], q1)
    q2 = jnp.where(n == size, h2[None, :], q2)
  found = in_hash_buckets(tables["ngram_h1"], tables["ngram_h2"], q1, q2)
  return jnp.max(jnp.where(ok & found, n, 0), axis=0)  # (L,) the longest match


def in_hash_buckets(table1, table2, q1, q2):
  """bool[...]: whether (q1, q2) is in the `hash_buckets` table."""
  row = q1 % np.uint32(table1.shape[0])
  return jnp.any((table1[row] == q1[..., None]) & (table2[row] == q2[..., None]), axis=-1)


def greedy_unit_starts(seg_len, maskable):
  """Starts of the left-to-right segmentation where a unit at i spans seg_len[i] tokens.

  Node i points to i + seg_len[i]; the unit starts are the nodes reachable from 0. With pointer
  doubling, P holds next^t(0) for t < 2^r after r rounds.
  """
  length = seg_len.shape[-1]
  pos = jnp.arange(length, dtype=jnp.int32)
  jump = jnp.concatenate([jnp.minimum(pos + jnp.maximum(seg_len, 1), length),
                          jnp.array([length], jnp.int32)])  # (L + 1,), L absorbs
  path = jnp.zeros((1,), jnp.int32)
  for _ in range(int(np.ceil(np.log2(length + 1)))):  # log2(L) rounds.
    path = jnp.concatenate([path, jump[path]])
    jump = jump[jump]
  on_path = jnp.zeros((length + 1,), bool).at[path].set(True)[:length]
  return on_path & maskable


def run_words(words, unit_start, maskable):
  """Each unit's start gets the smallest word of its maskable tokens: units then come, in key
  order, in the order a random permutation of the token positions first hits them, so a k-token
  run comes first about k times as often as a lone token (the bigram variant's random start
  positions; less over a whole budget, see the module docstring). Non-maskable tokens (padding
  after the last unit belongs to it) do not count."""
  length = words.shape[-1]
  owner = jnp.maximum(select.unit_owner(unit_start), 0)
  none = np.uint32(0xFFFFFFFF)
  smallest = jnp.full((length,), none).at[owner].min(jnp.where(maskable, words, none))
  return jnp.where(unit_start, smallest, words)


def make_select(settings, variant, max_ngram_tokens, ngram_words=None):
  def units_mask(seed, unit_start, maskable, budget, by_start_positions=False):
    words = prng.bits(seed, prng.UNITS, (unit_start.shape[-1],))
    if settings.budget == "bernoulli":
      return select.bernoulli_units(unit_start, maskable, words, settings.mask_prob)
    if by_start_positions:
      words = run_words(words, unit_start, maskable)
    return select.select_units(unit_start, maskable, words, budget, fill=True)

  def select_ngram(tables, seed, tokens, sentences, maskable, budget):
    new_sentence = select.sentence_starts(sentences, maskable)
    starts = select.word_starts(maskable, tables["continuation"][tokens], sentences)  # (L,)
    pos = jnp.arange(tokens.shape[-1], dtype=jnp.int32)
    word_len = select.next_boundary(starts | ~maskable) - pos
    match = longest_match(tables, tokens, starts, maskable, max_ngram_tokens, new_sentence,
                          ngram_words)
    seg_len = jnp.where(starts, jnp.where(match > 0, match, word_len), 1)
    unit_start = greedy_unit_starts(seg_len, maskable)
    target = units_mask(seed, unit_start, maskable, budget)
    return target, {"unit_start": unit_start, "ngram_len": jnp.where(unit_start, match, 0),
                    "decide": select.unit_decisions(seed, unit_start)}

  def select_bigram(tables, seed, tokens, sentences, maskable, budget):
    toks = tokens.astype(jnp.uint32)
    pair = toks[:-1] * np.uint32(settings.vocab_size) + toks[1:]  # (L - 1,)
    cont_next = tables["continuation"][tokens[1:]]
    same_sentence = ~select.sentence_starts(sentences, maskable)[1:]
    link = (maskable[:-1] & maskable[1:] & same_sentence
            & (in_bigram_table(tables, pair) | cont_next))
    unit_start = maskable & ~jnp.concatenate([jnp.zeros((1,), bool), link])
    target = units_mask(seed, unit_start, maskable, budget, by_start_positions=True)
    return target, {"unit_start": unit_start, "decide": select.unit_decisions(seed, unit_start)}

  return select_ngram if variant == "ngram" else select_bigram
