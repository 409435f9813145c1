"""Command-line config values that passed the config checks and went wrong later: each must be
refused by the check, naming its config key, before the corpus is read."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
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
  with pytest.raises(ValueError, match=r"config.optim.eps=1e-40 must be a finite float32 number >= "
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


@pytest.mark.parametrize("key", ["max_positions", "type_vocab_size"])
def test_a_table_of_2_31_rows_or_more_is_refused_naming_the_key(tiny_config, key):
  # It passed the checks, and the model's init then failed inside jnp.take with an
  # OverflowError (a Python int past int32) that named no key.
  tiny_config.model[key] = 2**31
  with pytest.raises(ValueError, match=rf"config.model.{key}=2147483648 must be below 2\*\*31"):
    loop.check_config(tiny_config)


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


@pytest.fixture
def on_a_gpu(monkeypatch):
  """check_config as on a GPU backend (its GPU-only checks, reached from a CPU)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def test_cudnn_attention_in_float32_is_refused_naming_the_dtype(tiny_config, on_a_gpu):
  # jax.nn.dot_product_attention(implementation="cudnn") takes fp16 / bf16 only: the tiny
  # config's float32 failed when the first step was traced, after the corpus and statistics.
  tiny_config.model.attention = "cudnn"
  with pytest.raises(ValueError, match=r"attention='cudnn' needs config.model.compute_dtype="
                                       r"'bfloat16' \(or 'float16'\): .* no float32 kernel"):
    loop.check_config(tiny_config)
  tiny_config.model.compute_dtype = "bfloat16"
  loop.check_config(tiny_config)


@pytest.mark.parametrize("hidden,heads", [(100, 2), (520, 2)])
def test_cudnn_attention_with_a_head_size_it_lacks_is_refused(tiny_config, on_a_gpu, hidden,
                                                              heads):
  # cuDNN's kernel needs a head size that is a multiple of 8, at most 256 (128 before Hopper).
  tiny_config.model.attention, tiny_config.model.compute_dtype = "cudnn", "bfloat16"
  tiny_config.model.hidden_size, tiny_config.model.num_heads = hidden, heads
  with pytest.raises(ValueError, match=rf"multiple of 8 and at most \d+; config.model.hidden_size"
                                       rf"={hidden} / num_heads={heads} = {hidden // heads}"):
    loop.check_config(tiny_config)
  tiny_config.model.hidden_size = 128
  loop.check_config(tiny_config)


def test_cudnn_attention_that_training_cannot_use_is_warned_of(tiny_config, on_a_gpu, caplog):
  # With attention-probability dropout the model trains on the unfused branch (cuDNN's kernel
  # has no dropout): the README's `:base --config.model.attention=cudnn` ran training without
  # cuDNN, silently; only the evaluations used it.
  tiny_config.model.attention, tiny_config.model.compute_dtype = "cudnn", "bfloat16"
  tiny_config.model.attention_dropout = 0.1
  with caplog.at_level(logging.WARNING):
    loop.check_config(tiny_config)
  assert "attention_dropout=0.1: cuDNN's fused attention has no dropout" in caplog.text
  caplog.clear()
  tiny_config.model.attention_dropout = 0.0
  with caplog.at_level(logging.WARNING):
    loop.check_config(tiny_config)
  assert "cuDNN" not in caplog.text


@pytest.mark.parametrize("seq_len,positions,fused", [(9, 2, False), (10, 2, True),
                                                     (10, 3, False)])
def test_cudnn_attention_is_asked_only_for_even_query_and_key_lengths(monkeypatch, seq_len,
                                                                      positions, fused):
  # With a mask, cuDNN's training kernel refuses an odd query or key length; an odd seq_len
  # (--config.data.seq_len=127) gave every layer odd keys, and the last layer's even P target
  # rows were sent to it, failing when the step was traced.
  asked = []
  original = jax.nn.dot_product_attention

  def recording(*args, implementation=None, **kwargs):
    asked.append((args[0].shape[1], args[1].shape[1], implementation))
    return original(*args, implementation=None, **kwargs)  # No cuDNN here: XLA computes it.

  monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
  cfg = model_lib.MLMConfig(vocab_size=50, num_layers=2, hidden_size=16, num_heads=2,
                            mlp_size=32, attention="cudnn", compute_dtype="bfloat16")
  model = model_lib.BertMLM(cfg)
  ids = jnp.ones((2, seq_len), jnp.int32)
  where = jnp.broadcast_to(jnp.arange(positions, dtype=jnp.int32), (2, positions))
  params = model.init(jax.random.key(0), ids, masked_positions=where)["params"]
  model.apply({"params": params}, ids, masked_positions=where, deterministic=False,
              rngs={"dropout": jax.random.key(1)})
  last = asked[-1]  # The last layer: P query rows over the seq_len key rows.
  assert last[:2] == (positions, seq_len)
  assert (last[2] == "cudnn") is fused
  assert all(impl != "cudnn" or (q % 2 == 0 and k % 2 == 0) for q, k, impl in asked)


def _on_a_pad_3_vocabulary_as_roberta(tiny_config, tmp_path, monkeypatch):
  """tiny_config on a vocab.txt whose [PAD] is id 3 (a SentencePiece model's usual choice), in
  RoBERTa's layout of 130 positions; reading the corpus fails the test."""
  from informask_jax import corpus

  vocab = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"] + [chr(c) for c in range(97, 123)]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tiny_config.tokenizer.name_or_path = str(tmp_path / "vocab.txt")
  tiny_config.model.flavour, tiny_config.model.max_positions = "roberta", 130
  monkeypatch.setattr(corpus, "load_corpus", lambda *a: pytest.fail("the corpus was read"))


def test_a_seq_len_past_the_positions_after_a_roberta_padding_id_is_refused_before_the_corpus(
    tiny_config, tmp_path, monkeypatch):
  # check_config allows a RoBERTa layout max_positions - 2 tokens, as for a padding id of 1
  # (Hugging Face's RoBERTa); positions start after the padding id, so a vocabulary whose [PAD]
  # is 3 holds max_positions - 4. That was refused only once the corpus was tokenized and its
  # statistics built.
  _on_a_pad_3_vocabulary_as_roberta(tiny_config, tmp_path, monkeypatch)
  loop.check_config(tiny_config)  # seq_len 128 = 130 - 2.
  with pytest.raises(ValueError, match=r"config.data.seq_len=128 exceeds the 126 positions of "
                                       r"config.model.max_positions=130 \(RoBERTa positions "
                                       r"start after the padding id 3\)"):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")


def test_a_resumed_vocabulary_edited_in_place_is_named_before_the_positions_it_leaves(
    tiny_config, tmp_path, monkeypatch):
  # The run's vocabulary file regenerated at its path with [PAD] at 3: the resume's other
  # tokenizer is the problem, not the seq_len (shortened, the resume was refused all the same).
  from informask_jax import compatibility, tokenization

  _on_a_pad_3_vocabulary_as_roberta(tiny_config, tmp_path, monkeypatch)
  meta = {"config": compatibility.config_json(tiny_config), "tokenizer_fingerprint": "the run's"}
  monkeypatch.setattr(loop.workdir_lib, "prepare", lambda *a: (True, False))
  monkeypatch.setattr(loop.checkpointing, "latest_meta", lambda workdir: meta)
  assert tokenization.special_ids(tokenization.load_tokenizer(tiny_config.tokenizer)).pad == 3
  with pytest.raises(ValueError, match=r"the vocabulary file was edited\?"):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")


def test_a_rate_table_of_another_vocabulary_is_refused_before_the_corpus(tiny_config, tmp_path,
                                                                         monkeypatch):
  # masking.rates_path needs the tokenizer only: a table of another vocabulary (bert-base-
  # uncased's 30,522 ids) was refused once the whole corpus had been tokenized.
  from informask_jax import corpus

  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  np.save(tmp_path / "rates.npy", np.full(30522, 0.15, np.float32))
  tiny_config.tokenizer.name_or_path = str(tmp_path / "vocab.txt")
  tiny_config.masking.name, tiny_config.masking.rates_path = "informask", str(
      tmp_path / "rates.npy")
  loop.check_config(tiny_config)  # Its size is not known before the vocabulary.
  monkeypatch.setattr(corpus, "load_corpus", lambda *a: pytest.fail("the corpus was read"))
  with pytest.raises(ValueError, match=r"has shape \(30522,\); expected \(31,\)"):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
