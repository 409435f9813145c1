"""Tokenized documents -> packed rows of exactly seq_len tokens, "[CLS] ... [SEP] [PAD]*".

`pack_sequences` gives token_ids / sentence_ids int32[N, L] under one of `PACKING_MODES`;
`unpack_tokens` recovers the token stream (for checks).
"""

import numpy as np

PACKING_MODES = ("full_sentences", "doc_padded")


def flatten_tokenized(tokenized):
  """(input_ids int32[T], sentence_ids int32[T], lengths int64[D]) of a tokenized Dataset."""
  if isinstance(tokenized, tuple):
    return tokenized
  if isinstance(tokenized, dict):
    ids = [np.asarray(x, np.int32) for x in tokenized["input_ids"]]
    sids = [np.asarray(x, np.int32) for x in tokenized["sentence_ids"]]
    lengths = np.array([len(x) for x in ids], np.int64)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)
    return cat(ids), cat(sids), lengths
  table = tokenized.with_format("arrow")[:]  # Honours selections (an indices mapping).
  columns = []
  for name in ("input_ids", "sentence_ids"):
    # Chunk by chunk: combining the chunks first would overflow Arrow's int32 list offsets past
    # 2**31 tokens (English Wikipedia + BookCorpus is ~4.3B).
    chunks = table.column(name).chunks
    flat = [c.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            for c in chunks]
    lens = [c.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64) for c in chunks]
    columns.append((np.concatenate(flat) if flat else np.zeros(0, np.int32),
                    np.concatenate(lens) if lens else np.zeros(0, np.int64)))
  (ids, lengths), (sids, sid_lengths) = columns
  if not np.array_equal(lengths, sid_lengths):
    raise ValueError("input_ids and sentence_ids differ in length in some document.")
  return ids, sids, lengths.astype(np.int64)


# Tokens placed per block: the packing's temporaries (int64 positions and sentence numbers) are
# those of one block, not of the corpus. Packing the whole corpus at once peaked at ~65 bytes per
# token (~260 GiB for English Wikipedia + BookCorpus) for a result of 8.
BLOCK_TOKENS = 1 << 22


def _sentence_keys(sids, starts_here, first):
  """A running sentence number per token of one block (int64): new at each document start
  (`starts_here`) and sentence change, counted on from `first` (the number of the token before
  the block, or -1)."""
  new = np.ones(len(sids), bool)
  new[1:] = sids[1:] != sids[:-1]
  new[starts_here] = True
  return first + np.cumsum(new)


def check_packing(mode):
  """ValueError naming config.data.packing unless `mode` is one of PACKING_MODES."""
  if mode not in PACKING_MODES:
    raise ValueError(f"config.data.packing={mode!r} is unknown; choose one of "
                     f"{', '.join(PACKING_MODES)}.")


def pack_sequences(tokenized, seq_len, special_ids, mode, *, block_tokens=BLOCK_TOKENS):
  """Packs tokenized documents into rows of exactly `seq_len` tokens.

  full_sentences: documents are concatenated with a [SEP] between them and the stream is cut into
    rows [CLS] <seq_len - 2 tokens> [SEP]; only the last row is padded. Like RoBERTa's
    FULL-SENTENCES, rows cross documents; unlike it, a row's edge may cut a sentence (as
    run_mlm.py's group_texts does): every row is full.
  doc_padded: each document gets its own rows [CLS] <up to seq_len - 2 tokens> [SEP] [PAD]*; a
    longer document continues on further rows (split, never dropped).
  Returns {"token_ids": int32[N, L], "sentence_ids": int32[N, L]}.
  """
  check_packing(mode)
  if seq_len < 3:
    raise ValueError(f"config.data.seq_len={seq_len} leaves no room between [CLS] and [SEP].")
  ids, sids, lengths = flatten_tokenized(tokenized)
  lengths = lengths[lengths > 0]
  if len(ids) == 0:
    raise ValueError("Nothing to pack: the tokenized corpus holds no token.")
  body = seq_len - 2
  doc_ends = np.cumsum(lengths)  # (D,)
  doc_starts = doc_ends - lengths
  if mode == "full_sentences":
    size = len(ids) + len(lengths) - 1  # One [SEP] between consecutive documents.
    rows = -(-size // body)
    # Stream position of each document's first token: each earlier document adds one [SEP].
    doc_place = doc_starts + np.arange(len(lengths))
  else:
    chunks = -(-lengths // body)  # Rows per document.
    rows = int(chunks.sum())
    doc_row = np.cumsum(chunks) - chunks
  tokens = np.full((rows, seq_len), special_ids.pad, np.int32)  # (N, L)
  sentence_ids = np.full((rows, seq_len), -1, np.int32)
  row_first = np.full(rows, -1, np.int64)  # The sentence number of each row's first token.
  last_key = -1
  for a in range(0, len(ids), block_tokens):
    b = min(a + block_tokens, len(ids))
    t = np.arange(a, b)
    doc = np.searchsorted(doc_ends, t, side="right")
    starts_here = doc_starts[np.searchsorted(doc_starts, a):np.searchsorted(doc_starts, b)] - a
    keys = _sentence_keys(sids[a:b], starts_here, last_key)
    if a > 0 and sids[a] == sids[a - 1] and doc_starts[doc[0]] != a:
      keys -= 1  # The block starts inside the sentence of the token before it.
    last_key = int(keys[-1])
    if mode == "full_sentences":
      place = doc_place[doc] + (t - doc_starts[doc])
      row, col = place // body, 1 + place % body
    else:
      pos = t - doc_starts[doc]
      row, col = doc_row[doc] + pos // body, 1 + pos % body
    # Sentence numbers only grow along a row, so its first token's is its smallest: each row's
    # ids start at 0. A row's first token comes in this block or an earlier one.
    first_of_row = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    unseen = row_first[row[first_of_row]] < 0
    row_first[row[first_of_row[unseen]]] = keys[first_of_row[unseen]]
    tokens[row, col] = ids[a:b]
    sentence_ids[row, col] = keys - row_first[row]
  if mode == "full_sentences":
    between = doc_place[1:] - 1  # The [SEP] before each later document.
    tokens[between // body, 1 + between % body] = special_ids.sep
    row_len = np.full(rows, body)
    row_len[-1] = size - (rows - 1) * body
  else:
    row_len = np.full(rows, body)
    row_len[doc_row + chunks - 1] = lengths - (chunks - 1) * body  # Each document's last row.
  tokens[:, 0] = special_ids.cls
  tokens[np.arange(rows), 1 + row_len] = special_ids.sep
  return {"token_ids": tokens, "sentence_ids": sentence_ids}


def unpack_tokens(packed, special_ids):
  """The token stream of packed rows with every special token removed (for checks)."""
  tokens = packed["token_ids"].reshape(-1)
  drop = np.isin(tokens, [special_ids.pad, special_ids.cls, special_ids.sep])
  return tokens[~drop]
