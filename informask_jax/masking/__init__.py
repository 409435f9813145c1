"""Masking strategies for MLM pretraining, as pure JAX functions run inside the train step.

  masker = masking.get_masker("informask", vocab_size=30522, mask_id=103,
                              special_ids=(0, 100, 101, 102, 103), rates="id_mask_prob.json")
  out = masker(rng, token_ids, sentence_ids=None)  # token_ids int32[B, L], jit-able
  out["input_ids"]  int32[B, L]  corrupted inputs (80% [MASK], 10% random token, 10% unchanged)
  out["labels"]     int32[B, L]  original id at targets, -100 elsewhere
  out["mask"]       bool[B, L]   True at targets

Strategies (MASKERS): random, whole_word, span, pmi_span, informask, informask_online; their
options are listed in `OPTIONS` and documented in each module. Example i of the batch draws
from a seed hashed from `rng` and i, its global index (`prng.example_seeds`), so masks do not
depend on how the batch is sharded (inside shard_map, where a device sees its slice of the batch,
pass the slice's first global index as example_offset=).
Bad options raise ValueError here, at construction, never inside a trace (but for
informask_online's num_candidates x sequence length, known at the first call).
"""

import inspect
import logging
import math

import numpy as np

from informask_jax.masking import contract, informask, online, pmi_span, random_tokens, words
from informask_jax.masking.contract import IGNORE_LABEL, Masker

__all__ = ["MASKERS", "OPTIONS", "IGNORE_LABEL", "Masker", "check_config", "check_name",
           "get_masker", "masker_from_config"]


def _random(settings):
  return random_tokens.make_select(settings), {}, ()


def _whole_word(settings, continuation=None):
  table = contract.as_bool_table(continuation, settings.vocab_size, "whole_word: continuation")
  return words.make_whole_word(settings), {"continuation": table}, ()


def _span(settings, continuation=None, geometric_p=0.2, max_span_len=10):
  words.check_span_options(geometric_p, max_span_len)
  table = contract.as_bool_table(continuation, settings.vocab_size, "span: continuation")
  options = (("geometric_p", float(geometric_p)), ("max_span_len", int(max_span_len)))
  return (words.make_span(settings, float(geometric_p), int(max_span_len)),
          {"continuation": table}, options)


def _pmi_span(settings, continuation=None, variant="ngram", ngrams=None, bigrams=None,
              max_ngram_tokens=None):
  pmi_span.check_variant(variant)
  if max_ngram_tokens is not None and (
      isinstance(max_ngram_tokens, bool) or not isinstance(max_ngram_tokens, int | np.integer)
      or not 2 <= max_ngram_tokens <= pmi_span.MAX_NGRAM_TOKENS):
    raise ValueError(f"max_ngram_tokens must be an integer in [2, {pmi_span.MAX_NGRAM_TOKENS}], "
                     f"got {max_ngram_tokens!r}.")
  reads, unused, other_table = (("ngrams", "bigrams", bigrams) if variant == "ngram" else
                                ("bigrams", "ngrams", ngrams))
  if other_table is not None:  # Silently unused, a table meant for the other variant hid a mistake.
    raise ValueError(f"pmi_span: {unused}= is the table of the other variant; "
                     f"variant={variant!r} (masking.pmi_variant) reads {reads}=.")
  if variant == "bigram" and max_ngram_tokens is not None:
    raise ValueError("pmi_span: max_ngram_tokens bounds the n-gram variant's matches; "
                     "variant='bigram' has none.")
  table = contract.as_bool_table(continuation, settings.vocab_size, "pmi_span: continuation")
  tables, ngram_words = {"continuation": table}, None
  if variant == "ngram":
    ngram, ngram_words, max_ngram_tokens = pmi_span.ngram_tables(
        ngrams, settings.vocab_size, max_ngram_tokens, table)
    tables.update(ngram)
  else:
    tables.update(pmi_span.bigram_tables(bigrams, settings.vocab_size))
  # The bigram variant looks up no n-gram: its bound is never used.
  max_ngram_tokens = int(max_ngram_tokens or pmi_span.MAX_NGRAM_TOKENS)
  options = (("variant", variant), ("max_ngram_tokens", max_ngram_tokens))
  return (pmi_span.make_select(settings, variant, max_ngram_tokens, ngram_words), tables,
          options)


def _informask(settings, rates=None, rescale=True, missing_rate="mean"):
  if not isinstance(rescale, bool | np.bool_):
    raise ValueError(f"informask: rescale (masking.rescale) must be True or False, got "
                     f"{rescale!r}.")
  rescale = bool(rescale)
  informask.check_missing_rate(missing_rate)  # Only a JSON table reads it; checked for every one.
  # Options that would change nothing are refused, as another strategy's options are: the
  # caller meant something else. (A config's are warned about as ignored and not passed.)
  if not rescale and settings.budget == "exact":
    raise ValueError("informask: rescale=False applies to the bernoulli budget; the exact budget "
                     "draws by comparing rates, which has no scale to keep or change.")
  if missing_rate != "mean" and not informask.is_json_table(rates):
    raise ValueError(f"informask: missing_rate={missing_rate!r} fills the ids an id_mask_prob "
                     "JSON table leaves out; these rates list every id.")
  table = informask.load_rates(rates, settings.vocab_size, missing_rate)
  informask.check_rates_for(table, settings.special_ids, rescale, settings.budget,
                            informask.describe(rates))
  if settings.budget == "bernoulli":
    tables = {"rates": table, "signed_rates": informask.signed_rates(table, settings.special_ids)}
  else:
    tables = {"rates": table,
              "weights": informask.weights_from_rates(table, settings.special_ids)}
  return informask.make_select(settings, rescale), tables, (("rescale", rescale),)


def _informask_online(settings, pmi=None, num_candidates=16, pmi_vocab_size=None,
                      pmi_table="dense", pmi_dtype="float32"):
  online.check_num_candidates(num_candidates)
  matrix = online.load_pmi(pmi, settings.vocab_size)
  tables, size = online.build_tables(matrix, pmi_vocab_size=pmi_vocab_size, pmi_table=pmi_table,
                                     pmi_dtype=pmi_dtype)
  options = (("num_candidates", int(num_candidates)), ("pmi_rows", size),
             ("pmi_table", pmi_table))
  return online.make_select(settings, int(num_candidates), size), tables, options


# name -> factory(settings, **options) -> (select, tables, options)
MASKERS = {
    "random": _random,
    "whole_word": _whole_word,
    "span": _span,
    "pmi_span": _pmi_span,
    "informask": _informask,
    "informask_online": _informask_online,
}

OPTIONS = {
    "random": (),
    "whole_word": ("continuation",),
    "span": ("continuation", "geometric_p", "max_span_len"),
    "pmi_span": ("continuation", "variant", "ngrams", "bigrams", "max_ngram_tokens"),
    "informask": ("rates", "rescale", "missing_rate"),
    "informask_online": ("pmi", "num_candidates", "pmi_vocab_size", "pmi_table", "pmi_dtype"),
}


def check_name(name) -> None:
  if name not in MASKERS:
    raise ValueError(f"Unknown masking strategy {name!r} (masking.name); choose one of "
                     f"{sorted(MASKERS)}.")


def missing_rate_of(masking_config):
  """config.masking.missing_rate, a string field: "mean" or a finite number >= 0."""
  missing = str(masking_config.get("missing_rate", "mean"))
  try:
    value = missing if missing == "mean" else float(missing)
  except ValueError:
    value = -1.0
  if value != "mean" and not (math.isfinite(value) and value >= 0):
    raise ValueError(f"masking.missing_rate={missing!r}: expected 'mean' or a finite number "
                     ">= 0.")
  return value


# config.masking fields that only one strategy reads: field -> (strategy, its option).
_STRATEGY_FIELDS = {
    "span_geometric_p": ("span", "geometric_p"), "span_max_len": ("span", "max_span_len"),
    "pmi_variant": ("pmi_span", "variant"), "num_candidates": ("informask_online",
                                                               "num_candidates"),
    "rescale": ("informask", "rescale"), "missing_rate": ("informask", "missing_rate"),
    "rates_path": ("informask", None),
}


def _ignored_fields(masking_config) -> list[str]:
  """The fields set away from their default for a strategy other than the chosen one."""
  out = []
  name, rates_path = masking_config.name, str(masking_config.get("rates_path", "") or "")
  for field, (owner, option) in _STRATEGY_FIELDS.items():
    if owner == name or field not in masking_config:
      continue
    if field == "num_candidates" and name == "informask" and not rates_path:
      continue  # The corpus statistics compute informask's rates with the online masker's K.
    default = "" if option is None else \
        inspect.signature(MASKERS[owner]).parameters[option].default
    value = masking_config[field]
    if value != default:
      out.append(f"config.masking.{field}={value!r} ({owner} only)")
  if name != "informask":
    return out
  if not informask.is_json_table(rates_path) and \
      str(masking_config.get("missing_rate", "mean")) != "mean":
    # Only a JSON table (the original repository's id_mask_prob.json) can leave ids out.
    out.append(f"config.masking.missing_rate={masking_config.missing_rate!r} (a .json "
               "rates_path only)")
  unscaled = not masking_config.get("rescale", True)
  if unscaled and masking_config.budget == "exact":  # It draws by comparing rates: no scale.
    out.append("config.masking.rescale=False (the bernoulli budget only)")
  mask_prob = masking_config.mask_prob
  if unscaled and masking_config.budget == "bernoulli" and rates_path and mask_prob != \
      inspect.signature(get_masker).parameters["mask_prob"].default:
    # A table built from the corpus is built for mask_prob; a given one masks its own share.
    out.append(f"config.masking.mask_prob={mask_prob!r} when drawing targets (with rescale=False "
               "each token is a target with its rate as stored)")
  return out


def check_config(masking_config) -> None:
  """The checks get_masker makes that need no tables (shared settings, the strategy's own
  options), on a `config.masking`: a training run calls it before reading the corpus."""
  c = masking_config
  check_name(c.name)
  contract.check_settings(2, 0, (0,), c.mask_prob, c.replace_prob, c.random_prob, c.budget)
  if c.name == "informask_online":
    online.check_num_candidates(c.num_candidates)
  elif c.name == "span":
    words.check_span_options(c.span_geometric_p, c.span_max_len)
  elif c.name == "pmi_span":
    pmi_span.check_variant(c.pmi_variant)
  elif c.name == "informask":
    missing_rate_of(c)
  # After the checks: a bad value is an error, not first a warning that it goes unused.
  ignored = _ignored_fields(c)
  if ignored:
    logging.warning("masking.name=%r ignores %s.", c.name, ", ".join(ignored))


def get_masker(name, *, vocab_size, mask_id, special_ids, mask_prob=0.15, replace_prob=0.8,
               random_prob=0.1, budget="exact", **options):
  """Builds the masker `name`; see the module docstring. Raises ValueError on bad options."""
  check_name(name)
  settings = contract.check_settings(vocab_size, mask_id, special_ids, mask_prob, replace_prob,
                                     random_prob, budget)
  contract.reject_unknown(name, options, OPTIONS[name])
  select_fn, tables, extra = MASKERS[name](settings, **options)
  return Masker(name, select_fn, tables, settings, extra)


def masker_from_config(masking_config, *, vocab_size, special_ids, mask_id, continuation=None,
                       rates=None, pmi=None, ngrams=None, bigrams=None):
  """get_masker from the `config.masking` fields (name, mask_prob, ..., rates_path).

  Tables not needed by the chosen strategy are ignored. For informask, `rates` (array or path)
  wins over `masking.rates_path`.
  """
  c = masking_config
  name = c.name
  options = {}
  if name in ("whole_word", "span", "pmi_span"):
    options["continuation"] = continuation
  if name == "span":
    options.update(geometric_p=c.span_geometric_p, max_span_len=c.span_max_len)
  elif name == "pmi_span":
    options["variant"] = c.pmi_variant
    if c.pmi_variant == "bigram":
      options["bigrams"] = bigrams
    else:
      options["ngrams"] = ngrams
  elif name == "informask":
    if rates is None and not c.get("rates_path", ""):
      raise ValueError("informask needs a rate table: set masking.rates_path (a .npy or "
                       "id_mask_prob.json file) or build it with the statistics module.")
    options["rates"] = rates if rates is not None else c.rates_path
    # Those that apply only (check_config warns about the others, get_masker refuses them).
    if c.budget == "bernoulli":
      options["rescale"] = bool(c.get("rescale", True))
    if informask.is_json_table(options["rates"]):
      options["missing_rate"] = missing_rate_of(c)
  elif name == "informask_online":
    options.update(pmi=pmi, num_candidates=c.num_candidates)
  return get_masker(name, vocab_size=vocab_size, mask_id=mask_id, special_ids=tuple(special_ids),
                    mask_prob=c.mask_prob, replace_prob=c.replace_prob,
                    random_prob=c.random_prob, budget=c.budget, **options)
