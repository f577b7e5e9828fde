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
from torch.nn.parallel import DistributedDataParallel
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from species_classifier.data.dataset import read_dataset
from species_classifier.data.labels import build_classes, match_targets, normalize_species_name
from species_classifier.data.photos import PhotoDataset, PhotoStore
from species_classifier.data.splits import TRAIN_ONLY, assign_folds
from species_classifier.data.transforms import AugmentConfig, build_eval_transform, build_train_transform
from species_classifier.model.bundle import (
    CHECKPOINT_DIR, EXCLUDED_CSV, METRICS_CSV, MODEL_JSON, OOF_CSV,
    Bundle, atomic_write_text, save_tensors, write_bundle,
)
from species_classifier.model.factory import build_param_groups, create_classifier
from species_classifier.runtime import configure_threads, default_workers, resolve_device
from species_classifier.train.checkpoint import FoldState, load_checkpoint, read_fold_state, save_checkpoint
from species_classifier.train.distributed import (
    DistributedContext, EpochSampler, barrier, gather_arrays, init_distributed, shutdown_distributed, sum_across_ranks,
)
from species_classifier.train.frozen_prefix import FrozenPrefixCache, frozen_prefix_length
from species_classifier.train.head_init import init_head_from_probe
from species_classifier.train.interrupt import GracefulStop, TrainingInterrupted
from species_classifier.train.loop import EvaluationResult, predict_logits, train_one_epoch
from species_classifier.train.loss import ClassWeightedCrossEntropy, class_weights
from species_classifier.train.schedule import apply_learning_rates, step_plateau
from species_classifier.train.recipe import TrainConfig

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
SPLITS_CSV = "splits.csv"


class RunConflictError(ValueError):
    """--out contains a run with different settings."""


def run_training(config: TrainConfig) -> Path:
    """Train one model per fold and write the bundle to `config.out`; returns the run folder.

    Raises:
        TrainingInterrupted: SIGTERM arrived; a checkpoint was saved and a rerun resumes.
    """
    out = Path(config.out)
    checkpoints = checkpoint_folder(config)
    context = init_distributed(resolve_device(config.device))
    if not context.is_main:
        # One log per job: every rank computes the same metrics, rank 0 reports them.
        logging.getLogger("species_classifier").setLevel(logging.WARNING)
    threads = configure_threads(config.threads)
    log.info("Training on %s with %d threads, %d process(es)", context.device, threads, context.world_size)

    # Data: photos, labels, the optional `other` downsampling.
    classes = build_classes(config.targets)
    photos = label_photos(read_dataset(config.dataset), classes)
    photos = sample_other(photos, config.other_fraction, config.seed, len(classes) - 1)

    # The run folder: resume when it contains the same run.
    check_run_folder(out, checkpoints, config)
    preprocess = create_classifier(config.model, len(classes), "none", config.drop_rate, config.img_size)[1]

    # Decode every photo once; exclude those that fail.
    cache = {"auto": None, "yes": True, "no": False}[config.cache_images]
    store = PhotoStore(photos["path"].tolist(), preprocess, cache=cache, threads=threads)
    photos, excluded = drop_excluded(photos, store)
    log_class_counts(photos, classes)

    # Splits: folds that keep each observation (or observer) together.
    photos["fold"] = assign_folds(
        photos["label_index"].to_numpy(), group_keys(photos, config.group_by), config.folds, config.seed, classes
    )

    # The data checks passed: record the run's settings, exclusions and splits.
    if context.is_main:
        atomic_write_text(checkpoints / RUN_CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
        atomic_write_text(out / EXCLUDED_CSV, excluded.to_csv(index=False))
        splits = photos[["path", "species_name", "label", "observation_id", "fold"]]
        atomic_write_text(out / SPLITS_CSV, splits.to_csv(index=False))
    barrier(context)

    # One model per fold; SIGTERM stops after the current batch with a checkpoint saved.
    bundle = Bundle(
        classes=classes, model_name=config.model, preprocess=preprocess, drop_rate=config.drop_rate,
        training=config.to_dict(), tta=config.tta,
    )
    index_of_path = {path: i for i, path in enumerate(store.paths)}
    photos["store_index"] = photos["path"].map(index_of_path)
    stop = GracefulStop().install()
    try:
        for fold in sorted(set(photos["fold"]) - {TRAIN_ONLY}):
            run = FoldRun(fold, photos, store, bundle, config, context, out, checkpoints, stop)
            bundle.folds.append(run.train())
    finally:
        stop.uninstall()

    # Save: out-of-fold predictions, metrics, model.json, report.
    if context.is_main:
        write_run_outputs(out, checkpoints, bundle)
    barrier(context)
    shutdown_distributed()
    return out


def checkpoint_folder(config: TrainConfig) -> Path:
    """Return where resumable state goes: --checkpoint-dir, else OUT/checkpoints."""
    return Path(config.checkpoint_dir) if config.checkpoint_dir else Path(config.out) / CHECKPOINT_DIR


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


def check_run_folder(out: Path, checkpoints: Path, config: TrainConfig) -> None:
    """Check that a run saved in `out` has the same settings, so it can resume.

    Raises:
        RunConflictError: The saved run has other settings, or `out` has a finished run without checkpoints.
    """
    saved_path = checkpoints / RUN_CONFIG
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


def remove_run(config: TrainConfig) -> None:
    """Delete what a previous run wrote into --out and --checkpoint-dir (for --overwrite)."""
    out, checkpoints = Path(config.out), checkpoint_folder(config)
    if checkpoints.exists() and (checkpoints / RUN_CONFIG).exists():
        log.warning("--overwrite: deleting the previous checkpoints in %s", checkpoints)
        shutil.rmtree(checkpoints)
    if not out.exists():
        return
    if not ((out / CHECKPOINT_DIR).exists() or (out / MODEL_JSON).exists() or not any(out.iterdir())):
        raise RunConflictError(f"--overwrite: {out} does not look like a run folder; not deleting it")
    log.warning("--overwrite: deleting the previous run in %s", out)
    shutil.rmtree(out)


def drop_excluded(photos: pd.DataFrame, store: PhotoStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off photos that failed to decode; returns (usable photos, excluded photos with the reason)."""
    reasons = {photo.path: photo.reason for photo in store.excluded}
    excluded = photos[photos["path"].isin(reasons)][["path", "species_name"]].copy()
    excluded["reason"] = excluded["path"].map(reasons)
    return photos[~photos["path"].isin(reasons)].reset_index(drop=True), excluded


class FoldRun:
    """Training of one fold: model, loaders, optimizer, the epoch loop, checkpoints and saving."""

    def __init__(
        self, fold: int, photos: pd.DataFrame, store: PhotoStore, bundle: Bundle, config: TrainConfig,
        context: DistributedContext, out: Path, checkpoints: Path, stop: GracefulStop,
    ):
        self.fold, self.bundle, self.config, self.context = fold, bundle, config, context
        self.out, self.checkpoints, self.stop = out, checkpoints, stop
        self.name = f"fold {fold + 1}/{max(config.folds, 1)}"
        self.checkpoint_path = checkpoints / f"fold_{fold}.safetensors"
        self.weights_name = f"fold_{fold}.safetensors"
        self.device = context.device
        torch.manual_seed(config.seed + fold + 1000 * context.rank)
        self.generator = torch.Generator().manual_seed(config.seed + fold)

        # Model: a fresh pretrained backbone, in channels_last, optionally compiled and wrapped in DDP.
        self.model, preprocess = create_classifier(config.model, len(bundle.classes), config.pretrained, config.drop_rate, config.img_size)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=memory_format)
        # Per-layer learning rates. A multiplier of 0 freezes those layers before DDP wraps the
        # model: they get no gradients, and the backward pass stops below the lowest trained layer.
        groups = build_param_groups(self.model, config.lr, config.lr_multipliers, config.weight_decay, config.layer_decay)
        for group in groups:
            if group["initial_lr"] == 0:
                for parameter in group["params"]:
                    parameter.requires_grad_(False)
        groups = [group for group in groups if group["initial_lr"] > 0]
        self.forward_model: nn.Module = torch.compile(self.model) if config.compile else self.model
        if context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=device_ids)

        # Data: this fold's training and validation photos, sharded over processes.
        self.train_rows = photos[photos["fold"] != fold]
        self.validation_rows = photos[photos["fold"] == fold]
        augment = AugmentConfig(
            scale_min=config.scale_min, hflip=config.hflip, vflip=config.vflip, rotation_degrees=config.rotation, policy=config.augment
        )
        train_set = PhotoDataset(store, self.train_rows["store_index"], self.train_rows["label_index"], build_train_transform(preprocess, augment))
        validation_set = PhotoDataset(store, self.validation_rows["store_index"], self.validation_rows["label_index"], build_eval_transform(preprocess))
        # The linear probe is fitted on the training photos without augmentation, as validation preprocesses them.
        self.probe_set = PhotoDataset(store, self.train_rows["store_index"], self.train_rows["label_index"], build_eval_transform(preprocess))
        self.train_sampler = EpochSampler(len(train_set), context, shuffle=True, seed=config.seed * 1000 + fold)
        self.validation_sampler = EpochSampler(len(validation_set), context, shuffle=False)
        self.workers = default_workers() if config.workers < 0 else config.workers
        common = {"batch_size": config.batch_size, "num_workers": self.workers, "persistent_workers": self.workers > 0}
        self.train_loader = DataLoader(train_set, sampler=self.train_sampler, generator=self.generator, drop_last=len(train_set) > config.batch_size * context.world_size, **common)
        # The loader has its own generator, because how often validation reads photos (see
        # FrozenPrefixCache) must not change the global random state that dropout and resuming use.
        self.validation_loader = DataLoader(validation_set, sampler=self.validation_sampler, generator=torch.Generator().manual_seed(config.seed), **common)
        # Frozen first layers on fixed batch-norm statistics give the same validation activations
        # every epoch, so they are computed once. Flip TTA would need a second copy and runs in full.
        self.prefix_cache = None
        frozen_layers = frozen_prefix_length(self.model)
        if frozen_layers and config.freeze_bn_stats and config.tta == "none":
            self.prefix_cache = FrozenPrefixCache(self.validation_loader, frozen_layers, self.device, config.channels_last, config.precision)

        # Optimizer (the schedule sets each group's rate every epoch), EMA, loss.
        self.optimizer = torch.optim.AdamW(groups)
        # With warm-up the decay starts near 0 and grows with the step count (capped at
        # --ema-decay), so a short fine-tune is not dominated by the pretrained start weights.
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
        self.ema_step = 0
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        weights = class_weights(self.train_rows["label_index"].to_numpy(), len(bundle.classes), config.class_weights)
        self.criterion = ClassWeightedCrossEntropy(weights, config.label_smoothing).to(self.device)
        self.validation_criterion = ClassWeightedCrossEntropy(weights, config.label_smoothing)

        self.state, self.best_weights = FoldState(fold=fold), None

    def train(self) -> dict:
        """Train with early stopping, resuming from this fold's checkpoint; returns the fold summary."""
        if self.checkpoint_path.is_file():
            ema_module = self.ema.module if self.ema is not None else None
            self.state, self.best_weights = load_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.generator, ema_module)
            if self.context.rank > 0:
                torch.manual_seed(self.config.seed + self.fold + 1000 * self.context.rank + self.state.epochs_done)
            log.info("%s: resuming after epoch %d, batch %d (best macro F1 %.4f at epoch %d)", self.name,
                     self.state.epochs_done, self.state.batches_done, self.state.best_macro_f1, self.state.best_epoch)
        log.info("%s: %d training photos, %d validation photos", self.name, len(self.train_rows), len(self.validation_rows))
        if self.state.epochs_done == 0 and self.state.batches_done == 0 and self.config.head_init == "probe":
            self.init_head()
        self.ema_step = self.state.epochs_done * len(self.train_loader) + self.state.batches_done

        while not self.state.early_stopped and self.state.epochs_done < self.config.epochs:
            self.run_epoch(self.state.epochs_done + 1)

        if self.state.saved_at_epoch == self.state.epochs_done and self.outputs_exist():
            log.info("%s: already finished (best val_macro_f1=%.4f at epoch %d)", self.name, self.state.best_macro_f1, self.state.best_epoch)
        else:
            self.save_best()
        return {
            "fold": self.fold, "weights": self.weights_name, "best_epoch": self.state.best_epoch,
            "best_macro_f1": self.state.best_macro_f1, "epochs_run": self.state.epochs_done,
            "n_train": len(self.train_rows), "n_val": len(self.validation_rows),
        }

    def run_epoch(self, epoch: int) -> None:
        config, state = self.config, self.state
        lr_factor = apply_learning_rates(self.optimizer, epoch, config, state)
        self.train_sampler.set_epoch(epoch, start=state.batches_done * config.batch_size)
        trained = train_one_epoch(
            self.forward_model, self.train_loader, self.criterion, self.optimizer, self.device, config.channels_last,
            config.precision, self.scaler, self.stop, self.context, f"{self.name} epoch {epoch}", self.update_ema,
            freeze_bn_stats=config.freeze_bn_stats,
        )
        loss_sum, images = sum_across_ranks([trained.loss_sum, float(trained.images)], self.context)
        state.partial_loss_sum += loss_sum
        state.partial_images += int(images)
        state.partial_seconds += trained.seconds
        state.batches_done += trained.batches
        if trained.interrupted:
            self.save_checkpoint()
            raise TrainingInterrupted(f"{self.name} stopped in epoch {epoch} after batch {state.batches_done}; rerun the same command to resume")

        validated = self.validate()
        macro_f1 = validated.macro_f1
        step_plateau(state, macro_f1, config, epoch)
        improved = macro_f1 > state.best_macro_f1
        if improved:
            # A true copy: state_dict() returns views that keep changing as training goes on.
            evaluated = self.ema.module if self.ema is not None else self.model
            self.best_weights = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
            state.best_macro_f1, state.best_epoch, state.epochs_without_improvement = macro_f1, epoch, 0
        else:
            state.epochs_without_improvement += 1

        seconds = state.partial_seconds
        row = {
            "fold": self.fold, "epoch": epoch, "train_loss": state.partial_loss_sum / max(state.partial_images, 1),
            "val_loss": validated.loss, "val_macro_f1": macro_f1, "val_accuracy": validated.accuracy,
            "lr": config.lr * lr_factor,
            "seconds": seconds, "train_images_per_s": state.partial_images / seconds if seconds > 0 else 0.0,
        }
        state.history.append(row)
        state.epochs_done, state.batches_done = epoch, 0
        state.partial_loss_sum, state.partial_images, state.partial_seconds = 0.0, 0, 0.0
        log.info(
            "%s epoch %d/%d: train_loss=%.4f val_loss=%.4f val_macro_f1=%.4f val_accuracy=%.4f lr=%.2e images/s=%.1f%s",
            self.name, epoch, config.epochs, row["train_loss"], row["val_loss"], macro_f1, row["val_accuracy"],
            row["lr"], row["train_images_per_s"], " (best)" if improved else "",
        )
        if state.epochs_without_improvement >= config.patience:
            log.info("%s: early stop, no macro F1 gain for %d epochs", self.name, config.patience)
            state.early_stopped = True
        self.save_checkpoint()

    def init_head(self) -> None:
        """Replace the random head with a linear probe fitted on this fold's training photos."""
        # Under DDP, rank 0 fits the probe and the other ranks receive its head.
        if self.context.is_main:
            loader = DataLoader(self.probe_set, batch_size=self.config.batch_size, num_workers=self.workers)
            init_head_from_probe(self.model, loader, len(self.bundle.classes), self.device, self.config.channels_last,
                                 self.config.class_weights == "balanced")
        if self.context.enabled:
            for parameter in self.model.get_classifier().parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema_step += 1
            self.ema.update(self.model, step=self.ema_step)

    def validate(self, description: str = "validate") -> EvaluationResult:
        """Predict the validation photos on every process and gather them in table order.

        With EMA on, the EMA weights are the ones validated (and kept as the best weights).
        """
        label = f"{self.name} {description}"
        predicted = None
        if self.prefix_cache is not None:
            # The cache runs the unwrapped modules, because inference needs no DDP or torch.compile wrapper.
            module = self.ema.module if self.ema is not None else self.model
            predicted = self.prefix_cache.predict_logits(module, label, show_progress=self.context.is_main)
        if predicted is None:
            model = self.ema.module if self.ema is not None else self.forward_model
            predicted = predict_logits(
                model, self.validation_loader, self.device, self.config.channels_last, self.config.precision,
                label, show_progress=self.context.is_main, tta=self.config.tta,
            )
        logits, labels = predicted
        order = np.asarray(self.validation_sampler.indices(), dtype=np.int64)
        gathered = gather_arrays({"order": order, "logits": logits, "labels": labels}, self.context)
        ranked = np.argsort(gathered["order"], kind="stable")
        logits, labels = gathered["logits"][ranked], gathered["labels"][ranked]
        loss = float(self.validation_criterion(torch.from_numpy(logits), torch.from_numpy(labels)).item()) if len(labels) else 0.0
        return EvaluationResult(loss=loss, logits=logits, labels=labels)

    def save_checkpoint(self) -> None:
        if self.context.is_main:
            ema_module = self.ema.module if self.ema is not None else None
            save_checkpoint(self.checkpoint_path, self.model, self.best_weights, self.optimizer, self.state, self.generator, ema_module)
            write_metrics(self.out, self.checkpoints)
        barrier(self.context)

    def outputs_exist(self) -> bool:
        return (self.checkpoints / f"oof_fold_{self.fold}.csv").is_file() and (self.out / self.weights_name).is_file()

    def save_best(self) -> None:
        """Save the best epoch's weights and their out-of-fold predictions."""
        self.model.load_state_dict(self.best_weights)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.best_weights)
        validated = self.validate("out-of-fold")
        self.state.saved_at_epoch = self.state.epochs_done
        if self.context.is_main:
            save_tensors(self.model.state_dict(), self.out / self.weights_name)
            write_fold_oof(self.checkpoints, self.fold, self.validation_rows, validated.logits, self.bundle.classes)
        self.save_checkpoint()
        log.info("%s: best val_macro_f1=%.4f at epoch %d", self.name, self.state.best_macro_f1, self.state.best_epoch)


def write_fold_oof(checkpoints: Path, fold: int, rows: pd.DataFrame, logits: np.ndarray, classes: list[str]) -> None:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    table = rows[["path", "species_name", "label", "label_index", "fold", "observation_id", "license", "attribution", "role"]].copy()
    table["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    table["confidence"] = probabilities.max(axis=1)
    for index, name in enumerate(classes):
        table[f"prob_{name}"] = probabilities[:, index]
    for index, name in enumerate(classes):
        table[f"logit_{name}"] = logits[:, index]
    atomic_write_text(checkpoints / f"oof_fold_{fold}.csv", table.to_csv(index=False))


def write_metrics(out: Path, checkpoints: Path) -> None:
    """Collect every fold checkpoint's epoch history into metrics.csv."""
    rows = []
    for path in sorted(checkpoints.glob("fold_*.safetensors")):
        rows.extend(read_fold_state(path).history)
    if rows:
        atomic_write_text(out / METRICS_CSV, pd.DataFrame(rows).sort_values(["fold", "epoch"]).to_csv(index=False))


def write_run_outputs(out: Path, checkpoints: Path, bundle: Bundle) -> None:
    parts = [pd.read_csv(checkpoints / f"oof_fold_{fold['fold']}.csv", keep_default_na=False) for fold in bundle.folds]
    oof = pd.concat(parts, ignore_index=True)
    atomic_write_text(out / OOF_CSV, oof.to_csv(index=False))
    write_metrics(out, checkpoints)
    write_bundle(out, bundle)

    f1s = [fold["best_macro_f1"] for fold in bundle.folds]
    spread = float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0
    log.info("Macro F1 over %d fold(s): %.4f ± %.4f (sample standard deviation)", len(f1s), float(np.mean(f1s)), spread)
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

