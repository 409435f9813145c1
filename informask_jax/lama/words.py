"""What the probe needs from a tokenizer (`WordTable`: single-token objects, token strings,
encoding), and the common word list (`--common_vocab`) read from its file."""

import logging
import os
import pathlib
from collections.abc import Sequence

log = logging.getLogger(__name__)


class WordTable:
  """What the probe needs from a tokenizer: single-token objects, token strings, encoding."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    if tokenizer.mask_token is None or tokenizer.pad_token_id is None:
      raise ValueError(f"Tokenizer {type(tokenizer).__name__} has no mask or pad token; a masked "
                       "language model's tokenizer is needed.")
    self.mask_token = tokenizer.mask_token
    self.mask_id = tokenizer.mask_token_id
    self.pad_id = tokenizer.pad_token_id
    # Byte-level BPE (RoBERTa) spells a word after a space differently ("Ġa", or "Ġ" + "a"
    # without that merge); LAMA's objects follow a space in the templates, so their token is the
    # spaced form. Not in Llama's layout, whose normaliser gives every text a "▁" first: there a
    # typed first space is a lone "▁" before the word's own "▁a" (every object was taken to be
    # two tokens), and a text after an added token such as the mask starts with one too.
    spaced, unspaced = tokenizer.tokenize(" a"), tokenizer.tokenize("a")
    self._prepends_space = (len(spaced) == 2 and spaced[0] == "\u2581" and spaced[1:] == unspaced
                            and unspaced[0].startswith("\u2581"))
    self.space_prefix = spaced != unspaced and not self._prepends_space
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    # The normaliser's "▁" (Llama's Prepend / Replace) read as the space it stands for: the
    # decoded token has none, and a word's normal form is compared with it.
    self._normalize = ((lambda s: normalizer.normalize_str(s).replace("\u2581", " "))
                       if normalizer is not None else (lambda s: s))
    from informask_jax import tokenization  # Lazily: it loads the corpus readers.

    if tokenization.frame_bare_texts(tokenizer):
      # No post-processor (a ByteLevelBPETokenizer or SentencePiece one wrapped as
      # PreTrainedTokenizerFast): it added nothing around a text, while training framed every
      # row as [CLS] ... [SEP] (data/packing.py). The queries are framed so too, as
      # tokenization.load_tokenizer frames a run's (LAMA's BERT connector also joins a pair
      # with one [SEP]).
      log.warning("The tokenizer adds no special tokens around a text (no post-processor): "
                  "queries are framed as training framed its rows, %s ... %s.",
                  tokenizer.cls_token, tokenizer.sep_token)
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    k = next(i for i in range(len(full)) if full[i:i + len(probe)] == probe)
    self.prefix, self.suffix = full[:k], full[k + len(probe):]  # [CLS] / [SEP] and the like.
    # A sentence pair as the tokenizer lays it out (BERT: [CLS] a [SEP] b [SEP], token types 0
    # up to the first [SEP], then 1; RoBERTa: <s> a </s></s> b </s>, all 0). Whether the model
    # embeds those types is the model's to say: see fit_token_types.
    pair = tokenizer("a", "a", return_token_type_ids=True)
    ids2 = pair["input_ids"]
    types2 = pair.get("token_type_ids") or [0] * len(ids2)
    n = len(probe)
    a = next(i for i in range(len(ids2)) if ids2[i:i + n] == probe)
    b = next(i for i in range(a + n, len(ids2)) if ids2[i:i + n] == probe)
    self._pair = (ids2[:a], ids2[a + n:b], ids2[b + n:])  # Before, between, after.
    self._pair_types = (types2[:a], types2[a], types2[a + n:b], types2[b], types2[b + n:])
    self._token_ids: dict[str, int | None] = {}
    self._strings: dict[int, str] = {}
    # A mask token without lstrip (one set up as PreTrainedTokenizerFast(mask_token="<mask>"))
    # leaves the space before it as a token of its own ("Ġ", "▁"), which training never shows
    # the model: there the masked token was the whole spaced word ("ĠFrance").
    spaced_mask = tokenizer(f"a {self.mask_token}", add_special_tokens=False)["input_ids"]
    self._lone_space = (spaced_mask[-2] if len(spaced_mask) == len(probe) + 2
                        and spaced_mask[-1] == self.mask_id else None)
    # Llama's layout also starts the text after the mask with a lone "▁" before the next word's
    # own: left out too. (Elsewhere a lone space after the mask is training's own: byte-level
    # BPE without a "Ġ." merge writes "France ." as "ĠFrance", "Ġ", ".".)
    self._lone_space_after = (tokenizer.convert_tokens_to_ids(spaced[0])
                              if self._prepends_space else None)

  def normalized(self, word: str) -> str:
    """`word` as the tokenizer's normaliser writes it (lower-cased, accents stripped, ...)."""
    return self._normalize(word.strip()).strip()

  def single_token_id(self, word: str) -> int | None:
    """The token that spells `word` by itself (after the tokenizer's normalisation), or None.

    As LAMA: the word must tokenize to one piece that decodes back to it, which rules out
    [UNK] and words the vocabulary only has in another case.
    """
    if word not in self._token_ids:
      text = " " + word.strip() if self.space_prefix else word.strip()
      ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
      found = None
      if len(ids) == 1:
        decoded = self.tokenizer.decode(ids).strip()
        if decoded and decoded == self._normalize(word.strip()).strip():
          found = ids[0]
      self._token_ids[word] = found
    return self._token_ids[word]

  def token_string(self, token_id: int) -> str:
    """A prediction as the InforMask script compares it: decoded, spaces removed, lower-cased."""
    if token_id not in self._strings:
      self._strings[token_id] = self.tokenizer.decode([token_id]).replace(" ", "").lower()
    return self._strings[token_id]

  def token_strings(self) -> list[str]:
    """token_string of every id up to the highest, decoded in one call (an id the vocabulary
    lacks decodes to ""). len(tokenizer) counts tokens, which falls short of the highest id + 1
    when the vocabulary has gaps (a vocab.txt with a repeated line)."""
    from informask_jax import tokenization  # Lazily: it loads the corpus readers.

    ids = range(tokenization.vocab_rows(self.tokenizer))
    missing = [i for i in ids if i not in self._strings]
    for i, text in zip(missing, self.tokenizer.batch_decode([[i] for i in missing]), strict=True):
      self._strings[i] = text.replace(" ", "").lower()
    return [self._strings[i] for i in ids]

  def fit_token_types(self, type_vocab_size: int) -> None:
    """A model that embeds one token type (RoBERTa, DistilBERT without any) reads a pair's
    second sentence as type 0. Decided by the model, not by the tokenizer's model_input_names:
    a training run's saved tokenizer does not list token_type_ids, so a run's workdir asked its
    pairs with type 0 and the run's export, whose tokenizer lists them, with type 1."""
    if type_vocab_size < 2:
      self._pair_types = tuple([0] * len(t) if isinstance(t, list) else 0
                               for t in self._pair_types)

  def with_special_tokens(self, first: list[int], second: list[int] | None = None
                          ) -> tuple[list[int], list[int] | None, int, int]:
    """(ids, token types, special tokens before, after) of one sentence (types None: all 0)
    or of a sentence pair, laid out as the tokenizer lays out a pair."""
    if second is None:
      return self.prefix + first + self.suffix, None, len(self.prefix), len(self.suffix)
    before, between, after = self._pair
    t_before, t_first, t_between, t_second, t_after = self._pair_types
    ids = before + first + between + second + after
    types = (t_before + [t_first] * len(first) + t_between + [t_second] * len(second) + t_after)
    return ids, types, len(before), len(after)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens, for many texts at once (a lone space token before the
    mask left out: see __init__)."""
    if not texts:
      return []
    # verbose=False: transformers warns of "indexing errors" for texts over model_max_length,
    # which encode_queries cuts to a window around the mask (counted as queries_truncated).
    encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if self._lone_space is None and self._lone_space_after is None:
      return encoded
    return [[t for i, t in enumerate(ids) if not (
        (t == self._lone_space and i + 1 < len(ids) and ids[i + 1] == self.mask_id)
        or (t == self._lone_space_after and i > 0 and ids[i - 1] == self.mask_id))]
            for ids in encoded]


def read_word_list(path: str | os.PathLike) -> list[str]:
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    what = "a directory, not a file" if p.is_dir() else "no such file"
    raise FileNotFoundError(f"--common_vocab {str(path)!r}: {what} (one word per line, "
                            "e.g. LAMA's common_vocab_cased.txt).")
  expects = "a UTF-8 text file, one word per line"
  try:
    text = p.read_text(encoding="utf-8-sig")  # A byte-order mark is tolerated.
  except UnicodeDecodeError as e:
    raise ValueError(f"--common_vocab {str(path)!r} is not UTF-8 (byte {e.object[e.start]:#04x} "
                     f"at offset {e.start}; UTF-16?): expects {expects}.") from None
  if "\x00" in text:  # UTF-16 without a byte-order mark can decode as UTF-8 with NULs.
    raise ValueError(f"--common_vocab {str(path)!r} holds NUL characters (UTF-16?): expects "
                     f"{expects}.")
  words = [w.strip() for w in text.replace("\r", "\n").split("\n") if w.strip()]
  if not words:
    raise ValueError(f"--common_vocab {str(path)!r} is empty: expects {expects} (every fact "
                     "would be skipped).")
  return words
