"""The Beam pipeline of the corpus statistics (DirectRunner): the same tables as the local builder,
bit for bit, from .txt / .jsonl / .parquet shards; the rate stage finishes from its tables; its
readers match `corpus`; bad input fails before the pipeline starts."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest
import scipy.sparse as sp

from configs import base
from informask_jax import corpus, data, stats
from informask_jax.stats import artifacts
from informask_jax.stats import beam_pipeline as bp

# Every file a Beam build writes, and those whose bytes do not depend on when they were written
# (an .npz is a zip archive with timestamps; its arrays are compared instead).
TABLES = ("unigram_counts.npy", "pmi_ngrams.json", "pmi_bigrams.json", "vocab.txt")
RUNNER = ["--runner=DirectRunner"]


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


def test_window_whole_words_and_an_explicit_output(built, shards, tmp_path):
  """Other counting settings, a tokenizer given by path, and a directory outside the cache."""
  local_config, local_dir, _, _ = built
  options = dict(window=4, whole_words=True, context_alpha=0.75, drop_top_k=5, min_pair_count=3)
  local = stats.build_artifacts(_config(local_config.data.cache_dir, shards, **options),
                                what=("pmi",), progress=False)
  config = _config(tmp_path / "cache", shards, **options)
  tokenizer_dir = next((pathlib.Path(local_config.data.cache_dir) / "tokenizers").iterdir())
  config.tokenizer.name_or_path = str(tokenizer_dir)
  out = pathlib.Path(bp.run(config, output=str(tmp_path / "out"), what=("counts", "pmi"),
                            beam_args=RUNNER, **SMALL))
  assert out == tmp_path / "out" and not (out / "pmi_ngrams.json").exists()
  _assert_same_tables(local, out, names=("unigram_counts.npy",))
  meta = json.loads((out / "meta.json").read_text())
  assert meta["corpus_fingerprint"].startswith("files-")
  assert sorted(meta["files"]) == ["pmi.npz", "unigram_counts.npy", "vocab.txt"]


def test_txt_reader_matches_the_corpus_reader(tmp_path):
  path = tmp_path / "odd.txt"
  path.write_bytes(b"\n\nFirst doc line one.\r\nline two \xff\xfe end\n   \n\n"
                   b"Second \xe2\x82 doc.\n\t\n\nThird, no final newline")
  expected = [d["text"] for d in corpus._read_txt([str(path)])]
  assert len(expected) == 3 and "\ufffd\ufffd" in expected[0] and "\ufffd\ufffd" in expected[1]
  assert list(bp.read_documents(str(path), "text", opener=lambda p: open(p, "rb"))) == expected


def test_json_array_and_non_text_fields_name_the_file(tmp_path):
  array = tmp_path / "docs.json"
  array.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=1))
  with pytest.raises(ValueError, match=r"docs.json, line 1: not JSON Lines"):
    list(bp.read_documents(str(array), "text", opener=lambda p: open(p, "rb")))
  with pytest.raises(ValueError, match="is int 3, not a string"):
    bp._clean(3)


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
  with pytest.raises(Exception, match=r"b.jsonl, line 1: no field 'txt'"):
    bp.run(config, output=str(tmp_path / "out"), files=[str(shards / "b.jsonl")],
           text_field="txt", beam_args=RUNNER)
  assert not (tmp_path / "out" / artifacts.META).exists()
