"""Facts turned into cloze queries, one relation at a time, under the `lama` and `informask`
protocols (their rules are in the package docstring), and the queries tokenized for the model.

Every fact that cannot be asked is counted, by reason, into its relation's `RelationScore`.
"""

import collections
import dataclasses
import logging
from collections.abc import Iterable, Sequence

from informask_jax.lama.data_files import OBJECT_SLOT, SUBJECT_SLOT, RelationFile, line_numbers
from informask_jax.lama.scores import RelationScore
from informask_jax.lama.words import WordTable

LAMA_MASK = "[MASK]"  # The mask as written in the data, whatever the model's mask token is.
MAX_SENTENCE_WORDS = 100  # LAMA's max_sentence_length for masked-sentence queries.
INFORMASK_MAX_TOKENS = 500  # informask: sentences over this many tokens (no specials) left out.

log = logging.getLogger(__name__)

# Skips that say a line of the file is broken, not that the protocol leaves its fact out: they
# are named by line in a warning, as read_records names the lines that are not JSON objects.
_BROKEN_LINES = {
    "missing_field": "lack a field the query needs (obj_label, sub_label or the sentences)",
    "no_mask": "have no [MASK] in the sentence asked",
}


@dataclasses.dataclass
class Query:
  relation: int  # Index into the evaluated relation list.
  text: str  # The cloze, with the tokenizer's mask token.
  # lama: a record's second masked sentence; the two are asked as one sentence pair.
  text_b: str | None = None
  gold_id: int = -1  # lama: the object's token.
  gold_words: tuple[str, ...] = ()  # informask: lower-cased surface alternatives.
  miss: bool = False  # informask: scored as a miss without running the model.


def _first_masked_sentence(record: dict, source: str) -> tuple[str | None, str | None]:
  """(sentence, surface form of the object) as the data gives them; None where absent."""
  if source == "TREx":
    evidences = record.get("evidences")
    first = evidences[0] if isinstance(evidences, list) and evidences else None
    if not isinstance(first, dict):
      return None, None
    sentence, surface = first.get("masked_sentence"), first.get("obj_surface")
  else:
    sentences = record.get("masked_sentences")
    sentence = sentences[0] if isinstance(sentences, list) and sentences else None
    surface = record.get("obj_label")
  return (sentence if isinstance(sentence, str) else None,
          surface if isinstance(surface, str) else None)


def _masked_sentences(record: dict, source: str) -> list[str] | None:
  """lama: the sentences LAMA's code asks at once (T-REx: the first evidence's; elsewhere all of
  `masked_sentences`, which its BERT connector takes as a sentence pair); None where absent."""
  if source == "TREx":
    sentence, _ = _first_masked_sentence(record, source)
    return None if sentence is None else [sentence]
  sentences = record.get("masked_sentences")
  if (not isinstance(sentences, list) or not sentences
      or not all(isinstance(x, str) for x in sentences)):
    return None
  return sentences


def _rejected_by_annotators(record: dict) -> bool:
  """Google-RE: LAMA leaves out facts whose "no" judgments outnumber the "yes" ones."""
  judgments = record.get("judgments")
  if not isinstance(judgments, list):
    return False
  yes = sum(1 for j in judgments if isinstance(j, dict) and j.get("judgment") == "yes")
  return len(judgments) - yes > yes


class _Skips:
  """Counts a relation's skipped facts into its score, and keeps the lines of broken ones."""

  def __init__(self, rel: RelationFile, score: RelationScore):
    self.rel, self.score = rel, score
    self.lines = collections.defaultdict(list)

  def __call__(self, reason: str, record: dict | None = None) -> None:
    self.score.skipped[reason] += 1
    if reason in _BROKEN_LINES:
      self.lines[reason].append(getattr(record, "line", 0))

  def report(self) -> None:
    for reason, lines in self.lines.items():
      log.warning("%s: %d fact(s) %s (%s); they are counted as %s.", self.rel.path, len(lines),
                  _BROKEN_LINES[reason], line_numbers(lines), reason)
    unknown = self.score.skipped["unknown_relation"]
    if unknown:
      log.warning("%s: relation %s has no template (none in relations.jsonl, or not a usable "
                  "one): its %d fact(s) are counted as unknown_relation. --use_masked_sentences "
                  "asks them through their evidence sentences.", self.rel.path, self.rel.name,
                  unknown)


def lama_queries(index: int, rel: RelationFile, records: Iterable[dict | None], words: WordTable,
                 common: set[int] | None, use_masked_sentences: bool,
                 score: RelationScore, listed: set[str] | None = None) -> list[Query]:
  """Queries of one relation under the `lama` protocol; skips are counted into `score`.
  `common`: the token ids of --common_vocab's single-token words; `listed`: its words,
  normalised (WordTable.normalized), which name why a multi-token object is skipped."""
  templated = rel.source in ("TREx", "Google_RE") and not use_masked_sentences
  queries, seen, skip = [], set(), _Skips(rel, score)
  for record in records:
    if record is None:
      skip("malformed_json", record)
      continue
    if templated and rel.template is None:
      skip("unknown_relation", record)
      continue
    obj = record.get("obj_label")
    if not isinstance(obj, str) or not obj.strip():
      skip("missing_field", record)
      continue
    if templated:
      sub = record.get("sub_label")
      if not isinstance(sub, str) or not sub.strip():
        skip("missing_field", record)
        continue
      text = rel.template.replace(SUBJECT_SLOT, sub.strip()).replace(OBJECT_SLOT,
                                                                     words.mask_token)
      rest = []
    else:
      sentences = _masked_sentences(record, rel.source)
      if sentences is None:
        skip("missing_field", record)
        continue
      if len(" ".join(sentences).split()) > MAX_SENTENCE_WORDS:  # All of them, as LAMA counts.
        skip("too_long", record)
        continue
      if not any(LAMA_MASK in x for x in sentences):
        skip("no_mask", record)
        continue
      # Several masks: the first of the sentence pair is scored.
      text, *rest = (x.replace(LAMA_MASK, words.mask_token) for x in sentences)
    gold = words.single_token_id(obj)
    # LAMA's filter tests the list first, by the words written: an object it lists but the
    # vocabulary spells in several tokens is no single token, not outside the list.
    if common is not None and (gold not in common if gold is not None or listed is None else
                               not all(words.normalized(w) in listed for w in obj.split(" "))):
      skip("object_not_in_common_vocab", record)
      continue
    if gold is None:
      skip("object_not_single_token", record)
      continue
    if _rejected_by_annotators(record):
      skip("negative_judgments", record)
      continue
    if len(rest) > 1:  # LAMA's BERT connector raises a ValueError for these.
      skip("more_than_two_sentences", record)
      continue
    if templated:
      key = (text, gold)  # The query asked: "Paris" and "Paris " (one gold token) are one fact.
      if key in seen:
        skip("duplicate_fact", record)
        continue
      seen.add(key)
    queries.append(Query(index, text, text_b=rest[0] if rest else None, gold_id=gold))
  skip.report()
  return queries


def informask_queries(index: int, rel: RelationFile, records: Iterable[dict | None],
                      words: WordTable, score: RelationScore) -> list[Query]:
  """Queries of one relation under the `informask` protocol; skips are counted into `score`."""
  queries, skip = [], _Skips(rel, score)
  for record in records:
    if record is None:
      skip("malformed_json", record)
      continue
    sentence, surface = _first_masked_sentence(record, rel.source)
    if sentence is None or surface is None:
      skip("missing_field", record)
      continue
    if LAMA_MASK not in sentence:
      skip("no_mask", record)
      continue
    gold = tuple(w for w in (x.strip() for x in surface.lower().split(",")) if w)
    queries.append(Query(index, sentence.replace(LAMA_MASK, words.mask_token), gold_words=gold,
                         miss=sentence.count(LAMA_MASK) > 1))
  skip.report()
  return queries


@dataclasses.dataclass
class Encoded:
  query: Query
  ids: list[int]  # With special tokens, at most the model's length.
  position: int  # Of the mask in `ids`.
  truncated: bool
  types: list[int] | None = None  # Token types (segments) of a sentence pair; None: all 0.


def encode_queries(queries: Sequence[Query], words: WordTable, max_len: int,
                   scores: Sequence[RelationScore], max_tokens: int | None = None,
                   first_mask: bool = False) -> list[Encoded]:
  """Tokenizes queries; keeps a window of `max_len` tokens around the mask for long ones.

  A query with a second sentence is laid out as the tokenizer's sentence pair, the window then
  taken over both sentences and what separates them.
  `max_tokens` (informask) leaves out sentences longer than that, counted as `too_long`.
  `first_mask` (lama): a query with several masks is scored at its first, as LAMA's code does;
  otherwise it is skipped (`several_masks`).
  """
  if max_len - len(words.prefix) - len(words.suffix) < 1:
    raise ValueError(f"Model length {max_len} leaves no room between its special tokens.")
  seconds = iter(words.encode([q.text_b for q in queries if q.text_b is not None]))
  out = []
  for query, ids in zip(queries, words.encode([q.text for q in queries]), strict=True):
    second = None if query.text_b is None else next(seconds)
    score = scores[query.relation]
    if max_tokens is not None and len(ids) > max_tokens:
      score.skipped["too_long"] += 1
      continue
    if query.miss:
      out.append(Encoded(query, [], -1, False))
      continue
    full, types, lead, trail = words.with_special_tokens(ids, second)
    body = full[lead:len(full) - trail]  # The sentence(s), without [CLS] and the last [SEP].
    positions = [i for i, t in enumerate(body) if t == words.mask_id]
    if not positions or (len(positions) > 1 and not first_mask):
      score.skipped["no_mask" if not positions else "several_masks"] += 1
      continue
    budget = max_len - lead - trail
    if budget < 1:
      raise ValueError(f"Model length {max_len} leaves no room between its special tokens.")
    m, start = positions[0], 0
    if len(body) > budget:  # Centre the window on the mask, clipped to the sentence(s).
      start = min(max(m - budget // 2, 0), len(body) - budget)
    kept = [*range(lead), *range(lead + start, lead + start + min(budget, len(body))),
            *range(len(full) - trail, len(full))]  # Indices into `full`.
    out.append(Encoded(query, [full[i] for i in kept], lead + m - start, len(body) > budget,
                       None if types is None else [types[i] for i in kept]))
  return out
