"""Writing the output directory in the local builder's layout, meta.json last: into a local
directory, or staged locally and copied to a Beam file system; `_Write` does it once, on one
worker, when every result has been computed."""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile

import numpy as np

from informask_jax.stats import artifacts as art
from informask_jax.stats import ngrams

try:  # Optional dependency: `pip install -e ".[beam]"`.
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  beam = FileSystems = None


def write_artifacts(output: str, meta: dict, vocab_text: str, *, unigrams=None, pairs=None,
                    pmi=None, ngram_vocab=None) -> str:
  """Writes the stages given in the local builder's layout and a fresh meta.json (last), into a
  local directory or, through a local staging directory, a Beam file system (gs://, s3://...)."""
  remote = "://" in output
  local = (pathlib.Path(tempfile.mkdtemp(prefix="informask-beam-")) if remote
           else pathlib.Path(output).expanduser())
  try:
    local.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps(meta))  # A copy: the caller's stays as it was.
    art.atomic_write(local / art.VOCAB,
                     lambda tmp: pathlib.Path(tmp).write_text(vocab_text, encoding="utf-8"))
    written = [art.VOCAB]
    if unigrams is not None:
      art.save_npy(local / "unigram_counts.npy", unigrams.counts)
      written.append("unigram_counts.npy")
      meta["counts"].update(num_tokens=unigrams.num_tokens, num_sentences=unigrams.num_sentences,
                            num_documents=unigrams.num_documents)
    if pmi is not None:
      art.save_npz(local / "pmi.npz", pmi)
      written.append("pmi.npz")
      meta["counts"].update(pmi_vocab_size=int(pairs.vocab_ids.size), num_pairs=int(pairs.total),
                            pairs_kept=int(pairs.counts.nnz), pmi_nnz=int(pmi.nnz),
                            pmi_max=float(pmi.data.max()), pmi_mean=float(pmi.data.mean()))
    if ngram_vocab is not None:
      art.save_json(local / "pmi_ngrams.json", ngram_vocab.ngrams)
      art.save_json(local / "pmi_bigrams.json", ngram_vocab.bigrams.tolist())
      written += ["pmi_ngrams.json", "pmi_bigrams.json"]
      lengths = ngram_vocab.lengths
      meta["counts"].update(
          ngrams=len(ngram_vocab.ngrams), bigrams=int(ngram_vocab.bigrams.shape[0]),
          ngrams_per_length={str(n): int(np.sum(lengths == n)) for n in range(2, ngrams.MAX_N + 1)})
    for name in written:
      art.record_file(local, meta, name)
    _keep_intact_stages(output, local, meta, set(written))
    art.write_meta(local, meta)
    if remote:
      for name in written + [art.META]:  # meta.json last: it vouches for the rest.
        with open(local / name, "rb") as src, FileSystems.create(
            FileSystems.join(output, name)) as dst:
          shutil.copyfileobj(src, dst, 1 << 22)
  finally:
    if remote:
      shutil.rmtree(local, ignore_errors=True)
  return output


def _keep_intact_stages(output: str, local: pathlib.Path, meta: dict, written: set) -> None:
  """Carries into `meta` the stages this run did not write that the directory already holds, of
  the same statistics (cache key), intact, and built from the tables this run wrote unchanged
  (rates from byte-identical counts and pmi). A fresh meta.json dropped them: a --what=ngrams
  run into a full local build made the next `stats build` count everything again. Files of the
  stages not carried stay, unvouched for, as the local builder leaves them."""
  previous = _read_previous_meta(output, local)
  if previous is None or previous.get("key") != meta.get("key") or \
      previous.get("format_version") != meta.get("format_version"):
    return
  old, new = previous["files"], meta["files"]
  unchanged = lambda name: name not in written or (  # noqa: E731
      name in old and old[name].get("sha256") == new[name]["sha256"])
  kept = [s for s in art.STAGES
          if not written & set(art.STAGE_FILES[s])
          and all(n in old and _intact(output, local, n, old[n]) for n in art.STAGE_FILES[s])
          and all(unchanged(n) for d in art.STAGE_DEPS[s] for n in art.STAGE_FILES[d])]
  for stage in kept:
    new.update({n: old[n] for n in art.STAGE_FILES[stage]})
    if stage in previous.get("seconds", {}):
      meta.setdefault("seconds", {})[stage] = previous["seconds"][stage]
  if kept:  # Their counts (num_tokens, rates' fields...): this run's own override the old.
    meta["counts"] = {**previous.get("counts", {}), **meta["counts"]}


def _read_previous_meta(output: str, local: pathlib.Path) -> dict | None:
  try:
    if "://" in output:
      with FileSystems.open(FileSystems.join(output, art.META)) as f:
        previous = json.loads(f.read())
    else:
      previous = json.loads((local / art.META).read_text())
  except Exception:  # noqa: BLE001 - none, or unreadable: nothing to keep, as for a fresh one.
    return None
  ok = isinstance(previous, dict) and isinstance(previous.get("files"), dict)
  return previous if ok else None


def _intact(output: str, local: pathlib.Path, name: str, entry) -> bool:
  """Whether the file has the size and sha256 the previous meta.json recorded."""
  if not isinstance(entry, dict):
    return False
  if "://" not in output:
    return not art.verify_files(local, {"files": {name: entry}}, [name])
  try:
    with FileSystems.open(FileSystems.join(output, name)) as f:
      digest, size = art.sha256_stream(f)
  except Exception:  # noqa: BLE001 - missing or unreadable: not intact.
    return False
  return size == entry.get("bytes") and digest == entry.get("sha256")


class _Write(beam.DoFn if beam else object):
  """Writes the directory once every result has been computed (they arrive as side inputs)."""

  def __init__(self, output, meta, vocab_text, names):
    self.output, self.meta, self.vocab_text, self.names = output, meta, vocab_text, names

  def process(self, _, *results):
    yield write_artifacts(self.output, self.meta, self.vocab_text,
                          **dict(zip(self.names, results, strict=True)))
