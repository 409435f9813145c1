"""The corpus statistics on Apache Beam: the local builder's tables, computed from text shards on
any Beam runner (the local FnApiRunner by default; Dataflow, Spark or Flink with the same code).

  python -m informask_jax.stats.beam_pipeline --config configs/informask.py:paper \
      --files='gs://BUCKET/wiki-books/*.parquet' --output=gs://BUCKET/stats/wiki-books \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://BUCKET/tmp

Flags this module does not know are handed to Beam as pipeline options. Without --output the
sources must be local (or on a shared file system) and the tables go to the config's statistics
cache, `<cache_dir>/stats/<key>`, where train.py finds them: the launcher then reads the corpus
once, sequentially, for the fingerprint that names that directory (as the local builder does).

What runs where. The per-chunk counters of `counting` and `ngrams` are the unit of work and the
merges are theirs (`PairAccumulator`, `KeyCounter`, `merge_unigrams`), wrapped in Beam combiners;
PMI, n-gram scores and the vocabulary come from `pmi.pmi_table`, `ngrams.score_ngrams`,
`ngrams.assemble_vocab` and `ngrams.bigram_table` on the merged counts, so the numbers are the
local builder's, bit for bit:

  files -> documents (the readers of `corpus`: blank-line separated .txt, .jsonl, .parquet)
        -> clean_text, hash split (train only) -> batches -> encode_documents -> Chunk
  Chunk -> chunk_unigram_counts -> sum                          -> unigram_counts.npy
        -> chunk_pair_counts (PMI vocabulary as side input), cut into row blocks
           -> PairAccumulator per block -> finalize -> pmi_table   -> pmi.npz
        -> chunk_ngram_counts, keys cut into hash partitions
           -> KeyCounter per partition -> frequent n-grams and adjacent pairs
        -> one occurrence of each frequent n-gram (side input) -> score_ngrams over those
           occurrences -> assemble_vocab, bigram_table          -> pmi_ngrams.json, pmi_bigrams.json

Row blocks and hash partitions are keys, so the merges run in parallel (one combiner per key)
instead of on one worker. The masking-rate stage is not here: it runs the JAX masker on packed
training rows, which every training run builds anyway, so train.py (or `python -m
informask_jax.stats build --what=rates`) finishes it from these tables in minutes.

Exactness holds for any bundling, chunking and runner (counts are sums), with one caveat shared
with the local builder: two n-grams whose 64-bit keys collide count as one, and which of them
names the entry may differ (probability ~1e-5 at ten million distinct n-grams).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import types

import numpy as np
import scipy.sparse as sp

from informask_jax import cli, paths
from informask_jax.stats import artifacts as art
from informask_jax.stats import build as build_lib
from informask_jax.stats import chunks as chunks_lib
from informask_jax.stats import counting, ngrams
from informask_jax.stats import pmi as pmi_lib

try:  # Optional dependency: `pip install informask_jax[beam]`.
  import apache_beam as beam
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
except ImportError:  # pragma: no cover - exercised only where the extra is missing
  beam = None

# The stages this pipeline builds; "rates" needs packed training rows and the JAX masker.
BEAM_STAGES = ("counts", "pmi", "ngrams")
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
# Accumulators are held whole: how much one holds is bounded by the keys (row blocks, hash
# partitions), not by a spill file that a worker could not hand to another.
_NO_SPILL_MB = 1e12


# --- Launch-time settings, shipped to the workers ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
  """What the workers need besides the tokenizer; plain values, so it pickles small (every
  transform that reads it carries a copy in the job graph)."""

  vocab_size: int
  special_ids: tuple[int, ...]  # pad, unk, cls, sep, mask
  continuation: np.ndarray  # bool (V,): "##" pieces
  text_field: str
  validation_fraction: float
  stats: dict  # config.stats as a dict
  pair_blocks: int = 32  # Row blocks of the pair table: parallel merges.
  ngram_partitions: int = 32  # Hash partitions of the n-gram keys.
  batch_chars: int = 4 << 20  # Characters of text per tokenized chunk (~1M tokens).

  @property
  def special_mask(self) -> np.ndarray:
    special = np.zeros(self.vocab_size, bool)
    special[list(self.special_ids)] = True
    return special


# --- Reading documents ----------------------------------------------------------------------------

def _txt_documents(lines):
  """Blank-line separated documents from raw byte lines, as `corpus` reads .txt files: each byte
  that is not UTF-8 becomes one U+FFFD, a line break inside a document stays (a sentence end)."""
  doc = []
  for raw in lines:
    line = raw.decode("utf-8", errors="surrogateescape")
    line = "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in line)
    if line.strip():
      doc.append(line)
    elif doc:
      yield "".join(doc)
      doc = []
  if doc:
    yield "".join(doc)


def read_documents(path: str, text_field: str, opener=None):
  """Yields the raw text of each document of one shard (.txt, .jsonl/.json lines, .parquet)."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise ValueError(f"{path}: unsupported suffix; the Beam pipeline reads {', '.join(SUFFIXES)}.")
  opener = opener or (lambda p: FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED))
  with opener(path) as f:
    if suffix == ".txt":
      yield from _txt_documents(iter(f.readline, b""))
    elif suffix == ".parquet":
      import pyarrow.parquet as pq

      reader = pq.ParquetFile(f)
      if text_field not in reader.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (text_field); columns are "
                         f"{reader.schema_arrow.names}.")
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
                           f"fields are {fields}.")
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


# --- Combiners around the stats package's merges -------------------------------------------------

class _SplitCounts(beam.CombineFn if beam else object):
  """(documents, validation documents, lowest bucket, highest bucket)."""

  def __init__(self, fraction):
    self.fraction = fraction

  def create_accumulator(self):
    return (0, 0, float("inf"), float("-inf"))

  def add_input(self, acc, bucket):
    return (acc[0] + 1, acc[1] + int(bucket < self.fraction), min(acc[2], bucket),
            max(acc[3], bucket))

  def merge_accumulators(self, accs):
    accs = list(accs)
    return (sum(a[0] for a in accs), sum(a[1] for a in accs), min(a[2] for a in accs),
            max(a[3] for a in accs))

  def extract_output(self, acc):
    return acc


class _UnigramSum(beam.CombineFn if beam else object):
  def __init__(self, vocab_size):
    self.vocab_size = vocab_size

  def create_accumulator(self):
    return None

  def add_input(self, acc, chunk_counts):
    return counting.merge_unigrams(acc, chunk_counts)

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is not None:
        out = counting.merge_unigrams(out, a)
    return out

  def extract_output(self, acc):
    return acc or counting.UnigramCounts(np.zeros(self.vocab_size, np.int64), 0, 0, 0)


class _PairSum(beam.CombineFn if beam else object):
  """One row block's pair table: `PairAccumulator` sums, `finalize` prunes (min_pair_count)."""

  def __init__(self, min_pair_count):
    self.min_pair_count = min_pair_count

  def create_accumulator(self):
    return None

  def add_input(self, acc, table):
    if acc is None:
      acc = counting.PairAccumulator(table.shape[0], memory_cap_mb=_NO_SPILL_MB)
    acc.add(table)
    return acc

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is None:
        continue
      if out is None:
        out = a
      else:
        out.absorb(a)
    return out

  def extract_output(self, acc):
    # Row ids stand in for token ids until the blocks are joined with the vocabulary.
    return acc.finalize(np.arange(acc.num_rows, dtype=np.int32), self.min_pair_count)


class _KeySum(beam.CombineFn if beam else object):
  """One hash partition of n-gram (or adjacent pair) keys: `KeyCounter`, then >= min_count."""

  def __init__(self, min_count):
    self.min_count = min_count

  def create_accumulator(self):
    return ngrams.KeyCounter(memory_cap_mb=_NO_SPILL_MB)

  def add_input(self, acc, keys_counts):
    acc.add(*keys_counts)
    return acc

  def merge_accumulators(self, accs):
    accs = list(accs)
    for other in accs[1:]:
      accs[0].absorb(other)
    return accs[0]

  def compact(self, acc):
    acc.compact()
    return acc

  def extract_output(self, acc):
    return acc.result(self.min_count)


class _ArraySum(beam.CombineFn if beam else object):
  """Element-wise sum of tuples of arrays and numbers (n-gram positions, token counts, ...)."""

  def create_accumulator(self):
    return None

  def add_input(self, acc, value):
    return value if acc is None else tuple(a + b for a, b in zip(acc, value, strict=True))

  def merge_accumulators(self, accs):
    out = None
    for a in accs:
      if a is not None:
        out = self.add_input(out, a)
    return out

  def extract_output(self, acc):
    return acc


# --- Per-chunk work -------------------------------------------------------------------------------

class _Tokenize(beam.DoFn if beam else object):
  """A batch of cleaned training documents -> one `Chunk` (documents without a token dropped)."""

  def __init__(self, tokenizer_json: str):
    self.tokenizer_json = tokenizer_json  # The Rust tokenizer, padding and truncation off.

  def setup(self):
    import tokenizers

    self.backend = tokenizers.Tokenizer.from_str(self.tokenizer_json)

  def process(self, texts):
    from informask_jax import data

    ids, sids, lengths = data.encode_documents(list(texts), self.backend)
    lengths = lengths[lengths > 0]
    if lengths.size:
      offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
      yield chunks_lib.Chunk(ids, sids, offsets)


def _row_blocks(num_rows: int, blocks: int) -> list[tuple[int, int]]:
  bounds = np.linspace(0, num_rows, max(1, min(blocks, num_rows)) + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _pair_blocks(chunk, vocab_ids, settings: Settings):
  """The chunk's [R, R] pair table, as (block, table holding only that block's rows)."""
  s = settings.stats
  r = len(vocab_ids)
  table = counting.chunk_pair_counts(
      chunk, counting.row_lookup(vocab_ids, settings.vocab_size), r, window=int(s["window"]),
      whole_words=bool(s["whole_words"]), continuation=settings.continuation)
  for block, (lo, hi) in enumerate(_row_blocks(r, settings.pair_blocks)):
    a, b = table.indptr[lo], table.indptr[hi]
    if a == b:
      continue
    indptr = np.clip(table.indptr, a, b) - a  # Rows outside [lo, hi) become empty.
    yield block, sp.csr_matrix((table.data[a:b], table.indices[a:b], indptr), shape=(r, r))


def _ngram_parts(chunk, settings: Settings):
  """Partial n-gram and adjacent-pair counts of a chunk, keyed by hash partition; the totals go
  to the "totals" output."""
  part = ngrams.chunk_ngram_counts(chunk, vocab_size=settings.vocab_size,
                                   continuation=settings.continuation,
                                   special=settings.special_mask)
  parts = np.uint64(settings.ngram_partitions)
  for kind, keys, counts in (("ngram", part.keys, part.counts),
                             ("pair", part.pair_keys, part.pair_counts)):
    where = (keys % parts).astype(np.int64)  # The keys' low bits are hash output.
    for p in np.unique(where).tolist():
      sel = where == p
      yield (kind, p), (keys[sel], counts[sel])
  yield beam.pvalue.TaggedOutput(
      "totals", (part.positions, part.token_counts, np.int64(part.num_adjacent)))


def _examples(chunk, candidates, settings: Settings):
  """(key, token ids) of one occurrence in this chunk of each frequent n-gram it holds."""
  if candidates.size == 0:
    return
  words = ngrams.chunk_words(chunk, settings.continuation, settings.special_mask)
  t = chunk.token_ids
  for n in range(2, ngrams.MAX_N + 1):
    pos = np.flatnonzero(words.valid[n])
    keys = ngrams._tag(words.raw[n][pos], n)  # The counters' key of each n-gram.
    idx = np.minimum(np.searchsorted(candidates, keys), candidates.size - 1)
    hit = candidates[idx] == keys
    found, first = np.unique(keys[hit], return_index=True)
    for key, p in zip(found.tolist(), pos[hit][first].tolist(), strict=True):
      yield key, tuple(t[words.start[p]:words.end[p + n - 1]].tolist())


# --- Whole-corpus steps (one worker each, on merged counts) -------------------------------------

def _pmi_vocab(unigrams, settings: Settings):
  s = settings.stats
  if unigrams.num_tokens == 0:
    raise ValueError("The tokenized training corpus holds no tokens: nothing to count.")
  vocab_ids = counting.select_pmi_vocab(unigrams.counts, special_ids=settings.special_ids,
                                        size=s["pmi_vocab_size"], min_count=s["min_count"],
                                        drop_top_k=s["drop_top_k"])
  if vocab_ids.size < 2:
    raise ValueError(
        f"Only {vocab_ids.size} token(s) occur at least config.stats.min_count={s['min_count']} "
        f"times (after dropping config.stats.drop_top_k={s['drop_top_k']}); the corpus is too "
        "small for a PMI table. Lower stats.min_count or use a larger corpus.")
  return vocab_ids


def _join_pair_blocks(blocks, vocab_ids, unigrams, settings: Settings):
  """The row blocks' pruned tables and marginals (disjoint rows) summed into one PairCounts."""
  r = len(vocab_ids)
  counts = sp.csr_matrix((r, r), dtype=np.int64)
  marginals = np.zeros(r, np.int64)
  for _, part in blocks:
    counts = counts + part.counts
    marginals += part.marginals
  counts = counts.tocsr().astype(np.int64, copy=False)
  counts.sort_indices()
  return counting.PairCounts(vocab_ids=np.asarray(vocab_ids, np.int32), counts=counts,
                             marginals=marginals, total=int(marginals.sum()),
                             num_tokens=unigrams.num_tokens,
                             min_pair_count=int(settings.stats["min_pair_count"]))


def _pmi(pairs, settings: Settings):
  s = settings.stats
  table = pmi_lib.pmi_table(pairs, vocab_size=settings.vocab_size,
                            context_alpha=s["context_alpha"], positive_only=s["positive_only"])
  if table.nnz == 0:
    raise ValueError("Every pair that passed config.stats.min_pair_count has PMI <= 0, so the "
                     "PPMI table is empty; the corpus is too small or too uniform.")
  return table


def _ngram_counts(parts, totals, settings: Settings):
  """`ngrams.NgramCounts` from the partitions' frequent keys and the summed totals."""
  def join(kind):
    got = [kc for (k, _), kc in parts if k == kind]
    keys = np.concatenate([k for k, _ in got]) if got else np.zeros(0, np.uint64)
    counts = np.concatenate([c for _, c in got]) if got else np.zeros(0, np.int64)
    order = np.argsort(keys)
    return keys[order].astype(np.uint64), counts[order].astype(np.int64)

  min_count = int(settings.stats["ngram_min_count"])
  if totals is None:  # No chunk at all.
    totals = (np.zeros(ngrams.MAX_N + 1, np.int64), np.zeros(settings.vocab_size, np.int64), 0)
  keys, counts = join("ngram")
  pair_keys, pair_counts = join("pair")
  result = ngrams.NgramCounts(keys, counts, totals[0], pair_keys, pair_counts, totals[1],
                              int(totals[2]), min_count)
  if not np.any(ngrams.key_length(result.keys) >= 2):
    raise ValueError(
        f"No word n-gram (n >= 2) occurs at least stats.ngram_min_count={min_count} times in the "
        f"corpus ({int(result.positions[1])} words): too small a corpus for these settings.")
  return result


def _candidates(counts):
  return counts.keys[ngrams.key_length(counts.keys) >= 2]


def _ngram_vocab(examples, counts, settings: Settings):
  """Scores the frequent n-grams over one occurrence of each (all `score_ngrams` reads from the
  corpus), then assembles the vocabulary and the bigram table as `build_ngram_vocab` does."""
  occurrences = [(np.asarray(t, np.int32), np.zeros(len(t), np.int32)) for t in sorted(examples)]
  size = int(settings.stats["ngram_vocab_size"])
  scored = ngrams.score_ngrams(occurrences, counts, continuation=settings.continuation,
                               special_ids=settings.special_ids)
  grams, lengths, scores, gram_counts = ngrams.assemble_vocab(scored, size)
  bigrams, bigram_scores = ngrams.bigram_table(counts, vocab_size=settings.vocab_size,
                                               size=max(1, size // 2))
  return ngrams.NgramVocab(grams, lengths, scores, gram_counts, bigrams, bigram_scores)


# --- Writing the directory ------------------------------------------------------------------------

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
    for name in written:  # Only these: stale files of other stages stay unvouched for.
      art.record_file(local, meta, name)
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


class _Write(beam.DoFn if beam else object):
  """Writes the directory once every result has been computed (they arrive as side inputs)."""

  def __init__(self, output, meta, vocab_text, names):
    self.output, self.meta, self.vocab_text, self.names = output, meta, vocab_text, names

  def process(self, _, *results):
    yield write_artifacts(self.output, self.meta, self.vocab_text,
                          **dict(zip(self.names, results, strict=True)))


# --- The pipeline ---------------------------------------------------------------------------------

def build_pipeline(p, files: list[str], settings: Settings, tokenizer_json: str, *,
                   what=BEAM_STAGES):
  """Adds the statistics transforms to pipeline `p`; returns the PCollections of the results
  ({"unigrams", "pairs", "pmi", "ngram_vocab"}, singletons, those `what` asks for)."""
  side = beam.pvalue.AsSingleton
  fraction = settings.validation_fraction
  docs = (p | "Shards" >> beam.Create(files)
          | "SpreadShards" >> beam.Reshuffle()
          | "Read" >> beam.FlatMap(read_documents, settings.text_field)
          | "Clean" >> beam.Map(_clean)
          | "DropEmpty" >> beam.Filter(lambda d: d is not None))
  split = (docs | "Buckets" >> beam.Map(lambda d: d[1])
           | "SplitCounts" >> beam.CombineGlobally(_SplitCounts(fraction)))
  chunks = (docs
            | "TrainSplit" >> beam.Filter(lambda d, s: not _is_validation(d[1], s, fraction),
                                          side(split))
            | "Text" >> beam.Map(lambda d: d[0])
            | "Spread" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=settings.batch_chars,
                                            element_size_fn=len)
            | "Tokenize" >> beam.ParDo(_Tokenize(tokenizer_json)))
  out = {}
  if "counts" in what or "pmi" in what:
    out["unigrams"] = (chunks
                       | "Unigrams" >> beam.Map(counting.chunk_unigram_counts, settings.vocab_size)
                       | "SumUnigrams" >> beam.CombineGlobally(_UnigramSum(settings.vocab_size)))
  if "pmi" in what:
    vocab_ids = out["unigrams"] | "PmiVocab" >> beam.Map(_pmi_vocab, settings)
    blocks = (chunks
              | "PairBlocks" >> beam.FlatMap(_pair_blocks, side(vocab_ids), settings)
              | "SumPairs" >> beam.CombinePerKey(_PairSum(int(settings.stats["min_pair_count"])))
              | "PairBlockList" >> beam.combiners.ToList())
    out["pairs"] = blocks | "JoinPairs" >> beam.Map(_join_pair_blocks, side(vocab_ids),
                                                    side(out["unigrams"]), settings)
    out["pmi"] = out["pairs"] | "Pmi" >> beam.Map(_pmi, settings)
  if "ngrams" in what:
    min_count = int(settings.stats["ngram_min_count"])
    parts = chunks | "NgramParts" >> beam.FlatMap(_ngram_parts, settings).with_outputs(
        "totals", main="keys")
    totals = parts.totals | "SumTotals" >> beam.CombineGlobally(_ArraySum())
    frequent = (parts.keys
                | "SumKeys" >> beam.CombinePerKey(_KeySum(min_count))
                | "KeyPartList" >> beam.combiners.ToList())
    counts = frequent | "NgramCounts" >> beam.Map(_ngram_counts, side(totals), settings)
    candidates = counts | "Candidates" >> beam.Map(_candidates)
    examples = (chunks
                | "Examples" >> beam.FlatMap(_examples, side(candidates), settings)
                | "OneExample" >> beam.CombinePerKey(min)
                | "ExampleTokens" >> beam.Values()
                | "ExampleList" >> beam.combiners.ToList())
    out["ngram_vocab"] = examples | "NgramVocab" >> beam.Map(_ngram_vocab, side(counts), settings)
  return out


# --- Launching -----------------------------------------------------------------------------------

def _require_beam():
  if beam is None:
    raise ImportError("The Beam pipeline needs apache-beam: pip install 'informask_jax[beam]' "
                      "(or pip install apache-beam).")


def check_config(config) -> list[str]:
  """Errors raised before anything runs; returns the file patterns to read."""
  build_lib.check_config(config)
  if int(config.data.get("max_documents", -1)) >= 0:
    raise ValueError(f"config.data.max_documents={config.data.max_documents}: 'the first N "
                     "documents' has no meaning in a parallel pipeline; use -1 and shard the "
                     "input files instead.")
  if not 0 <= config.data.validation_fraction < 1:
    raise ValueError(f"config.data.validation_fraction={config.data.validation_fraction} must be "
                     "in [0, 1).")
  patterns = []
  for i, source in enumerate(config.data.sources):
    if source.kind != "files":
      raise ValueError(
          f"config.data.sources[{i}].kind={source.kind!r}: the Beam pipeline reads files only. "
          "Export the corpus to .txt/.jsonl/.parquet shards and pass them with --files (a hub "
          "dataset's own parquet shards work as they are).")
    patterns.append(source.name)
  return patterns


def list_files(patterns) -> list[tuple[str, int]]:
  """(path, bytes) of every shard, sorted; local directories are walked as `corpus` does."""
  from informask_jax import corpus

  found = {}
  for pattern in patterns:
    where = f"input {pattern!r}"
    if "://" not in pattern:
      for f in corpus._expand_files(pattern, where):
        found[f] = os.path.getsize(f)
      continue
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
      raise FileNotFoundError(f"{where}: no file matches.")
    for m in matches:
      found[m.path] = m.size_in_bytes
  bad = [f for f in found if os.path.splitext(f)[1].lower() not in SUFFIXES]
  if bad:
    raise ValueError(f"{bad[0]}: unsupported suffix; the Beam pipeline reads "
                     f"{', '.join(SUFFIXES)}.")
  return sorted(found.items())


def _with_files(config, files, text_field):
  """A copy of the config whose sources are `files` (and whose text fields are `text_field`)."""
  import ml_collections

  config = ml_collections.ConfigDict(config.to_dict())
  sources = [dict(s) for s in config.data.sources]
  if files:
    sources = [dict(kind="files", name=f, config=None, split="train", text_field="text",
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
    if any("://" in f for f, _ in listed):
      raise ValueError("Remote inputs need --output: the statistics cache is keyed by a "
                       "fingerprint of the corpus read in order, which the launcher cannot read.")
    loaded = corpus.load_corpus(config.data)
    split_fps = {name: corpus.corpus_fingerprint(loaded[name]) for name in loaded}
    corpus_fp = corpus.combine_fingerprints(split_fps)
  else:
    # Names and sizes of the shards: cheap, and it changes whenever the input does.
    corpus_fp = "files-" + hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:26]
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
  meta = build_lib._fresh_meta(config, like, pathlib.PurePath(key))
  settings = Settings(
      vocab_size=int(continuation.shape[0]), special_ids=tuple(int(i) for i in ids),
      continuation=continuation, text_field=_text_field(config),
      validation_fraction=float(config.data.validation_fraction), stats=config.stats.to_dict())
  tokens = tokenizer.convert_ids_to_tokens(list(range(settings.vocab_size)))
  vocab_text = "".join(f"{t if t is not None else ''}\n" for t in tokens)
  tokenizer_json = data._plain_backend(tokenizer).to_str()
  return [f for f, _ in listed], settings, tokenizer_json, meta, vocab_text, output


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
  paths, settings, tokenizer_json, meta, vocab_text, output = _launch_state(
      config, patterns, output)
  settings = dataclasses.replace(settings, pair_blocks=pair_blocks,
                                 ngram_partitions=ngram_partitions, batch_chars=batch_chars)
  options = PipelineOptions(list(beam_args))
  if options.view_as(StandardOptions).runner is None:
    # The local batch runner, named: Beam's default, the DirectRunner, first tries its Prism
    # runner, which it downloads from GitHub (offline: a failure in the log, then a fallback).
    options.view_as(StandardOptions).runner = "FnApiRunner"
  meta["built_with"] = {"apache_beam": beam.__version__,
                        "runner": str(options.view_as(StandardOptions).runner),
                        "shards": len(paths)}
  with beam.Pipeline(options=options) as p:
    results = build_pipeline(p, paths, settings, tokenizer_json, what=what)
    names = sorted(results)
    _ = (p | "Once" >> beam.Create([None])
         | "Write" >> beam.ParDo(_Write(output, meta, vocab_text, names),
                                 *[beam.pvalue.AsSingleton(results[n]) for n in names]))
  return output


def _main() -> None:
  """Command line: this module's flags (below) and the config's; the rest goes to Beam."""
  from absl import app, flags
  from ml_collections import config_flags

  config = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, e.g. configs/informask.py:paper.", lock_config=True)
  output = flags.DEFINE_string(
      "output", "", "Directory (local or gs://, s3://, hdfs://...) for the tables; empty: the "
      "config's statistics cache (local inputs only), where train.py looks.")
  files = flags.DEFINE_list("files", [], "File patterns of .txt/.jsonl/.parquet shards replacing "
                            "config.data.sources.")
  text_field = flags.DEFINE_string("text_field", "", "Record field holding the text "
                                   "(.jsonl/.parquet); empty: the sources' text_field.")
  what = flags.DEFINE_list("what", list(BEAM_STAGES), f"Stages to build, from {BEAM_STAGES}.")
  pair_blocks = flags.DEFINE_integer("pair_blocks", 32, "Row blocks of the pair table (parallel "
                                     "merges; ~ a few per worker).")
  partitions = flags.DEFINE_integer("ngram_partitions", 32, "Hash partitions of the n-gram keys.")

  def parse(argv):  # Known flags are ours; the others are Beam pipeline options.
    return cli.parse_flags(argv, known_only=True)

  def main(argv):
    if config.value is None:
      raise app.UsageError("--config is required, e.g. --config configs/informask.py:paper.")
    with cli.user_errors("python -m informask_jax.stats.beam_pipeline"):
      print(run(config.value, output=output.value or None, files=files.value,
                text_field=text_field.value or None, what=what.value, beam_args=argv[1:],
                pair_blocks=pair_blocks.value, ngram_partitions=partitions.value))

  app.run(main, flags_parser=parse)


if __name__ == "__main__":
  sys.argv[0] = "python -m informask_jax.stats.beam_pipeline"  # Errors name the command typed.
  _main()
