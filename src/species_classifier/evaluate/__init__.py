"""Evaluation of a trained run: metrics, calibration, plots and the HTML report.

Training calls `write_report(run_dir)` when it finishes and can log `summarize_run(run_dir)`.
"""

from species_classifier.evaluate.report import summarize_run, write_dataset_report, write_report

__all__ = ["summarize_run", "write_dataset_report", "write_report"]
