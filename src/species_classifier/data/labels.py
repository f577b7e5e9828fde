"""Class list and species-name matching.

The class list is the targets in the order the user gave them, then `other`. It is
written once into the bundle and read back by every later stage; class indices are
never derived from a sort.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from species_classifier import OTHER_CLASS


class LabelError(ValueError):
    """Targets that do not match the dataset, or an invalid class list."""


def normalize_species_name(name: str) -> str:
    """Key used to compare species names: case-folded, `_` as space, whitespace collapsed."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def display_species_name(name: str) -> str:
    """Folder or manifest spelling turned into a display name (`Acer_rubrum` -> `Acer rubrum`)."""
    return " ".join(str(name).replace("_", " ").split())


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """Split a comma-separated target list and check it; returns display names in the given order."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [display_species_name(item) for item in items if item.strip()]
    if not names:
        raise LabelError("--targets is empty: name at least one species, e.g. --targets 'Acer rubrum'")
    seen: dict[str, str] = {}
    for name in names:
        key = normalize_species_name(name)
        if key == OTHER_CLASS:
            raise LabelError(f"'{OTHER_CLASS}' is the catch-all class and cannot be a target")
        if key in seen:
            raise LabelError(f"target '{name}' is listed twice (as '{seen[key]}' and '{name}')")
        seen[key] = name
    return names


def build_classes(targets: Sequence[str]) -> list[str]:
    """Return the class list: targets in the given order, then `other`."""
    return [*targets, OTHER_CLASS]


def match_targets(targets: Sequence[str], species_found: Iterable[str]) -> dict[str, int]:
    """Map each normalised species name in the dataset to its class index.

    Species that are not targets map to the `other` index (the last one).

    Raises:
        LabelError: A target has no images; the message lists the closest names found.
    """
    found = {normalize_species_name(name): display_species_name(name) for name in species_found}
    target_keys = [normalize_species_name(name) for name in targets]
    missing = [name for name, key in zip(targets, target_keys) if key not in found]
    if missing:
        lines = []
        for name in missing:
            close = difflib.get_close_matches(normalize_species_name(name), list(found), n=3, cutoff=0.6)
            hint = ", ".join(repr(found[key]) for key in close) if close else "none"
            lines.append(f"  '{name}': no images; closest species names in the dataset: {hint}")
        raise LabelError("target species not found in the dataset:\n" + "\n".join(lines))

    other_index = len(targets)
    mapping = {key: other_index for key in found}
    for index, key in enumerate(target_keys):
        mapping[key] = index
    return mapping
