"""Worker processes for `datasets` (loading, cleaning, tokenizing with data.num_proc), by spawn.

`datasets` takes its pools from the default contexts of `multiprocess` (map, the builders) and
of the standard `multiprocessing` (resolving and preparing data files), which fork on Linux.
JAX starts threads when its backend initialises, and train.py builds the device mesh before it
reads the corpus: a fork of a multithreaded process can deadlock in the child (on a lock another
thread held at the fork), and JAX warns at every such fork. Spawned workers start a fresh
interpreter instead; they pay an import (a few seconds each), which only corpora large enough to
get workers (corpus.PARALLEL_MIN_DOCUMENTS documents, or several files) see.
"""

import contextlib
import multiprocessing

import multiprocess


@contextlib.contextmanager
def spawned():
  """Pools that `datasets` creates inside this block start their workers by spawn."""
  previous = [(m, m.get_start_method(allow_none=True)) for m in (multiprocess, multiprocessing)]
  for module, _ in previous:
    module.set_start_method("spawn", force=True)
  try:
    yield
  finally:
    for module, method in previous:
      module.set_start_method(method, force=True)
