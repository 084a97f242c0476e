"""tf.data pipelines over decoded ImageSets.

Images arrive decoded and resized (in parallel, see ``tledge.data``) and held in memory, which is
the cache. The pipeline shuffles (seeded), batches, augments training batches on all cores and
prefetches, so the accelerator never waits on Python.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def augmenter(seed: int):
    """The Keras transfer-learning tutorials' augmentation: flip, rotation, zoom, contrast."""
    import tf_keras as keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ], name="augmentation")


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
            augment: bool = False, seed: int = 0) -> tf.data.Dataset:
    """(image float32 0..255, label int32) batches. Shuffled anew every epoch when ``shuffle``."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment:
        aug = augmenter(seed)
        ds = ds.map(lambda a, b: (aug(tf.cast(a, tf.float32), training=True), b),
                    num_parallel_calls=AUTOTUNE)
    elif x.dtype != np.float32:
        ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
