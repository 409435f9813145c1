"""`train_and_evaluate(config, workdir)`: the whole run, as train.py and the tests call it.

Sections follow big_vision's train.py: config checks, mesh, input, masking tables, model and
optimizer, sharded state (or resume), the compiled steps, then the loop with logging, evaluation,
checkpoints and pre-emption.

The pieces the run uses have modules of their own: the workdir's checks, set-aside and overwrite
(workdir), this config against a checkpoint's (compatibility), SIGTERM / SIGINT (stopping), the
profiler window (profiling) and the progress bar with the log lines around it (progress_bar).
"""

import contextlib
import dataclasses
import functools
import logging
import math
import os
import pathlib
import sys
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm

from informask_jax import (
  checkpointing,
  cli,
  compatibility,
  data,
  distributed,
  hf_mapping,
  masking,
  optim,
  paths,
  profiling,
  progress_bar,
  stats,
  tokenization,
)
from informask_jax import metrics as metrics_lib
from informask_jax import model as model_lib
from informask_jax import sharding as sharding_lib
from informask_jax import stopping as stopping_lib
from informask_jax import trainer as trainer_lib
from informask_jax import workdir as workdir_lib


class TrainingStopped(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps in a row); see the message."""


class OutOfDeviceMemory(TrainingStopped):
  """XLA's RESOURCE_EXHAUSTED, with the config keys that lower the memory per device."""


def check_config(config) -> None:
  """Errors that need no data or devices, raised before anything heavy runs."""
  data.check_config(config)
  if config.data.validation_fraction == 0:  # Found now, not once the corpus is read.
    raise ValueError(f"config.data.validation_fraction=0{data.NONE_HELD_OUT}")
  t, m = config.train, config.model
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "stop_sync_every", "max_consecutive_skips"):
    if t[key] <= 0:
      raise ValueError(f"config.train.{key}={t[key]} must be positive.")
    if t[key] > optim.MAX_STEPS:  # Else an OverflowError traceback from the first step's call.
      raise ValueError(f"config.train.{key}={t[key]} must be below 2**31 (steps and sizes are "
                       "int32 on the device).")
  both = math.lcm(t.eval_every, t.checkpoint_every)
  if t.checkpoint_every < t.num_steps <= both:
    # Only a checkpoint at an evaluated step carries a validation loss to be kept as the best
    # (the last step is always evaluated, so eval_every >= num_steps is no exception).
    logging.warning(
        "config.train.eval_every=%d and config.train.checkpoint_every=%d first coincide at step "
        "%d, not before num_steps=%d: no checkpoint but the last has a validation loss, so none "
        "is kept as the best by it. Make checkpoint_every a multiple of eval_every (or the "
        "other way round).", t.eval_every, t.checkpoint_every, both, t.num_steps)
  if isinstance(m.max_predictions, bool) or not isinstance(m.max_predictions, int) or \
      m.max_predictions < 1:  # A negative value sliced away all but the last positions.
    raise ValueError(f"config.model.max_predictions={m.max_predictions!r} must be an integer >= 1.")
  if t.profile_start_step < -1 or t.profile_steps < 1:
    raise ValueError(f"config.train.profile_start_step={t.profile_start_step} must be >= 0 (or -1: "
                     f"no trace) and config.train.profile_steps={t.profile_steps} >= 1.")
  if isinstance(t.seed, bool) or not isinstance(t.seed, int) or not 0 <= t.seed < 2**31:
    raise ValueError(f"config.train.seed={t.seed!r} must be an integer in [0, 2**31).")
  if t.eval_batches == 0 or t.eval_batches < -1:
    # No batch would give a loss of 0, which would also win the best-checkpoint selection.
    raise ValueError(f"config.train.eval_batches={t.eval_batches} must be >= 1, or -1 for the "
                     "whole validation split.")
  if t.loss_scaling not in trainer_lib.LOSS_SCALING:
    raise ValueError(f"config.train.loss_scaling={t.loss_scaling!r} must be one of "
                     f"{trainer_lib.LOSS_SCALING} ('auto': dynamic under config.model."
                     "compute_dtype='float16', else off).")
  optim.check_config(config.optim)
  # The model's and the masking's own validation, on stand-in vocabulary ids, so that a typo
  # fails now rather than after the corpus is tokenized.
  resolved = model_lib.MLMConfig.from_config(m, vocab_size=1000, pad_id=0)
  try:
    masking.check_config(config.masking)
  except ValueError as e:
    raise ValueError(f"config.masking: {e}") from None
  if config.masking.name == "informask_online":  # Else met at the first trace of the step.
    try:
      masking.online.check_num_candidates(config.masking.num_candidates, config.data.seq_len)
    except ValueError as e:
      raise ValueError(f"config.masking.num_candidates with config.data.seq_len="
                       f"{config.data.seq_len}: {e}") from None
  name = config.masking.name
  builds_stats = bool(stats.stages_needed(config.masking))
  if builds_stats:
    stats.build.check_config(config)  # The statistics will be built: their settings too.
  streaming = [i for i, src in enumerate(config.data.sources) if src.get("streaming")]
  if builds_stats and streaming:
    # Counted from the tokenized corpus, which a stream never holds; nor can a stream find a
    # prebuilt table in the cache (its key is a hash of the sources, not of their content).
    raise ValueError(stats.build.STREAMING.format(
        where=f"config.data.sources[{streaming[0]}].streaming=True"))
  budget = round(config.masking.mask_prob * (config.data.seq_len - 2))
  if config.masking.budget == "exact" and budget == 0:
    # Else every step trains on no target (loss null) and only the evaluation stops the run,
    # blaming the validation split.
    raise ValueError(
        f"config.masking.mask_prob={config.masking.mask_prob} with config.data.seq_len="
        f"{config.data.seq_len}: the exact budget round(mask_prob * (seq_len - 2)) is 0 targets "
        f"per sequence; raise mask_prob above {0.5 / (config.data.seq_len - 2):.3g} "
        "(or seq_len).")
  if config.masking.budget == "exact" and m.max_predictions < budget:
    raise ValueError(
        f"config.model.max_predictions={m.max_predictions} is below the exact masking budget "
        f"round(mask_prob * (seq_len - 2)) = {budget}; targets beyond it would be dropped. Set "
        f"--config.model.max_predictions={budget} (or more), or lower masking.mask_prob.")
  if config.masking.budget == "bernoulli":
    n, p = config.data.seq_len - 2, config.masking.mask_prob
    # Units chosen whole make the count vary more than a token-level Binomial: by E[len^2] /
    # E[len] in variance (per unit, len tokens with probability ~p). Spans' lengths are known
    # (in words: word pieces add more); words' and n-grams' depend on the corpus.
    spread, unit_note = 1.0, ""
    if name == "span":
      pmf = np.diff(masking.words.span_length_cdf(config.masking.span_geometric_p,
                                                  config.masking.span_max_len), prepend=0.0)
      lengths = np.arange(1, len(pmf) + 1)
      spread = float((pmf * lengths**2).sum() / (pmf * lengths).sum())
      unit_note = (" (of spans whose lengths are counted in words; word pieces widen it, so "
                   "watch dropped_targets_per_step)")
    elif name in ("whole_word", "pmi_span"):
      unit_note = (f" of a token-level count; {name} chooses "
                   f"{'whole words' if name == 'whole_word' else 'n-grams whole'}, whose counts "
                   "vary more (dropped_targets_per_step shows by how much)")
    elif name == "informask" and not config.masking.rescale:
      # Each token is a target with its rate as stored: mask_prob is not the share then.
      unit_note = (" if a sequence's share of targets is masking.mask_prob; with masking."
                   "rescale=False it is what the rate table's rates make it, which this estimate "
                   "cannot know (dropped_targets_per_step in the first logs shows it)")
    enough = int(np.ceil(n * p + 3 * np.sqrt(n * p * (1 - p) * spread)))
    if m.max_predictions < enough:
      logging.warning(
          "config.model.max_predictions=%d with the Bernoulli budget: sequences with more than "
          "that many targets (mean %.1f) lose the rest (logged as dropped_targets_per_step, "
          "and eval_dropped_targets for the evaluations' losses); "
          "--config.model.max_predictions=%d covers 3 standard deviations%s.",
          m.max_predictions, n * p, enough, unit_note)
  # Checks the loaders make again later, made here too so they fail before the corpus is read.
  if config.masking.rates_path and name == "informask":  # All but the size (needs the vocabulary).
    masking.informask.check_rates_file(config.masking.rates_path,
                                       masking.missing_rate_of(config.masking))
  elif config.masking.rates_path:  # Unused by this strategy, but a wrong path is still named.
    masking.informask.rates_file(config.masking.rates_path)
  if m.attention == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(
        f"config.model.attention='cudnn' needs NVIDIA GPUs, but JAX's backend here is "
        f"{jax.default_backend()!r}; use --config.model.attention=xla.")
  if m.attention == "cudnn":
    # What cuDNN's fused attention takes (jax.nn.dot_product_attention checks it only when the
    # first step is traced, after the corpus and statistics are built, with a traceback naming
    # no key): half-precision inputs, and a head size that is a multiple of 8, at most 128 (256
    # from Hopper on).
    if m.compute_dtype not in ("bfloat16", "float16"):
      raise ValueError(
          f"config.model.attention='cudnn' needs config.model.compute_dtype='bfloat16' (or "
          f"'float16'): cuDNN's fused attention has no {m.compute_dtype} kernel. Set "
          "--config.model.compute_dtype=bfloat16, or use --config.model.attention=xla.")
    capability = getattr(jax.devices()[0], "compute_capability", None)
    try:
      head_max = 256 if float(capability) >= 9.0 else 128
    except (TypeError, ValueError):  # A GPU that does not say: JAX's own check decides.
      head_max = 256
    if resolved.head_dim % 8 or resolved.head_dim > head_max:
      raise ValueError(
          f"config.model.attention='cudnn' needs a head size (hidden_size / num_heads) that is a "
          f"multiple of 8 and at most {head_max}; config.model.hidden_size={resolved.hidden_size}"
          f" / num_heads={resolved.num_heads} = {resolved.head_dim}. Change them, or use "
          "--config.model.attention=xla.")
    if m.attention_dropout > 0:
      # The kernel has no dropout on the probabilities: with it the train step's attention is
      # the unfused einsum (every (L, L) score held), and only the evaluations reach cuDNN.
      logging.warning(
          "config.model.attention='cudnn' with config.model.attention_dropout=%g: cuDNN's fused "
          "attention has no dropout, so training computes attention unfused and only the "
          "evaluations use cuDNN. Set --config.model.attention_dropout=0 to train with it.",
          m.attention_dropout)
  if m.compute_dtype == "float16" and jax.default_backend() == "cpu":
    # Else the first compilation fails (after the corpus and its statistics are built) with
    # XLA's "precision 'F16_F16_F32' is not supported by dot_general on CPU", naming no key.
    raise ValueError("config.model.compute_dtype='float16': XLA:CPU has no float16 matmuls "
                     "(with float32 accumulation); on a CPU use --config.model.compute_dtype="
                     "bfloat16 or float32.")


def _check_positions(config, pad_id: int, vocab_size: int) -> model_lib.MLMConfig:
  """The model for the tokenizer's padding id and vocabulary, refusing a data.seq_len beyond its
  positions. A RoBERTa layout's start after the padding id, which check_config cannot know: it
  allows for an id of 1 (Hugging Face's RoBERTa), so a tokenizer whose [PAD] is 3 (a
  SentencePiece model's usual choice) passed it with seq_len 512 and was refused only once the
  corpus was tokenized and its statistics built. Called as the tokenizer is loaded, and again
  with the input pipeline's vocabulary."""
  mlm_config = model_lib.MLMConfig.from_config(config.model, vocab_size=vocab_size, pad_id=pad_id)
  if config.data.seq_len > mlm_config.max_seq_len:
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the "
                     f"{mlm_config.max_seq_len} positions of config.model.max_positions="
                     f"{mlm_config.max_positions} "
                     f"(RoBERTa positions start after the padding id {mlm_config.pad_id}).")
  return mlm_config


def _log_topology(config, mesh) -> None:
  logging.info("Process %d of %d; %d local / %d global devices (%s); mesh %s.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].device_kind, dict(mesh.shape))
  # Through plain types: a ConfigDict inside a list (a data source) prints as a Python object.
  logging.info("Config:\n%s", ml_collections.ConfigDict(compatibility.config_json(config)))
  if (jax.default_backend() == "cpu" and sys.platform == "linux"
      and "hugetlb" not in os.environ.get("GLIBC_TUNABLES", "")):
    # XLA:CPU's per-step buffers fault in 4 KiB at a time (bench/RESULTS.md, "Page faults").
    logging.info("On a CPU, GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment of this "
                 "command (glibc >= 2.35) saves most of the page faults of every step; see "
                 "bench/RESULTS.md, 'Page faults'.")


def build_masker(config, pipeline):
  """The configured strategy, with the corpus statistics it needs (built when missing)."""
  name = config.masking.name
  tables = {}
  need = stats.stages_read(config.masking)
  if need:
    path = stats.ensure_artifacts(config, pipeline, need=need,
                                  progress=progress_bar.on_terminal())
    # Only the stages this strategy reads: a damaged file of another (pmi_ngrams.json, or the
    # PMI table the rates came from, for informask), which ensure_artifacts neither checks nor
    # rebuilds, must not stop the run.
    art = stats.load_artifacts(path, tokenizer_fingerprint=pipeline.tokenizer_fingerprint,
                               vocab_size=pipeline.vocab_size, need=need)
    tables = {"informask": {"rates": art.rates}, "informask_online": {"pmi": art.pmi},
              "pmi_span": {"ngrams": art.ngrams, "bigrams": art.bigrams}}[name]
    logging.info("Masking tables for %s from %s.", name, path)
  elif name == "informask":
    return given_rates_masker(config, pipeline.tokenizer_fingerprint, pipeline.special_ids,
                              pipeline.vocab_size)
  ids = pipeline.special_ids
  return masking.masker_from_config(
      config.masking, vocab_size=pipeline.vocab_size, mask_id=ids.mask,
      special_ids=(ids.pad, ids.unk, ids.cls, ids.sep, ids.mask),
      continuation=pipeline.continuation, **tables)


def given_rates_masker(config, tokenizer_fingerprint: str, ids, vocab_size: int):
  """informask with its table from masking.rates_path, which needs the tokenizer and no corpus:
  train_and_evaluate builds it as the tokenizer loads. Built after the input pipeline, a table
  of another vocabulary (the original repository's 30,522 bert-base-uncased ids beside a trained
  vocabulary) was refused once the whole corpus had been tokenized, hours at scale."""
  stats.check_table_tokenizer(config.masking.rates_path, tokenizer_fingerprint,
                              "masking.rates_path")
  return masking.masker_from_config(
      config.masking, vocab_size=vocab_size, mask_id=ids.mask,
      special_ids=(ids.pad, ids.unk, ids.cls, ids.sep, ids.mask))


def _log_evaluation_size(config, pipeline) -> None:
  """How much of the validation split an evaluation reads: eval_batches beyond it are not there."""
  rows = len(pipeline.validation["token_ids"])
  size, asked = config.train.batch_size, config.train.eval_batches
  held = -(-rows // size)
  if 0 <= asked < held:
    logging.info("Evaluation: %d batches of %d rows, a fixed sample of the validation split's "
                 "%d rows (config.train.eval_batches=%d).", asked, size, rows, asked)
  else:
    logging.info("Evaluation: the whole validation split, %d rows in %d batch(es) of %d%s.", rows,
                 held, size, "" if asked <= held else
                 f" (config.train.eval_batches={asked} asks for more than the split holds)")


# Training rows read by _warn_rows_without_targets: enough for the share, cheap at any corpus size.
_BUDGET_SAMPLE_ROWS = 65536


def _warn_rows_without_targets(config, pipeline) -> None:
  """Warns when many training rows get no target under the exact budget: round(mask_prob x
  maskable) is 0 below 1 / (2 mask_prob) maskable tokens (4 at 0.15), as in rows of short
  documents under data.packing=doc_padded. Every row so: each step's loss is 0 / 0 and the run
  trains nothing, while it logs NaN and finishes. (The check of mask_prob against seq_len covers
  full rows only.) A streamed corpus is not read ahead: the training loop warns instead."""
  train = pipeline.train
  if config.masking.budget != "exact" or train is None or not len(train["token_ids"]):
    return
  rows = np.asarray(train["token_ids"])
  if len(rows) > _BUDGET_SAMPLE_ROWS:  # Evenly spaced rows.
    rows = rows[np.linspace(0, len(rows) - 1, _BUDGET_SAMPLE_ROWS).astype(np.int64)]
  maskable = (~np.isin(rows, np.asarray(list(pipeline.special_ids)))).sum(axis=1)
  budgets = masking.contract.budget_table(config.masking.mask_prob, rows.shape[1])[maskable]
  empty = float(np.mean(budgets == 0))
  if empty < 0.5:
    return
  fewest = int(np.ceil(0.5 / config.masking.mask_prob))  # round() rounds 0.5 down to 0 here.
  logging.warning(
      "%s of the training rows (%.0f%%%s) have too few maskable tokens for a target: the exact "
      "budget round(config.masking.mask_prob=%g x maskable) is 0 below about %d; mean %.1f "
      "maskable per row. %s", "All" if empty == 1 else "Most", 100 * empty,
      f" of {len(rows)} sampled" if len(rows) < len(train["token_ids"]) else "",
      config.masking.mask_prob, fewest, float(maskable.mean()),
      "Short documents with config.data.packing=doc_padded? Pack them with "
      "--config.data.packing=full_sentences, or use --config.masking.budget=bernoulli."
      if config.data.packing == "doc_padded" else "Raise config.masking.mask_prob or use "
      "--config.masking.budget=bernoulli.")


def evaluate(eval_step, params, pipeline, config, mesh) -> dict:
  """Mean masked-token loss over eval_batches validation batches (data.eval_batches' rows),
  fixed masks; eval_dropped_targets: the masked tokens beyond model.max_predictions it left out
  (a Bernoulli budget's; they are the last of their rows, so the loss leans to early ones)."""
  batch_sharding = sharding_lib.batch_sharding(mesh)
  # The same masks at every evaluation (so evaluations compare), other masks for every batch
  # (a key shared by the batches would mask the same positions of every batch's row i).
  rng = jax.random.key(config.train.seed + 1)
  sums = {"loss_sum": 0.0, "correct_sum": 0.0, "num_targets": 0.0, "dropped_targets": 0.0}
  for index, local in enumerate(data.eval_batches(
      pipeline.validation, config.train.batch_size, config.train.eval_batches,
      pad_id=pipeline.special_ids.pad)):
    out = eval_step(params, data.make_global_batch(local, batch_sharding),
                    jax.random.fold_in(rng, index))
    for key, value in jax.device_get(out).items():
      sums[key] += float(value)
  if sums["num_targets"] == 0:  # A loss of 0 would be logged, and win the best checkpoint.
    rows = len(pipeline.validation["token_ids"])
    raise ValueError(
        f"The evaluation had no masked tokens to predict in the validation split's {rows} rows: "
        f"rows too short for a target at config.masking.mask_prob={config.masking.mask_prob:g} "
        "(pack short documents with --config.data.packing=full_sentences, or use "
        "--config.masking.budget=bernoulli), or too few rows (raise "
        "config.data.validation_fraction).")
  loss = sums["loss_sum"] / sums["num_targets"]
  return {"eval_loss": loss, "eval_perplexity": float(min(jax.numpy.exp(loss), 1e30)),
          "eval_accuracy": sums["correct_sum"] / sums["num_targets"],
          "eval_dropped_targets": sums["dropped_targets"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics and evaluation."""
  try:
    return _train_and_evaluate(config, workdir)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise OutOfDeviceMemory(_out_of_memory_advice(config, e)) from e


def _out_of_memory_advice(config, error) -> str:
  """XLA's line, then the settings that lower a device's share (the train-state check before the
  init counts parameters and moments only; activations and XLA's buffers come on top)."""
  t, o, m, mesh = config.train, config.optim, config.model, config.mesh
  xla = str(error).strip().splitlines()[0][:300]
  ways = [f"a smaller config.train.batch_size (now {t.batch_size}) or more "
          f"config.optim.grad_accum_steps (now {o.grad_accum_steps}: the same batch in more, "
          "smaller micro-batches)"]
  if m.remat != "full":
    ways.append(f"config.model.remat='{'dots' if m.remat == 'none' else 'full'}' (now "
                f"'{m.remat}': recompute activations in the backward pass)")
  ways.append(f"a larger config.mesh.fsdp (now {mesh.fsdp}: parameters and optimizer moments "
              "split over more devices)")
  return (f"A device ran out of memory ({xla}). Lower the memory per device: "
          + "; ".join(ways) + ". Checkpoints written so far are intact: a resume takes the "
          "other settings, but not another batch size, which changes the data order.")


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  # --- Config and workdir ----------------------------------------------------------------
  check_config(config)
  if not str(workdir).strip():
    raise ValueError("--workdir is empty; give the directory for the run's checkpoints and logs.")
  if "://" in str(workdir):
    raise ValueError(f"--workdir {workdir}: only local or mounted paths are supported (mount a "
                     "bucket with gcsfuse or similar to write there).")
  workdir = pathlib.Path(workdir).expanduser()
  if distributed.joined_processes()[1] > 1:  # Before a process decides alone on the workdir.
    distributed.check_same_config(compatibility.config_json(config))
    distributed.check_same_checkpoints(workdir, checkpointing.finalized_steps(workdir),
                                       "--workdir")
  resume, clear = workdir_lib.prepare(workdir, config)
  if config.init_from and not resume:  # A resume reads its own checkpoint: a requeued job
    # resumes though the folder it started from is gone (scratch space cleaned up).
    try:
      checkpointing.require_checkpoint_dir(config.init_from)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.init_from: {e}") from None
  if not resume:  # A resume whose new num_steps ends inside the warm-up says so with the rate at
    # the resumed step (compatibility.warn_schedule_change): not twice.
    optim.warn_if_warmup_outlasts_run(config.optim, config.train.num_steps)
  is_main = jax.process_index() == 0

  # --- Mesh --------------------------------------------------------------------------------
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.logical_rules(config.mesh, known=model_lib.LOGICAL_AXES)
  sharding_lib.check_batch_divisible(config.train.batch_size, mesh, config.optim.grad_accum_steps,
                                     resumed=resume)
  _log_topology(config, mesh)

  # --- Input and masking -------------------------------------------------------------------
  # Read here by every process: orbax's checkpoint manager waits for all of them as it opens,
  # so process 0 opening it alone inside main_process_first (the others waiting at its barrier)
  # hung every resume with several processes.
  resumed_meta = checkpointing.latest_meta(workdir) if resume else None
  # Process 0 builds missing caches; the others wait, then read them (on a shared file system).
  init_vocabulary = {}  # init_from's tokenizer limit (see check_init_vocabulary), once checked.
  given_rates = {}  # informask's masker from masking.rates_path, built as the tokenizer loads.

  def check_tokenizer(fingerprint, tokenizer):
    if resumed_meta is not None:
      _check_resumed_tokenizer(resumed_meta, workdir, config, fingerprint)
    elif config.init_from and not resume:
      # Here, not once the model is built: after the corpus was tokenized and its statistics
      # built (hours at scale), parameters of another vocabulary were refused only then.
      init_vocabulary["limit"] = compatibility.check_init_vocabulary(config.init_from,
                                                                     tokenizer)
    # After those: a resume's or init_from's other tokenizer is the problem to name first (a
    # vocabulary file edited in place, its [PAD] moved, was refused as a seq_len too long).
    ids, rows = tokenization.special_ids(tokenizer), tokenization.vocab_rows(tokenizer)
    _check_positions(config, ids.pad, rows)
    if config.masking.name == "informask" and config.masking.rates_path:
      given_rates["masker"] = given_rates_masker(config, fingerprint, ids, rows)
  pipeline = distributed.main_process_first(
      "input pipeline", lambda: data.build_input_pipeline(config, check_tokenizer))
  _log_evaluation_size(config, pipeline)
  _warn_rows_without_targets(config, pipeline)
  masker = given_rates["masker"] if given_rates else distributed.main_process_first(
      "corpus statistics", lambda: build_masker(config, pipeline))
  # On the devices once, for the train and the eval step: each replicating its own kept two
  # copies of informask_online's PMI table on a device (7 GiB at R = 30,522 rows, not 3.5).
  masker = jax.device_put(masker, sharding_lib.replicated(mesh))
  # --- Model and optimizer -----------------------------------------------------------------
  mlm_config = _check_positions(config, pipeline.special_ids.pad, pipeline.vocab_size)
  model = model_lib.BertMLM(mlm_config)
  tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  init_params, trained_before = None, 0
  if config.init_from and not resume:
    # Checked as the tokenizer was ready (check_tokenizer), so that a vocabulary of another
    # size is named as such (with the way out), not as a vocab_size mismatch; one of the same
    # size would pass the architecture check.
    # (Checked now if the pipeline was built without calling it, as a stand-in one may be.)
    init_limit = (init_vocabulary["limit"] if "limit" in init_vocabulary else
                  compatibility.check_init_vocabulary(config.init_from, pipeline.tokenizer))
    try:
      init_params, saved_cfg, init_step = checkpointing.restore_params(config.init_from)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"config.init_from: {e}") from None
    # Positions the model it starts from was trained on count as trained: an export of this
    # run truncates at the longer of that and data.seq_len.
    trained_before = checkpointing.trained_length(
        saved_cfg, checkpointing.step_meta(config.init_from, init_step), init_limit)
    # Unrolled or scanned layers are a layout, not an architecture: convert to this run's.
    init_params = hf_mapping.convert_layout(init_params, mlm_config.scan_layers)
    saved_cfg = dataclasses.replace(saved_cfg, scan_layers=mlm_config.scan_layers)
    compatibility.check_architecture(saved_cfg, mlm_config, f"config.init_from={config.init_from}")
    logging.info("Initialised parameters from %s.", config.init_from)
  scaled = trainer_lib.uses_loss_scaling(config.train.loss_scaling, config.model.compute_dtype)
  state, state_shardings = trainer_lib.init_train_state(
      model, tx, config.train.seed, config.data.seq_len, mesh, rules, params=init_params,
      loss_scale=trainer_lib.LOSS_SCALE_INIT if scaled else None)

  # --- Resume ------------------------------------------------------------------------------
  # What is opened from here on is closed on every exit, errors included (orbax's threads left
  # open print tracebacks at exit, after the error that matters).
  train_iter = pipeline.train_iterator(config.train.batch_size, seed=config.train.seed)
  with contextlib.ExitStack() as cleanup:
    # Before anything is written or deleted in the workdir: a second run there is refused.
    cleanup.enter_context(workdir_lib.lock(workdir))
    distributed.check_shared_directory(workdir, "--workdir")
    workdir_lib.check_unchanged(workdir, resume, clear)  # What prepare() saw, unlocked.
    # Every process has checked before process 0 moves anything: one that checked after the old
    # run was set aside found its checkpoints gone, and the overwrite failed on that.
    distributed.barrier("workdir checked")
    # Entered before the checkpointer and the metric writer, so left after they are closed.
    overwritten = cleanup.enter_context(workdir_lib.OverwrittenRun(workdir))
    if clear:  # Everything above checked and built: only now is the old run set aside.
      distributed.main_process_first("overwrite", overwritten.set_aside)
    elif not resume:
      distributed.main_process_first("earlier logs",
                                     lambda: workdir_lib.set_aside_earlier_logs(workdir))
    checkpointer = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    cleanup.push(functools.partial(_close_checkpointer, checkpointer))
    config_json = compatibility.config_json(config)
    if resume:
      step = checkpointer.latest_step()
      saved_meta = checkpointer.read_meta(step)  # An import was refused in workdir_lib.prepare.
      compatibility.check_architecture(model_lib.MLMConfig(**saved_meta["mlm_config"]),
                                       mlm_config, f"the checkpoint at step {step} in {workdir}",
                                       resumed_run=workdir)
      newer = []
      changed = compatibility.config_changes(saved_meta.get("config") or {}, config_json,
                                             newer=newer)
      compatibility.check_tokenizer(saved_meta, pipeline.tokenizer_fingerprint, changed,
                                    config, f"{workdir} (step {step})", workdir / "tokenizer")
      if changed:
        logging.warning("Resuming with a config that differs from the checkpoint's:\n  %s",
                        "\n  ".join(changed))
        compatibility.warn_evaluation_change(changed, config)
      if newer:
        logging.info("Settings the checkpoint's run predates (a new setting's default does what "
                     "that run did), as now set: %s.", ", ".join(newer))
      abstract = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
      del state  # Free the fresh state before the restored one arrives.
      state, data_state, _ = checkpointer.restore(step, abstract)
      # The run's own record, not its config now: a resume without init_from (read only at the
      # start) does not undo what the model it started from was trained on.
      trained_before = checkpointing.trained_length(mlm_config, saved_meta)
      try:
        train_iter.restore(_fixed_stream_accepted(data_state, train_iter, step))
      except data.IteratorStateError as e:
        raise checkpointer.unreadable(step, e) from e
      except data.DataSettingsChanged as e:
        raise _cannot_resume(workdir, step, e) from None
      logging.info("Resumed from step %d in %s.", step, workdir)
      compatibility.warn_schedule_change(saved_meta, config, step)
      if step >= config.train.num_steps:
        logging.warning("The checkpoint is at step %d, config.train.num_steps=%d: nothing left to "
                        "train; raise num_steps to continue.", step, config.train.num_steps)
        # The run trains nothing: its config.json and tokenizer stay those of the steps trained
        # (a smaller num_steps written there would misdescribe them), and no train step is
        # compiled. What a crashed run logged past the checkpoint goes, as on any resume: no
        # parameters hold it.
        with contextlib.closing(metrics_lib.MetricWriter(workdir, enabled=is_main,
                                                         resumed_at=step)) as writer:
          last_eval = {}
          # A run's last step is always evaluated: a stop there whose evaluation a kill cut
          # short, or num_steps lowered to a stop step between evaluations, left it without one.
          if not distributed.value_of_process_0("evaluated at the resumed step",
                                                writer.evaluated_at_resume):
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
              last_eval = _evaluate_and_log(_jit_eval_step(model, config, state_shardings, mesh,
                                                           masker),
                                            state, pipeline, config, mesh, writer, step)
        return {"step": step, **last_eval, "preempted": False, "stopped_by": None}
    # Written once the run is known to fit the workdir (a refused resume must not replace them).
    if is_main:
      # Staged, then moved in file by file: on a resume this replaces the only copy of a
      # vocabulary trained on the corpus, which a disk filling up mid-write left empty.
      paths.replace_files(workdir / "tokenizer",
                          lambda tmp: pipeline.tokenizer.save_pretrained(tmp), "the tokenizer")
      checkpointing.write_json(workdir / "config.json", config_json)
    meta = {"mlm_config": checkpointing.mlm_config_to_dict(mlm_config), "config": config_json,
            "tokenizer_fingerprint": pipeline.tokenizer_fingerprint,
            checkpointing.TRAINED_LENGTH_META: min(mlm_config.max_trained_len,
                                                   max(config.data.seq_len, trained_before))}

    # --- Compiled steps ----------------------------------------------------------------------
    step_config = trainer_lib.StepConfig(config.model.max_predictions,
                                         config.optim.grad_accum_steps)
    train_step = trainer_lib.jit_train_step(
        trainer_lib.make_train_step(model, tx, schedule, step_config,
                                    optim.make_apply_update(config.optim, schedule)),
        state_shardings, mesh, masker)
    eval_step = _jit_eval_step(model, config, state_shardings, mesh, masker)
    flops_per_step = config.train.batch_size * model_lib.train_flops_per_sequence(
        mlm_config, config.data.seq_len, config.model.max_predictions)

    # --- Loop --------------------------------------------------------------------------------
    writer = cleanup.enter_context(contextlib.closing(metrics_lib.MetricWriter(
        workdir, enabled=is_main, resumed_at=int(jax.device_get(state.step)) if resume else None)))
    # A SIGTERM before the loop whose SystemExit a callback swallowed (cli.exit_on_sigterm).
    stop = stopping_lib.StopSignal(config.train.stop_sync_every,
                                   "SIGTERM" if cli.sigterm_received() else None)
    cleanup.callback(stop.restore)
    # A folder per process: jax.profiler names its files by host and second, so processes
    # sharing a host (one per GPU) would overwrite one another's trace.
    profiler = profiling.Profiler(workdir / "profile" / f"process_{jax.process_index()}",
                                  config.train.profile_start_step, config.train.profile_steps,
                                  config.train.num_steps)
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
    bar = is_main and progress_bar.on_terminal()
    progress = cleanup.enter_context(tqdm.tqdm(
        total=t.num_steps, initial=step, disable=not bar, desc="train", dynamic_ncols=True))
    if bar:
      cleanup.enter_context(progress_bar.log_lines_clear(progress))
    warned_dropped = warned_targetless = False
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      if step == 0:  # The untrained model's loss: the baseline every later eval compares with.
        last_eval = evaluate(eval_step, state.params, pipeline, config, mesh)
        writer.write(0, last_eval)
        # Logged like the later evaluations: the log (a Slurm file) then shows where the loss
        # started, as metrics.jsonl does.
        logging.info("Step 0: eval loss %.4f, perplexity %.2f.", last_eval["eval_loss"],
                     last_eval["eval_perplexity"])
      elif step % t.eval_every == 0 and step < t.num_steps and not distributed.value_of_process_0(
          "evaluated at the resumed step", writer.evaluated_at_resume):
        # A stop at an evaluation step saves, then evaluates: a kill during that evaluation (the
        # grace period over) left the step without one for good, the resume starting after it.
        # Process 0's metrics.jsonl decides for all: an evaluation is a collective.
        last_eval = _evaluate_and_log(eval_step, state, pipeline, config, mesh, writer, step)
      # tokens/s and MFU count training only: the first step of the process (compilation) and
      # the time of evaluations (step 0's, with its own compilation, included) and checkpoints
      # are left out of the intervals.
      interval_start, interval_steps, first_step = time.time(), 0, True
      started_at = step
      while step < t.num_steps:
        profiler.before_step(step)
        try:
          batch = next(batches)
        except data.TooFewRows:  # Not a read failure that reading again would get past.
          raise
        except data.DataSettingsChanged as e:  # A stream's restored position, checked here.
          raise _cannot_resume(workdir, step, e) from None
        except Exception:  # The error itself follows, after the steps trained are saved.
          if pending:  # Their sums live in memory only: their row first, as a stop writes one
            # (else the resume's rows start after the saved step, and no row holds these steps).
            writer.write(step, {**metrics_lib.summarize(pending), "tokens_per_sec": None,
                                "mfu": None})
            writer.flush()  # On disk before the save, as at a checkpoint.
          _save_before_data_failure(step, started_at, state, batches, checkpointer, meta,
                                    workdir, config)
          raise
        state, step_metrics = train_step(state, batch)
        # Check the previous step's skip counter: already computed, so no pipeline stall.
        if previous is not None and int(previous["consecutive_skips"]) >= t.max_consecutive_skips:
          latest = checkpointer.latest_step()
          # Under loss scaling the count leaves out the overflows the scale absorbed by falling.
          scale_note = ("" if "loss_scale" not in previous else
                        " (under dynamic loss scaling, at a scale of "
                        f"{float(previous['loss_scale']):.3g}, a skip counts only when the loss "
                        "itself is non-finite or the scale is at its floor, "
                        f"{trainer_lib.LOSS_SCALE_MIN:.3g}: not a range the scale could fix)")
          raise TrainingStopped(
              f"{t.max_consecutive_skips} consecutive steps up to step {step} had a non-finite "
              f"loss or gradient and were skipped{scale_note}; parameters are those of the last "
              "finite step. Lower the learning rate or check the data; " + (
                  f"the latest checkpoint is step {latest}.{checkpointer.best_advice()}"
                  if latest is not None else "no checkpoint was written, start over."))
        pending.append(step_metrics)
        previous = step_metrics
        step += 1
        interval_steps += 1
        progress.update(1)
        profiler.after_step(step, state)
        if first_step:
          jax.block_until_ready(state)
          logging.info("First step (with compilation): %.1f s.", time.time() - interval_start)
          overwritten.delete()
          interval_start, interval_steps, first_step = time.time(), 0, False

        # Asked before the log: a run stopped here logs the steps since its last row (their
        # sums live in memory only), so that every step trained is in some row.
        stopping = stop.stop_now(step, t.stop_sync_every)
        if step % t.log_every == 0 or step == t.num_steps or stopping:
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
          if not warned_dropped:
            warned_dropped = _warn_dropped_targets(step, summary, config)
          if not warned_targetless:
            warned_targetless = _warn_targetless_steps(step, summary, config)
          writer.write(step, summary)
          speed = f"{summary['tokens_per_sec']:.0f}" if timed else "-"
          progress.set_postfix(loss=f"{summary['loss']:.3f}", tok_s=speed)
          if is_main and not bar:
            logging.info("Step %d: loss %.4f, accuracy %.4f, %s tokens/s%s.", step,
                         summary["loss"], summary["accuracy"], speed,
                         f", MFU {summary['mfu']:.1%}" if summary["mfu"] is not None else "")
          last_log, pending = summary, []
          interval_start, interval_steps = time.time(), 0

        checkpointer.check()  # A save that failed in the background stops the run now.
        evaluated = step % t.eval_every == 0 or step == t.num_steps
        saving = step % t.checkpoint_every == 0 or step == t.num_steps or stopping or save_due
        if evaluated or saving:
          jax.block_until_ready(state)  # The steps before are training time.
          paused = time.time()
        # A stop saves first, then evaluates: a pre-emption's grace period (often 30 s) goes to
        # the checkpoint, not to an evaluation that a kill would cut short with both lost.
        stop_mid_run = stopping and step < t.num_steps
        evaluated_now = evaluated and not stop_mid_run
        if evaluated_now:
          last_eval = _evaluate_and_log(eval_step, state, pipeline, config, mesh, writer, step)
        if saving:
          # Before the save starts (it is written in the background): what a resume from this
          # checkpoint keeps is on disk whenever the process is killed after it is finished.
          writer.flush()
          saved = checkpointer.save(step, state, batches.state(), meta,
                                    eval_loss=last_eval["eval_loss"] if evaluated_now else None,
                                    force=True, last=step == t.num_steps or bool(stopping))
          save_due = not saved
        if stop_mid_run:
          checkpointer.wait()
          if evaluated:  # (Its loss is not the checkpoint's: it ranks for the best as unknown.)
            last_eval = _evaluate_and_log(eval_step, state, pipeline, config, mesh, writer, step)
            writer.flush()
          stopped_by = stopping
          logging.warning(
              "Received %s: %s; exiting. %s.", stopping,
              f"saved a checkpoint at step {step} in {workdir}" if saved else
              f"step {step} was not saved (its parameters hold NaN or Inf); "
              + _latest_checkpoint(checkpointer), _sentence(resume_advice(config)))
          break
        if evaluated or saving:
          interval_start += time.time() - paused
    # A signal during the last step (or its evaluation) stopped nothing: the run is finished.
    # Nor does one during the final save's write (seconds to minutes at scale), waited for here
    # while a signal is only noted; the cleanup's wait would come after stop.restore put back
    # the handler that exits with status 143.
    checkpointer.wait()
    return {"step": step, **last_log, **last_eval, "preempted": stopped_by is not None,
            "stopped_by": stopped_by}


def _jit_eval_step(model, config, state_shardings, mesh, masker):
  return trainer_lib.jit_eval_step(
      trainer_lib.make_eval_step(model, config.model.max_predictions,
                                 config.optim.grad_accum_steps), state_shardings, mesh, masker)


def _evaluate_and_log(eval_step, state, pipeline, config, mesh, writer, step) -> dict:
  result = evaluate(eval_step, state.params, pipeline, config, mesh)
  writer.write(step, result)
  logging.info("Step %d: eval loss %.4f, perplexity %.2f.", step, result["eval_loss"],
               result["eval_perplexity"])
  return result


def _check_resumed_tokenizer(meta, workdir, config, fingerprint) -> None:
  """A vocabulary trained on the corpus is known only once trained: a resume whose corpus
  changed it is refused then, before the corpus is tokenized. (The resume checks again against
  the step it restores.) `meta`: the latest checkpoint's (None, unreadable: the resume names the
  damaged step)."""
  changed = compatibility.config_changes(meta.get("config") or {},
                                         compatibility.config_json(config))
  compatibility.check_tokenizer(meta, fingerprint, changed, config, f"{workdir}",
                                workdir / "tokenizer")


def _warn_dropped_targets(step, summary, config) -> bool:
  """Warns (once a run: True) when over 1% of the masked targets did not fit in
  model.max_predictions. They are corrupted in the input but never trained on. The config check
  sizes max_predictions for mask_prob; a Bernoulli budget with masking.rescale=False masks the
  rate table's own share, which only the run itself measures."""
  dropped, kept = summary["dropped_targets_per_step"], summary["targets_per_step"]
  if not dropped > 0.01 * (dropped + kept):
    return False
  share = dropped / (dropped + kept)
  unscaled = (config.masking.name == "informask" and config.masking.budget == "bernoulli"
              and not config.masking.rescale)
  logging.warning(
      "Step %d: %.1f of %.1f masked targets per step (%.0f%%) did not fit in "
      "config.model.max_predictions=%d and were not trained on (dropped_targets_per_step in the "
      "metrics); raise --config.model.max_predictions%s.", step, dropped, dropped + kept,
      100 * share, config.model.max_predictions,
      " (masking.rescale=False masks each token at the rate table's own value, whatever "
      "masking.mask_prob says)" if unscaled else "")
  return True


def _warn_targetless_steps(step, summary, config) -> bool:
  """Warns (once a run: True) when the steps since the last log had no masked target at all:
  their loss is 0 / 0 (logged NaN) and their gradients 0, so they are not skipped: as in a
  PyTorch loop, the optimizer still applies its momentum and weight decay, and the schedule
  advances, with nothing learnt. Before the run, _warn_rows_without_targets sees most such cases;
  this one also sees streamed corpora and Bernoulli budgets."""
  if summary["targets_per_step"] or summary["skipped_steps"]:
    return False
  logging.warning(
      "Step %d: no masked target in any step since the last log (targets_per_step 0, loss NaN): "
      "those steps learnt from nothing, while the optimizer still applied its momentum and weight "
      "decay and the learning-rate schedule advanced. The rows have too few maskable tokens for "
      "config.masking.mask_prob=%g (short documents under config.data.packing=%r?).", step,
      config.masking.mask_prob, config.data.packing)
  return True


def _cannot_resume(workdir, step, error) -> ValueError:
  return ValueError(
      f"Cannot resume the run in {workdir} (step {step}): {error} Resume with the run's "
      f"settings (its config.json), or keep its parameters and start a new run: another "
      f"--workdir with --config.init_from={workdir}.")


# The field of a data state saved because the next batch could not be read.
READ_FAILED = "read_failed"


def _fixed_stream_accepted(data_state, train_iter, step):
  """The data state to restore. One saved when a streamed file failed to read (malformed) is
  restored even though the stream's files changed since: fixing that file changes its size, which
  the stream's fingerprint holds, and the resume the failure's message promised was refused.
  The rest of the fingerprint (the sources' settings, the cleaning) must still agree."""
  saved = data_state.get("corpus") if isinstance(data_state, dict) else None
  now = getattr(train_iter, "corpus", None)
  settings = data.stream_settings_part(saved)
  # Only the files may differ: other sources' settings or another cleaning (which draws the
  # validation split) are not "the file that failed, fixed".
  if not (saved is not None and now is not None and saved != now
          and data_state.get(READ_FAILED) and data_state.get("kind") == "streaming"
          and settings is not None and settings == data.stream_settings_part(now)):
    return data_state
  logging.warning("The streamed files changed since the checkpoint at step %d, which was saved "
                  "when reading them failed: resuming at its position in the files as they are "
                  "now (the file that failed, fixed; documents added or removed before that "
                  "position shift where the stream resumes).", step)
  return {**data_state, "corpus": now}


def _save_before_data_failure(step, started_at, state, batches, checkpointer, meta,
                              workdir, config) -> None:
  """The training data stopped reading (a file gone or malformed, a stream's network): saves the
  steps trained since the last checkpoint, with the data position of the batch that failed, and
  logs where the run resumes. Not with several processes: the others are inside a step's
  collectives, and a save (a collective too) would hang them all."""
  saved = False
  if jax.process_count() == 1 and step > started_at and checkpointer.latest_step() != step:
    try:
      # Marked: the resume accepts the stream's files changed (the one that failed, fixed).
      saved = checkpointer.save(step, state, {**batches.state(), READ_FAILED: True}, meta,
                                force=True, last=True)
      checkpointer.wait()
    except checkpointing.CheckpointWriteError as e:  # The data's error is the one to raise.
      logging.error("%s", e)
      saved = False
  # The error may come from deep inside a library's reader (a stream's network): name the data.
  sources = ", ".join(f"{s['kind']} {s.get('name')!r}{' (streaming)' if s.get('streaming') else ''}"
                      for s in config.data.sources)
  logging.error("Reading the training data (config.data.sources: %s) failed after step %d (the "
                "error follows): %s; once the data reads again, %s.",
                sources, step, f"saved a checkpoint at step {step} in {workdir}" if saved
                else _latest_checkpoint(checkpointer), resume_advice(config))


def _close_checkpointer(checkpointer, exc_type, exc, tb) -> bool:
  """Waits for a save in flight and closes, unless a second Ctrl-C is on its way out: that one
  stops at once (train.py then leaves with os._exit), and a save it cuts short stays an unfinished
  temporary directory, which is never taken for a checkpoint."""
  if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
    checkpointer.close()
  return False


def resume_advice(config) -> str:
  """How to resume a run stopped early, given its config (None: not known). A run that started
  over (train.resume=False) would start over again with the same command (overwrite=True: a
  scheduler requeueing it deleted the run at each pre-emption) or be refused."""
  train = None if config is None else config.train
  if train is None or train.resume:
    return "run the same command to resume"
  if train.overwrite:
    return ("run the same command without --config.train.overwrite=True and "
            "--config.train.resume=False to resume (as it is, it would start over)")
  return ("run the same command without --config.train.resume=False to resume (as it is, it "
          "would be refused)")


def _sentence(text: str) -> str:
  return text[:1].upper() + text[1:]


def after_interrupt(workdir, config=None) -> str:
  """What a run stopped at once (a second Ctrl-C, or one before the loop handles signals) leaves
  in `workdir`, for train.py's last line: with no checkpoint written there is nothing to resume.
  `config`: the run's, whose train.overwrite the same command would apply again, to the run an
  interrupt before the first step put back or to its own."""
  resume = resume_advice(config)
  try:
    written = checkpointing.finalized_steps(pathlib.Path(workdir).expanduser())
  except OSError:  # Unreadable: claim neither.
    return f"the checkpoints written so far, if any, are intact; {resume}"
  if written:
    # Named: a save the interrupt cut short (the stop's own, or one in flight when the first
    # Ctrl-C came) is not among them, and the resume starts from this one.
    return (f"the checkpoints written so far are intact, the latest at step {written[-1]}; "
            f"{resume}")
  return f"no checkpoint was written in {workdir}; the same command starts the run afresh"


def _latest_checkpoint(checkpointer) -> str:
  """Where a run that stops now resumes from, for its last log line."""
  latest = checkpointer.latest_step()
  return (f"the latest checkpoint is step {latest}" if latest is not None
          else "no checkpoint has been written yet")
