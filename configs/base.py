"""Shared base for every experiment config.

Each experiment file (`informask.py`, `random.py`, ...) calls `get_base_config(arg, strategy)` and
sets its masking options. `arg` picks a variant, e.g. `--config configs/informask.py:tiny`:

  (none) / "paper"  the InforMask paper's setting: RoBERTa-base architecture with the
                    bert-base-uncased tokenizer, sequences of 512, global batch 256, English
                    Wikipedia + BookCorpus from the Hugging Face hub, mask_prob 0.15. The
                    optimizer follows BERT / RoBERTa (the repository ran Hugging Face's
                    defaults: lr 5e-5, no warm-up, no weight decay, betas (0.9, 0.999), eps 1e-8).
  "tiny"            the embedded offline default: a 2-layer BERT on the wiki-vital corpus that
                    trains on a 2-core CPU in minutes, no network.
  "base", "large"   the paper's data and recipe with a BERT size ("base" is today the same as
                    the paper's setting).

Every field below with a value other than None is overridable from the command line:
`--config.train.batch_size=64` (a None one, such as a source's `config`, is set in a small
config file: README, Data sources).
"""

import ml_collections

from informask_jax import paths

# Model sizes, named as in Turc et al. 2019 ("Well-Read Students Learn Better") and BERT.
MODEL_SIZES = {
    #          layers hidden heads mlp
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, mlp_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, mlp_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, mlp_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, mlp_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, mlp_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, mlp_size=4096),
}

# The paper's pretraining corpus (English Wikipedia + BookCorpus), read from the Hugging Face hub.
# Not the same snapshot: the InforMask repository (pretrain/download_corpus.py) loaded the
# `wikipedia` dataset's 20220301.en, a loading-script dataset that `datasets` >= 4 no longer
# loads; 20231101.en is the nearest script-free snapshot, newer and larger. (The repository also
# deleted the line breaks inside each article and truncated every article to its first 512
# tokens; here whole articles are packed.)
PAPER_SOURCES = (
    dict(kind="hub", name="wikimedia/wikipedia", config="20231101.en", split="train",
         text_field="text"),
    dict(kind="hub", name="bookcorpus/bookcorpus", config=None, split="train", text_field="text"),
)


def source(kind, name, config=None, split="train", text_field="text", streaming=False):
  """A corpus source; `kind` is "wiki_vital" (embedded), "hub" or "files" (name = path or glob)."""
  return ml_collections.ConfigDict(dict(kind=kind, name=name, config=config, split=split,
                                        text_field=text_field, streaming=streaming))


def get_base_config(arg=None, strategy="informask"):
  variant = (arg or "paper").strip()
  if variant not in ("paper", "tiny", "base", "large"):
    raise ValueError(f"Unknown config variant {variant!r}; choose one of paper, tiny, base, large "
                     "(e.g. --config configs/informask.py:tiny).")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.variant = variant  # A record (config.json): choose it as configs/NAME.py:VARIANT.

  # --- Corpus and input pipeline -----------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  # A list of sources concatenated into one corpus. kind: "wiki_vital" (embedded, offline),
  # "hub" (datasets.load_dataset(name, config)), "files" (local .txt/.jsonl/.parquet path or glob).
  c.data.sources = ([source("wiki_vital", "wiki_vital", text_field="extract")] if tiny
                    else [source(**s) for s in PAPER_SOURCES])
  c.data.seq_len = 128 if tiny else 512  # Tokens per sequence, [CLS] and [SEP] included.
  # "full_sentences": documents concatenated with [SEP] and cut every seq_len - 2 tokens, a
  # sentence split at a row's edge (as run_mlm.py's group_texts; RoBERTa's FULL-SENTENCES
  # inputs also cross documents, but end at a sentence's end);
  # "doc_padded": one document per sequence, split if longer, padded (close to the InforMask
  # repository, which pads each line to 512 but truncates longer ones).
  c.data.packing = "full_sentences"
  # Share of documents held out, by a hash of the title (wiki_vital) or of the text (others).
  c.data.validation_fraction = 0.02
  c.data.cache_dir = paths.default_cache_dir()  # Tokenized corpora and statistics (~/.cache).
  # Worker processes for loading, cleaning and tokenizing a large corpus (50,000+ documents) and
  # for counting its statistics; a small corpus is handled in one process. Workers are spawned,
  # not forked (JAX's threads are running by then), and each pays a few seconds of imports.
  # More than the CPUs the process may use is warned (the extra workers only add memory).
  c.data.num_proc = 2 if tiny else 8
  # Use only the first N documents (-1: all), for quick experiments. A streaming source's length
  # is unknown ahead, so each streaming source is cut at N on its own.
  c.data.max_documents = -1
  c.data.prefetch = 2  # Batches prepared ahead of the train step.

  # --- Tokenizer ---------------------------------------------------------------------------
  c.tokenizer = ml_collections.ConfigDict()
  # A hub name, a tokenizer directory or a vocab.txt path; "" trains a WordPiece vocabulary on
  # the configured corpus (deterministic, cached).
  c.tokenizer.name_or_path = "" if tiny else "bert-base-uncased"
  c.tokenizer.vocab_size = 8192  # Size of a trained vocabulary (ignored when loading one).
  # Lower-case and strip accents, as bert-base-uncased, when building the tokenizer (a vocab.txt,
  # a trained vocabulary); a saved or hub tokenizer keeps its own normaliser.
  c.tokenizer.lowercase = True

  # --- Masking -----------------------------------------------------------------------------
  c.masking = ml_collections.ConfigDict()
  c.masking.name = strategy  # random | whole_word | span | pmi_span | informask | informask_online
  c.masking.mask_prob = 0.15  # Fraction of maskable tokens that become prediction targets.
  c.masking.replace_prob = 0.8  # Of the targets: share replaced by [MASK] ...
  c.masking.random_prob = 0.1  # ... and by a random token; the rest keep the original token.
  c.masking.budget = "exact"  # "exact": round(mask_prob * maskable) per sequence; "bernoulli".
  c.masking.span_geometric_p = 0.2  # span: span length ~ Geometric(p), in words (SpanBERT).
  c.masking.span_max_len = 10  # span: lengths restricted to 1..this many words (renormalised).
  c.masking.pmi_variant = "ngram"  # pmi_span: "ngram" (Levine et al.) or "bigram" (InforMask repo).
  # informask_online: candidate masks scored per sequence (K); also the K with which the
  # statistics compute informask's rates from the corpus. This project's default: the InforMask
  # repository ships its rate table (vocab/id_mask_prob.json) but not the code or the K that made
  # it (bench/RESULTS.md, "Rates against the original InforMask table": K = 64 agrees better).
  c.masking.num_candidates = 16
  # informask: path of the rate table (.npy or id_mask_prob.json); "" builds it from the corpus.
  c.masking.rates_path = ""
  # informask, budget "bernoulli": p = rate rescaled per sequence to mask_prob (True), or the
  # rate as stored (False: the InforMask repository's `rand < prob`).
  c.masking.rescale = True
  # informask, id_mask_prob.json tables: rate of ids the file lacks ("mean", or a number as a
  # string; the repository's behaviour is "0": never masked).
  c.masking.missing_rate = "mean"

  # --- Corpus statistics (PMI, rates, n-gram vocabulary) ------------------------------------
  # This project's settings: the InforMask repository holds no statistics code (only the finished
  # rate table), so the PMI vocabulary, thresholds and smoothing below are not taken from it.
  c.stats = ml_collections.ConfigDict()
  c.stats.pmi_vocab_size = 4096 if tiny else 16384  # Top-N frequent non-special tokens.
  c.stats.min_count = 5 if tiny else 50  # Minimum unigram count for the PMI vocabulary.
  c.stats.min_pair_count = 2 if tiny else 10  # Pairs seen fewer times get no PMI.
  c.stats.window = 0  # Co-occurrence window in tokens within a sentence; 0: whole sentence.
  c.stats.drop_top_k = 0  # Leave the k most frequent tokens out of the PMI vocabulary.
  # Pairs stay token pairs; True: pieces of one word (a token and its ## pieces) are never
  # paired with each other, and the window counts words.
  c.stats.whole_words = False
  # window and whole_words change which co-occurrences the PMI counts; informative relevance
  # (the informask_online score and the rate stage) pairs any two tokens of a sentence.
  c.stats.context_alpha = 1.0  # Context-distribution smoothing exponent (0.75 in word2vec).
  c.stats.positive_only = True  # Clip negative PMI to 0 (PPMI).
  # pmi_span: size of the n-gram vocabulary; the bigram variant's pair table holds half as many.
  c.stats.ngram_vocab_size = 20000 if tiny else 800000
  c.stats.ngram_min_count = 5 if tiny else 10  # pmi_span: n-grams seen fewer times are left out.
  # Training rows scored for the rates (0: every row).
  c.stats.rate_sample_sequences = 4096 if tiny else 200000
  c.stats.rate_smoothing = 10.0  # Pseudo-count pulling rare tokens' rates toward the mean.
  c.stats.memory_cap_mb = 2048  # Counting flushes partial counts to disk above this.

  # --- Model -------------------------------------------------------------------------------
  size = "tiny" if tiny else ("large" if variant == "large" else "base")
  c.model = ml_collections.ConfigDict()
  c.model.size = size  # One of configs.base.MODEL_SIZES; sets the four fields below.
  c.model.num_layers = -1  # -1: from size.
  c.model.hidden_size = -1  # -1: from size; likewise the next two.
  c.model.num_heads = -1
  c.model.mlp_size = -1  # Width of the feed-forward layer (4 x hidden in every size).
  # "roberta": RoBERTa layout (positions offset past the padding id, 514 positions), the
  # architecture of the paper's InformBERT (whose released config differs in details: position
  # padding index 1 with the BERT vocabulary's [PAD] = 0, which this layout cannot express, as
  # positions here start after the tokenizer's padding id; LayerNorm eps 1e-12, two token types);
  # "bert": BERT layout (512 positions, token types).
  c.model.flavour = "bert" if tiny else "roberta"
  c.model.max_positions = -1  # -1: 512 (bert) or 514 (roberta).
  c.model.type_vocab_size = -1  # Token-type (segment) rows; -1: 2 (bert) or 1 (roberta).
  # LayerNorm epsilon; -1: 1e-12 (bert) or 1e-5 (roberta). Training from an imported checkpoint
  # (init_from) needs the checkpoint's own, as its token types and positions (the refusal names
  # the flags that match them).
  c.model.layer_norm_eps = -1.0
  c.model.dropout = 0.1  # Dropout on embeddings and residual branches (the MLM head has none).
  # On attention probabilities: 0.1 as in BERT, RoBERTa and InforMask's training; > 0 computes
  # attention unfused while training (the fused cuDNN kernel has no dropout), so 0 is faster.
  c.model.attention_dropout = 0.0 if tiny else 0.1
  c.model.compute_dtype = "float32" if tiny else "bfloat16"  # Parameters stay float32.
  c.model.attention = "xla"  # jax.nn.dot_product_attention implementation: "xla" or "cudnn".
  c.model.remat = "none"  # Rematerialisation: "none", "full" or "dots" (save matmul outputs).
  c.model.scan_layers = not tiny  # nn.scan over layers: one compiled layer, faster compiles.
  # Vocabulary projection only at up to this many targets per sequence (NVIDIA's BERT); the
  # last layer, but for its keys and values, runs only at those rows too.
  c.model.max_predictions = 20 if tiny else 80

  # --- Optimizer ---------------------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3 if tiny else 1e-4  # Peak learning rate.
  c.optim.warmup_steps = 50 if tiny else 10_000  # Linear warm-up from 0 to the peak rate.
  c.optim.schedule = "linear"  # Decay after warm-up: "linear" or "cosine", to 0 at num_steps.
  c.optim.weight_decay = 0.01  # AdamW decay; never applied to biases and LayerNorm.
  c.optim.b1 = 0.9  # Adam moments' decay rates and epsilon (RoBERTa's for the paper).
  c.optim.b2 = 0.98 if not tiny else 0.999
  c.optim.eps = 1e-6
  c.optim.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
  c.optim.grad_accum_steps = 1  # Micro-batches per step; batch_size must divide by it.

  # --- Training loop -----------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  # 40 passes over the tokens: Wikipedia + BookCorpus (~3.3B words, ~4.3B WordPiece tokens) is
  # ~33k packed steps per epoch at 256 x 512, hence ~1.3M steps. Those are BERT's corpus sizes
  # (2.5B + 0.8B words); the 20231101 Wikipedia of PAPER_SOURCES holds more text, so 1.3M steps
  # are fewer than 40 of its passes: for exactly 40, set num_steps = 40 x (training rows, which
  # the input pipeline logs as "train: N rows") / 256. (The repository's 40 epochs are over lines
  # padded or truncated to 512, about 80M rows: far more steps, over less of each article.)
  c.train.num_steps = 400 if tiny else 1_300_000
  c.train.batch_size = 32 if tiny else 256  # Global batch, split over hosts and devices.
  c.train.seed = 0  # Parameter initialisation, batch order and masks.
  c.train.log_every = 20 if tiny else 100  # Steps per line of metrics.jsonl / TensorBoard.
  c.train.eval_every = 100 if tiny else 10_000  # Steps between validation evals (and the end).
  # Validation batches per evaluation (-1: the whole split; tiny's holds 7 batches of 32); fewer
  # than the split holds read a fixed sample of its rows, spread over every source.
  c.train.eval_batches = -1 if tiny else 100
  c.train.checkpoint_every = 200 if tiny else 5_000  # Steps between checkpoints (and the end).
  c.train.keep_checkpoints = 2  # Latest checkpoints kept (the best by eval loss is kept too).
  c.train.resume = True  # Resume from the workdir's latest checkpoint when there is one.
  c.train.overwrite = False  # With resume=False, allow starting over in a non-empty workdir.
  c.train.max_consecutive_skips = 10  # Stop after this many non-finite steps in a row.
  # Dynamic loss scaling of the backward pass: "auto" (on under model.compute_dtype="float16",
  # whose range the gradient sums can overflow; off under bfloat16 and float32), "dynamic" or
  # "off". The scale starts at 1, halves at each non-finite step (skipped; counted towards
  # max_consecutive_skips only once the scale is at its floor, 2**-24, or when the loss itself is
  # non-finite) and doubles after 2000 finite steps in a row; logged as loss_scale.
  c.train.loss_scaling = "auto"
  # Several processes: every this many steps they agree whether one got SIGTERM / SIGINT, and
  # then all save at the same step (a process saving alone would wait forever for the others).
  c.train.stop_sync_every = 10
  # jax.profiler trace of `profile_steps` steps after step `profile_start_step` (-1: none) into
  # workdir/profile; view it with TensorBoard's profile plugin or ui.perfetto.dev. Start after
  # the first step, which compiles; the traced steps' tokens/s include the tracer's cost.
  c.train.profile_start_step = -1
  c.train.profile_steps = 5

  # --- Device mesh and sharding ------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis; -1 takes the devices left by the other axes.
  c.mesh.fsdp = 1  # Fully sharded data parallel: parameters and batch split over it.
  c.mesh.tensor = 1  # Tensor (model) parallel: heads, MLP and vocabulary split over it.
  # Logical axis name -> mesh axes. The model names logical axes only.
  c.mesh.logical_axis_rules = (
      # Batch dimension of activations. Input batches arrive split over data x fsdp, so
      # other axes here add resharding, not another batch split.
      ("activation_batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("layers", None),
  )

  # Initialise parameters from a workdir: a training run's, or one convert_checkpoint.py
  # --from-hf wrote ("": random).
  c.init_from = ""
  return c
