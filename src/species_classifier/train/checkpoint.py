"""Resumable per-fold training state in one safetensors file.

A checkpoint contains the current weights, the best epoch's weights, the EMA weights
when EMA is on, the optimizer's tensors and the random-number states. Its metadata
stores, as JSON, the epoch counter, early-stopping and learning-rate schedule state and
the metric history. It is written
after every epoch through a temporary file and an atomic rename, so a kill leaves
either the previous checkpoint or the new one, never a torn file.
No pickle is involved in reading or writing it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from species_classifier.model.bundle import save_tensors

STATE_KEY = "training_state"


@dataclass
class FoldState:
    """Progress of one fold: completed epochs, early-stopping counters and metric history."""

    fold: int
    epochs_done: int = 0
    best_macro_f1: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    early_stopped: bool = False
    # Completed epochs when the fold's weights and out-of-fold predictions were last saved.
    saved_at_epoch: int = 0
    # Reduce-on-plateau state: the factor on learning rates, best macro F1, epochs without gain.
    plateau_scale: float = 1.0
    plateau_best: float = -1.0
    plateau_bad_epochs: int = 0
    # Progress inside an epoch that SIGTERM interrupted: batches and sums so far.
    batches_done: int = 0
    partial_loss_sum: float = 0.0
    partial_images: int = 0
    partial_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for key, value in meta["scalars"].items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    best_weights: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    fold_state: FoldState,
    loader_generator: torch.Generator,
    ema_model: torch.nn.Module | None = None,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    if ema_model is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    optimizer_tensors, optimizer_meta = _optimizer_tensors(optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.loader"] = loader_generator.get_state()

    numpy_state = np.random.get_state()
    python_state = random.getstate()
    meta = {
        "fold_state": fold_state.__dict__,
        "optimizer": optimizer_meta,
        "rng_numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "rng_python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    save_tensors(tensors, path, metadata={STATE_KEY: json.dumps(meta)})


def read_fold_state(path: Path) -> FoldState:
    """Read only the progress and metric history from a checkpoint."""
    with safe_open(str(path), framework="pt") as file:
        return FoldState(**json.loads(file.metadata()[STATE_KEY])["fold_state"])


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader_generator: torch.Generator,
    ema_model: torch.nn.Module | None = None,
) -> tuple[FoldState, dict[str, torch.Tensor] | None]:
    """Restore everything `save_checkpoint` wrote; returns the fold state and best weights."""
    with safe_open(str(path), framework="pt") as file:
        meta = json.loads(file.metadata()[STATE_KEY])
        tensors = {key: file.get_tensor(key) for key in file.keys()}

    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
    _restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optimizer.")}, meta["optimizer"])
    if ema_model is not None:
        ema_model.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})

    torch.set_rng_state(tensors["rng.torch"])
    loader_generator.set_state(tensors["rng.loader"])
    kind, keys, *rest = meta["rng_numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))

    return FoldState(**meta["fold_state"]), best
