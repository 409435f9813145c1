"""Where metrics go: workdir/metrics.jsonl, TensorBoard events, and MFU arithmetic.

Only process 0 writes; the other processes get a writer that does nothing, so call sites need no
`if jax.process_index() == 0`.
"""

import contextlib
import itertools
import json
import logging
import math
import os
import pathlib
import re
import time

import jax
import numpy as np

from informask_jax import paths

# Dense bf16 matmul peak per device, FLOP/s, from the vendors' data sheets. Unknown kinds (CPUs
# among them) give mfu = null rather than a made-up number.
_PEAK_BF16_FLOPS = {
    "h100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3").
    "h100 pcie": 756e12,
    "h100 nvl": 835e12,
    "h200": 989e12,
    "h200 nvl": 835e12,  # Else matched as "h200", the SXM's.
    "gh200": 989e12,  # Grace Hopper's H100-class GPU ("NVIDIA GH200 480GB").
    "a100": 312e12,
    "v100": 125e12,  # SXM2, fp16 tensor cores.
    "v100 pcie": 112e12,  # "Tesla V100-PCIE-16GB".
    "l4": 121e12,
    "l40": 181e12,
    "l40s": 362e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5": 459e12,  # v5p reports "TPU v5" on TPU VMs ("TPU v5p" under Pathways).
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,  # Trillium (v6e)
    "tpu v6e": 918e12,
}


def peak_flops_per_device(device=None) -> float | None:
  # Hyphens as spaces: "Tesla V100-PCIE-16GB" is the "v100 pcie" of the table.
  kind = (device or jax.devices()[0]).device_kind.lower().replace("-", " ")
  for name, flops in sorted(_PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])):
    # A whole word of the kind: "l4" must not match "L40S", nor "a100" an "a1000".
    if re.search(rf"(^|[^a-z0-9]){re.escape(name)}($|[^a-z0-9])", kind):
      return flops
  return None


def mfu(flops_per_step: float, seconds_per_step: float, num_devices: int) -> float | None:
  peak = peak_flops_per_device()
  if peak is None or seconds_per_step <= 0:
    return None
  return flops_per_step / seconds_per_step / (peak * num_devices)


def summarize(step_metrics: list[dict]) -> dict:
  """Host-side summary of the steps since the last log: sums -> means, last values for the rest."""
  host = jax.device_get(step_metrics)
  applied = [m for m in host if not int(m["skipped"])]  # A skipped step's norm is inf or NaN.
  targets = sum(float(m["num_targets"]) for m in host)
  out = {
      "loss": sum(float(m["loss_sum"]) for m in host) / max(targets, 1.0),
      "accuracy": sum(float(m["correct_sum"]) for m in host) / max(targets, 1.0),
      "grad_norm": float(np.mean([float(m["grad_norm"]) for m in applied] or [float("nan")])),
      "learning_rate": float(host[-1]["learning_rate"]),
      "skipped_steps": len(host) - len(applied),
      "targets_per_step": targets / max(len(applied), 1),
      # Per step too, as targets_per_step beside it (a sum over the interval read as a share
      # of it overstated the loss by log_every times).
      "dropped_targets_per_step": sum(float(m["dropped_targets"]) for m in applied)
                                  / max(len(applied), 1),
  }
  if "loss_scale" in host[-1]:  # Under loss scaling: the scale the interval's last step used.
    out["loss_scale"] = float(host[-1]["loss_scale"])
  if targets == 0:  # Every step of the interval was skipped: no loss to report.
    out["loss"] = out["accuracy"] = float("nan")
  return out


def _logged_step(line: str) -> float | None:
  """The step a metrics.jsonl line logs; None for a line that is not a logged step."""
  try:
    return float(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def _kept_on_resume(lines: list[str], resumed_at: int, path) -> list[str]:
  """The lines of metrics.jsonl a run resumed at step `resumed_at` keeps: those logged up to it,
  each ending its line (a file saved without a final newline merged the next row into its last).
  Only the last line can be cut short by a crash: dropped; another that is not a logged step (a
  hand edit) is kept, and named, rather than deleted."""
  kept = []
  for number, line in enumerate(lines, 1):
    step = _logged_step(line)
    if step is None:
      if number == len(lines):
        continue
      logging.warning("%s, line %d is not a logged step (%.60r); kept as it is.", path, number,
                      line.rstrip("\n"))
    elif step > resumed_at:
      continue
    kept.append(line if line.endswith("\n") else line + "\n")
  return kept


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

  Writes happen on the caller's thread, so a full disk raises paths.WriteError at the step it
  happened, naming the file. (tensorboardX's SummaryWriter writes from a thread of its own: on a
  full disk that thread died, its queue filled, and the next log step blocked the run forever.)
  """

  def __init__(self, workdir, *, enabled: bool = True, resumed_at: int | None = None):
    """`resumed_at`: the step a run resumes from. What a crashed run logged after it is dropped
    (metrics.jsonl rewritten, a purge marker in the new TensorBoard file), so that no step
    appears twice."""
    self.enabled = enabled
    # Whether metrics.jsonl holds an evaluation of the resumed step (see loop: a stop evaluates
    # after its save, and a kill in that evaluation lost it).
    self.evaluated_at_resume = False
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    path = workdir / "metrics.jsonl"
    dropped = False
    self._failed = False
    self._tb, self._flushed_at = None, time.monotonic()
    self._tb_dir = workdir / "tensorboard"
    self._purge_step = None if resumed_at is None else resumed_at + 1
    with self._naming(path, "rewriting"):
      if resumed_at is not None and path.exists():
        # Bytes, decoded leniently: a crash mid-write can leave a cut multi-byte character.
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
        kept = _kept_on_resume(lines, resumed_at, path)
        dropped = len(kept) < len(lines)
        self.evaluated_at_resume = any(
            _logged_step(line) == resumed_at and "eval_loss" in json.loads(line) for line in kept)
        paths.atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("".join(kept)))
      self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115 (kept open)
    # The event file is opened at the first write: a resume with no step left to run would
    # leave an empty one in tensorboard/ each time. Opened now when the crashed run logged past
    # the resumed step: its purge marker drops those steps from TensorBoard as they were dropped
    # from metrics.jsonl, even if no step follows (num_steps lowered to the checkpoint's).
    if dropped:
      self._open_tb()

  @contextlib.contextmanager
  def _naming(self, path, doing, step=None):
    """OSError (a full disk, a quota) -> WriteError naming the file; the writer is then done."""
    try:
      yield
    except OSError as e:
      self._failed = True
      at = "" if step is None else f" at step {step}"
      raise paths.WriteError(
          f"{doing[0].upper() + doing[1:]} {path}{at} failed ({type(e).__name__}: {e}). Free "
          "disk space and run the same command to resume from the latest checkpoint.") from e

  def _open_tb(self) -> None:
    from tensorboardX import event_file_writer  # Imported here: only process 0 needs it.
    from tensorboardX.proto import event_pb2

    with self._naming(self._tb_dir, "creating an event file in"):
      self._tb_dir.mkdir(parents=True, exist_ok=True)
      # Files are named by the second and host; the process and a count keep a writer opened
      # within the same second (a quick resume) from replacing the earlier file.
      self._tb = event_file_writer.EventsWriter(
          str(self._tb_dir / "events"), f".{os.getpid()}.{next(_EVENT_FILE_NUMBERS)}")
      # TensorBoard hides the events at steps >= a START session log's step from the files
      # before it: those a crashed run logged after the checkpoint (not the checkpoint's own).
      # A fresh run starts with one at step 0: TensorBoard's Python loader (--load_fast=false,
      # or no data server binary) takes the first START of a run for its beginning and purges
      # nothing at it, so without this a resume's marker would be that first one.
      self._tb.write_event(event_pb2.Event(
          wall_time=time.time(), step=0 if self._purge_step is None else self._purge_step,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled or self._failed:
      return
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2, summary_pb2

    # Non-finite values as null: json.dumps would write NaN / Infinity, which strict JSON
    # readers (jq, JavaScript, most languages' parsers) refuse.
    record = {"step": int(step)}
    for key, value in scalars.items():
      finite = not isinstance(value, float) or math.isfinite(value)
      record[key] = value if finite else None
    with self._naming(self._jsonl.name, "writing", step):
      self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    if self._tb is None:
      self._open_tb()
    values = [v for key, value in scalars.items()
              if isinstance(value, int | float) and math.isfinite(value)
              for v in summary.scalar(key, value).value]
    with self._naming(self._tb_dir, "writing TensorBoard events to", step):
      if values:
        self._tb.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary_pb2.Summary(value=values)))
      if time.monotonic() - self._flushed_at > _FLUSH_SECONDS:  # For a live TensorBoard.
        self._tb.flush()
        self._flushed_at = time.monotonic()

  def flush(self) -> None:
    """Puts every step logged so far on disk (metrics.jsonl is line-buffered). Called at each
    checkpoint: a run killed hard (OOM, SIGKILL, a lost node) then keeps in TensorBoard the steps
    up to its checkpoint, as in metrics.jsonl, and the resume drops those after it."""
    if self.enabled and not self._failed and self._tb is not None:
      with self._naming(self._tb_dir, "writing TensorBoard events to"):
        self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    if self._failed:  # Already reported: the files are closed without a second error.
      with contextlib.suppress(OSError):
        self._jsonl.close()
      with contextlib.suppress(OSError):
        if self._tb is not None:
          self._tb.close()
      return
    with self._naming(self._jsonl.name, "closing"):
      self._jsonl.close()
    if self._tb is not None:
      with self._naming(self._tb_dir, "writing TensorBoard events to"):
        self._tb.close()


_EVENT_FILE_NUMBERS = itertools.count()
_FLUSH_SECONDS = 30  # A live TensorBoard shows the steps this late at most (tensorboardX: 120).
