"""The work behind ``tledge tune``'s stages: each candidate's int8 file built and timed (here or
on the device), and a candidate trained with tledge's recipe and exported (``tledge.tune.search``
runs them; tests stand in for them)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from tledge.core import fileio, rundir
from tledge.core.errors import TledgeError
from tledge.tune.options import TuneOptions
from tledge.tune.space import Candidate


def build_int8(candidate: Candidate, path: Path, num_classes: int, seed: int = 0) -> int:
    """The candidate's int8 file with random weights (``seed``), for timing; its size."""
    import tf_keras as keras

    from tledge.models import build_classifier
    from tledge.quantize.conversion import QuantizationConfig, convert

    keras.utils.set_random_seed(seed)
    model = build_classifier(candidate.model_options("none"), num_classes, candidate.image_size)
    size = candidate.image_size
    calibration = np.random.default_rng(seed).integers(0, 256, (8, size, size, 3))
    raw = convert(model, QuantizationConfig.for_int8(calibration.astype(np.float32),
                                                     bias_correction=False))
    fileio.write_bytes(path, raw)
    keras.backend.clear_session()
    return len(raw)


def measure_latency(candidates: list, options: TuneOptions, echo) -> dict:
    """Builds each candidate's int8 file (kept in DIR/candidates/) and times them all in one
    session, here or on the device: {name: {latency_ms, size_bytes, machine}}."""
    from tledge.measure.bench import BenchOptions, bench

    folder = Path(options.out) / "candidates"
    classes = num_classes(options.data)
    files = {}
    for i, c in enumerate(candidates):
        path = folder / f"{c.name}.tflite"
        if not path.is_file():
            size = build_int8(c, path, classes)
            echo(f"[{i + 1}/{len(candidates)}] {c.name}: int8 file built, {size / 1e6:.2f} MB")
        files[c.name] = path
    bench_options = BenchOptions(threads=(options.threads,), runs=options.runs,
                                 warmup=options.warmup)
    paths = [str(p) for p in files.values()]
    if options.on:
        from tledge.device.remote import bench_on
        from tledge.device.ssh import Target

        report = bench_on(Target.parse(options.on), paths, bench_options, True, echo=echo)
    else:
        report = bench(paths, bench_options, echo=echo)
    machine = report["machine"].get("machine_id", "?")
    by_file = {Path(r["model"]).name: r for r in report["results"]}
    return {name: {"latency_ms": round(float(by_file[path.name]["classify"]["p50"]), 4),
                   "size_bytes": int(by_file[path.name]["size_bytes"]), "machine": machine}
            for name, path in files.items() if path.name in by_file}


def train_candidate(candidate: Candidate, epochs: int, options: TuneOptions) -> dict:
    """Trains the candidate with tledge's recipe, ``epochs`` per phase, QAT off, into
    DIR/runs/NAME/: {score, accuracy, monitor, seconds, phase_seconds (the phases' own, which
    grow with the images and the network's work), weights, and the int8 file's figures}."""
    from tledge.core.config import (DataOptions, FineTuneHParams, PhaseHParams, QATHParams,
                                    RunConfig, TrainOptions)
    from tledge import data
    from tledge.training.train import train

    weights = weights_for(candidate, options.weights, num_classes(options.data))
    config = RunConfig(
        data=DataOptions(source=options.data, image_size=candidate.image_size,
                         limit=options.limit),
        model=candidate.model_options(weights),
        train=TrainOptions(frozen=PhaseHParams(epochs=epochs),
                           finetune=FineTuneHParams(epochs=epochs),
                           qat=QATHParams(enabled=False), seed=options.seed))
    start = time.monotonic()
    run = Path(options.out) / "runs" / candidate.name
    with _quiet():  # tune says one line per candidate; the run's own log is for train
        # without the test split: tune never looks at it, and evaluating it after each phase
        # took a third of a candidate's time (2 x 21 s of 130, Fashion-MNIST's 10,000 at 96 px)
        splits = replace(data.load(config.data, options.seed), test=None)
        result = train(config, run, overwrite=True, echo=lambda line: None, splits=splits)
        kept = next(p for p in reversed(result.phases) if p.kept)
        losses = [float(v) for v in kept.history.get("val_loss") or []]
        loss = losses[kept.best_epoch - 1] if 0 < kept.best_epoch <= len(losses) else None
        figures = {"phase_seconds": round(sum(p.seconds for p in result.phases), 1),
                   "score": round(float(kept.score), 6),
                   "accuracy": round(float(kept.val_accuracy), 6), "monitor": kept.monitor,
                   "weights": "random" if weights == "none" else weights,
                   "val_loss": round(loss, 6) if loss is not None and np.isfinite(loss)
                   else None}
        figures.update(_int8_figures(run, kept.monitor))
    return {**figures, "seconds": round(time.monotonic() - start, 1)}


def _quiet():
    """Keras' epoch lines (stdout) and tledge's progress (INFO) held back while a candidate
    trains and exports; warnings and errors still reach the terminal."""
    import contextlib
    import io
    import logging

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logger = logging.getLogger("tledge")
    level = logger.level
    logger.setLevel(logging.WARNING)
    stack.callback(logger.setLevel, level)
    return stack


def _int8_figures(run: Path, monitor: str) -> dict:
    """What ships: the run exported as int8 (post-training, bias-corrected, verified on the
    validation split). Where the monitor is plain accuracy the int8 file's is the score; a
    model that does not convert is said, and never picked."""
    import json

    from tledge.core.config import ExportOptions
    from tledge.export import CARD, export

    try:
        export(run, ExportOptions(formats=("int8",), max_drop=100.0), overwrite=True,
               echo=lambda line: None)
    except TledgeError as e:
        return {"int8_error": str(e).splitlines()[0][:300]}
    card = json.loads((run / rundir.EXPORT / CARD).read_text())
    accuracy = float(card["files"]["model_int8.tflite"]["accuracy"])
    images = json.loads((run / rundir.METRICS).read_text()).get("val_images")
    return {"int8_accuracy": round(accuracy, 6), "val_images": images,
            **({"score": round(accuracy, 6)} if monitor == "accuracy" else {})}


def num_classes(data: str) -> int:
    """The classes of a data set, without decoding it (a folder: its class subfolders)."""
    if data == "shapes":
        from tledge.data.shapes import CLASSES
        return len(CLASSES)
    if data in ("cifar10", "fashion_mnist"):
        from tledge.data.builtin import CLASS_NAMES
        return len(CLASS_NAMES[data])
    from tledge.data.folder import scan_folder
    return len(scan_folder(Path(data))[2])


def weights_for(candidate: Candidate, weights: str, classes: int) -> str:
    """The weights a candidate starts from: ImageNet's where Keras has them for it, a weights
    file where it fits the candidate's backbone (tried: a file for MobileNetV2 1.0 does not fit
    MobileNetV2 0.35), else random ("none")."""
    if weights == "none":
        return "none"
    if weights == "imagenet":
        return "none" if candidate.backbone == "efficientnet_lite0" else "imagenet"
    from tledge.models import build_classifier

    try:
        build_classifier(candidate.model_options(weights), classes, candidate.image_size)
    except (TledgeError, ValueError):  # shapes or layers that do not match the file
        return "none"
    finally:
        import tf_keras as keras
        keras.backend.clear_session()
    return weights


def images_per_class(data: str, limit: Optional[int]) -> int:
    """The most images a class of ``data`` has for training (at most ``limit``)."""
    if data in ("cifar10", "fashion_mnist"):
        count = {"cifar10": 5000, "fashion_mnist": 6000}[data]
    elif data == "shapes":
        from tledge.core.config import DataOptions
        count = DataOptions().shapes_per_class
    else:
        from tledge.data.folder import scan_folder
        count = int(np.bincount(scan_folder(Path(data))[1]).max())
    return count if limit is None else min(count, limit)
