"""``tledge tune``: the most accurate model that meets a latency budget, measured on the device.

Latency first: every candidate's int8 file is built (random weights: latency does not depend
on them, only on the graph, its shapes and the kernels they select) and timed where the model
will run, the classify path's p50 at the threads given; a candidate over the budget is dropped
with its figure and never trained. Then accuracy, by successive halving: every candidate that
fits trains briefly (``epochs`` of the frozen phase and of fine-tune, QAT off), the better half
trains again for twice as long, and so on until one is left or ``--time-budget`` is spent.

Everything tune learns is written to ``DIR/tune.json`` after each step: a tune run again with
the same options goes on where it stopped (Ctrl-C, a device that went away).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.core import fileio
from tledge.core.errors import TledgeError
from tledge.tune.space import Candidate, load_space

STATE = "tune.json"


@dataclass
class TuneOptions:
    """What ``tledge tune`` searches, for what, and where it measures.

    Attributes:
      data: a folder with a subfolder per class, or a built-in data set.
      max_latency_ms: the budget: the int8 classify path's p50, in ms.
      out: the tune's folder (tune.json, candidates/, runs/, the table, chart and best.yaml).
      on: ``[USER@]HOST[:DIR]`` to measure on over SSH (None: this machine).
      threads: interpreter threads the latency is measured at.
      time_budget_s: the whole tune's time, latency stage included.
      space: a YAML file of candidates (None: the default space).
      weights: imagenet, none, or a weights file (used by the candidates it fits; the others
        start from random weights, said in the table).
      limit: at most this many images per class.
      epochs: epochs per phase in the first round of training; each round doubles them.
      runs, warmup: timed and untimed inferences per candidate.
      seed: the training seed.
    """

    data: str
    max_latency_ms: float
    out: Path
    on: Optional[str] = None
    threads: int = 1
    time_budget_s: float = 1800.0
    space: Optional[Path] = None
    weights: str = "none"
    limit: Optional[int] = None
    epochs: int = 1
    runs: int = 30
    warmup: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0):
            raise TledgeError(f"--max-latency-ms must be a positive number of milliseconds, got "
                              f"{self.max_latency_ms}")
        if not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise TledgeError("--time-budget must be positive, e.g. 30m or 2h")
        if self.threads < 1 or self.epochs < 1 or self.runs < 3 or self.warmup < 0:
            raise TledgeError("--threads and --epochs must be 1 or more, --runs 3 or more")

    def identity(self) -> dict:
        """What makes measured latencies and trained scores reusable by a later tune."""
        return {"data": self.data, "on": self.on or "local", "threads": self.threads,
                "weights": self.weights, "limit": self.limit, "epochs": self.epochs,
                "seed": self.seed}


def parse_duration(text: str) -> float:
    """``30m``, ``2h``, ``1h30m``, ``90s`` (a bare number is minutes) -> seconds."""
    import re

    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw) * 60.0
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise TledgeError(f"--time-budget {str(text)[:20]!r} is not a duration: give e.g. 30m, "
                          "2h, 1h30m or 900s")
    return sum(float(n) * {"h": 3600.0, "m": 60.0, "s": 1.0}[u] for n, u in parts)


class State:
    """DIR/tune.json: every candidate's figures, written after each step."""

    def __init__(self, options: TuneOptions, candidates: list[Candidate]):
        self.path = Path(options.out) / STATE
        self.data = {"identity": options.identity(), "candidates": {}}
        if self.path.is_file():
            import json

            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise TledgeError(f"{self.path} cannot be read ({e}): pass another --out, or "
                                  "delete it to tune from the start") from e
            if saved.get("identity") != self.data["identity"]:
                raise TledgeError(f"{options.out} holds a tune of other options "
                                  f"({saved.get('identity')}): pass another --out, or delete "
                                  f"{self.path} to start again")
            self.data["candidates"] = saved.get("candidates", {})
        for c in candidates:
            self.data["candidates"].setdefault(c.name, {**asdict(c), "rounds": []})
        self.candidates = candidates

    def __getitem__(self, candidate: Candidate) -> dict:
        return self.data["candidates"][candidate.name]

    def save(self, **extra) -> None:
        self.data.update(extra)
        fileio.write_json(self.path, self.data)


def tune(options: TuneOptions, echo: Callable[[str], None] = print,
         measure: Optional[Callable] = None, train_one: Optional[Callable] = None) -> dict:
    """Runs the tune into ``options.out``: latency of every candidate, then accuracy of those
    that fit, then the table, chart and best.yaml.

    Args:
      options: the tune's TuneOptions.
      echo: progress lines.
      measure: ``measure(candidates, options, echo) -> {name: {latency_ms, size_bytes,
        machine}}`` (default: build the int8 files and bench them, here or on the device).
      train_one: ``train_one(candidate, epochs, options) -> {score, accuracy, monitor,
        seconds, weights}`` (default: tledge's recipe, QAT off).

    Returns:
      tune.json's content, with ``best`` (the winner's name).

    Raises:
      TledgeError: bad options or space, no candidate under the budget, the device gone.
    """
    start = time.monotonic()
    out = Path(options.out)
    fileio.check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    candidates = load_space(options.space)
    state = State(options, candidates)
    state.save(max_latency_ms=options.max_latency_ms, status="measuring latency")
    _latency_stage(state, options, measure or measure_latency, echo)
    fitting = _apply_budget(state, options)
    echo(f"{len(fitting)} of {len(candidates)} candidate(s) within {options.max_latency_ms:g} ms"
         f"; training them by successive halving within the time budget "
         f"({_minutes(options.time_budget_s - (time.monotonic() - start))} left)")
    deadline = start + options.time_budget_s
    best = _halving(state, fitting, options, train_one or train_candidate, deadline, echo)
    state.save(best=best.name, status="complete")
    from tledge.tune.report import write_outputs

    write_outputs(state.data, options, best, echo)
    return state.data


def _latency_stage(state: State, options: TuneOptions, measure, echo) -> None:
    todo = [c for c in state.candidates if state[c].get("latency_ms") is None]
    if not todo:
        echo(f"latency: all {len(state.candidates)} candidates measured already ({STATE})")
        return
    echo(f"latency: building and timing {len(todo)} int8 file(s) on "
         f"{options.on or 'this machine'} at {options.threads} thread(s)")
    try:
        measured = measure(todo, options, echo)
    except TledgeError as e:
        state.save(status="stopped: latency not measured")
        raise TledgeError(f"{e} (the files built so far are kept in {options.out}: run the same "
                          "command again to go on)") from e
    for c in todo:
        if c.name in measured:
            state[c].update(measured[c.name])
    state.save()


def _apply_budget(state: State, options: TuneOptions) -> list[Candidate]:
    timed = [c for c in state.candidates if state[c].get("latency_ms") is not None]
    fitting = []
    for c in timed:
        entry = state[c]
        if entry["latency_ms"] > options.max_latency_ms:
            entry["dropped"] = (f"over the budget: {entry['latency_ms']:.2f} ms > "
                                f"{options.max_latency_ms:g} ms")
        else:  # within this budget (a resumed tune may give another)
            if str(entry.get("dropped", "")).startswith("over the budget"):
                del entry["dropped"]
            fitting.append(c)
    state.save()
    if not fitting:
        fastest = min(timed, key=lambda c: state[c]["latency_ms"])
        raise TledgeError(f"no candidate meets --max-latency-ms {options.max_latency_ms:g}: the "
                          f"fastest, {fastest.name}, takes {state[fastest]['latency_ms']:.2f} ms "
                          f"p50 on {state[fastest].get('machine', '?')} at {options.threads} "
                          "thread(s); raise the budget or add smaller candidates (--space)")
    return sorted(fitting, key=lambda c: state[c]["latency_ms"])


def _halving(state: State, fitting: list, options: TuneOptions, train_one, deadline: float,
             echo) -> Candidate:
    """Successive halving: every round trains its candidates for twice the epochs of the
    round before, and keeps the better half; a round's result in tune.json is not trained
    again. Stops at one candidate, or when the time budget would be overrun."""
    survivors, round_, stopped = list(fitting), 0, False
    while survivors and not stopped:
        epochs = options.epochs * 2 ** round_
        for i, c in enumerate(survivors):
            entry = state[c]
            if any(r["round"] == round_ for r in entry["rounds"]):
                continue
            left = deadline - time.monotonic()
            needed = _expected_seconds(state, survivors, round_)
            if left <= 0 or (needed is not None and needed > left):
                echo(f"time budget: {_minutes(max(left, 0))} left, a round-{round_} training "
                     f"takes about {_minutes(needed or 0)}: stopping here")
                stopped = True
                break
            echo(f"[round {round_}, {i + 1}/{len(survivors)}] {c.name} "
                 f"({entry['latency_ms']:.2f} ms): {epochs} epoch(s) per phase, "
                 f"{_minutes(left)} left")
            result = train_one(c, epochs, options)
            entry["rounds"].append({"round": round_, "epochs": epochs, **result})
            entry["trained_seconds"] = round(sum(r["seconds"] for r in entry["rounds"]), 1)
            if result.get("int8_error"):
                entry["dropped"] = f"int8 conversion failed: {result['int8_error']}"
            state.save(status=f"training: round {round_}")
            echo(f"  {c.name}: validation {result['monitor'].replace('_', ' ')} "
                 f"{result['score']:.4f}" + (" (int8)" if "int8_accuracy" in result else "")
                 + f" in {result['seconds']:.0f} s"
                 + (f"; {entry['dropped']}" if result.get("int8_error") else ""))
        done = [c for c in survivors if _score(state, c, round_) is not None
                and not state[c]["rounds"][-1].get("int8_error")]
        if len(done) <= 1 or stopped:
            break
        ranked = sorted(done, key=lambda c: (-_score(state, c, round_), state[c]["latency_ms"]))
        keep = ranked[:math.ceil(len(ranked) / 2)]
        for c in ranked[len(keep):]:
            state[c]["dropped"] = f"halved after round {round_} (the better half went on)"
        state.save()
        if len(keep) == 1:  # decided: the last one left needs no longer training to win
            break
        survivors, round_ = keep, round_ + 1
    trained = [c for c in fitting if state[c]["rounds"]
               and not state[c]["rounds"][-1].get("int8_error")]
    if not trained:
        failed = [c for c in fitting if state[c]["rounds"]]
        raise TledgeError(
            f"none of the {len(failed)} candidate(s) trained converted to int8 (see "
            f"{STATE}): {state[failed[0]]['dropped']}" if failed else
            "the time budget ran out before any candidate trained: give --time-budget more "
            "time (the latencies are kept in tune.json)")
    best = max(trained, key=lambda c: (max(r["round"] for r in state[c]["rounds"]),
                                       state[c]["rounds"][-1]["score"],
                                       -state[c]["latency_ms"]))
    return best


def _score(state: State, c: Candidate, round_: int) -> Optional[float]:
    found = [r["score"] for r in state[c]["rounds"] if r["round"] == round_]
    return found[-1] if found else None


def _expected_seconds(state: State, survivors: list, round_: int) -> Optional[float]:
    """How long a training of this round takes: the median of this round's so far, else
    twice the last round's."""
    same = [r["seconds"] for c in survivors for r in state[c]["rounds"] if r["round"] == round_]
    if same:
        return float(np.median(same))
    before = [r["seconds"] for c in survivors for r in state[c]["rounds"]
              if r["round"] == round_ - 1]
    return 2.0 * float(np.median(before)) if before else None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


# ------------------------------------------------------------------ the real stages' work

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
    DIR/runs/NAME/: {score, accuracy, monitor, seconds, weights}."""
    from tledge.core.config import (DataOptions, FineTuneHParams, PhaseHParams, QATHParams,
                                    RunConfig, TrainOptions)
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
        result = train(config, run, overwrite=True, echo=lambda line: None)
        kept = next(p for p in reversed(result.phases) if p.kept)
        figures = {"score": round(float(kept.score), 6),
                   "accuracy": round(float(kept.val_accuracy), 6), "monitor": kept.monitor,
                   "weights": "random" if weights == "none" else weights}
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
    card = json.loads((run / "export" / CARD).read_text())
    accuracy = float(card["files"]["model_int8.tflite"]["accuracy"])
    from tledge.core import rundir

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
