"""When train.py starts jax.distributed by itself: Slurm jobs of several tasks and Cloud TPU VMs."""

import logging
import threading
import types

import pytest

from informask_jax import distributed


@pytest.fixture
def bare_env(monkeypatch):
  for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", *distributed._SLURM_STEP_VARIABLES):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_tpu_chips_attached", lambda: False)
  return monkeypatch


def _srun_task(env, tasks, index=0):
  """The variables srun sets in each task of a step (those JAX's Slurm detection reads)."""
  env.setenv("SLURM_JOB_ID", "7")
  env.setenv("SLURM_NTASKS", str(tasks))
  env.setenv("SLURM_STEP_NODELIST", "node[001-002]")
  env.setenv("SLURM_PROCID", str(index))
  env.setenv("SLURM_LOCALID", str(index))


def test_a_single_machine_is_not_distributed(bare_env):
  assert not distributed._auto_detected()
  bare_env.setenv("SLURM_JOB_ID", "7")
  bare_env.setenv("SLURM_NTASKS", "1")  # An interactive one-task allocation: one process.
  assert not distributed._auto_detected()


def test_slurm_with_several_tasks(bare_env):
  _srun_task(bare_env, 16)
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


def test_a_slurm_job_without_a_task_count_or_a_one_host_worker_list_is_one_process(bare_env):
  bare_env.setenv("SLURM_JOB_ID", "7")  # sbatch without --ntasks: no SLURM_NTASKS, one task.
  assert not distributed._auto_detected()
  bare_env.delenv("SLURM_JOB_ID")
  bare_env.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2")  # One worker: nobody to join.
  assert not distributed._auto_detected()


def test_empty_environment_variables_count_as_unset(monkeypatch):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "")
  assert distributed._env_int("JAX_NUM_PROCESSES") is None
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  assert distributed._env_int("JAX_NUM_PROCESSES") == 4


@pytest.fixture
def started(bare_env):
  """initialize() with the given flags; returns what jax.distributed.initialize received (None if
  it was not called) and the root handlers' filters it added."""
  from types import SimpleNamespace

  calls = []

  def initialize(coordinator_address=None, num_processes=None, process_id=None):
    calls.append((coordinator_address, num_processes, process_id))
  bare_env.setattr(distributed.jax.distributed, "initialize", initialize)
  # Added, not swapped in for the root's handler list: pytest adds and removes its own capture
  # handlers around each test phase, and a swapped list left later tests' caplog empty.
  handler = logging.NullHandler()
  root = logging.getLogger()
  root.addHandler(handler)

  def start(coordinator=None, num=None, index=None, process_index=0, from_env=()):
    # `from_env`: the flags whose value is their environment variable's default, not typed.
    bare_env.setattr(distributed.flags, "FLAGS", {name: SimpleNamespace(
        value=value, present=value is not None and name not in from_env) for name, value in (
            ("coordinator_address", coordinator), ("num_processes", num), ("process_id", index))})
    bare_env.setattr(distributed.jax, "process_index", lambda: process_index)
    distributed.initialize()
    return calls[-1] if calls else None, list(handler.filters)
  yield start
  root.removeHandler(handler)
  for h in root.handlers:  # The filter initialize() put on every root handler.
    for f in [f for f in h.filters if isinstance(f, distributed._WarningsOnly)]:
      h.removeFilter(f)


def test_initialize_passes_the_flags_to_jax(started, caplog):
  assert started() == (None, [])  # One process: jax.distributed is not started.
  # An explicit 1 wins over a coordinator (JAX_COORDINATOR_ADDRESS left in the environment).
  assert started("10.0.0.2:1234", 1, None) == (None, [])
  with caplog.at_level(logging.INFO):
    assert started("10.0.0.2:1234", 4, 3, process_index=3)[0] == ("10.0.0.2:1234", 4, 3)
  # Said before the silent wait for the others (a wrong address looked like a hang).
  assert ("jax.distributed: joining 4 processes at 10.0.0.2:1234 as process 3; it waits up to "
          "5 minutes for all of them.") in caplog.text


@pytest.mark.parametrize("num,index", [(None, 0), (2, None), (None, None)])
def test_initialize_refuses_a_coordinator_without_the_process_count_and_id(started, num, index):
  with pytest.raises(ValueError, match="need --coordinator_address HOST:PORT, --num_processes and "
                                       "--process_id .*; missing: --(num_processes|process_id)"):
    started("10.0.0.2:1234", num, index)


def test_initialize_names_bad_process_settings_before_jax_sees_them(started, bare_env):
  """Settings jax.distributed would fail on deep inside (an IndexError for a coordinator without
  a port) or not check, each named; the environment's defaults too (an int() traceback at
  import before)."""
  for args, message in (((None, 2, 0), r"missing: --coordinator_address\.$"),
                        (("localhost", 2, 0), r"--coordinator_address='localhost': expected "
                                              r"HOST:PORT"),
                        (("10.0.0.2:1234", 2, 2), r"--process_id=2 with --num_processes=2: the "
                                                  r"id must be in 0\.\.1"),
                        (("10.0.0.2:1234", 2, -1), r"--process_id=-1"),
                        (("127.0.0.1:1234", 0, 0), r"--num_processes=0: the number of processes "
                                                   r"must be at least 1\.$"),
                        ((None, -2, None), r"--num_processes=-2: .* at least 1")):
    with pytest.raises(ValueError, match=message):
      started(*args)
  # Values from the environment name its variables: no flag was typed.
  for args, from_env, message in (
      (("10.0.0.2:1234", 2, 2), ("process_id", "num_processes"),
       r"^JAX_PROCESS_ID=2 with JAX_NUM_PROCESSES=2: the id must be in 0\.\.1\.$"),
      (("127.0.0.1", 2, 0), ("coordinator_address",), r"^JAX_COORDINATOR_ADDRESS='127\.0\.0\.1'"),
      ((None, 0, None), ("num_processes",), r"^JAX_NUM_PROCESSES=0: the number")):
    with pytest.raises(ValueError, match=message):
      started(*args, from_env=from_env)
  for devices in ("0,gpu1", "0,,1"):
    bare_env.setenv("JAX_LOCAL_DEVICE_IDS", devices)
    with pytest.raises(ValueError, match=rf"JAX_LOCAL_DEVICE_IDS='{devices}' must list device "
                                         r"numbers separated by commas"):
      started("10.0.0.2:1234", 2, 0)
  bare_env.setenv("JAX_LOCAL_DEVICE_IDS", "0, 1")
  assert started("10.0.0.2:1234", 2, 0)[0] == ("10.0.0.2:1234", 2, 0)
  bare_env.delenv("JAX_LOCAL_DEVICE_IDS")
  bare_env.setenv("JAX_NUM_PROCESSES", "four")
  with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES='four' is not an integer"):
    started("10.0.0.2:1234", None, 0)
  bare_env.setenv("JAX_NUM_PROCESSES", "2")
  bare_env.setenv("JAX_PROCESS_ID", "1")
  assert started("10.0.0.2:1234", None, None, process_index=1)[0] == ("10.0.0.2:1234", 2, 1)


def test_a_cluster_that_jax_detects_needs_no_coordinator_flag(started, bare_env):
  """On Slurm or a TPU pod, --num_processes and --process_id without --coordinator_address (or
  JAX_NUM_PROCESSES, JAX_PROCESS_ID set by a launch script) reach jax.distributed, which detects
  the coordinator it is not given; elsewhere the coordinator is still asked for."""
  _srun_task(bare_env, 2, index=1)
  assert started(None, 2, 1, process_index=1)[0] == (None, 2, 1)
  with pytest.raises(ValueError, match=r"--process_id=2 with --num_processes=2"):
    started(None, 2, 2)
  # Any of the three may be left to the detection (it fills each unset one by itself): a
  # launch script's JAX_COORDINATOR_ADDRESS or JAX_NUM_PROCESSES alone was refused.
  assert started(None, 2, None)[0] == (None, 2, None)
  assert started("10.0.0.2:1234", None, None)[0] == ("10.0.0.2:1234", None, None)
  assert started(None, None, 1, process_index=1)[0] == (None, None, 1)
  bare_env.delenv("SLURM_JOB_ID")
  with pytest.raises(ValueError, match=r"missing: --coordinator_address\.$"):
    started(None, 2, 1)
  with pytest.raises(ValueError, match=r"missing: --coordinator_address, --process_id\.$"):
    started(None, 2, None)
  with pytest.raises(ValueError, match=r"missing: --coordinator_address, --num_processes\.$"):
    started(None, None, 1)


def test_a_slurm_allocation_outside_srun_is_refused_unless_one_process_is_asked_for(started,
                                                                                    bare_env):
  """`salloc -n 2` then `python train.py`: the job has two tasks but this shell is one process,
  which no other joins (JAX failed with a bare "coordinator_address should be defined"). Started
  by srun, JAX joins the tasks; an explicit --num_processes=1 wins either way."""
  bare_env.setenv("SLURM_JOB_ID", "7")
  bare_env.setenv("SLURM_NTASKS", "2")
  with pytest.raises(ValueError, match=r"SLURM_NTASKS=2 tasks, but this process was not started "
                                       r"by srun \(SLURM_STEP_NODELIST, SLURM_PROCID, "
                                       r"SLURM_LOCALID unset\).*launch with srun, or unset "
                                       r"SLURM_NTASKS / pass --num_processes=1"):
    started()
  with pytest.raises(ValueError, match="launch with srun"):  # No coordinator for JAX to find.
    started(None, 2, 0)
  assert started(None, 1, 0) == (None, [])  # One process: jax.distributed is not started.
  bare_env.setenv("JAX_NUM_PROCESSES", "1")
  assert started() == (None, [])
  bare_env.delenv("JAX_NUM_PROCESSES")
  _srun_task(bare_env, 2)
  assert started(None, 1, 0) == (None, [])
  assert started()[0] == (None, None, None)  # JAX reads the step's variables itself.
  for name in distributed._SLURM_STEP_VARIABLES:  # Outside srun again, all settings given.
    bare_env.delenv(name)
  assert started("10.0.0.2:1234", 2, 0)[0] == ("10.0.0.2:1234", 2, 0)


def test_only_process_zero_logs_info_lines(started):
  _, filters = started("10.0.0.2:1234", 2, 0, process_index=0)
  assert not filters
  _, filters = started("10.0.0.2:1234", 2, 1, process_index=1)
  (only,) = filters
  record = lambda level: logging.makeLogRecord({"levelno": level})  # noqa: E731
  assert not only.filter(record(logging.INFO))
  assert only.filter(record(logging.WARNING)) and only.filter(record(logging.ERROR))


def test_the_cache_barrier_waits_hours_not_seconds(monkeypatch):
  timeouts = []
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 1)
  monkeypatch.setattr(distributed.multihost, "get_barrier_sync_fn",
                      lambda: lambda key, timeout_ms: timeouts.append(timeout_ms))
  distributed.main_process_first("cache", lambda: None)
  assert timeouts == [distributed.CACHE_BARRIER_TIMEOUT_S * 1000]
  assert distributed.CACHE_BARRIER_TIMEOUT_S >= 3600


class _Store:
  """The coordination service's key-value store as the peer watcher uses it: `replies` are what
  successive reads of this process's stop key give (an exception is raised)."""

  def __init__(self, replies):
    self.replies, self.values = list(replies), {}

  def blocking_key_value_get(self, key, timeout_in_ms):
    if key in self.values:
      return self.values[key]
    reply = self.replies.pop(0)
    if isinstance(reply, Exception):
      raise reply
    return reply

  def key_value_set(self, key, value, allow_overwrite=False):
    if key in self.values and not allow_overwrite:
      raise RuntimeError(f"ALREADY_EXISTS: {key}")
    self.values[key] = value


@pytest.fixture
def two_processes(monkeypatch):
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 1)
  for name in ("_watcher", "_failing", "_failure_posted"):
    monkeypatch.setattr(distributed, name, None if name == "_watcher" else False)
  monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)

  def watch(replies):
    store, stops = _Store(replies), []
    monkeypatch.setattr(distributed, "_client", lambda: store)
    distributed.stop_with_failed_peers(lambda *args: stops.append(args))
    distributed._watcher.join(timeout=10)
    return store, stops
  return watch


def test_a_peers_error_stops_this_process_after_long_polls_that_timed_out(two_processes):
  timeout = RuntimeError("DEADLINE_EXCEEDED: GetKeyValue() timed out with key: x")
  _, stops = two_processes([timeout, timeout, "1 process 0 of 2 failed: OSError: disk"])
  assert stops == [("process 0 of 2 failed: OSError: disk", 1)]
  assert distributed.failure_posted()  # This process leaves without the shutdown barrier.


@pytest.mark.parametrize("reply", ["", RuntimeError("UNAVAILABLE: the service is gone")])
def test_a_normal_exit_or_a_lost_service_stops_nothing(two_processes, reply):
  _, stops = two_processes([reply])
  assert stops == [] and not distributed.failure_posted()


def test_a_failing_process_tells_each_peer_once(two_processes, monkeypatch):
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 3)
  store, stops = two_processes([RuntimeError("DEADLINE_EXCEEDED")] * 2)
  distributed._watcher = object()  # Still watching (the fake's thread has ended).
  store.values[distributed._STOP_KEY.format(2)] = "1 process 2 of 3 failed: first"
  distributed.tell_peers_of_failure("received SIGTERM", 143)
  assert store.values[distributed._STOP_KEY.format(0)] == "143 process 1 of 3 received SIGTERM"
  # Process 2 failed first: its error stands for the others.
  assert store.values[distributed._STOP_KEY.format(2)] == "1 process 2 of 3 failed: first"
  assert distributed.failure_posted() and stops == []


@pytest.mark.parametrize("address", ["10.0.0.2:", ":1234", "10.0.0.2:abc", "10.0.0.2:0",
                                     "10.0.0.2:99999"])
def test_a_coordinator_address_needs_a_host_and_a_numeric_port(started, address):
  with pytest.raises(ValueError, match=rf"--coordinator_address='{address}': expected HOST:PORT"):
    started(address, 2, 0)


def test_a_peers_signal_stops_this_process_with_that_signals_exit_status(two_processes):
  """143 (SIGTERM) or 130 (Ctrl-C): the run is unfinished, not broken, on every process."""
  _, stops = two_processes(["143 process 0 of 2 received SIGTERM"])
  assert stops == [("process 0 of 2 received SIGTERM", 143)]


def test_a_peers_error_is_not_reported_over_this_processs_own(two_processes, monkeypatch):
  """This process is already handling its own error (its main thread reports it): a peer's
  message only marks the processes as stopped by an error."""
  monkeypatch.setattr(distributed, "_failing", True)
  _, stops = two_processes(["1 process 0 of 2 failed: OSError: disk"])
  assert stops == [] and distributed.failure_posted()


def test_the_peer_watcher_is_started_once(two_processes):
  two_processes([""])
  first = distributed._watcher
  assert first is not None
  distributed.stop_with_failed_peers(lambda *args: pytest.fail("a second watcher"))
  assert distributed._watcher is first


class _BlockingStore(_Store):
  """A store whose reads wait until the key is set, as the coordination service's do."""

  def __init__(self):
    super().__init__([])
    self.changed = threading.Condition()

  def blocking_key_value_get(self, key, timeout_in_ms):
    with self.changed:
      if not self.changed.wait_for(lambda: key in self.values, timeout_in_ms / 1000):
        raise RuntimeError(f"DEADLINE_EXCEEDED: {key}")
      return self.values[key]

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.changed:
      super().key_value_set(key, value, allow_overwrite)
      self.changed.notify_all()


def test_a_normal_exit_ends_the_watcher_by_posting_an_empty_stop(monkeypatch):
  """At exit the watcher, blocked in a long poll of the service, is woken with "" and ends
  before the service shuts down; nothing is stopped and no failure is recorded."""
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 1)
  for name in ("_watcher", "_failing", "_failure_posted"):
    monkeypatch.setattr(distributed, name, None if name == "_watcher" else False)
  registered = []
  monkeypatch.setattr(distributed.atexit, "register", registered.append)
  store, stops = _BlockingStore(), []
  monkeypatch.setattr(distributed, "_client", lambda: store)
  distributed.stop_with_failed_peers(lambda *args: stops.append(args))
  thread = distributed._watcher
  try:
    assert registered == [distributed._stop_watching] and thread.is_alive()
    distributed._stop_watching()
    assert not thread.is_alive() and distributed._watcher is None
    assert store.values == {distributed._STOP_KEY.format(1): ""}
    assert stops == [] and not distributed.failure_posted()
  finally:
    store.key_value_set(distributed._STOP_KEY.format(1), "", allow_overwrite=True)
    thread.join(timeout=10)


def test_a_failure_is_not_posted_without_a_watcher(monkeypatch):
  """One process (no watcher was started): no peer to tell, and the exit is the normal one."""
  store = _Store([])
  monkeypatch.setattr(distributed, "_client", lambda: store)
  monkeypatch.setattr(distributed, "_watcher", None)
  monkeypatch.setattr(distributed, "_failure_posted", False)
  monkeypatch.setattr(distributed, "_failing", False)
  distributed.tell_peers_of_failure("failed: OSError: disk")
  assert store.values == {} and not distributed.failure_posted()


@pytest.mark.parametrize("count", [2, 3])
def test_process_zero_leaves_after_the_others_have_marked_themselves(monkeypatch, count):
  """Process 0 hosts the coordination service: it marks itself, waits for each peer's mark and
  then a grace period for their exit; a peer only marks itself."""
  store, slept = _Store([]), []
  monkeypatch.setattr(distributed, "_client", lambda: store)
  monkeypatch.setattr(distributed.jax, "process_count", lambda: count)
  # This module's clock only: other threads keep the real time.sleep.
  monkeypatch.setattr(distributed, "time", types.SimpleNamespace(
      monotonic=distributed.time.monotonic, sleep=slept.append))
  for p in range(1, count):
    monkeypatch.setattr(distributed.jax, "process_index", lambda p=p: p)
    distributed.leave_after_failure()
    assert store.values[distributed._LEFT_KEY.format(p)] == "1"
  assert slept == []  # Peers do not wait.
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 0)
  distributed.leave_after_failure()
  assert store.values[distributed._LEFT_KEY.format(0)] == "1"
  assert slept == [distributed._EXIT_GRACE_S]


def test_process_zero_does_not_wait_for_a_peer_that_never_marks_itself(monkeypatch):
  store, slept = _Store([RuntimeError("DEADLINE_EXCEEDED")]), []
  monkeypatch.setattr(distributed, "_client", lambda: store)
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 0)
  monkeypatch.setattr(distributed, "time", types.SimpleNamespace(
      monotonic=distributed.time.monotonic, sleep=slept.append))
  distributed.leave_after_failure()
  assert store.values == {distributed._LEFT_KEY.format(0): "1"} and slept == []


def test_the_coordinator_flag_defaults_to_the_environment(monkeypatch):
  """$JAX_COORDINATOR_ADDRESS is the flag's default; the process count and id are read from the
  environment later, by initialize(), so that a bad value is a one-line error."""
  import functools

  from absl import flags

  defined = flags.FlagValues()
  monkeypatch.setattr(distributed, "flags", types.SimpleNamespace(
      DEFINE_string=functools.partial(flags.DEFINE_string, flag_values=defined),
      DEFINE_integer=functools.partial(flags.DEFINE_integer, flag_values=defined)))
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "four")
  distributed.define_flags()
  defined(["prog"])
  assert defined["coordinator_address"].value == "10.0.0.2:1234"
  assert defined["num_processes"].value is None and defined["process_id"].value is None
  defined(["prog", "--num_processes=2", "--process_id=1", "--coordinator_address=h:1"])
  assert (defined.num_processes, defined.process_id, defined.coordinator_address) == (2, 1, "h:1")


def test_a_host_is_a_tpu_vm_when_tpu_chips_are_on_its_bus(monkeypatch):
  from jax._src import hardware_utils

  for chips, expected in ((0, False), (4, True)):
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id",
                        lambda chips=chips: (chips, None))
    assert distributed._tpu_chips_attached() is expected

  def unreadable():
    raise OSError("no /sys/bus/pci")
  monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", unreadable)
  assert distributed._tpu_chips_attached() is False


def _joined_as(monkeypatch, index, store):
  from jax._src import distributed as jax_distributed

  monkeypatch.setattr(jax_distributed, "global_state", types.SimpleNamespace(
      client=store, process_id=index, num_processes=2))
  monkeypatch.setattr(distributed.jax, "process_index", lambda: index)
  monkeypatch.setattr(distributed, "_client", lambda: store)


def test_a_config_that_differs_from_process_zeros_names_the_keys(monkeypatch):
  config = {"optim": {"learning_rate": 1e-3, "b1": 0.9}, "data": {"cache_dir": "/a", "seq_len": 8}}
  store = _Store([])
  _joined_as(monkeypatch, 0, store)
  distributed.check_same_config(config)  # Process 0 posts its own.
  _joined_as(monkeypatch, 1, store)
  distributed.check_same_config({**config, "data": {"cache_dir": "/b", "seq_len": 8}})
  with pytest.raises(ValueError, match=r"The config of process 1 differs from process 0's: "
                     r"config.data.seq_len=16 here, 8 on process 0; config.optim.learning_rate="
                     r"0.5 here, 0.001 on process 0\. .*only config.data.cache_dir"):
    distributed.check_same_config({"optim": {"learning_rate": 0.5, "b1": 0.9},
                                   "data": {"cache_dir": "/a", "seq_len": 16}})


def test_checkpoints_another_process_does_not_find_name_the_folder(monkeypatch):
  store = _Store([])
  _joined_as(monkeypatch, 0, store)
  distributed.check_same_checkpoints("/runs/a", [100, 200], "--workdir")
  _joined_as(monkeypatch, 1, store)
  distributed.check_same_checkpoints("/runs/a", [100, 200], "--workdir")
  with pytest.raises(ValueError, match=r"--workdir /runs/a is not the folder process 0 writes: "
                     r"process 1 finds no checkpoint there, process 0 steps \[100, 200\]"):
    distributed.check_same_checkpoints("/runs/a", [], "--workdir")


def test_one_process_reads_no_coordination_store(monkeypatch):
  monkeypatch.setattr(distributed, "_client", lambda: pytest.fail("no store with one process"))
  assert distributed.joined_processes() == (0, 1)
  distributed.check_same_config({"optim": {"learning_rate": 1.0}})
  distributed.check_same_checkpoints("/runs/a", [5], "--workdir")
