"""Learning rate per epoch: linear warm-up, then cosine decay or reduce-on-plateau, plus a frozen-backbone warm-up.

Every parameter group trains at `initial_lr * factor(epoch)`, where `initial_lr` is the
group's own rate from `build_param_groups` (so per-layer ratios are kept) and the factor
is the same for all groups. During the first `freeze_epochs` epochs backbone groups get
a rate of 0, so only the new head learns while its gradients are still large and random.
"""

from __future__ import annotations

import math

import torch

from species_classifier.train.checkpoint import FoldState
from species_classifier.train.recipe import TrainConfig

COSINE_FINAL_FACTOR = 0.01
# As torch.optim.lr_scheduler.ReduceLROnPlateau(mode="max", threshold_mode="rel"): a
# validation macro F1 counts as better only when it beats the best by this fraction.
PLATEAU_THRESHOLD = 1e-4


def learning_rate_factor(epoch: int, config: TrainConfig, state: FoldState) -> float:
    """Return the factor on every group's initial rate for `epoch` (1-based)."""
    if epoch <= config.warmup_epochs:
        return epoch / (config.warmup_epochs + 1)
    if config.scheduler == "cosine":
        span = max(config.epochs - config.warmup_epochs - 1, 1)
        progress = min((epoch - config.warmup_epochs - 1) / span, 1.0)
        return COSINE_FINAL_FACTOR + (1 - COSINE_FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.scheduler == "plateau":
        return state.plateau_scale
    raise ValueError(f"--scheduler must be plateau or cosine, got {config.scheduler!r}")


def apply_learning_rates(optimizer: torch.optim.Optimizer, epoch: int, config: TrainConfig, state: FoldState) -> float:
    """Set every group's rate for `epoch`; returns the factor applied."""
    factor = learning_rate_factor(epoch, config, state)
    for group in optimizer.param_groups:
        frozen = group.get("backbone", False) and epoch <= config.freeze_epochs
        group["lr"] = 0.0 if frozen else group["initial_lr"] * factor
    return factor


def step_plateau(state: FoldState, macro_f1: float, config: TrainConfig, epoch: int) -> None:
    """Lower `state.plateau_scale` by --scheduler-factor after --scheduler-patience epochs without gain."""
    if epoch <= config.warmup_epochs:
        return
    if macro_f1 > state.plateau_best * (1 + PLATEAU_THRESHOLD) or state.plateau_best < 0:
        state.plateau_best = macro_f1
        state.plateau_bad_epochs = 0
        return
    state.plateau_bad_epochs += 1
    if state.plateau_bad_epochs > config.scheduler_patience:
        state.plateau_scale *= config.scheduler_factor
        state.plateau_bad_epochs = 0
