"""How a tokenizer's pieces mark words: WordPiece marks the pieces that continue a word ("##"),
byte-level BPE (RoBERTa's "Ġ") and SentencePiece ("▁") the piece that starts one. No imports:
the statistics report and `masking show` read token names without loading a tokenizer library."""

WORD_START_MARKS = ("\u0120", "\u2581")  # Ġ, ▁


def unmarked(piece: str) -> str:
  """`piece` without its word-start mark ("Ġthe" is "the"); a mark alone stays."""
  return piece[1:] if piece.startswith(WORD_START_MARKS) and len(piece) > 1 else piece
