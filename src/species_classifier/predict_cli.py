"""The `predict` subcommand."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from species_classifier.cli import HelpFormatter

log = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict image files, folders or globs with a trained run",
        description="Ensemble the run's fold models (mean of probabilities) on images and write every class probability.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", metavar="RUN", help="run folder written by `train`")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--output", metavar="FILE", help="write predictions to FILE.csv or FILE.json (default: CSV to standard output)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads; 0 = one per core")
    parser.add_argument("--config", metavar="FILE.toml", help="read defaults for these flags from the [predict] table of a TOML file")
    parser.set_defaults(func=run, tune_allocator=True)


def run(args: argparse.Namespace) -> int:
    from species_classifier.predict import Predictor, expand_image_paths, predict_paths, write_predictions
    from species_classifier.runtime import configure_threads, resolve_device

    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--output {args.output}: use a .csv or .json file name")
    threads = configure_threads(args.threads)
    paths = expand_image_paths(args.paths)
    if not paths:
        raise ValueError(f"no image files found in {', '.join(args.paths)}")
    predictor = Predictor(args.run, device=str(resolve_device(args.device)), batch_size=args.batch_size)
    table = predict_paths(predictor, paths, workers=threads)

    if args.output:
        write_predictions(table, Path(args.output))
        log.info("Wrote %d predictions to %s", len(table), args.output)
    else:
        table.to_csv(sys.stdout, index=False)
    failed = int((table["error"] != "").sum())
    if failed:
        log.warning("%d of %d images could not be read (see the error column)", failed, len(table))
    return 0
