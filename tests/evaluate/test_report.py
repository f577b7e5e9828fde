from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from species_classifier.cli import main
from species_classifier.evaluate import summarize_run, write_report
from species_classifier.evaluate.calibration import CALIBRATION_JSON
from species_classifier.evaluate.report import SUMMARY_JSON
from species_classifier.model.bundle import OOF_CSV

SERVING_KEYS = {"temperature", "max_false_accept", "thresholds", "true_accept_rate", "ece_before", "ece_after", "n_photos"}


def readable_wrong_predictions(run: Path) -> int:
    table = pd.read_csv(run / OOF_CSV)
    wrong = table[table["predicted"] != table["label"]]
    return int(sum(not path.endswith("broken.jpg") for path in wrong["path"]))


def test_report_is_self_contained(make_run: Callable[[], Path]) -> None:
    run = make_run()
    path = write_report(run)
    page = path.read_text()

    assert path == run / "report.html"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page
    assert "<script" not in page
    # Per-class bars, overall confusion, five per-fold confusions, curves, reliability.
    assert page.count("data:image/png;base64,") == 9
    assert page.count("data:image/jpeg;base64,") == min(24, readable_wrong_predictions(run))
    assert "could not be read for a thumbnail" in page
    assert "gone.jpg" in page
    assert "cannot decode image (truncated)" in page
    assert "(c) test photographer" in page
    assert "Acer saccharum" in page


def test_report_headline_matches_summary(make_run: Callable[[], Path]) -> None:
    run = make_run()
    write_report(run)
    summary = json.loads((run / SUMMARY_JSON).read_text())
    headline = summary["headline"]
    page = (run / "report.html").read_text()

    assert f"{headline['macro_f1_mean']:.3f} ± {headline['macro_f1_std']:.3f}" in page
    assert headline["n_photos"] == len(pd.read_csv(run / OOF_CSV))
    assert set(summary["metrics"]["macro_f1"]["per_fold"]) == {"0", "1", "2", "3", "4"}
    assert summary["n_excluded"] == 2
    assert summary["metrics"]["confusion_matrix"]["labels"] == ["Lycorma delicatula", "Acer rubrum",
                                                                "Zenaida macroura", "other"]


def test_report_writes_calibration(make_run: Callable[[], Path]) -> None:
    run = make_run()
    write_report(run, max_false_accept=0.05)
    calibration = json.loads((run / CALIBRATION_JSON).read_text())

    assert set(calibration) == SERVING_KEYS
    assert calibration["max_false_accept"] == 0.05
    assert list(calibration["thresholds"]) == ["Lycorma delicatula", "Acer rubrum", "Zenaida macroura"]
    # The synthetic logits are scaled by 3, so the uncalibrated probabilities are overconfident.
    assert calibration["temperature"] > 1.5
    assert calibration["ece_after"] < calibration["ece_before"]


def test_summarize_run_matches_summary(make_run: Callable[[], Path]) -> None:
    run = make_run()
    write_report(run)
    result = summarize_run(run)
    metrics = json.loads((run / SUMMARY_JSON).read_text())["metrics"]

    assert result["macro_f1_mean"] == pytest.approx(metrics["macro_f1"]["mean"])
    assert result["macro_f1_std"] == pytest.approx(metrics["macro_f1"]["std"])
    assert result["accuracy"] == pytest.approx(metrics["accuracy"])
    assert result["n_folds"] == 5
    assert list(result["per_class_f1"]) == metrics["classes"]


def test_report_without_optional_files(make_run: Callable[[], Path]) -> None:
    run = make_run()
    (run / "metrics.csv").unlink()
    (run / "excluded_images.csv").unlink()
    table = pd.read_csv(run / OOF_CSV)
    table = table.drop(columns=[c for c in table.columns if c.startswith("logit_")] + ["fold"])
    table.to_csv(run / OOF_CSV, index=False)
    page = write_report(run, max_mistakes=0).read_text()

    assert "Training curves" not in page
    assert "No image was excluded" in page
    assert "fitted on log-probabilities" in page
    assert page.count("data:image/jpeg;base64,") == 0


def test_evaluate_command_rebuilds_report(make_run: Callable[[], Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run()
    assert main(["evaluate", str(run), "--max-false-accept", "0.1", "--mistakes", "3"]) == 0
    output = capsys.readouterr().out

    assert "macro F1" in output
    assert "± " in output
    assert "Lycorma delicatula: threshold" in output
    assert str(run / "report.html") in output
    assert json.loads((run / CALIBRATION_JSON).read_text())["max_false_accept"] == 0.1
    assert (run / "report.html").read_text().count("data:image/jpeg;base64,") == 3


def test_evaluate_command_without_oof(make_run: Callable[[], Path]) -> None:
    run = make_run()
    (run / OOF_CSV).unlink()
    assert main(["evaluate", str(run)]) == 2


def test_evaluate_rejects_bad_false_accept(make_run: Callable[[], Path]) -> None:
    run = make_run()
    with pytest.raises(SystemExit) as error:
        main(["evaluate", str(run), "--max-false-accept", "2"])
    assert error.value.code == 2


def test_report_confusion_per_fold_counts(make_run: Callable[[], Path]) -> None:
    run = make_run()
    write_report(run)
    metrics = json.loads((run / SUMMARY_JSON).read_text())["metrics"]
    per_fold = np.array([metrics["confusion_matrix_per_fold"][str(k)] for k in range(5)])
    assert per_fold.sum(axis=0).tolist() == metrics["confusion_matrix"]["counts"]


def test_calibration_loads_in_serve(make_run: Callable[[], Path]) -> None:
    serve_calibration = pytest.importorskip("species_classifier.serve.calibration")
    run = make_run()
    write_report(run)
    written = json.loads((run / CALIBRATION_JSON).read_text())
    loaded = serve_calibration.load_calibration(run, ["Lycorma delicatula", "Acer rubrum", "Zenaida macroura", "other"])

    assert loaded.temperature == pytest.approx(written["temperature"])
    assert loaded.thresholds == pytest.approx(written["thresholds"])
    assert loaded.max_false_accept == 0.02
