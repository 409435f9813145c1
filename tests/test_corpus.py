"""Corpus sources, cleaning, the hash split and the errors on bad sources."""

import json
import logging

import datasets
import ml_collections
import pytest

from configs import base
from informask_jax import corpus


def _data_config(tmp_path, sources, **overrides):
  c = base.get_base_config("tiny").data
  c.sources = [ml_collections.ConfigDict(dict(
      kind=s.get("kind", "files"), name=s.get("name"), config=None, split="train",
      text_field=s.get("text_field", "text"), streaming=s.get("streaming", False)))
      for s in sources]
  c.cache_dir = str(tmp_path / "cache")
  for key, value in overrides.items():
    c[key] = value
  return c


def _texts(split):
  return list(split["text"])


def test_wiki_vital_split_is_by_title_and_stable(tmp_path):
  small = corpus.load_corpus(_data_config(tmp_path, [dict(kind="wiki_vital", name="wiki_vital",
                                                          text_field="extract")],
                                          max_documents=1500))
  large = corpus.load_corpus(_data_config(tmp_path, [dict(kind="wiki_vital", name="wiki_vital",
                                                          text_field="extract")],
                                          max_documents=3000))
  assert len(small["train"]) + len(small["validation"]) == 1500
  # ~2% held out; binomial(1500, 0.02) is 30 +- 5.4.
  assert 10 <= len(small["validation"]) <= 55
  # A document's split depends on its title only, not on which other documents are loaded.
  large_val = set(_texts(large["validation"]))
  assert set(_texts(small["validation"])) <= large_val
  assert not set(_texts(small["train"])) & large_val
  again = corpus.load_corpus(_data_config(tmp_path, [dict(kind="wiki_vital", name="wiki_vital",
                                                          text_field="extract")],
                                          max_documents=1500))
  assert corpus.corpus_fingerprint(again) == corpus.corpus_fingerprint(small)


def test_clean_text():
  assert corpus.clean_text("  a\t\tb \r\n\r\n  c\x00d\x07 ") == "a b\ncd"
  assert corpus.clean_text(" \n\t ") == ""


def test_txt_documents_and_invalid_utf8_counted(tmp_path, caplog):
  path = tmp_path / "docs.txt"
  path.write_bytes(b"First doc line one.\nLine two of it.\n\n\nSecond \xff\xfe doc.\n\nThird.\n")
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  with caplog.at_level(logging.WARNING, logger="informask_jax.corpus"):
    loaded = corpus.load_corpus(c)
  assert _texts(loaded["train"]) == ["First doc line one.\nLine two of it.",
                                     "Second \ufffd\ufffd doc.", "Third."]
  assert len(loaded["validation"]) == 0
  assert "replaced 2 byte(s)" in caplog.text and "docs.txt" in caplog.text


def test_jsonl_parquet_glob_and_directory(tmp_path):
  folder = tmp_path / "data"
  folder.mkdir()
  rows = [{"body": f"Document number {i}.", "id": i} for i in range(6)]
  (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
  datasets.Dataset.from_list(rows[3:]).to_parquet(str(folder / "b.parquet"))
  expected = sorted(r["body"] for r in rows)
  for name in (str(folder), str(folder / "*"), str(folder / "*.jsonl")):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=name, text_field="body")]))
    got = sorted(_texts(loaded["train"]) + _texts(loaded["validation"]))
    assert got == (expected if not name.endswith(".jsonl") else expected[:3])
    # A tiny corpus still gets one validation document.
    assert len(loaded["validation"]) == 1


def test_max_documents_and_concatenation(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("\n\n".join(f"A{i}." for i in range(5)))
  b.write_text("\n\n".join(f"B{i}." for i in range(5)))
  c = _data_config(tmp_path, [dict(name=str(a)), dict(name=str(b))], max_documents=7,
                   validation_fraction=0.0)
  assert _texts(corpus.load_corpus(c)["train"]) == [f"A{i}." for i in range(5)] + ["B0.", "B1."]


def test_streaming_files_source(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps({"text": f"Doc {i}."}) + "\n" for i in range(50)))
  c = _data_config(tmp_path, [dict(name=str(path), streaming=True)], validation_fraction=0.2)
  loaded = corpus.load_corpus(c)
  assert isinstance(loaded, datasets.IterableDatasetDict)
  train = [ex["text"] for ex in loaded["train"]]
  val = [ex["text"] for ex in loaded["validation"]]
  assert sorted(train + val) == sorted(f"Doc {i}." for i in range(50))
  assert set(val) == {f"Doc {i}." for i in range(50) if corpus.hash_bucket(f"Doc {i}.") < 0.2}


def test_split_bucket_is_the_hash_of_the_key_when_there_is_one():
  """wiki_vital documents are split by title ("_key"), other sources by their text."""
  keyed = corpus._clean_batch({"text": ["Same text.", "Same text."], "_key": ["A", "B"]})
  assert keyed["_bucket"] == [corpus.hash_bucket("A"), corpus.hash_bucket("B")]
  plain = corpus._clean_batch({"text": ["Same text."]})
  assert plain["_bucket"] == [corpus.hash_bucket("Same text.")]


def test_tiny_corpus_keeps_a_document_on_each_side_of_the_split(tmp_path):
  """No hash below (above) the fraction: the smallest (largest) hash goes to validation (train)."""
  path = tmp_path / "a.jsonl"
  texts = [f"Doc {i}." for i in range(4)]
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=1e-9))
  assert _texts(loaded["validation"]) == [min(texts, key=corpus.hash_bucket)]
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=0.999999))
  assert _texts(loaded["train"]) == [max(texts, key=corpus.hash_bucket)]
  # Copies of one document share its hash and its side (the Beam pipeline, which sees no
  # document order, splits the same way).
  lowest = min(texts, key=corpus.hash_bucket)
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + [lowest]))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=1e-9))
  assert _texts(loaded["validation"]) == [lowest, lowest]
  path.write_text("".join(json.dumps({"text": "The same."}) + "\n" for _ in range(3)))
  with pytest.raises(ValueError, match=r"All 3 documents of the corpus are copies of one text"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.02))


def test_fingerprint_tracks_content_and_order():
  a = datasets.Dataset.from_dict({"text": ["ab", "c"]})
  assert corpus.corpus_fingerprint(a) == corpus.corpus_fingerprint(
      datasets.Dataset.from_dict({"text": ["ab", "c"]}))
  for other in (["a", "bc"], ["c", "ab"], ["ab", "c", ""]):
    assert corpus.corpus_fingerprint(a) != corpus.corpus_fingerprint(
        datasets.Dataset.from_dict({"text": other}))


# --- Bad input ----------------------------------------------------------------------------------

def test_a_binary_file_named_txt_is_refused(tmp_path):
  """A few bad bytes are replaced (above); a file that is mostly not text is an error naming it,
  not a tokenizer trained on noise."""
  noise = tmp_path / "noise.txt"
  noise.write_bytes(bytes(range(128, 256)) * 64)
  with pytest.raises(ValueError, match=r"sources\[0\].*noise.txt' does not look like UTF-8 text "
                                       r"\(8192 of its first 8192 bytes"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(noise))]))
  packed = tmp_path / "packed.txt"  # Valid UTF-8, but NUL bytes: a binary format.
  packed.write_bytes(b"header\x00\x00\x01\x00 ok text" * 100)
  with pytest.raises(ValueError, match="packed.txt' does not look like .* holds NUL bytes"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(packed))]))


def test_missing_file(tmp_path):
  missing = str(tmp_path / "nope.txt")
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=missing)]))
  with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.jsonl"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(tmp_path / "*.jsonl"))]))


def test_unknown_source_kind(tmp_path):
  with pytest.raises(ValueError, match=r"sources\[0\]\.kind='ftp' is unknown"):
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="ftp", name="x")]))


def test_unknown_hub_dataset(tmp_path):
  # Offline (the tests' HF_DATASETS_OFFLINE=1): the error says what works without a network.
  with pytest.raises(ValueError, match=r"could not load hub dataset 'no-such-org/no-such-set'.*"
                                       r"Offline, train on the embedded corpus \(the `:tiny`"):
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name="no-such-org/no-such-set")]))


def test_missing_text_field(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text(json.dumps({"body": "x"}) + "\n")
  with pytest.raises(ValueError, match=r"no column 'text' \(text_field\); columns are \['body'\]. "
                                       r"Name the text's column with "
                                       r"'--config.data.sources\[0\].text_field=body'"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))]))


def test_text_field_that_is_not_text(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text(json.dumps({"body": 3}) + "\n")
  with pytest.raises(ValueError, match=r"text_field\) is int 3, not a string"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), text_field="body")]))


def test_empty_corpus(tmp_path):
  blank = tmp_path / "blank.txt"
  blank.write_text("\n \n\t\n")
  with pytest.raises(ValueError, match="corpus is empty"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(blank))]))
  # Documents that exist but hold only whitespace and control characters.
  empty = tmp_path / "empty.jsonl"
  empty.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", "  ", "\x00\x07", "\n"]))
  with pytest.raises(ValueError, match="corpus is empty"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(empty))]))
  with pytest.raises(ValueError, match="sources is empty"):
    corpus.load_corpus(_data_config(tmp_path, []))


def test_the_default_cache_follows_xdg_cache_home(monkeypatch):
  from configs import base
  from informask_jax import paths

  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  assert paths.default_cache_dir() == "~/.cache/informask_jax"
  monkeypatch.setenv("XDG_CACHE_HOME", "/scratch/me/cache")
  assert paths.default_cache_dir() == "/scratch/me/cache/informask_jax"
  assert base.get_base_config("tiny").data.cache_dir == "/scratch/me/cache/informask_jax"
