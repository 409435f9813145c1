"""Pretrains a masked language model: `python train.py --config configs/informask.py:tiny`.

Any config field can be overridden, e.g. `--config.train.batch_size=64 --config.masking.name=span`.
A run in a --workdir that already has checkpoints resumes from the latest one.
"""

import contextlib
import logging
import signal
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from informask_jax import checkpointing, cli, distributed, loop, paths
from informask_jax import workdir as workdir_lib
from informask_jax.stats import chunks

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/informask.py:tiny.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Checkpoints, logs and metrics go here.")
distributed.define_flags()
# absl's --help lists the main module's flags only; multi-host users need these three there.
flags.adopt_module_key_flags(distributed)


def main(argv):
  try:
    _train(argv)
  except KeyboardInterrupt:
    # Ctrl-C before the loop handles signals, or a second one during it: one line, not a
    # traceback through JAX. Written checkpoints are complete (orbax renames a finished save).
    cli.exit_interrupted("train.py", loop.after_interrupt(_WORKDIR.value, _CONFIG.value))
  except (Exception, SystemExit) as e:
    if not distributed.failure_posted() or isinstance(e, SystemExit) and not e.code:
      raise
    # The other processes have stopped (see _peers_told_of_errors), without the shutdown barrier
    # that the normal exit would wait at for them; neither does this one.
    if not isinstance(e, SystemExit):
      traceback.print_exc()
    cli.exit_now_with(e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)


def _train(argv):
  cli.reject_arguments("train.py", argv)
  with cli.user_errors("train.py", exit_now=True):  # A bad --num_processes, ... in one line.
    distributed.initialize()
  distributed.stop_with_failed_peers(_stop_for_failed_peer)
  # Again: with several processes JAX's preemption service took SIGTERM over (it only notes the
  # signal for a sync point the loop does not use), so a SIGTERM before the loop was ignored.
  cli.exit_on_sigterm()
  logging.getLogger().setLevel(logging.INFO)
  cli.quiet_library_logs()
  with cli.user_errors("train.py", (loop.TrainingStopped, checkpointing.CheckpointWriteError,
                                   paths.WriteError, chunks.WorkerDied),
                       exit_now=True), _peers_told_of_errors():
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result["preempted"]:
    # Not 0: the run is unfinished, and a scheduler (a Kubernetes Job, a `train.py && eval`
    # chain) must not take it for done. 128 + the signal's number, as a shell reports it.
    code = 128 + (signal.SIGINT if result["stopped_by"] == "SIGINT" else signal.SIGTERM)
    # Whether that step's checkpoint was saved, the loop has logged just before.
    logging.warning("Stopped at step %d by %s: exit status %d; %s.", result["step"],
                    result["stopped_by"], code, loop.resume_advice(_CONFIG.value))
    sys.exit(code)
  logging.info("Finished at step %d: %s", result["step"], result)


@contextlib.contextmanager
def _peers_told_of_errors():
  """With several processes, an error here (this process's data, disk, memory) stops the others
  too: they wait for this one in every step, evaluation and save, and would hang until JAX's
  heartbeat timeout aborted them minutes later, naming nothing. So does a SIGTERM or Ctrl-C
  that ends this process before the loop (in the loop, all processes agree on a stop step)."""
  try:
    yield
  except Exception as e:
    distributed.tell_peers_of_failure(f"failed: {type(e).__name__}: {cli.one_line(e)}")
    raise
  except KeyboardInterrupt:
    distributed.tell_peers_of_failure("was interrupted (Ctrl-C)", 128 + signal.SIGINT)
    raise
  except SystemExit as e:
    if e.code:
      distributed.tell_peers_of_failure(
          "received SIGTERM" if e.code == 128 + signal.SIGTERM else f"exited ({e.code})",
          e.code if isinstance(e.code, int) else 1)
    raise


def _stop_for_failed_peer(error: str, exit_code: int) -> None:
  """Run by distributed's thread when another process failed: this one cannot go on alone."""
  logging.error("Stopping: %s. Every step, evaluation and save waits for all processes, so this "
                "one stops too; the checkpoints written so far are intact: %srun the same command "
                "on every process to resume.", error,
                "once the cause is fixed, " if exit_code == 1 else "")
  # os._exit skips the `with` blocks: an overwritten run set aside, no step trained yet, is put
  # back here, or it stayed in .overwritten, the next start refusing the workdir.
  workdir_lib.put_back_pending()
  cli.exit_now_with(exit_code)  # Which leaves as distributed says after a failure.


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  # Until the loop takes SIGTERM over (a stop after the step, saved): the corpus, statistics and
  # compilation before it end by SystemExit(143), so their `finally` blocks remove what they
  # staged (the statistics' spill folders: gigabytes at scale) and an overwrite's set-aside run
  # is put back.
  cli.exit_on_sigterm()
  app.run(main, flags_parser=cli.parse_flags)
