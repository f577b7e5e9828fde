"""`evaluate RUN DATASET` on a tiny untrained bundle and real species-dev photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from species_classifier.cli import main
from species_classifier.evaluate.score import dataset_name, map_labels
from species_classifier.model.bundle import Bundle, save_tensors, write_bundle
from species_classifier.model.factory import create_classifier

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    model, preprocess = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="embedded", img_size=64)
    save_tensors(model.state_dict(), run / "fold_0.safetensors")
    write_bundle(run, Bundle(classes=CLASSES, model_name="tf_efficientnet_lite0", preprocess=preprocess,
                             folds=[{"fold": 0, "weights": "fold_0.safetensors"}]))
    return run


@pytest.fixture
def tiny_dataset(tmp_path: Path, species_dev: Path) -> Path:
    """A species folder dataset: 3 + 2 target photos, 3 look-alike maple photos and one corrupt file."""
    root = tmp_path / "field-test"
    for species, count in (("Lycorma_delicatula", 3), ("Acer_rubrum", 2), ("Acer_saccharum", 3)):
        (root / species).mkdir(parents=True)
        for photo in sorted((species_dev / species).glob("*.jpg"))[:count]:
            shutil.copy(photo, root / species / photo.name)
    (root / "Acer_rubrum" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_map_labels_uses_bundle_names() -> None:
    names = ["lycorma_delicatula", "ACER RUBRUM", "Acer saccharum", "other"]
    assert map_labels(names, CLASSES) == ["Lycorma delicatula", "Acer rubrum", "other", "other"]


def test_dataset_name_from_folder_and_csv(tmp_path: Path) -> None:
    (tmp_path / "spring 2024").mkdir()
    assert dataset_name(tmp_path / "spring 2024") == "spring_2024"
    assert dataset_name(tmp_path / "holdout.csv") == "holdout"
    assert dataset_name(tmp_path / "spring 2024" / "manifest.csv") == "spring_2024"


def test_evaluate_dataset_writes_outputs(
    tiny_run: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tiny_run), str(tiny_dataset), "--device", "cpu", "--batch-size", "4"]) == 0
    output = capsys.readouterr().out
    out_dir = tiny_run / "evaluations" / "field-test"

    predictions = pd.read_csv(out_dir / "predictions.csv")
    assert len(predictions) == 8
    assert predictions.groupby("label").size().to_dict() == {"Acer rubrum": 2, "Lycorma delicatula": 3, "other": 3}
    assert set(predictions.loc[predictions["species_name"] == "Acer saccharum", "label"]) == {"other"}
    assert {"prob_other", "logit_Acer rubrum", "fold_0_predicted"} <= set(predictions.columns)
    assert predictions[[f"prob_{name}" for name in CLASSES]].sum(axis=1).round(5).eq(1).all()

    excluded = pd.read_csv(out_dir / "excluded_images.csv")
    assert excluded["path"].str.endswith("corrupt.jpg").tolist() == [True]
    assert excluded["species_name"].tolist() == ["Acer rubrum"]
    assert "1 of 9 images could not be read" in output

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["source"] == "dataset"
    assert summary["headline"]["n_photos"] == 8
    assert summary["n_excluded"] == 1
    assert summary["calibration"] is None

    page = (out_dir / "report.html").read_text()
    assert "corrupt.jpg" in page
    assert "field-test" in page
    assert "macro F1" in output
    assert str(out_dir / "report.html") in output


def test_evaluate_dataset_measures_stored_calibration(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    stored = {"temperature": 1.5, "max_false_accept": 0.02,
              "thresholds": {"Lycorma delicatula": 0.5, "Acer rubrum": 0.6},
              "true_accept_rate": {"Lycorma delicatula": 0.9, "Acer rubrum": 0.8},
              "ece_before": 0.1, "ece_after": 0.05, "n_photos": 100}
    (tiny_run / "calibration.json").write_text(json.dumps(stored))
    out_dir = tmp_path / "out"
    try:
        code = main(["evaluate", str(tiny_run), str(tiny_dataset), "--out", str(out_dir), "--device", "cpu"])
    finally:
        (tiny_run / "calibration.json").unlink()

    assert code == 0
    calibration = json.loads((out_dir / "summary.json").read_text())["calibration"]
    assert calibration["temperature"] == 1.5
    assert calibration["thresholds"] == stored["thresholds"]
    assert calibration["operating_points"]["Acer rubrum"]["n_positive"] == 2
    assert "Field-app thresholds" in (out_dir / "report.html").read_text()


def test_evaluate_dataset_all_unreadable(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "bad" / "Acer_rubrum").mkdir(parents=True)
    (tmp_path / "bad" / "Acer_rubrum" / "a.jpg").write_bytes(b"not an image")
    out_dir = tmp_path / "out"
    assert main(["evaluate", str(tiny_run), str(tmp_path / "bad"), "--out", str(out_dir), "--device", "cpu"]) == 2
    assert pd.read_csv(out_dir / "excluded_images.csv")["reason"].tolist() == ["not a recognised image format"]


def test_evaluate_dataset_from_manifest(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = sorted(tiny_dataset.rglob("*.jpg"))
    manifest = tiny_dataset / "holdout.csv"
    pd.DataFrame({
        "path": [str(p.relative_to(tiny_dataset)) for p in photos],
        "species_name": [p.parent.name for p in photos],
        "license": "cc-by-nc",
        "attribution": "(c) manifest photographer",
    }).to_csv(manifest, index=False)
    # Two of the photos also appear in the run's out-of-fold table, as if the run trained on them.
    (tiny_run / "oof_predictions.csv").write_text("path\n" + "\n".join(str(p) for p in photos[:2]) + "\n")
    out_dir = tmp_path / "out"
    try:
        code = main(["evaluate", str(tiny_run), str(manifest), "--out", str(out_dir), "--device", "cpu"])
    finally:
        (tiny_run / "oof_predictions.csv").unlink()

    assert code == 0
    assert "2 of 9 photos in the dataset were also used in training" in caplog.text
    predictions = pd.read_csv(out_dir / "predictions.csv")
    assert predictions["license"].eq("cc-by-nc").all()
    assert len(pd.read_csv(out_dir / "excluded_images.csv")) == 1
    assert json.loads((out_dir / "summary.json").read_text())["dataset"] == "holdout"
