"""When train.py starts jax.distributed by itself: Slurm jobs of several tasks and Cloud TPU VMs."""

import pytest

from informask_jax import distributed


@pytest.fixture
def bare_env(monkeypatch):
  for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_tpu_chips_attached", lambda: False)
  return monkeypatch


def test_a_single_machine_is_not_distributed(bare_env):
  assert not distributed._auto_detected()
  bare_env.setenv("SLURM_JOB_ID", "7")
  bare_env.setenv("SLURM_NTASKS", "1")  # An interactive one-task allocation: one process.
  assert not distributed._auto_detected()


def test_slurm_with_several_tasks(bare_env):
  bare_env.setenv("SLURM_JOB_ID", "7")
  bare_env.setenv("SLURM_NTASKS", "16")
  assert distributed._auto_detected()


def test_tpu_vms_with_or_without_worker_list(bare_env):
  bare_env.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")  # GKE names the workers.
  assert distributed._auto_detected()
  bare_env.delenv("TPU_WORKER_HOSTNAMES")
  bare_env.setattr(distributed, "_tpu_chips_attached", lambda: True)  # A plain TPU VM.
  assert distributed._auto_detected()


@pytest.mark.parametrize("index,order", [(0, ["build", "barrier"]), (1, ["barrier", "build"])])
def test_main_process_first_builds_before_the_others(monkeypatch, index, order):
  events = []
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed.jax, "process_index", lambda: index)

  def barrier(key, timeout_ms):
    assert key == "main_process_first:cache" and timeout_ms > 0
    events.append("barrier")
  monkeypatch.setattr(distributed.multihost, "get_barrier_sync_fn", lambda: barrier)
  assert distributed.main_process_first("cache", lambda: events.append("build") or 7) == 7
  assert events == order


def test_main_process_first_on_one_process_needs_no_barrier(monkeypatch):
  monkeypatch.setattr(distributed.multihost, "get_barrier_sync_fn", lambda: pytest.fail("barrier"))
  assert distributed.main_process_first("cache", lambda: 3) == 3
