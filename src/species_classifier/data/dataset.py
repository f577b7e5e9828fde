"""Read a labelled dataset: a folder of species subfolders or a manifest CSV.

Both forms give the same table, one row per photo:

- `path`: absolute path of the image file
- `species_name`: scientific name as written in the folder or manifest (`_` read as space)
- `observation_id`: group key for splits; photos of one observation share it. Without
  an observation column, each photo is its own observation.
- `observer_id`: optional second group key (empty when unknown)
- `license`, `attribution`: copied from the manifest when present, for the report
- `role`: the manifest's `role` column when present (target, confuser, lookalike, other)
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from species_classifier.data.images import is_image_file
from species_classifier.data.labels import display_species_name

log = logging.getLogger(__name__)

COLUMNS = ["path", "species_name", "observation_id", "observer_id", "license", "attribution", "role"]
OBSERVATION_COLUMNS = ("observation_id", "observation_uuid")


class DatasetError(ValueError):
    """A dataset path or manifest that cannot be read."""


def read_dataset(source: str | Path) -> pd.DataFrame:
    """Read a species folder or manifest CSV into the table described in the module docstring."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"dataset not found: {source} (give a folder of species subfolders or a manifest .csv)")
    if source.is_dir():
        table = _read_folder(source)
    elif source.suffix.lower() == ".csv":
        table = _read_manifest(source)
    else:
        raise DatasetError(f"{source}: expected a folder of species subfolders or a manifest .csv file")

    if table.empty:
        raise DatasetError(f"{source}: no images found")
    table = table.drop_duplicates(subset="path", keep="first").reset_index(drop=True)
    log.info("Read %d images of %d species from %s", len(table), table["species_name"].nunique(), source)
    return table


def _read_folder(root: Path) -> pd.DataFrame:
    rows = []
    for species_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        species = display_species_name(species_dir.name)
        for path in sorted(species_dir.rglob("*")):
            if path.is_file() and is_image_file(path):
                rows.append({"path": str(path.resolve()), "species_name": species})
    if not rows:
        raise DatasetError(
            f"{root}: no images in species subfolders; expected {root}/<Genus_species>/<photo>.jpg"
        )
    table = pd.DataFrame(rows)
    table["observation_id"] = table["path"]
    table["observer_id"] = ""
    table["license"] = ""
    table["attribution"] = ""
    table["role"] = ""
    return table[COLUMNS]


def _read_manifest(manifest: Path) -> pd.DataFrame:
    try:
        raw = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{manifest}: cannot parse as CSV ({error})") from None

    missing = [column for column in ("path", "species_name") if column not in raw.columns]
    if missing:
        raise DatasetError(
            f"{manifest}: missing column(s) {', '.join(missing)}; a manifest needs at least "
            f"'path,species_name' (found: {', '.join(raw.columns)})"
        )

    no_path = raw["path"].str.strip() == ""
    if no_path.any():
        log.warning(
            "%s: %d of %d rows have no path (photos not downloaded yet? run `species-classifier download`); "
            "they are skipped",
            manifest, int(no_path.sum()), len(raw),
        )
        raw = raw[~no_path]
    no_species = raw["species_name"].str.strip() == ""
    if no_species.any():
        first = raw.loc[no_species, "path"].iloc[0]
        raise DatasetError(f"{manifest}: {int(no_species.sum())} rows have an empty species_name (first: {first})")

    base = manifest.resolve().parent
    table = pd.DataFrame({
        "path": [str((base / p.strip()).resolve()) for p in raw["path"]],
        "species_name": [display_species_name(s) for s in raw["species_name"]],
    })
    observation_column = next((c for c in OBSERVATION_COLUMNS if c in raw.columns), None)
    if observation_column:
        observations = raw[observation_column].str.strip().to_numpy()
        # A photo without an observation id forms its own group.
        table["observation_id"] = [obs if obs else path for obs, path in zip(observations, table["path"])]
    else:
        table["observation_id"] = table["path"]
    for column in ("observer_id", "license", "attribution", "role"):
        table[column] = raw[column].str.strip().to_numpy() if column in raw.columns else ""
    return table[COLUMNS]
