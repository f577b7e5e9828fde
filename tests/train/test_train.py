"""End-to-end training on real photos: bundle contents, exclusions, resume, conflicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from species_classifier.cli import main

from tests.fast_training import FAST, TARGETS


def test_bundle_files_written(trained_run: Path):
    for name in ("model.json", "fold_0.safetensors", "fold_1.safetensors", "metrics.csv", "oof_predictions.csv",
                 "excluded_images.csv", "splits.csv"):
        assert (trained_run / name).is_file(), name


def test_model_json_records_classes_and_preprocessing(trained_run: Path):
    bundle = json.loads((trained_run / "model.json").read_text())
    assert bundle["classes"] == ["Lycorma delicatula", "Acer rubrum", "other"]
    assert bundle["architecture"]["model_name"] == "tf_efficientnet_lite0"
    assert bundle["preprocessing"]["input_size"] == 64
    assert bundle["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert bundle["training"]["targets"] == ["Lycorma delicatula", "Acer rubrum"]
    assert {"torch", "timm", "species_classifier"} <= set(bundle["versions"])
    assert [fold["weights"] for fold in bundle["folds"]] == ["fold_0.safetensors", "fold_1.safetensors"]


def test_bad_images_excluded_and_listed(trained_run: Path):
    excluded = pd.read_csv(trained_run / "excluded_images.csv")
    names = {Path(p).name: reason for p, reason in zip(excluded["path"], excluded["reason"])}
    assert set(names) == {"truncated.jpg", "empty.jpg"}
    assert "empty" in names["empty.jpg"]
    oof = pd.read_csv(trained_run / "oof_predictions.csv")
    assert not oof["path"].str.endswith(("truncated.jpg", "empty.jpg")).any()


def test_oof_covers_every_photo_once(trained_run: Path):
    oof = pd.read_csv(trained_run / "oof_predictions.csv")
    splits = pd.read_csv(trained_run / "splits.csv")
    assert sorted(oof["path"]) == sorted(splits["path"])
    assert oof["path"].is_unique
    probabilities = oof[["prob_Lycorma delicatula", "prob_Acer rubrum", "prob_other"]].sum(axis=1)
    assert probabilities.between(0.999, 1.001).all()
    assert {"logit_Lycorma delicatula", "logit_other"} <= set(oof.columns)
    assert set(oof.loc[oof["species_name"] == "Acer saccharum", "label"]) == {"other"}


def test_metrics_per_fold_and_epoch(trained_run: Path):
    metrics = pd.read_csv(trained_run / "metrics.csv")
    assert list(metrics[["fold", "epoch"]].itertuples(index=False, name=None)) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {"train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr", "train_images_per_s"} <= set(metrics.columns)


def test_fold_weights_are_best_epoch(trained_run: Path):
    saved = load_file(str(trained_run / "fold_0.safetensors"))
    with safe_open(str(trained_run / "checkpoints" / "fold_0.safetensors"), framework="pt") as file:
        best = {key[len("best."):]: file.get_tensor(key) for key in file.keys() if key.startswith("best.")}
    assert set(saved) == set(best)
    assert all((saved[key] == best[key]).all() for key in saved)


def test_rerun_finished_run_trains_nothing(trained_run: Path, dataset_with_bad_files: Path, caplog):
    before = pd.read_csv(trained_run / "metrics.csv")
    caplog.set_level("INFO")
    assert main(["train", str(dataset_with_bad_files), "--targets", TARGETS, "--out", str(trained_run), *FAST]) == 0
    assert "already finished" in caplog.text
    pd.testing.assert_frame_equal(before, pd.read_csv(trained_run / "metrics.csv"))


def test_resume_continues_from_checkpoint(small_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    common = ["train", str(small_dataset), "--targets", TARGETS, "--out", str(out), "--img-size", "64",
              "--batch-size", "8", "--workers", "0", "--folds", "2", "--patience", "5"]
    assert main([*common, "--epochs", "1"]) == 0
    first = pd.read_csv(out / "metrics.csv")
    # A larger --epochs on the same --out continues each fold from its epoch-1 checkpoint.
    assert main([*common, "--epochs", "2"]) == 0
    second = pd.read_csv(out / "metrics.csv")
    assert len(second) == 4
    resumed_first_epoch = second[second["epoch"] == 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(first.reset_index(drop=True), resumed_first_epoch)


def test_changed_settings_rejected(trained_run: Path, dataset_with_bad_files: Path, caplog):
    code = main(["train", str(dataset_with_bad_files), "--targets", "Lycorma delicatula", "--out", str(trained_run), *FAST])
    assert code == 2
    assert "--overwrite" in caplog.text
    assert "targets" in caplog.text


def test_manifest_keeps_observations_together(species_dev: Path, tmp_path: Path):
    rows = []
    for species, count in (("Lycorma_delicatula", 12), ("Acer_rubrum", 8), ("Acer_saccharinum", 8), ("Abies_concolor", 4)):
        for index, photo in enumerate(sorted((species_dev / species).glob("*.jpg"))[:count]):
            rows.append({"path": str(photo), "species_name": species, "observation_uuid": f"{species}-{index // 2}"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "run"
    assert main(["train", str(manifest), "--targets", TARGETS, "--out", str(out), *FAST, "--epochs", "1"]) == 0
    splits = pd.read_csv(out / "splits.csv")
    assert (splits.groupby("observation_id")["fold"].nunique() == 1).all()


def test_missing_target_error(small_dataset: Path, tmp_path: Path, caplog):
    code = main(["train", str(small_dataset), "--targets", "Lycorma delicatula,Acer rubra", "--out", str(tmp_path / "r"), *FAST])
    assert code == 2
    assert "'Acer rubrum'" in caplog.text


def test_failed_checks_leave_out_reusable(small_dataset: Path, tmp_path: Path):
    out = tmp_path / "r"
    assert main(["train", str(small_dataset), "--targets", TARGETS, "--out", str(out), *FAST, "--folds", "10"]) == 2
    assert main(["train", str(small_dataset), "--targets", TARGETS, "--out", str(out), *FAST, "--epochs", "1"]) == 0
    assert (out / "model.json").is_file()


def test_too_few_photos_for_folds_error(small_dataset: Path, tmp_path: Path, caplog):
    code = main(["train", str(small_dataset), "--targets", "Lycorma delicatula,Acer rubrum", "--out", str(tmp_path / "r"),
                 *FAST, "--folds", "10"])
    assert code == 2
    assert "'Acer rubrum' has 8 observation(s)" in caplog.text
