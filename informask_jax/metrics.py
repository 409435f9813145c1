"""Where metrics go: workdir/metrics.jsonl, TensorBoard events, and MFU arithmetic.

Only process 0 writes; the other processes get a writer that does nothing, so call sites need no
`if jax.process_index() == 0`.
"""

import json
import math
import pathlib
import re

import jax
import numpy as np

# Dense bf16 matmul peak per device, FLOP/s, from the vendors' data sheets. Unknown kinds (CPUs
# among them) give mfu = null rather than a made-up number.
_PEAK_BF16_FLOPS = {
    "h100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3").
    "h100 pcie": 756e12,
    "h100 nvl": 835e12,
    "h200": 989e12,
    "a100": 312e12,
    "v100": 125e12,  # fp16 tensor cores.
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
  kind = (device or jax.devices()[0]).device_kind.lower()
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
  if targets == 0:  # Every step of the interval was skipped: no loss to report.
    out["loss"] = out["accuracy"] = float("nan")
  return out


def _logged_step(line: str) -> float:
  try:
    return float(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return float("inf")  # A line cut short by the crash: dropped.


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir, *, enabled: bool = True, resumed_at: int | None = None):
    """`resumed_at`: the step a run resumes from. What a crashed run logged after it is dropped
    (metrics.jsonl rewritten, TensorBoard's purge_step), so that no step appears twice."""
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # Imported here: only process 0 needs it.

    workdir = pathlib.Path(workdir)
    path = workdir / "metrics.jsonl"
    dropped = False
    if resumed_at is not None and path.exists():
      # Bytes, decoded leniently: a crash mid-write can leave a cut multi-byte character.
      lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
      kept = [line for line in lines if _logged_step(line) <= resumed_at]
      dropped = len(kept) < len(lines)
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text("".join(kept))
      tmp.replace(path)
    self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115 (kept open)
    # Opened at the first write: a resume with no step left to run would leave an empty event
    # file in tensorboard/ each time. Opened now when the crashed run logged past the resumed
    # step: the new file's purge marker drops those steps from TensorBoard as they were dropped
    # from metrics.jsonl, even if no step follows (num_steps lowered to the checkpoint's).
    self._tb_files = 0

    def open_tb():
      # After the first file, one per checkpoint (see flush): no purge (the steps before are
      # this run's), and a numbered name (tensorboardX names files by the second, and opens
      # them "wb": a second file made within the same second would replace the first).
      first = self._tb_files == 0
      self._tb_files += 1
      return SummaryWriter(str(workdir / "tensorboard"), filename_suffix=f".{self._tb_files}",
                           purge_step=resumed_at + 1 if first and resumed_at is not None else None)

    self._open_tb = open_tb
    self._tb = self._open_tb() if dropped else None

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    # Non-finite values as null: json.dumps would write NaN / Infinity, which strict JSON
    # readers (jq, JavaScript, most languages' parsers) refuse.
    record = {"step": int(step)}
    for key, value in scalars.items():
      finite = not isinstance(value, float) or math.isfinite(value)
      record[key] = value if finite else None
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    if self._tb is None:
      self._tb = self._open_tb()
    for key, value in scalars.items():
      if isinstance(value, int | float) and math.isfinite(value):
        self._tb.add_scalar(key, value, int(step))

  def flush(self) -> None:
    """Puts every step logged so far on disk (metrics.jsonl is line-buffered). Called at each
    checkpoint: a run killed hard (OOM, SIGKILL, a lost node) then keeps in TensorBoard the steps
    up to its checkpoint, as in metrics.jsonl, and the resume drops those after it.

    tensorboardX writes from a queue on a thread of its own, and its flush() writes only what
    that thread has taken from the queue (after add_scalar, not yet the new events); closing
    the writer drains the queue. The next write opens a new event file in the same folder,
    which TensorBoard reads as one run: a file per checkpoint interval."""
    if self.enabled and self._tb is not None:
      self._tb.close()
      self._tb = None

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
