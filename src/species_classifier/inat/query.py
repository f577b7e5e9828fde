"""The collect query: which taxa, where, when, under which licences, and how many photos."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from species_classifier.inat.licenses import OPEN_LICENSES
from species_classifier.inat.regions import BoundingBox, PlaceRegion, PolygonRegion

AnyRegion = BoundingBox | PolygonRegion | PlaceRegion

QUALITY_GRADES: tuple[str, ...] = ("research", "needs_id", "casual")

ROLE_TARGET = "target"
ROLE_CONFUSER = "confuser"
ROLE_OTHER = "other"
ROLES: tuple[str, ...] = (ROLE_TARGET, ROLE_CONFUSER, ROLE_OTHER)


class QueryError(ValueError):
    """Raised when collect options are invalid or contradict each other."""


@dataclass(frozen=True)
class CollectQuery:
    """Selection of observations and photos shared by the open-data and web API sources.

    Attributes:
        targets: Scientific names (or numeric taxon ids) of the taxa to classify.
        confusers: Look-alike taxa kept under their own names, with role ``confuser``.
        target_region: Where target observations come from; ``None`` means anywhere.
        confuser_region: Where confuser observations come from; ``None`` means the target region.
        other_region: Where ``other`` observations come from; ``None`` means the target region.
        other_max: Maximum number of ``other`` photos; 0 disables the ``other`` class.
        other_per_species: Maximum number of ``other`` photos of one species.
        max_per_species: Maximum number of photos per target or confuser taxon; ``None`` means no limit.
        quality_grades: Accepted quality grades (``research``, ``needs_id``, ``casual``).
        months: Accepted observation months, 1 to 12; empty means all months.
        observed_from: First accepted observation date, inclusive; ``None`` means no limit.
        observed_to: Last accepted observation date, inclusive; ``None`` means no limit.
        licenses: Accepted photo licences, spelled as in the open data (``CC-BY-NC``).
        photos_per_observation: Photos kept per observation, in the observation's photo order.
        seed: Seed of the random sampling of capped classes.
    """

    targets: tuple[str, ...]
    confusers: tuple[str, ...] = ()
    target_region: AnyRegion | None = None
    confuser_region: AnyRegion | None = None
    other_region: AnyRegion | None = None
    other_max: int = 1000
    other_per_species: int = 50
    max_per_species: int | None = None
    quality_grades: tuple[str, ...] = ("research",)
    months: tuple[int, ...] = ()
    observed_from: dt.date | None = None
    observed_to: dt.date | None = None
    licenses: tuple[str, ...] = field(default=OPEN_LICENSES)
    photos_per_observation: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.targets:
            raise QueryError("at least one target taxon is required (--targets)")
        overlap = {name.lower() for name in self.targets} & {name.lower() for name in self.confusers}
        if overlap:
            raise QueryError(f"taxa listed as both target and confuser: {', '.join(sorted(overlap))}")
        for grade in self.quality_grades:
            if grade not in QUALITY_GRADES:
                raise QueryError(f"unknown quality grade {grade!r}; accepted values: {', '.join(QUALITY_GRADES)}")
        if not self.quality_grades:
            raise QueryError("the quality grade list is empty")
        for month in self.months:
            if not 1 <= month <= 12:
                raise QueryError(f"month {month} is outside 1-12")
        if self.observed_from and self.observed_to and self.observed_from > self.observed_to:
            raise QueryError(f"observed_from {self.observed_from} is after observed_to {self.observed_to}")
        if self.photos_per_observation < 1:
            raise QueryError("photos_per_observation must be at least 1")
        if self.other_max < 0:
            raise QueryError("other_max must be 0 or more")
        if self.other_per_species < 1:
            raise QueryError("other_per_species must be at least 1")
        if self.max_per_species is not None and self.max_per_species < 1:
            raise QueryError("max_per_species must be at least 1")
        if not self.licenses:
            raise QueryError("the licence list is empty")

    @property
    def effective_confuser_region(self) -> AnyRegion | None:
        return self.confuser_region if self.confuser_region is not None else self.target_region

    @property
    def effective_other_region(self) -> AnyRegion | None:
        return self.other_region if self.other_region is not None else self.target_region

    @property
    def wants_other(self) -> bool:
        return self.other_max > 0

    def regions(self) -> list[AnyRegion | None]:
        """Return the regions in use: target, confuser (if any confusers) and other (if enabled)."""
        regions: list[AnyRegion | None] = [self.target_region]
        if self.confusers:
            regions.append(self.effective_confuser_region)
        if self.wants_other:
            regions.append(self.effective_other_region)
        return regions

    def cache_token(self) -> dict[str, object]:
        """Return a JSON-serialisable description of everything that changes the selected rows."""

        def region_token(region: AnyRegion | None) -> str | None:
            return None if region is None else region.cache_token()

        return {
            "targets": list(self.targets),
            "confusers": list(self.confusers),
            "target_region": region_token(self.target_region),
            "confuser_region": region_token(self.effective_confuser_region),
            "other_region": region_token(self.effective_other_region),
            "other_max": self.other_max,
            "other_per_species": self.other_per_species,
            "max_per_species": self.max_per_species,
            "quality_grades": sorted(self.quality_grades),
            "months": sorted(self.months),
            "observed_from": self.observed_from.isoformat() if self.observed_from else None,
            "observed_to": self.observed_to.isoformat() if self.observed_to else None,
            "licenses": sorted(self.licenses),
            "photos_per_observation": self.photos_per_observation,
            "seed": self.seed,
        }


def parse_name_list(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Split a comma-separated list of taxon names (or a list from a config file), dropping blanks and duplicates."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    seen: set[str] = set()
    for item in items:
        name = " ".join(str(item).split())
        if name and name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    return tuple(names)


def parse_months(text: str | list[int] | None) -> tuple[int, ...]:
    """Parse months such as ``4-9``, ``3,4,5`` or ``11-2`` (wrapping over the new year) into sorted numbers 1-12."""
    if text is None:
        return ()
    if isinstance(text, list):
        parts = [str(item) for item in text]
    else:
        parts = [part for part in text.split(",") if part.strip()]
    months: set[int] = set()
    for part in parts:
        try:
            if "-" in part:
                start_text, end_text = part.split("-", 1)
                start, end = int(start_text), int(end_text)
                if not (1 <= start <= 12 and 1 <= end <= 12):
                    raise ValueError
                month = start
                months.add(month)
                while month != end:
                    month = month % 12 + 1
                    months.add(month)
            else:
                month = int(part)
                if not 1 <= month <= 12:
                    raise ValueError
                months.add(month)
        except ValueError:
            raise QueryError(f"invalid month or month range {part.strip()!r}: use numbers 1-12, e.g. 4-9 or 3,4,5") from None
    return tuple(sorted(months))


def parse_quality_grades(text: str | list[str] | None) -> tuple[str, ...]:
    """Parse a comma-separated list of quality grades; ``all`` means research, needs_id and casual."""
    if text is None:
        return ("research",)
    items = text.split(",") if isinstance(text, str) else list(text)
    grades: list[str] = []
    for item in items:
        grade = item.strip().lower().replace(" ", "_")
        if not grade:
            continue
        if grade == "all":
            return QUALITY_GRADES
        if grade not in QUALITY_GRADES:
            raise QueryError(f"unknown quality grade {item.strip()!r}; accepted values: {', '.join(QUALITY_GRADES)} or all")
        if grade not in grades:
            grades.append(grade)
    return tuple(grades)


def parse_date(text: str | dt.date | None) -> dt.date | None:
    """Parse an ISO date (YYYY-MM-DD)."""
    if text is None or isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(f"invalid date {text!r}: expected YYYY-MM-DD") from None
