"""Your own labelled pictures, taken with the camera the model will run on: the data folder.

``tledge collect DATA`` writes a class-per-folder tree that ``tledge train --data DATA`` reads:

    DATA/<label>/<time>-<n>.jpg   one shot, written atomically (temp file + rename)
    DATA/shots.jsonl              one JSON line per event: a shot (time, file, label, source,
                                  burst), an undo, a frame labelled or discarded
    DATA/unlabelled/<name>.jpg    frames ``tledge camera --save-uncertain DATA`` kept, each with
    DATA/unlabelled/<name>.json   a sidecar: why (low score, disagreement), top-k, time

The manifest is appended to, one ``write`` of one line each (a line is far below the size a
local file system appends whole); a reader skips a last line that an interrupted write left
incomplete. ``burst`` groups the frames of one hold-to-record: they are near-duplicates, and
``tledge.data`` keeps a burst on one side of the train/validation split.

No TensorFlow here: it runs on the Pi.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from tledge.core import fileio
from tledge.camera.outputs import Output
from tledge.data.manifest import MANIFEST, read_manifest
from tledge.core.errors import TledgeError

UNLABELLED = "unlabelled"
JPEG_QUALITY = 92  # training pictures: near-lossless, about 60 KB at 640x480
MAX_LABELS = 100
MAX_LABEL_CHARS = 64
MAX_COUNT = 300  # frames one POST /capture may ask for (a minute at 5 FPS)
# a label is a folder name on every system a data set travels to: letters, digits, space,
# _ . + -, not starting with . or space (no hidden folder, no "..", no path)
_LABEL = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9 _.+\-]*")
_RESERVED = {UNLABELLED, "con", "prn", "aux", "nul"}


def check_label(label: str) -> str:
    """``label`` stripped, or a one-line TledgeError saying what a label may be."""
    label = str(label).strip()
    if not label or len(label) > MAX_LABEL_CHARS or not _LABEL.fullmatch(label) \
            or label.lower() in _RESERVED:
        raise TledgeError(f"label {label[:80]!r} is not a safe folder name: use up to "
                          f"{MAX_LABEL_CHARS} letters, digits, spaces and _ . + - (not "
                          f"starting with . or a space, not {UNLABELLED!r})")
    return label


def parse_labels(spec: Optional[str]) -> list:
    """``--labels a,b,c`` as a list of checked labels (duplicates once)."""
    labels: list = []
    for part in (spec or "").split(","):
        if part.strip() and check_label(part) not in labels:
            labels.append(check_label(part))
    return labels


class Collection:
    """A data folder being collected into: labels, shots, the manifest, unlabelled frames.

    Thread-safe: the page's requests and the window's keys save through one lock.

    Attributes:
      root: the data folder.
      source: the camera's description, for the manifest.
    """

    def __init__(self, root: str | os.PathLike, labels: Optional[list] = None,
                 source: str = ""):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise TledgeError(f"{self.root} is a file: give a folder for the pictures")
        self.root.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.lock = threading.Lock()
        self._labels = [d.name for d in sorted(self.root.iterdir())
                        if d.is_dir() and _LABEL.fullmatch(d.name) and d.name != UNLABELLED
                        and not d.name.startswith(".")]
        for label in labels or []:
            self.add_label(label)
        self._seq = 0
        self._burst = 0

    @property
    def labels(self) -> list:
        return list(self._labels)

    def add_label(self, label: str) -> str:
        label = check_label(label)
        with self.lock:
            if label not in self._labels:
                if len(self._labels) >= MAX_LABELS:
                    raise TledgeError(f"{MAX_LABELS} labels at most")
                self._labels.append(label)
            (self.root / label).mkdir(exist_ok=True)
        return label

    def new_burst(self) -> str:
        with self.lock:
            self._burst += 1
            return f"{time.strftime('%Y%m%d-%H%M%S')}-b{self._burst}"

    def save(self, label: str, bgr: np.ndarray, burst: Optional[str] = None) -> str:
        """One shot of ``bgr`` (an OpenCV BGR frame) into ``label``'s folder; its path
        relative to the root."""
        import cv2

        label = check_label(label)
        if label not in self._labels:
            raise TledgeError(f"no label {label!r}: add it first (labels: "
                              f"{', '.join(self._labels) or 'none'})")
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise TledgeError("the frame could not be encoded as JPEG")
        with self.lock:
            self._seq += 1
            now = time.time()
            name = (f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-"
                    f"{int(now * 1000) % 1000:03d}-{os.getpid() % 100000}-{self._seq:05d}.jpg")
            relative = f"{label}/{name}"
            fileio.write_bytes(self.root / relative, buf.tobytes())
            self._append({"event": "shot", "time": round(now, 3), "file": relative,
                          "label": label, "source": self.source, "burst": burst})
        return relative

    def _append(self, event: dict) -> None:
        line = (json.dumps(event, ensure_ascii=True) + "\n").encode()
        fd = os.open(self.root / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: appended whole
        finally:
            os.close(fd)

    def counts(self) -> dict:
        """Images per label (every .jpg/.png in its folder, collected or not), and the
        unlabelled frames waiting."""
        counts = {}
        for label in self._labels:
            folder = self.root / label
            counts[label] = sum(1 for p in folder.iterdir()
                                if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
                if folder.is_dir() else 0
        return {"labels": counts, "unlabelled": len(self.unlabelled())}

    def recent(self, n: int = 8) -> list:
        """The last ``n`` shots still on disk, newest first."""
        done, shots = set(), []
        for event in reversed(read_manifest(self.root / MANIFEST)):
            if event.get("event") == "undo":
                done.add(event.get("file"))
            elif event.get("event") == "shot" and event.get("file") not in done and \
                    self._inside(event.get("file")) and (self.root / event["file"]).is_file():
                shots.append(event["file"])
                if len(shots) >= n:
                    break
        return shots

    def undo(self) -> Optional[str]:
        """Remove the last shot still on disk; its path, or None when there is none."""
        with self.lock:
            last = self.recent(1)
            if not last:
                return None
            (self.root / last[0]).unlink(missing_ok=True)
            self._append({"event": "undo", "time": round(time.time(), 3), "file": last[0]})
            return last[0]

    def unlabelled(self) -> list:
        """The frames waiting for a label, oldest first: {file, guess, score, reason, time}."""
        folder = self.root / UNLABELLED
        if not folder.is_dir():
            return []
        frames = []
        for path in sorted(folder.glob("*.jpg")):
            info = read_sidecar(path.with_suffix(".json"))
            frames.append({"file": f"{UNLABELLED}/{path.name}", "guess": info.get("guess"),
                           "score": info.get("score"), "reason": info.get("reason"),
                           "time": info.get("time")})
        return frames

    def label(self, file: str, label: Optional[str]) -> Optional[str]:
        """Move an unlabelled frame into ``label``'s folder (a new label is added), or discard
        it (``label`` None or empty); the new path, or None when discarded."""
        name = Path(str(file)).name
        source = self.root / UNLABELLED / name
        if str(file) not in (name, f"{UNLABELLED}/{name}") or not name.endswith(".jpg") \
                or not source.is_file():
            raise TledgeError(f"no unlabelled frame {str(file)[:120]!r}")
        if label:
            label = self.add_label(label)
        with self.lock:
            if label:
                target = self.root / label / name
                os.replace(source, target)  # one file system: atomic
            else:
                source.unlink()
            source.with_suffix(".json").unlink(missing_ok=True)
            self._append({"event": "label" if label else "discard",
                          "time": round(time.time(), 3), "file": f"{UNLABELLED}/{name}",
                          "label": label or None})
        return f"{label}/{name}" if label else None

    def _inside(self, relative) -> bool:
        return isinstance(relative, str) and ".." not in Path(relative).parts and \
            not Path(relative).is_absolute()


MAX_SIDECAR = 64 * 1024


def read_sidecar(path: Path) -> dict:
    """An unlabelled frame's sidecar, or {} when it is missing, too large or not JSON."""
    try:
        if path.stat().st_size > MAX_SIDECAR:
            return {}
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


# Below this top-1 score a frame is uncertain: the model gives the other classes together more
# probability than its own pick (a softmax's scores sum to 1), the frames worth a label.
UNCERTAIN_BELOW = 0.5
SAVE_MAX_PER_MINUTE = 12  # one every 5 s on average: a steady scene fills no disk
MAX_UNLABELLED = 2000     # frames waiting at most (about 120 MB of JPEGs)


class UncertainFrames(Output):
    """``tledge camera --save-uncertain DIR``: frames the model is unsure of (top-1 score
    below ``below``), and with --compare frames where the two models disagree, as JPEGs with
    a JSON sidecar in ``DIR/unlabelled/``, for ``tledge collect DIR`` to label.

    At most ``per_minute`` in any 60 seconds, and none once MAX_UNLABELLED wait there (said
    once). A camera Output: it runs in the sink thread."""

    full_frames = True  # training pictures at the camera's size, not the model's

    def __init__(self, folder: str, below: float = UNCERTAIN_BELOW,
                 per_minute: int = SAVE_MAX_PER_MINUTE):
        from collections import deque

        self.data, self.below, self.per_minute = folder, below, per_minute
        self.folder = Path(folder) / UNLABELLED
        self.saved, self.skipped, self.times = 0, 0, deque()
        self.full = False

    def start(self, run):
        super().start(run)
        self.folder.mkdir(parents=True, exist_ok=True)
        run.echo(f"saving frames scored below {self.below:g}"
                 + (" or where the two models disagree" if len(run.models) > 1 else "")
                 + f" into {self.folder} ({self.per_minute} a minute at most)")

    def frame(self, packet, annotated):
        reason = why_uncertain(packet.results, self.below)
        if reason is None:
            return
        now = time.monotonic()
        while self.times and now - self.times[0] > 60:
            self.times.popleft()
        if len(self.times) >= self.per_minute or self.full:
            self.skipped += 1
            return
        if sum(1 for _ in self.folder.glob("*.jpg")) >= MAX_UNLABELLED:
            self.full = True
            self.run.echo(f"WARNING: {MAX_UNLABELLED} frames wait in {self.folder}: no more "
                          "are saved until some are labelled (tledge collect)")
            return
        self.times.append(now)
        self._save(packet, reason)

    def _save(self, packet, reason: str):
        import cv2

        ok, buf = cv2.imencode(".jpg", packet.bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{packet.index:07d}"
        top = packet.results[0]
        info = {"time": round(time.time(), 3), "source": self.run.source.description,
                "model": self.run.models[0].name, "frame": packet.index, "reason": reason,
                "guess": top[0].label, "score": round(top[0].score, 4),
                "top_k": [[c.label, round(c.score, 4)] for c in top]}
        if len(packet.results) > 1:
            info["compare"] = {"model": self.run.models[1].name, "top_k": [
                [c.label, round(c.score, 4)] for c in packet.results[1]]}
        # the sidecar first: a listed picture always has its sidecar
        fileio.write_json(self.folder / f"{name}.json", info)
        fileio.write_bytes(self.folder / f"{name}.jpg", buf.tobytes())
        self.saved += 1

    def close(self, frames):
        if self.saved or self.skipped:
            self.run.echo(f"{self.saved} uncertain frame(s) saved in {self.folder}"
                          + (f", {self.skipped} more over the limit" if self.skipped else "")
                          + f"; label them: tledge collect {self.data}")


def why_uncertain(results: list, below: float) -> Optional[str]:
    """Why a frame is worth a label (each model's top-k, the shown one first), or None."""
    top = results[0][0] if results and results[0] else None
    if top is None:
        return None
    if len(results) > 1 and results[1] and results[1][0].label != top.label:
        return f"the models disagree: {top.label} / {results[1][0].label}"
    if top.score < below:
        return f"top-1 score {top.score:.2f} below {below:g}"
    return None
