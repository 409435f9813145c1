"""Command-line config values that passed the config checks and went wrong later: each must be
refused by the check, naming its config key, before the corpus is read."""

import math

import jax
import jax.numpy as jnp
import pytest

from configs import base
from informask_jax import loop, optim
from informask_jax import model as model_lib

# Below float32's smallest normal number the device computes with 0 (XLA:CPU flushes
# subnormals), so a positive epsilon there is an epsilon of 0.
_SUBNORMAL = 1e-40


def test_optim_eps_that_is_zero_in_float32_is_refused():
  c = base.get_base_config("tiny").optim
  c.eps = _SUBNORMAL
  # Why it must be refused: m / (sqrt(v) + 0) = 0 / 0 for every parameter whose gradient is 0
  # (the embedding rows of tokens absent from the batch), which turn NaN in a step whose
  # gradients are finite, so it is not skipped; the run fails later, at a batch using them.
  tx, schedule = optim.make_optimizer(c, 10)
  params = {"kernel": jnp.ones((2, 2))}
  apply = optim.make_apply_update(c, schedule)
  grads = {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])}
  new, _ = apply(params, tx.init(params), grads, jnp.float32(1.0), jnp.bool_(True))
  assert math.isnan(float(new["kernel"][1, 1]))
  with pytest.raises(ValueError, match=r"config.optim.eps=1e-40 must be a finite number >= "
                                       r"1.2e-38"):
    optim.check_config(c)
  c.eps = 1.2e-38
  optim.check_config(c)


def test_layer_norm_eps_that_is_zero_in_float32_is_refused():
  c = base.get_base_config("tiny").model
  c.layer_norm_eps = _SUBNORMAL
  with pytest.raises(ValueError, match=r"config.model.layer_norm_eps=1e-40: expected a positive "
                                       r"number, .*; at least 1.2e-38, float32's smallest normal"):
    model_lib.MLMConfig.from_config(c, vocab_size=100, pad_id=0)
  c.layer_norm_eps = 1.2e-38
  cfg = model_lib.MLMConfig.from_config(c, vocab_size=100, pad_id=0)
  # The smallest accepted epsilon still normalises a constant row (a zero variance) to zeros.
  x = jnp.ones((1, 4))
  ln = model_lib._layer_norm(cfg, "ln")
  out = ln.apply(ln.init(jax.random.key(0), x), x)
  assert bool(jnp.all(out == 0))


def test_informask_num_candidates_above_the_online_bound_is_refused_before_the_corpus(
    tiny_config):
  # informask's rates come from the statistics, whose last stage runs the online masker with
  # K = num_candidates: above its bound of 512 that failed only after the corpus was read and
  # its counts and PMI were built.
  assert tiny_config.masking.name == "informask" and not tiny_config.masking.rates_path
  tiny_config.masking.num_candidates = 1000
  with pytest.raises(ValueError, match=r"config.masking.num_candidates=1000 .*more than 512"):
    loop.check_config(tiny_config)
  tiny_config.masking.num_candidates = 512
  loop.check_config(tiny_config)


@pytest.mark.parametrize("size", [0, -1, 5])
def test_a_trained_vocabulary_too_small_is_refused_before_the_corpus(tiny_config, size):
  # The vocabulary trainer refused these only after the corpus was read and cleaned.
  assert tiny_config.tokenizer.name_or_path == ""
  tiny_config.tokenizer.vocab_size = size
  with pytest.raises(ValueError, match=rf"config.tokenizer.vocab_size={size} is too small to "
                                       r"train a vocabulary on: it must be above the 5 special"):
    loop.check_config(tiny_config)
  tiny_config.tokenizer.vocab_size = 6
  loop.check_config(tiny_config)
  # A loaded vocabulary has its own size, which the setting does not change.
  tiny_config.tokenizer.vocab_size = 0
  tiny_config.tokenizer.name_or_path = "bert-base-uncased"
  loop.check_config(tiny_config)
