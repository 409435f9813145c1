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
