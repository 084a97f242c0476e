"""Where the camera's frames come from: a V4L2 camera, the Pi camera module (Picamera2), a
video file, a stream or a folder of images, each opened as a ``Source``; ``Frames`` reads one
with the retry and back-off of a live source that drops out, and replays a file for --loop."""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # its V4L2 probing warnings are not ours

from tledge.core.errors import TledgeError
from tledge.runtime.preprocess import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


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


MIN_FPS, MAX_FPS = 1.0, 240.0  # frame rates a video header is believed within


def believable_fps(value, description: str) -> Optional[float]:
    """A video header's frame rate where it is believable, else None, said once.

    A header is untrusted: one claiming 1e-9 FPS made ``--realtime`` wait for ever after its
    first frame, and 1e9 or 1e-9 made ``--record`` fail blaming the output file. Outside
    MIN_FPS..MAX_FPS the rate is unknown: a video then plays as fast as it decodes and is
    recorded at 15 FPS.
    """
    import logging
    import math

    if not value:  # 0: the header says nothing
        return None
    if not math.isfinite(value) or not MIN_FPS <= value <= MAX_FPS:
        logging.getLogger("tledge").warning(
            "%s: its header claims %.3g FPS, outside %g-%g: not believed (played as fast as it "
            "decodes, recorded at 15 FPS)", description, value, MIN_FPS, MAX_FPS)
        return None
    return float(value)


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
    fps = believable_fps(state["cap"].get(cv2.CAP_PROP_FPS), description)

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


class Frames:
    """The good frames of a source, in order: a live source that gives none is reopened after
    0.5 s, 1 s, 2 s ... (``retries`` times in a row at most); a file or folder ends, or with
    ``loop`` plays again from its start; frames that cannot be decoded are counted and skipped.

    Attributes:
      source: the opened Source.
      ended: why ``next`` returned None ("" while frames come).
      corrupt: frames skipped because they could not be decoded.
      good: frames returned.
      read_at: time.perf_counter() when the read of the frame last returned began (a
        frame's capture time leaves out the retries and skipped frames before it).
    """

    def __init__(self, source: Source, retries: int, loop: bool, stop: threading.Event,
                 echo: Callable[[str], None]):
        self.source, self.retries, self.loop, self.stop, self.echo = \
            source, retries, loop, stop, echo
        self.ended, self.corrupt, self.good = "", 0, 0
        self.read_at = 0.0

    def next(self) -> Optional[tuple]:
        """(BGR frame, the camera's own small RGB frame or None), or None once the source has
        ended (``ended`` says why) or ``stop`` is set."""
        failures, source = 0, self.source
        while not self.stop.is_set():
            started = time.perf_counter()
            ok, bgr, small = source.read()
            if ok:
                failures = 0
                if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
                    self.corrupt += 1
                    continue
                self.good += 1
                self.read_at = started
                return bgr, small
            if not source.live:
                if self.loop and self.good:
                    source.reopen()  # --loop: play the file again
                    continue
                self.ended = "end of source"
                return None
            if failures >= self.retries:
                self.ended = f"{source.description} dropped out"
                return None
            delay = 0.5 * 2 ** failures
            failures += 1
            self.echo(f"WARNING: {source.description} gave no frame; retry {failures}/"
                      f"{self.retries} in {delay:.1f}s")
            if self.stop.wait(delay):
                return None
            source.reopen()
        return None
