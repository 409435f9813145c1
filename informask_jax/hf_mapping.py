"""The parameter mapping between our Flax `BertMLM` and Hugging Face PyTorch BERT / RoBERTa.

The mapping is explicit, in the spirit of nanoGPT's `from_pretrained`: one name table, one list
of layout changes, and assertions on every shape and on the key count in both directions. Files,
directories and the check against PyTorch's logits are `export.py`'s; this module only turns
one tree (and config) into the other.

Layouts (ours -> PyTorch `nn.Linear.weight`, which is (out, in)):
  * Dense kernels (in, out)                      -> transposed.
  * Q/K/V kernels (H, nh, hd) and biases (nh, hd) -> heads flattened, kernel transposed.
  * Attention output kernel (nh, hd, H)          -> heads flattened, transposed.
  * Embeddings and LayerNorm (scale -> weight)   -> copied.
The decoder is tied to the word embeddings on both sides; Hugging Face's `decoder.weight` and
`decoder.bias` are aliases of the word embeddings and the head bias (`TIED_ALIASES`).

Both parameter layouts are handled: unrolled (`encoder/layer_{i}`) and scanned (`encoder/layers`,
a leading layer axis on every leaf). Everything here works on plain NumPy trees on the host.
"""

from typing import Any

import numpy as np
from absl import logging

from informask_jax.model import MLMConfig

FORMATS = ("bert", "roberta")
# Architectures whose weights we can read: MLM models and bare encoders (a pooler or an NSP head
# is dropped; a missing MLM head is initialised fresh, see `fresh_head`).
SUPPORTED_ARCHITECTURES = {
    "bert": ("BertForMaskedLM", "BertForPreTraining", "BertModel"),
    "roberta": ("RobertaForMaskedLM", "RobertaModel"),
}
MLM_ARCHITECTURE = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM"}

# --- Name table ---------------------------------------------------------------------------------
# (path in our tree, Hugging Face name, layout change). Layer entries are relative to one layer.
_EMBEDDINGS = (
    (("embeddings", "word", "embedding"), "embeddings.word_embeddings.weight", "copy"),
    (("embeddings", "position", "embedding"), "embeddings.position_embeddings.weight", "copy"),
    (("embeddings", "token_type", "embedding"), "embeddings.token_type_embeddings.weight", "copy"),
    (("embeddings", "norm", "scale"), "embeddings.LayerNorm.weight", "copy"),
    (("embeddings", "norm", "bias"), "embeddings.LayerNorm.bias", "copy"),
)
_LAYER = (
    (("attention", "query", "kernel"), "attention.self.query.weight", "heads_in"),
    (("attention", "query", "bias"), "attention.self.query.bias", "heads_bias"),
    (("attention", "key", "kernel"), "attention.self.key.weight", "heads_in"),
    (("attention", "key", "bias"), "attention.self.key.bias", "heads_bias"),
    (("attention", "value", "kernel"), "attention.self.value.weight", "heads_in"),
    (("attention", "value", "bias"), "attention.self.value.bias", "heads_bias"),
    (("attention", "out", "kernel"), "attention.output.dense.weight", "heads_out"),
    (("attention", "out", "bias"), "attention.output.dense.bias", "copy"),
    (("attention_norm", "scale"), "attention.output.LayerNorm.weight", "copy"),
    (("attention_norm", "bias"), "attention.output.LayerNorm.bias", "copy"),
    (("mlp_in", "kernel"), "intermediate.dense.weight", "dense"),
    (("mlp_in", "bias"), "intermediate.dense.bias", "copy"),
    (("mlp_out", "kernel"), "output.dense.weight", "dense"),
    (("mlp_out", "bias"), "output.dense.bias", "copy"),
    (("mlp_norm", "scale"), "output.LayerNorm.weight", "copy"),
    (("mlp_norm", "bias"), "output.LayerNorm.bias", "copy"),
)
_HEAD_NAMES = {  # Our head leaf -> Hugging Face name, per format.
    "bert": {
        ("head", "transform", "kernel"): "cls.predictions.transform.dense.weight",
        ("head", "transform", "bias"): "cls.predictions.transform.dense.bias",
        ("head", "norm", "scale"): "cls.predictions.transform.LayerNorm.weight",
        ("head", "norm", "bias"): "cls.predictions.transform.LayerNorm.bias",
        ("head", "bias"): "cls.predictions.bias",
    },
    "roberta": {
        ("head", "transform", "kernel"): "lm_head.dense.weight",
        ("head", "transform", "bias"): "lm_head.dense.bias",
        ("head", "norm", "scale"): "lm_head.layer_norm.weight",
        ("head", "norm", "bias"): "lm_head.layer_norm.bias",
        ("head", "bias"): "lm_head.bias",
    },
}
# Aliases in Hugging Face's state dict (tied parameters): alias -> the name it mirrors.
TIED_ALIASES = {
    "bert": {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"},
    "roberta": {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
                "lm_head.decoder.bias": "lm_head.bias"},
}
# Checkpoint entries we read past: buffers, the pooler and BERT's next-sentence head.
_IGNORED_PREFIXES = ("pooler.", "cls.seq_relationship.", "embeddings.position_ids",
                     "embeddings.token_type_ids")


def _head_table(fmt):
  return tuple((path, name, "dense" if path[-1] == "kernel" else "copy")
               for path, name in _HEAD_NAMES[fmt].items())


def _table(cfg: MLMConfig, fmt: str):
  """Every (our path, HF name, layout) of an unrolled tree, in Hugging Face's order."""
  rows = [(path, f"{fmt}.{name}", kind) for path, name, kind in _EMBEDDINGS]
  for i in range(cfg.num_layers):
    rows += [(("encoder", f"layer_{i}") + path, f"{fmt}.encoder.layer.{i}.{name}", kind)
             for path, name, kind in _LAYER]
  return rows + list(_head_table(fmt))


def _flax_shapes(cfg: MLMConfig) -> dict:
  """Expected shape of each leaf of our (unrolled) tree, keyed by path."""
  h, nh, hd, m, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_size, cfg.vocab_size
  shapes = {
      ("embeddings", "word", "embedding"): (v, h),
      ("embeddings", "position", "embedding"): (cfg.max_positions, h),
      ("embeddings", "token_type", "embedding"): (cfg.type_vocab_size, h),
      ("embeddings", "norm", "scale"): (h,), ("embeddings", "norm", "bias"): (h,),
      ("head", "transform", "kernel"): (h, h), ("head", "transform", "bias"): (h,),
      ("head", "norm", "scale"): (h,), ("head", "norm", "bias"): (h,), ("head", "bias"): (v,),
  }
  layer = {
      "kernel": {"query": (h, nh, hd), "key": (h, nh, hd), "value": (h, nh, hd),
                 "out": (nh, hd, h), "mlp_in": (h, m), "mlp_out": (m, h)},
      "bias": {"query": (nh, hd), "key": (nh, hd), "value": (nh, hd), "out": (h,),
               "mlp_in": (m,), "mlp_out": (h,)},
  }
  for i in range(cfg.num_layers):
    for path, _, _ in _LAYER:
      module, leaf = path[-2], path[-1]
      shape = (h,) if module.endswith("norm") else layer[leaf][module]
      shapes[("encoder", f"layer_{i}") + path] = shape
  return shapes


# --- Layout changes -----------------------------------------------------------------------------
def _to_torch(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "dense":  # (in, out) -> (out, in)
    return x.T
  if kind == "heads_in":  # (H, nh, hd) -> (nh*hd, H)
    return x.reshape(x.shape[0], -1).T
  if kind == "heads_bias":  # (nh, hd) -> (nh*hd,)
    return x.reshape(-1)
  if kind == "heads_out":  # (nh, hd, H) -> (H, nh*hd)
    return x.reshape(-1, x.shape[-1]).T
  return x


def _from_torch(w: np.ndarray, kind: str, shape: tuple) -> np.ndarray:
  if kind in ("dense", "heads_in", "heads_out"):  # All three are a transpose then a reshape.
    return w.T.reshape(shape)
  return w.reshape(shape)


# --- Parameter trees ----------------------------------------------------------------------------
def numpy_params(tree) -> Any:
  """Unboxed float32 NumPy copy of a (possibly boxed, possibly on-device) parameter tree."""
  import flax.linen as nn
  import jax

  return jax.tree.map(lambda x: np.asarray(x, np.float32), nn.meta.unbox(tree))


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def is_scanned(params) -> bool:
  return "layers" in params["encoder"]


def convert_layout(params, scan_layers: bool):
  """The same parameters with the encoder unrolled (`layer_{i}`) or scanned (`layers`)."""
  import jax

  encoder = params["encoder"]
  if is_scanned(params) == scan_layers:
    return params
  if scan_layers:
    n = len(encoder)
    layers = [encoder[f"layer_{i}"] for i in range(n)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *layers)  # Leading (num_layers,) axis.
    return {**params, "encoder": {"layers": stacked}}
  stacked = encoder["layers"]
  n = len(jax.tree.leaves(stacked)[0])
  unrolled = {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}
  return {**params, "encoder": unrolled}


def _check_tree(params, cfg: MLMConfig):
  """Asserts that `params` (unrolled) has exactly the leaves and shapes `cfg` implies."""
  import jax

  expected = _flax_shapes(cfg)
  leaves = {tuple(k.key for k in path): x.shape
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing, extra = sorted(set(expected) - set(leaves)), sorted(set(leaves) - set(expected))
  if missing or extra:
    raise ValueError(f"Parameter tree does not match the config ({cfg.num_layers} layers): "
                     f"missing {['/'.join(p) for p in missing]}, "
                     f"unexpected {['/'.join(p) for p in extra]}.")
  for path, shape in expected.items():
    if leaves[path] != shape:
      raise ValueError(f"Parameter {'/'.join(path)} has shape {leaves[path]}; the config "
                       f"implies {shape}.")


# --- Configs ------------------------------------------------------------------------------------
def check_format(fmt: str) -> str:
  if fmt not in FORMATS:
    raise ValueError(f"format={fmt!r}: expected one of {FORMATS}.")
  return fmt


def _position_offset(cfg: MLMConfig, fmt: str) -> int:
  """Rows to prepend (> 0) or drop (< 0) from our position table for the target format.

  RoBERTa numbers non-padding tokens from pad_id + 1, BERT from 0, so exporting one flavour in
  the other's format shifts the table. Outputs then agree at every non-padding token of
  right-padded inputs (padding tokens themselves take other position rows, but nobody attends to
  them).
  """
  if fmt == cfg.flavour:
    return 0
  return cfg.pad_id + 1 if fmt == "roberta" else -(cfg.pad_id + 1)


def _special_ids(special_ids) -> dict:
  """{"pad", "cls", "sep", "mask"} from a dict, a Hugging Face tokenizer or None."""
  if special_ids is None:
    return {}
  if isinstance(special_ids, dict):
    return dict(special_ids)
  return {name: getattr(special_ids, f"{name}_token_id", None)
          for name in ("pad", "cls", "sep", "mask")}


def hf_config_for(cfg: MLMConfig, special_ids=None, fmt: str | None = None):
  """The `transformers` config of our model in format `fmt` (default: the model's flavour).

  `special_ids` is a tokenizer or a dict with "pad", "cls", "sep" ids; RoBERTa's bos/eos are set
  to [CLS]/[SEP], as in the InformBERT release that pairs RoBERTa with a WordPiece vocabulary.
  """
  import transformers

  fmt = check_format(fmt or cfg.flavour)
  ids = _special_ids(special_ids)
  if ids.get("pad") is not None and ids["pad"] != cfg.pad_id:
    raise ValueError(f"Tokenizer pad id {ids['pad']} differs from the model's pad_id "
                     f"{cfg.pad_id}: the export would mask the wrong tokens.")
  common = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_size, hidden_act="gelu",
      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
      max_position_embeddings=cfg.max_positions + _position_offset(cfg, fmt),
      type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
      initializer_range=cfg.initializer_range, pad_token_id=cfg.pad_id,
      position_embedding_type="absolute", tie_word_embeddings=True,
      architectures=[MLM_ARCHITECTURE[fmt]])
  if fmt == "roberta":
    return transformers.RobertaConfig(bos_token_id=ids.get("cls"), eos_token_id=ids.get("sep"),
                                      **common)
  return transformers.BertConfig(**common)


def mlm_config_from_hf(hf_config, *, scan_layers: bool = False) -> MLMConfig:
  """Our MLMConfig for a Hugging Face BERT/RoBERTa config; anything else is a clear error."""
  model_type = getattr(hf_config, "model_type", None)
  if model_type not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"Unsupported Hugging Face model_type {model_type!r}: only "
                     f"{sorted(SUPPORTED_ARCHITECTURES)} (post-LN BERT/RoBERTa) convert.")
  supported = SUPPORTED_ARCHITECTURES[model_type]
  for arch in getattr(hf_config, "architectures", None) or ():
    if arch not in supported:
      raise ValueError(f"Unsupported architecture {arch!r} in the Hugging Face config: expected "
                       f"one of {supported} (an MLM model or a bare encoder).")
  unsupported = {  # Settings whose numerics our model does not implement.
      # gelu_python is transformers' own erf GELU: the same function as gelu.
      "hidden_act": ({"gelu_python": "gelu"}.get(getattr(hf_config, "hidden_act", "gelu"),
                                                  getattr(hf_config, "hidden_act", "gelu")),
                     "gelu"),
      "position_embedding_type": (getattr(hf_config, "position_embedding_type", "absolute"),
                                  "absolute"),
      "is_decoder": (bool(getattr(hf_config, "is_decoder", False)), False),
      "add_cross_attention": (bool(getattr(hf_config, "add_cross_attention", False)), False),
      "tie_word_embeddings": (bool(getattr(hf_config, "tie_word_embeddings", True)), True),
  }
  for key, (value, want) in unsupported.items():
    if value != want:
      raise ValueError(f"Unsupported Hugging Face config: {key}={value!r} (only {want!r} "
                       "converts exactly).")
  pad_id = hf_config.pad_token_id if hf_config.pad_token_id is not None else 0
  return MLMConfig(
      vocab_size=hf_config.vocab_size, num_layers=hf_config.num_hidden_layers,
      hidden_size=hf_config.hidden_size, num_heads=hf_config.num_attention_heads,
      mlp_size=hf_config.intermediate_size, flavour=model_type,
      max_positions=hf_config.max_position_embeddings, type_vocab_size=hf_config.type_vocab_size,
      pad_id=pad_id, dropout=hf_config.hidden_dropout_prob,
      attention_dropout=hf_config.attention_probs_dropout_prob,
      layer_norm_eps=hf_config.layer_norm_eps, initializer_range=hf_config.initializer_range,
      scan_layers=scan_layers)


# --- Flax -> Hugging Face -----------------------------------------------------------------------
def to_hf_state_dict(params, cfg: MLMConfig, fmt: str | None = None) -> dict[str, np.ndarray]:
  """Hugging Face `*ForMaskedLM` state dict (names and torch layouts, tied aliases included)."""
  fmt = check_format(fmt or cfg.flavour)
  params = convert_layout(numpy_params(params), scan_layers=False)
  _check_tree(params, cfg)
  state = {}
  for path, name, kind in _table(cfg, fmt):
    state[name] = np.ascontiguousarray(_to_torch(_get(params, path), kind))
  offset = _position_offset(cfg, fmt)
  if offset:
    name = f"{fmt}.embeddings.position_embeddings.weight"
    table = state[name]  # (P, H)
    state[name] = (np.concatenate([np.zeros((offset, table.shape[1]), table.dtype), table])
                   if offset > 0 else np.ascontiguousarray(table[-offset:]))
  for alias, source in TIED_ALIASES[fmt].items():
    state[alias] = state[source]
  expected = 5 + 16 * cfg.num_layers + 5 + 2  # Embeddings, layers, head, tied aliases.
  assert len(state) == expected, (len(state), expected)
  return state


# --- Hugging Face -> Flax -----------------------------------------------------------------------
def fresh_head(cfg: MLMConfig, seed: int = 0) -> dict:
  """A newly initialised MLM head, as BertMLM and Hugging Face initialise one.

  Transform kernel ~ N(0, initializer_range), biases 0, LayerNorm scale 1; the decoder itself is
  the (imported) word embedding matrix, so only these H^2 + 3H + V numbers are new.
  """
  h = cfg.hidden_size
  rng = np.random.default_rng(seed)
  return {
      "transform": {"kernel": (rng.standard_normal((h, h)) * cfg.initializer_range)
                    .astype(np.float32), "bias": np.zeros((h,), np.float32)},
      "norm": {"scale": np.ones((h,), np.float32), "bias": np.zeros((h,), np.float32)},
      "bias": np.zeros((cfg.vocab_size,), np.float32),
  }


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # A torch tensor (possibly bfloat16, which NumPy lacks).
    x = x.detach().cpu().float().numpy()
  return np.asarray(x, np.float32)


def _normalise_names(state_dict, fmt: str) -> dict:
  """Hugging Face names relative to the model root, with the `bert.`/`roberta.` prefix."""
  renamed = {}
  for name, value in state_dict.items():
    # Checkpoints from the original TensorFlow port call LayerNorm parameters gamma/beta.
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias")
    if name.startswith(("embeddings.", "encoder.", "pooler.")):  # A bare encoder's state dict.
      name = f"{fmt}.{name}"
    renamed[name] = value
  return renamed


class NoMLMHead(ValueError):
  """A bare encoder's weights where a trained masked-LM head is needed (to probe the model)."""


def from_hf_state_dict(state_dict, hf_config, *, scan_layers: bool = False,
                       head_seed: int = 0, require_head: bool = False,
                       config_name: str = "the config") -> tuple[dict, MLMConfig]:
  """Our parameter tree (plain NumPy) and MLMConfig for a Hugging Face state dict.

  Accepts `*ForMaskedLM` / `BertForPreTraining` state dicts and bare encoders (`BertModel`,
  `RobertaModel`, with or without the `bert.`/`roberta.` prefix). Without an MLM head in the
  state dict the head is initialised fresh by `fresh_head(cfg, head_seed)`, or NoMLMHead is
  raised with `require_head`.
  """
  cfg = mlm_config_from_hf(hf_config, scan_layers=scan_layers)
  fmt = cfg.flavour
  state = _normalise_names(state_dict, fmt)
  for alias, source in TIED_ALIASES[fmt].items():
    # transformers ties each pair and loads a checkpoint holding either name (which one a save
    # keeps has varied across its versions): the alias alone is the tensor too.
    if source not in state and alias in state:
      state[source] = state[alias]
  table = _table(cfg, fmt)
  head_names = set(_HEAD_NAMES[fmt].values())
  known = {name for _, name, _ in table} | set(TIED_ALIASES[fmt])
  unexpected = sorted(name for name in state if name not in known
                      and not name.removeprefix(f"{fmt}.").startswith(_IGNORED_PREFIXES))
  if unexpected:
    raise ValueError(f"Unexpected entries in the {fmt} state dict (not part of an MLM model): "
                     f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}.")
  have_head = head_names & set(state)
  if have_head and have_head != head_names:
    raise ValueError(f"Incomplete MLM head: missing {sorted(head_names - have_head)}.")
  if require_head and not have_head:
    raise NoMLMHead(f"no masked-LM head (no {sorted(head_names)[0]}, ...): an encoder only")
  missing = sorted(name for _, name, _ in table if name not in state and name not in head_names)
  if missing:
    raise ValueError(f"Missing entries in the {fmt} state dict: {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''} ({len(missing)} in all).")

  shapes = _flax_shapes(cfg)
  params: dict = {}
  used = 0
  for path, name, kind in table:
    if name not in state:
      continue  # A head entry of an encoder-only checkpoint; filled below.
    w = _to_numpy(state[name])
    expected = _to_torch(np.empty(shapes[path], np.float32), kind).shape
    if w.shape != expected:
      raise ValueError(f"{name} has shape {w.shape}; {config_name} implies {expected} "
                       f"(vocab_size={hf_config.vocab_size}, hidden_size="
                       f"{hf_config.hidden_size}).")
    _set(params, path, _from_torch(w, kind, shapes[path]))
    used += 1
  if not have_head:
    # A warning: the CLI shows no INFO lines, and an untrained head makes LAMA scores noise.
    logging.warning("No MLM head in the checkpoint: initialising one fresh (seed %d); train it "
                    "before probing or exporting the model.", head_seed)
    params["head"] = fresh_head(cfg, head_seed)
  for alias, source in TIED_ALIASES[fmt].items():
    # Hugging Face ties these; a checkpoint where they differ is a model we cannot represent.
    if alias in state and source in state and not np.array_equal(
        _to_numpy(state[alias]), _to_numpy(state[source])):
      raise ValueError(f"{alias} differs from {source}: untied decoders are not supported.")
  assert used == len(table) - (0 if have_head else len(head_names)), used
  _check_tree(params, cfg)
  return convert_layout(params, scan_layers), cfg
