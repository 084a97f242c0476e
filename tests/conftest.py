import os
import subprocess
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Backend probe results go to a cache of the test session's own (tledge.runtime.probe).
os.environ["TLEDGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tledge-test-cache-")

import numpy as np
import pytest

from tledge import fileio, rundir
from tledge.config import (DataOptions, FineTuneHParams, ModelOptions, PhaseHParams, QATHParams,
                           RunConfig, TrainOptions)
from tledge.data import ImageSet, Splits, stratified_split

SIZE = 32
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 210, 40]])
LABELS = ["red", "green", "blue", "yellow"]


def tiny_config(**train_overrides) -> RunConfig:
    """A MobileNetV2 0.35 at 32x32 with random weights: seconds per phase on a CPU."""
    train = dict(frozen=PhaseHParams(epochs=1, learning_rate=1e-2),
                 finetune=FineTuneHParams(epochs=1, learning_rate=1e-3, unfreeze="10"),
                 qat=QATHParams(enabled=False), seed=1)
    train.update(train_overrides)
    return RunConfig(
        data=DataOptions(source="shapes", image_size=SIZE, augment=False, batch_size=16,
                         shapes_per_class=8),
        model=ModelOptions(backbone="mobilenet_v2", alpha=0.35, weights="none", dropout=0.0),
        train=TrainOptions(**train))


@pytest.fixture(scope="session")
def tiny_splits():
    from tledge import data
    return data.load(tiny_config().data, seed=1)


def colour_set(n_per_class: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(COLOURS)), n_per_class).astype(np.int32)
    x = COLOURS[y][:, None, None, :] + rng.normal(0, 45, (len(y), SIZE, SIZE, 3))
    return ImageSet(np.clip(x, 0, 255).astype(np.uint8), y)


def small_classifier():
    import tf_keras as keras
    from tledge.models import PREPROCESS

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name=PREPROCESS)(inputs)
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory):
    """A run folder with a float model and a QAT model that both classify colours well."""
    import tf_keras as keras
    from tledge.qat import make_qat_model

    keras.utils.set_random_seed(0)
    train, val = stratified_split(colour_set(40, 0), 0.25, seed=0)
    splits = Splits(train, val, colour_set(10, 1), LABELS)
    model = small_classifier()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(train.x.astype(np.float32), train.y, epochs=25, batch_size=16, verbose=0)
    qat = make_qat_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", ["accuracy"])
    qat.fit(train.x.astype(np.float32), train.y, epochs=2, batch_size=16, verbose=0)
    run = tmp_path_factory.mktemp("colour_run")
    config = RunConfig().override(data={"image_size": SIZE})
    fileio.write_text(run / rundir.CONFIG, config.to_yaml())
    fileio.write_labels(run / rundir.LABELS, LABELS)
    model.save(run / rundir.FLOAT_MODEL)
    qat.save(run / rundir.QAT_MODEL)
    accuracy = np.mean(model.predict(val.x.astype(np.float32), verbose=0).argmax(1) == val.y)
    assert accuracy >= 0.9, "the fixture model must have learned the colours"
    return run, splits, model


def image_grid(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def colour_tflite(colour_run, tmp_path_factory):
    """int8 (from QAT) and fp32 files of the colour model, exported and verified by tledge."""
    from tledge.config import ExportOptions
    from tledge.export import export

    run, splits, _ = colour_run
    out = tmp_path_factory.mktemp("colour_export")
    export(run, ExportOptions(formats=("fp32", "int8")), out=out, splits=splits,
           echo=lambda s: None)
    return {"int8": out / "model_int8.tflite", "fp32": out / "model_fp32.tflite",
            "splits": splits, "run": run}


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs: a disk that fills up. Skips where mounting needs a root this run lacks."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a 3 MB tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
