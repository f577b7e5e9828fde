"""A small open-data dump in the real file format, with known expected selections.

The rows imitate the real files: gzip, tab-separated, header row, no
quoting, names with quote characters, empty fields for missing values, a
photo linked to two observations, subspecies and varieties, an inactive
taxon, a homonym and a hybrid. ``EXPECTED`` states what the default query
selects.
"""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from species_classifier.inat.regions import BoundingBox

TARGET_REGION = BoundingBox(38.0, -78.0, 39.0, -76.0)
OTHER_REGION = BoundingBox(39.19, -76.71, 39.37, -76.52)
TARGETS = ("Lycorma delicatula", "Zenaida macroura", "Acer rubrum", "Erigeron canadensis")
CONFUSERS = ("Acer saccharum", "Acer saccharinum", "Acer platanoides")

INSIDE_TARGET = (38.5, -77.0)
INSIDE_OTHER = (39.3, -76.6)
OUTSIDE = (45.0, -100.0)

OTHER_SPECIES_NAMES = [
    "Quercus alba", "Quercus rubra", "Quercus velutina", "Quercus palustris", "Quercus phellos",
    "Quercus o'neilii", 'Quercus "nigra"', "Quercus coccinea", "Quercus montana", "Quercus stellata",
    "Quercus falcata", "Quercus imbricaria", "Quercus bicolor", "Quercus macrocarpa", "Quercus muehlenbergii",
    "Quercus michauxii", "Quercus lyrata", "Quercus marilandica", "Quercus ilicifolia", "Quercus prinoides",
]

TAXA: list[tuple[int, str, float, str, str, bool]] = [
    (48460, "", 100, "stateofmatter", "Life", True),
    (1, "48460", 70, "kingdom", "Animalia", True),
    (47126, "48460", 70, "kingdom", "Plantae", True),
    (47727, "48460/47126", 20, "genus", "Acer", True),
    (47728, "48460/47126/47727", 10, "species", "Acer rubrum", True),
    (47729, "48460/47126/47727", 10, "species", "Acer saccharum", True),
    (47730, "48460/47126/47727", 10, "species", "Acer saccharinum", True),
    (47731, "48460/47126/47727", 10, "species", "Acer platanoides", True),
    (900001, "48460/47126/47727/47729", 5, "subspecies", "Acer saccharum nigrum", True),
    (200000, "48460/1", 20, "genus", "Lycorma", True),
    (200001, "48460/1/200000", 10, "species", "Lycorma delicatula", True),
    (3453, "48460/1", 20, "genus", "Zenaida", True),
    (3454, "48460/1/3453", 10, "species", "Zenaida macroura", True),
    (900002, "48460/1/3453/3454", 5, "subspecies", "Zenaida macroura carolinensis", True),
    (52000, "48460/47126", 20, "genus", "Erigeron", True),
    (52001, "48460/47126/52000", 10, "species", "Erigeron canadensis", True),
    (900003, "48460/47126/52000/52001", 5, "variety", "Erigeron canadensis glabratus", True),
    (52002, "48460/47126/52000", 10, "species", "Conyza canadensis", False),
    (60000, "48460/47126", 20, "genus", "Morus", True),
    (60001, "48460/1", 20, "genus", "Morus", True),
    (70000, "48460/47126", 20, "genus", "Quercus", True),
    *[(70001 + index, "48460/47126/70000", 10, "species", name, True) for index, name in enumerate(OTHER_SPECIES_NAMES)],
    (70100, "48460/47126/70000", 10, "hybrid", "Quercus × bebbiana", True),
    (900010, "48460/47126/70000/70001", 5, "subspecies", "Quercus alba alba", True),
]

OBSERVERS: list[tuple[int, str, str]] = [
    (11, "jobrien", 'Jane O\'Brien "JB"'),
    (12, "kmiller", ""),
    (13, "lfern", "Luis Fernández"),
    (14, "nameless", ""),
]


@dataclass
class Observation:
    key: str
    taxon_id: int | None
    point: tuple[float, float]
    quality_grade: str = "research"
    observed_on: str = "2021-06-10"
    observer_id: int = 12

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"observation/{self.key}"))


@dataclass
class Photo:
    photo_id: int
    observation_key: str
    position: int = 0
    license: str = "CC-BY-NC"
    extension: str = "jpg"


@dataclass
class Dump:
    observations: list[Observation] = field(default_factory=list)
    photos: list[Photo] = field(default_factory=list)

    def observation(self, key: str) -> Observation:
        return next(item for item in self.observations if item.key == key)

    def photo_ids(self, key: str) -> list[int]:
        return [photo.photo_id for photo in self.photos if photo.observation_key == key]


DUPLICATE_PHOTO_ID = 5000


def build_dump() -> Dump:
    """Return the observations and photos described in the module docstring."""
    dump = Dump()
    add = dump.observations.append
    for month in range(1, 7):
        add(Observation(f"rubrum_{month}", 47728, INSIDE_TARGET, observed_on=f"2021-{month:02d}-15", observer_id=11))
    add(Observation("rubrum_needs_id", 47728, INSIDE_TARGET, quality_grade="needs_id"))
    add(Observation("rubrum_casual", 47728, INSIDE_TARGET, quality_grade="casual"))
    add(Observation("rubrum_far", 47728, OUTSIDE))
    add(Observation("rubrum_in_other_region", 47728, INSIDE_OTHER))
    add(Observation("saccharum_nigrum_1", 900001, INSIDE_TARGET, observed_on="2021-09-01"))
    add(Observation("saccharum_nigrum_2", 900001, INSIDE_TARGET, observed_on="2021-09-02"))
    add(Observation("saccharinum_1", 47730, INSIDE_TARGET, observed_on="2021-09-03", observer_id=13))
    add(Observation("platanoides_far", 47731, OUTSIDE))
    add(Observation("zenaida_ssp_1", 900002, INSIDE_TARGET, observed_on="2020-04-01", observer_id=13))
    add(Observation("zenaida_ssp_2", 900002, INSIDE_TARGET, observed_on="2020-04-02", observer_id=14))
    add(Observation("erigeron_var", 900003, INSIDE_TARGET, observed_on="2020-07-04"))
    for index in range(1, 4):
        add(Observation(f"lycorma_{index}", 200001, INSIDE_TARGET, observed_on=f"2022-08-0{index}"))
    for species_index in range(len(OTHER_SPECIES_NAMES)):
        for repeat in range(species_index + 1):
            add(Observation(f"other_{species_index}_{repeat}", 70001 + species_index, INSIDE_OTHER, observer_id=12 + repeat % 3))
    add(Observation("alba_alba", 900010, INSIDE_OTHER))
    add(Observation("hybrid", 70100, INSIDE_OTHER))
    add(Observation("genus_level", 70000, INSIDE_OTHER))
    add(Observation("no_taxon", None, INSIDE_OTHER))
    add(Observation("other_needs_id", 70001, INSIDE_OTHER, quality_grade="needs_id"))

    next_id = 1000
    for observation in dump.observations:
        if observation.key == "rubrum_1":
            # Listed out of order: the first photo (position 0) is CC-BY-NC, the second CC0.
            dump.photos += [
                Photo(next_id, "rubrum_1", position=2, license="CC-BY", extension="png"),
                Photo(next_id + 1, "rubrum_1", position=0, license="CC-BY-NC", extension="jpeg"),
                Photo(next_id + 2, "rubrum_1", position=1, license="CC0", extension="jpg"),
            ]
            next_id += 3
        elif observation.key == "rubrum_2":
            dump.photos.append(Photo(next_id, "rubrum_2", license="CC-BY-ND"))
            next_id += 1
        elif observation.key == "rubrum_3":
            dump.photos.append(Photo(DUPLICATE_PHOTO_ID, "rubrum_3"))
        elif observation.key == "other_needs_id":
            dump.photos.append(Photo(DUPLICATE_PHOTO_ID, "other_needs_id"))
        elif observation.key == "lycorma_1":
            continue
        else:
            dump.photos.append(Photo(next_id, observation.key))
            next_id += 1
    return dump


# What the default query (TARGETS, CONFUSERS, TARGET_REGION, OTHER_REGION,
# research grade, first photo, all open licences, other_per_species=5) selects.
EXPECTED_NAMED_PHOTOS = {
    "Acer rubrum": 5,  # rubrum_1..6 without rubrum_3, whose only photo is linked twice
    "Zenaida macroura": 2,  # both via the subspecies
    "Erigeron canadensis": 1,  # via the variety
    "Lycorma delicatula": 2,  # lycorma_1 has no photo
    "Acer saccharum": 2,  # via the subspecies
    "Acer saccharinum": 1,
}
# Quercus alba has 1 species-level and 1 subspecies observation; species i has i + 1 observations.
EXPECTED_OTHER_PHOTOS_CAP_5 = 2 + 2 + 3 + 4 + 16 * 5


def write_dump(folder: Path, dump: Dump, with_anomaly_score: bool = True) -> Path:
    """Write observations, photos, taxa and observers .csv.gz files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    observation_header = [
        "observation_uuid", "observer_id", "latitude", "longitude", "positional_accuracy",
        "taxon_id", "quality_grade", "observed_on",
    ]
    if with_anomaly_score:
        observation_header.append("anomaly_score")
    observation_rows = []
    for index, item in enumerate(dump.observations):
        row = [
            item.uuid, str(item.observer_id), f"{item.point[0]:.10f}", f"{item.point[1]:.10f}",
            "" if index % 3 else str(10 + index), "" if item.taxon_id is None else str(item.taxon_id),
            item.quality_grade, item.observed_on,
        ]
        if with_anomaly_score:
            row.append(f"{(index % 7) / 10:.4f}")
        observation_rows.append(row)
    _write_tsv(folder / "observations.csv.gz", observation_header, observation_rows)

    uuids = {item.key: item.uuid for item in dump.observations}
    observers = {item.key: item.observer_id for item in dump.observations}
    photo_rows = [
        [
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"photo/{photo.photo_id}/{photo.observation_key}")),
            str(photo.photo_id), uuids[photo.observation_key], str(observers[photo.observation_key]),
            photo.extension, photo.license, "2048", "1536", str(photo.position),
        ]
        for photo in dump.photos
    ]
    _write_tsv(
        folder / "photos.csv.gz",
        ["photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension", "license", "width", "height", "position"],
        photo_rows,
    )
    _write_tsv(
        folder / "taxa.csv.gz",
        ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"],
        [[str(t[0]), t[1], f"{t[2]:g}", t[3], t[4], "true" if t[5] else "false"] for t in TAXA],
    )
    _write_tsv(folder / "observers.csv.gz", ["observer_id", "login", "name"], [[str(o[0]), o[1], o[2]] for o in OBSERVERS])
    return folder


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write("\n".join(lines) + "\n")
