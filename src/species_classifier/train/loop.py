"""One training epoch and one inference pass over a validation loader."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from species_classifier.train.distributed import DistributedContext, any_rank
from species_classifier.train.interrupt import GracefulStop

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EpochResult:
    """Sums over the batches this process trained in one (possibly partial) epoch."""

    loss_sum: float
    images: int
    batches: int
    seconds: float
    interrupted: bool = False


@dataclass
class EvaluationResult:
    loss: float
    logits: np.ndarray
    labels: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def macro_f1(self) -> float:
        return float(f1_score(self.labels, self.predictions, average="macro", zero_division=0))

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean()) if len(self.labels) else 0.0


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for `precision` (fp32 = no autocast)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    channels_last: bool = True,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    stop: GracefulStop | None = None,
    context: DistributedContext | None = None,
    description: str = "train",
    on_step: Callable[[], None] | None = None,
    freeze_bn_stats: bool = False,
) -> EpochResult:
    """Train over `loader`; stops early, with `interrupted` set, when `stop` is requested on any rank.

    With `freeze_bn_stats`, batch-norm layers normalise with their pretrained running statistics
    and do not update them (their scale and shift still train).
    """
    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    context = context or DistributedContext(device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    loss_sum, images_seen, batches = 0.0, 0, 0
    interrupted = False
    start = time.perf_counter()
    progress = tqdm(loader, desc=description, unit="batch", leave=False, disable=not context.is_main)
    for images, labels in progress:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)

        with autocast(device, precision):
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if on_step is not None:
            on_step()

        loss_sum += loss.item() * len(labels)
        images_seen += len(labels)
        batches += 1
        progress.set_postfix(loss=f"{loss_sum / images_seen:.4f}")
        if stop is not None and any_rank(stop.requested, context):
            interrupted = True
            break
    return EpochResult(loss_sum, images_seen, batches, time.perf_counter() - start, interrupted)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool = True,
    precision: str = "fp32",
    description: str = "validate",
    show_progress: bool = True,
    tta: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Return (logits, labels) for every batch of `loader`, in loader order.

    With `tta="flip"`, logits are the mean over each image and its horizontal mirror.
    """
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    all_logits, all_labels = [], []
    for images, labels in tqdm(loader, desc=description, unit="batch", leave=False, disable=not show_progress):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast(device, precision):
            logits = model(images).float()
            if tta == "flip":
                logits = (logits + model(images.flip(-1)).float()) / 2
        all_logits.append(logits.cpu())
        all_labels.append(labels)
    if not all_logits:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()
