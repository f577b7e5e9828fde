"""`average-folds`: the weight mean, the averaged run folder, and the errors it raises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from species_classifier.cli import main
from species_classifier.data.transforms import PreprocessConfig
from species_classifier.model.averaging import (
    AVERAGED_WEIGHTS,
    CALIBRATION_SOURCE,
    FOLD_ENSEMBLE_DIR,
    AveragingError,
    average_folds,
    average_state_dicts,
)
from species_classifier.model.bundle import MODEL_JSON, OOF_CSV, Bundle, load_fold_models, save_tensors, write_bundle
from species_classifier.predict import Predictor

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


def tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, generator=generator),
        "bn.running_var": torch.rand(4, generator=generator).half(),
        "bn.num_batches_tracked": torch.tensor(10 + seed),
    }


def write_run(run_dir: Path, state_dicts: list[dict[str, torch.Tensor]]) -> Path:
    """Write a run folder with one weight file per state dict; the tensors need not fit the architecture."""
    folds = []
    for fold, state_dict in enumerate(state_dicts):
        save_tensors(state_dict, run_dir / f"fold_{fold}.safetensors")
        folds.append({"fold": fold, "weights": f"fold_{fold}.safetensors"})
    write_bundle(run_dir, Bundle(classes=CLASSES, model_name="tf_efficientnet_lite0",
                                 preprocess=PreprocessConfig(input_size=64), folds=folds))
    return run_dir


# Averaging state dicts


def test_average_state_dicts_mean() -> None:
    first, second = tiny_state_dict(0), tiny_state_dict(1)
    averaged = average_state_dicts([first, second])

    assert set(averaged) == set(first)
    expected = (first["conv.weight"] + second["conv.weight"]) / 2
    assert torch.allclose(averaged["conv.weight"], expected, atol=1e-7)
    expected_var = ((first["bn.running_var"].double() + second["bn.running_var"].double()) / 2).half()
    assert torch.equal(averaged["bn.running_var"], expected_var)


def test_average_state_dicts_keeps_dtypes() -> None:
    averaged = average_state_dicts([tiny_state_dict(0), tiny_state_dict(1)])
    assert averaged["conv.weight"].dtype == torch.float32
    assert averaged["bn.running_var"].dtype == torch.float16
    assert averaged["bn.num_batches_tracked"].dtype == torch.int64


def test_average_state_dicts_inputs_unchanged() -> None:
    first = {"weight": torch.ones(3, dtype=torch.float64)}
    second = {"weight": torch.full((3,), 3.0, dtype=torch.float64)}
    averaged = average_state_dicts([first, second])
    assert torch.equal(averaged["weight"], torch.full((3,), 2.0, dtype=torch.float64))
    assert torch.equal(first["weight"], torch.ones(3, dtype=torch.float64))


def test_average_state_dicts_integer_maximum() -> None:
    averaged = average_state_dicts([tiny_state_dict(0), tiny_state_dict(3), tiny_state_dict(1)])
    assert averaged["bn.num_batches_tracked"].item() == 13


def test_average_state_dicts_mismatched_keys() -> None:
    second = tiny_state_dict(1)
    del second["conv.weight"]
    with pytest.raises(AveragingError, match="fold_1 does not have the same tensors as fold_0 .*missing conv.weight"):
        average_state_dicts([tiny_state_dict(0), second], names=["fold_0", "fold_1"])


def test_average_state_dicts_mismatched_shapes() -> None:
    second = tiny_state_dict(1)
    second["conv.weight"] = torch.zeros(5, 3)
    with pytest.raises(AveragingError, match=r"conv.weight has shape \[5, 3\], but \[4, 3\]"):
        average_state_dicts([tiny_state_dict(0), second])


def test_average_state_dicts_one_rejected() -> None:
    with pytest.raises(AveragingError, match="at least 2"):
        average_state_dicts([tiny_state_dict(0)])


# Run folders with synthetic tensors


def test_average_folds_writes_mean(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0), tiny_state_dict(1), tiny_state_dict(2)])
    out = average_folds(run, tmp_path / "averaged")

    tensors = load_file(str(out / AVERAGED_WEIGHTS))
    folds = [tiny_state_dict(seed) for seed in range(3)]
    expected = sum(fold["conv.weight"].double() for fold in folds) / 3
    assert torch.allclose(tensors["conv.weight"].double(), expected, atol=1e-6)
    assert tensors["bn.num_batches_tracked"].item() == 12

    model_json = json.loads((out / MODEL_JSON).read_text())
    assert model_json["folds"] == [{
        "fold": "averaged",
        "weights": AVERAGED_WEIGHTS,
        "averaged_from": ["fold_0.safetensors", "fold_1.safetensors", "fold_2.safetensors"],
    }]
    assert [entry["fold"] for entry in model_json["averaging"]["source_folds"]] == [0, 1, 2]
    assert "calibration_source" not in model_json
    assert sorted(path.name for path in out.iterdir()) == [AVERAGED_WEIGHTS, MODEL_JSON]


def test_average_folds_one_fold_rejected(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0)])
    with pytest.raises(AveragingError, match=r"model.json: the folds field lists 1 weight file.*--folds 2 or more"):
        average_folds(run, tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()


def test_average_folds_mismatched_keys_rejected(tmp_path: Path) -> None:
    second = tiny_state_dict(1)
    second["head.bias"] = torch.zeros(3)
    run = write_run(tmp_path / "run", [tiny_state_dict(0), second])
    with pytest.raises(AveragingError, match="fold_1.safetensors does not have the same tensors as fold_0.safetensors .*extra head.bias"):
        average_folds(run, tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()


def test_average_folds_mismatched_shapes_rejected(tmp_path: Path) -> None:
    second = tiny_state_dict(1)
    second["conv.weight"] = torch.zeros(4, 4)
    run = write_run(tmp_path / "run", [tiny_state_dict(0), second])
    with pytest.raises(AveragingError, match=r"fold_1.safetensors: tensor conv.weight has shape \[4, 4\]"):
        average_folds(run, tmp_path / "averaged")


def test_average_folds_missing_weights_rejected(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0), tiny_state_dict(1)])
    (run / "fold_1.safetensors").unlink()
    with pytest.raises(AveragingError, match="weights file fold_1.safetensors of fold 1 not found"):
        average_folds(run, tmp_path / "averaged")


def test_average_folds_same_folder_rejected(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0), tiny_state_dict(1)])
    with pytest.raises(AveragingError, match="is the run folder itself"):
        average_folds(run, tmp_path / "run" / ".." / "run", force=True)
    with pytest.raises(AveragingError, match="contains the run folder"):
        average_folds(run, tmp_path, force=True)
    assert (run / "fold_0.safetensors").is_file()


def test_average_folds_existing_out_rejected(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0), tiny_state_dict(1)])
    out = tmp_path / "averaged"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    with pytest.raises(AveragingError, match="already exists and is not empty.*--force"):
        average_folds(run, out)
    with pytest.raises(AveragingError, match="does not look like a run folder; not replacing it"):
        average_folds(run, out, force=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_average_folds_force_replaces_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0), tiny_state_dict(1)])
    out = average_folds(run, tmp_path / "averaged")
    (out / "onnx").mkdir()
    (out / "onnx" / "model.onnx").write_bytes(b"stale export")

    average_folds(run, out, force=True)

    assert not (out / "onnx").exists()
    assert (out / AVERAGED_WEIGHTS).is_file()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_average_folds_empty_out_accepted(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0), tiny_state_dict(1)])
    (tmp_path / "averaged").mkdir()
    out = average_folds(run, tmp_path / "averaged")
    assert (out / AVERAGED_WEIGHTS).is_file()


def test_cli_one_fold_run_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = write_run(tmp_path / "run", [tiny_state_dict(0)])
    code = main(["average-folds", str(run), "--out", str(tmp_path / "averaged")])
    assert code == 2
    assert "averaging needs at least 2 fold models" in caplog.text


# A trained run


@pytest.fixture(scope="module")
def averaged_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("averaged") / "run"
    assert main(["average-folds", str(trained_run), "--out", str(out)]) == 0
    return out


def test_averaged_run_is_fold_mean(trained_run: Path, averaged_run: Path) -> None:
    averaged = load_file(str(averaged_run / AVERAGED_WEIGHTS))
    folds = [load_file(str(path)) for path in sorted(trained_run.glob("fold_*.safetensors"))]
    assert len(folds) == 2
    assert set(averaged) == set(folds[0])
    for key, tensor in averaged.items():
        assert tensor.dtype == folds[0][key].dtype, key
        if tensor.is_floating_point():
            expected = ((folds[0][key].double() + folds[1][key].double()) / 2).to(tensor.dtype)
            assert torch.allclose(tensor, expected, atol=1e-6), key
        else:
            assert torch.equal(tensor, torch.maximum(folds[0][key], folds[1][key])), key


def test_averaged_run_files(trained_run: Path, averaged_run: Path) -> None:
    model_json = json.loads((averaged_run / MODEL_JSON).read_text())
    source_json = json.loads((trained_run / MODEL_JSON).read_text())

    assert model_json["folds"][0]["averaged_from"] == ["fold_0.safetensors", "fold_1.safetensors"]
    assert model_json["averaging"]["source_folds"] == source_json["folds"]
    assert model_json["training"] == source_json["training"]
    assert model_json["classes"] == source_json["classes"]
    assert model_json["calibration_source"] == CALIBRATION_SOURCE
    assert (averaged_run / "calibration.json").read_bytes() == (trained_run / "calibration.json").read_bytes()
    assert not (averaged_run / OOF_CSV).exists()
    assert (averaged_run / FOLD_ENSEMBLE_DIR / OOF_CSV).read_bytes() == (trained_run / OOF_CSV).read_bytes()
    assert not list(averaged_run.glob("fold_*.safetensors"))


def test_averaged_run_loads_one_model(averaged_run: Path) -> None:
    bundle, models = load_fold_models(averaged_run)
    assert len(models) == 1
    assert bundle.fold_ids == ["averaged"]


def test_averaged_run_predicts(averaged_run: Path, small_dataset: Path) -> None:
    predictor = Predictor(averaged_run)
    photos = sorted((small_dataset / "Lycorma_delicatula").glob("*.jpg"))[:3]
    images = [Image.open(photo).convert("RGB") for photo in photos]

    prediction = predictor.predict_images(images)

    assert prediction.probabilities.shape == (3, len(predictor.classes))
    assert prediction.fold_probabilities.shape == (1, 3, len(predictor.classes))
    assert np.allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_averaged_run_predict_command(averaged_run: Path, small_dataset: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions.json"
    photo = sorted((small_dataset / "Acer_rubrum").glob("*.jpg"))[0]
    assert main(["predict", str(averaged_run), str(photo), "--output", str(output), "--threads", "1"]) == 0
    rows = json.loads(output.read_text())
    assert len(rows) == 1
    probabilities = [value for key, value in rows[0].items() if key.startswith("prob_")]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_averaged_run_evaluate_dataset(
    averaged_run: Path, dataset_with_bad_files: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(averaged_run), str(dataset_with_bad_files), "--out", str(out),
                 "--mistakes", "0", "--workers", "1"])
    assert code == 0
    assert "were also used in training" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["fold_model_macro_f1"]) == {"averaged"}


def test_averaged_run_evaluate_oof_rejected(averaged_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(averaged_run, copy)
    assert main(["evaluate", str(copy)]) == 2
    assert "is an averaged model" in caplog.text
    assert not (copy / "report.html").exists()
