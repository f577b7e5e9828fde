"""Collect observations and photos from the iNaturalist open-data metadata files.

The files are read in two streaming passes (see ``tsv``): observations,
filtered by quality grade, date, region and taxon, then photos, kept when they
belong to a selected observation. Each photo_id of the photos file is spilled
to a temporary Parquet folder so that photos linked to more than one
observation can be found and dropped. The selected rows are cached as Parquet
under the cache folder, keyed by the query and the metadata file versions, so
a rerun of the same query reads no metadata at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from species_classifier.inat.metadata import MetadataFiles
from species_classifier.inat.query import ROLE_CONFUSER, ROLE_OTHER, ROLE_TARGET, CollectQuery, QueryError
from species_classifier.inat.regions import BoundingBox, PlaceRegion
from species_classifier.inat.selection import OVERSAMPLING, GroupSampler, PhotoSelectionStats, choose_photos, sample_keys
from species_classifier.inat.taxa import ROLE_CODES, TaxonLookup, TaxonResolutionError, TaxonTable
from species_classifier.inat.tsv import BlockReader, detach_strings, iter_frames, lazy_block, scan_schema

logger = logging.getLogger(__name__)

# Bump when the selection logic changes, so that older cached selections are not reused.
SELECTION_VERSION = 1

OBSERVATION_COLUMNS: dict[str, pl.DataType] = {
    "observation_uuid": pl.String(),
    "observer_id": pl.Int64(),
    "latitude": pl.Float64(),
    "longitude": pl.Float64(),
    "taxon_id": pl.Int64(),
    "quality_grade": pl.String(),
    "observed_on": pl.String(),
}
PHOTO_COLUMNS: dict[str, pl.DataType] = {
    "photo_id": pl.Int64(),
    "observation_uuid": pl.String(),
    "extension": pl.String(),
    "license": pl.String(),
    "position": pl.Int64(),
}
OBSERVER_COLUMNS: dict[str, pl.DataType] = {
    "observer_id": pl.Int64(),
    "login": pl.String(),
    "name": pl.String(),
}


@dataclass
class CollectStats:
    """Counts of a collect run; ``from_cache`` is True when the selection came from the cache and no metadata was read."""

    from_cache: bool = False
    selected_observations: int = 0
    duplicate_photos_dropped: int = 0
    photo_selection: PhotoSelectionStats = field(default_factory=PhotoSelectionStats)
    seconds: float = 0.0


@dataclass
class CollectResult:
    """Selected photos (SELECTION_COLUMNS plus observer_login and observer_name) and run statistics."""

    selection: pl.DataFrame
    stats: CollectStats


def selection_cache_key(query: CollectQuery, metadata: MetadataFiles) -> str:
    """Return the hash of the query and the metadata versions that names a cached selection."""
    payload = {
        "version": SELECTION_VERSION,
        "query": query.cache_token(),
        "metadata": metadata.versions,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _observation_predicate(query: CollectQuery) -> pl.Expr:
    grades = [variant for grade in query.quality_grades for variant in (grade, grade.capitalize(), grade.upper())]
    predicate = pl.col("taxon_id").is_not_null() & pl.col("quality_grade").is_in(grades)
    observed_on = pl.col("observed_on")
    if query.months:
        predicate &= observed_on.str.slice(5, 2).is_in([f"{month:02d}" for month in query.months])
    if query.observed_from:
        predicate &= observed_on >= query.observed_from.isoformat()
    if query.observed_to:
        predicate &= observed_on.str.slice(0, 10) <= query.observed_to.isoformat()

    regions = query.regions()
    if all(region is not None for region in regions):
        inside_any: pl.Expr | None = None
        for region in regions:
            box: BoundingBox = region.bounds  # type: ignore[union-attr]
            inside = pl.col("latitude").is_between(box.min_lat, box.max_lat) & pl.col("longitude").is_between(
                box.min_lon, box.max_lon
            )
            inside_any = inside if inside_any is None else inside_any | inside
        predicate &= inside_any  # type: ignore[operator]
    return predicate


def _region_mask(region: object, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    if region is None:
        return np.ones(len(latitude), dtype=bool)
    return region.contains(latitude, longitude)  # type: ignore[attr-defined]


def _scan_observations(
    path: Path, query: CollectQuery, lookup: TaxonLookup
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (target and confuser observations, other observations), each with role_code, group_id and sample_key."""
    named_sampler = GroupSampler(per_group=OVERSAMPLING * query.max_per_species if query.max_per_species else None)
    other_sampler = GroupSampler(
        per_group=OVERSAMPLING * query.other_per_species, total=OVERSAMPLING * query.other_max
    )
    predicate = _observation_predicate(query)
    for frame in iter_frames(path, OBSERVATION_COLUMNS, predicate, description="observations"):
        if frame.height == 0:
            continue
        roles, groups = lookup.lookup(frame["taxon_id"].to_numpy())
        if not roles.any():
            continue
        latitude = frame["latitude"].to_numpy()
        longitude = frame["longitude"].to_numpy()
        keep_named = np.zeros(len(roles), dtype=bool)
        keep_other = np.zeros(len(roles), dtype=bool)
        is_target = roles == ROLE_CODES[ROLE_TARGET]
        is_confuser = roles == ROLE_CODES[ROLE_CONFUSER]
        is_other = roles == ROLE_CODES[ROLE_OTHER]
        if is_target.any():
            keep_named |= is_target & _region_mask(query.target_region, latitude, longitude)
        if is_confuser.any():
            keep_named |= is_confuser & _region_mask(query.effective_confuser_region, latitude, longitude)
        if query.wants_other and is_other.any():
            keep_other = is_other & _region_mask(query.effective_other_region, latitude, longitude)
        if not (keep_named.any() or keep_other.any()):
            continue
        frame = frame.with_columns(
            pl.Series("role_code", roles, dtype=pl.Int8), pl.Series("group_id", groups, dtype=pl.Int64)
        ).drop("quality_grade")
        for sampler, keep in ((named_sampler, keep_named), (other_sampler, keep_other)):
            if keep.any():
                kept = detach_strings(frame.filter(pl.Series(keep)))
                sampler.add(kept.with_columns(sample_keys(kept["observation_uuid"], query.seed)))
    schema = {
        **{name: dtype for name, dtype in OBSERVATION_COLUMNS.items() if name != "quality_grade"},
        "role_code": pl.Int8(),
        "group_id": pl.Int64(),
        "sample_key": pl.UInt64(),
    }
    return named_sampler.result(schema), other_sampler.result(schema)


def _scan_photos(path: Path, observation_uuids: pl.Series, spill_dir: Path) -> pl.DataFrame:
    """Return the photos of the given observations; every photo_id read is spilled to ``spill_dir``.

    The photo ids go to raw int64 files, about 8 bytes per row of the
    photos file, so that memory does not grow with the file.
    """
    selected_uuids = observation_uuids.unique().implode()
    candidates: list[pl.DataFrame] = []
    with BlockReader(path, description="photos") as reader:
        schema = scan_schema(reader.header, PHOTO_COLUMNS, path)
        for index, block in enumerate(reader):
            frame = lazy_block(block, schema).select(list(PHOTO_COLUMNS)).collect()
            frame["photo_id"].fill_null(-1).to_numpy().astype(np.int64, copy=False).tofile(spill_dir / f"photo-ids-{index:06d}.bin")
            matching = frame.filter(pl.col("observation_uuid").is_in(selected_uuids))
            if matching.height:
                candidates.append(detach_strings(matching))
    if not candidates:
        return pl.DataFrame(schema=PHOTO_COLUMNS)
    return pl.concat(candidates)


def _photo_ids_linked_twice(candidate_ids: pl.Series, spill_dir: Path) -> pl.Series:
    """Return the candidate photo ids that occur in more than one row of the photos file.

    NOTE: two identical rows (same photo and same observation) would also
    count as two links; such rows have not been seen in the open data.
    """
    if candidate_ids.len() == 0:
        return pl.Series("photo_id", [], dtype=pl.Int64)
    candidate_set = candidate_ids.unique().implode()
    occurrences = []
    for spill_file in sorted(spill_dir.glob("photo-ids-*.bin")):
        photo_ids = pl.Series("photo_id", np.fromfile(spill_file, dtype=np.int64))
        occurrences.append(photo_ids.filter(photo_ids.is_in(candidate_set)))
    if not occurrences:
        return pl.Series("photo_id", [], dtype=pl.Int64)
    counts = pl.concat(occurrences).value_counts()
    return counts.filter(pl.col("count") > 1)["photo_id"]


def _read_observers(path: Path, observer_ids: pl.Series) -> pl.DataFrame:
    selected_ids = observer_ids.unique().implode()
    frames = [
        detach_strings(frame)
        for frame in iter_frames(path, OBSERVER_COLUMNS, pl.col("observer_id").is_in(selected_ids), description="observers")
    ]
    observers = pl.concat(frames) if frames else pl.DataFrame(schema=OBSERVER_COLUMNS)
    return observers.unique("observer_id").rename({"login": "observer_login", "name": "observer_name"})


def _check_regions(query: CollectQuery) -> None:
    for region in query.regions():
        if isinstance(region, PlaceRegion):
            raise QueryError(f"{region.describe()}: place ids need --source api; give a bounding box or GeoJSON file")


def collect_open_data(
    query: CollectQuery,
    metadata: MetadataFiles,
    cache_dir: Path | None = None,
    refresh: bool = False,
) -> CollectResult:
    """Select photos for ``query`` from the open-data metadata files.

    Args:
        query: What to select.
        metadata: Local paths of the four metadata files (see ``locate_metadata``).
        cache_dir: Folder for cached taxa and selections; ``None`` disables caching.
        refresh: Ignore a cached selection and scan the metadata again.

    Raises:
        TaxonResolutionError: A target or confuser name matches no active taxon.
        QueryError: The query uses a place id, which open data cannot filter by.
    """
    started = time.perf_counter()
    _check_regions(query)
    cache_path: Path | None = None
    if cache_dir is not None:
        cache_path = cache_dir / "selections" / f"selection-{selection_cache_key(query, metadata)}.parquet"
        if cache_path.is_file() and not refresh:
            return _read_cached(cache_path, started)

    taxa = TaxonTable.from_file(metadata.taxa, cache_dir, metadata.versions.get("taxa"))
    targets, target_problems = taxa.resolve(query.targets)
    confusers, confuser_problems = taxa.resolve(query.confusers)
    if target_problems or confuser_problems:
        raise TaxonResolutionError([*target_problems, *confuser_problems])
    lookup = taxa.build_lookup(targets, confusers, include_other=query.wants_other)
    logger.info("resolved %d target and %d confuser taxa; %d taxa have a role", len(targets), len(confusers), len(lookup.taxon_ids))

    named, other = _scan_observations(metadata.observations, query, lookup)
    observations = pl.concat([named, other], how="vertical_relaxed")
    group_names = taxa.names(observations["group_id"].unique().to_list())
    observations = observations.with_columns(
        pl.col("role_code").replace_strict({code: role for role, code in ROLE_CODES.items()}, return_dtype=pl.String).alias("role"),
        pl.col("group_id").replace_strict(group_names, default=None, return_dtype=pl.String).alias("species_name"),
    ).drop("role_code", "taxon_id")
    logger.info("selected %d observations (%d target or confuser, %d other candidates)", observations.height, named.height, other.height)

    with tempfile.TemporaryDirectory(prefix="photo-ids-", dir=cache_dir if cache_dir and cache_dir.is_dir() else None) as spill:
        photos = _scan_photos(metadata.photos, observations["observation_uuid"], Path(spill))
        linked_twice = _photo_ids_linked_twice(photos["photo_id"], Path(spill))
    if linked_twice.len():
        logger.warning("dropping %d photos linked to more than one observation", linked_twice.len())
    photos = photos.filter(~pl.col("photo_id").is_in(linked_twice.implode()))

    selection, photo_stats = choose_photos(observations, photos, query)
    observers = _read_observers(metadata.observers, selection["observer_id"])
    selection = selection.join(observers, on="observer_id", how="left")

    stats = CollectStats(
        from_cache=False,
        selected_observations=selection["observation_uuid"].n_unique(),
        duplicate_photos_dropped=linked_twice.len(),
        photo_selection=photo_stats,
        seconds=time.perf_counter() - started,
    )
    if cache_path is not None:
        _write_cached(cache_path, selection, stats)
    return CollectResult(selection, stats)


def _write_cached(path: Path, selection: pl.DataFrame, stats: CollectStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    selection.write_parquet(temporary)
    path.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(stats), indent=2))
    temporary.replace(path)


def _read_cached(path: Path, started: float) -> CollectResult:
    selection = pl.read_parquet(path)
    stats = CollectStats(from_cache=True, seconds=0.0)
    stats_path = path.with_suffix(".json")
    if stats_path.is_file():
        saved = json.loads(stats_path.read_text())
        stats.selected_observations = saved.get("selected_observations", 0)
        stats.duplicate_photos_dropped = saved.get("duplicate_photos_dropped", 0)
        stats.photo_selection = PhotoSelectionStats(**saved.get("photo_selection", {}))
    stats.seconds = time.perf_counter() - started
    logger.info("reused the cached selection %s", path)
    return CollectResult(selection, stats)
