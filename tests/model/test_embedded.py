"""Embedded EfficientNet-Lite ImageNet weights load into timm and classify real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from species_classifier.data.images import load_image
from species_classifier.data.transforms import PreprocessConfig, preprocess_image
from species_classifier.model.embedded import EMBEDDED_MODELS, load_embedded_state_dict

# ImageNet-1k class indices of birds (cock..vulture, grouse..goose, white stork..bustard/puffins).
IMAGENET_BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


@pytest.mark.parametrize("model_name", sorted(EMBEDDED_MODELS))
def test_every_key_matches(model_name: str):
    model = timm.create_model(model_name, pretrained=False)
    state_dict = load_embedded_state_dict(model_name, model)
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys


@pytest.mark.parametrize("model_name", sorted(EMBEDDED_MODELS))
def test_imagenet_predicts_birds(model_name: str, species_dev: Path):
    model = timm.create_model(model_name, pretrained=False).eval()
    model.load_state_dict(load_embedded_state_dict(model_name, model))
    size = model.pretrained_cfg["input_size"][-1]
    config = PreprocessConfig(input_size=size, crop_pct=model.pretrained_cfg["crop_pct"])
    photos = sorted((species_dev / "Zenaida_macroura").glob("*.jpg")) + sorted((species_dev / "Columba_livia").glob("*.jpg"))
    batch = torch.stack([preprocess_image(load_image(p), config) for p in photos])
    with torch.inference_mode():
        top1 = model(batch).argmax(dim=1).tolist()
    birds = sum(index in IMAGENET_BIRDS for index in top1)
    assert birds >= len(photos) - 1, f"top-1 ImageNet classes {top1} are mostly not birds"
