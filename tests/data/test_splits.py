"""Observation-grouped stratified folds."""

from __future__ import annotations

import numpy as np
import pytest

from species_classifier.data.splits import TRAIN_ONLY, SplitError, assign_folds

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for observation in range(120):
        label = 2
        if observation < 30:
            label = 0
        elif observation < 45:
            label = 1
        for _ in range(rng.integers(1, 4)):
            labels.append(label)
            groups.append(f"obs-{observation}")
    return np.array(labels), np.array(groups)


def test_observation_never_split():
    labels, groups = _toy()
    folds = assign_folds(labels, groups, 3, seed=1, class_names=CLASSES)
    for group in np.unique(groups):
        assert len(set(folds[groups == group])) == 1


def test_every_fold_has_every_class():
    labels, groups = _toy()
    folds = assign_folds(labels, groups, 3, seed=1, class_names=CLASSES)
    assert set(folds) == {0, 1, 2}
    for fold in range(3):
        assert set(labels[folds == fold]) == {0, 1, 2}


def test_same_seed_same_folds():
    labels, groups = _toy()
    first = assign_folds(labels, groups, 3, seed=5, class_names=CLASSES)
    second = assign_folds(labels, groups, 3, seed=5, class_names=CLASSES)
    assert (first == second).all()


def test_single_split_holds_out_a_fifth():
    labels, groups = _toy()
    folds = assign_folds(labels, groups, 1, seed=1, class_names=CLASSES)
    assert set(folds) == {0, TRAIN_ONLY}
    held_out = len(np.unique(groups[folds == 0])) / len(np.unique(groups))
    assert 0.1 < held_out < 0.3


def test_too_few_observations_named():
    labels = np.array([0, 0, 0, 1, 2, 2, 2])
    groups = np.array(["a", "b", "c", "d", "e", "f", "g"])
    with pytest.raises(SplitError, match="'Acer rubrum' has 1 observation"):
        assign_folds(labels, groups, 3, seed=0, class_names=CLASSES)
