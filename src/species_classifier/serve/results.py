"""Build the prediction and verification results that the HTTP routes and the SageMaker handler return.

Plain dicts of Python floats, so the SageMaker handler needs no FastAPI or pydantic;
`schemas` documents the same fields for the HTTP API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from species_classifier.serve.calibration import Calibration
from species_classifier.serve.ensemble import EnsembleOutput


class UnknownSpeciesError(ValueError):
    """An assigned species that is not one of the model's target species."""

    def __init__(self, species: str, targets: Sequence[str]):
        super().__init__(
            f"unknown species {species!r}; the model verifies these species: {', '.join(targets)}"
        )
        self.species = species
        self.targets = list(targets)


def _class_probabilities(classes: Sequence[str], row: np.ndarray) -> dict[str, float]:
    return {name: float(value) for name, value in zip(classes, row)}


def resolve_species(name: str, targets: Sequence[str]) -> str:
    """Match an assigned species to a target class, ignoring case, surrounding spaces and `_` for space.

    Raises:
        UnknownSpeciesError: No target species matches.
    """
    wanted = " ".join(name.replace("_", " ").split()).casefold()
    for target in targets:
        if target.casefold() == wanted:
            return target
    raise UnknownSpeciesError(name, targets)


def prediction_result(
    output: EnsembleOutput, index: int, classes: Sequence[str], fold_ids: Sequence[int | str]
) -> dict[str, Any]:
    """Top species, ensemble and calibrated probabilities, and each fold's vote for image `index`."""
    probabilities = output.probabilities[index]
    best = int(np.argmax(probabilities))
    folds = []
    for fold_index, fold_id in enumerate(fold_ids):
        fold_probabilities = output.fold_probabilities[fold_index, index]
        fold_best = int(np.argmax(fold_probabilities))
        folds.append(
            {
                "fold": fold_id,
                "species": classes[fold_best],
                "confidence": float(fold_probabilities[fold_best]),
                "probabilities": _class_probabilities(classes, fold_probabilities),
            }
        )
    return {
        "species": classes[best],
        "confidence": float(probabilities[best]),
        "probabilities": _class_probabilities(classes, probabilities),
        "calibrated_probabilities": _class_probabilities(classes, output.calibrated[index]),
        "temperature": float(output.temperature),
        "folds": folds,
    }


def verification_result(
    output: EnsembleOutput, index: int, classes: Sequence[str], species: str, calibration: Calibration
) -> dict[str, Any]:
    """Decide whether image `index` shows `species` (a target class).

    A match needs both: `species` is the top calibrated class, and its calibrated
    probability is at least the species' threshold. `evaluate` chooses the thresholds
    under this same rule, so the false-accept rate it reports holds for verify.
    """
    calibrated = output.calibrated[index]
    assigned = classes.index(species)
    probability = float(calibrated[assigned])
    threshold, source = calibration.threshold_for(species)
    best = int(np.argmax(calibrated))
    return {
        "match": best == assigned and probability >= threshold,
        "species": species,
        "probability": probability,
        "threshold": float(threshold),
        "threshold_source": source,
        "top_species": classes[best],
        "top_probability": float(calibrated[best]),
        "temperature": float(output.temperature),
        "probabilities": _class_probabilities(classes, calibrated),
    }
