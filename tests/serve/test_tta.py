"""Flip test-time augmentation recorded in a bundle is applied by predict and by the server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from species_classifier.data.images import load_image
from species_classifier.predict import Predictor


@pytest.fixture(scope="module")
def flip_run(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("flip_run") / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("onnx"))
    bundle = json.loads((run / "model.json").read_text())
    bundle["inference"] = {"tta": "flip"}
    (run / "model.json").write_text(json.dumps(bundle))
    return run


def test_predictor_averages_mirror(small_run: Path, flip_run: Path, dev_photos: dict[str, list[Path]]):
    image = load_image(dev_photos["Lycorma delicatula"][0])
    plain = Predictor(small_run)
    flipped = Predictor(flip_run)
    batch = plain.preprocess(image)[None]
    expected = (plain.predict_tensors(batch).logits + plain.predict_tensors(batch.flip(-1)).logits) / 2
    # The ensemble logits are fold means, so averaging per fold first gives the same mean.
    np.testing.assert_allclose(flipped.predict_tensors(batch).logits, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(batch, flipped.preprocess(image)[None])


def test_server_applies_flip(
    small_run: Path, flip_run: Path, server_factory: Callable[..., object], photo_bytes: bytes
):
    plain_server = server_factory(small_run, "--backend", "pytorch")
    flip_server = server_factory(flip_run, "--backend", "pytorch")
    headers = {"Content-Type": "image/jpeg"}
    plain = httpx.post(f"{plain_server.url}/invocations", content=photo_bytes, headers=headers, timeout=60).json()
    flipped = httpx.post(f"{flip_server.url}/invocations", content=photo_bytes, headers=headers, timeout=60).json()
    assert flipped["probabilities"].keys() == plain["probabilities"].keys()
    assert flipped["probabilities"] != plain["probabilities"]
