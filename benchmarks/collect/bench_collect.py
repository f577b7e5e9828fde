"""Benchmark ``collect`` against a pandas chunked read and a plain DuckDB query, in one run.

All methods run the same query on the same dump. The query is the Baltimore
example: 4 targets and 3 confusers in a Virginia/Maryland box, up to 5,000
``other`` photos from a Baltimore box, research grade, the first photo of
each observation, and no photo linked to two observations. Each method runs
in its own subprocess, so the peak resident memory (``ru_maxrss`` from
``wait4``) is its own. The target and confuser photo ids of every method are
compared.

Usage::

    python benchmarks/collect/generate_dump.py --observations 20000000 --out benchmarks/out/dump
    python benchmarks/collect/bench_collect.py --dump benchmarks/out/dump

Results go to stdout and to ``benchmarks/out/collect-results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["Lycorma delicatula", "Zenaida macroura", "Acer rubrum", "Erigeron canadensis"]
CONFUSERS = ["Acer saccharum", "Acer saccharinum", "Acer platanoides"]
TARGET_BOX = (37.911717, -79.487651, 39.723043, -75.048939)
OTHER_BOX = (39.19, -76.71, 39.37, -76.52)
OTHER_MAX = 5000
OTHER_PER_SPECIES = 50
PANDAS_CHUNK_ROWS = 10_000
METHODS = ("collect-first", "collect-cached", "duckdb", "pandas")


def run_collect(dump: Path, cache: Path, out: Path) -> dict[str, object]:
    from species_classifier.inat.manifest import build_manifest, write_manifest
    from species_classifier.inat.metadata import locate_metadata
    from species_classifier.inat.opendata import collect_open_data
    from species_classifier.inat.query import CollectQuery
    from species_classifier.inat.regions import BoundingBox

    started = time.perf_counter()
    query = CollectQuery(
        targets=tuple(TARGETS),
        confusers=tuple(CONFUSERS),
        target_region=BoundingBox(*TARGET_BOX),
        other_region=BoundingBox(*OTHER_BOX),
        other_max=OTHER_MAX,
        other_per_species=OTHER_PER_SPECIES,
    )
    result = collect_open_data(query, locate_metadata(dump, cache), cache_dir=cache)
    write_manifest(build_manifest(result.selection, "medium", "https://inaturalist-open-data.s3.amazonaws.com"), out / "manifest.csv")
    seconds = time.perf_counter() - started
    selection = result.selection
    named = selection.filter(selection["role"] != "other")
    return {
        "seconds": seconds,
        "from_cache": result.stats.from_cache,
        "named_photo_ids": sorted(named["photo_id"].to_list()),
        "other_photos": selection.height - named.height,
        "duplicates_dropped": result.stats.duplicate_photos_dropped,
    }


def _duckdb_columns(header: list[str], types: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{types.get(name, 'VARCHAR')}'" for name in header) + "}"


def _header(path: Path) -> list[str]:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.readline().rstrip("\n").split("\t")


def run_duckdb(dump: Path, out: Path) -> dict[str, object]:
    """Run the plain DuckDB baseline: read each gzip file with read_csv and select with SQL."""
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    options = "delim = '\t', header = true, quote = '', escape = '', auto_detect = false, null_padding = true"
    files = {name: dump / f"{name}.csv.gz" for name in ("observations", "photos", "taxa", "observers")}
    types = {
        "taxon_id": "BIGINT", "observer_id": "BIGINT", "latitude": "DOUBLE", "longitude": "DOUBLE",
        "photo_id": "BIGINT", "position": "INTEGER", "rank_level": "DOUBLE", "active": "BOOLEAN",
    }
    read = {name: f"read_csv('{path}', {options}, columns = {_duckdb_columns(_header(path), types)})" for name, path in files.items()}
    names = ", ".join("'" + name.replace("'", "''") + "'" for name in TARGETS + CONFUSERS)
    targets = ", ".join("'" + name.replace("'", "''") + "'" for name in TARGETS)
    t_box = "latitude BETWEEN {} AND {} AND longitude BETWEEN {} AND {}".format(TARGET_BOX[0], TARGET_BOX[2], TARGET_BOX[1], TARGET_BOX[3])
    o_box = "latitude BETWEEN {} AND {} AND longitude BETWEEN {} AND {}".format(OTHER_BOX[0], OTHER_BOX[2], OTHER_BOX[1], OTHER_BOX[3])
    con.execute(f"CREATE TEMP TABLE taxa AS SELECT taxon_id, coalesce(ancestry, '') AS ancestry, rank_level, rank, name, active FROM {read['taxa']}")
    con.execute(
        f"""
        CREATE TEMP TABLE lookup AS
        WITH named AS (
            SELECT taxon_id AS named_id, name, CASE WHEN name IN ({targets}) THEN 'target' ELSE 'confuser' END AS role
            FROM taxa WHERE name IN ({names}) AND active
        ),
        named_lookup AS (
            SELECT t.taxon_id, n.role, n.named_id AS group_id, n.name AS species_name
            FROM taxa t JOIN named n ON t.taxon_id = n.named_id OR contains('/' || t.ancestry || '/', '/' || n.named_id || '/')
        ),
        species AS (SELECT taxon_id, name FROM taxa WHERE rank = 'species'),
        other_lookup AS (
            SELECT taxon_id, 'other' AS role, taxon_id AS group_id, name AS species_name FROM species
            UNION ALL
            SELECT i.taxon_id, 'other', s.taxon_id, s.name
            FROM (SELECT taxon_id, TRY_CAST(unnest(string_split(ancestry, '/')) AS BIGINT) AS ancestor FROM taxa WHERE rank_level < 10) i
            JOIN species s ON s.taxon_id = i.ancestor
        )
        SELECT * FROM named_lookup
        UNION ALL
        SELECT * FROM other_lookup
        WHERE taxon_id NOT IN (SELECT taxon_id FROM named_lookup) AND group_id NOT IN (SELECT named_id FROM named)
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE selected_observations AS
        SELECT o.observation_uuid, o.observer_id, o.latitude, o.longitude, o.observed_on, l.role, l.group_id, l.species_name
        FROM {read['observations']} o JOIN lookup l USING (taxon_id)
        WHERE o.quality_grade = 'research'
          AND ((l.role <> 'other' AND {t_box.replace('latitude', 'o.latitude').replace('longitude', 'o.longitude')})
            OR (l.role = 'other' AND {o_box.replace('latitude', 'o.latitude').replace('longitude', 'o.longitude')}))
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE candidate_photos AS
        SELECT photo_id, count(*) AS links,
               any_value(observation_uuid) FILTER (WHERE wanted) AS observation_uuid,
               any_value(extension) FILTER (WHERE wanted) AS extension,
               any_value(license) FILTER (WHERE wanted) AS license,
               any_value(position) FILTER (WHERE wanted) AS position
        FROM (
            SELECT photo_id, observation_uuid, extension, license, position,
                   observation_uuid IN (SELECT observation_uuid FROM selected_observations) AS wanted
            FROM {read['photos']}
        )
        GROUP BY photo_id
        HAVING bool_or(wanted)
        """
    )
    rows = con.execute(
        f"""
        WITH first_photos AS (
            SELECT c.*, o.* EXCLUDE (observation_uuid),
                   row_number() OVER (PARTITION BY c.observation_uuid ORDER BY c.position, c.photo_id) AS photo_rank
            FROM candidate_photos c JOIN selected_observations o USING (observation_uuid)
            WHERE c.links = 1
        ),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY group_id ORDER BY hash(observation_uuid), photo_id) AS species_rank
            FROM first_photos WHERE photo_rank = 1
        ),
        chosen AS (
            SELECT * FROM ranked WHERE role <> 'other'
            UNION ALL
            (SELECT * FROM ranked WHERE role = 'other' AND species_rank <= {OTHER_PER_SPECIES}
             ORDER BY species_rank, hash(observation_uuid) LIMIT {OTHER_MAX})
        )
        SELECT c.photo_id, c.role, obs.login, obs.name
        FROM chosen c LEFT JOIN (SELECT * FROM {read['observers']} WHERE observer_id IN (SELECT observer_id FROM chosen)) obs
          USING (observer_id)
        """
    ).fetchall()
    duplicates = con.execute("SELECT count(*) FROM candidate_photos WHERE links > 1").fetchone()[0]
    seconds = time.perf_counter() - started
    with open(out / "duckdb.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return {
        "seconds": seconds,
        "named_photo_ids": sorted(row[0] for row in rows if row[1] != "other"),
        "other_photos": sum(1 for row in rows if row[1] == "other"),
        "duplicates_dropped": duplicates,
    }


def run_pandas(dump: Path, out: Path) -> dict[str, object]:
    """Run the naive pandas baseline: pandas.read_csv in chunks of 10,000 rows, filtering each chunk."""
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    read_options = {"sep": "\t", "quoting": csv.QUOTE_NONE, "chunksize": PANDAS_CHUNK_ROWS}
    taxa = pd.concat(pd.read_csv(dump / "taxa.csv.gz", **read_options))
    taxa["ancestry"] = taxa["ancestry"].fillna("").astype(str)
    roles: dict[int, tuple[str, int, str]] = {}
    named = taxa[taxa["name"].isin(TARGETS + CONFUSERS) & (taxa["active"].astype(str).str.lower() == "true")]
    species = taxa[taxa["rank"] == "species"]
    species_names = dict(zip(species["taxon_id"], species["name"]))
    for taxon_id, name in species_names.items():
        roles[int(taxon_id)] = ("other", int(taxon_id), name)
    for row in taxa[taxa["rank_level"] < 10].itertuples():
        ancestors = [int(part) for part in row.ancestry.split("/") if part]
        species_ids = [ancestor for ancestor in ancestors if ancestor in species_names]
        if species_ids:
            roles[int(row.taxon_id)] = ("other", species_ids[-1], species_names[species_ids[-1]])
    named_ids = set(named["taxon_id"].astype(int))
    for taxon_id, group in list(roles.items()):
        if group[1] in named_ids:
            del roles[taxon_id]
    for row in named.itertuples():
        role = "target" if row.name in TARGETS else "confuser"
        descendants = taxa[(taxa["taxon_id"] == row.taxon_id) | ("/" + taxa["ancestry"] + "/").str.contains(f"/{row.taxon_id}/", regex=False)]
        for taxon_id in descendants["taxon_id"]:
            roles[int(taxon_id)] = (role, int(row.taxon_id), row.name)

    kept = []
    for chunk in pd.read_csv(dump / "observations.csv.gz", **read_options):
        chunk = chunk[chunk["quality_grade"] == "research"]
        role = chunk["taxon_id"].map(lambda taxon_id: roles.get(int(taxon_id), (None,))[0] if pd.notna(taxon_id) else None)
        in_target = chunk["latitude"].between(TARGET_BOX[0], TARGET_BOX[2]) & chunk["longitude"].between(TARGET_BOX[1], TARGET_BOX[3])
        in_other = chunk["latitude"].between(OTHER_BOX[0], OTHER_BOX[2]) & chunk["longitude"].between(OTHER_BOX[1], OTHER_BOX[3])
        mask = (role.isin(["target", "confuser"]) & in_target) | ((role == "other") & in_other)
        selected = chunk[mask].copy()
        selected["role"] = role[mask]
        kept.append(selected)
    observations = pd.concat(kept)
    observations["group_id"] = observations["taxon_id"].map(lambda taxon_id: roles[int(taxon_id)][1])
    observations["species_name"] = observations["taxon_id"].map(lambda taxon_id: roles[int(taxon_id)][2])
    wanted = set(observations["observation_uuid"])

    photo_ids = []
    candidates = []
    for chunk in pd.read_csv(dump / "photos.csv.gz", **read_options):
        photo_ids.append(chunk["photo_id"].to_numpy())
        candidates.append(chunk[chunk["observation_uuid"].isin(wanted)])
    photos = pd.concat(candidates)
    all_ids = np.concatenate(photo_ids)
    counts = pd.Series(all_ids[np.isin(all_ids, photos["photo_id"].to_numpy())]).value_counts()
    linked_twice = set(counts[counts > 1].index)
    photos = photos[~photos["photo_id"].isin(linked_twice)]
    photos = photos.sort_values(["observation_uuid", "position", "photo_id"]).drop_duplicates("observation_uuid")
    table = photos[["photo_id", "observation_uuid", "extension", "license"]].merge(observations, on="observation_uuid")
    named_rows = table[table["role"] != "other"]
    other = table[table["role"] == "other"].sample(frac=1.0, random_state=0)
    other["species_rank"] = other.groupby("group_id").cumcount()
    other = other[other["species_rank"] < OTHER_PER_SPECIES].sort_values("species_rank", kind="stable").head(OTHER_MAX)
    chosen = pd.concat([named_rows, other])
    observer_ids = set(chosen["observer_id"])
    observers = pd.concat(chunk[chunk["observer_id"].isin(observer_ids)] for chunk in pd.read_csv(dump / "observers.csv.gz", **read_options))
    chosen = chosen.merge(observers, on="observer_id", how="left")
    seconds = time.perf_counter() - started
    chosen.to_csv(out / "pandas.csv", index=False)
    return {
        "seconds": seconds,
        "named_photo_ids": sorted(int(value) for value in chosen.loc[chosen["role"] != "other", "photo_id"]),
        "other_photos": int((chosen["role"] == "other").sum()),
        "duplicates_dropped": len(linked_twice),
    }


def run_worker(method: str, dump: Path, cache: Path, out: Path, result_path: Path) -> None:
    if method in ("collect-first", "collect-cached"):
        result = run_collect(dump, cache, out)
    elif method == "duckdb":
        result = run_duckdb(dump, out)
    else:
        result = run_pandas(dump, out)
    result_path.write_text(json.dumps(result))


def measure(method: str, dump: Path, cache: Path, out: Path) -> dict[str, object]:
    """Run one method in a subprocess; return its result with wall time and peak RSS (MB)."""
    result_path = out / f"{method}.json"
    command = [sys.executable, __file__, "--worker", method, "--dump", str(dump), "--cache", str(cache), "--work", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{method} failed with exit code {process.returncode}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", type=Path, default=Path("benchmarks/out/dump"), help="folder of the four .csv.gz files")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/out/collect-results.json"), help="JSON file for the results")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        run_worker(args.worker, args.dump, args.cache, args.work, args.work / f"{args.worker}.json")
        return

    sizes = {path.name: path.stat().st_size for path in sorted(args.dump.glob("*.csv.gz"))}
    print("dump:", ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in sizes.items()))
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min) on {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="collect-bench-"))
    cache = work / "cache"
    results: dict[str, dict[str, object]] = {}
    try:
        for method in args.methods.split(","):
            results[method] = measure(method, args.dump, cache, work)
            row = results[method]
            print(
                f"{method:15s} {row['seconds']:8.2f} s  (process {row['process_seconds']:.2f} s, CPU {row['cpu_seconds']:.1f} s)"
                f"  peak RSS {row['peak_rss_mb']:7.0f} MB  named photos {len(row['named_photo_ids'])}"
                f"  other {row['other_photos']}  duplicates dropped {row['duplicates_dropped']}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = results.get("collect-first", {}).get("named_photo_ids")
    for method, row in results.items():
        if reference is not None and row["named_photo_ids"] != reference:
            print(f"WARNING: {method} selected different target/confuser photos than collect")
    if "pandas" in results:
        baseline = results["pandas"]["seconds"]
        for method, row in results.items():
            print(f"speed-up of {method} over pandas chunked: {baseline / row['seconds']:.1f}x")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        method: {key: value for key, value in row.items() if key != "named_photo_ids"} | {"named_photos": len(row["named_photo_ids"])}
        for method, row in results.items()
    }
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} (1 min), {load_after[1]:.2f} (5 min)")
    args.results.write_text(
        json.dumps(
            {"dump_bytes": sizes, "results": summary, "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after},
            indent=2,
        )
    )
    print(f"results written to {args.results}")


if __name__ == "__main__":
    main()
