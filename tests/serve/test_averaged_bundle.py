"""Serving a run written by `average-folds`: the HTTP service, the SageMaker handler and model.tar.gz."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from species_classifier.model.averaging import AVERAGED_WEIGHTS, average_folds
from species_classifier.serve import sagemaker_handler as handler
from species_classifier.serve.package import build_sagemaker_archive

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


@pytest.fixture(scope="module")
def averaged_run(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return average_folds(small_run, tmp_path_factory.mktemp("averaged") / "run")


def check_averaged_prediction(body: dict) -> None:
    assert body["species"] in CLASSES
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(body["calibrated_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert [vote["fold"] for vote in body["folds"]] == ["averaged"]
    assert body["folds"][0]["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)


def test_server_serves_averaged_run(averaged_run: Path, server_factory: Callable, photo_bytes: bytes) -> None:
    server = server_factory(averaged_run)
    with server.client() as client:
        ping = client.get("/ping")
        invocation = client.post("/invocations", content=photo_bytes, headers={"Content-Type": "image/jpeg"})
        model = client.get("/v1/model")

    assert ping.status_code == 200, server.log()
    assert invocation.status_code == 200, invocation.text
    check_averaged_prediction(invocation.json())
    assert model.status_code == 200, model.text
    assert model.json()["folds"] == ["averaged"]


def test_handler_predicts_with_averaged_run(averaged_run: Path, photo_bytes: bytes) -> None:
    model = handler.model_fn(str(averaged_run))
    result = handler.predict_fn(handler.input_fn(photo_bytes, "image/jpeg"), model)
    body, _ = handler.output_fn(result, "application/json")
    check_averaged_prediction(json.loads(body))


def test_package_averaged_run(averaged_run: Path, tmp_path: Path) -> None:
    archive = build_sagemaker_archive(averaged_run, tmp_path / "model.tar.gz")
    with tarfile.open(archive) as opened:
        names = set(opened.getnames())
    assert {"model.json", AVERAGED_WEIGHTS, "code/inference.py"} <= names
    assert not any(name.startswith("fold_") for name in names)
