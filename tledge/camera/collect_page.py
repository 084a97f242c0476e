"""``tledge collect DATA --serve [HOST:]PORT``: take labelled pictures from a web page.

The camera page's server (``tledge.camera.serve.FrameServer``: the live MJPEG stream, the token
rule, 127.0.0.1 unless a host is given) with the collection's routes:

    GET  /                 the page: live picture, a button per label (hold: a burst at
                           --burst-fps; click: one shot), counts, the latest shots, undo, and
                           the unlabelled frames with the model's guess, to label or discard
    GET  /counts.json      {"labels": {label: images}, "unlabelled": n}
    GET  /state.json       labels, counts, the latest shots and the unlabelled frames
    GET  /file?f=PATH      a picture of DATA (a label's or unlabelled/), for the thumbnails
    POST /capture          label=L&count=N[&burst=ID]: saves the next N frames for L at
                           --burst-fps; answers {"saved": [paths relative to DATA]}
    POST /undo             removes the last shot: {"removed": path or null}
    POST /label            file=unlabelled/X.jpg&label=L (empty: discard): {"file": new path}
    POST /labels           label=L: adds a label (its folder)

Form fields arrive URL-encoded (what a page's fetch and ``curl -d`` send), 64 KiB at most.
"""

from __future__ import annotations

import errno
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, urlparse

from tledge.camera.collect import (MAX_COUNT, UNLABELLED, Collection, check_label,
                                   parse_labels)
from tledge.camera.serve import FrameServer, parse_serve, stream_jpeg
from tledge.core.errors import TledgeError, path_error

MAX_BODY = 64 * 1024
FRAME_WAIT_S = 5.0  # a capture gives up when the camera sends no new frame for this long
PAGE_PATH = Path(__file__).with_name("collect.html")
_BURST = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass(frozen=True)
class CollectOptions:
    """What ``tledge collect`` runs.

    Attributes:
      data: the data folder (created when missing; its subfolders are labels).
      source: what ``tledge camera --source`` takes.
      serve: [HOST:]PORT of the page (None: a window only, keys 1-9 take a shot).
      serve_token: the secret every URL must carry, or None.
      labels: labels to offer besides DATA's subfolders.
      burst_fps: frames a second a held button (or ``count`` > 1) saves.
      duration: stop after this many seconds (None: until Ctrl-C, or the end of a file).
      loop: play a video file or folder again when it ends.
      headless: no window.
      retries: reconnection attempts of a live source.
    """

    data: str
    source: str = "0"
    serve: Optional[str] = "8080"
    serve_token: Optional[str] = None
    labels: tuple = ()
    burst_fps: float = 5.0
    duration: Optional[float] = None
    loop: bool = False
    headless: bool = False
    retries: int = 5

    def __post_init__(self) -> None:
        import math

        if not (math.isfinite(self.burst_fps) and 0.1 <= self.burst_fps <= 30):
            raise TledgeError(f"--burst-fps {self.burst_fps}: give 0.1 to 30 frames a second")
        if self.duration is not None and not (math.isfinite(self.duration)
                                              and self.duration > 0):
            raise TledgeError(f"--duration {self.duration}: give a positive number of seconds")
        if self.serve:
            parse_serve(self.serve)


class LatestFrame:
    """The newest frame of the camera, numbered, for captures to wait on."""

    def __init__(self):
        self.cond = threading.Condition()
        self.seq, self.bgr = 0, None
        self.ended = False

    def put(self, bgr) -> None:
        with self.cond:
            self.seq, self.bgr = self.seq + 1, bgr
            self.cond.notify_all()

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def after(self, seq: int, timeout: float) -> Optional[tuple]:
        """(seq, frame) of a frame newer than ``seq``, or None after ``timeout``."""
        with self.cond:  # before the camera's first frame there is none to give
            self.cond.wait_for(lambda: (self.seq > seq and self.bgr is not None) or self.ended,
                               timeout=timeout)
            return (self.seq, self.bgr) if self.seq > seq and self.bgr is not None else None


class CollectServer(FrameServer):
    """The page, the stream and the collection's routes."""

    def __init__(self, host: str, port: int, collection: Collection, frames: LatestFrame,
                 burst_fps: float, token: Optional[str] = None):
        self.collection, self.frames_in, self.burst_fps = collection, frames, burst_fps
        super().__init__(host, port, token)

    def handle(self, request) -> None:
        url = urlparse(request.path)
        if url.path in ("/", "/index.html", "/counts.json", "/state.json", "/file") and \
                not self._allowed(request):
            return self._send(request, 403, "text/plain",
                              b"forbidden: add ?token=... (tledge collect --serve-token)\n")
        if url.path in ("/", "/index.html"):
            page = PAGE_PATH.read_text(encoding="utf-8").replace("__TOKEN__", self.query)
            return self._send(request, 200, "text/html; charset=utf-8", page.encode())
        if url.path == "/counts.json":
            return self._json(request, 200, self.collection.counts())
        if url.path == "/state.json":
            return self._json(request, 200, self.state())
        if url.path == "/file":
            return self._file(request, (parse_qs(url.query).get("f") or [""])[0])
        return super().handle(request)

    def state(self) -> dict:
        c = self.collection
        return {"labels": c.labels, "counts": c.counts(), "recent": c.recent(8),
                "unlabelled": c.unlabelled()[:50], "burst_fps": self.burst_fps,
                "source": c.source}

    def handle_post(self, request) -> None:
        if not self._allowed(request):
            return self._json(request, 403, {"error": "forbidden: add ?token=..."})
        try:
            form = self._form(request)
            path = urlparse(request.path).path
            if path == "/capture":
                return self._json(request, 200, {"saved": self.capture(
                    form.get("label", ""), _count(form.get("count", "1")),
                    form.get("burst") or None)})
            if path == "/undo":
                return self._json(request, 200, {"removed": self.collection.undo()})
            if path == "/label":
                return self._json(request, 200, {"file": self.collection.label(
                    form.get("file", ""), form.get("label", "").strip() or None)})
            if path == "/labels":
                return self._json(request, 200, {"label": self.collection.add_label(
                    form.get("label", ""))})
            return self._json(request, 404, {"error": "not found: POST /capture, /undo, "
                                                      "/label or /labels"})
        except CaptureStopped as e:
            return self._json(request, e.code, {"error": str(e), "saved": e.saved})
        except TledgeError as e:
            return self._json(request, 400, {"error": str(e)})

    def capture(self, label: str, count: int, burst: Optional[str]) -> list:
        """Save the next ``count`` frames for ``label`` (the newest first), 1 / burst_fps
        apart; their paths relative to DATA."""
        label = check_label(label)
        if label not in self.collection.labels:
            raise TledgeError(f"no label {label!r}: POST /labels first, or pick one of "
                              f"{', '.join(self.collection.labels) or 'none yet'}")
        if burst is not None and not _BURST.fullmatch(burst):
            raise TledgeError("burst: up to 40 letters, digits, _ and -")
        burst = burst or (self.collection.new_burst() if count > 1 else None)
        saved, seq, due = [], self.frames_in.seq - 1, 0.0
        for _ in range(count):
            wait = due - time.monotonic()
            if wait > 0 and self.closing.wait(wait):
                break
            got = self.frames_in.after(seq, FRAME_WAIT_S)
            if got is None:
                if not saved:
                    raise TledgeError("the camera sent no frame: is it still connected?")
                break
            seq, bgr = got
            due = time.monotonic() + 1.0 / self.burst_fps
            try:
                saved.append(self.collection.save(label, bgr, burst))
            except OSError as e:  # a full disk mid-burst: the shots before it are kept, whole
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                raise CaptureStopped(
                    f"{path_error(e) or f'cannot write the picture ({e})'}; "
                    f"{len(saved)} shot(s) of this burst were saved", saved,
                    507 if full else 500) from e
        return saved

    def _form(self, request) -> dict:
        length = int(request.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            raise TledgeError(f"a request body of {length} bytes: {MAX_BODY} at most")
        body = request.rfile.read(length).decode("utf-8", "replace") if length else ""
        fields = parse_qs(urlparse(request.path).query)
        fields.update(parse_qs(body, keep_blank_values=True))
        return {k: v[0] for k, v in fields.items() if k != "token"}

    def _file(self, request, relative: str) -> None:
        parts = Path(relative).parts
        root = self.collection.root
        ok = (len(parts) == 2 and ".." not in parts and relative.endswith(".jpg")
              and (parts[0] in self.collection.labels or parts[0] == UNLABELLED))
        path = root / relative
        if not ok or not path.is_file() or path.is_symlink():
            return self._send(request, 404, "text/plain", b"no such picture\n")
        return self._send(request, 200, "image/jpeg", path.read_bytes())

    def _json(self, request, code: int, obj) -> None:
        return self._send(request, code, "application/json", json.dumps(obj).encode())


class CaptureStopped(TledgeError):
    """A capture that stopped midway (the disk refused a picture): what it saved before."""

    def __init__(self, message: str, saved: list, code: int):
        super().__init__(message)
        self.saved, self.code = saved, code


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_COUNT:
        raise TledgeError(f"count {str(text)[:20]!r}: give 1 to {MAX_COUNT} frames")
    return count


def run_collect(options: CollectOptions, echo: Callable[[str], None] = print,
                stop: Optional[threading.Event] = None) -> Collection:
    """Collect pictures until Ctrl-C, ``--duration``, or the end of a file source."""
    import cv2

    from tledge.camera.outputs import display_available
    from tledge.camera.sources import Frames, open_source

    labels = list(options.labels) or []
    source = open_source(options.source)
    collection = Collection(options.data, parse_labels(",".join(labels)), source.description)
    stop = stop or threading.Event()
    latest, server = LatestFrame(), None
    window = not options.headless and display_available()
    try:
        if options.serve:
            host, port = parse_serve(options.serve)
            server = CollectServer(host, port, collection, latest, options.burst_fps,
                                   options.serve_token)
            echo(f"collecting into {collection.root} from {source.description}: open "
                 f"{server.url}")
        elif not window:
            raise TledgeError("no display for a window and no --serve: pass --serve 8080 "
                              "(a page to take pictures from)")
        echo(f"labels: {', '.join(collection.labels) or 'none yet (add them on the page)'}")
        frames = Frames(source, options.retries, options.loop, stop, echo)
        try:
            _loop(frames, latest, server, collection, window, options, stop)
        except KeyboardInterrupt:  # every shot taken is whole, and its manifest line too
            echo(f"interrupted: {_summary(collection)}")
            raise
        echo(f"stopped ({frames.ended or 'asked to'}): {_summary(collection)}")
    finally:
        latest.end()
        if server is not None:
            server.close()
        source.release()
        if window:
            cv2.destroyAllWindows()
    return collection


def _loop(frames, latest: LatestFrame, server, collection: Collection, window: bool,
          options: CollectOptions, stop: threading.Event) -> None:
    """Read frames until the end: each to the captures, the stream (at most 15 JPEGs a second,
    while someone watches) and the window, whose keys 1-9 take a shot for that label."""
    import cv2

    end = time.monotonic() + options.duration if options.duration else None
    pace = 0.0 if frames.source.live else 1.0 / (frames.source.fps or 30.0)
    last_jpeg = 0.0
    while not stop.is_set() and (end is None or time.monotonic() < end):
        got = frames.next()
        if got is None:
            break
        bgr = got[0]
        latest.put(bgr)
        now = time.monotonic()
        if server is not None and now - last_jpeg >= 1 / 15 and \
                (server.clients or now - server.last_snapshot < 2.0 or server.jpeg is None):
            jpeg = stream_jpeg(bgr)
            if jpeg is not None:
                server.publish(jpeg, {"status": "ok", "frame": latest.seq})
                last_jpeg = now
        if window:
            cv2.imshow("tledge collect (1-9: a shot for that label, q: quit)", bgr)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                break
            if ord("1") <= key <= ord("9") and key - ord("1") < len(collection.labels):
                collection.save(collection.labels[key - ord("1")], bgr)
        if pace:
            time.sleep(pace)


def _summary(collection: Collection) -> str:
    counts = collection.counts()
    return ", ".join(f"{k} {v}" for k, v in counts["labels"].items()) + \
        f"; {counts['unlabelled']} unlabelled"
