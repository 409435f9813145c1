"""Corpus sources, cleaning, the hash split and the errors on bad sources."""

import json
import logging
import os
import pathlib
import re
import shutil
import stat
import warnings

import datasets
import jax
import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import base
from informask_jax import corpus, corpus_files


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


def test_wiki_vital_documents_are_held_out_by_the_hash_of_their_title(tmp_path):
  """The held-out wiki_vital summaries are exactly those whose title hashes below the fraction,
  so an upstream edit of a summary's text never moves it across the split (hashing the text, as
  other sources are, also gives a stable split, which the test above cannot tell apart)."""
  with open(corpus._locate_wiki_vital(), encoding="utf-8") as f:
    records = json.load(f)
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(kind="wiki_vital", name="wiki_vital",
                                                          text_field="extract")],
                                           max_documents=600))
  titles = sorted(records)[:600]  # The corpus order, which max_documents takes the first of.
  held_out = [corpus.clean_text(records[t]["extract"]) for t in titles
              if corpus.hash_bucket(t) < 0.02]
  assert held_out and _texts(loaded["validation"]) == held_out
  assert len(loaded["train"]) == len(titles) - len(held_out)


def test_clean_text():
  assert corpus.clean_text("  a\t\tb \r\n\r\n  c\x00d\x07 ") == "a b\ncd"
  assert corpus.clean_text(" \n\t ") == ""
  # An old Mac line end (lone CR) breaks a line, DEL is a control character and a no-break space
  # is horizontal space: otherwise each would reach the tokenizer as a character of a word.
  assert corpus.clean_text("a\rb\x7fc\u00a0d") == "a\nbc d"
  # Word's soft line break (VT), pdftotext's page break (FF), NEL and Unicode's line separator
  # end a line: deleted, they joined the words around them ("linesecond").
  assert corpus.clean_text("First line\x0bsecond.\x0cPage two\x85ends\u2028here.") == (
      "First line\nsecond.\nPage two\nends\nhere.")


def test_a_change_of_cleaning_is_not_served_from_the_cleaned_cache(tmp_path, monkeypatch):
  """datasets' map caches a file source's cleaned copy by a hash that does not see clean_text:
  with CLEANING_VERSION in its arguments, a new cleaning cleans again."""
  path = tmp_path / "a.jsonl"
  path.write_text('{"text": "Some text."}\n')
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  assert _texts(corpus.load_corpus(c)["train"]) == ["Some text."]
  monkeypatch.setattr(corpus, "clean_text", str.upper)
  monkeypatch.setattr(corpus, "CLEANING_VERSION", corpus.CLEANING_VERSION + 1)
  assert _texts(corpus.load_corpus(c)["train"]) == ["SOME TEXT."]


def _text_bucket(text):
  """The split bucket of a document without a key: its text's, case-folded (clean_document)."""
  return corpus.clean_document(text)[1]


def test_hash_bucket_values_are_pinned():
  """The split of every corpus, and so every cached tokenized corpus and statistics table, rests on
  these numbers: a change of hash, digest size or byte order must be a deliberate one."""
  assert corpus.hash_bucket("Paris") == 0.14283322527481312
  assert corpus.hash_bucket("Doc 0.") == 0.2752668597383098


def test_txt_documents_and_invalid_utf8_counted(tmp_path, caplog):
  path = tmp_path / "docs.txt"
  path.write_bytes(b"First doc line one.\nLine two of it.\n\n\nSecond \xff\xfe doc.\n\nThird.\n")
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  with caplog.at_level(logging.WARNING, logger="informask_jax"):
    loaded = corpus.load_corpus(c)
  assert _texts(loaded["train"]) == ["First doc line one.\nLine two of it.",
                                     "Second \ufffd\ufffd doc.", "Third."]
  assert len(loaded["validation"]) == 0
  assert "replaced 2 byte(s)" in caplog.text and "docs.txt" in caplog.text
  # Read again (a stream reads its files every epoch): counted, but reported once per process.
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax"):
    for _ in range(2):
      assert len(list(corpus_files._read_txt([str(path)]))) == 3
  assert caplog.text.count("replaced 2 byte(s)") <= 1


def test_runs_of_blank_lines_are_one_separator_for_max_documents(tmp_path):
  """max_documents counts documents before empty ones are dropped, so a run of blank lines in a
  .txt must not count as documents."""
  path = tmp_path / "a.txt"
  path.write_text("A.\n\n\n\nB.\n \n\t\nC.\n")
  c = _data_config(tmp_path, [dict(name=str(path))], max_documents=2, validation_fraction=0.0)
  assert _texts(corpus.load_corpus(c)["train"]) == ["A.", "B."]


def test_an_edited_txt_file_is_read_again(tmp_path):
  """The .txt reader's cache is keyed by each file's size and mtime, not its name alone."""
  path = tmp_path / "a.txt"
  path.write_text("Old text.\n")
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  assert _texts(corpus.load_corpus(c)["train"]) == ["Old text."]
  path.write_text("New, longer text.\n")
  assert _texts(corpus.load_corpus(c)["train"]) == ["New, longer text."]
  # An edit that keeps the size (a typo fixed) is told by the mtime alone, set apart here since
  # two writes within the filesystem's clock step can share one.
  mtime = path.stat().st_mtime_ns
  path.write_text("New, longer test.\n")
  os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
  assert _texts(corpus.load_corpus(c)["train"]) == ["New, longer test."]


def test_a_same_size_edit_with_its_mtime_put_back_is_read_again(tmp_path):
  """cp -p, rsync -t or an editor keeping the modification time: size and mtime alike, the
  reader's cache gave the old text (and every cache keyed on the text after it)."""
  path = tmp_path / "a.jsonl"
  path.write_text('{"text": "A zebra ran."}\n')
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  assert _texts(corpus.load_corpus(c)["train"]) == ["A zebra ran."]
  before = path.stat()
  path.write_text('{"text": "A hydra ran."}\n')
  os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
  assert path.stat().st_size == before.st_size
  assert _texts(corpus.load_corpus(c)["train"]) == ["A hydra ran."]


@pytest.mark.parametrize("size", [0, 1000])
def test_a_damaged_cleaned_copy_is_cleaned_again(tmp_path, caplog, size):
  """datasets caches the cleaned copy of a read source (cache-*.arrow) beside the read one, and
  loads it unchecked: cut short, it failed every later run in pyarrow's traceback (OSError, or
  ArrowInvalid for 0 bytes), naming no file."""
  path = tmp_path / "a.txt"
  path.write_text("".join(f"Document {i}. " * 20 + "\n\n" for i in range(200)))
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  expected = _texts(corpus.load_corpus(c)["train"])
  (cleaned,) = (tmp_path / "cache").glob("**/cache-*.arrow")
  cleaned.write_bytes(cleaned.read_bytes()[:size])
  with caplog.at_level(logging.WARNING, logger="informask_jax.corpus"):
    assert _texts(corpus.load_corpus(c)["train"]) == expected
  assert re.search(r"the cleaned copy .*cache-.*\.arrow, cached by an earlier run, is damaged",
                   caplog.text)


@pytest.mark.parametrize("files", [1, 2])
def test_a_parquet_file_replaced_with_its_mtime_put_back_is_read_again(tmp_path, files):
  """Parquet goes through `datasets`' own builder, whose cache compares modification times
  only: a file replaced by another with the old one's mtime (cp -p, rsync -t, tar x) was served
  from the cache as the old rows, with no warning. (Two files: read together, as a group.)"""
  paths = [tmp_path / f"p{i}.parquet" for i in range(files)]
  for i, path in enumerate(paths):
    pq.write_table(pa.table({"text": [f"Old {i}."]}), path)
  c = _data_config(tmp_path, [dict(name=str(tmp_path / "p*.parquet"))], validation_fraction=0.0)
  assert sorted(_texts(corpus.load_corpus(c)["train"])) == [f"Old {i}." for i in range(files)]
  before = paths[0].stat()
  pq.write_table(pa.table({"text": ["New text.", "And more."]}), paths[0])
  os.utime(paths[0], ns=(before.st_atime_ns, before.st_mtime_ns))
  assert sorted(_texts(corpus.load_corpus(c)["train"])) == sorted(
      ["New text.", "And more.", *[f"Old {i}." for i in range(1, files)]])


def test_a_damaged_cached_copy_of_read_files_is_read_again(tmp_path, caplog):
  """An Arrow file of the reader's cache cut short failed every later run with pyarrow's
  traceback (OSError: Expected to be able to read ... bytes); now it is removed and the files
  read again, with a warning."""
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps({"text": f"Document {i}. " * 20}) + "\n"
                          for i in range(200)))
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  expected = _texts(corpus.load_corpus(c)["train"])
  (arrow,) = (tmp_path / "cache").glob("**/generator/*/*/generator-train.arrow")
  arrow.write_bytes(arrow.read_bytes()[:arrow.stat().st_size // 3])
  with caplog.at_level(logging.WARNING, logger="informask_jax.corpus_files"):
    assert _texts(corpus.load_corpus(c)["train"]) == expected
  assert "is damaged" in caplog.text and "reading the files again" in caplog.text
  arrow.unlink()  # Gone altogether: the same.
  assert _texts(corpus.load_corpus(c)["train"]) == expected


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_cached_copy_of_read_files_emptied_by_a_crash_is_read_again(tmp_path, caplog, suffix):
  """An Arrow file of 0 bytes (a machine down before the data reached the disk) fails with
  pyarrow's ArrowInvalid, not OSError: every later run ended in its traceback. A Parquet
  source's copy (datasets' builder) cut short failed every run with an error saying that the
  Parquet file itself could not be read."""
  path = tmp_path / f"a{suffix}"
  rows = [{"text": f"Document {i}. " * 20} for i in range(200)]
  if suffix == ".parquet":
    pq.write_table(pa.Table.from_pylist(rows), path)
  else:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = _data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.0)
  expected = _texts(corpus.load_corpus(c)["train"])
  (arrow,) = [a for a in (tmp_path / "cache").glob("**/*.arrow") if not a.name.startswith("cache-")]
  for size in (0, arrow.stat().st_size // 3):
    arrow.write_bytes(arrow.read_bytes()[:size])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="informask_jax.corpus_files"):
      assert _texts(corpus.load_corpus(c)["train"]) == expected
    assert "is damaged" in caplog.text and "reading the files again" in caplog.text


def test_mostly_invalid_utf8_is_refused_and_an_empty_txt_is_not(tmp_path):
  """A quarter of the bytes undecodable is well past "a few bad bytes"; an empty .txt (0 bytes,
  none of them bad) is an empty source, not a binary file."""
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "a.txt").write_text("Some text.\n")
  (folder / "b.txt").write_bytes(b"")
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))],
                                           validation_fraction=0.0))
  assert _texts(loaded["train"]) == ["Some text."]
  noisy = tmp_path / "noisy.txt"
  noisy.write_bytes(b"abc\xff" * 1000)
  with pytest.raises(ValueError, match=r"noisy.txt' does not look like UTF-8 text \(1000 of"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(noisy))]))


def test_directory_and_glob_pick_only_corpus_files(tmp_path):
  """A directory contributes only its .txt/.jsonl/.json/.parquet files (a README, a .gz or a
  hidden entry beside them is skipped); a ** glob descends into subfolders; a file named
  outright must have one of those suffixes; a source's text_field defaults to "text"."""
  folder = tmp_path / "data"
  (folder / "sub").mkdir(parents=True)
  (folder / "a.txt").write_text("Top.\n")
  (folder / "sub" / "b.txt").write_text("Nested.\n")
  (folder / "README.md").write_text("Not a document.\n")
  (folder / "sub" / "c.jsonl.gz").write_bytes(b"\x1f\x8b")
  # Hidden entries are skipped, as by a glob: a notebook's checkpoint copies, an editor's backup.
  (folder / ".ipynb_checkpoints").mkdir()
  (folder / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("Top.\n")
  (folder / ".a.txt.swp").write_text("Swap.\n")
  for name in (str(folder), str(folder / "**" / "*.txt")):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=name)], validation_fraction=0.0))
    assert sorted(_texts(loaded["train"])) == ["Nested.", "Top."], name
  with pytest.raises(ValueError, match=r"README.md' has an unsupported suffix"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder / "README.md"))]))
  path = tmp_path / "a.jsonl"
  path.write_text(json.dumps({"text": "Default field."}) + "\n")
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), text_field=None)],
                                           validation_fraction=0.0))
  assert _texts(loaded["train"]) == ["Default field."]


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


@pytest.mark.parametrize("num_proc", [1, 2])
def test_files_whose_other_columns_differ_and_a_bad_file_among_many(tmp_path, num_proc, caplog,
                                                                     capfd):
  """Only text_field is read, so other columns may differ between files (`datasets` casts every
  file to the first one's), without datasets' ERROR lines and schema dumps of the attempt to read
  them together (they read as a failure); among several files a bad one is named with its own
  reason, not a worker's traceback."""
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "a.jsonl").write_text(json.dumps({"text": "First file.", "id": 1}) + "\n")
  (folder / "b.jsonl").write_text(json.dumps({"text": "Second file.", "meta": {"x": 2}}) + "\n")
  datasets.Dataset.from_list([{"text": "Third file.", "n": 3.5}]).to_parquet(
      str(folder / "c.parquet"))
  datasets.Dataset.from_list([{"text": "Fourth file.", "tag": "t"}]).to_parquet(
      str(folder / "d.parquet"))
  with caplog.at_level(logging.WARNING):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))],
                                             num_proc=num_proc))
  assert sorted(_texts(loaded["train"]) + _texts(loaded["validation"])) == [
      "First file.", "Fourth file.", "Second file.", "Third file."]
  assert "reading them one at a time" in caplog.text
  assert not [r.getMessage() for r in caplog.records if r.name.startswith("datasets")]
  assert "Failed to read file" not in capfd.readouterr().err  # Also from worker processes.
  (folder / "d.parquet").write_bytes(b"PAR1" + b"\x00" * 100)
  with pytest.raises(ValueError, match=r"could not read \['.*d.parquet'\] as parquet: "
                                       r"ArrowInvalid: .*magic bytes") as error:
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))], num_proc=num_proc,
                                    cache_dir=str(tmp_path / "other_cache")))
  assert "Traceback" not in str(error.value) and "c.parquet" not in str(error.value)
  (folder / "d.parquet").unlink()
  (folder / "b.jsonl").write_text(json.dumps({"text": ["a list"]}) + "\n")
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] \(files '.*data'\): "
                                       r"'.*b.jsonl', line 1: A document's text") as error:
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))], num_proc=num_proc,
                                    cache_dir=str(tmp_path / "third_cache")))
  assert "Traceback" not in str(error.value)


def test_reading_files_draws_no_progress_bar_in_a_log(tmp_path, capfd):
  """stderr is no terminal here (a log file, a Slurm output): `datasets`' "Generating train
  split" bars would leave a line per redraw there."""
  (tmp_path / "a.txt").write_text("Doc one.\n\nDoc two.\n")
  (tmp_path / "b.jsonl").write_text(json.dumps({"text": "Doc three."}) + "\n")
  for name in ("a.txt", "b.jsonl"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(tmp_path / name))]))
  assert "Generating" not in capfd.readouterr().err


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
  assert set(val) == {f"Doc {i}." for i in range(50) if _text_bucket(f"Doc {i}.") < 0.2}


def test_streaming_mixes_with_in_memory_sources_and_caps_documents(tmp_path):
  """One streaming source makes the whole corpus a stream (an in-memory source joins it), and
  max_documents caps a stream too (per source, as its length is unknown)."""
  a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
  a.write_text("\n\n".join(f"A{i}." for i in range(3)))
  b.write_text("".join(json.dumps({"text": f"B{i}."}) + "\n" for i in range(10)))
  c = _data_config(tmp_path, [dict(name=str(a)), dict(name=str(b), streaming=True)],
                   validation_fraction=0.0)
  loaded = corpus.load_corpus(c)
  assert isinstance(loaded, datasets.IterableDatasetDict)
  assert [ex["text"] for ex in loaded["train"]] == ["A0.", "A1.", "A2."] + [
      f"B{i}." for i in range(10)]
  c = _data_config(tmp_path, [dict(name=str(b), streaming=True)], validation_fraction=0.0,
                   max_documents=4)
  assert [ex["text"] for ex in corpus.load_corpus(c)["train"]] == [f"B{i}." for i in range(4)]


def _fake_hub(monkeypatch, make):
  """Replaces datasets.load_dataset (no network in tests) and records each call's arguments."""
  calls = []

  def load_dataset(name, config=None, **kwargs):
    calls.append(dict(name=name, config=config, **kwargs))
    return make(kwargs.get("streaming"))

  monkeypatch.setattr(datasets, "load_dataset", load_dataset)
  return calls


def test_hub_source_arguments_and_text_field(tmp_path, monkeypatch):
  rows = {"body": [f"Hub doc {i}." for i in range(5)], "id": list(range(5))}

  def make(streaming):
    if not streaming:
      return datasets.Dataset.from_dict(rows)
    # A stream whose columns are unknown until a record is read, as many hub streams are.
    return datasets.IterableDataset.from_generator(
        lambda: ({"body": t, "id": i} for i, t in zip(rows["id"], rows["body"], strict=True)))

  calls = _fake_hub(monkeypatch, make)
  source = dict(kind="hub", name="org/set", text_field="body")
  c = _data_config(tmp_path, [source], validation_fraction=0.0, num_proc=3)
  c.sources[0].config, c.sources[0].split = "en", None  # No split given: "train".
  loaded = corpus.load_corpus(c)
  assert calls[-1] == dict(name="org/set", config="en", split="train", streaming=False,
                           num_proc=3)
  assert _texts(loaded["train"]) == rows["body"]
  c.sources[0].streaming = True
  loaded = corpus.load_corpus(c)
  assert calls[-1]["streaming"] is True and calls[-1]["num_proc"] is None
  assert [ex["text"] for ex in loaded["train"]] == rows["body"]
  # The stream's missing column is named like an in-memory one's, when the first record is read.
  c.sources[0].text_field = "content"
  loaded = corpus.load_corpus(c)
  with pytest.raises(ValueError, match=r"no column 'content' \(text_field\); columns are "
                                       r"\['body', 'id'\]"):
    next(iter(loaded["train"]))


def test_hub_errors_other_than_offline_get_no_offline_hint(tmp_path, monkeypatch):
  def make(streaming):
    raise FileNotFoundError("no split 'tarin'")

  _fake_hub(monkeypatch, make)
  with pytest.raises(ValueError, match="could not load hub dataset 'org/set'") as error:
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name="org/set")]))
  assert "no split 'tarin'" in str(error.value) and "Offline" not in str(error.value)


def test_split_bucket_is_the_hash_of_the_key_when_there_is_one():
  """wiki_vital documents are split by title ("_key"), other sources by their text."""
  keyed = corpus._clean_batch({"text": ["Same text.", "Same text."], "_key": ["A", "B"]})
  assert keyed["_bucket"] == [corpus.hash_bucket("A"), corpus.hash_bucket("B")]
  plain = corpus._clean_batch({"text": ["Same text."]})
  assert plain["_bucket"] == [corpus.hash_bucket("same text.")]  # Case-folded.


def test_copies_that_differ_only_in_what_cleaning_removes_share_a_side_of_the_split(tmp_path):
  """The bucket hashed the text as read: one file saved with LF and with CRLF line ends gave
  identical cleaned documents on both sides (53 of 57 held-out documents were in train too)."""
  docs = [f"Document number {i} talks about topic {i * 7}. It has a second sentence."
          for i in range(200)]
  (tmp_path / "a.txt").write_text("\n\n".join(docs) + "\n")
  with open(tmp_path / "b.txt", "w", newline="") as f:
    f.write("\r\n\r\n".join(docs) + "\r\n")
  config = _data_config(tmp_path, [dict(kind="files", name=str(tmp_path / "*.txt"))])
  config.validation_fraction = 0.1
  split = corpus.load_corpus(config)
  held_out = set(split["validation"]["text"])
  assert held_out and not held_out & set(split["train"]["text"])
  assert corpus._clean_batch({"text": ["Same text. \r\n"]})["_bucket"] == [
      corpus.hash_bucket("same text.")]


def test_copies_that_differ_in_case_or_unicode_form_share_a_side_of_the_split(tmp_path):
  """Copies in upper case, with decomposed accents (NFD) or full-width letters are the same
  tokens to a lower-casing, accent-stripping tokenizer (the default), yet were hashed as other
  texts: a copy of a training document could be held out for validation."""
  import unicodedata

  docs = [f"Überfahrt {i} nach Zürich, café número {i * 7}. A second sentence follows."
          for i in range(150)]
  forms = {"as written": docs, "NFD": [unicodedata.normalize("NFD", d) for d in docs],
           "upper": [d.upper() for d in docs],
           "full-width digits": [d.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})
                                 for d in docs]}
  for name, texts in forms.items():
    (tmp_path / f"{name}.txt").write_text("\n\n".join(texts) + "\n")
  config = _data_config(tmp_path, [dict(kind="files", name=str(tmp_path / "*.txt"))])
  config.validation_fraction = 0.1
  split = corpus.load_corpus(config)
  canonical = lambda t: unicodedata.normalize("NFKC", t).casefold()  # noqa: E731
  held_out = {canonical(t) for t in split["validation"]["text"]}
  assert 3 <= len(held_out) < 40
  assert not held_out & {canonical(t) for t in split["train"]["text"]}
  assert len(split["validation"]) == 4 * len(held_out)  # Every form of a held-out document.


@pytest.mark.parametrize("streaming", [False, True])
def test_an_empty_json_array_and_old_mac_line_ends_are_read(tmp_path, streaming):
  """A .json file holding [] made an in-memory source fail ("Keys mismatch"); a .txt file with
  lone CR line ends was one document (its blank lines were never seen)."""
  (tmp_path / "a.json").write_text("[]\n")
  (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "Record {i}."}}\n' for i in range(3)))
  with open(tmp_path / "c.txt", "w", newline="") as f:
    f.write("First document.\rStill first.\r\rSecond document.\r\r\rThird document.\r")
  config = _data_config(tmp_path, [dict(kind="files", name=str(tmp_path / "*"),
                                        streaming=streaming)], validation_fraction=0.0)
  texts = [d["text"] for d in corpus.load_corpus(config)["train"]]
  assert sorted(texts) == sorted(["Record 0.", "Record 1.", "Record 2.",
                                  "First document.\nStill first.", "Second document.",
                                  "Third document."])


def test_tiny_corpus_keeps_a_document_on_each_side_of_the_split(tmp_path):
  """No hash below (above) the fraction: the smallest (largest) hash goes to validation (train)."""
  path = tmp_path / "a.jsonl"
  texts = [f"Doc {i}." for i in range(4)]
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=1e-9))
  assert _texts(loaded["validation"]) == [min(texts, key=_text_bucket)]
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=0.999999))
  assert _texts(loaded["train"]) == [max(texts, key=_text_bucket)]
  # Copies of one document share its hash and its side (the Beam pipeline, which sees no
  # document order, splits the same way).
  lowest = min(texts, key=_text_bucket)
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + [lowest]))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=1e-9))
  assert _texts(loaded["validation"]) == [lowest, lowest]
  path.write_text("".join(json.dumps({"text": "The same."}) + "\n" for _ in range(3)))
  with pytest.raises(ValueError, match=r"All 3 documents of the corpus are copies of one text"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))], validation_fraction=0.02))


def test_split_edge_cases(tmp_path):
  """One document trains (nothing can be held out); a validation_fraction of 1 is refused."""
  path = tmp_path / "a.jsonl"
  path.write_text(json.dumps({"text": "Only one."}) + "\n")
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=0.02))
  assert _texts(loaded["train"]) == ["Only one."] and len(loaded["validation"]) == 0
  path.write_text("".join(json.dumps({"text": f"Doc {i}."}) + "\n" for i in range(4)))
  for streaming in (False, True):
    with pytest.raises(ValueError, match=r"validation_fraction=1.0 must be in \[0, 1\)"):
      corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), streaming=streaming)],
                                      validation_fraction=1.0))


def test_cleaning_uses_worker_processes_from_the_threshold_on(tmp_path, monkeypatch):
  """A corpus of exactly PARALLEL_MIN_DOCUMENTS documents is cleaned with data.num_proc."""
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps({"text": f"Doc {i}."}) + "\n" for i in range(4)))
  seen = []
  real_map = datasets.Dataset.map

  def spy_map(self, function, *args, **kwargs):
    if function is corpus._clean_batch:
      seen.append(kwargs.get("num_proc"))
      kwargs["num_proc"] = None  # Record the choice; clean in this process.
    return real_map(self, function, *args, **kwargs)

  monkeypatch.setattr(datasets.Dataset, "map", spy_map)
  for threshold, expected in ((4, 2), (5, None)):
    monkeypatch.setattr(corpus, "PARALLEL_MIN_DOCUMENTS", threshold)
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))], num_proc=2))
    assert seen.pop() == expected


def test_worker_processes_are_spawned_after_jax_started(tmp_path, monkeypatch):
  """Reading several JSON files and cleaning with data.num_proc workers, after JAX's backend
  (and its threads) started, as in train.py: the workers are spawned, not forked (a fork of a
  multithreaded process can deadlock), and every document arrives, cleaned."""
  for name in ("a", "b"):
    (tmp_path / f"{name}.jsonl").write_text(
        "".join(json.dumps({"text": f"Doc {name} {i}.  "}) + "\n" for i in range(3)))
  monkeypatch.setattr(corpus, "PARALLEL_MIN_DOCUMENTS", 2)
  pools = []
  real_map = datasets.Dataset.map

  def spy_map(self, function, *args, **kwargs):
    pools.append(kwargs.get("num_proc"))
    return real_map(self, function, *args, **kwargs)

  monkeypatch.setattr(datasets.Dataset, "map", spy_map)
  jax.devices()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = corpus.load_corpus(
        _data_config(tmp_path, [dict(name=str(tmp_path / "*.jsonl"))], num_proc=2))
  assert pools == [2]  # Cleaning ran in worker processes.
  assert not [w for w in caught if "os.fork()" in str(w.message)]
  assert sorted(list(loaded["train"]["text"]) + list(loaded["validation"]["text"])) == [
      f"Doc {name} {i}." for name in ("a", "b") for i in range(3)]


def test_fingerprint_tracks_content_and_order():
  a = datasets.Dataset.from_dict({"text": ["ab", "c"]})
  assert corpus.corpus_fingerprint(a) == corpus.corpus_fingerprint(
      datasets.Dataset.from_dict({"text": ["ab", "c"]}))
  for other in (["a", "bc"], ["c", "ab"], ["ab", "c", ""]):
    assert corpus.corpus_fingerprint(a) != corpus.corpus_fingerprint(
        datasets.Dataset.from_dict({"text": other}))
  # Documents are hashed in batches of 10 000: the batch marker keeps a document at the end of one
  # batch apart from the next batch's first ("ab" | "c" is not "a" | "bc").
  filler = ["x"] * 9_999
  assert corpus.corpus_fingerprint(datasets.Dataset.from_dict({"text": filler + ["ab", "c"]})) != (
      corpus.corpus_fingerprint(datasets.Dataset.from_dict({"text": filler + ["a", "bc"]})))
  # A DatasetDict's fingerprint knows which split holds what.
  b = datasets.Dataset.from_dict({"text": ["d"]})
  assert corpus.corpus_fingerprint(datasets.DatasetDict({"train": a, "validation": b})) != (
      corpus.corpus_fingerprint(datasets.DatasetDict({"train": b, "validation": a})))


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


def test_a_broken_link_among_a_source_s_files_is_named(tmp_path):
  """A link to a shard that is gone was left out unseen by a glob (the run trained on the other
  shards) and failed a directory with a bare 'No such file' naming no source."""
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "a.txt").write_text("Kept.\n")
  (folder / "b.txt").symlink_to(tmp_path / "scratch" / "b.txt")
  (folder / "notes.md").symlink_to(tmp_path / "scratch" / "notes.md")  # Not read: no matter.
  for name in (str(folder), str(folder / "*.txt")):
    with pytest.raises(FileNotFoundError, match=r"sources\[0\] \(files .*b.txt' is a link to "
                                                r".*scratch/b.txt', which does not exist"):
      corpus.load_corpus(_data_config(tmp_path, [dict(name=name)]))


def test_split_is_a_hub_field_only(tmp_path):
  """A file given split="validation" was trained on: split was ignored outside hub sources, and
  the corpus is split by hash whatever a source says."""
  path = tmp_path / "valid.txt"
  path.write_text("Held out?\n")
  for kind, value in [("files", "validation"), ("wiki_vital", "test")]:
    source = dict(kind=kind, name=str(path) if kind == "files" else "wiki_vital")
    data = _data_config(tmp_path, [source])
    data.sources[0]["split"] = value
    with pytest.raises(ValueError, match=rf"sources\[0\]\.split='{value}' is a hub dataset's "
                                         rf"field; a {kind} source is read whole"):
      corpus.check_sources(data)


def test_a_paper_source_overridden_by_index_to_files_is_accepted(tmp_path):
  """README's `--config.data.sources[0].kind=files --config.data.sources[0].name=...` on a
  non-tiny config keeps the hub source's config="20231101.en", ignored for files: refusing it
  stopped that command, and a streamed run started with it (its corpus identity holds the
  field) could not resume, the same command refused and the field cleared another stream."""
  path = tmp_path / "docs.txt"
  path.write_text("A document.\n")
  data = base.get_base_config("paper").data
  data.sources[0].update(kind="files", name=str(path))
  assert data.sources[0].config == "20231101.en"
  corpus.check_sources(data)


def test_unknown_source_kind(tmp_path):
  with pytest.raises(ValueError, match=r"sources\[0\]\.kind='ftp' is unknown"):
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="ftp", name="x")]))


def test_unknown_hub_dataset(tmp_path):
  # Offline (the tests' HF_DATASETS_OFFLINE=1): the error says what works without a network.
  with pytest.raises(ValueError, match=r"could not load hub dataset 'no-such-org/no-such-set'.*"
                                       r"Offline, train on the embedded corpus \(the `:tiny`"):
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name="no-such-org/no-such-set")]))


@pytest.mark.parametrize("offline", [True, False])
def test_an_unreachable_hub_names_the_offline_mode(tmp_path, monkeypatch, offline):
  """Without HF_HUB_OFFLINE the error says a cached copy needs it; with it, that none is cached."""
  def unreachable(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'some/set' on the Hub (LocalEntryNotFoundError)")
  monkeypatch.setattr(corpus.datasets, "load_dataset", unreachable)
  monkeypatch.setattr(corpus.datasets.config, "HF_HUB_OFFLINE", offline)
  with pytest.raises(ValueError) as error:
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name="some/set")]))
  message = str(error.value)
  assert "Offline, train on the embedded corpus" in message
  assert ("HF_HUB_OFFLINE is set and the local cache ($HF_HOME) has no copy of it." in message) \
      == offline
  assert ("into the same cache ($HF_HOME) and run with HF_HUB_OFFLINE=1." in message) != offline


def _one_document_per_line(path, first, count):
  """A .txt of `count` documents, one per line, without the blank lines that separate them."""
  path.write_text("".join(f"Document {i} says something.\n" for i in range(first, first + count)))


def test_a_txt_file_of_one_document_per_line_is_warned_about(tmp_path, caplog):
  """Read as one document per file (blank lines separate documents): each file is named once,
  and a split that holds out half the text for config.data.validation_fraction=0.02 is warned
  about with the counts and the .txt format, not left to a log line of '1 train and 1
  validation documents'."""
  (tmp_path / "docs").mkdir()
  for name, first in (("a.txt", 0), ("b.txt", 1000)):
    _one_document_per_line(tmp_path / "docs" / name, first, 1000)
  c = _data_config(tmp_path, [dict(name=str(tmp_path / "docs"))], validation_fraction=0.02)
  with caplog.at_level(logging.WARNING, logger="informask_jax"):
    loaded = corpus.load_corpus(c)
    list(corpus_files._read_txt([str(tmp_path / "docs" / "a.txt")]))  # Read again: warned once.
  assert (len(loaded["train"]), len(loaded["validation"])) == (1, 1)
  for name in ("a.txt", "b.txt"):
    assert caplog.text.count(f"{name}: read as one document of 1000 lines") == 1
  assert "blank lines separate documents" in caplog.text and "sed G" in caplog.text
  assert re.search(r"The validation split holds out 1 of the 2 documents \(50%\), \d\d% of the "
                   r"text, far more than config.data.validation_fraction=0.02", caplog.text)
  assert "config.data.sources[0] (files " in caplog.text.split("The validation split")[1]


def test_a_header_or_a_trailing_blank_line_does_not_hide_one_document_per_line(tmp_path, caplog):
  """The warning looked for a file without any blank line: a title line above the documents, or
  a blank line at the end, kept it quiet."""
  _one_document_per_line(tmp_path / "body.txt", 0, 1000)
  body = (tmp_path / "body.txt").read_text()
  for name, text in (("header.txt", "A title\n\n" + body), ("trailing.txt", body + "\n\n")):
    (tmp_path / name).write_text(text)
    with caplog.at_level(logging.WARNING, logger="informask_jax"):
      list(corpus_files._read_txt([str(tmp_path / name)]))
    assert f"{name}: read as one document of 1000 lines" in caplog.text


def test_documents_separated_by_blank_lines_and_a_large_corpus_are_not_warned_about(tmp_path,
                                                                                    caplog):
  """No warning for a long file of blank-line separated documents, a short file without blank
  lines, or a split whose held-out share is near the fraction."""
  long_file, short_file = tmp_path / "long.txt", tmp_path / "short.txt"
  long_file.write_text("".join(f"Document {i}.\nIts second line.\n\n" for i in range(1000)))
  _one_document_per_line(short_file, 0, 999)  # Below corpus_files.TXT_ONE_DOCUMENT_LINES.
  with caplog.at_level(logging.WARNING, logger="informask_jax"):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(long_file)),
                                                        dict(name=str(short_file))]))
  assert len(loaded["train"]) + len(loaded["validation"]) == 1001
  assert not caplog.text


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


def test_text_of_the_wrong_type_names_the_source_index(tmp_path):
  """The error names the source by its index in config.data.sources (here 1), not "[i]"."""
  good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
  good.write_text(json.dumps({"text": "Fine."}) + "\n")
  bad.write_text(json.dumps({"text": "Fine."}) + "\n" + json.dumps({"text": ["a", "b"]}) + "\n")
  for streaming in (False, True):
    with pytest.raises(ValueError, match=r"^config.data.sources\[1\] \(files '.*bad.jsonl'\): "
                                         r"'.*bad.jsonl', line 2: A document's text "
                                         r"\(text_field\) is list \['a', 'b'\], not a string. "
                                         r"Name a column of strings with "
                                         r"'--config.data.sources\[1\].text_field=COLUMN'.$"):
      loaded = corpus.load_corpus(_data_config(
          tmp_path, [dict(name=str(good)), dict(name=str(bad), streaming=streaming)]))
      list(loaded["train"])


def test_records_without_the_text_field_are_counted(tmp_path, caplog):
  path = tmp_path / "a.jsonl"
  rows = [{"text": "One."}, {"body": "No text."}, {"text": None}, {"text": " "}, {"text": "Two."}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with caplog.at_level(logging.INFO, logger="informask_jax"):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                             validation_fraction=0.0))
  assert _texts(loaded["train"]) == ["One.", "Two."]
  assert ("config.data.sources[0] (files '" + str(path) + "'): skipped 2 of 5 records without a "
          "'text' field (missing or null).") in caplog.text
  assert "dropped 1 of 5 documents that are empty after cleaning" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="informask_jax"):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), streaming=True)],
                                             validation_fraction=0.0))
    assert [ex["text"] for ex in loaded["train"]] == ["One.", "Two."]
  assert f"skipped 2 record(s) of {path} without a 'text' field (missing or null)" in caplog.text


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("content,line,reason", [
    (b'{"text": "broken\n', 3, r"not valid JSON \(Unterminated string starting at: column 10\)"),
    (b"plain text, not JSON\n", 3, r"not valid JSON \(Expecting value: column 1\)"),
    (b'"a bare string"\n', 3, r'a JSON string, not an object; each line must be one record '
                             r'such as \{"text": "..."\}'),
    (b'{"text": "caf\xff"}\n', 3, r"byte 0xff \(byte 14 of the line\) is not valid UTF-8"),
    # Python's json reads an escaped lone surrogate; pyarrow refuses it and names row 2.
    (b'{"text": "half \\ud800 of a pair"}\n', 3, r"a string holds the escape \\ud800, half of a "
     r"UTF-16 surrogate pair without its other half, which is not text; remove it or write the "
     r"character"),
])
def test_a_bad_jsonl_line_is_named_with_its_file_and_line(tmp_path, streaming, content, line,
                                                          reason):
  """The first bad line, 1-based (pyarrow's own error counts rows from 0 and names no file), in
  memory and streamed; bytes that are not UTF-8 surface only when the text is read."""
  path = tmp_path / "docs.jsonl"
  path.write_bytes(b'{"text": "One."}\n\n' + content + b'{"text": "Two."}\n')
  message = rf"^config.data.sources\[0\] \(files '.*'\): '.*docs.jsonl', line {line}: {reason}\.$"
  with pytest.raises(ValueError, match=message):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path),
                                                             streaming=streaming)]))
    list(loaded["train"])


def test_a_surrogate_pair_is_text_and_a_lone_half_in_a_json_array_is_named(tmp_path):
  good = tmp_path / "good.jsonl"
  good.write_bytes(b'{"text": "A smile: \\ud83d\\ude00."}\n')  # One character, as a pair.
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(good))],
                                           validation_fraction=0.0))
  assert _texts(loaded["train"]) == ["A smile: \U0001F600."]
  bad = tmp_path / "docs.json"
  bad.write_bytes(b'[{"text": "One."},\n {"text": "Two \\udc00."}]\n')
  with pytest.raises(ValueError, match=r"docs.json': item 1 of its JSON array: a string holds "
                                       r"the escape \\udc00, half of a UTF-16 surrogate pair"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(bad))]))


def test_sources_written_as_plain_dicts_in_a_config_file(tmp_path):
  """`c.data.sources = [{"kind": "files", ...}]` works as configs.base.source(...) does, and a
  mistyped field or a source that is not a mapping is named, not ignored."""
  path = tmp_path / "docs.jsonl"
  path.write_text('{"text": "One."}\n{"text": "Two."}\n')
  data = _data_config(tmp_path, [], validation_fraction=0.0)
  data.sources = [{"kind": "files", "name": str(path)}]
  assert _texts(corpus.load_corpus(data)["train"]) == ["One.", "Two."]
  data.sources = [{"kind": "files", "path": str(path)}]
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] has unknown field\(s\) "
                                       r"\['path'\]; a source's fields are kind, name, config,"):
    corpus.check_sources(data)
  data.sources = ["docs.jsonl"]
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] is str 'docs.jsonl', not a "
                                       r"source; write it as configs.base.source\(kind, name"):
    corpus.check_sources(data)


def test_a_bad_json_array_is_named_with_its_line(tmp_path):
  path = tmp_path / "docs.json"
  path.write_text('[{"text": "One."},\n {"text": "Two."]\n')
  with pytest.raises(ValueError, match=r"docs.json', line 2: not valid JSON \(Expecting ',' "
                                       r"delimiter: column 17\)\.$"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))]))


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("text_field", ["text", "data"])
def test_records_nested_under_a_key_say_how_to_write_json_lines(tmp_path, indent, text_field):
  """{"data": [records]} on one line or pretty-printed is neither JSON Lines nor an array: the
  error says so and gives the jq command, not "text_field=data" (then "a list, not a string") or
  "line 1: not valid JSON"."""
  path = tmp_path / "export.json"
  path.write_text(json.dumps({"version": 1, "data": [{"text": "One."}, {"text": "Two."}]},
                             indent=indent))
  with pytest.raises(ValueError, match=r"'.*export.json' holds one JSON object with the records "
                                       r"nested under 'data', not records: a .json/.jsonl file "
                                       r"must be JSON Lines \(one record per line\) or one JSON "
                                       r"array of records.*jq -c '.data\[\]' .*export.json > "
                                       r".*export.jsonl$"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), text_field=text_field)]))


def test_one_record_written_over_several_lines_is_not_called_invalid_json(tmp_path):
  """A pretty-printed {"text": ...}: valid JSON, which the error called "line 1: not valid JSON
  (Expecting property name enclosed in double quotes)"; it says what the file is and how to
  write it as JSON Lines."""
  path = tmp_path / "one.json"
  path.write_text(json.dumps({"text": "A document.", "id": 7}, indent=2))
  with pytest.raises(ValueError, match=r"'.*one.json' holds one JSON object written over several "
                                       r"lines, not JSON Lines \(one record per line\) or one "
                                       r"JSON array of records\. Write it on one line, e\.g\. "
                                       r"jq -c \. .*one.json > .*one.jsonl$"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))]))
  # A .jsonl is not told to write itself: the shell's ">" would empty it before jq reads it.
  path.rename(tmp_path / "one.jsonl")
  with pytest.raises(ValueError, match=r"jq -c \. .*one.jsonl > .*one.lines.jsonl$"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(tmp_path / "one.jsonl"))]))


def test_json_lines_whose_text_field_holds_objects_is_not_called_nested(tmp_path):
  """A JSON Lines file of chats, text_field naming the list of messages: the wrong-type error with
  its line, as before (the records are not nested in one object)."""
  path = tmp_path / "chats.jsonl"
  path.write_text("".join(json.dumps({"messages": [{"content": f"Hi {i}."}]}) + "\n"
                          for i in range(2)))
  with pytest.raises(ValueError, match=r"chats.jsonl', line 1: A document's text \(text_field\) "
                                       r"is list"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), text_field="messages")]))


def test_an_empty_jsonl_is_an_empty_source_as_an_empty_txt_is(tmp_path):
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "a.txt").write_text("Some text.\n")
  (folder / "b.jsonl").write_bytes(b"")
  (folder / "c.jsonl").write_text("\n  \n\n")
  for streaming in (False, True):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder),
                                                             streaming=streaming)],
                                             validation_fraction=0.0))
    assert [ex["text"] for ex in loaded["train"]] == ["Some text."]
  with pytest.raises(ValueError, match=r"corpus is empty: .*b.jsonl"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder / "b.jsonl"))]))


def test_an_unreadable_parquet_file_gives_pyarrow_s_reason(tmp_path):
  path = tmp_path / "cut.parquet"
  path.write_bytes(b"PAR1" + b"\x00" * 100)
  with pytest.raises(ValueError, match=r"could not read \['.*cut.parquet'\] as parquet: "
                                       r"ArrowInvalid: .*magic bytes"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))]))


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


def test_bad_source_settings(tmp_path):
  with pytest.raises(ValueError, match=r"sources\[0\]\.name is empty \(kind='files'\)"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name="")]))
  # 0 is not "all documents" and True is not 1: both are mistakes.
  for limit in (0, -2, True):
    with pytest.raises(ValueError, match=f"max_documents={limit!r} must be -1"):
      corpus.check_sources(_data_config(tmp_path, [dict(name="x.txt")], max_documents=limit))


def test_source_fields_of_the_wrong_type_are_named(tmp_path):
  """A list of files as the name ended in a TypeError traceback from the path functions, a list
  as text_field in 'unhashable type', and streaming="no" streamed (bool("no") is True)."""
  for field, value, message in [
      ("name", ["a.jsonl", "b.jsonl"], r"sources\[0\]\.name=\['a.jsonl', 'b.jsonl'\] must be a "
                                       r"string \(several files: a folder, a glob"),
      ("text_field", ["body"], r"sources\[0\]\.text_field=\['body'\] must be a string\.$"),
      ("streaming", "no", r"sources\[0\]\.streaming='no' must be True or False")]:
    source = dict(name=str(tmp_path / "a.jsonl"))
    source[field] = value
    with pytest.raises(ValueError, match=message):
      corpus.check_sources(_data_config(tmp_path, [source]))


def test_max_documents_caps_in_memory_sources_together_when_another_streams(tmp_path):
  """With any source streaming, the in-memory ones were turned into streams before the cap, so
  each was cut at max_documents on its own instead of counting towards it."""
  names = []
  for part in "abc":
    names.append(tmp_path / f"{part}.jsonl")
    names[-1].write_text("".join(json.dumps({"text": f"Document {part}{i}."}) + "\n"
                                 for i in range(5)))
  for streamed in (False, True):
    sources = [dict(name=str(n), streaming=streamed and n.stem == "c") for n in names]
    loaded = corpus.load_corpus(_data_config(tmp_path, sources, validation_fraction=0.0,
                                             max_documents=7))
    assert [d["text"] for d in loaded["train"]] == [f"Document a{i}." for i in range(5)] + [
        "Document b0.", "Document b1."], streamed


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_source_may_be_a_folder_save_to_disk_wrote(tmp_path, streaming):
  """load_dataset refuses such a folder, and its error was read as a bad line of the folder's
  (valid) dataset_info.json."""
  texts = [f"Saved document {i}." for i in range(6)]
  datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "one"))
  datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": texts[:3]}),
                        "test": datasets.Dataset.from_dict({"body": texts[3:]})}).save_to_disk(
                            str(tmp_path / "dict"))
  def load(name, **overrides):
    data = _data_config(tmp_path, [dict(kind="hub", name=str(tmp_path / name), text_field="body",
                                        streaming=streaming)], validation_fraction=0.0)
    data.sources[0].update(overrides)
    return [d["text"] for d in corpus.load_corpus(data)["train"]]

  assert load("one") == texts
  assert load("dict", split="test") == texts[3:]
  with pytest.raises(ValueError, match=r"sources\[0\] .*: the saved dataset's splits are "
                                       r"\['test', 'train'\], not 'validation'"):
    load("dict", split="validation")
  # Given as files: its dataset_info.json was "not valid JSON", or its dataset_dict.json's
  # "splits" suggested as the text_field.
  for name in ("one", "dict"):
    with pytest.raises(ValueError, match=rf"^config.data.sources\[0\] .*directory '.*{name}' is "
                                         r"a dataset written by save_to_disk, not text files: "
                                         r"give it as a source of kind 'hub' \('--config.data."
                                         r"sources\[0\].kind=hub'\), which loads it\.$"):
      load(name, kind="files")
  # Inside a folder of text files: named too (its dataset_info.json got the jq advice).
  (tmp_path / "mixed").mkdir()
  (tmp_path / "mixed" / "train.jsonl").write_text('{"body": "A line."}\n')
  shutil.copytree(tmp_path / "one", tmp_path / "mixed" / "arrow_copy")
  with pytest.raises(ValueError, match=r"directory '.*mixed/arrow_copy' is a dataset written by "
                                       r"save_to_disk, not text files: give it as a source of "
                                       r"kind 'hub'"):
    load("mixed", kind="files")
  # Beam's --input has no kind: no flag is suggested.
  with pytest.raises(ValueError, match=r"^input 'x': directory '.*one' is a dataset written by "
                                       r"save_to_disk, not text files\.$"):
    corpus_files.expand_files(str(tmp_path / "one"), "input 'x'")


def test_a_wiki_vital_text_field_error_names_the_key(tmp_path):
  data = base.get_base_config("tiny").data
  data.sources[0].text_field = "text"
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] \(wiki_vital .*no field 'text' "
                                       r".*'--config.data.sources\[0\].text_field=extract'"):
    corpus.load_corpus(data)


def test_the_default_cache_follows_xdg_cache_home(monkeypatch):
  from configs import base
  from informask_jax import paths

  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  assert paths.default_cache_dir() == "~/.cache/informask_jax"
  monkeypatch.setenv("XDG_CACHE_HOME", "/scratch/me/cache")
  assert paths.default_cache_dir() == "/scratch/me/cache/informask_jax"
  assert base.get_base_config("tiny").data.cache_dir == "/scratch/me/cache/informask_jax"
  # Every cache resolves config.data.cache_dir this way: empty means the default, "~" expanded.
  assert paths.cache_dir("") == paths.cache_dir(None) == "/scratch/me/cache/informask_jax"
  assert paths.cache_dir("~/c") == os.path.expanduser("~/c")


def test_publish_dir_keeps_the_first_copy_and_leaves_nothing_half_written(tmp_path):
  """The tokenizer and tokenized caches are published with paths.publish_dir."""
  from informask_jax import paths

  target = tmp_path / "cache" / "key"

  def write(text):
    return lambda tmp: (pathlib.Path(tmp) / "f").write_text(text)

  old_umask = os.umask(0o027)
  try:
    paths.publish_dir(str(target), write("first"))
  finally:
    os.umask(old_umask)
  paths.publish_dir(str(target), write("second"))  # Another process, the same key, later.
  assert (target / "f").read_text() == "first"
  # The entry has the mode of a folder made under the umask, not mkdtemp's private 0700: a
  # cache shared by a group was unreadable to all but the user who built each entry.
  assert stat.S_IMODE(target.stat().st_mode) == 0o750

  def interrupted(tmp):
    (pathlib.Path(tmp) / "f").write_text("half")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    paths.publish_dir(str(tmp_path / "cache" / "other"), interrupted)
  assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["key"]


def _big_jsonl(path, late_records):
  """Over the 10 MB from which `datasets` infers a JSON file's columns and their types, with
  `late_records` after them."""
  filler = json.dumps({"text": "Words of a document. " * 200}) + "\n"
  count = 11 * 2**20 // len(filler)
  with open(path, "w") as f:
    f.write(filler * count)
    f.writelines(json.dumps(r) + "\n" for r in late_records)
  return count


@pytest.mark.parametrize("streaming", [False, True])
def test_a_jsonl_field_first_seen_after_10_mb_is_read(tmp_path, streaming):
  """`datasets` fixed the columns from the first 10 MB: a record with one more field (a "url")
  after them made the whole file unreadable ("column names don't match")."""
  path = tmp_path / "big.jsonl"
  filler = _big_jsonl(path, [{"text": "A late one.", "url": "https://example.org"}])
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), streaming=streaming)],
                                           validation_fraction=0.0))
  texts = [ex["text"] for ex in loaded["train"]]
  assert len(texts) == filler + 1 and texts[-1] == "A late one."


@pytest.mark.parametrize("streaming", [False, True])
def test_a_number_as_text_after_10_mb_is_refused_with_its_line(tmp_path, streaming):
  """Past the first 10 MB, {"text": 31415926} was trained on as the text "31415926"."""
  path = tmp_path / "big.jsonl"
  filler = _big_jsonl(path, [{"text": "Fine."}, {"text": 31415926}])
  with pytest.raises(ValueError, match=rf"big.jsonl', line {filler + 2}: A document's text "
                                       r"\(text_field\) is int 31415926, not a string"):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path),
                                                             streaming=streaming)]))
    list(loaded["train"])


def test_a_file_of_a_folder_without_the_text_field_is_named(tmp_path, caplog):
  """One file of records without text_field among others: named (the hint to rename the column
  would break the other files), and a compressed shard the walk skips is warned about."""
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "a.jsonl").write_text('{"text": "One."}\n')
  (folder / "b.jsonl").write_text('{"body": "Two."}\n')
  with pytest.raises(ValueError, match=r"\(files '.*data'\): '.*b.jsonl': no column 'text' "
                                       r"\(text_field\); columns are \['body'\]"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))]))
  (folder / "b.jsonl").unlink()
  (folder / "c.txt.gz").write_bytes(b"\x1f\x8b")
  with caplog.at_level(logging.WARNING, logger="informask_jax"):
    corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))], validation_fraction=0.0))
  assert "read 1 .txt/.jsonl/.json/.parquet file(s), skipped 1 of other types: c.txt.gz." in (
      caplog.text)


def test_a_bad_line_in_a_local_folder_loaded_as_a_hub_dataset_is_named(tmp_path):
  """`datasets` loads a local folder given as kind=hub itself; its error named neither the file
  nor the line ("An error occurred while generating the dataset"), which kind=files does."""
  folder = tmp_path / "set"
  folder.mkdir()
  (folder / "a.jsonl").write_text('{"text": "One."}\n{"text": "Two."\n')
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] \(hub '.*set'\): '.*a.jsonl', "
                                       r"line 2: not valid JSON"):
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name=str(folder))]))


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_files_whose_text_column_differs_are_named(tmp_path, streaming):
  """In memory, `datasets` cast every Parquet file to the first one's schema: a text_field of
  numbers in a later file became the documents '0', '1', ... and was trained on; a file without
  the column failed naming no file, advising a text_field that the other files lack. Both name
  the file, in either mode, as does a number beside a .txt file (datasets' own alignment error)."""
  folder = tmp_path / "data"
  folder.mkdir()
  pq.write_table(pa.table({"text": ["One.", "Two."]}), folder / "a.parquet")
  pq.write_table(pa.table({"text": pa.array([0, 1], pa.int64())}), folder / "b.parquet")
  config = _data_config(tmp_path, [dict(name=str(folder), streaming=streaming)],
                        validation_fraction=0.0)
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] \(files .*\): .*b\.parquet: "
                                       r"the column 'text' \(text_field\) holds int64, not "
                                       r"strings\. Name a column of strings with "
                                       r"'--config.data.sources\[0\].text_field=COLUMN'\.$"):
    corpus.load_corpus(config)
  (folder / "other.txt").write_text("Three.\n")
  with pytest.raises(ValueError, match=r"b\.parquet: the column 'text' \(text_field\) holds int64"):
    corpus.load_corpus(config)
  pq.write_table(pa.table({"body": ["Four."]}), folder / "b.parquet")
  with pytest.raises(ValueError, match=r"^config.data.sources\[0\] \(files .*\): .*b\.parquet has "
                                       r"no column 'text' \(text_field\), which the source's "
                                       r"other Parquet files have; its columns are \['body'\]\. "
                                       r"Move it out of the source"):
    corpus.load_corpus(config)
  # Categorical strings are text.
  pq.write_table(pa.table({"text": pa.array(["Four."]).dictionary_encode()}),
                 folder / "b.parquet")
  assert sorted(ex["text"] for ex in corpus.load_corpus(config)["train"]) == [
      "Four.", "One.", "Three.", "Two."]


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_files_of_no_rows_are_skipped(tmp_path, streaming, caplog):
  """Spark writes a Parquet file of no rows per empty partition; `datasets` refused it
  ("BatchSize must be greater than 0"), so a folder of such shards did not read at all."""
  folder = tmp_path / "data"
  folder.mkdir()
  pq.write_table(pa.table({"text": ["One.", "Two."]}), folder / "shard-00000.parquet")
  pq.write_table(pa.table({"text": pa.array([], pa.string())}), folder / "shard-00001.parquet")
  with caplog.at_level(logging.INFO, logger="informask_jax"):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder),
                                                             streaming=streaming)],
                                             validation_fraction=0.0))
    assert [ex["text"] for ex in loaded["train"]] == ["One.", "Two."]
  assert re.search(r"skipped 1 Parquet file\(s\) of no rows: .*shard-00001.parquet\.",
                   caplog.text)
  (folder / "shard-00000.parquet").unlink()
  if streaming:  # A stream of none, which joins another source's.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "Three."}) + "\n")
    loaded = corpus.load_corpus(_data_config(tmp_path, [
        dict(name=str(folder), streaming=True), dict(name=str(other), streaming=True)],
        validation_fraction=0.0))
    assert [ex["text"] for ex in loaded["train"]] == ["Three."]
  else:
    with pytest.raises(ValueError, match=r"corpus is empty: .*data'\)"):
      corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))]))


def test_a_bad_line_in_a_local_folder_streamed_as_a_hub_dataset_is_named(tmp_path):
  """A stream reads its files only when iterated, after load_dataset: pyarrow's error there
  ("JSON parse error ... in row 300") named neither the source nor the file. The stream read
  through our generator still shuffles per epoch, and keeps text_field only."""
  folder = tmp_path / "set"
  folder.mkdir()
  for k in range(3):
    (folder / f"part{k}.jsonl").write_text("".join(
        json.dumps({"body": f"Doc {k}-{i}.", "id": i}) + "\n" for i in range(8)))
  source = dict(kind="hub", name=str(folder), text_field="body", streaming=True)
  train = corpus.load_corpus(_data_config(tmp_path, [source], validation_fraction=0.0))["train"]
  expected = sorted(f"Doc {k}-{i}." for k in range(3) for i in range(8))
  assert sorted(ex["text"] for ex in train) == expected
  assert [ex["text"] for ex in train.take(2)] == ["Doc 0-0.", "Doc 0-1."]
  shuffled = train.shuffle(seed=0, buffer_size=4)
  orders = []
  for epoch in (0, 1):
    shuffled.set_epoch(epoch)
    orders.append([ex["text"] for ex in shuffled])
  assert sorted(orders[0]) == expected and orders[0] != orders[1]
  for bad, reason in [(b'{"body": "caf\xff"}', r"byte 0xff \(byte 14 of the line\) is not valid "
                                               r"UTF-8"),
                      (b'{"body": "Two."', r"not valid JSON \(Expecting ',' delimiter")]:
    (folder / "part1.jsonl").write_bytes(b'{"body": "One."}\n\n' + bad + b"\n")
    train = corpus.load_corpus(_data_config(tmp_path, [source]))["train"]
    with pytest.raises(ValueError, match=r"^config.data.sources\[0\] \(hub '.*set'\): "
                                         rf"'.*part1.jsonl', line 3: {reason}"):
      list(train)


def test_a_large_json_array_streamed_is_warned_about(tmp_path, monkeypatch, caplog):
  """A JSON array is parsed whole (~4x its size in memory), by a stream on every pass: above
  JSON_ARRAY_WARN_BYTES the log says so and how to write it as JSON Lines."""
  monkeypatch.setattr(corpus_files, "JSON_ARRAY_WARN_BYTES", 200)
  records = [{"text": f"Document number {i}."} for i in range(10)]
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "big.json").write_text(json.dumps(records, indent=1))
  (folder / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in records))
  (folder / "small.json").write_text(json.dumps(records[:2]))
  for streaming in (False, True):
    with caplog.at_level(logging.WARNING, logger="informask_jax"):
      loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder),
                                                               streaming=streaming)],
                                               validation_fraction=0.0))
      assert len(list(loaded["train"])) == 22
    said = [r.getMessage() for r in caplog.records if "JSON array" in r.getMessage()]
    if not streaming:
      assert not said
  assert len(said) == 1 and re.search(
      r"'.*big.json' holds one JSON array \(0 MB\), not JSON Lines: a stream reads it whole "
      r"into memory, on every pass\. .*jq -c '\.\[\]' .*big.json > .*big.jsonl$", said[0])


def test_two_different_documents_split_one_each_way(tmp_path):
  """The fewest documents that can be split: the smaller hash is held out, the larger trains,
  whatever the fraction (the trainer refuses an empty split, saying a corpus needs two)."""
  path = tmp_path / "a.jsonl"
  texts = ["First document.", "Second document."]
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  for fraction in (1e-9, 0.02, 0.999999):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                             validation_fraction=fraction))
    assert _texts(loaded["validation"]) == [min(texts, key=_text_bucket)], fraction
    assert _texts(loaded["train"]) == [max(texts, key=_text_bucket)], fraction


def test_another_text_field_of_the_same_json_file_is_read_again(tmp_path):
  """The JSON reader's cache is keyed by text_field too: the same file read for another field
  (the title, then the body) gives that field's text, not the cached one's."""
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps({"title": f"Title {i}.", "body": f"Body {i}."}) + "\n"
                          for i in range(3)))
  for field in ("title", "body", "title"):
    c = _data_config(tmp_path, [dict(name=str(path), text_field=field)], validation_fraction=0.0)
    assert _texts(corpus.load_corpus(c)["train"]) == [f"{field.title()} {i}." for i in range(3)]


def test_in_memory_and_streamed_corpora_hold_out_the_documents_that_hash_below_the_fraction(
    tmp_path):
  """Held out: exactly the documents whose text hashes below validation_fraction, in memory as
  when streamed (and as in the Beam statistics, which must not count held-out text). Another
  rule of the same share (the hashes at or above 1 - fraction) would pass every count."""
  path = tmp_path / "a.jsonl"
  texts = [f"Document {i}." for i in range(200)]
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  want = [t for t in texts if _text_bucket(t) < 0.1]
  assert 5 < len(want) < 40
  for streaming in (False, True):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path),
                                                             streaming=streaming)],
                                             validation_fraction=0.1))
    assert [d["text"] for d in loaded["validation"]] == want, streaming
    assert [d["text"] for d in loaded["train"]] == [t for t in texts if t not in want], streaming


@pytest.mark.parametrize("streaming", [False, True])
def test_a_jsonl_file_saved_with_a_byte_order_mark_reads_its_first_record(tmp_path, streaming):
  """Windows tools (PowerShell's Out-File, Notepad) start UTF-8 files with a byte-order mark,
  which json.loads refuses: it is no part of the first record."""
  path = tmp_path / "a.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"text": f"Record {i}."}) + "\n"
                                             for i in range(3)).encode("utf-8"))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), streaming=streaming)],
                                           validation_fraction=0.0))
  assert [d["text"] for d in loaded["train"]] == [f"Record {i}." for i in range(3)]


@pytest.mark.parametrize("streaming", [False, True])
def test_max_documents_counts_records_that_cleaning_empties(tmp_path, streaming):
  """The first max_documents records are read, then cleaned: a record of blanks among them
  counts, in memory as when streamed (capping after cleaning in one of them would give the
  two corpora of one config different documents)."""
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("A.", " \t ", "B.", "C.")))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path), streaming=streaming)],
                                           validation_fraction=0.0, max_documents=3))
  assert [d["text"] for d in loaded["train"]] == ["A.", "B."]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_txt_file_saved_with_a_byte_order_mark_reads_its_first_document_without_it(
    tmp_path, streaming):
  """The mark stayed as an invisible U+FEFF at the start of the first document: its split hash
  and the corpus fingerprint differed from the same file without it, and a byte-level BPE
  tokenizer encodes it as tokens."""
  texts = [f"Document {i} is here." for i in range(3)]
  marked, plain = tmp_path / "marked.txt", tmp_path / "plain" / "plain.txt"
  plain.parent.mkdir()
  marked.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(texts).encode("utf-8") + b"\n")
  plain.write_bytes(marked.read_bytes()[3:])

  def load(path):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path),
                                                             streaming=streaming)],
                                             validation_fraction=0.0))
    return [d["text"].strip() for d in loaded["train"]]

  assert load(marked) == load(plain) == texts


@pytest.mark.parametrize("streaming", [False, True])
def test_large_string_parquet_beside_other_files_loads_every_document(tmp_path, streaming):
  """Parquet written by pandas 3 holds text as large_string, the other readers' as string: in
  memory, datasets refused to join the two ("The features can't be aligned", no file named),
  also for two Parquet files whose other columns differ."""
  folder = tmp_path / "data"
  folder.mkdir()
  pq.write_table(pa.table({"text": pa.array(["Big one.", "Big two."], pa.large_string()),
                           "id": [1, 2]}), folder / "a.parquet")
  pq.write_table(pa.table({"text": ["Small one."], "url": ["u"]}), folder / "b.parquet")
  (folder / "c.txt").write_text("Plain one.\n\nPlain two.\n")
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder), streaming=streaming)],
                                           validation_fraction=0.0))
  assert sorted(_texts(loaded["train"])) == ["Big one.", "Big two.", "Plain one.", "Plain two.",
                                             "Small one."]


def test_a_directory_source_follows_linked_folders_once(tmp_path):
  """Shards linked in from scratch storage were left out unseen (os.walk follows no link); a
  link to a folder above must not loop, and a folder linked twice is read once."""
  shards, folder = tmp_path / "scratch", tmp_path / "corpus"
  shards.mkdir()
  folder.mkdir()
  (shards / "s.txt").write_text("Shard one.\n\nShard two.\n")
  (folder / "local.txt").write_text("Local.\n")
  (folder / "linked").symlink_to(shards, target_is_directory=True)
  (folder / "again").symlink_to(shards, target_is_directory=True)
  (shards / "up").symlink_to(folder, target_is_directory=True)
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(folder))],
                                           validation_fraction=0.0))
  assert sorted(_texts(loaded["train"])) == ["Local.", "Shard one.", "Shard two."]


def test_a_file_whose_name_has_brackets_is_read_as_named(tmp_path):
  path = tmp_path / "wiki[2023].txt"
  path.write_text("One.\n\nTwo.\n")
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(path))],
                                           validation_fraction=0.0))
  assert _texts(loaded["train"]) == ["One.", "Two."]


def test_a_local_hub_folder_is_found_from_home_and_its_error_gives_the_reason(tmp_path,
                                                                              monkeypatch):
  """"~/saved" was taken for a hub dataset's name (the error blamed the network), and a folder
  of JSON Lines files with other fields failed as "An error occurred while generating the
  dataset", which named no reason."""
  monkeypatch.setenv("HOME", str(tmp_path))
  datasets.Dataset.from_dict({"text": ["Saved one.", "Saved two."]}).save_to_disk(
      str(tmp_path / "saved"))
  loaded = corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name="~/saved")],
                                           validation_fraction=0.0))
  assert _texts(loaded["train"]) == ["Saved one.", "Saved two."]
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  (mixed / "a.jsonl").write_text(json.dumps({"text": "A one.", "url": "u"}) + "\n")
  (mixed / "b.jsonl").write_text(json.dumps({"text": "B one.", "id": 3}) + "\n")
  with pytest.raises(ValueError, match=r"(?s)could not load hub dataset .*mixed.*: CastError: "
                                       r"Couldn't cast.*\. A folder of text files reads as a "
                                       r"source of kind 'files'"):
    corpus.load_corpus(_data_config(tmp_path, [dict(kind="hub", name=str(mixed))]))


@pytest.mark.parametrize("streaming", [False, True])
def test_a_parquet_file_named_with_brackets_is_the_one_read(tmp_path, streaming):
  """`datasets` takes data_files for glob patterns: "shard[1].parquet" read shard1.parquet, so
  a folder of both read shard1 twice, and the file named alone read nothing."""
  folder = tmp_path / "data"
  folder.mkdir()
  pq.write_table(pa.table({"text": ["From shard1."]}), folder / "shard1.parquet")
  pq.write_table(pa.table({"text": ["From shard[1]."]}), folder / "shard[1].parquet")
  for name, want in ((folder, ["From shard1.", "From shard[1]."]),
                     (folder / "shard[1].parquet", ["From shard[1]."])):
    loaded = corpus.load_corpus(_data_config(tmp_path, [dict(name=str(name),
                                                             streaming=streaming)],
                                             validation_fraction=0.0))
    assert sorted(_texts(loaded["train"])) == want, name


def test_each_real_file_is_read_once_through_links_and_globs(tmp_path):
  """A ** glob through a link to a folder above repeated its files at ever longer paths (41
  copies of one file); a file and a link to it were read twice."""
  src = tmp_path / "src"
  (src / "a").mkdir(parents=True)
  (src / "a" / "x.txt").write_text("Only once.\n")
  (src / "a" / "back").symlink_to(src, target_is_directory=True)
  (src / "same.txt").symlink_to(src / "a" / "x.txt")
  for name in (src, src / "**" / "*.txt"):
    (found,) = corpus_files.expand_files(str(name), "test")  # By its shortest path.
    assert found == str(src / "same.txt") and os.path.samefile(found, src / "a" / "x.txt")
