"""A run's workdir before training: the refusals of a workdir that cannot take the run (a file, a
Hugging Face model, a run it would clobber, or resume against its config, no write permission),
the lock that keeps a second run out while one uses it, and the old run's logs set aside (a fresh
start), or the whole old run until the new one has trained a step (config.train.overwrite)."""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import shutil
import socket

import jax

from informask_jax import checkpointing, compatibility, paths

# What a run logs into its workdir (metrics.MetricWriter), besides checkpoints and config.
LOG_NAMES = ("metrics.jsonl", "tensorboard", "profile")
# All a run writes there: what config.train.overwrite sets aside (OverwrittenRun).
RUN_NAMES = (checkpointing.CHECKPOINT_DIR, "config.json", "tokenizer", *LOG_NAMES)
OVERWRITTEN = ".overwritten"


def prepare(workdir: pathlib.Path, config) -> tuple[bool, bool]:
  """(resume, clear): whether to resume the workdir's latest checkpoint, and whether the old run
  is to be deleted (config.train.overwrite) once everything else has been checked and built.
  Refuses to clobber a run by accident."""
  if workdir.exists() and not workdir.is_dir():
    raise FileExistsError(f"--workdir {workdir} is a file, not a directory.")
  if workdir.is_symlink() and not workdir.exists():  # Else "File exists" once all was built.
    raise FileNotFoundError(
        f"--workdir {workdir} is a symbolic link to {os.readlink(workdir)}, which does not exist "
        "(a scratch area cleaned up?). Create that folder, or remove the link.")
  owner = checkpointing.run_above(workdir)
  if owner is not None:  # A new run would nest its files among that run's steps (and be
    # deleted with a step that run rotates out).
    raise FileExistsError(
        f"--workdir {workdir} is (inside) the checkpoints folder of the run in {owner}; give "
        f"{owner} to resume that run, or another --workdir for a new one.")
  if _holds_hf_model(workdir):  # A run writes its own config.json over the model's.
    raise FileExistsError(
        f"--workdir {workdir} holds a Hugging Face model (its config.json has a model_type), "
        "which a run would break by writing its own config.json there. Use another --workdir; "
        f"to continue pretraining that model, import it first: python convert_checkpoint.py "
        f"--from-hf {workdir} --out NEW_WORKDIR, then --config.init_from=NEW_WORKDIR.")
  _refuse_if_held(workdir)  # Now, not after the input pipeline and the model are built.
  # A kill while an overwrite deleted the earlier run: finish the deletion.
  shutil.rmtree(workdir / f"{OVERWRITTEN}.deleting", ignore_errors=True)
  if (workdir / OVERWRITTEN).exists():
    raise FileExistsError(
        f"{workdir / OVERWRITTEN} holds the run that config.train.overwrite set aside for a new "
        "run, which ended (was killed) before training a step, or is still starting (another "
        f"train.py in this workdir). To keep the earlier run, move its entries back into "
        f"{workdir} (replacing the new run's); to discard it, delete {workdir / OVERWRITTEN}. "
        "Then run again.")
  # Only completed checkpoints count: a run killed during its first save left just a temporary
  # directory, which orbax removes, and starts afresh.
  has_run = checkpointing.has_finalized_checkpoint(workdir)
  if has_run and not config.train.resume and not config.train.overwrite:
    raise FileExistsError(
        f"{workdir} already holds a run (checkpoints in {checkpointing.checkpoint_dir(workdir)})"
        " and config.train.resume=False. Use another --workdir, resume (the default), or pass "
        "--config.train.overwrite=True to delete it and start over.")
  if has_run and config.train.resume and config.train.overwrite:
    # overwrite applies to resume=False only: resuming here would ignore what was asked (and
    # continue the old run, with the new settings, in the belief that it started over).
    raise ValueError(
        f"config.train.overwrite=True, but config.train.resume=True (the default): {workdir} "
        f"holds a run (checkpoints in {checkpointing.checkpoint_dir(workdir)}), which would be "
        "resumed, not deleted. Add --config.train.resume=False to delete it and start over, or "
        "leave out overwrite to resume it.")
  resume = has_run and config.train.resume
  if has_run and config.train.overwrite:
    _check_overwritable(workdir)
  if not resume and _holds_foreign_config(workdir):
    raise FileExistsError(
        f"--workdir {workdir} holds a config.json that is not a training run's (no 'model', "
        "'train' and 'masking' sections); a run would write its own over it. Move it away or "
        "use another --workdir.")
  if resume:
    compatibility.check_resume_settings(workdir, config)
  elif config.init_from:  # Used only by a fresh start (a resume has its own parameters).
    compatibility.check_architecture_early(
        checkpointing.latest_meta(config.init_from), config,
        f"config.init_from={config.init_from}", same_layout=False)
  _check_entry_kinds(workdir, resume)
  checkpoints = checkpointing.checkpoint_dir(workdir)
  checkpointing.check_path_usable(checkpoints, f"--workdir {workdir}")
  try:  # Now, not at the first save after hours of training; nothing made (a run refused
    # later leaves no empty folder behind): the checkpointer makes the directory. The workdir
    # too (the lock, config.json, tokenizer/): checkpoints/ may be a link to another disk.
    paths.check_writable_dir(workdir, "--workdir")
    paths.check_writable_dir(checkpoints, "Checkpoints directory")
  except PermissionError as e:
    raise PermissionError(f"{e} Fix its permissions or use another --workdir.") from None
  return resume, has_run and not config.train.resume


def _check_overwritable(workdir: pathlib.Path) -> None:
  """Refuses an overwrite of a run whose entry is a symbolic link or a mount point (checkpoints/
  on a larger disk): OverwrittenRun renames entries aside, which would move the link and leave
  the old checkpoints on that disk forever (or fail on the mount point, EBUSY)."""
  for name in RUN_NAMES:
    path = workdir / name
    if path.is_symlink() or os.path.ismount(path):
      kind = (f"a symbolic link to {os.path.realpath(path)}" if path.is_symlink()
              else "a mount point")
      raise FileExistsError(
          f"config.train.overwrite: {path} is {kind}, which the overwrite cannot set aside (it "
          f"keeps the earlier run until the new one has trained a step). Empty it yourself to "
          f"start over there (with config.train.overwrite left out), or use another --workdir.")


def _check_entry_kinds(workdir: pathlib.Path, resume: bool) -> None:
  """Refuses a workdir entry of the wrong kind (a file where the run writes a folder, or the
  reverse) before any work: later it was a traceback after the restore, or, for tokenizer/, a
  run that ended well without saving its tokenizer. A fresh start sets the old logs aside, so
  they only matter to a resume."""
  folders = {checkpointing.CHECKPOINT_DIR: True, "tokenizer": True, "config.json": False}
  if resume:
    folders.update({"metrics.jsonl": False, "tensorboard": True, "profile": True})
  for name, folder in folders.items():
    path = workdir / name
    if path.exists() and path.is_dir() != folder:
      raise FileExistsError(
          f"{path} is a {'file' if folder else 'directory'}; the run writes its "
          f"{name} {'folder' if folder else 'file'} there. Move it away or use another --workdir.")


_NO_FILE, _UNREADABLE = object(), object()


def _config_json(workdir: pathlib.Path):
  """The parsed config.json of `workdir`; _NO_FILE when there is none, _UNREADABLE when it is
  not JSON."""
  path = workdir / "config.json"
  if not path.is_file():
    return _NO_FILE
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return _UNREADABLE


def _holds_hf_model(workdir: pathlib.Path) -> bool:
  """Whether `workdir` is a Hugging Face model directory (an export, a download): its
  config.json has a model_type, which a run's config.json never has."""
  config = _config_json(workdir)
  return isinstance(config, dict) and "model_type" in config


def _holds_foreign_config(workdir: pathlib.Path) -> bool:
  """Whether config.json is a file and not a run's config (another tool's, or not JSON): a fresh
  start would overwrite it. (A folder of that name is refused by _check_entry_kinds.)"""
  config = _config_json(workdir)
  return config is not _NO_FILE and not (
      isinstance(config, dict) and {"model", "train", "masking"} <= set(config))


def set_aside_earlier_logs(workdir: pathlib.Path) -> None:
  """A fresh start in a workdir whose earlier run never finished a checkpoint: its logs are
  renamed (kept for a look at why it failed) rather than mixed with the new run's steps."""
  if jax.process_index() != 0:
    return
  found = [workdir / n for n in LOG_NAMES if (workdir / n).exists()]
  if not found:
    return
  k = 1
  while any((workdir / f"{p.name}.earlier-{k}").exists() for p in found):
    k += 1
  for path in found:
    path.rename(workdir / f"{path.name}.earlier-{k}")
  logging.warning("%s held logs of a run without a finished checkpoint; starting afresh, they "
                  "are kept as %s.", workdir, ", ".join(f"{p.name}.earlier-{k}" for p in found))


# The OverwrittenRun set aside and not yet deleted or put back: what put_back_pending() restores
# for a process that leaves at once, its `with` blocks skipped (os._exit when a peer failed).
_pending: list["OverwrittenRun"] = []


def put_back_pending() -> None:
  """Puts back an overwritten run still set aside; for exits that skip OverwrittenRun.__exit__."""
  for run in list(_pending):
    run.put_back_or_say()


class OverwrittenRun:
  """The run config.train.overwrite replaces, kept in WORKDIR/.overwritten until the new run has
  trained its first step, and put back if the new one fails before (running out of device memory
  in its first compiled step or step 0's evaluation deleted it for nothing). Renames only, so no
  disk space is needed; process 0 only (the others wait in main_process_first)."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = workdir
    self.aside = workdir / OVERWRITTEN
    # The entries moved aside, and those the earlier run lacked (the new run's own, if made):
    # what putting back replaces. An entry not reached (a rename failed before it) is untouched.
    self.moved, self.absent = [], []

  def set_aside(self) -> None:
    if jax.process_index() != 0:
      return
    self.aside.mkdir()
    _pending.append(self)  # From here: a rename that fails puts back those made.
    # With the logs an even earlier run left (set_aside_earlier_logs): they are the workdir's
    # history the overwrite replaces too (tensorboard --logdir showed their curves beside it).
    earlier = sorted(p.name for p in self.workdir.iterdir()
                     if p.name.startswith(tuple(f"{n}.earlier-" for n in LOG_NAMES)))
    for name in (*RUN_NAMES, *earlier):
      path = self.workdir / name
      if path.exists() or path.is_symlink():
        path.rename(self.aside / name)
        self.moved.append(name)
      else:
        self.absent.append(name)
    logging.warning("config.train.overwrite: the earlier run in %s is set aside in %s and "
                    "deleted once the new run has trained a step.", self.workdir, self.aside)

  def delete(self) -> None:
    """The new run trains: the earlier one goes."""
    if not self.pending:
      return
    self._settled()
    # Renamed first: a kill mid-deletion leaves no half run that could be mistaken for it.
    doomed = self.workdir / f"{OVERWRITTEN}.deleting"
    self.aside.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    logging.info("config.train.overwrite: deleted the earlier run in %s.", self.workdir)

  def put_back(self) -> None:
    """The new run failed before its first step: what it wrote goes, the earlier run returns."""
    if not self.pending:
      return
    self._settled()
    for name in self.moved + self.absent:
      path = self.workdir / name
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
      elif path.exists() or path.is_symlink():
        path.unlink()
      if name in self.moved:
        (self.aside / name).rename(path)
    self.aside.rmdir()
    logging.warning("The new run failed before its first step: the earlier run in %s, which "
                    "config.train.overwrite set aside, is put back as it was.", self.workdir)

  @property
  def pending(self) -> bool:
    """Set aside, neither deleted nor put back yet."""
    return self in _pending

  def _settled(self) -> None:
    _pending.remove(self)

  def put_back_or_say(self) -> None:
    try:
      self.put_back()
    except OSError as e:  # The run's own error, raised next, is the one to see first.
      logging.error("Putting back the earlier run that config.train.overwrite set aside in %s "
                    "failed (%s: %s); move its entries back into %s by hand.", self.aside,
                    type(e).__name__, e, self.workdir)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.delete()
      return
    self.put_back_or_say()


def _refuse_if_held(workdir: pathlib.Path) -> None:
  """FileExistsError when another run holds the workdir's lock now: found by taking the lock and
  releasing it at once (lock() itself is taken later, when the run is about to write there).
  Without a lock file there is no run to refuse, and none is made (nor the workdir)."""
  path = workdir / f".lock.process-{jax.process_index()}"
  try:
    f = open(path, encoding="utf-8")  # Read-only: a read-only workdir is named further on.
  except OSError:
    return
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Released when the file is closed.
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _held(workdir, path, f) from None


def check_unchanged(workdir: pathlib.Path, resume: bool, clear: bool) -> None:
  """Under the lock: FileExistsError when the workdir's checkpoints changed kind since prepare()
  decided how to start. A run that ended while this one started (the lock then free) left a
  checkpoint that this one, starting afresh, would have set its logs aside as a dead run's and
  saved its own steps among; one deleted meanwhile leaves nothing to resume."""
  has_run = checkpointing.has_finalized_checkpoint(workdir)
  if has_run != (resume or clear):
    now = ("holds a finished checkpoint" if has_run else
           "no longer holds the checkpoint this run was to resume")
    raise FileExistsError(
        f"--workdir {workdir} {now}: another run wrote or deleted there while this one started "
        "(a job submitted twice). Nothing was written; run the same command again to start from "
        "what the workdir holds now.")


def _held(workdir, path, f) -> FileExistsError:
  f.seek(0)
  holder = f.read().strip() or "holder unknown"
  return FileExistsError(
      f"--workdir {workdir} is in use by another run ({holder}; lock {path.name}). Wait for it "
      "to end or stop it, or use another --workdir.")


@contextlib.contextmanager
def lock(workdir: pathlib.Path):
  """Holds the workdir for this run: FileExistsError when another run holds it.

  Two runs in one workdir (a Slurm job submitted twice, a command started in a second terminal)
  would both train and save over each other's checkpoints, each reporting success. Each process
  takes an exclusive flock on WORKDIR/.lock.process-N (N its process index, so the processes of
  one run do not exclude each other on a shared file system); the kernel releases it when the
  process ends, however it ends, so no stale lock outlives a crash. Where the file system has no
  locks (some network mounts), the run goes on with a warning. The file stays (removing a lock
  file races with a process opening it) and holds who took it last.
  """
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / f".lock.process-{jax.process_index()}"
  with open(path, "a+", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _held(workdir, path, f) from None
      logging.warning("Cannot lock %s (%s): a second run started in this workdir would not be "
                      "refused.", path, e.strerror or e)
      locked = False
    if locked:
      f.seek(0)
      f.truncate()
      since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
      f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
      f.flush()
    yield  # Closing the file releases the lock.
