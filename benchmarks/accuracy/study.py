"""Accuracy study: train each recipe configuration on the same 3 observation-grouped folds and compare.

    python benchmarks/accuracy/study.py --dataset ../shared/datasets/species-bench \\
        --configs default,linear-probe,reference --out benchmarks/out/accuracy

For species-bench (a manifest with a `role` column) the targets are the species with
role `target`; everything else is `other`. Each configuration is one `species-classifier
train` run (same seed, so the same folds) except `linear-probe`, which fits a logistic
regression on frozen, pooled `tf_efficientnet_lite0` features of the same folds.
Results are appended to `results.json` beside this script (one entry per configuration
and dataset), and `RESULTS.md` is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
MAX_FALSE_ACCEPT = 0.02

# The reference recipe's settings, pinned so that the rows below stay reproducible when the
# `train` defaults change. They are per-stage rates (4 chunks, head at 10x), a plateau schedule
# on macro F1, class-weighted loss, a dropout 0.5 head and early stopping after 4 epochs.
REFERENCE = ["--head-init", "random", "--no-freeze-bn-stats", "--lr", "1e-3", "--lr-multipliers", "0.1,0.5,1,10", "--layer-decay", "0", "--scheduler", "plateau",
             "--warmup-epochs", "0", "--freeze-epochs", "0", "--ema-decay", "0", "--label-smoothing", "0",
             "--augment", "none", "--tta", "none", "--drop-rate", "0.5", "--class-weights", "balanced", "--patience", "4"]
LITE0 = ["--model", "tf_efficientnet_lite0", "--img-size", "224"]

COMBINATION_C = [*REFERENCE, *LITE0, "--head-init", "probe", "--freeze-bn-stats", "--lr", "2e-4",
                 "--lr-multipliers", "0.1,0.5,1,1", "--scheduler", "cosine", "--warmup-epochs", "1"]

# Each configuration is a list of `train` flags. "lite0, reference settings" was the
# `train` default before this study; the single changes are measured against it.
CONFIGS: dict[str, list[str]] = {
    # efficientnet_b1 ImageNet weights need the hub, which is offline here, so the closest
    # embedded model, tf_efficientnet_lite2 at its 260 px, replaces it (labelled as such).
    "reference (lite2 substitute)": [*REFERENCE, "--model", "tf_efficientnet_lite2"],
    "lite0, reference settings": [*REFERENCE, *LITE0],
    "layer-decay 0.75": [*REFERENCE, *LITE0, "--layer-decay", "0.75"],
    "freeze 1 epoch": [*REFERENCE, *LITE0, "--freeze-epochs", "1"],
    "cosine + warm-up": [*REFERENCE, *LITE0, "--scheduler", "cosine", "--warmup-epochs", "1"],
    "label smoothing 0.1": [*REFERENCE, *LITE0, "--label-smoothing", "0.1"],
    "trivialaugment": [*REFERENCE, *LITE0, "--augment", "trivial"],
    "ema 0.998": [*REFERENCE, *LITE0, "--ema-decay", "0.998"],
    "flip tta": [*REFERENCE, *LITE0, "--tta", "flip"],
    "288 px": [*REFERENCE, *LITE0, "--img-size", "288"],
    "lr 3e-4": [*REFERENCE, *LITE0, "--lr", "3e-4"],
    # Combinations.
    "combination A": [*REFERENCE, *LITE0, "--lr", "3e-4", "--freeze-epochs", "1", "--scheduler", "cosine",
                      "--warmup-epochs", "2", "--label-smoothing", "0.1", "--ema-decay", "0.998", "--tta", "flip"],
    # Linear probe, then fine-tune: the head starts from a logistic regression on frozen
    # features, and the whole network then trains at a low rate (head included).
    "combination B (LP-FT)": [*REFERENCE, *LITE0, "--head-init", "probe", "--lr", "2e-4", "--lr-multipliers", "0.1,0.5,1,1",
                              "--scheduler", "cosine", "--warmup-epochs", "1"],
    # LP-FT with batch-norm layers kept on their pretrained statistics: the `train` default since 2026-12-05.
    "combination C (LP-FT + frozen BN stats)": COMBINATION_C,
    # Combination C in about half the reference stand-in's training time.
    "combination C 6 epochs": [*COMBINATION_C, "--epochs", "6"],
    "combination D (C + first third frozen + 8 epochs)": [*COMBINATION_C, "--lr-multipliers", "0,0.5,1,1", "--epochs", "8"],
    "E (C + first two thirds frozen)": [*COMBINATION_C, "--lr-multipliers", "0,0,1,1"],
    # Single additions to combination C.
    "C + label smoothing 0.1": [*COMBINATION_C, "--label-smoothing", "0.1"],
    "C + ema 0.998": [*COMBINATION_C, "--ema-decay", "0.998"],
    "C + trivialaugment": [*COMBINATION_C, "--augment", "trivial"],
    # The `train` defaults as they are now, no flags.
    "default": [],
}
# Configurations that are not one `train` run on all photos.
FLIP_RESCORED = "flip tta (re-scored)"
FOLD_AVERAGING = "fold averaging"


def read_roles(dataset: Path) -> tuple[list[str], dict[str, str]]:
    """Return the target species (role `target`, manifest order) and each species' role."""
    manifest = dataset / "manifest.csv" if dataset.is_dir() else dataset
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    roles = dict(zip(table["species_name"].str.replace("_", " "), table.get("role", pd.Series([""] * len(table)))))
    targets = list(dict.fromkeys(name for name, role in roles.items() if role == "target"))
    return targets, roles


def train_config(name: str, flags: list[str], dataset: Path, targets: list[str], out: Path, common: list[str]) -> tuple[Path, float]:
    run = out / name.replace(" ", "_").replace("(", "").replace(")", "")
    # Start from scratch: `train` would resume (or reuse) a run whose identity settings match.
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "species_classifier", "-q", "train", str(dataset), "--targets", ",".join(targets),
               "--out", str(run), *common, *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return run, time.perf_counter() - start


def children_cpu_seconds() -> float:
    """User + system CPU seconds of finished child processes (less sensitive to a busy machine than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def linear_probe(dataset: Path, targets: list[str], out: Path, seed: int, folds: int) -> tuple[Path, float]:
    """Fit logistic regression on frozen pooled features, on the same folds `train` would use."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from species_classifier.data.dataset import read_dataset
    from species_classifier.data.labels import build_classes
    from species_classifier.data.photos import PhotoStore
    from species_classifier.data.splits import assign_folds
    from species_classifier.data.transforms import build_eval_transform
    from species_classifier.model.factory import create_classifier
    from species_classifier.train.runner import label_photos

    start = time.perf_counter()
    classes = build_classes(targets)
    photos = label_photos(read_dataset(dataset), classes)
    model, preprocess = create_classifier("tf_efficientnet_lite0", num_classes=0, pretrained="embedded")
    model = model.eval().to(memory_format=torch.channels_last)
    store = PhotoStore(photos["path"].tolist(), preprocess, cache=True)
    transform = build_eval_transform(preprocess)
    features = []
    with torch.inference_mode():
        for begin in range(0, len(store), 64):
            batch = torch.stack([transform(store.get(i)) for i in range(begin, min(begin + 64, len(store)))])
            features.append(model(batch.contiguous(memory_format=torch.channels_last)).numpy())
    features = np.concatenate(features)
    labels = photos["label_index"].to_numpy()
    photos["fold"] = assign_folds(labels, photos["observation_id"].to_numpy(), folds, seed, classes)

    logits = np.zeros((len(photos), len(classes)))
    for fold in range(folds):
        train, validation = photos["fold"] != fold, photos["fold"] == fold
        probe = LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced")
        probe.fit(features[train], labels[train])
        logits[validation] = probe.decision_function(features[validation])
    run = out / "linear-probe"
    run.mkdir(parents=True, exist_ok=True)
    rows = photos[["path", "species_name", "label", "label_index", "fold", "observation_id", "role"]]
    _oof_table(rows, logits, classes).to_csv(run / "oof_predictions.csv", index=False)
    (run / "classes.json").write_text(json.dumps(classes))
    return run, time.perf_counter() - start


def _predict_paths(predictor, paths: list[str]) -> np.ndarray:
    """Mean logits of the predictor's models for each image path (its bundle's TTA applied)."""
    from species_classifier.data.images import load_image

    logits = []
    for begin in range(0, len(paths), 32):
        images = [load_image(path) for path in paths[begin : begin + 32]]
        logits.append(predictor.predict_images(images).logits)
    return np.concatenate(logits)


def _oof_table(rows: pd.DataFrame, logits: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Return `rows` with the prediction columns of oof_predictions.csv computed from `logits` (replacing any already there)."""
    table = rows.drop(columns=[c for c in rows.columns if c.startswith(("prob_", "logit_")) or c in ("predicted", "confidence")])
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    table["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
    table["confidence"] = probabilities.max(axis=1)
    for index, name in enumerate(classes):
        table[f"prob_{name}"] = probabilities[:, index]
    for index, name in enumerate(classes):
        table[f"logit_{name}"] = logits[:, index]
    return table


def rescore_with_flip(source: Path, out: Path) -> tuple[Path, float]:
    """Predict every out-of-fold photo of a finished run again, averaging each photo and its mirror.

    The fold models and their best epochs are the source run's (chosen without TTA), so this
    measures flip TTA at inference only, without retraining.
    """
    from species_classifier.predict import Predictor

    start = time.perf_counter()
    oof = pd.read_csv(source / "oof_predictions.csv", keep_default_na=False)
    predictor = Predictor(source)
    predictor.bundle.tta = "flip"
    models = predictor.models
    parts = []
    for fold, model in zip([f["fold"] for f in predictor.bundle.folds], models):
        rows = oof[oof["fold"] == fold]
        predictor.models = [model]
        parts.append(_oof_table(rows, _predict_paths(predictor, rows["path"].tolist()), predictor.classes))
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(parts).to_csv(out / "oof_predictions.csv", index=False)
    return out, time.perf_counter() - start


def fold_average_holdout(dataset: Path, targets: list[str], flags: list[str], out: Path, seed: int, common: list[str]) -> dict:
    """Hold out one third of the photos, train 3 folds on the rest, and score on the held-out third:
    each fold model alone, the 3-model ensemble, and the fold models' weights averaged into one model.

    Out-of-fold scores cannot judge the averaged model (every photo trained some of its folds),
    hence the held-out third.
    """
    from sklearn.metrics import f1_score

    from species_classifier.data.dataset import read_dataset
    from species_classifier.data.labels import build_classes
    from species_classifier.data.splits import assign_folds
    from species_classifier.predict import Predictor
    from species_classifier.train.runner import label_photos

    classes = build_classes(targets)
    photos = label_photos(read_dataset(dataset), classes)
    photos["fold"] = assign_folds(photos["label_index"].to_numpy(), photos["observation_id"].to_numpy(), 3, seed, classes)
    held_out, rest = photos[photos["fold"] == 0], photos[photos["fold"] != 0]
    work = out / "fold-average-holdout"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    columns = [c for c in ("path", "species_name", "observation_id", "observer_id", "license", "attribution", "role") if c in rest]
    rest[columns].to_csv(work / "train.csv", index=False)

    run, seconds = train_config("ensemble", flags, work / "train.csv", targets, work, common)
    averaged = work / "averaged"
    subprocess.run([sys.executable, "-m", "species_classifier", "-q", "average-folds", str(run), "--out", str(averaged)], check=True)

    truth = held_out["label_index"].to_numpy()
    paths = held_out["path"].tolist()
    scores: dict[str, float] = {}
    ensemble = Predictor(run)
    models = ensemble.models
    for index, model in enumerate(models):
        ensemble.models = [model]
        scores[f"fold {index} alone"] = f1_score(truth, _predict_paths(ensemble, paths).argmax(1), average="macro")
    ensemble.models = models
    scores["3-fold ensemble"] = f1_score(truth, _predict_paths(ensemble, paths).argmax(1), average="macro")
    scores["weights averaged"] = f1_score(truth, _predict_paths(Predictor(averaged), paths).argmax(1), average="macro")
    return {"held_out_photos": len(held_out), "train_seconds": seconds, "macro_f1": scores}


def score_run(run: Path, roles: dict[str, str], targets: list[str]) -> dict:
    """Compute the study's metrics from a run's out-of-fold predictions."""
    from species_classifier.evaluate.calibration import calibrate
    from species_classifier.evaluate.metrics import compute_metrics, read_predictions

    oof = pd.read_csv(run / "oof_predictions.csv", keep_default_na=False)
    classes = [*targets, "other"]
    predictions = read_predictions(oof, classes)
    metrics = compute_metrics(predictions, MAX_FALSE_ACCEPT)
    calibration = calibrate(predictions, MAX_FALSE_ACCEPT)
    per_class = metrics.per_class.set_index("class")

    # Look-alike confusion: look-alike photos predicted as a target species.
    role = oof["species_name"].map(roles).fillna("")
    lookalike = role == "lookalike"
    confused = oof.loc[lookalike, "predicted"].isin(targets)
    result = {
        "macro_f1_mean": metrics.macro_f1_mean,
        "macro_f1_std": metrics.macro_f1_std,
        "target_f1": {name: float(per_class.loc[name, "f1"]) for name in targets},
        "lookalike_confusion_rate": float(confused.mean()) if lookalike.any() else None,
        "true_accept_at_2pct": {name: point.true_accept_rate for name, point in calibration.operating_points.items()},
        "ece_before": calibration.ece_before,
        "ece_after": calibration.ece_after,
    }
    metrics_csv = run / "metrics.csv"
    if metrics_csv.is_file():
        epochs = pd.read_csv(metrics_csv)
        result["train_images_per_s"] = float(epochs["train_images_per_s"].median())
        result["epochs_run"] = int(len(epochs))
    return result


def write_markdown(records: list[dict]) -> None:
    """Rewrite RESULTS.md: the measured tables from `records`, then the hand-written FINDINGS.md."""
    lines = [
        "# Accuracy study",
        "",
        "Tables written by `benchmarks/accuracy/study.py` from `results.json`; the text after them is",
        "`FINDINGS.md`. Every trained configuration uses the same 3 observation-grouped folds (seed 42)",
        "and at most 12 epochs per fold unless its name says fewer; numbers are out-of-fold. TAR = true-accept rate of a target at a",
        "2% false-accept rate, thresholds chosen on the same out-of-fold predictions (in-sample).",
        "CPU time is the training process's user + system time, less sensitive than wall time to other",
        "jobs on this shared 2-core machine.",
        "",
        "| dataset | configuration | macro F1 | min target TAR@2% | look-alike confusion | ECE before → after | epochs (all folds) | train img/s | wall time | CPU time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        if record.get("kind") == "holdout":
            continue
        tar = record["true_accept_at_2pct"]
        minimum_tar = min(v for v in tar.values() if v is not None) if tar else float("nan")
        confusion = record.get("lookalike_confusion_rate")
        cpu = f"{record['cpu_seconds'] / 60:.1f} min" if "cpu_seconds" in record else "—"
        speed = f"{record['train_images_per_s']:.1f}" if "train_images_per_s" in record else "—"
        epochs = str(record["epochs_run"]) if "epochs_run" in record else "—"
        lines.append(
            f"| {record['dataset']} | {record['config']} | {record['macro_f1_mean']:.3f} ± {record['macro_f1_std']:.3f} "
            f"| {minimum_tar:.2f} | {'—' if confusion is None else f'{confusion:.2f}'} "
            f"| {record['ece_before']:.3f} → {record['ece_after']:.3f} | {epochs} | {speed} "
            f"| {record['wall_seconds'] / 60:.1f} min | {cpu} |"
        )
    holdout = [record for record in records if record.get("kind") == "holdout"]
    for record in holdout:
        lines += [
            "",
            f"## Fold averaging on held-out photos ({record['dataset']}, settings of `{record['flags_from']}`)",
            "",
            f"One third of the photos ({record['held_out_photos']}) held out; 3 folds trained on the rest; macro F1 on the held-out photos:",
            "",
            "| model | macro F1 |",
            "|---|---|",
            *[f"| {name} | {value:.3f} |" for name, value in record["macro_f1"].items()],
        ]
    notes = [f"- {record['config']}: {record['note']}" for record in records if record.get("note")]
    if notes:
        lines += ["", "Notes on individual runs:", *notes]
    lines += ["", "Per-target F1, true-accept rates and each run's `train` flags are in `results.json`.", ""]
    findings = HERE / "FINDINGS.md"
    if findings.is_file():
        lines += [findings.read_text()]
    RESULTS_MD.write_text("\n".join(lines))


def save_record(record: dict) -> list[dict]:
    """Replace the record of the same dataset and configuration in results.json (read afresh) and rewrite RESULTS.md."""
    records = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else []
    records = [r for r in records if (r["dataset"], r["config"]) != (record["dataset"], record["config"])] + [record]
    RESULTS_JSON.write_text(json.dumps(records, indent=2) + "\n")
    write_markdown(records)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(HERE.parents[1].parent / "shared/datasets/species-bench"))
    parser.add_argument("--targets", help="comma-separated targets (default: the manifest's role=target species)")
    parser.add_argument("--configs", default=",".join(["linear-probe", *CONFIGS, FLIP_RESCORED, FOLD_AVERAGING]), help="comma-separated configuration names")
    parser.add_argument("--out", default="benchmarks/out/accuracy", help="folder for the runs")
    parser.add_argument("--epochs", type=int, default=12, help="maximum epochs per fold for every trained configuration")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--base", default="default",
                        help=f"configuration that '{FLIP_RESCORED}' re-scores and '{FOLD_AVERAGING}' trains with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    dataset = Path(args.dataset)
    targets, roles = read_roles(dataset)
    if args.targets:
        targets = [name.strip() for name in args.targets.split(",")]
    out = Path(args.out) / dataset.name
    common = ["--folds", "3", "--seed", str(args.seed), "--epochs", str(args.epochs)]

    for name in args.configs.split(","):
        if name == FOLD_AVERAGING:
            result = fold_average_holdout(dataset, targets, list(CONFIGS[args.base]), out, args.seed, common)
            record = {"dataset": dataset.name, "config": name, "kind": "holdout", "flags_from": args.base, **result}
            save_record(record)
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["macro_f1"].items()), flush=True)
            continue
        extra: dict = {}
        if name == "linear-probe":
            run, seconds = linear_probe(dataset, targets, out, args.seed, 3)
        elif name == FLIP_RESCORED:
            source = out / args.base.replace(" ", "_").replace("(", "").replace(")", "")
            run, seconds = rescore_with_flip(source, out / "flip-tta-rescored")
            name = f"{FLIP_RESCORED} of {args.base}"
        else:
            flags = list(CONFIGS[name])
            cpu_start = children_cpu_seconds()
            run, seconds = train_config(name, flags, dataset, targets, out, common)
            extra = {"cpu_seconds": children_cpu_seconds() - cpu_start, "flags": flags}
        record = {"dataset": dataset.name, "config": name, "wall_seconds": seconds, **score_run(run, roles, targets), **extra}
        save_record(record)
        print(f"{name:30s} macro F1 {record['macro_f1_mean']:.3f} ± {record['macro_f1_std']:.3f}  {seconds / 60:.1f} min", flush=True)

if __name__ == "__main__":
    main()
