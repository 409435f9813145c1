"""From queries to ranks: the model run over batches of encoded queries, and the rank each
protocol gives the gold answer among the predictions."""

from collections.abc import Sequence

import numpy as np

from informask_jax.lama.queries import Encoded, Query
from informask_jax.lama.words import WordTable

INFORMASK_TOP_K = 30  # Predictions the InforMask script looks at.


def lama_ranks(logits: np.ndarray, gold_ids: np.ndarray, subset: np.ndarray | None) -> np.ndarray:
  """1-based rank of each gold token among all tokens, or among `subset` (sorted token ids).

  logits (B, V), gold_ids (B,) -> (B,). Tokens tied with the gold token rank before it, so a
  collapsed model (equal logits everywhere) scores nothing rather than everything.
  """
  gold = logits[np.arange(len(gold_ids)), gold_ids]  # (B,)
  candidates = logits if subset is None else logits[:, subset]  # (B, V) or (B, S)
  # `>=` counts the gold token itself too (it is always among the candidates): rank >= 1.
  return (candidates >= gold[:, None]).sum(axis=1)


def informask_ranks(logits: np.ndarray, queries: Sequence[Query], words: WordTable,
                    word_list: set[str] | None) -> list[int | None]:
  """Rank of the first gold alternative among the filtered top 30, None when absent.

  logits (B, V). Without a word list every prediction is kept.
  """
  k = min(INFORMASK_TOP_K, logits.shape[1])
  top = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (B, k), unordered
  order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
  top = np.take_along_axis(top, order, axis=1)  # (B, k), best first
  ranks = []
  for query, row in zip(queries, top, strict=True):
    kept = [s for s in map(words.token_string, row.tolist())
            if word_list is None or s in word_list or s in query.gold_words]
    ranks.append(next((i + 1 for i, s in enumerate(kept) if s in query.gold_words), None))
  return ranks


def run_queries(runner, encoded: Sequence[Encoded], batch_size: int, rank_fn,
                progress: bool = True) -> list[int | None]:
  """Ranks of all encoded queries, in their order; batches group queries of similar length."""
  from tqdm.auto import tqdm

  ranks: list[int | None] = [None] * len(encoded)
  todo = sorted((i for i, e in enumerate(encoded) if not e.query.miss),
                key=lambda i: len(encoded[i].ids))
  with tqdm(total=len(todo), unit="fact", desc="LAMA", disable=not progress) as bar:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      length = max(len(encoded[i].ids) for i in chunk)
      ids = np.full((len(chunk), length), runner.pad_id, np.int32)  # (B, L)
      types = np.zeros((len(chunk), length), np.int32)  # (B, L); padding as segment 0.
      for row, i in enumerate(chunk):
        ids[row, :len(encoded[i].ids)] = encoded[i].ids
        if encoded[i].types is not None:  # A sentence pair.
          types[row, :len(encoded[i].types)] = encoded[i].types
      positions = np.array([encoded[i].position for i in chunk], np.int32)  # (B,)
      logits = runner(ids, positions, types)  # (B, V)
      if not np.all(np.isfinite(logits)):  # NaN compares false: every fact would rank first.
        raise ValueError(f"--model {getattr(runner, 'name', 'the model')} gives non-finite "
                         "logits (a diverged checkpoint?): LAMA scores would be meaningless.")
      for i, rank in zip(chunk, rank_fn(logits, [encoded[i].query for i in chunk]), strict=True):
        ranks[i] = None if rank is None else int(rank)
      bar.update(len(chunk))
  return ranks
