"""InforMask's sample-and-score: K random candidate masks, keep the most informative one.

Informative relevance of a mask M over a sequence x:
  IR(M) = sum_{i in M} sum_{j not in M, same sentence, j != i} PMI(x_i, x_j)
which for a 0/1 candidate m is m^T P (1 - m), P[i, j] the pair PMI (0 across sentences, at
specials and padding). All K candidates are scored with one (K, L) x (L, L) product per sequence.
Candidates are uniformly random subsets of the maskable tokens, all of one size: round(mask_prob *
n_maskable) with the exact budget; with the Bernoulli budget a Binomial(n_maskable, mask_prob)
size drawn once per sequence (IR grows with the size, so candidates of different sizes would not
compare fairly).

The PMI comes from a scipy.sparse [V, V] matrix (the statistics module's `pmi.npz`), moved to the
device as one of:
  dense   a (R+1, R+1) table over the R tokens that have PMI entries (or the `pmi_vocab_size` of
          them with the most entries), token id -> row through int32[V] (-1 outside -> the zero
          row R). Memory R^2 * 4 bytes: 1.0 GiB at R = 16,384, 3.5 GiB at R = 30,522 (bfloat16 via
          pmi_dtype halves it). Per step the gathered P is B * L^2 * 4 bytes: 256 MiB at 256 x 512.
  sparse  sorted uint32 keys row * (R+1) + col and float32 values, looked up with searchsorted:
          8 bytes per non-zero, slower (one binary search per token pair), and its search keeps
          about 6 * B * L^2 * 4 bytes live per step (XLA:CPU's memory analysis: 194 MiB at
          32 x 512, 1.5 GiB at 256 x 512, against the dense table's 35 and 280 MiB), so it saves
          memory only where the dense table is the larger part. pmi_dtype is the dense table's.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from informask_jax.masking import prng, select

PMI_TABLES = ("dense", "sparse")


def load_pmi(pmi, vocab_size):
  """A scipy.sparse COO matrix [V, V] from a matrix or an .npz path; ValueError when invalid."""
  if pmi is None:
    raise ValueError("informask_online needs pmi= (a scipy.sparse [V, V] matrix or the path of "
                     "the statistics module's pmi.npz).")
  where = "PMI matrix"  # Errors name the file when the matrix came from one.
  if isinstance(pmi, str | os.PathLike):
    path = os.fspath(pmi)
    where = f"PMI matrix {path!r}"
    pmi = _read_npz(path)
  if not scipy.sparse.issparse(pmi):
    pmi = scipy.sparse.coo_matrix(np.asarray(pmi))
  if pmi.shape != (vocab_size, vocab_size):
    raise ValueError(f"{where} has shape {pmi.shape}; expected ({vocab_size}, {vocab_size}), "
                     "a row and a column per token of the tokenizer.")
  if pmi.dtype.kind not in "biuf":  # Complex would lose its imaginary part, silently.
    raise ValueError(f"{where} holds {pmi.dtype} values; expected real numbers.")
  pmi = pmi.tocoo()
  pmi.sum_duplicates()
  if not np.all(np.isfinite(pmi.data)):
    raise ValueError(f"{where} has non-finite entries.")
  if not np.any(pmi.data != 0):
    raise ValueError(f"{where} is all zeros: every candidate would score 0 and "
                     "informask_online would be random masking.")
  return pmi


def _read_npz(path):
  """scipy.sparse.load_npz with errors that say which file is expected. Its own messages are
  no help here: a dense .npy fails on the context manager protocol, a pickled one suggests
  allow_pickle (running code from the file)."""
  if os.path.isdir(path):
    raise ValueError(f"PMI matrix {path!r} is a directory; give the pmi.npz file in it.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PMI matrix {path!r} does not exist.")
  expected = ("give the statistics module's pmi.npz (a scipy.sparse matrix saved by "
              "scipy.sparse.save_npz).")
  with open(path, "rb") as f:
    if f.read(6) == b"\x93NUMPY":  # The .npy magic: an array, not a sparse matrix.
      raise ValueError(f"PMI matrix {path!r} is a NumPy .npy array; {expected}")
  try:
    return scipy.sparse.load_npz(path)
  except Exception:  # Any failure means the same here: not the expected file.
    raise ValueError(f"PMI matrix {path!r} is not a scipy.sparse .npz file; {expected}") from None


def restrict_vocab(pmi, pmi_vocab_size=None):
  """(row_of int32[V] with -1 outside, R): rows for the tokens with PMI entries, the
  `pmi_vocab_size` with the most entries (ties: lower id) when given."""
  vocab_size = pmi.shape[0]
  nz = pmi.data != 0
  counts = (np.bincount(pmi.row[nz], minlength=vocab_size)
            + np.bincount(pmi.col[nz], minlength=vocab_size))
  ids = np.flatnonzero(counts)
  if pmi_vocab_size is not None:
    if isinstance(pmi_vocab_size, bool) or not isinstance(pmi_vocab_size, int | np.integer) \
        or pmi_vocab_size < 1:
      raise ValueError(f"pmi_vocab_size must be an integer >= 1, got {pmi_vocab_size!r}.")
    if ids.size > pmi_vocab_size:
      order = np.lexsort((ids, -counts[ids]))  # Most entries first, then lower id.
      ids = np.sort(ids[order[:pmi_vocab_size]])
  row_of = np.full(vocab_size, -1, np.int32)
  row_of[ids] = np.arange(ids.size, dtype=np.int32)
  return row_of, int(ids.size)


def build_tables(pmi, *, pmi_vocab_size=None, pmi_table="dense", pmi_dtype="float32"):
  """Device tables for the PMI lookup (see the module docstring)."""
  if pmi_table not in PMI_TABLES:
    raise ValueError(f"pmi_table must be one of {PMI_TABLES}, got {pmi_table!r}.")
  if pmi_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"pmi_dtype must be 'float32' or 'bfloat16', got {pmi_dtype!r}.")
  if pmi_table == "sparse" and pmi_dtype != "float32":  # Silently float32, no memory saved.
    raise ValueError(f"pmi_dtype={pmi_dtype!r} applies to pmi_table='dense'; the sparse table "
                     "keeps float32 values.")
  row_of, size = restrict_vocab(pmi, pmi_vocab_size)
  r, c = row_of[pmi.row], row_of[pmi.col]
  keep = (r >= 0) & (c >= 0) & (pmi.data != 0)
  r, c, v = r[keep], c[keep], pmi.data[keep].astype(np.float32)
  side = size + 1  # Row `size` is the all-zero row for tokens without PMI.
  tables = {"pmi_row": row_of}
  if pmi_table == "dense":
    dense = np.zeros((side, side), np.float32)
    dense[r, c] = v
    tables["pmi_dense"] = jnp.asarray(dense, dtype=pmi_dtype)
  else:
    if side * side >= 2**32:  # The sentinel side * side must fit in uint32.
      raise ValueError(f"pmi_table='sparse' supports up to 65,534 PMI rows, got {size}.")
    keys = r.astype(np.uint64) * side + c
    order = np.argsort(keys)
    # A sentinel past every real key keeps the lookup index in range.
    tables["pmi_keys"] = np.append(keys[order], side * side).astype(np.uint32)
    tables["pmi_values"] = np.append(v[order], 0.0).astype(np.float32)
  return tables, size


def pair_pmi(tables, rows, size):
  """(L, L) PMI of every token pair; rows int32[L] with `size` for tokens without PMI."""
  if "pmi_dense" in tables:
    return tables["pmi_dense"][rows[:, None], rows[None, :]].astype(jnp.float32)
  side = size + 1
  query = rows[:, None].astype(jnp.uint32) * np.uint32(side) + rows[None, :].astype(jnp.uint32)
  idx = jnp.searchsorted(tables["pmi_keys"], query)
  hit = tables["pmi_keys"][idx] == query
  return jnp.where(hit, tables["pmi_values"][idx], 0.0)


def informative_relevance(pair, candidates):
  """IR of each candidate: m^T P (1 - m). pair (L, L) float32; candidates bool[K, L] -> (K,)."""
  m = candidates.astype(jnp.float32)  # (K, L)
  # Full float32: the default precision on GPUs and TPUs (TF32 / bfloat16 passes) could pick
  # another of two close candidates than a CPU does, and than the statistics' rates assume.
  outside = jnp.matmul(1.0 - m, pair.T, precision=jax.lax.Precision.HIGHEST)  # (K, L)
  return jnp.sum(m * outside, axis=-1)


def make_select(settings, num_candidates, size):
  def select_targets(tables, seed, tokens, sentences, maskable, budget):
    length = tokens.shape[-1]
    check_num_candidates(num_candidates, length)  # The length is first known here, at the trace.
    rows = tables["pmi_row"][tokens]
    rows = jnp.where(maskable & (rows >= 0), rows, size)  # (L,)
    same = ((sentences[:, None] == sentences[None, :]) & (sentences[:, None] >= 0)
            & maskable[:, None] & maskable[None, :] & ~jnp.eye(length, dtype=bool))
    pair = jnp.where(same, pair_pmi(tables, rows, size), 0.0)  # (L, L)
    # Counter i * K + k for candidate k at position i: position i's words do not depend on L,
    # so a row's candidates (and mask) stay the same however far it is padded (with the counter
    # k * L + i, 224 of 256 rows changed mask between L = 48 and 49).
    words = prng.bits(seed, prng.CANDIDATES, (length, num_candidates)).T  # (K, L)
    if settings.budget == "bernoulli":
      # One Binomial(n_maskable, mask_prob) size per sequence, shared by the K candidates: IR
      # grows with the size of a mask, so best-of-K over candidates of independent Bernoulli
      # sizes would favour the largest (0.177 of tokens instead of 0.15 at K = 4).
      u = prng.uniform(prng.bits(seed, prng.SELECT, (length,)))
      budget = jnp.sum(maskable & (u < settings.mask_prob)).astype(jnp.int32)
    keys, nbits = select.unique_keys(words, length)
    weights = jnp.broadcast_to(maskable.astype(jnp.int32), keys.shape)
    candidates, _ = select.threshold_select(keys, weights, jnp.broadcast_to(
        budget, (num_candidates,)), nbits)
    scores = informative_relevance(pair, candidates)  # (K,)
    best = jnp.argmax(scores)
    return candidates[best], {"candidates": candidates, "scores": scores, "best": best}
  return select_targets


MAX_CANDIDATES = 512


def check_num_candidates(num_candidates, length=None):
  """ValueError unless K is an integer in [1, MAX_CANDIDATES] and, with `length` (the sequence
  length), its K * L candidate keys fit one stream of the random words."""
  if isinstance(num_candidates, bool) or not isinstance(num_candidates, int | np.integer) or \
      num_candidates < 1:
    raise ValueError(f"num_candidates (masking.num_candidates, K) must be an integer >= 1, got "
                     f"{num_candidates!r}.")
  if num_candidates > MAX_CANDIDATES:
    raise ValueError(f"num_candidates={num_candidates} is more than {MAX_CANDIDATES}; K "
                     "candidates cost K * L^2 multiply-adds per sequence.")
  most = 1 << prng.MAX_COUNTER_BITS
  if length is not None and num_candidates * length > most:
    raise ValueError(f"num_candidates={num_candidates} candidates over sequences of {length} "
                     f"tokens take {num_candidates * length} random words per sequence, more "
                     f"than the {most} of a stream: at this length K can be at most "
                     f"{most // length}.")
