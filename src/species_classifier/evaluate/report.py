"""The evaluation report: `report.html` (self-contained) and `summary.json`.

`write_report(run_dir)` evaluates a run's out-of-fold predictions, refits the
calibration (`calibration.json`) and writes the report into the run folder.
`write_dataset_report` does the same for a scored separate dataset, measuring the run's
stored calibration instead of fitting a new one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from species_classifier.evaluate.calibration import (
    CALIBRATION_JSON,
    accepted_as_target,
    apply_calibration,
    calibrate,
    read_calibration,
    write_calibration,
)
from species_classifier.evaluate.metrics import (
    DEFAULT_MAX_FALSE_ACCEPT,
    EvaluationError,
    compute_metrics,
    json_ready,
    lookalike_confusion,
    macro_f1,
    read_predictions,
)
from species_classifier.evaluate.score import fold_prediction_column
from species_classifier.evaluate.sections import DEFAULT_MISTAKES, ReportData, render_report
from species_classifier.model.averaging import is_averaged
from species_classifier.model.bundle import (
    EXCLUDED_CSV,
    METRICS_CSV,
    OOF_CSV,
    Bundle,
    atomic_write_text,
    read_bundle,
)

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"

__all__ = [
    "DEFAULT_MISTAKES",
    "REPORT_HTML",
    "SUMMARY_JSON",
    "summarize_run",
    "write_dataset_report",
    "write_report",
]
# ---------------------------------------------------------------------------
# Reading run files


def read_oof(run_dir: Path) -> pd.DataFrame:
    path = run_dir / OOF_CSV
    if not path.is_file() and is_averaged(read_bundle(run_dir)):
        raise EvaluationError(
            f"{run_dir} is an averaged model (`average-folds`) that every training photo helped train, so it has "
            f"no out-of-fold predictions; evaluate it on held-out photos with "
            f"`species-classifier evaluate {run_dir} DATASET`"
        )
    if not path.is_file():
        raise EvaluationError(
            f"{run_dir}: {OOF_CSV} not found; the run has no out-of-fold predictions (did training finish?)"
        )
    return pd.read_csv(path)


def read_excluded(path: Path) -> pd.DataFrame:
    """Read an excluded-images CSV; a missing file means nothing was excluded."""
    if not path.is_file():
        return pd.DataFrame(columns=["path", "species_name", "reason"])
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_training_metrics(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / METRICS_CSV
    if not path.is_file():
        log.warning("%s not found: the report has no training curves", path)
        return None
    table = pd.read_csv(path)
    if not {"fold", "epoch"} <= set(table.columns) or table.empty:
        log.warning("%s has no fold/epoch rows: the report has no training curves", path)
        return None
    return table


def best_epochs(bundle: Bundle, training_metrics: pd.DataFrame) -> dict[int, int]:
    """Return each fold's kept epoch: `best_epoch` from model.json, else the epoch of highest val macro F1."""
    result = {int(fold["fold"]): int(fold["best_epoch"]) for fold in bundle.folds if fold.get("best_epoch") is not None}
    if "val_macro_f1" in training_metrics.columns:
        for fold, rows in training_metrics.groupby("fold"):
            if int(fold) not in result and rows["val_macro_f1"].notna().any():
                result[int(fold)] = int(rows.loc[rows["val_macro_f1"].idxmax(), "epoch"])
    return result


# ---------------------------------------------------------------------------
# Public entry points


def summarize_run(run_dir: str | Path, max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT) -> dict[str, Any]:
    """Return the headline metrics of a run's out-of-fold predictions, for logging.

    Keys: `macro_f1_mean`, `macro_f1_std` (None with one fold), `macro_f1_pooled`,
    `macro_f1_per_fold`, `accuracy`, `n_photos`, `n_folds`, `per_class_f1`.

    Raises:
        EvaluationError: The run has no `oof_predictions.csv` or it does not fit `model.json`.
    """
    run_dir = Path(run_dir)
    bundle = read_bundle(run_dir)
    predictions = read_predictions(read_oof(run_dir), bundle.classes)
    metrics = compute_metrics(predictions, max_false_accept)
    return json_ready({
        "macro_f1_mean": metrics.macro_f1_mean,
        "macro_f1_std": metrics.macro_f1_std,
        "macro_f1_pooled": metrics.macro_f1_pooled,
        "macro_f1_per_fold": {str(k): v for k, v in metrics.macro_f1_per_fold.items()},
        "accuracy": metrics.accuracy,
        "n_photos": metrics.n_photos,
        "n_folds": len(predictions.fold_ids),
        "per_class_f1": dict(zip(metrics.per_class["class"], metrics.per_class["f1"])),
    })


def write_report(
    run_dir: str | Path,
    max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT,
    max_mistakes: int = DEFAULT_MISTAKES,
) -> Path:
    """Evaluate a run's out-of-fold predictions and write its report.

    Writes `calibration.json` (refitted), `summary.json` and `report.html` into the run
    folder and returns the path of `report.html`.

    Raises:
        EvaluationError: The run has no `oof_predictions.csv` or it does not fit `model.json`.
    """
    run_dir = Path(run_dir)
    bundle = read_bundle(run_dir)
    predictions = read_predictions(read_oof(run_dir), bundle.classes)
    metrics = compute_metrics(predictions, max_false_accept)
    calibration = calibrate(predictions, max_false_accept)
    write_calibration(run_dir, calibration)
    metrics.lookalikes = lookalike_confusion(predictions, accepted_as_target(predictions, calibration))
    training_metrics = read_training_metrics(run_dir)

    data = ReportData(
        run_dir=run_dir,
        bundle=bundle,
        source="out-of-fold",
        predictions=predictions,
        metrics=metrics,
        calibration=calibration,
        excluded=read_excluded(run_dir / EXCLUDED_CSV),
        excluded_file=EXCLUDED_CSV,
        training_metrics=training_metrics,
        best_epochs=best_epochs(bundle, training_metrics) if training_metrics is not None else {},
        max_mistakes=max_mistakes,
    )
    path = _write_outputs(data, run_dir)
    log.info("Out-of-fold %s; report written to %s", headline_text(data), path)
    return path


def write_dataset_report(
    run_dir: str | Path,
    scored: pd.DataFrame,
    excluded: pd.DataFrame,
    out_dir: str | Path,
    dataset: str,
    max_mistakes: int = DEFAULT_MISTAKES,
) -> Path:
    """Write `summary.json` and `report.html` for a dataset scored by `score_dataset`.

    The run's `calibration.json`, when present, is measured on the dataset as stored;
    without it the report has no calibration section. Returns the path of `report.html`.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    bundle = read_bundle(run_dir)
    predictions = read_predictions(scored, bundle.classes)
    stored = read_calibration(run_dir)
    max_false_accept = float(stored["max_false_accept"]) if stored and "max_false_accept" in stored else DEFAULT_MAX_FALSE_ACCEPT
    metrics = compute_metrics(predictions, max_false_accept)
    calibration = apply_calibration(predictions, stored) if stored else None
    if calibration is None:
        log.warning("%s has no %s: the report shows no calibrated thresholds", run_dir, CALIBRATION_JSON)
    else:
        metrics.lookalikes = lookalike_confusion(predictions, accepted_as_target(predictions, calibration))

    fold_model_f1 = {}
    for fold in bundle.fold_ids:
        column = fold_prediction_column(fold)
        if column in scored.columns:
            indices = np.array([bundle.classes.index(name) for name in scored[column]])
            fold_model_f1[fold] = macro_f1(predictions.labels, indices, len(bundle.classes))

    data = ReportData(
        run_dir=run_dir,
        bundle=bundle,
        source="dataset",
        predictions=predictions,
        metrics=metrics,
        calibration=calibration,
        excluded=excluded,
        excluded_file=EXCLUDED_CSV,
        dataset=dataset,
        fold_model_f1=fold_model_f1,
        max_mistakes=max_mistakes,
    )
    path = _write_outputs(data, out_dir)
    log.info("%s: %s; report written to %s", dataset, headline_text(data), path)
    return path


def headline_text(data: ReportData) -> str:
    """Return a one-line headline such as 'macro F1 0.871 ± 0.020 over 5 folds, accuracy 0.902'."""
    metrics = data.metrics
    if data.source == "out-of-fold" and len(metrics.macro_f1_per_fold) >= 2:
        f1 = (
            f"macro F1 {metrics.macro_f1_mean:.3f} ± {metrics.macro_f1_std:.3f} over "
            f"{len(metrics.macro_f1_per_fold)} folds (pooled {metrics.macro_f1_pooled:.3f})"
        )
    else:
        f1 = f"macro F1 {metrics.macro_f1_pooled:.3f}"
        if len(data.fold_model_f1) >= 2:
            values = list(data.fold_model_f1.values())
            f1 += f" (single fold models {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f})"
    return f"{f1}, accuracy {metrics.accuracy:.3f} on {metrics.n_photos} photos"


def build_summary(data: ReportData) -> dict[str, Any]:
    metrics = data.metrics
    summary: dict[str, Any] = {
        "source": data.source,
        "run_dir": str(data.run_dir),
        "dataset": data.dataset or None,
        "model_name": data.bundle.model_name,
        "classes": data.bundle.classes,
        "headline": {
            "macro_f1_mean": metrics.macro_f1_mean,
            "macro_f1_std": metrics.macro_f1_std,
            "macro_f1_pooled": metrics.macro_f1_pooled,
            "accuracy": metrics.accuracy,
            "n_photos": metrics.n_photos,
        },
        "metrics": metrics.to_dict(),
        "calibration": data.calibration.to_summary_dict() if data.calibration else None,
        "n_excluded": len(data.excluded),
    }
    if data.fold_model_f1:
        summary["fold_model_macro_f1"] = {str(k): v for k, v in data.fold_model_f1.items()}
    if data.source == "out-of-fold":
        summary["folds"] = data.bundle.folds
    return json_ready(summary)


def _write_outputs(data: ReportData, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SUMMARY_JSON, json.dumps(build_summary(data), indent=2) + "\n")
    path = out_dir / REPORT_HTML
    atomic_write_text(path, render_report(data))
    return path


