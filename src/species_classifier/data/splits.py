"""Cross-validation splits that never separate photos of one observation.

`assign_folds` returns, for every photo, the fold in which it is a validation photo.
With K >= 2 folds every photo is validated exactly once (out-of-fold predictions cover
the whole dataset). With K = 1 a stratified 20% of the observations form the single
validation set and the rest are marked -1 (training only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)

TRAIN_ONLY = -1
SINGLE_SPLIT_VALIDATION_FRACTION = 0.2


class SplitError(ValueError):
    """A dataset that cannot be split as requested."""


def assign_folds(
    labels: Sequence[int],
    groups: Sequence[str],
    n_folds: int,
    seed: int,
    class_names: Sequence[str],
) -> np.ndarray:
    """Assign each photo to a validation fold, keeping each group (observation) in one fold.

    Args:
        labels: Class index of each photo.
        groups: Group key of each photo (observation id, or observer id when grouping by observer).
        n_folds: Number of folds K; 1 means one train/validation split.
        seed: Shuffling seed.
        class_names: Names for the class indices, used in error messages.

    Raises:
        SplitError: A class has fewer groups than the split needs.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if n_folds < 1:
        raise SplitError(f"--folds must be at least 1, got {n_folds}")

    n_splits = n_folds if n_folds >= 2 else int(round(1 / SINGLE_SPLIT_VALIDATION_FRACTION))
    needed = n_folds if n_folds >= 2 else 2
    problems = []
    for index, name in enumerate(class_names):
        class_groups = np.unique(groups[labels == index])
        if 0 < len(class_groups) < needed:
            problems.append(f"'{name}' has {len(class_groups)} observation(s)")
        elif len(class_groups) == 0:
            problems.append(f"'{name}' has no images")
    if problems:
        raise SplitError(
            f"cannot split into {n_folds} fold(s): " + "; ".join(problems)
            + f". Every class needs at least {needed} observations: add photos (for 'other', photos of "
            "species that are not targets), use fewer --folds, or drop that species from --targets."
        )
    thin = [
        name for index, name in enumerate(class_names)
        if len(np.unique(groups[labels == index])) < n_splits
    ]
    if thin:
        log.warning(
            "Classes with fewer observations than folds get no validation photos in some folds: %s",
            ", ".join(thin),
        )

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(labels), TRAIN_ONLY, dtype=np.int64)
    for fold, (_, validation_index) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        if n_folds == 1 and fold > 0:
            break
        folds[validation_index] = fold
    return folds
