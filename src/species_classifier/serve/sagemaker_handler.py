"""SageMaker PyTorch inference handler; `package` ships this file as `code/inference.py`.

The SageMaker PyTorch serving containers (framework 2.1 or newer, for torchvision's v2
transforms) call `model_fn` once with the unpacked model.tar.gz folder, then
`input_fn`, `predict_fn` and `output_fn` per request. Requests are the same as
`/invocations` on `serve`: a raw image (image/jpeg, image/png, image/webp,
application/x-image, ...) or JSON `{"image": "<base64>"}`. JSON with a `species` field
gets the `/v1/verify` result instead.

This package's inference modules are copied next to this file, under
`code/species_classifier/`, so the container needs only `code/requirements.txt`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# The containers import this file from code/; make the species_classifier copy beside it importable.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from species_classifier.model.bundle import Bundle, read_bundle  # noqa: E402
from species_classifier.serve.backends import PyTorchBackend  # noqa: E402
from species_classifier.serve.calibration import Calibration, load_calibration  # noqa: E402
from species_classifier.serve.ensemble import combine_fold_logits  # noqa: E402
from species_classifier.serve.payloads import (  # noqa: E402
    JSON_TYPE,
    RAW_IMAGE_TYPES,
    ImagePayload,
    PayloadError,
    decode_pixels,
    media_type,
    parse_json_payload,
    unsupported_type_error,
)
from species_classifier.serve.results import (  # noqa: E402
    UnknownSpeciesError,
    prediction_result,
    resolve_species,
    verification_result,
)
from species_classifier.serve.settings import DEFAULT_THRESHOLD, ServeSettings  # noqa: E402

log = logging.getLogger(__name__)

ACCEPTED_TYPES = (JSON_TYPE, *RAW_IMAGE_TYPES)
MAX_PIXELS = int(os.environ.get("SPECIES_CLASSIFIER_MAX_PIXELS", ServeSettings().max_pixels))

try:
    # Present in the SageMaker containers: its status code reaches the client instead of 500.
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:
    _ToolkitError = None


class InferenceRequestError(PayloadError if _ToolkitError is None else _ToolkitError):  # type: ignore[misc]
    """A client error, with the HTTP status the SageMaker model server responds with."""

    def __init__(self, status_code: int, message: str):
        if _ToolkitError is None:
            super().__init__(status_code, message)
        else:
            super().__init__(status_code, message, message)
        self.status_code = status_code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class LoadedModel:
    """The loaded model that `model_fn` returns: bundle, calibration and a PyTorch backend."""

    bundle: Bundle
    calibration: Calibration
    backend: PyTorchBackend


def model_fn(model_dir: str) -> LoadedModel:
    """Load the fold ensemble and calibration from the unpacked model.tar.gz."""
    bundle = read_bundle(model_dir)
    threshold = float(os.environ.get("SPECIES_CLASSIFIER_DEFAULT_THRESHOLD", DEFAULT_THRESHOLD))
    calibration = load_calibration(model_dir, bundle.classes, threshold)
    backend = PyTorchBackend(model_dir)
    log.info("Loaded %s with %d folds from %s", bundle.model_name, len(bundle.folds), model_dir)
    return LoadedModel(bundle=bundle, calibration=calibration, backend=backend)


def input_fn(request_body: bytes | str, content_type: str) -> ImagePayload:
    """Turn a request body into image bytes and an optional assigned species.

    Raises:
        InferenceRequestError: 400 for a malformed body, 415 for an unsupported content type.
    """
    kind = media_type(content_type)
    try:
        if kind == JSON_TYPE:
            return parse_json_payload(request_body)
        if kind in RAW_IMAGE_TYPES:
            data = request_body.encode("latin-1") if isinstance(request_body, str) else bytes(request_body)
            return ImagePayload(data)
        raise unsupported_type_error(kind, ACCEPTED_TYPES)
    except PayloadError as error:
        raise InferenceRequestError(error.status_code, error.message) from None


def predict_fn(payload: ImagePayload, model: LoadedModel) -> dict[str, Any]:
    """Classify the image; verify it against the species when the request named one.

    Raises:
        InferenceRequestError: 400 or 413 for an image that cannot be used, 422 for an
            unknown species.
    """
    bundle = model.bundle
    try:
        pixels = decode_pixels(payload.data, bundle.preprocess, MAX_PIXELS)
        species = resolve_species(payload.species, bundle.targets) if payload.species is not None else None
    except PayloadError as error:
        raise InferenceRequestError(error.status_code, error.message) from None
    except UnknownSpeciesError as error:
        raise InferenceRequestError(422, str(error)) from None

    fold_logits = model.backend.run(pixels[np.newaxis])
    if bundle.tta == "flip":
        fold_logits = (fold_logits + model.backend.run(np.ascontiguousarray(pixels[np.newaxis, ..., ::-1]))) / 2
    output = combine_fold_logits(fold_logits, model.calibration.temperature)
    if species is not None:
        return verification_result(output, 0, bundle.classes, species, model.calibration)
    return prediction_result(output, 0, bundle.classes, bundle.fold_ids)


def output_fn(prediction: dict[str, Any], accept: str) -> tuple[str, str]:
    """Serialize the result as JSON, the only response type.

    Raises:
        InferenceRequestError: 406 when the Accept header excludes JSON.
    """
    kinds = [media_type(part) for part in (accept or JSON_TYPE).split(",")]
    if not any(kind in (JSON_TYPE, "*/*", "application/*", "") for kind in kinds):
        raise InferenceRequestError(406, f"Accept {accept} is not supported; responses are {JSON_TYPE}")
    return json.dumps(prediction), JSON_TYPE


__all__ = ["input_fn", "model_fn", "output_fn", "predict_fn"]
