"""The Beam pipeline of the corpus statistics: the same tables as the local builder,
bit for bit, from .txt / .jsonl / .parquet shards; the rate stage finishes from its tables; its
readers match `corpus`; bad input fails before the pipeline starts."""

import contextlib
import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import scipy.sparse as sp

from configs import base
from informask_jax import corpus, corpus_files, data, stats
from informask_jax.stats import artifacts, counting
from informask_jax.stats import beam_pipeline as bp
from informask_jax.stats.beam_pipeline import writing as beam_writing

# Every file a Beam build writes, and those whose bytes do not depend on when they were written
# (an .npz is a zip archive with timestamps; its arrays are compared instead).
TABLES = ("unigram_counts.npy", "pmi_ngrams.json", "pmi_bigrams.json", "vocab.txt")
RUNNER = ["--runner=FnApiRunner"]


def _beam():
  return pytest.importorskip("apache_beam")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """300 wiki-vital summaries in three shards: blank-line separated .txt, .jsonl and .parquet."""
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  with open(corpus._locate_wiki_vital(), encoding="utf-8") as f:
    records = json.load(f)
  texts = [corpus.clean_text(records[t]["extract"] or "") for t in sorted(records)[:300]]
  texts = [t for t in texts if t]
  out = tmp_path_factory.mktemp("shards")
  (out / "a.txt").write_text("\n\n".join(texts[:100]) + "\n", encoding="utf-8")
  (out / "b.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[100:200]),
                               encoding="utf-8")
  pq.write_table(pa.table({"body": texts[200:]}), out / "c.parquet")
  return out


def _config(cache_dir, shard_dir, **stats_overrides):
  c = base.get_base_config("tiny")
  c.data.sources = [ml_collections.ConfigDict(dict(
      kind="files", name=str(shard_dir), config=None, split="train", text_field="body",
      streaming=False))]
  c.data.cache_dir = str(cache_dir)
  c.data.num_proc = 1
  c.data.seq_len = 64
  c.tokenizer.vocab_size = 2048
  c.stats.pmi_vocab_size = 400
  c.stats.min_count = 3
  c.stats.ngram_vocab_size = 300
  c.stats.ngram_min_count = 3
  c.stats.rate_sample_sequences = 32
  c.masking.num_candidates = 4
  for key, value in stats_overrides.items():
    c.stats[key] = value
  return c


# Small batches, row blocks and partitions: many chunks and many keys per combiner.
SMALL = dict(batch_chars=20_000, pair_blocks=3, ngram_partitions=4)


def _assert_same_tables(local_dir, beam_dir, names=TABLES, pmi=True):
  for name in names:
    assert (local_dir / name).read_bytes() == (beam_dir / name).read_bytes(), name
  if pmi:
    a, b = sp.load_npz(local_dir / "pmi.npz"), sp.load_npz(beam_dir / "pmi.npz")
    assert a.nnz > 1000
    for field in ("indptr", "indices", "data"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
      assert getattr(a, field).dtype == getattr(b, field).dtype
  local = json.loads((local_dir / "meta.json").read_text())["counts"]
  beamed = json.loads((beam_dir / "meta.json").read_text())["counts"]
  assert beamed, beamed
  assert {k: local[k] for k in beamed} == beamed


@pytest.fixture(scope="module")
def built(shards, tmp_path_factory):
  """The local builder's full build, and the Beam build of the same config into a fresh cache."""
  _beam()
  local_config = _config(tmp_path_factory.mktemp("local"), shards)
  local_dir = stats.build_artifacts(local_config, progress=False)
  beam_config = _config(tmp_path_factory.mktemp("beam"), shards)
  beam_dir = pathlib.Path(bp.run(beam_config, beam_args=RUNNER, **SMALL))
  return local_config, local_dir, beam_config, beam_dir


def test_beam_tables_equal_the_local_builders(built):
  local_config, local_dir, beam_config, beam_dir = built
  # Same cache key: the corpus, tokenizer and settings fingerprints agree.
  assert beam_dir.name == local_dir.name
  assert beam_dir.parent == pathlib.Path(beam_config.data.cache_dir) / "stats"
  _assert_same_tables(local_dir, beam_dir)
  meta = json.loads((beam_dir / "meta.json").read_text())
  assert meta["counts"]["num_documents"] > 250 and meta["counts"]["ngrams"] > 50
  assert meta["built_with"]["shards"] == 3
  a = stats.load_artifacts(beam_dir, tokenizer_fingerprint=meta["tokenizer_fingerprint"],
                           vocab_size=meta["vocab_size"], need=bp.BEAM_STAGES)
  assert a.rates is None and len(a.ngrams) == meta["counts"]["ngrams"]


def test_rate_stage_finishes_from_the_beam_tables(built):
  local_config, local_dir, beam_config, beam_dir = built
  stamps = {n: (beam_dir / n).stat().st_mtime_ns for n in ("pmi.npz", "unigram_counts.npy")}
  pipeline = data.build_input_pipeline(beam_config)
  assert stats.ensure_artifacts(beam_config, pipeline, ("rates",), progress=False) == beam_dir
  assert {n: (beam_dir / n).stat().st_mtime_ns for n in stamps} == stamps  # Only rates built.
  for name in ("rates.npy", "id_mask_prob.json"):
    assert (beam_dir / name).read_bytes() == (local_dir / name).read_bytes(), name


def test_a_beam_run_keeps_the_intact_stages_it_did_not_build(built, shards, tmp_path, caplog):
  """Its fresh meta.json dropped them: --what=ngrams into a full local build left only the
  n-grams listed, and the next `stats build` counted everything again."""
  local_config, local_dir, _, _ = built
  cache = tmp_path / "cache"
  shutil.copytree(local_config.data.cache_dir, cache)
  config = _config(cache, shards)
  directory = cache / "stats" / local_dir.name
  before = json.loads((directory / "meta.json").read_text())
  assert bp.run(config, what=("ngrams",), beam_args=RUNNER, **SMALL) == str(directory)
  after = json.loads((directory / "meta.json").read_text())
  assert after["files"] == before["files"]  # The n-grams rewritten byte for byte; the rest kept.
  assert after["counts"] == before["counts"] and after["seconds"]["rates"] > 0
  with caplog.at_level(logging.INFO):
    stats.build_artifacts(config, progress=False)
  assert "built and intact" in caplog.text
  # Counts that differ from those the PMI table and the rates were built from: both dropped.
  after["files"]["unigram_counts.npy"]["sha256"] = "0" * 64
  (directory / "meta.json").write_text(json.dumps(after))
  bp.run(config, what=("counts",), beam_args=RUNNER, **SMALL)
  files = json.loads((directory / "meta.json").read_text())["files"]
  assert sorted(files) == ["pmi_bigrams.json", "pmi_ngrams.json", "unigram_counts.npy",
                           "vocab.txt"]


def test_a_counts_only_run_on_an_empty_corpus_fails_as_the_local_builder(built, tmp_path):
  """With --output (the launcher reads no corpus) it wrote a table of zeros and exited 0."""
  local_config, _, _, _ = built
  config = _config(tmp_path / "cache", tmp_path)
  config.tokenizer.name_or_path = str(
      next((pathlib.Path(local_config.data.cache_dir) / "tokenizers").iterdir()))
  (tmp_path / "blank.txt").write_text("\n\n   \n")
  with pytest.raises(ValueError, match="holds no tokens: nothing to count"):
    bp.run(config, output=str(tmp_path / "out"), files=[str(tmp_path / "blank.txt")],
           what=("counts",), beam_args=RUNNER)
  assert not (tmp_path / "out" / "meta.json").exists()


def test_window_whole_words_and_an_explicit_output(built, shards, tmp_path, caplog):
  """Other counting settings, a tokenizer given by path, and a directory outside the cache; the
  local runner says that stats.memory_cap_mb does not bound it."""
  local_config, local_dir, _, _ = built
  options = dict(window=4, whole_words=True, context_alpha=0.75, drop_top_k=5, min_pair_count=3)
  local = stats.build_artifacts(_config(local_config.data.cache_dir, shards, **options),
                                what=("pmi",), progress=False)
  config = _config(tmp_path / "cache", shards, **options)
  tokenizer_dir = next((pathlib.Path(local_config.data.cache_dir) / "tokenizers").iterdir())
  config.tokenizer.name_or_path = str(tokenizer_dir)
  # No --runner: the FnApiRunner, named (Beam's DirectRunner would try to download Prism).
  with caplog.at_level(logging.WARNING):
    out = pathlib.Path(bp.run(config, output=str(tmp_path / "out"), what=("counts", "pmi"),
                              beam_args=[], **SMALL))
  assert "stats.memory_cap_mb does not apply under Beam" in caplog.text
  assert out == tmp_path / "out" and not (out / "pmi_ngrams.json").exists()
  _assert_same_tables(local, out, names=("unigram_counts.npy",))
  meta = json.loads((out / "meta.json").read_text())
  assert meta["corpus_fingerprint"].startswith("files-")
  assert meta["built_with"]["runner"] == "FnApiRunner"
  assert sorted(meta["files"]) == ["pmi.npz", "unigram_counts.npy", "vocab.txt"]


def test_a_file_two_sources_name_is_counted_twice_as_by_the_local_builder(built, shards,
                                                                          tmp_path):
  """The shard folder and one of its files again (a domain weighted up): the local builder reads
  each source, so that file twice; Beam listed each file once, and saved fewer counts under the
  same cache key."""
  local_config, _, _, _ = built
  tokenizer_dir = next((pathlib.Path(local_config.data.cache_dir) / "tokenizers").iterdir())
  built_dirs = {}
  for name in ("local", "beam"):
    config = _config(tmp_path / name, shards)
    config.tokenizer.name_or_path = str(tokenizer_dir)
    again = dict(config.data.sources[0].to_dict(), name=str(shards / "b.jsonl"))
    config.data.sources = [config.data.sources[0], ml_collections.ConfigDict(again)]
    built_dirs[name] = pathlib.Path(
        stats.build_artifacts(config, what=("counts",), progress=False) if name == "local"
        else bp.run(config, what=("counts",), beam_args=RUNNER, **SMALL))
  assert built_dirs["local"].name == built_dirs["beam"].name  # The same cache key.
  _assert_same_tables(built_dirs["local"], built_dirs["beam"], names=("unigram_counts.npy",),
                      pmi=False)


def test_output_fingerprint_follows_the_shards_names_sizes_and_times(built, shards, tmp_path):
  """With --output the launcher reads no corpus: its fingerprint (which keys the statistics)
  comes from the shards' names, sizes and modification times, so a shard that grows gives another
  one, and so does one edited in place at the same size (a partial rerun into the same --output
  kept the old corpus's counts beside the new one's n-grams)."""
  local_config, _, _, _ = built
  shard_dir = tmp_path / "shards"
  shutil.copytree(shards, shard_dir)
  config = _config(tmp_path / "cache", shard_dir)
  config.tokenizer.name_or_path = str(next(
      (pathlib.Path(local_config.data.cache_dir) / "tokenizers").iterdir()))

  def fingerprint():
    meta = bp._launch_state(config, bp.check_config(config), str(tmp_path / "out"))[3]
    return meta["corpus_fingerprint"]

  before = fingerprint()
  assert before == fingerprint() and before.startswith("files-")
  with open(shard_dir / "a.txt", "a", encoding="utf-8") as f:
    f.write("\nOne more document.\n")
  grown = fingerprint()
  assert grown != before
  shard = shard_dir / "a.txt"
  text, stat = shard.read_text(encoding="utf-8"), shard.stat()
  shard.write_text(text.replace("One more", "One less"), encoding="utf-8")
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # Coarse clocks tick too.
  assert shard.stat().st_size == stat.st_size and fingerprint() not in (before, grown)


def test_txt_reader_matches_the_corpus_reader(tmp_path):
  path = tmp_path / "odd.txt"
  path.write_bytes(b"\n\nFirst doc line one.\r\nline two \xff\xfe end\n   \n\n"
                   b"Second \xe2\x82 doc.\n\t\n\nThird, no final newline")
  expected = [d["text"] for d in corpus_files._read_txt([str(path)])]
  assert len(expected) == 3 and "\ufffd\ufffd" in expected[0] and "\ufffd\ufffd" in expected[1]
  assert list(bp.read_documents(str(path), "text", opener=lambda p: open(p, "rb"))) == expected


def test_txt_reader_drops_a_bom_and_splits_old_mac_line_ends_as_the_corpus_reader(tmp_path):
  """A byte-order mark stayed in the first document under Beam (another split hash) and a file of
  lone \r line ends was one document there, many locally: other tables under the same key."""
  path = tmp_path / "mac.txt"
  path.write_bytes(b"\xef\xbb\xbfFirst doc.\rSecond line.\r\rSecond doc.\r")
  expected = [d["text"] for d in corpus_files._read_txt([str(path)])]
  assert expected == ["First doc.\rSecond line.\r", "Second doc.\r"]
  assert list(bp.read_documents(str(path), "text", opener=lambda p: open(p, "rb"))) == expected


def test_json_array_and_non_text_fields_name_the_file(tmp_path):
  array = tmp_path / "docs.json"
  array.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=1))
  with pytest.raises(ValueError, match=r"docs.json, line 1: not JSON Lines"):
    list(bp.read_documents(str(array), "text", opener=lambda p: open(p, "rb")))
  with pytest.raises(ValueError, match="is int 3, not a string"):
    bp._clean(3)


def test_jsonl_records_without_the_field_are_skipped_as_by_the_corpus_reader(tmp_path):
  """Beam refused the first record without the field, naming the file, though the local reader
  (and the launcher's own read) skips it with a warning: a corpus that train.py and `stats
  build` read could not be counted on Beam, and its advice to change --text_field was wrong."""
  path = tmp_path / "mixed.jsonl"
  path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"title": "no text"}\n\n{"text": null}\n'
                   b'{"text": "two"}\n')
  expected = [d["text"] for d in corpus_files._read_json([str(path)], "text", "where")]
  assert expected == ["one", None, None, "two"]
  assert list(bp.read_documents(str(path), "text", opener=lambda p: open(p, "rb"))) == expected


@pytest.mark.parametrize("line, problem", [
    (b'{"text": "caf\xe9"}', r"byte 0xe9 .* is not valid UTF-8"),
    (b'{"text": "half \\ud800 pair"}', r"half of a UTF-16 surrogate pair"),
    (b'{"text": 3}', r"is int 3, not a string"),
])
def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path, line, problem):
  """These failed inside the pipeline naming neither the file nor the line ("UnicodeDecodeError:
  'utf-8 [while running 'Read']' codec can't decode byte 0xe9", ...), which the local reader
  names."""
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
  with pytest.raises(ValueError, match=r"bad.jsonl, line 2: .*" + problem):
    list(bp.read_documents(str(path), "text", opener=lambda p: open(p, "rb")))


def test_a_parquet_column_of_numbers_names_the_file(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
  with pytest.raises(ValueError, match=r"n.parquet, row 1: .* is int 1, not a string"):
    list(bp.read_documents(str(tmp_path / "n.parquet"), "text", opener=lambda p: open(p, "rb")))


def test_bad_input_fails_before_the_pipeline(shards, tmp_path):
  _beam()
  config = _config(tmp_path, shards)
  config.data.sources[0].kind = "hub"
  with pytest.raises(ValueError, match=r"sources\[0\].kind='hub'.*files only"):
    bp.run(config, beam_args=RUNNER)
  config = _config(tmp_path, shards)
  config.data.max_documents = 10
  with pytest.raises(ValueError, match="max_documents=10"):
    bp.run(config, beam_args=RUNNER)
  with pytest.raises(ValueError, match="choose stages from"):
    bp.run(_config(tmp_path, shards), what=("rates",), beam_args=RUNNER)
  with pytest.raises(ValueError, match="name_or_path is empty"):
    bp.run(_config(tmp_path, shards), output=str(tmp_path / "o"), beam_args=RUNNER)
  (tmp_path / "notes.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match="notes.csv: unsupported suffix"):
    bp.run(_config(tmp_path, shards), files=[str(tmp_path / "*.csv")], beam_args=RUNNER)
  with pytest.raises(FileNotFoundError, match="no file matches"):
    bp.run(_config(tmp_path, shards), files=[str(tmp_path / "*.parquet")], beam_args=RUNNER)
  config = _config(tmp_path, shards, min_pair_count=0)
  with pytest.raises(ValueError, match="config.stats.min_pair_count=0"):
    bp.run(config, beam_args=RUNNER)


def test_missing_text_field_names_the_file(built, shards, tmp_path):
  """A record without the field fails inside the pipeline, naming the shard and the line."""
  local_config = built[0]
  config = _config(tmp_path, shards)
  config.tokenizer.name_or_path = str(
      next((pathlib.Path(local_config.data.cache_dir) / "tokenizers").iterdir()))
  with pytest.raises(Exception, match=r"b.jsonl, line 1: no field 'txt' \(text_field\); fields "
                     r"are \['body'\]\. Name the text's field with --text_field=FIELD\."):
    bp.run(config, output=str(tmp_path / "out"), files=[str(shards / "b.jsonl")],
           text_field="txt", beam_args=RUNNER)
  assert not (tmp_path / "out" / artifacts.META).exists()


# --- Pieces the local runner builds above never reach: merged accumulators, the tiny-corpus
# split, a remote --output ----------------------------------------------------------------

def _combine(fn, groups):
  """Each group into its own accumulator (one left empty), merged, then extracted."""
  accs = [fn.create_accumulator()]
  for group in groups:
    acc = fn.create_accumulator()
    for value in group:
      acc = fn.add_input(acc, value)
    accs.append(acc)
  return fn.extract_output(fn.merge_accumulators(accs))


def _local_split(buckets, fraction):
  import datasets

  ds = datasets.Dataset.from_dict({"text": [f"d{i}" for i in range(len(buckets))],
                                   "_bucket": list(buckets)})
  held = set(corpus._split(ds, fraction)["validation"]["text"])
  return [f"d{i}" in held for i in range(len(buckets))]


@pytest.mark.parametrize("buckets, fraction", [
    ([0.7, 0.3, 0.5, 0.9], 0.1),  # None below the fraction: the smallest is held out.
    ([0.7, 0.3, 0.5, 0.2], 0.95),  # All below: the largest goes to training.
    ([0.6], 0.1), ([0.05], 0.1),  # One document: no rule.
    ([0.25, 0.5, 0.75], 0.5),  # A bucket equal to the fraction is training.
    ([0.01, 0.5, 0.9], 0.2), ([0.3, 0.5], 0.0),
])
def test_hash_split_matches_the_local_builders(buckets, fraction):
  _beam()
  fn = bp._SplitCounts(fraction)
  # Split over workers with the smallest and largest buckets not in the first group.
  split = _combine(fn, [buckets[:1], buckets[1:]])
  got = [bp._is_validation(b, split, fraction) for b in buckets]
  assert got == _local_split(buckets, fraction)


def test_hash_split_of_copies_of_a_document_matches_the_local_builders():
  """Copies share a hash: both builders put them on one side, whatever their order."""
  _beam()
  for buckets, fraction, held in [([0.3, 0.3, 0.7], 0.1, [True, True, False]),
                                  ([0.3, 0.9, 0.9], 0.95, [True, False, False])]:
    split = _combine(bp._SplitCounts(fraction), [buckets[:1], buckets[1:]])
    got = [bp._is_validation(b, split, fraction) for b in buckets]
    assert got == _local_split(buckets, fraction) == held, buckets
  # Copies of one text only: nothing to split. Training refuses such a corpus (it has no
  # validation); the statistics, which read the training side, count every copy.
  split = _combine(bp._SplitCounts(0.1), [[0.4], [0.4]])
  assert [bp._is_validation(b, split, 0.1) for b in (0.4, 0.4)] == [False, False]
  with pytest.raises(ValueError, match="copies of one text"):
    _local_split([0.4, 0.4], 0.1)


def test_combiners_merge_partial_accumulators():
  """Runners other than the local one merge per-worker accumulators: the result must be the
  one of a single accumulator over all inputs."""
  _beam()
  rng = np.random.default_rng(0)
  uni = [counting.UnigramCounts(rng.integers(0, 5, 8), 10 + i, 2 + i, 1) for i in range(4)]
  got = _combine(bp._UnigramSum(8), [uni[:1], uni[1:3], uni[3:]])
  np.testing.assert_array_equal(got.counts, sum(u.counts for u in uni))
  assert (got.num_tokens, got.num_sentences, got.num_documents) == (46, 14, 4)

  parts = [(np.array([1, 5, 9], np.uint64), np.array([1, 1, 2], np.int64)),
           (np.array([5, 9], np.uint64), np.array([1, 1], np.int64)),
           (np.array([1, 7], np.uint64), np.array([1, 2], np.int64))]
  keys, counts = _combine(bp._KeySum(min_count=2), [parts[:1], parts[1:2], parts[2:]])
  assert (keys.tolist(), counts.tolist()) == ([1, 5, 7, 9], [2, 2, 2, 3])

  totals = [(np.arange(3), np.ones(4, np.int64), np.int64(i)) for i in range(3)]
  got = _combine(bp._ArraySum(), [totals[:1], totals[1:]])
  assert [x.tolist() for x in got] == [[0, 3, 6], [3, 3, 3, 3], 3]


def test_pair_combiner_merges_partial_accumulators():
  """Merged accumulators hold tables not summed yet (below the merge threshold): they count."""
  _beam()
  rng = np.random.default_rng(0)
  tables = [sp.csr_matrix(rng.integers(0, 2, (6, 6)).astype(np.int64)) for _ in range(4)]
  pairs = _combine(bp._PairSum(min_pair_count=3), [tables[:1], tables[1:3], tables[3:]])
  single = _combine(bp._PairSum(min_pair_count=3), [tables])  # One accumulator: no merge.
  whole = sum(t.toarray() for t in tables)
  np.testing.assert_array_equal(single.marginals, whole.sum(axis=1))
  np.testing.assert_array_equal(pairs.marginals, single.marginals)
  assert pairs.total == single.total == whole.sum()
  np.testing.assert_array_equal(pairs.counts.toarray(), single.counts.toarray())
  assert single.counts.nnz > 0


def test_remote_output_copies_every_file_with_meta_json_last(monkeypatch, tmp_path):
  """--output=gs://...: the tables are staged locally, then copied, meta.json last."""
  _beam()
  written = {}

  class FakeFileSystems:
    join = staticmethod(lambda a, b: f"{a}/{b}")

    @staticmethod
    @contextlib.contextmanager
    def create(path):
      buf = io.BytesIO()
      yield buf
      written[path] = buf.getvalue()

  monkeypatch.setattr(beam_writing, "FileSystems", FakeFileSystems)  # Where write_artifacts looks.
  staged = []
  real_mkdtemp = beam_writing.tempfile.mkdtemp
  monkeypatch.setattr(beam_writing.tempfile, "mkdtemp",
                      lambda **kw: staged.append(real_mkdtemp(dir=tmp_path, **kw)) or staged[-1])
  unigrams = counting.UnigramCounts(np.array([3, 0, 2], np.int64), 5, 2, 1)
  out = bp.write_artifacts("gs://bucket/stats", {"counts": {}}, "a\nb\nc\n", unigrams=unigrams)
  assert out == "gs://bucket/stats"
  assert list(written) == [f"gs://bucket/stats/{n}"
                           for n in (artifacts.VOCAB, "unigram_counts.npy", artifacts.META)]
  meta = json.loads(written[f"gs://bucket/stats/{artifacts.META}"])
  assert meta["counts"] == {"num_tokens": 5, "num_sentences": 2, "num_documents": 1}
  assert set(meta["files"]) == {artifacts.VOCAB, "unigram_counts.npy"}
  assert np.load(io.BytesIO(written["gs://bucket/stats/unigram_counts.npy"])).tolist() == [3, 0, 2]
  assert staged and not pathlib.Path(staged[0]).exists()  # The staging directory is removed.


def test_flags_and_config_the_pipeline_refuses(tmp_path):
  _beam()
  config = _config(tmp_path, tmp_path)
  for name in ("pair_blocks", "ngram_partitions", "batch_chars"):
    with pytest.raises(ValueError, match=rf"{name}=0 must be >= 1"):
      bp.run(config, **{name: 0}, beam_args=RUNNER)
  config.data.validation_fraction = 1.0
  with pytest.raises(ValueError, match=r"validation_fraction=1.0 must be in \[0, 1\)"):
    bp.check_config(config)
  config = _config(tmp_path, tmp_path)
  config.data.sources = [dict(config.data.sources[0], text_field=f) for f in ("body", "text")]
  with pytest.raises(ValueError, match=r"different text fields \['body', 'text'\]"):
    bp._text_field(config)


def test_arguments_neither_ours_nor_beams_are_refused(tmp_path):
  """Beam only logged them and ran on: an unquoted --files glob read its first file (the shell
  passed the others as stray words) and exited 0; a mistyped --ouput wrote into the cache."""
  _beam()
  from informask_jax.stats.beam_pipeline.launch import check_beam_args

  check_beam_args(["--runner=FnApiRunner", "--direct_num_workers", "2", "--project=p",
                   "--temp_location=gs://b/tmp", "--save_main_session"])
  with pytest.raises(ValueError, match=r"Unexpected argument '.*b.jsonl': .* quote it "
                                       r"\(--files='shards/\*.jsonl'\)"):
    check_beam_args([str(tmp_path / "b.jsonl"), str(tmp_path / "c.parquet")])
  with pytest.raises(ValueError, match=r"Unknown flag '--ouput': .* did you mean '--output'\?"):
    check_beam_args(["--ouput=/tmp/x"])
  config = _config(tmp_path, tmp_path)
  with pytest.raises(ValueError, match=r"Unknown flag '--force'"):  # Before any data is read.
    bp.run(config, beam_args=["--force"])


def test_an_output_the_write_step_could_not_write_is_refused_first(tmp_path, monkeypatch):
  """A file system without its extra installed (gs:// without apache-beam[gcp]) or an existing
  file failed in the Write step, the pipeline's last, after all the counting."""
  _beam()
  from informask_jax.stats.beam_pipeline import launch

  monkeypatch.setattr(launch, "_launch_state", lambda *a: pytest.fail("the corpus was read"))
  config = _config(tmp_path, tmp_path)
  (tmp_path / "a.txt").write_text("some text\n")
  (tmp_path / "taken").write_text("")
  with pytest.raises(FileExistsError, match=r"--output .*taken exists and is not a directory"):
    bp.run(config, output=str(tmp_path / "taken"), beam_args=RUNNER)
  with pytest.raises(ValueError, match=r"--output=nosuchfs://bucket/stats: "):
    bp.run(config, output="nosuchfs://bucket/stats", beam_args=RUNNER)


def test_files_keep_the_config_text_field_that_its_error_names(tmp_path):
  """--files replaced the sources with text_field "text" whatever the config said, so the
  launcher's "no column 'text' ... Name the text's column with
  '--config.data.sources[0].text_field=body'" led back to the same error. The files now take the
  config's field; --text_field still wins, and differing fields are refused, naming the flag."""
  from informask_jax.stats.beam_pipeline.launch import _with_files

  config = _config(tmp_path, tmp_path)  # Its one source reads "body".
  files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
  replaced = _with_files(config, files, None).data.sources
  assert [(s.kind, s.name, s.text_field) for s in replaced] == [
      ("files", files[0], "body"), ("files", files[1], "body")]
  assert {s.text_field for s in _with_files(config, files, "txt").data.sources} == {"txt"}
  config.data.sources = [dict(config.data.sources[0], text_field=f) for f in ("body", "text")]
  with pytest.raises(ValueError, match=r"different text fields .*\(--text_field\)"):
    _with_files(config, files, None)
  assert _with_files(config, files, "body").data.sources[1].text_field == "body"


def test_a_text_field_error_advises_the_flag_that_sets_it(tmp_path):
  """It advised --config.data.sources[0].text_field=body, which --text_field overrides."""
  _beam()
  (tmp_path / "b.jsonl").write_text(json.dumps({"body": "Some text here."}) + "\n")
  config = _config(tmp_path / "cache", tmp_path)
  with pytest.raises(ValueError, match=r"no column 'txt' .* Name the text's column with "
                                       r"'--text_field=body'\.$"):
    bp.run(config, files=[str(tmp_path / "b.jsonl")], text_field="txt", beam_args=RUNNER)


def test_the_command_line_names_a_bad_override_from_any_directory(tmp_path):
  """Run from outside the repository with a config given by its absolute path (its `configs`
  package was not importable), a mistyped override is one line naming the command and the key
  (it was an AttributeError traceback; bad flags named the __main__ file's path)."""
  _beam()
  root = pathlib.Path(__file__).parent.parent
  out = subprocess.run(
      [sys.executable, "-m", "informask_jax.stats.beam_pipeline", "--config",
       f"{root / 'configs' / 'informask.py'}:tiny", "--config.train.num_step=3"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu"))
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(
      "python -m informask_jax.stats.beam_pipeline: bad command-line flag: "
      "--config.train.num_step: `config.train` has no key 'num_step'. Did you mean"), out.stderr


def test_the_command_line_without_config_is_one_line(tmp_path):
  """Without --config: one error line, status 2 (absl printed its whole --help), and not Beam's
  import-time warning that BigQuery's client is missing."""
  _beam()
  root = pathlib.Path(__file__).parent.parent
  out = subprocess.run([sys.executable, "-m", "informask_jax.stats.beam_pipeline"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu"))
  assert out.returncode == 2 and out.stdout == "", out.stdout
  assert out.stderr.splitlines() == [
      "python -m informask_jax.stats.beam_pipeline: error: --config is required, e.g. --config "
      "configs/informask.py:paper (--help for the flags)."], out.stderr


def test_the_command_line_without_beam_says_how_to_install_it(tmp_path):
  """It was a traceback ending in the ImportError, whose advice (pip install
  'informask_jax[beam]') looked the project up on the package index."""
  root = pathlib.Path(__file__).parent.parent
  shadow = tmp_path / "apache_beam"  # An apache_beam that fails to import, as when missing.
  shadow.mkdir()
  (shadow / "__init__.py").write_text(
      "raise ModuleNotFoundError(\"No module named 'apache_beam'\", name='apache_beam')\n")
  out = subprocess.run(
      [sys.executable, "-m", "informask_jax.stats.beam_pipeline", "--config",
       f"{root / 'configs' / 'informask.py'}:tiny"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{root}", JAX_PLATFORMS="cpu"))
  assert out.returncode == 1, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      "python -m informask_jax.stats.beam_pipeline: error: MissingBeamError: The Beam pipeline "
      "needs apache-beam: pip install -e \".[beam]\" in the checkout, or pip install "
      "'apache-beam>=2.60'.")


def test_parquet_without_the_text_column_names_its_columns(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  pq.write_table(pa.table({"body": ["a"], "id": [1]}), tmp_path / "c.parquet")
  with pytest.raises(ValueError, match=r"c.parquet: no column 'text' .*\['body', 'id'\]\. Name "
                     r"the text's field with --text_field=FIELD\."):
    list(bp.read_documents(str(tmp_path / "c.parquet"), "text", opener=lambda p: open(p, "rb")))


def test_a_pmi_vocabulary_emptied_by_drop_top_k_names_it_as_the_local_builder_does():
  """Beam blamed min_count and the corpus size for a drop_top_k that dropped every eligible
  token ("Only 0 token(s) occur at least ... Lower stats.min_count"), though hundreds did."""
  from informask_jax.stats.beam_pipeline import settings as beam_settings
  from informask_jax.stats.beam_pipeline import whole_corpus

  counts = np.array([0, 0, 9, 8, 7, 6, 5, 1], np.int64)  # ids 0, 1 are specials
  settings = beam_settings.Settings(
      vocab_size=counts.size, special_ids=(0, 1), continuation=np.zeros(counts.size, bool),
      text_field="text", validation_fraction=0.0,
      stats=dict(pmi_vocab_size=10, min_count=2, drop_top_k=4))
  unigrams = counting.UnigramCounts(counts, int(counts.sum()), 1, 1)
  with pytest.raises(ValueError, match=r"^5 tokens occur at least config\.stats\.min_count=2 "
                                       r"times, and config\.stats\.drop_top_k=4 drops .* "
                                       r"leaving 1; .* Lower stats\.drop_top_k\.$"):
    whole_corpus._pmi_vocab(unigrams, settings)
