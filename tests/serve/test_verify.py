"""/v1/verify and /v1/predict against a real server, with and without calibration.json."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from species_classifier.model.bundle import read_bundle
from species_classifier.serve.backends import PyTorchBackend
from species_classifier.serve.ensemble import combine_fold_logits
from species_classifier.serve.payloads import decode_pixels

TARGETS = ["Lycorma delicatula", "Acer rubrum"]


def test_verify_json(server, photo_bytes):
    body = {"image": base64.b64encode(photo_bytes).decode(), "species": "Lycorma delicatula"}
    with server.client() as client:
        response = client.post("/v1/verify", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["species"] == "Lycorma delicatula"
    assert result["threshold"] == 0.5
    assert result["threshold_source"] == "default"
    assert result["temperature"] == 1.0
    expected_match = result["top_species"] == result["species"] and result["probability"] >= result["threshold"]
    assert result["match"] == expected_match
    assert result["probability"] == result["probabilities"]["Lycorma delicatula"]
    assert result["top_probability"] == max(result["probabilities"].values())
    assert result["probabilities"][result["top_species"]] == result["top_probability"]


def test_verify_multipart_matches_json(server, dev_photos):
    photo = dev_photos["Acer rubrum"][1].read_bytes()
    with server.client() as client:
        multipart = client.post(
            "/v1/verify", files={"image": ("leaf.jpg", photo, "image/jpeg")}, data={"species": "Acer rubrum"}
        )
        as_json = client.post("/v1/verify", json={"image": base64.b64encode(photo).decode(), "species": "Acer rubrum"})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == as_json.json()


def test_verify_agrees_with_predict(server, photo_bytes):
    with server.client() as client:
        verify = client.post("/v1/verify", files={"image": ("a.jpg", photo_bytes, "image/jpeg")}, data={"species": "Acer rubrum"})
        predict = client.post("/v1/predict", content=photo_bytes, headers={"Content-Type": "image/jpeg"})
    assert verify.status_code == 200
    assert predict.status_code == 200
    assert verify.json()["probabilities"] == predict.json()["calibrated_probabilities"]


@pytest.mark.parametrize("spelling", ["acer rubrum", "Acer_rubrum", "  Acer   rubrum "])
def test_verify_species_spelling(server, photo_bytes, spelling):
    with server.client() as client:
        response = client.post("/v1/verify", files={"image": ("a.jpg", photo_bytes, "image/jpeg")}, data={"species": spelling})
    assert response.status_code == 200, response.text
    assert response.json()["species"] == "Acer rubrum"


@pytest.mark.parametrize("species", ["Quercus alba", "other", ""])
def test_verify_unknown_species(server, photo_bytes, species):
    with server.client() as client:
        response = client.post("/v1/verify", json={"image": base64.b64encode(photo_bytes).decode(), "species": species})
    assert response.status_code == 422
    detail = response.json()["detail"]
    for target in TARGETS:
        assert target in detail


def test_verify_missing_species(server, photo_bytes):
    with server.client() as client:
        response = client.post("/v1/verify", content=photo_bytes, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 422
    assert "field 'species' is required" in response.json()["detail"]


def test_model_info(server):
    with server.client() as client:
        info = client.get("/v1/model").json()
    assert info["targets"] == TARGETS
    assert info["classes"] == [*TARGETS, "other"]
    assert info["backend"] == "openvino"
    assert info["precision"] == "fp32"
    assert info["thresholds"] == {"Lycorma delicatula": 0.5, "Acer rubrum": 0.5}
    assert info["threshold_source"] == "default"


def test_openapi_lists_body_types(server):
    with server.client() as client:
        schema = client.get("/openapi.json").json()
    invocations = schema["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/jpeg", "image/png", "image/webp", "application/x-image"} <= set(invocations)
    verify = schema["paths"]["/v1/verify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(verify)


@pytest.fixture(scope="module")
def calibrated_run(small_run: Path, server, tmp_path_factory) -> Path:
    """A copy of the small run (its ONNX export included) with calibration.json."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(small_run, run)
    calibration = {"temperature": 2.0, "max_false_accept": 0.02, "thresholds": {"Lycorma delicatula": 0.9, "Acer rubrum": 0.05}}
    (run / "calibration.json").write_text(json.dumps(calibration))
    return run


def test_verify_uses_calibration(calibrated_run, server_factory, dev_photos):
    server = server_factory(calibrated_run)
    photo = dev_photos["Lycorma delicatula"][2].read_bytes()

    bundle = read_bundle(calibrated_run)
    pixels = decode_pixels(photo, bundle.preprocess, 10**8)
    expected = combine_fold_logits(PyTorchBackend(calibrated_run).run(pixels[np.newaxis]), temperature=2.0)

    with server.client() as client:
        results = {
            species: client.post("/v1/verify", files={"image": ("p.jpg", photo, "image/jpeg")}, data={"species": species}).json()
            for species in TARGETS
        }
        info = client.get("/v1/model").json()

    for index, species in enumerate(TARGETS):
        result = results[species]
        assert result["threshold_source"] == "calibration"
        assert result["temperature"] == 2.0
        assert result["probability"] == pytest.approx(expected.calibrated[0, index], abs=1e-4)
        expected_match = result["top_species"] == result["species"] and result["probability"] >= result["threshold"]
        assert result["match"] == expected_match
    assert results["Lycorma delicatula"]["threshold"] == 0.9
    assert results["Acer rubrum"]["threshold"] == 0.05
    assert info["threshold_source"] == "calibration"
    assert info["max_false_accept"] == 0.02


def test_invalid_calibration_fails_ping(calibrated_run, server_factory, tmp_path):
    run = tmp_path / "bad_calibration"
    shutil.copytree(calibrated_run, run)
    (run / "calibration.json").write_text(json.dumps({"temperature": -1, "thresholds": {}}))
    server = server_factory(run, wait_ready=False)
    with server.client() as client:
        ping = client.get("/ping")
        deadline = time.monotonic() + 120
        while ping.json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
            ping = client.get("/ping")
    assert ping.status_code == 503
    assert "temperature must be a positive number" in ping.json()["detail"]
