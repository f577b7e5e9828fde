"""Temperature scaling, expected calibration error and per-species accept thresholds.

`calibration.json` in the run folder is what serving reads:

- `temperature`: T > 0. Calibrated probabilities are softmax(logits / T), where serving
  applies T to the fold-averaged logits.
- `max_false_accept`: the false-accept limit the thresholds were chosen for.
- `thresholds`: per target species, the lowest calibrated probability of the predicted
  species at which a photo is accepted as that species.
- `true_accept_rate`: per target species, the share of its out-of-fold photos accepted.
- `ece_before`, `ece_after`: expected calibration error at T = 1 and at the fitted T.
- `n_photos`: number of out-of-fold photos T and the thresholds were fitted on.

T is fitted on each out-of-fold row's own fold logits, and the thresholds and rates are
measured on the same rows, so they are in-sample estimates.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from species_classifier.evaluate.metrics import (
    DEFAULT_MAX_FALSE_ACCEPT,
    OperatingPoint,
    Predictions,
    accept_rates,
    assigned_scores,
    json_ready,
    operating_points,
)
from species_classifier.model.bundle import atomic_write_text

log = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"
DEFAULT_BINS = 15
# Search range for T. A fit at either end means the logits are far off, and is logged.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Stand-in for log(0) when logits are rebuilt from probabilities.
_MIN_PROBABILITY = 1e-12


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Return softmax(logits / temperature) row by row."""
    return softmax(logits / temperature, axis=1)


def logits_of(predictions: Predictions) -> np.ndarray:
    """Return the prediction table's logits, or log-probabilities when it has none.

    Log-probabilities differ from the logits by a constant per row, which softmax
    ignores, so temperature scaling gives the same result on both (apart from
    probabilities rounded to zero).
    """
    if predictions.logits is not None:
        return predictions.logits
    return np.log(np.clip(predictions.probabilities, _MIN_PROBABILITY, None))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Return the mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    log_probabilities = log_softmax(logits / temperature, axis=1)
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """Return the temperature T that minimises the mean NLL of softmax(logits / T).

    The NLL is convex in 1/T, so a bounded scalar search over log T finds the minimum
    inside `bounds`.
    """
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on zero photos")
    low, high = math.log(bounds[0]), math.log(bounds[1])
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = math.exp(float(result.x))
    if min(abs(result.x - low), abs(result.x - high)) < 1e-3:
        log.warning(
            "Fitted temperature %.3g is at the end of the search range %s; the logits may be degenerate",
            temperature, bounds,
        )
    return temperature


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """Group photos by max probability into `n_bins` equal-width bins (lower, upper].

    Returns one row per bin with `lower`, `upper`, `count`, `accuracy` and `confidence`
    (the last two NaN for empty bins).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        rows.append({
            "lower": edges[b],
            "upper": edges[b + 1],
            "count": count,
            "accuracy": float(correct[members].mean()) if count else math.nan,
            "confidence": float(confidence[members].mean()) if count else math.nan,
        })
    return pd.DataFrame(rows)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Return the ECE: the photo-weighted mean |accuracy - confidence| over max-probability bins."""
    bins = reliability_bins(probabilities, labels, n_bins)
    filled = bins[bins["count"] > 0]
    if filled.empty:
        return math.nan
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((gaps * filled["count"]).sum() / filled["count"].sum())


@dataclass
class Calibration:
    """A fitted temperature, the thresholds on calibrated probabilities, and ECE before and after."""

    temperature: float
    max_false_accept: float
    operating_points: dict[str, OperatingPoint]
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n_photos: int
    bins_before: pd.DataFrame
    bins_after: pd.DataFrame
    used_logits: bool

    def to_json_dict(self) -> dict[str, Any]:
        """Return the content of `calibration.json`: exactly the keys serving reads."""
        return json_ready({
            "temperature": self.temperature,
            "max_false_accept": self.max_false_accept,
            "thresholds": {name: point.threshold for name, point in self.operating_points.items()},
            "true_accept_rate": {name: point.true_accept_rate for name, point in self.operating_points.items()},
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "n_photos": self.n_photos,
        })

    def to_summary_dict(self) -> dict[str, Any]:
        """Return `to_json_dict` plus false-accept rates, counts and NLL, for summary.json."""
        summary = self.to_json_dict()
        summary["operating_points"] = {name: point.to_dict() for name, point in self.operating_points.items()}
        summary["nll_before"] = self.nll_before
        summary["nll_after"] = self.nll_after
        summary["fitted_on_logits"] = self.used_logits
        return json_ready(summary)


def calibrate(predictions: Predictions, max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT) -> Calibration:
    """Fit T on every row of `predictions` and choose per-species thresholds on calibrated probabilities."""
    logits = logits_of(predictions)
    temperature = fit_temperature(logits, predictions.labels)
    after = calibrated_probabilities(logits, temperature)
    points = operating_points(after, predictions.labels, predictions.classes, max_false_accept)
    calibration = _evaluate(predictions, logits, temperature, max_false_accept, points)
    log.info(
        "Temperature %.3f fitted on %d photos: ECE %.4f -> %.4f",
        temperature, calibration.n_photos, calibration.ece_before, calibration.ece_after,
    )
    return calibration


def apply_calibration(predictions: Predictions, values: dict[str, Any]) -> Calibration:
    """Measure a stored calibration (the content of `calibration.json`) on other photos.

    T and the thresholds are kept as stored; ECE and the accept rates are measured on
    `predictions`. A target without a stored threshold gets NaN rates.
    """
    temperature = float(values["temperature"])
    max_false_accept = float(values.get("max_false_accept", DEFAULT_MAX_FALSE_ACCEPT))
    thresholds = values.get("thresholds", {})
    logits = logits_of(predictions)
    after = calibrated_probabilities(logits, temperature)
    points = {}
    for index, species in enumerate(predictions.classes[:-1]):
        positive = predictions.labels == index
        threshold = thresholds.get(species)
        if threshold is None:
            log.warning("calibration.json has no threshold for %s", species)
            true_rate = false_rate = threshold = math.nan
        else:
            true_rate, false_rate = accept_rates(assigned_scores(after, index), positive, float(threshold))
        points[species] = OperatingPoint(
            species, float(threshold), true_rate, false_rate, int(positive.sum()), int((~positive).sum())
        )
    return _evaluate(predictions, logits, temperature, max_false_accept, points)


def _evaluate(
    predictions: Predictions,
    logits: np.ndarray,
    temperature: float,
    max_false_accept: float,
    points: dict[str, OperatingPoint],
) -> Calibration:
    # "Before" is the probabilities as the table stores them: for out-of-fold rows that is
    # softmax(logits), for a scored dataset the ensemble's mean of fold softmaxes.
    labels = predictions.labels
    before = predictions.probabilities
    after = calibrated_probabilities(logits, temperature)
    return Calibration(
        temperature=temperature,
        max_false_accept=max_false_accept,
        operating_points=points,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        nll_before=negative_log_likelihood(logits, labels, 1.0),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        n_photos=len(labels),
        bins_before=reliability_bins(before, labels),
        bins_after=reliability_bins(after, labels),
        used_logits=predictions.logits is not None,
    )


def accepted_as_target(predictions: Predictions, calibration: Calibration) -> np.ndarray:
    """Return, per photo, whether serving would accept it as its predicted target species."""
    after = calibrated_probabilities(logits_of(predictions), calibration.temperature)
    predicted = after.argmax(axis=1)
    accepted = np.zeros(len(predicted), dtype=bool)
    for index, species in enumerate(predictions.classes[:-1]):
        point = calibration.operating_points.get(species)
        if point is None or math.isnan(point.threshold):
            continue
        rows = predicted == index
        accepted[rows] = after[rows, index] >= point.threshold
    return accepted


def write_calibration(run_dir: str | Path, calibration: Calibration) -> Path:
    """Write `calibration.json` into the run folder and return its path."""
    path = Path(run_dir) / CALIBRATION_JSON
    atomic_write_text(path, json.dumps(calibration.to_json_dict(), indent=2) + "\n")
    return path


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """Return the run's `calibration.json` as a dictionary, or None when there is none."""
    path = Path(run_dir) / CALIBRATION_JSON
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        float(values["temperature"])
        dict(values["thresholds"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        log.warning("Ignoring invalid %s (%s)", path, error)
        return None
    return values
