"""The command line: help on every subcommand, `python -m`, and `predict` outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from species_classifier.cli import build_parser, main


@pytest.mark.parametrize("command", ["train", "predict"])
def test_subcommand_help(command: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "default" in capsys.readouterr().out


def test_required_train_flags_present():
    train = build_parser().subcommands["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    assert {"--targets", "--folds", "--epochs", "--batch-size", "--img-size", "--lr", "--patience", "--model",
            "--seed", "--out", "--other-fraction"} <= flags


def test_python_dash_m_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "species_classifier", "--help"], capture_output=True, text=True, check=True)
    assert "train" in result.stdout
    assert "predict" in result.stdout


def test_config_file_supplies_defaults(tmp_path: Path, small_dataset: Path):
    config = tmp_path / "project.toml"
    config.write_text(
        f'[train]\ndataset = "{small_dataset}"\ntargets = ["Lycorma delicatula", "Acer rubrum"]\nfolds = 4\n'
    )
    parser = build_parser()
    from species_classifier.config import apply_config_defaults

    apply_config_defaults(parser.subcommands["train"], config, "train")
    args = parser.parse_args(["train", "--folds", "2"])
    assert args.dataset == str(small_dataset)
    assert args.targets == "Lycorma delicatula,Acer rubrum"
    assert args.folds == 2


def test_config_unknown_key_named(tmp_path: Path, caplog):
    config = tmp_path / "project.toml"
    config.write_text("[train]\nfoldz = 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "foldz" in caplog.text


@pytest.fixture(scope="module")
def predict_inputs(species_dev: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("to-predict")
    for photo in sorted((species_dev / "Lycorma_delicatula").glob("*.jpg"))[:3]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_predict_csv_has_every_class(trained_run: Path, predict_inputs: Path, tmp_path: Path):
    output = tmp_path / "predictions.csv"
    assert main(["predict", str(trained_run), str(predict_inputs), "--output", str(output)]) == 0
    table = pd.read_csv(output, keep_default_na=False)
    assert len(table) == 4
    assert {"prob_Lycorma delicatula", "prob_Acer rubrum", "prob_other", "predicted", "confidence"} <= set(table.columns)
    broken = table[table["path"].str.endswith("broken.jpg")].iloc[0]
    assert broken["error"]
    assert broken["predicted"] == ""
    good = table[table["error"] == ""][["prob_Lycorma delicatula", "prob_Acer rubrum", "prob_other"]].astype(float)
    assert good.sum(axis=1).between(0.999, 1.001).all()


def test_predict_json_and_glob(trained_run: Path, predict_inputs: Path, tmp_path: Path):
    output = tmp_path / "predictions.json"
    assert main(["predict", str(trained_run), str(predict_inputs / "*.jpg"), "--output", str(output)]) == 0
    records = json.loads(output.read_text())
    assert len(records) == 4
    assert all("prob_other" in record for record in records)


def test_predict_missing_path_error(trained_run: Path, tmp_path: Path, caplog):
    assert main(["predict", str(trained_run), str(tmp_path / "nothing-here.jpg")]) == 2
    assert "nothing-here.jpg" in caplog.text


def test_predict_not_a_run_error(tmp_path: Path, predict_inputs: Path, caplog):
    assert main(["predict", str(tmp_path), str(predict_inputs)]) == 2
    assert "not a trained run" in caplog.text
