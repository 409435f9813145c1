"""InforMask's token-specific masking rates, measured by running the sample-and-score masker.

The paper's efficient variant replaces per-batch sample-and-score (K candidate masks scored by
informative relevance over PMI) with a fixed per-token rate: how often sample-and-score picks a
token, relative to how often the token occurs. We measure exactly that by running the
`informask_online` masker itself (the same jitted function the trainer would use, not a second
implementation) over a sample of packed training sequences:

  raw[t]      = chosen[t] / seen[t]
  smoothed[t] = (chosen[t] + s * mean) / (seen[t] + s)        (s = stats.rate_smoothing)
  rate[t]     = c * smoothed[t], c such that sum_t u[t] rate[t] / sum_t u[t] = mask_prob

with mean = sum chosen / sum seen, and u the corpus unigram counts of the non-special tokens, so
the corpus-level expected share of targets is mask_prob. A token the sample never showed gets the
mean; specials get 0. Rates are clipped to 1 (re-solving c), which only matters for extreme tables.

A token without any PMI entry (outside the PMI vocabulary, or whose pairs all fell below
stats.min_pair_count) is counted as never shown, so it gets the mean too: sample-and-score cannot
tell anything about it, yet masking it spends budget on no relevance, so its measured rate would
fall below the mean for lack of statistics, not for lack of information (with the tiny config's
4,096-token PMI vocabulary that made rates fall with rarity; bench/RESULTS.md, "Rates against the
original InforMask table").
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from informask_jax import paths

# In the statistics' cache key: rates built by another method are rebuilt, not reused (2: tokens
# without PMI entries at the mean).
METHOD = 2

# Sequences per masker call; a fixed shape compiles once (the last batch is padded).
DEFAULT_BATCH = 64


def sample_rows(num_rows: int, num_samples: int, seed: int) -> np.ndarray:
  """Sorted row indices of a deterministic sample without replacement (all rows if fewer)."""
  if num_samples <= 0 or num_samples >= num_rows:
    return np.arange(num_rows)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_rows, size=num_samples, replace=False))


def count_choices(masker, token_ids: np.ndarray, sentence_ids: np.ndarray, *, vocab_size: int,
                  special_ids: Sequence[int], pad_id: int, seed: int = 0,
                  batch_size: int = DEFAULT_BATCH,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Runs `masker` (jitted) over the rows; returns (chosen, seen): int64[V] target and occurrence
  counts per token id over the maskable (non-special) positions."""
  import jax  # Only this stage needs JAX; counting runs in processes that never import it.

  token_ids = np.asarray(token_ids, np.int32)
  sentence_ids = np.asarray(sentence_ids, np.int32)
  if token_ids.ndim != 2 or token_ids.shape != sentence_ids.shape:
    raise ValueError(f"token_ids {token_ids.shape} and sentence_ids {sentence_ids.shape} must be "
                     "the same [N, L] shape.")
  n, length = token_ids.shape
  if n == 0:
    raise ValueError("No sequences to measure masking rates on (empty packed training set).")
  batch_size = max(1, min(batch_size, n))

  def masks(m, key, ids, sids):
    return m(key, ids, sentence_ids=sids)["mask"]  # (B, L)

  # A pytree masker (informask_jax.masking.Masker) is a jit argument so that its PMI table is
  # not baked into the program as a constant; any other callable is closed over.
  if jax.tree_util.tree_leaves(masker) == [masker]:
    jitted = jax.jit(lambda key, ids, sids: masks(masker, key, ids, sids))
  else:
    fn = jax.jit(masks)
    jitted = lambda key, ids, sids: fn(masker, key, ids, sids)  # noqa: E731

  special = np.zeros(vocab_size, bool)
  special[list(special_ids)] = True
  chosen = np.zeros(vocab_size, np.int64)
  seen = np.zeros(vocab_size, np.int64)
  base = jax.random.key(seed)
  with tqdm(total=n, desc="masking rates", unit="seq", disable=not progress) as bar:
    for step, start in enumerate(range(0, n, batch_size)):
      ids = token_ids[start:start + batch_size]
      sids = sentence_ids[start:start + batch_size]
      rows = ids.shape[0]
      if rows < batch_size:  # Pad rows are all [PAD]: never maskable, never counted.
        ids = np.concatenate([ids, np.full((batch_size - rows, length), pad_id, np.int32)])
        sids = np.concatenate([sids, np.full((batch_size - rows, length), -1, np.int32)])
      mask = np.asarray(jitted(jax.random.fold_in(base, step), ids, sids))[:rows]  # (B, L)
      ids = ids[:rows]
      maskable = ~special[ids]
      if np.any(mask & ~maskable):
        raise ValueError("The masker chose special or padding tokens as targets.")
      seen += np.bincount(ids[maskable], minlength=vocab_size)
      chosen += np.bincount(ids[mask], minlength=vocab_size)
      bar.update(rows)
  return chosen, seen


def finalize_rates(chosen: np.ndarray, seen: np.ndarray, *, unigram_counts: np.ndarray,
                   special_ids: Sequence[int], mask_prob: float, smoothing: float,
                   measured: np.ndarray | None = None) -> np.ndarray:
  """float32[V] rates: smoothed toward the mean, rescaled to mask_prob over the corpus.

  measured: bool[V], the tokens the sample can rate (those with PMI entries); the others are
  treated as never shown and get the mean. None: all tokens.
  """
  if not 0 < mask_prob < 1:
    raise ValueError(f"masking.mask_prob must be in (0, 1), got {mask_prob}.")
  if smoothing < 0:
    raise ValueError(f"stats.rate_smoothing must be >= 0, got {smoothing}.")
  chosen = np.asarray(chosen, np.float64)
  seen = np.asarray(seen, np.float64)
  if measured is not None:
    measured = np.asarray(measured, bool)
    if seen.sum() > 0 and not seen[measured].sum() > 0:
      raise ValueError("No token of the rate sample has a PMI entry, so sample-and-score rated "
                       "none of them: the PMI table is empty (lower stats.min_pair_count or "
                       "stats.min_count, or use a larger corpus).")
    chosen, seen = np.where(measured, chosen, 0.0), np.where(measured, seen, 0.0)
  if seen.sum() <= 0:
    raise ValueError("The rate sample holds no maskable token.")
  mean = chosen.sum() / seen.sum()
  denom = seen + smoothing
  smoothed = np.where(denom > 0, (chosen + smoothing * mean) / np.maximum(denom, 1e-300), mean)
  special = np.zeros(chosen.size, bool)
  special[list(special_ids)] = True
  smoothed[special] = 0.0
  weights = np.asarray(unigram_counts, np.float64).copy()
  weights[special] = 0.0
  if weights.sum() <= 0:
    raise ValueError("The unigram counts hold no maskable token: cannot rescale the rates.")
  if smoothed @ weights <= 0:
    raise ValueError("The masker chose no target in the whole sample: cannot derive rates.")
  # Scale, clip at 1, and re-solve the scale on the unclipped tokens until the mean is met.
  # The clipped set starts empty and only grows: starting from `smoothed` itself would pin a
  # token whose unscaled rate is >= 1 at 1 even when the scale turns out below 1.
  rate = np.zeros_like(smoothed)
  for _ in range(50):
    target = mask_prob * weights.sum()
    clipped = rate >= 1.0
    free = (weights * smoothed)[~clipped].sum()
    scale = (target - weights[clipped].sum()) / max(free, 1e-300)
    new = np.where(clipped, 1.0, np.minimum(smoothed * scale, 1.0))
    if np.array_equal(new >= 1.0, clipped):
      rate = new
      break
    rate = new
  rate[special] = 0.0
  reached = expected_fraction(rate, unigram_counts, special_ids)
  if reached < mask_prob * (1 - 1e-6):  # Every positive rate is at 1 and the rest is 0.
    logging.warning(
        "The masking rates reach an expected %.4g of the maskable tokens, short of "
        "masking.mask_prob=%g: the %d tokens with a positive rate are all at 1 and the others "
        "at 0 (stats.rate_smoothing=%g). A Bernoulli budget without rescaling masks that "
        "share; raise stats.rate_smoothing so that tokens the sample never chose get a rate.",
        reached, mask_prob, int(np.sum(rate >= 1.0)), smoothing)
  return rate.astype(np.float32)


def expected_fraction(rates: np.ndarray, unigram_counts: np.ndarray,
                      special_ids: Sequence[int]) -> float:
  """Corpus-level expected share of targets among maskable tokens under the rates."""
  w = np.asarray(unigram_counts, np.float64).copy()
  w[list(special_ids)] = 0.0
  return float(np.asarray(rates, np.float64) @ w / w.sum())


def write_id_mask_prob(rates: np.ndarray, path: str) -> None:
  """The original InforMask repository's format: JSON object, token id as string -> rate.

  Every id 0..V-1 is written (specials with 0.0), so no reader has to guess about absent ids.
  """
  obj = {str(i): float(r) for i, r in enumerate(np.asarray(rates, np.float32).tolist())}
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f)
  paths.atomic_write(path, write)


def read_id_mask_prob(path: str, vocab_size: int) -> np.ndarray:
  with open(path) as f:
    obj = json.load(f)
  rates = np.zeros(vocab_size, np.float32)
  for k, v in obj.items():
    i = int(k)
    if not 0 <= i < vocab_size:
      raise ValueError(f"{path}: token id {i} is outside the vocabulary [0, {vocab_size}).")
    rates[i] = v
  return rates
