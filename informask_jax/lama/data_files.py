"""LAMA's data as its `data.zip` lays it out: the sources, their relation files and templates,
and the facts of a file as JSON records.

Nothing here knows about models or protocols; unreadable lines come back as None so that the
query builders can count them.
"""

import dataclasses
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

SOURCES = ("Google_RE", "TREx", "ConceptNet", "Squad")

# LAMA ships the Google-RE templates in its code rather than in data.zip.
GOOGLE_RE_TEMPLATES = {
    "date_of_birth": "[X] (born [Y]).",
    "place_of_birth": "[X] was born in [Y] .",
    "place_of_death": "[X] died in [Y] .",
}
SUBJECT_SLOT, OBJECT_SLOT = "[X]", "[Y]"


@dataclasses.dataclass(frozen=True)
class RelationFile:
  """One file of facts: a T-REx relation, a Google-RE relation, or a whole source."""

  source: str  # One of SOURCES.
  name: str  # "P19", "place_of_birth", "test".
  path: pathlib.Path
  template: str | None = None  # "[X] was born in [Y] ." for T-REx / Google-RE; None if unknown.


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _valid_template(template: Any) -> bool:
  return (isinstance(template, str) and SUBJECT_SLOT in template
          and template.count(OBJECT_SLOT) == 1)


def read_relation_templates(path: pathlib.Path) -> dict[str, str]:
  """`relations.jsonl` -> {relation id: template}; unreadable or template-less lines are logged."""
  templates, bad = {}, 0
  for record in read_records(path):
    if record is None or not isinstance(record.get("relation"), str):
      bad += 1
    elif not _valid_template(record.get("template")):
      bad += 1
      log.warning("%s: relation %s has no usable template (needs %s and one %s): %r", path,
                  record["relation"], SUBJECT_SLOT, OBJECT_SLOT, record.get("template"))
    else:
      templates[record["relation"]] = record["template"]
  if bad:
    log.warning("%s: %d line(s) without a usable relation and template were ignored.", path, bad)
  return templates


def discover(data_dir: str | os.PathLike,
             templated: bool = True) -> tuple[list[RelationFile], list[str]]:
  """Relation files under `data_dir` (LAMA's data.zip layout) and the sources that are absent.

  Accepts the folder that holds `TREx/`, `Google_RE/`, ... or the one above it holding `data/`.
  `templated`: whether the caller asks T-REx through its templates; if not, relations.jsonl is
  not read (nor its absence or its unusable lines reported).
  """
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"--data_dir {str(data_dir)!r} is not a directory. Point it at the "
                            "unzipped LAMA data.zip (the folder holding TREx/, Google_RE/, ...).")
  if not any((root / s).is_dir() for s in SOURCES) and (root / "data").is_dir():
    root = root / "data"  # data.zip unzips into data/.
  relations, missing = [], []
  for source in SOURCES:
    folder = root / source
    files = sorted(_data_files(folder), key=lambda p: _natural_key(p.name))
    if source == "TREx":
      # relations.jsonl sits beside TREx/ in data.zip; also accept it inside.
      rel_path = next((p for p in (root / "relations.jsonl", folder / "relations.jsonl")
                       if p.is_file()), None)
      templates = read_relation_templates(rel_path) if rel_path and templated else {}
      files = [p for p in files if p.name != "relations.jsonl"]
      if files and rel_path is None and templated:
        log.warning("No relations.jsonl beside %s: T-REx template queries cannot be built.",
                    folder)
      relations += [RelationFile(source, p.stem, p, templates.get(p.stem)) for p in files]
    elif source == "Google_RE":
      for p in files:
        name = p.stem.removesuffix("_test")
        relations.append(RelationFile(source, name, p, GOOGLE_RE_TEMPLATES.get(name)))
    else:
      relations += [RelationFile(source, p.stem, p) for p in files]
    if not files:
      missing.append(source)
  named = {}
  for rel in relations:  # Scores are kept per (source, name): one file's results would vanish.
    other = named.setdefault((rel.source, rel.name), rel.path)
    if other != rel.path:
      raise ValueError(f"--data_dir {str(data_dir)!r}: {other} and {rel.path} are both relation "
                       f"{rel.name} of {rel.source}; keep one of them.")
  if not relations:
    raise FileNotFoundError(
        f"--data_dir {str(data_dir)!r} holds none of LAMA's sources: expected "
        "Google_RE/*_test.jsonl, TREx/P*.jsonl (with relations.jsonl beside TREx/), "
        "ConceptNet/test.jsonl or Squad/test.jsonl.")
  return relations, missing


def _data_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The folder's *.jsonl files; a directory of that name is skipped with a warning (opening it
  would end the run in an IsADirectoryError)."""
  out = []
  for p in folder.glob("*.jsonl"):
    if p.is_file():
      out.append(p)
    else:
      log.warning("%s is not a data file (a directory or a broken link): skipped.", p)
  return out


def _lines(f) -> Iterator[bytes]:
  """The lines of a binary file, ended by \\n, \\r\\n or a lone \\r (classic Mac OS line
  endings, which the word-list reader takes too): read by \\n alone, such a file was one
  malformed line. A raw \\r cannot be inside a JSON string (control characters are escaped)."""
  for raw in f:
    if b"\r" in raw.rstrip(b"\r\n"):
      yield from re.split(rb"\r\n?|\n", raw)
    else:
      yield raw


def line_numbers(numbers: list[int]) -> str:
  shown = ", ".join(map(str, numbers[:5]))
  return f"line {shown}" if len(numbers) == 1 else (
      f"lines {shown}" + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else ""))


class Record(dict):
  """A fact as read: the JSON object, and the line of its file it came from (`line`, from 1),
  by which the query builders name the facts they cannot ask."""

  line: int = 0


def read_records(path: pathlib.Path, limit: int = 0) -> Iterator[Record | None]:
  """JSON objects of a .jsonl file, None for each line that is not one; blank lines ignored.

  A byte-order mark is tolerated at the start of any line: files saved with one and joined with
  `cat` carry each file's mark to the start of a later line. Lines that are not UTF-8 (a Latin-1
  file would be asked with U+FFFD in place of its accents), or whose strings are not valid
  Unicode (a lone surrogate escape, "\\ud83d", which the tokenizer refuses), are not records:
  None. Lines that are not records are named (their first line numbers) in a warning: counted
  as malformed_json only, they could not be found in a file of thousands.
  """
  count, undecodable, not_objects = 0, [], []
  with open(path, "rb") as f:
    for number, raw in enumerate(_lines(f), 1):
      raw = raw.removeprefix(b"\xef\xbb\xbf")
      if not raw.strip(b" \t\r\n\x00"):  # NUL: what UTF-16's last line break leaves.
        continue
      if limit and count >= limit:
        break
      count += 1
      try:
        if b"\x00" in raw:  # UTF-16 (after its first line, NUL-led ones that decode as UTF-8).
          raise UnicodeDecodeError("utf-8", raw, raw.index(b"\x00"), len(raw), "NUL byte")
        record = json.loads(raw.decode("utf-8"))
        if isinstance(record, dict):
          json.dumps(record, ensure_ascii=False).encode("utf-8")  # Lone surrogates raise here.
      except (UnicodeDecodeError, UnicodeEncodeError):
        undecodable.append(number)
        yield None
        continue
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict):
        not_objects.append(number)
        yield None
        continue
      record = Record(record)
      record.line = number
      yield record
  if undecodable:
    log.warning("%s: %d line(s) are not UTF-8 text or hold invalid Unicode escapes (%s); they are "
                "counted as malformed (save the file as UTF-8: NUL bytes say UTF-16).", path,
                len(undecodable), line_numbers(undecodable))
  if not_objects:
    log.warning("%s: %d line(s) are not JSON objects (%s); they are counted as malformed.", path,
                len(not_objects), line_numbers(not_objects))
