"""Fold-ensemble inference on images: the `predict` command and the engine behind `serve`."""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from species_classifier.data.images import ImageLoadError, is_image_file, load_image
from species_classifier.data.transforms import preprocess_image
from species_classifier.model.bundle import Bundle, atomic_write_text, load_fold_models

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Ensemble output for a batch: `probabilities` is (N, C), `fold_probabilities` is (K, N, C)."""

    probabilities: np.ndarray
    fold_probabilities: np.ndarray
    logits: np.ndarray


class Predictor:
    """Average the softmax probabilities of a run's fold models.

    Preprocessing comes from the bundle's `model.json`, the same config training used.
    """

    def __init__(self, run_dir: str | Path, device: str = "cpu", batch_size: int = 32):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.bundle: Bundle
        self.bundle, models = load_fold_models(self.run_dir, self.device)
        self.models = [model.to(memory_format=torch.channels_last) for model in models]

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image, self.bundle.preprocess)

    @torch.inference_mode()
    def predict_tensors(self, batch: torch.Tensor) -> Prediction:
        """Run every fold model on a preprocessed (N, 3, H, W) batch and average the probabilities."""
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        logits = torch.stack([model(batch).float() for model in self.models])
        if self.bundle.tta == "flip":
            mirrored = batch.flip(-1)
            logits = (logits + torch.stack([model(mirrored).float() for model in self.models])) / 2
        fold_probabilities = logits.softmax(dim=-1).cpu().numpy()
        return Prediction(
            probabilities=fold_probabilities.mean(axis=0),
            fold_probabilities=fold_probabilities,
            logits=logits.mean(dim=0).cpu().numpy(),
        )

    def predict_images(self, images: Sequence[Image.Image]) -> Prediction:
        """Predict RGB images (any size); they are preprocessed by the bundle's config."""
        tensors = [self.preprocess(image) for image in images]
        parts = [
            self.predict_tensors(torch.stack(tensors[start : start + self.batch_size]))
            for start in range(0, len(tensors), self.batch_size)
        ]
        return Prediction(
            probabilities=np.concatenate([p.probabilities for p in parts]),
            fold_probabilities=np.concatenate([p.fold_probabilities for p in parts], axis=1),
            logits=np.concatenate([p.logits for p in parts]),
        )


def expand_image_paths(inputs: Iterable[str]) -> list[Path]:
    """Expand files, folders (searched recursively) and glob patterns into image paths.

    Raises:
        FileNotFoundError: An input matches nothing.
    """
    paths: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not matches or not any(m.exists() for m in matches):
            raise FileNotFoundError(f"{item}: no such file, folder or matching glob")
        for match in matches:
            if match.is_dir():
                paths.extend(sorted(p for p in match.rglob("*") if p.is_file() and is_image_file(p)))
            else:
                paths.append(match)
    return list(dict.fromkeys(paths))


def _load_batches(
    predictor: Predictor, paths: Sequence[Path], workers: int
) -> Iterator[tuple[list[Path], list[torch.Tensor], list[tuple[Path, str]]]]:
    def load(path: Path) -> torch.Tensor | ImageLoadError:
        try:
            image = load_image(path, draft_size=predictor.bundle.preprocess.resize_size)
            return predictor.preprocess(image)
        except ImageLoadError as error:
            return error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), predictor.batch_size):
            chunk = paths[start : start + predictor.batch_size]
            good, tensors, bad = [], [], []
            for path, result in zip(chunk, pool.map(load, chunk)):
                if isinstance(result, ImageLoadError):
                    bad.append((path, result.reason))
                else:
                    good.append(path)
                    tensors.append(result)
            yield good, tensors, bad


def predict_paths(predictor: Predictor, paths: Sequence[Path], workers: int = 2) -> pd.DataFrame:
    """Predict image files; unreadable files get a row with an `error` and no probabilities."""
    rows = []
    classes = predictor.classes
    with tqdm(total=len(paths), desc="predict", unit="img") as progress:
        for good, tensors, bad in _load_batches(predictor, paths, workers):
            if tensors:
                result = predictor.predict_tensors(torch.stack(tensors))
                for path, probabilities in zip(good, result.probabilities):
                    best = int(np.argmax(probabilities))
                    row = {"path": str(path), "predicted": classes[best], "confidence": float(probabilities[best]), "error": ""}
                    row.update({f"prob_{name}": float(p) for name, p in zip(classes, probabilities)})
                    rows.append(row)
            for path, reason in bad:
                log.warning("Skipped %s: %s", path, reason)
                rows.append({"path": str(path), "predicted": "", "confidence": np.nan, "error": reason})
            progress.update(len(good) + len(bad))
    columns = ["path", "predicted", "confidence", *[f"prob_{name}" for name in classes], "error"]
    return pd.DataFrame(rows, columns=columns)


def write_predictions(table: pd.DataFrame, output: Path) -> None:
    """Write predictions as CSV or JSON, chosen by the file extension."""
    suffix = output.suffix.lower()
    if suffix == ".csv":
        atomic_write_text(output, table.to_csv(index=False))
    elif suffix == ".json":
        records = json.loads(table.to_json(orient="records"))
        atomic_write_text(output, json.dumps(records, indent=2) + "\n")
    else:
        raise ValueError(f"--output {output}: use a .csv or .json file name")
