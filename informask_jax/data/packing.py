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


def _sentence_keys(sids, lengths):
  """A corpus-wide running sentence number per token: new at each document and sentence start."""
  new = np.ones(len(sids), bool)
  new[1:] = sids[1:] != sids[:-1]
  doc_starts = np.cumsum(lengths) - lengths
  new[doc_starts[lengths > 0]] = True
  return np.cumsum(new) - 1


def _rebase_rows(sent):
  """Per row, shifts sentence numbers to start at 0; -1 (no sentence) stays -1."""
  valid = sent >= 0
  low = np.where(valid, sent, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
  return np.where(valid, sent - low, -1).astype(np.int32)


def check_packing(mode):
  """ValueError naming config.data.packing unless `mode` is one of PACKING_MODES."""
  if mode not in PACKING_MODES:
    raise ValueError(f"config.data.packing={mode!r} is unknown; choose one of "
                     f"{', '.join(PACKING_MODES)}.")


def pack_sequences(tokenized, seq_len, special_ids, mode):
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
  keys = _sentence_keys(sids, lengths)  # (T,)
  doc_of = np.repeat(np.arange(len(lengths)), lengths)  # (T,)

  if mode == "full_sentences":
    size = len(ids) + len(lengths) - 1  # One [SEP] between consecutive documents.
    rows = -(-size // body)
    stream = np.full(rows * body, special_ids.pad, np.int32)
    stream_sent = np.full(rows * body, -1, np.int64)
    stream[:size] = special_ids.sep
    where = np.arange(len(ids)) + doc_of  # Each earlier document adds one [SEP].
    stream[where] = ids
    stream_sent[where] = keys
    tokens = np.full((rows, seq_len), special_ids.pad, np.int32)  # (N, L)
    sent = np.full((rows, seq_len), -1, np.int64)
    tokens[:, 1:-1] = stream.reshape(rows, body)
    sent[:, 1:-1] = stream_sent.reshape(rows, body)
    row_len = np.full(rows, body)
    row_len[-1] = size - (rows - 1) * body
  else:
    chunks = -(-lengths // body)  # Rows per document.
    rows = int(chunks.sum())
    pos = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # In-document.
    row = np.repeat(np.cumsum(chunks) - chunks, lengths) + pos // body
    tokens = np.full((rows, seq_len), special_ids.pad, np.int32)  # (N, L)
    sent = np.full((rows, seq_len), -1, np.int64)
    tokens[row, 1 + pos % body] = ids
    sent[row, 1 + pos % body] = keys
    row_len = np.bincount(row, minlength=rows)
  tokens[:, 0] = special_ids.cls
  tokens[np.arange(rows), 1 + row_len] = special_ids.sep
  return {"token_ids": tokens, "sentence_ids": _rebase_rows(sent)}


def unpack_tokens(packed, special_ids):
  """The token stream of packed rows with every special token removed (for checks)."""
  tokens = packed["token_ids"].reshape(-1)
  drop = np.isin(tokens, [special_ids.pad, special_ids.cls, special_ids.sep])
  return tokens[~drop]
