"""Export a run's fold ensemble as one ONNX graph, into `RUN/onnx/`.

The graph takes `pixels`, a float32 (N, 3, S, S) batch preprocessed by the bundle's
config, and returns `fold_logits`, float32 (N, K, C): every fold's logits, so the
server can report each fold's vote and average them itself. The batch axis is dynamic.

`RUN/onnx/export.json` records the SHA-256 of every fold's weights file. An export whose
recorded hashes no longer match the run folder is stale, and `serve` exports again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from species_classifier.model.bundle import Bundle, BundleError, atomic_write_text, load_fold_models, read_bundle, utc_now

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
EXPORT_JSON = "export.json"
INPUT_NAME = "pixels"
OUTPUT_NAME = "fold_logits"
DEFAULT_OPSET = 17
# Largest allowed difference between ONNX Runtime's fp32 logits and PyTorch's.
FP32_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An ONNX export that failed or does not reproduce the PyTorch outputs."""


class FoldStack(nn.Module):
    """Run every fold model on the same batch and stack their logits as (N, K, C)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.folds = nn.ModuleList(models)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(pixels) for model in self.folds], dim=1)


@dataclass(frozen=True)
class ExportResult:
    """The written graph's path and its largest logit difference from PyTorch."""

    path: Path
    max_abs_diff: float


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(run_dir: Path, bundle: Bundle) -> dict[str, Any]:
    """Identify the weights and shapes an export was made from."""
    return {
        "model_name": bundle.model_name,
        "classes": bundle.classes,
        "input_size": bundle.preprocess.input_size,
        "weights_sha256": {fold["weights"]: sha256_file(run_dir / fold["weights"]) for fold in bundle.folds},
    }


def onnx_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / ONNX_DIR / ONNX_FILE


def read_export_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / ONNX_DIR / EXPORT_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; treating the export as missing", path)
        return None


def current_export(run_dir: str | Path, bundle: Bundle | None = None) -> Path | None:
    """Return the run's ONNX graph if it exists and was made from the current weights."""
    run_dir = Path(run_dir)
    bundle = bundle or read_bundle(run_dir)
    path = onnx_path(run_dir)
    manifest = read_export_manifest(run_dir)
    if not path.is_file() or manifest is None:
        return None
    if manifest.get("fingerprint") != weights_fingerprint(run_dir, bundle):
        log.info("%s was exported from other weights or classes; it is stale", path)
        return None
    return path


def export_onnx(run_dir: str | Path, opset: int = DEFAULT_OPSET, tolerance: float = FP32_TOLERANCE) -> ExportResult:
    """Export the fold ensemble to `RUN/onnx/model.onnx` and check it against PyTorch.

    The check runs a fixed random batch through ONNX Runtime (fp32) and PyTorch.

    Raises:
        BundleError: The run folder is incomplete.
        ExportError: Export failed, or the largest logit difference exceeds `tolerance`.
    """
    run_dir = Path(run_dir)
    bundle, models = load_fold_models(run_dir)
    stack = FoldStack(models).eval()
    size = bundle.preprocess.input_size
    out_dir = run_dir / ONNX_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("Exporting %d folds of %s at %d px to %s", len(models), bundle.model_name, size, out_dir / ONNX_FILE)

    handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{ONNX_FILE}.", suffix=".tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # NOTE: this uses the TorchScript-based exporter (dynamo=False), which
            # PyTorch 2.9+ deprecates; the torch.export-based one needs onnxscript.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                stack,
                (torch.zeros(2, 3, size, size),),
                temporary,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )
        max_abs_diff = _compare_with_pytorch(stack, Path(temporary), size)
        if max_abs_diff > tolerance:
            raise ExportError(
                f"ONNX Runtime logits differ from PyTorch by {max_abs_diff:.2e}, over the tolerance "
                f"{tolerance:.0e}; the export of {bundle.model_name} is not faithful"
            )
        os.replace(temporary, out_dir / ONNX_FILE)
    except ExportError:
        raise
    except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as error:
        raise ExportError(f"ONNX export of {bundle.model_name} failed: {error}") from error
    finally:
        Path(temporary).unlink(missing_ok=True)

    manifest = {
        "file": ONNX_FILE,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "output_layout": "batch, fold, class",
        "opset": opset,
        "folds": [fold["fold"] for fold in bundle.folds],
        "fingerprint": weights_fingerprint(run_dir, bundle),
        "max_abs_diff_vs_pytorch": max_abs_diff,
        "torch": torch.__version__,
        "created": utc_now(),
    }
    atomic_write_text(out_dir / EXPORT_JSON, json.dumps(manifest, indent=2) + "\n")
    log.info("Exported %s (max logit difference from PyTorch %.1e)", out_dir / ONNX_FILE, max_abs_diff)
    return ExportResult(path=out_dir / ONNX_FILE, max_abs_diff=max_abs_diff)


def _compare_with_pytorch(stack: FoldStack, path: Path, size: int) -> float:
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 3, size, size, generator=generator)
    with torch.inference_mode():
        expected = stack(pixels).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: pixels.numpy()})[0]
    return float(np.abs(actual - expected).max())


def ensure_export(run_dir: str | Path, bundle: Bundle, allow_export: bool) -> Path:
    """Return a current ONNX graph for the run, exporting it when allowed.

    Raises:
        ExportError: The graph is missing or stale and `allow_export` is False, or the
            export failed.
    """
    path = current_export(run_dir, bundle)
    if path is not None:
        return path
    if not allow_export:
        raise ExportError(
            f"{onnx_path(run_dir)} is missing or stale; run `species-classifier export {run_dir}` "
            "or allow serve to export it"
        )
    try:
        return export_onnx(run_dir).path
    except PermissionError as error:
        raise ExportError(f"cannot write the ONNX export into {run_dir} ({error}); run export where it is writable") from error


__all__ = [
    "BundleError",
    "ExportError",
    "ExportResult",
    "current_export",
    "ensure_export",
    "export_onnx",
    "onnx_path",
    "weights_fingerprint",
]
