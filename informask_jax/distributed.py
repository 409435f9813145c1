"""Multi-process start-up: `jax.distributed.initialize()` when this is one of several processes.

On TPU pods and Slurm, JAX detects the coordinator and process ids from the environment; elsewhere
give them with --coordinator_address, --num_processes and --process_id (or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import atexit
import json
import logging
import os
import pathlib
import secrets
import threading
import time

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


def _given_as(name: str, variable: str) -> str:
  """The flag, when given on the command line, else the environment variable it defaults to: what
  an error about its value names."""
  return f"--{name}" if flags.FLAGS[name].present else variable


def _settings():
  """(coordinator, num_processes, process_id) from the flags, else the environment, checked; None
  when neither names a coordinator nor several processes (one process, or a detected cluster)."""
  f = flags.FLAGS
  coordinator = f[_COORDINATOR].value
  num = _num_processes()
  index = f[_ID].value if f[_ID].value is not None else _env_int("JAX_PROCESS_ID")
  num_as = _given_as(_NUM, "JAX_NUM_PROCESSES")
  if num is not None and num < 1:
    raise ValueError(f"{num_as}={num}: the number of processes must be at least 1.")
  if num == 1 or not (coordinator or num or index is not None):  # An explicit 1 wins.
    return None
  coordinator = coordinator or None
  missing = [f"--{name}" for name, value in ((_COORDINATOR, coordinator), (_NUM, num),
                                             (_ID, index)) if value is None]
  # Slurm, TPU pods: jax.distributed detects each setting it is not given.
  detected = bool(missing) and _auto_detected()
  if missing and not detected:
    raise ValueError(
        "Several processes need --coordinator_address HOST:PORT, --num_processes and "
        "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); "
        f"missing: {', '.join(missing)}.")
  if coordinator:
    host, _, port = coordinator.rpartition(":")
    # Port 0 or one past 65535 left every process waiting 5 minutes for the coordinator.
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
      raise ValueError(f"{_given_as(_COORDINATOR, 'JAX_COORDINATOR_ADDRESS')}={coordinator!r}: "
                       "expected HOST:PORT, process 0's host and a free port in 1..65535, e.g. "
                       "10.0.0.2:1234.")
  if index is not None and num is not None and not 0 <= index < num:
    raise ValueError(f"{_given_as(_ID, 'JAX_PROCESS_ID')}={index} with {num_as}={num}: the id "
                     f"must be in 0..{num - 1}.")
  return coordinator, num, index


def _check_local_device_ids() -> None:
  # Read by jax.distributed.initialize, whose int() traceback named neither the variable nor why.
  devices = os.environ.get("JAX_LOCAL_DEVICE_IDS", "").strip()
  if devices and not all(d.strip().isdigit() for d in devices.split(",")):
    raise ValueError(f"The environment variable JAX_LOCAL_DEVICE_IDS={devices!r} must list "
                     "device numbers separated by commas, e.g. 0 or 0,1 (this process's GPUs).")


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
    _check_local_device_ids()
    # Said first: until every process has joined, initialize() waits silently (5 minutes, then
    # an abort), and a wrong address or process count looked like a hang.
    coordinator, num, index = settings
    logging.info("jax.distributed: joining %s processes at %s as process %s; it waits up to 5 "
                 "minutes for all of them.", num or "the detected", coordinator or "the detected "
                 "coordinator", "the detected index" if index is None else index)
    jax.distributed.initialize(*settings)
  elif _num_processes() is None and _auto_detected():  # An explicit 1 wins over the cluster's.
    _check_local_device_ids()
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d.", jax.process_index(), jax.process_count())
  if jax.process_index() != 0:
    # Every host runs the same loop, so its INFO lines would be printed once per host (all of
    # them interleaved by `gcloud ... ssh --worker=all`); process 0 speaks for the run.
    for handler in logging.getLogger().handlers:
      handler.addFilter(_WarningsOnly())


def barrier(key: str) -> None:
  """Waits until every process has reached the barrier `key` (nothing with one process)."""
  if jax.process_count() > 1:
    multihost.get_barrier_sync_fn()(key=key, timeout_ms=CACHE_BARRIER_TIMEOUT_S * 1000)


def main_process_first(name: str, build):
  """Returns build() run on process 0 first, then on the other processes.

  For caches on disk (tokenizer, tokenized corpus, corpus statistics): on a shared file system
  the others then read what process 0 wrote instead of writing the same files at the same time;
  on per-host disks each host still builds its own, after process 0. `name` names the barrier.
  """
  if jax.process_count() == 1:
    return build()
  if jax.process_index() == 0:
    result = build()
    barrier(f"main_process_first:{name}")
    return result
  barrier(f"main_process_first:{name}")
  return build()


_VALUE_KEY = "informask_jax/process_0/{}"


def joined_processes() -> tuple[int, int]:
  """(this process's index, the number of processes) as jax.distributed joined them; (0, 1)
  without it. Read from its state, not with jax.process_count(), which starts the backends: a
  single process asks before its workdir is checked, and an error there leaves without opening
  CUDA or the TPU."""
  from jax._src import distributed as jax_distributed

  state = jax_distributed.global_state
  if state.client is None:
    return 0, 1
  return int(state.process_id), int(state.num_processes)


def value_of_process_0(name: str, value):
  """Process 0's `value` (plain JSON types), which it posts to the coordination service's
  key-value store for the others to read; this process's own with one process."""
  index, count = joined_processes()
  if count == 1:
    return value
  key = _VALUE_KEY.format(name)
  if index == 0:
    _client().key_value_set(key, json.dumps(value))
    return value
  return json.loads(_client().blocking_key_value_get(key, CACHE_BARRIER_TIMEOUT_S * 1000))


# Settings of one host's own machinery, not of the run: a host may set them for its disk and
# cores (each host with its own cache still builds the same caches from the same corpus).
HOST_LOCAL_KEYS = ("data.cache_dir", "data.num_proc", "data.prefetch", "stats.memory_cap_mb")
_ABSENT = "(not set)"


def _flat(tree, prefix=""):
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}", value


def check_same_config(config_dict: dict) -> None:
  """With several processes: ValueError on a process whose config (plain JSON types) differs
  from process 0's, naming the keys. Nothing else compares them: a config file edited on one
  host trained with another learning rate there, silently (the run's records hold process 0's),
  or left process 0 finished and the other process inside a step that never came, until JAX's
  shutdown barrier aborted both minutes later."""
  mine = {k: v for k, v in _flat(config_dict) if k not in HOST_LOCAL_KEYS}
  theirs = value_of_process_0("config", mine)
  differ = sorted(k for k in mine.keys() | theirs.keys()
                  if mine.get(k, _ABSENT) != theirs.get(k, _ABSENT))
  if differ:
    shown = "; ".join(f"config.{k}={json.dumps(mine.get(k, _ABSENT))} here, "
                      f"{json.dumps(theirs.get(k, _ABSENT))} on process 0" for k in differ[:8])
    more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
    raise ValueError(
        f"The config of process {jax.process_index()} differs from process 0's: {shown}{more}. "
        "Every process trains one model together and must run the same config: the same "
        "config file and flags on every host (only " + ", ".join(
            f"config.{k}" for k in HOST_LOCAL_KEYS) + " may differ).")


def check_same_checkpoints(directory, steps: list[int], what: str) -> None:
  """With several processes: ValueError unless every process finds the checkpoint `steps` that
  process 0 finds in `directory`. Checked before anything opens orbax's checkpoint manager,
  which waits for every process: a resume where process 0 found a run in its folder and another
  process an empty folder of its own left them waiting for each other there, in an error of
  Gloo's (or a hang) instead of check_shared_directory's."""
  theirs = value_of_process_0(f"checkpoints:{what}", steps)
  if steps != theirs:
    listed = lambda s: f"steps {s}" if s else "no checkpoint"  # noqa: E731
    raise ValueError(
        f"{what} {directory} is not the folder process 0 writes: process {jax.process_index()} "
        f"finds {listed(steps)} there, process 0 {listed(theirs)}. Every process writes its "
        "part of each checkpoint there, so it must be one file system mounted at the same path "
        "on every host (NFS, Filestore, ...), not each host's own disk.")


# How long a process looks for process 0's file: a network file system may show a new file to
# other hosts a moment late.
_SHARED_WAIT_S = 30


def check_shared_directory(directory, what: str) -> None:
  """With several processes: ValueError unless `directory` is one folder for all of them. Each
  process writes its part of every checkpoint there; a folder on each host's own disk trained
  normally, then hung at the first checkpoint, the others' parts never arriving."""
  if jax.process_count() == 1:
    return
  directory, token = pathlib.Path(directory), secrets.token_hex(8)
  if jax.process_index() == 0:  # Written before its name is posted for the others.
    (directory / f".shared-check.{token}").write_text(token)
  # Keyed by the role, not the path: a host's own disk may mount elsewhere.
  token = value_of_process_0(f"shared directory: {what}", token)
  probe = directory / f".shared-check.{token}"
  deadline = time.monotonic() + _SHARED_WAIT_S
  while not probe.exists() and time.monotonic() < deadline:
    time.sleep(0.5)
  seen = probe.exists()
  barrier(f"shared directory read: {what}")
  if jax.process_index() == 0:
    probe.unlink(missing_ok=True)
  if not seen:
    raise ValueError(
        f"{what} {directory} is not the folder process 0 writes: process {jax.process_index()} "
        f"does not see the file {probe.name} process 0 wrote there ({_SHARED_WAIT_S} s waited). "
        "Every process writes its part of each checkpoint there, so it must be one file system "
        "mounted at the same path on every host (NFS, Filestore, ...), not each host's own disk.")


# --- A process that fails stops the others -------------------------------------------------------
# The processes run the same steps, evaluations and saves, each a collective that waits for all
# of them. One that fails alone (its data stops reading, its disk fills) leaves the others inside
# such a collective, where JAX gives up minutes later with an abort that names nothing. So each
# process has a thread on the coordination service's key-value store: a failing process posts its
# error to the others' keys, their threads stop them at once with that error, and all leave
# without jax.distributed.shutdown (a barrier that waits for every process, which the failed
# process's peers would never reach).
_STOP_KEY = "informask_jax/stop/{}"  # Read by process {}'s thread: a peer's error, or "" at exit.
_LEFT_KEY = "informask_jax/left/{}"  # Process {} is leaving after an error.
_LEAVE_TIMEOUT_S = 10  # How long process 0, which hosts the service, waits for the others to go.
# Then how long it stays up for them to exit: a process that has marked itself leaving still runs
# for a moment (the mark's reply, its last flush), and if the service ends in that moment, JAX's
# client in it aborts the process (a core dump instead of its exit status). Measured on CPU: a
# peer exiting one second after its mark aborted without this wait, and process 0 waiting three
# seconds outlived the peers' exit (the service notices a gone process only by its heartbeats).
_EXIT_GRACE_S = 2
_WATCH_TIMEOUT_MS = 3600 * 1000  # One long poll of the store per hour while nothing happens.
_watcher = None  # The thread, while watching.
_failing = False  # This process's own error is being handled: a peer's is not reported over it.
_failure_posted = False  # Peers were told of an error, or told this one: leave without shutdown.


def _client():
  # JAX has no public API for the coordination service's key-value store that it runs anyway.
  from jax._src import distributed as jax_distributed

  return jax_distributed.global_state.client


def stop_with_failed_peers(stop_this_process) -> None:
  """With several processes: a thread calls `stop_this_process(error, exit_code)` (which must not
  return, and leaves with leave_after_failure, as cli.exit_now_with does) when another process
  fails (see tell_peers_of_failure), with that process's error and exit status."""
  global _watcher
  client = _client()
  # No client: one process (and its backend not started here, before the config is checked).
  if client is None or _watcher is not None:
    return
  me = jax.process_index()

  def watch():
    global _failure_posted
    while True:
      try:
        message = client.blocking_key_value_get(_STOP_KEY.format(me), _WATCH_TIMEOUT_MS)
        break
      except Exception as e:  # Gone: the service ended, and JAX reports that itself.
        if "DEADLINE_EXCEEDED" not in str(e):
          return
    if not message:  # This process is exiting normally (_stop_watching).
      return
    _failure_posted = True
    if not _failing:  # Its own error, the same or another, is reported by the main thread.
      code, _, error = message.partition(" ")
      stop_this_process(error, int(code))

  _watcher = threading.Thread(target=watch, name="stop_with_failed_peers", daemon=True)
  _watcher.start()
  # Before jax's own exit hook (registered earlier, run later) shuts the service down: a thread
  # still inside a call to it when the interpreter ends aborts the process.
  atexit.register(_stop_watching)


def _stop_watching() -> None:
  global _watcher
  if _watcher is None:
    return
  if _watcher.is_alive():
    try:
      _client().key_value_set(_STOP_KEY.format(jax.process_index()), "", allow_overwrite=True)
      _watcher.join(timeout=_LEAVE_TIMEOUT_S)
    except Exception:
      pass
  _watcher = None


def tell_peers_of_failure(what: str, exit_code: int = 1) -> None:
  """Posts what ends this process (one line: "failed: ...", "received SIGTERM") to the others,
  which stop with it and `exit_code` (1; 143 or 130 for a signal: unfinished, not broken)."""
  global _failing, _failure_posted
  if _watcher is None:
    return
  _failing = _failure_posted = True
  client, me, count = _client(), jax.process_index(), jax.process_count()
  for p in range(count):
    if p != me:
      try:
        client.key_value_set(_STOP_KEY.format(p),
                             f"{exit_code} process {me} of {count} {what}")
      except Exception:  # Already told by another failing process, whose error then stands.
        pass


def failure_posted() -> bool:
  """Whether this process told its peers of an error, or was told of one: then it leaves with
  leave_after_failure, not jax.distributed.shutdown, whose barrier would wait for the processes
  the error stopped."""
  return _failure_posted


def leave_after_failure() -> None:
  """Marks this process as leaving; process 0, which hosts the coordination service, first
  waits a little for the others to mark themselves and then to exit (each stops as soon as it
  has read the error, and once the service is gone a process still using it aborts)."""
  client, me, count = _client(), jax.process_index(), jax.process_count()
  try:
    client.key_value_set(_LEFT_KEY.format(me), "1")
  except Exception:
    return
  if me != 0:
    return
  deadline = time.monotonic() + _LEAVE_TIMEOUT_S
  for p in range(1, count):
    try:
      client.blocking_key_value_get(_LEFT_KEY.format(p),
                                    max(1, int((deadline - time.monotonic()) * 1000)))
    except Exception:  # Dead, or stuck where its thread cannot stop it: JAX's timeout ends it.
      break
  else:
    time.sleep(_EXIT_GRACE_S)
