"""Ensemble math, the verify decision rule, species matching and calibration.json reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from species_classifier.serve.calibration import CalibrationError, load_calibration
from species_classifier.serve.ensemble import combine_fold_logits, softmax
from species_classifier.serve.results import UnknownSpeciesError, resolve_species, verification_result
from species_classifier.serve.calibration import Calibration

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]


def test_combine_fold_logits():
    fold_logits = np.array([[[2.0, 0.0, -1.0]], [[0.0, 1.0, 0.0]]])
    output = combine_fold_logits(fold_logits, temperature=2.0)
    np.testing.assert_allclose(output.fold_probabilities[0, 0], softmax(np.array([2.0, 0.0, -1.0])))
    np.testing.assert_allclose(output.probabilities[0], output.fold_probabilities[:, 0].mean(axis=0))
    np.testing.assert_allclose(output.logits[0], [1.0, 0.5, -0.5])
    np.testing.assert_allclose(output.calibrated[0], softmax(np.array([0.5, 0.25, -0.25])))


def verify_with(calibrated_logits: list[float], species: str, threshold: float) -> dict:
    output = combine_fold_logits(np.array([[calibrated_logits]]), temperature=1.0)
    calibration = Calibration(thresholds={species: threshold}, source="calibration")
    return verification_result(output, 0, CLASSES, species, calibration)


def test_verify_match_needs_top_class():
    """Probability over the threshold is not enough when another class is more probable."""
    result = verify_with([1.0, 1.2, -5.0], "Lycorma delicatula", threshold=0.3)
    assert result["probability"] >= 0.3
    assert result["top_species"] == "Acer rubrum"
    assert result["match"] is False


def test_verify_match_at_threshold():
    result = verify_with([2.0, 0.0, 0.0], "Lycorma delicatula", threshold=0.7)
    assert result["probability"] == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert result["match"] is True
    assert verify_with([2.0, 0.0, 0.0], "Lycorma delicatula", threshold=0.8)["match"] is False


def test_resolve_species():
    targets = CLASSES[:-1]
    assert resolve_species("Lycorma_delicatula", targets) == "Lycorma delicatula"
    assert resolve_species(" ACER  RUBRUM ", targets) == "Acer rubrum"
    with pytest.raises(UnknownSpeciesError, match="Lycorma delicatula, Acer rubrum"):
        resolve_species("other", targets)


def test_calibration_absent(tmp_path):
    calibration = load_calibration(tmp_path, CLASSES, default_threshold=0.6)
    assert calibration.temperature == 1.0
    assert calibration.source == "default"
    assert calibration.threshold_for("Acer rubrum") == (0.6, "default")


def test_calibration_partial_thresholds(tmp_path):
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 1.5, "thresholds": {"Acer rubrum": 0.4}}))
    calibration = load_calibration(tmp_path, CLASSES)
    assert calibration.threshold_for("Acer rubrum") == (0.4, "calibration")
    assert calibration.threshold_for("Lycorma delicatula") == (0.5, "default")


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ('{"temperature": 0}', "positive number"),
        ('{"temperature": "hot"}', "positive number"),
        ('{"thresholds": {"Quercus alba": 0.5}}', "Quercus alba"),
        ('{"thresholds": {"Acer rubrum": 1.5}}', "must be in [0, 1]"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_calibration_invalid(tmp_path, content, message):
    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(CalibrationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_calibration(tmp_path, CLASSES)
