"""Orbax checkpoints: everything needed to continue a run exactly, and nothing ever lost.

A checkpoint at step N holds three items:
  state  the TrainState (params, optimizer state, step, RNG key, skip counters), sharded arrays;
  data   the input iterator's position (epoch, offset, seed), so the next batch is the right one;
  meta   the run's resolved config and model architecture, to refuse a mismatched resume.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a failed
or interrupted write never touches the checkpoints before it.
"""

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy_lib

from informask_jax import model as model_lib
from informask_jax import paths

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir) -> pathlib.Path:
  return pathlib.Path(workdir).expanduser().resolve() / CHECKPOINT_DIR


def run_above(path) -> pathlib.Path | None:
  """The run's workdir when `path` is that run's checkpoints/ folder or lies inside it (a step),
  given where the workdir belongs; else None. A folder merely named so (an export saved as
  checkpoints/) is not one."""
  path = pathlib.Path(path).expanduser().resolve()
  for folder in (path, *path.parents):
    if folder.name == CHECKPOINT_DIR and has_finalized_checkpoint(folder.parent):
      return folder.parent
  return None


def has_finalized_checkpoint(workdir) -> bool:
  """Whether `<workdir>/checkpoints` holds a completed step (unfinished temporary ones aside)."""
  return bool(finalized_steps(workdir))


def finalized_steps(workdir) -> list[int]:
  """The completed steps on disk in `<workdir>/checkpoints`, sorted."""
  directory = checkpoint_dir(workdir)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.is_dir() and p.name.isdigit() and ocp.step.is_path_finalized(p))


# The meta entry of an import whose masked-LM head was made fresh (the model had none); an
# export of it records the same key in its provenance (lama.models.FRESH_HEAD_KEY), not imported
# here: the lama package has no place on the training path.
FRESH_HEAD_META = "fresh_mlm_head"

# A glob character class: '[' closed by a ']' in the same path part ('[' alone is literal).
_GLOB_CLASS = re.compile(r"\[[^/]*\]")


def check_path_usable(directory, what: str) -> None:
  """Refuses a checkpoints folder whose path holds '[...]': orbax merges each saved step's
  per-process OCDBT files with a glob over the path it is given, where that is a character
  class, so the merge finds nothing and every step saved there is unreadable, while the run
  reports success. The path as given: a symbolic link to such a folder is globbed by its name."""
  path = os.path.abspath(directory)
  if _GLOB_CLASS.search(path):
    raise ValueError(
        f"{what}: the checkpoints folder {path} has '[...]' in its path, which orbax's "
        "checkpoint writer reads as a glob pattern: every checkpoint saved there would be "
        "unreadable. Use a folder whose path has no '[' (and ']').")


def _eval_loss(metrics) -> float:
  # A NaN (an evaluation in float16 that overflowed) would break the ranking's sort: kept as the
  # best, it had the real best checkpoint deleted. Non-finite ranks last.
  loss = float(metrics["eval_loss"])
  return loss if np.isfinite(loss) else float("inf")


def _manager(workdir, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  # Keep the latest `keep` checkpoints and, besides them, the best one by validation loss.
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
    raise ValueError(f"config.train.keep_checkpoints={keep!r} must be an integer >= 1 (with 0 "
                     "every new checkpoint but the best would be deleted once written).")
  if not read_only:
    check_path_usable(checkpoint_dir(workdir), "Checkpoint writer")
    # Valid JSON of another shape ({} or null) opens, then fails the next save's ranking as a
    # write error, or silently drops the step from it: named now, as a broken file is below.
    damaged = _damaged_metrics(workdir)
    if damaged is not None:
      raise _damaged_metrics_error(workdir, *damaged)
  preserve = policy_lib.AnyPreservationPolicy([
      policy_lib.LatestN(n=keep),
      policy_lib.BestN(get_metric_fn=_eval_loss, reverse=True, n=1,
                       keep_checkpoints_without_metrics=False),
  ])
  # best_fn is what makes orbax write each step's metrics to disk: without it a reopened manager
  # (a resume) sees no metrics on the old steps, and the best one is rotated out as not-latest.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preserve, best_fn=_eval_loss, best_mode="min",
      enable_async_checkpointing=not read_only, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only,  # Leftovers of killed saves.
      # Directories made inside save(): made in the background, a failure to create them left
      # orbax's writer threads waiting 20 minutes for them, and the process could not exit.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}
  try:
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_handlers=handlers)
  except ValueError as e:  # json.JSONDecodeError among them: it reads every step's metrics.
    damaged = _damaged_metrics(workdir)
    if damaged is None:
      raise
    raise _damaged_metrics_error(workdir, *damaged) from e


def _damaged_metrics(workdir) -> tuple[pathlib.Path, str] | None:
  """The first step's metrics file (orbax's <step>/metrics/metrics) that does not hold
  {"eval_loss": <number>}, with what is wrong with it. Finished steps only: a killed save's
  temporary folder (its metrics item may be renamed into place, the step not yet, and its file
  empty after a crash) is no step, and the manager removes it as it opens."""
  for path in sorted(checkpoint_dir(workdir).glob("*/metrics/metrics")):
    if not (path.parent.parent.name.isdigit() and ocp.step.is_path_finalized(path.parent.parent)):
      continue
    try:
      metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      return path, f"{type(e).__name__}: {e}"
    loss = metrics.get("eval_loss") if isinstance(metrics, dict) else None
    if isinstance(loss, bool) or not isinstance(loss, (int, float)):
      return path, f"it holds {json.dumps(metrics)[:80]}, not {{\"eval_loss\": <number>}}"
  return None


def _damaged_metrics_error(workdir, path: pathlib.Path, problem: str) -> "CheckpointReadError":
  # Deleting the file is no way out: a step without a validation loss is deleted by the next
  # save unless it is among the latest, and it may be the best one.
  return CheckpointReadError(
      f"The metrics file of checkpoint step {path.parent.parent.name} ({path}) is damaged "
      f"({problem}); every step's is read to rank them. Rewrite it as {{\"eval_loss\": X}}, X "
      f"the step's eval_loss in {pathlib.Path(workdir) / 'metrics.jsonl'}. (Deleting "
      f"{path.parent} instead leaves the step without a validation loss: the next save deletes "
      "it unless it is among the latest config.train.keep_checkpoints.)")


@jax.jit
def _count_non_finite(tree):
  # One scalar, computed where the shards live: cheap to fetch before every save.
  return sum(jax.numpy.sum(~jax.numpy.isfinite(x)) for x in jax.tree.leaves(tree)
             if jax.numpy.issubdtype(x.dtype, jax.numpy.floating))


def all_finite(tree) -> bool:
  return int(_count_non_finite(tree)) == 0


# The meta key of the state's checksums: bytes altered in place (a bad disk, a copy that kept the
# file sizes) read back as finite numbers, which the NaN / Inf check cannot tell from training's.
CHECKSUM_META = "state_checksums"
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _leaf_name(path) -> str:
  """'params/encoder/layer_0/mlp_in/kernel' for the train state's leaf and for the same leaf of
  a params-only restore's {"params": ...} tree (jax.tree_util.keystr writes them otherwise)."""
  return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _summed(leaves):
  """The sum of each leaf's bit patterns modulo 2**32: exact and independent of the order of
  the addition, so the same on any mesh and on the host (None for a leaf of another width)."""
  import jax.numpy as jnp
  sums = []
  for x in leaves:
    unsigned = _UNSIGNED.get(x.dtype.itemsize) if x.dtype != jnp.bool_ else None
    if unsigned is None or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      sums.append(None)
      continue
    bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    sums.append(jnp.sum(bits, dtype=jnp.uint32))
  return sums


_summed_on_device = jax.jit(_summed)


def state_checksums(tree) -> dict[str, int]:
  """{leaf name: checksum} of a (sharded) train state or of numpy arrays, as saved in the meta."""
  named, _ = jax.tree_util.tree_flatten_with_path(tree)
  leaves = [leaf for _, leaf in named]
  if all(isinstance(x, np.ndarray) for x in leaves):  # A params-only restore, on the host.
    sums = [None if _UNSIGNED.get(x.dtype.itemsize) is None or x.dtype == np.bool_ else
            int(np.ascontiguousarray(x).view(_UNSIGNED[x.dtype.itemsize]).sum(dtype=np.uint64)
                % 2**32) for x in leaves]
  else:
    sums = [None if v is None else int(v) for v in jax.device_get(_summed_on_device(leaves))]
  return {_leaf_name(path): v for (path, _), v in zip(named, sums, strict=True) if v is not None}


def _check_checksums(tree, meta, workdir, step, steps, step_flag=None) -> None:
  """CheckpointReadError naming the step when `tree`'s leaves differ from the checksums its save
  recorded (a checkpoint written before they were recorded has none to compare)."""
  saved = meta.get(CHECKSUM_META)
  if not isinstance(saved, dict):
    return
  read = state_checksums(tree)
  differ = sorted(k for k in read.keys() & saved.keys() if read[k] != saved[k])
  if differ:
    raise _unreadable(workdir, step, steps, ValueError(
        f"{len(differ)} array(s) read back differ from the checksums saved with them ("
        f"{', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}): the files were altered "
        "since"), step_flag)


class Checkpointer:
  """Saves and restores a run's checkpoints in `<workdir>/checkpoints`."""

  def __init__(self, workdir, *, keep: int = 2):
    self.workdir = pathlib.Path(workdir)
    self.manager = _manager(workdir, keep=keep)
    self._writing = None  # The step of the asynchronous save that may still be in flight.

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, meta: dict, *, eval_loss=None,
           force: bool = False, last: bool = False) -> bool:
    """Starts an asynchronous save; returns False (and saves nothing) for a non-finite state or,
    unless it is the run's `last` save (its final step, a stop, a data failure), one whose last
    step was skipped. A previous save that failed in the background is raised first, as its own
    step (orbax would raise it from this save, as this step's failure)."""
    self.wait()
    skips = int(state.consecutive_skips)
    if skips and not last:
      # Parameters blown up to huge but finite values make every later step non-finite: saving
      # then would rotate the last checkpoints out before the run stops.
      logging.warning("Deferring the checkpoint of step %d: the last %d step(s) were skipped for "
                      "a non-finite loss or gradient. %s", step, skips, self._kept())
      return False
    if skips:  # No later step to defer to: deferring would lose every step since the latest.
      logging.warning("Saving step %d though its last %d step(s) were skipped for a non-finite "
                      "loss or gradient: its parameters are those of step %d, the last finite "
                      "one.%s", step, skips, step - skips, self.best_advice(latest=step))
    if not all_finite(state.params):
      logging.error("Not saving step %d: the parameters hold NaN or Inf. %s", step, self._kept())
      return False
    metrics = None if eval_loss is None else {"eval_loss": float(eval_loss)}
    meta = {**meta, CHECKSUM_META: state_checksums(state)}
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))
    try:
      started = self.manager.save(step, args=args, metrics=metrics, force=force)
    except Exception as e:  # Disk full, permissions, ... : say so, keep what exists.
      raise CheckpointWriteError(self._write_failure(step, e)) from e
    self._writing = step if started else None
    return started

  def _kept(self) -> str:
    """What a refused save leaves as the latest checkpoint, for its log line. Not "good": steps
    that diverge are finite, and saved, before the non-finite ones are skipped."""
    latest = self.latest_step()
    return (f"Step {latest} stays the latest checkpoint.{self.best_advice(latest)}"
            if latest is not None else "No checkpoint has been written yet.")

  def best_step(self) -> int | None:
    """The checkpointed step of the lowest eval_loss (None: none evaluated, or unreadable)."""
    try:
      return self.manager.best_step()
    except Exception:  # Only for advice: never the reason a run stops.
      return None

  def best_advice(self, latest: int | None = None) -> str:
    """A sentence naming the best checkpoint when it is not the latest (or `latest`, a step being
    saved; "" otherwise): after a divergence, the step to go back to."""
    best, latest = self.best_step(), latest if latest is not None else self.latest_step()
    if best is None or best == latest:
      return ""
    return (f" If the run was diverging by then (its eval_loss in metrics.jsonl), the best "
            f"checkpoint by validation loss is step {best}: move the later steps out of "
            f"{checkpoint_dir(self.workdir)} to resume from it.")

  def wait(self) -> None:
    """Blocks until an asynchronous save has reached the disk; errors surface here."""
    step, self._writing = self._writing, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      if not self._saved_but_not_rotated(step, e):
        raise CheckpointWriteError(self._write_failure(step, e)) from e

  def _saved_but_not_rotated(self, step, error) -> bool:
    """Whether `error` came after `step` was finalized on disk: orbax's background thread then
    deletes the steps its retention policy rotates out, and a failure there (a read-only old
    step) loses nothing. Warned, and the run goes on: stopping it as a failed write of a step
    that is complete helped no one."""
    try:
      on_disk = finalized_steps(self.workdir)
    except OSError:
      return False
    if step is None or step not in on_disk:
      return False
    listed = set(self.manager.all_steps())  # Without those orbax meant to delete (or, seen
    # after such a failure, without the new step too: a reopened manager lists it again).
    stale = [s for s in on_disk if s not in listed and s != step]
    logging.warning(
        "Checkpoint step %d is saved, but deleting the older step(s) %s that "
        "config.train.keep_checkpoints rotates out failed: %s: %s. The run goes on; fix the "
        "permissions of %s and delete them by hand (a step may be partly deleted: do not resume "
        "from it).", step, stale or "", type(error).__name__, error, checkpoint_dir(self.workdir))
    # Orbax dropped the new step from its list with the failed deletion: without a reload it had
    # no latest step, never rotated that one out, and a later stop said nothing was saved. The
    # steps it meant to delete stay out of the list: back in, an undeletable one failed every
    # later rotation before the others' turn (orbax deletes in order), and none went again.
    self.manager.reload()
    checkpoints = getattr(self.manager, "_checkpoints", None)  # No public API for this.
    if stale and hasattr(checkpoints, "delete_if"):
      checkpoints.delete_if(lambda info: info.step in stale)
    return True

  def check(self) -> None:
    """Without blocking, raises the failure of an asynchronous save that has finished (a disk
    that filled up while it wrote): cheap enough for every step, so a run stops within a step of
    it rather than training on until its next checkpoint for steps that no checkpoint will keep.
    With several processes it does nothing (the failure may be seen by one process only, and
    one stopping alone would leave the others hanging): the next save raises it on all."""
    if (self._writing is not None and jax.process_count() == 1
        and not self.manager.is_saving_in_progress()):
      self.wait()

  def _write_failure(self, step, error) -> str:
    # From the disk, not from the manager: orbax drops the steps its retention policy will delete
    # once the new save finishes, which a failed save never does.
    try:
      on_disk = finalized_steps(self.workdir)
    except OSError:  # The folder itself unreadable (the permission that failed the save).
      on_disk = self.manager.all_steps()
    intact = [s for s in on_disk if s != step]
    return (f"Writing checkpoint {'' if step is None else f'step {step} '}to "
            f"{checkpoint_dir(self.workdir)} failed: {type(error).__name__}: {error}. "
            f"The previous checkpoints {intact or '(none)'} are intact; free disk space or fix "
            "permissions and resume from the latest (the unfinished save's temporary folder is "
            "removed then).")

  def restore(self, step: int, abstract_state):
    """Restores (state, data_state, meta) at `step` with the shardings of `abstract_state`.

    `abstract_state` leaves are jax.ShapeDtypeStruct with the *target* sharding, so a checkpoint
    saved on one mesh (say 2x2x2 on 8 devices) restores onto any other (1 device, 8x1x1).
    """
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args),
          data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # Truncated or missing files: name the step and the way out.
      if "tree structures do not match" in str(e):  # Readable, but not this config's state.
        raise CheckpointReadError(
            f"Checkpoint step {step} in {checkpoint_dir(self.workdir)} holds a train state laid "
            f"out otherwise than this config's ({_first_line(e)[1]}): a setting that shapes the "
            "optimizer state changed since it was saved. The checkpoint is not damaged: resume "
            "with the run's settings (its config.json).") from e
      raise _unreadable(self.workdir, step, self.all_steps(), e) from e
    if not all_finite(restored["state"]):  # No save writes these: the files were damaged since.
      raise _unreadable(self.workdir, step, self.all_steps(),
                        ValueError("the state holds NaN or Inf, which no save writes"))
    _check_checksums(restored["state"], restored["meta"] or {}, self.workdir, step,
                     self.all_steps())
    return restored["state"], restored["data"], restored["meta"]

  def unreadable(self, step: int, error) -> "CheckpointReadError":
    """The error for a step whose content is unusable, found after the restore (e.g. a malformed
    data iterator state), with the step to fall back to."""
    return _unreadable(self.workdir, step, self.all_steps(), error)

  def read_meta(self, step: int) -> dict:
    return _read_meta(self.manager, self.workdir, step)

  def close(self) -> None:
    try:
      self.wait()  # A failed asynchronous save surfaces as a CheckpointWriteError.
    finally:
      self.manager.close()


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; earlier checkpoints are untouched."""


class CheckpointReadError(ValueError):
  """A checkpoint step exists but cannot be read (a damaged or incomplete directory)."""


def _first_line(error) -> tuple[str, str]:
  """(type name, first line) of the first error in the chain that says something: tensorstore's
  read errors reach us wrapped in one whose text is the repr of a bound method."""
  seen, e = [], error
  while e is not None and e not in seen:
    seen.append(e)
    line = (str(e).strip().splitlines() or [""])[0]
    if line and "<bound method" not in line and "TensorStore(" not in line:
      return type(e).__name__, line[:300]
    e = e.__cause__ or e.__context__
  return type(error).__name__, (str(error).strip().splitlines() or [""])[0][:300]


def _unreadable(workdir, step, steps, error, step_flag=None) -> CheckpointReadError:
  """`step_flag`: the caller's flag that picks a step (a read-only tool's --step); without one
  the way out is to move the step aside, as a resume takes the latest."""
  others = [s for s in steps if s != step]
  kind, first = _first_line(error)
  if not others:
    hint = "no other checkpoint is left"
  elif step_flag:  # The closest step before the damaged one, else the one after it.
    earlier = [s for s in others if s < step]
    other = earlier[-1] if earlier else others[0]
    hint = f"pass {step_flag} {other} to use step {other} instead"
  else:
    hint = f"move {checkpoint_dir(workdir) / str(step)} aside to use step {others[-1]}"
  return CheckpointReadError(
      f"Checkpoint step {step} in {checkpoint_dir(workdir)} is damaged or incomplete "
      f"({kind}: {first}); {hint}.")


def mlm_config_to_dict(cfg: model_lib.MLMConfig) -> dict:
  return dataclasses.asdict(cfg)


def architecture_mismatch(saved: dict, current: model_lib.MLMConfig) -> list[str]:
  """Differences in the fields that decide parameter shapes and meaning (not dropout, dtype...).
  The LayerNorm epsilon is one: the parameters were trained to its normalisation (an imported
  checkpoint's eps differing from the flavour's moved logits by 4e-3)."""
  keys = ("vocab_size", "num_layers", "hidden_size", "num_heads", "mlp_size", "flavour",
          "max_positions", "type_vocab_size", "pad_id", "layer_norm_eps", "scan_layers")
  now = mlm_config_to_dict(current)
  return [f"model.{k}: checkpoint {saved.get(k)!r} != run {now[k]!r}" for k in keys
          if saved.get(k) != now[k]]


def require_checkpoint_dir(workdir) -> pathlib.Path:
  """The workdir's checkpoint directory; FileNotFoundError, saying how to make one, if absent."""
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    from informask_jax import export  # Lazily: export imports this module in its functions.

    if export.is_hf_model_dir(workdir):
      # A Hugging Face model directory (an export, a download) where a workdir belongs: the
      # usual slip of someone who fine-tunes with `from_pretrained(DIR)`.
      raise FileNotFoundError(
          f"{workdir} is a Hugging Face model directory, not a training workdir (no "
          f"checkpoints/). Import it first: python convert_checkpoint.py --from-hf {workdir} "
          "--out NEW_WORKDIR, then use NEW_WORKDIR.")
    run = run_above(workdir)
    if run is not None:
      raise FileNotFoundError(f"{workdir} is (inside) a run's checkpoints folder; give the run's "
                              f"workdir, {run}, which holds it.")
    raise FileNotFoundError(
        f"No checkpoints in {workdir}: {path} does not exist. Train with train.py --workdir, "
        "or import one with convert_checkpoint.py --from-hf.")
  return path


def _find_steps(workdir) -> tuple[ocp.CheckpointManager, list[int]]:
  path = require_checkpoint_dir(workdir)
  manager = _manager(workdir, read_only=True)
  steps = sorted(manager.all_steps())
  if not steps:
    manager.close()
    unfinished = sorted(p.name for p in path.iterdir() if ".orbax-checkpoint-tmp" in p.name)
    raise FileNotFoundError(
        f"No finished checkpoint in {path}: " + (
            f"it holds only unfinished ones ({', '.join(unfinished)}), from a save that was "
            "interrupted." if unfinished else "the directory is empty."))
  return manager, steps


def checkpoint_steps(workdir) -> list[int]:
  """The finished checkpoint steps of a workdir; FileNotFoundError when there are none."""
  manager, steps = _find_steps(workdir)
  manager.close()
  return steps


# The meta key of the longest input the run's training has given the model so far: the largest
# data.seq_len of its steps, or the trained length of the model it started from (init_from).
TRAINED_LENGTH_META = "trained_length"


def trained_length(cfg: model_lib.MLMConfig, meta: dict, tokenizer_limit=None) -> int:
  """The longest input the training behind a checkpoint gave the model, which its export's
  tokenizer truncates at and the LAMA probe cuts queries at: what the step's meta records
  (a :tiny run trains rows 0-127 of its 512; the rows after them stay as initialised), within
  the positions the table can have trained (cfg.max_trained_len). A checkpoint saved before it
  was recorded: its config's data.seq_len, or the table's after an init_from; an import: its
  tokenizer's own limit `tokenizer_limit` (512 for bert-base-uncased; transformers' "none" is
  a huge number), so that an export, import and export again keeps it."""
  def length(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

  recorded = length(meta.get(TRAINED_LENGTH_META))
  if recorded:
    return min(cfg.max_trained_len, recorded)
  config = meta.get("config")
  if isinstance(config, dict):
    seq_len = length((config.get("data") or {}).get("seq_len"))
    if config.get("init_from") or not seq_len:
      return cfg.max_trained_len
    return min(cfg.max_trained_len, seq_len)
  limit = length(tokenizer_limit)
  if meta and limit and limit < 10**9:
    return min(cfg.max_seq_len, limit)
  return cfg.max_trained_len


def step_meta(workdir, step: int) -> dict:
  """The meta of the checkpoint at `step` (its run config, architecture, whether its masked-LM
  head is an import's fresh one); {} when unreadable, which the restore names instead."""
  manager, _ = _find_steps(workdir)
  try:
    return _read_meta(manager, workdir, step)
  except CheckpointReadError:
    return {}
  finally:
    manager.close()


def latest_meta(workdir) -> dict | None:
  """The latest finished checkpoint's meta (its config, architecture, tokenizer fingerprint), or
  None when there is none or it cannot be read (the resume then names the problem itself)."""
  try:
    manager, steps = _find_steps(workdir)
  except FileNotFoundError:
    return None
  try:
    return _read_meta(manager, workdir, steps[-1])
  except CheckpointReadError:
    return None
  finally:
    manager.close()


class UntrainedHead(ValueError):
  """The step is an import of a bare encoder, whose masked-LM head was initialised fresh."""


def restore_params(workdir, step: int | None = None, *, step_flag: str | None = None,
                   tokenizer_fingerprint: str | None = None, untrained_head: str = "allow"
                   ) -> tuple[Any, model_lib.MLMConfig, int]:
  """Parameters as numpy arrays on this host, whatever mesh saved them, plus the architecture.

  `step_flag` names the caller's flag for `step` (eval_lama.py's, convert_checkpoint.py's
  --step): a damaged step's error then advises it rather than moving the step aside.
  `tokenizer_fingerprint`: that of WORKDIR/tokenizer as the caller loaded it, refused (before
  the weights are read) when the step was trained with another one. `untrained_head`: what an
  imported bare encoder's fresh head gets: "allow" (init_from trains it), "warn" (an export,
  fine for fine-tuning) or "refuse" (UntrainedHead: LAMA would score a random head)."""
  manager, steps = _find_steps(workdir)
  try:  # Closed on every path: its threads left open print tracebacks at interpreter exit.
    return _restore_params(manager, workdir, step, steps, step_flag, tokenizer_fingerprint,
                           untrained_head)
  finally:
    manager.close()


def _check_head(meta, workdir, step, untrained_head) -> None:
  if not meta.get(FRESH_HEAD_META):
    return
  what = (f"the checkpoint at step {step} in {workdir} is an import of an encoder without a "
          "masked-LM head, whose head was initialised fresh")
  if untrained_head == "refuse":
    raise UntrainedHead(what)
  if untrained_head == "warn":
    logging.warning("%s%s: its token predictions are random until the head is trained "
                    "(--config.init_from); the encoder is fine for fine-tuning.",
                    what[0].upper(), what[1:])


def _restore_params(manager, workdir, step, steps, step_flag, tokenizer_fingerprint,
                    untrained_head):
  if step is None:
    step = steps[-1]
  elif step not in steps:
    try:  # The step a user most often wants besides the latest.
      best = manager.best_step()
    except Exception:  # Unreadable metrics: the list alone.
      best = None
    raise ValueError(f"No checkpoint at step {step} in {checkpoint_dir(workdir)}; "
                     f"available steps: {steps}" + (
                         f" (the best by validation loss: {best})" if best is not None else "")
                     + ".")
  meta = _read_meta(manager, workdir, step, step_flag)
  _check_head(meta, workdir, step, untrained_head)
  saved = meta.get("tokenizer_fingerprint")  # Imports written before 2026-12 record none.
  if tokenizer_fingerprint and saved and saved != tokenizer_fingerprint:
    # Only the size was compared: a replaced vocabulary of the same size gave fluent nonsense.
    raise ValueError(
        f"The tokenizer in {pathlib.Path(workdir) / 'tokenizer'} is not the one the checkpoint "
        f"at step {step} was trained with (fingerprint {tokenizer_fingerprint}, the "
        f"checkpoint's {saved}): its token ids would mean other tokens. Put back the run's own "
        "tokenizer, the one train.py (or the import) saved there.")
  try:
    saved_state = manager.item_metadata(step)["state"]
    params_meta = saved_state.tree["params"]
    # Restore only the parameters, as plain numpy: no mesh, no optimizer state.
    params_meta = _as_dict(params_meta)
    item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                   params_meta)}
    restore_args = {"params": jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray),
                                           params_meta)}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True)))
  except Exception as e:
    raise _unreadable(workdir, step, steps, e, step_flag) from e
  params = restored["state"]["params"]
  if not all(np.isfinite(x).all() for x in jax.tree.leaves(params)):
    raise _unreadable(workdir, step, steps,
                      ValueError("the parameters hold NaN or Inf, which no save writes"),
                      step_flag)
  _check_checksums({"params": params}, meta, workdir, step, steps, step_flag)
  return params, model_lib.MLMConfig(**meta["mlm_config"]), step


def _read_meta(manager, workdir, step, step_flag=None) -> dict:
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or "mlm_config" not in meta:
      raise KeyError("mlm_config")
    # Readers take these as mappings: another JSON type is damage, not an AttributeError later.
    if not isinstance(meta["mlm_config"], dict) or not isinstance(meta.get("config"), dict | None):
      raise ValueError("its meta's mlm_config / config are not JSON objects")
    _check_mlm_config_fields(meta["mlm_config"])
  except Exception as e:
    raise _unreadable(workdir, step, sorted(manager.all_steps()), e, step_flag) from e
  _fill_layer_norm_eps(meta["mlm_config"])
  return meta


def _fill_layer_norm_eps(saved: dict) -> None:
  """A meta without layer_norm_eps (every save so far records it; one written otherwise may not)
  gets the flavour's default, the only epsilon a run had before config.model.layer_norm_eps:
  MLMConfig's own default, BERT's, would misread a RoBERTa's."""
  if "layer_norm_eps" not in saved:
    saved["layer_norm_eps"] = model_lib.default_layer_norm_eps(saved.get("flavour", "bert"))


def _check_mlm_config_fields(saved: dict) -> None:
  """ValueError naming the fields MLMConfig(**saved) would fail on (a TypeError traceback): ones
  this code does not know, or required ones missing. Missing fields with a default are fine:
  a checkpoint written before they were added."""
  fields = dataclasses.fields(model_lib.MLMConfig)
  unknown = sorted(set(saved) - {f.name for f in fields})
  missing = [f.name for f in fields if f.name not in saved
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if unknown or missing:
    raise ValueError("its meta's mlm_config " + "; ".join(
        ([f"has fields this version of informask_jax does not know: {', '.join(unknown)}"]
         if unknown else []) + ([f"lacks {', '.join(missing)}"] if missing else [])))


def _as_dict(tree):
  """Orbax metadata trees may be custom mappings; normalise to plain dicts."""
  if hasattr(tree, "items"):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def save_initial_checkpoint(workdir, params, mlm_config: model_lib.MLMConfig,
                            tokenizer=None, *, fresh_mlm_head: bool = False) -> None:
  """A step-0, params-only checkpoint (e.g. imported from Hugging Face) for init_from / export.
  `fresh_mlm_head`: the head is new (the model had none), recorded for eval_lama and export."""
  path = checkpoint_dir(workdir)
  # Finished steps only: an import that ran out of disk left an unfinished one, which the
  # manager removes on opening, so the retry can go ahead.
  if finalized_steps(workdir):
    raise FileExistsError(f"{path} already holds checkpoints; choose an empty --out directory.")
  # The tokenizer first: the finished checkpoint is what makes the workdir a run, and one
  # without its tokenizer (a disk full, a kill in between) could be neither exported nor
  # imported again (its checkpoints/ is taken).
  meta = {"mlm_config": mlm_config_to_dict(mlm_config), "source": "import", "config": None,
          CHECKSUM_META: state_checksums({"params": params})}
  if tokenizer is not None:  # What the model was trained at, as far as its tokenizer says.
    meta[TRAINED_LENGTH_META] = trained_length(mlm_config, meta,
                                               getattr(tokenizer, "model_max_length", None))
  if fresh_mlm_head:
    meta[FRESH_HEAD_META] = True
  if tokenizer is not None:
    saved_dir = pathlib.Path(workdir) / "tokenizer"
    paths.replace_files(saved_dir, lambda tmp: tokenizer.save_pretrained(tmp), "the tokenizer")
    # As export and eval_lama load it, so that a vocabulary swapped in later is refused there.
    import transformers

    from informask_jax import tokenization
    meta["tokenizer_fingerprint"] = tokenization.tokenizer_fingerprint(
        transformers.AutoTokenizer.from_pretrained(saved_dir))
  manager = _manager(workdir, keep=1)
  params = jax.tree.map(np.asarray, params)
  try:
    manager.save(0, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave({"params": params}), data=ocp.args.JsonSave({}),
        meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
  except Exception as e:
    with contextlib.suppress(Exception):  # Its wait raises the failed save again.
      manager.close()
    kind, first = _first_line(e)
    # Tensorstore's first line can run to hundreds of characters before it gets to the cause.
    cause = next((f" ({c})" for c in (*paths.DISK_ERROR_TEXTS, "Permission denied")
                  if c in str(e) and c not in first), "")
    raise paths.WriteError(
        f"Writing the imported checkpoint to {path} failed ({kind}: {first}{cause}); run the "
        "import again once the disk has room (the unfinished step is removed then).") from e
  manager.close()


def write_json(path, obj) -> None:
  """Atomically (a crash never leaves half a file); a failed write (a full disk) leaves the file
  as it was and no temporary file beside it."""
  text = json.dumps(obj, indent=2, sort_keys=True, default=str)
  try:
    paths.atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text))
  except OSError as e:
    raise paths.WriteError(f"Writing {path} failed ({type(e).__name__}: {e}); it was left as it "
                           "was.") from e
