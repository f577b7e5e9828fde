"""The training entry point: data, labels, splits, then one model per fold, then the bundle.

`run_training` reads top to bottom; each step's details live one call away in this
module or in `data/`, `model/` and `train/loop.py`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from species_classifier.data.dataset import read_dataset
from species_classifier.data.labels import build_classes, match_targets, normalize_species_name
from species_classifier.data.photos import PhotoDataset, PhotoStore
from species_classifier.data.splits import TRAIN_ONLY, assign_folds
from species_classifier.data.transforms import AugmentConfig, PreprocessConfig, build_eval_transform, build_train_transform
from species_classifier.model.bundle import (
    CHECKPOINT_DIR, EXCLUDED_CSV, METRICS_CSV, MODEL_JSON, OOF_CSV,
    Bundle, atomic_write_text, save_tensors, write_bundle,
)
from species_classifier.model.factory import build_param_groups, create_classifier
from species_classifier.runtime import configure_threads, default_workers, resolve_device
from species_classifier.train.checkpoint import FoldState, load_checkpoint, save_checkpoint
from species_classifier.train.loop import evaluate, train_one_epoch
from species_classifier.train.recipe import TrainConfig

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
SPLITS_CSV = "splits.csv"


class RunConflictError(ValueError):
    """--out contains a run with different settings."""


def run_training(config: TrainConfig) -> Path:
    """Train one model per fold and write the bundle to `config.out`; returns the run folder."""
    out = Path(config.out)
    device = resolve_device(config.device)
    threads = configure_threads(config.threads)
    log.info("Training on %s with %d threads", device, threads)

    # Data: photos, labels, the optional `other` downsampling.
    classes = build_classes(config.targets)
    photos = label_photos(read_dataset(config.dataset), classes)
    photos = sample_other(photos, config.other_fraction, config.seed, len(classes) - 1)
    log_class_counts(photos, classes)

    # The run folder: resume when it contains the same run.
    prepare_run_folder(out, config)
    preprocess = create_classifier(config.model, len(classes), "none", config.drop_rate, config.img_size)[1]

    # Decode every photo once; exclude and report those that fail.
    cache = {"auto": None, "yes": True, "no": False}[config.cache_images]
    store = PhotoStore(photos["path"].tolist(), preprocess, cache=cache, threads=threads)
    photos = write_excluded(out, photos, store)

    # Splits: folds that keep each observation (or observer) together.
    photos["fold"] = assign_folds(
        photos["label_index"].to_numpy(), group_keys(photos, config.group_by), config.folds, config.seed, classes
    )
    atomic_write_text(out / SPLITS_CSV, photos[["path", "species_name", "label", "observation_id", "fold"]].to_csv(index=False))

    # One model per fold.
    bundle = Bundle(classes=classes, model_name=config.model, preprocess=preprocess, drop_rate=config.drop_rate, training=config.to_dict())
    index_of_path = {path: i for i, path in enumerate(store.paths)}
    photos["store_index"] = photos["path"].map(index_of_path)
    for fold in sorted(set(photos["fold"]) - {TRAIN_ONLY}):
        summary = train_fold(fold, photos, store, bundle, config, device, out)
        bundle.folds.append(summary)

    # Save: out-of-fold predictions, metrics, model.json, report.
    write_run_outputs(out, bundle)
    return out


def label_photos(photos: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Add `label_index` and `label` (class name) columns; non-targets become `other`."""
    mapping = match_targets(classes[:-1], photos["species_name"].unique())
    photos = photos.copy()
    photos["label_index"] = [mapping[normalize_species_name(name)] for name in photos["species_name"]]
    photos["label"] = [classes[index] for index in photos["label_index"]]
    return photos


def sample_other(photos: pd.DataFrame, fraction: float, seed: int, other_index: int) -> pd.DataFrame:
    """Keep a random `fraction` of the `other` observations (all of their photos); targets are kept whole."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--other-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return photos
    is_other = photos["label_index"] == other_index
    observations = photos.loc[is_other, "observation_id"].unique()
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(observations, size=max(1, int(round(len(observations) * fraction))), replace=False))
    sampled = photos[~is_other | photos["observation_id"].isin(keep)].reset_index(drop=True)
    log.info("--other-fraction %.2f keeps %d of %d 'other' photos", fraction, int((sampled["label_index"] == other_index).sum()), int(is_other.sum()))
    return sampled


def log_class_counts(photos: pd.DataFrame, classes: list[str]) -> None:
    counts = photos["label"].value_counts()
    for name in classes:
        log.info("  %-30s %6d photos", name, int(counts.get(name, 0)))


def group_keys(photos: pd.DataFrame, group_by: str) -> np.ndarray:
    """Group key per photo: its observation, or its observer when known and asked for."""
    if group_by == "observation":
        return photos["observation_id"].to_numpy()
    if group_by == "observer":
        observers = photos["observer_id"].fillna("")
        if (observers == "").all():
            raise ValueError("--group-by observer needs an observer_id column in the manifest")
        return np.where(observers != "", "observer:" + observers, "observation:" + photos["observation_id"])
    raise ValueError(f"--group-by must be 'observation' or 'observer', got {group_by!r}")


def prepare_run_folder(out: Path, config: TrainConfig) -> None:
    """Create `out`, or check that the run saved there has the same settings, so it can resume."""
    saved_path = out / CHECKPOINT_DIR / RUN_CONFIG
    if saved_path.is_file():
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
        differences = {
            name: (old, new) for name, (old, new) in
            ((name, (saved.identity()[name], config.identity()[name])) for name in config.identity())
            if old != new
        }
        if differences:
            details = "; ".join(f"{name}: saved {old!r}, now {new!r}" for name, (old, new) in differences.items())
            raise RunConflictError(
                f"{out} contains a run with other settings ({details}). Use another --out, or --overwrite to replace it."
            )
        log.info("Resuming the run in %s", out)
    elif out.exists() and any(out.iterdir()):
        if (out / MODEL_JSON).exists():
            raise RunConflictError(f"{out} contains a finished run without checkpoints; use another --out or --overwrite")
    atomic_write_text(saved_path, json.dumps(config.to_dict(), indent=2) + "\n")


def remove_run(out: Path) -> None:
    """Delete what a previous run wrote into `out` (for --overwrite)."""
    if not out.exists():
        return
    if not ((out / CHECKPOINT_DIR).exists() or (out / MODEL_JSON).exists()):
        raise RunConflictError(f"--overwrite: {out} does not look like a run folder; not deleting it")
    log.warning("--overwrite: deleting the previous run in %s", out)
    shutil.rmtree(out)


def write_excluded(out: Path, photos: pd.DataFrame, store: PhotoStore) -> pd.DataFrame:
    """Record photos that failed to decode and return the table without them."""
    reasons = {photo.path: photo.reason for photo in store.excluded}
    excluded = photos[photos["path"].isin(reasons)][["path", "species_name"]].copy()
    excluded["reason"] = excluded["path"].map(reasons)
    atomic_write_text(out / EXCLUDED_CSV, excluded.to_csv(index=False))
    return photos[~photos["path"].isin(reasons)].reset_index(drop=True)


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """Inverse-frequency weights n / (C * n_c) for `balanced`; None for `none`."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"--class-weights must be 'balanced' or 'none', got {mode!r}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def make_loaders(
    photos: pd.DataFrame, fold: int, store: PhotoStore, preprocess: PreprocessConfig, config: TrainConfig, generator: torch.Generator
) -> tuple[DataLoader, DataLoader, pd.DataFrame, pd.DataFrame]:
    train_rows = photos[photos["fold"] != fold]
    validation_rows = photos[photos["fold"] == fold]
    augment = AugmentConfig(scale_min=config.scale_min, hflip=config.hflip, vflip=config.vflip, rotation_degrees=config.rotation)
    train_set = PhotoDataset(store, train_rows["store_index"], train_rows["label_index"], build_train_transform(preprocess, augment))
    validation_set = PhotoDataset(store, validation_rows["store_index"], validation_rows["label_index"], build_eval_transform(preprocess))

    workers = default_workers() if config.workers < 0 else config.workers
    common = {"batch_size": config.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    train_loader = DataLoader(
        train_set, shuffle=True, generator=generator, drop_last=len(train_set) > config.batch_size, **common
    )
    validation_loader = DataLoader(validation_set, shuffle=False, **common)
    return train_loader, validation_loader, train_rows, validation_rows


def train_fold(
    fold: int, photos: pd.DataFrame, store: PhotoStore, bundle: Bundle, config: TrainConfig, device: torch.device, out: Path
) -> dict:
    """Train, early-stop and save one fold; resumes from its checkpoint when there is one."""
    n_folds = max(config.folds, 1)
    name = f"fold {fold + 1}/{n_folds}"
    checkpoint_path = out / CHECKPOINT_DIR / f"fold_{fold}.safetensors"
    weights_name = f"fold_{fold}.safetensors"
    torch.manual_seed(config.seed + fold)
    generator = torch.Generator().manual_seed(config.seed + fold)

    model, preprocess = create_classifier(config.model, len(bundle.classes), config.pretrained, config.drop_rate, config.img_size)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    train_loader, validation_loader, train_rows, validation_rows = make_loaders(photos, fold, store, preprocess, config, generator)

    optimizer = torch.optim.AdamW(build_param_groups(model, config.lr, config.lr_multipliers, config.weight_decay))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.scheduler_factor, patience=config.scheduler_patience
    )
    weights = class_weights(train_rows["label_index"].to_numpy(), len(bundle.classes), config.class_weights)
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device), label_smoothing=config.label_smoothing)

    state, best_weights = FoldState(fold=fold), None
    if checkpoint_path.is_file():
        state, best_weights = load_checkpoint(checkpoint_path, model, optimizer, scheduler, generator)
        log.info("%s: resuming after epoch %d (best macro F1 %.4f at epoch %d)", name, state.epochs_done, state.best_macro_f1, state.best_epoch)

    log.info("%s: %d training photos, %d validation photos", name, len(train_rows), len(validation_rows))
    while not state.early_stopped and state.epochs_done < config.epochs:
        epoch = state.epochs_done + 1
        trained = train_one_epoch(model, train_loader, criterion, optimizer, device, config.channels_last, f"{name} epoch {epoch}")
        validated = evaluate(model, validation_loader, criterion, device, config.channels_last)
        macro_f1 = validated.macro_f1
        scheduler.step(macro_f1)

        improved = macro_f1 > state.best_macro_f1
        if improved:
            # A true copy: state_dict() returns views that keep changing as training goes on.
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state.best_macro_f1, state.best_epoch, state.epochs_without_improvement = macro_f1, epoch, 0
        else:
            state.epochs_without_improvement += 1

        row = {
            "fold": fold, "epoch": epoch, "train_loss": trained.loss, "val_loss": validated.loss,
            "val_macro_f1": macro_f1, "val_accuracy": validated.accuracy,
            "lr": optimizer.param_groups[-1]["lr"] / config.lr_multipliers[-1],
            "seconds": trained.seconds, "train_images_per_s": trained.images_per_second,
        }
        state.history.append(row)
        state.epochs_done = epoch
        log.info(
            "%s epoch %d/%d: train_loss=%.4f val_loss=%.4f val_macro_f1=%.4f val_accuracy=%.4f lr=%.2e images/s=%.1f%s",
            name, epoch, config.epochs, trained.loss, validated.loss, macro_f1, validated.accuracy, row["lr"],
            trained.images_per_second, " (best)" if improved else "",
        )
        if state.epochs_without_improvement >= config.patience:
            log.info("%s: early stop, no macro F1 gain for %d epochs", name, config.patience)
            state.early_stopped = True
        save_checkpoint(checkpoint_path, model, best_weights, optimizer, scheduler, state, generator)
        write_metrics(out)

    summary = {
        "fold": fold, "weights": weights_name, "best_epoch": state.best_epoch, "best_macro_f1": state.best_macro_f1,
        "epochs_run": state.epochs_done, "n_train": len(train_rows), "n_val": len(validation_rows),
    }
    oof_path = out / CHECKPOINT_DIR / f"oof_fold_{fold}.csv"
    if state.saved_at_epoch == state.epochs_done and oof_path.is_file() and (out / weights_name).is_file():
        log.info("%s: already finished (best val_macro_f1=%.4f at epoch %d)", name, state.best_macro_f1, state.best_epoch)
        return summary

    # Save: the best epoch's weights and their out-of-fold predictions.
    state.saved_at_epoch = state.epochs_done
    model.load_state_dict(best_weights)
    save_tensors(model.state_dict(), out / weights_name)
    validated = evaluate(model, validation_loader, criterion, device, config.channels_last, f"{name} out-of-fold")
    write_fold_oof(out, fold, validation_rows, validated.logits, bundle.classes)
    save_checkpoint(checkpoint_path, model, best_weights, optimizer, scheduler, state, generator)
    log.info("%s: best val_macro_f1=%.4f at epoch %d", name, state.best_macro_f1, state.best_epoch)
    return summary


def write_fold_oof(out: Path, fold: int, rows: pd.DataFrame, logits: np.ndarray, classes: list[str]) -> None:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    table = rows[["path", "species_name", "label", "label_index", "fold", "observation_id", "license", "attribution", "role"]].copy()
    table["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    table["confidence"] = probabilities.max(axis=1)
    for index, name in enumerate(classes):
        table[f"prob_{name}"] = probabilities[:, index]
    for index, name in enumerate(classes):
        table[f"logit_{name}"] = logits[:, index]
    atomic_write_text(out / CHECKPOINT_DIR / f"oof_fold_{fold}.csv", table.to_csv(index=False))


def write_metrics(out: Path) -> None:
    """Collect every fold checkpoint's epoch history into metrics.csv."""
    from safetensors import safe_open

    rows = []
    for path in sorted((out / CHECKPOINT_DIR).glob("fold_*.safetensors")):
        with safe_open(str(path), framework="pt") as file:
            rows.extend(json.loads(file.metadata()["training_state"])["fold_state"]["history"])
    if rows:
        atomic_write_text(out / METRICS_CSV, pd.DataFrame(rows).sort_values(["fold", "epoch"]).to_csv(index=False))


def write_run_outputs(out: Path, bundle: Bundle) -> None:
    parts = [pd.read_csv(path, keep_default_na=False) for path in sorted((out / CHECKPOINT_DIR).glob("oof_fold_*.csv"))]
    oof = pd.concat(parts, ignore_index=True)
    atomic_write_text(out / OOF_CSV, oof.to_csv(index=False))
    write_metrics(out)
    write_bundle(out, bundle)

    f1s = [fold["best_macro_f1"] for fold in bundle.folds]
    log.info("Macro F1 over %d fold(s): %.4f ± %.4f", len(f1s), float(np.mean(f1s)), float(np.std(f1s)))
    write_report_safely(out)


def write_report_safely(out: Path) -> None:
    """Write the evaluation report; a failure is logged, and the saved model stays in place."""
    try:
        from species_classifier.evaluate.report import summarize_run, write_report
    except ImportError:
        log.warning("Evaluation report module is not available; skipping report.html")
        return
    try:
        report = write_report(out)
        summary = summarize_run(out)
        log.info("Report: %s", report)
        if summary.get("macro_f1_mean") is not None:
            log.info("Out-of-fold macro F1: %.4f ± %.4f", summary["macro_f1_mean"], summary.get("macro_f1_std") or 0.0)
    except Exception:  # a report bug must not turn a finished training run into a failed command
        log.exception("Writing the report failed; the trained model is saved. Retry with `species-classifier evaluate %s`", out)

