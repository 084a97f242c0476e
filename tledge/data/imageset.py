"""What every loader returns: images with their labels (``ImageSet``), a data set split for
training (``Splits``), and the per-class limit the loaders apply (``--limit``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from tledge.data.cache import DiskArray


@dataclass(frozen=True)
class ImageSet:
    """Images and their labels.

    Attributes:
      x: uint8 (N, H, W, 3) raw RGB pixels: an ndarray, or a DiskArray (``tledge.data.cache``)
        whose rows are read per batch when the set is too large to hold.
      y: int32 array (N,), class indices into the class names.
      names: where each image came from (a folder's files, relative to it), where known.
    """

    x: "np.ndarray | DiskArray"
    y: np.ndarray
    names: Optional[tuple] = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Splits:
    """A data set split for training.

    Attributes:
      train: images the model trains on.
      val: the stratified validation split: picks the best epoch of each phase.
      test: the data set's own test split, where it has one (None otherwise); evaluated at the end.
      class_names: label of each class index, in order.
      skipped: files that could not be read and were left out.
    """

    train: ImageSet
    val: ImageSet
    test: Optional[ImageSet]
    class_names: list[str]
    skipped: int = 0


def limit_per_class(y: np.ndarray, limit: Optional[int], seed: int) -> np.ndarray:
    """Indices keeping at most ``limit`` of each class (a seeded choice), in ascending order."""
    if limit is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx if len(idx) <= limit else rng.choice(idx, size=limit, replace=False))
    return np.sort(np.concatenate(keep))
