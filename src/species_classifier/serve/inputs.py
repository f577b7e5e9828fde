"""The request-body parsing dependency shared by every image route.

`image_input` accepts three body forms and returns the preprocessed pixels:

- `application/json`: `{"image": "<base64>", "species": "..."}` (`species` only for verify).
- A raw image: `image/jpeg`, `image/png`, `image/webp`, `image/gif`, `image/bmp`,
  `image/tiff` or `application/x-image` (the SageMaker convention).
- `multipart/form-data`: a file field `image` and, for verify, a text field `species`.

Every problem becomes an HTTPException with a 4xx status and a message for the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, Request, status
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from species_classifier.serve.payloads import (
    JSON_TYPE,
    MULTIPART_TYPE,
    RAW_IMAGE_TYPES,
    ImagePayload,
    PayloadError,
    media_type,
    parse_json_payload,
    unsupported_type_error,
)
from species_classifier.serve.schemas import ImageRequest, VerifyRequest
from species_classifier.serve.service import ClassifierService

log = logging.getLogger(__name__)


@dataclass
class ImageInput:
    """A decoded, preprocessed upload and the species field that came with it, if any."""

    pixels: np.ndarray
    species: str | None
    content_type: str


def ready_service(request: Request) -> ClassifierService:
    """Return the app's service, or raise 503 while the model is loading or failed to load."""
    service: ClassifierService = request.app.state.service
    if service.state == "loading":
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the model is still loading; retry in a few seconds", {"Retry-After": "5"}
        )
    if service.state == "failed":
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the model failed to load: {service.error}")
    return service


async def _read_multipart(request: Request) -> ImagePayload:
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as error:
        raise PayloadError(400, f"invalid multipart body: {error.message}") from None
    try:
        upload = form.get("image")
        if upload is None:
            raise PayloadError(422, "multipart body has no 'image' file field")
        if not isinstance(upload, UploadFile):
            raise PayloadError(422, "multipart field 'image' must be a file upload, not a text field")
        species = form.get("species")
        if species is not None and not isinstance(species, str):
            raise PayloadError(422, "multipart field 'species' must be text, not a file")
        return ImagePayload(await upload.read(), species)
    finally:
        await form.close()


async def read_payload(request: Request) -> ImagePayload:
    """Read the image bytes and optional species from the body, by its Content-Type.

    Raises:
        PayloadError: The content type is unsupported or the body is malformed.
    """
    content_type = media_type(request.headers.get("content-type"))
    if content_type == JSON_TYPE:
        return parse_json_payload(await request.body())
    if content_type == MULTIPART_TYPE:
        return await _read_multipart(request)
    if content_type in RAW_IMAGE_TYPES:
        return ImagePayload(await request.body())
    raise unsupported_type_error(content_type)


async def image_input(request: Request) -> ImageInput:
    """FastAPI dependency: read the body in any accepted form, then decode and preprocess the image."""
    service = ready_service(request)
    try:
        payload = await read_payload(request)
        pixels = await service.decode_async(payload.data)
    except PayloadError as error:
        raise HTTPException(error.status_code, error.message) from None
    return ImageInput(pixels=pixels, species=payload.species, content_type=media_type(request.headers.get("content-type")))


def image_request_schema() -> dict:
    """OpenAPI requestBody of /invocations and /v1/predict, since `image_input` reads the body itself."""
    return _request_body(ImageRequest, species_field=False)


def verify_request_schema() -> dict:
    """OpenAPI requestBody of /v1/verify."""
    return _request_body(VerifyRequest, species_field=True)


def _request_body(model: type[ImageRequest], species_field: bool) -> dict:
    multipart_properties: dict = {"image": {"type": "string", "format": "binary"}}
    required = ["image"]
    if species_field:
        multipart_properties["species"] = {"type": "string"}
        required.append("species")
    content: dict = {JSON_TYPE: {"schema": model.model_json_schema()}}
    content[MULTIPART_TYPE] = {"schema": {"type": "object", "properties": multipart_properties, "required": required}}
    if not species_field:
        for raw_type in RAW_IMAGE_TYPES:
            content[raw_type] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}
