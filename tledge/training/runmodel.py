"""A run folder's Keras models, loaded with one clear line for each way they can be broken
(beside ``tledge.core.rundir``, which knows the folder's layout; TensorFlow is imported on use)."""

from __future__ import annotations

from pathlib import Path

from tledge.core import fileio, rundir
from tledge.data.imageset import Splits
from tledge.core.errors import TledgeError, first_line


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
