"""Average a run's fold models into one model (a "model soup"), written as a new run folder.

The fold models of one `train` run are fine-tuned from the same pretrained weights, so
the element-wise mean of their weights can work as one model, at one model's inference
cost where the fold ensemble costs K. Whether it is as accurate as the ensemble has to be
measured on held-out photos (`evaluate NEW_RUN DATASET`).

The new run folder contains:

- `model.json`: the source run's content, with `folds` replaced by one entry
  `{"fold": "averaged", "weights": "averaged.safetensors", "averaged_from": [...]}`, plus
  an `averaging` record (method, source run, the source `folds` entries) and, when
  `calibration.json` is copied, `calibration_source`.
- `averaged.safetensors`: the mean of every floating-point tensor of the fold weight
  files, in the files' dtype. Integer tensors (BatchNorm's `num_batches_tracked`) get
  the maximum over the folds.
- `calibration.json`: copied unchanged. Its temperature and thresholds were fitted on the
  fold models' out-of-fold predictions, not on the averaged model.
- `fold_ensemble/`: copies of the source run's `oof_predictions.csv`, `metrics.csv`,
  `splits.csv`, `excluded_images.csv`, `summary.json` and `report.html` (those present).
  They describe the fold ensemble. They are kept out of the top level because every fold
  model trained on the photos the other folds validated on, so out-of-fold scores do
  not apply to the averaged model. `evaluate` reads `fold_ensemble/oof_predictions.csv`
  only to warn when a held-out dataset contains training photos.

NOTE: BatchNorm running means and variances are averaged like the weights. They are
not the activation statistics of the averaged weights, which can cost accuracy;
`average-folds` does not recompute them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from species_classifier.model.bundle import (
    EXCLUDED_CSV,
    METRICS_CSV,
    MODEL_JSON,
    OOF_CSV,
    Bundle,
    BundleError,
    atomic_write_bytes,
    atomic_write_text,
    library_versions,
    read_bundle,
    save_tensors,
    utc_now,
)

log = logging.getLogger(__name__)

AVERAGED_FOLD_ID = "averaged"
AVERAGED_WEIGHTS = "averaged.safetensors"
FOLD_ENSEMBLE_DIR = "fold_ensemble"
CALIBRATION_JSON = "calibration.json"
CALIBRATION_SOURCE = "fold models' out-of-fold predictions"
AVERAGING_METHOD = "element-wise mean of floating-point tensors; maximum of integer tensors"
# Records of the source run that describe the fold ensemble, copied into FOLD_ENSEMBLE_DIR.
FOLD_ENSEMBLE_RECORDS = (OOF_CSV, METRICS_CSV, "splits.csv", EXCLUDED_CSV, "summary.json", "report.html")

# Shape and dtype name of every tensor, by key.
TensorLayout = dict[str, tuple[tuple[int, ...], str]]


class AveragingError(BundleError):
    """A run whose fold models cannot be averaged, or an output folder that cannot be used."""


def is_averaged(bundle: Bundle) -> bool:
    """Return True for a bundle written by `average-folds`."""
    return any("averaged_from" in entry for entry in bundle.folds)


def tensor_layout(tensors: Mapping[str, torch.Tensor]) -> TensorLayout:
    """Return the shape and dtype of every tensor of a state dict."""
    return {key: (tuple(tensor.shape), str(tensor.dtype)) for key, tensor in tensors.items()}


def file_layout(path: Path) -> TensorLayout:
    """Return the shape and dtype of every tensor of a safetensors file, reading only its header.

    Raises:
        AveragingError: The file is not a valid safetensors file.
    """
    layout: TensorLayout = {}
    try:
        with safe_open(str(path), framework="pt") as file:
            for key in file.keys():
                tensor_slice = file.get_slice(key)
                layout[key] = (tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype()))
    except SafetensorError as error:
        raise AveragingError(f"{path} is not a valid safetensors file ({error}); restore it from a copy or train the run again") from None
    return layout


def _format_keys(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text if len(keys) <= limit else f"{text} and {len(keys) - limit} more"


def check_same_layout(reference_name: str, reference: TensorLayout, name: str, layout: TensorLayout) -> None:
    """Check that two state dicts have the same keys, shapes and dtypes.

    Raises:
        AveragingError: A key is missing or extra, or a tensor's shape or dtype differs.
    """
    advice = "only fold models of one `train` run, which share one architecture, can be averaged"
    missing = reference.keys() - layout.keys()
    extra = layout.keys() - reference.keys()
    if missing or extra:
        details = []
        if missing:
            details.append(f"missing {_format_keys(missing)}")
        if extra:
            details.append(f"extra {_format_keys(extra)}")
        raise AveragingError(
            f"{name} does not have the same tensors as {reference_name} ({'; '.join(details)}); {advice}"
        )
    for key, (shape, dtype) in reference.items():
        other_shape, other_dtype = layout[key]
        if other_shape != shape:
            raise AveragingError(
                f"{name}: tensor {key} has shape {list(other_shape)}, but {list(shape)} in {reference_name}; {advice}"
            )
        if other_dtype != dtype:
            raise AveragingError(
                f"{name}: tensor {key} has dtype {other_dtype}, but {dtype} in {reference_name}; {advice}"
            )


def average_state_dicts(
    state_dicts: Iterable[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Average state dicts element-wise: the mean of floating-point tensors, the maximum of the others.

    `state_dicts` may be a generator, so only one state dict and the running sums are in
    memory at a time. Sums are accumulated in float64 and the mean is cast back to each
    tensor's dtype. `names` label the state dicts in errors (default "state dict N").

    Raises:
        AveragingError: Fewer than 2 state dicts, or their keys, shapes or dtypes differ.
    """
    totals: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    reference: TensorLayout = {}
    reference_name = ""
    count = 0
    for position, state_dict in enumerate(state_dicts):
        name = names[position] if names is not None else f"state dict {position}"
        layout = tensor_layout(state_dict)
        if count == 0:
            reference, reference_name = layout, name
            dtypes = {key: tensor.dtype for key, tensor in state_dict.items()}
        else:
            check_same_layout(reference_name, reference, name, layout)

        for key, tensor in state_dict.items():
            tensor = tensor.detach().cpu()
            total = totals.get(key)
            if total is None:
                # A copy, so the in-place sums never change the caller's tensors.
                totals[key] = tensor.to(torch.float64, copy=True) if tensor.is_floating_point() else tensor.clone()
            elif tensor.is_floating_point():
                total.add_(tensor.to(torch.float64))
            else:
                totals[key] = torch.maximum(total, tensor)
        count += 1

    if count < 2:
        raise AveragingError(f"averaging needs at least 2 state dicts, got {count}")
    averaged = {}
    for key, total in totals.items():
        averaged[key] = (total / count).to(dtypes[key]) if dtypes[key].is_floating_point else total
    return averaged


def fold_weight_files(run_dir: Path, bundle: Bundle) -> list[Path]:
    """Return the weight files of the run's folds, in `model.json` order.

    Raises:
        AveragingError: The run lists fewer than 2 folds, or a weight file is missing.
    """
    if len(bundle.folds) < 2:
        listed = ", ".join(str(entry.get("weights")) for entry in bundle.folds) or "none"
        raise AveragingError(
            f"{run_dir / MODEL_JSON}: the folds field lists {len(bundle.folds)} weight file(s) ({listed}), "
            "but averaging needs at least 2 fold models; train the run with --folds 2 or more"
        )
    paths = []
    for position, entry in enumerate(bundle.folds):
        name = entry.get("weights")
        if not name:
            raise AveragingError(f"{run_dir / MODEL_JSON}: folds entry {position} has no weights field")
        path = run_dir / name
        if not path.is_file():
            raise AveragingError(
                f"{run_dir}: weights file {name} of fold {entry.get('fold', position)} not found; "
                "the run is incomplete (finish training with the same `train` command)"
            )
        paths.append(path)
    return paths


def _check_destination(run_dir: Path, out_dir: Path, force: bool) -> None:
    """Reject an output folder that is the run, contains the run, or contains other files (unless `force`)."""
    source, target = run_dir.resolve(), out_dir.resolve()
    if target == source:
        raise AveragingError(f"--out {out_dir} is the run folder itself; choose a new folder for the averaged model")
    if target in source.parents:
        raise AveragingError(f"--out {out_dir} contains the run folder {run_dir}; choose a folder outside it")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise AveragingError(f"--out {out_dir} is a file; choose a new folder for the averaged model")
    if not any(out_dir.iterdir()):
        return
    if not force:
        raise AveragingError(
            f"--out {out_dir} already exists and is not empty; choose a new folder, or pass --force to replace the run in it"
        )
    if not (out_dir / MODEL_JSON).is_file():
        raise AveragingError(
            f"--force: {out_dir} contains no {MODEL_JSON}, so it does not look like a run folder; not replacing it. "
            "Choose a new folder or empty this one"
        )


def _averaged_model_json(run_dir: Path, weight_names: list[str], calibration_copied: bool, records: list[str]) -> dict[str, Any]:
    """Return the source `model.json` content with the averaged fold entry and the averaging record."""
    values = json.loads((run_dir / MODEL_JSON).read_text())
    averaging = {
        "method": AVERAGING_METHOD,
        "source_run": str(run_dir.resolve()),
        "source_created": values.get("created", ""),
        "source_folds": values.get("folds", []),
        "fold_ensemble_records": [f"{FOLD_ENSEMBLE_DIR}/{name}" for name in records],
        "versions": library_versions(),
    }
    values["folds"] = [{"fold": AVERAGED_FOLD_ID, "weights": AVERAGED_WEIGHTS, "averaged_from": weight_names}]
    values["averaging"] = averaging
    values["created"] = utc_now()
    if calibration_copied:
        values["calibration_source"] = CALIBRATION_SOURCE
    return values


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Move the finished `staging` folder to `out_dir`, replacing what is there."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    previous = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
    os.replace(out_dir, previous / out_dir.name)
    try:
        os.replace(staging, out_dir)
    except OSError:
        os.replace(previous / out_dir.name, out_dir)
        previous.rmdir()
        raise
    shutil.rmtree(previous)


def average_folds(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write a run folder whose one model is the mean of `run_dir`'s fold models; see the module docstring.

    The folder is built under a temporary name beside `out_dir` and renamed into place
    when complete. With `force`, an existing run folder at `out_dir` is replaced
    entirely, `onnx/` and `evaluations/` included. Returns `out_dir`.

    Raises:
        BundleError: `run_dir` has no valid `model.json`.
        AveragingError: The run has fewer than 2 folds, a weight file is missing, the fold
            weight files differ in keys, shapes or dtypes, or `out_dir` cannot be used.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    bundle = read_bundle(run_dir)
    _check_destination(run_dir, out_dir, force)
    paths = fold_weight_files(run_dir, bundle)
    names = [path.name for path in paths]

    # Compare the file headers first, so a mismatch is reported before any tensor is read.
    reference = file_layout(paths[0])
    for path in paths[1:]:
        check_same_layout(paths[0].name, reference, path.name, file_layout(path))

    log.info("Averaging %d fold models of %s (%s, %d tensors)", len(paths), run_dir, bundle.model_name, len(reference))
    averaged = average_state_dicts((load_file(str(path)) for path in paths), names=names)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        save_tensors(averaged, staging / AVERAGED_WEIGHTS, metadata={"averaged_from": json.dumps(names)})

        calibration = run_dir / CALIBRATION_JSON
        if calibration.is_file():
            atomic_write_bytes(staging / CALIBRATION_JSON, calibration.read_bytes())
        else:
            log.warning("%s has no %s: the averaged model will be served with temperature 1 and the default threshold",
                        run_dir, CALIBRATION_JSON)

        records = [name for name in FOLD_ENSEMBLE_RECORDS if (run_dir / name).is_file()]
        for name in records:
            atomic_write_bytes(staging / FOLD_ENSEMBLE_DIR / name, (run_dir / name).read_bytes())

        values = _averaged_model_json(run_dir, names, calibration.is_file(), records)
        Bundle.from_dict(values)  # the written model.json must read back
        atomic_write_text(staging / MODEL_JSON, json.dumps(values, indent=2) + "\n")
        os.chmod(staging, 0o777 & ~_current_umask())
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
