"""Latency, size, memory and accuracy of every model and format, side by side, on this machine.

Each (model, thread count) is measured in a fresh worker process, so load time, first-inference
time and peak memory are the model's own and not what earlier models left behind. Inputs are
fixed and seeded (640x480 frames, handed over as ``tledge camera`` hands them: see ``Capture``),
warm-up runs are discarded, and both the bare ``invoke()`` and the full classify path (resize +
quantize + invoke + dequantize + top-k) are timed, so the runtime's own overhead is visible.

TFLite workers import only the numpy runtime; a run folder (the float Keras model, the "float
GPU model" reference) is timed with TensorFlow, on the GPU when one is visible.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tledge.core import fileio
from tledge.core.errors import TledgeError
from tledge.core.quiet import quiet_tensorflow_logs
from tledge.runtime.timing import latency_stats

FRAME_SHAPE = (480, 640, 3)
N_FRAMES = 8


@dataclass(frozen=True)
class BenchOptions:
    """How models are timed.

    Attributes:
      threads: thread counts to time each TFLite model at.
      runs: timed inferences per measurement.
      warmup: untimed inferences first.
      data: a data set name or folder for accuracy (None: no accuracy).
      limit: images per class for accuracy.
      backend: TFLite backend (None: the first installed).
      seed: seeds the input frames.
    """

    threads: tuple = (1, os.cpu_count() or 1)
    runs: int = 50
    warmup: int = 5
    data: Optional[str] = None
    limit: Optional[int] = None
    backend: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.runs < 3:
            raise TledgeError(f"--runs must be at least 3 to give percentiles, got {self.runs}")
        if any(t < 1 for t in self.threads) or not self.threads:
            raise TledgeError(f"--threads must be positive integers, got {self.threads}")
        if self.warmup < 0:
            raise TledgeError(f"--warmup must be 0 or more, got {self.warmup}")


def frames(seed: int, n: int = N_FRAMES) -> np.ndarray:
    """Fixed camera-sized frames: smooth random colour fields (not white noise, which no camera
    produces and which makes resizing look more expensive than it is)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 12, 16, 3), dtype=np.uint8)
    from tledge.runtime.preprocess import resize_rgb
    return np.stack([resize_rgb(s, FRAME_SHAPE[:2]) for s in small])


class Capture:
    """Hands the classify path its frames as ``tledge camera`` does: the camera's capture thread
    converts each BGR frame to a new RGB array just before the resize reads it, so the frame
    comes in warm in the caches. Here a one-thread pool converts the given RGB frames (the ones
    bare ``invoke()`` is timed on) to BGR once, then back to RGB for each call, untimed.

    A frame read from memory long after it was made costs the resize more (its read of 0.9 MB
    comes from DRAM), and no path of tledge's hands one over. On an AMD EPYC (Zen 4, 2 cores),
    MobileNetV2 int8 224 at 1 thread, classify over bare invoke in ``tledge bench``: +6.5 to
    +7.6 % this way, +9.5 to +11.1 % on stored frames; ``benchmarks/classify_path.py`` times
    both in one loop.
    """

    def __init__(self, rgb: np.ndarray):
        self._bgr = np.ascontiguousarray(rgb[..., ::-1])
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tledge-capture")

    def __call__(self, i: int) -> np.ndarray:
        """Frame ``i`` (cycling over them) as RGB, just converted."""
        import cv2

        return self._pool.submit(cv2.cvtColor, self._bgr[i % len(self._bgr)],
                                 cv2.COLOR_BGR2RGB).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux VmHWM, the peak of its own memory:
    getrusage's ru_maxrss of a worker started by (v)fork + exec also counts its parent's peak
    (every row of a ``make bench`` report said 3.3 GB, the model builder's TensorFlow)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _time_paired(bare: Callable[[int], None], full: Callable[[np.ndarray], None],
                 frame_at: Callable[[int], np.ndarray], runs: int,
                 warmup: int) -> tuple[list[float], list[float]]:
    """Times ``bare(i)`` and ``full(frame_at(i))`` alternately, ``runs`` times each, after
    ``warmup`` untimed rounds: on a shared, noisy machine both series see the same moments, so
    their ratio is not skewed by a slow spell that hit only one of them. ``frame_at`` (the
    capture's work) is not timed."""
    for i in range(warmup):
        bare(i)
        full(frame_at(i))
    bare_ms, full_ms = [], []
    for i in range(runs):
        start = time.perf_counter()
        bare(i)
        bare_ms.append((time.perf_counter() - start) * 1000.0)
        frame = frame_at(i)
        start = time.perf_counter()
        full(frame)
        full_ms.append((time.perf_counter() - start) * 1000.0)
    return bare_ms, full_ms


def measure_tflite(path: str, threads: int, options: BenchOptions) -> dict:
    """One TFLite model at one thread count, in this process."""
    from tledge.measure.evaluate import tflite_predictor
    from tledge.runtime import Classifier, check_model_file
    from tledge.runtime.delegation import delegation

    check_model_file(path, options.backend)  # its child process is no part of the load time
    rss0 = _rss_mb()
    start = time.perf_counter()
    clf = Classifier(path, options.backend, threads)
    load_ms = (time.perf_counter() - start) * 1000
    interpreter = clf.interpreter
    inputs = frames(options.seed)
    prepared = np.stack([clf.preprocess(f) for f in inputs])
    index = clf.input_index
    delegated = delegation(interpreter)

    def bare(i: int) -> None:
        interpreter.invoke()

    start = time.perf_counter()
    interpreter.set_tensor(index, prepared[:1])
    interpreter.invoke()
    first_ms = (time.perf_counter() - start) * 1000
    interpreter.set_tensor(index, prepared[:1])
    with Capture(inputs) as capture:
        invoke_ms, classify_ms = _time_paired(
            bare, lambda frame: clf.classify(frame, top_k=5), capture, options.runs,
            options.warmup)
    backend = clf.backend_info
    return {"backend": f"{backend.name} {backend.version}", "device": "cpu",
            "input_dtype": clf.input_dtype.name, "load_ms": load_ms, "first_ms": first_ms,
            "invoke": latency_stats(invoke_ms), "classify": latency_stats(classify_ms),
            "memory_mb": _rss_mb() - rss0, "peak_rss_mb": _peak_rss_mb(),
            "delegation": delegated.to_dict() if delegated else None,
            "accuracy": _accuracy(options, lambda: tflite_predictor(clf))}


def measure_keras(run: str, options: BenchOptions) -> dict:
    """The float Keras model of a run folder, batch 1, as a compiled tf.function."""
    quiet_tensorflow_logs()
    import tensorflow as tf
    import tf_keras as keras

    from tledge.core import rundir
    from tledge.measure.evaluate import keras_predictor
    from tledge.runtime import top_classes
    from tledge.runtime.preprocess import resize_rgb

    rundir.require_run(Path(run))
    gpus = tf.config.list_logical_devices("GPU")
    device = "gpu" if gpus else "cpu"
    rss0 = _rss_mb()
    start = time.perf_counter()
    model = keras.models.load_model(Path(run) / rundir.FLOAT_MODEL, compile=False)
    size = model.input_shape[1:3]
    labels = fileio.read_labels(Path(run) / rundir.LABELS)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    load_ms = (time.perf_counter() - start) * 1000
    inputs = frames(options.seed)
    prepared = tf.constant(np.stack([resize_rgb(f, size) for f in inputs]).astype(np.float32))

    def bare(i: int) -> None:
        call(prepared[i % len(inputs)][None]).numpy()

    def classify(frame: np.ndarray) -> None:
        x = resize_rgb(frame, size).astype(np.float32)[None]
        top_classes(call(x).numpy()[0], labels, 5)

    start = time.perf_counter()
    bare(0)  # traces the function
    first_ms = (time.perf_counter() - start) * 1000
    with Capture(inputs) as capture:
        invoke_ms, classify_ms = _time_paired(bare, classify, capture, options.runs,
                                              options.warmup)
    return {"backend": f"tensorflow {tf.__version__}", "device": device,
            "input_dtype": "float32", "load_ms": load_ms, "first_ms": first_ms,
            "invoke": latency_stats(invoke_ms), "classify": latency_stats(classify_ms),
            "memory_mb": _rss_mb() - rss0, "peak_rss_mb": _peak_rss_mb(),
            "accuracy": _accuracy(options, lambda: keras_predictor(model, Path(run).name, labels))}


def _accuracy(options: BenchOptions, make_predictor) -> Optional[float]:
    """Accuracy on --data with the model already loaded for timing (not loaded again)."""
    if not options.data:
        return None
    from tledge.measure.evaluate import evaluate, evaluation_images

    predictor = make_predictor()
    x, y, _ = evaluation_images(options.data, predictor, options.limit)
    return evaluate(predictor, x, y)["accuracy"]


def describe_model(model: str) -> dict:
    path = Path(model)
    if path.is_dir():
        from tledge.core import rundir
        from tledge.core.errors import require_training_stack
        rundir.require_run(path)
        require_training_stack(f"timing the run folder {path} (its float Keras model)",
                               ("tensorflow", "tf_keras"))
        size = (path / rundir.FLOAT_MODEL).stat().st_size
        return {"model": str(path), "name": path.name, "format": "keras-float",
                "size_bytes": size}
    from tledge.runtime import check_tflite_file, min_runtime_version
    check_tflite_file(path)
    stem = path.stem
    fmt = stem.split("_")[-1] if stem.startswith("model_") else "tflite"
    return {"model": str(path), "name": f"{path.parent.name}/{path.name}", "format": fmt,
            "size_bytes": path.stat().st_size, "min_runtime": min_runtime_version(path)}


def machine_info() -> tuple[dict, list[str]]:
    """What the numbers were measured on, and warnings that make them suspect."""
    info = {"python": platform.python_version(), "os": platform.platform(),
            "arch": platform.machine(), "cores": os.cpu_count()}
    warnings = []
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.lower().startswith(("model name", "hardware"))]
        info["cpu"] = names[0] if names else platform.processor() or platform.machine()
        flags = next((line.split(":", 1)[1] for line in cpuinfo.splitlines()
                      if line.lower().startswith("flags")), "")
        if flags:
            info["isa"] = int8_isa(flags)
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    board = Path("/proc/device-tree/model")
    if board.exists():
        info["board"] = board.read_text(errors="ignore").strip("\x00 \n")
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor.exists():
        info["governor"] = governor.read_text().strip()
        if info["governor"] != "performance":
            warnings.append(f"CPU governor is '{info['governor']}', not 'performance': latency "
                            "will vary (echo performance | sudo tee /sys/devices/system/cpu/"
                            "cpu*/cpufreq/scaling_governor)")
    if shutil.which("vcgencmd"):
        for key, args in (("temperature", ["measure_temp"]), ("throttled", ["get_throttled"])):
            try:
                out = subprocess.run(["vcgencmd", *args], capture_output=True, text=True,
                                     timeout=5).stdout.strip()
                info[key] = out.split("=", 1)[-1]
            except (OSError, subprocess.SubprocessError):
                pass
        if info.get("throttled") not in (None, "0x0"):
            warnings.append(f"the board reports throttling ({info['throttled']}): check the power "
                            "supply and cooling before trusting these numbers")
    info["machine_id"] = machine_id(info)
    return info, warnings


def int8_isa(flags: str) -> str:
    """The x86 instruction set class that decides int8 speed (XNNPACK picks kernels by it):
    two CPUs sold under one name ("AMD EPYC") can differ here by 5x in int8 latency."""
    flags = set(flags.split())
    for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512vnni"),
                       ("avx_vnni", "avxvnni"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return ""


def machine_id(info: dict) -> str:
    """A short file-name-safe name for the machine class: the board, else CPU, cores and (on
    x86) the int8 instruction set class."""
    base = info.get("board") or "-".join(filter(None, [
        info.get("cpu", "cpu"), f"{info.get('cores')}core", info.get("isa")]))
    keep = "".join(c if c.isalnum() else "-" for c in base.lower())
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep.strip("-")[:60]


def run_worker(spec: dict) -> dict:
    """Measure in a fresh process: ``python -m tledge.measure.bench '<json spec>'``."""
    env = quiet_tensorflow_logs(dict(os.environ))
    proc = subprocess.Popen([sys.executable, "-m", "tledge.measure.bench", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # Ctrl-C, SIGTERM, SIGHUP: the measuring child ends with us, reaped
        proc.kill()
        proc.wait()
        raise
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [line.removeprefix("Error:").strip() for line in stderr.splitlines()
               if line.startswith("Error:")]
        tail = err[-1] if err else (stderr.strip().splitlines() or ["no output"])[-1]
        raise TledgeError(f"benchmarking {spec['model']} failed: {tail[:200]}")
    return json.loads(lines[-1])


def bench(models: Sequence[str], options: BenchOptions,
          echo: Callable[[str], None] = print) -> dict:
    """Measure every model (and every thread count for TFLite files)."""
    from tqdm import tqdm

    from tledge.runtime import check_threads

    described = [describe_model(m) for m in models]  # fail fast on a bad path
    info, warnings = machine_info()
    cores = os.cpu_count() or 1
    for threads in options.threads:
        check_threads(threads, cores)
    if max(options.threads) > cores:
        warnings.append(f"--threads {max(options.threads)} is more than this machine's {cores} "
                        "cores: those rows measure oversubscription, not a faster model")
    for w in warnings:
        echo(f"WARNING: {w}")
    jobs = []
    for d in described:
        if d["format"] == "keras-float":
            jobs.append((d, None))
        else:
            jobs.extend((d, t) for t in options.threads)
    rows = []
    opts = {k: getattr(options, k) for k in ("runs", "warmup", "data", "limit", "backend",
                                            "seed")}
    for d, threads in tqdm(jobs, desc="benchmarking", unit="model", disable=None):
        spec = {"model": d["model"], "threads": threads, "options": opts}
        result = run_worker(spec)
        row = {**d, "threads": threads, **result}
        row["throughput_ips"] = 1000.0 / row["classify"]["mean"]
        row["classify_overhead_pct"] = 100.0 * (row["classify"]["p50"] / row["invoke"]["p50"] - 1)
        rows.append(row)
    return {"machine": info, "warnings": warnings, "options": opts,
            "threads": list(options.threads), "results": rows,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    opts = spec["options"]
    options = BenchOptions(threads=(spec["threads"] or 1,), **opts)
    if Path(spec["model"]).is_dir():
        result = measure_keras(spec["model"], options)
    else:
        result = measure_tflite(spec["model"], spec["threads"], options)
    print(json.dumps(result))


if __name__ == "__main__":  # the worker
    try:
        _worker_main(sys.argv[1])
    except TledgeError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
