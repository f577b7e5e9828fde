"""Preprocessing built from the bundle's preprocessing config.

Every stage (train, evaluate, predict, serve, export) builds its pixels through
`resize_for_model` and the transforms below, from one `PreprocessConfig` stored in the
bundle's `model.json`, so inference cannot drift from what the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

_PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """Pixel preparation for a model, in timm's pretrained-config terms.

    `input_size` is the square side fed to the network, in pixels. Evaluation resizes
    the shorter image side to `input_size / crop_pct` pixels, then center-crops.
    `mean` and `std` apply to RGB values scaled to 0-1.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = field(default="center")

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PreprocessConfig":
        return cls(
            input_size=int(values["input_size"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            interpolation=str(values.get("interpolation", "bicubic")),
            crop_pct=float(values.get("crop_pct", 0.875)),
            crop_mode=str(values.get("crop_mode", "center")),
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation: RandomResizedCrop area range, flip probabilities, rotation in degrees."""

    scale_min: float = 0.8
    scale_max: float = 1.0
    hflip: float = 0.5
    vflip: float = 0.0
    rotation_degrees: float = 15.0
    # Extra policy on top: "none", "trivial" (TrivialAugmentWide) or "randaugment" (RandAugment, 2 ops, magnitude 9).
    policy: str = "none"


def resize_for_model(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """Resize so the shorter side is `config.resize_size` pixels, keeping the aspect ratio."""
    width, height = image.size
    target = config.resize_size
    scale = target / min(width, height)
    size = (max(target, int(round(width * scale))), max(target, int(round(height * scale))))
    if size == (width, height):
        return image
    # reducing_gap lets Pillow shrink large photos in two passes; the result differs from
    # a single-pass resize by at most a grey level or two.
    return image.resize(size, _PIL_RESAMPLE[config.interpolation], reducing_gap=3.0)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """Convert an RGB PIL image to a uint8 tensor of shape (3, H, W)."""
    return F.pil_to_tensor(image)


def _normalize(config: PreprocessConfig) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(config.mean), list(config.std))]


def build_eval_transform(config: PreprocessConfig) -> v2.Compose:
    """Center crop and normalise a uint8 tensor already passed through `resize_for_model`."""
    return v2.Compose([v2.CenterCrop(config.input_size), *_normalize(config)])


def build_train_transform(config: PreprocessConfig, augment: AugmentConfig) -> v2.Compose:
    """Random crop, flips and rotation on a uint8 tensor already passed through `resize_for_model`."""
    interpolation = InterpolationMode(config.interpolation)
    if augment.scale_min >= 1:
        # No random crop: the evaluation center crop.
        steps: list[v2.Transform] = [v2.CenterCrop(config.input_size)]
    else:
        steps = [
            v2.RandomResizedCrop(
                config.input_size,
                scale=(augment.scale_min, augment.scale_max),
                interpolation=interpolation,
                antialias=True,
            )
        ]
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    if augment.vflip > 0:
        steps.append(v2.RandomVerticalFlip(augment.vflip))
    if augment.rotation_degrees > 0:
        steps.append(v2.RandomRotation(augment.rotation_degrees, interpolation=InterpolationMode.BILINEAR))
    if augment.policy == "trivial":
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    elif augment.policy == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=InterpolationMode.BILINEAR))
    elif augment.policy != "none":
        raise ValueError(f"--augment must be none, trivial or randaugment, got {augment.policy!r}")
    return v2.Compose([*steps, *_normalize(config)])


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """Turn one RGB image into the normalised (3, input_size, input_size) tensor a model expects."""
    resized = resize_for_model(image, config)
    return build_eval_transform(config)(to_uint8_tensor(resized))
