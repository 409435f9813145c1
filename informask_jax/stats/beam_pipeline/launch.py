"""Launching, on the launcher: the config checks that fail before anything runs, the list of
shards, what is decided once (tokenizer, fingerprints, metadata, and the output directory: the
config's statistics cache unless --output names one), and `run`, which builds the pipeline and
runs it to the end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import types

import numpy as np

from informask_jax import paths
from informask_jax.stats import artifacts as art
from informask_jax.stats import build as build_lib
from informask_jax.stats.beam_pipeline.documents import SUFFIXES
from informask_jax.stats.beam_pipeline.graph import build_pipeline
from informask_jax.stats.beam_pipeline.settings import BEAM_STAGES, Settings
from informask_jax.stats.beam_pipeline.writing import _Write

log = logging.getLogger(__name__)

try:  # Optional dependency: `pip install -e ".[beam]"`.
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  beam = FileSystems = None


class MissingBeamError(ImportError):
  """apache-beam is not installed: the command line says so in one line."""


def _require_beam():
  if beam is None:
    raise MissingBeamError("The Beam pipeline needs apache-beam: pip install -e \".[beam]\" in "
                           "the checkout, or pip install 'apache-beam>=2.60'.")


# This command's own flags (beam_pipeline/__main__.py): suggested for a mistyped one.
COMMAND_FLAGS = ("--config", "--output", "--files", "--text_field", "--what", "--pair_blocks",
                 "--ngram_partitions")


def check_beam_args(beam_args) -> None:
  """Refuses arguments that are neither this command's flags nor Beam pipeline options. Beam only
  logs them and runs on: a mistyped --ouput wrote into the cache, and an unquoted --files glob
  the shell expanded read its first file only (the others were stray words) and exited 0."""
  import difflib

  from apache_beam.options import pipeline_options as po

  # What PipelineOptions.get_all_options parses with (Beam's parser, private, for its
  # value-provider arguments): every options class Beam defines.
  parser = po._BeamArgumentParser(allow_abbrev=False)
  for cls in {str(c): c for c in po.PipelineOptions.__subclasses__()}.values():
    cls._add_argparse_args(parser)
  _, unknown = parser.parse_known_args(list(beam_args))
  if not unknown:
    return
  known = [o for a in parser._actions for o in a.option_strings] + list(COMMAND_FLAGS)
  arg = unknown[0]
  if not arg.startswith("-"):
    raise ValueError(
        f"Unexpected argument {arg!r}: this command takes flags only. If the shell expanded an "
        "unquoted pattern after --files, quote it (--files='shards/*.jsonl') or join the files "
        "with commas (--files=a.jsonl,b.jsonl).")
  nearest = difflib.get_close_matches(arg.split("=", 1)[0], known, 1)
  raise ValueError(
      f"Unknown flag {arg.split('=', 1)[0]!r}: neither a flag of this command "
      f"({', '.join(COMMAND_FLAGS)}) nor a Beam pipeline option"
      + (f"; did you mean {nearest[0]!r}?" if nearest else "."))


def check_config(config) -> list[str]:
  """Errors raised before anything runs; returns the file patterns to read."""
  from informask_jax import corpus
  build_lib.check_config(config)
  if int(config.data.get("max_documents", -1)) >= 0:
    raise ValueError(f"config.data.max_documents={config.data.max_documents}: 'the first N "
                     "documents' has no meaning in a parallel pipeline; use -1 and shard the "
                     "input files instead.")
  corpus.check_validation_fraction(config.data.validation_fraction)
  corpus.check_sources(config.data)
  patterns = []
  for i, source in enumerate(config.data.sources):
    if source["kind"] != "files":
      raise ValueError(
          f"config.data.sources[{i}].kind={source['kind']!r}: the Beam pipeline reads files only. "
          "Export the corpus to .txt/.jsonl/.parquet shards and pass them with --files (a hub "
          "dataset's own parquet shards work as they are).")
    patterns.append(source["name"])
  return patterns


def list_files(patterns) -> list[tuple[str, int, float]]:
  """(path, bytes, modification time) of every shard, sorted; local directories are walked as a
  `files` source's (a file system that keeps no modification time gives 0).
  A file that two patterns name is listed (and read) twice, as the local builder reads each
  source: its tables, under the same cache key, count it twice too."""
  from informask_jax import corpus_files

  found = []
  for pattern in patterns:
    where = f"input {pattern!r}"
    if "://" not in pattern:
      found += [(f, os.path.getsize(f), os.path.getmtime(f))
                for f in corpus_files.expand_files(pattern, where)]
      continue
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
      raise FileNotFoundError(f"{where}: no file matches.")
    found += [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in matches]
  bad = [f for f, *_ in found if os.path.splitext(f)[1].lower() not in SUFFIXES]
  if bad:
    raise ValueError(f"{bad[0]}: unsupported suffix; the Beam pipeline reads "
                     f"{', '.join(SUFFIXES)}.")
  return sorted(found)


def _with_files(config, files, text_field):
  """A copy of the config whose sources are `files` (and whose text fields are `text_field`).
  The files keep the config's text field unless `text_field` is given: an error about a missing
  field names the config key (config.data.sources[0].text_field), which must then take effect
  (with "text" fixed here, following that advice gave the same error again)."""
  import ml_collections

  config = ml_collections.ConfigDict(config.to_dict())
  sources = [dict(s) for s in config.data.sources]
  if files:
    field = text_field or _text_field(config)
    sources = [dict(kind="files", name=f, config=None, split="train", text_field=field,
                    streaming=False) for f in files]
  if text_field:
    for s in sources:
      s["text_field"] = text_field
  config.data.sources = [ml_collections.ConfigDict(s) for s in sources]
  return config


def _launch_state(config, patterns, output):
  """Tokenizer, fingerprints, metadata and the output directory, decided on the launcher."""
  from informask_jax import corpus, data, tokenization

  listed = list_files(patterns)
  cache_dir = paths.cache_dir(config.data.cache_dir)
  loaded, split_fps = None, {}
  if not output:
    if any("://" in f for f, *_ in listed):
      raise ValueError("Remote inputs need --output: the statistics cache is keyed by a "
                       "fingerprint of the corpus read in order, which the launcher cannot read.")
    loaded = corpus.load_corpus(config.data)
    split_fps = {name: corpus.corpus_fingerprint(loaded[name]) for name in loaded}
    corpus_fp = corpus.combine_fingerprints(split_fps)
  else:
    # Names, sizes and modification times of the shards: cheap, and it changes whenever the
    # input does (a shard edited in place at the same size too, whose old tables a partial
    # rerun into the same --output would otherwise keep as this corpus's), and the cleaning's
    # version, which draws the validation split the counts leave out.
    blob = json.dumps([listed, corpus.CLEANING_VERSION])
    corpus_fp = "files-" + hashlib.sha256(blob.encode()).hexdigest()[:26]
    if not config.tokenizer.name_or_path:
      raise ValueError(
          "config.tokenizer.name_or_path is empty (train a vocabulary on the corpus), but with "
          "--output the launcher does not read the corpus: point it at a tokenizer, e.g. a "
          "training run's <workdir>/tokenizer or bert-base-uncased.")
  tokenizer = tokenization.load_tokenizer(config.tokenizer, loaded, cache_dir,
                                          train_fingerprint=split_fps.get("train"))
  continuation = np.asarray(tokenization.continuation_table(tokenizer), bool)
  ids = tokenization.special_ids(tokenizer)
  like = types.SimpleNamespace(  # What the local builder reads from an InputPipeline.
      corpus_fingerprint=corpus_fp, special_ids=ids, continuation=continuation,
      tokenizer_fingerprint=tokenization.tokenizer_fingerprint(tokenizer))
  output = output or str(build_lib.artifact_dir(config, like))
  key = art.cache_key(corpus_fp, like.tokenizer_fingerprint, build_lib.stats_params(config))
  meta = build_lib.fresh_meta(config, like, pathlib.PurePath(key))
  settings = Settings(
      vocab_size=int(continuation.shape[0]), special_ids=tuple(int(i) for i in ids),
      continuation=continuation, text_field=_text_field(config),
      validation_fraction=float(config.data.validation_fraction), stats=config.stats.to_dict())
  tokens = tokenizer.convert_ids_to_tokens(list(range(settings.vocab_size)))
  vocab_text = "".join(f"{t if t is not None else ''}\n" for t in tokens)
  tokenizer_json = data.plain_backend(tokenizer).to_str()
  return [f for f, *_ in listed], settings, tokenizer_json, meta, vocab_text, output


def check_output(output: str) -> None:
  """Refuses an output directory the Write step (the pipeline's last) could not write: a file
  system Beam has no support installed for (gs:// without apache-beam[gcp]), a file, a
  read-only folder, missing credentials. They failed there, after all the counting, in a
  traceback of Beam's wrapped error."""
  if "://" not in output:
    paths.check_writable_dir(os.path.expanduser(output), "--output")
    return
  try:
    FileSystems.get_filesystem(output)
  except ValueError as e:
    raise ValueError(f"--output={output}: {e}") from None
  probe = FileSystems.join(output, f".write-check-{os.getpid()}")
  try:
    with FileSystems.create(probe) as f:
      f.write(b"")
    FileSystems.delete([probe])
  except Exception as e:  # The file system's own errors: BeamIOError, an auth library's...
    raise PermissionError(f"--output={output} cannot be written: creating {probe} failed "
                          f"({type(e).__name__}: {_first_line(e)}).") from None


def _first_line(error) -> str:
  """The first line of an error's message (Beam's run to pages of wrapped context)."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _text_field(config) -> str:
  fields = {s.get("text_field") or "text" for s in config.data.sources}
  if len(fields) > 1:
    raise ValueError(f"config.data.sources name different text fields {sorted(fields)}; the Beam "
                     "pipeline reads one (--text_field).")
  return fields.pop()


def run(config, *, output: str | None = None, files=None, text_field: str | None = None,
        what=BEAM_STAGES, beam_args=(), pair_blocks: int = 32, ngram_partitions: int = 32,
        batch_chars: int = 4 << 20) -> str:
  """Builds the statistics with Beam; returns the output directory.

  config: a full experiment config (its data, tokenizer, masking and stats sections are read).
  output: a directory, local or a Beam file system URL; None: the config's statistics cache
    (local sources only), where train.py finds them.
  files, text_field: file patterns and the record field replacing those of config.data.sources.
  beam_args: pipeline options, e.g. ["--runner=DataflowRunner", "--project=P", ...].
  """
  _require_beam()
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

  check_beam_args(beam_args)
  what = tuple(what)
  if not what or set(what) - set(BEAM_STAGES):
    raise ValueError(f"what={what}: choose stages from {BEAM_STAGES} (the rate stage runs the JAX "
                     "masker: python -m informask_jax.stats build --what=rates).")
  for name, value in (("pair_blocks", pair_blocks), ("ngram_partitions", ngram_partitions),
                      ("batch_chars", batch_chars)):
    if value < 1:
      raise ValueError(f"{name}={value} must be >= 1.")
  if files or text_field:
    config = _with_files(config, files, text_field)
  patterns = check_config(config)
  given = output
  if given:  # Before the corpus and tokenizer are read; the cache directory once it is known.
    check_output(given)
  try:
    shards, settings, tokenizer_json, meta, vocab_text, output = _launch_state(
        config, patterns, output)
  except ValueError as e:
    if not text_field:
      raise
    # The corpus reader's advice names the config key, which --text_field overrides: following
    # it gave the same error again.
    raise ValueError(re.sub(r"--config\.data\.sources\[\d+\]\.text_field=", "--text_field=",
                            str(e))) from None
  if not given:
    check_output(output)
  settings = dataclasses.replace(settings, pair_blocks=pair_blocks,
                                 ngram_partitions=ngram_partitions, batch_chars=batch_chars)
  options = PipelineOptions(list(beam_args))
  if options.view_as(StandardOptions).runner is None:
    # The local batch runner, named: Beam's default, the DirectRunner, first tries its Prism
    # runner, which it downloads from GitHub (offline: a failure in the log, then a fallback).
    options.view_as(StandardOptions).runner = "FnApiRunner"
  if str(options.view_as(StandardOptions).runner) in ("FnApiRunner", "DirectRunner"):
    # One hand-timed run on 10.3M tokens (2-core dev machine, not a bench/ record): 6 min and
    # 7.2 GB here, 1 min and 1.6 GB with `stats build`.
    log.warning("Beam's local runner holds every merge in this process's memory "
                "(stats.memory_cap_mb does not apply under Beam) and is several times slower than "
                "`python -m informask_jax.stats build` on one machine; it is meant for checks, "
                "and clusters for corpora that one machine cannot count.")
  meta["built_with"] = {"apache_beam": beam.__version__,
                        "runner": str(options.view_as(StandardOptions).runner),
                        "shards": len(shards)}
  with beam.Pipeline(options=options) as p:
    results = build_pipeline(p, shards, settings, tokenizer_json, what=what)
    names = sorted(results)
    _ = (p | "Once" >> beam.Create([None])
         | "Write" >> beam.ParDo(_Write(output, meta, vocab_text, names),
                                 *[beam.pvalue.AsSingleton(results[n]) for n in names]))
  return output
