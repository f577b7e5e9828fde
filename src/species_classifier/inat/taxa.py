"""Taxa: resolve scientific names, find descendants through ``ancestry``, and roll them up to species.

The taxa table (``taxa.csv``: taxon_id, ancestry, rank_level, rank, name,
active) is loaded into DuckDB, about 1.5 million rows for the real file. The
``ancestry`` column lists a taxon's ancestors' ids from the root, joined with
``/``, and does not include the taxon itself.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from species_classifier.inat.query import ROLE_CONFUSER, ROLE_OTHER, ROLE_TARGET
from species_classifier.inat.tsv import MetadataFormatError, read_header

logger = logging.getLogger(__name__)

ROLE_CODES: dict[str, int] = {ROLE_TARGET: 1, ROLE_CONFUSER: 2, ROLE_OTHER: 3}
ROLE_NAMES: dict[int, str] = {code: role for role, code in ROLE_CODES.items()}

# iNaturalist rank_level of species; subspecies, varieties and forms have 5.
SPECIES_RANK_LEVEL = 10
_TAXA_COLUMN_TYPES = {
    "taxon_id": "BIGINT",
    "ancestry": "VARCHAR",
    "rank_level": "DOUBLE",
    "rank": "VARCHAR",
    "name": "VARCHAR",
    "active": "BOOLEAN",
}
_CLOSE_MATCH_MIN_SIMILARITY = 0.85


@dataclass(frozen=True)
class Taxon:
    """One row of taxa.csv."""

    taxon_id: int
    name: str
    rank: str
    rank_level: float | None
    ancestry: str
    active: bool

    @property
    def ancestor_ids(self) -> list[int]:
        return [int(part) for part in self.ancestry.split("/") if part.strip().isdigit()]


@dataclass(frozen=True)
class NameProblem:
    """A requested taxon name that matched nothing usable, with close matches to suggest."""

    query: str
    reason: str
    suggestions: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.query!r}: {self.reason}"
        if self.suggestions:
            text += f"; close matches: {', '.join(self.suggestions)}"
        return text


class TaxonResolutionError(ValueError):
    """Raised when one or more requested names match no active taxon."""

    def __init__(self, problems: Sequence[NameProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {problem.describe()}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} taxon name(s) could not be resolved:\n{lines}")


@dataclass(frozen=True)
class TaxonLookup:
    """Sorted arrays mapping a taxon id to a role code and a group taxon id.

    The group is the named target or confuser taxon for their descendants, and
    the species for ``other`` taxa (a species, or a subspecies, variety or form
    rolled up to its species). Taxa absent from the arrays play no role.
    """

    taxon_ids: np.ndarray
    role_codes: np.ndarray
    group_ids: np.ndarray

    def lookup(self, taxon_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(role_codes, group_ids)`` for an array of taxon ids; unknown ids get role 0 and group 0."""
        taxon_ids = np.asarray(taxon_ids, dtype=np.int64)
        if len(self.taxon_ids) == 0:
            return np.zeros(len(taxon_ids), dtype=np.int8), np.zeros(len(taxon_ids), dtype=np.int64)
        positions = np.searchsorted(self.taxon_ids, taxon_ids)
        positions = np.minimum(positions, len(self.taxon_ids) - 1)
        found = self.taxon_ids[positions] == taxon_ids
        roles = np.where(found, self.role_codes[positions], 0).astype(np.int8)
        groups = np.where(found, self.group_ids[positions], 0).astype(np.int64)
        return roles, groups


class TaxonTable:
    """The taxa metadata in a DuckDB table, with name resolution and descendant lookup."""

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection

    @classmethod
    def from_file(cls, path: Path, cache_dir: Path | None = None, version: str | None = None) -> TaxonTable:
        """Load taxa.csv(.gz) into DuckDB, reusing a Parquet copy under ``cache_dir/taxa/`` when ``version`` matches."""
        connection = duckdb.connect()
        cached: Path | None = None
        if cache_dir is not None and version is not None:
            digest = hashlib.sha256(version.encode()).hexdigest()[:20]
            cached = cache_dir / "taxa" / f"taxa-{digest}.parquet"
        if cached is not None and cached.is_file():
            connection.execute("CREATE TABLE taxa AS SELECT * FROM read_parquet(?)", [str(cached)])
            return cls(connection)

        header = read_header(path)
        missing = [name for name in _TAXA_COLUMN_TYPES if name not in header]
        if missing:
            raise MetadataFormatError(f"{path} lacks the column(s) {', '.join(missing)}; found: {', '.join(header)}")
        columns = {name: _TAXA_COLUMN_TYPES.get(name, "VARCHAR") for name in header}
        connection.execute(
            f"""
            CREATE TABLE taxa AS
            SELECT taxon_id, coalesce(ancestry, '') AS ancestry, rank_level, lower(rank) AS rank, name,
                   coalesce(active, true) AS active
            FROM read_csv(?, delim = '\t', header = true, quote = '', escape = '', auto_detect = false,
                          null_padding = true, columns = {_duckdb_struct(columns)})
            WHERE taxon_id IS NOT NULL
            """,
            [str(path)],
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_name(cached.name + ".part")
            connection.execute(f"COPY taxa TO '{_sql_string(temporary)}' (FORMAT parquet)")
            temporary.replace(cached)
        return cls(connection)

    def count(self) -> int:
        return int(self.connection.execute("SELECT count(*) FROM taxa").fetchone()[0])

    def _rows(self, sql: str, parameters: list[object]) -> list[Taxon]:
        rows = self.connection.execute(sql, parameters).fetchall()
        return [Taxon(int(r[0]), r[1], r[2] or "", r[3], r[4] or "", bool(r[5])) for r in rows]

    def find_by_name(self, name: str) -> list[Taxon]:
        """Return all taxa (active or not) whose name equals ``name``, ignoring case."""
        return self._rows(
            "SELECT taxon_id, name, rank, rank_level, ancestry, active FROM taxa WHERE lower(name) = lower(?) ORDER BY taxon_id",
            [name],
        )

    def find_by_id(self, taxon_id: int) -> Taxon | None:
        rows = self._rows("SELECT taxon_id, name, rank, rank_level, ancestry, active FROM taxa WHERE taxon_id = ?", [taxon_id])
        return rows[0] if rows else None

    def close_matches(self, name: str, limit: int = 5) -> tuple[str, ...]:
        """Return up to ``limit`` active taxon names most similar to ``name`` (Jaro-Winkler similarity at least 0.85)."""
        rows = self.connection.execute(
            """
            SELECT name, max(jaro_winkler_similarity(lower(name), lower(?))) AS similarity
            FROM taxa WHERE active GROUP BY name
            HAVING similarity >= ? ORDER BY similarity DESC, name LIMIT ?
            """,
            [name, _CLOSE_MATCH_MIN_SIMILARITY, limit],
        ).fetchall()
        return tuple(row[0] for row in rows)

    def resolve(self, queries: Iterable[str]) -> tuple[list[Taxon], list[NameProblem]]:
        """Resolve names (case-insensitive) or numeric taxon ids to active taxa.

        Returns the resolved taxa, in query order, and the problems: names that
        match nothing, match only inactive taxa, or match several active taxa
        (give the taxon id instead).
        """
        resolved: list[Taxon] = []
        problems: list[NameProblem] = []
        for query in queries:
            if query.strip().isdigit():
                taxon = self.find_by_id(int(query))
                if taxon is None:
                    problems.append(NameProblem(query, "no taxon has this id"))
                elif not taxon.active:
                    problems.append(NameProblem(query, f"taxon {taxon.taxon_id} ({taxon.name}) is inactive", self.close_matches(taxon.name)))
                else:
                    resolved.append(taxon)
                continue

            matches = self.find_by_name(query)
            active = [taxon for taxon in matches if taxon.active]
            if len(active) == 1:
                resolved.append(active[0])
            elif len(active) > 1:
                choices = ", ".join(f"{taxon.taxon_id} ({taxon.rank})" for taxon in active)
                problems.append(NameProblem(query, f"several active taxa have this name: {choices}; give the taxon id instead"))
            elif matches:
                inactive = ", ".join(str(taxon.taxon_id) for taxon in matches)
                problems.append(NameProblem(query, f"only inactive taxa have this name ({inactive})", self.close_matches(query)))
            else:
                problems.append(NameProblem(query, "no taxon has this name", self.close_matches(query)))
        return resolved, problems

    def resolve_or_raise(self, queries: Iterable[str]) -> list[Taxon]:
        """Resolve every query, raising TaxonResolutionError that lists all problems at once."""
        resolved, problems = self.resolve(queries)
        if problems:
            raise TaxonResolutionError(problems)
        return resolved

    def build_lookup(self, targets: Sequence[Taxon], confusers: Sequence[Taxon], include_other: bool) -> TaxonLookup:
        """Map every relevant taxon id to its role and group.

        Targets and confusers take all their descendants; when named taxa are
        nested, the deepest one wins. With ``include_other``, every other
        species and infraspecific taxon (rolled up to its species) gets role
        ``other``, except species that are themselves named or are ancestors
        of a named taxon. Hybrids and taxa above species get no role.
        """
        named = [(taxon.taxon_id, ROLE_CODES[ROLE_TARGET], len(taxon.ancestor_ids)) for taxon in targets]
        named += [(taxon.taxon_id, ROLE_CODES[ROLE_CONFUSER], len(taxon.ancestor_ids)) for taxon in confusers]
        connection = self.connection
        connection.execute("CREATE OR REPLACE TEMP TABLE named (named_id BIGINT, role_code TINYINT, depth INTEGER)")
        if named:
            connection.executemany("INSERT INTO named VALUES (?, ?, ?)", named)
        excluded_species = {ancestor for taxon in [*targets, *confusers] for ancestor in taxon.ancestor_ids}
        excluded_species |= {taxon.taxon_id for taxon in [*targets, *confusers]}
        connection.execute("CREATE OR REPLACE TEMP TABLE excluded_species (taxon_id BIGINT)")
        if excluded_species:
            connection.executemany("INSERT INTO excluded_species VALUES (?)", [(taxon_id,) for taxon_id in excluded_species])

        other_sql = "SELECT NULL::BIGINT AS taxon_id, NULL::BIGINT AS group_id WHERE false"
        if include_other:
            other_sql = f"""
                SELECT taxon_id, taxon_id AS group_id FROM taxa WHERE rank = 'species'
                UNION ALL
                SELECT infra.taxon_id, max(species.taxon_id) AS group_id
                FROM (
                    SELECT taxon_id, TRY_CAST(unnest(string_split(ancestry, '/')) AS BIGINT) AS ancestor_id
                    FROM taxa WHERE rank_level < {SPECIES_RANK_LEVEL}
                ) infra
                JOIN taxa species ON species.taxon_id = infra.ancestor_id AND species.rank = 'species'
                GROUP BY infra.taxon_id
            """
        result = connection.execute(
            f"""
            WITH named_lookup AS (
                SELECT t.taxon_id, n.role_code, n.named_id AS group_id
                FROM taxa t JOIN named n
                  ON t.taxon_id = n.named_id
                  OR contains('/' || t.ancestry || '/', '/' || n.named_id::VARCHAR || '/')
                QUALIFY row_number() OVER (PARTITION BY t.taxon_id ORDER BY n.depth DESC) = 1
            ),
            other_lookup AS (
                SELECT o.taxon_id, {ROLE_CODES[ROLE_OTHER]}::TINYINT AS role_code, o.group_id
                FROM ({other_sql}) o
                WHERE o.group_id NOT IN (SELECT taxon_id FROM excluded_species)
                  AND o.taxon_id NOT IN (SELECT taxon_id FROM named_lookup)
            )
            SELECT taxon_id, role_code, group_id FROM named_lookup
            UNION ALL
            SELECT taxon_id, role_code, group_id FROM other_lookup
            ORDER BY taxon_id
            """
        ).fetchnumpy()
        return TaxonLookup(
            taxon_ids=np.asarray(result["taxon_id"], dtype=np.int64),
            role_codes=np.asarray(result["role_code"], dtype=np.int8),
            group_ids=np.asarray(result["group_id"], dtype=np.int64),
        )

    def names(self, taxon_ids: Iterable[int]) -> dict[int, str]:
        """Return ``{taxon_id: name}`` for the given ids (ids missing from the table are left out)."""
        ids = sorted({int(taxon_id) for taxon_id in taxon_ids})
        if not ids:
            return {}
        rows = self.connection.execute(
            "SELECT taxon_id, name FROM taxa WHERE taxon_id IN (SELECT unnest(?::BIGINT[]))", [ids]
        ).fetchall()
        return {int(taxon_id): name for taxon_id, name in rows}


def _duckdb_struct(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items()) + "}"


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")
