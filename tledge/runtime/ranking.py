"""Class scores to the best k classes, as PyCoral's ``get_classes`` gives them."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np


class Class(NamedTuple):
    """One classification result (PyCoral's shape): class index, label, dequantized score."""

    id: int
    label: str
    score: float


def top_classes(scores: np.ndarray, labels: Sequence[str], top_k: int = 1) -> list[Class]:
    """The best ``top_k`` classes of a score vector, ties in index order.

    Args:
      scores: (classes,) scores.
      labels: one per class (an index is shown where one is missing).
      top_k: classes to return; clipped to 1..classes.

    Returns:
      Class(id, label, score) tuples, best first.
    """
    return top_of_values(scores.tolist(), labels, top_k, scores)


# up to this many classes a Python sort of the scores is quicker than numpy's (which costs
# ~20 us of its own right after an invoke); past it, argsort
_PYTHON_SORT_MAX = 256


def top_of_values(values: list, labels: Sequence[str], top_k: int,
                  scores: Optional[np.ndarray] = None) -> list[Class]:
    """``top_classes`` of scores given as Python floats.

    Args:
      values: (classes,) scores as a list of floats.
      labels: one per class (an index is shown where one is missing).
      top_k: classes to return; clipped to 1..classes.
      scores: the same scores as an array, when the caller has one (for argsort).

    Returns:
      Class(id, label, score) tuples, best first.
    """
    top_k = max(1, min(top_k, len(values)))
    if len(values) <= _PYTHON_SORT_MAX and not any(map(math.isnan, values)):
        # descending, and stable: equal scores stay in index order (as with argsort below)
        order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:top_k]
    else:  # many classes, or a NaN (which sorted() would leave anywhere; argsort puts it last)
        if scores is None:
            scores = np.asarray(values, np.float64)
        order = np.argsort(-scores, kind="stable")[:top_k].tolist()
    known = len(labels)
    return [Class(i, labels[i] if i < known else str(i), values[i]) for i in order]
