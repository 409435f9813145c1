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
