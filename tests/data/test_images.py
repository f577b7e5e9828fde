"""Image loading: every mode becomes RGB, EXIF orientation applies, broken files raise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from species_classifier.data.images import ImageLoadError, load_image, load_image_bytes, to_rgb


def _save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def test_exif_orientation_applied(tmp_path: Path):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    assert loaded.mode == "RGB"


def test_rgba_composited_on_white(tmp_path: Path):
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    loaded = load_image(_save(image, tmp_path / "alpha.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((5, 5)) == (255, 255, 255)


def test_palette_transparency_composited(tmp_path: Path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    loaded = load_image(_save(image, tmp_path / "palette.png", transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (0, 255, 0)


def test_16bit_greyscale_scaled(tmp_path: Path):
    array = np.full((6, 6), 65535, dtype=np.uint16)
    array[0, 0] = 0
    array[0, 1] = 32768
    loaded = load_image(_save(Image.fromarray(array), tmp_path / "deep.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.getpixel((1, 0)) == (128, 128, 128)
    assert loaded.getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg_converted(tmp_path: Path):
    image = Image.new("CMYK", (10, 10), (0, 255, 255, 0))
    loaded = load_image(_save(image, tmp_path / "cmyk.jpg"))
    red, green, blue = loaded.getpixel((5, 5))
    assert loaded.mode == "RGB"
    assert red > 200
    assert green < 60
    assert blue < 60


def test_greyscale_converted():
    assert to_rgb(Image.new("L", (3, 3), 77)).getpixel((1, 1)) == (77, 77, 77)


def test_truncated_jpeg_rejected(tmp_path: Path, species_dev: Path):
    data = next((species_dev / "Lycorma_delicatula").glob("*.jpg")).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_empty_file_rejected(tmp_path: Path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(path)


def test_non_image_rejected(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a photo")
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        load_image(path)


def test_missing_file_rejected(tmp_path: Path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "absent.jpg")


def test_pixel_limit_rejects_bomb():
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image_bytes(buffer.getvalue(), max_pixels=10_000_000)


def test_draft_mode_keeps_requested_size(species_dev: Path):
    path = next((species_dev / "Lycorma_delicatula").glob("*.jpg"))
    full = load_image(path)
    reduced = load_image(path, draft_size=64)
    assert min(reduced.size) >= 64
    assert reduced.size[0] <= full.size[0]
