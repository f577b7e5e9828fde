"""One training epoch and one evaluation pass."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@dataclass
class EpochResult:
    loss: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


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


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    channels_last: bool = True,
    description: str = "train",
) -> EpochResult:
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    total_loss, total_images = 0.0, 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=description, unit="batch", leave=False)
    for images, labels in progress:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)

        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        total_loss += loss.item() * len(labels)
        total_images += len(labels)
        progress.set_postfix(loss=f"{total_loss / total_images:.4f}")
    seconds = time.perf_counter() - start
    return EpochResult(loss=total_loss / max(total_images, 1), images=total_images, seconds=seconds)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    channels_last: bool = True,
    description: str = "validate",
) -> EvaluationResult:
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    all_logits, all_labels, total_loss = [], [], 0.0
    for images, labels in tqdm(loader, desc=description, unit="batch", leave=False):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        logits = model(images).float()
        total_loss += criterion(logits, labels).item() * len(labels)
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    count = sum(len(labels) for labels in all_labels)
    return EvaluationResult(
        loss=total_loss / max(count, 1),
        logits=torch.cat(all_logits).numpy() if all_logits else np.zeros((0, 0), dtype=np.float32),
        labels=torch.cat(all_labels).numpy() if all_labels else np.zeros(0, dtype=np.int64),
    )
