"""Decode, verify and (when it fits in memory) cache the photos of a training set.

Every photo is decoded once before training. Files that fail are excluded and
reported with the reason. The rest are resized (shorter side to
`PreprocessConfig.resize_size`) and kept as uint8 tensors, so epochs do no JPEG
decoding at all while the cache is on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from species_classifier.data.images import ImageLoadError, load_image
from species_classifier.data.transforms import PreprocessConfig, resize_for_model, to_uint8_tensor

log = logging.getLogger(__name__)

# Above this, photos are decoded again each epoch instead of cached (bytes of uint8 pixels).
DEFAULT_CACHE_LIMIT_BYTES = 6 * 1024**3


@dataclass
class ExcludedPhoto:
    path: str
    reason: str


def load_resized(path: str, preprocess: PreprocessConfig) -> torch.Tensor:
    """Decode one photo and resize it for the model; raises ImageLoadError."""
    image = load_image(path, draft_size=preprocess.resize_size)
    return to_uint8_tensor(resize_for_model(image, preprocess))


class PhotoStore:
    """Resized uint8 photos, cached in memory or decoded on demand.

    Args:
        paths: Image files.
        preprocess: The model's preprocessing config (sets the resize size).
        cache: Keep decoded photos in memory. With `None`, cache when the estimate of
            the decoded size is under `cache_limit_bytes`.
        threads: Decoding threads for the verification pass.
    """

    def __init__(
        self,
        paths: Sequence[str],
        preprocess: PreprocessConfig,
        cache: bool | None = None,
        threads: int = 2,
        cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
    ):
        self.preprocess = preprocess
        side = preprocess.resize_size
        # 4:3 photos at the resize size, 3 bytes per pixel.
        estimate = len(paths) * side * side * 4 // 3 * 3
        self.cached = cache if cache is not None else estimate <= cache_limit_bytes
        if cache is None and not self.cached:
            log.info("Decoded photos would take about %.1f GiB; decoding each epoch instead of caching", estimate / 1024**3)

        self.paths: list[str] = []
        self.excluded: list[ExcludedPhoto] = []
        self._tensors: list[torch.Tensor] = []

        def decode(path: str) -> torch.Tensor | ImageLoadError:
            try:
                return load_resized(path, preprocess)
            except ImageLoadError as error:
                return error

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            results = pool.map(decode, paths)
            for path, result in tqdm(zip(paths, results), total=len(paths), desc="decode photos", unit="img"):
                if isinstance(result, ImageLoadError):
                    self.excluded.append(ExcludedPhoto(path=path, reason=result.reason))
                    continue
                self.paths.append(path)
                if self.cached:
                    self._tensors.append(result)

        for photo in self.excluded:
            log.warning("Excluded %s: %s", photo.path, photo.reason)
        if self.excluded:
            log.warning("Excluded %d of %d photos that could not be read (missing, empty or undecodable)", len(self.excluded), len(paths))

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> torch.Tensor:
        if self.cached:
            return self._tensors[index]
        return load_resized(self.paths[index], self.preprocess)


class PhotoDataset(Dataset):
    """(image tensor, class index) pairs for a subset of a `PhotoStore`."""

    def __init__(self, store: PhotoStore, indices: Sequence[int], labels: Sequence[int], transform):
        self.store = store
        self.indices = list(indices)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.store.get(self.indices[item])), self.labels[item]
