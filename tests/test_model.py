"""Tests for informask_jax/model.py that need no Hugging Face reference (those are in
test_export.py): the FLOP count behind the benchmark's MFU against the traced step, and the
logits against a float64 NumPy forward written from the BERT / RoBERTa definitions."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from informask_jax.model import BertMLM, MLMConfig, init_params, train_flops_per_sequence


def traced_matmul_flops(jaxpr):
  """2 x output size x contracted size, summed over every dot_general (scan bodies x length)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracted, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contracted])
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      if isinstance(value, jax_core.ClosedJaxpr):
        total += times * traced_matmul_flops(value.jaxpr)
      elif isinstance(value, jax_core.Jaxpr):
        total += times * traced_matmul_flops(value)
  return total


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("predictions", [3, 10, 14])
def test_flop_count_is_the_traced_gradient_steps_matmuls(scan_layers, predictions):
  # Distinct sizes everywhere, so that a swapped factor cannot cancel out.
  cfg = MLMConfig(vocab_size=50, num_layers=3, hidden_size=16, num_heads=2, mlp_size=24,
                  max_positions=64, scan_layers=scan_layers)
  model = BertMLM(cfg)
  params = nn.meta.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0), 8)))
  batch, length = 2, 10
  ids = jnp.ones((batch, length), jnp.int32)
  # The train step gathers at most L target slots (14 > L were counted: MFU came out too high).
  positions = jnp.zeros((batch, min(predictions, length)), jnp.int32)

  def loss(p):
    return model.apply({"params": p}, ids, masked_positions=positions).sum()

  traced = traced_matmul_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr) / batch
  assert traced == train_flops_per_sequence(cfg, length, predictions)


def test_dropout_mask_statistics_and_sharding():
  """The hashed dropout: drops `rate` of the elements independently of position (no row or
  column patterns), scales the rest by 1 / (1 - rate), depends on the key only, and is the same
  whether or not the input is sharded over 8 devices."""
  from jax.sharding import NamedSharding, PartitionSpec

  from informask_jax.model import Dropout

  rate = 0.1
  layer = Dropout(rate)
  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (64, 32, 128)), jnp.float32)
  apply = jax.jit(lambda x, key: layer.apply({}, x, False, rngs={"dropout": key}))
  y = np.asarray(apply(x, jax.random.key(0)))
  dropped = y == 0
  n = dropped.size
  assert abs(dropped.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
  np.testing.assert_allclose(y[~dropped], np.asarray(x)[~dropped] / (1 - rate), rtol=1e-6)
  # No structure: per-row and per-column drop rates spread as binomials do, and a neighbour's
  # drop (next element, next row) is independent of this one's.
  flat = dropped.reshape(64, -1)
  for rates, count in ((flat.mean(axis=1), flat.shape[1]), (flat.mean(axis=0), flat.shape[0])):
    assert np.std(rates) < 1.3 * np.sqrt(rate * (1 - rate) / count)
  both_next = (flat[:, 1:] & flat[:, :-1]).mean()
  both_row = (flat[1:] & flat[:-1]).mean()
  for joint in (both_next, both_row):
    assert abs(joint - rate**2) < 5 * np.sqrt(rate**2 / n)
  # The key decides; the same key gives the same mask.
  np.testing.assert_array_equal(y, np.asarray(apply(x, jax.random.key(0))))
  other = np.asarray(apply(x, jax.random.key(1))) == 0
  assert abs((dropped & other).mean() - rate**2) < 5 * np.sqrt(rate**2 / n)
  # Sharded over 8 devices (rows, then columns): the same mask.
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("a", "b")))
  np.testing.assert_array_equal(y, np.asarray(apply(sharded, jax.random.key(0))))
  # Deterministic, or rate 0: the identity.
  np.testing.assert_array_equal(np.asarray(layer.apply({}, x, True)), np.asarray(x))
  np.testing.assert_array_equal(
      np.asarray(Dropout(0.0).apply({}, x, False, rngs={"dropout": jax.random.key(0)})),
      np.asarray(x))


@pytest.mark.parametrize("overrides,match", [
    (dict(num_layers=0), "model.num_layers=0"), (dict(mlp_size=-1), "model.mlp_size=-1"),
    (dict(num_heads=3), "not divisible"),
    (dict(flavour="roberta", max_positions=4, pad_id=3), "leaves no positions"),
    # These failed only when the model was built or applied, inside JAX (an empty take, an MLIR
    # type error), or, for the epsilon, gave NaN on a constant row.
    (dict(vocab_size=0), "model.vocab_size=0 must be a positive integer"),
    (dict(vocab_size=100.0), "model.vocab_size=100.0 must be a positive integer"),
    (dict(type_vocab_size=0), "model.type_vocab_size=0 must be a positive integer"),
    # These two overflowed int32 inside jnp.take as the model was built (OverflowError).
    (dict(max_positions=2**31), r"model.max_positions=2147483648 must be below 2\*\*31"),
    (dict(type_vocab_size=3 * 10**9), r"model.type_vocab_size=3000000000 must be below 2\*\*31"),
    (dict(layer_norm_eps=0.0), r"model.layer_norm_eps=0.0 must be a finite number >= 1.2e-38"),
    (dict(layer_norm_eps=float("nan")), "model.layer_norm_eps=nan")])
def test_bad_architecture_raises_naming_the_key(overrides, match):
  base = dict(vocab_size=50, num_layers=1, hidden_size=16, num_heads=2, mlp_size=32)
  with pytest.raises(ValueError, match=match):
    MLMConfig(**{**base, **overrides})


def test_the_longest_trained_input_leaves_out_a_roberta_row_training_never_reaches():
  """Training holds data.seq_len to max_positions - 2 for RoBERTa before the padding id is
  known: with [PAD] = 0 the table holds one more, never trained, which exports (their tokenizer's
  model_max_length) and the LAMA probe's flax backend offered."""
  common = dict(vocab_size=50, num_layers=1, hidden_size=16, num_heads=2, mlp_size=32,
                max_positions=514)
  for flavour, pad_id, holds, trained in (("roberta", 0, 513, 512), ("roberta", 1, 512, 512),
                                          ("roberta", 3, 510, 510), ("bert", 0, 514, 514)):
    cfg = MLMConfig(flavour=flavour, pad_id=pad_id, **common)
    assert (cfg.max_seq_len, cfg.max_trained_len) == (holds, trained), (flavour, pad_id)


def test_numpy_integer_sizes_are_taken_as_ints():
  """A size from NumPy (a table's shape, len of an array) was refused as "must be a positive
  integer", which get_masker takes; it is kept as an int, which config.json can be written of."""
  cfg = MLMConfig(vocab_size=np.int64(30522), num_layers=np.int32(1), hidden_size=16,
                  num_heads=2, mlp_size=32, pad_id=np.int64(1))
  assert type(cfg.vocab_size) is int and type(cfg.num_layers) is int and type(cfg.pad_id) is int
  json.dumps(dataclasses.asdict(cfg))
  # The padding id is a token id: None, -1, 1.0 or one past the vocabulary were taken (None
  # failed later with a TypeError, -1 numbered RoBERTa's positions from 0).
  for bad in (None, -1, 1.0, 30522, True):
    with pytest.raises(ValueError, match=rf"model pad_id={bad!r} must be a token id in "
                                         r"\[0, 30522\)"):
      MLMConfig(vocab_size=30522, num_layers=1, hidden_size=16, num_heads=2, mlp_size=32,
                pad_id=bad)


@pytest.mark.parametrize("flavour,pad_id,longest", [("bert", 0, 8), ("roberta", 1, 6)])
def test_inputs_longer_than_the_position_table_raise(flavour, pad_id, longest):
  cfg = MLMConfig(vocab_size=50, num_layers=1, hidden_size=16, num_heads=2, mlp_size=32,
                  max_positions=8, flavour=flavour, pad_id=pad_id)
  assert cfg.max_seq_len == longest
  model = BertMLM(cfg)
  params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), longest))
  def logits(length):
    ids = jnp.full((2, length), 7, jnp.int32)
    return jax.eval_shape(lambda p: model.apply({"params": p}, ids, deterministic=True), params)

  assert logits(longest).shape == (2, longest, 50)
  with pytest.raises(ValueError, match=f"longer than the model's position table holds "
                                       f"\\({longest}: model.max_positions=8"):
    logits(longest + 1)


def test_an_eager_apply_refuses_ids_outside_their_tables_naming_the_argument():
  """JAX's gathers gave NaN logits for an id or token type past the end of its table (a
  sentence pair's type 1 on a RoBERTa-layout model: every position NaN) and wrapped a negative id
  (-100 read row V - 100) or masked position; Hugging Face's models raise. Concrete arrays are
  checked; a jitted step's tracers are not (the data pipeline's ids are in range)."""
  cfg = MLMConfig(vocab_size=50, num_layers=1, hidden_size=16, num_heads=2, mlp_size=32,
                  flavour="roberta", max_positions=10, type_vocab_size=1, pad_id=1)
  model = BertMLM(cfg)
  params = _random_params(cfg)
  ids = np.full((2, 6), 7, np.int32)
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)  # noqa: E731
  good = apply(ids, np.zeros_like(ids), masked_positions=np.array([[0], [5]]))
  assert np.isfinite(np.asarray(good)).all()
  cases = [
      ((np.where(np.arange(6) == 2, 50, ids),), {},
       r"input_ids hold values in \[7, 50\], outside the model's vocabulary \[0, 50\)"),
      ((np.where(np.arange(6) == 2, -100, ids),), {}, r"input_ids hold values in \[-100, 7\]"),
      ((ids, np.ones_like(ids)), {}, r"token_type_ids hold values in \[1, 1\], outside the "
       r"model's token types \[0, 1\): this model has one \(RoBERTa's layout\), so pass zeros"),
      ((ids,), dict(masked_positions=np.array([[3, -1], [0, 1]])),
       r"masked_positions hold values in \[-1, 3\], outside the sequence's positions \[0, 6\)"),
      ((ids,), dict(masked_positions=np.array([[6], [0]])),
       r"masked_positions hold values in \[0, 6\]"),
      ((ids.astype(np.float32),), {}, "input_ids must hold integers, got dtype float32"),
      # Shapes (static, so under jit too): one unbatched sequence was a bare IndexError in the
      # attention; a (1, P) masked_positions beside batch 2 was broadcast silently.
      ((ids[0],), {}, r"input_ids must be \(batch, length\), got shape \(6,\): add a batch "
       r"dimension"),
      ((ids, np.zeros((2, 4), np.int32)), {},
       r"token_type_ids must have input_ids' shape \(2, 6\), got \(2, 4\)"),
      ((ids,), dict(masked_positions=np.array([[0]])),
       r"masked_positions must be \(batch, predictions\) with input_ids' batch 2, got shape "
       r"\(1, 1\)"),
      ((ids,), dict(masked_positions=np.array([0, 5])), r"masked_positions must be"),
  ]
  for args, kwargs, match in cases:
    with pytest.raises(ValueError, match=match):
      apply(*args, **kwargs)
  # Under jit they are tracers: unchecked, as documented (no host sync per step).
  bad = np.where(np.arange(6) == 2, 50, ids)
  assert jax.jit(lambda p, x: model.apply({"params": p}, x))(params, bad).shape == (2, 6, 50)
  with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\)"):
    jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ids[0])


def _random_params(cfg, seed=0, scale=0.5):
  """Parameters large enough that the attention scale and mask change the logits visibly."""
  shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(BertMLM(cfg), jax.random.key(0), 8)))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray(float(path[-1].key == "scale") +
                                  scale * rng.standard_normal(x.shape), jnp.float32), shapes)


@pytest.mark.parametrize("flavour,pad_id", [("bert", 0), ("roberta", 1)])
def test_attention_probability_dropout_branch_computes_the_fused_attention(flavour, pad_id):
  """With a negligible attention-dropout rate the unfused branch (taken only when training with
  attention dropout) must give the fused kernel's logits: the same 1 / sqrt(head_dim) scale and
  the same padding mask, on right-padded inputs."""
  cfg = MLMConfig(vocab_size=50, num_layers=2, hidden_size=32, num_heads=4, mlp_size=48,
                  max_positions=40, flavour=flavour, pad_id=pad_id, dropout=0.0,
                  attention_dropout=1e-9)
  model = BertMLM(cfg)
  params = _random_params(cfg)
  ids = np.random.default_rng(1).integers(5, 50, (3, 12)).astype(np.int32)
  ids[0, 7:] = pad_id
  ids[1, 3:] = pad_id
  ids = jnp.asarray(ids)

  def logits(deterministic):
    return np.asarray(model.apply({"params": params}, ids, deterministic=deterministic,
                                  rngs={"dropout": jax.random.key(0)}))

  fused, unfused = logits(True), logits(False)
  keep = np.asarray(ids != pad_id)
  assert np.abs(fused[keep]).max() > 0.1
  np.testing.assert_allclose(unfused[keep], fused[keep], rtol=1e-5, atol=1e-5)


def test_roberta_flavour_from_the_base_config():
  from configs import base

  c = base.get_base_config("tiny")
  c.model.flavour = "roberta"
  cfg = MLMConfig.from_config(c.model, vocab_size=50, pad_id=1)
  assert cfg.layer_norm_eps == 1e-5 and cfg.type_vocab_size == 1 and cfg.max_positions == 514
  assert cfg.max_seq_len == 512
  ids = jnp.array([[5, 6, 7, 1, 1]])
  from informask_jax.model import position_ids

  np.testing.assert_array_equal(position_ids(cfg, ids), [[2, 3, 4, 1, 1]])
  c.model.flavour = "bert"
  cfg = MLMConfig.from_config(c.model, vocab_size=50, pad_id=0)
  assert cfg.layer_norm_eps == 1e-12 and cfg.type_vocab_size == 2 and cfg.max_positions == 512


def _numpy_mlm_logits(cfg, params, ids, token_types, positions=None):
  """An independent float64 NumPy BERT / RoBERTa MLM forward (Hugging Face's layout): post-LN
  layers, exact-erf GELU, padding keys masked, softmax over the keys, 1 / sqrt(head_dim), the
  transform then the decoder tied to the word embeddings plus its bias. Logits (B, L or P, V)."""
  from scipy.special import erf

  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)

  def norm(x, q):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + cfg.layer_norm_eps) * q["scale"] + q["bias"]

  def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))

  not_pad = ids != cfg.pad_id
  if cfg.flavour == "roberta":  # HF's create_position_ids_from_input_ids.
    pos = np.where(not_pad, np.cumsum(not_pad, -1) + cfg.pad_id, cfg.pad_id)
  else:
    pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  e = p["embeddings"]
  x = norm(e["word"]["embedding"][ids] + e["position"]["embedding"][pos] +
           e["token_type"]["embedding"][token_types], e["norm"])
  for i in range(cfg.num_layers):
    if cfg.scan_layers:
      layer = jax.tree.map(lambda a, i=i: a[i], p["encoder"]["layers"])
    else:
      layer = p["encoder"][f"layer_{i}"]
    a = layer["attention"]
    q, k, v = (np.einsum("blh,hnd->blnd", x, a[n]["kernel"]) + a[n]["bias"]
               for n in ("query", "key", "value"))
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(cfg.head_dim)
    scores = np.where(not_pad[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("bnqk,bknd->bqnd", probs, v)
    attn = np.einsum("bqnd,ndh->bqh", context, a["out"]["kernel"]) + a["out"]["bias"]
    x = norm(x + attn, layer["attention_norm"])
    h = gelu(x @ layer["mlp_in"]["kernel"] + layer["mlp_in"]["bias"])
    x = norm(x + h @ layer["mlp_out"]["kernel"] + layer["mlp_out"]["bias"], layer["mlp_norm"])
  if positions is not None:
    x = np.take_along_axis(x, positions[..., None], axis=1)
  head = p["head"]
  t = norm(gelu(x @ head["transform"]["kernel"] + head["transform"]["bias"]), head["norm"])
  return t @ e["word"]["embedding"].T + head["bias"]


def _reference_case(flavour, pad_id, scan_layers, **overrides):
  """A 2-layer model with random parameters, embeddings at their initial scale (0.02) so that
  the embedding LayerNorm's variance is small enough for its epsilon to show, and right-padded
  ids with both token types."""
  cfg = MLMConfig(**{**dict(vocab_size=50, num_layers=2, hidden_size=32, num_heads=4,
                            mlp_size=48, max_positions=16, flavour=flavour, pad_id=pad_id,
                            dropout=0.0, scan_layers=scan_layers,
                            layer_norm_eps=1e-12 if flavour == "bert" else 1e-5), **overrides})
  params = _random_params(cfg, seed=3, scale=0.3)
  params["embeddings"] = jax.tree_util.tree_map_with_path(
      lambda path, x: x if path[-1].key in ("scale", "bias") else x / 15, params["embeddings"])
  rng = np.random.default_rng(4)
  ids = rng.integers(5, 50, (3, 10)).astype(np.int32)
  ids[0, 6:] = pad_id
  ids[1, 2:] = pad_id
  token_types = (rng.uniform(size=ids.shape) < 0.5).astype(np.int32)
  return cfg, params, ids, token_types


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("flavour,pad_id", [("bert", 0), ("roberta", 1)])
def test_logits_match_a_numpy_reference(flavour, pad_id, scan_layers):
  """Every token's logits, and the logits at gathered target positions (the last layer then runs
  at those rows only), equal the float64 NumPy forward."""
  cfg, params, ids, token_types = _reference_case(flavour, pad_id, scan_layers)
  model = BertMLM(cfg)
  expected = _numpy_mlm_logits(cfg, params, ids, token_types)
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(token_types)))
  keep = ids != pad_id  # Padding rows are never read; only the real tokens' logits matter.
  assert np.abs(expected[keep]).max() > 0.3  # Small embeddings: small logits.
  np.testing.assert_allclose(got[keep], expected[keep], rtol=1e-4, atol=1e-5)

  positions = np.array([[1, 4, 5], [0, 1, 0], [9, 2, 3]], np.int32)
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(token_types),
                               masked_positions=jnp.asarray(positions)))
  np.testing.assert_allclose(
      got, _numpy_mlm_logits(cfg, params, ids, token_types, positions), rtol=1e-4, atol=1e-5)


def test_the_layer_norm_epsilon_is_the_configured_one():
  """A large epsilon (1e-2) against the small-variance embeddings: the reference follows it, so a
  LayerNorm that ignored `layer_norm_eps` would be caught even where 1e-12 and 1e-5 blur."""
  cfg, params, ids, token_types = _reference_case("bert", 0, False, layer_norm_eps=1e-2)
  got = np.asarray(BertMLM(cfg).apply({"params": params}, jnp.asarray(ids),
                                      jnp.asarray(token_types)))
  keep = ids != 0
  np.testing.assert_allclose(got[keep], _numpy_mlm_logits(cfg, params, ids, token_types)[keep],
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flavour,pad_id", [("bert", 0), ("roberta", 1)])
def test_layer_norm_is_exact_for_inputs_far_from_zero_mean(flavour, pad_id):
  """Position embeddings offset by 5 (a mean ~150 times the embeddings' spread): the variance,
  taken as E[x^2] - E[x]^2 (flax's fast variance), lost its digits to cancellation, 2e-3 off the
  reference's logits; with the mean subtracted first, as PyTorch does, they stay within 1e-5."""
  cfg, params, ids, token_types = _reference_case(flavour, pad_id, False)
  position = params["embeddings"]["position"]
  position["embedding"] = position["embedding"] + 5.0
  got = np.asarray(BertMLM(cfg).apply({"params": params}, jnp.asarray(ids),
                                      jnp.asarray(token_types)))
  keep = ids != pad_id
  np.testing.assert_allclose(got[keep], _numpy_mlm_logits(cfg, params, ids, token_types)[keep],
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flavour,value,expected", [
    ("bert", -1.0, 1e-12), ("roberta", -1.0, 1e-5), ("roberta", 1e-7, 1e-7), ("bert", 1, 1.0)])
def test_the_configured_layer_norm_epsilon_or_the_flavours(flavour, value, expected):
  """config.model.layer_norm_eps: -1 keeps the flavour's; another (an imported checkpoint's) is
  used as given, whatever the flavour."""
  from configs import base

  c = base.get_base_config("tiny")
  c.model.flavour, c.model.layer_norm_eps = flavour, value
  cfg = MLMConfig.from_config(c.model, vocab_size=50, pad_id=1)
  assert cfg.layer_norm_eps == expected and isinstance(cfg.layer_norm_eps, float)


@pytest.mark.parametrize("value", [0.0, -2.0, -1e-5, float("nan"), float("inf")])
def test_a_bad_layer_norm_epsilon_is_refused_naming_the_key(value):
  from configs import base

  c = base.get_base_config("tiny")
  c.model.layer_norm_eps = value
  with pytest.raises(ValueError, match=r"config.model.layer_norm_eps=.*: expected a positive "
                                       r"number, or -1 for the flavour's default"):
    MLMConfig.from_config(c.model, vocab_size=50, pad_id=0)


def test_dropout_is_off_in_evaluation_and_on_in_training():
  """With dropout and attention dropout configured, a deterministic forward needs no dropout key
  and gives the dropout-free reference; a training forward differs from it."""
  cfg, params, ids, token_types = _reference_case("bert", 0, False, dropout=0.3,
                                                  attention_dropout=0.2)
  model = BertMLM(cfg)
  expected = _numpy_mlm_logits(cfg, params, ids, token_types)
  keep = ids != 0
  evaluated = np.asarray(model.apply({"params": params}, jnp.asarray(ids),
                                     jnp.asarray(token_types)))  # No rngs: none may be drawn.
  np.testing.assert_allclose(evaluated[keep], expected[keep], rtol=1e-4, atol=1e-5)
  trained = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(token_types),
                                   deterministic=False, rngs={"dropout": jax.random.key(0)}))
  assert np.abs(trained[keep] - expected[keep]).mean() > 0.01


def test_low_precision_compute_keeps_float32_parameters_and_logits():
  """bfloat16 activations: parameters stay float32 and the logits come back float32 (the loss's
  log-softmax over the vocabulary needs them), close to the float32 reference."""
  cfg, params, ids, token_types = _reference_case("bert", 0, False, compute_dtype="bfloat16")
  model = BertMLM(cfg)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0), 8)))
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  logits = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(token_types))
  assert logits.dtype == jnp.float32
  keep = ids != 0
  expected = _numpy_mlm_logits(cfg, params, ids, token_types)[keep]
  assert np.abs(np.asarray(logits)[keep] - expected).mean() < 0.05 * np.abs(expected).mean()
  # The tied decoder (..., H) x (V, H) is a bfloat16 product too, accumulated into float32.
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, jnp.asarray(ids),
                                               jnp.asarray(token_types)))(params)
  decoder = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"
             and e.outvars[0].aval.shape[-1] == cfg.vocab_size]
  assert len(decoder) == 1, decoder
  assert [v.aval.dtype for v in decoder[0].invars] == [jnp.dtype(jnp.bfloat16)] * 2
  assert decoder[0].outvars[0].aval.dtype == jnp.float32


def test_low_precision_bias_gradients_are_as_accurate_as_the_kernels():
  """bfloat16 compute: a dense layer's bias gradient sums the output gradient over every token of
  the batch; summed in bfloat16 it was off by 5-40% (the value projection's most) against float32
  at 8k tokens, where the kernels' gradients (accumulated in float32 by the matmul) are off by
  well under 1%."""
  from informask_jax import masking
  from informask_jax import trainer as trainer_lib

  vocab, length, batch = 512, 128, 64
  ids = (np.random.default_rng(0).zipf(1.3, (batch, length)) % (vocab - 5) + 5).astype(np.int32)
  ids[:, 0], ids[:, -1] = 2, 3
  masker = masking.get_masker("random", vocab_size=vocab, mask_id=4, special_ids=(0, 1, 2, 3, 4))
  targets = trainer_lib._masked_targets(masker, jax.random.key(1),
                                        {"token_ids": jnp.asarray(ids)}, 20)[:4]

  def gradients(dtype):
    cfg = MLMConfig(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2, mlp_size=64,
                    dropout=0.0, attention_dropout=0.0, compute_dtype=dtype)
    model = BertMLM(cfg)
    params = nn.meta.unbox(init_params(model, jax.random.key(0), length))
    loss = lambda p: trainer_lib._mlm_sums(model, p, *targets, None, True)[0]
    return {jax.tree_util.keystr(k): np.asarray(g, np.float64) for k, g in
            jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(params))}

  grads = {dtype: gradients(dtype) for dtype in ("float32", "bfloat16")}
  error = {k: np.linalg.norm(grads["bfloat16"][k] - g) / np.linalg.norm(g)
           for k, g in grads["float32"].items() if np.linalg.norm(g) > 1e-6}
  kernels = max(e for k, e in error.items() if "kernel" in k)
  biases = {k: e for k, e in error.items() if "bias" in k and "layer_norm" not in k.lower()}
  assert kernels < 0.02, kernels
  assert len(biases) >= 6 and max(biases.values()) < 2 * kernels + 0.005, (kernels, biases)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_parameters_carry_their_logical_axis_names(scan_layers):
  """The names sharding.py maps to mesh axes, leaf by leaf (scanned layers gain a leading
  "layers" axis); and a scanned stack initialises each layer with its own key."""
  cfg = MLMConfig(vocab_size=50, num_layers=2, hidden_size=16, num_heads=2, mlp_size=24,
                  max_positions=16, scan_layers=scan_layers)
  boxed = init_params(BertMLM(cfg), jax.random.key(0), 8)
  specs = nn.get_partition_spec(boxed)
  expected = {
      "attention/query/kernel": ("embed", "heads", "kv"), "attention/key/bias": ("heads", "kv"),
      "attention/value/kernel": ("embed", "heads", "kv"),
      "attention/out/kernel": ("heads", "kv", "embed"), "attention/out/bias": ("embed",),
      "mlp_in/kernel": ("embed", "mlp"), "mlp_in/bias": ("mlp",),
      "mlp_out/kernel": ("mlp", "embed"), "mlp_norm/scale": ("embed",)}
  layers = specs["encoder"]["layers"] if scan_layers else specs["encoder"]["layer_1"]
  for path, names in expected.items():
    spec = layers
    for key in path.split("/"):
      spec = spec[key]
    assert tuple(spec) == (("layers",) if scan_layers else ()) + names, path
  assert tuple(specs["embeddings"]["word"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["embeddings"]["position"]["embedding"]) == (None, "embed")
  assert tuple(specs["embeddings"]["token_type"]["embedding"]) == (None, "embed")
  assert tuple(specs["head"]["bias"]) == ("vocab",)
  assert tuple(specs["head"]["transform"]["kernel"]) == ("embed", None)
  if scan_layers:
    kernel = np.asarray(nn.meta.unbox(boxed)["encoder"]["layers"]["mlp_in"]["kernel"])
    assert not np.allclose(kernel[0], kernel[1])


def test_scanned_layers_draw_their_own_dropout_masks_at_target_positions(monkeypatch):
  """Training with scan_layers and masked_positions runs the layers as a lax.scan plus the last
  layer at the target rows (Encoder._scan_then_rows), splitting the dropout key per layer by
  hand. Every dropout call of every layer must get its own key: one key shared by the layers
  would repeat the same masks in each of them (correlated dropout, weaker regularisation), which
  no logit comparison shows, since a training forward has no reference."""
  from informask_jax.masking import prng

  keys = []
  keep = prng.dropout_keep

  def recording(rng, shape, rate):
    jax.debug.callback(lambda k: keys.append(tuple(np.asarray(k).ravel().tolist())),
                       jax.random.key_data(rng))
    return keep(rng, shape, rate)

  monkeypatch.setattr(prng, "dropout_keep", recording)
  cfg = MLMConfig(vocab_size=50, num_layers=3, hidden_size=16, num_heads=2, mlp_size=24,
                  max_positions=16, dropout=0.1, scan_layers=True)
  model = BertMLM(cfg)
  params = nn.meta.unbox(init_params(model, jax.random.key(0), 8))
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 50, (2, 8)), jnp.int32)
  logits = model.apply({"params": params}, ids, masked_positions=jnp.array([[1, 2], [3, 4]]),
                       deterministic=False, rngs={"dropout": jax.random.key(1)})
  jax.block_until_ready(logits)
  jax.effects_barrier()
  # The embeddings' dropout, then two per layer (attention output, MLP output).
  assert len(keys) == 1 + 2 * cfg.num_layers
  assert len(set(keys)) == len(keys), keys
  # A training forward at every token takes the other path, flax's nn.scan, whose per-layer keys
  # come from its split_rngs: each layer must get its own there too.
  keys.clear()
  logits = model.apply({"params": params}, ids, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
  jax.block_until_ready(logits)
  jax.effects_barrier()
  assert len(set(keys)) == len(keys), keys
  assert len(keys) == 1 + 2 * cfg.num_layers


@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_encoder_layers_dropout_follows_the_key(scan_layers):
  """Training forwards at target rows (the train step's): the layers' dropout masks come from the
  "dropout" key, also on the scanned stack's own path (a lax.scan fed one key per layer). The
  same key gives the same rows, another key other rows; masks from a fixed key would drop the same
  units at every step."""
  from informask_jax.model import Encoder

  cfg = MLMConfig(vocab_size=50, num_layers=2, hidden_size=16, num_heads=2, mlp_size=24,
                  max_positions=16, dropout=0.3, scan_layers=scan_layers)
  params = _random_params(cfg)["encoder"]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 16)), jnp.float32)
  positions = jnp.array([[1, 5], [0, 7]], jnp.int32)

  def rows(seed):
    return np.asarray(Encoder(cfg).apply({"params": params}, x, jnp.ones((2, 8), bool), False,
                                         positions, rngs={"dropout": jax.random.key(seed)}))

  np.testing.assert_array_equal(rows(0), rows(0))
  assert np.abs(rows(0) - rows(1)).max() > 1e-2
