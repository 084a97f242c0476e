"""A run folder's Keras models, loaded with one clear line for each way they can be broken
(beside ``tledge.core.rundir``, which knows the folder's layout; TensorFlow is imported on use),
and a new random backbone's BatchNorm statistics, set from the data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tledge.core import fileio, rundir
from tledge.data.imageset import Splits
from tledge.core.errors import TledgeError, first_line

log = logging.getLogger(__name__)


def load_run_model(run: Path, qat: bool = False):
    """(labels, Keras model) of a run folder, its float model or its QAT model; each failure
    one line naming the file: a missing or truncated model, a missing labels.txt (fileio.
    read_labels), labels that do not match the model's outputs."""
    labels_path = run / rundir.LABELS
    labels = fileio.read_labels(labels_path)
    model = load_keras_file(run / (rundir.QAT_MODEL if qat else rundir.FLOAT_MODEL), qat=qat)
    if int(model.output_shape[-1]) != len(labels):
        raise TledgeError(f"{labels_path} names {len(labels)} classes but the model has "
                          f"{model.output_shape[-1]} outputs: restore the run's own labels.txt")
    return labels, model


def load_keras_file(path: Path, qat: bool = False):
    """A run's Keras model; a truncated or corrupt file is one line naming it."""
    if not Path(path).is_file():
        raise TledgeError(f"{path} is missing: train the run again")
    try:
        if qat:
            from tledge.training.qat import load_qat_model
            return load_qat_model(path)
        import tf_keras as keras
        return keras.models.load_model(path, compile=False)
    except TledgeError:
        raise
    except Exception as e:  # zipfile/h5py/Keras each raise their own kinds for a bad file
        raise TledgeError(f"{path} cannot be loaded ({first_line(e)[:120]}): the file is "
                          "truncated or corrupt; train the run again (or with --init-from "
                          "another run)") from e


def load_initial_model(run: Path, splits: Splits, image_size: int):
    """A run's float model, checked against this run's classes and input size."""
    rundir.require_run(run)
    labels = fileio.read_labels(run / rundir.LABELS)
    if labels != list(splits.class_names):
        raise TledgeError(f"--init-from {run} was trained on other classes ({', '.join(labels[:4])}"
                          "...): start from a run on the same data")
    model = load_keras_file(run / rundir.FLOAT_MODEL)  # a truncated file: one line, named
    if tuple(model.input_shape[1:3]) != (image_size, image_size):
        raise TledgeError(f"--init-from {run} takes {model.input_shape[1]}px images, not "
                          f"{image_size}px: pass --image-size {model.input_shape[1]}")
    return model


BATCHNORM_SAMPLE = 512  # training images whose statistics set a random backbone's BatchNorm


def batchnorm_from_data(model, images, batch_size: int, seed: int,
                        sample: int = BATCHNORM_SAMPLE) -> int:
    """A random backbone's BatchNorm statistics, set from a seeded sample of ``images``.

    A backbone built with random weights keeps BatchNorm's initial statistics (mean 0,
    variance 1), which fit no layer's real activations: in inference mode, as the frozen phase
    runs it, each block shrinks them, and the pooled features come out near 1e-12 (measured:
    MobileNetV2 and MobileNetV3 at 96 px). A head standardised on such features and folded
    back has kernels near 1e11, which fine-tuning turns into losses of 1e9 and int8 conversion
    refuses. Each BatchNorm layer's moving mean and variance become instead the average of its
    batch statistics over the sample (AdaBN's data-dependent statistics): the features have the
    scale of the data, and the weights themselves are untouched.

    Args:
      model: a flat tledge classifier with a random backbone.
      images: an ImageSet (uint8 pixels; the model preprocesses them).
      batch_size: images per pass.
      seed: picks the sample.

    Returns:
      The number of BatchNorm layers set.
    """
    import tf_keras as keras

    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers or not len(images):
        return 0
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), min(len(images), sample), replace=False))
    trainable = [(layer, layer.trainable) for layer in model.layers]
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in model.layers:  # batch statistics in the BatchNorm layers, nothing else
            layer.trainable = layer in layers
        starts = range(0, len(pick), batch_size)
        for k, start in enumerate(starts):
            for layer in layers:  # the running average of every batch's statistics so far
                layer.momentum = k / (k + 1)
            model(np.asarray(images.x[pick[start:start + batch_size]], np.float32),
                  training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for layer, was in trainable:
            layer.trainable = was
    log.info("random weights: the statistics of %d BatchNorm layers set from %d training images",
             len(layers), len(pick))
    return len(layers)
