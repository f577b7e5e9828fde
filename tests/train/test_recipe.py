"""Guards for each training-recipe component, so a refactor cannot silently drop one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2

from species_classifier.data.dataset import read_dataset
from species_classifier.data.labels import build_classes
from species_classifier.data.photos import PhotoStore
from species_classifier.data.transforms import AugmentConfig, PreprocessConfig, build_train_transform
from species_classifier.model.factory import build_param_groups, create_classifier
from species_classifier.train.checkpoint import FoldState
from species_classifier.train.distributed import DistributedContext
from species_classifier.train.interrupt import GracefulStop
from species_classifier.train.loop import predict_logits
from species_classifier.train.recipe import TrainConfig
from species_classifier.train.frozen_prefix import frozen_prefix_length, split_prefix
from species_classifier.train.head_init import pooled_features, probe_head_weights
from species_classifier.train.loss import class_weights
from species_classifier.train.runner import FoldRun, label_photos
from species_classifier.train.schedule import apply_learning_rates, learning_rate_factor, step_plateau
from species_classifier.model.bundle import Bundle


def _fold_run(dataset: Path, out: Path, **overrides) -> FoldRun:
    settings = {"img_size": 64, "batch_size": 8, "workers": 0, "epochs": 2, **overrides}
    config = TrainConfig(dataset=str(dataset), targets=["Lycorma delicatula", "Acer rubrum"], out=str(out), **settings)
    classes = build_classes(config.targets)
    photos = label_photos(read_dataset(dataset), classes)
    store = PhotoStore(photos["path"].tolist(), PreprocessConfig(input_size=64), cache=True, threads=1)
    photos["store_index"] = range(len(photos))
    photos["fold"] = np.arange(len(photos)) % 2
    bundle = Bundle(classes=classes, model_name=config.model, preprocess=PreprocessConfig(input_size=64))
    return FoldRun(0, photos, store, bundle, config, DistributedContext(), out, out / "checkpoints", GracefulStop())


def test_layer_decay_is_geometric():
    model, _ = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="none")
    groups = build_param_groups(model, base_lr=1.0, layer_decay=0.5)
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    head = lr_of[id(model.classifier.weight)]
    last_block = lr_of[id(model.blocks[6][0].conv_pw.weight)]
    stem = lr_of[id(model.conv_stem.weight)]
    assert head == pytest.approx(1.0)
    assert last_block < head
    assert stem < last_block
    rates = sorted({group["lr"] for group in groups})
    ratios = [low / high for low, high in zip(rates, rates[1:])]
    assert ratios == pytest.approx([0.5] * len(ratios))


def test_freeze_epochs_zero_backbone_rate():
    model, _ = create_classifier("tf_efficientnet_lite0", num_classes=3, pretrained="none")
    optimizer = torch.optim.AdamW(build_param_groups(model, base_lr=1e-3))
    config = TrainConfig(freeze_epochs=1, warmup_epochs=0)
    apply_learning_rates(optimizer, 1, config, FoldState(fold=0))
    frozen = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert frozen["head"] == pytest.approx(1e-2)
    assert all(lr == 0.0 for name, lr in frozen.items() if name != "head")
    apply_learning_rates(optimizer, 2, config, FoldState(fold=0))
    assert all(group["lr"] > 0 for group in optimizer.param_groups)


def test_cosine_warmup_then_decay():
    config = TrainConfig(scheduler="cosine", warmup_epochs=2, epochs=10)
    factors = [learning_rate_factor(epoch, config, FoldState(fold=0)) for epoch in range(1, 11)]
    assert factors[0] < factors[1] < factors[2]
    assert factors[2] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))
    assert factors[-1] == pytest.approx(0.01)


def test_plateau_lowers_rate_after_patience():
    config = TrainConfig(scheduler="plateau", warmup_epochs=0, scheduler_patience=1, scheduler_factor=0.5)
    state = FoldState(fold=0)
    for epoch, macro_f1 in enumerate([0.5, 0.6, 0.6, 0.6], start=1):
        step_plateau(state, macro_f1, config, epoch)
    assert state.plateau_scale == pytest.approx(0.5)
    assert learning_rate_factor(5, config, state) == pytest.approx(0.5)


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), 3, "balanced")
    assert weights.tolist() == pytest.approx([6 / 9, 2.0, 1.0])
    assert class_weights(np.array([0, 1]), 2, "none") is None


@pytest.mark.parametrize("policy, expected", [("trivial", v2.TrivialAugmentWide), ("randaugment", v2.RandAugment)])
def test_augment_policy_in_transform(policy: str, expected: type):
    transform = build_train_transform(PreprocessConfig(input_size=32), AugmentConfig(policy=policy))
    assert any(isinstance(step, expected) for step in transform.transforms)


def test_flip_tta_averages_mirror():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    images = torch.randn(3, 3, 4, 4)
    loader = [(images, torch.zeros(3, dtype=torch.long))]
    plain, _ = predict_logits(model, loader, torch.device("cpu"), channels_last=False, show_progress=False)
    mirrored, _ = predict_logits(model, [(images.flip(-1), torch.zeros(3))], torch.device("cpu"), channels_last=False, show_progress=False)
    flipped, _ = predict_logits(model, loader, torch.device("cpu"), channels_last=False, show_progress=False, tta="flip")
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_fold_run_wires_loss_options(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, label_smoothing=0.1, class_weights="balanced")
    assert run.criterion.label_smoothing == pytest.approx(0.1)
    assert run.criterion.weight is not None
    assert run.model.drop_rate == pytest.approx(0.5)
    # The default trains the last third of the backbone and the head. The rest stays pretrained.
    assert not run.model.conv_stem.weight.requires_grad
    assert not run.model.blocks[4][2].conv_pw.weight.requires_grad
    assert run.model.blocks[5][0].conv_pw.weight.requires_grad
    assert run.model.conv_head.weight.requires_grad


def test_frozen_epoch_keeps_backbone(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.1, 0.5, 1.0, 1.0], freeze_epochs=1, epochs=1)
    stem_before = run.model.conv_stem.weight.detach().clone()
    head_before = run.model.classifier.weight.detach().clone()
    run.run_epoch(1)
    assert torch.equal(run.model.conv_stem.weight, stem_before)
    assert not torch.equal(run.model.classifier.weight, head_before)


def test_ema_weights_are_validated_and_kept(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.1, 0.5, 1.0, 1.0], ema_decay=0.9, epochs=1)
    run.run_epoch(1)
    assert run.ema is not None
    ema_stem = run.ema.module.conv_stem.weight
    assert not torch.equal(ema_stem, run.model.conv_stem.weight)
    assert torch.equal(run.best_weights["conv_stem.weight"], ema_stem)


def test_probe_head_fits_training_photos(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, head_init="probe", ema_decay=0.9)
    head_before = run.model.classifier.weight.detach().clone()
    run.init_head()
    assert not torch.equal(run.model.classifier.weight, head_before)
    # The probe separates its own training photos, and the EMA copy starts from the new head.
    loader = torch.utils.data.DataLoader(run.probe_set, batch_size=8)
    features, labels = pooled_features(run.model, loader, torch.device("cpu"), channels_last=True, show_progress=False)
    logits = features @ run.model.classifier.weight.detach().numpy().T + run.model.classifier.bias.detach().numpy()
    assert (logits.argmax(1) == labels).mean() >= 0.9
    assert torch.equal(run.ema.module.classifier.weight, run.model.classifier.weight)


def test_probe_head_handles_two_and_missing_classes():
    features = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.1]])
    weight, bias = probe_head_weights(features, np.array([0, 0, 2, 2]), num_classes=3, balanced=True)
    assert weight.shape == (3, 2)
    assert ((features @ weight.T + bias).argmax(1) == [0, 0, 2, 2]).all()
    assert not weight[1].any()
    assert bias[1] < bias[[0, 2]].min()


def test_frozen_bn_keeps_running_stats(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.1, 0.5, 1.0, 1.0], freeze_bn_stats=True, epochs=1)
    mean_before = run.model.bn1.running_mean.clone()
    scale_before = run.model.bn1.weight.detach().clone()
    run.run_epoch(1)
    assert torch.equal(run.model.bn1.running_mean, mean_before)
    assert not torch.equal(run.model.bn1.weight, scale_before)


def test_zero_multiplier_freezes_first_chunk(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.0, 1.0, 1.0, 1.0], epochs=1)
    stem_before = run.model.conv_stem.weight.detach().clone()
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert not run.model.conv_stem.weight.requires_grad
    assert id(run.model.conv_stem.weight) not in optimized
    run.run_epoch(1)
    assert torch.equal(run.model.conv_stem.weight, stem_before)
    assert run.model.classifier.weight.requires_grad


def test_validation_reuses_frozen_layers(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.0, 0.0, 1.0, 1.0], freeze_bn_stats=True, epochs=2)
    assert run.prefix_cache is not None
    prefix, _ = split_prefix(run.model, run.prefix_cache.length)
    assert not any(p.requires_grad for p in prefix.parameters())
    assert run.model.blocks[5][0].conv_pw.weight.requires_grad
    # After each epoch the cached path must give what the whole model gives.
    for epoch in (1, 2):
        run.run_epoch(epoch)
        cached, labels = run.prefix_cache.predict_logits(run.model, show_progress=False)
        full, full_labels = predict_logits(run.model, run.validation_loader, torch.device("cpu"), show_progress=False)
        np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(labels, full_labels)
    assert run.prefix_cache.batches is not None


def test_validation_cache_with_ema(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.0, 0.0, 1.0, 1.0], freeze_bn_stats=True, ema_decay=0.9, epochs=1)
    run.run_epoch(1)
    assert run.prefix_cache.batches is not None
    cached, _ = run.prefix_cache.predict_logits(run.ema.module, show_progress=False)
    full, _ = predict_logits(run.ema.module, run.validation_loader, torch.device("cpu"), show_progress=False)
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4)


def test_no_prefix_cache_without_frozen_layers(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.1, 0.5, 1.0, 1.0], freeze_bn_stats=True, epochs=1)
    assert frozen_prefix_length(run.model) == 0
    assert run.prefix_cache is None
    # Batch-norm statistics that move while training would make cached activations stale.
    assert _fold_run(small_dataset, tmp_path / "bn", lr_multipliers=[0.0, 1.0, 1.0, 1.0], freeze_bn_stats=False).prefix_cache is None


def test_prefix_cache_size_limit(small_dataset: Path, tmp_path: Path):
    run = _fold_run(small_dataset, tmp_path, lr_multipliers=[0.0, 0.0, 1.0, 1.0], freeze_bn_stats=True, epochs=1)
    run.prefix_cache.max_bytes = 1024
    assert run.prefix_cache.predict_logits(run.model, show_progress=False) is None
    assert run.prefix_cache.disabled
    validated = run.validate()
    assert len(validated.labels) == len(run.validation_rows)
