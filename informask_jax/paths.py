"""Where files go: the default cache, and checks on the output directories users name (--out,
--workdir), made before any slow work."""

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import tempfile
import threading


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/informask_jax, else ~/.cache/informask_jax (not expanded: callers do)."""
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "informask_jax")


def cache_dir(configured=None) -> str:
  """The cache directory every cache lives under: `configured` (config.data.cache_dir), or the
  default when it is empty, "~" expanded."""
  return os.path.expanduser(configured or default_cache_dir())


def meant_as_local(name: str) -> bool:
  """Whether a model or tokenizer name can only mean a local file or directory, never a hub id
  ("bert-base-uncased", "org/model"): absolute, "~", "." or ".." relative, more than one folder
  deep, ending in "/" or in .txt / .json, or "runs/x" where runs/ is a local directory. Such a
  name that does not exist is a typo to report at once: asked of the hub, it waits for the hub
  client's retries (a minute offline) and ends in a message about repo ids."""
  first = name.split("/", 1)[0]
  return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
          or name.endswith(("/", ".txt", ".json"))
          or ("/" in name and os.path.isdir(os.path.expanduser(first))))


# How a full disk, a quota or a read-only file system reads in the errors of libraries that do
# not raise it as an OSError: tokenizers (Rust) as "... (os error 28)", tensorstore as a
# ValueError, Beam as a RuntimeError holding the worker's traceback.
DISK_ERROR_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                    "(os error 28)", "(os error 122)", "(os error 30)")


class WriteError(OSError):
  """Output files could not be written (a full disk, a quota), raised with a message that names
  the output and says what was left as it was; scripts show it as one line."""


# The signals our scripts turn into an exception (KeyboardInterrupt, SystemExit: cli.py).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def scratch_dir(**mkdtemp_args):
  """A folder from tempfile.mkdtemp(**mkdtemp_args), removed on leaving the block, whatever
  stops it. Ctrl-C and SIGTERM are deferred while it is made: one that arrived between mkdtemp's
  return and the block that removes the folder would leave it (gigabytes for a model export).
  Deferred in Python, not masked: a masked signal sent to the process is taken by another of
  its threads (JAX's, torch's), whose handler flag the main thread acts on all the same."""
  pending = []
  deferred = {}
  if threading.current_thread() is threading.main_thread():  # Handlers are the main thread's.
    deferred = {signum: signal.signal(signum, lambda signum, frame: pending.append(signum))
                for signum in _STOP_SIGNALS}
  path = None
  try:
    path = tempfile.mkdtemp(**mkdtemp_args)
  finally:
    for signum, handler in deferred.items():
      signal.signal(signum, handler)
    if path is None:  # mkdtemp failed: nothing to remove; the signals are handled now.
      for signum in pending:
        signal.raise_signal(signum)
  try:
    for signum in pending:  # Handled as it would have been, inside the block that removes.
      signal.raise_signal(signum)
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)


# Prefix of the folder publish_dir writes in before its rename (a killed run leaves it behind).
PUBLISH_STAGING_PREFIX = ".tmp-"


def warn_leftover_folders(folder, prefixes, left_by, log) -> None:
  """Names, with their size, the folders of `folder` whose names start with one of `prefixes`:
  scratch that a killed run (`left_by`) left there, gigabytes for a large corpus. Not deleted:
  another run sharing the cache may be writing one now."""
  left = [e.path for e in os.scandir(folder)
          if e.is_dir(follow_symlinks=False) and e.name.startswith(tuple(prefixes))]
  if left:
    size = sum(_size_of(d) for d in left)
    log.warning("%s holds %d folder(s) left by %s (%.2f GB): %s. Delete them unless another run "
                "is writing into this folder now.", folder, len(left), left_by, size / 1e9,
                ", ".join(sorted(os.path.basename(d) for d in left)))


def _size_of(folder) -> int:
  """The bytes of the files under `folder`. A file gone meanwhile counts 0: the folder may be
  another run's scratch, removed while it is measured (that ended this run, FileNotFoundError)."""
  size = 0
  for root, _, files in os.walk(folder):
    for f in files:
      with contextlib.suppress(FileNotFoundError):
        size += os.path.getsize(os.path.join(root, f))
  return size


@contextlib.contextmanager
def one_builder(cache_dir, path, log):
  """Holds the cache entry `path` (under `cache_dir`) for one builder at a time: a flock on a
  file of `cache_dir`/.locks, which the kernel releases however the process ends (not beside the
  entry: the entries' folders hold entries only). Runs started together (two strategies on one
  corpus) each trained the vocabulary and tokenized the corpus, hours at scale and a copy each on
  disk until the renames; the second now waits here, then loads the first's entry (the caller
  looks again). A cache that cannot be locked goes on unlocked, as before."""
  locks = os.path.join(cache_dir, ".locks")
  name = os.path.relpath(path, cache_dir).replace(os.sep, "-")
  try:
    _make_lock_folder(locks, cache_dir)
    f = _open_lock(os.path.join(locks, f"{name}.lock"))
  except OSError:  # A read-only cache: the build fails on its own, as it did unlocked.
    f = None
  if f is None:  # Not inside the except: the build's own error would carry this one.
    yield
    return
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        log.warning("Cannot lock %s (%s): runs building %s at the same time may build it twice.",
                    f.name, e.strerror or e, path)
      else:
        log.info("Waiting for another process building %s.", path)
        fcntl.flock(f, fcntl.LOCK_EX)
    yield  # Closing the file releases the lock.


def load_or_build(cache_dir, path, load, build, log):
  """load() of the cache entry `path`, or, where it is missing or damaged (load() gives None),
  build() under one_builder: looked at again once the lock is held, as the run waited for may
  have built it."""
  found = load()
  if found is not None:
    return found
  with one_builder(cache_dir, path, log):
    found = load()
    if found is not None:
      return found
    with naming_full_disk("the cache entry", path):
      return build()


@contextlib.contextmanager
def naming_full_disk(what: str, path):
  """A full disk, a quota or a read-only file system met in the block (cli.disk_failure) ->
  WriteError saying that writing `what` at `path` failed. The libraries that write the caches
  name no file ("[Errno 28] No space left on device", tokenizers' "(os error 28)"), and the
  cache (config.data.cache_dir, ~/.cache by default) is often on another disk than the workdir:
  "free disk space" alone sent users to the wrong one."""
  from informask_jax import cli  # Lazily: cli imports this module.

  try:
    yield
  except WriteError:
    raise
  except Exception as e:
    disk = cli.disk_failure(e)
    if disk is None:
      raise
    raise WriteError(f"Writing {what} {path} failed ({disk}). {_write_advice(e, path)}, or set "
                     "--config.data.cache_dir to a folder on another disk, and run the same "
                     "command again.") from e


def _make_lock_folder(locks, cache_dir) -> None:
  """`locks`, as open to writers as the cache it serves: made under a umask of 022 (0755) in a
  cache a group shares, it refused the other users' lock files, and their builds went on
  unlocked and unwarned, in the race the locks are for."""
  os.makedirs(cache_dir, exist_ok=True)
  try:
    os.mkdir(locks)
  except FileExistsError:
    return
  os.chmod(locks, stat.S_IMODE(os.stat(cache_dir).st_mode))


def _open_lock(path):
  """A lock file, opened to be locked: read-only where it is another user's (made under a umask
  of 022), as a flock needs no write access."""
  try:
    return open(path, "a+")  # noqa: SIM115 - the caller closes it, after its yield
  except PermissionError:
    return open(path)  # noqa: SIM115


def _umask() -> int:
  mask = os.umask(0o022)  # Read by setting it: there is no other portable way.
  os.umask(mask)
  return mask


def publish_dir(path, write) -> None:
  """Calls write(tmp) on a fresh directory beside `path`, then renames it to `path`, so that an
  interrupted run never leaves half a cache entry. For content-keyed caches: if another process
  published `path` first (the rename fails), its identical copy is kept and ours removed."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with scratch_dir(dir=os.path.dirname(path), prefix=PUBLISH_STAGING_PREFIX) as tmp:
    write(tmp)
    # mkdtemp's folder is private (0700): given the mode a folder made under the umask has, so
    # that another user sharing the cache can read the entry, as they can its files.
    os.chmod(tmp, 0o777 & ~_umask())
    # Renamed, there is nothing left to remove; if another process published the same key
    # first (the rename fails), ours is removed on leaving.
    with contextlib.suppress(OSError):
      os.replace(tmp, path)


def atomic_write(path, write) -> None:
  """Calls write(tmp) on a temporary name beside `path`, then renames it to `path`: a failed or
  interrupted write (a full disk) leaves the earlier file whole, and no temporary one. A link at
  `path` is replaced, the file it names left as it was (a cache's link to another run's table is
  not written through); pass os.path.realpath(path) to write the linked file instead."""
  path = os.fspath(path)
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.unlink(tmp)


def replace_files(folder, write, what: str) -> None:
  """Calls write(tmp) on a scratch folder beside `folder`, then moves each file it made into
  `folder`, one atomic rename each: a write that fails (a full disk) or is interrupted leaves
  every file of `folder` whole, the old version or the new. WriteError names `what` failed."""
  folder = os.path.abspath(folder)
  try:
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with scratch_dir(dir=os.path.dirname(folder), prefix=f".{os.path.basename(folder)}.") as tmp:
      write(tmp)
      os.makedirs(folder, exist_ok=True)
      for name in sorted(os.listdir(tmp)):
        os.replace(os.path.join(tmp, name), os.path.join(folder, name))
  except Exception as e:
    # A Rust writer's I/O error (tokenizers' save) is a plain Exception: "... (os error 28)".
    if not isinstance(e, OSError) and "(os error " not in str(e):
      raise
    raise WriteError(f"Writing {what} to {folder} failed ({type(e).__name__}: {e}); the files "
                     f"there were left as they were. {_write_advice(e, folder)} and run the same "
                     "command again.") from e


def _write_advice(error, folder) -> str:
  """What to do about a failed write, by its errno (a Rust writer's is in its text: "(os error
  13)"): "free disk space" was the advice for a read-only folder too."""
  code = getattr(error, "errno", None)
  if code is None:
    found = re.search(r"\(os error (\d+)\)", str(error))
    code = found and int(found.group(1))
  if code in (errno.EACCES, errno.EPERM, errno.EROFS):
    return f"Make {os.path.dirname(folder)} writable"
  if code in (errno.ENOSPC, errno.EDQUOT):
    return "Free disk space"
  return "Fix the cause"


def check_writable_dir(path, what: str, *, sibling: bool = False) -> None:
  """Refuses `path` unless it is, or can be made, a directory we can write.

  Checked by creating (and removing) an entry, since os.access says yes to root everywhere,
  /proc included; missing folders are fine, as the writer makes them, so then the nearest
  existing folder above is probed. `sibling`: the writer also stages files next to `path`, so
  its parent is probed too. The errors name `what` (a flag or a role) and `path`.
  """
  target = os.path.abspath(os.fspath(path))  # As the writer will use it: callers expand "~".
  probes = []
  if os.path.exists(target):
    if not os.path.isdir(target):
      raise FileExistsError(f"{what} {path} exists and is not a directory.")
    probes.append(target)
  if sibling or not probes:
    ancestor = os.path.dirname(target)
    while not os.path.exists(ancestor):
      ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
      raise FileExistsError(f"{what} {path} cannot be created: {ancestor} is a file, not a "
                            "directory.")
    probes.append(ancestor)
  for directory in probes:
    try:
      os.rmdir(tempfile.mkdtemp(prefix=".write-check.", dir=directory))
    except OSError as e:
      raise PermissionError(f"{what} {path} cannot be written: creating a directory in "
                            f"{directory} fails ({e.strerror or type(e).__name__}).") from None
