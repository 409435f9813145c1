"""Host batches of in-memory packed rows: each host's slice of every global batch.

`BatchIterator` is shuffled per epoch from (seed, epoch) and resumes at the exact next batch from
a small state(); `eval_batches` gives the validation rows (all, or a fixed sample spread over
them) in row order, the last batch padded.
"""

import jax
import numpy as np

from informask_jax.data.iterator_state import (
    IteratorStateError,
    TooFewRows,
    check_kind,
    check_saved_settings,
    saved_ints,
)


def process_slot(process_index, process_count):
  """(this process's index, the process count); None means JAX's own, for a multi-host run."""
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} is outside [0, process_count={count}).")
  return index, count


def local_batch_size(global_batch_size, count):
  """The rows each of `count` processes loads; ValueError unless the global batch divides."""
  if global_batch_size <= 0 or global_batch_size % count:
    raise ValueError(f"The global batch size {global_batch_size} must be a positive multiple of "
                     f"the number of processes {count} (each process loads "
                     f"{global_batch_size} / {count} rows).")
  return global_batch_size // count


def _num_rows(arrays):
  sizes = {k: len(v) for k, v in arrays.items()}
  if not sizes or len(set(sizes.values())) != 1:
    raise ValueError(f"Arrays to batch must share their first dimension; got {sizes}.")
  return next(iter(sizes.values()))


class BatchIterator:
  """Infinite, resumable iterator over global batches of packed rows, returning this host's slice.

  Epoch e visits the rows in the order `permutation(seed, e)` (identity when shuffle=False);
  global batch b of an epoch is rows order[b * B:(b + 1) * B], and process i of n receives rows
  [i * B / n, (i + 1) * B / n) of it. With drop_remainder the last B - 1 rows or fewer of each
  epoch's order are skipped (a different set each epoch); otherwise the last batch of an epoch is
  completed with the first rows of the same epoch's order.
  """

  def __init__(self, arrays, global_batch_size, *, seed, shuffle=True, process_index=None,
               process_count=None, drop_remainder=True, corpus=None):
    """`corpus`: the fingerprint of the documents the rows were packed from, saved with the
    state: a resume on an edited corpus of as many rows would not continue the same order."""
    self.arrays, self.corpus = arrays, corpus
    self.num_rows = _num_rows(arrays)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = process_slot(process_index, process_count)
    self.local_batch_size = local_batch_size(self.global_batch_size, self.process_count)
    if drop_remainder and self.num_rows < self.global_batch_size:
      raise TooFewRows(f"The data packs into {self.num_rows} rows, fewer than one global batch "
                       f"of {self.global_batch_size}; use more documents (config.data.sources, "
                       "config.data.max_documents) or a smaller config.train.batch_size.")
    self.seed, self.shuffle, self.drop_remainder = int(seed), bool(shuffle), bool(drop_remainder)
    self.batches_per_epoch = (self.num_rows // self.global_batch_size if drop_remainder
                              else -(-self.num_rows // self.global_batch_size))
    self.epoch, self.position = 0, 0
    self._order_epoch, self._order = None, None

  def order(self, epoch):
    """The row order of an epoch, a pure function of (seed, epoch)."""
    if self._order_epoch != epoch:
      if self.shuffle:
        rng = np.random.default_rng([self.seed, epoch])
        self._order = rng.permutation(self.num_rows)
      else:
        self._order = np.arange(self.num_rows)
      self._order_epoch = epoch
    return self._order

  def __iter__(self):
    return self

  def __next__(self):
    order = self.order(self.epoch)
    start = self.position * self.global_batch_size + self.process_index * self.local_batch_size
    # Kept in the epoch's order, so the global batch is the same whatever the number of hosts.
    rows = np.take(order, np.arange(start, start + self.local_batch_size), mode="wrap")
    batch = {k: v[rows] for k, v in self.arrays.items()}
    self.position += 1
    if self.position == self.batches_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
    return batch

  def state(self):
    """Where the next batch starts, with what must match on restore; JSON-able."""
    state = {"kind": "in_memory", "epoch": self.epoch, "position": self.position,
             "seed": self.seed, "shuffle": self.shuffle, "num_rows": self.num_rows,
             "global_batch_size": self.global_batch_size}
    return state if self.corpus is None else {**state, "corpus": self.corpus}

  def restore(self, state):
    check_kind(state, "in_memory")
    epoch, position = saved_ints(state, ("epoch", "position"))
    # The row count first: its message names the settings that change it.
    check_saved_settings(state, self, ("seed", "shuffle", "num_rows", "global_batch_size")
                         + (("corpus",) if self.corpus is not None else ()))
    if not 0 <= position < self.batches_per_epoch:
      raise IteratorStateError(f"Iterator state position={position} is outside the epoch's "
                               f"{self.batches_per_epoch} batches.")
    self.epoch, self.position = epoch, position


# The sample of validation rows a capped evaluation reads: fixed, so that runs of other seeds
# evaluate the same rows.
EVAL_SAMPLE_SEED = 0


def eval_batches(arrays, global_batch_size, num_batches, *, process_index=None,
                 process_count=None, pad_id=0):
  """Yields this host's slice of `num_batches` global batches of validation rows.

  num_batches < 0 means all rows, in row order. Fewer batches than the rows fill take a fixed
  sample of rows spread over the whole split, in row order: the split holds the sources one after
  the other, and its first rows would be the first source's only. A final partial batch is
  completed with rows of pad_id tokens (sentence id -1), which hold no prediction targets, so it
  keeps the compiled batch shape.
  """
  num_rows = _num_rows(arrays)
  if 0 <= num_batches and num_batches * global_batch_size < num_rows:
    rows = np.sort(np.random.default_rng(EVAL_SAMPLE_SEED).choice(
        num_rows, int(num_batches) * int(global_batch_size), replace=False))
    arrays, num_rows = {key: value[rows] for key, value in arrays.items()}, len(rows)
  index, count = process_slot(process_index, process_count)
  local = local_batch_size(int(global_batch_size), count)
  total = -(-num_rows // global_batch_size)
  total = total if num_batches < 0 else min(int(num_batches), total)
  for b in range(total):
    start = b * global_batch_size + index * local
    stop = min(start + local, num_rows)
    batch = {}
    for key, value in arrays.items():
      part = value[start:stop] if start < num_rows else value[:0]
      if len(part) < local:
        fill = pad_id if key == "token_ids" else (-1 if key == "sentence_ids" else 0)
        pad = np.full((local - len(part),) + value.shape[1:], fill, value.dtype)
        part = np.concatenate([part, pad])
      batch[key] = part
    yield batch
