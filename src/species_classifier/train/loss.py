"""Training loss: cross-entropy with per-class weights and label smoothing that do not interact."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """Inverse-frequency weights n / (C * n_c) for `balanced`; None for `none`."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"--class-weights must be 'balanced' or 'none', got {mode!r}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class ClassWeightedCrossEntropy(nn.Module):
    """Cross-entropy against smoothed targets, each photo weighted by the weight of its true class.

    The loss is sum_i w[y_i] * CE(smoothed(y_i), p_i) / sum_i w[y_i], where the smoothed target
    puts 1 - label_smoothing + label_smoothing / C on y_i and label_smoothing / C on every class.
    `torch.nn.CrossEntropyLoss(weight=..., label_smoothing=...)` differs: it also weights the
    smoothing term by class, which with balanced weights pulls every photo towards the rare
    classes (here: the targets) and sets a high floor on the training loss.
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probabilities = F.log_softmax(logits.float(), dim=1)
        loss = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
        if self.label_smoothing > 0:
            uniform = -log_probabilities.mean(dim=1)
            loss = (1 - self.label_smoothing) * loss + self.label_smoothing * uniform
        if self.weight is None:
            return loss.mean()
        sample_weights = self.weight.to(loss.device)[labels]
        return (loss * sample_weights).sum() / sample_weights.sum().clamp_min(1e-12)
