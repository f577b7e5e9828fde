from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from species_classifier.evaluate.metrics import (
    EvaluationError,
    accept_rates,
    assigned_scores,
    choose_threshold,
    compute_metrics,
    confusion_counts,
    lookalike_confusion,
    macro_f1,
    operating_points,
    per_class_metrics,
    read_predictions,
    row_normalize,
)


def one_hot_table(classes: list[str], labels: list[str], predicted: list[str], folds: list[int] | None = None,
                  confidence: float = 0.8) -> pd.DataFrame:
    """Prediction table whose top class is `predicted` with probability `confidence`."""
    rows = []
    rest = (1.0 - confidence) / (len(classes) - 1)
    for i, (label, guess) in enumerate(zip(labels, predicted)):
        row = {"path": f"/photos/{i}.jpg", "species_name": label, "label": label}
        row.update({f"prob_{name}": confidence if name == guess else rest for name in classes})
        if folds is not None:
            row["fold"] = folds[i]
        rows.append(row)
    return pd.DataFrame(rows)


def test_macro_f1_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    # F1 per class: 0.5, 0.8 and 2/3.
    assert macro_f1(labels, predicted, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_macro_f1_skips_class_absent_from_fold() -> None:
    classes = ["A", "B", "other"]
    table = one_hot_table(
        classes,
        labels=["A", "A", "other", "other", "B", "B", "other"],
        predicted=["A", "A", "other", "other", "B", "other", "other"],
        folds=[0, 0, 0, 0, 1, 1, 1],
    )
    metrics = compute_metrics(read_predictions(table, classes))

    # Fold 0 has no B photos and predicts no B, so B is left out: A and other are perfect.
    assert metrics.macro_f1_per_fold[0] == pytest.approx(1.0)
    # Fold 1 has no A: B (P 1, R 1/2) and other (P 1/2, R 1) both have F1 2/3.
    assert metrics.macro_f1_per_fold[1] == pytest.approx(2 / 3)
    assert metrics.macro_f1_mean == pytest.approx((1.0 + 2 / 3) / 2)
    assert metrics.macro_f1_std == pytest.approx(abs(1.0 - 2 / 3) / math.sqrt(2))
    assert metrics.confusion_per_fold[0][1].sum() == 0
    assert metrics.confusion_per_fold[0].shape == (3, 3)


def test_macro_f1_counts_predicted_absent_class_as_zero() -> None:
    # Class 1 has no photos but is predicted once: its F1 is 0 and it stays in the mean.
    assert macro_f1(np.array([0, 2]), np.array([1, 2]), 3) == pytest.approx(1 / 3)


def test_per_class_keeps_bundle_order() -> None:
    classes = ["Zenaida macroura", "Acer rubrum", "other"]
    labels = np.array([0, 0, 2, 2, 2])
    predicted = np.array([0, 2, 2, 2, 0])
    table = per_class_metrics(labels, predicted, classes)

    assert table["class"].tolist() == classes
    assert table["support"].tolist() == [2, 0, 3]
    assert table["predicted"].tolist() == [2, 0, 3]
    assert table.loc[0, "precision"] == pytest.approx(0.5)
    assert table.loc[0, "recall"] == pytest.approx(0.5)
    assert table.loc[2, "precision"] == pytest.approx(2 / 3)
    assert table.loc[2, "recall"] == pytest.approx(2 / 3)
    assert math.isnan(table.loc[1, "precision"])
    assert math.isnan(table.loc[1, "recall"])


def test_confusion_counts_and_rows() -> None:
    labels = np.array([0, 0, 0, 2, 2])
    predicted = np.array([0, 2, 0, 2, 1])
    counts = confusion_counts(labels, predicted, 3)

    assert counts.tolist() == [[2, 0, 1], [0, 0, 0], [0, 1, 1]]
    rates = row_normalize(counts)
    assert rates[0].tolist() == pytest.approx([2 / 3, 0, 1 / 3])
    assert rates[1].tolist() == [0.0, 0.0, 0.0]
    assert rates[2].tolist() == pytest.approx([0, 0.5, 0.5])


def test_read_predictions_rejects_unknown_label() -> None:
    classes = ["A", "other"]
    table = one_hot_table(classes, ["A", "B"], ["A", "A"])
    with pytest.raises(EvaluationError, match="'b'"):
        read_predictions(table, classes)


def test_read_predictions_rejects_missing_column() -> None:
    classes = ["A", "other"]
    table = one_hot_table(classes, ["A", "other"], ["A", "A"]).drop(columns=["prob_other"])
    with pytest.raises(EvaluationError, match="prob_other"):
        read_predictions(table, classes)


def test_read_predictions_matches_label_case() -> None:
    classes = ["Acer rubrum", "other"]
    table = one_hot_table(classes, ["Acer rubrum", "other"], ["Acer rubrum", "other"])
    table["label"] = ["acer_rubrum", "Other"]
    assert read_predictions(table, classes).labels.tolist() == [0, 1]


def test_choose_threshold_hand_computed() -> None:
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.85, 0.75, 0.5, 0.4, 0.3])
    positive = np.array([True] * 5 + [False] * 5)

    # 1 of 5 negatives may be accepted: the lowest threshold above the second-highest negative (0.75).
    threshold = choose_threshold(scores, positive, 0.2)
    assert threshold == pytest.approx(0.8)
    assert accept_rates(scores, positive, threshold) == pytest.approx((0.6, 0.2))

    # No negative may be accepted: the lowest score above 0.85.
    assert choose_threshold(scores, positive, 0.0) == pytest.approx(0.9)
    # Every negative may be accepted: the lowest score.
    assert choose_threshold(scores, positive, 1.0) == pytest.approx(0.3)


def test_choose_threshold_accepts_nothing_above_top_negative() -> None:
    scores = np.array([0.5, 0.99])
    positive = np.array([True, False])
    threshold = choose_threshold(scores, positive, 0.0)
    assert threshold > 0.99
    assert accept_rates(scores, positive, threshold) == (0.0, 0.0)


def test_choose_threshold_never_exceeds_one() -> None:
    scores = np.array([1.0, 0.9, 1.0])
    positive = np.array([True, True, False])
    threshold = choose_threshold(scores, positive, 0.0)
    assert threshold == 1.0
    # The negative at exactly 1.0 is still accepted; the caller sees the limit is not met.
    assert accept_rates(scores, positive, threshold) == (0.5, 1.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_false_accept", [0.0, 0.02, 0.1])
def test_threshold_meets_false_accept_limit(seed: int, max_false_accept: float) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    positive = rng.random(n) < 0.3
    # Rounded scores make ties, which the threshold must not split. Scores stay below 1.0,
    # where the limit can always be met.
    scores = np.round(np.clip(rng.normal(np.where(positive, 0.7, 0.4), 0.2), 0, 0.99), 2)
    threshold = choose_threshold(scores, positive, max_false_accept)
    true_rate, false_rate = accept_rates(scores, positive, threshold)

    assert false_rate <= max_false_accept
    # Lowest: the next lower observed score breaks the limit.
    lower = scores[scores < threshold]
    if lower.size:
        assert accept_rates(scores, positive, lower.max())[1] > max_false_accept


def test_operating_points_accept_only_top_class() -> None:
    classes = ["A", "B", "other"]
    probabilities = np.array([
        [0.6, 0.3, 0.1],   # A photo
        [0.45, 0.5, 0.05],  # A photo whose top class is B
        [0.3, 0.6, 0.1],   # B photo
        [0.2, 0.1, 0.7],   # other photo
    ])
    labels = np.array([0, 0, 1, 2])
    scores = assigned_scores(probabilities, 0)
    assert scores.tolist() == [0.6, -1.0, -1.0, -1.0]

    points = operating_points(probabilities, labels, classes, max_false_accept=0.0)
    assert list(points) == ["A", "B"]
    assert points["A"].threshold == pytest.approx(0.6)
    assert points["A"].true_accept_rate == pytest.approx(0.5)
    assert points["A"].false_accept_rate == 0.0
    # B's only false accept candidate scores 0.5; the limit of 0 puts the threshold above it.
    assert points["B"].threshold == pytest.approx(0.6)
    assert points["B"].false_accept_rate == 0.0
    assert points["B"].true_accept_rate == 1.0


def test_lookalike_confusion_uses_role() -> None:
    classes = ["Acer rubrum", "other"]
    table = one_hot_table(
        classes,
        labels=["Acer rubrum", "other", "other", "other", "other", "other"],
        predicted=["Acer rubrum", "Acer rubrum", "other", "other", "Acer rubrum", "other"],
    )
    table["species_name"] = ["Acer rubrum", "Acer saccharum", "Acer saccharum", "Acer saccharinum",
                             "Columba livia", "Columba livia"]
    table["role"] = ["target", "lookalike", "lookalike", "lookalike", "background", "background"]
    result = lookalike_confusion(read_predictions(table, classes))

    assert result["species_name"].tolist() == ["Acer saccharum", "Acer saccharinum"]
    assert result["n_photos"].tolist() == [2, 1]
    assert result["confusion_rate"].tolist() == pytest.approx([0.5, 0.0])
    assert result.loc[0, "most_predicted_target"] == "Acer rubrum"


def test_lookalike_confusion_without_role() -> None:
    classes = ["Acer rubrum", "other"]
    table = one_hot_table(classes, ["other", "other"], ["Acer rubrum", "other"])
    table["species_name"] = ["Columba livia", "Acer saccharum"]
    result = lookalike_confusion(read_predictions(table, classes))
    assert result["species_name"].tolist() == ["Columba livia", "Acer saccharum"]


def test_metrics_to_dict_is_strict_json() -> None:
    classes = ["A", "B", "other"]
    table = one_hot_table(classes, ["A", "other", "other"], ["A", "other", "A"], folds=[0, 0, 0])
    summary = compute_metrics(read_predictions(table, classes)).to_dict()
    text = json.dumps(summary, allow_nan=False)

    assert summary["macro_f1"]["std"] is None
    assert summary["per_class"]["B"]["recall"] is None
    assert summary["confusion_matrix"]["labels"] == classes
    assert "NaN" not in text
