"""Pointwise mutual information of within-sentence token pairs, as a sparse [V, V] table.

  PMI(x, y) = log p(x, y) / (p(x) p(y)),   p(x, y) = C[x, y] / P,   p(x) = m(x) / P

with C the ordered pair counts of `counting` (symmetric), P = sum(C) and m(x) = sum_y C[x, y]
the marginals of the pair table itself. Taking the marginals from the pairs rather than from
unigram frequencies makes PMI 0 for independent tokens even when a token prefers long sentences
(it has more partners there, and its marginal says so).

Options:
- min_pair_count: pairs that co-occur fewer times get no entry (applied by the counter, which
  keeps the marginals of the unpruned table). An absent entry reads as 0 (no evidence).
- context_alpha: context-distribution smoothing (Levy et al. 2015): p_a(x) = m(x)^a / sum m^a,
  applied to both members of the pair so that the table stays symmetric; a < 1 raises the
  probability of rare tokens and so damps their PMI. a = 1 is plain PMI.
- positive_only: clip negative values to 0 (PPMI) and drop them from the table. Positive means
  above MIN_POSITIVE_PMI: an exactly independent pair's PMI comes out as +-1 ulp of float64
  rounding, whose sign depends on the corpus size, not on the data.

The table is float32 CSR in token-id space (row/column = token id), written with
`scipy.sparse.save_npz`: the form `informask_online` reads (`pmi=` a matrix or the .npz path).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from informask_jax.stats.counting import PairCounts

# PMI at or below this is not positive (the tables' and the n-gram vocabulary's threshold): far
# above the rounding of a log-count difference (~1e-14), far below any PMI a corpus can show.
MIN_POSITIVE_PMI = 1e-9


def pmi_table(pairs: PairCounts, *, vocab_size: int, context_alpha: float = 1.0,
              positive_only: bool = True) -> sp.csr_matrix:
  """float32 CSR [V, V], symmetric, from pruned pair counts (computed in float64)."""
  if not context_alpha > 0:
    raise ValueError(f"stats.context_alpha must be > 0, got {context_alpha}.")
  if pairs.counts.nnz == 0:
    raise ValueError(
        f"No token pair co-occurs at least stats.min_pair_count={pairs.min_pair_count} times "
        f"(PMI vocabulary of {len(pairs.vocab_ids)} tokens, {pairs.num_tokens} tokens read): the "
        "corpus is too small for these settings. Use a larger corpus or lower "
        "stats.min_pair_count / stats.min_count.")
  m = pairs.marginals.astype(np.float64)
  total = float(pairs.total)
  smoothed = m ** context_alpha
  log_p = np.full(m.shape, -np.inf)
  np.log(smoothed / smoothed.sum(), out=log_p, where=m > 0)
  coo = pairs.counts.tocoo()
  # One sum for both marginals: a + b == b + a exactly, so (x, y) and (y, x) round alike and the
  # table stays exactly symmetric (subtracting them in turn does not).
  values = np.log(coo.data.astype(np.float64)) - np.log(total) - (log_p[coo.row] + log_p[coo.col])
  keep = np.ones(values.shape, bool)
  if positive_only:
    keep = values > MIN_POSITIVE_PMI
  ids = pairs.vocab_ids.astype(np.int64)
  table = sp.csr_matrix((values[keep].astype(np.float32), (ids[coo.row[keep]], ids[coo.col[keep]])),
                        shape=(vocab_size, vocab_size))
  table.sort_indices()
  return table


def check_table(table: sp.spmatrix, vocab_size: int, name: str = "PMI table") -> sp.csr_matrix:
  """Validates a loaded table: shape [V, V], finite, symmetric."""
  if table.shape != (vocab_size, vocab_size):
    raise ValueError(f"{name} has shape {table.shape}, expected ({vocab_size}, {vocab_size}).")
  table = sp.csr_matrix(table, dtype=np.float32)
  if not np.all(np.isfinite(table.data)):
    raise ValueError(f"{name} holds non-finite values.")
  if (table != table.T).nnz:
    raise ValueError(f"{name} is not symmetric.")
  return table
