"""Where frames go once classified: a window, a status line, --record, --output (JSON lines),
and the live page (``tledge.camera.serve``). A new output is one small ``Output`` subclass.

Also what outputs share: the ``Packet`` a frame travels in, the ``RunInfo`` every output may
read, the ``FrameRate`` the overlay and the page show, and ``Latest``, the one-slot mailbox that
keeps a slow consumer from ever holding up the one before it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.core import fileio
from tledge.camera.sources import Source
from tledge.core.errors import TledgeError
from tledge.runtime import Class


@dataclass
class Packet:
    """One frame on its way through the stages."""

    index: int
    timestamp: float
    bgr: np.ndarray
    inputs: list
    times: dict = field(default_factory=dict)
    results: list = field(default_factory=list)  # each model's top-k, from the sink
    scores: list = field(default_factory=list)   # each model's (dequantized by the sink)


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

    def frame(self, packet: Packet, annotated: Optional[np.ndarray]) -> None:
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


def frame_record(packet: Packet, models: list) -> dict:
    record = {"frame": packet.index, "timestamp": round(packet.timestamp, 4),
              "top_k": [[c.label, round(c.score, 5)] for c in packet.results[0]],
              "latency_ms": {models[0].name: round(packet.times["inference"], 3)}}
    if len(packet.results) > 1:
        record["compare_top_k"] = [[c.label, round(c.score, 5)] for c in packet.results[1]]
        record["latency_ms"][models[1].name] = round(packet.times["compare"], 3)
        record["agree"] = packet.results[0][0].label == packet.results[1][0].label
    return record


class Latest:
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


class OutputFailed(Exception):
    """An output's failure, with the output, so the error names it rather than the source."""

    def __init__(self, output, cause: BaseException):
        super().__init__(str(cause))
        self.output, self.cause = output, cause


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


def display_available() -> bool:
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
