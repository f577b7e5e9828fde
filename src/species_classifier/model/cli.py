"""The `average-folds` subcommand."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from species_classifier.cli import HelpFormatter

log = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "average-folds",
        help="average a run's fold models into one model (one model's inference cost instead of K)",
        description=(
            "Write a new run folder whose one model, averaged.safetensors, is the element-wise mean of RUN's "
            "fold models' weights and BatchNorm statistics (a model soup; integer buffers take the maximum). "
            "predict, evaluate, serve, export and package use it like any run. calibration.json is copied "
            "unchanged: its temperature and thresholds were fitted on the fold models' out-of-fold predictions, "
            "not on the averaged model. The fold ensemble's out-of-fold predictions, metrics and report are "
            "copied into NEW_RUN/fold_ensemble/ and do not describe the averaged model, which every photo helped "
            "train: check its accuracy on held-out photos with `species-classifier evaluate NEW_RUN DATASET`."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder written by `train` with 2 or more folds")
    parser.add_argument(
        "--out", type=Path, metavar="NEW_RUN", required=True,
        help="folder to write the averaged run into; must be new or empty (see --force), and not RUN",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace NEW_RUN when it already contains a run (its onnx/ and evaluations/ are deleted too)",
    )
    parser.set_defaults(func=run_average_folds)


def run_average_folds(args: argparse.Namespace) -> int:
    from species_classifier.model.averaging import average_folds

    out = average_folds(args.run, args.out, force=args.force)
    log.info("Wrote the averaged run to %s; check its accuracy on held-out photos with "
             "`species-classifier evaluate %s DATASET`", out, out)
    return 0
