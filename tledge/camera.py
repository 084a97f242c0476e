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
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # its V4L2 probing warnings are not ours

from tledge import fileio
from tledge.errors import TledgeError, first_line
from tledge.runtime import Class, top_classes

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STAGES = ("capture", "preprocess", "inference", "compare", "overlay", "jpeg")


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
      capture_size: (width, height) to ask a camera for; None picks one: the smallest common
        size at or above the model's input when nothing needs full frames (headless, no
        --record), else the camera's own. The Pi camera always delivers full frames on its
        main stream and feeds inference from its ISP-scaled lores stream.
      loop: play a video file or folder again from the start when it ends (demos, --serve).
      realtime: play a video file at its own frame rate (True) or as fast as it decodes
        (False); None: at its frame rate when a window or --serve shows it, else flat out.
        Cameras and streams always deliver in real time; a folder has no frame rate.
      serve: [HOST:]PORT to serve a live page (MJPEG stream, figures, JSON) on; None: none.
        HOST defaults to 127.0.0.1.
      serve_token: a secret the page's URLs must carry (?token=...); None: none.
      serve_fps: JPEGs a second at most on the page's stream (0: every frame).
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
    capture_size: Optional[tuple] = None
    loop: bool = False
    realtime: Optional[bool] = None
    serve: Optional[str] = None
    serve_token: Optional[str] = None
    serve_fps: float = 15.0


# ------------------------------------------------------------------ models

@dataclass
class FrameModel:
    """A model as the camera uses it: prepare (in the capture thread) and run (in main).

    Attributes:
      name: for the overlay and the JSON lines.
      labels: class labels.
      prepare: RGB frame -> model input (resized, quantized).
      run: model input -> dequantized scores.
      size: the model's input (height, width).
    """

    name: str
    labels: list
    prepare: Callable[[np.ndarray], np.ndarray]
    run: Callable[[np.ndarray], np.ndarray]
    size: tuple = (224, 224)


def load_frame_model(path: str, backend: Optional[str], threads: Optional[int]) -> FrameModel:
    p = Path(path)
    if p.is_dir():
        from tledge.evaluate import load_predictor
        from tledge.runtime.preprocess import resize_rgb

        predictor = load_predictor(p)
        return FrameModel(predictor.name, predictor.labels,
                          lambda rgb: resize_rgb(rgb, predictor.image_size),
                          lambda x: predictor.predict(x[None])[0], tuple(predictor.image_size))
    from tledge.runtime import Classifier

    clf = Classifier(p, backend=backend, threads=threads)
    return FrameModel(p.name, clf.labels, clf.preprocess, lambda x: clf.invoke(x[None])[0],
                      (clf.height, clf.width))


# ------------------------------------------------------------------ sources

def list_cameras() -> list[str]:
    return sorted(glob.glob("/dev/video*"))


@dataclass
class Source:
    """An opened frame source.

    Attributes:
      description: for messages.
      live: a camera or stream (drop stale frames, reconnect on drop-out) vs a file or folder.
      read: () -> (ok, BGR frame or None, RGB frame for inference or None); ok False at the
        end of a file. The third is a smaller frame the camera scaled itself (the Pi's ISP
        lores stream); None means inference uses the BGR frame.
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


# Common camera sizes (width, height), smallest first: V4L2 drivers snap a request to one of
# theirs, and these are the ones nearly every UVC camera has.
CAPTURE_SIZES = ((160, 120), (176, 144), (320, 240), (352, 288), (640, 480), (800, 600),
                 (1280, 720), (1280, 960), (1920, 1080))


def capture_size_for(model_size: tuple) -> tuple:
    """The smallest common camera size (width, height) at or above the model's input (h, w)."""
    height, width = model_size
    return next(((w, h) for w, h in CAPTURE_SIZES if w >= width and h >= height),
                CAPTURE_SIZES[-1])


def open_source(spec: str, model_size: Optional[tuple] = None,
                capture_size: Optional[tuple] = None) -> Source:
    """``model_size`` (h, w): the Pi camera's lores stream is scaled to it by the ISP.
    ``capture_size`` (w, h): asked of a V4L2 camera (None: its own default)."""
    if spec.lower() in ("picamera", "picamera2"):
        return _open_picamera(model_size)
    path = Path(spec)
    if spec.isdigit() or spec.startswith("/dev/video"):
        target = int(spec) if spec.isdigit() else spec
        return _open_capture(target, live=True, description=f"camera {spec}",
                             size=capture_size)
    if "://" in spec:
        return _open_capture(spec, live=True, description=f"stream {spec}")
    if path.is_dir():
        return _open_folder(path)
    if path.is_file():
        return _open_capture(str(path), live=False, description=f"video {path.name}")
    raise TledgeError(f"source {spec!r} is neither a camera index, /dev/videoN, a video file, a "
                      "folder of images nor a stream URL (cameras here: "
                      f"{', '.join(list_cameras()) or 'none'})")


def _open_capture(target, live: bool, description: str,
                  size: Optional[tuple] = None) -> Source:
    import cv2

    def open_it():
        # One decoding thread: FFmpeg's default, a thread per core, competes with inference
        # for every core; a 640x480 frame decodes in under a millisecond on one.
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
        if size and cap.isOpened():
            # The driver snaps this to the nearest size it has; a smaller frame costs the CPU
            # less to convert, copy and resize before inference.
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        return cap

    state = {"cap": open_it()}
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
        state["cap"] = open_it()

    def read():
        ok, bgr = state["cap"].read()
        return ok, bgr, None

    return Source(description, live, read, reopen, lambda: state["cap"].release(), fps)


def _open_folder(folder: Path) -> Source:
    from tledge.runtime import load_rgb
    from tledge.runtime.preprocess import is_regular_file

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                   and is_regular_file(p))  # no pipe (it would block), no broken link
    if not files:
        raise TledgeError(f"folder {folder} has no images (jpg, png, bmp, webp)")
    state = {"it": iter(files)}

    def read():
        try:
            path = next(state["it"])
        except StopIteration:
            return False, None, None
        # The one image loader of training and predict (transparency onto white, 16-bit
        # scaled, EXIF orientation), so a folder shows the camera what training saw.
        try:
            rgb = load_rgb(path)
        except TledgeError:
            return True, None, None  # counted as corrupt
        return True, np.ascontiguousarray(rgb[:, :, ::-1]), rgb

    def reopen():
        state["it"] = iter(files)

    return Source(f"folder {folder} ({len(files)} images)", False, read, reopen,
                  lambda: None, None)


# Picamera2 names formats after DRM fourcc codes, which are little-endian: "RGB888" arrives as
# [B, G, R] per pixel (what OpenCV calls BGR) and "BGR888" as [R, G, B]; the X formats add a
# fourth byte of 255 ("XRGB8888" is [B, G, R, 255]). See the Picamera2 manual, section 4.2.2.4.
PICAMERA_MAIN = {"format": "RGB888", "size": (640, 480)}


def picamera_lores_size(model_size: tuple, main_size: tuple = PICAMERA_MAIN["size"]) -> tuple:
    """The lores stream's (width, height): the model's input, rounded up to even sizes (YUV420
    halves both for its colour planes) and at most the main stream's."""
    height, width = model_size
    width, height = width + width % 2, height + height % 2
    return min(width, main_size[0]), min(height, main_size[1])


def _open_picamera(model_size: Optional[tuple] = None) -> Source:
    import cv2

    try:
        from picamera2 import Picamera2
    except ImportError as cause:
        raise TledgeError("Picamera2 is not installed: sudo apt install python3-picamera2 and "
                          "create the venv with --system-site-packages") from cause
    try:
        cam = Picamera2()
    except (IndexError, RuntimeError) as e:  # no camera attached, or held by another process
        raise TledgeError(f"cannot open the Pi camera ({type(e).__name__}: {e}): check its "
                          "cable and that no other program (rpicam-hello, another tledge) uses "
                          "it") from e
    # main: full frames for the window, --record and the overlay. lores: the same field of view
    # scaled by the ISP to about the model's input, free of CPU, which feeds inference. A Pi 4's
    # lores stream must be YUV420.
    lores = None
    if model_size:
        lores = {"format": "YUV420", "size": picamera_lores_size(model_size)}
    config = cam.create_video_configuration(main=dict(PICAMERA_MAIN), lores=lores)
    if hasattr(cam, "align_configuration"):
        cam.align_configuration(config)  # sizes the ISP can produce (widths to its alignment)
    cam.configure(config)
    lores_w, lores_h = config["lores"]["size"] if lores else (0, 0)
    cam.start()

    def read():
        if lores is None:
            bgr = cam.capture_array("main")
            return True, np.ascontiguousarray(bgr[..., :3]), None
        (bgr, yuv), _ = cam.capture_arrays(["main", "lores"])
        # I420 planar; rows may be padded to the stride, so convert at the stride and crop.
        rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)[:lores_h, :lores_w]
        return True, np.ascontiguousarray(bgr[..., :3]), np.ascontiguousarray(rgb)

    def release():
        cam.stop()
        if hasattr(cam, "close"):
            cam.close()

    return Source("Pi camera module", True, read, lambda: None, release, 30.0)


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


class _OutputFailed(Exception):
    """An output's failure, with the output, so the error names it rather than the source."""

    def __init__(self, output, cause: BaseException):
        super().__init__(str(cause))
        self.output, self.cause = output, cause


# ------------------------------------------------------------------ outputs

class FrameRate:
    """Frames a second over the last ``window`` frames: what the overlay and the page show."""

    def __init__(self, window: int = 60):
        self.times: deque = deque(maxlen=window)

    def tick(self, when: float) -> None:
        """A frame was classified at ``when`` (time.perf_counter())."""
        self.times.append(when)

    def fps(self) -> Optional[float]:
        """None before two frames."""
        times = list(self.times)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


@dataclass
class RunInfo:
    """What every output may read about the run: the models, the source, the shared figures.

    Attributes:
      models: the FrameModels (the first is the model shown; a second is --compare).
      source: the opened Source.
      agreement: {"n": frames compared, "agree": frames whose top-1 labels agree}.
      timings: stage -> list of milliseconds, appended as frames go through.
      echo: prints a line for the user.
      rate: frames classified a second, end to end.
    """

    models: list
    source: Source
    agreement: dict
    timings: dict
    echo: Callable[[str], None]
    rate: FrameRate


class Output:
    """Where frames go once classified. A new output is one small subclass: ``frame`` is called
    in the sink thread for every frame, in order; nothing here runs in the inference thread.

    Attributes:
      annotated: wants the frame with the overlay drawn (the overlay is skipped when no output
        does, which saves a headless Pi that work).
      full_frames: needs the camera's full-size frames (a window, a video, a web page), so the
        camera is not asked for frames near the model's input size.
      live_view: someone watches it as it happens (a window, the web page): a video file then
        plays at its own frame rate, not as fast as it decodes.
    """

    annotated = False
    full_frames = False
    live_view = False

    def start(self, run: RunInfo) -> None:
        self.run = run

    def frame(self, packet: "Packet", annotated: Optional[np.ndarray]) -> None:
        raise NotImplementedError

    def wants_stop(self) -> bool:
        return False

    def close(self, frames: int) -> None:
        """The run ended after ``frames`` frames: commit (or, with none, discard) what was
        written."""


class WindowOutput(Output):
    annotated = full_frames = live_view = True

    def frame(self, packet, annotated):
        import cv2

        cv2.imshow("tledge camera", annotated)
        self._stop = cv2.waitKey(1) & 0xFF in (ord("q"), 27)

    def wants_stop(self):
        return getattr(self, "_stop", False)

    def close(self, frames):
        import cv2

        cv2.destroyAllWindows()


class StatusLineOutput(Output):
    """A line a second: FPS, latency, top-1 (and the compare model's)."""

    def start(self, run):
        super().start(run)
        self.status = {"last": time.perf_counter(), "frames": 0}

    def frame(self, packet, annotated):
        self.status["frames"] += 1
        now = time.perf_counter()
        if now - self.status["last"] >= 1.0:
            self.run.echo(status_line(packet, self.run.models, self.run.agreement, self.status,
                                      self.run.timings, now))
            self.status["last"], self.status["frames"] = now, 0


# Containers OpenCV's FFmpeg backend writes with the mp4v codec that --record uses.
RECORD_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


class RecordOutput(Output):
    """--record: the annotated video, written to a temporary file and published (renamed) at
    the end only when it reads back whole: a full disk or an unwritable container never leaves
    an unplayable file under the user's name."""

    annotated = full_frames = True
    name = "--record"

    def __init__(self, path: str):
        if Path(path).suffix.lower() not in RECORD_EXTENSIONS:
            raise TledgeError(f"--record {path}: OpenCV writes {', '.join(RECORD_EXTENSIONS)} "
                              "videos; name the file with one of those extensions")
        self.path, self.writer, self.written = path, None, 0
        self._ctx = fileio.atomic_path(path)
        self._tmp = self._ctx.__enter__()

    def frame(self, packet, annotated):
        import cv2

        if self.writer is None:
            h, w = annotated.shape[:2]
            self.writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.run.source.fps or 15.0, (w, h))
            if not self.writer.isOpened():
                raise TledgeError(f"cannot write a video to {self.path}: OpenCV could not open "
                                  "it for writing")
        self.writer.write(annotated)
        self.written += 1

    def close(self, frames):
        if self.writer is not None:
            self.writer.release()
        if not self.written:
            return _discard(self._ctx)
        if not _reads_back(self._tmp):
            _discard(self._ctx)
            raise TledgeError(f"the recording {self.path} was not written whole (a full disk?): "
                              "it was not kept; free some space or --record elsewhere")
        self._ctx.__exit__(None, None, None)


class JsonLinesOutput(Output):
    """--output: one JSON line per frame."""

    name = "--output"

    def __init__(self, path: str):
        self.lines = _AtomicLines(path)

    def frame(self, packet, annotated):
        self.lines.write(json.dumps(frame_record(packet, self.run.models)) + "\n")

    def close(self, frames):
        # No frame, no file: an empty --output would block the rerun ("already exists").
        self.lines.commit() if frames else self.lines.discard()


def make_outputs(options: CameraOptions, echo: Callable[[str], None]) -> list:
    """The outputs ``options`` asks for, in the order they get each frame."""
    outputs: list = []
    window = not options.headless and _display_available()
    if not options.headless and not window:
        echo("WARNING: no display for a window (or a headless OpenCV): running headless")
    outputs.append(WindowOutput() if window else StatusLineOutput())
    if options.record:
        outputs.append(RecordOutput(options.record))
    if options.output:
        outputs.append(JsonLinesOutput(options.output))
    if options.serve:
        from tledge.serve import ServeOutput
        outputs.append(ServeOutput(options.serve, options.serve_token, options.serve_fps))
    return outputs


# ------------------------------------------------------------------ the run

class Pipeline:
    """capture thread -> inference (the calling thread) -> sink thread -> outputs."""

    def __init__(self, source: Source, models: list, options: CameraOptions, outputs: list,
                 echo: Callable[[str], None], stop: Optional[threading.Event] = None):
        self.source, self.models, self.options, self.outputs = source, models, options, outputs
        self.echo = echo
        self.stop = stop or threading.Event()
        self.frames_q: "queue.Queue" = queue.Queue(maxsize=4)  # files: every frame, in order
        self.latest = _Latest()                                # live: newest frame only
        self.out_q: "queue.Queue" = queue.Queue(maxsize=8)
        self.counters = {"corrupt": 0, "ended": "", "error": None}
        self.timings: dict = defaultdict(list)
        self.agreement = {"n": 0, "agree": 0}
        self.annotate = any(o.annotated for o in outputs)
        realtime = options.realtime if options.realtime is not None else \
            any(o.live_view for o in outputs)
        # seconds between a file's frames when it plays at its own rate; 0: flat out
        self.frame_interval = 1.0 / source.fps if realtime and not source.live and \
            source.fps and 0 < source.fps <= 1000 else 0.0
        self.rate = FrameRate()  # frames classified a second, for the overlay and the page

    # capture: read, convert, resize and quantize for each model
    def capture(self) -> None:
        import cv2

        index, failures, source, options = 0, 0, self.source, self.options
        due = time.perf_counter()  # when the next frame of a file playing in real time is due
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                ok, bgr, small = source.read()
                if not ok:
                    if not source.live:
                        if options.loop and index:
                            source.reopen()  # --loop: play the file again
                            continue
                        self.counters["ended"] = "end of source"
                        break
                    if failures >= options.retries:
                        self.counters["ended"] = f"{source.description} dropped out"
                        break
                    delay = 0.5 * 2 ** failures
                    failures += 1
                    self.echo(f"WARNING: {source.description} gave no frame; retry {failures}/"
                              f"{options.retries} in {delay:.1f}s")
                    if self.stop.wait(delay):
                        break
                    source.reopen()
                    continue
                failures = 0
                if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
                    self.counters["corrupt"] += 1
                    continue
                t1 = time.perf_counter()
                rgb = small if small is not None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                inputs = [m.prepare(rgb) for m in self.models]
                t2 = time.perf_counter()
                packet = Packet(index, time.time(), bgr, inputs,
                                {"capture": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)})
                index += 1
                if self.frame_interval:  # the file's own frame rate: wait for this frame's time
                    now = time.perf_counter()
                    if due > now and self.stop.wait(due - now):
                        break
                    # on time: the next is one interval on; late by a frame or more (slow
                    # inference): start the cadence again from now rather than rush to catch up
                    due = due + self.frame_interval if now - due < self.frame_interval \
                        else now + self.frame_interval
                if source.live:
                    self.latest.put(packet)
                else:
                    while not self.stop.is_set():
                        try:
                            self.frames_q.put(packet, timeout=0.1)
                            break
                        except queue.Full:
                            pass
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.counters["error"] = e
        finally:
            if source.live:
                self.latest.put(_END)
            else:  # a full queue that nobody reads any more (the run stopped) must not block
                while True:
                    try:
                        self.frames_q.put(_END, timeout=0.1)
                        break
                    except queue.Full:
                        if self.stop.is_set():
                            break

    # sink: overlay once, then every output
    def sink(self) -> None:
        failed = False
        while True:
            packet = self.out_q.get()
            if packet is _END:
                return
            if failed:
                continue  # drain, so the main thread never blocks on a dead sink
            try:
                annotated = None
                if self.annotate:
                    t0 = time.perf_counter()
                    annotated = draw_overlay(packet, self.models, self.agreement,
                                             {"fps": self.rate.fps()})
                    packet.times["overlay"] = 1000 * (time.perf_counter() - t0)
                for stage, ms in packet.times.items():
                    self.timings[stage].append(ms)
                for output in self.outputs:
                    try:
                        output.frame(packet, annotated)
                    except Exception as e:  # noqa: BLE001 - reported by the main thread
                        raise _OutputFailed(output, e) from e
                    if output.wants_stop():
                        self.stop.set()
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                self.counters["error"], failed = e, True
                self.stop.set()

    def run(self) -> Summary:
        options = self.options
        info = RunInfo(self.models, self.source, self.agreement, self.timings, self.echo,
                       self.rate)
        started = []
        try:
            for output in self.outputs:
                output.start(info)
                started.append(output)
        except BaseException:
            for output in started:
                output.close(0)
            raise
        threads = [threading.Thread(target=self.capture, name="capture", daemon=True),
                   threading.Thread(target=self.sink, name="sink", daemon=True)]
        for t in threads:
            t.start()
        summary = Summary()
        first = last = None
        frames = 0
        try:
            start = time.perf_counter()
            while True:
                if options.max_frames is not None and frames >= options.max_frames:
                    summary.reason = f"--max-frames {options.max_frames}"
                    break
                if options.duration is not None and \
                        time.perf_counter() - start >= options.duration:
                    summary.reason = f"--duration {options.duration:g}s"
                    break
                if self.stop.is_set():
                    summary.reason = "quit"
                    break
                packet = self.latest.get(0.2) if self.source.live else _get(self.frames_q, 0.2)
                if packet is None:
                    continue
                if packet is _END:
                    summary.reason = self.counters["ended"] or "source stopped"
                    break
                first = first or time.perf_counter()
                for i, (model, x) in enumerate(zip(self.models, packet.inputs)):
                    t0 = time.perf_counter()
                    scores = model.run(x)
                    packet.times["inference" if i == 0 else "compare"] = \
                        1000 * (time.perf_counter() - t0)
                    packet.results.append(top_classes(scores, model.labels, options.top_k))
                if len(packet.results) == 2:
                    self.agreement["n"] += 1
                    self.agreement["agree"] += \
                        packet.results[0][0].label == packet.results[1][0].label
                last = time.perf_counter()
                self.rate.tick(last)
                self.out_q.put(packet)
                frames += 1
        except KeyboardInterrupt:
            summary.reason = "interrupted"
        finally:
            self.stop.set()
            self.out_q.put(_END)
            for t in threads:
                t.join(timeout=10)
            self.source.release()
            for output in self.outputs:
                try:
                    output.close(frames)
                except Exception as e:  # noqa: BLE001 - one output must not lose the others
                    self.counters["error"] = self.counters["error"] or _OutputFailed(output, e)
        error = self.counters["error"]
        if isinstance(error, _OutputFailed):  # an output, not the source, failed: say which
            cause = error.cause
            raise cause if isinstance(cause, TledgeError) else TledgeError(
                f"writing {getattr(error.output, 'name', type(error.output).__name__)} failed: "
                f"{first_line(cause)}") from cause
        if error is not None:
            raise TledgeError(f"reading {self.source.description} failed: "
                              f"{first_line(error)}") from error
        end = last or time.perf_counter()  # the last frame, not the clean-up after it
        summary.frames = frames
        summary.seconds = end - (first or end)
        summary.fps = frames / summary.seconds if summary.seconds > 0 else 0.0
        summary.stages = {s: _p50_p90(self.timings[s]) for s in STAGES if self.timings.get(s)}
        summary.agreement = self.agreement["agree"] / self.agreement["n"] \
            if self.agreement["n"] else None
        summary.dropped = self.latest.dropped
        summary.corrupt = self.counters["corrupt"]
        if frames == 0 and self.counters["corrupt"]:
            raise TledgeError(f"no frame of {self.source.description} could be decoded "
                              f"({self.counters['corrupt']} corrupt)")
        if frames == 0 and summary.reason != "interrupted":
            raise TledgeError(f"{self.source.description} delivered no frame ({summary.reason})"
                              ": check that it is connected and not used by another program, "
                              "or try another --source")
        return summary


def run_camera(options: CameraOptions, echo: Callable[[str], None] = print,
               stop: Optional[threading.Event] = None) -> Summary:
    """Classify frames until the source ends, a limit is reached, q/Esc, Ctrl-C, or ``stop``
    is set (by a program that runs the camera in a thread of its own)."""
    if not Path(options.model).exists():
        raise TledgeError(f"model {options.model} does not exist: pass a .tflite file or a run "
                          "folder")
    models = [load_frame_model(options.model, options.backend, options.threads)]
    if options.compare:
        if not Path(options.compare).exists():
            raise TledgeError(f"compare model {options.compare} does not exist")
        models.append(load_frame_model(options.compare, options.backend, options.threads))
    outputs = make_outputs(options, echo)
    try:
        capture_size = options.capture_size
        if capture_size is None and not any(o.full_frames for o in outputs):
            capture_size = capture_size_for(models[0].size)  # nothing needs more than inference
        source = open_source(options.source, models[0].size, capture_size)
    except BaseException:
        for output in outputs:
            output.close(0)
        raise
    return Pipeline(source, models, options, outputs, echo, stop).run()


def _get(q: "queue.Queue", timeout: float):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


def _reads_back(path) -> bool:
    """A video file that OpenCV opens and decodes a first frame of."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return cap.isOpened() and cap.read()[0]
    finally:
        cap.release()


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

    def discard(self) -> None:
        self._f.close()
        _discard(self._ctx)


def frame_record(packet: Packet, models: list) -> dict:
    record = {"frame": packet.index, "timestamp": round(packet.timestamp, 4),
              "top_k": [[c.label, round(c.score, 5)] for c in packet.results[0]],
              "latency_ms": {models[0].name: round(packet.times["inference"], 3)}}
    if len(packet.results) > 1:
        record["compare_top_k"] = [[c.label, round(c.score, 5)] for c in packet.results[1]]
        record["latency_ms"][models[1].name] = round(packet.times["compare"], 3)
        record["agree"] = packet.results[0][0].label == packet.results[1][0].label
    return record


FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def overlay_lines(packet: Packet, models: list, agreement: dict,
                  fps: Optional[float] = None) -> list:
    """(text, BGR colour) per line: FPS end to end, each model's latency and top-k, then the
    agreement."""
    lines = [(f"{fps:.1f} FPS", (255, 255, 255))] if fps else []
    for i, (model, result) in enumerate(zip(models, packet.results)):
        key = "inference" if i == 0 else "compare"
        colour = (80, 255, 80) if i == 0 else (255, 200, 80)
        lines.append((f"{model.name}: {packet.times.get(key, 0):.1f} ms", colour))
        lines += [(f"  {c.label} {c.score:.2f}", colour) for c in result]
    if agreement["n"]:
        lines.append((f"agreement {100 * agreement['agree'] / agreement['n']:.1f}% of "
                      f"{agreement['n']}", (255, 255, 255)))
    return lines


def draw_text_panel(img: np.ndarray, lines: list, origin: tuple = (0, 0)) -> tuple:
    """Draw ``lines`` on a darkened panel sized from the text itself; returns the panel's
    (x0, y0, x1, y1).

    Readable on any background, and with any OpenCV: the panel is measured with the very
    thickness the text is drawn with (OpenCV 5's text width grows with thickness, so a thick
    outline behind thin text no longer lines up with it).
    """
    import cv2

    h, w = img.shape[:2]
    scale = max(0.4, h / 720)
    thickness = 1 if scale < 0.9 else 2
    pad, gap = max(3, int(6 * scale)), max(2, int(6 * scale))
    sizes = [cv2.getTextSize(text, FONT, scale, thickness) for text, _ in lines]
    if not sizes:
        return origin + origin
    ascent = max(size[0][1] for size in sizes)
    step = ascent + max(size[1] for size in sizes) + gap  # one line height: even spacing
    x0, y0 = origin
    x1 = min(w, x0 + 2 * pad + max(size[0][0] for size in sizes))
    y1 = min(h, y0 + 2 * pad + len(lines) * step - gap)
    if x1 <= x0 or y1 <= y0:
        return x0, y0, x0, y0
    roi = img[y0:y1, x0:x1]
    roi[...] = (roi.astype(np.uint16) * 3 // 10).astype(np.uint8)  # 70% towards black
    for i, (text, colour) in enumerate(lines):
        baseline_y = y0 + pad + ascent + i * step
        cv2.putText(img, text, (x0 + pad, baseline_y), FONT, scale, colour, thickness,
                    cv2.LINE_AA)
    return x0, y0, x1, y1


def draw_overlay(packet: Packet, models: list, agreement: dict, status: dict) -> np.ndarray:
    """FPS (``status["fps"]``), top-k labels and scores, latency per model and agreement, on a
    copy of the frame."""
    img = packet.bgr.copy()
    draw_text_panel(img, overlay_lines(packet, models, agreement, status.get("fps")))
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
