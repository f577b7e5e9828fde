"""Shared fixtures: real photos from the shared dev set and small datasets built from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from species_classifier.cli import main
from tests.fast_training import FAST, TARGETS

REPO = Path(__file__).resolve().parents[1]
SPECIES_DEV = REPO.parent / "shared" / "datasets" / "species-dev"


@pytest.fixture(scope="session")
def species_dev() -> Path:
    """The shared folder of real photos (one subfolder per species)."""
    if not (SPECIES_DEV / "Lycorma_delicatula").is_dir():
        pytest.skip(f"real photos not found at {SPECIES_DEV}")
    return SPECIES_DEV


def _copy_photos(source: Path, destination: Path, count: int) -> list[Path]:
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for photo in sorted(source.glob("*.jpg"))[:count]:
        target = destination / photo.name
        shutil.copyfile(photo, target)
        copied.append(target)
    return copied


@pytest.fixture(scope="session")
def small_dataset(species_dev: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder dataset of 44 real photos: 16 spotted lanternfly, 8 red maple, 20 other species."""
    root = tmp_path_factory.mktemp("small-dataset")
    _copy_photos(species_dev / "Lycorma_delicatula", root / "Lycorma_delicatula", 16)
    _copy_photos(species_dev / "Acer_rubrum", root / "Acer_rubrum", 8)
    others = ["Acer_saccharum", "Acer_saccharinum", "Zenaida_asiatica", "Columba_livia", "Abies_concolor",
              "Accipiter_gentilis", "Acer_negundo", "Acer_palmatum"]
    for name in others:
        _copy_photos(species_dev / name, root / name, 3)
    return root




@pytest.fixture(scope="session")
def dataset_with_bad_files(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("with-bad") / "photos"
    shutil.copytree(small_dataset, root)
    good = next((root / "Lycorma_delicatula").glob("*.jpg")).read_bytes()
    (root / "Lycorma_delicatula" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "Acer_saccharum" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="session")
def trained_run(dataset_with_bad_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", str(dataset_with_bad_files), "--targets", TARGETS, "--out", str(out), *FAST])
    assert code == 0
    return out
