"""Multi-process start-up: `jax.distributed.initialize()` when this is one of several processes.

On TPU pods and Slurm, JAX detects the coordinator and process ids from the environment; elsewhere
give them with --coordinator_address, --num_processes and --process_id (or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import logging
import os

import jax
from absl import flags
from orbax.checkpoint import multihost

# Process 0 may build caches for hours (tokenizing and counting a large corpus) while the others
# wait at a barrier of the coordination service, which takes a timeout (device collectives may not
# wait that long). A crash of process 0 ends the wait sooner: the service runs in process 0.
CACHE_BARRIER_TIMEOUT_S = 24 * 3600

_COORDINATOR = "coordinator_address"
_NUM = "num_processes"
_ID = "process_id"


def define_flags() -> None:
  flags.DEFINE_string(_COORDINATOR, os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      "HOST:PORT of process 0, for multi-process training.")
  # Defaults from JAX_NUM_PROCESSES / JAX_PROCESS_ID are read by initialize(), where a value that
  # is not a number is reported as a one-line error (at import it was a traceback).
  flags.DEFINE_integer(_NUM, None, "Number of processes (default: $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer(_ID, None, "This process's index (default: $JAX_PROCESS_ID).")


def _env_int(name):
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"The environment variable {name}={value!r} is not an integer.") from None


def _num_processes():
  """--num_processes, else $JAX_NUM_PROCESSES; None when neither is given."""
  num = flags.FLAGS[_NUM].value
  return num if num is not None else _env_int("JAX_NUM_PROCESSES")


def _settings():
  """(coordinator, num_processes, process_id) from the flags, else the environment, checked; None
  when neither names a coordinator nor several processes (one process, or a detected cluster)."""
  f = flags.FLAGS
  coordinator = f[_COORDINATOR].value
  num = _num_processes()
  index = f[_ID].value if f[_ID].value is not None else _env_int("JAX_PROCESS_ID")
  if num is not None and num < 1:
    raise ValueError(f"--num_processes={num}: the number of processes must be at least 1.")
  if not coordinator and (num or 1) <= 1:
    return None
  missing = [f"--{name}" for name, value in ((_COORDINATOR, coordinator), (_NUM, num),
                                             (_ID, index)) if value is None or value == ""]
  # Slurm, TPU pods: jax.distributed detects the coordinator it is not given.
  detected = missing == [f"--{_COORDINATOR}"] and _auto_detected()
  if missing and not detected:
    raise ValueError(
        "Several processes need --coordinator_address HOST:PORT, --num_processes and "
        "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); "
        f"missing: {', '.join(missing)}.")
  if coordinator:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"--coordinator_address={coordinator!r}: expected HOST:PORT, process 0's "
                       "host and a free port, e.g. 10.0.0.2:1234.")
  if not 0 <= index < num:
    raise ValueError(f"--process_id={index} with --num_processes={num}: the id must be in "
                     f"0..{num - 1}.")
  return coordinator, num, index


def _tpu_chips_attached() -> bool:
  """Whether this host is a Cloud TPU VM: TPU chips on its PCI bus (JAX's own check).

  Plain TPU VMs set no environment variable that names the other workers; JAX's cluster
  detection asks the VM metadata server instead, so on any TPU VM we let it try.
  """
  try:
    from jax._src import hardware_utils  # Private, hence guarded: absent means "not detected".

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:
    return False


# What JAX's Slurm detection (jax/_src/clusters/slurm_cluster.py) reads besides SLURM_JOB_ID and
# SLURM_NTASKS; srun sets them in each task it starts.
_SLURM_STEP_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")


def _slurm_tasks_in_step() -> bool:
  """Whether this is one of several tasks of a Slurm job step, which JAX joins by itself.

  An allocation's shell (`salloc -n 2`, then `python train.py`) has the job's task count but is
  one process that no other would join; JAX would fail with a bare "coordinator_address should be
  defined", so it is refused here with the ways out."""
  if "SLURM_JOB_ID" not in os.environ or (_env_int("SLURM_NTASKS") or 1) <= 1:
    return False
  missing = [name for name in _SLURM_STEP_VARIABLES if name not in os.environ]
  if missing:
    raise ValueError(
        f"This Slurm job has SLURM_NTASKS={os.environ['SLURM_NTASKS']} tasks, but this process "
        f"was not started by srun ({', '.join(missing)} unset), so the others cannot be found: "
        "launch with srun, or unset SLURM_NTASKS / pass --num_processes=1 for one process.")
  return True


def _auto_detected() -> bool:
  """Environments where jax.distributed.initialize() finds everything by itself."""
  return _slurm_tasks_in_step() or (
      "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]) or (
      _tpu_chips_attached())


class _WarningsOnly(logging.Filter):
  """Lets through warnings and errors only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING


def initialize() -> None:
  settings = _settings()
  if settings:
    jax.distributed.initialize(*settings)
  elif _num_processes() is None and _auto_detected():  # An explicit 1 wins over the cluster's.
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d.", jax.process_index(), jax.process_count())
  if jax.process_index() != 0:
    # Every host runs the same loop, so its INFO lines would be printed once per host (all of
    # them interleaved by `gcloud ... ssh --worker=all`); process 0 speaks for the run.
    for handler in logging.getLogger().handlers:
      handler.addFilter(_WarningsOnly())


def main_process_first(name: str, build):
  """Returns build() run on process 0 first, then on the other processes.

  For caches on disk (tokenizer, tokenized corpus, corpus statistics): on a shared file system
  the others then read what process 0 wrote instead of writing the same files at the same time;
  on per-host disks each host still builds its own, after process 0. `name` names the barrier.
  """
  if jax.process_count() == 1:
    return build()
  wait = lambda: multihost.get_barrier_sync_fn()(  # noqa: E731
      key=f"main_process_first:{name}", timeout_ms=CACHE_BARRIER_TIMEOUT_S * 1000)
  if jax.process_index() == 0:
    result = build()
    wait()
    return result
  wait()
  return build()
