"""Source-independent selection steps: sampling keys, per-species caps and the choice of photos.

Both sources (open data and web API) produce two frames and hand them here:

* observations: observation_uuid, observer_id, latitude, longitude,
  observed_on, role (``target``/``confuser``/``other``), group_id (the
  rolled-up taxon id) and species_name;
* photos: photo_id, observation_uuid, extension, license, position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from species_classifier.inat.query import ROLE_OTHER, CollectQuery

SELECTION_COLUMNS: tuple[str, ...] = (
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
    "extension",
)

# Capped classes keep this many times their cap while scanning, because some
# sampled observations are later lost to the photo filters.
OVERSAMPLING = 2
# Buffered rows that trigger a trim of a GroupSampler.
_TRIM_ROWS = 200_000


def sample_keys(observation_uuids: pl.Series, seed: int) -> pl.Series:
    """Return a reproducible pseudo-random UInt64 key per observation UUID.

    The key depends only on the UUID text and ``seed`` (splitmix64 over the
    first 16 hexadecimal digits), so samples do not change between runs,
    Polars versions or sources. Strings that are not UUIDs get key 0.
    """
    hexadecimal = observation_uuids.str.replace_all("-", "", literal=True)
    high = hexadecimal.str.slice(0, 8).str.to_integer(base=16, strict=False).fill_null(0).cast(pl.UInt64).to_numpy()
    low = hexadecimal.str.slice(8, 8).str.to_integer(base=16, strict=False).fill_null(0).cast(pl.UInt64).to_numpy()
    with np.errstate(over="ignore"):
        value = (high << np.uint64(32)) | low
        value = value + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        value = value ^ (value >> np.uint64(31))
    return pl.Series("sample_key", value, dtype=pl.UInt64)


class GroupSampler:
    """Keep a bounded, reproducible sample of rows per group while rows stream in.

    Each group keeps the ``per_group`` rows with the smallest ``sample_key``.
    With ``total``, rows whose rank within their group can no longer be among
    the first ``total`` rows ordered by (rank, key) are dropped as well. This
    is safe because once ``total`` rows have rank at most r, a row ranked
    above r stays above r.
    With neither limit, every row is kept.
    """

    def __init__(self, per_group: int | None = None, total: int | None = None) -> None:
        self.per_group = per_group
        self.total = total
        self._parts: list[pl.DataFrame] = []
        self._buffered = 0

    def add(self, frame: pl.DataFrame) -> None:
        """Add rows with ``group_id`` and ``sample_key`` columns."""
        if frame.height == 0:
            return
        self._parts.append(frame)
        self._buffered += frame.height
        if (self.per_group is not None or self.total is not None) and self._buffered > _TRIM_ROWS:
            self._trim()

    def _trim(self) -> None:
        frame = pl.concat(self._parts, how="vertical_relaxed")
        frame = frame.with_columns(
            pl.col("sample_key").rank("ordinal").over("group_id").alias("_rank")
        )
        if self.per_group is not None:
            frame = frame.filter(pl.col("_rank") <= self.per_group)
        if self.total is not None and frame.height > self.total:
            counts = frame.group_by("_rank").len().sort("_rank")
            cumulative = counts["len"].cum_sum()
            reached = counts.filter(cumulative >= self.total)
            if reached.height:
                frame = frame.filter(pl.col("_rank") <= reached["_rank"][0])
        frame = frame.drop("_rank")
        self._parts = [frame]
        self._buffered = frame.height

    def result(self, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
        if not self._parts:
            return pl.DataFrame(schema=schema) if schema else pl.DataFrame()
        if self.per_group is not None or self.total is not None:
            self._trim()
        return pl.concat(self._parts, how="vertical_relaxed")


@dataclass
class PhotoSelectionStats:
    """Counts of photos removed at each selection step."""

    candidate_photos: int = 0
    dropped_by_license: int = 0
    dropped_beyond_photos_per_observation: int = 0
    dropped_by_species_cap: int = 0


def choose_photos(
    observations: pl.DataFrame, photos: pl.DataFrame, query: CollectQuery
) -> tuple[pl.DataFrame, PhotoSelectionStats]:
    """Join photos to observations and apply the licence filter, photos per observation and caps.

    ``photos`` must already be free of photos linked to several observations.
    Target and confuser photos are capped at ``query.max_per_species`` per
    taxon, sampled by observation key. ``other`` photos are capped at
    ``query.other_per_species`` per species and ``query.other_max`` in total,
    taking the first-ranked photo of every species before any second one.
    Returns the rows in the order of SELECTION_COLUMNS, sorted by role,
    species and photo id.
    """
    stats = PhotoSelectionStats()
    joined = photos.join(observations, on="observation_uuid", how="inner")
    stats.candidate_photos = joined.height

    licensed = joined.with_columns(pl.col("license").str.to_uppercase()).filter(pl.col("license").is_in(list(query.licenses)))
    stats.dropped_by_license = joined.height - licensed.height

    ranked = licensed.with_columns(
        pl.struct("position", "photo_id").rank("ordinal").over("observation_uuid").alias("_photo_rank")
    )
    per_observation = ranked.filter(pl.col("_photo_rank") <= query.photos_per_observation)
    stats.dropped_beyond_photos_per_observation = ranked.height - per_observation.height

    with_rank = per_observation.with_columns(
        pl.struct("sample_key", "_photo_rank", "photo_id").rank("ordinal").over("group_id").alias("_species_rank")
    )
    named = with_rank.filter(pl.col("role") != ROLE_OTHER)
    if query.max_per_species is not None:
        named = named.filter(pl.col("_species_rank") <= query.max_per_species)
    other = with_rank.filter(pl.col("role") == ROLE_OTHER)
    if query.wants_other:
        other = (
            other.filter(pl.col("_species_rank") <= query.other_per_species)
            .sort(["_species_rank", "sample_key", "photo_id"])
            .head(query.other_max)
        )
    else:
        other = other.head(0)
    selected = pl.concat([named, other], how="vertical_relaxed")
    stats.dropped_by_species_cap = per_observation.height - selected.height

    selected = selected.rename({"group_id": "taxon_id"}).select(
        pl.col("photo_id").cast(pl.Int64),
        pl.col("observation_uuid").cast(pl.String),
        pl.col("observer_id").cast(pl.Int64),
        pl.col("species_name").cast(pl.String),
        pl.col("taxon_id").cast(pl.Int64),
        pl.col("role").cast(pl.String),
        pl.col("latitude").cast(pl.Float64),
        pl.col("longitude").cast(pl.Float64),
        pl.col("observed_on").cast(pl.String),
        pl.col("license").cast(pl.String),
        pl.col("extension").cast(pl.String),
    )
    order = pl.col("role").replace_strict({"target": 0, "confuser": 1, "other": 2}, default=3, return_dtype=pl.Int8)
    selected = selected.sort([order, "species_name", "photo_id"])
    return selected, stats
