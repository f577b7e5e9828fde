"""Backends agree with PyTorch; ONNX export, staleness and the reduced-precision check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from species_classifier.model.bundle import read_bundle
from species_classifier.serve.backends import (
    BackendError,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    PyTorchBackend,
    load_backend,
    load_first_backend,
)
from species_classifier.serve.export import ExportError, current_export, ensure_export, export_onnx, read_export_manifest
from species_classifier.serve.payloads import decode_pixels
from species_classifier.serve.precision import PRECISION_JSON, check_reduced_precision, passed_precision_check
from species_classifier.serve.service import ClassifierService
from species_classifier.serve.settings import ServeSettings



def photo_batch(run_dir: Path, dev_photos: dict[str, list[Path]], count: int = 6) -> np.ndarray:
    bundle = read_bundle(run_dir)
    paths = [path for paths in dev_photos.values() for path in paths[: count // 2]]
    return np.stack([decode_pixels(path.read_bytes(), bundle.preprocess, 10**8) for path in paths])


@pytest.fixture(scope="module")
def exported_run(small_run: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("onnx"))
    export_onnx(run)
    return run


@pytest.fixture(scope="module")
def exported_224_run(default_size_run: Path) -> Path:
    export_onnx(default_size_run)
    return default_size_run


def test_export_writes_manifest(exported_run):
    manifest = read_export_manifest(exported_run)
    assert manifest is not None
    assert manifest["folds"] == [0, 1]
    assert manifest["max_abs_diff_vs_pytorch"] <= 1e-4
    assert current_export(exported_run) == exported_run / "onnx" / "model.onnx"


def test_fp32_backends_match_pytorch(exported_run, dev_photos):
    pixels = photo_batch(exported_run, dev_photos)
    expected = PyTorchBackend(exported_run).run(pixels)
    path = exported_run / "onnx" / "model.onnx"
    for backend in (OnnxRuntimeBackend(path), OpenVinoBackend(path, reduced_precision=False)):
        actual = backend.run(pixels)
        assert actual.shape == (2, len(pixels), 3), backend.name
        assert np.abs(actual - expected).max() <= 1e-4, backend.name
    assert backend.precision == "fp32"


def test_backends_at_224_px(exported_224_run, dev_photos):
    """The one test at the default input size: export faithful, all backends within 1e-4."""
    pixels = photo_batch(exported_224_run, dev_photos, count=4)
    assert pixels.shape[1:] == (3, 224, 224)
    expected = PyTorchBackend(exported_224_run).run(pixels)
    path = exported_224_run / "onnx" / "model.onnx"
    onnxruntime_logits = OnnxRuntimeBackend(path).run(pixels)
    openvino_logits = OpenVinoBackend(path).run(pixels)
    assert np.abs(onnxruntime_logits - expected).max() <= 1e-4
    assert np.abs(openvino_logits - expected).max() <= 1e-4


def test_batch_of_one_matches_batch(exported_run, dev_photos):
    pixels = photo_batch(exported_run, dev_photos, count=4)
    backend = OpenVinoBackend(exported_run / "onnx" / "model.onnx")
    whole = backend.run(pixels)
    for index in range(len(pixels)):
        single = backend.run(pixels[index : index + 1])
        assert np.abs(single[:, 0] - whole[:, index]).max() <= 1e-4


def test_stale_export_detected(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    assert current_export(run) is not None
    fold = run / "fold_1.safetensors"
    fold.write_bytes(fold.read_bytes()[:-1] + b"\0")
    assert current_export(run) is None
    with pytest.raises(ExportError, match="missing or stale"):
        ensure_export(run, read_bundle(run), allow_export=False)


def test_auto_falls_back_to_pytorch(small_run, tmp_path):
    """Without an export and with exporting forbidden, auto ends at PyTorch."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("onnx"))
    backend = load_first_backend(("openvino", "onnxruntime", "pytorch"), run, read_bundle(run), export_missing=False)
    assert backend.name == "pytorch"


def test_reduced_precision_only_openvino(exported_run):
    with pytest.raises(BackendError, match="only available with the openvino backend"):
        load_backend("onnxruntime", exported_run, read_bundle(exported_run), reduced_precision=True)


@pytest.fixture(scope="module")
def precision_record(exported_224_run, dev_photos) -> dict:
    """The reduced-precision check of the 224 px run on 16 dev photos."""
    photos = [path for paths in dev_photos.values() for path in paths]
    return check_reduced_precision(exported_224_run, photos)


def test_precision_check_on_dev_photos(exported_224_run, precision_record, dev_photos):
    photos = [path for paths in dev_photos.values() for path in paths]
    record = precision_record
    assert record["images"] == len(photos)
    assert record["verify_decisions"] == len(photos) * 2
    changes = record["top_prediction_changes"] + record["calibrated_top_prediction_changes"] + record["verify_decision_changes"]
    assert record["passed"] == (changes == 0)
    stored = json.loads((exported_224_run / "onnx" / PRECISION_JSON).read_text())
    assert stored == record


def test_precision_record_tied_to_calibration(exported_224_run, precision_record, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_224_run, run)
    record_path = run / "onnx" / PRECISION_JSON
    record = json.loads(record_path.read_text())
    record["passed"] = True
    record_path.write_text(json.dumps(record))
    onnx_file = run / "onnx" / "model.onnx"
    assert passed_precision_check(run, onnx_file) is not None

    (run / "calibration.json").write_text(json.dumps({"temperature": 1.5, "thresholds": {}}))
    assert passed_precision_check(run, onnx_file) is None


def test_service_precision_selection(exported_224_run, precision_record, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_224_run, run)
    record_path = run / "onnx" / PRECISION_JSON
    record = json.loads(record_path.read_text())

    record["passed"] = False
    record_path.write_text(json.dumps(record))
    strict = ClassifierService(run, ServeSettings(precision="reduced"))
    strict.load()
    assert strict.state == "failed"
    assert "--check-precision" in strict.error

    auto = ClassifierService(run, ServeSettings(precision="auto", max_batch_size=2))
    auto.load()
    assert auto.state == "ready"
    assert auto.backend.precision == "fp32"
    auto.close()

    record["passed"] = True
    record_path.write_text(json.dumps(record))
    reduced = ClassifierService(run, ServeSettings(precision="auto", max_batch_size=2))
    reduced.load()
    assert reduced.state == "ready"
    assert reduced.backend.name == "openvino"
    assert reduced.backend.precision == record["precision"]
    reduced.close()
