"""The classifier factory and the per-layer learning-rate groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from species_classifier.model.bundle import save_tensors
from species_classifier.model.factory import ModelError, build_param_groups, create_classifier


def test_embedded_classifier_has_dropout_linear_head():
    model, preprocess = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="embedded", drop_rate=0.5)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear)
    assert head.out_features == 3
    assert model.drop_rate == 0.5
    assert preprocess.mean == (0.5, 0.5, 0.5)
    assert preprocess.std == (0.5, 0.5, 0.5)
    assert preprocess.input_size == 224


def test_img_size_override():
    _, preprocess = create_classifier("tf_efficientnet_lite0", num_classes=2, pretrained="none", img_size=160)
    assert preprocess.input_size == 160


def test_all_layers_trainable():
    model, _ = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="none")
    assert all(p.requires_grad for p in model.parameters())


def test_learning_rates_rise_from_stem_to_head():
    model, _ = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="none")
    groups = build_param_groups(model, base_lr=1e-3, lr_multipliers=[0.1, 0.5, 1.0, 10.0])
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert lr_of[id(model.conv_stem.weight)] == pytest.approx(1e-4)
    assert lr_of[id(model.blocks[3][0].conv_pw.weight)] == pytest.approx(5e-4)
    assert lr_of[id(model.conv_head.weight)] == pytest.approx(1e-3)
    assert lr_of[id(model.classifier.weight)] == pytest.approx(1e-2)
    assert len(lr_of) == len(list(model.parameters()))


def test_groups_follow_other_architectures():
    model, _ = create_classifier("resnet18", num_classes=2, pretrained="none")
    groups = build_param_groups(model, base_lr=1.0, lr_multipliers=[0.1, 1.0, 10.0])
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert lr_of[id(model.conv1.weight)] == pytest.approx(0.1)
    assert lr_of[id(model.layer4[1].conv2.weight)] == pytest.approx(1.0)
    assert lr_of[id(model.fc.weight)] == pytest.approx(10.0)


def test_no_weight_decay_on_norms_and_biases():
    model, _ = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="none")
    groups = build_param_groups(model, base_lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    assert decay_of[id(model.bn1.weight)] == 0.0
    assert decay_of[id(model.classifier.bias)] == 0.0
    assert decay_of[id(model.classifier.weight)] == 0.05


def test_backbone_from_safetensors_file(tmp_path: Path):
    source, _ = create_classifier("tf_efficientnet_lite0", num_classes=1000, pretrained="embedded")
    path = tmp_path / "backbone.safetensors"
    save_tensors(source.state_dict(), path)
    model, _ = create_classifier("tf_efficientnet_lite0", num_classes=4, pretrained=str(path))
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert model.get_classifier().out_features == 4


def test_pickled_backbone_rejected(tmp_path: Path):
    path = tmp_path / "backbone.pth"
    path.write_bytes(b"pickle")
    with pytest.raises(ModelError, match="only .safetensors"):
        create_classifier("tf_efficientnet_lite0", num_classes=2, pretrained=str(path))


def test_unknown_model_named():
    with pytest.raises(ModelError, match="unknown timm model 'efficientnet_b99'"):
        create_classifier("efficientnet_b99", num_classes=2)
