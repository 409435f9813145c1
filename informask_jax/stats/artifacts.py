"""The statistics cache: a directory per (corpus, tokenizer, parameters), its metadata and checks.

  <config.data.cache_dir>/stats/<key>/
    meta.json            parameters, fingerprints, vocabulary size, counts, sha256 of every file
    unigram_counts.npy   int64[V]                                             stage "counts"
    pmi.npz              float32 CSR [V, V], symmetric (scipy.sparse.save_npz) stage "pmi"
    rates.npy            float32[V]                                           stage "rates"
    id_mask_prob.json    the same rates, {"token id": rate}
    pmi_ngrams.json      [[token ids of a word n-gram], ...], priority order  stage "ngrams"
    pmi_bigrams.json     [[id, id], ...], highest PMI first
    vocab.txt            the tokenizer's tokens by id (for reports)

Every file is written to a temporary name and renamed into place, and its sha256 is recorded in
meta.json (written last), so a crash or a truncated copy shows up as a checksum mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import numpy as np
import scipy.sparse as sp

from informask_jax import paths

FORMAT_VERSION = 1
META = "meta.json"
VOCAB = "vocab.txt"
STAGES = ("counts", "pmi", "rates", "ngrams")
STAGE_FILES = {
    "counts": ("unigram_counts.npy",),
    "pmi": ("pmi.npz",),
    "rates": ("rates.npy", "id_mask_prob.json"),
    "ngrams": ("pmi_ngrams.json", "pmi_bigrams.json"),
}
# What each stage reads: PMI selects its vocabulary from the unigram counts; the rates run the
# masker on the PMI table and rescale with the unigram counts.
STAGE_DEPS = {"counts": (), "pmi": ("counts",), "rates": ("counts", "pmi"), "ngrams": ()}


class ArtifactError(ValueError):
  """A statistics directory that cannot be used as it is."""


class TokenizerMismatchError(ArtifactError):
  """The tables were built for another tokenizer or vocabulary size."""


class CorruptArtifactError(ArtifactError):
  """A file is missing, truncated or altered (its sha256 differs from meta.json)."""


def stage_names(stages) -> list[str]:
  """`stages` (a name or names) as a list; ValueError naming the unknown ones."""
  stages = [stages] if isinstance(stages, str) else list(stages)
  unknown = sorted(set(stages) - set(STAGES))
  if unknown:
    raise ValueError(f"Unknown statistics stage(s) {unknown}; choose from {STAGES}.")
  return stages


def with_deps(stages) -> tuple[str, ...]:
  """The stages and everything they read, in build order."""
  stages = set(stage_names(stages))
  changed = True
  while changed:
    changed = False
    for s in list(stages):
      for d in STAGE_DEPS[s]:
        if d not in stages:
          stages.add(d)
          changed = True
  return tuple(s for s in STAGES if s in stages)


def cache_key(corpus_fingerprint: str, tokenizer_fingerprint: str, params: dict) -> str:
  blob = json.dumps({"corpus": corpus_fingerprint, "tokenizer": tokenizer_fingerprint,
                     "params": params, "format_version": FORMAT_VERSION}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def sha256_file(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return sha256_stream(f)[0]


def sha256_stream(f) -> tuple[str, int]:
  """(sha256, bytes) of what a binary file object holds from its position: a local file's, or a
  Beam file system's (meta.json's checksums for files on gs:// and the like)."""
  h, size = hashlib.sha256(), 0
  for block in iter(lambda: f.read(1 << 22), b""):
    h.update(block)
    size += len(block)
  return h.hexdigest(), size


atomic_write = paths.atomic_write  # Beside the other writers of the cache's files.


def save_npy(path, array) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.save(f, array)
  atomic_write(path, write)


def save_npz(path, matrix) -> None:
  # Uncompressed: a table of 10^8 entries loads in seconds instead of a minute at every start.
  def write(tmp):
    with open(tmp, "wb") as f:
      sp.save_npz(f, matrix, compressed=False)
  atomic_write(path, write)


def save_json(path, obj) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=None, separators=(",", ":"))
  atomic_write(path, write)


def read_meta(directory: pathlib.Path) -> dict:
  path = pathlib.Path(directory) / META
  if not path.exists():
    raise FileNotFoundError(f"No statistics metadata at {path}: not a statistics directory, or "
                            "its build never finished. Build it with `python -m "
                            "informask_jax.stats build --config ...`.")
  try:
    meta = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CorruptArtifactError(f"{path} is not valid JSON ({e}); delete the directory or run "
                               "the build again.") from None
  if not isinstance(meta, dict) or "files" not in meta:
    raise CorruptArtifactError(f"{path} lacks the 'files' checksum table.")
  missing = [field for field in _META_REQUIRED if field not in meta]
  if missing:  # Every build writes them from its start; code reads them without a default.
    raise CorruptArtifactError(f"{path} is damaged: it lacks {', '.join(map(repr, missing))}; "
                               "delete the directory or run the build again.")
  _check_meta_types(meta, path)
  return meta


# The type of each field of meta.json that code reads, and of the items of those that are dicts.
_META_TYPES = {"files": (dict, dict), "counts": (dict, None), "params": (dict, None),
               "seconds": (dict, None), "special_ids": (dict, int), "vocab_size": (int, None),
               "format_version": (int, None), "corpus_fingerprint": (str, None),
               "tokenizer_fingerprint": (str, None), "tokenizer_name_or_path": (str, None)}


_META_REQUIRED = ("vocab_size",)


def _check_meta_types(meta: dict, path: pathlib.Path) -> None:
  """Valid JSON of the wrong shape ("counts": "oops") would fail far from here, as an
  AttributeError in a report or a build: the file is damaged, and says so by its name."""
  def bad(field, value, expected):
    return CorruptArtifactError(
        f"{path} is damaged: {field} is {type(value).__name__} {value!r:.40}, expected "
        f"{expected}; delete the directory or run the build again.")
  names = {dict: "an object", int: "an integer", str: "a string"}
  for field, (kind, item_kind) in _META_TYPES.items():
    value = meta.get(field)
    if field in meta and not _is(value, kind):
      raise bad(f"'{field}'", value, names[kind])
    for key, item in (value.items() if item_kind and field in meta else ()):
      if not _is(item, item_kind):
        raise bad(f"'{field}'[{key!r}]", item, names[item_kind])


def _is(value, kind) -> bool:
  return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def write_meta(directory: pathlib.Path, meta: dict) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
  atomic_write(pathlib.Path(directory) / META, write)


def record_file(directory: pathlib.Path, meta: dict, name: str) -> None:
  path = pathlib.Path(directory) / name
  meta.setdefault("files", {})[name] = {"sha256": sha256_file(path),
                                        "bytes": path.stat().st_size}


def check_compatible(meta: dict, directory, *, tokenizer_fingerprint: str | None,
                     vocab_size: int | None) -> None:
  version = meta.get("format_version")
  if version != FORMAT_VERSION:
    raise ArtifactError(f"{directory} has statistics format {version}, this code reads "
                        f"{FORMAT_VERSION}: rebuild them.")
  theirs_fp, theirs_v = meta.get("tokenizer_fingerprint"), meta.get("vocab_size")
  fp_bad = tokenizer_fingerprint is not None and theirs_fp != tokenizer_fingerprint
  v_bad = vocab_size is not None and theirs_v != vocab_size
  if fp_bad or v_bad:
    raise TokenizerMismatchError(
        f"The statistics in {directory} were built for tokenizer {theirs_fp} (vocab size "
        f"{theirs_v}), but this run uses tokenizer {tokenizer_fingerprint} (vocab size "
        f"{vocab_size}). Their token ids mean different tokens: build statistics for this "
        "tokenizer (python -m informask_jax.stats build --config ...) instead.")


def check_table_tokenizer(table_path, tokenizer_fingerprint: str, key: str,
                          remedy: str = "") -> None:
  """A table given by path (e.g. masking.rates_path) that lies in a statistics directory is
  refused if that directory was built for another tokenizer: only its size would be checked
  otherwise, and two vocabularies of one size give the ids other tokens. A table elsewhere (the
  original repository's id_mask_prob.json) has no record of its tokenizer to compare. `remedy`
  replaces the advice to leave `key` empty (a training run then builds the table)."""
  # Beside the file itself: a link to a table lies elsewhere than the statistics it is of.
  meta_path = pathlib.Path(table_path).expanduser().resolve().parent / META
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, ValueError):
    return
  theirs = meta.get("tokenizer_fingerprint") if isinstance(meta, dict) else None
  if isinstance(theirs, str) and "files" in meta and theirs != tokenizer_fingerprint:
    raise TokenizerMismatchError(
        f"{key}={str(table_path)!r} lies in statistics built for tokenizer {theirs} (its "
        f"{META}), but this run's tokenizer is {tokenizer_fingerprint}: the table's ids mean "
        f"other tokens. Give the table built for this tokenizer, or " + (
            remedy or f"leave {key} empty to build it from the corpus."))


def verify_files(directory, meta: dict, names) -> list[str]:
  """Problems with the named files (missing, size or sha256 differing from meta.json)."""
  directory = pathlib.Path(directory)
  problems = []
  for name in names:
    entry = meta.get("files", {}).get(name)
    path = directory / name
    if entry is None:
      problems.append(f"{name}: not built")
    elif not path.exists():
      problems.append(f"{name}: missing")
    elif path.stat().st_size != entry.get("bytes"):
      problems.append(f"{name}: {path.stat().st_size} bytes, meta.json says {entry.get('bytes')} "
                      "(truncated or altered)")
    elif sha256_file(path) != entry.get("sha256"):
      problems.append(f"{name}: sha256 differs from meta.json (corrupted or altered)")
  return problems


def stage_ok(directory, meta: dict, stage: str) -> bool:
  return not verify_files(directory, meta, STAGE_FILES[stage])


@dataclasses.dataclass
class Artifacts:
  """What a statistics directory holds (None for stages not built)."""

  path: pathlib.Path
  meta: dict[str, Any]
  unigram_counts: np.ndarray | None  # (V,) int64
  pmi: sp.csr_matrix | None  # (V, V) float32
  rates: np.ndarray | None  # (V,) float32
  ngrams: list[list[int]] | None
  bigrams: list[list[int]] | None

  @property
  def vocab_size(self) -> int:
    return int(self.meta["vocab_size"])


def load_artifacts(path, *, tokenizer_fingerprint: str | None, vocab_size: int | None,
                   need=None) -> Artifacts:
  """Loads and checks a statistics directory.

  tokenizer_fingerprint / vocab_size: the run's; a directory built for another tokenizer raises
  TokenizerMismatchError naming both (None skips that check, e.g. for reports). Every built
  stage (or just `need`) is verified against its sha256; a bad file raises CorruptArtifactError.
  """
  path = pathlib.Path(path).expanduser()
  if path.exists() and not path.is_dir():
    raise ValueError(f"Statistics directory {path} is a file; give the directory that "
                     "`python -m informask_jax.stats build` printed.")
  if not path.is_dir():
    raise FileNotFoundError(f"Statistics directory {path} does not exist.")
  meta = read_meta(path)
  check_compatible(meta, path, tokenizer_fingerprint=tokenizer_fingerprint,
                   vocab_size=vocab_size)
  v = int(meta["vocab_size"])
  built = [s for s in STAGES if all(n in meta["files"] for n in STAGE_FILES[s])]
  stages = built if need is None else stage_names(need)  # "rates" was read as r, a, t, e, s.
  problems = []
  for s in stages:
    problems += verify_files(path, meta, STAGE_FILES[s])
  if problems:
    raise CorruptArtifactError(
        f"Statistics in {path} are unusable: " + "; ".join(problems) + ". Rebuild them with "
        "`python -m informask_jax.stats build --config ...` (train.py does so automatically).")
  out = Artifacts(path, meta, None, None, None, None, None)
  if "counts" in stages:
    out.unigram_counts = _check_vector(np.load(path / "unigram_counts.npy"), v,
                                       "unigram_counts.npy")
  if "pmi" in stages:
    from informask_jax.stats import pmi as pmi_lib
    out.pmi = pmi_lib.check_table(sp.load_npz(path / "pmi.npz"), v, str(path / "pmi.npz"))
  if "rates" in stages:
    out.rates = _check_vector(np.load(path / "rates.npy"), v, "rates.npy").astype(np.float32)
  if "ngrams" in stages:
    out.ngrams = json.loads((path / "pmi_ngrams.json").read_text())
    out.bigrams = json.loads((path / "pmi_bigrams.json").read_text())
    for name, table in (("pmi_ngrams.json", out.ngrams), ("pmi_bigrams.json", out.bigrams)):
      flat = [i for entry in table for i in entry]
      if flat and not (0 <= min(flat) and max(flat) < v):
        raise ArtifactError(f"{path / name} holds token ids outside [0, {v}).")
  return out


def _check_vector(a: np.ndarray, v: int, name: str) -> np.ndarray:
  if a.shape != (v,):
    raise ArtifactError(f"{name} has shape {a.shape}, expected ({v},).")
  if not np.all(np.isfinite(a)):
    raise ArtifactError(f"{name} holds non-finite values.")
  return a
