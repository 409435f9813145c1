"""`train_and_evaluate(config, workdir)`: the whole run, as train.py and the tests call it.

Sections follow big_vision's train.py: config checks, mesh, input, masking tables, model and
optimizer, sharded state (or resume), the compiled steps, then the loop with logging, evaluation,
checkpoints and pre-emption.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import threading
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from informask_jax import checkpointing, data, distributed, hf_mapping, masking, optim, paths, stats
from informask_jax import metrics as metrics_lib
from informask_jax import model as model_lib
from informask_jax import sharding as sharding_lib
from informask_jax import trainer as trainer_lib

# Masking strategies and the corpus statistics each one needs.
_STATS_NEEDED = {"informask": ("counts", "pmi", "rates"), "informask_online": ("counts", "pmi"),
                 "pmi_span": ("counts", "ngrams")}


# What a run logs into its workdir (metrics.MetricWriter), besides checkpoints and config.
_LOG_NAMES = ("metrics.jsonl", "tensorboard", "profile")


class _ClearBar(logging.Filter):
  """Clears the progress bar before a log record prints: the line then starts at column 0
  instead of after the bar, and the bar redraws itself below it at the next step."""

  def __init__(self, bar):
    super().__init__()
    self.bar = bar

  def filter(self, record):
    self.bar.clear()
    return True


@contextlib.contextmanager
def log_lines_clear(bar):
  """While the bar shows: every handler of the root logger (absl's, under train.py) clears it
  first. Not tqdm's logging_redirect_tqdm, which adds its own handler beside absl's, which is no
  StreamHandler itself: each line would print twice."""
  handlers, clear = list(logging.getLogger().handlers), _ClearBar(bar)
  for handler in handlers:
    handler.addFilter(clear)
  try:
    yield
  finally:
    for handler in handlers:
      handler.removeFilter(clear)


class TrainingStopped(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps in a row); see the message."""


def check_config(config) -> None:
  """Errors that need no data or devices, raised before anything heavy runs."""
  data.check_config(config)
  t, m = config.train, config.model
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "stop_sync_every", "max_consecutive_skips"):
    if t[key] <= 0:
      raise ValueError(f"config.train.{key}={t[key]} must be positive.")
  if t.profile_start_step < -1 or t.profile_steps < 1:
    raise ValueError(f"config.train.profile_start_step={t.profile_start_step} must be >= 0 (or -1: "
                     f"no trace) and config.train.profile_steps={t.profile_steps} >= 1.")
  if isinstance(t.seed, bool) or not isinstance(t.seed, int) or not 0 <= t.seed < 2**31:
    raise ValueError(f"config.train.seed={t.seed!r} must be an integer in [0, 2**31).")
  if t.eval_batches == 0 or t.eval_batches < -1:
    # No batch would give a loss of 0, which would also win the best-checkpoint selection.
    raise ValueError(f"config.train.eval_batches={t.eval_batches} must be >= 1, or -1 for the "
                     "whole validation split.")
  optim.check_config(config.optim)
  # The model's and the masking's own validation, on stand-in vocabulary ids, so that a typo
  # fails now rather than after the corpus is tokenized.
  model_lib.MLMConfig.from_config(m, vocab_size=1000, pad_id=0)
  try:
    masking.check_config(config.masking)
  except ValueError as e:
    raise ValueError(f"config.masking: {e}") from None
  name = config.masking.name
  if name in _STATS_NEEDED and not (name == "informask" and config.masking.rates_path):
    stats.build.check_config(config)  # The statistics will be built: their settings too.
  streaming = [i for i, src in enumerate(config.data.sources) if src.get("streaming")]
  if name == "informask" and not config.masking.rates_path and streaming:
    # The rate stage samples packed rows, which a stream never holds (PMI and n-grams may come
    # from a Beam build in the cache, so the other strategies are checked once it is known).
    raise ValueError(stats.build.STREAMING.format(
        where=f"config.data.sources[{streaming[0]}].streaming=True"))
  budget = round(config.masking.mask_prob * (config.data.seq_len - 2))
  if config.masking.budget == "exact" and m.max_predictions < budget:
    raise ValueError(
        f"config.model.max_predictions={m.max_predictions} is below the exact masking budget "
        f"round(mask_prob * (seq_len - 2)) = {budget}; targets beyond it would be dropped. Set "
        f"--config.model.max_predictions={budget} (or more), or lower masking.mask_prob.")
  if config.masking.budget == "bernoulli":
    n, p = config.data.seq_len - 2, config.masking.mask_prob
    enough = int(np.ceil(n * p + 3 * np.sqrt(n * p * (1 - p))))
    if m.max_predictions < enough:
      logging.warning(
          "config.model.max_predictions=%d with the Bernoulli budget: sequences with more than "
          "that many targets (mean %.1f) lose the rest (logged as dropped_targets); "
          "--config.model.max_predictions=%d covers 3 standard deviations.", m.max_predictions,
          n * p, enough)
  # Checks the loaders make again later, made here too so they fail before the corpus is read.
  if config.masking.rates_path and name == "informask":  # All but the size (needs the vocabulary).
    masking.informask.check_rates_file(config.masking.rates_path,
                                       masking.missing_rate_of(config.masking))
  elif config.masking.rates_path:  # Unused by this strategy, but a wrong path is still named.
    masking.informask.rates_file(config.masking.rates_path)
  if config.init_from:
    try:
      checkpointing.require_checkpoint_dir(config.init_from)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.init_from: {e}") from None
  if m.attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(
        f"config.model.attention='cudnn' needs NVIDIA GPUs, but JAX's backend here is "
        f"{jax.default_backend()!r}; use --config.model.attention=xla.")
  if m.compute_dtype == "float16" and jax.default_backend() == "cpu":
    # Else the first compilation fails (after the corpus and its statistics are built) with
    # XLA's "precision 'F16_F16_F32' is not supported by dot_general on CPU", naming no key.
    raise ValueError("config.model.compute_dtype='float16': XLA:CPU has no float16 matmuls "
                     "(with float32 accumulation); on a CPU use --config.model.compute_dtype="
                     "bfloat16 or float32.")


def _log_topology(config, mesh) -> None:
  logging.info("Process %d of %d; %d local / %d global devices (%s); mesh %s.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].device_kind, dict(mesh.shape))
  # Through plain types: a ConfigDict inside a list (a data source) prints as a Python object.
  logging.info("Config:\n%s", ml_collections.ConfigDict(_config_json(config)))
  if (jax.default_backend() == "cpu" and sys.platform == "linux"
      and "hugetlb" not in os.environ.get("GLIBC_TUNABLES", "")):
    # XLA:CPU's per-step buffers fault in 4 KiB at a time (bench/RESULTS.md, "Page faults").
    logging.info("On a CPU, GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment of this "
                 "command (glibc >= 2.35) saves most of the page faults of every step; see "
                 "bench/RESULTS.md, 'Page faults'.")


def _prepare_workdir(workdir: pathlib.Path, config) -> tuple[bool, bool]:
  """(resume, clear): whether to resume the workdir's latest checkpoint, and whether the old run
  is to be deleted (config.train.overwrite) once everything else has been checked and built.
  Refuses to clobber a run by accident."""
  if workdir.exists() and not workdir.is_dir():
    raise FileExistsError(f"--workdir {workdir} is a file, not a directory.")
  if _holds_hf_model(workdir):  # A run writes its own config.json over the model's.
    raise FileExistsError(
        f"--workdir {workdir} holds a Hugging Face model (its config.json has a model_type), "
        "which a run would break by writing its own config.json there. Use another --workdir; "
        f"to continue pretraining that model, import it first: python convert_checkpoint.py "
        f"--from-hf {workdir} --out NEW_WORKDIR, then --config.init_from=NEW_WORKDIR.")
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
  if resume:
    _check_resume_settings(workdir, config)
  elif config.init_from:  # Used only by a fresh start (a resume has its own parameters).
    _check_architecture_early(checkpointing.latest_meta(config.init_from), config,
                              f"config.init_from={config.init_from}", same_layout=False)
  checkpoints = checkpointing.checkpoint_dir(workdir)
  if checkpoints.exists() and not checkpoints.is_dir():
    raise FileExistsError(f"{checkpoints} is a file; the run writes its checkpoints there. Move "
                          "it away or use another --workdir.")
  try:  # Now, not at the first save after hours of training; nothing made (a run refused
    # later leaves no empty folder behind): the checkpointer makes the directory.
    paths.check_writable_dir(checkpoints, "Checkpoints directory")
  except PermissionError as e:
    raise PermissionError(f"{e} Fix its permissions or use another --workdir.") from None
  return resume, has_run and not config.train.resume


# Settings that change the corpus a vocabulary is trained on.
_CORPUS_KEYS = ("config.data.sources", "config.data.max_documents",
                "config.data.validation_fraction")

# Settings that fix the order of the training batches (the checkpoint's iterator position
# means nothing under others). The data sources are not here: a corpus moved to another path
# is the same corpus, and the iterator's own check (the number of rows) still runs.
_DATA_ORDER_KEYS = (("train", "batch_size"), ("train", "seed"), ("data", "seq_len"),
                    ("data", "packing"), ("data", "validation_fraction"))


def _holds_hf_model(workdir: pathlib.Path) -> bool:
  """Whether `workdir` is a Hugging Face model directory (an export, a download): its
  config.json has a model_type, which a run's config.json never has."""
  try:
    config = json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and "model_type" in config


def _check_resume_settings(workdir: pathlib.Path, config) -> None:
  """Refuses, before the vocabulary, the corpus and its statistics are built (hours on a large
  corpus), a resume whose tokenizer or data-order settings differ from those of the latest
  checkpoint: the embedding rows are per token id, and the saved iterator position is per batch
  order. (With a stream the position counts packed rows too, so seq_len and packing matter.)"""
  meta = checkpointing.latest_meta(workdir)
  if (meta or {}).get("source") == "import":  # Before the model check: that is not the problem.
    raise ValueError(
        f"{workdir} holds parameters imported by convert_checkpoint.py (no optimizer state or "
        f"data position to resume): train from them in a new --workdir with "
        f"--config.init_from={workdir}.")
  _check_architecture_early(meta, config, f"the latest checkpoint in {workdir}",
                            same_layout=True)
  saved = (meta or {}).get("config")
  if not isinstance(saved, dict):  # Unreadable: the resume itself names the damaged step.
    return
  current = _config_json(config)
  changed = _config_changes({"tokenizer": saved.get("tokenizer") or {}},
                            {"tokenizer": current.get("tokenizer", {})})
  if changed:
    raise ValueError(
        f"Cannot resume the run in {workdir}: its tokenizer settings changed ("
        f"{'; '.join(changed)}), and its checkpoints' embeddings belong to the old vocabulary. "
        f"Resume with the run's settings (the latest checkpoint's; its config.json), or start a "
        f"new run in another --workdir (with --config.init_from={workdir} only if the "
        f"vocabulary is the same).")
  changed = [f"config.{section}.{key}: {saved[section][key]!r} -> {current[section][key]!r}"
             for section, key in _DATA_ORDER_KEYS
             if isinstance(saved.get(section), dict) and key in saved[section]
             and saved[section][key] != current[section][key]]
  if changed:
    raise ValueError(
        f"Cannot resume the run in {workdir}: {'; '.join(changed)}. The checkpoint's data "
        f"position belongs to the run's batch order, which these settings fix. Resume with the "
        f"run's settings (the latest checkpoint's; its config.json), or keep its parameters and "
        f"start a new run: another --workdir with --config.init_from={workdir}.")


def _set_aside_earlier_logs(workdir: pathlib.Path) -> None:
  """A fresh start in a workdir whose earlier run never finished a checkpoint: its logs are
  renamed (kept for a look at why it failed) rather than mixed with the new run's steps."""
  if jax.process_index() != 0:
    return
  found = [workdir / n for n in _LOG_NAMES if (workdir / n).exists()]
  if not found:
    return
  k = 1
  while any((workdir / f"{p.name}.earlier-{k}").exists() for p in found):
    k += 1
  for path in found:
    path.rename(workdir / f"{path.name}.earlier-{k}")
  logging.warning("%s held logs of a run without a finished checkpoint; starting afresh, they "
                  "are kept as %s.", workdir, ", ".join(f"{p.name}.earlier-{k}" for p in found))


def _clear_workdir(workdir: pathlib.Path) -> None:
  """Deletes the old run's checkpoints and logs (config.train.overwrite); process 0 only."""
  if jax.process_index() != 0:
    return
  shutil.rmtree(checkpointing.checkpoint_dir(workdir), ignore_errors=True)
  for name in _LOG_NAMES:
    path = workdir / name
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  logging.warning("config.train.overwrite: deleted the earlier run in %s.", workdir)


def build_masker(config, pipeline):
  """The configured strategy, with the corpus statistics it needs (built when missing)."""
  name = config.masking.name
  tables = {}
  if name in _STATS_NEEDED and not (name == "informask" and config.masking.rates_path):
    path = stats.ensure_artifacts(config, pipeline, need=_STATS_NEEDED[name])
    art = stats.load_artifacts(path, tokenizer_fingerprint=pipeline.tokenizer_fingerprint,
                               vocab_size=pipeline.vocab_size)
    tables = {"informask": {"rates": art.rates}, "informask_online": {"pmi": art.pmi},
              "pmi_span": {"ngrams": art.ngrams, "bigrams": art.bigrams}}[name]
    logging.info("Masking tables for %s from %s.", name, path)
  elif name == "informask":
    stats.check_table_tokenizer(config.masking.rates_path, pipeline.tokenizer_fingerprint,
                                "masking.rates_path")
    tables = {"rates": config.masking.rates_path}
  ids = pipeline.special_ids
  return masking.masker_from_config(
      config.masking, vocab_size=pipeline.vocab_size, mask_id=ids.mask,
      special_ids=(ids.pad, ids.unk, ids.cls, ids.sep, ids.mask),
      continuation=pipeline.continuation, **tables)


class _StopSignal:
  """SIGTERM / SIGINT set a flag; the loop finishes its step, saves and exits cleanly."""

  def __init__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if name == "SIGINT" and self.received == "SIGINT":
      # A second Ctrl-C: the user will not wait for the step (a hung one, a long evaluation).
      # The checkpoints already written are complete; only this step's is given up.
      self.restore()  # A third one is Python's own KeyboardInterrupt, wherever it lands.
      raise KeyboardInterrupt
    if self.received is None:
      logging.warning("Received %s: stopping after this step, which is saved.%s", name,
                      " Ctrl-C again stops at once, without saving it." if name == "SIGINT"
                      else "")
    self.received = name

  def stop_now(self, step: int, sync_every: int) -> str | None:
    """Why to stop after `step`, or None; with several processes, the same answer on each.

    A signal may reach one process only, or the processes at different steps; saving is a
    collective, so they agree (an all-gather of the flags) every `sync_every` steps.
    """
    if jax.process_count() == 1:
      return self.received
    if step % sync_every:
      return None
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if not np.any(flags):
      return None
    if self.received is None:
      self.received = "a signal to another process"
    return self.received

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Profiler:
  """A jax.profiler trace of the steps after `start` (config.train.profile_*) into `directory`."""

  def __init__(self, directory: pathlib.Path, start: int, count: int):
    self.directory, self.start, self.end, self.active = directory, start, start + count, False

  def before_step(self, step: int) -> None:
    if step == self.start and not self.active:
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after_step(self, step: int, state) -> None:
    if self.active and step >= self.end:
      jax.block_until_ready(state)  # Dispatch is asynchronous: the traced steps must finish.
      self.stop()
      logging.info("Profiled steps %d-%d into %s (TensorBoard's profile plugin or "
                   "ui.perfetto.dev).", self.start + 1, step, self.directory)

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()


def evaluate(eval_step, params, pipeline, config, mesh) -> dict:
  """Mean masked-token loss over the first eval_batches validation batches, fixed masks."""
  batch_sharding = sharding_lib.batch_sharding(mesh)
  # The same masks at every evaluation (so evaluations compare), other masks for every batch
  # (a key shared by the batches would mask the same positions of every batch's row i).
  rng = jax.random.key(config.train.seed + 1)
  sums = {"loss_sum": 0.0, "correct_sum": 0.0, "num_targets": 0.0}
  for index, local in enumerate(data.eval_batches(
      pipeline.validation, config.train.batch_size, config.train.eval_batches,
      pad_id=pipeline.special_ids.pad)):
    out = eval_step(params, data.make_global_batch(local, batch_sharding),
                    jax.random.fold_in(rng, index))
    for key, value in jax.device_get(out).items():
      sums[key] += float(value)
  if sums["num_targets"] == 0:  # A loss of 0 would be logged, and win the best checkpoint.
    raise ValueError("The evaluation had no masked tokens to predict: the validation split is "
                     "too small (raise config.data.validation_fraction).")
  loss = sums["loss_sum"] / sums["num_targets"]
  return {"eval_loss": loss, "eval_perplexity": float(min(jax.numpy.exp(loss), 1e30)),
          "eval_accuracy": sums["correct_sum"] / sums["num_targets"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics and evaluation."""
  # --- Config and workdir ----------------------------------------------------------------
  check_config(config)
  if not str(workdir).strip():
    raise ValueError("--workdir is empty; give the directory for the run's checkpoints and logs.")
  if "://" in str(workdir):
    raise ValueError(f"--workdir {workdir}: only local or mounted paths are supported (mount a "
                     "bucket with gcsfuse or similar to write there).")
  workdir = pathlib.Path(workdir).expanduser()
  resume, clear = _prepare_workdir(workdir, config)
  is_main = jax.process_index() == 0

  # --- Mesh --------------------------------------------------------------------------------
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.logical_rules(config.mesh)
  sharding_lib.check_batch_divisible(config.train.batch_size, mesh, config.optim.grad_accum_steps)
  _log_topology(config, mesh)

  # --- Input and masking -------------------------------------------------------------------
  # Process 0 builds missing caches; the others wait, then read them (on a shared file system).
  pipeline = distributed.main_process_first(
      "input pipeline", lambda: data.build_input_pipeline(config))
  masker = distributed.main_process_first(
      "corpus statistics", lambda: build_masker(config, pipeline))
  # --- Model and optimizer -----------------------------------------------------------------
  mlm_config = model_lib.MLMConfig.from_config(
      config.model, vocab_size=pipeline.vocab_size, pad_id=pipeline.special_ids.pad)
  if config.data.seq_len > mlm_config.max_seq_len:  # RoBERTa: depends on the tokenizer's pad id.
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the "
                     f"{mlm_config.max_seq_len} positions of config.model.max_positions="
                     f"{mlm_config.max_positions} "
                     f"(RoBERTa positions start after the padding id {mlm_config.pad_id}).")
  model = model_lib.BertMLM(mlm_config)
  tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  init_params = None
  if config.init_from and not resume:
    try:
      init_params, saved_cfg, _ = checkpointing.restore_params(config.init_from)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.init_from: {e}") from None
    # Unrolled or scanned layers are a layout, not an architecture: convert to this run's.
    init_params = hf_mapping.convert_layout(init_params, mlm_config.scan_layers)
    saved_cfg = dataclasses.replace(saved_cfg, scan_layers=mlm_config.scan_layers)
    _check_architecture(saved_cfg, mlm_config, f"config.init_from={config.init_from}")
    logging.info("Initialised parameters from %s.", config.init_from)
  state, state_shardings = trainer_lib.init_train_state(
      model, tx, config.train.seed, config.data.seq_len, mesh, rules, params=init_params)

  # --- Resume ------------------------------------------------------------------------------
  # What is opened from here on is closed on every exit, errors included (orbax's threads left
  # open print tracebacks at exit, after the error that matters).
  train_iter = pipeline.train_iterator(config.train.batch_size, seed=config.train.seed)
  with contextlib.ExitStack() as cleanup:
    if clear:  # Everything above checked and built: only now is the old run deleted.
      distributed.main_process_first("clear workdir", lambda: _clear_workdir(workdir))
    elif not resume:
      distributed.main_process_first("earlier logs", lambda: _set_aside_earlier_logs(workdir))
    checkpointer = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    cleanup.push(functools.partial(_close_checkpointer, checkpointer))
    config_json = _config_json(config)
    if resume:
      step = checkpointer.latest_step()
      saved_meta = checkpointer.read_meta(step)  # An import was refused in _prepare_workdir.
      _check_architecture(model_lib.MLMConfig(**saved_meta["mlm_config"]), mlm_config,
                          f"the checkpoint at step {step} in {workdir}")
      changed = _config_changes(saved_meta.get("config") or {}, config_json)
      saved_tokenizer = saved_meta.get("tokenizer_fingerprint")
      if saved_tokenizer not in (None, pipeline.tokenizer_fingerprint):
        if not config.tokenizer.name_or_path:  # Trained here: the vocabulary follows the corpus.
          corpus_changes = [c for c in changed if c.startswith(_CORPUS_KEYS)]
          why = ("the vocabulary is trained on the corpus (config.tokenizer.name_or_path=''), "
                 "and this run's corpus (or the library that trains it) differs" + (
                     f" ({'; '.join(corpus_changes)})" if corpus_changes else "") +
                 ". Resume with the run's data settings (its config.json)")
        else:
          why = (f"though the settings match, the tokenizer of config.tokenizer.name_or_path="
                 f"{config.tokenizer.name_or_path!r} changed: the vocabulary file was edited? "
                 "Restore it")
        raise ValueError(
            f"Cannot resume the run in {workdir} (step {step}): this run's tokenizer is not the "
            f"one the checkpoint was trained with: {why}, or start a new run in another "
            f"--workdir.")
      if changed:
        logging.warning("Resuming with a config that differs from the checkpoint's:\n  %s",
                        "\n  ".join(changed))
      abstract = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
      del state  # Free the fresh state before the restored one arrives.
      state, data_state, _ = checkpointer.restore(step, abstract)
      try:
        train_iter.restore(data_state)
      except data.IteratorStateError as e:
        raise checkpointer.unreadable(step, e) from e
      except data.DataSettingsChanged as e:
        raise ValueError(
            f"Cannot resume the run in {workdir} (step {step}): {e} Resume with the run's "
            f"settings (its config.json), or keep its parameters and start a new run: another "
            f"--workdir with --config.init_from={workdir}.") from None
      logging.info("Resumed from step %d in %s.", step, workdir)
      _warn_schedule_change(saved_meta, config, step)
      if step >= config.train.num_steps:
        logging.warning("The checkpoint is at step %d, config.train.num_steps=%d: nothing left to "
                        "train; raise num_steps to continue.", step, config.train.num_steps)
    # Written once the run is known to fit the workdir (a refused resume must not replace them).
    if is_main:
      pipeline.tokenizer.save_pretrained(str(workdir / "tokenizer"))
      checkpointing.write_json(workdir / "config.json", config_json)
    meta = {"mlm_config": checkpointing.mlm_config_to_dict(mlm_config), "config": config_json,
            "tokenizer_fingerprint": pipeline.tokenizer_fingerprint}

    # --- Compiled steps ----------------------------------------------------------------------
    step_config = trainer_lib.StepConfig(config.model.max_predictions,
                                         config.optim.grad_accum_steps)
    train_step = trainer_lib.jit_train_step(
        trainer_lib.make_train_step(model, tx, schedule, step_config,
                                    optim.make_apply_update(config.optim, schedule)),
        state_shardings, mesh, masker)
    eval_step = trainer_lib.jit_eval_step(
        trainer_lib.make_eval_step(model, config.model.max_predictions,
                                   config.optim.grad_accum_steps), state_shardings, mesh,
        masker)
    flops_per_step = config.train.batch_size * model_lib.train_flops_per_sequence(
        mlm_config, config.data.seq_len, config.model.max_predictions)

    # --- Loop --------------------------------------------------------------------------------
    writer = cleanup.enter_context(contextlib.closing(metrics_lib.MetricWriter(
        workdir, enabled=is_main, resumed_at=int(jax.device_get(state.step)) if resume else None)))
    stop = _StopSignal()
    cleanup.callback(stop.restore)
    # A folder per process: jax.profiler names its files by host and second, so processes
    # sharing a host (one per GPU) would overwrite one another's trace.
    profiler = _Profiler(workdir / "profile" / f"process_{jax.process_index()}",
                         config.train.profile_start_step, config.train.profile_steps)
    cleanup.callback(profiler.stop)  # A run stopped (or failed) mid-trace still writes it.
    batches = data.prefetch(train_iter, sharding_lib.batch_sharding(mesh), config.data.prefetch)
    t = config.train
    step = int(jax.device_get(state.step))
    if t.profile_start_step >= 0 and not step <= t.profile_start_step < t.num_steps:
      logging.warning("config.train.profile_start_step=%d is outside this run's steps %d-%d: "
                      "no profile.", t.profile_start_step, step, t.num_steps - 1)
    pending, last_log, last_eval = [], {}, {}
    save_due = False  # A refused save (skipped steps) is retried at every step until one is made.
    stopped_by = None  # The signal that ended the run before num_steps.
    previous = None  # The previous step's metrics (pending is emptied at every log).
    tokens_per_step = t.batch_size * config.data.seq_len
    # A progress bar on a terminal; elsewhere (a Slurm log, a pipe) a log line per log_every
    # steps instead, since tqdm's redraw of every step would fill the file.
    bar = is_main and sys.stderr.isatty()
    progress = cleanup.enter_context(tqdm.tqdm(
        total=t.num_steps, initial=step, disable=not bar, desc="train", dynamic_ncols=True))
    if bar:
      cleanup.enter_context(log_lines_clear(progress))
    # tokens/s and MFU count training only: the first step of the process (compilation) and the
    # time of evaluations and checkpoints are left out of the intervals.
    interval_start, interval_steps, first_step = time.time(), 0, True
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      if step == 0:  # The untrained model's loss: the baseline every later eval compares with.
        last_eval = evaluate(eval_step, state.params, pipeline, config, mesh)
        writer.write(0, last_eval)
        # Logged like the later evaluations: the log (a Slurm file) then shows where the loss
        # started, as metrics.jsonl does.
        logging.info("Step 0: eval loss %.4f, perplexity %.2f.", last_eval["eval_loss"],
                     last_eval["eval_perplexity"])
      while step < t.num_steps:
        profiler.before_step(step)
        state, step_metrics = train_step(state, next(batches))
        # Check the previous step's skip counter: already computed, so no pipeline stall.
        if previous is not None and int(previous["consecutive_skips"]) >= t.max_consecutive_skips:
          latest = checkpointer.latest_step()
          raise TrainingStopped(
              f"{t.max_consecutive_skips} consecutive steps up to step {step} had a non-finite "
              "loss or gradient and were skipped; parameters are those of the last finite step. "
              "Lower the learning rate or check the data; " + (
                  f"resume from the last checkpoint (step {latest})." if latest is not None
                  else "no checkpoint was written, start over."))
        pending.append(step_metrics)
        previous = step_metrics
        step += 1
        interval_steps += 1
        progress.update(1)
        profiler.after_step(step, state)
        if first_step:
          jax.block_until_ready(state)
          logging.info("First step (with compilation): %.1f s.", time.time() - interval_start)
          interval_start, interval_steps, first_step = time.time(), 0, False

        if step % t.log_every == 0 or step == t.num_steps:
          summary = metrics_lib.summarize(pending)
          elapsed = time.time() - interval_start
          timed = interval_steps > 0  # Not when the interval held only the first step.
          summary["tokens_per_sec"] = (tokens_per_step * interval_steps / elapsed
                                       if timed else None)
          summary["mfu"] = (metrics_lib.mfu(flops_per_step, elapsed / interval_steps,
                                            jax.device_count()) if timed else None)
          if summary["skipped_steps"]:
            logging.warning("Step %d: %d non-finite step(s) skipped since the last log.", step,
                            summary["skipped_steps"])
          writer.write(step, summary)
          speed = f"{summary['tokens_per_sec']:.0f}" if timed else "-"
          progress.set_postfix(loss=f"{summary['loss']:.3f}", tok_s=speed)
          if is_main and not bar:
            logging.info("Step %d: loss %.4f, accuracy %.4f, %s tokens/s%s.", step,
                         summary["loss"], summary["accuracy"], speed,
                         f", MFU {summary['mfu']:.1%}" if summary["mfu"] is not None else "")
          last_log, pending = summary, []
          interval_start, interval_steps = time.time(), 0

        stopping = stop.stop_now(step, t.stop_sync_every)
        evaluated = step % t.eval_every == 0 or step == t.num_steps
        saving = step % t.checkpoint_every == 0 or step == t.num_steps or stopping or save_due
        if evaluated or saving:
          jax.block_until_ready(state)  # The steps before are training time.
          paused = time.time()
        if evaluated:
          last_eval = evaluate(eval_step, state.params, pipeline, config, mesh)
          writer.write(step, last_eval)
          logging.info("Step %d: eval loss %.4f, perplexity %.2f.", step,
                       last_eval["eval_loss"], last_eval["eval_perplexity"])
        if saving:
          saved = checkpointer.save(step, state, batches.state(), meta,
                                    eval_loss=last_eval.get("eval_loss") if evaluated else None,
                                    force=True)
          save_due = not saved
        if stopping and step < t.num_steps:
          checkpointer.wait()
          stopped_by = stopping
          logging.warning(
              "Received %s: %s; exiting. Run the same command to resume.", stopping,
              f"saved a checkpoint at step {step} in {workdir}" if saved else
              f"step {step} was not saved (non-finite parameters or skipped steps); "
              + _latest_checkpoint(checkpointer))
          break
        if evaluated or saving:
          interval_start += time.time() - paused
    # A signal during the last step (or its evaluation) stopped nothing: the run is finished.
    return {"step": step, **last_log, **last_eval, "preempted": stopped_by is not None,
            "stopped_by": stopped_by}


def _close_checkpointer(checkpointer, exc_type, exc, tb) -> bool:
  """Waits for a save in flight and closes, unless a second Ctrl-C is on its way out: that one
  stops at once (train.py then leaves with os._exit), and a save it cuts short stays an unfinished
  temporary directory, which is never taken for a checkpoint."""
  if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
    checkpointer.close()
  return False


def _latest_checkpoint(checkpointer) -> str:
  """Where a run that stops now resumes from, for its last log line."""
  latest = checkpointer.latest_step()
  return (f"the latest checkpoint is step {latest}" if latest is not None
          else "no checkpoint has been written yet")


def _warn_schedule_change(saved_meta: dict, config, step: int) -> None:
  """A resume with another train.num_steps (allowed: raising it continues a run) also moves the
  learning-rate decay, which ends at num_steps: say so, with the rate at the resumed step."""
  saved = ((saved_meta.get("config") or {}).get("train") or {}).get("num_steps")
  now = config.train.num_steps
  if saved is None or saved == now or step >= now:
    return
  old_rate = float(optim.learning_rate_schedule(config.optim, saved)(step))
  new_rate = float(optim.learning_rate_schedule(config.optim, now)(step))
  logging.warning("config.train.num_steps: %d -> %d. The learning rate's %s decay now ends at "
                  "step %d: at step %d it is %.4g (%.4g on the checkpoint's schedule).", saved,
                  now, config.optim.schedule, now, step, new_rate, old_rate)


def _config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """'key: saved -> current' for every leaf that differs (train.* bookkeeping aside)."""
  out = []
  for key in sorted(set(saved) | set(current)):
    name = f"{prefix}{key}"
    if name in ("train.num_steps", "train.resume", "train.overwrite",
                "train.profile_start_step", "train.profile_steps"):
      continue  # Raising num_steps to continue a run is the usual reason to resume.
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_changes(a, b, f"{name}.")
    elif a != b:
      out.append(f"config.{name}: {a!r} -> {b!r}")
  return out


def _config_json(config) -> dict:
  """The config as plain JSON types (ConfigDicts nested in lists included)."""
  return json.loads(config.to_json_best_effort())


def _check_architecture_early(meta, config, where: str, *, same_layout: bool) -> None:
  """The model settings against a checkpoint's, before the vocabulary and the corpus are built:
  all but the vocabulary size and padding id, which follow the tokenizer (and are compared with
  the rest once it is built)."""
  saved = (meta or {}).get("mlm_config")
  if not isinstance(saved, dict):  # Unreadable: the restore names the damaged step itself.
    return
  try:
    current = model_lib.MLMConfig.from_config(config.model, vocab_size=saved["vocab_size"],
                                              pad_id=saved["pad_id"])
  except (KeyError, TypeError):
    return
  if not same_layout:  # Unrolled or scanned layers convert into each other (init_from).
    saved = {**saved, "scan_layers": current.scan_layers}
  _check_architecture(model_lib.MLMConfig(**saved), current, where)


def _check_architecture(saved: model_lib.MLMConfig, current: model_lib.MLMConfig, where: str):
  diffs = checkpointing.architecture_mismatch(dataclasses.asdict(saved), current)
  if diffs:
    raise ValueError(f"The model of {where} does not match this run's config:\n  "
                     + "\n  ".join(diffs))
