"""Generate a synthetic iNaturalist open-data dump in the real file format.

The four files (observations, photos, taxa, observers) are gzip-compressed,
tab-separated, with a header row and no quoting, as in
``s3://inaturalist-open-data/``. Observations use the current schema, which
includes ``anomaly_score``.

Observations and photos are written by DuckDB ``COPY ... (COMPRESSION gzip)``
straight from ``range()``, so no table is held in memory. Each observation's
UUID is derived from its row number with ``md5``, which lets the photos query
recompute it instead of joining. 20 million observations produce 1.1 GB
(observations) and 1.5 GB (photos) of gzip files, which took 10 minutes on
the 2-core development machine while other jobs were running.

Usage::

    python benchmarks/collect/generate_dump.py --observations 20000000 --out benchmarks/out/dump
"""

from __future__ import annotations

import argparse
import csv
import gzip
import logging
import random
import time
from pathlib import Path

import duckdb

logger = logging.getLogger(__name__)

LIFE_TAXON_ID = 48460
FIRST_GENUS_ID = 20_000
FIRST_SPECIES_ID = 100_000
FIRST_INFRASPECIFIC_ID = 300_000
GENERA = 20_000
SPECIES = 100_000
INFRASPECIFIC_TAXA = 10_000
INACTIVE_FRACTION = 0.01

# Real names placed among the most frequent synthetic species, so that the
# benchmark query selects realistic numbers of rows. Each entry is
# (genus, epithet, infraspecific rank or None, infraspecific epithet).
NAMED_SPECIES = [
    ("Lycorma", "delicatula"),
    ("Zenaida", "macroura"),
    ("Acer", "rubrum"),
    ("Erigeron", "canadensis"),
    ("Acer", "saccharum"),
    ("Acer", "saccharinum"),
    ("Acer", "platanoides"),
]
NAMED_INFRASPECIFIC = [
    ("Zenaida macroura", "subspecies", "carolinensis"),
    ("Erigeron canadensis", "variety", "glabratus"),
    ("Acer saccharum", "subspecies", "nigrum"),
]

LICENSE_WEIGHTS = [
    ("CC-BY-NC", 0.70),
    ("CC-BY", 0.12),
    ("CC0", 0.05),
    ("CC-BY-NC-SA", 0.04),
    ("CC-BY-NC-ND", 0.04),
    ("CC-BY-SA", 0.03),
    ("CC-BY-ND", 0.02),
]


def _uuid_sql(seed_expression: str) -> str:
    """Return SQL that formats ``md5(seed_expression)`` as a version-4 style UUID string."""
    h = f"md5({seed_expression})"
    return (
        f"substr({h},1,8)||'-'||substr({h},9,4)||'-4'||substr({h},14,3)||'-a'"
        f"||substr({h},18,3)||'-'||substr({h},21,12)"
    )


def _license_case_sql(random_column: str) -> str:
    parts = []
    cumulative = 0.0
    for license_code, weight in LICENSE_WEIGHTS[:-1]:
        cumulative += weight
        parts.append(f"WHEN {random_column} < {cumulative:.4f} THEN '{license_code}'")
    return "CASE " + " ".join(parts) + f" ELSE '{LICENSE_WEIGHTS[-1][0]}' END"


def write_taxa(path: Path, seed: int) -> None:
    """Write taxa.csv.gz: a tree of kingdoms, genera, species and infraspecific taxa.

    Species ids run from ``FIRST_SPECIES_ID``; the named real species take the
    lowest ids, which observations pick most often.
    """
    rng = random.Random(seed)
    rows: list[tuple[int, str, int, str, str, str]] = [(LIFE_TAXON_ID, "", 100, "stateofmatter", "Life", "true")]
    kingdoms = [(1, "Animalia"), (47126, "Plantae"), (47170, "Fungi")]
    for kingdom_id, kingdom_name in kingdoms:
        rows.append((kingdom_id, f"{LIFE_TAXON_ID}", 70, "kingdom", kingdom_name, "true"))

    named_genera = sorted({genus for genus, _ in NAMED_SPECIES})
    genus_names = named_genera + [f"Genus{index:05d}" for index in range(GENERA - len(named_genera))]
    genus_ancestry: dict[int, str] = {}
    genus_name_by_id: dict[int, str] = {}
    for index, genus_name in enumerate(genus_names):
        genus_id = FIRST_GENUS_ID + index
        kingdom_id = kingdoms[index % len(kingdoms)][0]
        ancestry = f"{LIFE_TAXON_ID}/{kingdom_id}"
        rows.append((genus_id, ancestry, 20, "genus", genus_name, "true"))
        genus_ancestry[genus_id] = f"{ancestry}/{genus_id}"
        genus_name_by_id[genus_id] = genus_name

    species_ids_by_name: dict[str, int] = {}
    for index in range(SPECIES):
        species_id = FIRST_SPECIES_ID + index
        if index < len(NAMED_SPECIES):
            genus, epithet = NAMED_SPECIES[index]
            genus_id = FIRST_GENUS_ID + genus_names.index(genus)
        else:
            genus_id = FIRST_GENUS_ID + rng.randrange(GENERA)
            # Some epithets carry an apostrophe or a double quote, as real names can.
            suffix = rng.choice(["", "", "", "'i", '"x"'])
            epithet = f"species{index:06d}{suffix}"
        name = f"{genus_name_by_id[genus_id]} {epithet}"
        active = "false" if index >= len(NAMED_SPECIES) and rng.random() < INACTIVE_FRACTION else "true"
        rows.append((species_id, genus_ancestry[genus_id], 10, "species", name, active))
        species_ids_by_name[name] = species_id

    species_ancestry = {taxon_id: f"{ancestry}/{taxon_id}" for taxon_id, ancestry, *_ in rows if taxon_id >= FIRST_SPECIES_ID}
    infraspecific = [(species, rank, epithet) for species, rank, epithet in NAMED_INFRASPECIFIC]
    for index in range(INFRASPECIFIC_TAXA - len(infraspecific)):
        parent_index = rng.randrange(len(NAMED_SPECIES), SPECIES)
        infraspecific.append((rows[4 + GENERA + parent_index][4], "subspecies", f"sub{index:05d}"))
    for index, (species_name, rank, epithet) in enumerate(infraspecific):
        parent_id = species_ids_by_name[species_name]
        prefix = "var. " if rank == "variety" else ""
        rows.append((FIRST_INFRASPECIFIC_ID + index, species_ancestry[parent_id], 5, rank, f"{species_name} {prefix}{epithet}", "true"))

    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, quotechar=None, lineterminator="\n")
        writer.writerow(["taxon_id", "ancestry", "rank_level", "rank", "name", "active"])
        writer.writerows(rows)


def write_observers(path: Path, count: int) -> None:
    """Write observers.csv.gz with ``count`` observers; every third one has no name."""
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write("observer_id\tlogin\tname\n")
        for observer_id in range(1, count + 1):
            name = "" if observer_id % 3 == 0 else f"Observer {observer_id} O'Neil"
            handle.write(f"{observer_id}\tlogin{observer_id}\t{name}\n")


def write_observations(con: duckdb.DuckDBPyConnection, path: Path, count: int, observers: int) -> None:
    """Write observations.csv.gz with ``count`` rows in the current schema (with anomaly_score).

    Taxon ids are skewed towards low species ids, 5 % of rows name an
    infraspecific taxon and 2 % have no taxon. Coordinates cover latitude 25
    to 49 and longitude -125 to -67.
    """
    taxon_sql = (
        f"CASE WHEN r1 < 0.02 THEN NULL "
        f"WHEN r1 < 0.07 THEN {FIRST_INFRASPECIFIC_ID} + (r2 * {INFRASPECIFIC_TAXA - 1})::INTEGER "
        f"ELSE {FIRST_SPECIES_ID} + (pow(r2, 2) * {SPECIES - 1})::INTEGER END"
    )
    con.execute(
        f"""
        COPY (
          SELECT
            {_uuid_sql("i::VARCHAR")} AS observation_uuid,
            (hash(i, 7) % {observers})::BIGINT + 1 AS observer_id,
            round(25 + random() * 24, 10) AS latitude,
            round(-125 + random() * 58, 10) AS longitude,
            CASE WHEN random() < 0.3 THEN NULL ELSE (random() * 5000)::INTEGER END AS positional_accuracy,
            {taxon_sql} AS taxon_id,
            CASE WHEN r3 < 0.6 THEN 'research' WHEN r3 < 0.93 THEN 'needs_id' ELSE 'casual' END AS quality_grade,
            DATE '2008-01-01' + (random() * 6200)::INTEGER AS observed_on,
            round(random(), 6) AS anomaly_score
          FROM (SELECT i, random() AS r1, random() AS r2, random() AS r3 FROM range({count}) t(i))
        ) TO '{path}' (DELIMITER '\t', HEADER, QUOTE '', COMPRESSION gzip)
        """
    )


def write_photos(con: duckdb.DuckDBPyConnection, path: Path, count: int, observers: int) -> None:
    """Write photos.csv.gz: 1 to 4 photos per observation (mean about 1.4).

    photo_id is ``4 * observation_index + position`` plus 1. One observation in
    2,000 also lists the first photo of the previous observation, so that
    photo_id is not unique, as in the real file.
    """
    photo_count_sql = "CASE WHEN h < 70 THEN 1 WHEN h < 90 THEN 2 WHEN h < 97 THEN 3 ELSE 4 END"
    con.execute(
        f"""
        COPY (
          SELECT
            {_uuid_sql("'p' || i::VARCHAR || '-' || j::VARCHAR")} AS photo_uuid,
            CASE WHEN j = 4 THEN 4 * (i - 1) + 1 ELSE 4 * i + j + 1 END AS photo_id,
            {_uuid_sql("i::VARCHAR")} AS observation_uuid,
            (hash(i, 7) % {observers})::BIGINT + 1 AS observer_id,
            CASE WHEN r < 0.6 THEN 'jpeg' WHEN r < 0.98 THEN 'jpg' ELSE 'png' END AS extension,
            {_license_case_sql("r2")} AS license,
            2048 AS width,
            CASE WHEN r < 0.5 THEN 1536 ELSE 1365 END AS height,
            CASE WHEN j = 4 THEN photos ELSE j END AS position
          FROM (
            SELECT i, (hash(i, 11) % 100) AS h, random() AS r, random() AS r2
            FROM range({count}) t(i)
          ) o,
          LATERAL (SELECT {photo_count_sql} AS photos) c,
          LATERAL (
            SELECT unnest(
              CASE WHEN i > 0 AND hash(i, 13) % 2000 = 0
                THEN list_append(range(photos), 4) ELSE range(photos) END
            ) AS j
          ) p
        ) TO '{path}' (DELIMITER '\t', HEADER, QUOTE '', COMPRESSION gzip)
        """
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=20_000_000, help="number of observation rows (default: 20,000,000)")
    parser.add_argument("--observers", type=int, default=500_000, help="number of observers (default: 500,000)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the four .csv.gz files")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the taxa tree and DuckDB's random() (default: 0)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default: 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    args.out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    con.execute(f"SELECT setseed({(args.seed % 1000) / 1000})")

    steps = [
        ("taxa.csv.gz", lambda path: write_taxa(path, args.seed)),
        ("observers.csv.gz", lambda path: write_observers(path, args.observers)),
        ("observations.csv.gz", lambda path: write_observations(con, path, args.observations, args.observers)),
        ("photos.csv.gz", lambda path: write_photos(con, path, args.observations, args.observers)),
    ]
    for file_name, write in steps:
        started = time.perf_counter()
        path = args.out / file_name
        write(path)
        logger.info("wrote %s (%.1f MB) in %.1f s", path, path.stat().st_size / 1e6, time.perf_counter() - started)


if __name__ == "__main__":
    main()
