"""The camera's run: three threads keep the stages overlapped, so end-to-end FPS is set by
inference alone.

    capture  ->  read a frame, BGR->RGB, resize and quantize for each model (the runtime's own
                 preprocessing); live sources keep only the newest frame (stale ones are
                 dropped), files hand over every frame in order
    main     ->  inference of the model (and of --compare, on the very same frame)
    sink     ->  overlay, then every output (window, --record, --output, --serve, status line)
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.camera.options import CameraOptions, load_frame_model
from tledge.camera.outputs import (FrameRate, JsonLinesOutput, Latest, OutputFailed,
                                   Packet, RecordOutput, RunInfo, StatusLineOutput,
                                   WindowOutput, display_available)
from tledge.camera.overlay import draw_overlay
from tledge.camera.sources import Frames, Source, capture_size_for, open_source
from tledge.core.errors import TledgeError, first_line
from tledge.runtime import top_classes

STAGES = ("capture", "preprocess", "inference", "compare", "overlay", "jpeg")
_END = object()


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


def make_outputs(options: CameraOptions, echo: Callable[[str], None]) -> list:
    """The outputs ``options`` asks for, in the order they get each frame."""
    outputs: list = []
    window = not options.headless and display_available()
    if not options.headless and not window:
        echo("WARNING: no display for a window (or a headless OpenCV): running headless")
    outputs.append(WindowOutput() if window else StatusLineOutput())
    if options.record:
        outputs.append(RecordOutput(options.record))
    if options.output:
        outputs.append(JsonLinesOutput(options.output))
    if options.serve:
        from tledge.camera.serve import ServeOutput
        outputs.append(ServeOutput(options.serve, options.serve_token, options.serve_fps))
    if options.save_uncertain:
        from tledge.camera.collect import UncertainFrames
        outputs.append(UncertainFrames(options.save_uncertain, options.uncertain_below,
                                       options.save_max_per_minute))
    return outputs


class Pipeline:
    """capture thread -> inference (the calling thread) -> sink thread -> outputs."""

    def __init__(self, source: Source, models: list, options: CameraOptions, outputs: list,
                 echo: Callable[[str], None], stop: Optional[threading.Event] = None):
        self.source, self.models, self.options, self.outputs = source, models, options, outputs
        self.echo = echo
        self.stop = stop or threading.Event()
        self.frames = Frames(source, options.retries, options.loop, self.stop, echo)
        self.frames_q: queue.Queue = queue.Queue(maxsize=4)  # files: every frame, in order
        self.latest = Latest()                               # live: newest frame only
        self.out_q: queue.Queue = queue.Queue(maxsize=8)
        self.error: Optional[BaseException] = None  # the first failure, raised by run()
        self.timings: dict = defaultdict(list)
        self.agreement = {"n": 0, "agree": 0}
        self.annotate = any(o.annotated for o in outputs)
        realtime = options.realtime if options.realtime is not None else \
            any(o.live_view for o in outputs)
        # seconds between a file's frames when it plays at its own rate; 0: flat out
        self.frame_interval = 1.0 / source.fps if realtime and not source.live and \
            source.fps and 0 < source.fps <= 1000 else 0.0
        self.rate = FrameRate()  # frames classified a second, for the overlay and the page
        self.first: Optional[float] = None  # when the first and the last frame were classified
        self.last: Optional[float] = None

    # capture: read, convert, resize and quantize for each model
    def capture(self) -> None:
        import cv2

        index = 0
        due = time.perf_counter()  # when the next frame of a file playing in real time is due
        try:
            while True:
                frame = self.frames.next()
                if frame is None:
                    break
                bgr, small = frame
                t0, t1 = self.frames.read_at, time.perf_counter()
                rgb = small if small is not None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                inputs = [m.prepare(rgb) for m in self.models]
                t2 = time.perf_counter()
                packet = Packet(index, time.time(), bgr, inputs,
                                {"capture": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)})
                index += 1
                if self.frame_interval:
                    due = self._wait_until(due)
                    if due is None:
                        break
                if not self._hand_over(packet):
                    break
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = self.error or e
        finally:
            self._hand_over(_END)

    def _wait_until(self, due: float) -> Optional[float]:
        """Waits for the frame due at ``due`` (a file played at its own frame rate); returns
        when the next one is due, or None if the run stopped meanwhile."""
        now = time.perf_counter()
        if due > now and self.stop.wait(due - now):
            return None
        # on time: the next is one interval on; late by a frame or more (slow inference): start
        # the cadence again from now rather than rush to catch up
        return due + self.frame_interval if now - due < self.frame_interval \
            else now + self.frame_interval

    def _hand_over(self, packet) -> bool:
        """To inference: a live source's newest frame replaces a waiting one; a file's frames
        wait their turn. False if the run stopped first (a full queue nobody reads any more
        must not block)."""
        if self.source.live:
            self.latest.put(packet)
            return True
        while True:
            try:
                self.frames_q.put(packet, timeout=0.1)
                return True
            except queue.Full:
                if self.stop.is_set():
                    return False

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
                self._deliver(packet)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                self.error, failed = self.error or e, True
                self.stop.set()

    def _deliver(self, packet: Packet) -> None:
        # dequantizing and top-k here, not in the inference loop: that thread does nothing but
        # run the models (each microsecond there is one the model waits for: 3.3 ms a frame on
        # a fast core, and right after an invoke every numpy call costs 10-25 us)
        packet.scores = [model.finish(out) for model, out in zip(self.models, packet.scores)]
        packet.results = [top_classes(scores, model.labels, self.options.top_k)
                          for model, scores in zip(self.models, packet.scores)]
        if len(packet.results) == 2:
            self.agreement["n"] += 1
            self.agreement["agree"] += packet.results[0][0].label == packet.results[1][0].label
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
                raise OutputFailed(output, e) from e
            if output.wants_stop():
                self.stop.set()

    def run(self) -> Summary:
        """Runs until the source ends, a limit is reached, an output asks to stop, or Ctrl-C."""
        self._start_outputs()
        threads = [threading.Thread(target=self.capture, name="capture", daemon=True),
                   threading.Thread(target=self.sink, name="sink", daemon=True)]
        for t in threads:
            t.start()
        summary = Summary()
        try:
            self._infer(summary)
        except KeyboardInterrupt:
            summary.reason = "interrupted"
        finally:
            self.stop.set()
            self.out_q.put(_END)
            for t in threads:
                t.join(timeout=10)
            self.source.release()
            self._close_outputs(summary.frames)
        self._raise_failure()
        return self._summarise(summary)

    def _start_outputs(self) -> None:
        info = RunInfo(self.models, self.source, self.agreement, self.timings, self.echo,
                       self.rate)
        started: list = []
        try:
            for output in self.outputs:
                output.start(info)
                started.append(output)
        except BaseException:
            for output in started:
                output.close(0)
            raise

    def _infer(self, summary: Summary) -> None:
        """The main thread's loop: the next frame, every model on it, on to the sink.
        ``summary`` gets the frame count, the first and last frame's times and the reason."""
        options = self.options
        start = time.perf_counter()
        while True:
            if options.max_frames is not None and summary.frames >= options.max_frames:
                summary.reason = f"--max-frames {options.max_frames}"
                return
            if options.duration is not None and time.perf_counter() - start >= options.duration:
                summary.reason = f"--duration {options.duration:g}s"
                return
            if self.stop.is_set():
                summary.reason = "quit"
                return
            packet = self.latest.get(0.2) if self.source.live else _get(self.frames_q, 0.2)
            if packet is None:
                continue
            if packet is _END:
                summary.reason = self.frames.ended or "source stopped"
                return
            if self.first is None:
                self.first = time.perf_counter()
            for i, (model, x) in enumerate(zip(self.models, packet.inputs)):
                t0 = time.perf_counter()
                packet.scores.append(model.run(x))
                packet.times["inference" if i == 0 else "compare"] = \
                    1000 * (time.perf_counter() - t0)
            self.last = time.perf_counter()
            self.rate.tick(self.last)
            self.out_q.put(packet)
            summary.frames += 1

    def _close_outputs(self, frames: int) -> None:
        for output in self.outputs:
            try:
                output.close(frames)
            except Exception as e:  # noqa: BLE001 - one output must not lose the others
                self.error = self.error or OutputFailed(output, e)

    def _raise_failure(self) -> None:
        """The run's first failure as one error naming what failed: an output or the source."""
        error = self.error
        if isinstance(error, OutputFailed):
            cause = error.cause
            raise cause if isinstance(cause, TledgeError) else TledgeError(
                f"writing {getattr(error.output, 'name', type(error.output).__name__)} failed: "
                f"{first_line(cause)}") from cause
        if error is not None:
            raise TledgeError(f"reading {self.source.description} failed: "
                              f"{first_line(error)}") from error

    def _summarise(self, summary: Summary) -> Summary:
        frames, corrupt = summary.frames, self.frames.corrupt
        end = self.last or time.perf_counter()  # the last frame, not the clean-up after it
        summary.seconds = end - (self.first or end)
        summary.fps = frames / summary.seconds if summary.seconds > 0 else 0.0
        summary.stages = {s: _p50_p90(self.timings[s]) for s in STAGES if self.timings.get(s)}
        summary.agreement = self.agreement["agree"] / self.agreement["n"] \
            if self.agreement["n"] else None
        summary.dropped = self.latest.dropped
        summary.corrupt = corrupt
        if frames == 0 and corrupt:
            raise TledgeError(f"no frame of {self.source.description} could be decoded "
                              f"({corrupt} corrupt)")
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


def _p50_p90(ms: list) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90))}
