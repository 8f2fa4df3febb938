"""Every mistake a user can make raises an error that names it; builds are atomic."""
import os
import shutil

import pytest

import fintrans.data as fd
from fintrans.data import DataConfigError, DatasetCorruptError, DatasetNotPreparedError
import fintrans.data.prepare as prepare_cli
from fintrans.data.builders import digits


def test_unknown_dataset_name_lists_valid_names(data_dir):
    with pytest.raises(DataConfigError, match=r"unknown dataset name 'mnist'.*'chars', 'digits'"):
        fd.load({"name": "mnist", "data_dir": str(data_dir)})
    with pytest.raises(DataConfigError, match="no `name`"):
        fd.load({"seq_len": 4})


def test_config_dict_is_accepted_and_unknown_or_missing_fields_are_named(data_dir):
    import ml_collections

    cfg = ml_collections.ConfigDict({"name": "chars", "seq_len": 16, "data_dir": str(data_dir), "prepare": False})
    assert fd.load(cfg).info["seq_len"] == 16
    with pytest.raises(DataConfigError, match=r"unknown config field\(s\) \['horizon'\].*valid fields"):
        fd.load({"name": "chars", "seq_len": 16, "horizon": 3, "data_dir": str(data_dir)})
    with pytest.raises(DataConfigError, match=r"missing config field\(s\) \['horizon'\] for dataset 'sp500'"):
        fd.load({"name": "sp500", "input_len": 16, "data_dir": str(data_dir)})
    with pytest.raises(DataConfigError, match="seq_len .* must be an integer >= 1; got 0"):
        fd.load({"name": "chars", "seq_len": 0, "data_dir": str(data_dir)})
    with pytest.raises(DataConfigError, match="seq_len=100000 leaves no window in split 'validation'"):
        fd.load({"name": "chars", "seq_len": 100_000, "data_dir": str(data_dir)})
    with pytest.raises(DataConfigError, match="input_len=3000 \\+ horizon=1000 leaves no window"):
        fd.load({"name": "sp500", "input_len": 3000, "horizon": 1000, "data_dir": str(data_dir)})


def test_missing_data_dir_without_prepare_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotPreparedError,
                       match=rf"{missing} does not exist.*fintrans.data.prepare --name=digits"):
        fd.load({"name": "digits", "data_dir": str(missing), "prepare": False})
    assert not missing.exists()


def test_unprepared_dataset_without_prepare(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match=rf"'digits' .*not prepared in data_dir {tmp_path}.*prepare=True"):
        fd.load({"name": "digits", "data_dir": str(tmp_path), "prepare": False})


def _copy_digits(data_dir, tmp_path):
    shutil.copytree(data_dir / "digits", tmp_path / "digits")
    return tmp_path / "digits" / "1.0.0"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupt_record_file_names_the_file_and_the_fix(data_dir, tmp_path, damage):
    version_dir = _copy_digits(data_dir, tmp_path)
    path = version_dir / "digits-train.array_record-00000-of-00001"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.unlink()
    with pytest.raises(DatasetCorruptError, match=rf"{path}.*delete {version_dir}"):
        fd.load({"name": "digits", "data_dir": str(tmp_path), "prepare": False})


def test_corrupt_dataset_info_names_the_folder(data_dir, tmp_path):
    version_dir = _copy_digits(data_dir, tmp_path)
    (version_dir / "dataset_info.json").write_text("{not json")
    with pytest.raises(DatasetCorruptError, match=rf"{version_dir} cannot be opened.*delete"):
        fd.load({"name": "digits", "data_dir": str(tmp_path)})


def test_bad_iterator_arguments(load):
    ds = load("digits")
    with pytest.raises(DataConfigError, match="batch_size 10 .* not divisible by process_count 4"):
        ds.iterator("train", 10, shuffle=True, process_index=0, process_count=4)
    with pytest.raises(DataConfigError, match=r"unknown split 'valid'.*\['train', 'validation', 'test'\]"):
        ds.iterator("valid", 8, shuffle=True)
    with pytest.raises(DataConfigError, match=r"process_index must be an integer in \[0, 2\); got 2"):
        ds.iterator("train", 8, shuffle=True, process_index=2, process_count=2)
    with pytest.raises(DataConfigError, match="num_epochs must be None"):
        ds.iterator("train", 8, shuffle=True, num_epochs=0, process_index=0, process_count=1)
    with pytest.raises(DataConfigError, match="seed must be an integer"):
        ds.iterator("train", 8, shuffle=True, seed=-1, process_index=0, process_count=1)
    with pytest.raises(DataConfigError, match="fewer than one global batch"):
        ds.iterator("test", 1024, shuffle=True, num_epochs=2, process_index=0, process_count=1)
    with pytest.raises(TypeError, match="'digits' is not a text dataset"):
        ds.decode([1, 2])


def test_crash_mid_build_leaves_nothing_that_loads(tmp_path, monkeypatch):
    real = digits.Digits._generate_examples

    def crash_in_test_split(self, split):
        if split == "test":
            raise KeyboardInterrupt("simulated crash")
        yield from real(self, split)

    monkeypatch.setattr(digits.Digits, "_generate_examples", crash_in_test_split)
    with pytest.raises(KeyboardInterrupt):
        fd.load({"name": "digits", "data_dir": str(tmp_path)})
    assert not (tmp_path / "digits" / "1.0.0").exists()
    with pytest.raises(DatasetNotPreparedError):
        fd.load({"name": "digits", "data_dir": str(tmp_path), "prepare": False})
    monkeypatch.undo()
    assert fd.load({"name": "digits", "data_dir": str(tmp_path)}).info["num_examples"]["test"] == 269


def test_prepare_cli_builds_into_data_dir(tmp_path, capsys):
    assert prepare_cli.main(["--name=digits", f"--data_dir={tmp_path}"]) == 0
    assert "digits:" in capsys.readouterr().out
    assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").is_file()
    with pytest.raises(SystemExit):
        prepare_cli.main(["--name=nope"])
