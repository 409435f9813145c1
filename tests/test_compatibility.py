"""compatibility: a resume with another tokenizer, or with settings that change the batch order, is
refused, naming what changed."""

import logging

import ml_collections
import pytest

from informask_jax import compatibility


def _config(name_or_path):
  return ml_collections.ConfigDict({"tokenizer": {"name_or_path": name_or_path}})


def test_the_same_or_an_unrecorded_tokenizer_resumes():
  for saved in ({"tokenizer_fingerprint": "abc"}, {}):
    compatibility.check_tokenizer(saved, "abc", [], _config(""), "runs/x (step 2)")


def test_a_trained_vocabulary_names_the_corpus_settings_that_changed():
  changed = ["config.data.max_documents: 100 -> 200", "config.train.seed: 0 -> 1"]
  with pytest.raises(ValueError, match=r"in runs/x \(step 2\): this run's tokenizer is not the "
                                       r"one .* trained on the corpus .* differs "
                                       r"\(config.data.max_documents: 100 -> 200\)\. Resume"
                     ) as e:
    compatibility.check_tokenizer({"tokenizer_fingerprint": "abc"}, "xyz", changed,
                                  _config(""), "runs/x (step 2)")
  assert "train.seed" not in str(e.value)  # Only the settings the vocabulary follows.


def test_a_named_vocabulary_that_changed_is_said_to_be_edited():
  with pytest.raises(ValueError, match=r"config.tokenizer.name_or_path='vocab.txt' changed: the "
                                       r"vocabulary file was edited\? Restore it, or start a new "
                                       r"run in another --workdir"):
    compatibility.check_tokenizer({"tokenizer_fingerprint": "abc"}, "xyz", [],
                                  _config("vocab.txt"), "runs/x (step 2)")


def test_resume_names_the_config_changes():
  saved = {"masking": {"name": "informask", "mask_prob": 0.15}, "train": {"num_steps": 10}}
  now = {"masking": {"name": "span", "mask_prob": 0.15}, "train": {"num_steps": 20}}
  assert compatibility.config_changes(saved, now) == ["config.masking.name: 'informask' -> 'span'"]


@pytest.mark.parametrize("section,key,value", [
    ("train", "batch_size", 64), ("train", "seed", 7), ("data", "seq_len", 64),
    ("data", "packing", "doc_padded"), ("data", "validation_fraction", 0.5)])
def test_a_resume_in_another_batch_order_is_refused_for_every_key_that_fixes_it(
    tiny_config, tmp_path, monkeypatch, section, key, value):
  """Each setting that fixes the batch order is refused by name, before the corpus is read (the
  checkpoint's data position means nothing under another); settings that do not are let through."""
  saved = compatibility.config_json(tiny_config)
  monkeypatch.setattr(compatibility.checkpointing, "latest_meta", lambda workdir: {"config": saved})
  tiny_config.train.log_every = 7  # Not a data-order setting: a resume may change it.
  compatibility.check_resume_settings(tmp_path, tiny_config)
  old = tiny_config[section][key]
  tiny_config[section][key] = value
  with pytest.raises(ValueError, match=rf"Cannot resume the run in .*: config\.{section}\.{key}: "
                                       rf"{old!r} -> {value!r}\. The checkpoint's data position"):
    compatibility.check_resume_settings(tmp_path, tiny_config)


@pytest.mark.parametrize("saved, now, expected", [
    (100, 200, "decay now ends at step 200"),  # Past the warm-up: where the decay ends.
    (100, 40, "ends inside the learning-rate warm-up (config.optim.warmup_steps=50)"),
    (20, 40, None),  # Both runs end inside the warm-up: the rates are the same, nothing to say.
])
def test_a_changed_run_length_says_what_happens_to_the_learning_rate(saved, now, expected,
                                                                      caplog):
  """The README's tiny config warms up for 50 steps: a 20-step run resumed to 40 never decays,
  so "the decay now ends at step 40" would be wrong."""
  from configs import base

  config = base.get_base_config("tiny")
  assert config.optim.warmup_steps == 50
  config.train.num_steps = now
  with caplog.at_level(logging.WARNING):
    compatibility.warn_schedule_change({"config": {"train": {"num_steps": saved}}}, config, 10)
  if expected is None:
    assert "num_steps" not in caplog.text
  else:
    assert f"config.train.num_steps: {saved} -> {now}" in caplog.text and expected in caplog.text
