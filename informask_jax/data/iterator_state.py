"""Checks of a saved data iterator state on restore, and the errors they raise.

Shared by `BatchIterator` and `StreamingBatchIterator`: `IteratorStateError` for a state no
iterator could have written (a damaged checkpoint), `DataSettingsChanged` for one saved under
other data settings (the run would not continue the same data order); and `TooFewRows`, the data
that gives no batch at all.
"""

import numpy as np


class IteratorStateError(ValueError):
  """A saved iterator state that no iterator could have written: a damaged checkpoint."""


def saved_ints(state, keys) -> list[int]:
  """The integer fields `keys` of a saved iterator state; IteratorStateError if one is not, or is
  negative (every field counts epochs, batches, chunks or rows from 0; a negative one would only
  fail at the next batch, far from the checkpoint that holds it, or give an empty batch)."""
  if not isinstance(state, dict):
    raise IteratorStateError(f"The data iterator state is {state!r}, not a JSON object.")
  for key in keys:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
      raise IteratorStateError(f"The data iterator state has {key}={value!r}, not an integer.")
    if value < 0:
      raise IteratorStateError(f"The data iterator state has {key}={value!r}, a negative count.")
  return [int(state[key]) for key in keys]


class TooFewRows(ValueError):
  """The training data packs into fewer rows than one global batch: more data or a smaller batch
  is the fix, not reading it again (a stream finds it at its first batch)."""


class DataSettingsChanged(ValueError):
  """A saved iterator state from other data settings (batch size, seed, corpus, seq_len...)."""


# The config keys behind each saved iterator setting, for the error.
_SETTING_KEYS = {
    "global_batch_size": "config.train.batch_size",
    "seed": "config.train.seed",
    "seq_len": "config.data.seq_len",
    "mode": "config.data.packing",
    "num_rows": "the packed training rows: config.data.seq_len, the corpus or its config.data "
                "options (max_documents, validation_fraction, packing, ...), or another version "
                "of the library's reading and cleaning",
    "corpus": "the documents config.data.sources read: a file edited, added or removed since, "
              "or another version of the library's reading and cleaning",
}


def check_saved_settings(state, iterator, keys):
  """DataSettingsChanged if a saved iterator state disagrees with `iterator` on a setting."""
  for key in keys:
    if key in state and state[key] != getattr(iterator, key):
      where = f" (set by {_SETTING_KEYS[key]})" if key in _SETTING_KEYS else ""
      raise DataSettingsChanged(
          f"the {type(iterator).__name__} state was saved with {key}={state[key]!r}, this run "
          f"has {key}={getattr(iterator, key)!r}{where}; resuming would not continue the same "
          "data order.")


# What each iterator's state holds that the other's does not: the kind of a state saved before
# states recorded it.
_KIND_FIELDS = {"in_memory": "position", "streaming": "chunk"}


def check_kind(state, kind: str) -> None:
  """DataSettingsChanged for the state of the other iterator (a source's streaming switched
  between runs): its fields would otherwise read as a damaged checkpoint."""
  if not isinstance(state, dict):
    return  # saved_ints names it.
  saved = state.get("kind") or next((k for k, field in _KIND_FIELDS.items() if field in state),
                                    kind)
  if saved != kind:
    said = {"in_memory": "held in memory", "streaming": "streamed"}
    raise DataSettingsChanged(
        f"the data iterator state was saved with the corpus {said.get(saved, saved)}, and this "
        f"run's is {said[kind]} (set by config.data.sources[*].streaming); a position in one is "
        "none in the other.")
