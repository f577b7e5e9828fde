"""The manifest CSV shared by collect, download and train.

Columns: photo_id, observation_uuid, observer_id, species_name, taxon_id, role
(target/confuser/other), latitude, longitude, observed_on (YYYY-MM-DD),
license, attribution, url and path. ``path`` is empty after collect; download
fills it with the photo's location relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from species_classifier.inat.licenses import format_attribution, photo_url, with_photo_size
from species_classifier.inat.query import ROLES

MANIFEST_COLUMNS: tuple[str, ...] = (
    "photo_id",
    "observation_uuid",
    "observer_id",
    "species_name",
    "taxon_id",
    "role",
    "latitude",
    "longitude",
    "observed_on",
    "license",
    "attribution",
    "url",
    "path",
)


class ManifestError(ValueError):
    """Raised when a manifest file lacks columns or has invalid rows."""


def build_manifest(selection: pl.DataFrame, size: str, photo_base_url: str) -> pl.DataFrame:
    """Turn selected rows into manifest rows: attribution, photo URL of ``size`` under ``photo_base_url``, empty path.

    ``selection`` has the columns of ``selection.SELECTION_COLUMNS`` plus
    observer_login and observer_name. A row may instead carry a ``url`` (the
    web API gives URLs on other hosts), which is kept with its size part set to ``size``.
    """
    rows = selection.to_dicts()
    records = []
    for row in rows:
        url = with_photo_size(row["url"], size) if row.get("url") else photo_url(photo_base_url, row["photo_id"], size, row["extension"])
        records.append(
            {
                "photo_id": str(row["photo_id"]),
                "observation_uuid": row["observation_uuid"],
                "observer_id": "" if row["observer_id"] is None else str(row["observer_id"]),
                "species_name": row["species_name"] or "",
                "taxon_id": str(row["taxon_id"]),
                "role": row["role"],
                "latitude": "" if row["latitude"] is None else repr(float(row["latitude"])),
                "longitude": "" if row["longitude"] is None else repr(float(row["longitude"])),
                "observed_on": row["observed_on"] or "",
                "license": row["license"],
                "attribution": format_attribution(row.get("observer_name"), row.get("observer_login"), row["license"]),
                "url": url,
                "path": "",
            }
        )
    return pl.DataFrame(records, schema={column: pl.String for column in MANIFEST_COLUMNS}, orient="row")


def _atomic_write_csv(path: Path, header: Iterable[str], rows: Iterable[Mapping[str, str] | list[str]]) -> None:
    """Write a CSV next to ``path`` and move it into place with os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as handle:
            header = list(header)
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                writer.writerow([row.get(column, "") for column in header] if isinstance(row, Mapping) else row)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_manifest(manifest: pl.DataFrame, path: Path) -> None:
    """Write the manifest CSV atomically (temporary file and os.replace)."""
    _atomic_write_csv(path, MANIFEST_COLUMNS, manifest.select(MANIFEST_COLUMNS).iter_rows())


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Read a manifest as a list of rows of strings, checking the columns and roles."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in MANIFEST_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path} lacks the column(s) {', '.join(missing)}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if row["role"] not in ROLES:
            raise ManifestError(f"{path} line {number}: invalid role {row['role']!r}; expected one of {', '.join(ROLES)}")
    return rows


def write_manifest_rows(rows: list[dict[str, str]], path: Path) -> None:
    """Rewrite a manifest from rows as returned by read_manifest, atomically."""
    _atomic_write_csv(path, MANIFEST_COLUMNS, rows)


def write_failures(failures: list[tuple[str, str, str]], path: Path) -> None:
    """Write the download failures report: a CSV with photo_id, url and error."""
    _atomic_write_csv(path, ("photo_id", "url", "error"), failures)


def summarize(manifest: pl.DataFrame) -> pl.DataFrame:
    """Count photos, observations and observers per species and role, targets first."""
    if manifest.height == 0:
        return pl.DataFrame(
            schema={"role": pl.String, "species_name": pl.String, "taxon_id": pl.String, "photos": pl.UInt32, "observations": pl.UInt32, "observers": pl.UInt32}
        )
    order = pl.col("role").replace_strict({"target": 0, "confuser": 1, "other": 2}, default=3, return_dtype=pl.Int8)
    return (
        manifest.group_by("role", "species_name", "taxon_id")
        .agg(
            pl.len().alias("photos"),
            pl.col("observation_uuid").n_unique().alias("observations"),
            pl.col("observer_id").n_unique().alias("observers"),
        )
        .sort([order, pl.col("photos"), pl.col("species_name")], descending=[False, True, False])
    )


def format_summary(summary: pl.DataFrame, max_other_rows: int = 15) -> str:
    """Render the per-species summary as a plain-text table; ``other`` species beyond ``max_other_rows`` are folded into one line."""
    headers = ("role", "species", "taxon_id", "photos", "observations", "observers")

    rows: list[tuple[str, ...]] = []
    other_rows = 0
    folded = [0, 0, 0]
    for record in summary.iter_rows(named=True):
        if record["role"] == "other":
            other_rows += 1
            if other_rows > max_other_rows:
                folded[0] += 1
                folded[1] += record["photos"]
                folded[2] += record["observations"]
                continue
        rows.append(
            (
                record["role"],
                record["species_name"],
                str(record["taxon_id"]),
                str(record["photos"]),
                str(record["observations"]),
                str(record["observers"]),
            )
        )

    if folded[0]:
        rows.append(("other", f"... {folded[0]} more species", "", str(folded[1]), str(folded[2]), ""))
    totals = summary.group_by("role").agg(pl.col("photos").sum()).to_dicts() if summary.height else []

    widths = [max(len(header), *(len(row[index]) for row in rows)) if rows else len(header) for index, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths))]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append("  ".join(value.ljust(width) if index < 2 else value.rjust(width) for index, (value, width) in enumerate(zip(row, widths))))
    total_text = ", ".join(f"{item['role']}: {item['photos']}" for item in sorted(totals, key=lambda item: ROLES.index(item["role"])))
    lines.append(f"photos per role: {total_text or 'none'}")
    return "\n".join(lines)
