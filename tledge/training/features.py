"""The backbone's features for the frozen phase: the extractor and the head that share the
classifier's layers, the features' statistics and the standardised head they feed, and the
features computed once (in memory, or streamed to disk past RAM)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import numpy as np

from tledge.core.config import RunConfig
from tledge.data import ImageSet, Splits
from tledge.training.fitting import progress_verbosity


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
                name: str, storage: str = "auto"):
    """The extractor's output for every image, in order: the backbone's pooled features
    (phase 1) or the frozen bottom's activations at the unfreeze point (phase 2).

    Args:
      extractor: a model of the images: the backbone up to the pooling, or its frozen bottom
        (several outputs where skip connections cross the unfreeze point).
      images: the images.
      batch_size: images per pass.
      stack: removes the temporary folder of DiskArrays at its close.
      name: names the files and the progress bar.
      storage: ``memory``, ``disk`` or ``auto`` (``--data-cache``): ``auto`` keeps the outputs in
        memory when the images are and they fit data.cache.MEMORY_BUDGET.

    Returns:
      An ndarray (a tuple of them, one per output of the extractor) in memory; on disk, written
      batch by batch into a temporary folder so the outputs do not accumulate in memory either,
      DiskArrays read back per batch as the decoded images are (one disk format, data.cache).
    """
    import shutil
    import tempfile

    import tensorflow as tf
    from tqdm import tqdm

    from tledge.data.cache import DiskArray, RowWriter, choose_storage
    from tledge.core.fileio import cache_root
    from tledge.data.pipeline import batches

    shapes = [tuple(s[1:]) for s in _output_shapes(extractor)]
    dtypes = [np.dtype(t.dtype.as_numpy_dtype) for t in extractor.outputs]
    row_bytes = sum(int(np.prod(s)) * d.itemsize for s, d in zip(shapes, dtypes))
    if not isinstance(images.x, DiskArray) and \
            choose_storage(storage, len(images), row_bytes) == "memory":
        # a bar on a terminal; in a log, no unlabelled "7/7 - 2s - 223ms/step" line (the
        # phase logs what was computed and in how long)
        out = extractor.predict(batches(images.x, images.y, batch_size),
                                verbose=1 if progress_verbosity() == 1 else 0)
        return tuple(out) if isinstance(out, list) else out
    cache_root().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".features-", dir=cache_root()))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    paths = [folder / f"{name}-{i}.npy" for i in range(len(shapes))]
    writers = [RowWriter(p, len(images), s, d) for p, s, d in zip(paths, shapes, dtypes)]
    run = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    for x, _ in tqdm(batches(images.x, images.y, batch_size), desc=f"features ({name})",
                     unit="batch", total=-(-len(images) // batch_size), leave=False,
                     disable=None):
        out = run(x)
        for writer, rows in zip(writers, out if isinstance(out, (list, tuple)) else [out]):
            writer.write(rows.numpy())
    for writer in writers:
        writer.close()
    arrays = tuple(DiskArray(p) for p in paths)
    return arrays if len(arrays) > 1 else arrays[0]


def _output_shapes(model) -> list:
    shapes = model.output_shape
    return list(shapes) if isinstance(shapes, list) else [shapes]


# Layers whose output in training differs from inference whatever their ``trainable``: a frozen
# bottom holding one of them computes other activations every epoch, which no cache can hold.
_STOCHASTIC = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
               "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")


def split_at(model, top_names) -> tuple:
    """The classifier cut at its unfreeze point: the frozen bottom and the top that learns.

    The bottom (the input, the preprocessing and the backbone's layers below the top) is
    frozen, its BatchNorm in inference mode: it computes the same activations for an image
    every epoch. The top calls the very same layer objects as ``model`` on those activations
    (one input per tensor that crosses the cut: the block's input, and a skip connection's
    where the cut is inside a residual block), so training the top trains ``model``.

    Args:
      model: a flat tledge classifier whose trainable flags are set (set_backbone_trainable),
        or its quantization-aware twin (whose wrappers are named by the layers they wrap).
      top_names: names of the layers of the top (``top_layer_names``).

    Returns:
      (bottom: image -> activations, top: activations -> probabilities), or (None, reason)
      where no cut saves anything or none is sound: the reason, for one line of the log.
    """
    import tf_keras as keras

    def name(layer):  # a QAT wrapper is its layer's
        return getattr(layer, "layer", layer).name

    top_names = set(top_names)
    bottom = {id(layer) for layer in model.layers if name(layer) not in top_names}
    if not any(name(layer) in top_names for layer in model.layers):
        return None, "nothing trains"
    for layer in model.layers:
        if id(layer) not in bottom:
            continue
        if type(getattr(layer, "layer", layer)).__name__ in _STOCHASTIC:
            return None, f"layer {name(layer)} below the unfreeze point is random in training"
        if getattr(layer, "layer", layer).trainable_weights:
            return None, f"layer {name(layer)} below the unfreeze point trains"
    cut = []
    for nodes in model._nodes_by_depth.values():  # the model's own calls of its layers
        for node in nodes:
            if id(node.layer) in bottom:
                continue
            for tensor in node.keras_inputs:
                if id(tensor._keras_history.layer) in bottom and \
                        not any(tensor is c for c in cut):
                    cut.append(tensor)
    if all(isinstance(t._keras_history.layer, keras.layers.InputLayer) or
           name(t._keras_history.layer) in ("preprocess", "quantize_layer") for t in cut):
        return None, "nothing below the unfreeze point is frozen"
    order = {id(layer): i for i, layer in enumerate(model.layers)}
    cut.sort(key=lambda t: order[id(t._keras_history.layer)])
    inputs = cut if len(cut) > 1 else cut[0]
    return (keras.Model(model.input, inputs, name="bottom"),
            keras.Model(inputs, model.output, name="top"))


def top_layer_names(model, unfreeze: str, backbone: str) -> list:
    """Names of the layers at and after the unfreeze point (``--unfreeze``), head included."""
    from tledge.models import backbone_layers, head_layers, unfreeze_start

    layers = backbone_layers(model)
    return [layer.name for layer in layers[unfreeze_start(model, unfreeze, backbone):]
            + head_layers(model)]


def images_only(config: RunConfig, strategy) -> Optional[str]:
    """Why a phase must run the frozen layers on every image every epoch, or None."""
    from tledge.training.fitting import worker_shard

    if config.data.augment:
        return "--augment: every epoch sees other pixels"
    if not config.train.feature_cache:
        return "--no-feature-cache"
    if worker_shard(strategy):
        return "several workers: each trains on its share of the images"
    return None


def activation_batches(bottom, splits: Splits, config: RunConfig,
                        stack: contextlib.ExitStack, seed: int):
    """(training, validation) batches of the frozen bottom's activations, computed once: the
    same order, shuffling and labels as ``image_batches`` gives of the images."""
    from tledge.data.pipeline import batches
    from tledge.training.fitting import label_depth

    bs, depth = config.data.batch_size, label_depth(config, len(splits.class_names))
    train = features_of(bottom, splits.train, bs, stack, "train", config.data.cache)
    val = features_of(bottom, splits.val, bs, stack, "val", config.data.cache)
    return (batches(train, splits.train.y, bs, shuffle=True, seed=seed, one_hot=depth),
            batches(val, splits.val.y, bs, one_hot=depth))
