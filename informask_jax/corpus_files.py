"""Local corpus files (a `files` source): finding them, reading them into `datasets`, and errors
that name the file and line.

A source names one file, a glob, or a directory walked for .txt / .jsonl / .json / .parquet files.
In a .txt file, documents are separated by blank lines and a line break inside a document marks a
sentence boundary (the BERT pretraining-data format); a file read as one document of
TXT_ONE_DOCUMENT_LINES lines or more is warned about. Bytes that are not UTF-8 are replaced by
U+FFFD and counted in the log. A .jsonl / .json file must be UTF-8 JSON records, one per line or in
one array (read whole: a large one streamed is warned about); the error for one that is not names
its first bad line (or the key its records are nested under). Parquet files of no rows are
skipped. `corpus.load_corpus` cleans and splits what is read here.
"""

import codecs
import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shlex
import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from informask_jax import worker_processes

log = logging.getLogger(__name__)

# Local file suffix -> `datasets` builder; ".txt" is read by our own reader (see `_read_txt`).
FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})  # A source as read.


# The directories whose files of other types this process has reported.
_WARNED_SKIPPED = set()


def saved_to_disk(path) -> bool:
  """A folder that `Dataset.save_to_disk` (or DatasetDict's) wrote, which load_dataset refuses,
  and whose failure was read as a bad line of its JSON files."""
  return os.path.isdir(path) and any(
      os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def _saved_to_disk_error(where, folder):
  hint = (f": give it as a source of kind 'hub' ('--{where.split(' ')[0]}.kind=hub'), which "
          "loads it" if where.startswith("config.") else "")  # Not for Beam's --input.
  return ValueError(f"{where}: directory {folder!r} is a dataset written by save_to_disk, not "
                    f"text files{hint}.")


def _literal(paths):
  """Paths as `datasets` must get them to read those very files: it takes data_files for glob
  patterns, so "shard[1].parquet" read shard1.parquet (a second copy of it in a folder of both)."""
  return [glob.escape(p) for p in paths]


def _each_once(files):
  """Sorted files, each real file once: a folder reached through two links, a file and a link to
  it, or a ** glob through a link to a folder above (which repeats its files at ever longer
  paths, 41 copies of one file before the system stops it) would read the same text again."""
  chosen = {}  # Real file -> the path of fewest parts that reaches it (then the first).
  for f in sorted(files, key=lambda f: (f.count(os.sep), f)):
    chosen.setdefault(os.path.realpath(f), f)
  return sorted(chosen.values())


def expand_files(pattern, where):
  """The sorted files a `files` source names: one file, a glob, or a directory walked for the
  extensions of FILE_BUILDERS. FileNotFoundError, naming `where`, when there are none."""
  path = os.path.expanduser(pattern)
  if os.path.isdir(path):
    files = []
    # Links to folders are followed (shards linked in from scratch storage were left out
    # unseen), each real folder once: a link to a folder above would loop.
    seen = {os.path.realpath(path)}
    for root, folders, names in os.walk(path, followlinks=True):
      if saved_to_disk(root):  # Its JSON files are metadata: they were read as bad records.
        raise _saved_to_disk_error(where, root)
      # Hidden entries, as a glob's `*` skips them: .ipynb_checkpoints/ holds copies of the
      # files beside it, which would be read twice.
      kept = []
      for d in sorted(folders):
        real = os.path.realpath(os.path.join(root, d))
        if not d.startswith(".") and real not in seen:
          seen.add(real)
          kept.append(d)
      folders[:] = kept
      files += [os.path.join(root, f) for f in names if not f.startswith(".")]
    skipped = sorted(f for f in files if os.path.splitext(f)[1].lower() not in FILE_BUILDERS)
    files = [f for f in files if os.path.splitext(f)[1].lower() in FILE_BUILDERS]
    _refuse_broken_links(files, where)
    files = _each_once(files)
    # A compressed shard (.txt.gz) among them would be left out unseen. Once: error messages
    # walk the directory again.
    if skipped and files and path not in _WARNED_SKIPPED:
      _WARNED_SKIPPED.add(path)
      log.warning("%s: directory %r: read %d %s file(s), skipped %d of other types: %s%s.", where,
                  path, len(files), "/".join(FILE_BUILDERS), len(skipped),
                  ", ".join(os.path.relpath(f, path) for f in skipped[:5]),
                  ", ..." if len(skipped) > 5 else "")
    if not files:
      raise FileNotFoundError(f"{where}: directory {path!r} holds no "
                              f"{'/'.join(FILE_BUILDERS)} files.")
    return files
  if glob.has_magic(path) and not os.path.isfile(path):  # "wiki[2023].txt" is a file's name.
    matches = glob.glob(path, recursive=True)
    _refuse_broken_links(matches, where)
    files = _each_once(f for f in matches if os.path.isfile(f))
    if not files:
      raise FileNotFoundError(f"{where}: no file matches {pattern!r}.")
    return files
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}: file {pattern!r} does not exist.")
  return [path]


def _refuse_broken_links(paths, where):
  """A link among a source's files to one that is gone (a shard linked in from scratch storage
  that was purged or is not mounted): a glob left it out unseen, so the run trained on the other
  shards only, and a directory failed on it with an error naming neither the source nor the link."""
  broken = sorted(filter(_is_broken_link, paths))
  if broken:
    more = f" (and {len(broken) - 1} other broken link(s))" if len(broken) > 1 else ""
    raise FileNotFoundError(f"{where}: {broken[0]!r} is a link to {os.readlink(broken[0])!r}, "
                            f"which does not exist{more}. Restore its target, or remove the link.")


def _is_broken_link(path) -> bool:
  """A link whose target does not exist; not one that resolves through too many links (ELOOP: a
  ** glob through a link to a folder above reaches it at ever longer paths, each a copy)."""
  try:
    os.stat(path)
  except FileNotFoundError:
    return os.path.islink(path)
  except OSError:
    return False
  return False


def _is_undecodable(ch) -> bool:
  """A lone surrogate: one byte that `decode("utf-8", errors="surrogateescape")` could not map."""
  return "\udc80" <= ch <= "\udcff"


def _check_text_file(path, where, sample=65536):
  """Refuses a .txt file whose first bytes are not text (a binary file named .txt): a few bad
  bytes in a real corpus become U+FFFD (`_read_txt`), but a tokenizer trained on noise is no use."""
  with open(path, "rb") as f:
    head = f.read(sample)
  bad = sum(map(_is_undecodable, head.decode("utf-8", errors="surrogateescape")))
  nul = b"\x00" in head
  if nul or bad > 0.1 * len(head):
    raise ValueError(f"{where}: {path!r} does not look like UTF-8 text ({bad} of its first "
                     f"{len(head)} bytes are not valid UTF-8{', and it holds NUL bytes' * nul}).")


# The .txt files whose undecodable bytes this process has reported (once each, not per pass).
_WARNED_UNDECODABLE = set()


# Bump when _read_txt reads a file differently: it is part of the read cache's fingerprint.
_TXT_READER = 3
# A line ends at \n, \r\n or a lone \r (old Mac files: read as one line, one document, before).
_CR_LINE = re.compile(r"[^\r]*\r\n?|[^\r]+")


def txt_documents(byte_lines, counts=None):
  """Blank-line separated documents (lists of lines) from a .txt file's raw byte lines: a
  byte-order mark before the first line is dropped, a line ends at \n, \r\n or a lone \r, each
  byte that is not UTF-8 becomes one U+FFFD (counted in `counts["replaced"]`). The one reader of
  .txt files, here and on the Beam workers: their tables must be the same."""
  lines = []
  for number, raw in enumerate(byte_lines):
    if number == 0:  # A byte-order mark (Notepad, PowerShell) is no part of the first line.
      raw = raw.removeprefix(codecs.BOM_UTF8)
    # surrogateescape maps each invalid byte to one lone surrogate, so they can be counted.
    text = raw.decode("utf-8", errors="surrogateescape")
    bad = sum(map(_is_undecodable, text))
    if bad:
      if counts is not None:
        counts["replaced"] = counts.get("replaced", 0) + bad
      text = "".join("\ufffd" if _is_undecodable(ch) else ch for ch in text)
    for line in _CR_LINE.findall(text) if "\r" in text else (text,):
      if line.strip():
        lines.append(line)
      elif lines:
        yield lines
        lines = []
  if lines:
    yield lines


def _read_txt(paths):
  """Yields blank-line separated documents; undecodable bytes become U+FFFD and are counted."""
  for path in paths:
    in_documents = largest = 0  # Lines in documents; those of the longest.
    counts = {}
    with open(path, "rb") as f:
      for lines in txt_documents(f, counts):
        yield {"text": "".join(lines)}
        in_documents, largest = in_documents + len(lines), max(largest, len(lines))
    # Most of the file in one long document (a header or a trailing blank line aside).
    if largest > in_documents / 2:
      _warn_one_document(path, largest)
    replaced = counts.get("replaced", 0)
    if replaced and path not in _WARNED_UNDECODABLE:  # A stream reads its files every epoch.
      _WARNED_UNDECODABLE.add(path)
      log.warning("%s: replaced %d byte(s) that are not valid UTF-8 with U+FFFD.", path, replaced)


# A .txt file read as one document of this many lines or more is most likely one document per
# line (no blank line between them): warned about, as it would train and split as one document.
TXT_ONE_DOCUMENT_LINES = 1000
# The .txt files this process has reported as one long document (once each, not per pass).
_WARNED_ONE_DOCUMENT = set()
# What a .txt file must look like, for messages about corpora of too few documents.
TXT_FORMAT = ("in a .txt file, blank lines separate documents and a line break inside a document "
              "ends a sentence, so a file of one document per line without blank lines is read "
              "as ONE document; put a blank line between documents (e.g. sed G IN.txt > OUT.txt)")


def _warn_one_document(path, num_lines):
  """Once per file: a document of TXT_ONE_DOCUMENT_LINES lines or more."""
  if num_lines >= TXT_ONE_DOCUMENT_LINES and path not in _WARNED_ONE_DOCUMENT:
    _WARNED_ONE_DOCUMENT.add(path)
    log.warning("%s: read as one document of %d lines (no blank line in it): %s.", path,
                num_lines, TXT_FORMAT)


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def parse_json_line(raw, number):
  """(record, None) for line `number` (from 1) of a JSON Lines file, (None, why it is not a
  record) otherwise; (None, None) for a blank line. A byte-order mark opening the file is no part
  of its first record. The Beam pipeline's reader takes lines by the same rules."""
  if number == 1:
    raw = raw.removeprefix(b"\xef\xbb\xbf")
  if not raw.strip():
    return None, None
  try:
    record = json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
  except UnicodeDecodeError as e:
    return None, f"byte {raw[e.start]:#04x} (byte {e.start + 1} of the line) is not valid UTF-8"
  except json.JSONDecodeError as e:
    return None, f"not valid JSON ({e.msg}: column {e.colno})"
  if not isinstance(record, dict):
    return None, (f"a JSON {_JSON_TYPES.get(type(record), 'value')}, not an object; each line "
                  'must be one record such as {"text": "..."}')
  problem = _lone_surrogate_problem(record)
  return (None, problem) if problem else (record, None)


def _lone_surrogate_problem(value):
  """A string escape such as "\\ud800": half of a UTF-16 pair, which Python's json accepts and
  pyarrow refuses ("surrogate pair in string is invalid", with a row counted from 0)."""
  if isinstance(value, dict):
    value = list(value.values())
  if isinstance(value, list):
    return next(filter(None, map(_lone_surrogate_problem, value)), None)
  if isinstance(value, str):
    half = _SURROGATE.search(value)
    if half:
      return (f"a string holds the escape \\u{ord(half.group()):04x}, half of a UTF-16 surrogate "
              "pair without its other half, which is not text; remove it or write the character")
  return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_json_array(path, raw):
  """(records, None) for a file that starts with "[" and is one JSON array of records; (None,
  why it is not) otherwise. Parsed once: a large array's text and objects are held together."""
  try:
    items = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    return None, f"{path!r}, line {line}: byte {raw[e.start]:#04x} is not valid UTF-8"
  except json.JSONDecodeError as e:
    return None, f"{path!r}, line {e.lineno}: not valid JSON ({e.msg}: column {e.colno})"
  for i, item in enumerate(items if isinstance(items, list) else []):
    if not isinstance(item, dict):
      return None, (f"{path!r}: item {i} of its JSON array is a "
                    f"{_JSON_TYPES.get(type(item), 'value')}, not an object (a record)")
    problem = _lone_surrogate_problem(item)
    if problem:
      return None, f"{path!r}: item {i} of its JSON array: {problem}"
  return (items if isinstance(items, list) else []), None


def _innermost(error):
  # `datasets` wraps pyarrow's reason in "An error occurred while generating the dataset".
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  return error


# The last line of a traceback printed as text: "pyarrow.lib.ArrowInvalid: Could not open ...".
_TRACEBACK_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$", re.MULTILINE)


def error_reason(error) -> str:
  """"Type: message" of the error that started `error`. A worker process's error arrives as
  the text of its traceback (multiprocess's RemoteTraceback), whose first error is the cause."""
  cause = _innermost(error)
  text = str(cause)
  if "Traceback (most recent call last)" in text:
    for name, message in _TRACEBACK_ERROR_LINE.findall(text):
      if name != "Traceback":
        return f"{name.rsplit('.', 1)[-1]}: {message}".rstrip(": .")
  return f"{type(cause).__name__}: {cause}".rstrip(": .")


def first_bad_json_line(where, paths):
  """The error naming the first bad line of the JSON files among `paths`, as our reader raises
  it, or None. Only called after `datasets` failed (a hub source that is a local folder), whose
  error counts rows from 0 and names no file, so good corpora are not read twice."""
  for path in paths:
    if FILE_BUILDERS.get(os.path.splitext(path)[1].lower()) == "json":
      try:
        for _ in _json_records(path, where):
          pass
      except ValueError as e:
        return e
  return None


def _read_error(where, builder, files, error):
  """The error for `files` that `datasets` could not read as `builder`: pyarrow's reason."""
  return ValueError(f"{where}: could not read {files[:3]}{'...' if len(files) > 3 else ''} as "
                    f"{builder}: {error_reason(error)}.")


def not_utf8_error(where, pattern, error):
  """The error for a string that is not UTF-8 inside a JSON or Parquet file (the .txt reader
  replaces such bytes instead): the file and line if a scan of the JSON files finds them."""
  bad_line = first_bad_json_line(where, expand_files(pattern, where) if pattern else [])
  return bad_line or ValueError(f"{where}: a document's text is not valid UTF-8 ({error}).")


# Bump when _read_json reads a file differently: it is part of the read cache's fingerprint.
_JSON_READER = 1


def _json_records(path, where):
  """(line, record) of a JSON Lines file, or of a file holding one JSON array of records (line:
  None); the first line that is not a record raises, naming the file and the line."""
  with open(path, "rb") as f:
    if _is_json_array(f):
      items, problem = _parse_json_array(path, f.read().removeprefix(b"\xef\xbb\xbf"))
      if problem:
        raise ValueError(f"{where}: {problem}.")
      yield from ((None, item) for item in items)
      return
    for number, raw in enumerate(f, 1):
      record, problem = parse_json_line(raw, number)
      if problem:
        # A pretty-printed object ({"data": [...]} over many lines) fails on its first line.
        raise (number == 1 and _one_object_error(where, path)) or (
            ValueError(f"{where}: {path!r}, line {number}: {problem}."))
      if record is not None:
        yield number, record


def _is_json_array(f):
  """Whether the binary file `f` holds one JSON array rather than JSON Lines (its first byte
  that is not a BOM or blank is "["); `f` is left at its start."""
  is_array = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
  f.seek(0)
  return is_array


# A streamed JSON array file of this size or more is warned about: `_parse_json_array` parses it
# whole (its text and records held together, ~4x the file in memory: 1.5 GB for a 391 MB file),
# again on every pass over the stream.
JSON_ARRAY_WARN_BYTES = 64 << 20
# The JSON array files this process has warned about (once each, not per load).
_WARNED_JSON_ARRAY = set()


def _warn_large_json_arrays(paths, where):
  """Once per file: a streamed JSON array of JSON_ARRAY_WARN_BYTES or more, and how to convert
  it to JSON Lines, which a stream reads a line at a time."""
  for path in paths:
    if path in _WARNED_JSON_ARRAY or os.path.getsize(path) < JSON_ARRAY_WARN_BYTES:
      continue
    with open(path, "rb") as f:
      if not _is_json_array(f):
        continue
    _WARNED_JSON_ARRAY.add(path)
    log.warning("%s: %r holds one JSON array (%d MB), not JSON Lines: a stream reads it whole "
                "into memory, on every pass. Write it as JSON Lines to read it a record at a "
                "time: jq -c '.[]' %s > %s", where, path, os.path.getsize(path) >> 20,
                shlex.quote(path), shlex.quote(_json_lines_name(path)))


# A file whose first line opens an object it does not close is parsed whole up to this size, to
# name the key its records are nested under.
_NESTED_OBJECT_MAX_BYTES = 1 << 30


def _only_object(path):
  """The JSON object a file holds as its only value (on one line or pretty-printed), or None.
  Read on an error's path only: a JSON Lines file is not read past its second record."""
  with open(path, "rb") as f:
    first = f.readline().removeprefix(b"\xef\xbb\xbf")
    if next((line for line in f if line.strip()), None) is None:
      text = first
    elif (first.strip().startswith(b"{") and not first.rstrip().endswith(b"}")
          and os.fstat(f.fileno()).st_size <= _NESTED_OBJECT_MAX_BYTES):
      f.seek(0)
      text = f.read().removeprefix(b"\xef\xbb\xbf")
    else:
      return None
  try:
    value = json.loads(text.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  return value if isinstance(value, dict) else None


def _json_lines_name(path) -> str:
  """Where a suggested jq command writes `path` as JSON Lines: never `path` itself, which the
  shell's `>` would empty before jq reads it."""
  root, ext = os.path.splitext(path)
  return f"{root}.lines.jsonl" if ext == ".jsonl" else f"{root}.jsonl"


def _one_object_error(where, path):
  """The error for a file holding one JSON object over several lines (pretty-printed), whose
  first line is not a record: its records nested under a key, or itself the one record. None
  for a file that is not one object."""
  value = _only_object(path)
  if value is None:
    return None
  return _nested_records_error(where, path, value) or ValueError(
      f"{where}: {path!r} holds one JSON object written over several lines, not JSON Lines (one "
      "record per line) or one JSON array of records. Write it on one line, e.g. "
      f"jq -c . {shlex.quote(path)} > {shlex.quote(_json_lines_name(path))}")


def _nested_records_error(where, path, record):
  """The error for a file holding one JSON object whose records are nested under a key, such as
  {"data": [{"text": ...}, ...]} (a common export), or None if `record` has no list of records."""
  keys = [k for k, v in (record or {}).items() if isinstance(v, list) and v
          and all(isinstance(item, dict) for item in v)]
  if not keys:
    return None
  key = keys[0] if keys[0].isidentifier() else json.dumps(keys[0])
  return ValueError(
      f"{where}: {path!r} holds one JSON object with the records nested under {keys[0]!r}, not "
      "records: a .json/.jsonl file must be JSON Lines (one record per line) or one JSON array "
      "of records. Write the nested records out as JSON Lines, e.g. "
      f"jq -c '.{key}[]' {shlex.quote(path)} > {shlex.quote(_json_lines_name(path))}")


def _read_json(paths, field, where, warn_missing=False):
  """Yields {"text": record[field]} (None where a record lacks it) of JSON files, read here
  rather than by `datasets`, which takes the columns and their types from a file's first 10 MB:
  a field first seen after that made the file unreadable ("column names don't match"), and a
  number or an object there became text. A file whose records all lack the field is refused."""
  for path in paths:
    present = missing = 0
    columns = None
    file = f"{where}: {path!r}"  # As _json_records names a bad line.
    for line, record in _json_records(path, where):
      columns = columns or sorted(record)
      present += field in record
      text = record.get(field)
      if not isinstance(text, (str, type(None))):
        raise _nested_records_error(where, path, _only_object(path)) or not_text_error(
            file + (f", line {line}" if line else ""), text)
      missing += text is None
      yield {"text": text}
    if columns is not None and not present:
      raise (_nested_records_error(where, path, _only_object(path))
             or missing_column_error(file, field, columns))
    if warn_missing:
      _warn_missing(where, path, missing, field)


# The files of streamed sources whose records without text this process has reported.
_WARNED_MISSING = set()


def _warn_missing(where, path, missing, field):
  """Once per file: a stream reads its files every epoch. (A source in memory is told of from
  the null count of its column, in load_corpus.)"""
  if missing and path not in _WARNED_MISSING:
    _WARNED_MISSING.add(path)
    log.warning("%s: skipped %d record(s) of %s without a %r field (missing or null).", where,
                missing, path, field)


def _file_records(path, builder, where):
  """The records of one Parquet file, streamed by `datasets`; an error names the file."""
  try:
    yield from datasets.load_dataset(builder, data_files=_literal([path]), split="train",
                                     streaming=True)
  except Exception as e:  # Raised by pyarrow deep inside `datasets`, naming neither.
    raise _read_error(where, builder, [path], e) from e


def _read_stream(paths, builder, field, where):
  """Yields {"text": record[field]} from Parquet files read lazily by `datasets`, one file after
  the other. An error while reading names the source and the file, as when in memory."""
  for path in paths:
    missing = 0
    for record in _file_records(path, builder, where):
      if field not in record:
        raise missing_column_error(where, field, sorted(record))
      text = record[field]
      if not isinstance(text, (str, type(None))):
        raise not_text_error(where, text)  # Here, as the declared string feature would convert it.
      missing += text is None
      yield {"text": text}
    _warn_missing(where, path, missing, field)


def _parquet_footers(paths) -> dict:
  """{path: its footer (pq.FileMetaData), or None where it does not read}: read once for the two
  checks below; a file whose footer does not read is left for the reader's error to name."""
  footers = {}
  for path in paths:
    try:
      footers[path] = pq.read_metadata(path)
    except (pa.ArrowException, OSError):
      footers[path] = None
  return footers


def _without_empty_parquet(footers, where):
  """The Parquet files of `footers` less those of no rows (Spark writes one per empty
  partition), which `datasets` refuses ("BatchSize must be greater than 0": it sizes its batches
  by the first row group)."""
  kept = [path for path, footer in footers.items() if footer is None or footer.num_rows]
  empty = [path for path, footer in footers.items() if footer is not None and not footer.num_rows]
  if empty:
    log.info("%s: skipped %d Parquet file(s) of no rows: %s%s.", where, len(empty),
             ", ".join(empty[:5]), ", ..." if len(empty) > 5 else "")
  return kept


def _check_parquet_text_columns(footers, field, where):
  """Each Parquet file's column text_field, from its footer. In memory, `datasets` casts every
  file to the first one's schema, so a column of numbers became text and was trained on, and a
  file without the column failed naming none: both are named here, in either mode."""
  schemas = {path: footer.schema.to_arrow_schema() for path, footer in footers.items()
             if footer is not None}
  lacking = [path for path, schema in schemas.items() if field not in schema.names]
  if lacking and len(lacking) < len(schemas):  # All lacking: select_text's message, one column.
    raise ValueError(f"{where}: {lacking[0]} has no column {field!r} (text_field), which the "
                     f"source's other Parquet files have; its columns are "
                     f"{schemas[lacking[0]].names}. Move it out of the source, or name its text's "
                     f"column {field!r}.")
  for path, schema in schemas.items():
    if field in schema.names and not _holds_text(schema.field(field).type):
      raise ValueError(f"{where}: {path}: the column {field!r} (text_field) holds "
                       f"{schema.field(field).type}, not strings. Name a column of strings with "
                       f"'--{where.split(' ')[0]}.text_field=COLUMN'.")


def _holds_text(arrow_type) -> bool:
  t = pa.types
  if t.is_dictionary(arrow_type):  # Categorical strings (pandas' category dtype).
    return _holds_text(arrow_type.value_type)
  return (t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_null(arrow_type)
          or getattr(t, "is_string_view", lambda _: False)(arrow_type))


def _empty_source():
  """A source of no documents, in memory (`datasets` refuses a generator without examples)."""
  return datasets.Dataset.from_dict({"text": []}, features=_TEXT_FEATURES)


def load_files(source, where, streaming, num_proc, cache_dir):
  files = expand_files(source["name"], where)
  by_suffix = {}
  for f in files:
    suffix = os.path.splitext(f)[1].lower()
    if suffix not in FILE_BUILDERS:
      raise ValueError(f"{where}: {f!r} has an unsupported suffix; use one of "
                       f"{', '.join(FILE_BUILDERS)}.")
    by_suffix.setdefault(FILE_BUILDERS[suffix], []).append(f)
  field = source.get("text_field") or "text"
  parts = []
  for builder, group in by_suffix.items():
    if builder == "parquet":
      footers = _parquet_footers(group)
      group = _without_empty_parquet(footers, where)
      _check_parquet_text_columns({path: footers[path] for path in group}, field, where)
    if builder == "text":
      for f in group:
        _check_text_file(f, where)
      if streaming:
        ds = datasets.IterableDataset.from_generator(
            _read_txt, gen_kwargs={"paths": group}, features=_TEXT_FEATURES)
      else:
        ds = _generated(_read_txt, {"paths": group}, _TXT_READER, cache_dir)
    elif builder == "json":
      kwargs = {"paths": group, "field": field, "where": where}
      if streaming:
        _warn_large_json_arrays(group, where)
        ds = datasets.IterableDataset.from_generator(
            _read_json, gen_kwargs={**kwargs, "warn_missing": True}, features=_TEXT_FEATURES)
      else:  # (text_field is part of the read files' fingerprint, as the reader's version.)
        ds = _generated(_read_json, kwargs, (_JSON_READER, field), cache_dir, num_proc)
    elif streaming:
      # Read through a generator of ours, so that an error met while streaming names the file.
      ds = datasets.IterableDataset.from_generator(
          _read_stream, features=_TEXT_FEATURES,
          gen_kwargs={"paths": group, "builder": builder, "where": where,
                      "field": source.get("text_field") or "text"})
    elif group:
      ds = _load_builder(builder, group, source, where, num_proc, cache_dir)
    else:  # Parquet files of no rows only: an empty source (a stream of none reads nothing).
      ds = _empty_source()
    parts.append(ds)
  return _concatenated(parts)


def _concatenated(parts):
  """The parts of a source as one dataset. Parquet written by pandas 3 holds text as
  large_string, the other readers' as string, which concatenate_datasets refuses to mix (an
  error naming no file): those parts are cast to string first."""
  if len(parts) == 1:
    return parts[0]
  if any(p.features != parts[0].features for p in parts):
    parts = [p if p.features in (None, _TEXT_FEATURES) else p.cast(_TEXT_FEATURES)
             for p in parts]
  return datasets.concatenate_datasets(parts)


def _generated(reader, gen_kwargs, version, cache_dir, num_proc=None):
  """The documents `reader(**gen_kwargs)` yields from gen_kwargs["paths"], as a Dataset cached
  under `cache_dir`, the files split among `num_proc` processes. The files' sizes and
  modification times are in the fingerprint, so that the cache is invalidated when a file
  changes, and so is `version` (the reader's, its settings). So are the inode change time and
  number, which an editor or a copy that puts the modification time back (cp -p, rsync -t)
  cannot keep: an edit of the same size was read from the cache as the old text."""
  files = gen_kwargs["paths"]
  fingerprint = _files_stamp(files, version)
  try:
    with worker_processes.spawned():
      return _from_generator(reader, gen_kwargs, cache_dir, fingerprint, num_proc, len(files))
  except Exception as e:
    if isinstance(_innermost(e), OSError):  # A full disk, a file gone: not worth a second read.
      raise
    # Read again here: a reader's own error (naming the file and the line) is then raised as
    # it is, not wrapped in `datasets`' "An error occurred while generating the dataset" or a
    # worker's traceback.
    if sum(1 for _ in reader(**gen_kwargs)):  # All of it: the bad line may be in the last file.
      raise
    # `datasets` refuses a generator without examples; blank files are an empty source.
    return _empty_source()


def _files_stamp(files, version) -> str:
  """A hash of `version` and the files' names, sizes, modification times, inode change times
  and inode numbers: it changes with a file's text even when a copy put the old size and
  modification time back (cp -p, rsync -t, tar x), unlike `datasets`' own cache key (the
  modification time alone)."""
  stamp = [version] + [(f, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for f, st in
                       ((f, os.stat(f)) for f in files)]
  return hashlib.sha256(repr(stamp).encode()).hexdigest()[:32]


def _from_generator(reader, gen_kwargs, cache_dir, fingerprint, num_proc, num_files):
  """datasets.Dataset.from_generator, cached under `cache_dir` by `fingerprint` (a damaged
  cached copy is read again: _without_damaged_copy)."""
  def generate():
    return datasets.Dataset.from_generator(
        reader, gen_kwargs=gen_kwargs, cache_dir=cache_dir, features=_TEXT_FEATURES,
        fingerprint=fingerprint,
        num_proc=num_proc if num_proc and num_proc > 1 and num_files > 1 else None)
  # datasets' builder folder for the generator: <cache_dir>/generator/<config>-<fingerprint>.
  cached = glob.glob(os.path.join(glob.escape(cache_dir), "generator", f"*{fingerprint}"))
  return _without_damaged_copy(generate, cached, gen_kwargs["paths"])


# What pyarrow raises for an Arrow file cut short: OSError past its schema ("Expected to be able
# to read ... bytes"), ArrowInvalid within it, as for a file of 0 bytes, which a machine that
# went down before the data reached the disk leaves.
_CUT_SHORT = (OSError, pa.ArrowInvalid)


def _without_damaged_copy(load, cached, files):
  """load(), which reads `files` into the cache or loads `cached` (the folders of their copy
  that an earlier run finished). A cached copy that fails to load (an Arrow file cut short or
  deleted) is removed, with a warning, and the files read again: it failed every later run, in
  pyarrow's traceback or an error saying that the files themselves do not read."""
  if not cached:
    return load()
  try:
    return load()
  except Exception as e:
    if not isinstance(_innermost(e), _CUT_SHORT) or not all(os.access(f, os.R_OK)
                                                           for f in files):
      raise  # The files themselves (gone, unreadable), or a reader's own error.
    log.warning("The cached copy of %s in %s is damaged (%s); reading the files again.",
                ", ".join(files[:3]) + (" ..." if len(files) > 3 else ""), ", ".join(cached),
                error_reason(e))
    for folder in cached:
      shutil.rmtree(folder, ignore_errors=True)
    return load()


def _load_builder(builder, group, source, where, num_proc, cache_dir):
  """Parquet files read by `datasets` into Arrow files under `cache_dir` (as .txt files are:
  data.cache_dir, not $HF_DATASETS_CACHE), the column text_field as "text"."""
  field = source.get("text_field") or "text"
  try:
    # Files of other columns fail together by design (read one at a time below): datasets'
    # ERROR lines, a schema dump per file, would read as the run's failure. A lone file's error
    # is raised with its reason, and so is a file's that fails on its own below.
    quiet = _datasets_errors_quiet() if len(group) > 1 else contextlib.nullcontext()
    with worker_processes.spawned(), quiet:
      ds = _load_cached_builder(builder, group, cache_dir,
                                num_proc=num_proc if len(group) > 1 else None)
  except Exception as e:  # Malformed JSON/Parquet surfaces from deep inside pyarrow.
    if len(group) == 1:
      raise _read_error(where, builder, group, e) from e
    # `datasets` casts every file to the first one's columns (other columns than text_field
    # differ between the files), or one file is bad and a worker's traceback names none: one
    # file at a time, each keeping text_field only, names the bad file with its own reason.
    log.warning("%s: the %d %s files could not be read together (other columns, or a file that "
                "does not read); reading them one at a time.", where, len(group), builder)
    parts = [select_text(_load_one_file(builder, path, where, cache_dir), field, where)
             for path in group]
    return _concatenated(parts)
  return select_text(ds, field, where)


def _load_cached_builder(builder, files, cache_dir, num_proc=None):
  """`files` read by `datasets`' `builder` into its cache under `cache_dir` (a damaged cached
  copy is read again, not blamed on the files: _without_damaged_copy)."""
  name = _builder_config_name(builder, files)
  # <cache_dir>/<builder>/<name>-<hash>/<version>/<hash>/: an Arrow file there once finished.
  arrows = glob.glob(os.path.join(glob.escape(cache_dir), builder, glob.escape(name) + "-*", "*",
                                  "*", "*.arrow"))
  cached = sorted({os.path.dirname(os.path.dirname(os.path.dirname(a))) for a in arrows})
  return _without_damaged_copy(
      lambda: datasets.load_dataset(builder, data_files=_literal(files), split="train",
                                    cache_dir=cache_dir, name=name, num_proc=num_proc),
      cached, files)


def _builder_config_name(builder, files) -> str:
  """The builder's config name, which keys its cache folder: the files' stamp, so that a file
  replaced by another with its modification time (which is all `datasets` compares) is read
  again, not served from the cache as the old rows."""
  return f"{builder}-{_files_stamp(files, builder)[:16]}"


@contextlib.contextmanager
def _datasets_errors_quiet():
  """datasets logs nothing below CRITICAL here, nor in worker processes started meanwhile
  (they read DATASETS_VERBOSITY as they import datasets)."""
  logger = logging.getLogger("datasets")
  level, env = logger.level, os.environ.get("DATASETS_VERBOSITY")
  logger.setLevel(logging.CRITICAL)
  os.environ["DATASETS_VERBOSITY"] = "critical"
  try:
    yield
  finally:
    logger.setLevel(level)
    if env is None:
      os.environ.pop("DATASETS_VERBOSITY", None)
    else:
      os.environ["DATASETS_VERBOSITY"] = env


def _load_one_file(builder, path, where, cache_dir):
  try:
    return _load_cached_builder(builder, [path], cache_dir)
  except Exception as e:
    raise _read_error(where, builder, [path], e) from e


def not_text_error(where, text):
  """The error for a document's text that is not a string (a number, a list), naming the flag."""
  return ValueError(f"{where}: A document's text (text_field) is {type(text).__name__} "
                    f"{text!r:.60}, not a string. Name a column of strings with "
                    f"'--{where.split(' ')[0]}.text_field=COLUMN'.")


def missing_column_error(where, field, columns):
  # The override that fixes it, as flag text: a `files` source set on the :tiny config keeps
  # wiki_vital's text_field 'extract', which a .jsonl of "text" records lacks.
  key = where.split(" ")[0]
  column = columns[0] if len(columns) == 1 else "COLUMN"
  return ValueError(f"{where}: no column {field!r} (text_field); columns are {columns}. Name the "
                    f"text's column with '--{key}.text_field={column}'.")


def select_text(ds, field, where):
  """Keeps only `field`, renamed "text"."""
  columns = ds.column_names
  if columns is None:  # A stream whose columns are unknown until the first record is read.
    def pick(example):
      if field not in example:
        raise missing_column_error(where, field, sorted(example))
      return {"text": example[field]}
    return ds.map(pick).select_columns(["text"])
  if field not in columns:
    raise missing_column_error(where, field, columns)
  ds = ds.select_columns([field])
  return ds if field == "text" else ds.rename_column(field, "text")
