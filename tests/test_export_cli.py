"""convert_checkpoint.py's handling of bad input paths (no model is built: each case fails before
anything is read). The conversions themselves are tests/test_export.py's."""

import pytest

import convert_checkpoint


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
