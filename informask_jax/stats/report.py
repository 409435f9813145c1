"""A picture and a short summary of a statistics directory: how the masking rates depend on token
frequency, and which tokens InforMask masks most and least."""

from __future__ import annotations

import os
import pathlib
import re
import warnings

import numpy as np
from absl import logging

from informask_jax import paths, word_marks
from informask_jax.stats import artifacts as art

TOP = 30


def _token_names(directory: pathlib.Path, meta: dict, vocab_size: int) -> list[str]:
  """Token strings from the directory's vocab.txt when it verifies, else "#id".

  One token per line: a token holding a line break (some tokenizers have "\n" pieces) makes
  more lines than tokens, and every later token would take its neighbour's name.
  """
  path = directory / art.VOCAB
  problems = art.verify_files(directory, meta, [art.VOCAB]) if path.exists() else []
  if any("not built" not in p for p in problems):  # Recorded, and altered since.
    logging.warning("%s: %s, so the report names tokens by id; `python -m informask_jax.stats "
                    "build --config ...` with the directory's config rewrites it.", directory,
                    "; ".join(problems))
  elif path.exists() and not problems:
    lines = path.read_text(encoding="utf-8").split("\n")
    if len(lines) == vocab_size + 1 and lines[-1] == "":
      return _byte_level_as_text(lines[:vocab_size])
    held = len(lines) - (lines[-1] == "")  # A last line without its line break counts too.
    logging.warning("%s holds %d lines for %d tokens (a token with a line break?): the report "
                    "names tokens by id.", path, held, vocab_size)
  return [f"#{i}" for i in range(vocab_size)]


def _escaped(text: str) -> str:
  """`text` as a token name that no other text gets: a byte that is not part of a character
  (a lone surrogate from decoding with surrogateescape) and a character that does not print, is
  white space or is a word-start mark is written \\xNN or \\uNNNN, and a backslash \\\\."""
  out = []
  for ch in text:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # An undecodable byte.
      out.append(f"\\x{code - 0xDC00:02x}")
    elif ch == "\\":
      out.append("\\\\")
    elif not ch.isprintable() or ch.isspace() or ch in word_marks.WORD_START_MARKS:
      out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    else:
      out.append(ch)
  return "".join(out)


def _byte_level_as_text(names: list[str]) -> list[str]:
  """`names` with a byte-level BPE vocabulary's pieces written as the text they encode ("Ġcaf",
  "Ã©" for "Ġcaf", "é"), a leading space as the word-start mark "Ġ", and the rest escaped where
  it would not print or could be another piece's name (_escaped: the piece "é" alone is the
  byte E9, not the character, which is "Ã©"; "Ċ" is a line break, \\x0a, not the letter Ċ).
  A vocabulary is byte-level when it holds each of the 256 byte characters as a piece, as
  byte-level BPE trainers make it."""
  chars = word_marks.BYTE_LEVEL_BYTES
  if not set(chars) <= set(names):
    return names
  shown = []
  for name in names:
    if not set(name) <= chars.keys():  # A special token such as <s>.
      shown.append(name)
      continue
    text = bytes(chars[c] for c in name).decode("utf-8", errors="surrogateescape")
    start = text.startswith(" ") and len(text) > 1
    shown.append(("\u0120" if start else "") + _escaped(text[1:] if start else text))
  return shown


def summarize(directory) -> tuple[str, dict]:
  """The summary text and the numbers the figure uses."""
  from scipy import stats as sstats

  directory = pathlib.Path(directory).expanduser()
  a = art.load_artifacts(directory, tokenizer_fingerprint=None, vocab_size=None)
  if a.rates is None or a.unigram_counts is None:
    raise ValueError(f"{directory} has no masking rates yet; build them with `python -m "
                     "informask_jax.stats build --config ...`.")
  meta, v = a.meta, a.vocab_size
  _check_report_fields(meta, directory)
  names = _token_names(directory, meta, v)
  specials = set(meta.get("special_ids", {}).values())
  counts, rates = a.unigram_counts, a.rates.astype(np.float64)
  min_count = int(meta["params"].get("min_count", 1))
  seen = np.array([i for i in np.flatnonzero(counts > 0) if i not in specials])
  by_freq = seen[np.lexsort((seen, -counts[seen]))]  # rank 1 = most frequent
  # The lists rank tokens of the PMI table: a token outside it has no PMI with anything, so
  # sample-and-score gains nothing by masking it and its rate only says that (see the figure).
  in_table = (np.diff(a.pmi.indptr) > 0) if a.pmi is not None else np.ones(v, bool)
  frequent = by_freq[(counts[by_freq] >= min_count) & in_table[by_freq]]
  ranked = frequent[np.lexsort((frequent, -rates[frequent]))]
  outside = by_freq[~in_table[by_freq]]
  share_out = counts[outside].sum() / max(counts[by_freq].sum(), 1)
  mean_out = rates[outside].mean() if outside.size else float("nan")
  # Over the PMI-table tokens, whose rates are measured; the tokens outside share one fill
  # rate, and over all tokens those ties can flip the sign (a walkthrough: 0.33 vs -0.22).
  measured = by_freq[in_table[by_freq]]
  rho = sstats.spearmanr(rates[measured], np.log(counts[measured])).statistic
  rho_all = sstats.spearmanr(rates[by_freq], np.log(counts[by_freq])).statistic
  c = meta.get("counts", {})
  mask_prob = float(meta["params"]["mask_prob"])

  def fmt(ids):
    return ", ".join(f"{word_marks.unmarked(names[i])} {rates[i]:.3f}" for i in ids)

  lines = [
      f"Statistics: {directory}",
      f"corpus {meta['corpus_fingerprint']}  tokenizer {meta['tokenizer_fingerprint']}  "
      f"vocab {v}",
      f"tokens {c.get('num_tokens', '?')}  sentences {c.get('num_sentences', '?')}  "
      f"documents {c.get('num_documents', '?')}",
      f"PMI vocabulary {c.get('pmi_vocab_size', '?')} tokens, {c.get('pmi_nnz', '?')} table "
      f"entries (max {c.get('pmi_max', float('nan')):.2f})",
      f"rates from {c.get('rate_sequences', '?')} sequences: sampled target share "
      f"{c.get('rate_sample_fraction', float('nan')):.4f}, corpus-level expected share "
      f"{art_expected(rates, counts, specials):.4f} (mask_prob {mask_prob})",
      f"tokens outside the PMI table: {outside.size} ({share_out:.1%} of occurrences)"
      + (f", mean rate {mean_out:.4f}" if outside.size else ""),  # None: no rate, not "nan".
      f"rate over PMI-table tokens seen >= {min_count} times: min {rates[frequent].min():.4f}  "
      f"median {np.median(rates[frequent]):.4f}  max {rates[frequent].max():.4f}",
      f"Spearman(rate, log frequency) = {rho:.3f} over the {measured.size} PMI-table tokens "
      f"({rho_all:.3f} over all {by_freq.size} seen, the others at one fill rate)",
      f"10 most frequent: {fmt(by_freq[:10])}",
      f"highest rates: {fmt(ranked[:10])}",
      f"lowest rates: {fmt(ranked[::-1][:10])}",
      "(rates are sampled estimates: the rarer a token, the more its rate and its place in "
      "these lists vary with stats.rate_sample_sequences and the seed)",
  ]
  if a.ngrams is not None:
    per = c.get("ngrams_per_length", {})
    lengths = ", ".join(f"{n}-grams {k}" for n, k in per.items())
    lines.append(f"n-gram vocabulary {len(a.ngrams)} ({lengths}), bigram table {len(a.bigrams)}")
    marks_starts = any(n.startswith(word_marks.WORD_START_MARKS) for n in names)
    lines.append("top n-grams: " + " | ".join(_join(names, g, marks_starts)
                                              for g in a.ngrams[:8]))
  params = meta["params"]
  pmi_end = (int(params.get("drop_top_k", 0)) + int(c["pmi_vocab_size"])
             if "pmi_vocab_size" in c else 0)
  numbers = dict(pmi_end=pmi_end, pmi_end_label=_pmi_end_label(params, mean_out), names=names,
                 counts=counts, rates=rates, by_freq=by_freq, ranked=ranked, mask_prob=mask_prob,
                 min_count=min_count, rho=rho)
  return "\n".join(lines), numbers


def _pmi_end_label(params: dict, fill_rate: float) -> str:
  """The legend of the PMI vocabulary's end, for the rate method the directory was built with
  (params.rates_method, stats/rates.py): beyond it no token has PMI, and what that does to the
  rates depends on the method."""
  method = params.get("rates_method", 1)  # Directories from before the key: method 1.
  if method == 1:  # Measured like any token: masking them scores nothing, so they fall.
    return "end of the PMI vocabulary (no PMI beyond: rates fall)"
  if method == 2:  # Counted as never shown: all at the mean rate (rates.finalize_rates).
    value = f", {fill_rate:.3f}" if np.isfinite(fill_rate) else ""
    return f"end of the PMI vocabulary (no PMI beyond: the mean rate{value})"
  return "end of the PMI vocabulary (no PMI beyond)"  # A method this report does not know.


def _check_report_fields(meta: dict, directory: pathlib.Path) -> None:
  """The fields of meta.json the summary reads and loading the tables does not need."""
  missing = [k for k in ("corpus_fingerprint", "tokenizer_fingerprint") if k not in meta]
  mask_prob = meta.get("params", {}).get("mask_prob")
  if isinstance(mask_prob, bool) or not isinstance(mask_prob, int | float):
    missing.append("a number params.mask_prob")
  if missing:
    raise art.CorruptArtifactError(f"{directory / art.META} lacks {', '.join(missing)}; delete "
                                   "the directory or run the build again.")


def art_expected(rates, counts, specials) -> float:
  w = counts.astype(np.float64).copy()
  w[list(specials)] = 0
  return float(rates @ w / max(w.sum(), 1))


def _join(names, ids, marks_starts) -> str:
  """An n-gram's tokens as text: a "##" piece joins the word before it, and so, in a vocabulary
  that marks word starts (`marks_starts`), does a piece without the mark (it was "Ġhoney Ġbe
  e" for "honey bee")."""
  out = ""
  for i in ids:
    name = names[i]
    if name.startswith("##"):
      out += name[2:]
    elif marks_starts and not name.startswith(word_marks.WORD_START_MARKS):
      out += name
    else:
      out += (" " if out else "") + word_marks.unmarked(name)
  return out


def _check_out_folder(folder: pathlib.Path, given: bool) -> None:
  """Refuses a folder the report cannot be written into, naming --out: a file on its path
  (--out /dev/full/x.png) was a bare FileExistsError, and a read-only statistics directory (the
  default) a hint to free disk space."""
  what = ("--out's folder" if given
          else "The statistics directory (where the report goes without --out)")
  try:
    paths.check_writable_dir(folder, what)
  except (PermissionError, FileExistsError) as e:
    raise type(e)(f"{e} Give --out a path in a folder you can write, e.g. "
                  "--out ~/report.png.") from None


# matplotlib's warning for a character its font lacks (one per character and drawing).
_MISSING_GLYPH = re.compile(r"^Glyph (\d+) \(.*\) missing from "
                            r"(?:current font|font\(s\) (.*?)\.?$)")


def _warn_missing_glyphs(caught, out_png) -> None:
  """Token labels in a script the font lacks (Chinese, Devanagari, Thai in DejaVu Sans) drew a
  matplotlib warning per character and drawing, dozens of lines: one line says it instead. Other
  warnings are raised again as they were."""
  missing, fonts = set(), set()
  for w in caught:
    m = _MISSING_GLYPH.match(str(w.message))
    if m:
      missing.add(chr(int(m.group(1))))
      fonts.add(m.group(2) or "the current font")
    else:
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  if missing:
    logging.warning("%d characters of the token labels are not in %s and show as boxes in %s "
                    "(e.g. %s); the summary beside it (.txt) has them.", len(missing),
                    ", ".join(sorted(fonts)), out_png, " ".join(sorted(missing)[:5]))


def write_report(directory, out_png=None) -> tuple[pathlib.Path, str]:
  """Writes the PNG (default DIR/report.png; `out_png` may be a file, a bare name that gets
  .png, or a directory to write report.png into) and the summary next to it (.txt); returns the
  PNG's path and the summary."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  directory = pathlib.Path(directory).expanduser()
  text, n = summarize(directory)
  given = bool(out_png)
  as_dir = bool(out_png) and str(out_png).endswith(("/", os.sep))  # --out new/: a folder to make.
  out_png = pathlib.Path(out_png).expanduser() if out_png else directory / "report.png"
  if as_dir or out_png.is_dir():  # --out DIR: the default name inside it (not DIR.png).
    out_png = out_png / "report.png"
  elif not out_png.suffix:  # savefig appends .png to a bare name: return the file it writes.
    out_png = out_png.with_suffix(".png")
  formats = plt.figure().canvas.get_supported_filetypes()
  plt.close("all")
  if out_png.suffix[1:].lower() not in formats or out_png.suffix.lower() == ".txt":
    # .txt is the summary's own name beside the image.
    raise ValueError(f"--out {out_png}: {out_png.suffix!r} is not an image format matplotlib "
                     f"writes; use .png, .svg, .pdf or .jpg (the summary goes to .txt beside it).")
  for target in (out_png, out_png.with_suffix(".txt")):
    # --out DIR/vocab.png wrote the summary over DIR/vocab.txt, the tables' vocabulary.
    if target.exists() and target.name not in ("report.png", "report.txt") and \
        target.resolve().parent == pathlib.Path(directory).resolve():
      raise ValueError(f"--out {out_png}: {target} is a file of the statistics directory, which "
                       "the report would overwrite; give another name.")
  _check_out_folder(out_png.parent, given)
  out_png.parent.mkdir(parents=True, exist_ok=True)
  names, counts, rates, by_freq, ranked = (n["names"], n["counts"], n["rates"], n["by_freq"],
                                           n["ranked"])

  fig = plt.figure(figsize=(15, 12), constrained_layout=True)
  grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.5])
  ax = fig.add_subplot(grid[0, :])
  rank = np.arange(1, by_freq.size + 1)
  ax.scatter(rank, rates[by_freq], s=3, alpha=0.35, color="tab:blue", label="token")
  # Running median over log-spaced rank bins, to show the trend under the cloud.
  edges = np.unique(np.geomspace(1, by_freq.size + 1, 40).astype(int))
  mids, meds = [], []
  for lo, hi in zip(edges[:-1], edges[1:], strict=True):
    mids.append(np.sqrt(lo * hi))
    meds.append(np.median(rates[by_freq[lo - 1:hi - 1]]))
  ax.plot(mids, meds, color="tab:orange", lw=2, label="median per rank bin")
  ax.axhline(n["mask_prob"], color="gray", ls="--", lw=1, label=f"mask_prob {n['mask_prob']}")
  if n["pmi_end"]:
    ax.axvline(n["pmi_end"], color="tab:purple", ls=":", lw=1.5,
               label=n["pmi_end_label"])
  ax.set_xscale("log")
  ax.set_xlabel("token frequency rank (1 = most frequent)")
  ax.set_ylabel("masking rate")
  ax.set_title(f"InforMask masking rate vs frequency rank "
               f"(Spearman rate~log freq = {n['rho']:.2f} over the PMI table)")
  ax.legend(loc="upper left")

  for col, (ids, title, color) in enumerate((
      (ranked[:TOP], f"{TOP} highest rates (PMI-table tokens seen >= {n['min_count']}x)",
       "tab:red"),
      (ranked[::-1][:TOP], f"{TOP} lowest rates (PMI-table tokens seen >= {n['min_count']}x)",
       "tab:green"))):
    ax = fig.add_subplot(grid[1, col])
    y = np.arange(len(ids))[::-1]
    ax.barh(y, rates[ids], color=color, alpha=0.8)
    ax.set_yticks(y, [f"{word_marks.unmarked(names[i])}  ({counts[i]})" for i in ids], fontsize=8)
    ax.axvline(n["mask_prob"], color="gray", ls="--", lw=1)
    ax.set_xlabel("masking rate")
    ax.set_title(title)
  fig.suptitle(f"Statistics {directory.name}", fontsize=10)
  # Written under temporary names and renamed: a disk filling up leaves the earlier report.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    paths.atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=110, format=out_png.suffix[1:]))
  plt.close(fig)
  _warn_missing_glyphs(caught, out_png)
  paths.atomic_write(out_png.with_suffix(".txt"),
                     lambda tmp: pathlib.Path(tmp).write_text(text + "\n", "utf-8"))
  return out_png, text
