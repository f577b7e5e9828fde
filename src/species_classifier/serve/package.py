"""Build `model.tar.gz` for the SageMaker PyTorch inference containers.

Layout (SageMaker unpacks it into /opt/ml/model):

    model.json                   classes, architecture, preprocessing
    fold_K.safetensors           every fold's weights
    calibration.json             temperature and thresholds, when the run has them
    code/inference.py            model_fn, input_fn, predict_fn, output_fn (sagemaker_handler.py)
    code/requirements.txt        what the container installs besides its torch and torchvision
    code/species_classifier/     the modules inference.py imports, copied from this package
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile
from importlib import metadata, resources
from pathlib import Path

from species_classifier.model.bundle import MODEL_JSON, BundleError, read_bundle
from species_classifier.serve.calibration import CALIBRATION_JSON

log = logging.getLogger(__name__)

# Modules inference.py imports, relative to the species_classifier package. None of them
# imports FastAPI, pandas or the training code.
HANDLER_MODULES = (
    "__init__.py",
    "data/__init__.py",
    "data/images.py",
    "data/transforms.py",
    "model/__init__.py",
    "model/bundle.py",
    "serve/__init__.py",
    "serve/backends.py",
    "serve/calibration.py",
    "serve/ensemble.py",
    "serve/export.py",
    "serve/payloads.py",
    "serve/results.py",
    "serve/settings.py",
)
# Installed by the container from code/requirements.txt, pinned to the versions that built
# the bundle. torch, torchvision, numpy and pillow come with the PyTorch container.
REQUIRED_DISTRIBUTIONS = ("timm", "safetensors")


def requirements_text() -> str:
    lines = []
    for name in REQUIRED_DISTRIBUTIONS:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(name)
    return "\n".join(lines) + "\n"


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def build_sagemaker_archive(run_dir: str | Path, output: str | Path) -> Path:
    """Write model.tar.gz for a run; see the module docstring for the layout.

    Raises:
        BundleError: The run folder has no model.json or misses a fold's weights file.
    """
    run_dir = Path(run_dir)
    output = Path(output)
    bundle = read_bundle(run_dir)
    if not bundle.folds:
        raise BundleError(f"{run_dir}: model.json lists no trained folds; nothing to package")
    model_files = [MODEL_JSON, *(fold["weights"] for fold in bundle.folds)]
    if (run_dir / CALIBRATION_JSON).is_file():
        model_files.append(CALIBRATION_JSON)
    else:
        log.warning("%s has no %s: the endpoint will use temperature 1 and the default threshold", run_dir, CALIBRATION_JSON)
    for name in model_files:
        if not (run_dir / name).is_file():
            raise BundleError(f"{run_dir}: {name} not found; the run is incomplete")

    package = resources.files("species_classifier")
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with tarfile.open(temporary, "w:gz") as archive:
            for name in model_files:
                archive.add(run_dir / name, arcname=name)
            handler = package.joinpath("serve/sagemaker_handler.py").read_bytes()
            _add_bytes(archive, "code/inference.py", handler)
            _add_bytes(archive, "code/requirements.txt", requirements_text().encode())
            for module in HANDLER_MODULES:
                _add_bytes(archive, f"code/species_classifier/{module}", package.joinpath(module).read_bytes())
        os.replace(temporary, output)
    finally:
        Path(temporary).unlink(missing_ok=True)
    log.info("Wrote %s: %d model files, code/inference.py and %d modules", output, len(model_files), len(HANDLER_MODULES))
    return output
