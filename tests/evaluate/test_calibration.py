from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from species_classifier.evaluate.calibration import (
    CALIBRATION_JSON,
    apply_calibration,
    calibrate,
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    read_calibration,
    reliability_bins,
    write_calibration,
)
from species_classifier.evaluate.metrics import accept_rates, assigned_scores, read_predictions

CLASSES = ["Lycorma delicatula", "Acer rubrum", "other"]
SERVING_KEYS = {"temperature", "max_false_accept", "thresholds", "true_accept_rate", "ece_before", "ece_after", "n_photos"}


def sample_overconfident(n: int, n_classes: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw labels from softmax(z) and return logits z * temperature, so the true T is `temperature`."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 1.5, size=(n, n_classes))
    probabilities = softmax(true_logits, axis=1)
    labels = np.array([rng.choice(n_classes, p=p) for p in probabilities])
    return true_logits * temperature, labels


def prediction_table(logits: np.ndarray, labels: np.ndarray, with_logits: bool = True) -> pd.DataFrame:
    probabilities = softmax(logits, axis=1)
    table = pd.DataFrame({"label": [CLASSES[i] for i in labels], "fold": np.arange(len(labels)) % 3})
    for i, name in enumerate(CLASSES):
        table[f"prob_{name}"] = probabilities[:, i]
        if with_logits:
            table[f"logit_{name}"] = logits[:, i]
    return table


@pytest.mark.parametrize("true_temperature", [0.6, 2.5])
def test_fit_temperature_recovers_known_value(true_temperature: float) -> None:
    logits, labels = sample_overconfident(8000, 3, true_temperature, seed=1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.08)


def test_temperature_scaling_lowers_ece() -> None:
    logits, labels = sample_overconfident(6000, 3, 2.5, seed=2)
    before = expected_calibration_error(softmax(logits, axis=1), labels)
    after = expected_calibration_error(calibrated_probabilities(logits, fit_temperature(logits, labels)), labels)
    assert before > 0.05
    assert after < before / 3


def test_ece_hand_computed() -> None:
    # Four photos in the (0.8667, 0.9333] bin: mean confidence 0.9, three correct (accuracy 0.75).
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    labels = np.array([0, 0, 0, 0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.15)

    bins = reliability_bins(probabilities, labels)
    assert len(bins) == 15
    assert bins["count"].sum() == 4
    assert bins.loc[bins["count"] > 0, "accuracy"].tolist() == [0.75]


def test_ece_puts_certain_photos_in_last_bin() -> None:
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5]])
    bins = reliability_bins(probabilities, np.array([0, 1]), n_bins=2)
    assert bins["count"].tolist() == [1, 1]


def test_calibrate_writes_serving_keys(tmp_path: Path) -> None:
    logits, labels = sample_overconfident(3000, 3, 2.0, seed=3)
    predictions = read_predictions(prediction_table(logits, labels), CLASSES)
    calibration = calibrate(predictions, max_false_accept=0.05)
    path = write_calibration(tmp_path, calibration)
    values = json.loads(path.read_text())

    assert path.name == CALIBRATION_JSON
    assert set(values) == SERVING_KEYS
    assert list(values["thresholds"]) == CLASSES[:-1]
    assert list(values["true_accept_rate"]) == CLASSES[:-1]
    assert values["n_photos"] == 3000
    assert values["max_false_accept"] == 0.05
    assert values["temperature"] == pytest.approx(2.0, rel=0.1)
    assert values["ece_after"] < values["ece_before"]
    assert read_calibration(tmp_path) == values


def test_calibrated_thresholds_meet_limit() -> None:
    logits, labels = sample_overconfident(3000, 3, 2.0, seed=4)
    predictions = read_predictions(prediction_table(logits, labels), CLASSES)
    calibration = calibrate(predictions, max_false_accept=0.02)
    calibrated = calibrated_probabilities(logits, calibration.temperature)

    for index, species in enumerate(CLASSES[:-1]):
        point = calibration.operating_points[species]
        true_rate, false_rate = accept_rates(assigned_scores(calibrated, index), labels == index, point.threshold)
        assert false_rate <= 0.02
        assert true_rate == pytest.approx(point.true_accept_rate)


def test_calibrate_without_logits_uses_log_probabilities() -> None:
    logits, labels = sample_overconfident(3000, 3, 2.0, seed=5)
    with_logits = calibrate(read_predictions(prediction_table(logits, labels), CLASSES))
    without = calibrate(read_predictions(prediction_table(logits, labels, with_logits=False), CLASSES))
    assert without.temperature == pytest.approx(with_logits.temperature, rel=1e-4)
    assert not without.used_logits


def test_apply_calibration_keeps_stored_values() -> None:
    logits, labels = sample_overconfident(500, 3, 2.0, seed=6)
    predictions = read_predictions(prediction_table(logits, labels), CLASSES)
    stored = {"temperature": 2.0, "max_false_accept": 0.02,
              "thresholds": {"Lycorma delicatula": 0.7, "Acer rubrum": 0.8}}
    applied = apply_calibration(predictions, stored)

    assert applied.temperature == 2.0
    assert applied.operating_points["Acer rubrum"].threshold == 0.8
    expected = accept_rates(assigned_scores(calibrated_probabilities(logits, 2.0), 1), labels == 1, 0.8)
    assert applied.operating_points["Acer rubrum"].true_accept_rate == pytest.approx(expected[0])
    assert applied.operating_points["Acer rubrum"].false_accept_rate == pytest.approx(expected[1])
