"""Host batches -> global jax.Arrays, transferred a few batches ahead of the training step."""

import collections

import jax


def make_global_batch(local_batch, sharding):
  """Each host's rows -> global jax.Arrays laid out by `sharding` (one, or a dict per key)."""
  out = {}
  for key, value in local_batch.items():
    sh = sharding[key] if isinstance(sharding, dict) else sharding
    try:
      out[key] = jax.make_array_from_process_local_data(sh, value)
    except (ValueError, TypeError) as e:
      raise ValueError(f"Cannot make a global array of batch[{key!r}]: process "
                       f"{jax.process_index()} of {jax.process_count()} holds shape {value.shape} "
                       f"for sharding {sh}: {e}") from e
  return out


class Prefetcher:
  """Iterator of global batches kept `size` ahead of the consumer.

  Transfers are asynchronous, so batch t + 1 moves to the devices while step t runs. `state()` is
  the wrapped iterator's state *before the next batch this Prefetcher will return*, not the
  iterator's own (which is ahead by the prefetched batches): save this one in checkpoints.

  An error of the wrapped iterator (a file that no longer reads, a stream's network) is raised
  once the batches read before it are consumed, and `state()` is then that of the batch that
  failed: a checkpoint saved at that point resumes with it. The iterator is not called again: a
  generator that raised is finished, and its next call would look like the end of the data.
  """

  def __init__(self, iterator, sharding, size=2):
    self.iterator, self.sharding, self.size = iterator, sharding, max(1, int(size))
    self._queue = collections.deque()
    self._failure = None  # (state before the failed batch, the error)

  def _fill(self):
    while self._failure is None and len(self._queue) < self.size:
      state = self.iterator.state() if hasattr(self.iterator, "state") else None
      try:
        local = next(self.iterator)
      except StopIteration:
        return
      except Exception as e:  # Raised when the batches before it are used up.
        self._failure = (state, e)
        return
      self._queue.append((state, make_global_batch(local, self.sharding)))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    if not self._queue:
      if self._failure is not None:
        raise self._failure[1]
      raise StopIteration
    _, batch = self._queue.popleft()
    self._fill()
    return batch

  def state(self):
    if self._queue:
      return self._queue[0][0]
    if self._failure is not None:
      return self._failure[0]
    return self.iterator.state()


def prefetch(iterator, sharding, size=2):
  """Global batches from an iterator of local ones, `size` ahead; see `Prefetcher`."""
  return Prefetcher(iterator, sharding, size)
