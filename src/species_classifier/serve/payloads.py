"""Request payloads to pixels, without a web framework: content types, base64, JSON, image decoding.

Shared by the FastAPI dependency (`inputs`) and the SageMaker handler. Every problem
raises `PayloadError` with the HTTP status for the client and a message that states
what to fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from species_classifier.data.images import ImageLoadError, load_image_bytes
from species_classifier.data.transforms import PreprocessConfig, preprocess_image

RAW_IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "application/x-image",
    # The SageMaker SDK's default serializer for raw bytes; the bytes are still decoded and checked.
    "application/octet-stream",
)
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
ACCEPTED_TYPES = (JSON_TYPE, *RAW_IMAGE_TYPES, MULTIPART_TYPE)

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class PayloadError(ValueError):
    """A request payload that cannot be used, with the HTTP status of the error response."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass
class ImagePayload:
    """Image bytes and the assigned species that came with them, if any."""

    data: bytes
    species: str | None = None


def media_type(content_type: str | None) -> str:
    """Return the media type of a Content-Type header, lowercased, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def unsupported_type_error(content_type: str, accepted: tuple[str, ...] = ACCEPTED_TYPES) -> PayloadError:
    shown = content_type or "missing"
    return PayloadError(415, f"Content-Type {shown} is not supported; send one of {', '.join(accepted)}")


def decode_base64_image(text: str) -> bytes:
    """Decode a base64 image string; a data: URL prefix, line breaks, missing padding and URL-safe characters are fine.

    Raises:
        PayloadError: 400 when the text is empty or not valid base64.
    """
    payload = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    if not payload:
        raise PayloadError(400, "field 'image' is empty; send the image file as base64")
    payload += "=" * (-len(payload) % 4)
    alphabet = b"-_" if "-" in payload or "_" in payload else None
    try:
        return base64.b64decode(payload, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(
            400, "field 'image' is not valid base64; encode the image file's bytes with standard or URL-safe base64"
        ) from None


def parse_json_payload(body: bytes | str) -> ImagePayload:
    """Parse `{"image": "<base64>", "species": "..."}`; `species` is optional here.

    Raises:
        PayloadError: 400 for an empty body, invalid JSON or invalid base64; 422 for a
            missing or mistyped field.
    """
    if not body:
        raise PayloadError(400, 'request body is empty; send {"image": "<base64>"}')
    try:
        values = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PayloadError(400, f"request body is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise PayloadError(422, 'JSON body must be an object like {"image": "<base64>"}')
    image = values.get("image")
    if image is None:
        raise PayloadError(422, 'JSON body has no field \'image\'; send {"image": "<base64>"}')
    if not isinstance(image, str):
        raise PayloadError(422, "field 'image' must be a base64 string")
    species = values.get("species")
    if species is not None and not isinstance(species, str):
        raise PayloadError(422, "field 'species' must be a string")
    return ImagePayload(decode_base64_image(image), species)


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than the server accepts."""


def check_pixel_count(data: bytes, max_pixels: int) -> None:
    """Reject an image whose header declares more than `max_pixels` pixels, before decoding it.

    Data that Pillow cannot identify passes; `load_image_bytes` then reports why.

    Raises:
        ImageTooLargeError: The image is larger than `max_pixels`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:
        # Pillow refuses to open images over twice its own MAX_IMAGE_PIXELS at all.
        raise ImageTooLargeError("upload", f"{error}; send a smaller image") from None
    except Exception:  # not an image, or a broken header: load_image_bytes reports which
        return
    if width * height > max_pixels:
        raise ImageTooLargeError(
            "upload", f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels; send a smaller image"
        )


def decode_pixels(data: bytes, config: PreprocessConfig, max_pixels: int) -> np.ndarray:
    """Decode image bytes and preprocess them into a float32 (3, S, S) array.

    JPEGs decode in draft mode at the smallest 1/2, 1/4 or 1/8 scale that still covers
    the model's resize size, which keeps decoding large phone photos cheap.

    Raises:
        PayloadError: 400 when the data is empty, not an image or truncated; 413 when
            the image has more than `max_pixels` pixels.
    """
    if not data:
        raise PayloadError(400, "the image is empty (0 bytes); send a JPEG, PNG or WebP photo")
    try:
        check_pixel_count(data, max_pixels)
        image = load_image_bytes(data, "upload", draft_size=config.resize_size, max_pixels=max_pixels)
    except ImageTooLargeError as error:
        raise PayloadError(413, error.reason) from None
    except ImageLoadError as error:
        raise PayloadError(400, f"invalid image: {error.reason}") from None
    return preprocess_image(image, config).numpy()
