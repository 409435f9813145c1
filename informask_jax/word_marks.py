"""How a tokenizer's pieces mark words and spell bytes: WordPiece marks the pieces that continue a
word ("##"), byte-level BPE (RoBERTa's "Ġ") and SentencePiece ("▁") the piece that starts one,
and byte-level BPE writes each byte as a stand-in character. No imports: the statistics report
and `masking show` read token names without loading a tokenizer library."""

WORD_START_MARKS = ("\u0120", "\u2581")  # Ġ, ▁


def unmarked(piece: str) -> str:
  """`piece` without its word-start mark ("Ġthe" is "the"); a mark alone stays."""
  return piece[1:] if piece.startswith(WORD_START_MARKS) and len(piece) > 1 else piece


def _byte_level_bytes() -> dict[str, int]:
  visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  table = {chr(b): b for b in visible}
  table.update({chr(0x100 + n): b for n, b in
                enumerate(b for b in range(256) if b not in set(visible))})
  return table


# {stand-in character: the byte it spells} of byte-level BPE (GPT-2's, RoBERTa's): a byte that
# prints as a visible Latin-1 character stands for itself, the others (control bytes, space,
# ...) for the characters from U+0100 on, in byte order; a space is "Ġ" (U+0120).
BYTE_LEVEL_BYTES = _byte_level_bytes()
