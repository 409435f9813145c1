"""compatibility: a resume with another tokenizer, or with settings that change the batch order, is
refused, naming what changed."""

import logging
import re

import ml_collections
import numpy as np
import pytest

from informask_jax import compatibility, tokenization


def _config(name_or_path):
  return ml_collections.ConfigDict({"tokenizer": {"name_or_path": name_or_path}})


def _tokenizer(tmp_path, tokens, lowercase=True):
  """A WordPiece tokenizer of the special tokens and `tokens` (ids in this order)."""
  path = tmp_path / f"vocab-{len(list(tmp_path.iterdir()))}.txt"
  path.write_text("\n".join(tokenization.SPECIAL_TOKENS + tuple(tokens)) + "\n")
  return tokenization.load_tokenizer(ml_collections.ConfigDict(
      {"name_or_path": str(path), "lowercase": lowercase}))


def _saved(tokenizer, workdir):
  """`tokenizer` saved as a run saves it, in WORKDIR/tokenizer; returns that directory."""
  tokenizer.save_pretrained(str(workdir / "tokenizer"))
  return workdir / "tokenizer"


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


def test_a_trained_vocabulary_that_changed_suggests_the_runs_saved_tokenizer(tmp_path):
  """A vocabulary trained otherwise now (a `tokenizers` upgrade) resumes with the one the run
  saved, which train.py writes at every start once its checks pass."""
  saved_dir = _saved(_tokenizer(tmp_path, ["cat"]), tmp_path / "run")
  with pytest.raises(ValueError, match=r"differs\. Resume with the run's data settings \(its "
                                       r"config.json\), or with the vocabulary it saved: "
                                       rf"--config.tokenizer.name_or_path={re.escape(str(saved_dir))}"
                                       r", or start a new run"):
    compatibility.check_tokenizer({"tokenizer_fingerprint": "abc"}, "xyz", [], _config(""),
                                  "runs/x (step 2)", saved_dir)


def test_a_resume_with_the_runs_own_saved_tokenizer_keeps_its_vocabulary(tiny_config, tmp_path,
                                                                         monkeypatch, caplog):
  """name_or_path '' -> WORKDIR/tokenizer changes the settings, not the vocabulary (the same
  fingerprint): accepted before the corpus is built; another tokenizer's directory is not."""
  run = _tokenizer(tmp_path, ["the", "cat", "sat"])
  meta = {"config": compatibility.config_json(tiny_config),
          "tokenizer_fingerprint": tokenization.tokenizer_fingerprint(run)}
  monkeypatch.setattr(compatibility.checkpointing, "latest_meta", lambda workdir: meta)
  tiny_config.tokenizer.name_or_path = str(_saved(run, tmp_path / "run"))
  with caplog.at_level(logging.INFO):
    compatibility.check_resume_settings(tmp_path / "run", tiny_config)
  assert ("Resuming with other tokenizer settings (config.tokenizer.name_or_path: '' -> "
          f"'{tmp_path / 'run' / 'tokenizer'}'): the vocabulary is the checkpoint's") in caplog.text
  other = _tokenizer(tmp_path, ["the", "sat", "cat"])
  tiny_config.tokenizer.name_or_path = str(_saved(other, tmp_path / "other"))
  with pytest.raises(ValueError, match=r"tokenizer settings changed \(config.tokenizer."
                                       r"name_or_path: '' -> '.*other/tokenizer'\)"):
    compatibility.check_resume_settings(tmp_path / "run", tiny_config)


def test_init_from_parameters_of_another_vocabulary_are_refused(tmp_path, caplog):
  """The same size (the architecture check passes) but other tokens at two ids: refused, with
  the init_from workdir's tokenizer as the way out; the same vocabulary passes silently."""
  init_dir = tmp_path / "init"
  _saved(_tokenizer(tmp_path, ["the", "cat", "sat", "##s"]), init_dir)
  with pytest.raises(ValueError, match=rf"config.init_from={re.escape(str(init_dir))} holds "
                                       r"parameters of another vocabulary: 2 of the 9 token ids "
                                       r"map to other tokens in this run's tokenizer\. Train with "
                                       r"its vocabulary: --config.tokenizer.name_or_path="
                                       rf"{re.escape(str(init_dir / 'tokenizer'))}\.$"):
    compatibility.check_init_vocabulary(str(init_dir), _tokenizer(tmp_path,
                                                                  ["the", "sat", "cat", "##s"]))
  # One token more: an id theirs lacks counts too (this is not the vocabulary they learned).
  with pytest.raises(ValueError, match=r"1 of the 10 token ids map to other tokens"):
    compatibility.check_init_vocabulary(str(init_dir), _tokenizer(
        tmp_path, ["the", "cat", "sat", "##s", "dog"]))
  with caplog.at_level(logging.WARNING):
    compatibility.check_init_vocabulary(str(init_dir), _tokenizer(tmp_path,
                                                                  ["the", "cat", "sat", "##s"]))
    compatibility.check_init_vocabulary(str(tmp_path / "no_tokenizer_saved"),
                                        _tokenizer(tmp_path, ["dog"]))
  assert not caplog.text


def test_init_from_the_same_vocabulary_normalised_otherwise_is_warned_about(tmp_path, caplog):
  init_dir = tmp_path / "init"
  _saved(_tokenizer(tmp_path, ["the", "cat"], lowercase=True), init_dir)
  with caplog.at_level(logging.WARNING):
    compatibility.check_init_vocabulary(str(init_dir),
                                        _tokenizer(tmp_path, ["the", "cat"], lowercase=False))
  assert (f"config.init_from={init_dir}: this run's tokenizer has the vocabulary of "
          f"{init_dir / 'tokenizer'} but normalises text otherwise") in caplog.text


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


def test_settings_newer_than_the_checkpoints_config_are_not_changes():
  """A run saved before model.layer_norm_eps existed was resumed with 'config.model.
  layer_norm_eps: None -> -1.0' among the changes, which no one made (and a new masking or
  tokenizer setting would have been taken for a masking change or refused the resume)."""
  saved = {"model": {"flavour": "bert"}, "masking": {"name": "span"}}
  now = {"model": {"flavour": "bert", "layer_norm_eps": -1.0},
         "masking": {"name": "span", "span": {"max_length": 10}}}
  newer = []
  assert compatibility.config_changes(saved, now, newer=newer) == []
  assert newer == ["config.masking.span.max_length=10", "config.model.layer_norm_eps=-1.0"]
  # A setting removed from the code is still listed: the run did use it.
  assert compatibility.config_changes(now, saved) == [
      "config.masking.span: {'max_length': 10} -> None",
      "config.model.layer_norm_eps: -1.0 -> None"]


def test_a_masking_change_says_the_evaluations_no_longer_compare(caplog):
  """Allowed on resume, but the evaluation masks change with it (a walkthrough resumed an
  informask run as span and the 'best' checkpoint was picked across both kinds of loss)."""
  config = ml_collections.ConfigDict({"masking": {"name": "span", "rates_path": ""}})
  window = "config.stats.window: 3 -> 7"
  with caplog.at_level(logging.WARNING):
    compatibility.warn_evaluation_change(["config.train.num_steps: 10 -> 20", window], config)
    assert not caplog.records  # span builds no statistics.
    compatibility.warn_evaluation_change(["config.masking.name: 'informask' -> 'span'"], config)
  assert "The masking changed (config.masking.name: 'informask' -> 'span'): evaluations from " \
         "here on use the new masks" in caplog.text
  assert "best by validation loss is still chosen across both" in caplog.text
  caplog.clear()
  config.masking.name = "informask"  # Its rates are built with the statistics settings ...
  with caplog.at_level(logging.WARNING):
    compatibility.warn_evaluation_change([window], config)
  assert f"The masking changed ({window})" in caplog.text
  caplog.clear()
  config.masking.rates_path = "rates.npy"  # ... unless a table is given.
  with caplog.at_level(logging.WARNING):
    compatibility.warn_evaluation_change([window], config)
  assert not caplog.records
  # Other validation rows (a capped evaluation reads a sample whose size this sets) compare no
  # better; the warning of the generic "config differs" line alone did not say so.
  with caplog.at_level(logging.WARNING):
    compatibility.warn_evaluation_change(["config.train.eval_batches: 100 -> 10"], config)
  assert ("The evaluation changed (config.train.eval_batches: 100 -> 10): evaluations from here "
          "on read other validation rows, so their losses do not compare with the earlier ones"
          in caplog.text)


def _checkpoint_of(tiny_config, monkeypatch):
  """The tiny config's run as its latest checkpoint's meta holds it (config and architecture)."""
  import dataclasses

  from informask_jax import model as model_lib

  mlm = model_lib.MLMConfig.from_config(tiny_config.model, vocab_size=1000, pad_id=0)
  meta = {"config": compatibility.config_json(tiny_config), "mlm_config": dataclasses.asdict(mlm)}
  monkeypatch.setattr(compatibility.checkpointing, "latest_meta", lambda workdir: meta)
  return meta


def test_a_resume_of_another_architecture_is_refused_and_one_of_other_dropout_is_not(
    tiny_config, tmp_path, monkeypatch):
  """The checkpoint's parameters have its shapes: a resume with another num_layers is refused
  before the corpus is built, naming the setting; dropout, not part of the shapes, may change."""
  layers = _checkpoint_of(tiny_config, monkeypatch)["mlm_config"]["num_layers"]
  tiny_config.model.dropout = 0.3
  compatibility.check_resume_settings(tmp_path, tiny_config)
  tiny_config.model.num_layers = layers + 1  # (0, the default, means the size's.)
  with pytest.raises(ValueError, match=r"The model of the latest checkpoint in .* does not "
                                       r"match this run's config:\n  model.num_layers: "
                                       rf"checkpoint {layers} != run {layers + 1}\nResume with "
                                       r"the run's model settings \(its config.json\), or start "
                                       r"a new run in another --workdir\.$"):
    compatibility.check_resume_settings(tmp_path, tiny_config)


def test_a_model_of_another_config_variant_names_the_variant(tiny_config, tmp_path,
                                                              monkeypatch):
  """A `:tiny` run resumed as `configs/x.py` (the paper's variant) was told a dozen model keys
  to set one by one; the variant sets them all."""
  meta = _checkpoint_of(tiny_config, monkeypatch)
  tiny_config.model.num_layers = meta["mlm_config"]["num_layers"] + 1  # The same variant: no
  # such line.
  with pytest.raises(ValueError) as refused:
    compatibility.check_resume_settings(tmp_path, tiny_config)
  assert "variant" not in str(refused.value)
  tiny_config.variant = "paper"  # The model keys the variant sets, as the one above.
  with pytest.raises(ValueError, match=r"(?s)model.num_layers: checkpoint .*\nThe checkpoint's "
                                       r"config is the 'tiny' variant, this run's 'paper': "
                                       r"choose it as --config configs/NAME.py:tiny\.$"):
    compatibility.check_resume_settings(tmp_path, tiny_config)


def test_scanned_or_unrolled_layers_are_one_model_for_init_from_but_not_for_a_resume(
    tiny_config, tmp_path, monkeypatch):
  """A resume restores the optimizer state as saved, so the layers' layout must match (refused,
  with init_from as the way out, which converts it); init_from alone converts it, so accepts it.
  With another change as well, init_from would fail too and is not suggested."""
  meta = _checkpoint_of(tiny_config, monkeypatch)
  tiny_config.model.scan_layers = not tiny_config.model.scan_layers
  compatibility.check_architecture_early(meta, tiny_config, "config.init_from=x",
                                         same_layout=False)
  with pytest.raises(ValueError, match=r"(?s)model.scan_layers: checkpoint .*another "
                                       r"--workdir from its parameters with --config.init_from="
                                       rf"{re.escape(str(tmp_path))} \(the layers' layout is "
                                       r"converted"):
    compatibility.check_resume_settings(tmp_path, tiny_config)
  layers = meta["mlm_config"]["num_layers"]
  tiny_config.model.num_layers = layers + 1
  with pytest.raises(ValueError, match=r"another --workdir\.$"):
    compatibility.check_resume_settings(tmp_path, tiny_config)
  with pytest.raises(ValueError, match=rf"model.num_layers: checkpoint {layers} != run "
                                       rf"{layers + 1}$"):
    compatibility.check_architecture_early(meta, tiny_config, "config.init_from=x",
                                           same_layout=False)


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


def test_a_resume_that_turns_clipping_on_or_off_is_refused_by_name(tiny_config, tmp_path,
                                                                    monkeypatch):
  """On or off changes the optimizer state's layout (refused before any work); one threshold for
  another does not (accepted)."""
  saved = compatibility.config_json(tiny_config)
  monkeypatch.setattr(compatibility.checkpointing, "latest_meta", lambda workdir: {"config": saved})
  before = tiny_config.optim.grad_clip_norm
  assert before > 0
  tiny_config.optim.grad_clip_norm = before * 2
  compatibility.check_resume_settings(tmp_path, tiny_config)
  tiny_config.optim.grad_clip_norm = 0.0
  with pytest.raises(ValueError, match=rf"config\.optim\.grad_clip_norm: {before!r} -> 0\.0 "
                                       r"turns gradient clipping off.* Keep clipping on \(any "
                                       r"value > 0\)"):
    compatibility.check_resume_settings(tmp_path, tiny_config)
  saved["optim"]["grad_clip_norm"] = 0.0
  tiny_config.optim.grad_clip_norm = before
  with pytest.raises(ValueError, match=r"turns gradient clipping on.* Keep clipping off \(0\)"):
    compatibility.check_resume_settings(tmp_path, tiny_config)


def test_a_resume_that_turns_loss_scaling_on_or_off_is_refused_by_name(tiny_config, tmp_path,
                                                                        monkeypatch):
  """Loss scaling on or off adds or removes the scale in the checkpointed state: refused before
  any work, naming config.train.loss_scaling (and, under "auto", config.model.compute_dtype);
  another setting that scales as before, or a checkpoint older than the setting resumed without
  it, is accepted."""
  saved = compatibility.config_json(tiny_config)
  monkeypatch.setattr(compatibility.checkpointing, "latest_meta", lambda workdir: {"config": saved})
  assert saved["train"]["loss_scaling"] == "auto" and saved["model"]["compute_dtype"] == "float32"
  tiny_config.train.loss_scaling = "off"  # Off under "auto" with float32 too.
  compatibility.check_resume_settings(tmp_path, tiny_config)
  tiny_config.train.loss_scaling = "dynamic"
  with pytest.raises(ValueError, match=r"Cannot resume the run in .*: dynamic loss scaling was "
                                       r"off \(config\.train\.loss_scaling='auto' with "
                                       r"config\.model\.compute_dtype='float32'\) and would be on "
                                       r"\(config\.train\.loss_scaling='dynamic'\), .* Resume "
                                       r"with --config\.train\.loss_scaling=off"):
    compatibility.check_resume_settings(tmp_path, tiny_config)
  saved["train"]["loss_scaling"] = "dynamic"
  tiny_config.model.compute_dtype = "bfloat16"
  compatibility.check_resume_settings(tmp_path, tiny_config)
  saved["train"]["loss_scaling"] = "auto"
  saved["model"]["compute_dtype"] = "float16"
  tiny_config.train.loss_scaling = "auto"  # On before (float16), off now (bfloat16).
  with pytest.raises(ValueError, match=r"was on \(config\.train\.loss_scaling='auto' with "
                                       r"config\.model\.compute_dtype='float16'\) and would be "
                                       r"off \(config\.train\.loss_scaling='auto' with "
                                       r"config\.model\.compute_dtype='bfloat16'\).* Resume with "
                                       r"--config\.train\.loss_scaling=dynamic"):
    compatibility.check_resume_settings(tmp_path, tiny_config)
  # A run from before the setting: never scaled, though it trained in float16.
  del saved["train"]["loss_scaling"]
  tiny_config.model.compute_dtype = "float16"
  with pytest.raises(ValueError, match=r"was off \(no config\.train\.loss_scaling \(older "
                                       r"than the setting\)\) and would be on .* Resume with "
                                       r"--config\.train\.loss_scaling=off"):
    compatibility.check_resume_settings(tmp_path, tiny_config)
  tiny_config.train.loss_scaling = "off"
  compatibility.check_resume_settings(tmp_path, tiny_config)


@pytest.mark.parametrize("saved, now, expected", [
    (100, 200, "decay now ends at step 200"),  # Past the warm-up: where the decay ends.
    (100, 40, "ends inside the learning-rate warm-up (config.optim.warmup_steps=50)"),
    (20, 40, None),  # Both runs end inside the warm-up: the rates are the same, nothing to say.
    (100, 10, None),  # Resumed at step 10 of 10: no step is left whose rate could change.
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


def test_a_resume_that_raises_the_warmup_past_the_run_says_the_rate_never_decays(caplog):
  """The same num_steps, warmup_steps 5 -> 50 of 20: a fresh run is warned that its rate never
  reaches the peak nor decays; the resume was not (loop leaves it to this function, which
  returned when num_steps was unchanged)."""
  from configs import base

  config = base.get_base_config("tiny")
  config.train.num_steps, config.optim.warmup_steps = 20, 50
  saved = {"train": {"num_steps": 20}, "optim": {"warmup_steps": 5}}
  with caplog.at_level(logging.WARNING):
    compatibility.warn_schedule_change({"config": saved}, config, 10)
  assert ("config.optim.warmup_steps=50 is not below config.train.num_steps=20: the learning rate "
          "never reaches") in caplog.text
  caplog.clear()
  saved["optim"]["warmup_steps"] = 50  # Unchanged: the run was told when it started.
  with caplog.at_level(logging.WARNING):
    compatibility.warn_schedule_change({"config": saved}, config, 10)
  assert not caplog.text


def test_the_checkpoints_rate_is_computed_on_the_checkpoints_schedule_settings(caplog):
  """A resume that doubles num_steps and halves the peak rate: the checkpoint's rate at the
  resumed step is that of its own peak rate and warm-up (what it trained with), not the new
  ones; settings a checkpoint lacks or holds unusable are the current config's."""
  from configs import base

  config = base.get_base_config("tiny")
  config.train.num_steps, config.optim.learning_rate = 400, 5e-4
  config.optim.warmup_steps, config.optim.schedule = 100, "linear"
  saved = {"train": {"num_steps": 200},
           "optim": {"learning_rate": 1e-3, "warmup_steps": 50, "schedule": "cosine"}}
  with caplog.at_level(logging.WARNING):
    compatibility.warn_schedule_change({"config": saved}, config, 120)
  new_rate = 5e-4 * (1 - 20 / 300)  # Linear decay, 20 of 300 steps.
  old_rate = 1e-3 * 0.5 * (1 + np.cos(np.pi * 70 / 150))  # Cosine decay, 70 of 150 steps.
  assert f"at step 120 it is {new_rate:.4g} ({old_rate:.4g} on the checkpoint's schedule)" in \
      caplog.text
  caplog.clear()
  saved["optim"] = {"learning_rate": "high", "schedule": "exotic"}  # Unusable: the current ones.
  with caplog.at_level(logging.WARNING):
    compatibility.warn_schedule_change({"config": saved}, config, 120)
  old_rate = 5e-4 * (1 - 20 / 100)  # The current settings, decaying over 200 - 100 steps.
  assert f"({old_rate:.4g} on the checkpoint's schedule)" in caplog.text


def test_the_runs_own_bookkeeping_settings_are_not_config_changes():
  """A run started with --config.train.overwrite=True is resumed without it (resume and overwrite
  together are refused), and its profile window or num_steps may move: none of these is a change
  of the run to warn about."""
  saved = {"train": {"num_steps": 10, "resume": False, "overwrite": True,
                     "profile_start_step": 5, "profile_steps": 3, "seed": 0}}
  now = {"train": {"num_steps": 20, "resume": True, "overwrite": False,
                   "profile_start_step": -1, "profile_steps": 0, "seed": 0}}
  assert compatibility.config_changes(saved, now) == []
