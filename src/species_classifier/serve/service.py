"""The loaded classifier behind the HTTP routes: decode, preprocess, batch, infer, decide.

`ClassifierService.start` loads the model in a background thread, so the server responds
to `/ping` (with 503) while a large ensemble loads or its ONNX graph is exported.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from species_classifier.model.bundle import Bundle, read_bundle
from species_classifier.serve.backends import AUTO_ORDER, Backend, OpenVinoBackend, load_first_backend
from species_classifier.serve.batching import MicroBatcher
from species_classifier.serve.calibration import Calibration, load_calibration
from species_classifier.serve.ensemble import EnsembleOutput, combine_fold_logits
from species_classifier.serve.export import ExportError, ensure_export
from species_classifier.serve.payloads import decode_pixels
from species_classifier.serve.precision import passed_precision_check
from species_classifier.serve.results import prediction_result, resolve_species, verification_result
from species_classifier.serve.settings import ServeSettings

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]


class ServiceError(RuntimeError):
    """A model that cannot be served with the requested settings."""


class ClassifierService:
    """A run folder's fold ensemble, ready to classify uploads."""

    def __init__(self, run_dir: str | Path, settings: ServeSettings | None = None):
        self.run_dir = Path(run_dir)
        self.settings = settings or ServeSettings()
        self.state: State = "loading"
        self.error: str | None = None
        self.bundle: Bundle | None = None
        self.calibration: Calibration | None = None
        self.backend: Backend | None = None
        self.batcher: MicroBatcher | None = None
        self.decode_pool = ThreadPoolExecutor(self.settings.decode_workers, thread_name_prefix="decode")
        self._loader: threading.Thread | None = None

    # Loading

    def start(self) -> None:
        """Load the model in a background thread; `state` turns `ready` or `failed`."""
        self._loader = threading.Thread(target=self.load, name="model-loader", daemon=True)
        self._loader.start()

    def wait_until_loaded(self, timeout_s: float | None = None) -> State:
        if self._loader is not None:
            self._loader.join(timeout_s)
        return self.state

    def load(self) -> None:
        """Load bundle, calibration and backend, warm the backend up, start the batcher."""
        started = time.monotonic()
        try:
            bundle = read_bundle(self.run_dir)
            calibration = load_calibration(self.run_dir, bundle.classes, self.settings.default_threshold)
            backend = self._load_backend(bundle)
            if backend.name != "pytorch":
                # Preprocessing is the only PyTorch work left. Its OpenMP threads would
                # contend with the runtime's own thread pool for the same cores.
                torch.set_num_threads(1)
            size = bundle.preprocess.input_size
            for batch_size in sorted({1, self.settings.max_batch_size}):
                backend.run(np.zeros((batch_size, 3, size, size), dtype=np.float32))
            batcher = MicroBatcher(
                backend.run,
                max_batch_size=self.settings.max_batch_size,
                max_wait_s=self.settings.batch_wait_ms / 1000.0,
                output_axis=1,
                name="inference",
            )
            batcher.start()
        except Exception as error:  # any failure leaves the server up and /ping unhealthy
            self.error = str(error) or type(error).__name__
            self.state = "failed"
            log.exception("Failed to load the model from %s", self.run_dir)
            return

        self.bundle, self.calibration, self.backend, self.batcher = bundle, calibration, backend, batcher
        self.state = "ready"
        log.info(
            "Serving %s: %s, %d folds, %d classes, %d px, backend %s, batches up to %d, loaded in %.1f s",
            self.run_dir, bundle.model_name, len(bundle.folds), len(bundle.classes),
            bundle.preprocess.input_size, backend.describe(), self.settings.max_batch_size,
            time.monotonic() - started,
        )

    def _load_backend(self, bundle: Bundle) -> Backend:
        settings = self.settings
        names = AUTO_ORDER if settings.backend == "auto" else (settings.backend,)
        record = None
        if settings.precision != "fp32":
            if "openvino" not in names:
                if settings.precision == "reduced":
                    raise ServiceError("--precision reduced needs --backend openvino (or auto)")
            else:
                record = self._passed_precision_check(bundle)
                if record is None and settings.precision == "reduced":
                    raise ServiceError(
                        f"--precision reduced needs a passed precision check for {self.run_dir}: run "
                        f"`species-classifier export {self.run_dir} --check-precision PHOTOS_DIR` first, "
                        "or serve with --precision fp32"
                    )
        reduced = record is not None
        backend = load_first_backend(
            names, self.run_dir, bundle, settings.threads, reduced_precision=reduced, export_missing=settings.export_missing
        )
        if reduced and isinstance(backend, OpenVinoBackend) and backend.precision != record["precision"]:
            log.warning(
                "This CPU runs OpenVINO's reduced precision as %s, but the precision check measured %s; using fp32",
                backend.precision, record["precision"],
            )
            backend = load_first_backend(("openvino",), self.run_dir, bundle, settings.threads, False, settings.export_missing)
        return backend

    def _passed_precision_check(self, bundle: Bundle) -> dict[str, Any] | None:
        try:
            path = ensure_export(self.run_dir, bundle, allow_export=self.settings.export_missing)
        except ExportError as error:
            log.warning("Cannot look up the precision check: %s", error)
            return None
        record = passed_precision_check(self.run_dir, path)
        if record is None and self.settings.precision == "auto":
            log.info(
                "Running fp32: no passed precision check for this export "
                "(run `species-classifier export RUN --check-precision PHOTOS_DIR` to allow reduced precision)"
            )
        return record

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # Requests

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def decode(self, data: bytes) -> np.ndarray:
        """Decode image bytes into a preprocessed float32 (3, S, S) array; see `payloads.decode_pixels`.

        Raises:
            PayloadError: The image is empty, invalid, truncated or too large.
        """
        assert self.bundle is not None, "decode called before the model loaded"
        return decode_pixels(data, self.bundle.preprocess, self.settings.max_pixels)

    async def decode_async(self, data: bytes) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, self.decode, data)

    async def infer(self, pixels: np.ndarray) -> EnsembleOutput:
        """Run one preprocessed image through the batcher; returns an output with N = 1."""
        assert self.batcher is not None and self.calibration is not None, "infer called before the model loaded"
        assert self.bundle is not None
        if self.bundle.tta == "flip":
            # The bundle was validated with flip test-time augmentation: mean of the image and its mirror.
            plain, mirrored = await asyncio.gather(
                self.batcher.infer(pixels), self.batcher.infer(np.ascontiguousarray(pixels[..., ::-1]))
            )
            fold_logits = (plain + mirrored) / 2
        else:
            fold_logits = await self.batcher.infer(pixels)
        return combine_fold_logits(fold_logits[:, None, :], self.calibration.temperature)

    def resolve_species(self, species: str) -> str:
        assert self.bundle is not None
        return resolve_species(species, self.bundle.targets)

    def prediction(self, output: EnsembleOutput) -> dict[str, Any]:
        assert self.bundle is not None
        return prediction_result(output, 0, self.bundle.classes, self.bundle.fold_ids)

    def verification(self, output: EnsembleOutput, species: str) -> dict[str, Any]:
        assert self.bundle is not None and self.calibration is not None
        return verification_result(output, 0, self.bundle.classes, species, self.calibration)

    def model_info(self) -> dict[str, Any]:
        assert self.backend is not None, "model_info called before the model loaded"
        assert self.bundle is not None and self.calibration is not None
        calibration = self.calibration
        return {
            "model_name": self.bundle.model_name,
            "classes": self.bundle.classes,
            "targets": self.bundle.targets,
            "folds": self.bundle.fold_ids,
            "input_size": self.bundle.preprocess.input_size,
            "backend": self.backend.name,
            "precision": self.backend.precision,
            "temperature": calibration.temperature,
            "thresholds": {species: calibration.threshold_for(species)[0] for species in self.bundle.targets},
            "threshold_source": calibration.source,
            "max_false_accept": calibration.max_false_accept,
        }
