"""The WordPiece tokenizer: loaded from a vocab.txt, a tokenizer directory or the hub, or trained.

`config.tokenizer.name_or_path` picks the source, in this order:
  * a `vocab.txt` file: a BERT WordPiece tokenizer over it (lowercase from the config, with a
    warning when a `tokenizer_config.json` beside it states another case);
  * a directory holding a saved tokenizer (`tokenizer.json` or `vocab.txt`; beside a vocab.txt,
    the case its `tokenizer_config.json` states, `do_lower_case` and `strip_accents`, wins; else
    a `tokenizer_config.json` with a slow tokenizer's files, such as vocab.json + merges.txt);
  * anything else is a hub name (the paper's recipe: "bert-base-uncased"), unless it can only be a
    path (absolute, ./ or ../, two folders deep, a .txt or .json): a missing one is an error;
  * "" trains a WordPiece vocabulary of `vocab_size` on the corpus's train split with `tokenizers`.
    Training is deterministic and the result is saved under `<cache_dir>/tokenizers/`, keyed by the
    corpus fingerprint and the settings, so later runs load it in milliseconds.
A trained vocabulary always begins [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0..4).
"""

import collections
import hashlib
import json
import logging
import os
import shutil
import string
import time
import unicodedata
from typing import NamedTuple

import numpy as np
import tokenizers
import transformers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from informask_jax import corpus as corpus_lib
from informask_jax import paths, word_marks

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Bump when the training recipe changes, so stale cached vocabularies are not reused.
# v2: words over MAX_WORD_CHARS characters are left out of the training text.
_TRAIN_RECIPE = "wordpiece-v2"
# A streaming corpus is sampled for training: its first this many train documents.
STREAM_TRAIN_DOCUMENTS = 50_000


class SpecialIds(NamedTuple):
  pad: int
  unk: int
  cls: int
  sep: int
  mask: int


def _wrap(tok):
  """A `tokenizers.Tokenizer` as a transformers fast tokenizer with BERT's special tokens."""
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]",
      # Documents are tokenized whole and split by the packer, never truncated.
      model_max_length=int(1e30))


def _bert_pipeline(tok, lowercase, strip_accents=None):
  """BERT's normaliser, pre-tokeniser, post-processor and decoder on a WordPiece model; accents
  are stripped when lower-casing unless `strip_accents` says otherwise (BertTokenizer's rule)."""
  strip_accents = lowercase if strip_accents is None else strip_accents
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  return tok


def _add_post_processor(tok):
  tok.post_processor = _bert_template("[CLS]", tok.token_to_id("[CLS]"), "[SEP]",
                                      tok.token_to_id("[SEP]"))
  return tok


def _bert_template(cls, cls_id, sep, sep_id):
  """BERT's framing with the given tokens: cls A sep, and cls A sep B sep with B's of type 1."""
  return processors.TemplateProcessing(
      single=[cls, "$A", sep], pair=[cls, "$A", sep, "$B:1", f"{sep}:1"],
      special_tokens=[(cls, cls_id), (sep, sep_id)])


def _from_vocab_file(path, lowercase, strip_accents=None):
  with open(path, "rb") as f:
    raw = f.read()
  try:
    lines = raw.decode("utf-8-sig").split("\n")  # A byte-order mark is no part of a token.
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise ValueError(f"config.tokenizer.name_or_path={path!r} is not a UTF-8 vocab.txt (one token "
                     f"per line): byte {raw[e.start]:#04x} on line {line} is not UTF-8.") from None
  vocab, repeated = {}, []
  # The id is the line number, as in tokenizers and transformers (a repeated token keeps its
  # last line), so ids match a released checkpoint's embedding rows.
  for index, line in enumerate(lines):
    token = line.rstrip("\r")
    if token and token in vocab:
      repeated.append((token, vocab[token] + 1, index + 1))
    if token:
      vocab[token] = index
  if repeated:  # Said, not refused: a released vocabulary may have them, and its ids must hold.
    token, first, again = repeated[0]
    log.warning("config.tokenizer.name_or_path=%r lists %d token(s) more than once (first: %r on "
                "lines %d and %d); each keeps its last line's id, so no text maps to the earlier "
                "lines' ids.", path, len(repeated), token, first, again)
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(f"config.tokenizer.name_or_path={path!r}: the vocabulary lacks {missing}.")
  _warn_unreachable_tokens(vocab, path, lowercase, strip_accents)
  return _wrap(_from_vocab(vocab, lowercase, strip_accents))


# The share of a vocab.txt's tokens that its normaliser can never produce above which
# _warn_unreachable_tokens speaks (bert-base-uncased's vocabulary has none).
UNREACHABLE_WARN_SHARE = 0.01


def _warn_unreachable_tokens(vocab, path, lowercase, strip_accents=None):
  """A cased vocab.txt (bert-base-cased's, a BertWordPieceTokenizer(lowercase=False)'s
  save_model) read with the default lowercase=True: its capitalised or accented tokens are rows
  no text reaches, and the case the vocabulary was built for is lost, silently unless a
  tokenizer_config.json lies beside it."""
  normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, lowercase=lowercase,
      strip_accents=lowercase if strip_accents is None else strip_accents)
  words = [t[2:] if t.startswith("##") else t for t in vocab if t not in SPECIAL_TOKENS]
  unreachable = [w for w in words if w and normalizer.normalize_str(w).strip() != w]
  if len(unreachable) > UNREACHABLE_WARN_SHARE * max(len(words), 1):
    log.warning("config.tokenizer.name_or_path=%r: %d of its %d tokens (e.g. %s) hold letters "
                "that config.tokenizer.lowercase=%s changes (lower-casing, accent stripping), so "
                "no text ever gives them: a cased vocabulary wants "
                "--config.tokenizer.lowercase=False.", path, len(unreachable), len(vocab),
                ", ".join(repr(w) for w in unreachable[:3]), lowercase)


def _from_vocab(vocab, lowercase, strip_accents=None):
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  return _add_post_processor(_bert_pipeline(tok, lowercase, strip_accents))


def _declared_case(name, lowercase):
  """(lowercase, strip_accents) of a vocab.txt directory: those its tokenizer_config.json states
  (a slow BertTokenizer's save_pretrained, read so by AutoTokenizer), else the config's."""
  path = os.path.join(name, "tokenizer_config.json")
  if not os.path.isfile(path):
    return lowercase, None
  try:
    with open(path, encoding="utf-8") as f:
      settings = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"config.tokenizer.name_or_path={name!r}: {path} is not valid JSON ({e}); "
                     "fix or remove it, or point name_or_path at the vocab.txt.") from None
  settings = settings if isinstance(settings, dict) else {}
  lower, strip = settings.get("do_lower_case"), settings.get("strip_accents")
  return (lowercase if lower is None else bool(lower)), (None if strip is None else bool(strip))


def _train_pass(texts, vocab_size, lowercase, special_tokens):
  tok = _bert_pipeline(tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
      continuing_subword_prefix="##")
  tok.train_from_iterator(texts, trainer=trainer)
  return set(tok.get_vocab())


def _is_word_char(ch):
  """Neither whitespace nor punctuation: BERT's pre-tokeniser keeps runs of these together."""
  return not (ch.isspace() or ch in string.punctuation or unicodedata.category(ch).startswith("P"))


def _normalizer(lowercase):
  """BERT's normaliser, as the trained tokenizer applies it (before its pre-tokeniser)."""
  return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                    strip_accents=lowercase, lowercase=lowercase)


def _word_characters(text):
  """(code points (C,), True where one is a word character) of normalised `text`."""
  points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  if not len(points):
    return points, np.zeros(0, bool)
  is_word = np.zeros(int(points.max()) + 1, bool)  # A lookup table over the code points seen.
  for u in np.flatnonzero(np.bincount(points)):
    is_word[u] = _is_word_char(chr(u))
  return points, is_word[points]


def _inner_characters(make_texts, lowercase, seen=None, long_words=None):
  """Characters found after the first position of a word, i.e. the "##x" pieces of the alphabet
  (words over MAX_WORD_CHARS characters, left out of training, left out here too).

  The same scan counts in `seen` (a Counter) every character of the text as written (for
  `_warn_stripped_marks`) and adds to `long_words` ({"count", "example"}) the words over
  `MAX_WORD_CHARS` characters (for `_warn_long_words`)."""
  normalizer = _normalizer(lowercase)
  found = set()
  for batch in make_texts():
    raw = "\n".join(batch)
    if seen is not None:  # Counted in NumPy: a Counter update walks the text in Python.
      counts = np.bincount(np.frombuffer(raw.encode("utf-32-le"), np.uint32))
      seen.update({chr(u): int(counts[u]) for u in np.flatnonzero(counts)})
    text = normalizer.normalize_str(raw)
    points, word = _word_characters(text)
    if not len(points):
      continue
    starts, ends = _long_word_spans(word)
    if long_words is not None and len(starts):
      long_words["count"] = long_words.get("count", 0) + len(starts)
      long_words.setdefault("example", text[starts[0]:ends[0]])
    for start, end in zip(starts, ends, strict=True):  # Left out of training: no pieces either.
      word[start:end] = False
    inner = points[1:][word[1:] & word[:-1]]
    found.update(chr(u) for u in np.flatnonzero(np.bincount(inner)))
  return found


# WordPiece's max_input_chars_per_word (tokenizers' and BertTokenizer's default, which a
# released vocab.txt is used with): a longer word is one [UNK], whatever the vocabulary holds.
MAX_WORD_CHARS = 100


def _long_word_spans(word):
  """(starts, ends) of the words longer than MAX_WORD_CHARS; `word` (C,) marks the text's word
  characters."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], word.astype(np.int8), [0]])))
  starts, ends = edges[::2], edges[1::2]  # Each run of word characters.
  long = ends - starts > MAX_WORD_CHARS
  return starts[long], ends[long]


def _without_long_words(make_texts, lowercase):
  """`make_texts` whose batches are normalised (as training would) and stripped of the words
  over MAX_WORD_CHARS characters: each is one [UNK] whatever the vocabulary holds, and the
  trainer's time grows with the square of a word's length (a base64 blob or a DNA string of
  200,000 characters took a minute, of 5 MB hours)."""
  normalizer = _normalizer(lowercase)

  def texts():
    for batch in make_texts():
      out = []
      for text in batch:
        text = normalizer.normalize_str(text)  # Normalising again changes nothing.
        if len(text) > MAX_WORD_CHARS:
          starts, ends = _long_word_spans(_word_characters(text)[1])
          # The text between the long words, joined by spaces.
          text = " ".join(text[a:b] for a, b in zip([0, *ends], [*starts, len(text)],
                                                    strict=True))
        out.append(text)
      yield out
  return texts


def _warn_long_words(long_words):
  """Text of a script written without spaces (Thai, Lao, Khmer, Burmese; a long kana run) makes
  words of whole phrases, and one over MAX_WORD_CHARS characters is tokenized as a single [UNK]:
  the model never sees it, and the vocabulary learned from it is never used."""
  if not long_words.get("count"):
    return
  log.warning("%d word(s) of the corpus are longer than %d characters (between spaces and "
              "punctuation; the first begins %r), and WordPiece tokenizes each as one [UNK]. "
              "Text written without spaces between words (Thai, Lao, Khmer, Burmese) needs a "
              "word segmenter before training.", long_words["count"], MAX_WORD_CHARS,
              long_words["example"][:30])


# The combining-mark blocks that hold accents (Latin, Greek, Cyrillic): what lower-casing is meant
# to strip. Other scripts' marks are letters of the word, not accents.
_ACCENT_BLOCKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF),
                  (0xFE20, 0xFE2F))


# Marks of those blocks that make other letters, not accented ones: the hook above, the horn and
# the dot below of Vietnamese (ả ơ ư ạ, tones and vowels) and of Yoruba (ẹ ọ ṣ).
_LETTER_MARKS = frozenset("\u0309\u031b\u0323")


# Variation selectors (VS16 after an emoji: ❤️ ☀️) choose how a character is drawn, not which
# it is: stripping them loses nothing, like an accent's, and warned of, they told a corpus of
# English posts with emoji to give up lower-casing.
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))


def _is_accent(mark):
  return mark not in _LETTER_MARKS and any(low <= ord(mark) <= high for low, high in
                                           _ACCENT_BLOCKS + _VARIATION_SELECTORS)


def _stripped_letters(characters):
  """{script: [(character, what stripping leaves)]} for the characters that BERT's accent
  stripping changes by dropping a mark that is not an accent: the Devanagari vowel signs and
  virama, the kana voicing marks, Thai vowels and tone marks, Arabic and Hebrew vowel points,
  Vietnamese tone marks and vowels."""
  found = {}
  for ch in sorted(characters):
    marks = [m for m in unicodedata.normalize("NFD", ch) if unicodedata.category(m) == "Mn"]
    if marks and not all(_is_accent(m) for m in marks):
      script = unicodedata.name(ch, "").split(" ")[0] or "UNNAMED"
      left = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
      found.setdefault(script, []).append((ch, left))
  return found


# The share of a corpus's letters (and marks) that the two warnings below need before they speak:
# an English corpus quotes a few names in other scripts or transliterations (the embedded one
# has Muḥammad, Hebrew points and 9 Hangul syllables in ~4M letters), which lower-casing costs
# nothing that matters; a Hindi or Korean corpus is mostly such characters.
STRIPPED_WARN_SHARE = 0.001


def _share_of_letters(characters, chosen):
  """The share of the letters and marks counted in `characters` (a Counter) that are `chosen`."""
  letters = sum(n for ch, n in characters.items() if unicodedata.category(ch)[0] in "LM")
  return sum(characters[ch] for ch in chosen) / max(letters, 1)


def _warn_stripped_marks(characters):
  """config.tokenizer.lowercase strips accents as BERT does, by dropping every combining mark:
  in other scripts that changes words (Hindi है "is" becomes ह, Japanese が becomes か), silently
  merging words the corpus tells apart. `characters` counts the corpus's characters."""
  found = _stripped_letters(characters)
  if not found:
    return
  share = _share_of_letters(characters, [ch for pairs in found.values() for ch, _ in pairs])
  if share < STRIPPED_WARN_SHARE:
    return
  examples = "; ".join(
      f"{script.lower()}: " + ", ".join(f"{ch!r} -> {left!r}" for ch, left in
                                        sorted(pairs, key=lambda pair: not pair[1])[:3])
      for script, pairs in sorted(found.items(), key=lambda item: -len(item[1])))
  log.warning("config.tokenizer.lowercase=True strips accents as BERT does, by dropping every "
              "combining mark, and %d of the corpus's characters (%.1f%% of its letters) lose a "
              "mark of their script (a vowel sign, virama, voicing or tone mark), not an accent "
              "(%s). Set "
              "--config.tokenizer.lowercase=False to keep them (case and accents are then kept "
              "everywhere).",
              sum(len(pairs) for pairs in found.values()), 100 * share, examples)


def _is_hangul_syllable(ch):
  return "\uac00" <= ch <= "\ud7a3"


def _warn_hangul_decomposed(characters):
  """Accent stripping takes text apart (NFD) to drop the marks and leaves it so: a Hangul
  syllable, which has no mark, still becomes its 2 or 3 jamo, so a lower-cased vocabulary learns
  and tokenizes Korean as jamo, and decodes to text that does not compare equal to the text
  written."""
  syllables = sorted(ch for ch in characters if _is_hangul_syllable(ch))
  if not syllables or _share_of_letters(characters, syllables) < STRIPPED_WARN_SHARE:
    return
  example = syllables[0]
  log.warning("config.tokenizer.lowercase=True strips accents as BERT does, which takes each of "
              "the corpus's %d Hangul syllables apart into its jamo (%r -> %s): Korean is learned "
              "and tokenized as jamo, and decoded tokens are not the text written. Set "
              "--config.tokenizer.lowercase=False to keep the syllables.", len(syllables),
              example, " + ".join(f"U+{ord(j):04X}" for j in unicodedata.normalize("NFD", example)))


def _train(make_texts, vocab_size, lowercase):
  """Trains WordPiece on the text batches of `make_texts()`, reproducibly.

  The `tokenizers` trainer numbers the "##x" pieces of the alphabet in hash-map order and breaks
  ties between equally frequent merges by token id, so two runs can learn different vocabularies.
  Handing it those pieces, sorted, right after the special tokens fixes every id the tie-breaks
  see. They are found with BERT's normaliser and a character scan; should the trainer still meet
  a piece the scan missed, it is rerun with it. The result is renumbered canonically.
  """
  # The characters are counted only for the lower-casing warnings.
  seen, long_words = collections.Counter() if lowercase else None, {}
  pieces = {"##" + ch for ch in _inner_characters(make_texts, lowercase, seen, long_words)}
  _warn_long_words(long_words)
  if long_words.get("count"):
    make_texts = _without_long_words(make_texts, lowercase)
  if lowercase:
    _warn_stripped_marks(seen)
    _warn_hangul_decomposed(seen)
  while True:
    learned = _train_pass(make_texts(), vocab_size, lowercase,
                          list(SPECIAL_TOKENS) + sorted(pieces))
    missed = {t for t in learned if t.startswith("##") and len(t) == 3} - pieces
    if not missed:
      break
    log.info("Retraining the vocabulary with %d more continuation pieces.", len(missed))
    pieces |= missed
  learned = sorted(learned - set(SPECIAL_TOKENS), key=lambda t: (len(t), t))
  vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + learned)}
  return _from_vocab(vocab, lowercase)


def _training_texts(corpus, fingerprint=None):
  """The train split as an in-memory Dataset (a stream is sampled) and its fingerprint;
  `fingerprint` is that of an in-memory train split already computed by the caller."""
  import datasets  # Imported here: only training needs it.

  train = corpus["train"] if isinstance(corpus, (dict, datasets.DatasetDict,
                                                 datasets.IterableDatasetDict)) else corpus
  if isinstance(train, datasets.IterableDataset):
    docs = [ex["text"] for ex in train.take(STREAM_TRAIN_DOCUMENTS)]
    # They are also the cache key: a vocabulary trained on them before is loaded, not retrained.
    log.info("Read the first %d documents of the stream, on which the vocabulary is trained.",
             len(docs))
    train = datasets.Dataset.from_dict({"text": docs})
    fingerprint = None  # The sample's, not the stream's.
  return train, fingerprint or corpus_lib.corpus_fingerprint(train)


def _warn_trained_size(got: int, vocab_size: int) -> None:
  """A trained vocabulary of another size than config.tokenizer.vocab_size: the model's
  embedding and every per-token table follow the size obtained, not the one asked for."""
  if got < vocab_size:
    log.warning("The corpus supports only %d WordPiece tokens, fewer than "
                "config.tokenizer.vocab_size=%d.", got, vocab_size)
  elif got > vocab_size:
    # The trainer keeps the special tokens and the corpus's alphabet (each character, and its
    # "##" piece) whatever the size asked for.
    log.warning("config.tokenizer.vocab_size=%d is below what WordPiece keeps whatever the size "
                "(the special tokens and every character of the corpus, alone and as a ## "
                "piece): the trained vocabulary has %d tokens.", vocab_size, got)


def check_vocab_size_to_train(vocab_size) -> None:
  """A vocabulary to train must hold more than the special tokens (train.py checks it before the
  corpus is read; the trainer again, for callers that skip that check)."""
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or \
      vocab_size <= len(SPECIAL_TOKENS):
    raise ValueError(f"config.tokenizer.vocab_size={vocab_size!r} is too small to train a "
                     f"vocabulary on: it must be above the {len(SPECIAL_TOKENS)} special tokens "
                     f"({', '.join(SPECIAL_TOKENS)}).")


def _train_cached(tokenizer_config, corpus, cache_dir, lowercase, train_fingerprint):
  if corpus is None:
    raise ValueError("config.tokenizer.name_or_path is empty, which means training a vocabulary, "
                     "but load_tokenizer got no corpus to train it on.")
  check_vocab_size_to_train(tokenizer_config.vocab_size)
  vocab_size = int(tokenizer_config.vocab_size)
  train, corpus_fp = _training_texts(corpus, train_fingerprint)
  key = hashlib.sha256(
      json.dumps([_TRAIN_RECIPE, corpus_fp, vocab_size, lowercase]).encode()).hexdigest()[:16]
  cache_dir = paths.cache_dir(cache_dir)
  path = os.path.join(cache_dir, "tokenizers", f"wordpiece-{vocab_size}-{key}")
  tok = paths.load_or_build(cache_dir, path, lambda: _load_cached(path),
                            lambda: _train_and_save(train, vocab_size, lowercase, path), log)
  _warn_trained_size(tok.get_vocab_size(), vocab_size)  # Said on every run that uses it.
  return _wrap(tok)


def _train_and_save(train, vocab_size, lowercase, path):
  start = time.time()
  texts = train.select_columns(["text"])
  tok = _train(lambda: (b["text"] for b in texts.iter(batch_size=1000)), vocab_size, lowercase)
  paths.publish_dir(path, _wrap(tok).save_pretrained)
  saved = "saved to" if os.path.isfile(os.path.join(path, "tokenizer.json")) else \
      "could not save it to"
  log.info("Trained a %d-token WordPiece vocabulary on %d documents in %.1fs; %s %s.",
           tok.get_vocab_size(), len(train), time.time() - start, saved, path)
  return tok


def _load_cached(path):
  """The tokenizer cached at `path`, or None to train it. The entry is keyed by its recipe, so
  retraining gives the same vocabulary: a damaged entry (a truncated tokenizer.json, one deleted
  by hand) is removed and trained again rather than ending the run, or being kept forever in the
  way of the new entry's rename."""
  file = os.path.join(path, "tokenizer.json")
  if not os.path.isdir(path):
    return None
  try:
    tok = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # tokenizers raises a bare Exception for bad JSON.
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    log.warning("The cached tokenizer %s is damaged or incomplete (%s); removing it and training "
                "the vocabulary again.", path, reason)
    shutil.rmtree(path, ignore_errors=True)
    return None
  log.info("Loading the trained tokenizer from %s.", path)
  return tok


def check_name_or_path(tokenizer_config) -> None:
  """Fails on a name_or_path that is a local path but does not exist. Run before the corpus is
  read (data.check_config): otherwise a typo in a path waits for the corpus, then for the hub
  client's retries (a minute offline), and ends in its message about repo ids."""
  name = os.path.expanduser(tokenizer_config.get("name_or_path") or "")
  if name and paths.meant_as_local(name) and not os.path.exists(name):
    raise FileNotFoundError(
        f"config.tokenizer.name_or_path={name!r} does not exist; point it at a vocab.txt or a "
        "tokenizer directory (a run's WORKDIR/tokenizer), give a hub name, or set it to '' to "
        "train a vocabulary.")


def workdir_hint(path: str) -> str:
  """For a directory holding a tokenizer/ folder (a training workdir, an imported one): a
  sentence naming that folder; "" otherwise."""
  inner = os.path.join(path, "tokenizer")
  if any(os.path.isfile(os.path.join(inner, f)) for f in ("tokenizer.json", "vocab.txt")):
    return f" It looks like a training workdir: its tokenizer is {inner}."
  return ""


def _warn_case_not_applied(tokenizer, name, tokenizer_config) -> None:
  """A saved or hub tokenizer brings its own normaliser; config.tokenizer.lowercase only builds
  one (a vocab.txt, a trained vocabulary). Said when the two disagree, since the setting is
  otherwise silently without effect (not for a config without the key: tools that load a saved
  tokenizer as it is)."""
  if "lowercase" not in tokenizer_config:
    return
  lowercase = bool(tokenizer_config.lowercase)
  normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
  lowers = normalizer is not None and normalizer.normalize_str("A") == "a"
  if lowers != lowercase:
    log.warning("config.tokenizer.lowercase=%s does not apply to %r: a saved or hub tokenizer "
                "normalises text its own way, and this one %s. The setting applies to a "
                "vocab.txt or a trained vocabulary.", lowercase, name,
                "lower-cases" if lowers else "keeps case")


def _warn_case_beside_file(name, lowercase) -> None:
  """A vocab.txt given as a file takes the config's case, which is the point of naming the file;
  said when the tokenizer_config.json beside it (an export's) states another: else a cased
  export read with the default lowercase=True lost its capitalised tokens without a word."""
  folder = os.path.dirname(name) or "."
  try:
    declared, _ = _declared_case(folder, None)
  except ValueError:  # A damaged neighbour: not this file's settings.
    return
  if declared is not None and declared != lowercase:
    log.warning("config.tokenizer.lowercase=%s applies to %r, but the tokenizer_config.json "
                "beside it states do_lower_case=%s: point name_or_path at %r to keep that, or set "
                "--config.tokenizer.lowercase=%s.", lowercase, name, declared, folder, declared)


# The JSON files of a saved tokenizer directory, checked in this order when loading fails.
_SAVED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "config.json")


def _from_directory(name):
  """A saved tokenizer directory; a damaged file in it is named (transformers' JSON error does
  not say which file)."""
  try:
    return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
  except Exception as e:
    for file in _SAVED_FILES:
      path = os.path.join(name, file)
      if not os.path.isfile(path):
        continue
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except (ValueError, UnicodeDecodeError) as bad:  # JSONDecodeError is a ValueError.
        raise ValueError(f"config.tokenizer.name_or_path={name!r}: {path} is not valid JSON "
                         f"({bad}); save the tokenizer there again (save_pretrained) or point "
                         "name_or_path at a vocab.txt.") from e
    raise ValueError(f"config.tokenizer.name_or_path={name!r}: the tokenizer saved there could "
                     f"not be loaded ({type(e).__name__}: {e}).") from e


def load_tokenizer(tokenizer_config, corpus=None, cache_dir=None, *, train_fingerprint=None):
  """Returns a fast (Rust) tokenizer as configured; see the module docstring for the sources.

  `train_fingerprint`: `corpus_lib.corpus_fingerprint` of the in-memory train split, when the
  caller has it already (hashing a large corpus means reading all of its text).
  """
  check_name_or_path(tokenizer_config)
  name = os.path.expanduser(tokenizer_config.name_or_path or "")
  lowercase = bool(tokenizer_config.get("lowercase", True))
  if not name:
    # The case setting is the one read above (default True), so that a config without it
    # trains lower-cased as it loads a vocab.txt lower-cased, instead of failing.
    tokenizer = _train_cached(tokenizer_config, corpus, cache_dir, lowercase, train_fingerprint)
  elif os.path.isfile(name) and name.endswith(".json"):
    # A tokenizer.json alone lacks the special-token settings of its tokenizer_config.json;
    # read as a vocab.txt it failed on the "missing" [PAD] etc.
    raise ValueError(f"config.tokenizer.name_or_path={name!r} is a .json file; point it at the "
                     "directory that holds tokenizer.json (with its tokenizer_config.json), or "
                     "at a vocab.txt.")
  elif os.path.isfile(name):
    tokenizer = _from_vocab_file(name, lowercase)
    _warn_case_beside_file(name, lowercase)
  elif os.path.isdir(name):
    if os.path.isfile(os.path.join(name, "tokenizer.json")):
      tokenizer = _from_directory(name)
      _warn_case_not_applied(tokenizer, name, tokenizer_config)
    elif os.path.isfile(os.path.join(name, "vocab.txt")):
      tokenizer = _from_vocab_file(os.path.join(name, "vocab.txt"),
                                   *_declared_case(name, lowercase))
      _warn_case_not_applied(tokenizer, name, tokenizer_config)
    elif os.path.isfile(os.path.join(name, "tokenizer_config.json")):
      # A slow tokenizer's files (RoBERTa's vocab.json + merges.txt, a SentencePiece model),
      # which AutoTokenizer converts; without them it builds one of the special tokens alone.
      tokenizer = _from_directory(name)
      missing = missing_vocabulary(tokenizer, name)
      if missing:
        raise ValueError(f"config.tokenizer.name_or_path={name!r}: {missing}")
      _warn_case_not_applied(tokenizer, name, tokenizer_config)
    else:
      raise FileNotFoundError(f"config.tokenizer.name_or_path={name!r} is a directory without "
                              f"tokenizer.json or vocab.txt.{workdir_hint(name)}")
  else:
    try:
      tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except Exception as e:  # Unknown name, offline, ...: one error naming the setting.
      raise ValueError(
          f"config.tokenizer.name_or_path={name!r} is not a file or directory here and could not "
          f"be loaded from the Hugging Face hub ({type(e).__name__}: {e}). Offline, point it at a "
          "vocab.txt or a tokenizer directory, or set it to '' to train a vocabulary.") from e
    _warn_case_not_applied(tokenizer, name, tokenizer_config)
  if not getattr(tokenizer, "is_fast", False):
    raise ValueError(f"config.tokenizer.name_or_path={name!r} has no fast (Rust) tokenizer.")
  try:  # Fail now, not in the masker, when a special token is missing.
    special_ids(tokenizer)
  except ValueError as e:
    raise ValueError(f"config.tokenizer.name_or_path={name!r}: {e}") from None
  if frame_bare_texts(tokenizer):
    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    log.warning("config.tokenizer.name_or_path=%r adds no %s or %s around a text (its "
                "post-processor puts none there), while training rows are framed by them: the "
                "run's tokenizer/ and its export frame texts as BERT's, %s A %s B %s. Save your "
                "tokenizer with a post-processor to choose another layout.", name, cls, sep, cls,
                sep, sep)
  return tokenizer


def frame_bare_texts(tokenizer) -> bool:
  """Gives a tokenizer that adds nothing around a text (no post-processor: a `tokenizers` BPE or
  Unigram saved as built) the framing of training rows (bare_text_framing); whether it did."""
  framing = bare_text_framing(tokenizer)
  if framing is not None:
    backend = tokenizer.backend_tokenizer
    backend.post_processor = framing(backend.post_processor)
  return framing is not None


def bare_text_framing(tokenizer):
  """For a tokenizer that adds nothing around a text: a function from its post-processor (None,
  or byte-level BPE's ByteLevel, which trims offsets) to one that also frames texts as the packer
  frames training rows, BERT's template with its own tokens, [CLS] A [SEP] B [SEP]. Else the
  run's tokenizer/, its export and LAMA gave every text to the model without them, and a sentence
  pair (GLUE, SQuAD, LAMA's masked sentences) as the two texts run together. None for a tokenizer
  that frames texts its own way (BERT's, RoBERTa's, ...). The post-processor is no part of the
  fingerprint: caches, statistics and checkpoints stay this tokenizer's."""
  cls, sep = tokenizer.cls_token, tokenizer.sep_token
  if (cls is None or sep is None or tokenizer("a")["input_ids"]
      != tokenizer("a", add_special_tokens=False)["input_ids"]):
    return None
  template = _bert_template(cls, tokenizer.cls_token_id, sep, tokenizer.sep_token_id)
  return lambda kept: template if kept is None else processors.Sequence([kept, template])


# The names a vocabulary gives each role, BERT's and RoBERTa's / SentencePiece's.
_ROLE_NAMES = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
               "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>")}


def special_ids(tokenizer):
  """The ids of [PAD] [UNK] [CLS] [SEP] [MASK] (or the tokenizer's equivalents)."""
  ids = {}
  for field in SpecialIds._fields:
    value = getattr(tokenizer, f"{field}_token_id", None)
    if value is None:
      # A tokenizer.json alone (tokenizers' Tokenizer.save) declares no roles: its vocabulary
      # may hold the token, which is then to be named, not said to be missing.
      vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
      held = [t for t in _ROLE_NAMES[field] if t in vocab]
      if held:
        raise ValueError(
            f"The tokenizer declares no {field} token, though its vocabulary holds {held[0]!r}: "
            f"declare the roles, e.g. transformers.PreTrainedTokenizerFast(tokenizer_file=..., "
            f"{field}_token={held[0]!r}, ...).save_pretrained(DIR) writes the "
            "tokenizer_config.json that names them.")
      raise ValueError(f"The tokenizer has no {field} token; InforMask needs [PAD] [UNK] [CLS] "
                       "[SEP] [MASK] (or <pad> <unk> <s> </s> <mask>).")
    ids[field] = int(value)
  return SpecialIds(**ids)


def vocab_rows(tokenizer) -> int:
  """Rows an embedding or per-token table needs: past the largest id (len(tokenizer) unless the
  vocabulary has gaps)."""
  return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def missing_vocabulary(tokenizer, where: str) -> str | None:
  """Why `tokenizer`, loaded by AutoTokenizer from `where` (a directory or a hub name), has no
  vocabulary, with what to do; None when it has one.

  Without its vocabulary files transformers 5 does not raise: it builds a tokenizer of the
  special tokens alone from the directory's configs, with which every word is [UNK]."""
  files = dict(getattr(tokenizer, "vocab_files_names", {}))
  # tokenizer.json holds a whole vocabulary; the class's other files do only together.
  choices = [f for f in (files.pop("tokenizer_file", None), "+".join(files.values())) if f]
  if os.path.isdir(where) and choices and not any(
      all(os.path.isfile(os.path.join(where, name)) for name in choice.split("+"))
      for choice in choices):
    return (f"{where} has no tokenizer files ({type(tokenizer).__name__} reads "
            f"{' or '.join(choices)}): save the model's tokenizer there "
            f"(tokenizer.save_pretrained({where!r})).")
  if set(tokenizer.get_vocab()) <= set(tokenizer.all_special_tokens):
    return (f"the tokenizer loaded from {where} has no vocabulary, only its {len(tokenizer)} "
            "special tokens (tokenizer files missing or damaged?).")
  return None


def continuation_table(tokenizer):
  """bool[V]: True for tokens that continue a word (WordPiece "##" pieces).

  A model with a continuing-subword prefix (WordPiece, or BPE trained with one) marks the pieces
  that continue a word. Byte-level BPE and SentencePiece mark a word's start instead ("Ġ" / "▁"):
  a token continues a word when it lacks the marker and is not special. A word-level vocabulary
  has no pieces. In a vocabulary with none of these marks (BPE with an end-of-word suffix such as
  "</w>", or over whitespace-split words) no token tells by itself whether it starts a word: each
  counts as a word, with a warning (without it, each row counted as one word up to [SEP]).
  """
  vocab = tokenizer.get_vocab()
  table = np.zeros(vocab_rows(tokenizer), dtype=bool)
  model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
  prefix = model.get("continuing_subword_prefix")
  if model.get("type") == "WordPiece" or prefix:
    prefix = prefix or "##"
    for token, i in vocab.items():
      table[i] = token.startswith(prefix) and len(token) > len(prefix)
    return table
  if model.get("type") == "WordLevel":
    return table
  special = set(tokenizer.all_special_tokens)
  for token, i in vocab.items():
    table[i] = not token.startswith(word_marks.WORD_START_MARKS) and token not in special
  if not any(t.startswith(word_marks.WORD_START_MARKS) for t in vocab if t not in special):
    log.warning("The tokenizer (a %s model%s) marks no word boundary that a token shows by "
                "itself (no \"##\" pieces, no \"Ġ\" or \"▁\" word starts): whole_word, span and "
                "pmi_span masking and stats.whole_words take each token as a word.",
                model.get("type"), f", end-of-word suffix {model['end_of_word_suffix']!r}"
                if model.get("end_of_word_suffix") else "")
    table[:] = False
  return table


def tokenizer_fingerprint(tokenizer):
  """A hash of everything that changes token ids: vocabulary, normaliser, pre-tokeniser."""
  state = json.loads(tokenizer.backend_tokenizer.to_str())
  # Padding and truncation settings do not change the ids of a tokenized document.
  for key in ("padding", "truncation", "post_processor", "decoder"):
    state.pop(key, None)
  blob = json.dumps(state, sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
