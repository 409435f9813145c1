"""Builds the statistics of a config's corpus into its cache directory (the only module that
knows about configs and the input pipeline; the counters take plain arrays)."""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import time

import numpy as np
import scipy.sparse as sp
from absl import logging

from informask_jax import paths
from informask_jax.stats import artifacts as art
from informask_jax.stats import chunks as chunks_lib
from informask_jax.stats import counting, ngrams, rates
from informask_jax.stats import pmi as pmi_lib

# config.stats keys that cannot change a result (memory_cap_mb only decides when partial counts
# spill to disk), so they stay out of the cache key.
_NOT_IN_KEY = ("memory_cap_mb",)


def stats_params(config) -> dict:
  """Every setting the artifacts depend on: config.stats, and what the rate stage runs with."""
  from informask_jax import data  # Imports JAX: kept out of the counting processes' imports.

  s = config.stats
  params = {k: s[k] for k in sorted(s.keys()) if k not in _NOT_IN_KEY}
  params.update(mask_prob=float(config.masking.mask_prob),
                num_candidates=int(config.masking.num_candidates),
                seq_len=int(config.data.seq_len), packing=str(config.data.packing),
                seed=int(config.train.seed), tokenized_format=data.TOKENIZED_FORMAT,
                rates_method=rates.METHOD)
  return params


# The stages whose files each strategy's masker reads; their inputs (art.STAGE_DEPS) are built
# first, but once these are built and intact the run needs nothing else from the directory.
_READS = {"informask": ("rates",), "informask_online": ("pmi",), "pmi_span": ("ngrams",)}


def stages_read(masking_config) -> tuple[str, ...]:
  """The statistics stages whose files a run with this `config.masking` loads: none for a
  strategy without tables, nor for informask given its own table (masking.rates_path)."""
  if masking_config.name == "informask" and masking_config.get("rates_path"):
    return ()
  return _READS.get(masking_config.name, ())


def stages_needed(masking_config) -> tuple[str, ...]:
  """The statistics stages a run with this `config.masking` builds (or reuses): those it reads
  and those they are computed from."""
  return art.with_deps(stages_read(masking_config))


def check_config(config, stages=None) -> None:
  """Rejects bad statistics settings before anything is read or counted. `stages`: those to be
  built (default: the ones config.masking needs)."""
  s = config.stats
  for key in sorted(s.keys()):  # inf passes the bounds below and fails far later, misleadingly.
    if isinstance(s[key], float) and not math.isfinite(s[key]):
      raise ValueError(f"config.stats.{key}={s[key]!r} must be a finite number.")
  checks = [
      # Checked here, not only by the PMI stage, which meets it after counting the corpus.
      ("pmi_vocab_size", s.pmi_vocab_size >= 2, "must be >= 2 (a PMI table pairs two tokens)"),
      ("min_count", s.min_count >= 1, "must be >= 1"),
      ("min_pair_count", s.min_pair_count >= 1, "must be >= 1"),
      ("window", s.window >= 0, "must be >= 0 (0: whole sentences)"),
      ("drop_top_k", s.drop_top_k >= 0, "must be >= 0"),
      ("context_alpha", s.context_alpha > 0, "must be > 0"),
      ("ngram_vocab_size", s.ngram_vocab_size >= 1, "must be >= 1"),
      ("ngram_min_count", s.ngram_min_count >= 1, "must be >= 1"),
      ("rate_smoothing", s.rate_smoothing >= 0, "must be >= 0"),
      # 0 scores every row (bench/RESULTS.md's runs use it); below 0 is a typo, not "all".
      ("rate_sample_sequences", s.rate_sample_sequences >= 0, "must be >= 0 (0: every row)"),
      ("memory_cap_mb", s.memory_cap_mb > 0, "must be > 0"),
  ]
  for key, ok, why in checks:
    if not ok:
      raise ValueError(f"config.stats.{key}={s[key]!r} {why}.")
  if not 0 < config.masking.mask_prob < 1:
    raise ValueError(f"config.masking.mask_prob={config.masking.mask_prob!r} must be in (0, 1).")
  if config.masking.num_candidates < 1:
    raise ValueError(f"config.masking.num_candidates={config.masking.num_candidates!r} must be "
                     ">= 1.")
  if "rates" in (stages_needed(config.masking) if stages is None else stages):
    # The rate stage scores candidates with the online masker at K = num_candidates, whose
    # bound it would otherwise meet only after the counts and the PMI table were built.
    from informask_jax.masking import online  # JAX: kept out of the counting processes.
    try:
      online.check_num_candidates(config.masking.num_candidates, config.data.seq_len)
    except ValueError as e:
      raise ValueError(f"config.masking.num_candidates={config.masking.num_candidates!r} "
                       f"(the K with which the statistics compute informask's rates, over "
                       f"config.data.seq_len={config.data.seq_len} tokens): {e}") \
          from None


def _vocab_size(pipeline) -> int:
  return int(np.asarray(pipeline.continuation).shape[0])


def artifact_dir(config, pipeline) -> pathlib.Path:
  """<config.data.cache_dir>/stats/<hash of corpus, tokenizer and statistics settings>."""
  key = art.cache_key(pipeline.corpus_fingerprint, pipeline.tokenizer_fingerprint,
                      stats_params(config))
  return pathlib.Path(paths.cache_dir(config.data.cache_dir)) / "stats" / key


def fresh_meta(config, pipeline, directory) -> dict:
  """meta.json of statistics not built yet: what they are built from, no counts or files."""
  sid = pipeline.special_ids
  return {
      "format_version": art.FORMAT_VERSION,
      "key": directory.name,
      "params": stats_params(config),
      "corpus_fingerprint": pipeline.corpus_fingerprint,
      "tokenizer_fingerprint": pipeline.tokenizer_fingerprint,
      "tokenizer_name_or_path": str(config.tokenizer.name_or_path),
      "vocab_size": _vocab_size(pipeline),
      "special_ids": {k: int(getattr(sid, k)) for k in ("pad", "unk", "cls", "sep", "mask")},
      "counts": {},
      "seconds": {},
      "files": {},
  }


def _open_meta(config, pipeline, directory: pathlib.Path) -> dict:
  """The directory's metadata, or a fresh one when it has none or an unreadable one."""
  meta, problem = _usable_meta(config, pipeline, directory)
  if meta is None:
    if problem:  # Said here: every stage then reads as "not built".
      logging.warning("%s; building every stage afresh.", problem)
    return fresh_meta(config, pipeline, directory)
  return meta


def _usable_meta(config, pipeline, directory: pathlib.Path):
  """(the directory's metadata, "") where it is usable, else (None, what is wrong with it, ""
  when it has none). Refuses metadata of another tokenizer (check_compatible)."""
  try:
    meta = art.read_meta(directory)
  except FileNotFoundError:
    return None, ""
  except art.CorruptArtifactError as e:
    return None, str(e)
  missing = set(fresh_meta(config, pipeline, directory)) - set(meta)
  if missing:  # A field every build writes is gone: damaged, start over (a stage reading
    # meta["seconds"] would end in a KeyError).
    return None, f"{directory / art.META} lacks {', '.join(sorted(missing))}"
  art.check_compatible(meta, directory, tokenizer_fingerprint=pipeline.tokenizer_fingerprint,
                       vocab_size=_vocab_size(pipeline))
  return meta, ""


def _special_tuple(pipeline) -> tuple[int, ...]:
  s = pipeline.special_ids
  return (int(s.pad), int(s.unk), int(s.cls), int(s.sep), int(s.mask))


STREAMING = ("Corpus statistics need the tokenized corpus in memory or on disk; a streaming "
              "source ({where}) has none. Set streaming=False for the sources, or, for informask "
              "only, give a rate table built from a non-streaming copy as masking.rates_path.")


def _corpus(pipeline):
  if pipeline.tokenized_train is None:
    raise ValueError(STREAMING.format(where="config.data.sources[*].streaming=True"))
  return chunks_lib.as_corpus(pipeline.tokenized_train)


def _stage_counts(config, pipeline, directory, meta, state, progress):
  uni = counting.count_unigrams(_corpus(pipeline), _vocab_size(pipeline), progress=progress)
  if uni.num_tokens == 0:
    raise ValueError("The tokenized training corpus holds no tokens: nothing to count.")
  art.save_npy(directory / "unigram_counts.npy", uni.counts)
  meta["counts"].update(num_tokens=uni.num_tokens, num_sentences=uni.num_sentences,
                        num_documents=uni.num_documents)
  state["unigram_counts"] = uni.counts


def _stage_pmi(config, pipeline, directory, meta, state, progress):
  s = config.stats
  unigram = state["unigram_counts"]
  vocab_ids = counting.select_pmi_vocab(unigram, special_ids=_special_tuple(pipeline),
                                        size=s.pmi_vocab_size, min_count=s.min_count,
                                        drop_top_k=s.drop_top_k)
  if vocab_ids.size < 2:
    raise ValueError(counting.too_few_pmi_tokens(
        unigram, special_ids=_special_tuple(pipeline), min_count=s.min_count,
        drop_top_k=s.drop_top_k, kept=vocab_ids.size))
  pairs = counting.count_pairs(
      _corpus(pipeline), vocab_ids, vocab_size=_vocab_size(pipeline), window=s.window,
      whole_words=s.whole_words, continuation=pipeline.continuation,
      min_pair_count=s.min_pair_count, memory_cap_mb=s.memory_cap_mb,
      num_workers=config.data.num_proc, spill_dir=str(directory), progress=progress)
  table = pmi_lib.pmi_table(pairs, vocab_size=_vocab_size(pipeline),
                            context_alpha=s.context_alpha, positive_only=s.positive_only)
  if table.nnz == 0:
    raise ValueError("Every pair that passed config.stats.min_pair_count has PMI <= 0, so the "
                     "PPMI table is empty; the corpus is too small or too uniform.")
  art.save_npz(directory / "pmi.npz", table)
  meta["counts"].update(pmi_vocab_size=int(vocab_ids.size), num_pairs=int(pairs.total),
                        pairs_kept=int(pairs.counts.nnz), pmi_nnz=int(table.nnz),
                        pmi_max=float(table.data.max()), pmi_mean=float(table.data.mean()))
  state["pmi"] = table


def _stage_rates(config, pipeline, directory, meta, state, progress):
  from informask_jax import masking  # JAX: only this stage needs it.

  if pipeline.train is None:
    raise ValueError("Masking rates need the packed training rows in memory (not streaming).")
  s = config.stats
  specials = _special_tuple(pipeline)
  v = _vocab_size(pipeline)
  masker = masking.get_masker(
      "informask_online", vocab_size=v, mask_id=int(pipeline.special_ids.mask),
      special_ids=specials, mask_prob=float(config.masking.mask_prob), budget="exact",
      pmi=state["pmi"], num_candidates=int(config.masking.num_candidates))
  token_ids = pipeline.train["token_ids"]
  rows = rates.sample_rows(token_ids.shape[0], int(s.rate_sample_sequences), config.train.seed)
  if s.rate_sample_sequences > rows.size:  # 0 means every row, as said in the config.
    logging.info("stats.rate_sample_sequences=%d is more than the corpus's %d training rows: "
                 "the rates score all of them.", s.rate_sample_sequences, rows.size)
  chosen, seen = rates.count_choices(
      masker, token_ids[rows], pipeline.train["sentence_ids"][rows], vocab_size=v,
      special_ids=specials, pad_id=int(pipeline.special_ids.pad), seed=config.train.seed,
      progress=progress)
  has_pmi = np.diff(state["pmi"].tocsr().indptr) > 0  # (V,) tokens with a PMI entry
  table = rates.finalize_rates(chosen, seen, unigram_counts=state["unigram_counts"],
                               special_ids=specials, mask_prob=float(config.masking.mask_prob),
                               smoothing=float(s.rate_smoothing), measured=has_pmi)
  art.save_npy(directory / "rates.npy", table)
  rates.write_id_mask_prob(table, str(directory / "id_mask_prob.json"))
  meta["counts"].update(
      rate_sequences=int(rows.size), rate_tokens_seen=int(seen.sum()),
      rate_targets=int(chosen.sum()), rate_sample_fraction=float(chosen.sum() / seen.sum()),
      rate_expected_fraction=rates.expected_fraction(table, state["unigram_counts"], specials))


def _stage_ngrams(config, pipeline, directory, meta, state, progress):
  s = config.stats
  vocab = ngrams.build_ngram_vocab(
      _corpus(pipeline), vocab_size=_vocab_size(pipeline), special_ids=_special_tuple(pipeline),
      continuation=pipeline.continuation, size=int(s.ngram_vocab_size),
      min_count=int(s.ngram_min_count), memory_cap_mb=s.memory_cap_mb,
      num_workers=config.data.num_proc, spill_dir=str(directory), progress=progress)
  art.save_json(directory / "pmi_ngrams.json", vocab.ngrams)
  art.save_json(directory / "pmi_bigrams.json", vocab.bigrams.tolist())
  per_length = {str(n): int(np.sum(vocab.lengths == n)) for n in range(2, ngrams.MAX_N + 1)}
  meta["counts"].update(ngrams=len(vocab.ngrams), ngrams_per_length=per_length,
                        bigrams=int(vocab.bigrams.shape[0]))


_STAGE_FNS = {"counts": _stage_counts, "pmi": _stage_pmi, "rates": _stage_rates,
              "ngrams": _stage_ngrams}


def _load_state(directory, meta, stages) -> dict:
  """Loads the verified outputs of stages that later stages read."""
  state = {}
  if "counts" in stages:
    state["unigram_counts"] = np.load(directory / "unigram_counts.npy")
  if "pmi" in stages:
    state["pmi"] = sp.load_npz(directory / "pmi.npz").tocsr()
  return state


def _write_vocab(directory, meta, pipeline):
  tokens = pipeline.tokenizer.convert_ids_to_tokens(list(range(_vocab_size(pipeline))))
  text = "".join(f"{t if t is not None else ''}\n" for t in tokens)

  def write(tmp):
    pathlib.Path(tmp).write_text(text, encoding="utf-8")
  art.atomic_write(directory / art.VOCAB, write)
  art.record_file(directory, meta, art.VOCAB)


# The parameters each reusable stage's output depends on (besides corpus and tokenizer). The
# rates depend on every parameter (seed, mask_prob, K, packing...) and are never reused.
_STAGE_PARAMS = {
    "counts": ("tokenized_format",),
    "pmi": ("tokenized_format", "pmi_vocab_size", "min_count", "min_pair_count", "window",
            "drop_top_k", "whole_words", "context_alpha", "positive_only"),
    "ngrams": ("tokenized_format", "ngram_vocab_size", "ngram_min_count"),
}
_STAGE_COUNTS = {
    "counts": ("num_tokens", "num_sentences", "num_documents"),
    "pmi": ("pmi_vocab_size", "num_pairs", "pairs_kept", "pmi_nnz", "pmi_max", "pmi_mean"),
    "ngrams": ("ngrams", "ngrams_per_length", "bigrams"),
}


def _reuse_stage(stage: str, directory: pathlib.Path, meta: dict) -> pathlib.Path | None:
  """Takes `stage`'s verified files from a sibling statistics directory of the same corpus and
  tokenizer built with the same parameters for that stage (another seed or mask_prob changes
  only the rates): counting a large corpus again would take hours for identical files."""
  keys = _STAGE_PARAMS.get(stage)
  if keys is None or not directory.parent.is_dir():
    return None
  for other in sorted(directory.parent.iterdir()):
    if other == directory or not other.is_dir():
      continue
    try:
      theirs = art.read_meta(other)
    except (FileNotFoundError, art.CorruptArtifactError):
      continue
    same = all(theirs.get(k) == meta.get(k) for k in
               ("format_version", "corpus_fingerprint", "tokenizer_fingerprint", "vocab_size"))
    if not same or any(theirs.get("params", {}).get(k, object()) != meta["params"].get(k)
                       for k in keys):
      continue
    if not art.stage_ok(other, theirs, stage):
      continue
    for name in art.STAGE_FILES[stage]:
      art.atomic_write(directory / name, lambda tmp, src=other / name: _link_or_copy(src, tmp))
      meta["files"][name] = dict(theirs["files"][name])
    meta["counts"].update({k: theirs["counts"][k] for k in _STAGE_COUNTS[stage]
                           if k in theirs.get("counts", {})})
    return other
  return None


def _link_or_copy(source: pathlib.Path, target: str) -> None:
  """A hard link where the file system has them: a seed sweep otherwise held a copy of the same
  PMI table (gigabytes at scale) per seed. Safe, as no statistics file is ever written in place:
  a rebuild renames a new file over the name, which leaves the other directory's intact."""
  try:
    os.link(source, target)
  except OSError:
    shutil.copyfile(source, target)


def _check_writable(config, directory: pathlib.Path) -> None:
  """Refuses a statistics directory that cannot be written (a read-only mount) before any stage
  runs: a stage (hours at paper scale) otherwise ran in full and failed only when it saved."""
  try:
    paths.check_writable_dir(directory, "Statistics directory")
  except (PermissionError, FileExistsError) as e:
    raise type(e)(f"{e} Statistics are written under config.data.cache_dir "
                  f"({paths.cache_dir(config.data.cache_dir)}): fix its permissions, or set "
                  "--config.data.cache_dir to a folder you can write.") from None


def _one_builder(directory: pathlib.Path):
  """One builder at a time for a statistics directory. Runs of other strategies share it (its key
  is of the corpus, tokenizer and settings, not the strategy): started together, each kept its
  own meta.json and the last to write it dropped the stages the others had built, which their
  next run built again (hours at scale). A waiting builder then reads the meta.json the first
  wrote, and builds only what is still missing."""
  return paths.one_builder(directory.parent.parent, directory, logging)


def _run(config, pipeline, directory: pathlib.Path, meta: dict, todo, progress: bool,
         reuse: bool = True) -> None:
  if todo:  # Only then: statistics built and intact are read from a read-only cache as well.
    _check_writable(config, directory)
  directory.mkdir(parents=True, exist_ok=True)
  if todo:  # Before this build's own spills appear there.
    paths.warn_leftover_folders(directory, (counting.PAIRS_SPILL_PREFIX,
                                            ngrams.NGRAMS_SPILL_PREFIX),
                                "interrupted statistics builds", logging)
  done = [s for s in art.STAGES if s not in todo and art.stage_ok(directory, meta, s)]
  state = _load_state(directory, meta, done)
  if art.VOCAB not in meta["files"] or art.verify_files(directory, meta, [art.VOCAB]):
    try:
      _write_vocab(directory, meta, pipeline)
    except Exception as e:  # noqa: BLE001 - a report nicety, never a reason to fail a build
      logging.warning("Could not write %s for reports: %s", art.VOCAB, e)
  with paths.naming_full_disk("statistics to", directory):
    _run_stages(config, pipeline, directory, meta, todo, progress, reuse, state)


def _run_stages(config, pipeline, directory, meta, todo, progress, reuse, state) -> None:
  # Every stage to build is unlisted on disk before the first runs: a half-rebuilt one must not
  # look valid, nor, after an interrupted --force, one that build never reached (the advised
  # rerun without --force found it intact and rebuilt nothing).
  if todo:
    for name in (n for stage in todo for n in art.STAGE_FILES[stage]):
      meta["files"].pop(name, None)
    art.write_meta(directory, meta)
  for stage in todo:
    t0 = time.perf_counter()
    source = _reuse_stage(stage, directory, meta) if reuse else None
    if source is not None:
      state.update(_load_state(directory, meta, [stage]))
      art.write_meta(directory, meta)
      logging.info("Statistics: %r taken from %s (same corpus, tokenizer and %s settings).",
                   stage, source, stage)
      continue
    logging.info("Statistics: building %r into %s", stage, directory)
    _STAGE_FNS[stage](config, pipeline, directory, meta, state, progress)
    for name in art.STAGE_FILES[stage]:
      art.record_file(directory, meta, name)
    meta["seconds"][stage] = round(time.perf_counter() - t0, 3)
    art.write_meta(directory, meta)  # After every stage: finished work survives a crash.
    logging.info("Statistics: %r done in %.1f s", stage, meta["seconds"][stage])


def build_artifacts(config, pipeline=None, *, what=art.STAGES, force: bool = False,
                    progress: bool = True) -> pathlib.Path:
  """Builds the stages in `what` and any stage they read, skipping those already built and
  intact unless `force` (then the stages in `what` are rebuilt); returns the directory.

  pipeline: the config's InputPipeline (built from the config when None).
  """
  what = tuple(what)
  if not what:  # Nothing to build, yet the log would call the directory built and intact.
    raise ValueError(f"what= names no statistics stage; choose from {art.STAGES}.")
  # The stages built, not the training strategy's: a K too large for the rates fails before
  # hours of counting, and a build of n-grams only is not refused over a K it never uses.
  check_config(config, art.with_deps(what))  # (with_deps validates the names first.)
  # Every stage reads the tokenized corpus, which a stream never holds: refused before the
  # pipeline trains a tokenizer and reads the stream (minutes on a large corpus) for nothing.
  streaming = [i for i, src in enumerate(config.data.sources) if src.get("streaming")]
  if streaming:
    raise ValueError(STREAMING.format(where=f"config.data.sources[{streaming[0]}].streaming=True"))
  if pipeline is None:
    from informask_jax import data
    pipeline = data.build_input_pipeline(config)
  directory = artifact_dir(config, pipeline)
  with _one_builder(directory):
    meta = _open_meta(config, pipeline, directory)
    todo = [s for s in art.with_deps(what)
            if (force and s in what) or not art.stage_ok(directory, meta, s)]
    if not todo:
      logging.info("Statistics in %s are built and intact (--force rebuilds them).", directory)
    _run(config, pipeline, directory, meta, todo, progress, reuse=not force)
  return directory


def ensure_artifacts(config, pipeline, need, *, progress: bool = True) -> pathlib.Path:
  """Builds whatever of `need` is missing or fails its checksum, with what it is computed from;
  returns the directory once every stage of `need` verifies.

  The inputs of a stage built and intact are not checked (hashed, at scale gigabytes): a run
  that reads only the rates must not stop over, or rebuild, a damaged PMI table.
  """
  need = art.stage_names(need)
  check_config(config, art.with_deps(need))
  directory = artifact_dir(config, pipeline)
  if _built(config, pipeline, directory, need):
    return directory
  with _one_builder(directory):
    _ensure(config, pipeline, directory, need, progress)
  return directory


def _built(config, pipeline, directory: pathlib.Path, need) -> bool:
  """Whether every stage of `need` is built and intact, looked at without the builder's lock: a
  run whose stages were all there waited for another run building other stages into the
  directory (`stats build --what=ngrams`, hours at scale), and the processes of a multi-host run
  checked the same checksums one after another. meta.json and the files are replaced by renames,
  so what is read here is whole; anything else is for _ensure, under the lock, to find and say."""
  meta, _ = _usable_meta(config, pipeline, directory)
  return meta is not None and all(art.stage_ok(directory, meta, stage) for stage in need)


def _ensure(config, pipeline, directory, need, progress) -> None:
  meta = _open_meta(config, pipeline, directory)
  todo, checked = set(), set()

  def check(stage):
    if stage in checked:
      return
    checked.add(stage)
    problems = art.verify_files(directory, meta, art.STAGE_FILES[stage])
    if problems:
      if any("not built" not in p for p in problems):
        logging.warning("Statistics in %s: %s; rebuilding %r.", directory, "; ".join(problems),
                        stage)
      todo.add(stage)
      for dep in art.STAGE_DEPS[stage]:  # Read by the rebuild: they must be intact too.
        check(dep)

  for stage in need:
    check(stage)
  if todo:
    _run(config, pipeline, directory, meta, [s for s in art.STAGES if s in todo], progress)
    problems = [p for s in need for p in art.verify_files(directory, meta, art.STAGE_FILES[s])]
    if problems:
      raise art.CorruptArtifactError(f"Statistics in {directory} still fail after a rebuild: "
                                     + "; ".join(problems))
