"""The check that must pass before `serve` runs OpenVINO in reduced precision.

`check_reduced_precision` runs a folder of photos through OpenVINO twice, in fp32 and
with the CPU's reduced-precision hint (bf16 where the CPU has it). It counts changed top
predictions and changed verify decisions, checking every photo against every target
species with the run's thresholds. The result goes to `RUN/onnx/precision_check.json`. `serve`
uses reduced precision only when that record passed, and was made for the current ONNX
graph and calibration.json.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from species_classifier.data.images import ImageLoadError, load_image
from species_classifier.data.transforms import preprocess_image
from species_classifier.model.bundle import atomic_write_text, read_bundle, utc_now
from species_classifier.serve.backends import OpenVinoBackend
from species_classifier.serve.calibration import CALIBRATION_JSON, load_calibration
from species_classifier.serve.ensemble import EnsembleOutput, combine_fold_logits
from species_classifier.serve.export import ONNX_DIR, ensure_export, sha256_file
from species_classifier.serve.settings import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

PRECISION_JSON = "precision_check.json"


def _calibration_sha256(run_dir: Path) -> str | None:
    path = run_dir / CALIBRATION_JSON
    return sha256_file(path) if path.is_file() else None


def _decisions(output: EnsembleOutput, thresholds: np.ndarray) -> np.ndarray:
    """(N, T) verify decisions of every image against every target species (see `results.verification_result`)."""
    targets = np.arange(len(thresholds))
    is_top = output.calibrated.argmax(axis=1)[:, np.newaxis] == targets
    return is_top & (output.calibrated[:, : len(thresholds)] >= thresholds)


def check_reduced_precision(
    run_dir: str | Path,
    photos: Sequence[Path],
    threads: int = 0,
    batch_size: int = 16,
    default_threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Compare OpenVINO's reduced-precision outputs with fp32 on photos and record the result.

    Returns:
        The record written to `RUN/onnx/precision_check.json`; `passed` is True when no
        top prediction and no verify decision changed.

    Raises:
        ValueError: No photo could be decoded.
    """
    run_dir = Path(run_dir)
    bundle = read_bundle(run_dir)
    calibration = load_calibration(run_dir, bundle.classes, default_threshold)
    path = ensure_export(run_dir, bundle, allow_export=True)
    fp32 = OpenVinoBackend(path, threads, reduced_precision=False)
    reduced = OpenVinoBackend(path, threads, reduced_precision=True)
    thresholds = np.array([calibration.threshold_for(species)[0] for species in bundle.targets])

    top_changed = calibrated_top_changed = decisions_changed = decisions_total = images = 0
    unreadable = 0
    max_probability_diff = 0.0
    for start in range(0, len(photos), batch_size):
        pixels = []
        for photo in photos[start : start + batch_size]:
            try:
                image = load_image(photo, draft_size=bundle.preprocess.resize_size)
            except ImageLoadError as error:
                log.warning("Precision check skips %s: %s", photo, error.reason)
                unreadable += 1
                continue
            pixels.append(preprocess_image(image, bundle.preprocess).numpy())
        if not pixels:
            continue
        batch = np.stack(pixels)
        exact = combine_fold_logits(fp32.run(batch), calibration.temperature)
        approximate = combine_fold_logits(reduced.run(batch), calibration.temperature)

        images += len(batch)
        top_changed += int((exact.probabilities.argmax(1) != approximate.probabilities.argmax(1)).sum())
        calibrated_top_changed += int((exact.calibrated.argmax(1) != approximate.calibrated.argmax(1)).sum())
        exact_decisions = _decisions(exact, thresholds)
        decisions_changed += int((exact_decisions != _decisions(approximate, thresholds)).sum())
        decisions_total += exact_decisions.size
        max_probability_diff = max(
            max_probability_diff,
            float(np.abs(exact.probabilities - approximate.probabilities).max()),
            float(np.abs(exact.calibrated - approximate.calibrated).max()),
        )

    if images == 0:
        raise ValueError(f"precision check: none of the {len(photos)} photos could be decoded")

    record = {
        "passed": top_changed == 0 and calibrated_top_changed == 0 and decisions_changed == 0,
        "precision": reduced.precision,
        "images": images,
        "unreadable": unreadable,
        "top_prediction_changes": top_changed,
        "calibrated_top_prediction_changes": calibrated_top_changed,
        "verify_decision_changes": decisions_changed,
        "verify_decisions": decisions_total,
        "max_abs_probability_diff": max_probability_diff,
        "onnx_sha256": sha256_file(path),
        "calibration_sha256": _calibration_sha256(run_dir),
        "cpu": platform.processor() or platform.machine(),
        "created": utc_now(),
    }
    atomic_write_text(run_dir / ONNX_DIR / PRECISION_JSON, json.dumps(record, indent=2) + "\n")
    log.info(
        "Precision check (%s vs fp32) on %d photos: %d top-prediction and %d of %d verify-decision changes, "
        "max probability difference %.2e: %s",
        reduced.precision, images, top_changed, decisions_changed, decisions_total, max_probability_diff,
        "passed" if record["passed"] else "FAILED",
    )
    return record


def passed_precision_check(run_dir: str | Path, onnx_file: Path) -> dict[str, Any] | None:
    """Return the recorded check if it passed for this ONNX graph and calibration, else None."""
    run_dir = Path(run_dir)
    path = run_dir / ONNX_DIR / PRECISION_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; ignoring it", path)
        return None
    if not record.get("passed"):
        return None
    if record.get("onnx_sha256") != sha256_file(onnx_file):
        log.info("%s was made for another ONNX export; ignoring it", path)
        return None
    if record.get("calibration_sha256") != _calibration_sha256(run_dir):
        log.info("%s was made with another calibration.json; ignoring it", path)
        return None
    return record
