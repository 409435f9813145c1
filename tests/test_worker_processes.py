"""worker_processes.spawned: pools made inside start their workers by spawn, for both
multiprocessing libraries `datasets` uses, and each library's start method is put back after."""

import multiprocessing

import multiprocess
import pytest

from informask_jax import worker_processes

_MODULES = (multiprocess, multiprocessing)


@pytest.fixture
def start_methods():
  before = [m.get_start_method(allow_none=True) for m in _MODULES]
  yield
  for module, method in zip(_MODULES, before, strict=True):
    module.set_start_method(method, force=True)


@pytest.mark.parametrize("previous", ["fork", "forkserver", None])
def test_workers_are_spawned_inside_and_the_previous_method_is_put_back(start_methods, previous):
  for module in _MODULES:
    module.set_start_method(previous, force=True)
  with worker_processes.spawned():
    assert [m.get_start_method(allow_none=True) for m in _MODULES] == ["spawn", "spawn"]
  # None: no method was chosen yet, and the platform's default still applies after.
  assert [m.get_start_method(allow_none=True) for m in _MODULES] == [previous, previous]


def test_the_previous_method_is_put_back_after_an_error(start_methods):
  for module in _MODULES:
    module.set_start_method("fork", force=True)
  with pytest.raises(RuntimeError), worker_processes.spawned():
    raise RuntimeError("a worker failed")
  assert [m.get_start_method(allow_none=True) for m in _MODULES] == ["fork", "fork"]
