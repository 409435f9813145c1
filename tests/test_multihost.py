"""Multi-host training on one machine: two train.py processes joined by jax.distributed (coordinator
on 127.0.0.1, 4 simulated CPU devices each) train exactly as one process with 8 devices on the same
mesh. They start on an empty cache: process 0 builds the tokenizer, tokenized corpus and InforMask
statistics while process 1 waits, then reads them. Only process 0 writes metrics and progress;
both take part in the orbax checkpoint."""

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from informask_jax import checkpointing, data, stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 5
STRATEGY = "informask"  # The paper's strategy: its rate table comes from the statistics cache.
TIMEOUT_S = 240  # Per process; a healthy run takes well under a minute.


def _overrides(workdir, cache_dir):
  """train.py flags that shrink the tiny config to a few seconds of compile and steps."""
  return ["--config", str(ROOT / "configs" / f"{STRATEGY}.py:tiny"), "--workdir", str(workdir),
          f"--config.data.cache_dir={cache_dir}", "--config.data.seq_len=64",
          "--config.data.max_documents=400", "--config.tokenizer.vocab_size=1024",
          "--config.stats.rate_sample_sequences=64",
          "--config.model.num_layers=1", "--config.model.max_predictions=10",
          "--config.train.batch_size=16", f"--config.train.num_steps={STEPS}",
          "--config.train.log_every=1", f"--config.train.eval_every={STEPS}",
          "--config.train.eval_batches=1", f"--config.train.checkpoint_every={STEPS}"]


def _shrink(config):
  # The same settings as the flags above, for building the reference's cache in this process.
  config.data.seq_len, config.data.max_documents = 64, 400
  config.tokenizer.vocab_size = 1024
  config.stats.rate_sample_sequences = 64
  config.masking.name = STRATEGY
  return config


def _env(devices):
  # Backend optimisation off: the three processes compile a third faster on two cores, and
  # the programs under comparison are compiled alike.
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0",
             HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
               "TPU_WORKER_HOSTNAMES"):  # Nothing may turn the reference run multi-process.
    env.pop(name, None)
  return env


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(args, devices, env=None):
  return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          env={**_env(devices), **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(procs, returncode=0):
  """Waits for every process (killing all at the first timeout); returns their outputs."""
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    pytest.fail(f"train.py did not finish {STEPS} steps in {TIMEOUT_S}s")
  for proc, out in zip(procs, outputs, strict=True):
    assert proc.returncode == returncode, out[-4000:]
  return outputs


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One process with 8 devices on a cache built here, and two with 4 devices each on an empty
  cache, all started together."""
  from configs import base

  config = _shrink(base.get_base_config("tiny"))
  config.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  stats.ensure_artifacts(config, data.build_input_pipeline(config), ("rates",), progress=False)
  one, two = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
  cold = tmp_path_factory.mktemp("cold_cache")
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  procs = [_start(_overrides(one, config.data.cache_dir), devices=8)]
  procs += [_start([*_overrides(two, cold), *multi, "--process_id", str(i)], devices=4)
            for i in range(2)]
  outputs = _finish(procs)
  return one, two, cold, outputs


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one(runs):
  one, two, _, _ = runs
  reference, multi = _metrics(one), _metrics(two)
  train = lambda ms: [m for m in ms if "loss" in m]  # noqa: E731
  evals = lambda ms: [m for m in ms if "eval_loss" in m]  # noqa: E731
  # Process 1 writes nothing: every step is logged once, by process 0.
  assert [m["step"] for m in train(multi)] == list(range(1, STEPS + 1))
  assert [m["step"] for m in train(reference)] == list(range(1, STEPS + 1))
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in train(multi)],
                               [m[key] for m in train(reference)], rtol=1e-5, err_msg=key)
  assert [m["targets_per_step"] for m in train(multi)] == [
      m["targets_per_step"] for m in train(reference)]
  assert [m["step"] for m in evals(multi)] == [m["step"] for m in evals(reference)]
  np.testing.assert_allclose([m["eval_loss"] for m in evals(multi)],
                             [m["eval_loss"] for m in evals(reference)], rtol=1e-5)


@pytest.mark.slow
def test_both_processes_write_one_checkpoint(runs):
  one, two, _, _ = runs
  reference, _, step = checkpointing.restore_params(one)
  restored, _, step_two = checkpointing.restore_params(two)
  assert step == step_two == STEPS
  # The two processes each held half of the batch axis' devices; the saved parameters are whole.
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(reference),
                          jax.tree.leaves(restored), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_only_process_zero_shows_progress_and_info_logs(runs):
  _, _, _, (reference, first, second) = runs
  assert "jax.distributed: process 0 of 2" in first
  assert "jax.distributed: process 1 of 2" in second
  assert "4 local / 8 global devices" in first
  for out in (reference, first):  # Piped, not a terminal: log lines instead of a progress bar.
    assert f"Step {STEPS}: loss " in out and f"Finished at step {STEPS}" in out
    assert not re.search(r"train:\s*\d+%\|", out)
  # Process 1 trains silently: no training log and no INFO lines after start-up.
  assert ": loss " not in second and "Finished at step" not in second
  assert "eval loss" not in second


@pytest.mark.slow
def test_two_processes_leave_one_consistent_cold_cache(runs):
  _, _, cold, (_, first, second) = runs
  # Two processes on one cold cache: no temporary leftovers, the statistics verify, and process
  # 0 logged building them. (That process 0 builds before the others is unit-tested in
  # test_distributed; process 1's INFO lines are not printed, so it cannot be seen here.)
  for kind in ("tokenizers", "tokenized", "stats"):
    entries = sorted(p.name for p in (cold / kind).iterdir())
    assert entries and not [e for e in entries if e.startswith(".")], (kind, entries)
  (directory,) = (cold / "stats").iterdir()
  meta = stats.artifacts.read_meta(directory)
  assert not stats.artifacts.verify_files(directory, meta, meta["files"])
  assert "Statistics: 'rates' done" in first


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step(runs, tmp_path):
  """A preemption signal that reaches process 1 only: both agree at the next sync step, save
  there together and exit cleanly (saving alone, process 1 would wait forever for process 0)."""
  import signal
  import time

  _, _, cache, _ = runs  # Built by the two-process run: this one starts warm.
  workdir = tmp_path / "preempted"
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  args = [*_overrides(workdir, cache), "--config.train.num_steps=100000",
          "--config.train.eval_every=100000", "--config.train.checkpoint_every=100000",
          "--config.train.stop_sync_every=5"]
  procs = [_start([*args, *multi, "--process_id", str(i)], devices=4) for i in range(2)]
  deadline = time.time() + TIMEOUT_S
  metrics = workdir / "metrics.jsonl"
  while not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      pytest.fail("the two processes did not start training: "
                  + "\n".join(p.communicate()[0][-2000:] for p in procs))
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)
  # Both stop unfinished, the one the signal missed included: 128 + SIGTERM for each.
  first, second = _finish(procs, returncode=128 + signal.SIGTERM)
  _, _, step = checkpointing.restore_params(workdir)
  assert step % 5 == 0 and 0 < step < 100000
  assert f"saved a checkpoint at step {step}" in first
  assert "a signal to another process" in first


@pytest.mark.slow
def test_two_processes_resume_as_one_does(runs, tmp_path):
  """A resume with two processes hung at start-up: process 0 opened the checkpoint manager alone
  (to check the tokenizer) while process 1 waited at the pipeline's barrier, and orbax's manager
  waits for every process as it opens. Resumed, both runs log the same losses."""
  import shutil

  one, two, cache, _ = runs
  reference_cache = json.loads((one / "config.json").read_text())["data"]["cache_dir"]
  shutil.copytree(one, tmp_path / "one")
  shutil.copytree(two, tmp_path / "two")
  more = [f"--config.train.num_steps={STEPS + 2}"]
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  procs = [_start([*_overrides(tmp_path / "one", reference_cache), *more], devices=8)]
  procs += [_start([*_overrides(tmp_path / "two", cache), *more, *multi, "--process_id", str(i)],
                   devices=4) for i in range(2)]
  reference, first, _ = _finish(procs)
  assert f"Resumed from step {STEPS}" in reference and f"Resumed from step {STEPS}" in first
  resumed = [[m for m in _metrics(tmp_path / name) if "loss" in m and m["step"] > STEPS]
             for name in ("one", "two")]
  assert [m["step"] for m in resumed[1]] == [STEPS + 1, STEPS + 2]
  np.testing.assert_allclose([m["loss"] for m in resumed[1]], [m["loss"] for m in resumed[0]],
                             rtol=1e-5)


# Imported by Python at start-up when its folder leads PYTHONPATH: the training data of the one
# process started so fails at its fourth batch, as a file removed or a network gone would.
_FAILING_DATA = """
from informask_jax.data import batches

_next, _reads = batches.BatchIterator.__next__, []


def _failing_next(self):
  _reads.append(1)
  if len(_reads) == 4:
    raise OSError(5, "Input/output error (test)")
  return _next(self)

batches.BatchIterator.__next__ = _failing_next

# And it exits half a second after marking itself as leaving (a loaded machine): process 0, which
# hosts the coordination service, must still be there, or JAX's client aborts this process.
import os, time

_exit = os._exit


def _slow_exit(code):
  time.sleep(0.5)
  _exit(code)

os._exit = _slow_exit
"""


@pytest.mark.slow
@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_on_one_process_stops_both_with_it(runs, tmp_path, failing):
  """The other process was inside the step's collectives, waiting for the failed one, and hung
  until JAX's heartbeat timeout aborted both (5 minutes, with a message that named nothing).
  Now it stops at once, naming the error. Process 0 hosts the coordination service."""
  _, _, cache, _ = runs
  hook = tmp_path / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(_FAILING_DATA)
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  args = [*_overrides(tmp_path / "run", cache), "--config.train.num_steps=100"]
  procs = [_start([*args, *multi, "--process_id", str(i)], devices=4,
                  env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"} if i == failing else None)
           for i in range(2)]
  outputs = _finish(procs, returncode=1)
  assert "OSError: [Errno 5] Input/output error (test)" in outputs[failing]
  assert (f"Stopping: process {failing} of 2 failed: OSError: [Errno 5] Input/output error "
          "(test)") in outputs[1 - failing]
  for out in outputs:
    assert "Fatal Python error" not in out and "Aborted" not in out, out[-3000:]


@pytest.mark.slow
def test_a_workdir_that_is_each_hosts_own_folder_is_refused_before_training(runs, tmp_path):
  """Each process writes its part of every checkpoint into the workdir: a folder on each host's
  own disk (two paths here) trained normally, then hung at the first checkpoint. Refused once
  the workdirs are locked, naming --workdir, before a step."""
  _, _, cache, _ = runs
  hook = tmp_path / "hook"
  hook.mkdir()  # Process 1 looks for process 0's file 2 s, not 30: the test's time.
  (hook / "sitecustomize.py").write_text("from informask_jax import distributed\n"
                                         "distributed._SHARED_WAIT_S = 2\n")
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  procs = [_start([*_overrides(tmp_path / f"host{i}", cache), *multi, "--process_id", str(i)],
                  devices=4, env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}) for i in range(2)]
  outputs = _finish(procs, returncode=1)
  assert (f"ValueError: --workdir {tmp_path / 'host1'} is not the folder process 0 writes: "
          "process 1 does not see the file .shared-check.") in outputs[1], outputs[1][-3000:]
  assert "Stopping: process 1 of 2 failed: ValueError: --workdir" in outputs[0], outputs[0][-3000:]
  for i, out in enumerate(outputs):
    assert "Step 1" not in out and not list((tmp_path / f"host{i}").glob(".shared-check.*"))


@pytest.mark.slow
def test_a_process_with_another_config_is_refused_naming_the_key(runs, tmp_path):
  """Nothing compared the processes' configs: a learning rate set on one host only trained
  silently (the run's records held process 0's), another num_steps hung at shutdown."""
  _, _, cache, _ = runs
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  extra = [[], ["--config.optim.learning_rate=0.5", "--config.data.num_proc=1"]]
  procs = [_start([*_overrides(tmp_path / "run", cache), *multi, "--process_id", str(i),
                   *extra[i]], devices=4) for i in range(2)]
  outputs = _finish(procs, returncode=1)
  assert ("ValueError: The config of process 1 differs from process 0's: "
          "config.optim.learning_rate=0.5 here, 0.001 on process 0.") in outputs[1], outputs[1]
  assert "num_proc" not in outputs[1].split("differs")[1].split("Every process")[0]
  assert "Stopping: process 1 of 2 failed: ValueError: The config" in outputs[0], outputs[0]
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_resume_from_each_hosts_own_folder_is_refused_naming_the_workdir(runs, tmp_path):
  """Process 0 found a run to resume in its folder, process 1 an empty one of its own: only
  process 0 opened orbax's manager, which waits for all, and both failed in Gloo's timeout."""
  one, _, cache, _ = runs
  host0 = tmp_path / "host0"
  shutil.copytree(one, host0)
  multi = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
  procs = [_start([*_overrides(tmp_path / f"host{i}", cache), *multi, "--process_id", str(i),
                   f"--config.train.num_steps={2 * STEPS}"], devices=4) for i in range(2)]
  outputs = _finish(procs, returncode=1)
  assert (f"ValueError: --workdir {tmp_path / 'host1'} is not the folder process 0 writes: "
          f"process 1 finds no checkpoint there, process 0 steps [{STEPS}].") in outputs[1], \
      outputs[1][-3000:]
  assert "Stopping: process 1 of 2 failed: ValueError: --workdir" in outputs[0], outputs[0][-3000:]
  assert checkpointing.finalized_steps(host0) == [STEPS]
