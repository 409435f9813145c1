"""The model as a callable (ids, positions) -> logits at the masks: a Hugging Face masked LM in
PyTorch (`TorchBackend`) or our `BertMLM` jitted in Flax (`FlaxBackend`), loaded from what
`--model` names by `load_backend`."""

import dataclasses
import functools
import json
import logging
import os
import tempfile

import numpy as np

from informask_jax import paths
from informask_jax.lama.models import FRESH_HEAD_KEY, is_workdir, read_provenance

log = logging.getLogger(__name__)

BACKENDS = ("torch", "flax")
LAMA_EXPORT_PREFIX = "lama_export_"  # The temporary export of a workdir, in the temp folder.


def _model_load_error(name_or_dir: str, e: Exception) -> FileNotFoundError:
  """One line for a model that cannot be read (missing or damaged files, e.g. safetensors'
  SafetensorError for a download cut short), naming --model."""
  first = (str(e).strip().splitlines() or [""])[0]
  return FileNotFoundError(f"--model {name_or_dir!r}: no masked LM could be loaded "
                           f"({type(e).__name__}: {first})")


def _no_head_error(name_or_dir: str, detail: str) -> ValueError:
  """A bare encoder given as --model: transformers and our reader would both add a random head."""
  return ValueError(f"--model {name_or_dir!r} has no masked-LM head ({detail}): its LAMA scores "
                    "would come from a randomly initialised head. Probe a model trained with its "
                    "head: a training run's workdir or export, or a *ForMaskedLM checkpoint.")


# The masked-LM head's parameter names in transformers' BERT and RoBERTa models.
_HF_HEAD_PREFIXES = ("cls.predictions.", "lm_head.")


def _within_tokenizer_limit(positions: int, tokenizer) -> int:
  """The query length a backend keeps: the model's positions, and the tokenizer's own limit when
  it sets one (transformers' "no limit" is a huge number). Both backends cut alike."""
  limit = tokenizer.model_max_length
  return int(min(positions, limit) if limit < 1_000_000 else positions)


class TorchBackend:
  """A Hugging Face masked LM in PyTorch; the vocabulary projection runs at the mask only."""

  def __init__(self, model, tokenizer, device: str | None = None, max_len: int | None = None):
    """`max_len`: the longest query kept (a training workdir's trained length); default: the
    model's positions within the tokenizer's limit."""
    import torch

    self.torch = torch
    self.device = torch_device(device)
    self.model = model.to(self.device).eval()
    config = model.config
    limit = config.max_position_embeddings
    if "roberta" in config.model_type or config.model_type == "camembert":
      limit -= config.pad_token_id + 1  # Positions count from pad_token_id + 1.
    self.max_len = _within_tokenizer_limit(limit, tokenizer) if max_len is None else max_len
    self.pad_id = tokenizer.pad_token_id
    self.head = next((getattr(model, n) for n in ("cls", "lm_head") if hasattr(model, n)), None)
    self.name = f"torch ({self.device})"
    self.vocab_size = int(config.vocab_size)  # Logit columns.
    self.type_vocab_size = int(getattr(config, "type_vocab_size", 1))  # Segments it embeds.

  @classmethod
  def from_pretrained(cls, name_or_dir: str, tokenizer, device: str | None = None,
                      max_len: int | None = None):
    import torch
    from transformers import AutoModelForMaskedLM

    try:
      model, loading = AutoModelForMaskedLM.from_pretrained(
          name_or_dir, dtype=torch.float32, output_loading_info=True)
    except MemoryError:
      raise
    except Exception as e:  # Missing or damaged files (safetensors raises its own error type).
      raise _model_load_error(name_or_dir, e) from e
    fresh = sorted(k for k in loading["missing_keys"] if k.startswith(_HF_HEAD_PREFIXES))
    if fresh:
      raise _no_head_error(name_or_dir, f"transformers initialised {', '.join(fresh[:2])}, ...")
    return cls(model, tokenizer, device, max_len)

  def __call__(self, ids: np.ndarray, positions: np.ndarray,
               types: np.ndarray | None = None) -> np.ndarray:
    """ids (B, L) padded with the pad id, positions (B,) of the masks, token types (B, L) of
    sentence pairs (None: all 0) -> logits (B, V)."""
    torch = self.torch
    with torch.inference_mode():
      ids_t = torch.as_tensor(ids, device=self.device)
      rows = torch.arange(len(positions), device=self.device)
      pos_t = torch.as_tensor(positions, device=self.device)
      mask = (ids_t != self.pad_id).long()
      inputs = {"input_ids": ids_t, "attention_mask": mask}
      if types is not None and types.any():  # Models without segments (DistilBERT) take none.
        inputs["token_type_ids"] = torch.as_tensor(types, dtype=torch.long, device=self.device)
      if self.head is not None:  # BERT / RoBERTa: encoder, gather, then the head.
        hidden = self.model.base_model(**inputs)[0]  # (B, L, H)
        logits = self.head(hidden[rows, pos_t])  # (B, V)
      else:
        logits = self.model(**inputs).logits[rows, pos_t]
      return logits.float().cpu().numpy()


class FlaxBackend:
  """Our `BertMLM` under jit, in float32. Batches are padded to a fixed batch size and to a few
  length buckets so that a whole run compiles a handful of times."""

  def __init__(self, params, cfg, batch_size: int, tokenizer, max_len: int | None = None):
    """`max_len`: as TorchBackend's; default: cfg.max_trained_len within the tokenizer's limit."""
    import flax.linen as nn
    import jax

    if tokenizer.pad_token_id != cfg.pad_id:
      raise ValueError(f"The tokenizer pads with id {tokenizer.pad_token_id} but the model's "
                       f"pad_id is {cfg.pad_id} (InformBERT's release has this layout); the "
                       "flax backend's attention mask and positions would be wrong: use "
                       "--backend torch, which reads the tokenizer's padding.")
    # Numbers must match the PyTorch backend: float32 activations and plain XLA attention.
    cfg = dataclasses.replace(cfg, compute_dtype="float32", attention="xla", remat="none")
    self.cfg, self.batch_size = cfg, batch_size
    self.max_len = (_within_tokenizer_limit(cfg.max_trained_len, tokenizer) if max_len is None
                    else max_len)
    self.pad_id = cfg.pad_id
    self.params = jax.device_put(nn.meta.unbox(params))
    self._jax = jax
    self.name = f"flax ({jax.devices()[0].platform})"
    self.vocab_size = cfg.vocab_size  # Logit columns.
    self.type_vocab_size = cfg.type_vocab_size  # Segments it embeds.

  def _bucket(self, length: int) -> int:
    return min(max(16, 1 << (length - 1).bit_length()), self.max_len)

  def __call__(self, ids: np.ndarray, positions: np.ndarray,
               types: np.ndarray | None = None) -> np.ndarray:
    """As TorchBackend.__call__."""
    b, length = ids.shape
    # Rows padded to a power of two up to batch_size: a few shapes to compile, not one per
    # batch size, yet 14 queries under --batch_size 4096 are not run as 4096 rows.
    rows = max(b, min(self.batch_size, max(8, 1 << (b - 1).bit_length())))
    padded = np.full((rows, self._bucket(length)), self.pad_id, np.int32)
    padded[:b, :length] = ids
    padded[b:] = padded[0]  # Filler rows copy a real one: no all-padding attention rows.
    segments = np.zeros_like(padded)
    if types is not None:
      segments[:b, :length] = types
      segments[b:] = segments[0]
    pos = np.zeros((rows,), np.int32)
    pos[:b] = positions
    pos[b:] = positions[0]
    # True float32 matmuls: XLA would use TF32 on recent GPUs, PyTorch does not by default.
    with self._jax.default_matmul_precision("float32"):
      logits = _flax_logits_fn(self.cfg)(self.params, padded, segments, pos)  # (rows, V)
    return np.asarray(logits)[:b]


@functools.cache
def _flax_logits_fn(cfg):
  """Jitted (params, ids (B, L), token types (B, L), positions (B,)) -> logits (B, V), one per
  model config, so that runs on the same model share compilations."""
  import jax

  from informask_jax import model as model_lib

  module = model_lib.BertMLM(cfg)

  def logits_at(params, ids, types, positions):
    return module.apply({"params": params}, ids, types,
                        masked_positions=positions[:, None])[:, 0]

  return jax.jit(logits_at)


def check_device(backend: str, device: str | None) -> None:
  """ValueError for a --device given with the flax backend (it runs on JAX's default device, and
  would otherwise ignore the flag without a word) or one torch cannot use, before the data and
  the model are read."""
  if backend == "flax" and device:  # None (unset) or "" (as unset for torch): nothing to ignore.
    raise ValueError(f"--device {device!r} applies to --backend torch only; the flax backend runs "
                     "on JAX's default device (JAX_PLATFORMS=cpu forces the CPU).")
  if backend == "torch" and device:
    torch_device(device)


def torch_device(device: str | None):
  """The torch.device of --device (default: cuda when there is one), checked by placing a tensor
  there: a type this torch build lacks (mps on Linux, xpu) failed in model.to() instead."""
  import torch

  try:
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
  except RuntimeError as e:
    raise ValueError(f"--device {device!r}: {e}") from None
  if chosen.type == "cuda" and not torch.cuda.is_available():
    raise ValueError(f"--device {device!r}: this torch ({torch.__version__}) has no CUDA "
                     "device; use --device cpu.")
  if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
    raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s).")
  if chosen.type == "meta":  # Holds shapes, no values: nothing to score.
    raise ValueError(f"--device {device!r} holds no values; use cpu or cuda.")
  try:
    torch.zeros(1, device=chosen)
  except (RuntimeError, AssertionError, ModuleNotFoundError) as e:
    reason = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0].rstrip(".")
    raise ValueError(f"--device {device!r}: this torch ({torch.__version__}) cannot use it "
                     f"({reason}); use --device cpu.") from None
  return chosen


def load_backend(model: str, backend: str, tokenizer, *, batch_size: int,
                 device: str | None = None, step: int | None = None):
  """The model behind `--model` as a callable (ids, positions) -> logits.

  A training workdir is restored through `checkpointing.restore_params`; the torch backend then
  goes through an export to a temporary Hugging Face directory.
  """
  check_device(backend, device)
  if not is_workdir(model) and (read_provenance(model) or {}).get(FRESH_HEAD_KEY):
    # Our export of an imported bare encoder: a full head on disk, never trained.
    raise _no_head_error(model, "its config.json records that the head was initialised fresh "
                         "when an encoder without one was imported, and it was exported untrained")
  if backend == "flax":
    if is_workdir(model):
      from informask_jax import checkpointing, tokenization

      try:
        params, cfg, restored = checkpointing.restore_params(
            model, step=step, step_flag="--step", untrained_head="refuse",
            tokenizer_fingerprint=tokenization.tokenizer_fingerprint(tokenizer))
      except checkpointing.UntrainedHead as e:
        raise _no_head_error(model, str(e)) from None
      # Cut where the step's export truncates, at what its training reached (within the
      # positions), as the torch backend does; WORKDIR/tokenizer's own limit is not the model's
      # (an import's, which a longer data.seq_len since went beyond).
      return FlaxBackend(params, cfg, batch_size, tokenizer, max_len=checkpointing.trained_length(
          cfg, checkpointing.step_meta(model, restored), tokenizer.model_max_length))
    else:
      from informask_jax import export, hf_mapping

      try:
        params, cfg = export.load_hf_as_flax(model, require_head=True)
      except hf_mapping.NoMLMHead as e:
        raise _no_head_error(model, str(e)) from None
      except MemoryError:
        raise
      except Exception as e:  # As the torch backend: missing or damaged files, one line.
        raise _model_load_error(model, e) from e
    return FlaxBackend(params, cfg, batch_size, tokenizer)
  if is_workdir(model):
    from informask_jax import checkpointing, export

    # Removed below, and on SIGTERM (eval_lama.py); a SIGKILLed run's copy stays: named here.
    paths.warn_leftover_folders(tempfile.gettempdir(), (LAMA_EXPORT_PREFIX,),
                                "a killed eval_lama.py run", log)
    with paths.scratch_dir(prefix=LAMA_EXPORT_PREFIX) as tmp:  # Gone once the weights are read.
      # The export checks its own logits against ours, so both backends see the same model.
      try:
        export.export_workdir(model, tmp, step=step, untrained_head="refuse")
      except checkpointing.UntrainedHead as e:
        raise _no_head_error(model, str(e)) from None
      except paths.WriteError as e:  # Its message would speak of an export the user asked for.
        cause = e.__cause__ or e
        raise paths.WriteError(
            f"The PyTorch backend reads {model} through a temporary Hugging Face export, which "
            f"could not be written in {tempfile.gettempdir()} ({type(cause).__name__}: "
            f"{cause}): free space there, or set TMPDIR to a folder with room.") from e
      # The export's tokenizer truncates at what the step's training reached, within the
      # model's positions; the run's own tokenizer, passed on, may say otherwise (see above).
      with open(os.path.join(tmp, "tokenizer_config.json"), encoding="utf-8") as f:
        trained = int(json.load(f)["model_max_length"])
      return TorchBackend.from_pretrained(tmp, tokenizer, device, max_len=trained)
  return TorchBackend.from_pretrained(model, tokenizer, device)
