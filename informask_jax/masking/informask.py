"""InforMask's efficient variant: targets drawn in proportion to a per-token masking rate.

The rate table float32[V] is precomputed from the corpus (informask_jax.stats) with the
sample-and-score procedure of `online.py`. Budgets:
  exact      round(mask_prob * n_maskable) targets drawn without replacement with probability
             proportional to the rates (Gumbel-top-k in its exponential-race form: the smallest
             -log(u) / rate win). Zero-rate tokens are drawn last: only when the budget exceeds
             the sequence's positive-rate tokens, then in uniformly random order. Positive rates
             below 1e-6 of the largest act as 1e-6 of it.
  bernoulli  each token independently with p = rate, rescaled per sequence so that the expected
             fraction is mask_prob (`rescale=True`), or p = rate as stored (`rescale=False`: the
             original repository's `rand < prob` with its table already calibrated to ~15%).
             A p above 1 acts as 1 (always a target): in a sequence of low-rate tokens a rare
             high-rate token can get there, and the expected fraction then falls short of
             mask_prob by the excess. A sequence whose tokens all have rate 0 gets p = mask_prob
             for each (rescale=True), as the exact budget draws them uniformly.

Tables: `rates=` a float32[V] array, a `.npy` file (our format), or a `.json` file in the original
repository's `id_mask_prob.json` format (token id as a string -> rate). Ids missing from a JSON
table get `missing_rate` ("mean": the mean of the listed rates, so tokens the statistics never saw
are still masked at a typical rate; 0.0 reproduces the original repository, which never masks them).
A JSON table that lists fewer than half of the ids is accepted with a warning: most ids then share
one rate, which comes close to uniform masking.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from informask_jax.masking import prng, select

log = logging.getLogger(__name__)

MIN_RELATIVE_RATE = 1e-6
# Exponential-race keys e = -log(u) / w lie in [2**-26, 2**24) for u in [2**-24, 1) and
# w in [1e-6, 1]; their float32 bit patterns, offset, fit in 29 bits and keep the order.
# Zero-rate tokens (w = 0) race in [2**25, 1.52 * 2**25) instead: behind every positive rate,
# and in random order among themselves (a monotone map of -log(u), equal weights).
_ZERO_RATE_RACE = np.float32(2.0**25)
_KEY_LO = np.uint32(101 << 23)  # bits of 2.0**-26
_KEY_HI = np.uint32((153 << 23) - 1)  # just below 2.0**26
_KEY_BITS = 29
# The race keeps its top _RACE_BITS bits (exponent and 14 mantissa bits: ties within ~6e-5 of
# each other go to the lower position), the position fills the bits below. A fixed width, not
# whatever 32 bits leave beside the position: a token's key then does not depend on the row's
# length, and padding a row leaves its mask as it is. (With the position's bits taken from the
# race, 3 of 2,048 rows of 500 tokens changed mask when padded to 513 instead of 512.) Up to
# 2**(32 - _RACE_BITS) = 4,096 tokens; longer rows keep fewer race bits.
_RACE_BITS = 20


def is_json_table(rates) -> bool:
  """Whether `rates` names an id_mask_prob-style .json table (the only kind that can leave ids
  out, so the only one missing_rate applies to)."""
  return isinstance(rates, str | os.PathLike) and os.fspath(rates).endswith(".json")


def rates_file(path) -> str:
  """The rate table's path, ~ expanded; FileNotFoundError naming masking.rates_path if absent."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    raise ValueError(f"Rate table {path!r} (masking.rates_path) is a directory; give the .npy "
                     "or .json file in it.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Rate table {path!r} (masking.rates_path) does not exist.")
  return path


def describe(rates) -> str:
  """How errors name a table given as `rates`: its file and config key when it is a path (`masking
  show` puts its own flag in place of the key)."""
  if isinstance(rates, str | os.PathLike):
    return f"rate table {os.path.expanduser(os.fspath(rates))!r} (masking.rates_path)"
  return "rate table"


def load_rates(rates, vocab_size, missing_rate="mean"):
  """Returns float32[V] rates from an array or a .npy / .json path; ValueError when invalid."""
  if isinstance(rates, str | os.PathLike):
    path = rates_file(rates)
    if path.endswith(".npy"):
      table = _rates_from_npy(path)
    elif path.endswith(".json"):
      table = _rates_from_json(path, vocab_size, missing_rate)
    else:
      raise ValueError(f"Rate table {path!r}: expected a .npy or an id_mask_prob-style .json file.")
  elif rates is None:
    raise ValueError("informask needs rates= (float32[V], a .npy or a .json path; config key "
                     "masking.rates_path).")
  else:
    table = _rates_from_array(rates)
  where = describe(rates)
  table = np.asarray(table, np.float64)
  if table.shape != (vocab_size,):
    raise ValueError(f"The {where} has shape {table.shape}; expected ({vocab_size},): one rate "
                     f"per token id of the tokenizer's {vocab_size}-token vocabulary.")
  _check_values(table, where)
  return table.astype(np.float32)


def check_rates_file(path, missing_rate="mean") -> None:
  """What a rate file allows checking before the vocabulary is known (train.py's config check,
  before the tokenizer and the corpus are built): readable, a 1-D array or an id -> rate object,
  finite rates >= 0, not all zero (a JSON table's unlisted ids counted at the fill rate). Its
  size, and ids beyond the vocabulary, are checked when the masker is built."""
  path = rates_file(path)
  where = describe(path)
  if path.endswith(".npy"):
    table = _rates_from_npy(path)
    if table.ndim != 1:
      raise ValueError(f"The rate table {path!r} has shape {table.shape}; expected (V,): "
                       "masking.rates_path must hold one rate per token id of the vocabulary.")
    _check_values(table, where)
  elif path.endswith(".json"):
    _, values = _json_entries(path)
    if not np.any(values > 0) and not _fill_rate(values, missing_rate) > 0:
      raise ValueError(f"The {where} is all zeros (masking.missing_rate={missing_rate!r} for the "
                       "ids it does not list).")
  else:
    raise ValueError(f"Rate table {path!r}: expected a .npy or an id_mask_prob-style .json file.")


def _check_values(table, where) -> None:
  if not np.all(np.isfinite(table)):
    raise ValueError(f"The {where} has {int(np.sum(~np.isfinite(table)))} non-finite entries.")
  if np.any(table < 0):
    raise ValueError(f"The {where} has {int(np.sum(table < 0))} negative entries "
                     f"(min {table.min():.3g}); rates must be >= 0.")
  if not np.any(table > 0):
    raise ValueError(f"The {where} is all zeros.")
  if table.max() > np.finfo(np.float32).max:
    raise ValueError(f"The {where} has rates beyond float32's range (max {table.max():.3g}).")


def check_rates_for(table, special_ids, rescale, budget, where="rate table"):
  """Checks that need the masker's settings: some non-special token has a positive rate, and
  under the Bernoulli budget without rescaling the rates are probabilities (<= 1). (The exact
  budget only compares rates, so their scale does not matter there.) `where` names the table in
  the errors: describe(rates) of what load_rates read."""
  rates = _non_special(table, special_ids)  # Specials are never targets: their rates do not matter.
  if not np.any(rates > 0):
    raise ValueError(f"The {where} is zero on every non-special token (all but the ids "
                     f"{sorted(int(i) for i in special_ids)}): nothing could be masked.")
  if budget == "bernoulli" and not rescale and rates.max() > 1.0:
    raise ValueError(f"With rescale=False (masking.rescale) the rates are masking probabilities, "
                     f"but the {where} has {int(np.sum(rates > 1))} rates above 1 on non-special "
                     f"ids (max {rates.max():.3g}); rescale them or set rescale=True.")


def _rates_from_npy(path):
  """float64 array of a .npy file; ValueError naming the file, never a hint to unpickle it."""
  problem = f"Rate table {path!r} (masking.rates_path) is not a readable .npy array of numbers"
  try:
    with open(path, "rb") as f:
      header = f.read(6)
  except OSError as e:
    raise ValueError(f"{problem}: {e.strerror or e}.") from None
  if header != b"\x93NUMPY":
    raise ValueError(f"{problem}: it does not start with the .npy header that numpy.save writes "
                     "(another format, or a damaged file?).")
  try:
    table = np.load(path, allow_pickle=False)
    values = np.asarray(table, np.float64)
  except (OSError, ValueError, EOFError, TypeError) as e:
    if "pickle" in str(e):  # numpy's message would suggest loading it unsafely.
      raise ValueError(f"{problem}: it holds Python objects (dtype object), not rates; save a "
                       "float array with numpy.save.") from None
    raise ValueError(f"{problem}: {type(e).__name__}: {e}") from None
  if table.dtype.kind in "biu":  # Rates are fractions; a statistics directory's counts are not.
    raise ValueError(f"Rate table {path!r} (masking.rates_path) holds {table.dtype} values, not "
                     "rates: counts (unigram_counts.npy?) would mask tokens in proportion to "
                     "their frequency. Give the directory's rates.npy.")
  return values


def _rates_from_array(rates):
  """An in-memory table as an array; ValueError unless it holds floats (real-valued rates)."""
  try:
    table = np.asarray(rates)
  except ValueError as e:  # A ragged list.
    raise ValueError(f"rates must be a float array [V], one rate per token id: {e}") from None
  if table.dtype.kind in "biu":  # As for a .npy file: counts are not rates, flags are not either.
    raise ValueError(f"rates holds {table.dtype} values, not rates: counts would mask tokens in "
                     "proportion to their frequency. Give float rates (informask_jax.stats "
                     "writes them to rates.npy).")
  if table.dtype.kind != "f":  # complex would lose its imaginary part, strings would be parsed.
    raise ValueError(f"rates must be a float array [V], one rate per token id; got dtype "
                     f"{table.dtype}.")
  return table


def _listed_rates(path, ids, values, bad, what):
  """ValueError listing the table's own entries where `bad` (before any fill hides them)."""
  shown = ", ".join(f"id {i} has rate {v}"
                    for i, v in zip(ids[bad][:5], values[bad][:5], strict=True))
  more = f" (and {int(bad.sum()) - 5} more)" if bad.sum() > 5 else ""
  return ValueError(f"Rate table {path!r} (masking.rates_path) lists {int(bad.sum())} {what} "
                    f"rate(s): {shown}{more}; rates must be finite numbers >= 0.")


class _JsonPairs(list):
  """A JSON object's (key, value) pairs in file order."""


def _json_entries(path):
  """(ids, values) of an id_mask_prob-style table, ids >= 0 and values finite and >= 0."""
  where = f"Rate table {path!r} (masking.rates_path)"
  with open(path, "rb") as f:
    raw = f.read()
  try:  # As pairs: a dict would keep the last of two equal keys without a word.
    # An object's pairs are wrapped so that a top-level array (a list) cannot pass for one.
    data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_JsonPairs)  # BOM tolerated.
  except UnicodeDecodeError as e:
    raise ValueError(f"{where} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                     f"{e.start}): expected an id_mask_prob-style .json file, token id -> rate."
                     ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{where} is not valid JSON: {e}") from None
  if not isinstance(data, _JsonPairs) or not data:
    array = (" (it holds an array; a table of one rate per token id is read from a .npy file)"
             if type(data) is list else "")  # noqa: E721 (_JsonPairs is a list too)
    raise ValueError(f"{where} must be a non-empty JSON object: token id -> rate{array}.")
  ids, values, keys = [], [], {}
  for key, value in data:
    # A rate is a JSON number: true would read as 1.0 and "0.5" hides a table written as text.
    number = isinstance(value, int | float) and not isinstance(value, bool)
    try:
      token_id = int(key)
    except ValueError:
      number = False
    if not number:
      raise ValueError(f"{where}: {key!r}: {json.dumps(value)} is not token id -> rate (a "
                       "number).")
    if token_id in keys:  # "5" twice, or "5" and "05": which rate was meant?
      raise ValueError(f"{where} gives token id {token_id} twice (keys {keys[token_id]!r} and "
                       f"{key!r}).")
    keys[token_id] = key
    ids.append(token_id)
    values.append(float(value) if isinstance(value, float) or abs(value) < 2**1000 else np.inf)
  ids = np.asarray(ids)
  if ids.min() < 0:
    raise ValueError(f"{where} has token id {ids.min()} outside the vocabulary (ids are >= 0).")
  values = np.asarray(values)
  # Checked here, not on the filled table: a NaN would spread to every id through the mean.
  if not np.all(np.isfinite(values)):
    raise _listed_rates(path, ids, values, ~np.isfinite(values), "non-finite")
  if np.any(values < 0):
    raise _listed_rates(path, ids, values, values < 0, "negative")
  return ids, values


def check_missing_rate(missing_rate) -> None:
  """ValueError unless "mean" or a finite number >= 0 (checked whatever the table)."""
  if isinstance(missing_rate, str) and missing_rate == "mean":
    return
  number = isinstance(missing_rate, int | float | np.number) and not isinstance(missing_rate, bool)
  if not (number and np.isfinite(missing_rate) and missing_rate >= 0):
    raise ValueError(f"missing_rate must be 'mean' or a finite number >= 0, got {missing_rate!r}.")


def _fill_rate(values, missing_rate) -> float:
  """The rate of the ids a JSON table does not list."""
  check_missing_rate(missing_rate)
  return float(np.mean(values)) if missing_rate == "mean" else float(missing_rate)


def _rates_from_json(path, vocab_size, missing_rate):
  where = f"Rate table {path!r} (masking.rates_path)"
  ids, values = _json_entries(path)
  if ids.max() >= vocab_size:
    raise ValueError(f"{where} has token id {ids.max()} outside the vocabulary "
                     f"[0, {vocab_size}).")
  fill = _fill_rate(values, missing_rate)
  listed = len(ids)  # Each once: _json_entries refuses repeats.
  if listed < vocab_size / 2:  # Most ids at one rate: close to uniform masking.
    log.warning("%s lists only %d of the vocabulary's %d token ids; the other %d get the fill "
                "rate %.6g (masking.missing_rate=%r). Is it the table of this tokenizer?", where,
                listed, vocab_size, vocab_size - listed, fill, missing_rate)
  table = np.full(vocab_size, fill)
  table[ids] = values
  return table


def make_select(settings, rescale):
  def select_targets(tables, seed, tokens, sentences, maskable, budget):
    del sentences
    length = tokens.shape[-1]
    u = prng.uniform(prng.bits(seed, prng.SELECT, (length,)))  # (L,)
    if settings.budget == "bernoulli":
      # One gather gives the rate and whether the token can be a target (specials hold -1).
      signed = tables["signed_rates"][tokens]
      rate = jnp.maximum(signed, 0.0)
      if rescale:
        # Both per-sequence sums as one matrix-vector product: on XLA:CPU 13-35% faster per
        # call than two reductions at 32 x 128 and 32 x 512 (interleaved A/B), at
        # 256 x 512 the same. HIGHEST: no bf16 / TF32 rounding of the rates on accelerators.
        flags = (signed >= 0).astype(jnp.float32)
        total, n = jnp.dot(jnp.stack([rate, flags]), jnp.ones((length,), jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
        # A sequence whose tokens all have rate 0 draws them uniformly, as the exact budget
        # does (it had no target at all).
        rate = jnp.where(total > 0, rate * (settings.mask_prob * n / total),
                         settings.mask_prob * flags)
      # No "decide" from u / rate (see contract.corrupt): that pulls the rate gather into the
      # corruption kernel, and the DECIDE stream (a hash) costs less on XLA:CPU (raw rates:
      # 5 kernels -> 3, 20-35% faster per call from 32 x 128 to 256 x 512).
      return u < rate, {}
    # Exponential race: smallest -log(u) / w, as order-preserving integer keys with the
    # position in the low bits (ties between equal floats go to the lower position).
    weight = jax.lax.optimization_barrier(tables["weights"][tokens])  # (L,)
    exponential = -jnp.log(u)  # At most 24 * log(2) = 16.6.
    race = jnp.where(weight > 0, exponential / weight,
                     _ZERO_RATE_RACE * (1.0 + exponential / 32.0))
    fbits = jax.lax.bitcast_convert_type(race, jnp.uint32)
    pb = select.position_bits(length)
    race_bits = min(_RACE_BITS, 32 - pb)
    keys = (jnp.clip(fbits, _KEY_LO, _KEY_HI) - _KEY_LO) >> (_KEY_BITS - race_bits)
    keys = (keys << pb) | jnp.arange(length, dtype=jnp.uint32)
    # keys < 2**(race_bits + pb) - 1: the race's top bits are never all ones (52 binades of 64).
    target, _ = select.threshold_select(keys, maskable.astype(jnp.int32), budget,
                                        race_bits + pb)
    return target, {}
  return select_targets


def _non_special(table, special_ids):
  """The entries of a per-token table at the ids that can be targets."""
  ordinary = np.ones(table.shape[0], bool)
  ordinary[list(special_ids)] = False
  return table[ordinary]


def signed_rates(rates, special_ids):
  """The rates with -1 at the special ids (never targets), for the Bernoulli budget."""
  out = np.asarray(rates, np.float32).copy()
  out[list(special_ids)] = -1.0
  return out


def weights_from_rates(rates, special_ids):
  """Rates normalised to the largest non-special rate, positive ones floored, for the exponential
  race (a large rate on a special id, never a target, would squash every other weight to the
  floor). Zero stays zero: select_targets draws those tokens after all others."""
  rates = np.asarray(rates, np.float64)  # In float32 a ratio below ~1e-45 underflowed to 0.
  w = rates / _non_special(rates, special_ids).max()
  return np.where(w > 0, np.clip(w, MIN_RELATIVE_RATE, 1.0), 0.0).astype(np.float32)
