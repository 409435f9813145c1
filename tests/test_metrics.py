"""MFU arithmetic, the peak-FLOPs table, the host-side summary of logged steps and the log on
resume."""

import json
import logging
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from informask_jax import metrics, paths


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA GH200 480GB", 989e12),
    ("Tesla V100-SXM2-16GB", 125e12), ("Tesla V100-PCIE-32GB", 112e12), ("NVIDIA L4", 121e12),
    ("NVIDIA L40", 181e12), ("NVIDIA L40S", 362e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
    ("cpu", None), ("NVIDIA A1000", None)])
def test_peak_flops_match_whole_device_names(kind, peak):
  assert metrics.peak_flops_per_device(SimpleNamespace(device_kind=kind)) == peak


def test_mfu_is_achieved_over_peak(monkeypatch):
  monkeypatch.setattr(metrics, "peak_flops_per_device", lambda device=None: 100e12)
  assert metrics.mfu(50e12, 0.25, 4) == pytest.approx(0.5)  # 200 TFLOP/s of 400.
  assert metrics.mfu(50e12, 0.0, 4) is None
  monkeypatch.setattr(metrics, "peak_flops_per_device", lambda device=None: None)
  assert metrics.mfu(50e12, 0.25, 4) is None


def test_summary_weights_the_loss_by_targets_and_leaves_skipped_steps_out():
  def step(loss_sum, targets, norm, skipped=0):
    return dict(loss_sum=loss_sum, correct_sum=targets / 2, num_targets=targets, grad_norm=norm,
                learning_rate=1e-3, skipped=skipped, dropped_targets=1.0)
  # The step reports a skipped step's sums as 0 (trainer.py); its norm is not finite.
  out = metrics.summarize([step(10.0, 10, 1.0), step(0.0, 0, float("inf"), skipped=1),
                           step(30.0, 20, 3.0)])
  assert out["loss"] == pytest.approx(40 / 30) and out["accuracy"] == pytest.approx(0.5)
  assert out["grad_norm"] == pytest.approx(2.0) and out["skipped_steps"] == 1
  # Both per applied step (the skipped one's counts are left out with its loss).
  assert out["targets_per_step"] == 15 and out["dropped_targets_per_step"] == 1.0
  assert np.isfinite(out["loss"])


def test_a_resumed_log_drops_later_and_torn_lines(tmp_path):
  """On resume, metrics.jsonl keeps the steps up to the checkpoint; a line the crash cut short
  (even inside a multi-byte character) is dropped, not an error."""
  lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20, 30)]
  torn = b'{"step": 40, "x": "\xe2\x82'  # Cut inside a 3-byte character.
  (tmp_path / "metrics.jsonl").write_bytes("".join(lines).encode() + torn)
  writer = metrics.MetricWriter(tmp_path, resumed_at=20)
  writer.write(21, {"loss": 0.5})
  writer.close()
  text = (tmp_path / "metrics.jsonl").read_text()
  steps = [json.loads(line)["step"] for line in text.splitlines()]
  assert steps == [10, 20, 21]


def test_the_log_is_strict_json_with_null_for_non_finite_values(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write(1, {"loss": float("nan"), "grad_norm": float("inf"), "mfu": None, "lr": 1e-3})
  writer.close()
  line = (tmp_path / "metrics.jsonl").read_text().strip()

  def refuse(token):
    raise ValueError(f"non-standard JSON token {token}")
  record = json.loads(line, parse_constant=refuse)  # NaN / Infinity / -Infinity are refused.
  assert record == {"step": 1, "loss": None, "grad_norm": None, "mfu": None, "lr": 1e-3}


def test_summary_of_an_interval_of_skipped_steps_has_no_loss_and_the_last_learning_rate():
  def step(lr, skipped):
    return dict(loss_sum=0.0, correct_sum=0.0, num_targets=0, grad_norm=float("nan"),
                learning_rate=lr, skipped=skipped, dropped_targets=0.0)
  out = metrics.summarize([step(1e-3, 1), step(2e-3, 1)])
  assert np.isnan(out["loss"]) and np.isnan(out["accuracy"]) and np.isnan(out["grad_norm"])
  assert out["skipped_steps"] == 2 and out["targets_per_step"] == 0
  assert out["learning_rate"] == 2e-3  # The schedule's value at the logged step, not the first.


def test_summary_reports_the_loss_scale_of_the_intervals_last_step():
  """Under loss scaling an overflow skips the step and halves the scale: the summary must show
  the scale the interval ended with (the one the next steps train at), not its first."""
  def step(scale, skipped):
    return dict(loss_sum=0.0 if skipped else 4.0, correct_sum=0.0, num_targets=0 if skipped else 2,
                grad_norm=float("inf") if skipped else 1.0, learning_rate=1e-3, skipped=skipped,
                dropped_targets=0.0, loss_scale=scale)
  out = metrics.summarize([step(2.0**15, 0), step(2.0**15, 1), step(2.0**14, 0)])
  assert out["loss_scale"] == 2.0**14 and out["skipped_steps"] == 1
  unscaled = [{k: v for k, v in step(1.0, 0).items() if k != "loss_scale"}]
  assert "loss_scale" not in metrics.summarize(unscaled)


def _scalars(tmp_path):
  """[(step, tag, value)] of every event file in tensorboard/, in the order the files were
  made (their names end with a count of the writer's process)."""
  files = sorted((tmp_path / "tensorboard").glob("events.*"),
                 key=lambda f: int(f.name.rsplit(".", 1)[1]))
  return [(e.step, v.tag, v.simple_value) for f in files for e in _events(f)
          for v in e.summary.value]


def test_tensorboard_gets_the_finite_numbers_and_drops_what_follows_the_resumed_step(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write(0, {"eval_loss": 9.0})
  writer.close()
  writer = metrics.MetricWriter(tmp_path, resumed_at=20)
  writer.write(21, {"loss": 0.5, "skipped_steps": 2, "grad_norm": float("nan"), "mfu": None})
  writer.flush()
  writer.write(22, {"loss": 0.25})
  writer.close()
  assert _scalars(tmp_path) == [(0, "eval_loss", 9.0), (21, "loss", 0.5),
                                (21, "skipped_steps", 2.0), (22, "loss", 0.25)]
  # TensorBoard drops the events at steps >= a START's step: those a crashed run logged after
  # the checkpoint, but not the checkpoint's own step, which metrics.jsonl keeps too. Once per
  # resume, not at each checkpoint's flush: the steps after it are this run's. The fresh run's
  # file starts with one at step 0, since TensorBoard's Python loader purges nothing at the
  # first START of a run.
  assert _starts(tmp_path) == [[0], [21]]


def _starts(tmp_path):
  """The steps of the START session logs in each event file, in the order the files were made
  (as _scalars), each file's first event being one."""
  files = sorted((tmp_path / "tensorboard").glob("events.*"),
                 key=lambda f: int(f.name.rsplit(".", 1)[1]))
  out = []
  for f in files:
    events = [e for e in _events(f) if not e.HasField("file_version")]
    assert events[0].session_log.status == events[0].session_log.START, f
    out.append([e.step for e in events if e.session_log.status == e.session_log.START])
  return out


def test_a_writer_that_logs_nothing_leaves_no_event_file(tmp_path):
  """A resume with no step left to run opens and closes the writer: no empty event file each
  time; the first write makes one."""
  metrics.MetricWriter(tmp_path, resumed_at=5).close()
  events = lambda: list((tmp_path / "tensorboard").glob("events.*"))  # noqa: E731
  assert not events()
  writer = metrics.MetricWriter(tmp_path, resumed_at=5)
  writer.write(6, {"loss": 1.0})
  writer.close()
  assert len(events()) == 1 and events()[0].stat().st_size > 0


def test_flush_puts_the_logged_steps_on_disk(tmp_path):
  """The loop flushes at each checkpoint: a run killed hard afterwards keeps, in TensorBoard, the
  steps up to the checkpoint."""
  writer = metrics.MetricWriter(tmp_path)
  writer.write(0, {"eval_loss": 9.0})
  writer.write(10, {"loss": 8.5})
  writer.flush()
  assert _scalars(tmp_path) == [(0, "eval_loss", 9.0), (10, "loss", 8.5)]
  writer.write(20, {"loss": 8.0})
  writer.close()
  assert len(list((tmp_path / "tensorboard").glob("events.*"))) == 1
  assert _scalars(tmp_path)[-1] == (20, "loss", 8.0)


def test_a_live_tensorboard_sees_the_steps_within_the_flush_interval(tmp_path, monkeypatch):
  """Between checkpoints the event file is flushed once _FLUSH_SECONDS (30 s) have passed since
  the last flush, at the next write: a live TensorBoard is at most that late. Without it the
  steps of a long interval between checkpoints stayed in tensorboardX's buffer."""
  clock = [1000.0]
  # The module's clock only (time.monotonic itself is left to everything else).
  monkeypatch.setattr(metrics, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                       time=metrics.time.time))
  writer = metrics.MetricWriter(tmp_path)
  writer.write(10, {"loss": 8.5})
  clock[0] += 29
  writer.write(20, {"loss": 8.0})
  assert _scalars(tmp_path) == []  # Still buffered: not yet 30 s.
  clock[0] += 2
  writer.write(30, {"loss": 7.5})
  flushed = [(10, "loss", 8.5), (20, "loss", 8.0), (30, "loss", 7.5)]
  assert _scalars(tmp_path) == flushed
  clock[0] += 29  # 29 s after that flush: the interval restarts there (no flush at each write).
  writer.write(40, {"loss": 7.0})
  assert _scalars(tmp_path) == flushed
  writer.close()
  assert _scalars(tmp_path) == [*flushed, (40, "loss", 7.0)]


def test_a_full_disk_is_an_error_naming_the_file_not_a_hang(tmp_path, monkeypatch):
  """/dev/full fails every write as a full disk does. metrics.jsonl: the write of the step
  raises; the event file: its flush. (tensorboardX's writer thread died there, its queue filled,
  and the run blocked forever at a later step.) Closing afterwards raises nothing more."""
  (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
  writer = metrics.MetricWriter(tmp_path)
  with pytest.raises(paths.WriteError, match=r"Writing .*metrics.jsonl at step 5 failed "
                                             r"\(OSError: .*No space left on device\)\. Free"):
    writer.write(5, {"loss": 1.0})
  writer.write(6, {"loss": 1.0})  # Done after the failure: the error is not raised again.
  writer.close()

  from tensorboardX import event_file_writer

  record_writer = event_file_writer.RecordWriter
  monkeypatch.setattr(event_file_writer, "RecordWriter", lambda path: record_writer("/dev/full"))
  other = tmp_path / "other"
  other.mkdir()
  writer = metrics.MetricWriter(other)
  for step in range(10):
    writer.write(step, {"loss": 1.0})  # Buffered: the failure comes with the flush.
  with pytest.raises(paths.WriteError, match=r"Writing TensorBoard events to .*other/tensorboard "
                                             r"failed \(OSError: .*No space left on device\)"):
    writer.flush()
  writer.close()


def _events(path):
  """The Event records of a TensorBoard event file (TFRecord framing: length, CRC, data, CRC)."""
  from tensorboardX.proto.event_pb2 import Event

  data, out, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    out.append(Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return out


def test_a_resume_with_no_step_left_still_purges_what_the_crashed_run_logged(tmp_path):
  """Steps logged after the checkpoint leave metrics.jsonl at once; TensorBoard must drop them
  too, though no step follows (num_steps lowered to the checkpoint's): the purge marker is
  written when the writer opens."""
  writer = metrics.MetricWriter(tmp_path)
  for step in (10, 20, 30):
    writer.write(step, {"loss": 1.0})
  writer.close()
  # Named as an earlier second's file: tensorboardX names files by the second and host, and a
  # writer opened in the same second would overwrite this one.
  (earlier,) = (tmp_path / "tensorboard").glob("events.*")
  earlier.rename(earlier.with_name("events.out.tfevents.1000000000.host"))
  metrics.MetricWriter(tmp_path, resumed_at=20).close()
  assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()] == [10, 20]
  files = list((tmp_path / "tensorboard").glob("events.*"))
  starts = sorted(e.step for f in files for e in _events(f)
                  if e.session_log.status == e.session_log.START)
  assert len(files) == 2 and starts == [0, 21]


def test_a_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(tmp_path, enabled=False, resumed_at=3)
  writer.write(4, {"loss": 1.0})
  writer.close()
  assert not list(tmp_path.iterdir())


def test_a_resume_keeps_a_hand_edited_line_and_ends_the_last_row(tmp_path, caplog):
  """Only a crash's torn last line is dropped: a bad line inside the file (a hand edit) was
  deleted without a word, and a file saved without its final newline had the next row appended
  to its last one, which the resume after that deleted, both rows with it."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "eval_lo\n{"step": 3, "loss": 1.0}')
  with caplog.at_level(logging.WARNING):
    writer = metrics.MetricWriter(tmp_path, resumed_at=3)
  writer.write(4, {"loss": 0.5})
  writer.close()
  assert path.read_text().splitlines() == [
      '{"step": 1, "loss": 2.0}', '{"step": 2, "eval_lo', '{"step": 3, "loss": 1.0}',
      '{"step": 4, "loss": 0.5}']
  assert "metrics.jsonl, line 2 is not a logged step" in caplog.text
