"""Read `calibration.json`: the temperature and the per-species verify thresholds.

The file is written after training (format below); `serve` only reads it.

    {"temperature": 1.7, "max_false_accept": 0.02,
     "thresholds": {"Lycorma delicatula": 0.83, ...}}

The temperature divides the fold-averaged logits before the softmax. A threshold applies
to that calibrated probability of the assigned species. Without the file, the temperature
is 1 and every species gets the same fallback threshold.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"

ThresholdSource = Literal["calibration", "default"]


class CalibrationError(ValueError):
    """A calibration.json that cannot be used."""


@dataclass(frozen=True)
class Calibration:
    """Temperature and thresholds, and where the thresholds came from."""

    temperature: float = 1.0
    thresholds: dict[str, float] = field(default_factory=dict)
    max_false_accept: float | None = None
    default_threshold: float = 0.5
    source: ThresholdSource = "default"

    def threshold_for(self, species: str) -> tuple[float, ThresholdSource]:
        """Return the verify threshold of a species and whether it came from calibration."""
        if species in self.thresholds:
            return self.thresholds[species], "calibration"
        return self.default_threshold, "default"


def load_calibration(run_dir: str | Path, classes: list[str], default_threshold: float = 0.5) -> Calibration:
    """Read the run folder's calibration.json, or return the uncalibrated fallback.

    Raises:
        CalibrationError: The file exists but is not valid JSON, has a temperature that
            is not a positive number, a threshold outside [0, 1], or a species that is
            not one of `classes`.
    """
    path = Path(run_dir) / CALIBRATION_JSON
    if not path.is_file():
        log.info("No %s in %s: temperature 1, threshold %.2f for every species", CALIBRATION_JSON, run_dir, default_threshold)
        return Calibration(default_threshold=default_threshold)

    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CalibrationError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise CalibrationError(f"{path} must contain a JSON object")

    temperature = values.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise CalibrationError(f"{path}: temperature must be a positive number, got {temperature!r}")

    thresholds = values.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise CalibrationError(f"{path}: thresholds must be an object of species to probability")
    unknown = sorted(set(thresholds) - set(classes))
    if unknown:
        raise CalibrationError(f"{path}: thresholds name species the model does not have: {', '.join(unknown)}")
    for species, threshold in thresholds.items():
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise CalibrationError(f"{path}: threshold for {species!r} must be in [0, 1], got {threshold!r}")

    max_false_accept = values.get("max_false_accept")
    calibration = Calibration(
        temperature=float(temperature),
        thresholds={species: float(value) for species, value in thresholds.items()},
        max_false_accept=float(max_false_accept) if isinstance(max_false_accept, (int, float)) else None,
        default_threshold=default_threshold,
        source="calibration",
    )
    missing = [species for species in classes[:-1] if species not in calibration.thresholds]
    if missing:
        log.warning(
            "%s has no threshold for %s; verify uses the fallback threshold %.2f for them",
            path, ", ".join(missing), default_threshold,
        )
    log.info("Loaded %s: temperature %.3f, %d thresholds", path, calibration.temperature, len(calibration.thresholds))
    return calibration
