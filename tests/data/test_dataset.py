"""Dataset input: folders and manifests give the same table; bad manifests get clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from species_classifier.data.dataset import DatasetError, read_dataset


def test_folder_and_manifest_agree(small_dataset: Path, tmp_path: Path):
    from_folder = read_dataset(small_dataset)
    manifest = tmp_path / "manifest.csv"
    rows = pd.DataFrame({
        "path": [str(Path(p).relative_to(small_dataset.parent)) for p in from_folder["path"]],
        "species_name": [name.replace(" ", "_") for name in from_folder["species_name"]],
    })
    manifest = small_dataset.parent / "manifest.csv"
    rows.to_csv(manifest, index=False)
    from_manifest = read_dataset(manifest)
    assert sorted(from_folder["path"]) == sorted(from_manifest["path"])
    merged = from_folder.merge(from_manifest, on="path", suffixes=("_folder", "_manifest"))
    assert (merged["species_name_folder"] == merged["species_name_manifest"]).all()


def test_manifest_observation_column_used(tmp_path: Path, species_dev: Path):
    photos = sorted((species_dev / "Lycorma_delicatula").glob("*.jpg"))[:3]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({
        "path": [str(p) for p in photos],
        "species_name": ["Lycorma delicatula"] * 3,
        "observation_uuid": ["obs-1", "obs-1", ""],
        "observer_id": ["7", "7", "8"],
        "license": ["CC-BY", "CC-BY", "CC0"],
    }).to_csv(manifest, index=False)
    table = read_dataset(manifest)
    assert list(table["observation_id"][:2]) == ["obs-1", "obs-1"]
    assert table["observation_id"][2] == str(photos[2])
    assert list(table["observer_id"]) == ["7", "7", "8"]
    assert list(table["license"]) == ["CC-BY", "CC-BY", "CC0"]


def test_manifest_missing_column_named(tmp_path: Path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,species\na.jpg,Acer rubrum\n")
    with pytest.raises(DatasetError, match="missing column.*path, species_name"):
        read_dataset(manifest)


def test_manifest_rows_without_path_skipped(tmp_path: Path, species_dev: Path):
    photo = next((species_dev / "Acer_rubrum").glob("*.jpg"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,species_name\n{photo},Acer rubrum\n,Acer rubrum\n")
    assert len(read_dataset(manifest)) == 1


def test_missing_dataset_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nowhere")


def test_folder_without_images_error(tmp_path: Path):
    (tmp_path / "Acer_rubrum").mkdir()
    (tmp_path / "Acer_rubrum" / "readme.txt").write_text("no photos")
    with pytest.raises(DatasetError, match="no images"):
        read_dataset(tmp_path)
