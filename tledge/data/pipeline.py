"""tf.data pipelines over decoded ImageSets.

The pipeline shuffles indices (seeded, anew every epoch), not images, and reads each batch's
rows from where the images live: an in-memory array, or the disk cache
(``tledge.data.cache.DiskArray``), whose positional reads release the GIL. No copy of the data
set is made here, so memory does not grow with it. Training batches are augmented on all cores
and everything is prefetched, so the accelerator never waits on Python.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import tensorflow as tf

from tledge.data.cache import DiskArray

# Fixed parallelism and prefetch, tf.data's autotuning off: Keras makes a new iterator of a
# dataset every epoch, and with autotuning on, destroying the old one blocked in a tf.data
# thread for 12 to 18 s at each epoch boundary of a fine-tune on 9,000 images (py-spy: the
# iterator's destructor; benchmarks/README.md, "tf.data"). With these values the gaps are gone
# and the epochs as fast.
PARALLEL = max(2, os.cpu_count() or 2)  # batches read (and augmented) at once
PREFETCH = 4  # batches ready ahead of the step


def augmenter(seed: int):
    """The Keras transfer-learning tutorials' augmentation: flip, rotation, zoom, contrast."""
    import tf_keras as keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ], name="augmentation")


def _worker_share(indices: tf.data.Dataset, n: int, batch_size: int, workers: int,
                  index: int) -> tf.data.Dataset:
    """This worker's batches of an epoch's (shuffled) indices.

    Every worker shuffles alike (same seed), takes every ``workers``-th index and as many as
    the others, in full batches only: an epoch leaves out the remainders (fewer than
    ``batch_size`` + 1 images per worker), different ones each epoch. tf.distribute splits
    each batch into per-replica pieces that this worker's replicas consume over several
    steps, so every worker runs the same number of steps and no replica gets an empty piece
    (which the oneDNN convolutions reject). Keras would count steps from this dataset's
    batches, too few by the split: an unknown cardinality makes it run until the workers are
    exhausted, as with file-sharded data."""
    from tledge.core.errors import TledgeError

    share = n // workers
    if share < batch_size:
        raise TledgeError(f"{n} training images across {workers} workers leave each fewer than "
                          f"one batch of {batch_size}: lower --batch-size to {share} or less")
    return (indices.shard(workers, index).take(share)
            .batch(batch_size, drop_remainder=True).filter(lambda ids: True))


def batches(x, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
            augment: bool = False, seed: int = 0,
            shard: Optional[tuple[int, int]] = None, one_hot: int = 0) -> tf.data.Dataset:
    """(image float32 0..255, label int32) batches of ``x`` (an ndarray or a DiskArray).

    ``x`` may also be a tuple of them (rows in the same order): a model of several inputs
    (the fine-tune phase's top on the frozen bottom's activations) gets a tuple of batches.
    Rows arrive as float32 (decoded images are uint8), but for the float16 activations of a
    mixed-precision bottom.
    Shuffled anew every epoch when ``shuffle``. ``shard=(workers, index)``: this worker's part
    of the data only (multi-worker training); tf.distribute's own sharding is then turned off.
    ``one_hot``: labels as one-hot float32 rows of this depth (for label smoothing).
    """
    y = np.asarray(y, np.int32)
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    reads = [a.read if isinstance(a, DiskArray) else a.__getitem__ for a in xs]
    shapes = [tuple(a.shape[1:]) for a in xs]
    dtypes = [tf.as_dtype(np.dtype(a.dtype)) for a in xs]

    def load(ids: np.ndarray):
        return (*(read(ids) for read in reads), y[ids])

    def load_batch(ids):
        *rows, labels = tf.numpy_function(load, [ids], (*dtypes, tf.int32), stateful=False)
        for part, shape in zip(rows, shapes):
            part.set_shape((None, *shape))
        rows = [part if dtype in (tf.float32, tf.float16, tf.bfloat16)
                else tf.cast(part, tf.float32) for part, dtype in zip(rows, dtypes)]
        labels.set_shape((None,))
        return (tuple(rows) if len(rows) > 1 else rows[0],
                tf.one_hot(labels, one_hot) if one_hot else labels)

    ds = tf.data.Dataset.range(len(y))
    if shuffle:  # indices only: the buffer is 8 bytes an image
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    if shard is None:
        ds = ds.batch(batch_size)
    else:
        ds = _worker_share(ds, len(y), batch_size, *shard)
    ds = ds.map(load_batch, num_parallel_calls=PARALLEL)
    if augment:
        aug = augmenter(seed)
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=PARALLEL)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if shard is not None
        else tf.data.experimental.AutoShardPolicy.DATA)  # no files to shard by: say so
    return ds.with_options(options).prefetch(PREFETCH)
