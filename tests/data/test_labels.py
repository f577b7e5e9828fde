"""Class list and name matching."""

from __future__ import annotations

import pytest

from species_classifier.data.labels import LabelError, build_classes, match_targets, parse_targets


def test_classes_keep_given_order():
    targets = parse_targets(" Zenaida_macroura , acer rubrum,Lycorma delicatula")
    assert build_classes(targets) == ["Zenaida macroura", "acer rubrum", "Lycorma delicatula", "other"]


def test_matching_ignores_case_underscore_space():
    mapping = match_targets(["lycorma  DELICATULA", "Acer rubrum"], ["Lycorma_delicatula", " acer_rubrum ", "Acer saccharum"])
    assert mapping == {"lycorma delicatula": 0, "acer rubrum": 1, "acer saccharum": 2}


def test_missing_target_lists_closest_names():
    with pytest.raises(LabelError) as error:
        match_targets(["Acer rubra"], ["Acer rubrum", "Acer saccharum", "Zenaida macroura"])
    assert "Acer rubra" in str(error.value)
    assert "'Acer rubrum'" in str(error.value)


def test_duplicate_target_rejected():
    with pytest.raises(LabelError, match="listed twice"):
        parse_targets("Acer rubrum,acer_rubrum")


def test_other_as_target_rejected():
    with pytest.raises(LabelError, match="catch-all"):
        parse_targets("Acer rubrum,Other")


def test_empty_targets_rejected():
    with pytest.raises(LabelError, match="empty"):
        parse_targets(" , ")
