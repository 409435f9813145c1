"""Documents -> sentence-aware tokens: sentence splitting, and tokens with the sentence of each.

`tokenize_corpus` gives each document its "input_ids" and "sentence_ids" (no special tokens),
cached on disk by corpus, tokenizer and splitter version (`TOKENIZED_FORMAT`);
`encode_documents` does the same for a list of texts in memory (the streaming iterator and the
Beam statistics use it).
"""

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time

import datasets
import numpy as np
import pyarrow.compute as pc
import tokenizers

from informask_jax import corpus as corpus_lib
from informask_jax import paths, progress_bar, tokenization, worker_processes

log = logging.getLogger(__name__)

# Bump when the splitter or the tokenized layout changes: it is part of the cache key.
# v5: entries tokenized with data.num_proc > 1 held special ids for "[MASK]" etc. in the text.
# v6: sentences end at the full-width 。！？ and, followed by a letter of a script without case,
#     at . ! ? ؟ । ॥.
# v7: sentences also end at the Urdu full stop ۔, at a half-width ! ? or lone . between two
#     Chinese or Japanese characters, and keep an ASCII ) or ] after 。！？.
# v8: sentences end at the full-width full stop ． (Japanese technical writing's), not between
#     digits.
# v9: a sentence ends at ؟ ۔ । ॥ before a lower-case letter too.
# v10: documents tokenized whole, sentences assigned by character offsets (byte-level BPE and
#      SentencePiece tokenizers had a separator token before each sentence but the first);
#      sentences end at the Armenian, Burmese, Ethiopic and Khmer full stops ։ ။ ። ។.
# v11: special tokens typed in the text stay text with SentencePiece (Unigram) vocabularies and
#      WordPiece ones split on whitespace only, whose model matched "<mask>", "[PAD]" whole.
# v12: the same for WordLevel vocabularies.
# v13: a sentence ends before or after the quotes « » „ ‚ ‹ › (and German's closing “ ‘), also
#      with the space French puts inside « ».
# v14: an opening « or ‹ with a space after it starts the next sentence (v13 ended the one before
#      with it, and split after "M." or "Dr." before one).
TOKENIZED_FORMAT = "sentences-v14"
# The corpus module's threshold; bound here so that tests can lower it for tokenization alone.
PARALLEL_MIN_DOCUMENTS = corpus_lib.PARALLEL_MIN_DOCUMENTS

# --- Sentence splitting -------------------------------------------------------------------------
# A sentence ends at . ! or ? (or the Arabic ؟, the Urdu ۔, the Devanagari danda । ॥), then
# optional closing quotes/brackets (_CLOSERS), followed by whitespace and anything but a
# lower-case letter: a capital of any script, a digit, an opening quote/bracket/¿/¡ (_OPENERS), or
# a letter of a script without case (Arabic, Hindi, Chinese); in a document without capitals (a
# lower-cased corpus) any letter; after ؟ ۔ । ॥, which end nothing else, any letter.
# It also ends at every line break, at the full stops of Armenian ։, Burmese ။, Ethiopic ። and
# Khmer ។ (with or without a space after: Burmese and Khmer put none), and at the full-width
# 。！？ (or the half-width ｡, or the full-width full stop ． of Japanese technical writing, but
# not in a number: ３．５) and their
# closing brackets (full-width, or an ASCII ) or ], which mixed text uses), which need no space
# after them (Chinese and Japanese put none), so a quotation that ends in one (「行こう。」と言った)
# is cut there; an ASCII quote after 。 closes it only before a space, the end or another closer
# (before a letter it may as well open the next sentence, and is left to it). And it
# ends at a half-width ! or ? (or a lone .) between two Chinese or Japanese characters
# (我很好!你呢?), as text typed without an input method's full-width forms has them. A full stop
# after a known abbreviation, a single letter ("Arthur C. Clarke") or a dotted acronym ("U.S.")
# does not end a sentence. Simple and fast, and good enough for statistics that only need "same
# sentence".

_ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof sr jr st mt ft vs etc cf al approx ca no nos vol vols fig figs pp
    gen col lt sgt capt cmdr adm gov sen rep pres rev hon inc ltd co corp bros dept univ
    jan feb mar apr jun jul aug sep sept oct nov dec
    """.split())
# The group is the character after the opening punctuation, checked in split_sentences (`re` has
# no class for capitals beyond ASCII). The full-width alternative has no group: it always ends;
# nor does the one between Chinese or Japanese characters, named "cjk", which no abbreviation
# (a Latin word) can precede. _CJK: Chinese ideographs (extension A and compatibility blocks
# included) and kana.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Quotes and brackets that may close a sentence after its . ! ?, or open the next: English “ ” ‘ ’,
# French and Russian « » (with or without the space French puts inside them), German „ “ ‚ ‘ and
# » «, the single guillemets ‹ ›. A character that closes in one language opens in another.
_CLOSERS = "[\"'\u201d\u2019\u201c\u2018\u00bb\u00ab\u203a\u2039)\\]]"
_OPENERS = "[\"'\u201c\u2018\u201e\u201a\u00ab\u00bb\u2039\u203a(\\[\u00bf\u00a1]"
_OPENING = "\"'(\u201c\u2018\u201e\u201a\u00ab\u00bb\u2039\u203a["
# The look-ahead first: one character class tried at each position of the text, instead of each
# alternative in turn (with the alternatives for Chinese and Japanese, twice as slow without it).
_BOUNDARY = re.compile(r"(?=[.!?\u061f\u06d4\u0964\u0965\n\u3002\uff01\uff1f\uff61\uff0e"
                       r"\u0589\u104b\u1362\u17d4])"
                       # Only the first mark of a run starts a match (each one did: quadratic
                       # in the run's length, 16,384 dots took 6 s).
                       r"(?:(?<![.!?\u061f\u06d4\u0964\u0965])[.!?\u061f\u06d4\u0964\u0965]+"
                       # The space French puts inside « »: before a closing one, after an opening
                       # one (taken as a closer, « and its space stayed with the sentence before).
                       r"(?:[^\S\n]?[\u00bb\u203a]|" + _CLOSERS + r")*\s+"
                       r"(?=(?:[\u00ab\u2039][^\S\n]?|" + _OPENERS + r")?(\w))|\n"
                       r"|(?:[\u3002\uff01\uff1f\uff61\u0589\u104b\u1362\u17d4]"
                       r"|\uff0e(?<![0-9\uff10-\uff19]\uff0e)"
                       r"(?![0-9\uff10-\uff19]))+"
                       r"(?:[\u300d\u300f\u3011\u3015\u3009\u300b\uff09\uff02\u201d\u2019)\]]"
                       r"|[\"'](?=[\s\"'\u201d\u2019)\]]|$))*\s*"
                       rf"|(?<=[{_CJK}])(?P<cjk>[!?]+|\.)(?=[{_CJK}]))")
_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")
_FINAL_ONLY = frozenset("\u061f\u06d4\u0964\u0965")  # The Arabic ؟, Urdu ۔, the dandas । ॥.


def split_sentences(text):
  """Splits a cleaned document into sentences (see the rules above)."""
  return [text[a:b] for a, b in sentence_spans(text)]


def sentence_spans(text):
  """(start, end) of each sentence of `text`, without the whitespace around it."""
  spans, start = [], 0
  caseless = text.islower()  # No capital at all: a capital cannot mark where a sentence starts.
  for m in _BOUNDARY.finditer(text):
    end = m.end()
    follower = m.group(1)
    # Punctuation then a line break: the first alternative took the "\n", so the line break
    # rule is this match's to keep; neither the follower nor an abbreviation can undo it.
    newline = "\n" in m.group(0)
    # ؟ ۔ । ॥ end nothing but a sentence, unlike . ! ?, so a lower-case word after one (an
    # English name in Hindi or Arabic text: "पढ़ा। iPhone ...") does not undo it either.
    final = not _FINAL_ONLY.isdisjoint(m.group(0))
    if not (newline or final) and follower is not None and follower.islower() and not caseless:
      continue
    abbreviation_stop = m.group(0).rstrip(" \t") == "." and m.group("cjk") is None
    if not newline and abbreviation_stop:  # An abbreviation's lone full stop?
      before = text[start:m.start()].rsplit(None, 1)
      word = before[-1].lstrip(_OPENING).lower() if before else ""
      if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or _ACRONYM.fullmatch(word):
        continue
    _add_stripped(spans, text, start, end)
    start = end
  _add_stripped(spans, text, start, len(text))
  return spans


def _add_stripped(spans, text, start, end):
  piece = text[start:end]
  stripped = piece.lstrip()
  if stripped.strip():
    a = start + len(piece) - len(stripped)
    spans.append((a, a + len(stripped.rstrip())))


# --- Tokenization -------------------------------------------------------------------------------

def plain_backend(tokenizer):
  """The Rust tokenizer that tokenizes corpus text (see `corpus_backend`)."""
  return corpus_backend(tokenizer.backend_tokenizer.to_str())


def corpus_backend(tokenizer_json):
  """A Rust tokenizer (its JSON) set up for corpus text: no padding or truncation (a hub
  tokenizer may carry either), and special tokens written in the text ("[MASK]", "[SEP]" in a
  page about BERT) tokenized as the text they are, never as the special ids: a "[PAD]" would be
  attention-masked padding mid-row, a "[MASK]" an input masked without a target. The setting is
  not part of the JSON, so a worker that rebuilds the tokenizer goes through here too."""
  backend = tokenizers.Tokenizer.from_str(_without_special_pieces(tokenizer_json))
  backend.no_padding()
  backend.no_truncation()
  backend.encode_special_tokens = True
  return backend


# Prefixed to a special token's own entry in the model's vocabulary: text never holds it (the
# normalizers drop control characters), so the model never produces that id from text.
_HIDDEN = "\x00"


def _without_special_pieces(tokenizer_json: str) -> str:
  """The tokenizer with its special tokens (but [UNK]) renamed in the model's own vocabulary.
  encode_special_tokens only stops the added-token matcher: a SentencePiece (Unigram) vocabulary
  holds "<pad>", "<mask>" as pieces of the best score, and a WordPiece one split on whitespace
  alone matched "[MASK]" whole. Ids are unchanged; byte-level BPE needs nothing (no merge makes
  "<mask>"), and renaming a merge's result would break its merges."""
  spec = json.loads(tokenizer_json)
  model = spec.get("model") or {}
  specials = {t["content"] for t in spec.get("added_tokens") or () if t.get("special")}
  if model.get("type") in ("WordPiece", "WordLevel"):  # WordLevel: "[MASK]" between spaces.
    specials.discard(model.get("unk_token"))
    model["vocab"] = {_HIDDEN + k if k in specials else k: v for k, v in model["vocab"].items()}
  elif model.get("type") == "Unigram":
    unk = model.get("unk_id")
    model["vocab"] = [[_HIDDEN + piece if piece in specials and i != unk else piece, score]
                      for i, (piece, score) in enumerate(model["vocab"])]
  else:
    return tokenizer_json
  return json.dumps(spec)


def encode_documents(texts, backend):
  """Tokenizes documents whole and gives each token the sentence its last character lies in.

  Returns flat int32 arrays (input_ids, sentence_ids) of all tokens and int64 lengths[D], one per
  document; sentence ids count each document's sentences that hold a token, from 0.

  Whole, not sentence by sentence: the ids are the document's own. Encoded one by one, each
  sentence but the first needed a separator the text may not have: a space gave byte-level BPE
  (RoBERTa, GPT-2) a lone "Ġ" before every sentence of Chinese text, and a SentencePiece
  tokenizer (XLM-R) prepends its "▁" to every input. The last character: a byte-level BPE token
  ("ĠThe") starts at the space before its sentence; whitespace between two sentences ("Ċ") goes
  with the first, and a piece across a sentence end (SentencePiece may join "好！我" in Chinese)
  with the sentence it ends in.
  """
  encodings = backend.encode_batch(list(texts), add_special_tokens=False) if texts else []
  lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
  total = int(lengths.sum())
  chain = itertools.chain.from_iterable
  ids = np.fromiter(chain(e.ids for e in encodings), np.int32, total)
  offsets = np.fromiter(chain(chain(e.offsets for e in encodings)), np.int64, 2 * total)
  last_char = np.maximum(offsets[1::2] - 1, offsets[0::2])
  raw = np.empty(total, np.int64)  # Sentence of each token, counted over all documents.
  first_sentence, position = 0, 0
  for text, n in zip(texts, lengths, strict=True):
    starts = np.fromiter((a for a, _ in sentence_spans(text)), np.int64)
    found = np.searchsorted(starts, last_char[position:position + n], side="right") - 1
    raw[position:position + n] = first_sentence + np.maximum(found, 0)
    first_sentence += max(len(starts), 1)
    position += int(n)
  # Renumber: each document's sentences that hold a token, from 0.
  new = np.ones(total, bool)
  new[1:] = raw[1:] != raw[:-1]
  rank = np.cumsum(new) - 1
  doc_first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # Its document's first token.
  sids = (rank - rank[doc_first]).astype(np.int32) if total else np.zeros(0, np.int32)
  return ids, sids, lengths


@functools.lru_cache(maxsize=2)
def _cached_backend(tokenizer_json):
  return corpus_backend(tokenizer_json)


def _tokenize_batch(batch, tokenizer_json):
  # The JSON, not the Rust tokenizer, is what map() hands its worker processes (data.num_proc):
  # a pickled tokenizers.Tokenizer comes back without encode_special_tokens, and "[MASK]" in the
  # text became the [MASK] id there. Each process builds its backend once, from the JSON.
  ids, sids, lengths = encode_documents(batch["text"], _cached_backend(tokenizer_json))
  keep = lengths > 0  # A document without a single token has nothing to pack.
  cuts = np.cumsum(lengths[keep])[:-1]
  return {"input_ids": np.split(ids, cuts) if keep.any() else [],
          "sentence_ids": np.split(sids, cuts) if keep.any() else []}


_LIST = getattr(datasets, "List", datasets.Sequence)  # `List` from datasets 4 on.
_TOKENIZED_FEATURES = datasets.Features({
    "input_ids": _LIST(datasets.Value("int32")),
    "sentence_ids": _LIST(datasets.Value("int32")),
})


def tokenized_cache_key(corpus_fp, tokenizer_fp):
  blob = json.dumps([TOKENIZED_FORMAT, corpus_fp, tokenizer_fp])
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


# A share of [UNK] tokens above which tokenize_corpus warns: bert-base-uncased has far fewer on
# English text, while on a corpus whose script its vocabulary lacks (Chinese, Korean) it gives
# one token in several.
UNK_WARN_SHARE = 0.01


def warn_unknown_tokens(tokenized, tokenizer, what="corpus"):
  """Says how many of a tokenized split's tokens are [UNK], when more than UNK_WARN_SHARE: they
  are never masked nor predicted, and the statistics leave them out, so a vocabulary that lacks
  a corpus's script shrinks what trains without a word. `what`: the split's name."""
  unk = getattr(tokenizer, "unk_token_id", None)
  if unk is None:
    return
  unknown = total = 0
  # Chunk by chunk: the comparison's mask over a paper-sized corpus (billions of tokens) at once
  # would hold hundreds of MB.
  for chunk in tokenized.data.column("input_ids").chunks:
    ids = pc.list_flatten(chunk)
    total += len(ids)
    unknown += pc.sum(pc.equal(ids, int(unk))).as_py() or 0
  if total and unknown > UNK_WARN_SHARE * total:
    # A vocabulary trained here learns the training split's characters only: a character seen
    # only in held-out documents is [UNK] there, and training another vocabulary cannot help.
    # A WordLevel vocabulary has no pieces: every word it lacks is one [UNK], whatever its
    # characters.
    word_level = isinstance(tokenizer.backend_tokenizer.model, tokenizers.models.WordLevel)
    lacks = (f"words of the text (it is a WordLevel vocabulary: each word it lacks is one "
             f"{tokenizer.unk_token})" if word_level else
             "characters of the text (or a word is over 100 characters long)")
    log.warning("%d of the %s's %d tokens (%.1f%%) are %s: the tokenizer's vocabulary lacks %s. "
                "They are never masked nor predicted, and the statistics leave them out; a "
                "vocabulary trained on the corpus (config.tokenizer.name_or_path='') holds all "
                "the characters of its training split%s.", unknown,
                what if what == "corpus" else f"{what} split", total, 100 * unknown / total,
                tokenizer.unk_token, lacks,
                ", splitting any word of them into pieces it holds" if word_level else "")


_MAP_SCRATCH_PREFIX = ".map-"  # tokenize_corpus's folder for map()'s own result files.


def tokenize_corpus(dataset, tokenizer, data_config, *, fingerprint=None, what="corpus"):
  """Tokenizes a split of the corpus ("text") into "input_ids" and "sentence_ids" per document.

  An in-memory `datasets.Dataset` is tokenized once and saved under
  `<cache_dir>/tokenized/<key>`, key = corpus fingerprint + tokenizer fingerprint + format
  version; `fingerprint` passes a corpus fingerprint already computed. A streaming
  `IterableDataset` is mapped lazily. Documents with no token are dropped; `what` (the split's
  name) is named when that leaves none.
  """
  tokenizer_json = plain_backend(tokenizer).to_str()
  if isinstance(dataset, datasets.IterableDataset):
    return dataset.map(_tokenize_batch, batched=True, fn_kwargs={"tokenizer_json": tokenizer_json},
                       remove_columns=["text"], features=_TOKENIZED_FEATURES)
  corpus_fp = fingerprint or corpus_lib.corpus_fingerprint(dataset)
  key = tokenized_cache_key(corpus_fp, tokenization.tokenizer_fingerprint(tokenizer))
  cache_dir = paths.cache_dir(data_config.get("cache_dir"))
  path = os.path.join(cache_dir, "tokenized", key)
  return paths.load_or_build(
      cache_dir, path, lambda: _load_tokenized(path),
      lambda: _tokenize_and_save(dataset, tokenizer, tokenizer_json, data_config, key, path, what),
      log)


def _load_tokenized(path):
  """The tokenized documents cached at `path`, or None to tokenize them (a damaged entry is
  removed)."""
  if not os.path.exists(path):
    return None
  # Published whole by a rename: a part missing is damage.
  log.info("Loading tokenized documents from %s.", path)
  try:
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
      raise FileNotFoundError("its dataset_info.json is missing")
    cached = datasets.load_from_disk(path)
    cached.data.validate()  # Cheap structural checks; truncated files already fail to load.
    return cached
  except Exception as e:  # A damaged cache entry is rebuilt, as the statistics' are.
    log.warning("The tokenized cache %s is damaged (%s: %s); tokenizing again.", path,
                type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    shutil.rmtree(path, ignore_errors=True)
    return None


def _tokenize_and_save(dataset, tokenizer, tokenizer_json, data_config, key, path, what):
  start = time.time()
  num_proc = int(data_config.get("num_proc", 1) or 1)
  num_proc = num_proc if num_proc > 1 and len(dataset) >= PARALLEL_MIN_DOCUMENTS else None
  # map() writes its result next to the corpus's own Arrow files (or $HF_DATASETS_CACHE), where
  # it would stay beside the copy saved here, doubling the disk a corpus takes: it writes into a
  # scratch folder beside the entry instead, removed once the entry is saved.
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # map()'s scratch and unrenamed saves, hidden by their dot.
  paths.warn_leftover_folders(os.path.dirname(path), (_MAP_SCRATCH_PREFIX,
                                                     paths.PUBLISH_STAGING_PREFIX),
                              "interrupted tokenizations", log)
  scratch = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=_MAP_SCRATCH_PREFIX)
  try:
    with progress_bar.datasets_bars(len(dataset) >= PARALLEL_MIN_DOCUMENTS), \
         worker_processes.spawned():
      tokenized = dataset.map(
          _tokenize_batch, batched=True, batch_size=1000,
          fn_kwargs={"tokenizer_json": tokenizer_json},
          remove_columns=dataset.column_names, features=_TOKENIZED_FEATURES, num_proc=num_proc,
          new_fingerprint=key, cache_file_name=os.path.join(scratch, "tokenized.arrow"),
          desc="Tokenizing")
      if not len(tokenized):  # Saved, it could not be loaded (datasets fails on an empty save).
        raise ValueError(
            f"No {what} document has a token: the tokenizer drops all of its {len(dataset)} "
            "document(s) (text of zero-width, control or other characters it ignores). Add "
            "documents with text to config.data.sources" + (
                ", or raise config.data.validation_fraction" if what == "validation" else "")
            + ".")
      paths.publish_dir(path, tokenized.save_to_disk)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  dropped = len(dataset) - len(tokenized)
  log.info("Tokenized %d documents%s in %.1fs; cached in %s.", len(tokenized),
           f" ({dropped} without a token dropped)" if dropped else "", time.time() - start, path)
  tokenized = datasets.load_from_disk(path)
  warn_unknown_tokens(tokenized, tokenizer, what)  # Once, as built: a later load reads it only.
  return tokenized
