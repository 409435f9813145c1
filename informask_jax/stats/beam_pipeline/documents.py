"""Documents, on the workers: one shard's raw texts (the readers of `corpus`, through Beam's file
systems), their cleaning, and the local builder's hash split, which decides what is counted."""

from __future__ import annotations

import json
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
      for batch in reader.iter_batches(columns=[text_field], batch_size=4096):
        yield from batch.column(0).to_pylist()
    else:  # JSON Lines: one object per line.
      for number, line in enumerate(iter(f.readline, b""), 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}, line {number}: not JSON Lines (one object per line): {e}. "
                           "The Beam pipeline reads .json files as JSON Lines; a JSON array "
                           "is read by the local builder only.") from None
        if not isinstance(record, dict) or text_field not in record:
          fields = sorted(record) if isinstance(record, dict) else type(record).__name__
          raise ValueError(f"{path}, line {number}: no field {text_field!r} (text_field); "
                           f"fields are {fields}. {_NAME_THE_FIELD}")
        yield record[text_field]


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
