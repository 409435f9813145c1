"""BERT's random masking: every maskable token equally likely to be a target.

"exact": round(mask_prob * n_maskable) targets per sequence, a uniformly random subset (the
per-sequence count mlm-pytorch uses, with Python's round instead of its ceil); "bernoulli": each
token independently with probability mask_prob (BERT's original data pipeline / HF collator).
"""

from informask_jax.masking import prng, select


def make_select(settings):
  def select_targets(tables, seed, tokens, sentences, maskable, budget):
    del tables, sentences
    length = tokens.shape[-1]
    words = prng.bits(seed, prng.SELECT, (length,))
    if settings.budget == "bernoulli":
      # The corruption draws its own DECIDE stream: u / mask_prob would reuse this draw for
      # free, but for a tiny mask_prob it takes a few values only (8 at 1e-6: no token kept).
      return maskable & (prng.uniform(words) < settings.mask_prob), {}
    keys, nbits = select.unique_keys(words, length)
    target, _ = select.threshold_select(keys, maskable.astype("int32"), budget, nbits)
    return target, {}
  return select_targets
