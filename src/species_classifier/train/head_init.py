"""Start the classifier head from a linear probe, so fine-tuning begins from a good head (LP-FT).

A randomly initialised head sends large, random gradients into the pretrained backbone in the
first steps and distorts the features it came with (Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022). Fitting a logistic
regression on the frozen backbone's pooled features first, and copying it into the head,
avoids that at the cost of one pass over the training photos without augmentation.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

log = logging.getLogger(__name__)

# Inverse regularisation strength (scikit-learn's C) of the probe on the backbone's pooled features.
PROBE_C = 0.5


@torch.inference_mode()
def pooled_features(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return (features, labels): the timm model's pooled pre-logits features for every batch of `loader`."""
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    features, labels = [], []
    for images, batch_labels in tqdm(loader, desc="linear probe features", unit="batch", leave=False, disable=not show_progress):
        images = images.to(device, memory_format=memory_format)
        features.append(model.forward_head(model.forward_features(images), pre_logits=True).float().cpu().numpy())
        labels.append(np.asarray(batch_labels))
    model.train(was_training)
    return np.concatenate(features), np.concatenate(labels)


def probe_head_weights(features: np.ndarray, labels: np.ndarray, num_classes: int, balanced: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fit a multinomial logistic regression and return (weight (C, D), bias (C,)) for a linear head.

    Classes absent from `labels` get a zero weight and a bias below every other class's, so the
    head never predicts them until fine-tuning has seen them.
    """
    probe = LogisticRegression(C=PROBE_C, max_iter=3000, class_weight="balanced" if balanced else None)
    probe.fit(features, labels)
    coef, intercept = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:
        # scikit-learn stores a single row for two classes, so split it into two softmax rows.
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, features.shape[1]), dtype=np.float32)
    bias = np.full(num_classes, intercept.min() - 10.0, dtype=np.float32)
    weight[probe.classes_] = coef
    bias[probe.classes_] = intercept
    return weight, bias


def init_head_from_probe(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                         channels_last: bool, balanced: bool, show_progress: bool = True) -> None:
    """Fit the probe on `loader`'s photos and copy it into `model.get_classifier()` in place."""
    features, labels = pooled_features(model, loader, device, channels_last, show_progress)
    weight, bias = probe_head_weights(features, labels, num_classes, balanced)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    accuracy = float((np.argmax(features @ weight.T + bias, axis=1) == labels).mean())
    log.info("head initialised from a linear probe on %d photos (training accuracy %.3f)", len(labels), accuracy)
