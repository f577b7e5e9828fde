"""Image loading shared by train, evaluate, predict and serve.

One rule turns every file into an RGB image:

1. EXIF orientation is applied, so pixels face the way the camera showed them.
2. Transparent images (RGBA, LA, palette with a transparent colour) are composited
   onto a white background, because most iNaturalist cut-outs are shown on white.
3. 16-bit and 32-bit greyscale (modes I;16, I, F) are scaled to 0-255 from their full
   range of the type, then treated as greyscale.
4. Everything else (L, 1, P, CMYK, YCbCr, LAB, HSV) goes through Pillow's `convert("RGB")`.

A file that cannot be fully decoded raises `ImageLoadError`; callers exclude it and
report it. Nothing is ever replaced by a blank stand-in image.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated file must fail loudly, not decode to grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Pillow's own decompression-bomb limit (about 179 megapixels) is the default.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageLoadError(ValueError):
    """An image file or upload that cannot be decoded, with the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to RGB by the module's rule."""
    image = ImageOps.exif_transpose(image)

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        elif image.mode == "I":
            scale = float(max(int(array.max()), 1)) if array.max() > 65535 else 65535.0
        else:
            scale = float(array.max()) if array.max() > 1.0 else 1.0
        array = np.clip(array.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")

    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")

    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _decode(image: Image.Image, source: str, draft_size: int | None, max_pixels: int | None) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(source, "image has zero width or height")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            source,
            f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels",
        )
    if draft_size and image.format == "JPEG":
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale while staying at least
        # draft_size on both sides, which cuts decode time for large photos.
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return to_rgb(image)


def load_image(
    path: str | Path,
    draft_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Load an image file as RGB.

    Args:
        path: Image file.
        draft_size: For JPEGs, allow a reduced-size decode that keeps both sides at
            least this many pixels. None decodes at full size.
        max_pixels: Reject images with more pixels than this (decompression bombs).

    Raises:
        ImageLoadError: The file is missing, empty, not an image, truncated or too large.
    """
    source = str(path)
    try:
        if Path(path).stat().st_size == 0:
            raise ImageLoadError(source, "file is empty")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _decode(image, source, draft_size, max_pixels)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(source, "file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(source, f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(source, f"cannot decode image ({error})") from None


def load_image_bytes(
    data: bytes,
    source: str = "upload",
    draft_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode image bytes (an upload) as RGB; see `load_image` for the errors."""
    if not data:
        raise ImageLoadError(source, "image data is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return _decode(image, source, draft_size, max_pixels)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(source, f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(source, f"cannot decode image ({error})") from None
