"""Training settings; every field is a `train` flag.

The defaults are the best configuration of the accuracy study (`benchmarks/accuracy/RESULTS.md`):
the head starts from a linear probe, batch-norm layers keep their pretrained statistics, the
first two thirds of the backbone stay frozen, and the rest fine-tunes at a low rate with a
one-epoch warm-up and cosine decay. The reference recipe's settings are `REFERENCE` in
`benchmarks/accuracy/study.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Settings that decide which photos, labels, splits and model a run uses. A rerun on an
# existing --out resumes only when these match the saved run.
IDENTITY_FIELDS = (
    "dataset", "targets", "folds", "seed", "model", "pretrained", "img_size",
    "other_fraction", "group_by", "drop_rate", "ema_decay", "tta",
)


@dataclass
class TrainConfig:
    dataset: str = ""
    targets: list[str] = field(default_factory=list)
    out: str = "runs/latest"
    folds: int = 3
    group_by: str = "observation"
    seed: int = 42
    other_fraction: float = 1.0

    model: str = "tf_efficientnet_lite0"
    pretrained: str = "auto"
    img_size: int | None = None
    drop_rate: float = 0.5
    head_init: str = "probe"
    freeze_bn_stats: bool = True

    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-4
    lr_multipliers: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0, 1.0])
    layer_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: int = 1
    freeze_epochs: int = 0
    ema_decay: float = 0.0
    tta: str = "none"
    weight_decay: float = 0.01
    class_weights: str = "balanced"
    label_smoothing: float = 0.0
    patience: int = 4
    scheduler_patience: int = 2
    scheduler_factor: float = 0.5

    scale_min: float = 0.8
    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 15.0
    augment: str = "none"

    checkpoint_dir: str = ""
    precision: str = "fp32"
    compile: bool = False
    workers: int = -1
    threads: int = 0
    channels_last: bool = True
    cache_images: str = "auto"
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def identity(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}
