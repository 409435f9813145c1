"""compatibility.check_tokenizer: a resume with another tokenizer is refused, saying why."""

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
