"""Documents, on the workers: one shard's raw texts (the readers of `corpus`, through Beam's file
systems), their cleaning, and the local builder's hash split, which decides what is counted."""

from __future__ import annotations

import os

try:  # Optional dependency: `pip install -e ".[beam]"`.
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  CompressionTypes = FileSystems = None

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


# Inside the pipeline the field comes from the launcher's flag (or the config it was given).
_NAME_THE_FIELD = "Name the text's field with --text_field=FIELD."


def read_documents(path: str, text_field: str, opener=None):
  """Yields the raw text of each document of one shard (.txt, .jsonl/.json lines, .parquet)."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise ValueError(f"{path}: unsupported suffix; the Beam pipeline reads {', '.join(SUFFIXES)}.")
  opener = opener or (lambda p: FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED))
  with opener(path) as f:
    if suffix == ".txt":
      from informask_jax import corpus_files

      yield from map("".join, corpus_files.txt_documents(iter(f.readline, b"")))
    elif suffix == ".parquet":
      import pyarrow.parquet as pq

      reader = pq.ParquetFile(f)
      if text_field not in reader.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (text_field); columns are "
                         f"{reader.schema_arrow.names}. {_NAME_THE_FIELD}")
      row = 0
      for batch in reader.iter_batches(columns=[text_field], batch_size=4096):
        texts = batch.column(0).to_pylist()
        for text in texts:
          row += 1
          if not isinstance(text, (str, type(None))):  # Else `_clean` fails naming no file.
            raise ValueError(f"{path}, row {row}: a document's text (text_field {text_field!r}) "
                             f"is {type(text).__name__} {text!r:.60}, not a string. "
                             f"{_NAME_THE_FIELD}")
        yield from texts
    else:  # JSON Lines: one object per line.
      yield from _json_lines_texts(path, text_field, iter(f.readline, b""))


def _json_lines_texts(path, text_field, lines):
  """The texts of a JSON Lines shard, read as the local reader (`corpus_files._read_json`) reads
  them: a record without the field is skipped (None, dropped as empty), and only a file none of
  whose records has it is refused. Refusing the first such record failed a corpus that train.py
  and `stats build` read; bad bytes and non-text values failed without the file or the line."""
  from informask_jax import corpus_files

  present, first_missing = False, None
  for number, line in enumerate(lines, 1):
    record, problem = corpus_files.parse_json_line(line, number)
    if problem:
      raise ValueError(f"{path}, line {number}: not JSON Lines (one object per line): "
                       f"{problem}. The Beam pipeline reads .json files as JSON Lines; a JSON "
                       "array is read by the local builder only.")
    if record is None:  # A blank line.
      continue
    text = record.get(text_field)
    if not isinstance(text, (str, type(None))):
      raise ValueError(f"{path}, line {number}: a document's text (text_field {text_field!r}) "
                       f"is {type(text).__name__} {text!r:.60}, not a string. {_NAME_THE_FIELD}")
    if text_field in record:
      present = True
    elif first_missing is None:
      first_missing = (number, sorted(record))
    yield text
  if first_missing is not None and not present:
    number, fields = first_missing
    raise ValueError(f"{path}, line {number}: no field {text_field!r} (text_field); fields are "
                     f"{fields}. {_NAME_THE_FIELD}")


def _clean(raw):
  """(cleaned text, split bucket) or None for an empty document: `corpus.clean_document`."""
  from informask_jax import corpus

  return corpus.clean_document(raw)


def _is_validation(bucket: float, split, fraction: float) -> bool:
  """The local hash split (`corpus._split`), with its rule for tiny corpora: documents of the
  smallest hash held out if none is, those of the largest trained on if all are."""
  count, num_validation, low, high = split
  held_out = bucket < fraction
  if fraction > 0 and count > 1:
    if num_validation == 0:
      held_out = bucket == low
    if num_validation == count or (num_validation == 0 and low == high):
      held_out = held_out and bucket != high
  return held_out
