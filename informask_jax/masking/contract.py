"""The masker contract shared by every strategy, and the steps they have in common.

A strategy supplies `select(tables, seed, tokens, sentence_ids, maskable, budget) ->
(target bool[L], aux dict)` for one sequence. `Masker` wraps it: per-example seeds from the global
example index, vmap over the batch, the exact budget, and BERT's 80/10/10 corruption.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from informask_jax.masking import prng

IGNORE_LABEL = -100
BUDGETS = ("exact", "bernoulli")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Options every strategy shares (hashable: it is pytree aux data)."""
  vocab_size: int
  mask_id: int
  special_ids: tuple
  mask_prob: float
  replace_prob: float
  random_prob: float
  budget: str


def check_settings(vocab_size, mask_id, special_ids, mask_prob, replace_prob, random_prob,
                   budget):
  """Validates the shared options; raises ValueError naming the bad one."""
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) or \
      not 2 <= vocab_size < 2**31:  # Token ids are int32: random replacements would wrap.
    raise ValueError(f"vocab_size must be an integer in [2, 2**31), got {vocab_size!r}.")
  vocab_size = int(vocab_size)
  listed = isinstance(special_ids, list | tuple | set | frozenset | np.ndarray)
  ids = [mask_id, *special_ids] if listed else None
  if ids is None or not all(isinstance(i, int | np.integer) and not isinstance(i, bool)
                            for i in ids):
    raise ValueError(f"mask_id and special_ids must be integer token ids (special_ids a list or "
                     f"tuple), got mask_id={mask_id!r}, special_ids={special_ids!r}.")
  if len(ids) < 2:
    raise ValueError("special_ids is empty; give at least the padding id (and [CLS], [SEP], ...).")
  for i in ids:
    if not 0 <= int(i) < vocab_size:
      raise ValueError(f"Token id {i} (mask_id / special_ids) is outside [0, {vocab_size}).")
  # [MASK] is never a target nor a random replacement, whether or not it is listed.
  special = tuple(sorted({int(i) for i in ids}))
  if len(special) >= vocab_size:
    raise ValueError("special_ids cover the whole vocabulary: nothing could be masked.")
  for name, p in (("mask_prob", mask_prob), ("replace_prob", replace_prob),
                  ("random_prob", random_prob)):
    # bool is an int: True would pass as 1.0, a flag set where a fraction was meant.
    if isinstance(p, bool | np.bool_) or not isinstance(p, int | float | np.integer | np.floating) \
        or not np.isfinite(p):
      raise ValueError(f"{name} must be a finite number, got {p!r}.")
  if not 0.0 < mask_prob < 1.0:
    raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}.")
  if replace_prob < 0 or random_prob < 0 or replace_prob + random_prob > 1.0 + 1e-9:
    raise ValueError(f"replace_prob ({replace_prob}) and random_prob ({random_prob}) must be >= 0 "
                     "with replace_prob + random_prob <= 1.")
  if budget not in BUDGETS:
    raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}.")
  return Settings(vocab_size, int(mask_id), special, float(mask_prob), float(replace_prob),
                  float(random_prob), budget)


def budget_table(mask_prob, length):
  """int32[L + 1]: Python's round(mask_prob * n) for n maskable tokens (exactly, in float64)."""
  return np.array([round(mask_prob * n) for n in range(length + 1)], np.int32)


def corrupt(seed, tokens, target, settings, decide=None):
  """BERT's corruption of the targets: [MASK] / a random non-special token / unchanged.

  `decide`: optional float[L] uniform in [0, 1) at the targets, given by strategies that decide
  per unit (span, pmi_span: one draw shared by a unit's tokens); else each token draws its own
  from the DECIDE stream. (A Bernoulli draw u < p would leave u / p uniform for free, but that
  pulls p into the corruption kernel, and for a tiny p it takes a few values only.)
  """
  length = tokens.shape[-1]
  if decide is None:
    decide = prng.uniform(prng.bits(seed, prng.DECIDE, (length,)))
  to_mask = decide < settings.replace_prob
  to_random = ~to_mask & (decide < settings.replace_prob + settings.random_prob)
  # A uniform id among the V - k non-special ones, then shifted past each special id (sorted):
  # a bijection onto the non-special ids, without a gather.
  n = settings.vocab_size - len(settings.special_ids)
  random_tokens = prng.below(prng.bits(seed, prng.REPLACE, (length,)), n).astype(jnp.int32)
  for s in settings.special_ids:
    random_tokens = random_tokens + (random_tokens >= s)
  corrupted = jnp.where(to_mask, settings.mask_id, jnp.where(to_random, random_tokens, tokens))
  return jnp.where(target, corrupted, tokens)


@jax.tree_util.register_pytree_node_class
class Masker:
  """`masker(rng, token_ids, *, sentence_ids=None) -> {"input_ids", "labels", "mask"}`.

  A pytree: its tables are leaves, so a train step can take the masker as a jit argument instead
  of embedding large tables (informask_online's PMI) as constants when it closes over it.

  Ids outside [0, vocab_size) raise a ValueError when the masker sees concrete ids (an eager
  call). Inside a jitted step they are tracers and go unchecked: JAX indexing clamps such an id
  into the table (vocab_size + 7 reads the last row), so it is masked as that token would be.
  The data pipeline's ids are in range by construction (vocab_size is its tokenizer's table
  size); a step fed from elsewhere must check them itself, as a device-side check would cost
  every step a host sync.
  """

  def __init__(self, name, select, tables, settings, options=()):
    self.name = name
    self.select = select
    self.tables = tables
    self.settings = settings
    self.options = options  # Hashable (name, value) pairs, for repr and pytree equality.

  def __repr__(self):
    opts = ", ".join(f"{k}={v!r}" for k, v in self.options)
    return f"Masker({self.name!r}, {self.settings}{', ' + opts if opts else ''})"

  def tree_flatten(self):
    return (self.tables,), (self.name, self.select, self.settings, self.options)

  @classmethod
  def tree_unflatten(cls, aux, children):
    name, select, settings, options = aux
    return cls(name, select, children[0], settings, options)

  def __call__(self, rng, token_ids, *, sentence_ids=None, with_aux=False, example_offset=0):
    """example_offset: the global index of the first row. Under jit a batch sharded over
    devices is the global batch and the offset 0; inside shard_map each device holds a slice,
    whose rows draw as in the global batch with example_offset=jax.lax.axis_index(AXIS) *
    local_batch (with 0 every slice drew the first slice's masks)."""
    if not isinstance(token_ids, jax.core.Tracer) and \
        getattr(token_ids, "is_fully_addressable", True):
      # Concrete ids (an eager call, or an array closed over by a jitted function): check them
      # on the host, since JAX ops here would be traced under an enclosing jit.
      host = np.asarray(token_ids)
      if host.size and (host.min() < 0 or host.max() >= self.settings.vocab_size):
        raise ValueError(f"token_ids hold ids in [{host.min()}, {host.max()}], outside the "
                         f"masker's vocabulary [0, {self.settings.vocab_size}).")
    token_ids = jnp.asarray(token_ids)
    if token_ids.ndim != 2:
      raise ValueError(f"token_ids must be int[B, L], got shape {token_ids.shape}.")
    if not jnp.issubdtype(token_ids.dtype, jnp.integer):  # A float id would be truncated.
      raise ValueError(f"token_ids must hold integer ids, got dtype {token_ids.dtype}.")
    if token_ids.shape[1] == 0:
      raise ValueError(f"token_ids has no positions (shape {token_ids.shape}): nothing to mask.")
    token_ids = token_ids.astype(jnp.int32)
    batch, length = token_ids.shape
    if sentence_ids is None:
      sentence_ids = jnp.zeros_like(token_ids)  # One sentence; specials are excluded anyway.
    sentence_ids = jnp.asarray(sentence_ids)  # A nested list too.
    if sentence_ids.shape != token_ids.shape:
      raise ValueError(f"sentence_ids shape {sentence_ids.shape} != token_ids shape "
                       f"{token_ids.shape}.")
    if not jnp.issubdtype(sentence_ids.dtype, jnp.integer):
      # A float id would be truncated (0.5 joining sentence 0), moving sentence boundaries.
      raise ValueError(f"sentence_ids must hold integer ids, got dtype {sentence_ids.dtype}.")
    offset = jnp.asarray(example_offset)
    if offset.ndim != 0 or not jnp.issubdtype(offset.dtype, jnp.integer):
      raise ValueError(f"example_offset must be an integer scalar, got {offset.dtype} "
                       f"{offset.shape}.")
    seeds = prng.example_seeds(rng, batch, offset)  # (B, 2)
    settings, select = self.settings, self.select
    tables = jax.tree.map(jnp.asarray, self.tables)  # numpy tables become (constant) arrays
    budgets = budget_table(settings.mask_prob, length)

    def one(seed, tokens, sentences):  # (2,), (L,), (L,)
      maskable = tokens != settings.special_ids[0]  # (L,); chained compares fuse, a reduce won't
      for special in settings.special_ids[1:]:
        maskable = maskable & (tokens != special)
      budget = jnp.asarray(budgets)[jnp.sum(maskable)]
      target, aux = select(tables, seed, tokens, sentences.astype(jnp.int32), maskable, budget)
      target = target & maskable
      return {
          "input_ids": corrupt(seed, tokens, target, settings, aux.pop("decide", None)),
          "labels": jnp.where(target, tokens, IGNORE_LABEL),
          "mask": target,
      }, aux

    out, aux = jax.vmap(one)(seeds, token_ids, jnp.asarray(sentence_ids))
    return (out, aux) if with_aux else out


def reject_unknown(name, options, allowed):
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for masking strategy {name!r}; it takes "
                     f"{sorted(allowed) or 'no extra options'}.")


def as_bool_table(table, vocab_size, what):
  """A bool[V] per-token table (e.g. `continuation`), validated."""
  if table is None:
    raise ValueError(f"{what} is required (bool[{vocab_size}], e.g. from "
                     "informask_jax.tokenization.continuation_table(tokenizer)).")
  arr = np.asarray(table)
  if arr.ndim != 1 or arr.shape[0] < vocab_size:
    raise ValueError(f"{what} must be bool[{vocab_size}], got shape {arr.shape}.")
  if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.number) and
                                np.isin(arr, (0, 1)).all()):
    raise ValueError(f"{what} must hold booleans (or 0 / 1), got dtype {arr.dtype}.")
  return arr[:vocab_size].astype(bool)

