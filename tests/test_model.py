"""Tests for informask_jax/model.py that need no Hugging Face reference (those are in
test_export.py): the FLOP count behind the benchmark's MFU against the traced step."""

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
@pytest.mark.parametrize("predictions", [3, 10])
def test_flop_count_is_the_traced_gradient_steps_matmuls(scan_layers, predictions):
  # Distinct sizes everywhere, so that a swapped factor cannot cancel out.
  cfg = MLMConfig(vocab_size=50, num_layers=3, hidden_size=16, num_heads=2, mlp_size=24,
                  max_positions=64, scan_layers=scan_layers)
  model = BertMLM(cfg)
  params = nn.meta.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0), 8)))
  batch, length = 2, 10
  ids = jnp.ones((batch, length), jnp.int32)
  positions = jnp.zeros((batch, predictions), jnp.int32)

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
    (dict(flavour="roberta", max_positions=4, pad_id=3), "leaves no positions")])
def test_bad_architecture_raises_naming_the_key(overrides, match):
  base = dict(vocab_size=50, num_layers=1, hidden_size=16, num_heads=2, mlp_size=32)
  with pytest.raises(ValueError, match=match):
    MLMConfig(**{**base, **overrides})


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
