"""workdir.prepare and the set-aside logs: a fresh start or an overwrite decided before anything
heavy runs, never losing a run's logs or checkpoints (resumes are tested in test_loop.py)."""

import errno
import logging
import os
import signal
import socket

import numpy as np
import pytest

from informask_jax import checkpointing, loop
from informask_jax import model as model_lib
from informask_jax import workdir as workdir_lib


def test_overwrite_without_resume_false_is_refused_not_ignored(tiny_config, tmp_path):
  """overwrite=True with resume left at True in a workdir holding a run: refused, naming both
  keys (it resumed the old run, ignoring the overwrite asked for); harmless in a new workdir."""
  mlm_config = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  tiny_config.train.overwrite = True
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, False)
  checkpointing.save_initial_checkpoint(tmp_path, {"w": np.zeros(2, np.float32)}, mlm_config)
  with pytest.raises(ValueError, match=r"config.train.overwrite=True, but config.train.resume="
                                       r"True .* would be resumed, not deleted\. Add "
                                       r"--config.train.resume=False"):
    workdir_lib.prepare(tmp_path, tiny_config)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [0]


def test_a_fresh_start_without_a_run_sets_logs_aside_and_never_deletes_them(tiny_config,
                                                                            tmp_path):
  """resume=False in a workdir without a finished checkpoint is not an overwrite: the old logs are
  set aside, and a second such start picks the next free suffix rather than replacing them."""
  tiny_config.train.resume = False
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, False)
  for text in ("first\n", "second\n"):
    (tmp_path / "metrics.jsonl").write_text(text)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events").write_text(text)
    workdir_lib.set_aside_earlier_logs(tmp_path)
  assert (tmp_path / "metrics.jsonl.earlier-1").read_text() == "first\n"
  assert (tmp_path / "metrics.jsonl.earlier-2").read_text() == "second\n"
  assert (tmp_path / "tensorboard.earlier-2" / "events").read_text() == "second\n"
  assert not (tmp_path / "metrics.jsonl").exists()


def test_checkpoint_directories_that_cannot_be_written_are_found_first(tiny_config, tmp_path,
                                                                     monkeypatch):
  """A file or an unwritable directory where the checkpoints go is refused before training, not
  at the first save; a writable new workdir is checked without making anything."""
  (tmp_path / "filed" / "checkpoints").parent.mkdir()
  (tmp_path / "filed" / "checkpoints").write_text("")
  with pytest.raises(FileExistsError, match=r"filed/checkpoints is a file"):
    workdir_lib.prepare(tmp_path / "filed", tiny_config)
  # A workdir that can be written: checked without making anything (a run refused later, e.g.
  # for an impossible mesh, leaves no empty folder).
  assert workdir_lib.prepare(tmp_path / "new" / "run", tiny_config) == (False, False)
  assert not (tmp_path / "new").exists()

  def refused(**kwargs):  # A read-only mount or directory (root ignores mode bits here).
    raise PermissionError(13, "Permission denied", kwargs["dir"])

  monkeypatch.setattr(workdir_lib.paths.tempfile, "mkdtemp", refused)
  (tmp_path / "locked").mkdir()
  with pytest.raises(PermissionError, match=r"--workdir .*locked cannot be written: creating a "
                                            r"directory in .*locked fails \(Permission denied\)"
                                            r"\. Fix its permissions"):
    workdir_lib.prepare(tmp_path / "locked", tiny_config)


def test_a_read_only_workdir_and_a_dangling_link_are_found_first(tiny_config, tmp_path,
                                                                monkeypatch):
  """A workdir that cannot be written while its checkpoints/ can (a link to a larger disk) was
  let through, to fail after the pipeline and the model were built ("free disk space" advice,
  or a bare PermissionError for the lock); a --workdir link to a folder deleted since ended
  there in "File exists"."""
  link = tmp_path / "link"
  link.symlink_to(tmp_path / "purged")
  with pytest.raises(FileNotFoundError, match=r"--workdir .*link is a symbolic link to .*purged, "
                                              r"which does not exist .*Create that folder"):
    workdir_lib.prepare(link, tiny_config)
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  real_mkdtemp = workdir_lib.paths.tempfile.mkdtemp

  def read_only_workdir(**kwargs):  # (Root ignores mode bits: refused here instead.)
    if kwargs["dir"] == str(workdir):
      raise PermissionError(13, "Permission denied", kwargs["dir"])
    return real_mkdtemp(**kwargs)

  monkeypatch.setattr(workdir_lib.paths.tempfile, "mkdtemp", read_only_workdir)
  with pytest.raises(PermissionError, match=r"--workdir .*run cannot be written: creating a "
                                            r"directory in .*run fails \(Permission denied\)\. "
                                            r"Fix its permissions"):
    workdir_lib.prepare(workdir, tiny_config)


# --- The lock: one run per workdir ---------------------------------------------------------------

def test_a_held_workdir_refuses_a_second_run_until_released(tmp_path, monkeypatch, caplog):
  """A second run (a Slurm job submitted twice) is refused, naming who holds the workdir; the
  processes of one run lock files of their own; the lock ends with its holder."""
  workdir = tmp_path / "new" / "run"  # Made by the lock: the run is about to write there.
  with workdir_lib.lock(workdir):
    holder = (workdir / ".lock.process-0").read_text()
    assert holder.startswith(f"pid {os.getpid()} on {socket.gethostname()}, since ")
    with pytest.raises(FileExistsError, match=rf"--workdir .*run is in use by another run "
                                              rf"\(pid {os.getpid()} on .*lock \.lock\.process-0"
                                              rf"\)\. Wait for it to end"):
      with workdir_lib.lock(workdir):
        pass
    assert (workdir / ".lock.process-0").read_text() == holder  # The refused run wrote nothing.
    monkeypatch.setattr(workdir_lib.jax, "process_index", lambda: 1)
    with workdir_lib.lock(workdir):  # Process 1 of the same run.
      pass
    monkeypatch.undo()
  with workdir_lib.lock(workdir):  # Released.
    pass

  def no_locks(f, operation):  # A network mount without locks.
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(workdir_lib.fcntl, "flock", no_locks)
  with caplog.at_level(logging.WARNING), workdir_lib.lock(workdir):
    pass
  assert "a second run started in this workdir would not be refused" in caplog.text


def test_a_run_in_a_held_workdir_is_refused_before_touching_it(tiny_config, tmp_path):
  config = tiny_config
  config.masking.name = "random"
  config.data.seq_len, config.model.num_layers, config.train.batch_size = 64, 1, 16
  config.train.num_steps = 1
  (tmp_path / "metrics.jsonl").write_text("kept\n")  # A run without a checkpoint logged this.
  with workdir_lib.lock(tmp_path):
    with pytest.raises(FileExistsError, match="is in use by another run"):
      loop.train_and_evaluate(config, tmp_path)
  # Not set aside as a dead run's logs: that run may be alive.
  assert (tmp_path / "metrics.jsonl").read_text() == "kept\n"
  assert not checkpointing.checkpoint_dir(tmp_path).exists()


def test_a_run_that_ends_while_another_starts_is_not_overwritten(tiny_config, tmp_path,
                                                               monkeypatch):
  """A job submitted twice: the second found no checkpoint and chose a fresh start, the first
  then finished and let go of the lock before the second took it. The second set the first's
  logs aside as a dead run's and died saving its step 1 over the first's ("free disk space").
  Now the decision is checked again under the lock; a held workdir is refused before the input
  pipeline is built, not after."""
  config = tiny_config
  config.masking.name = "random"
  config.data.seq_len, config.model.num_layers, config.train.batch_size = 64, 1, 16
  config.train.num_steps = 1
  with workdir_lib.lock(tmp_path), pytest.raises(FileExistsError, match="in use by another run"):
    workdir_lib.prepare(tmp_path, config)  # Early, from the lock file the holder made.
  mlm_config = model_lib.MLMConfig.from_config(config.model, vocab_size=1000, pad_id=0)
  real_prepare = workdir_lib.prepare

  def then_the_other_run_finishes(workdir, config):
    decided = real_prepare(workdir, config)
    checkpointing.save_initial_checkpoint(workdir, {"w": np.zeros(2, np.float32)}, mlm_config)
    (workdir / "metrics.jsonl").write_text("the other run's\n")
    return decided

  monkeypatch.setattr(workdir_lib, "prepare", then_the_other_run_finishes)
  with pytest.raises(FileExistsError, match=r"holds a finished checkpoint: another run wrote or "
                                            r"deleted there while this one started"):
    loop.train_and_evaluate(config, tmp_path)
  assert (tmp_path / "metrics.jsonl").read_text() == "the other run's\n"
  assert checkpointing.finalized_steps(tmp_path) == [0]


def test_entries_of_the_wrong_kind_and_a_runs_checkpoints_folder_are_refused(tiny_config,
                                                                            tmp_path,
                                                                            monkeypatch):
  """Found before any work: a --workdir that is another run's checkpoints/ (a new run nested its
  files among that run's steps), a file where the run writes a folder or the reverse (a traceback
  after the restore, or a run that ended without saving its tokenizer)."""
  mlm_config = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  run = tmp_path / "run"
  checkpointing.save_initial_checkpoint(run, {"w": np.zeros(2, np.float32)}, mlm_config)
  # Also a folder inside it (a step): the run deletes it with the step when it rotates it out.
  for inside in ("checkpoints", "checkpoints/0", "checkpoints/0/state/new"):
    with pytest.raises(FileExistsError, match=rf"run/{inside} is \(inside\) the checkpoints "
                                              r"folder of the run in .*/run; give .*/run to "
                                              r"resume that run"):
      workdir_lib.prepare(run / inside, tiny_config)
  fresh = tmp_path / "fresh"
  (fresh / "tokenizer").parent.mkdir()
  (fresh / "tokenizer").write_text("")
  with pytest.raises(FileExistsError, match=r"fresh/tokenizer is a file; the run writes its "
                                            r"tokenizer folder there"):
    workdir_lib.prepare(fresh, tiny_config)
  (fresh / "tokenizer").unlink()
  (fresh / "metrics.jsonl").mkdir()  # A fresh start sets old logs aside, whatever they are.
  assert workdir_lib.prepare(fresh, tiny_config) == (False, False)
  # (An imported step 0 stands in for a training run's: its own refusal to resume is skipped.)
  monkeypatch.setattr(workdir_lib.compatibility, "check_resume_settings", lambda *a: None)
  (run / "metrics.jsonl").mkdir()  # A resume appends to it.
  with pytest.raises(FileExistsError, match=r"run/metrics.jsonl is a directory; the run writes "
                                            r"its metrics.jsonl file there"):
    workdir_lib.prepare(run, tiny_config)


def test_a_fresh_start_never_writes_over_another_tools_config_json(tiny_config, tmp_path):
  """A config.json that is not a run's (another tool's settings, not JSON) is refused before a
  fresh start writes its own over it; a run's own config.json (a start that saved no checkpoint)
  is taken over as before."""
  # Some of a run's sections are not enough: another tool's config may name a "model" too.
  for text in ('{"learning_rate": 0.1, "layers": 4}', "lr: 0.1\n", "[1, 2]",
               '{"model": "gpt2", "train": {"lr": 0.1}}'):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(FileExistsError, match=r"holds a config.json that is not a training run's "
                                              r"\(no 'model', 'train' and 'masking' sections\)"):
      workdir_lib.prepare(tmp_path, tiny_config)
    assert (tmp_path / "config.json").read_text() == text
  (tmp_path / "config.json").write_text(tiny_config.to_json_best_effort())
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, False)


def test_a_set_aside_that_fails_midway_puts_back_what_it_moved_and_deletes_nothing(
    tmp_path, monkeypatch):
  """A rename that fails (a mount point, EBUSY) part way: putting back took every entry still in
  the workdir for the new run's and deleted it, the old tokenizer and logs included."""
  for name in ("checkpoints", "tokenizer"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "old").write_text(name)
  (tmp_path / "config.json").write_text("old config")
  (tmp_path / "metrics.jsonl").write_text("old metrics")
  rename = os.rename

  def busy_tokenizer(src, dst):
    if os.path.basename(src) == "tokenizer":
      raise OSError(errno.EBUSY, "Device or resource busy", src)
    rename(src, dst)
  monkeypatch.setattr(os, "rename", busy_tokenizer)
  with pytest.raises(OSError, match="busy"):
    with workdir_lib.OverwrittenRun(tmp_path) as overwritten:
      overwritten.set_aside()
  assert (tmp_path / "checkpoints" / "old").read_text() == "checkpoints"
  assert (tmp_path / "config.json").read_text() == "old config"
  assert (tmp_path / "tokenizer" / "old").read_text() == "tokenizer"
  assert (tmp_path / "metrics.jsonl").read_text() == "old metrics"
  assert not (tmp_path / workdir_lib.OVERWRITTEN).exists()


def test_an_overwrite_of_a_symlinked_or_mounted_checkpoints_folder_is_refused(tiny_config,
                                                                             tmp_path,
                                                                             monkeypatch):
  """The link was moved aside, the new run wrote a real checkpoints/ beside it, and the old
  checkpoints stayed on the linked disk for good."""
  mlm_config = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  big_disk, workdir = tmp_path / "big", tmp_path / "run"
  checkpointing.save_initial_checkpoint(big_disk, {"w": np.zeros(2, np.float32)}, mlm_config)
  workdir.mkdir()
  (workdir / "checkpoints").symlink_to(big_disk / "checkpoints")
  tiny_config.train.resume, tiny_config.train.overwrite = False, True
  with pytest.raises(FileExistsError, match=r"checkpoints is a symbolic link to .*big/checkpoints,"
                                            r" which the overwrite cannot set aside"):
    workdir_lib.prepare(workdir, tiny_config)
  assert checkpointing.finalized_steps(workdir) == [0]
  # A mount point (checkpoints/ on a larger disk): renaming it fails with EBUSY.
  (workdir / "checkpoints").unlink()
  checkpointing.save_initial_checkpoint(workdir, {"w": np.zeros(2, np.float32)}, mlm_config)
  mounted = str(workdir / "checkpoints")
  monkeypatch.setattr(workdir_lib.os.path, "ismount", lambda path: os.fspath(path) == mounted)
  with pytest.raises(FileExistsError, match=r"checkpoints is a mount point, which the overwrite "
                                            r"cannot set aside"):
    workdir_lib.prepare(workdir, tiny_config)


def test_a_run_is_deleted_only_when_overwrite_is_asked_for(tiny_config, tmp_path, monkeypatch):
  """resume=False alone in a workdir holding a run is refused, the checkpoint untouched: the
  second value prepare returns ("clear") is what sets the old run aside for deletion, so it may be
  True only under overwrite, and the default resume continues it."""
  mlm_config = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  checkpointing.save_initial_checkpoint(tmp_path, {"w": np.zeros(2, np.float32)}, mlm_config)
  tiny_config.train.resume = False
  with pytest.raises(FileExistsError, match=r"already holds a run .* config.train.resume=False\. "
                                            r"Use another --workdir, resume \(the default\), or "
                                            r"pass --config.train.overwrite=True"):
    workdir_lib.prepare(tmp_path, tiny_config)
  assert checkpointing.finalized_steps(tmp_path) == [0]
  tiny_config.train.overwrite = True
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, True)
  # (An imported step 0 stands in for a training run's: its own refusal to resume is skipped.)
  monkeypatch.setattr(workdir_lib.compatibility, "check_resume_settings", lambda *a: None)
  tiny_config.train.resume, tiny_config.train.overwrite = True, False
  assert workdir_lib.prepare(tmp_path, tiny_config) == (True, False)
  assert checkpointing.finalized_steps(tmp_path) == [0]


def test_init_from_another_layers_layout_is_accepted_and_another_architecture_is_not(
    tiny_config, tmp_path):
  """A fresh start from config.init_from converts scanned and unrolled layers into each other,
  so prepare lets that through; another number of layers is refused before any work."""
  mlm_config = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  init = tmp_path / "init"
  checkpointing.save_initial_checkpoint(init, {"w": np.zeros(2, np.float32)}, mlm_config)
  tiny_config.init_from = str(init)
  tiny_config.model.scan_layers = not mlm_config.scan_layers
  assert workdir_lib.prepare(tmp_path / "run", tiny_config) == (False, False)
  tiny_config.model.num_layers = mlm_config.num_layers + 1
  with pytest.raises(ValueError, match=rf"config.init_from=.*init does not match this run's "
                                       rf"config:\n  model.num_layers: checkpoint "
                                       rf"{mlm_config.num_layers} != run "
                                       rf"{mlm_config.num_layers + 1}$"):
    workdir_lib.prepare(tmp_path / "run", tiny_config)


def _old_run(workdir):
  """An earlier run's entries (no tokenizer/: its vocabulary was named, not trained)."""
  (workdir / "checkpoints" / "3").mkdir(parents=True)
  (workdir / "checkpoints" / "3" / "state").write_text("old state")
  (workdir / "config.json").write_text("old config")
  (workdir / "metrics.jsonl").write_text("old metrics")


def _assert_old_run(workdir):
  assert (workdir / "checkpoints" / "3" / "state").read_text() == "old state"
  assert (workdir / "config.json").read_text() == "old config"
  assert (workdir / "metrics.jsonl").read_text() == "old metrics"


def test_an_overwritten_run_comes_back_whole_if_the_new_one_fails_and_goes_if_it_trains(
    tmp_path):
  """Set aside, then the new run writes its own entries (a tokenizer/ the old run lacked
  included): a failure before its first step removes all of them and puts the old run back as
  it was; a step trained deletes the old run and keeps the new one's."""
  _old_run(tmp_path)
  with pytest.raises(RuntimeError, match="out of memory"):
    with workdir_lib.OverwrittenRun(tmp_path) as overwritten:
      overwritten.set_aside()
      assert not (tmp_path / "checkpoints").exists()
      (tmp_path / "checkpoints" / "0").mkdir(parents=True)
      (tmp_path / "tokenizer").mkdir()
      (tmp_path / "config.json").write_text("new config")
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
  _assert_old_run(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json",
                                                        "metrics.jsonl"]
  # The logs of an even earlier run, which never finished a checkpoint, go with it (they stayed,
  # beside the new run's logs).
  (tmp_path / "metrics.jsonl.earlier-1").write_text("older metrics")
  (tmp_path / "tensorboard.earlier-1").mkdir()
  with workdir_lib.OverwrittenRun(tmp_path) as overwritten:
    overwritten.set_aside()
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    (tmp_path / "config.json").write_text("new config")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json"]
  assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["1"]
  assert (tmp_path / "config.json").read_text() == "new config"


def test_a_process_stopped_at_once_by_a_failed_peer_puts_the_overwritten_run_back(tmp_path):
  """train.py leaves by os._exit when another process failed, skipping OverwrittenRun.__exit__:
  the old run stayed in .overwritten (the next start refused the workdir) until
  put_back_pending() restored it there; once a step is trained there is nothing to put back."""
  _old_run(tmp_path)
  (tmp_path / "tensorboard.earlier-2").mkdir()
  overwritten = workdir_lib.OverwrittenRun(tmp_path)
  overwritten.set_aside()
  assert not (tmp_path / "tensorboard.earlier-2").exists()
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "config.json").write_text("new config")
  workdir_lib.put_back_pending()  # As train.py's _stop_for_failed_peer, from another thread.
  _assert_old_run(tmp_path)
  assert (tmp_path / "tensorboard.earlier-2").is_dir()
  assert not (tmp_path / workdir_lib.OVERWRITTEN).exists() and not overwritten.pending
  workdir_lib.put_back_pending()  # Nothing pending: nothing moves.
  _assert_old_run(tmp_path)
  overwritten = workdir_lib.OverwrittenRun(tmp_path)
  overwritten.set_aside()
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)
  overwritten.delete()
  workdir_lib.put_back_pending()
  assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["1"]


def test_only_process_zero_sets_the_old_run_aside_or_deletes_it(tmp_path, monkeypatch):
  """The other processes of the run wait for process 0 (main_process_first): their own
  OverwrittenRun must neither move nor delete anything, whether the run trains or fails."""
  _old_run(tmp_path)
  monkeypatch.setattr(workdir_lib.jax, "process_index", lambda: 1)
  with workdir_lib.OverwrittenRun(tmp_path) as overwritten:
    overwritten.set_aside()
  with pytest.raises(RuntimeError, match="failed"):
    with workdir_lib.OverwrittenRun(tmp_path) as overwritten:
      overwritten.set_aside()
      raise RuntimeError("failed")
  _assert_old_run(tmp_path)
  assert not (tmp_path / workdir_lib.OVERWRITTEN).exists()


def test_a_half_deleted_run_is_finished_off_and_a_set_aside_one_is_kept(tiny_config, tmp_path):
  """A kill during the deletion left .overwritten.deleting, which the next start removes; a kill
  before the new run's first step left the earlier run in .overwritten, which is never deleted
  by a start: named, so that the user decides."""
  (tmp_path / f"{workdir_lib.OVERWRITTEN}.deleting" / "checkpoints").mkdir(parents=True)
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, False)
  assert not (tmp_path / f"{workdir_lib.OVERWRITTEN}.deleting").exists()
  _old_run(tmp_path / workdir_lib.OVERWRITTEN)
  with pytest.raises(FileExistsError, match=r"\.overwritten holds the run that "
                                            r"config\.train\.overwrite set aside"):
    workdir_lib.prepare(tmp_path, tiny_config)
  _assert_old_run(tmp_path / workdir_lib.OVERWRITTEN)


def test_the_write_check_leaves_nothing_behind_and_refuses_a_file(tmp_path, monkeypatch):
  """check_writable_dir probes by making a folder: it must remove it again, from an existing
  directory as from the nearest existing parent of a missing one (else every run, export and
  evaluation left a .write-check.* folder beside its output), and probe the parent too when the
  writer stages beside the directory (sibling). A file where a directory is to be is refused as
  such, whatever caller asks (not all check the workdir's entries first)."""
  mkdtemp, probed = workdir_lib.paths.tempfile.mkdtemp, []
  monkeypatch.setattr(workdir_lib.paths.tempfile, "mkdtemp",
                      lambda **kwargs: probed.append(kwargs["dir"]) or mkdtemp(**kwargs))
  (tmp_path / "run").mkdir()
  workdir_lib.paths.check_writable_dir(tmp_path / "run", "--workdir")
  workdir_lib.paths.check_writable_dir(tmp_path / "new" / "run", "--workdir")
  workdir_lib.paths.check_writable_dir(tmp_path / "run", "--out", sibling=True)
  run, parent = str(tmp_path / "run"), str(tmp_path)
  assert probed == [run, parent, run, parent]
  assert [p.name for p in tmp_path.iterdir()] == ["run"]
  assert not any((tmp_path / "run").iterdir())
  (tmp_path / "out").write_text("")
  with pytest.raises(FileExistsError, match=r"^--out .*/out exists and is not a directory\.$"):
    workdir_lib.paths.check_writable_dir(tmp_path / "out", "--out")


def test_a_first_save_that_was_killed_is_no_run_to_resume_or_refuse(tiny_config, tmp_path):
  """A kill during the first save leaves only orbax's temporary step folder: no finished
  checkpoint, so the workdir holds no run (a resume would find nothing to restore, and
  resume=False needs no overwrite); the start is a fresh one."""
  (tmp_path / "checkpoints" / "0.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, False)
  tiny_config.train.resume = False
  assert workdir_lib.prepare(tmp_path, tiny_config) == (False, False)


def test_logs_set_aside_never_replace_earlier_ones_of_any_kind(tmp_path):
  """The suffix is one that no log of this start has yet: an earlier start that set aside only
  its tensorboard/ holds tensorboard.earlier-1, so this start's logs all go to .earlier-2."""
  (tmp_path / "tensorboard.earlier-1").mkdir()
  (tmp_path / "tensorboard.earlier-1" / "events").write_text("first")
  (tmp_path / "metrics.jsonl").write_text("second\n")
  (tmp_path / "tensorboard").mkdir()
  (tmp_path / "tensorboard" / "events").write_text("second")
  workdir_lib.set_aside_earlier_logs(tmp_path)
  assert (tmp_path / "tensorboard.earlier-1" / "events").read_text() == "first"
  assert (tmp_path / "tensorboard.earlier-2" / "events").read_text() == "second"
  assert (tmp_path / "metrics.jsonl.earlier-2").read_text() == "second\n"


def test_an_atomic_write_that_fails_leaves_the_earlier_file_whole_and_no_temporary(tmp_path):
  """paths.atomic_write (a resumed run's trimmed metrics.jsonl, a checkpoint's meta): a write
  that fails half way (a full disk) keeps the earlier file as it was and leaves no temporary file
  beside it; one that succeeds replaces it."""
  path = tmp_path / "metrics.jsonl"
  path.write_text("earlier\n")

  def half_written(tmp):
    with open(tmp, "w") as f:
      f.write("half")
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    workdir_lib.paths.atomic_write(path, half_written)
  assert path.read_text() == "earlier\n"
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
  workdir_lib.paths.atomic_write(path, lambda tmp: open(tmp, "w").write("new\n"))
  assert path.read_text() == "new\n"
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_an_atomic_write_replaces_a_link_and_leaves_the_file_it_named(tmp_path):
  """A statistics cache's file linked to another run's: a rebuild must not rewrite that run's
  table through the link (masking show's --html passes the link's target to write through)."""
  (tmp_path / "other").mkdir()
  shared = tmp_path / "other" / "rates.npy"
  shared.write_text("the other run's\n")
  link = tmp_path / "rates.npy"
  link.symlink_to(shared)
  workdir_lib.paths.atomic_write(link, lambda tmp: open(tmp, "w").write("rebuilt\n"))
  assert not link.is_symlink() and link.read_text() == "rebuilt\n"
  assert shared.read_text() == "the other run's\n"


def test_a_signal_while_a_scratch_folder_is_made_is_acted_on_inside_the_block_that_removes_it(
    tmp_path, monkeypatch):
  """paths.scratch_dir defers Ctrl-C while mkdtemp runs: the signal is not lost (the user asked to
  stop), and it is raised where the folder is removed on the way out (an export's gigabytes)."""
  mkdtemp, made = workdir_lib.paths.tempfile.mkdtemp, []

  def interrupted_mkdtemp(**kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Arrives while the folder is being made.
    made.append(mkdtemp(**kwargs))
    return made[-1]

  monkeypatch.setattr(workdir_lib.paths.tempfile, "mkdtemp", interrupted_mkdtemp)
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      with workdir_lib.paths.scratch_dir(dir=tmp_path):
        pytest.fail("the block ran as if no signal had come")
  finally:
    signal.signal(signal.SIGINT, previous)
  assert made and not os.path.exists(made[0])
  assert signal.getsignal(signal.SIGINT) is previous
