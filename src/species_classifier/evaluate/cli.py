"""The `evaluate` subcommand: rebuild a run's report, or score the run on a separate dataset."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from species_classifier.data.dataset import read_dataset
from species_classifier.evaluate.metrics import DEFAULT_MAX_FALSE_ACCEPT, EvaluationError
from species_classifier.evaluate.report import (
    DEFAULT_MISTAKES,
    SUMMARY_JSON,
    write_dataset_report,
    write_report,
)
from species_classifier.evaluate.score import dataset_name, score_dataset
from species_classifier.model.averaging import FOLD_ENSEMBLE_DIR
from species_classifier.model.bundle import EXCLUDED_CSV, OOF_CSV, atomic_write_text
from species_classifier.predict import Predictor

log = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
EVALUATIONS_DIR = "evaluations"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="build a run's evaluation report, or score the run on a separate labelled dataset",
        description=(
            "With RUN only: evaluate the run's out-of-fold predictions, refit the calibration "
            "(temperature and per-species thresholds, written to RUN/calibration.json) and write "
            "RUN/report.html and RUN/summary.json. "
            "With RUN and DATASET: predict every photo of DATASET with the run's fold ensemble and "
            "write predictions.csv, excluded_images.csv (unreadable images), summary.json and "
            "report.html under RUN/evaluations/<dataset name>/ or --out. Species that are not "
            "targets count as 'other'."
        ),
    )
    parser.add_argument("run", metavar="RUN", type=Path, help="run folder written by `train` (contains model.json)")
    parser.add_argument(
        "dataset", metavar="DATASET", nargs="?", type=Path, default=None,
        help="labelled dataset to score: a folder of species subfolders or a manifest CSV with "
        "path,species_name columns (optional; without it the out-of-fold predictions are evaluated)",
    )
    parser.add_argument(
        "--out", metavar="DIR", type=Path, default=None,
        help="output folder of a DATASET evaluation (default: RUN/evaluations/<dataset name>)",
    )
    parser.add_argument(
        "--max-false-accept", metavar="RATE", type=_fraction, default=DEFAULT_MAX_FALSE_ACCEPT,
        help="highest share (0-1) of photos of other species that a target's threshold may accept, "
        "when refitting the calibration from out-of-fold predictions (default: %(default)s)",
    )
    parser.add_argument(
        "--mistakes", metavar="N", type=int, default=DEFAULT_MISTAKES,
        help="number of most confident wrong predictions shown as thumbnails, 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto",
        help="torch device for DATASET scoring: auto (cuda when available, else cpu), cpu, cuda, cuda:1 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", metavar="N", type=int, default=32,
        help="images per forward pass when scoring DATASET (default: %(default)s)",
    )
    parser.add_argument(
        "--workers", metavar="N", type=int, default=2,
        help="threads that decode images when scoring DATASET (default: %(default)s)",
    )
    parser.set_defaults(func=run_evaluate)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_evaluate(args: argparse.Namespace) -> int:
    if args.dataset is None:
        if args.out is not None:
            log.warning("--out applies to a DATASET evaluation; the report goes into %s", args.run)
        return _evaluate_run(args)
    return _evaluate_dataset(args)


def _evaluate_run(args: argparse.Namespace) -> int:
    report = write_report(args.run, max_false_accept=args.max_false_accept, max_mistakes=args.mistakes)
    _print_summary(report.parent / SUMMARY_JSON)
    print(f"Report: {report}")
    return 0


def _evaluate_dataset(args: argparse.Namespace) -> int:
    dataset = read_dataset(args.dataset)
    _warn_training_overlap(args.run, dataset)
    name = dataset_name(args.dataset)
    out_dir = args.out or args.run / EVALUATIONS_DIR / name
    predictor = Predictor(args.run, device=resolve_device(args.device), batch_size=args.batch_size)
    scored, excluded = score_dataset(predictor, dataset, workers=args.workers)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / PREDICTIONS_CSV, scored.to_csv(index=False))
    atomic_write_text(out_dir / EXCLUDED_CSV, excluded.to_csv(index=False))
    if not excluded.empty:
        print(f"{len(excluded)} of {len(dataset)} images could not be read; listed in {out_dir / EXCLUDED_CSV}")
    if scored.empty:
        raise EvaluationError(f"{args.dataset}: none of the {len(dataset)} images could be read")

    report = write_dataset_report(args.run, scored, excluded, out_dir, name, max_mistakes=args.mistakes)
    _print_summary(out_dir / SUMMARY_JSON)
    print(f"Predictions: {out_dir / PREDICTIONS_CSV}")
    print(f"Report: {report}")
    return 0


def _warn_training_overlap(run_dir: Path, dataset: pd.DataFrame) -> None:
    """Warn when DATASET contains photos the run trained on, which inflates its scores.

    An averaged run (`average-folds`) keeps its source run's out-of-fold predictions,
    whose paths are the training photos, in `fold_ensemble/`.
    """
    oof = run_dir / OOF_CSV
    if not oof.is_file():
        oof = run_dir / FOLD_ENSEMBLE_DIR / OOF_CSV
    if not oof.is_file():
        return
    trained = {str(Path(p).resolve()) for p in pd.read_csv(oof, usecols=["path"])["path"].astype(str)}
    overlap = sum(str(Path(p).resolve()) in trained for p in dataset["path"])
    if overlap:
        log.warning(
            "%d of %d photos in the dataset were also used in training (same file path); "
            "their scores are optimistic. Evaluate on photos the run never saw.",
            overlap, len(dataset),
        )


def _print_summary(path: Path) -> None:
    """Print the headline numbers of a written summary.json."""
    summary = json.loads(path.read_text())
    headline = summary["headline"]
    per_fold = summary["metrics"]["macro_f1"]["per_fold"]
    if summary["source"] == "out-of-fold" and headline["macro_f1_std"] is not None:
        f1 = f"{headline['macro_f1_mean']:.3f} ± {headline['macro_f1_std']:.3f} over {len(per_fold)} folds"
    else:
        f1 = f"{headline['macro_f1_pooled']:.3f}"
    source = summary["dataset"] or "out-of-fold predictions"
    print(f"{source}: macro F1 {f1}, accuracy {headline['accuracy']:.3f}, {headline['n_photos']} photos")
    calibration = summary.get("calibration")
    if calibration:
        print(
            f"Temperature {calibration['temperature']:.3f}, ECE {calibration['ece_before']:.3f} -> "
            f"{calibration['ece_after']:.3f}"
        )
        for species, point in calibration["operating_points"].items():
            print(
                f"  {species}: threshold {_number(point['threshold'])}, true accept {_number(point['true_accept_rate'])}, "
                f"false accept {_number(point['false_accept_rate'])}"
            )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
