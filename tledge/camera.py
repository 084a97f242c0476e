"""``tledge camera``: a live classifier over a camera, a video, a folder of images or a stream.

Three threads keep the stages overlapped, so end-to-end FPS is set by inference alone:

    capture  ->  read a frame, BGR->RGB, resize and quantize for each model (the runtime's own
                 preprocessing); live sources keep only the newest frame (stale ones are
                 dropped), files hand over every frame in order
    main     ->  inference of the model (and of --compare, on the very same frame)
    sink     ->  overlay, window, --record video, --output JSON lines, a status line a second

Numpy, Pillow and OpenCV only, unless --compare names a run folder (then TensorFlow runs the
float Keras model).
"""

from __future__ import annotations

import glob
import json
import os
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # its V4L2 probing warnings are not ours

from tledge import fileio
from tledge.errors import TledgeError
from tledge.runtime import Class, top_classes

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STAGES = ("capture", "preprocess", "inference", "compare", "overlay")


@dataclass(frozen=True)
class CameraOptions:
    """What ``tledge camera`` runs on and what it writes.

    Attributes:
      model: the .tflite model (or run folder) to show.
      source: a camera index (``0``), ``/dev/videoN``, a video file, a folder of images, an
        rtsp:// or http(s):// stream, or ``picamera`` (the Pi camera module, via Picamera2).
      compare: a second model run on the same frames (a .tflite, or a run folder's float model).
      headless: no window; a status line per second instead.
      output: write one JSON line per frame here.
      record: write the annotated video here (.mp4).
      max_frames: stop after this many frames.
      duration: stop after this many seconds.
      threads: interpreter threads (None: all cores).
      top_k: labels shown per frame.
      backend: TFLite backend (None: the first installed).
      retries: reconnection attempts for a live source that drops out (backoff 0.5 s, doubling).
    """

    model: str
    source: str = "0"
    compare: Optional[str] = None
    headless: bool = False
    output: Optional[str] = None
    record: Optional[str] = None
    max_frames: Optional[int] = None
    duration: Optional[float] = None
    threads: Optional[int] = None
    top_k: int = 3
    backend: Optional[str] = None
    retries: int = 5


# ------------------------------------------------------------------ models

@dataclass
class FrameModel:
    """A model as the camera uses it: prepare (in the capture thread) and run (in main).

    Attributes:
      name: for the overlay and the JSON lines.
      labels: class labels.
      prepare: RGB frame -> model input (resized, quantized).
      run: model input -> dequantized scores.
    """

    name: str
    labels: list
    prepare: Callable[[np.ndarray], np.ndarray]
    run: Callable[[np.ndarray], np.ndarray]


def load_frame_model(path: str, backend: Optional[str], threads: Optional[int]) -> FrameModel:
    p = Path(path)
    if p.is_dir():
        from tledge.evaluate import load_predictor
        from tledge.runtime.preprocess import resize_rgb

        predictor = load_predictor(p)
        return FrameModel(predictor.name, predictor.labels,
                          lambda rgb: resize_rgb(rgb, predictor.image_size),
                          lambda x: predictor.predict(x[None])[0])
    from tledge.runtime import Classifier

    clf = Classifier(p, backend=backend, threads=threads)
    return FrameModel(p.name, clf.labels, clf.preprocess, lambda x: clf.invoke(x[None])[0])


# ------------------------------------------------------------------ sources

def list_cameras() -> list[str]:
    return sorted(glob.glob("/dev/video*"))


@dataclass
class Source:
    """An opened frame source.

    Attributes:
      description: for messages.
      live: a camera or stream (drop stale frames, reconnect on drop-out) vs a file or folder.
      read: () -> (ok, BGR frame or None); ok False at the end of a file.
      reopen: () -> None, for live sources that dropped out.
      release: () -> None.
      fps: the source's nominal frame rate (for --record), or None.
    """

    description: str
    live: bool
    read: Callable
    reopen: Callable
    release: Callable
    fps: Optional[float] = None


def open_source(spec: str) -> Source:

    if spec.lower() in ("picamera", "picamera2"):
        return _open_picamera()
    path = Path(spec)
    if spec.isdigit() or spec.startswith("/dev/video"):
        target = int(spec) if spec.isdigit() else spec
        return _open_capture(target, live=True, description=f"camera {spec}")
    if "://" in spec:
        return _open_capture(spec, live=True, description=f"stream {spec}")
    if path.is_dir():
        return _open_folder(path)
    if path.is_file():
        return _open_capture(str(path), live=False, description=f"video {path.name}")
    raise TledgeError(f"source {spec!r} is neither a camera index, /dev/videoN, a video file, a "
                      "folder of images nor a stream URL (cameras here: "
                      f"{', '.join(list_cameras()) or 'none'})")


def _open_capture(target, live: bool, description: str) -> Source:
    import cv2

    state = {"cap": cv2.VideoCapture(target)}
    if not state["cap"].isOpened():
        state["cap"].release()
        if isinstance(target, int) or str(target).startswith("/dev/video"):
            found = list_cameras()
            raise TledgeError(f"cannot open {description}: cameras found: "
                              f"{', '.join(found) if found else 'none'}; pass --source with one "
                              "of them, a video file or a folder of images")
        raise TledgeError(f"cannot open {description}: not a video OpenCV can read, or the "
                          "stream is unreachable")
    fps = state["cap"].get(cv2.CAP_PROP_FPS) or None

    def reopen():
        state["cap"].release()
        state["cap"] = cv2.VideoCapture(target)

    return Source(description, live, lambda: state["cap"].read(), reopen,
                  lambda: state["cap"].release(), fps)


def _open_folder(folder: Path) -> Source:
    import cv2

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TledgeError(f"folder {folder} has no images (jpg, png, bmp, webp)")
    it = iter(files)

    def read():
        try:
            path = next(it)
        except StopIteration:
            return False, None
        return True, cv2.imread(str(path), cv2.IMREAD_COLOR)  # None if unreadable: corrupt

    return Source(f"folder {folder} ({len(files)} images)", False, read, lambda: None,
                  lambda: None, None)


def _open_picamera() -> Source:
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise TledgeError("Picamera2 is not installed: sudo apt install python3-picamera2 and "
                          "create the venv with --system-site-packages")
    cam = Picamera2()
    cam.configure(cam.create_video_configuration(main={"format": "BGR888", "size": (640, 480)}))
    cam.start()
    return Source("Pi camera module", True, lambda: (True, cam.capture_array()), lambda: None,
                  cam.stop, 30.0)


# ------------------------------------------------------------------ the pipeline

@dataclass
class Packet:
    """One frame on its way through the stages."""

    index: int
    timestamp: float
    bgr: np.ndarray
    inputs: list
    times: dict = field(default_factory=dict)
    results: list = field(default_factory=list)


@dataclass
class Summary:
    """What a camera run did.

    Attributes:
      frames: frames classified.
      seconds: wall time from the first frame to the last.
      fps: frames / seconds.
      stages: p50 and p90 milliseconds per stage.
      agreement: fraction of frames where both models' top-1 agree (with --compare).
      dropped: stale live frames replaced by newer ones before inference.
      corrupt: frames that could not be decoded, skipped.
      reason: why the run ended.
    """

    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    stages: dict = field(default_factory=dict)
    agreement: Optional[float] = None
    dropped: int = 0
    corrupt: int = 0
    reason: str = ""

    def format(self) -> str:
        lines = [f"{self.frames} frames in {self.seconds:.1f}s: {self.fps:.1f} FPS end to end "
                 f"({self.reason}); dropped {self.dropped} stale, {self.corrupt} corrupt"]
        for stage, s in self.stages.items():
            lines.append(f"  {stage:<10} p50 {s['p50']:7.2f} ms   p90 {s['p90']:7.2f} ms")
        if self.agreement is not None:
            lines.append(f"  top-1 agreement with the compare model: {100 * self.agreement:.1f}%")
        return "\n".join(lines)


class _Latest:
    """A one-slot mailbox: put replaces what was there (and counts the drop)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def get(self, timeout: float):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


_END = object()


def run_camera(options: CameraOptions, echo: Callable[[str], None] = print) -> Summary:
    """Classify frames until the source ends, a limit is reached, q/Esc, or Ctrl-C."""
    import cv2

    if not Path(options.model).exists():
        raise TledgeError(f"model {options.model} does not exist: pass a .tflite file or a run "
                          "folder")
    models = [load_frame_model(options.model, options.backend, options.threads)]
    if options.compare:
        if not Path(options.compare).exists():
            raise TledgeError(f"compare model {options.compare} does not exist")
        models.append(load_frame_model(options.compare, options.backend, options.threads))
    source = open_source(options.source)
    window = not options.headless and _display_available()
    if not options.headless and not window:
        echo("WARNING: no display for a window (or a headless OpenCV): running headless")

    stop = threading.Event()
    frames_q: "queue.Queue" = queue.Queue(maxsize=4)   # files: every frame, in order
    latest = _Latest()                                 # live: newest frame only
    out_q: "queue.Queue" = queue.Queue(maxsize=8)
    counters = {"corrupt": 0, "ended": "", "error": None}
    timings = defaultdict(list)

    def capture():
        index, failures = 0, 0
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                ok, bgr = source.read()
                if not ok:
                    if not source.live:
                        counters["ended"] = "end of source"
                        break
                    if failures >= options.retries:
                        counters["ended"] = f"{source.description} dropped out"
                        break
                    delay = 0.5 * 2 ** failures
                    failures += 1
                    echo(f"WARNING: {source.description} gave no frame; retry {failures}/"
                         f"{options.retries} in {delay:.1f}s")
                    if stop.wait(delay):
                        break
                    source.reopen()
                    continue
                failures = 0
                if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
                    counters["corrupt"] += 1
                    continue
                t1 = time.perf_counter()
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                inputs = [m.prepare(rgb) for m in models]
                t2 = time.perf_counter()
                packet = Packet(index, time.time(), bgr, inputs,
                                {"capture": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)})
                index += 1
                if source.live:
                    latest.put(packet)
                else:
                    while not stop.is_set():
                        try:
                            frames_q.put(packet, timeout=0.1)
                            break
                        except queue.Full:
                            pass
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            counters["error"] = e
        finally:
            if source.live:
                latest.put(_END)
            else:
                frames_q.put(_END)

    writer_state = {"writer": None}
    jsonl = open_atomic(options.output)
    video_tmp = fileio.atomic_path(options.record) if options.record else None
    video_path = video_tmp.__enter__() if video_tmp else None
    agreement = {"n": 0, "agree": 0}
    status = {"last": time.perf_counter(), "frames": 0}

    def sink():
        failed = False
        while True:
            packet = out_q.get()
            if packet is _END:
                return
            if failed:
                continue  # drain, so the main thread never blocks on a dead sink
            try:
                deliver(packet)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                counters["error"], failed = e, True
                stop.set()

    def deliver(packet):
        t0 = time.perf_counter()
        annotated = draw_overlay(packet, models, agreement, status)
        packet.times["overlay"] = 1000 * (time.perf_counter() - t0)
        if video_path is not None:
            if writer_state["writer"] is None:
                h, w = annotated.shape[:2]
                writer_state["writer"] = cv2.VideoWriter(
                    str(video_path), cv2.VideoWriter_fourcc(*"mp4v"),
                    source.fps or 15.0, (w, h))
            writer_state["writer"].write(annotated)
        if jsonl is not None:
            jsonl.write(json.dumps(frame_record(packet, models)) + "\n")
        if window:
            cv2.imshow("tledge camera", annotated)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                stop.set()
        for stage, ms in packet.times.items():
            timings[stage].append(ms)
        status["frames"] += 1
        now = time.perf_counter()
        if not window and now - status["last"] >= 1.0:
            echo(status_line(packet, models, agreement, status, timings, now))
            status["last"], status["frames"] = now, 0

    threads = [threading.Thread(target=capture, name="capture", daemon=True),
               threading.Thread(target=sink, name="sink", daemon=True)]
    for t in threads:
        t.start()
    summary = Summary()
    start = first = None
    frames = 0
    try:
        start = time.perf_counter()
        while True:
            if options.max_frames is not None and frames >= options.max_frames:
                summary.reason = f"--max-frames {options.max_frames}"
                break
            if options.duration is not None and time.perf_counter() - start >= options.duration:
                summary.reason = f"--duration {options.duration:g}s"
                break
            if stop.is_set():
                summary.reason = "quit"
                break
            packet = latest.get(0.2) if source.live else _get(frames_q, 0.2)
            if packet is None:
                continue
            if packet is _END:
                summary.reason = counters["ended"] or "source stopped"
                break
            first = first or time.perf_counter()
            for i, (model, x) in enumerate(zip(models, packet.inputs)):
                t0 = time.perf_counter()
                scores = model.run(x)
                packet.times["inference" if i == 0 else "compare"] = \
                    1000 * (time.perf_counter() - t0)
                packet.results.append(top_classes(scores, model.labels, options.top_k))
            if len(packet.results) == 2:
                agreement["n"] += 1
                agreement["agree"] += packet.results[0][0].label == packet.results[1][0].label
            out_q.put(packet)
            frames += 1
    except KeyboardInterrupt:
        summary.reason = "interrupted"
    finally:
        stop.set()
        out_q.put(_END)
        for t in threads:
            t.join(timeout=10)
        source.release()
        if writer_state["writer"] is not None:
            writer_state["writer"].release()
        if video_tmp is not None:
            video_tmp.__exit__(None, None, None) if frames else _discard(video_tmp)
        if jsonl is not None:
            jsonl.commit()
        if window:
            cv2.destroyAllWindows()
    if counters["error"] is not None:
        raise TledgeError(f"reading {source.description} failed: {counters['error']}")
    end = time.perf_counter()
    summary.frames = frames
    summary.seconds = end - (first or end)
    summary.fps = frames / summary.seconds if summary.seconds > 0 else 0.0
    summary.stages = {s: _p50_p90(timings[s]) for s in STAGES if timings.get(s)}
    summary.agreement = agreement["agree"] / agreement["n"] if agreement["n"] else None
    summary.dropped = latest.dropped
    summary.corrupt = counters["corrupt"]
    if frames == 0 and counters["corrupt"]:
        raise TledgeError(f"no frame of {source.description} could be decoded "
                          f"({counters['corrupt']} corrupt)")
    return summary


def _get(q: "queue.Queue", timeout: float):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


def _discard(ctx) -> None:
    try:
        ctx.__exit__(RuntimeError, RuntimeError("no frames"), None)
    except RuntimeError:
        pass


def _p50_p90(ms: list) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90))}


def _display_available() -> bool:
    import cv2

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    gui = [line for line in cv2.getBuildInformation().splitlines() if "GUI:" in line]
    return bool(gui) and "NONE" not in gui[0]


class _AtomicLines:
    """A text file written line by line to a temp file, renamed into place at the end."""

    def __init__(self, path: str):
        self._ctx = fileio.atomic_path(path)
        self._tmp = self._ctx.__enter__()
        self._f = open(self._tmp, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self._f.write(text)

    def commit(self) -> None:
        self._f.close()
        self._ctx.__exit__(None, None, None)


def open_atomic(path: Optional[str]) -> Optional[_AtomicLines]:
    return _AtomicLines(path) if path else None


def frame_record(packet: Packet, models: list) -> dict:
    record = {"frame": packet.index, "timestamp": round(packet.timestamp, 4),
              "top_k": [[c.label, round(c.score, 5)] for c in packet.results[0]],
              "latency_ms": {models[0].name: round(packet.times["inference"], 3)}}
    if len(packet.results) > 1:
        record["compare_top_k"] = [[c.label, round(c.score, 5)] for c in packet.results[1]]
        record["latency_ms"][models[1].name] = round(packet.times["compare"], 3)
        record["agree"] = packet.results[0][0].label == packet.results[1][0].label
    return record


def draw_overlay(packet: Packet, models: list, agreement: dict, status: dict) -> np.ndarray:
    """Top-k labels and scores, latency per model, FPS and agreement, on a copy of the frame."""
    import cv2

    img = packet.bgr.copy()
    h = img.shape[0]
    scale = max(0.4, h / 720)
    line = int(26 * scale)
    y = line

    def text(s: str, colour=(255, 255, 255)):
        nonlocal y
        cv2.putText(img, s, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, s, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
        y += line

    for i, (model, result) in enumerate(zip(models, packet.results)):
        key = "inference" if i == 0 else "compare"
        colour = (80, 255, 80) if i == 0 else (255, 200, 80)
        text(f"{model.name}: {packet.times.get(key, 0):.1f} ms", colour)
        for c in result:
            text(f"  {c.label} {c.score:.2f}", colour)
    if agreement["n"]:
        text(f"agreement {100 * agreement['agree'] / agreement['n']:.1f}% of {agreement['n']}")
    return img


def status_line(packet: Packet, models, agreement, status, timings, now) -> str:
    fps = status["frames"] / max(now - status["last"], 1e-6)
    top: Class = packet.results[0][0]
    line = (f"frame {packet.index}: {fps:5.1f} FPS, inference {packet.times['inference']:.1f} ms, "
            f"{top.label} ({top.score:.2f})")
    if agreement["n"]:
        other = packet.results[1][0]
        line += (f" | {models[1].name}: {other.label} ({other.score:.2f}), agreement "
                 f"{100 * agreement['agree'] / agreement['n']:.1f}%")
    return line
