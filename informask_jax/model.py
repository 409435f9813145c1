"""A Flax BERT / RoBERTa encoder with a masked-language-model head.

Written to match Hugging Face's `BertForMaskedLM` and `RobertaForMaskedLM` numerically (post-LN
layers, exact-erf GELU, a decoder tied to the word embeddings plus an output bias), so that
`hf_mapping.py` can convert weights in both directions with a name table and transposes only.

Parameters carry logical axis names ("vocab", "embed", "heads", "kv", "mlp", "layers"); the rules
that map them to mesh axes live in the config and are applied by `sharding.py`. The model itself
knows nothing about devices.

Three departures from the Hugging Face models, all for speed, none visible in exported weights:
  * the vocabulary projection runs only at the gathered target positions (`masked_positions`), as
    NVIDIA's BERT does, instead of at every token;
  * attention uses `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs that support it)
    unless attention-probability dropout is requested, which that kernel cannot apply;
  * dropout masks are hashed from the key and the element's index (`Dropout`), not drawn with
    threefry; the same rate and scaling, another random stream.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from informask_jax.masking import prng

Array = jax.Array

_FLOAT32_TINY = float(jnp.finfo(jnp.float32).tiny)

# Logical axis names used by the parameters and activations below.
VOCAB, EMBED, HEADS, KV, MLP, LAYERS = "vocab", "embed", "heads", "kv", "mlp", "layers"
ACT_BATCH = "activation_batch"
LOGICAL_AXES = (VOCAB, EMBED, HEADS, KV, MLP, LAYERS, ACT_BATCH)


@dataclasses.dataclass(frozen=True)
class MLMConfig:
  """Architecture and numerics of the encoder; built from `config.model` by `from_config`."""

  vocab_size: int
  num_layers: int
  hidden_size: int
  num_heads: int
  mlp_size: int
  flavour: str = "bert"  # "bert" or "roberta" (positions offset past the padding index).
  max_positions: int = 512  # Rows of the position table (514 for RoBERTa).
  type_vocab_size: int = 2  # Token-type (segment) rows: 2 for BERT, 1 for RoBERTa.
  pad_id: int = 0
  dropout: float = 0.1  # Embeddings and residual branches (none in the MLM head, as in BERT).
  attention_dropout: float = 0.0  # On attention probabilities; > 0 disables the fused kernel.
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  compute_dtype: str = "float32"  # Activations and matmuls; parameters are always float32.
  attention: str = "xla"  # jax.nn.dot_product_attention implementation: "xla" or "cudnn".
  remat: str = "none"  # "none", "full" (recompute each layer) or "dots" (keep matmul outputs).
  scan_layers: bool = False  # One nn.scan'ed layer instead of num_layers unrolled copies.

  def __post_init__(self):
    for key in ("vocab_size", "num_layers", "hidden_size", "num_heads", "mlp_size",
                "max_positions", "type_vocab_size"):
      value = getattr(self, key)
      if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"model.{key}={value!r} must be a positive integer.")
      # Ids and positions are int32 on the device: a table of 2**31 rows or more failed as the
      # model was built, with an OverflowError from inside jnp.take naming no key.
      if value >= 2**31:
        raise ValueError(f"model.{key}={value!r} must be below 2**31 (ids and positions are "
                         "int32 on the device).")
      # A NumPy integer (len of a tokenizer's array, a table's shape) as int: config.json is
      # written from this config, and json cannot write np.int64.
      object.__setattr__(self, key, int(value))
    # Zero divides by a constant row's zero variance (NaN); below float32's smallest normal the
    # device computes it as 0. (from_config names config.model.layer_norm_eps before this.)
    eps = self.layer_norm_eps
    if isinstance(eps, bool) or not isinstance(eps, int | float) or \
        not _FLOAT32_TINY <= eps < math.inf:
      raise ValueError(f"model.layer_norm_eps={eps!r} must be a finite number >= "
                       f"{_FLOAT32_TINY:.2g} (float32's smallest normal).")
    pad = self.pad_id  # A token id: masks attention (and numbers RoBERTa's positions).
    if isinstance(pad, bool) or not isinstance(pad, int | np.integer) or \
        not 0 <= pad < self.vocab_size:
      raise ValueError(f"model pad_id={pad!r} must be a token id in [0, {self.vocab_size}) "
                       "(the tokenizer's padding id).")
    object.__setattr__(self, "pad_id", int(pad))
    if self.flavour == "roberta" and self.max_seq_len < 1:
      raise ValueError(f"model.max_positions={self.max_positions} leaves no positions after the "
                       f"padding index {self.pad_id} (RoBERTa positions start at pad_id + 1).")
    for key in ("dropout", "attention_dropout"):
      value = getattr(self, key)
      if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"model.{key}={value!r} must be in [0, 1) (1 drops every activation: "
                         "every step would be non-finite).")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"model.hidden_size={self.hidden_size} is not divisible by "
                       f"model.num_heads={self.num_heads}.")
    if self.flavour not in ("bert", "roberta"):
      raise ValueError(f"model.flavour={self.flavour!r}: expected 'bert' or 'roberta'.")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"model.remat={self.remat!r}: expected 'none', 'full' or 'dots'.")
    if self.attention not in ("xla", "cudnn"):
      raise ValueError(f"model.attention={self.attention!r}: expected 'xla' or 'cudnn'.")
    if self.compute_dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.compute_dtype={self.compute_dtype!r}: expected 'float32', "
                       "'bfloat16' or 'float16'.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def max_seq_len(self) -> int:
    """Longest input the position table can hold."""
    if self.flavour == "roberta":  # Positions start at pad_id + 1.
      return self.max_positions - self.pad_id - 1
    return self.max_positions

  @property
  def max_trained_len(self) -> int:
    """Longest input training can have given the model: a RoBERTa layout's table less two rows
    (data.max_sequence_length, checked before the padding id is known), so with
    bert-base-uncased's [PAD] = 0, whose 514 rows hold 513, the 513th position is never trained.
    Exports truncate at it and the LAMA probe cuts queries there."""
    if self.flavour == "roberta":
      return min(self.max_seq_len, self.max_positions - 2)
    return self.max_seq_len

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)

  @classmethod
  def from_config(cls, model_config, *, vocab_size: int, pad_id: int) -> "MLMConfig":
    """Resolves `config.model` (size presets, -1 defaults) into an MLMConfig."""
    from configs.base import MODEL_SIZES  # The size table lives with the configs.

    if model_config.size not in MODEL_SIZES:
      raise ValueError(f"config.model.size={model_config.size!r}: choose one of "
                       f"{sorted(MODEL_SIZES)}.")
    dims = dict(MODEL_SIZES[model_config.size])
    for key in dims:
      if model_config[key] != -1:
        dims[key] = int(model_config[key])
    roberta = model_config.flavour == "roberta"
    max_positions = model_config.max_positions
    if max_positions == -1:
      max_positions = default_max_positions(model_config.flavour)
    # A config file of an earlier version lacks the key: the flavour's, as it was then.
    type_vocab_size = model_config.get("type_vocab_size", -1)
    if type_vocab_size == -1:
      type_vocab_size = 1 if roberta else 2
    try:
      return cls(
          vocab_size=vocab_size, flavour=model_config.flavour, max_positions=max_positions,
          type_vocab_size=type_vocab_size, pad_id=pad_id, dropout=model_config.dropout,
          attention_dropout=model_config.attention_dropout,
          layer_norm_eps=_layer_norm_eps(model_config), compute_dtype=model_config.compute_dtype,
          attention=model_config.attention, remat=model_config.remat,
          scan_layers=model_config.scan_layers, **dims)
    except ValueError as e:
      # __post_init__ names the dataclass's fields (model.x), which a checkpoint's or a Hugging
      # Face config also fills; from a config they are the keys to override, config.model.x.
      message = str(e)
      if not message.startswith("model."):
        raise
      raise ValueError("config." + message.replace(" model.", " config.model.")) from None


def default_layer_norm_eps(flavour: str) -> float:
  """The LayerNorm epsilon of config.model.layer_norm_eps=-1: BERT's 1e-12, or RoBERTa's 1e-5."""
  return 1e-5 if flavour == "roberta" else 1e-12


def _layer_norm_eps(model_config) -> float:
  value = model_config.layer_norm_eps
  if value == -1:
    return default_layer_norm_eps(model_config.flavour)
  # Zero divides by a zero variance (a constant row: NaN); NaN or inf make every output so. A
  # value below float32's smallest normal is 0 on the device (XLA:CPU flushes subnormals).
  tiny = _FLOAT32_TINY
  if isinstance(value, bool) or not isinstance(value, int | float) or not tiny <= value < math.inf:
    raise ValueError(f"config.model.layer_norm_eps={value!r}: expected a positive number, or -1 "
                     "for the flavour's default (1e-12 for bert, 1e-5 for roberta); at least "
                     f"{tiny:.2g}, float32's smallest normal (the device computes a smaller one "
                     "as 0).")
  return float(value)


def default_max_positions(flavour: str) -> int:
  """The position table of config.model.max_positions=-1: 512, or 514 for RoBERTa, whose positions
  start after the padding index (so its sequences are 512 tokens long too)."""
  return 514 if flavour == "roberta" else 512


def _dense_init(cfg: MLMConfig, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def _layer_norm(cfg: MLMConfig, name: str) -> nn.LayerNorm:
  # Flax computes the statistics in float32 whatever the dtype, as Hugging Face does. Its fast
  # variance, E[x^2] - E[x]^2, cancels catastrophically where the mean is large against the
  # spread (embeddings with a common offset: 1e-3 off PyTorch's logits, failing the export's
  # check); PyTorch subtracts the mean first, as use_fast_variance=False does.
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, name=name, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)))


def position_ids(cfg: MLMConfig, input_ids: Array) -> Array:
  """Position of each token; RoBERTa counts from pad_id + 1 and gives padding pad_id."""
  if cfg.flavour == "roberta":
    not_pad = (input_ids != cfg.pad_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + cfg.pad_id
  return jnp.broadcast_to(jnp.arange(input_ids.shape[-1], dtype=jnp.int32), input_ids.shape)


def take_rows(x: Array, positions: Array) -> Array:
  """x (B, L, H) at positions (B, P) -> (B, P, H)."""
  return jnp.take_along_axis(x, positions[..., None], axis=1)


class Dropout(nn.Module):
  """Inverted dropout, as `flax.linen.Dropout`, with its keep mask hashed (`prng.dropout_keep`)
  from the "dropout" key instead of drawn with threefry, which XLA:CPU runs at several ns per
  32-bit word: 5% of the mini BERT's train step (bench/RESULTS.md, train step)."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = prng.dropout_keep(self.make_rng("dropout"), x.shape, self.rate)
    return jax.lax.select(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def _lookup(table, ids, row_axis=None):
  """table[ids] for batch-sharded ids: the table gathered over "embed" first (FSDP keeps a slice
  of H per device; a lookup into it would give H-sharded rows that XLA could only reshard to the
  batch sharding by replicating them), the rows then constrained to the batch sharding."""
  table = nn.with_logical_constraint(table, (row_axis, None))
  rows = jnp.take(table, ids, axis=0)
  return nn.with_logical_constraint(rows, (ACT_BATCH, None, None))


class Embeddings(nn.Module):
  cfg: MLMConfig

  def setup(self):
    cfg = self.cfg
    self.word = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word",
                         embedding_init=_dense_init(cfg, (VOCAB, EMBED)))
    self.position = nn.Embed(cfg.max_positions, cfg.hidden_size, name="position",
                             embedding_init=_dense_init(cfg, (None, EMBED)))
    self.token_type = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type",
                               embedding_init=_dense_init(cfg, (None, EMBED)))
    self.norm = _layer_norm(cfg, "norm")
    self.drop = Dropout(cfg.dropout)

  def __call__(self, input_ids, token_type_ids, deterministic):
    length, cfg = input_ids.shape[-1], self.cfg
    if length > cfg.max_seq_len:  # Else the position lookup would read past its table: NaNs.
      raise ValueError(f"Inputs of {length} tokens are longer than the model's position table "
                       f"holds ({cfg.max_seq_len}: model.max_positions={cfg.max_positions}"
                       f"{f', pad id {cfg.pad_id}' if cfg.flavour == 'roberta' else ''}); "
                       "truncate them or build the model with more positions.")
    x = (_lookup(self.word.embedding, input_ids, VOCAB) +
         _lookup(self.position.embedding, position_ids(self.cfg, input_ids)) +
         _lookup(self.token_type.embedding, token_type_ids))  # (B, L, H)
    return self.drop(self.norm(x.astype(self.cfg.dtype)), deterministic=deterministic)

  def tied_projection(self, x):
    """Logits against the word embeddings: (..., H) -> (..., V) float32.

    The product runs in the compute dtype (the largest matmul of a small model: Embed.attend
    would promote a bfloat16 x to the float32 table) and accumulates into float32 logits, which
    the loss's log-softmax over the vocabulary needs.
    """
    dtype = self.cfg.dtype
    table = self.word.embedding.astype(dtype)  # (V, H)
    return jax.lax.dot_general(x.astype(dtype), table, (((x.ndim - 1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)


class Projection(nn.Module):
  """x @ kernel, contracting x's last `in_dims` axes; kernel shape = those axes + out_shape.

  Flax's DenseGeneral boxes a flat kernel with the multi-dimensional axis names before reshaping
  it, which fails under a mesh; this creates the kernel at its true shape instead.
  """

  cfg: MLMConfig
  out_shape: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  in_dims: int = 1

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    in_shape = x.shape[x.ndim - self.in_dims:]
    kernel = self.param("kernel", _dense_init(cfg, self.kernel_axes), in_shape + self.out_shape,
                        jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, self.kernel_axes[self.in_dims:]), self.out_shape, jnp.float32)
    contract = (tuple(range(x.ndim - self.in_dims, x.ndim)), tuple(range(self.in_dims)))
    y = jax.lax.dot_general(x.astype(cfg.dtype), kernel.astype(cfg.dtype), (contract, ((), ())))
    # The bias added in float32: its gradient is the sum of the output's over every row of the
    # batch, which in bfloat16 (8 bits) lost 4-40% of it at a 32k-token batch, the value bias's
    # most (kernel gradients accumulate in float32 inside the matmul). Cast, add and cast fuse.
    return (y.astype(jnp.float32) + bias).astype(cfg.dtype)


class SelfAttention(nn.Module):
  cfg: MLMConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic, queries=None):
    """x (B, L, H) -> (B, Q, H): Q = L, or the rows of `queries` (B, Q, H) when given, which
    attend to every (unmasked) row of x."""
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.head_dim)
    # (B, L or Q, H) -> (B, L or Q, nh, hd) each.
    q = Projection(cfg, heads, (EMBED, HEADS, KV), name="query")(x if queries is None else queries)
    k, v = (Projection(cfg, heads, (EMBED, HEADS, KV), name=n)(x) for n in ("key", "value"))
    mask = attention_mask[:, None, None, :]  # (B, 1, 1, L): keys that may be attended to.
    if cfg.attention_dropout > 0 and not deterministic:
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(cfg.head_dim).astype(cfg.dtype)
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
      probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(cfg.dtype)
      probs = Dropout(cfg.attention_dropout)(probs, deterministic=False)
      context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)  # (B, L, nh, hd)
    else:
      # cuDNN's fused attention with a mask (a bias to it) needs an even number of query rows
      # and of key rows when training; the last layer's P target rows may be odd, and are few,
      # and an odd seq_len makes every layer's keys odd: XLA does those.
      fused = cfg.attention == "cudnn" and q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0
      context = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                             implementation="cudnn" if fused else None)
    return Projection(cfg, (cfg.hidden_size,), (HEADS, KV, EMBED), in_dims=2, name="out")(context)


class EncoderLayer(nn.Module):
  """Post-LN transformer layer (BERT): x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

  cfg: MLMConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic, query_positions=None):
    """(B, L, H) -> (B, L, H); or (B, P, H) at `query_positions` (B, P) when given.

    Every output row depends on all of x only through attention's keys and values, so the rows
    at P positions cost the key / value projections of L rows and everything else of P rows.
    """
    cfg = self.cfg
    x = nn.with_logical_constraint(x, (ACT_BATCH, None, None))
    rows = None if query_positions is None else take_rows(x, query_positions)  # (B, P, H)
    attn = SelfAttention(cfg, name="attention")(x, attention_mask, deterministic, rows)
    attn = Dropout(cfg.dropout)(attn, deterministic=deterministic)
    x = _layer_norm(cfg, "attention_norm")((x if rows is None else rows) + attn)
    h = Projection(cfg, (cfg.mlp_size,), (EMBED, MLP), name="mlp_in")(x)
    h = jax.nn.gelu(h, approximate=False)  # (B, L, M)
    h = Projection(cfg, (cfg.hidden_size,), (MLP, EMBED), name="mlp_out")(h)
    h = Dropout(cfg.dropout)(h, deterministic=deterministic)
    return _layer_norm(cfg, "mlp_norm")(x + h)


class ScannedLayer(EncoderLayer):
  """EncoderLayer with nn.scan's (carry, output) signature."""

  def __call__(self, x, attention_mask, deterministic):
    return super().__call__(x, attention_mask, deterministic), None


_REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole layer in the backward pass.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Encoder(nn.Module):
  cfg: MLMConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic, query_positions=None):
    """(B, L, H) -> final hidden states (B, L, H), or (B, P, H) at `query_positions` (B, P).

    With query positions the last layer runs at those rows only (the MLM loss reads nothing
    else: for BERT-mini at 15% targets that is ~12% of the step's matmul FLOPs, ~6% for base).
    """
    cfg = self.cfg
    layer_cls = ScannedLayer if cfg.scan_layers else EncoderLayer
    if cfg.remat != "none":
      # `deterministic` (argument 3 counting self) is a Python bool: keep it static.
      layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat], static_argnums=(3,))
    if cfg.scan_layers:
      stack = nn.scan(
          layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: LAYERS})(cfg, name="layers")
      if query_positions is None or self.is_initializing():
        x, _ = stack(x, attention_mask, deterministic)
        return x if query_positions is None else take_rows(x, query_positions)
      return self._scan_then_rows(nn.meta.unbox(stack.variables["params"]), x, attention_mask,
                                  deterministic, query_positions)
    for i in range(cfg.num_layers):
      last = i == cfg.num_layers - 1
      x = layer_cls(cfg, name=f"layer_{i}")(x, attention_mask, deterministic,
                                            query_positions if last else None)
    return x

  def _scan_then_rows(self, stacked, x, attention_mask, deterministic, query_positions):
    """The scanned stack's first N - 1 layers as a lax.scan over their slices of the stacked
    parameters, then the last layer at the query rows. (One scan body has one shape, so the
    lifted nn.scan cannot end on a smaller layer; its parameter tree is kept as it is.)"""
    cfg, n = self.cfg, self.cfg.num_layers
    layer = EncoderLayer(cfg, parent=None)
    rngs = (jax.random.split(self.make_rng("dropout"), n) if not deterministic
            else jnp.zeros((n,), jnp.uint32))

    def apply(params, rng, x, positions):
      return layer.apply({"params": params}, x, attention_mask, deterministic, positions,
                         rngs=None if deterministic else {"dropout": rng})

    in_scan = apply
    if cfg.remat != "none":
      policy = _REMAT_POLICIES[cfg.remat]
      # In a scan body XLA cannot merge the recomputation with the forward anyway, and the
      # barriers that prevent it would only cost (JAX's advice for checkpoint inside scan).
      in_scan = jax.checkpoint(apply, policy=policy, prevent_cse=False)
      apply = jax.checkpoint(apply, policy=policy)

    def body(x, params_and_rng):
      return in_scan(*params_and_rng, x, None), None

    first = jax.tree.map(lambda a: a[:n - 1], (stacked, rngs))
    x, _ = jax.lax.scan(body, x, first)
    last = jax.tree.map(lambda a: a[n - 1], (stacked, rngs))
    return apply(*last, x, query_positions)


class MLMHead(nn.Module):
  """Transform (dense + GELU + LayerNorm) then the tied decoder plus an output bias."""

  cfg: MLMConfig

  @nn.compact
  def __call__(self, x, tied_projection):
    cfg = self.cfg
    x = Projection(cfg, (cfg.hidden_size,), (EMBED, None), name="transform")(x)
    x = _layer_norm(cfg, "norm")(jax.nn.gelu(x, approximate=False))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (VOCAB,)),
                      (cfg.vocab_size,), jnp.float32)
    return tied_projection(x) + bias  # (..., V) float32


class BertMLM(nn.Module):
  """Encoder + MLM head. `__call__` returns logits at `masked_positions` (or every token)."""

  cfg: MLMConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.encoder = Encoder(self.cfg)
    self.head = MLMHead(self.cfg)

  def encode(self, input_ids, token_type_ids=None, *, deterministic=True, positions=None):
    """Final hidden states (B, L, H), as Hugging Face's BertModel.last_hidden_state; only the
    rows at `positions` (B, P) -> (B, P, H) when given (cheaper: see Encoder)."""
    check_input_shapes(input_ids, token_type_ids, positions)
    check_concrete_inputs(self.cfg, input_ids, token_type_ids, positions)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    attention_mask = input_ids != self.cfg.pad_id  # (B, L)
    x = self.embeddings(input_ids, token_type_ids, deterministic)
    return self.encoder(x, attention_mask, deterministic, positions)

  def __call__(self, input_ids, token_type_ids=None, *, masked_positions=None,
               deterministic=True):
    """Logits (B, P, V) at masked_positions (B, P), or (B, L, V) when it is None."""
    x = self.encode(input_ids, token_type_ids, deterministic=deterministic,
                    positions=masked_positions)  # (B, P or L, H)
    return self.head(x, self.embeddings.tied_projection)


def check_input_shapes(input_ids, token_type_ids=None, positions=None) -> None:
  """ValueError, naming the argument, for inputs of the wrong rank or batch (static shapes, so
  checked under jit too): one unbatched sequence failed inside the attention with a bare
  IndexError, and a (1, P) masked_positions beside a larger batch was broadcast silently."""
  shape = tuple(jnp.shape(input_ids))
  if len(shape) != 2:
    raise ValueError(f"input_ids must be (batch, length), got shape {shape}"
                     + (": add a batch dimension (ids[None]) for one sequence." if len(shape) == 1
                        else "."))
  if token_type_ids is not None and tuple(jnp.shape(token_type_ids)) != shape:
    raise ValueError(f"token_type_ids must have input_ids' shape {shape}, got "
                     f"{tuple(jnp.shape(token_type_ids))}.")
  if positions is not None:
    given = tuple(jnp.shape(positions))
    if len(given) != 2 or given[0] != shape[0]:
      raise ValueError(f"masked_positions must be (batch, predictions) with input_ids' batch "
                       f"{shape[0]}, got shape {given}.")


def check_concrete_inputs(cfg: MLMConfig, input_ids, token_type_ids=None, positions=None):
  """ValueError, naming the argument, for ids outside their tables or positions outside the
  sequence. JAX's gathers give NaN rows for an index past the end and wrap a negative one (-100
  read row V - 100): the logits came out NaN or silently another token's, where Hugging Face's
  models raise. Checked on the host when the arrays are concrete (an eager `apply`); inside a
  jitted step they are tracers and go unchecked, as the masker's ids (a device-side check would
  cost every step a host sync; the data pipeline's ids are in range by construction)."""
  length = None
  for name, value, size in (("input_ids", input_ids, cfg.vocab_size),
                            ("token_type_ids", token_type_ids, cfg.type_vocab_size),
                            ("masked_positions", positions, None)):
    if value is None or isinstance(value, jax.core.Tracer) or \
        not getattr(value, "is_fully_addressable", True):
      continue
    host = np.asarray(value)
    if not np.issubdtype(host.dtype, np.integer):  # A float id would be truncated.
      raise ValueError(f"{name} must hold integers, got dtype {host.dtype}.")
    if name == "input_ids":
      length = host.shape[1]  # (B, L): check_input_shapes ran first.
      table = f"the model's vocabulary [0, {size})"
    elif name == "token_type_ids":
      table = (f"the model's token types [0, {size})" + (
          ": this model has one (RoBERTa's layout), so pass zeros or leave them out"
          if size == 1 else ""))
    else:
      if length is None:
        continue
      size, table = length, f"the sequence's positions [0, {length})"
    if host.size and (host.min() < 0 or host.max() >= size):
      raise ValueError(f"{name} hold values in [{host.min()}, {host.max()}], outside {table}.")


def init_params(model: BertMLM, rng: Array, seq_len: int) -> Any:
  """Boxed (logically partitioned) parameters; run under jit/eval_shape, never eagerly at scale."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return model.init({"params": rng}, ids, masked_positions=jnp.zeros((1, 1), jnp.int32))["params"]


def train_flops_per_sequence(cfg: MLMConfig, seq_len: int, predictions: int) -> float:
  """Matmul FLOPs of one training step per sequence (forward + backward = 3x forward).

  Counts the model's FLOPs (PaLM's MFU): with model.remat="full" the backward pass also
  recomputes the forward, about 4/3 of this, which is not counted. Per token and layer: the
  Q/K/V/output projections (8 H^2), attention scores and context (4 L H) and the MLP (4 H M);
  the MLM head runs only at `predictions` positions per sequence: transform (2 H^2) and tied
  decoder (2 H V). The last layer runs only its key / value projections (4 H^2) at every token
  and the rest at the `predictions` rows (see Encoder); predictions = seq_len gives the cost of a
  model that computes every token; more than seq_len counts seq_len, as the train step gathers at
  most L target slots (trainer.gather_targets).
  Embedding lookups, LayerNorms, softmax and elementwise work are not counted (as in PaLM's MFU).
  """
  predictions = min(predictions, seq_len)
  h, m, n = cfg.hidden_size, cfg.mlp_size, cfg.num_layers
  per_row = 8 * h * h + 4 * h * m + 4 * seq_len * h  # One layer, one token.
  key_value = 4 * h * h
  encoder = (n - 1) * seq_len * per_row + seq_len * key_value + predictions * (
      per_row - key_value)
  per_prediction = 2 * h * h + 2 * h * cfg.vocab_size
  return 3.0 * (encoder + predictions * per_prediction)
