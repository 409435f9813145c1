"""What the launcher decides for the workers: the stages this pipeline builds and `Settings`, the
plain values every transform that needs them carries (the tokenizer travels on its own)."""

from __future__ import annotations

import dataclasses

import numpy as np

# The stages this pipeline builds; "rates" needs packed training rows and the JAX masker.
BEAM_STAGES = ("counts", "pmi", "ngrams")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the workers need besides the tokenizer; plain values, so it pickles small (every
  transform that reads it carries a copy in the job graph)."""

  vocab_size: int
  special_ids: tuple[int, ...]  # pad, unk, cls, sep, mask
  continuation: np.ndarray  # bool (V,): "##" pieces
  text_field: str
  validation_fraction: float
  stats: dict  # config.stats as a dict
  pair_blocks: int = 32  # Row blocks of the pair table: parallel merges.
  ngram_partitions: int = 32  # Hash partitions of the n-gram keys.
  batch_chars: int = 4 << 20  # Characters of text per tokenized chunk (~1M tokens).

  @property
  def special_mask(self) -> np.ndarray:
    special = np.zeros(self.vocab_size, bool)
    special[list(self.special_ids)] = True
    return special
