"""Checkpoints restore onto any mesh; a failed write loses nothing; broken states are not saved."""

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from informask_jax import checkpointing, export
from informask_jax import model as model_lib
from informask_jax import sharding as sharding_lib
from informask_jax import workdir as workdir_lib
from tests import test_trainer as tt


def _mesh(shape, num_devices):
  cfg = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), shape, strict=True)))
  return sharding_lib.make_mesh(cfg, jax.devices()[:num_devices])


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      shardings)


def _meta():
  cfg = model_lib.MLMConfig(vocab_size=10, num_layers=1, hidden_size=8, num_heads=2, mlp_size=16)
  return {"mlm_config": checkpointing.mlm_config_to_dict(cfg), "config": {}}


def test_restore_onto_other_meshes_gives_the_same_next_loss(tmp_path):
  config = tt._equivalence_config()
  state, step, mesh, _ = tt._setup(config, (2, 2, 2), 8)
  batch = tt._batch()
  with jax.set_mesh(mesh):
    on_mesh = jax.device_put(batch, sharding_lib.batch_sharding(mesh))
    for _ in range(2):
      state, _ = step(state, on_mesh)
    saver = checkpointing.Checkpointer(tmp_path)
    assert saver.save(2, state, {"epoch": 0, "position": 2}, _meta(), force=True)
    saver.close()
    _, metrics = step(state, on_mesh)
  expected = float(metrics["loss"])

  for shape, devices in (((1, 1, 1), 1), ((8, 1, 1), 8)):
    fresh, step_fn, target_mesh, _ = tt._setup(config, shape, devices)
    shardings = jax.tree.map(lambda x: x.sharding, fresh)
    restored, data_state, _ = checkpointing.Checkpointer(tmp_path).restore(
        2, _abstract(fresh, shardings))
    assert data_state == {"epoch": 0, "position": 2} and int(restored.step) == 2
    leaf = restored.params["encoder"]["layer_0"]["mlp_in"]["kernel"]
    assert leaf.sharding == shardings.params["encoder"]["layer_0"]["mlp_in"]["kernel"]
    with jax.set_mesh(target_mesh):
      _, metrics = step_fn(restored, jax.device_put(batch,
                                                    sharding_lib.batch_sharding(target_mesh)))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


@contextlib.contextmanager
def _unwritable(path):
  """Makes `path` unwritable for this process; as root, by dropping the effective user id."""
  path.chmod(0o555)
  dropped = os.geteuid() == 0
  if dropped:
    os.seteuid(65534)  # nobody: the mode bits now apply.
  try:
    yield
  finally:
    if dropped:
      os.seteuid(0)
    path.chmod(0o755)


# As user nobody, JAX cannot read the test run's compilation cache (conftest) and says so: it
# compiles instead, which is what this test needs.
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry")
def test_failed_write_is_reported_and_keeps_earlier_checkpoints(tmp_path):
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  saver.save(1, state, {"position": 1}, _meta(), force=True)
  saver.wait()
  before = set(threading.enumerate())
  with _unwritable(checkpointing.checkpoint_dir(tmp_path)):
    with pytest.raises(checkpointing.CheckpointWriteError, match=r"previous checkpoints \[1\]"):
      saver.save(2, state.replace(step=state.step + 1), {"position": 2}, _meta(), force=True)
      saver.wait()
  # No thread of the failed save is left waiting for its directory: such threads (orbax's, with
  # asynchronous directory creation) kept the process from exiting for 20 minutes.
  started = [t for t in set(threading.enumerate()) - before if not t.daemon]
  for t in started:
    t.join(timeout=30)
  assert not [t.name for t in started if t.is_alive()]
  reader = checkpointing.Checkpointer(tmp_path)
  assert reader.all_steps() == [1]
  shardings = jax.tree.map(lambda x: x.sharding, state)
  restored, data_state, _ = reader.restore(1, _abstract(state, shardings))
  assert data_state == {"position": 1}
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_state_is_never_saved(tmp_path):
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  assert saver.save(1, state, {}, _meta(), force=True)
  saver.wait()
  emb = state.params["embeddings"]["word"]["embedding"]
  broken = state.replace(params={**state.params, "embeddings": {
      **state.params["embeddings"], "word": {"embedding": emb.at[0, 0].set(jnp.inf)}}})
  assert not saver.save(2, broken, {}, _meta(), force=True)
  saver.close()
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [1]


def test_the_metrics_of_an_unfinished_save_never_stop_a_resume(tmp_path):
  """A crash while a save was finalized can leave its temporary folder with the metrics item in
  place and that file empty: it is no step to rank (the manager removes it), so the resume went
  on, not refused as a damaged 'step 2.orbax-checkpoint-tmp' to rewrite by hand."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  assert saver.save(1, state, {}, _meta(), eval_loss=3.0, force=True)
  saver.close()
  leftover = checkpointing.checkpoint_dir(tmp_path) / "2.orbax-checkpoint-tmp"
  (leftover / "metrics").mkdir(parents=True)
  (leftover / "metrics" / "metrics").write_text("")
  reopened = checkpointing.Checkpointer(tmp_path)
  assert reopened.all_steps() == [1] and reopened.best_step() == 1
  assert reopened.save(2, state, {}, _meta(), eval_loss=2.0, force=True)  # Removed by then.
  reopened.close()
  assert checkpointing.finalized_steps(tmp_path) == [1, 2] and not leftover.exists()


def test_an_unfinished_first_save_is_no_run_to_resume(tmp_path):
  """A run killed during its first save leaves only orbax's temporary directory: that is not a
  checkpoint (a resume would find no step), and the next Checkpointer removes it."""
  leftover = checkpointing.checkpoint_dir(tmp_path) / "20.orbax-checkpoint-tmp"
  leftover.mkdir(parents=True)
  assert not checkpointing.has_finalized_checkpoint(tmp_path)
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  assert saver.latest_step() is None
  assert saver.save(30, state, {}, _meta(), force=True)  # Removed (in the background) by then.
  saver.close()
  assert checkpointing.has_finalized_checkpoint(tmp_path) and not leftover.exists()
  with pytest.raises(ValueError, match="keep_checkpoints=0 must be an integer >= 1"):
    checkpointing.Checkpointer(tmp_path, keep=0)


def _two_saved_steps(workdir):
  """A train state saved at steps 1 and 2 (data state {"position": step}); (state, shardings)."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(workdir)
  for step in (1, 2):
    assert saver.save(step, state, {"position": step}, _meta(), force=True)
    saver.wait()
  saver.close()
  return state, jax.tree.map(lambda x: x.sharding, state)


def test_a_damaged_step_is_named_with_the_way_out(tmp_path):
  state, shardings = _two_saved_steps(tmp_path)
  step_dir = checkpointing.checkpoint_dir(tmp_path) / "2"
  shutil.rmtree(step_dir / "meta")
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"step 2 .* is damaged or incomplete .* to use step 1"):
    checkpointing.restore_params(tmp_path)
  reader = checkpointing.Checkpointer(tmp_path)
  with pytest.raises(checkpointing.CheckpointReadError, match="step 2"):
    reader.read_meta(2)
  for path in (step_dir / "state").rglob("*"):  # Every data file of the arrays emptied.
    if path.is_file() and path.stat().st_size > 1000:
      path.write_bytes(b"")
  with pytest.raises(checkpointing.CheckpointReadError, match="step 2"):
    reader.restore(2, _abstract(state, shardings))
  _, data_state, _ = reader.restore(1, _abstract(state, shardings))  # Step 1 is intact.
  assert data_state == {"position": 1}


def test_bytes_altered_in_place_are_a_damaged_step(tmp_path):
  """Flipped bits in a step's array data (a bad disk, a copy that kept the sizes) read back as
  finite numbers: the checksums its save recorded name the step, for the resume and for a
  params-only restore (export, LAMA), rather than training on (or exporting) the altered values."""
  state, shardings = _two_saved_steps(tmp_path)
  reader = checkpointing.Checkpointer(tmp_path)
  assert checkpointing.CHECKSUM_META in reader.read_meta(2)
  data = max((p for p in (checkpointing.checkpoint_dir(tmp_path) / "2" / "state").rglob("*")
              if p.is_file()), key=lambda p: p.stat().st_size)
  raw = data.read_bytes()
  # One bit flipped in the (compressed) data: some places read back as NaN or Inf, which the
  # restore refused before, others as finite numbers, which it took.
  caught = []
  for place in range(1, 10):
    altered = bytearray(raw)
    altered[len(raw) * place // 10] ^= 1
    data.write_bytes(bytes(altered))
    for restore in (lambda: reader.restore(2, _abstract(state, shardings)),
                    lambda: checkpointing.restore_params(tmp_path)):
      with pytest.raises(checkpointing.CheckpointReadError,
                         match=r"step 2 .* is damaged or incomplete .* to use step 1") as error:
        restore()
      caught.append(str(error.value))
  data.write_bytes(raw)
  assert any("array(s) read back differ from the checksums saved with them" in e
             for e in caught), caught
  _, data_state, _ = reader.restore(1, _abstract(state, shardings))  # Step 1 is intact.
  params, _, _ = checkpointing.restore_params(tmp_path, 1)
  assert data_state == {"position": 1}
  # The same sums on the host as on the device, and on another mesh's shards.
  assert checkpointing.state_checksums({"params": params}) == {
      k: v for k, v in checkpointing.state_checksums(state).items() if k.startswith("params/")}


def test_a_state_of_another_optimizer_layout_is_not_called_damaged(tmp_path):
  """Clipping turned off since the save (one optax.chain element less): the step is readable,
  and the error says so and what changed, rather than to move the step (and every other) aside."""
  config = tt._equivalence_config()
  state, _, _, _ = tt._setup(config, (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  assert saver.save(1, state, {}, _meta(), force=True)
  saver.close()
  config.optim.grad_clip_norm = 0.0
  unclipped, _, _, _ = tt._setup(config, (1, 1, 1), 1)
  reader = checkpointing.Checkpointer(tmp_path)
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"step 1 .* holds a train state laid out otherwise than this "
                           r"config's .* The checkpoint is not damaged: resume with the run's"):
    reader.restore(1, _abstract(unclipped, jax.tree.map(lambda x: x.sharding, unclipped)))
  reader.close()


def test_a_step_that_restores_non_finite_is_refused(tmp_path, monkeypatch):
  """Saves never write NaN (test above), so NaN read back means the files were damaged since (a
  flipped bit in an uncompressed array): restoring must not resume into NaN losses."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  saver = checkpointing.Checkpointer(tmp_path)
  assert saver.save(1, state, {}, _meta(), force=True)
  saver.wait()
  with monkeypatch.context() as m:  # Stands in for the damage: the check skipped on save.
    m.setattr(checkpointing, "all_finite", lambda tree: True)
    bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan),
                                            state.params))
    assert saver.save(2, bad, {}, _meta(), force=True)
    saver.wait()
  saver.close()
  reader = checkpointing.Checkpointer(tmp_path)
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"step 2 .* \(ValueError: the state holds NaN or Inf.* step 1"):
    reader.restore(2, _abstract(state, shardings))
  reader.restore(1, _abstract(state, shardings))  # Step 1 is intact.
  reader.close()
  with pytest.raises(checkpointing.CheckpointReadError, match=r"step 2 .*parameters hold NaN"):
    checkpointing.restore_params(tmp_path)


@pytest.mark.parametrize("wrapper", ["<bound method spec of TensorStore({'driver': 'zarr'})>",
                                     "<bound method Spec.read of <Spec object at 0x7f3a>>",
                                     "TensorStore({'driver': 'zarr', 'kvstore': 'd/'})"])
def test_a_damaged_step_names_the_error_that_says_something(wrapper):
  """tensorstore's read errors can reach us wrapped in one whose text is a bound method's repr, or
  the store's: the error below it is named."""
  try:
    try:
      raise ValueError("OUT_OF_RANGE: Error reading byte range [0, 2373) of d/74fb")
    except ValueError as inner:
      raise TypeError(wrapper) from inner
  except TypeError as e:
    error = checkpointing._unreadable("/w", 2, [1, 2], e)
  assert "(ValueError: OUT_OF_RANGE: Error reading byte range" in str(error)
  assert wrapper not in str(error) and "use step 1" in str(error)


def test_restore_params_errors_name_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints in"):
    checkpointing.restore_params(tmp_path)
  hf = tmp_path / "export"  # A Hugging Face directory given as a workdir: says how to import it.
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"export is a Hugging Face model directory, not a "
                                              r"training workdir .* --from-hf .*export --out"):
    checkpointing.require_checkpoint_dir(hf)
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  saver.save(3, state, {}, {"mlm_config": {}}, force=True)
  saver.wait()
  with pytest.raises(ValueError, match=r"No checkpoint at step 7 .* available steps: \[3\]\.$"):
    checkpointing.restore_params(tmp_path, step=7)
  # The best checkpoint by validation loss, which only --step exports, is named.
  saver.save(4, state, {}, {"mlm_config": {}}, eval_loss=2.0, force=True)
  saver.save(5, state, {}, {"mlm_config": {}}, eval_loss=3.0, force=True)
  saver.close()
  with pytest.raises(ValueError, match=r"available steps: \[4, 5\] \(the best by validation "
                                       r"loss: 4\)\.$"):
    checkpointing.restore_params(tmp_path, step=7)
  # The run's checkpoints/ folder given for the run: the workdir above it is named.
  with pytest.raises(FileNotFoundError, match=rf"checkpoints is \(inside\) a run's checkpoints "
                                              rf"folder; give the run's workdir, "
                                              rf"{tmp_path.resolve()}, which"):
    checkpointing.restore_params(tmp_path / "checkpoints")


def test_the_best_checkpoint_survives_a_resume(tmp_path):
  """The best step by eval loss must outlive the latest-N rotation after the manager is reopened,
  as on a resume; steps saved without an evaluation (final, pre-emption) are fine alongside."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path, keep=1)
  for step, loss in ((1, 1.0), (2, 5.0)):
    assert saver.save(step, state, {}, _meta(), eval_loss=loss, force=True)
  saver.close()
  saver = checkpointing.Checkpointer(tmp_path, keep=1)  # A resume reads the steps from disk.
  for step, loss in ((3, 6.0), (4, 7.0), (5, None)):
    assert saver.save(step, state, {}, _meta(), eval_loss=loss, force=True)
  saver.close()
  assert checkpointing.Checkpointer(tmp_path, keep=1).all_steps() == [1, 5]


def test_a_non_finite_eval_loss_never_displaces_the_best_checkpoint(tmp_path):
  """A NaN loss broke the ranking's sort: kept as the best, it had step 1 (the best) deleted."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path, keep=1)
  for step, loss in ((1, 3.0), (2, float("nan")), (3, 4.0), (4, float("inf")), (5, 6.0)):
    assert saver.save(step, state, {}, _meta(), eval_loss=loss, force=True)
    saver.wait()
  saver.close()
  assert checkpointing.Checkpointer(tmp_path, keep=1).all_steps() == [1, 5]


def test_a_damaged_metrics_file_of_an_old_step_is_named(tmp_path):
  """Every step's metrics are read to rank them: one truncated file ended every resume and
  export in a bare JSONDecodeError naming neither the file nor the step. The way out rewrites
  it: deleting it, as the message once said, had the next save delete the best step."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path, keep=1)
  for step, loss in ((1, 3.0), (2, 4.0)):
    assert saver.save(step, state, {}, _meta(), eval_loss=loss, force=True)
    saver.wait()
  saver.close()
  metrics = checkpointing.checkpoint_dir(tmp_path) / "1" / "metrics" / "metrics"
  advice = (r"; every step's is read to rank them\. Rewrite it as \{\"eval_loss\": X\}, X the "
            rf"step's eval_loss in {tmp_path}/metrics\.jsonl\. \(Deleting .*checkpoints/1/metrics "
            r"instead leaves the step without a validation loss: the next save deletes it unless "
            r"it is among the latest config\.train\.keep_checkpoints\.\)")
  metrics.write_text('{"eval_loss": 3.0')
  for open_it in (lambda: checkpointing.Checkpointer(tmp_path),
                  lambda: checkpointing.checkpoint_steps(tmp_path)):
    with pytest.raises(checkpointing.CheckpointReadError,
                       match=rf"metrics file of checkpoint step 1 \({metrics}\) is damaged "
                             r"\(JSONDecodeError: .*\)" + advice):
      open_it()
  # Valid JSON of another shape opened, then failed the next save as a write error ({}) or
  # dropped the step from the ranking (null): named when a run opens the checkpoints.
  for text in ("{}", "null", '{"eval_loss": "3.0"}', '{"eval_loss": true}'):
    metrics.write_text(text)
    with pytest.raises(checkpointing.CheckpointReadError,
                       match=r"metrics file of checkpoint step 1 .* is damaged \(it holds "
                             rf"{re.escape(text)}, not \{{\"eval_loss\": <number>\}}\)" + advice):
      checkpointing.Checkpointer(tmp_path, keep=1)
  metrics.write_text('{"eval_loss": 3.0}')  # As the message says: step 1 is the best again.
  reopened = checkpointing.Checkpointer(tmp_path, keep=1)
  assert reopened.all_steps() == [1, 2] and reopened.best_step() == 1
  assert reopened.save(3, state, {}, _meta(), eval_loss=5.0, force=True)
  reopened.close()
  assert checkpointing.finalized_steps(tmp_path) == [1, 3]


def test_a_failure_to_delete_a_rotated_out_step_warns_and_keeps_the_new_one(tmp_path,
                                                                            monkeypatch, caplog):
  """Orbax deletes the steps keep_checkpoints rotates out after the new step is complete: a
  failure there (an old step made read-only) was raised as a failed write of the new step, and
  the run stopped, though nothing was lost. It is warned, and the saves go on."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path, keep=1)
  assert saver.save(1, state, {"position": 1}, _meta(), eval_loss=5.0, force=True)
  saver.wait()

  def refuse(steps):
    raise PermissionError(13, "Permission denied", "_CHECKPOINT_METADATA")
  monkeypatch.setattr(saver.manager._checkpoint_deleter, "delete_steps", refuse)
  with caplog.at_level(logging.WARNING):
    assert saver.save(2, state.replace(step=state.step + 1), {"position": 2}, _meta(),
                      eval_loss=4.0, force=True)
    saver.wait()
  assert ("Checkpoint step 2 is saved, but deleting the older step(s) [1] that "
          "config.train.keep_checkpoints rotates out failed: PermissionError: [Errno 13] "
          "Permission denied: '_CHECKPOINT_METADATA'. The run goes on;") in caplog.text
  # The checkpointer still knows step 2 (orbax had dropped it with the failed deletion: no
  # latest step, a later stop saying nothing was saved, step 2 never rotated out).
  # Step 1, which it could not delete, is left out of its list (on disk, warned).
  assert saver.latest_step() == 2 and saver.best_step() == 2 and saver.all_steps() == [2]
  monkeypatch.undo()
  assert saver.save(3, state.replace(step=state.step + 2), {"position": 3}, _meta(),
                    eval_loss=3.0, force=True)
  saver.close()
  # Step 2 rotated out; step 1 waits for the hand the warning asked for (or a reopened
  # checkpointer, which lists it again and deletes it at its next save).
  assert checkpointing.finalized_steps(tmp_path) == [1, 3]
  reader = checkpointing.Checkpointer(tmp_path, keep=1)
  _, data_state, _ = reader.restore(3, _abstract(state, jax.tree.map(lambda x: x.sharding,
                                                                     state)))
  assert reader.latest_step() == 3 and data_state == {"position": 3}
  reader.close()


def test_a_step_that_can_never_be_deleted_does_not_stop_the_later_rotations(tmp_path,
                                                                            monkeypatch):
  """A step left read-only for good: orbax deletes the rotated-out steps in order, so with that
  step back in its list every later rotation failed on it first, and keep_checkpoints=1 kept
  every step. It is left out (warned), and the others rotate out as before."""
  from orbax.checkpoint._src.path import deleter

  delete = deleter.StandardCheckpointDeleter.delete

  def refuse_step_1(self, step):
    if step == 1:
      raise PermissionError(13, "Permission denied", "_CHECKPOINT_METADATA")
    return delete(self, step)
  monkeypatch.setattr(deleter.StandardCheckpointDeleter, "delete", refuse_step_1)
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path, keep=1)
  for step in range(1, 6):
    assert saver.save(step, state.replace(step=state.step + step - 1), {"position": step},
                      _meta(), eval_loss=6.0 - step, force=True)
    saver.wait()
    assert saver.latest_step() == step
  saver.close()
  assert checkpointing.finalized_steps(tmp_path) == [1, 5]


def test_a_workdir_path_with_a_bracket_is_refused_before_anything_is_saved(tmp_path, tiny_config):
  """Orbax merges a step's per-process files with a glob over its path, where '[' opens a
  character class: every checkpoint of such a workdir was unreadable, the run saying nothing."""
  odd = tmp_path / "run[lr=1e-3]"
  with pytest.raises(ValueError, match=r"Checkpoint writer: the checkpoints folder "
                                       rf"{re.escape(str(odd))}/checkpoints has '\[\.\.\.\]'"):
    checkpointing.Checkpointer(odd)
  with pytest.raises(ValueError, match=rf"^--workdir {re.escape(str(odd))}: the checkpoints "
                                       r"folder .* has '\[\.\.\.\]' in its path, which orbax's "
                                       r"checkpoint writer reads as a glob pattern"):
    workdir_lib.prepare(odd, tiny_config)
  with pytest.raises(ValueError, match=rf"^--out {re.escape(str(odd))}: the checkpoints folder"):
    export.import_to_workdir(str(tmp_path / "no-such-model"), str(odd))
  # A workdir linked to such a folder is resolved, so orbax is given the bracketed path too; a
  # checkpoints/ folder linked into one is globbed by the link's own path, which works.
  (tmp_path / "lr[1]").mkdir()
  (tmp_path / "linked").symlink_to(tmp_path / "lr[1]")
  with pytest.raises(ValueError, match=r"has '\[\.\.\.\]' in its path"):
    checkpointing.Checkpointer(tmp_path / "linked")
  assert not list(odd.glob('*')) and not list((tmp_path / "lr[1]").iterdir())
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "checkpoints").symlink_to(tmp_path / "lr[1]", target_is_directory=True)
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  for fine in ("run", "wd[3", "q?x", "a*b", "c]d"):  # '[' alone, and others, match themselves.
    saver = checkpointing.Checkpointer(tmp_path / fine)
    assert saver.save(1, state, {"position": 1}, _meta(), force=True)
    saver.close()
    _, data_state, _ = checkpointing.Checkpointer(tmp_path / fine).restore(
        1, _abstract(state, jax.tree.map(lambda x: x.sharding, state)))
    assert data_state == {"position": 1}, fine


def test_a_damaged_latest_step_points_to_the_one_before_it():
  error = checkpointing._unreadable("/w", 3, [1, 2, 3], ValueError("truncated"))
  assert "aside to use step 2" in str(error)


def test_a_damaged_step_read_by_a_tool_with_a_step_flag_points_to_that_flag():
  """A read-only tool (the export, eval_lama.py) picks its step with a flag: the step before
  the damaged one, else the one after it; the checkpoint itself stays where it is."""
  for step, other in ((3, 2), (2, 1), (1, 2)):
    error = str(checkpointing._unreadable("/w", step, [1, 2, 3], ValueError("x"), "--step"))
    assert error.endswith(f"; pass --step {other} to use step {other} instead.") and (
        "aside" not in error), error
  error = checkpointing._unreadable("/w", 1, [1], ValueError("x"), "--step")
  assert str(error).endswith("; no other checkpoint is left.")


def test_checkpoints_without_an_evaluation_rotate_out(tmp_path):
  """Only evaluated steps compete for 'best': the others are kept while among the latest only."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path, keep=1)
  for step in (1, 2, 3):
    assert saver.save(step, state, {}, _meta(), force=True)
  saver.close()
  assert checkpointing.Checkpointer(tmp_path, keep=1).all_steps() == [3]


def test_a_meta_without_the_architecture_is_a_damaged_step(tmp_path):
  """A meta item that parses but lacks mlm_config is named as a damaged step, not a KeyError."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  for step in (1, 2):
    assert saver.save(step, state, {}, _meta(), force=True)
    saver.wait()
  saver.close()
  metadata = checkpointing.checkpoint_dir(tmp_path) / "2" / "meta" / "metadata"
  good = json.loads(metadata.read_text())
  # Parsed, but not the shape readers take (an AttributeError in the resume's config check).
  # And an architecture of fields this code does not know, or without a required one: a
  # TypeError traceback of MLMConfig(**...) before.
  for damaged in ({"config": {}}, {**good, "config": "garbage"}, {**good, "mlm_config": [1]},
                  {**good, "mlm_config": {"vocab_size": 10, "max_predictions": 20}},
                  {**good, "mlm_config": {"num_layers": 2}}):
    metadata.write_text(json.dumps(damaged))
    with pytest.raises(checkpointing.CheckpointReadError, match=r"step 2 .* to use step 1"):
      checkpointing.Checkpointer(tmp_path).read_meta(2)


@pytest.mark.parametrize("key,other", [
    ("vocab_size", 999), ("num_layers", 7), ("hidden_size", 64), ("num_heads", 8),
    ("mlp_size", 99), ("flavour", "roberta"), ("max_positions", 77), ("type_vocab_size", 1),
    ("pad_id", 3), ("layer_norm_eps", 1e-7), ("scan_layers", True)])
def test_every_field_that_shapes_the_parameters_is_an_architecture_change(tiny_config, key,
                                                                          other):
  """A resume that changes any of them is named as a model mismatch (not as a damaged checkpoint,
  which is what orbax says of a tree of another shape); dropout and the like are not."""
  current = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  saved = {**dataclasses.asdict(current), key: other, "dropout": 0.5, "compute_dtype": "bfloat16"}
  assert checkpointing.architecture_mismatch(saved, current) == [
      f"model.{key}: checkpoint {other!r} != run {getattr(current, key)!r}"]


def test_a_meta_without_the_layer_norm_epsilon_reads_as_its_flavours(tmp_path):
  """An mlm_config saved without layer_norm_eps is read with the flavour's default, the only one a
  run had before config.model.layer_norm_eps: not MLMConfig's, BERT's 1e-12, for a RoBERTa."""
  cfg = model_lib.MLMConfig(vocab_size=10, num_layers=1, hidden_size=8, num_heads=2, mlp_size=16,
                            flavour="roberta", max_positions=16, pad_id=1, layer_norm_eps=1e-5)
  params = jax.tree.map(np.asarray, nn.meta.unbox(model_lib.init_params(
      model_lib.BertMLM(cfg), jax.random.key(0), 8)))
  checkpointing.save_initial_checkpoint(tmp_path, params, cfg)
  metadata = checkpointing.checkpoint_dir(tmp_path) / "0" / "meta" / "metadata"
  meta = json.loads(metadata.read_text())
  del meta["mlm_config"]["layer_norm_eps"]
  metadata.write_text(json.dumps(meta))
  assert checkpointing.latest_meta(tmp_path)["mlm_config"]["layer_norm_eps"] == 1e-5
  assert checkpointing.restore_params(tmp_path)[1] == cfg


def test_a_write_failure_that_surfaces_on_wait_or_close_is_named(tmp_path, monkeypatch):
  """An asynchronous write that fails in the background (disk full mid-write) surfaces at the next
  wait, or at close, as a CheckpointWriteError with the steps that are still intact."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path)
  assert saver.save(1, state, {}, _meta(), force=True)
  saver.wait()
  for finish in (saver.wait, saver.close):
    # As orbax's wait: the background error is raised once (then the thread counts as joined).
    errors = [OSError(28, "No space left on device")]
    monkeypatch.setattr(saver.manager, "wait_until_finished",
                        lambda errors=errors: errors and _raise(errors.pop()))
    with pytest.raises(checkpointing.CheckpointWriteError,
                       match=r"Writing checkpoint to .*checkpoints failed: OSError: .*No space "
                             r"left on device\. The previous checkpoints \[1\] are intact"):
      finish()


def _raise(error):
  raise error


@contextlib.contextmanager
def _small_disk(path, size):
  """A tmpfs of `size` bytes at `path`, which fills up as a full disk does, mid-write. Needs root
  and mount rights (skipped without them)."""
  path.mkdir()
  mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
      capture_output=True).returncode == 0
  if not mounted:
    pytest.skip("simulating a full disk needs root and the right to mount a tmpfs")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("found_by", ["check", "next save"])
def test_a_save_that_fills_the_disk_is_named_as_its_own_step(tmp_path, found_by):
  """A disk that fills up while a save writes in the background: the failure is that step's, the
  steps on disk are listed as intact (orbax's list lacks those its retention will delete once
  the save finishes), and check() raises it without waiting for the next save."""
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  probe = checkpointing.Checkpointer(tmp_path / "probe")
  probe.save(1, state, {}, _meta(), force=True)
  probe.close()
  size = sum(f.stat().st_blocks * 512 for f in (tmp_path / "probe").rglob("*") if f.is_file())
  with _small_disk(tmp_path / "disk", int(size * 1.5)) as workdir:
    saver = checkpointing.Checkpointer(workdir, keep=1)
    assert saver.save(1, state, {"position": 1}, _meta(), force=True)
    saver.wait()
    later = state.replace(step=state.step + 1)
    assert saver.save(2, later, {"position": 2}, _meta(), force=True)
    failure = r"Writing checkpoint step 2 to .* failed: .*The previous checkpoints \[1\] are intact"
    with pytest.raises(checkpointing.CheckpointWriteError, match=failure):
      if found_by == "check":
        for _ in range(600):  # Does not block: polled as the train loop does after each step.
          saver.check()
          time.sleep(0.05)
      else:
        saver.save(3, later.replace(step=later.step + 1), {"position": 3}, _meta(), force=True)
    saver.close()  # Raised once.
    assert checkpointing.finalized_steps(workdir) == [1]
    assert checkpointing.Checkpointer(workdir).all_steps() == [1]


def test_a_workdir_without_a_usable_checkpoint_is_named_for_what_it_holds(tmp_path):
  """A run that stopped before its first save (config.json, no weights) is no Hugging Face
  directory; unfinished saves are listed; the resume checks read the latest step's meta."""
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"No checkpoints in .*run: .*run/checkpoints does "
                                              r"not exist\. Train with train.py"):
    checkpointing.require_checkpoint_dir(run)
  (checkpointing.checkpoint_dir(run) / "4.orbax-checkpoint-tmp-12").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"No finished checkpoint in .*: it holds only "
                                              r"unfinished ones \(4.orbax-checkpoint-tmp-12\), "
                                              r"from a save that was interrupted\."):
    checkpointing.checkpoint_steps(run)
  assert checkpointing.latest_meta(run) is None
  state, _, _, _ = tt._setup(tt._equivalence_config(), (1, 1, 1), 1)
  saver = checkpointing.Checkpointer(tmp_path / "two")
  for step in (1, 2):
    assert saver.save(step, state, {}, {**_meta(), "config": {"step": step}}, force=True)
  saver.close()
  assert checkpointing.latest_meta(tmp_path / "two")["config"] == {"step": 2}
