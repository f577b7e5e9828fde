"""Synthetic run folders for the evaluation tests, built without training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from species_classifier.data.transforms import PreprocessConfig
from species_classifier.model.bundle import EXCLUDED_CSV, METRICS_CSV, OOF_CSV, Bundle, write_bundle

SPECIES_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "species-dev"
CLASSES = ["Lycorma delicatula", "Acer rubrum", "Zenaida macroura", "other"]
# Non-target species drawn for the "other" class; the first three are maples that look like Acer rubrum.
OTHER_SPECIES = ["Acer saccharum", "Acer saccharinum", "Acer platanoides", "Abies concolor", "Acer campestre"]
N_FOLDS = 5


def species_photos(species: str, limit: int) -> list[Path]:
    folder = SPECIES_DEV / species.replace(" ", "_")
    return sorted(folder.glob("*.jpg"))[:limit]


def synthetic_oof(rows: list[dict], classes: list[str], seed: int = 0, scale: float = 3.0) -> pd.DataFrame:
    """Fill in fold, logits and probabilities for photo rows with `path`, `species_name`, `label`.

    Logits are a true-class margin plus Gaussian noise, multiplied by `scale`, so the
    probabilities are overconfident and the fitted temperature is above 1.
    """
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rows)
    n, c = len(table), len(classes)
    label_index = table["label"].map(classes.index).to_numpy()
    base = rng.normal(0.0, 1.0, size=(n, c))
    base[np.arange(n), label_index] += 1.5
    logits = scale * base
    probabilities = softmax(logits, axis=1)
    table["label_index"] = label_index
    table["fold"] = np.arange(n) % N_FOLDS
    table["observation_id"] = table["path"]
    table["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    table["confidence"] = probabilities.max(axis=1)
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probabilities[:, i]
    for i, name in enumerate(classes):
        table[f"logit_{name}"] = logits[:, i]
    return table


def synthetic_training_metrics(n_folds: int, n_epochs: int) -> pd.DataFrame:
    rows = []
    for fold in range(n_folds):
        for epoch in range(1, n_epochs + 1):
            rows.append({
                "fold": fold, "epoch": epoch,
                "train_loss": 1.2 / epoch + 0.05 * fold, "val_loss": 1.0 / epoch + 0.1 + 0.02 * (epoch > 5) * epoch,
                "val_macro_f1": min(0.95, 0.4 + 0.1 * epoch - 0.01 * fold), "val_accuracy": 0.5 + 0.05 * epoch,
                "lr": 1e-3, "seconds": 12.0, "train_images_per_s": 80.0,
            })
    return pd.DataFrame(rows)


@pytest.fixture
def species_dev() -> Path:
    if not (SPECIES_DEV / "manifest.csv").is_file():
        pytest.skip(f"species-dev photos not found at {SPECIES_DEV}")
    return SPECIES_DEV


@pytest.fixture
def make_run(tmp_path: Path, species_dev: Path) -> Callable[[], Path]:
    """Return a factory that writes a complete synthetic run folder of real species-dev photos."""

    def build() -> Path:
        run = tmp_path / "run"
        run.mkdir()
        rows = []
        for species, limit in (("Lycorma delicatula", 40), ("Acer rubrum", 9), ("Zenaida macroura", 3)):
            rows += [{"path": str(p), "species_name": species, "label": species} for p in species_photos(species, limit)]
        for species in OTHER_SPECIES:
            rows += [{"path": str(p), "species_name": species, "label": "other"} for p in species_photos(species, 8)]
        # A photo that cannot be decoded: its thumbnail must be skipped, not crash the report.
        broken = run / "broken.jpg"
        broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        rows.append({"path": str(broken), "species_name": "Acer saccharum", "label": "other"})
        table = synthetic_oof(rows, CLASSES)
        confident_wrong = [0.0, 9.0, 0.0, 0.0]
        table.loc[table.index[-1], [f"logit_{name}" for name in CLASSES]] = confident_wrong
        table.loc[table.index[-1], [f"prob_{name}" for name in CLASSES]] = softmax(confident_wrong)
        table.loc[table.index[-1], ["predicted", "confidence"]] = ["Acer rubrum", float(softmax(confident_wrong).max())]
        table["license"] = "cc-by"
        table["attribution"] = "(c) test photographer"
        table.to_csv(run / OOF_CSV, index=False)

        synthetic_training_metrics(N_FOLDS, 8).to_csv(run / METRICS_CSV, index=False)
        pd.DataFrame([
            {"path": str(run / "gone.jpg"), "species_name": "Acer rubrum", "reason": "file not found"},
            {"path": str(run / "half.jpg"), "species_name": "Abies concolor", "reason": "cannot decode image (truncated)"},
        ]).to_csv(run / EXCLUDED_CSV, index=False)

        folds = [
            {"fold": k, "weights": f"fold_{k}.safetensors", "best_epoch": 5, "best_macro_f1": 0.9 - 0.01 * k,
             "epochs_run": 8, "n_train": 80, "n_val": 20}
            for k in range(N_FOLDS)
        ]
        write_bundle(run, Bundle(classes=CLASSES, model_name="tf_efficientnet_lite0",
                                 preprocess=PreprocessConfig(input_size=64), folds=folds,
                                 training={"epochs": 8, "folds": N_FOLDS}))
        return run

    return build
