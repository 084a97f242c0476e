"""Data sets: class-per-folder, cifar10, fashion_mnist and the generated ``shapes``.

Every source is loaded the same way: decoded to uint8 RGB at the model's input size with the
runtime's own resize (so training sees exactly what a device will), split stratified and seeded,
and handed to ``tledge.data.pipeline`` for tf.data. Only the pipeline imports TensorFlow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from tledge.core.config import DataOptions
from tledge.data.cache import take
from tledge.data.imageset import ImageSet, Splits, limit_per_class
from tledge.core.errors import TledgeError

log = logging.getLogger(__name__)

BUILTIN = ("shapes", "cifar10", "fashion_mnist")
__all__ = ["BUILTIN", "ImageSet", "Splits", "limit_per_class", "load", "load_test_folder",
           "load_test_split", "stratified_split"]


def load(options: DataOptions, seed: int, again: bool = False) -> Splits:
    """Load ``options.source`` at ``options.image_size`` and split it (``again``: a run's data
    read again, as export does: what training warned of is said in plain lines)."""
    source = options.source
    if source == "shapes":
        from tledge.data.shapes import load_shapes
        pool, test, names, skipped = *load_shapes(options, seed), 0
    elif source in ("cifar10", "fashion_mnist"):
        from tledge.data.builtin import load_builtin
        pool, test, names = load_builtin(source, options.image_size, options.limit, seed,
                                         options.cache)
        skipped = 0
    else:
        from tledge.data.folder import load_folder
        pool, names, skipped = load_folder(Path(source), options.image_size, options.limit, seed,
                                           options.cache, again=again)
        test = None
    if options.test_source:
        test = load_test_folder(options, names, test)
    groups = burst_groups(Path(source), pool) if source not in BUILTIN else None
    if groups is not None:
        log.info("data: %d bursts and single shots (shots.jsonl): each stays on one side of "
                 "the train/validation split", len(np.unique(groups)))
    train, val = stratified_split(pool, options.val_split, seed, groups)
    return Splits(train=train, val=val, test=test, class_names=names, skipped=skipped)


def load_test_split(source: str, image_size: int, limit: Optional[int], seed: int,
                    storage: str = "auto") -> tuple[ImageSet, list[str]]:
    """A built-in data set's test split alone, at most ``limit`` images per class, and its
    class names: what evaluate scores, without decoding the training images."""
    if source == "shapes":
        from tledge.data.shapes import load_shapes
        _, test, names = load_shapes(DataOptions(source=source, image_size=image_size,
                                                 limit=limit, cache=storage), seed,
                                     test_only=True)
        return test, names
    from tledge.data.builtin import load_builtin
    _, test, names = load_builtin(source, image_size, limit, seed, storage, test_only=True)
    return test, names


def load_test_folder(options: DataOptions, names: list[str],
                     own: Optional[ImageSet]) -> ImageSet:
    """--test-data: a class-per-folder tree with the training data's classes."""
    from tledge.data.folder import load_folder

    if own is not None:
        raise TledgeError(f"--test-data is for a folder of images: {options.source} brings its "
                          "own test split; drop --test-data")
    test, test_names, _ = load_folder(Path(options.test_source), options.image_size, None, 0,
                                      options.cache)
    if test_names != list(names):
        raise TledgeError(f"--test-data {options.test_source} has the classes "
                          f"{', '.join(test_names[:5])}, not the training data's "
                          f"{', '.join(list(names)[:5])}: give it the same class subfolders")
    return test


def stratified_split(pool: ImageSet, val_split: float, seed: int,
                     groups: Optional[np.ndarray] = None) -> tuple[ImageSet, ImageSet]:
    """Hold out ``val_split`` of every class (at least one image each), seeded.

    ``groups``: a group id per image (the burst of a hold-to-record, ``tledge collect``):
    a group goes whole to one side, so near-duplicate frames never sit on both sides and
    validation measures generalisation, not memory. Groups are drawn until the class's share
    is reached; a class of one group keeps it for training but for one image."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(pool.y):
        idx = rng.permutation(np.flatnonzero(pool.y == c))
        if len(idx) < 2:
            raise TledgeError(
                f"class {c} has {len(idx)} image: each class needs at least 2 to split off a "
                "validation image; add images")
        n_val = min(len(idx) - 1, max(1, int(round(val_split * len(idx)))))
        if groups is None:
            val_idx.append(idx[:n_val])
            train_idx.append(idx[n_val:])
        else:
            held = _whole_groups(idx, groups, n_val)
            val_idx.append(held)
            train_idx.append(idx[~np.isin(idx, held)])
    train_idx = rng.permutation(np.concatenate(train_idx))
    val_idx = np.sort(np.concatenate(val_idx))
    return (_subset(pool, train_idx), _subset(pool, val_idx))


def _whole_groups(idx: np.ndarray, groups: np.ndarray, n_val: int) -> np.ndarray:
    """Indices of whole groups (in ``idx``'s shuffled order of first appearance) making up
    about ``n_val`` images, never every image of the class."""
    order = list(dict.fromkeys(groups[idx].tolist()))
    held: list = []
    for g in order[:-1] if len(order) > 1 else []:
        members = idx[groups[idx] == g]
        if held and len(held) + len(members) > n_val * 1.5:
            continue
        held.extend(members.tolist())
        if len(held) >= n_val:
            break
    return np.asarray(held or idx[:1], dtype=idx.dtype)


def _subset(pool: ImageSet, rows: np.ndarray) -> ImageSet:
    names = tuple(pool.names[i] for i in rows) if pool.names is not None else None
    return ImageSet(take(pool.x, rows), pool.y[rows], names)


def burst_groups(root: Path, pool: ImageSet) -> Optional[np.ndarray]:
    """A group id per image of a folder ``tledge collect`` wrote (its shots.jsonl's bursts;
    a shot outside any burst is its own group), or None for another folder."""
    from tledge.data.manifest import bursts_of

    bursts = bursts_of(root)
    if not bursts or pool.names is None:
        return None
    ids: dict = {}
    return np.asarray([ids.setdefault(bursts.get(name, name), len(ids))
                       for name in pool.names], dtype=np.int64)
