"""The `train` subcommand."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from species_classifier.cli import HelpFormatter
from species_classifier.data.labels import parse_targets
from species_classifier.model.factory import PRETRAINED_CHOICES
from species_classifier.train.recipe import TrainConfig

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train a fold ensemble on a folder of species subfolders or a manifest CSV",
        description=(
            "Fine-tune a pretrained timm backbone with stratified K-fold cross-validation that keeps the "
            "photos of one observation in one fold. Writes a model bundle (weights, model.json, metrics, "
            "out-of-fold predictions, report.html) to --out. Rerunning on the same --out resumes."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("dataset", nargs="?", metavar="DATASET", help="folder of <Genus_species>/ subfolders, or a manifest CSV with path,species_name columns")
    parser.add_argument("--config", metavar="FILE.toml", help="read defaults for these flags from the [train] table of a TOML file")

    data = parser.add_argument_group("data")
    data.add_argument("--targets", required=False, help="comma-separated scientific names of the target species, in class order; every other species is 'other'")
    data.add_argument("--folds", type=int, default=defaults.folds, help="number of cross-validation folds; 1 trains once on a stratified 80/20 split")
    data.add_argument("--group-by", choices=("observation", "observer"), default=defaults.group_by, help="keep all photos of one observation (or one observer) in the same fold")
    data.add_argument("--other-fraction", type=float, default=defaults.other_fraction, help="keep this random fraction (0-1] of the 'other' observations, for quick runs")
    data.add_argument("--seed", type=int, default=defaults.seed, help="seed for splits, sampling, initialisation and shuffling")
    data.add_argument("--out", default=defaults.out, help="run folder for the bundle and checkpoints")
    data.add_argument("--overwrite", action="store_true", help="delete a previous run in --out instead of resuming it")
    data.add_argument("--checkpoint-dir", default="", metavar="DIR", help="folder for resumable checkpoints (default: OUT/checkpoints; on SageMaker, /opt/ml/checkpoints)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=defaults.model, help="timm model name")
    model.add_argument("--pretrained", default=defaults.pretrained, metavar="SOURCE", help=f"backbone weights: one of {', '.join(PRETRAINED_CHOICES)}, or a .safetensors file; auto uses weights embedded in pip packages for tf_efficientnet_lite0/1/2, else the timm hub")
    model.add_argument("--img-size", type=int, default=defaults.img_size, help="input side in pixels (default: the weights' own, 224 for tf_efficientnet_lite0)")
    model.add_argument("--drop-rate", type=float, default=defaults.drop_rate, help="dropout probability before the linear head")

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs per fold")
    recipe.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per batch")
    recipe.add_argument("--lr", type=float, default=defaults.lr, help="base learning rate (AdamW)")
    recipe.add_argument("--lr-multipliers", type=_floats, default=defaults.lr_multipliers, help="learning-rate multipliers from the earliest backbone layers to the head; the backbone's layers are cut into len-1 equal chunks, the last value is the head's; 0 freezes a chunk (faster: no gradients are computed for it, and validation computes the frozen first chunks' outputs once per fold)")
    recipe.add_argument("--layer-decay", type=float, default=defaults.layer_decay, help="layer-wise learning-rate decay in (0, 1): each layer down from the head trains at this fraction of the one above; replaces --lr-multipliers; 0 = off")
    recipe.add_argument("--scheduler", choices=("plateau", "cosine"), default=defaults.scheduler, help="learning-rate schedule after warm-up: reduce on validation macro F1 plateau, or cosine decay to 1%% over --epochs")
    recipe.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs, help="epochs of linear learning-rate warm-up")
    recipe.add_argument("--head-init", choices=("random", "probe"), default=defaults.head_init, help="start the head random, or from a logistic regression fitted on the frozen backbone's features of the training photos (linear probe, then fine-tune)")
    recipe.add_argument("--freeze-bn-stats", action=argparse.BooleanOptionalAction, default=defaults.freeze_bn_stats, help="keep batch-norm layers on their pretrained running statistics while training (small batches give noisy batch statistics)")
    recipe.add_argument("--freeze-epochs", type=int, default=defaults.freeze_epochs, help="first epochs in which only the head trains (backbone learning rate 0)")
    recipe.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="keep an exponential moving average of the weights and validate and save it; the decay per step grows from 0 (timm warm-up) up to this cap (e.g. 0.998); 0 = off")
    recipe.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay (not applied to biases and norm weights)")
    recipe.add_argument("--class-weights", choices=("balanced", "none"), default=defaults.class_weights, help="cross-entropy class weights: balanced = n / (classes * n_class)")
    recipe.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing, help="cross-entropy label smoothing")
    recipe.add_argument("--patience", type=int, default=defaults.patience, help="stop a fold after this many epochs without a validation macro F1 gain")
    recipe.add_argument("--scheduler-patience", type=int, default=defaults.scheduler_patience, help="ReduceLROnPlateau: epochs without macro F1 gain before the learning rate drops")
    recipe.add_argument("--scheduler-factor", type=float, default=defaults.scheduler_factor, help="ReduceLROnPlateau: factor applied to the learning rate")

    augment = parser.add_argument_group("augmentation")
    augment.add_argument("--scale-min", type=float, default=defaults.scale_min, help="RandomResizedCrop minimum area fraction (maximum is 1); 1 turns random cropping off")
    augment.add_argument("--hflip", type=float, default=defaults.hflip, help="horizontal flip probability")
    augment.add_argument("--vflip", type=float, default=defaults.vflip, help="vertical flip probability (off by default: birds and plants have an up)")
    augment.add_argument("--rotation", type=float, default=defaults.rotation, help="maximum random rotation in degrees")
    augment.add_argument("--augment", choices=("none", "trivial", "randaugment"), default=defaults.augment, help="extra augmentation policy: TrivialAugmentWide or RandAugment (2 ops, magnitude 9)")
    augment.add_argument("--tta", choices=("none", "flip"), default=defaults.tta, help="test-time augmentation for validation, predict and serve: flip = mean of the image and its mirror")

    speed = parser.add_argument_group("speed")
    speed.add_argument("--workers", type=int, default=defaults.workers, help="data-loader worker processes; -1 = one per core beyond the first")
    speed.add_argument("--threads", type=int, default=defaults.threads, help="PyTorch CPU threads; 0 = one per core")
    speed.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory format (channels_last is about 4x faster on CPU)")
    speed.add_argument("--cache-images", choices=("auto", "yes", "no"), default=defaults.cache_images, help="keep decoded, resized photos in memory (auto: when they fit in 6 GiB)")
    speed.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (under torchrun, each process takes cuda:LOCAL_RANK)")
    speed.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=defaults.precision, help="autocast precision; fp16 adds a gradient scaler (for GPUs without bf16)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model (slow first epoch, faster later ones)")
    parser.set_defaults(func=run, tune_allocator=True)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if not args.dataset:
        raise ValueError("train: DATASET is missing (a folder of species subfolders or a manifest CSV)")
    if not args.targets:
        raise ValueError("train: --targets is missing, e.g. --targets 'Lycorma delicatula,Acer rubrum'")
    checks = [
        (args.folds >= 1, f"--folds must be at least 1, got {args.folds}"),
        (args.epochs >= 1, f"--epochs must be at least 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be positive, got {args.lr}"),
        (args.patience >= 1, f"--patience must be at least 1, got {args.patience}"),
        (args.img_size is None or args.img_size >= 32, f"--img-size must be at least 32 pixels, got {args.img_size}"),
        (0 <= args.drop_rate < 1, f"--drop-rate must be in [0, 1), got {args.drop_rate}"),
        (0 < args.scale_min <= 1, f"--scale-min must be in (0, 1], got {args.scale_min}"),
        (0 <= args.layer_decay < 1, f"--layer-decay must be in [0, 1), got {args.layer_decay}"),
        (0 <= args.ema_decay < 1, f"--ema-decay must be in [0, 1), got {args.ema_decay}"),
        (args.warmup_epochs >= 0 and args.freeze_epochs >= 0, "--warmup-epochs and --freeze-epochs must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return TrainConfig(
        dataset=str(Path(args.dataset).expanduser().resolve()),
        targets=parse_targets(args.targets),
        out=str(Path(args.out).expanduser().resolve()),
        folds=args.folds, group_by=args.group_by, seed=args.seed, other_fraction=args.other_fraction,
        model=args.model, pretrained=args.pretrained, img_size=args.img_size, drop_rate=args.drop_rate, head_init=args.head_init, freeze_bn_stats=args.freeze_bn_stats,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_multipliers=list(args.lr_multipliers),
        weight_decay=args.weight_decay, layer_decay=args.layer_decay, scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs, freeze_epochs=args.freeze_epochs, ema_decay=args.ema_decay,
        augment=args.augment, tta=args.tta, class_weights=args.class_weights, label_smoothing=args.label_smoothing,
        patience=args.patience, scheduler_patience=args.scheduler_patience, scheduler_factor=args.scheduler_factor,
        scale_min=args.scale_min, hflip=args.hflip, vflip=args.vflip, rotation=args.rotation,
        workers=args.workers, threads=args.threads, channels_last=args.channels_last,
        cache_images=args.cache_images, device=args.device, precision=args.precision, compile=args.compile,
        checkpoint_dir=str(Path(args.checkpoint_dir).expanduser().resolve()) if args.checkpoint_dir else "",
    )


def run(args: argparse.Namespace) -> int:
    from species_classifier.train.interrupt import EXIT_STATUS, TrainingInterrupted
    from species_classifier.train.runner import remove_run, run_training

    config = config_from_args(args)
    if args.overwrite and os.environ.get("RANK", "0") == "0":
        remove_run(config)
    try:
        out = run_training(config)
    except TrainingInterrupted as stopped:
        log.warning("%s", stopped)
        return EXIT_STATUS
    print(f"Trained run: {out}")
    return 0
