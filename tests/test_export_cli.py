"""convert_checkpoint.py's handling of bad input paths (no model is built: each case fails before
anything is read). The conversions themselves are tests/test_export.py's."""

import pathlib
import subprocess
import sys

import pytest

import convert_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["missing_model", "missing_model/"])
def test_a_missing_local_from_hf_path_is_named_as_a_path_not_a_hub_id(tmp_path, name):
  """An absolute or "/"-ended path is a local path by its form (paths.meant_as_local): asked of
  the hub, the error spoke of repo id formats (HFValidationError) or, offline, of the network."""
  path = f"{tmp_path}/{name}"
  with pytest.raises(FileNotFoundError) as e:
    convert_checkpoint.main(["--from-hf", path, "--out", str(tmp_path / "work")])
  message = str(e.value)
  assert f"--from-hf {path!r}" in message and "no such directory" in message
  assert "Repo id" not in message and "Hub" not in message
  assert not (tmp_path / "work").exists()


def test_a_file_given_as_from_hf_names_the_directory_to_give(tmp_path):
  model = tmp_path / "hf"
  model.mkdir()
  (model / "config.json").write_text("{}")
  with pytest.raises(NotADirectoryError, match=f"--from-hf '{model}/config.json' is a file"):
    convert_checkpoint.main(["--from-hf", str(model / "config.json"), "--out",
                             str(tmp_path / "work")])
  assert not (tmp_path / "work").exists()
  # The script itself: one line, no traceback.
  out = subprocess.run([sys.executable, "convert_checkpoint.py", "--from-hf",
                        str(model / "config.json"), "--out", str(tmp_path / "work")],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"convert_checkpoint.py: error: NotADirectoryError: --from-hf '{model}/config.json' is a "
      "file: give the directory that holds the model's config.json and weights, or a hub name.")


@pytest.fixture
def conversions(monkeypatch):
  """export.export_workdir and export.import_to_workdir recorded, not run."""
  from informask_jax import export

  calls = []
  monkeypatch.setattr(export, "export_workdir",
                      lambda *args, **kwargs: calls.append(("export", args, kwargs)) or {"x": 1})
  monkeypatch.setattr(export, "import_to_workdir",
                      lambda *args, **kwargs: calls.append(("import", args, kwargs)) or {"y": 2})
  return calls


def test_the_export_gets_every_flag(conversions, capsys):
  assert convert_checkpoint.main(["--workdir", "w", "--out", "o", "--step", "5", "--format",
                                  "roberta", "--no-verify", "--overwrite"]) == {"x": 1}
  assert convert_checkpoint.main(["--workdir", "w", "--out", "o"]) == {"x": 1}
  assert conversions == [
      ("export", ("w", "o"), dict(step=5, fmt="roberta", verify=False, overwrite=True)),
      ("export", ("w", "o"), dict(step=None, fmt=None, verify=True, overwrite=False))]
  assert capsys.readouterr().out == '{\n  "x": 1\n}\n' * 2  # The report, as JSON.


def test_the_import_gets_its_flags(conversions):
  assert convert_checkpoint.main(["--from-hf", "m", "--out", "w", "--scan-layers"]) == {"y": 2}
  convert_checkpoint.main(["--from-hf", "m", "--out", "w"])
  assert conversions == [("import", ("m", "w"), dict(scan_layers=True)),
                         ("import", ("m", "w"), dict(scan_layers=False))]


@pytest.mark.parametrize("argv", [
    ["--out", "o"], ["--workdir", "w", "--from-hf", "m", "--out", "o"], ["--workdir", "w"],
    ["--workdir", "w", "--out", "o", "--format", "gpt2"]])
def test_a_source_and_an_out_are_required_and_the_format_is_checked(conversions, argv, capsys):
  with pytest.raises(SystemExit) as exited:
    convert_checkpoint.main(argv)
  assert exited.value.code == 2 and conversions == []
  assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--workdir", "w", "--scan-layers"], "--scan-layers applies to --from-hf only."),
    (["--from-hf", "m", "--step", "0"], "--step and --format apply to --workdir (export) only."),
    (["--from-hf", "m", "--format", "bert"], "--step and --format apply to --workdir (export)"),
    (["--from-hf", "m", "--overwrite"], "--overwrite applies to --workdir (export) only"),
    (["--from-hf", "m", "--no-verify"], "--no-verify applies to --workdir (export) only")])
def test_a_flag_of_the_other_direction_is_refused_before_any_work(conversions, flags, message,
                                                                 capsys):
  with pytest.raises(SystemExit) as exited:
    convert_checkpoint.main([*flags, "--out", "o"])
  assert exited.value.code == 2 and conversions == []
  assert message in capsys.readouterr().err


def test_the_conversion_runs_on_the_cpu_unless_a_platform_is_chosen(conversions, monkeypatch):
  """It never grabs an accelerator (another job's, or the one a training run holds)."""
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  convert_checkpoint.main(["--workdir", "w", "--out", "o"])
  assert convert_checkpoint.os.environ["JAX_PLATFORMS"] == "cpu"
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  convert_checkpoint.main(["--from-hf", "m", "--out", "w"])
  assert convert_checkpoint.os.environ["JAX_PLATFORMS"] == "cuda"
