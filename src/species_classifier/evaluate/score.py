"""Score a trained fold ensemble on a separate labelled dataset."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from species_classifier.data.images import ImageLoadError, load_image
from species_classifier.data.labels import normalize_species_name
from species_classifier.evaluate.metrics import logit_columns, probability_columns
from species_classifier.predict import Predictor

log = logging.getLogger(__name__)

EXCLUDED_COLUMNS = ["path", "species_name", "reason"]


def map_labels(species_names: Sequence[str], classes: Sequence[str]) -> list[str]:
    """Map species names to the bundle's class names; species that are not targets map to the last class."""
    targets = {normalize_species_name(name): name for name in list(classes)[:-1]}
    other = list(classes)[-1]
    return [targets.get(normalize_species_name(name), other) for name in species_names]


def fold_prediction_column(fold: int | str) -> str:
    """Name of the column with the class predicted by fold `fold`'s model alone."""
    return f"fold_{fold}_predicted"


def score_dataset(
    predictor: Predictor, dataset: pd.DataFrame, workers: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every photo of a `read_dataset` table with the ensemble.

    Returns the scored table and the excluded table. The scored table has the dataset's
    columns plus `label`, `label_index`, `predicted`, `confidence`, `prob_<class>` (mean
    of the fold models' softmax, as `predict` reports), `logit_<class>` (mean of the fold
    models' logits, which serving divides by the temperature) and `fold_<k>_predicted`
    per fold model. The excluded table lists unreadable images as `path, species_name,
    reason`.
    """
    classes = predictor.classes
    dataset = dataset.reset_index(drop=True).copy()
    dataset["label"] = map_labels(dataset["species_name"].tolist(), classes)
    dataset["label_index"] = [classes.index(label) for label in dataset["label"]]
    present = set(dataset["label"])
    for target in classes[:-1]:
        if target not in present:
            log.warning("The dataset has no photos of target %s: its recall is undefined", target)

    def load(path: str) -> torch.Tensor | ImageLoadError:
        try:
            image = load_image(path, draft_size=predictor.bundle.preprocess.resize_size)
            return predictor.preprocess(image)
        except ImageLoadError as error:
            return error

    scored_rows: list[int] = []
    probabilities: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    fold_predictions: list[np.ndarray] = []
    excluded: list[dict[str, str]] = []
    paths = dataset["path"].tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(paths), desc="evaluate", unit="img") as bar:
        for start in range(0, len(paths), predictor.batch_size):
            indices = list(range(start, min(start + predictor.batch_size, len(paths))))
            tensors, good = [], []
            for index, result in zip(indices, pool.map(load, [paths[i] for i in indices])):
                if isinstance(result, ImageLoadError):
                    log.warning("Unreadable image %s: %s", paths[index], result.reason)
                    excluded.append({
                        "path": paths[index], "species_name": dataset.at[index, "species_name"], "reason": result.reason,
                    })
                else:
                    tensors.append(result)
                    good.append(index)
            if tensors:
                prediction = predictor.predict_tensors(torch.stack(tensors))
                scored_rows.extend(good)
                probabilities.append(prediction.probabilities)
                logits.append(prediction.logits)
                fold_predictions.append(prediction.fold_probabilities.argmax(axis=-1).T)
            bar.update(len(indices))

    excluded_table = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)
    if not scored_rows:
        return dataset.iloc[0:0].copy(), excluded_table

    scored = dataset.iloc[scored_rows].reset_index(drop=True)
    probability_array = np.concatenate(probabilities)
    best = probability_array.argmax(axis=1)
    scored["predicted"] = [classes[i] for i in best]
    scored["confidence"] = probability_array.max(axis=1)
    scored[probability_columns(classes)] = probability_array
    scored[logit_columns(classes)] = np.concatenate(logits)
    per_fold = np.concatenate(fold_predictions)
    for position, fold in enumerate(predictor.bundle.fold_ids):
        scored[fold_prediction_column(fold)] = [classes[i] for i in per_fold[:, position]]
    return scored, excluded_table


def dataset_name(source: str | Path) -> str:
    """Return a folder-safe name for a dataset: the folder name, or the CSV's stem.

    A CSV called `manifest.csv` is named after its folder.
    """
    path = Path(source).expanduser().resolve()
    name = path.parent.name if path.suffix.lower() == ".csv" and path.stem.lower() == "manifest" else path.stem
    if path.is_dir():
        name = path.name
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._")
    return safe or "dataset"
