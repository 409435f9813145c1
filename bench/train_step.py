"""Train-step throughput: informask_jax's jitted step against Hugging Face's BERT MLM steps.

  python bench/train_step.py [--sizes tiny,mini] [--batch 16] [--seq_len 128] [--repeats 5]
                             [--peers hf_torch_eager,hf_torch_compile,hf_flax]
                             [--dtype float32|bfloat16]
                             [--masking informask|random|informask_online[,...]]
                             [--scan_layers] [--attention xla|cudnn] [--attention_dropout P]
                             [--profile] [--torch_cache] [--hf_flax_python PATH] [--out FILE]

Every implementation trains the same BERT: vocabulary 30,522, the size's layers / hidden / heads
/ MLP from configs.base.MODEL_SIZES, dropout 0.1 on embeddings and residual branches,
--attention_dropout on attention probabilities (default: configs/informask.py:paper's, as BERT
and RoBERTa train; with it > 0 our model computes attention unfused while training, so
--attention cudnn needs --attention_dropout 0: faster, but not the paper's recipe), AdamW (b2
0.999, eps 1e-6, weight decay 0.01) after global-norm clipping at 1.0, on one batch of packed
sequences ([CLS] ... [SEP], no padding) with 15% of the maskable tokens as targets. A step is
masking + forward + backward + update:

  informask_jax     trainer.make_train_step, jitted on a mesh over all devices (one when peers run,
                    each of which has one; "devices" in the records): masking inside the
                    step (informask with a synthetic rate table, or random; both "exact" budget),
                    the vocabulary projection and the last layer (but for its keys and
                    values) only at the P gathered targets.
  hf_torch_eager    transformers' BertForMaskedLM (SDPA attention) with labels -100 off target, so
                    the vocabulary projection and the softmax run at every token; masked by
                    DataCollatorForLanguageModeling.torch_mask_tokens (Bernoulli 15%, 80/10/10);
                    torch.optim.AdamW (fused where torch has it).
  hf_torch_compile  the same model wrapped in torch.compile (skipped, with the error, if it fails).
  hf_flax           transformers 4.57's FlaxBertForMaskedLM (v5 has no Flax models; recorded, and
                    skipped, as "hf_flax_457", the version in the name) in the style of
                    run_mlm_flax: host-side NumPy masking, one-hot cross entropy at every token,
                    optax.adamw, one jitted step. It runs in a separate virtualenv, driven by this
                    script over a pipe; build it once with
                      python -m venv /tmp/hf457venv && /tmp/hf457venv/bin/pip install \
                        "transformers==4.57.*" "jax[cpu]==0.4.38" "flax==0.10.2" optax "numpy<2.3"

For each size: every implementation runs a first step (its wall time, compile included, is
compile_s; torch.compile's disk caches are off unless --torch_cache, as JAX has none here) and
one warm-up step, then --repeats rounds of one step each, the implementations interleaved (in
alternating order) so that load from other processes falls on all of them. The median step time
gives tokens/s; ratios are given from the medians and as the median of the per-round ratios.
FLOPs are matmul FLOPs (model.train_flops_per_sequence): the step's own (peers: the vocabulary
projection and the last layer at every token) give achieved GFLOP/s; the FLOPs the step needs
(both at the P targets only) over the device peak give MFU (None where the peak is unknown, CPUs
included).
--profile times the parts of our step separately.
"""

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 30522  # bert-base-uncased's vocabulary.
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # Its special ids.
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
FIRST_WORD_ID = 1996  # Ids below are [unused*] and punctuation; sample "words" above it.
MASK_PROB = 0.15
OPTIM = dict(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, clip=1.0)
PEERS = ("hf_torch_eager", "hf_torch_compile", "hf_flax")
MASKINGS = ("informask", "random", "informask_online")  # Our step's, for --masking.
FLAX_PYTHON = "/tmp/hf457venv/bin/python"


def make_tokens(batch, seq_len, seed=0):
  """int32 (B, L): packed sequences [CLS] w ... w [SEP] of random word-piece ids."""
  import numpy as np
  tokens = np.random.default_rng(seed).integers(FIRST_WORD_ID, V, (batch, seq_len))
  tokens[:, 0], tokens[:, -1] = CLS, SEP
  return tokens.astype(np.int32)


def max_predictions(seq_len):
  """Targets gathered per sequence: 15% of L up to a multiple of 4 (20 at 128, 80 at 512)."""
  return 4 * math.ceil(MASK_PROB * seq_len / 4)


def bert_config_kwargs(dims, attention_dropout):
  """transformers.BertConfig arguments for a size of configs.base.MODEL_SIZES."""
  return dict(vocab_size=V, hidden_size=dims["hidden_size"], num_hidden_layers=dims["num_layers"],
              num_attention_heads=dims["num_heads"], intermediate_size=dims["mlp_size"],
              hidden_act="gelu", hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=attention_dropout,
              max_position_embeddings=512, type_vocab_size=2, pad_token_id=PAD,
              layer_norm_eps=1e-12)


# --- Ours -------------------------------------------------------------------------------------

class Ours:
  """Our train step on a data-parallel mesh over `num_devices` devices of the default backend."""

  impl = "informask_jax"

  def __init__(self, size, batch, seq_len, dtype, masking_name, scan_layers, attention,
               attention_dropout, num_devices):
    import jax
    import numpy as np

    from configs import base
    from informask_jax import masking, optim
    from informask_jax import model as model_lib
    from informask_jax import sharding as sharding_lib
    from informask_jax import trainer as trainer_lib

    c = base.get_base_config("tiny")
    c.model.size = size
    c.model.flavour = "bert"
    c.model.compute_dtype = dtype
    c.model.scan_layers = scan_layers
    c.model.attention = attention
    # The tiny config has none (its step is the quick start's); the bench's default is the paper's.
    c.model.attention_dropout = attention_dropout
    c.model.max_predictions = max_predictions(seq_len)
    c.optim.learning_rate = OPTIM["learning_rate"]
    c.optim.b1, c.optim.b2, c.optim.eps = OPTIM["b1"], OPTIM["b2"], OPTIM["eps"]
    c.optim.weight_decay, c.optim.grad_clip_norm = OPTIM["weight_decay"], OPTIM["clip"]
    self.config = c
    self.cfg = model_lib.MLMConfig.from_config(c.model, vocab_size=V, pad_id=PAD)
    self.model = model_lib.BertMLM(self.cfg)
    self.tx, schedule = optim.make_optimizer(c.optim, 1000)
    self.apply_update = optim.make_apply_update(c.optim, schedule)
    self.num_devices, self.masking_name = num_devices, masking_name
    self.mesh = sharding_lib.make_mesh(c.mesh, jax.devices()[:num_devices])
    sharding_lib.check_batch_divisible(batch, self.mesh)
    self.rules = sharding_lib.logical_rules(c.mesh)
    options = {}
    if masking_name == "informask":
      # A synthetic rate table (log-uniform in [0.03, 0.5]): masking cost does not depend on it.
      rates = np.exp(np.random.default_rng(1).uniform(np.log(0.03), np.log(0.5), V))
      rates[list(SPECIAL)] = 0.0
      options["rates"] = rates.astype(np.float32)
    elif masking_name == "informask_online":
      # A synthetic symmetric PMI over 16,384 frequent ids (the :paper stats.pmi_vocab_size), ~2%
      # dense: the cost of sample-and-score (K candidates, a dense table lookup) does not depend
      # on the values.
      import scipy.sparse

      rng = np.random.default_rng(1)
      rows = rng.choice(np.arange(len(SPECIAL) + 1000, V), 16384, replace=False)
      nnz = 2_000_000
      pmi = scipy.sparse.coo_matrix((rng.uniform(0, 5, nnz).astype(np.float32),
                                     (rng.choice(rows, nnz), rng.choice(rows, nnz))), shape=(V, V))
      options["pmi"] = (pmi + pmi.T).tocoo()
      options["num_candidates"] = 16
    self.masker = masking.get_masker(masking_name, vocab_size=V, mask_id=MASK,
                                     special_ids=SPECIAL, mask_prob=MASK_PROB, **options)
    self.num_predictions = c.model.max_predictions
    self.state, shardings = trainer_lib.init_train_state(self.model, self.tx, 0, seq_len,
                                                         self.mesh, self.rules)
    self.train_step = trainer_lib.jit_train_step(
        trainer_lib.make_train_step(self.model, self.tx, schedule,
                                    trainer_lib.StepConfig(self.num_predictions),
                                    self.apply_update),
        shardings, self.mesh, self.masker)
    tokens = make_tokens(batch, seq_len)
    self.batch = jax.device_put({"token_ids": tokens}, sharding_lib.batch_sharding(self.mesh))
    self.flops = batch * model_lib.train_flops_per_sequence(self.cfg, seq_len,
                                                            self.num_predictions)

  @contextlib.contextmanager
  def context(self):
    """The mesh and logical rules the step is traced and run under, as in the training loop."""
    import flax.linen as nn
    import jax
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def step(self):
    import jax
    start = time.perf_counter()
    with self.context():
      self.state, metrics = self.train_step(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def close(self):
    del self.state


# --- Hugging Face PyTorch ---------------------------------------------------------------------

def hf_collator():
  """DataCollatorForLanguageModeling over a BERT tokenizer with bert-base-uncased's special ids.

  The hub is out of reach, so the vocabulary is synthetic: the special tokens at their real ids,
  filler word pieces elsewhere. The collator only needs the special ids and the vocabulary size.
  """
  import transformers
  names = {PAD: "[PAD]", UNK: "[UNK]", CLS: "[CLS]", SEP: "[SEP]", MASK: "[MASK]"}
  vocab = {names.get(i, f"[unused{i}]" if i < FIRST_WORD_ID else f"w{i}"): i for i in range(V)}
  tokenizer = transformers.BertTokenizerFast(vocab=vocab)
  if len(tokenizer) != V or tokenizer.mask_token_id != MASK:
    raise RuntimeError(f"synthetic tokenizer: {len(tokenizer)} ids, "
                       f"[MASK]={tokenizer.mask_token_id}")
  return transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASK_PROB,
                                                      return_tensors="pt", seed=0)


class HFTorch:
  """BertForMaskedLM trained as the Trainer would: collator masking, loss at every token."""

  def __init__(self, compiled, dims, batch, seq_len, dtype, attention_dropout, cold_compile=True):
    import torch
    import transformers

    self.impl = "hf_torch_compile" if compiled else "hf_torch_eager"
    self.torch = torch
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = transformers.BertConfig(**bert_config_kwargs(dims, attention_dropout))
    self.model = transformers.BertForMaskedLM(config).to(self.device).train()
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    adamw = dict(lr=OPTIM["learning_rate"], betas=(OPTIM["b1"], OPTIM["b2"]), eps=OPTIM["eps"],
                 weight_decay=OPTIM["weight_decay"])
    try:  # Fused AdamW (one kernel over all parameters) is the fastest torch has, where it has it.
      self.optimizer = torch.optim.AdamW(self.params, fused=True, **adamw)
    except (RuntimeError, TypeError):
      self.optimizer = torch.optim.AdamW(self.params, **adamw)
    if compiled and cold_compile:  # Time a first compile, not a load from inductor's disk cache.
      torch.compiler.config.force_disable_caches = True
    self.forward = torch.compile(self.model) if compiled else self.model
    self.collator = hf_collator()
    self.tokens = torch.from_numpy(make_tokens(batch, seq_len)).long()
    self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                     if dtype == "bfloat16" else None)
    self.flops = None  # Set by the caller: it knows the FLOP formula.

  def step(self):
    torch = self.torch
    start = time.perf_counter()
    # The collator works on CPU tensors, as in a DataLoader; then the batch moves to the device.
    inputs, labels = self.collator.torch_mask_tokens(self.tokens.clone())
    inputs, labels = inputs.to(self.device), labels.to(self.device)
    if self.autocast is None:
      loss = self.forward(input_ids=inputs, labels=labels).loss
    else:
      with self.autocast:
        loss = self.forward(input_ids=inputs, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, OPTIM["clip"])
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    if self.device.type == "cuda":
      torch.cuda.synchronize()
    else:
      loss.item()
    return time.perf_counter() - start

  def close(self):
    del self.model, self.forward, self.optimizer


# --- Hugging Face Flax (transformers 4.57, separate virtualenv) -------------------------------

class HFFlax:
  """Drives `hf_flax_worker` in the other virtualenv: one JSON line per request and per reply."""

  impl = "hf_flax_457"

  def __init__(self, python, dims, batch, seq_len, dtype, attention_dropout):
    if not os.path.exists(python):
      raise FileNotFoundError(f"{python} does not exist (build the venv: see this file's "
                              "docstring)")
    self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115 (closed in close)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--hf_flax_worker"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                 text=True, env=env, cwd=tempfile.gettempdir())
    self.flops = None
    self.versions = self._ask(dict(bert_config=bert_config_kwargs(dims, attention_dropout),
                                   dtype=dtype,
                                   tokens=make_tokens(batch, seq_len).tolist()))["versions"]

  def _ask(self, request):
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    reply = json.loads(line) if line else {"error": "worker exited"}
    if "error" in reply:
      self.log.seek(0)
      tail = " | ".join(self.log.read().strip().splitlines()[-3:])
      raise RuntimeError(f"{reply['error']} {tail}".strip())
    return reply

  def step(self):
    return self._ask({"cmd": "step"})["seconds"]

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    self.log.close()


def hf_flax_worker():
  """Runs in the transformers 4.57 venv: builds the Flax step, then times one step per request."""
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # Anything a library prints goes to the log, not into the protocol.

  def reply(**fields):
    replies.write(json.dumps(fields) + "\n")

  try:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import transformers

    request = json.loads(sys.stdin.readline())
    dtype = jnp.bfloat16 if request["dtype"] == "bfloat16" else jnp.float32
    model = transformers.FlaxBertForMaskedLM(transformers.BertConfig(**request["bert_config"]),
                                             seed=0, dtype=dtype)
    tokens = np.asarray(request["tokens"], np.int32)  # (B, L)
    # Biases and LayerNorm scales are not decayed, as in run_mlm_flax.
    decay = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", "") not in ("bias", "scale"), params)
    tx = optax.chain(optax.clip_by_global_norm(OPTIM["clip"]), optax.adamw(
        OPTIM["learning_rate"], b1=OPTIM["b1"], b2=OPTIM["b2"], eps=OPTIM["eps"],
        weight_decay=OPTIM["weight_decay"], mask=decay))
    params = model.params
    opt_state = tx.init(params)

    def train_step(params, opt_state, input_ids, labels, rng):
      def loss_fn(p):
        logits = model(input_ids, params=p, dropout_rng=rng, train=True)[0]  # (B, L, V)
        weights = (labels > 0).astype(jnp.float32)
        xent = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))
        return (xent * weights).sum() / weights.sum()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    step_fn = jax.jit(train_step, donate_argnums=(0, 1))
    host_rng = np.random.default_rng(0)
    special = np.zeros(V, bool)
    special[list(SPECIAL)] = True

    def mask(tokens):
      """run_mlm_flax's collator recipe in NumPy: Bernoulli 15% targets, then 80/10/10."""
      target = (host_rng.random(tokens.shape) < MASK_PROB) & ~special[tokens]
      labels = np.where(target, tokens, -100)
      u = host_rng.random(tokens.shape)
      inputs = np.where(target & (u < 0.8), MASK, tokens)
      random_ids = host_rng.integers(0, V, tokens.shape)
      inputs = np.where(target & (u >= 0.8) & (u < 0.9), random_ids, inputs)
      return inputs.astype(np.int32), labels.astype(np.int32)

    key = jax.random.PRNGKey(0)
    state = {"params": params, "opt_state": opt_state}

    def timed_step(i):
      start = time.perf_counter()
      inputs, labels = mask(tokens)
      state["params"], state["opt_state"], loss = step_fn(
          state["params"], state["opt_state"], inputs, labels, jax.random.fold_in(key, i))
      loss.block_until_ready()
      return time.perf_counter() - start

    import flax
    reply(versions={"transformers": transformers.__version__, "jax": jax.__version__,
                    "flax": flax.__version__})
    for i in itertools.count():
      request = json.loads(sys.stdin.readline() or '{"cmd": "quit"}')
      if request["cmd"] == "quit":
        return
      reply(seconds=timed_step(i))  # The first request compiles.
  except Exception as e:  # Reported to the parent, which skips this peer with the reason.
    reply(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


# --- Profile of our step ----------------------------------------------------------------------

def profile_ours(ours, repeats):
  """Median times of our step's parts, each jitted alone on the same parameters and batch."""
  import jax
  import jax.numpy as jnp
  import optax

  from informask_jax import model as model_lib
  from informask_jax import trainer as trainer_lib

  model, masker, num_predictions = ours.model, ours.masker, ours.num_predictions
  # Copies: the whole step, timed among the parts, donates (deletes) the state it is given.
  params, opt_state = jax.tree.map(jnp.copy, (ours.state.params, ours.state.opt_state))
  tokens = ours.batch["token_ids"]
  key = jax.random.key(0)

  def targets(rng, token_ids):
    masked = masker(rng, token_ids)
    positions, weights = trainer_lib.gather_targets(masked["mask"], num_predictions)
    labels = jnp.where(weights > 0, jnp.take_along_axis(masked["labels"], positions, axis=1), 0)
    return masked["input_ids"], positions, labels, weights

  def xent(p, inputs, positions, labels, weights, rng):
    logits = model.apply({"params": p}, inputs, masked_positions=positions, deterministic=False,
                         rngs={"dropout": rng})  # (B, P or L, V)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)

  def encoder_only(p, inputs, positions, rng):
    hidden = model.apply({"params": p}, inputs, deterministic=False, rngs={"dropout": rng},
                         positions=positions, method=type(model).encode)  # (B, P or L, H)
    return jnp.mean(hidden.astype(jnp.float32) ** 2)

  def update(p, o, g):
    norm = optax.tree.norm(g)
    return ours.apply_update(p, o, g, norm, jnp.isfinite(norm))

  with ours.context():
    masked = jax.jit(targets)(key, tokens)
    inputs, positions, labels, weights = masked
    length = inputs.shape[1]
    every_token = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), inputs.shape)
    full_labels = jnp.where(jnp.arange(length) % 7 == 0, inputs, 0)  # Any ids will do.
    full_weights = (jnp.arange(length) % 7 == 0).astype(jnp.float32) * jnp.ones_like(inputs)
    grads = jax.grad(xent)(params, inputs, positions, labels, weights, key)
    cfg = ours.cfg
    # The model's own attention sublayer, so that the part follows what the step runs: unfused
    # with dropout on the probabilities when attention_dropout > 0, else the fused kernel asked for.
    attention = model_lib.SelfAttention(cfg)
    x = jax.random.normal(key, (*inputs.shape, cfg.hidden_size), cfg.dtype)  # (B, L, H)
    attention_params = attention.init({"params": key, "dropout": key}, x, inputs != PAD, False)
    attend = lambda p, x: jnp.sum(attention.apply(
        p, x, inputs != PAD, False, rngs={"dropout": key}).astype(jnp.float32) ** 2)
    parts = {
        "masking + target gather": (jax.jit(targets), (key, tokens)),
        "self-attention fwd/bwd, one layer": (jax.jit(jax.grad(attend, argnums=(0, 1))),
                                              (attention_params, x)),
        "embeddings + encoder fwd/bwd, last layer at P": (
            jax.jit(jax.grad(encoder_only)), (params, inputs, positions, key)),
        "embeddings + encoder fwd/bwd, every token": (
            jax.jit(jax.grad(encoder_only)), (params, inputs, every_token, key)),
        "model fwd/bwd, head at P targets": (jax.jit(jax.grad(xent)),
                                             (params, inputs, positions, labels, weights, key)),
        "model fwd/bwd, head at every token": (
            jax.jit(jax.grad(xent)), (params, inputs, every_token, full_labels, full_weights,
                                      key)),
        # Donated, as in the step (in place); on copies made before the clock starts.
        "clip + AdamW update": (jax.jit(update, donate_argnums=(0, 1)),
                                lambda: (*jax.tree.map(jnp.copy, (params, opt_state)), grads)),
    }
    fresh = lambda args: jax.block_until_ready(args()) if callable(args) else args
    for fn, args in parts.values():
      jax.block_until_ready(fn(*fresh(args)))  # Compile.
    # Parts interleaved round by round, like the implementations: the differences taken below
    # then compare times measured under the same load.
    samples = {name: [] for name in (*parts, "whole step")}
    for _ in range(repeats):
      for name, (fn, args) in parts.items():
        args = fresh(args)
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples[name].append(time.perf_counter() - start)
      samples["whole step"].append(ours.step())
  times = {name: statistics.median(values) for name, values in samples.items()}
  encoder = times["embeddings + encoder fwd/bwd, last layer at P"]
  encoder_every_token = times["embeddings + encoder fwd/bwd, every token"]
  # Projections included (earlier runs' profiles timed the core alone, without dropout).
  times["= self-attention, all layers"] = (cfg.num_layers
                                           * times["self-attention fwd/bwd, one layer"])
  times["= MLM head + loss at P targets"] = times["model fwd/bwd, head at P targets"] - encoder
  times["= MLM head + loss at every token"] = (times["model fwd/bwd, head at every token"]
                                               - encoder_every_token)
  return times


# --- Main -------------------------------------------------------------------------------------

PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy")


def versions(packages=PACKAGES):
  import importlib.metadata as md
  out = {}
  for name in packages:
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = None
  return out


def describe_machine(packages=PACKAGES):
  """The machine a bench run measured on, for its JSON (the other bench scripts import it too):
  JAX's backend and devices, cores, Python, package versions and the load average at the start
  (the caller adds load_avg_end and wall_s), so that a number can be traced to its machine."""
  import jax
  return dict(backend=jax.default_backend(), devices=jax.device_count(),
              device_kind=jax.devices()[0].device_kind, cpu_count=os.cpu_count(),
              python=platform.python_version(), load_avg_start=os.getloadavg(),
              versions=versions(packages))


def build_peer(name, dims, args):
  if name == "hf_flax":
    return HFFlax(args.hf_flax_python, dims, args.batch, args.seq_len, args.dtype,
                  args.attention_dropout)
  return HFTorch(name == "hf_torch_compile", dims, args.batch, args.seq_len, args.dtype,
                 args.attention_dropout, cold_compile=not args.torch_cache)


def bench_size(size, args, records, skipped):
  """Builds ours and the peers for one size, runs the interleaved rounds, appends records."""
  import jax

  from configs.base import MODEL_SIZES
  from informask_jax import metrics as metrics_lib
  from informask_jax import model as model_lib

  dims = MODEL_SIZES[size]
  # With peers, one device, as each peer has: else the ratios would compare N devices with one.
  make_ours = lambda name: Ours(  # noqa: E731
      size, args.batch, args.seq_len, args.dtype, name, args.scan_layers, args.attention,
      args.attention_dropout, num_devices=1 if args.peers else jax.device_count())
  ours = make_ours(args.masking[0])
  needed = ours.flops  # FLOPs the step needs: head and last layer at P targets per sequence.
  every_token = args.batch * model_lib.train_flops_per_sequence(ours.cfg, args.seq_len,
                                                                args.seq_len)
  impls = [ours]
  # Our step under the other --masking strategies: timed in the same rounds as the first, so
  # their overhead over it is a paired ratio of one run (informask_online's <= 10% target).
  for name in args.masking[1:]:
    impls.append(make_ours(name))
    impls[-1].impl = f"informask_jax_{name}"
  for name in args.peers:
    try:
      peer = build_peer(name, dims, args)
    except Exception as e:  # A missing or broken peer is skipped with its reason, not fatal.
      recorded = HFFlax.impl if name == "hf_flax" else name  # As its records are named.
      skipped.append(dict(impl=recorded, size=size, reason=f"{type(e).__name__}: {e}"))
      print(f"# {size}: skipping {name}: {type(e).__name__}: {e}", flush=True)
      continue
    peer.flops = every_token
    impls.append(peer)

  first, active = {}, []
  for impl in impls:
    try:
      first[impl.impl] = impl.step()
      impl.step()  # Warm-up: allocator pools, autotuning, second-call paths.
      active.append(impl)
    except Exception as e:
      reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      if isinstance(impl, Ours):  # Another --masking too: its overhead would go unmeasured,
        raise                     # and gpu_checks.sh take the run for complete.
      skipped.append(dict(impl=impl.impl, size=size, reason=reason))
      print(f"# {size}: skipping {impl.impl}: {reason}", flush=True)
      impl.close()
  print(f"# {size}: first steps " + ", ".join(f"{k} {v:.1f}s" for k, v in first.items()),
        flush=True)

  times = {impl.impl: [] for impl in active}
  for r in range(args.repeats):
    for impl in (active if r % 2 == 0 else active[::-1]):
      times[impl.impl].append(impl.step())
  for impl in active:
    seconds = statistics.median(times[impl.impl])
    # Ours over this implementation, from the rounds' pairs: load that comes and goes between
    # rounds cancels out of each pair.
    paired = statistics.median(
        t / o for t, o in zip(times[impl.impl], times[ours.impl], strict=True))
    records.append(dict(
        impl=impl.impl, size=size, batch=args.batch, seq_len=args.seq_len,
        tokens_per_sec=args.batch * args.seq_len / seconds,
        mfu=metrics_lib.mfu(needed, seconds, impl.num_devices if isinstance(impl, Ours) else 1),
        devices=impl.num_devices if isinstance(impl, Ours) else 1,
        compile_s=first[impl.impl], step_s=seconds, step_s_all=times[impl.impl],
        ours_over_impl=seconds / statistics.median(times[ours.impl]),
        ours_over_impl_paired=paired,
        flops_per_step=impl.flops, needed_flops_per_step=needed,
        achieved_gflops=impl.flops / seconds / 1e9, dtype=args.dtype,
        attention_dropout=args.attention_dropout,
        attention=args.attention if isinstance(impl, Ours) else None,
        masking=impl.masking_name if isinstance(impl, Ours) else "bernoulli_collator",
        **({"versions": impl.versions} if isinstance(impl, HFFlax) else {})))
  profile = profile_ours(ours, max(args.repeats, 7)) if args.profile else None
  for impl in active:
    impl.close()
  return profile


def print_table(records, skipped):
  print("\n| size | impl | compile s | step s | tokens/s | GFLOP/step | GFLOP/s | MFU "
        "| ours / impl (medians) | ours / impl (paired) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in records:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    print(f"| {r['size']} | {r['impl']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | "
          f"{r['tokens_per_sec']:,.0f} | {r['flops_per_step'] / 1e9:.1f} | "
          f"{r['achieved_gflops']:.1f} | {mfu} | {r['ours_over_impl']:.2f}x | "
          f"{r['ours_over_impl_paired']:.2f}x |")
  for s in skipped:
    print(f"| {s['size']} | {s['impl']} | skipped: {s['reason'][:160]} ||||||||")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,mini", help="comma-separated configs.base sizes")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation")
  parser.add_argument("--peers", default=",".join(PEERS), help=f"subset of {PEERS}, or ''")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="bfloat16: our compute_dtype, torch autocast, flax dtype")
  parser.add_argument("--masking", default="informask",
                      help=f"our step's masking, one of {MASKINGS}; several, comma-separated: "
                      "the first is the reference the others and the peers are compared with")
  parser.add_argument("--scan_layers", action="store_true", help="nn.scan over our layers")
  parser.add_argument("--attention", default="xla", choices=("xla", "cudnn"),
                      help="our model.attention (cudnn: cuDNN's fused kernel, NVIDIA GPUs only)")
  parser.add_argument("--attention_dropout", type=float, default=None,
                      help="dropout on attention probabilities, every implementation (default: "
                      "configs/informask.py:paper's model.attention_dropout)")
  parser.add_argument("--profile", action="store_true", help="time the parts of our step")
  parser.add_argument("--torch_cache", action="store_true",
                      help="let torch.compile load from its disk caches (compile_s then is a load)")
  parser.add_argument("--hf_flax_python", default=FLAX_PYTHON,
                      help="python of the transformers 4.57 venv for the hf_flax peer")
  parser.add_argument("--out", help="write the records as JSON here")
  args = parser.parse_args(argv)

  sys.path.insert(0, REPO)
  from configs.base import MODEL_SIZES
  args.sizes = [s for s in args.sizes.split(",") if s]
  args.peers = [p for p in args.peers.split(",") if p]
  bad = [s for s in args.sizes if s not in MODEL_SIZES]
  if bad:
    parser.error(f"--sizes: unknown {bad}; choose from {sorted(MODEL_SIZES)}")
  bad = [p for p in args.peers if p not in PEERS]
  if bad:
    parser.error(f"--peers: unknown {bad}; choose from {PEERS}")
  args.masking = [m for m in args.masking.split(",") if m]
  bad = [m for m in args.masking if m not in MASKINGS]
  if bad or not args.masking or len(set(args.masking)) < len(args.masking):
    parser.error(f"--masking={','.join(args.masking)}: one or more of {MASKINGS}, each once")
  if args.batch < 1 or args.repeats < 1:
    parser.error("--batch and --repeats must be >= 1")
  if not 8 <= args.seq_len <= 512:
    parser.error(f"--seq_len={args.seq_len}: must be in [8, 512] (BERT has 512 positions)")
  import jax
  devices = 1 if args.peers else jax.device_count()  # As bench_size gives our step.
  if args.batch % devices:
    parser.error(f"--batch={args.batch} does not divide over the {devices} devices our step "
                 "runs on without peers (--peers ''): give a multiple of it")
  if args.attention_dropout is None:
    from configs import informask
    args.attention_dropout = float(informask.get_config("paper").model.attention_dropout)
  if not 0 <= args.attention_dropout < 1:
    parser.error(f"--attention_dropout={args.attention_dropout}: must be in [0, 1)")
  if args.attention == "cudnn" and args.attention_dropout > 0:
    # The model then never calls the fused kernel in training: a run so labelled would time XLA's.
    parser.error(f"--attention cudnn needs --attention_dropout 0 (got {args.attention_dropout}): "
                 "with dropout on attention probabilities the model computes attention unfused")

  machine = describe_machine()
  print(f"# {json.dumps(machine)}", flush=True)
  print(f"# batch {args.batch} x {args.seq_len}, {args.dtype}, "
        f"ours: {','.join(args.masking)} masking, "
        f"{args.attention} attention, head at {max_predictions(args.seq_len)} targets/sequence; "
        f"attention dropout {args.attention_dropout} (all)", flush=True)
  records, skipped, profiles = [], [], {}
  start = time.time()
  for size in args.sizes:
    profile = bench_size(size, args, records, skipped)
    if profile:
      profiles[size] = profile
      print(f"\n## Profile of our step, {size} (median s)")
      for name, seconds in profile.items():
        print(f"  {name:48s} {seconds:8.4f}  ({100 * seconds / profile['whole step']:5.1f}%)")
  machine["load_avg_end"] = os.getloadavg()
  machine["wall_s"] = time.time() - start
  print_table(records, skipped)
  print(f"\n# load average at start {machine['load_avg_start']}, at end {machine['load_avg_end']}; "
        f"{machine['wall_s']:.0f}s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(dict(machine=machine, args=vars(args), records=records, skipped=skipped,
                     profiles=profiles), f, indent=1)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
  if sys.argv[1:] == ["--hf_flax_worker"]:
    hf_flax_worker()
  else:
    main()
