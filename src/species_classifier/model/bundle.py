"""The model bundle: everything a trained run needs to predict, in one folder.

Layout of a run folder (`--out`):

- `model.json`: classes, architecture, preprocessing, training config, per-fold
  results, library versions. Read by every stage after training.
- `fold_K.safetensors`: weights of fold K's best epoch.
- `metrics.csv`: one row per fold and epoch.
- `oof_predictions.csv`: out-of-fold probabilities and logits for every validation photo.
- `excluded_images.csv`: images left out of training, with the reason.
- `checkpoints/`: resumable training state; safe to delete after training.
- `splits.csv`: the validation fold of every photo.
- `report.html`, `summary.json`, `calibration.json`: the evaluation report, its numbers,
  and the temperature and per-species thresholds that `serve` applies.
- `evaluations/NAME/`: scores on separate labelled datasets (`evaluate RUN DATASET`).

A run written by `average-folds` (see `model/averaging.py`) lists one `folds` entry,
`averaged.safetensors`, and keeps the fold ensemble's records under `fold_ensemble/`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from species_classifier import __version__
from species_classifier.data.transforms import PreprocessConfig

BUNDLE_FORMAT_VERSION = 1
MODEL_JSON = "model.json"
METRICS_CSV = "metrics.csv"
OOF_CSV = "oof_predictions.csv"
EXCLUDED_CSV = "excluded_images.csv"
CHECKPOINT_DIR = "checkpoints"


class BundleError(ValueError):
    """A run folder that is missing, incomplete or from an incompatible version."""


@dataclass
class Bundle:
    """Contents of `model.json`: the class list, the architecture and its preprocessing."""

    classes: list[str]
    model_name: str
    preprocess: PreprocessConfig
    drop_rate: float = 0.5
    # Test-time augmentation every stage applies: "none" or "flip" (mean logits of the image and its mirror).
    tta: str = "none"
    folds: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def targets(self) -> list[str]:
        return self.classes[:-1]

    @property
    def fold_ids(self) -> list[int | str]:
        """The id of every `folds` entry, in order; see `fold_id`."""
        return [fold_id(entry, position) for position, entry in enumerate(self.folds)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": BUNDLE_FORMAT_VERSION,
            "classes": self.classes,
            "architecture": {"model_name": self.model_name, "num_classes": len(self.classes), "drop_rate": self.drop_rate},
            "preprocessing": self.preprocess.to_dict(),
            "inference": {"tta": self.tta},
            "folds": self.folds,
            "training": self.training,
            "versions": self.versions,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Bundle":
        version = values.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise BundleError(f"model.json has format_version {version}; this version reads {BUNDLE_FORMAT_VERSION}")
        architecture = values["architecture"]
        return cls(
            classes=list(values["classes"]),
            model_name=architecture["model_name"],
            drop_rate=float(architecture.get("drop_rate", 0.0)),
            preprocess=PreprocessConfig.from_dict(values["preprocessing"]),
            tta=str(values.get("inference", {}).get("tta", "none")),
            folds=list(values.get("folds", [])),
            training=dict(values.get("training", {})),
            versions=dict(values.get("versions", {})),
            created=values.get("created", ""),
        )


def fold_id(entry: dict[str, Any], position: int) -> int | str:
    """Return the id of a `folds` entry: the fold number from `train`, or a name such as "averaged".

    An entry without a `fold` key gets its position in the list.
    """
    value = entry.get("fold", position)
    if isinstance(value, str) and not value.isdigit():
        return value
    return int(value)


def library_versions() -> dict[str, str]:
    return {
        "species_classifier": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _umask_mode() -> int:
    """Return the mode a new file gets from the process umask (mkstemp alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically; channels_last tensors are stored contiguous."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temporary, metadata=metadata)
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bundle(run_dir: Path, bundle: Bundle) -> None:
    bundle.versions = bundle.versions or library_versions()
    bundle.created = bundle.created or utc_now()
    atomic_write_text(run_dir / MODEL_JSON, json.dumps(bundle.to_dict(), indent=2) + "\n")


def read_bundle(run_dir: str | Path) -> Bundle:
    """Read `model.json` from a run folder."""
    path = Path(run_dir) / MODEL_JSON
    if not path.is_file():
        raise BundleError(
            f"{run_dir} is not a trained run: {MODEL_JSON} not found (train one with `species-classifier train`)"
        )
    try:
        return Bundle.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as error:
        raise BundleError(f"{path} is invalid ({error})") from None


def build_model(bundle: Bundle) -> nn.Module:
    """Create the bundle's architecture with an untrained head; weights are loaded separately."""
    return timm.create_model(bundle.model_name, pretrained=False, num_classes=len(bundle.classes), drop_rate=bundle.drop_rate)


def load_fold_models(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Bundle, list[nn.Module]]:
    """Load the bundle and every fold's best weights, in eval mode."""
    run_dir = Path(run_dir)
    bundle = read_bundle(run_dir)
    if not bundle.folds:
        raise BundleError(f"{run_dir}: model.json lists no trained folds (training did not finish?)")
    models = []
    for fold in bundle.folds:
        weights = run_dir / fold["weights"]
        if not weights.is_file():
            raise BundleError(f"{run_dir}: weights file {fold['weights']} for fold {fold['fold']} not found")
        model = build_model(bundle)
        model.load_state_dict(load_file(str(weights)), strict=True)
        models.append(model.to(device).eval())
    return bundle, models
