"""SageMaker handler functions with real photos, and the model.tar.gz layout."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from species_classifier.serve import sagemaker_handler as handler
from species_classifier.serve.package import HANDLER_MODULES, build_sagemaker_archive

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


@pytest.fixture(scope="module")
def model(small_run):
    return handler.model_fn(str(small_run))


def test_handler_predicts_raw_jpeg(model, dev_photos):
    photo = dev_photos["Acer rubrum"][0].read_bytes()
    payload = handler.input_fn(photo, "image/jpeg")
    result = handler.predict_fn(payload, model)
    body, content_type = handler.output_fn(result, "application/json")
    decoded = json.loads(body)
    assert content_type == "application/json"
    assert set(decoded["probabilities"]) == set(CLASSES)
    assert decoded["species"] in CLASSES
    assert [vote["fold"] for vote in decoded["folds"]] == [0, 1]


def test_handler_verifies_json(model, dev_photos):
    photo = dev_photos["Lycorma delicatula"][1].read_bytes()
    # The SageMaker model server passes JSON bodies to input_fn as str.
    body = json.dumps({"image": base64.b64encode(photo).decode(), "species": "Lycorma delicatula"})
    result = handler.predict_fn(handler.input_fn(body, "application/json"), model)
    assert result["species"] == "Lycorma delicatula"
    assert result["threshold_source"] == "default"
    expected_match = result["top_species"] == result["species"] and result["probability"] >= result["threshold"]
    assert result["match"] == expected_match


def test_handler_matches_server(model, server, dev_photos):
    photo = dev_photos["Acer rubrum"][2].read_bytes()
    local = handler.predict_fn(handler.input_fn(photo, "image/jpeg"), model)
    with server.client() as client:
        remote = client.post("/invocations", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    assert remote["species"] == local["species"]
    assert remote["probabilities"] == pytest.approx(local["probabilities"], abs=1e-4)


@pytest.mark.parametrize(
    "body,content_type,status",
    [
        (b"hello", "text/plain", 415),
        ("{broken", "application/json", 400),
        ('{"image": "***"}', "application/json", 400),
    ],
)
def test_handler_input_errors(body, content_type, status):
    with pytest.raises(handler.InferenceRequestError) as raised:
        handler.input_fn(body, content_type)
    assert raised.value.status_code == status


def test_handler_predict_errors(model, dev_photos):
    photo = dev_photos["Acer rubrum"][0].read_bytes()
    with pytest.raises(handler.InferenceRequestError) as unknown:
        handler.predict_fn(handler.ImagePayload(photo, "Quercus alba"), model)
    assert unknown.value.status_code == 422
    assert "Acer rubrum" in str(unknown.value)
    with pytest.raises(handler.InferenceRequestError) as truncated:
        handler.predict_fn(handler.ImagePayload(photo[:500]), model)
    assert truncated.value.status_code == 400


def test_handler_rejects_other_accept(model):
    with pytest.raises(handler.InferenceRequestError) as raised:
        handler.output_fn({"species": "other"}, "text/csv")
    assert raised.value.status_code == 406


@pytest.fixture(scope="module")
def archive(small_run, tmp_path_factory) -> Path:
    return build_sagemaker_archive(small_run, tmp_path_factory.mktemp("package") / "model.tar.gz")


def test_archive_layout(archive):
    with tarfile.open(archive) as opened:
        names = set(opened.getnames())
    assert {"model.json", "fold_0.safetensors", "fold_1.safetensors", "code/inference.py", "code/requirements.txt"} <= names
    assert {f"code/species_classifier/{module}" for module in HANDLER_MODULES} <= names
    assert not any(name.startswith(("/", "..")) or name.endswith((".pt", ".pth", ".pkl")) for name in names)


def test_archive_requirements(archive):
    with tarfile.open(archive) as opened:
        requirements = opened.extractfile("code/requirements.txt").read().decode().split()
    assert any(line.startswith("timm==") for line in requirements)
    assert any(line.startswith("safetensors==") for line in requirements)


def test_unpacked_archive_serves(archive, tmp_path, dev_photos):
    """The unpacked archive works on its own: inference.py imports its own copy of the package."""
    model_dir = tmp_path / "model"
    with tarfile.open(archive) as opened:
        opened.extractall(model_dir, filter="data")
    photo = dev_photos["Lycorma delicatula"][0]
    script = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("inference", {str(model_dir / "code" / "inference.py")!r})
inference = importlib.util.module_from_spec(spec)
sys.modules["inference"] = inference
spec.loader.exec_module(inference)
import species_classifier
model = inference.model_fn({str(model_dir)!r})
data = open({str(photo)!r}, "rb").read()
body, content_type = inference.output_fn(inference.predict_fn(inference.input_fn(data, "image/jpeg"), model), "*/*")
print(json.dumps({{"package": species_classifier.__file__, "result": json.loads(body), "type": content_type}}))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    assert output["package"].startswith(str(model_dir / "code"))
    assert output["type"] == "application/json"
    assert set(output["result"]["probabilities"]) == set(CLASSES)


def test_package_command(small_run, tmp_path):
    output = tmp_path / "out" / "model.tar.gz"
    completed = subprocess.run(
        [sys.executable, "-m", "species_classifier", "package", str(small_run), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert tarfile.is_tarfile(output)
