"""Combine per-fold logits into the ensemble's probabilities, with numpy only.

The ensemble probability is the mean of the folds' softmax probabilities, the same
number `species-classifier predict` reports. The calibrated probability is
softmax(mean fold logits / temperature), the number verify thresholds apply to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


@dataclass
class EnsembleOutput:
    """Probabilities of N images: per fold (K, N, C), ensemble and calibrated (N, C)."""

    fold_logits: np.ndarray
    fold_probabilities: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    calibrated: np.ndarray
    temperature: float


def combine_fold_logits(fold_logits: np.ndarray, temperature: float = 1.0) -> EnsembleOutput:
    """Turn (K, N, C) fold logits into ensemble, calibrated and per-fold probabilities."""
    fold_logits = np.asarray(fold_logits, dtype=np.float64)
    if fold_logits.ndim != 3:
        raise ValueError(f"fold logits must have shape (folds, images, classes), got {fold_logits.shape}")
    fold_probabilities = softmax(fold_logits)
    logits = fold_logits.mean(axis=0)
    return EnsembleOutput(
        fold_logits=fold_logits,
        fold_probabilities=fold_probabilities,
        probabilities=fold_probabilities.mean(axis=0),
        logits=logits,
        calibrated=softmax(logits / temperature),
        temperature=temperature,
    )
