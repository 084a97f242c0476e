"""The backbone's features for the frozen phase: the extractor and the head that share the
classifier's layers, the features' statistics and the standardised head they feed, and the
features computed once (in memory, or streamed to disk past RAM)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from tledge.data import ImageSet
from tledge.fitting import progress_verbosity


STATS_SAMPLE = 2048  # images whose features standardise the head when phase 1 runs on images


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation, for the head's standardised input.

    A standard deviation under a tenth of the median one is raised to it: a feature nearly
    constant on the training split must not blow up on other images.

    Args:
      features: (N, D) rows of an ndarray or a DiskArray, read in chunks.

    Returns:
      (mean, std), each float32 (D,).
    """
    total, squares = 0.0, 0.0
    for start in range(0, len(features), 4096):
        chunk = np.asarray(features[start:start + 4096], np.float64)
        total, squares = total + chunk.sum(0), squares + np.square(chunk).sum(0)
    mean = total / len(features)
    std = np.sqrt(np.maximum(squares / len(features) - np.square(mean), 0.0))
    floor = 0.1 * float(np.median(std))
    std = np.maximum(std, floor if floor > 0 else 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def sampled_feature_statistics(extractor, images: ImageSet, batch_size: int,
                               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``feature_statistics`` of a seeded sample of ``images``, for phase 1 on images.

    The un-augmented features of STATS_SAMPLE images at most: one pass over a fraction of an
    epoch, the same on every worker of a cluster (the same split, the same sample).

    Args:
      extractor: the backbone up to the pooling (``head_on_features``).
      images: the training images.
      batch_size: images per pass.
      seed: picks the sample.

    Returns:
      (mean, std), each float32 (D,).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), min(len(images), STATS_SAMPLE), replace=False))
    run = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    rows = [run(images.x[pick[i:i + batch_size]]).numpy()
            for i in range(0, len(pick), batch_size)]
    return feature_statistics(np.concatenate(rows).astype(np.float32))


@contextlib.contextmanager
def standardised_head(model, mean: np.ndarray, std: np.ndarray):
    """The head's first dense layer takes standardised features within the block.

    Its weights are re-expressed so the model computes the same function on ``(x - mean) /
    std``; on the way out (the best epoch restored, or interrupted) they are folded back,
    exactly, to take the raw features again.

    Args:
      model: a flat tledge classifier.
      mean, std: the features' statistics (``feature_statistics``).

    Yields:
      The Rescaling layer that standardises features: put it in front of the head.
    """
    import tf_keras as keras
    from tledge.models import head_layers

    dense = next(layer for layer in head_layers(model) if isinstance(layer, keras.layers.Dense))
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * std[:, None], bias + mean @ kernel])
    try:
        # (x - mean) / std exactly (Keras' Normalization divides by at least 1e-7), in float32
        # under mixed precision too
        yield keras.layers.Rescaling(1.0 / std, offset=-mean / std, name="head_norm",
                                     dtype="float32")
    finally:
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel / std[:, None], bias - (mean / std) @ kernel])


def head_on_features(model, norm=None):
    """The feature extractor and a head model sharing ``model``'s layers.

    The head model calls the very same layer objects as ``model`` on a feature input, so
    training it trains ``model``'s head: the weights go back into the full model with no copy.

    Args:
      model: a flat tledge classifier.
      norm: a layer applied to the features first (``standardised_head``), or None.

    Returns:
      (feature extractor: image -> pooled features, head: features -> probabilities).
    """
    import tf_keras as keras

    pool = model.get_layer("head_pool")
    extractor = keras.Model(model.input, pool.output, name="features")
    features = keras.Input(shape=pool.output.shape[1:], name="features")
    return extractor, keras.Model(features, head_of(model, features, norm), name="head")


def head_of(model, features, norm=None):
    """The head's layers after the pooling, called on ``features`` (after ``norm``).

    Args:
      model: a flat tledge classifier.
      features: a Keras tensor of pooled features.
      norm: a layer applied to the features first, or None.

    Returns:
      The head's output tensor.
    """
    from tledge.models import head_layers

    x = norm(features) if norm is not None else features
    for layer in head_layers(model):
        if layer.name != "head_pool":
            x = layer(x)
    return x


def features_of(extractor, images: ImageSet, batch_size: int, stack: contextlib.ExitStack,
                name: str):
    """The extractor's output for every image, in order.

    Args:
      extractor: the backbone up to the pooling.
      images: the images.
      batch_size: images per pass.
      stack: removes the temporary folder of a DiskArray at its close.
      name: names the file and the progress bar.

    Returns:
      An ndarray when the images are in memory; when they stream from the disk cache, a
      DiskArray in a temporary folder, written batch by batch so features do not accumulate in
      memory either.
    """
    import shutil
    import tempfile

    import tensorflow as tf
    from tqdm import tqdm

    from tledge.data.cache import DiskArray, RowWriter
    from tledge.fileio import cache_root
    from tledge.data.pipeline import batches

    width = tuple(extractor.output_shape[1:])
    if not isinstance(images.x, DiskArray):
        return extractor.predict(batches(images.x, images.y, batch_size),
                                 verbose=progress_verbosity())
    cache_root().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".features-", dir=cache_root()))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    writer = RowWriter(folder / f"{name}.npy", len(images), width, np.float32)
    run = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    for x, _ in tqdm(batches(images.x, images.y, batch_size), desc=f"features ({name})",
                     unit="batch", total=-(-len(images) // batch_size), leave=False,
                     disable=None):
        writer.write(run(x).numpy())
    writer.close()
    return DiskArray(folder / f"{name}.npy")
