"""Test setup: simulate 8 CPU devices before JAX is imported anywhere, so sharding tests run on a
laptop or CI machine exactly as they would on an 8-accelerator host."""

import fcntl
import os
import sys
import threading

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never touch a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The repository root holds `configs/`, imported as a package by the tests.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


import pytest  # noqa: E402  (after the environment is set up)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """One cache for the session: the tokenizer, tokenized corpus and statistics are built once."""
  return str(tmp_path_factory.mktemp("informask_cache"))


@pytest.fixture
def tiny_config(cache_dir):
  """The README's tiny config, with the session cache; tests shrink it further as they need."""
  from configs import base

  config = base.get_base_config("tiny")
  config.data.cache_dir = cache_dir
  return config


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the marks (with --dist loadgroup).
class _AnotherRun:
  """A second run of the same build, in a thread, for the tests of runs started together: this
  run starts it from inside its own build (`start_and_wait`) and goes on once the other has
  finished, reached the build itself (`reached_build`: no lock held it back), or is about to wait
  on a build lock (fcntl.flock, patched to say so)."""

  def __init__(self, monkeypatch, target):
    self.results, self.errors = [], []
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(target,))
    real_flock = fcntl.flock

    def flock(f, operation):
      if not operation & fcntl.LOCK_NB:
        self._done.set()  # About to wait: this run goes on.
      return real_flock(f, operation)

    monkeypatch.setattr(fcntl, "flock", flock)

  def _run(self, target):
    try:
      self.results.append(target())
    except Exception as e:  # noqa: BLE001 - raised in the test's thread, by join
      self.errors.append(e)
    finally:
      self._done.set()

  def start_and_wait(self):
    self._thread.start()
    assert self._done.wait(60)

  def reached_build(self):
    self._done.set()

  def join(self):
    self._thread.join(60)
    assert not self.errors, self.errors


@pytest.fixture
def another_run(monkeypatch):
  """another_run(target): see _AnotherRun."""
  return lambda target: _AnotherRun(monkeypatch, target)


def pytest_collection_modifyitems(items):
  """Tests that share a module-scoped fixture (a training run, a built table, an exported model)
  run on one xdist worker, so each such fixture is built once; other tests are spread freely."""
  for item in items:
    info = getattr(item, "_fixtureinfo", None)  # All the fixtures the test uses, transitively.
    defs_by_name = info.name2fixturedefs.values() if info else ()
    if any(defs[-1].scope == "module" for defs in defs_by_name):  # [-1]: the one that applies.
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session", autouse=True)
def xla_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the test run, shared by the xdist workers and the
  processes tests start (train.py runs, multi-process tests): most tests compile the same tiny
  model's steps, and compiling is most of their time on a small CPU. It lives in the run's pytest
  temp folder (a worker's parent), which pytest removes with old runs. The size bound turns on
  JAX's file lock, so a worker never reads an entry another is still writing."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  base = tmp_path_factory.getbasetemp()
  folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
  settings = {"jax_compilation_cache_dir": str(folder),
              "jax_compilation_cache_max_size": 8 << 30,
              "jax_persistent_cache_min_compile_time_secs": 0.5}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)  # For the processes tests start.
  compilation_cache.reset_cache()  # A compile while modules were imported decided it was off.
  yield folder
