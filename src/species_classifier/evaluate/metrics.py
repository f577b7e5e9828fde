"""Classification metrics from a table of predictions: out-of-fold rows or a scored dataset.

The class order always comes from the bundle (targets in the order given, then
`other`); every scikit-learn call gets `labels=` explicitly, so a class that is missing
from the data keeps its row and column.

A prediction table has one row per photo with at least `label` (class name; species
that are not targets are already mapped to `other`) and `prob_<class>` for every class.
Optional columns: `fold`, `logit_<class>`, `species_name`, `role`, `path`, `license`,
`attribution`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from species_classifier.data.labels import normalize_species_name

log = logging.getLogger(__name__)

DEFAULT_MAX_FALSE_ACCEPT = 0.02

# `role` values that mark a species as a look-alike of a target.
LOOKALIKE_ROLES = frozenset({"lookalike", "look-alike", "look_alike", "confuser"})


class EvaluationError(ValueError):
    """A prediction table that does not fit the bundle's classes."""


def probability_columns(classes: Sequence[str]) -> list[str]:
    return [f"prob_{name}" for name in classes]


def logit_columns(classes: Sequence[str]) -> list[str]:
    return [f"logit_{name}" for name in classes]


@dataclass
class Predictions:
    """A prediction table turned into arrays in the bundle's class order.

    `labels` and `predicted` are class indices of shape (N,), `probabilities` is (N, C).
    `logits` is (N, C) or None when the table has no logit columns. `folds` is (N,) or
    None when the table has no `fold` column.
    """

    classes: list[str]
    table: pd.DataFrame
    labels: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray | None = None
    folds: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def fold_ids(self) -> list[int]:
        return [] if self.folds is None else sorted(int(f) for f in np.unique(self.folds))


def read_predictions(table: pd.DataFrame, classes: Sequence[str]) -> Predictions:
    """Check a prediction table against the class list and convert it to arrays.

    Raises:
        EvaluationError: A probability column is missing, or a label is not one of the classes.
    """
    classes = list(classes)
    if table.empty:
        raise EvaluationError("the prediction table has no rows")
    missing = [c for c in probability_columns(classes) if c not in table.columns]
    if missing:
        raise EvaluationError(
            f"prediction table is missing column(s) {', '.join(missing)}; the bundle's classes are {classes}"
        )
    labels = _label_indices(table, classes)
    probabilities = table[probability_columns(classes)].to_numpy(dtype=np.float64)
    if not np.isfinite(probabilities).all():
        raise EvaluationError("prediction table has missing or non-finite probabilities")

    logits = None
    if all(c in table.columns for c in logit_columns(classes)):
        logits = table[logit_columns(classes)].to_numpy(dtype=np.float64)
        if not np.isfinite(logits).all():
            log.warning("Prediction table has non-finite logits; calibration uses log-probabilities instead")
            logits = None
    folds = table["fold"].to_numpy(dtype=np.int64) if "fold" in table.columns else None
    return Predictions(classes, table.reset_index(drop=True), labels, probabilities, logits, folds)


def _label_indices(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    if "label" in table.columns:
        index_of = {normalize_species_name(name): i for i, name in enumerate(classes)}
        keys = table["label"].astype(str).map(normalize_species_name)
        unknown = sorted(set(keys) - set(index_of))
        if unknown:
            raise EvaluationError(
                f"label(s) {unknown[:5]} in the prediction table are not among the bundle's classes {classes}"
            )
        return keys.map(index_of).to_numpy(dtype=np.int64)
    if "label_index" in table.columns:
        indices = table["label_index"].to_numpy(dtype=np.int64)
        if indices.min() < 0 or indices.max() >= len(classes):
            raise EvaluationError(f"label_index outside 0..{len(classes) - 1}")
        return indices
    raise EvaluationError("prediction table has neither a 'label' nor a 'label_index' column")


def macro_f1(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Return the macro F1 over the classes that occur in `labels` or `predicted`.

    A class with neither photos nor predictions has no defined F1 and is left out of
    the mean. A class that is predicted but has no photos scores 0.
    """
    present = sorted(set(np.unique(labels)) | set(np.unique(predicted)))
    present = [int(c) for c in present if 0 <= c < n_classes]
    if not present:
        return math.nan
    return float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0))


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Return precision, recall, F1, support and predicted count per class, in class order.

    Precision is NaN for a class that is never predicted, and recall is NaN for a class
    with no photos, because neither is defined there.
    """
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=np.nan
    )
    predicted_count = np.bincount(predicted, minlength=len(classes))[: len(classes)]
    return pd.DataFrame({
        "class": list(classes),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(int),
        "predicted": predicted_count.astype(int),
    })


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the (C, C) confusion matrix: rows are true classes, columns predicted classes."""
    return confusion_matrix(labels, predicted, labels=list(range(n_classes)))


def row_normalize(matrix: np.ndarray) -> np.ndarray:
    """Divide each row by its sum; rows with no photos stay all zero."""
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)


@dataclass
class OperatingPoint:
    """The accept threshold for one target species and its rates on the photos it was chosen on.

    A photo is accepted as species S when S is its predicted class and P(S) >= `threshold`.
    `true_accept_rate` is the share of S photos accepted, `false_accept_rate` the share of
    the other photos accepted.
    """

    species: str
    threshold: float
    true_accept_rate: float
    false_accept_rate: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "true_accept_rate": self.true_accept_rate,
            "false_accept_rate": self.false_accept_rate,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }


def assigned_scores(probabilities: np.ndarray, class_index: int) -> np.ndarray:
    """Return P(class) where the class is the predicted one, and -1 elsewhere.

    Serving accepts a photo only for its predicted class, so a photo whose top class is
    another one can never be accepted for this class, whatever its probability.
    """
    scores = probabilities[:, class_index].astype(np.float64)
    return np.where(probabilities.argmax(axis=1) == class_index, scores, -1.0)


def accept_rates(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """Return (true accept rate, false accept rate) for `scores >= threshold`; NaN when a side is empty."""
    accepted = scores >= threshold
    true_rate = float(accepted[positive].mean()) if positive.any() else math.nan
    false_rate = float(accepted[~positive].mean()) if (~positive).any() else math.nan
    return true_rate, false_rate


def choose_threshold(scores: np.ndarray, positive: np.ndarray, max_false_accept: float) -> float:
    """Return the lowest threshold whose false-accept rate on negatives is <= `max_false_accept`.

    Candidates are the observed scores in [0, 1] plus the smallest float above the
    highest one, which accepts nothing. Thresholds never exceed 1.0, because serving
    rejects a calibration.json threshold outside [0, 1]. So when a negative scores
    exactly 1.0 and the limit allows no such photo, 1.0 is returned and the limit is
    not met. With no negatives, the lowest observed score is returned. With no scores
    in [0, 1] at all (the class is never predicted), the threshold is 1.0.
    """
    if not 0.0 <= max_false_accept <= 1.0:
        raise ValueError(f"max_false_accept must be between 0 and 1, got {max_false_accept}")
    candidates = np.unique(scores[(scores >= 0.0) & (scores <= 1.0)])
    if candidates.size == 0:
        return 1.0
    if candidates[-1] < 1.0:
        candidates = np.append(candidates, np.nextafter(candidates[-1], np.inf))
    negatives = np.sort(scores[~positive])
    # False accepts at threshold t: negatives with score >= t.
    false_accepts = negatives.size - np.searchsorted(negatives, candidates, side="left")
    # Compare counts, not rates, so that e.g. 2 of 100 at a 0.02 limit is not lost to rounding.
    allowed = math.floor(max_false_accept * negatives.size + 1e-9)
    meets_limit = np.flatnonzero(false_accepts <= allowed)
    if meets_limit.size == 0:
        return 1.0
    return float(candidates[meets_limit[0]])


def operating_points(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT,
) -> dict[str, OperatingPoint]:
    """Choose an accept threshold per target species (every class but the last, `other`)."""
    points = {}
    for index, species in enumerate(list(classes)[:-1]):
        scores = assigned_scores(probabilities, index)
        positive = labels == index
        threshold = choose_threshold(scores, positive, max_false_accept)
        true_rate, false_rate = accept_rates(scores, positive, threshold)
        if not positive.any():
            log.warning("No photos of target %s: its true-accept rate is undefined", species)
        if positive.all():
            log.warning("No photos other than %s: its false-accept rate cannot be measured", species)
        elif false_rate > max_false_accept:
            log.warning(
                "%s: photos of other species reach probability 1.0, so no threshold up to 1.0 keeps the "
                "false-accept rate at %.3f (it is %.3f at threshold 1.0)",
                species, max_false_accept, false_rate,
            )
        points[species] = OperatingPoint(
            species, threshold, true_rate, false_rate, int(positive.sum()), int((~positive).sum())
        )
    return points


def lookalike_confusion(
    predictions: Predictions, accepted_target: np.ndarray | None = None
) -> pd.DataFrame:
    """Return, per non-target species, how often its photos are predicted as a target.

    Uses the `species_name` column (photos of species outside the targets). When the table
    has a `role` column, only species whose role is a look-alike role are listed. An
    `accepted_target` array (N,) of booleans adds the rate of photos that a target
    accepted at its threshold.
    """
    table = predictions.table
    if "species_name" not in table.columns:
        return pd.DataFrame()
    other_index = len(predictions.classes) - 1
    rows = predictions.labels == other_index
    if "role" in table.columns:
        roles = table["role"].astype(str).str.strip().str.casefold()
        rows &= roles.isin(LOOKALIKE_ROLES).to_numpy()
    if not rows.any():
        return pd.DataFrame()

    predicted = predictions.predicted
    frame = pd.DataFrame({
        "species_name": table["species_name"].astype(str).to_numpy()[rows],
        "as_target": predicted[rows] != other_index,
        "predicted": [predictions.classes[i] for i in predicted[rows]],
    })
    if accepted_target is not None:
        frame["accepted"] = accepted_target[rows]

    result = []
    for species, group in frame.groupby("species_name", sort=False):
        wrong = group.loc[group["as_target"], "predicted"]
        row = {
            "species_name": species,
            "n_photos": len(group),
            "n_predicted_target": int(group["as_target"].sum()),
            "confusion_rate": float(group["as_target"].mean()),
            "most_predicted_target": wrong.mode().iloc[0] if len(wrong) else "",
        }
        if accepted_target is not None:
            row["accepted_rate"] = float(group["accepted"].mean())
        result.append(row)
    ordered = pd.DataFrame(result).sort_values(
        ["n_predicted_target", "confusion_rate", "n_photos"], ascending=[False, False, False]
    )
    return ordered.reset_index(drop=True)


@dataclass
class ClassificationMetrics:
    """Metrics of one prediction table; per-fold entries are empty without a `fold` column."""

    classes: list[str]
    n_photos: int
    accuracy: float
    macro_f1_pooled: float
    macro_f1_per_fold: dict[int, float]
    per_class: pd.DataFrame
    confusion: np.ndarray
    confusion_per_fold: dict[int, np.ndarray]
    operating_points: dict[str, OperatingPoint]
    max_false_accept: float
    lookalikes: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def macro_f1_mean(self) -> float:
        """Mean of the per-fold macro F1, or the pooled one when there are no folds."""
        values = [v for v in self.macro_f1_per_fold.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else self.macro_f1_pooled

    @property
    def macro_f1_std(self) -> float:
        """Sample standard deviation (ddof=1) of the per-fold macro F1; NaN with fewer than 2 folds."""
        values = [v for v in self.macro_f1_per_fold.values() if not math.isnan(v)]
        return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary; NaN becomes None."""
        per_class = {
            row["class"]: {key: row[key] for key in ("precision", "recall", "f1", "support", "predicted")}
            for row in self.per_class.to_dict(orient="records")
        }
        return json_ready({
            "classes": self.classes,
            "n_photos": self.n_photos,
            "accuracy": self.accuracy,
            "macro_f1": {
                "mean": self.macro_f1_mean,
                "std": self.macro_f1_std,
                "pooled": self.macro_f1_pooled,
                "per_fold": {str(k): v for k, v in self.macro_f1_per_fold.items()},
            },
            "per_class": per_class,
            "confusion_matrix": {"labels": self.classes, "counts": self.confusion.tolist()},
            "confusion_matrix_per_fold": {str(k): m.tolist() for k, m in self.confusion_per_fold.items()},
            "max_false_accept": self.max_false_accept,
            "operating_points": {name: point.to_dict() for name, point in self.operating_points.items()},
            "lookalikes": self.lookalikes.to_dict(orient="records"),
        })


def compute_metrics(
    predictions: Predictions, max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT
) -> ClassificationMetrics:
    """Compute every metric of `ClassificationMetrics` on uncalibrated probabilities."""
    n_classes = len(predictions.classes)
    labels, predicted = predictions.labels, predictions.predicted

    per_fold_f1: dict[int, float] = {}
    per_fold_confusion: dict[int, np.ndarray] = {}
    for fold in predictions.fold_ids:
        rows = predictions.folds == fold
        per_fold_f1[fold] = macro_f1(labels[rows], predicted[rows], n_classes)
        per_fold_confusion[fold] = confusion_counts(labels[rows], predicted[rows], n_classes)

    return ClassificationMetrics(
        classes=list(predictions.classes),
        n_photos=len(labels),
        accuracy=float((labels == predicted).mean()),
        macro_f1_pooled=macro_f1(labels, predicted, n_classes),
        macro_f1_per_fold=per_fold_f1,
        per_class=per_class_metrics(labels, predicted, predictions.classes),
        confusion=confusion_counts(labels, predicted, n_classes),
        confusion_per_fold=per_fold_confusion,
        operating_points=operating_points(predictions.probabilities, labels, predictions.classes, max_false_accept),
        max_false_accept=max_false_accept,
        lookalikes=lookalike_confusion(predictions),
    )


def json_ready(value: Any) -> Any:
    """Convert numpy scalars to Python numbers and NaN or infinity to None, recursively."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


__all__ = [
    "DEFAULT_MAX_FALSE_ACCEPT",
    "ClassificationMetrics",
    "EvaluationError",
    "OperatingPoint",
    "Predictions",
    "accept_rates",
    "assigned_scores",
    "choose_threshold",
    "compute_metrics",
    "confusion_counts",
    "json_ready",
    "lookalike_confusion",
    "macro_f1",
    "operating_points",
    "per_class_metrics",
    "read_predictions",
    "row_normalize",
]
