"""Benchmark of the corpus statistics on the embedded corpus (configs/informask.py:tiny).

  python bench/stats.py --out bench/stats.json [--python_docs 1500] [--cap_mb 16]

Stages, each in a fresh process (so that its peak RSS is its own):
  counting         informask_jax: unigram + within-sentence pair counts over the whole corpus
  counting         python_counter: the straightforward reference, a collections.Counter over every
                   pair of PMI-vocabulary tokens of each sentence (nested loops), on the first
                   --python_docs documents (same vocabulary, same counts)
  ngrams           informask_jax: word n-gram counting, scoring and the vocabulary
  build            informask_jax: the whole build (counts, PMI, rates with the jitted
                   informask_online masker, n-grams) into an empty cache directory, cold
                   (its JAX compilation included); the other stages are timed after a warm-up
  counting_2proc   informask_jax: the same over 2 worker processes (shards of 128k tokens)
  counting_cap_x1  pair counting under --cap_mb on the corpus, and on 4 copies of it (x4):
  counting_cap_x4  with the cap, peak memory must not grow with the corpus

tokens_per_sec_per_core = tokens / CPU seconds of the stage (user + system, its worker processes
included): on this shared 2-core machine CPU time is steadier than wall time, and for a
single-process stage it is the wall-time rate on an idle core. Wall-time rates are recorded too.
"""

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The paper's corpus: English Wikipedia + BookCorpus, ~3.3B words, ~4.3B WordPiece tokens (BERT's
# sizes; configs/base.py's 20231101 Wikipedia holds more, so projections from it are low).
PAPER_TOKENS = 4.3e9


def _cpu_seconds():
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb():
  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a spawned child would report its
  # parent's peak. Worker processes of a stage (none by default) are not included.
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _load(data_dir):
  import datasets
  import numpy as np

  ds = datasets.load_from_disk(os.path.join(data_dir, "tokenized"))
  with open(os.path.join(data_dir, "info.json")) as f:
    info = json.load(f)
  continuation = np.load(os.path.join(data_dir, "continuation.npy"))
  return ds, info, continuation


def _stage_counting(data_dir, cap_mb=None, copies=1, workers=1):
  """Unigram + pair counts (cap_mb None: the config's cap)."""
  import datasets

  from informask_jax.stats import counting

  ds, info, continuation = _load(data_dir)
  if copies > 1:
    ds = datasets.concatenate_datasets([ds] * copies)
  for _ in range(2):  # The first pass is a warm-up (page faults of fresh buffers, lazy imports).
    cpu, wall = _cpu_seconds(), time.perf_counter()
    uni = counting.count_unigrams(ds, info["vocab_size"])
    vocab = counting.select_pmi_vocab(uni.counts, special_ids=info["special_ids"],
                                      size=info["pmi_vocab_size"], min_count=info["min_count"])
    pairs = counting.count_pairs(ds, vocab, vocab_size=info["vocab_size"],
                                 min_pair_count=info["min_pair_count"],
                                 memory_cap_mb=info["memory_cap_mb"] if cap_mb is None else cap_mb,
                                 num_workers=workers, shard_tokens=1 << 17)
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
  return dict(tokens=uni.num_tokens, cpu=cpu, wall=wall, pairs=int(pairs.total),
              processes=workers)


def _stage_python(data_dir, num_docs):
  import collections

  from informask_jax.stats import counting

  ds, info, _ = _load(data_dir)
  uni = counting.count_unigrams(ds, info["vocab_size"])  # the vocabulary, not timed
  vocab = set(counting.select_pmi_vocab(uni.counts, special_ids=info["special_ids"],
                                        size=info["pmi_vocab_size"],
                                        min_count=info["min_count"]).tolist())
  sub = ds.select(range(min(num_docs, len(ds))))
  docs = list(zip(sub["input_ids"], sub["sentence_ids"], strict=True))

  def count(docs):
    unigrams = collections.Counter()
    pairs = collections.Counter()
    for ids, sids in docs:
      unigrams.update(ids)
      sentences = collections.defaultdict(list)
      for t, s in zip(ids, sids, strict=True):
        if t in vocab:
          sentences[s].append(t)
      for toks in sentences.values():
        for i in range(len(toks)):
          for j in range(i + 1, len(toks)):
            pairs[(toks[i], toks[j])] += 1
    return pairs

  count(docs[:100])  # warm-up, as for ours
  tokens = sum(len(ids) for ids, _ in docs)
  cpu, wall = _cpu_seconds(), time.perf_counter()
  pairs = count(docs)
  return dict(tokens=tokens, cpu=_cpu_seconds() - cpu, wall=time.perf_counter() - wall,
              pairs=2 * sum(pairs.values()), processes=1)


def _stage_ngrams(data_dir):
  from informask_jax.stats import ngrams

  ds, info, continuation = _load(data_dir)
  for _ in range(2):  # warm-up, then the timed pass
    cpu, wall = _cpu_seconds(), time.perf_counter()
    vocab = ngrams.build_ngram_vocab(ds, vocab_size=info["vocab_size"],
                                     special_ids=info["special_ids"], continuation=continuation,
                                     size=info["ngram_vocab_size"],
                                     min_count=info["ngram_min_count"])
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
  return dict(tokens=info["num_tokens"], cpu=cpu, wall=wall, ngrams=len(vocab.ngrams),
              processes=1)


def _stage_build(data_dir):
  from configs import base
  from informask_jax import data, stats

  config = base.get_base_config("tiny")
  pipeline = data.build_input_pipeline(config)
  with tempfile.TemporaryDirectory() as cache:
    config.data.cache_dir = cache
    cpu, wall = _cpu_seconds(), time.perf_counter()
    directory = stats.build_artifacts(config, pipeline, progress=False)
    out = dict(cpu=_cpu_seconds() - cpu, wall=time.perf_counter() - wall)
    with open(directory / "meta.json") as f:
      meta = json.load(f)
  return dict(out, tokens=meta["counts"]["num_tokens"], stage_seconds=meta["seconds"],
              processes=1)


def _child(queue, fn, args):
  try:
    out = fn(*args)
    out["peak_rss_mb"] = _peak_rss_mb()
    queue.put(out)
  except BaseException as e:  # noqa: BLE001 - reported by the parent
    queue.put({"error": repr(e)})


def run_stage(fn, *args):
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  proc = ctx.Process(target=_child, args=(queue, fn, args))
  proc.start()
  out = queue.get()
  proc.join()
  if "error" in out:
    raise RuntimeError(f"{fn.__name__}: {out['error']}")
  return out


def prepare(data_dir):
  """Builds the tiny pipeline once (cached) and saves what the stage processes read."""
  import numpy as np

  from configs import base
  from informask_jax import data
  from informask_jax.stats import counting

  config = base.get_base_config("tiny")
  pipeline = data.build_input_pipeline(config)
  pipeline.tokenized_train.save_to_disk(os.path.join(data_dir, "tokenized"))
  np.save(os.path.join(data_dir, "continuation.npy"), pipeline.continuation)
  s = config.stats
  sid = pipeline.special_ids
  v = int(len(pipeline.continuation))
  uni = counting.count_unigrams(pipeline.tokenized_train, v)
  info = dict(vocab_size=v, special_ids=[sid.pad, sid.unk, sid.cls, sid.sep, sid.mask],
              pmi_vocab_size=s.pmi_vocab_size, min_count=s.min_count,
              min_pair_count=s.min_pair_count, memory_cap_mb=s.memory_cap_mb,
              ngram_vocab_size=s.ngram_vocab_size, ngram_min_count=s.ngram_min_count,
              num_tokens=uni.num_tokens)
  with open(os.path.join(data_dir, "info.json"), "w") as f:
    json.dump(info, f)
  return info


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="", help="JSON file for the records.")
  parser.add_argument("--python_docs", type=int, default=1500,
                      help="Documents the pure-Python reference counts (it is slow).")
  parser.add_argument("--cap_mb", type=float, default=16.0,
                      help="memory_cap_mb of the capped-counting stages.")
  args = parser.parse_args()
  if args.python_docs < 1:  # The reference's rate is the ratio's denominator.
    parser.error(f"--python_docs {args.python_docs}: give at least 1 document.")
  if not args.cap_mb > 0:  # 0 would fall back to the config's cap, recorded as 0.
    parser.error(f"--cap_mb {args.cap_mb:g}: give a cap above 0 MB.")

  records = []
  with tempfile.TemporaryDirectory() as data_dir:
    info = prepare(data_dir)
    runs = [
        ("informask_jax", "counting", _stage_counting, (data_dir,)),
        ("python_counter", "counting", _stage_python, (data_dir, args.python_docs)),
        ("informask_jax", "ngrams", _stage_ngrams, (data_dir,)),
        ("informask_jax", "build", _stage_build, (data_dir,)),
        # Shards of 128k tokens over 2 worker processes (spawned: their start-up is counted).
        ("informask_jax", "counting_2proc", _stage_counting, (data_dir, None, 1, 2)),
        ("informask_jax", "counting_cap_x1", _stage_counting, (data_dir, args.cap_mb, 1)),
        ("informask_jax", "counting_cap_x4", _stage_counting, (data_dir, args.cap_mb, 4)),
    ]
    for impl, stage, fn, fn_args in runs:
      out = run_stage(fn, *fn_args)
      rec = dict(impl=impl, stage=stage,
                 tokens_per_sec_per_core=out["tokens"] / max(out["cpu"], 1e-9),
                 peak_rss_mb=round(out["peak_rss_mb"], 1),
                 wall_tokens_per_sec=out["tokens"] / max(out["wall"], 1e-9),
                 tokens=out["tokens"], cpu_seconds=round(out["cpu"], 3),
                 wall_seconds=round(out["wall"], 3), processes=out["processes"])
      if "stage_seconds" in out:
        rec["stage_seconds"] = out["stage_seconds"]
      if stage.startswith("counting_cap"):
        rec["memory_cap_mb"] = args.cap_mb
      records.append(rec)
      print(f"{impl:15s} {stage:16s} {rec['tokens_per_sec_per_core'] / 1e6:8.3f} M tok/s/core "
            f"{rec['peak_rss_mb']:8.1f} MB  ({out['tokens']} tokens, {out['cpu']:.2f} s CPU, "
            f"{out['wall']:.2f} s wall)", flush=True)

  if args.out:  # Before the summary: the records are what a rerun would cost.
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
    print(f"wrote {args.out}")
  ours = next(r for r in records if r["impl"] == "informask_jax" and r["stage"] == "counting")
  ref = next(r for r in records if r["impl"] == "python_counter")
  ratio = ours["tokens_per_sec_per_core"] / ref["tokens_per_sec_per_core"]
  print(f"\ncounting: {ratio:.1f}x the pure-Python Counter reference per core "
        f"(tiny corpus, {info['num_tokens']} tokens, PMI vocabulary {info['pmi_vocab_size']})")
  x1, x4 = (next(r for r in records if r["stage"] == s)
            for s in ("counting_cap_x1", "counting_cap_x4"))
  print(f"memory with a {args.cap_mb:g} MB cap: {x1['peak_rss_mb']:.0f} MB for the corpus, "
        f"{x4['peak_rss_mb']:.0f} MB for 4 copies of it")
  build = next(r for r in records if r["stage"] == "build")
  print("\nProjection to English Wikipedia + BookCorpus (~4.3B tokens) at these per-core rates:")
  for r in (ours, next(r for r in records if r["stage"] == "ngrams")):
    hours = PAPER_TOKENS / r["tokens_per_sec_per_core"] / 3600
    print(f"  {r['stage']:10s} {hours:6.2f} core-hours ({hours * 60 / 8:5.1f} min on 8 cores)")
  print(f"  (the tiny build took {build['wall_seconds']:.1f} s: {build.get('stage_seconds')})")


if __name__ == "__main__":
  main()
