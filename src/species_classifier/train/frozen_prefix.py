"""Validation that runs the frozen first layers once per fold instead of once per epoch.

When the first layers are frozen (learning-rate multiplier 0) and batch-norm layers keep their
pretrained statistics, those layers map each validation photo to the same activations in every
epoch. `FrozenPrefixCache` keeps these activations after the first validation and later epochs
run only the layers that train. The early layers work on the largest feature maps, so this
removes most of the validation cost.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from species_classifier.train.loop import autocast, predict_logits

log = logging.getLogger(__name__)

# Activations above this size (per process) are not kept; validation then runs the whole model.
MAX_CACHE_BYTES = 1 << 30


class _Suffix(nn.Module):
    """The layers after the frozen prefix: the remaining blocks, the final conv and the head."""

    def __init__(self, model: EfficientNet, blocks: list[nn.Module]):
        super().__init__()
        self.model = model
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.model.forward_head(self.model.bn2(self.model.conv_head(x)))


def _units(model: EfficientNet) -> list[nn.Module]:
    """Return the layers in forward order: the stem, then each block (the final conv is in the suffix)."""
    return [nn.Sequential(model.conv_stem, model.bn1), *(block for stage in model.blocks for block in stage)]


def frozen_prefix_length(model: nn.Module) -> int:
    """Count the leading layers (stem, then blocks) whose parameters all have `requires_grad=False`.

    Returns 0 when the model is not one of timm's EfficientNet family (`EfficientNet` class,
    which includes the lite variants) or when every block is frozen.
    """
    if not isinstance(model, EfficientNet):
        return 0
    units = _units(model)
    frozen = 0
    for unit in units:
        if any(parameter.requires_grad for parameter in unit.parameters()):
            break
        frozen += 1
    return frozen if frozen < len(units) else 0


def split_prefix(model: EfficientNet, length: int) -> tuple[nn.Module, nn.Module]:
    """Return (prefix, suffix) modules with `suffix(prefix(x)) == model(x)`. The prefix is the first `length` layers."""
    units = _units(model)
    return nn.Sequential(*units[:length]), _Suffix(model, units[length:])


class FrozenPrefixCache:
    """Activations of the validation photos after the first `length` layers, filled on the first call.

    Valid only while those layers do not change: their parameters frozen and their batch-norm
    layers on fixed statistics (`--freeze-bn-stats`). The EMA copy of a model has the same
    values there, since timm's EMA update interpolates between two equal tensors.
    """

    def __init__(self, loader: DataLoader, length: int, device: torch.device, channels_last: bool, precision: str,
                 max_bytes: int = MAX_CACHE_BYTES):
        self.loader, self.length, self.device, self.precision, self.max_bytes = loader, length, device, precision, max_bytes
        self.channels_last = channels_last
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.disabled = False

    @torch.inference_mode()
    def predict_logits(self, model: EfficientNet, description: str = "validate", show_progress: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (logits, labels) in loader order, or None when the activations would exceed
        `max_bytes` (the caller then runs the whole model)."""
        if self.disabled:
            return None
        prefix, suffix = split_prefix(model, self.length)
        model.eval()
        if self.batches is None and not self._fill(prefix, description, show_progress):
            return None
        # The stored batches stand in for the loader, and the suffix for the model.
        return predict_logits(suffix, self.batches, self.device, self.channels_last, self.precision, description, show_progress=False)

    def _fill(self, prefix: nn.Module, description: str, show_progress: bool) -> bool:
        batches, stored = [], 0
        total_images = len(self.loader.sampler)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in tqdm(self.loader, desc=description, unit="batch", leave=False, disable=not show_progress):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast(self.device, self.precision):
                activations = prefix(images)
            if not batches and activations[0].numel() * activations.element_size() * total_images > self.max_bytes:
                log.info("Validation runs the whole model: the frozen layers' outputs would take more than %d MiB", self.max_bytes >> 20)
                self.disabled = True
                return False
            stored += activations.numel() * activations.element_size()
            batches.append((activations, labels))
        self.batches = batches
        log.info("Validation reuses the frozen layers' outputs (%.0f MiB)", stored / 2**20)
        return True
