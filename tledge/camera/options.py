"""What ``tledge camera`` runs (``CameraOptions``) and the models it runs, as ``FrameModel``s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np


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
      save_uncertain: a data folder: frames scored below ``uncertain_below`` (or, with
        ``compare``, where the models disagree) go to its ``unlabelled/`` for ``tledge collect``.
      uncertain_below: the top-1 score under which a frame is uncertain.
      save_max_per_minute: uncertain frames saved in any 60 seconds at most.
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
    save_uncertain: Optional[str] = None
    uncertain_below: float = 0.5  # tledge.camera.collect.UNCERTAIN_BELOW
    save_max_per_minute: int = 12

    def __post_init__(self) -> None:
        from tledge.core.errors import TledgeError

        # NaN passes every range check (a NaN --duration never ended the camera)
        for name in ("duration", "serve_fps", "uncertain_below"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise TledgeError(f"--{name.replace('_', '-')} {value}: give a finite number")


@dataclass
class FrameModel:
    """A model as the camera uses it: prepare (in the capture thread) and run (in main).

    Attributes:
      name: for the overlay and the JSON lines.
      labels: class labels.
      prepare: RGB frame -> model input (resized, quantized).
      run: model input -> its output (in the inference loop: nothing else happens there).
      finish: that output -> dequantized scores (in the output thread).
      size: the model's input (height, width).
    """

    name: str
    labels: list
    prepare: Callable[[np.ndarray], np.ndarray]
    run: Callable[[np.ndarray], np.ndarray]
    size: tuple = (224, 224)
    finish: Callable[[np.ndarray], np.ndarray] = lambda out: out  # noqa: E731


def load_frame_model(path: str, backend: Optional[str], threads: Optional[int]) -> FrameModel:
    p = Path(path)
    if p.is_dir():
        from tledge.measure.evaluate import load_predictor
        from tledge.runtime.preprocess import resize_rgb

        predictor = load_predictor(p)
        return FrameModel(predictor.name, predictor.labels,
                          lambda rgb: resize_rgb(rgb, predictor.image_size),
                          lambda x: predictor.predict(x[None])[0], tuple(predictor.image_size))
    from tledge.runtime import Classifier

    clf = Classifier(p, backend=backend, threads=threads)
    return FrameModel(p.name, clf.labels, clf.preprocess,
                      lambda x: clf.invoke(x[None], dequantize=False)[0], (clf.height, clf.width),
                      clf.dequantize_output)
