"""What the tests share, imported one way (``from helpers import ...``; fixtures live in
conftest.py, which no test imports): the tiny run configuration and colour data, one CLI runner
in a child process and one in this process, one check of the one-line error, one video writer,
one free-port helper, and the committed models of tests/models. Nothing here imports TensorFlow
at import time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tledge.core.config import (DataOptions, FineTuneHParams, ModelOptions, PhaseHParams,
                                QATHParams, RunConfig, TrainOptions)
from tledge.data import ImageSet

TESTS = Path(__file__).resolve().parent
MODELS = TESTS / "models"
SIZE = 32
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 210, 40]])
LABELS = ["red", "green", "blue", "yellow"]
TENSORFLOW = ("tensorflow", "tf_keras", "tensorflow_model_optimization")


class _Lazy:
    """A module imported on first use: slow test modules name ``keras`` at the top without
    importing TensorFlow into the fast tier's process when they are collected."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        import importlib

        if attr.startswith("_"):  # pytest looks for markers and fixtures on every name
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


keras = _Lazy("tf_keras")


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


def colour_set(n_per_class: int, seed: int) -> ImageSet:
    """Noisy pictures of the four COLOURS, SIZE x SIZE, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(COLOURS)), n_per_class).astype(np.int32)
    x = COLOURS[y][:, None, None, :] + rng.normal(0, 45, (len(y), SIZE, SIZE, 3))
    return ImageSet(np.clip(x, 0, 255).astype(np.uint8), y)


def image_grid(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ running tledge

def as_from_a_terminal() -> None:
    """``preexec_fn`` of a child a test will Ctrl-C: the signal dispositions a terminal gives a
    command (SIGINT default, nothing blocked), whatever the test process was left with (a
    child inherits an ignored or blocked SIGINT, and Python then never raises
    KeyboardInterrupt: seen in full runs under xdist, the tests that Ctrl-C a child hanging)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def tledge(*args, timeout=600, env=None, block_tensorflow=False, background=False, **kwargs):
    """``tledge ARGS...`` in a child process (the real entry point: exit codes, signals).

    ``env`` adds variables to this process's environment; ``block_tensorflow`` makes the child
    a ``[pi]`` install, where the training stack cannot be imported; ``background`` returns the
    running ``Popen`` (pipes for stdout and stderr) instead of waiting for it."""
    code = "import sys\n"
    if block_tensorflow:
        code += f"for m in {TENSORFLOW!r}:\n    sys.modules[m] = None\n"
    code += "from tledge.cli import main\nmain(sys.argv[1:], prog_name='tledge')\n"
    command = [sys.executable, "-c", code, *map(str, args)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, preexec_fn=as_from_a_terminal, **kwargs)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)


def cli(*args):
    """``tledge ARGS...`` in this process through Click's runner: for the many quick cases."""
    from click.testing import CliRunner

    from tledge.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(proc, *fragments, code: int | tuple = 1) -> str:
    """Exit ``code`` (2 is Click's for a bad option), no traceback, exactly one 'Error:' line,
    containing every fragment. ``proc`` is a finished child process (tledge())
    or a Click result (cli())."""
    returncode = getattr(proc, "returncode", getattr(proc, "exit_code", None))
    stderr = proc.stderr if hasattr(proc, "returncode") else proc.output
    codes = (code,) if isinstance(code, int) else code
    assert returncode in codes, (returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    if not hasattr(proc, "returncode"):  # in this process an exception is not printed
        exception = proc.exception
        assert exception is None or isinstance(exception, SystemExit), repr(exception)
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr[-2000:]
    assert errors[0].count("Error:") == 1, errors[0]  # never "Error: ... failed: Error: ..."
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# What a user must never see without -v (issue 24's list): native and library log lines that
# say nothing about their run.
TERMINAL_NOISE = (
    "Created TensorFlow Lite XNNPACK delegate",  # LiteRT's native INFO line
    "saving your model as an HDF5 file", "legacy",  # tf_keras on model.h5
    "fully_quantize:", "inference_type:",  # the TFLite converter's debug print
    "UserWarning", "DeprecationWarning", "warnings.warn",  # Python warnings from TF
    "tf.lite.Interpreter is deprecated", "Statistics for quantized inputs",
    "cuInit", "I0000", "E0000", "W0000", "absl::InitializeLog", "oneDNN",
)


def assert_quiet(stderr: str) -> None:
    """None of TERMINAL_NOISE in a command's stderr."""
    for noise in TERMINAL_NOISE:
        assert noise not in stderr, (noise, stderr[-3000:])


# ---------------------------------------------------------------------------- fixtures' parts

def write_video(path, frames: int = 30, size: tuple = (320, 240), fps: float = 15.0, seed=0,
                frame=None):
    """An mp4 of ``frames`` frames (BGR, as OpenCV writes them): ``frame(i, rng)`` draws frame
    i, or by default seeded noisy grey levels."""
    import cv2

    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        if frame is None:
            image = np.full((size[1], size[0], 3), (40 * i) % 256, np.uint8)
            image += rng.integers(0, 30, image.shape, dtype=np.uint8)
        else:
            image = frame(i, rng)
        writer.write(image)
    writer.release()
    return path


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


# ---------------------------------------------------------------------- the colour classifier

def small_classifier():
    """Two strided convolutions and a softmax over the four COLOURS: what the colour tests
    need a model to be, small enough to train in seconds and to commit as .tflite."""
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


def colour_splits():
    from tledge.data import Splits, stratified_split

    train, val = stratified_split(colour_set(40, 0), 0.25, seed=0)
    return Splits(train, val, colour_set(10, 1), LABELS)


def train_colour_run(run: Path):
    """A run folder (config, labels, float and QAT model) that classifies the COLOURS; returns
    (splits, float model). Seeded: the same models each time on one machine."""
    import tf_keras as keras

    from tledge.core import rundir
    from tledge.training.fitting import save_model
    from tledge.training.qat import make_qat_model

    keras.utils.set_random_seed(0)
    splits = colour_splits()
    train = splits.train
    model = small_classifier()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(train.x.astype(np.float32), train.y, epochs=25, batch_size=16, verbose=0)
    qat = make_qat_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", ["accuracy"])
    qat.fit(train.x.astype(np.float32), train.y, epochs=2, batch_size=16, verbose=0)
    _run_folder(run)
    save_model(model, run / rundir.FLOAT_MODEL)
    save_model(qat, run / rundir.QAT_MODEL)  # as train writes them (HDF5 warning silenced)
    return splits, model


def _run_folder(folder: Path) -> None:
    """A run folder's config (SIZE px) and labels (the COLOURS)."""
    from tledge.core import fileio, rundir

    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_text(folder / rundir.CONFIG,
                      RunConfig().override(data={"image_size": SIZE}).to_yaml())
    fileio.write_labels(folder / rundir.LABELS, LABELS)


def export_colour_run(run: Path, splits, out: Path) -> dict:
    """tledge's own export of a colour run: the int8 file from QAT and the fp32 file."""
    from tledge.core.config import ExportOptions
    from tledge.export import export

    export(run, ExportOptions(formats=("fp32", "int8")), out=out, splits=splits,
           echo=lambda s: None)
    return {"int8": out / "model_int8.tflite", "fp32": out / "model_fp32.tflite"}


def stub_run(folder: Path) -> Path:
    """A run folder with the right files but no real model in them: enough for a ``[pi]``
    install to say, in one line, that a run needs TensorFlow (it stops before reading one)."""
    from tledge.core import fileio, rundir

    _run_folder(folder)
    for name in (rundir.FLOAT_MODEL, rundir.QAT_MODEL):
        fileio.write_bytes(folder / name, b"not a model: tests/helpers.py stub_run")
    return folder
