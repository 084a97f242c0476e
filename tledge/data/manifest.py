"""``shots.jsonl``, the manifest ``tledge collect`` keeps in a data folder: one JSON object a
line (a shot: time, file, label, source, burst; an undo; a frame labelled or discarded).

Read here, below the camera, because the data loader needs its bursts: the frames of one
hold-to-record are near-duplicates and go to one side of the train/validation split.
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "shots.jsonl"
MAX_MANIFEST = 256 * 2**20  # a manifest larger than this is not read (a million shots)


def read_manifest(path: Path) -> list:
    """The manifest's events in order; a line an interrupted append left incomplete (or any
    line that is not a JSON object) is skipped; a file over MAX_MANIFEST bytes reads as none."""
    try:
        if path.stat().st_size > MAX_MANIFEST:
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def bursts_of(root: Path) -> dict:
    """{file relative to ``root``: burst id} for the shots of bursts in ``root``'s manifests
    (``shots.jsonl``, and ``shots.HOST.jsonl`` that ``tledge pull`` brought from a device)."""
    bursts = {}
    for path in sorted(Path(root).glob("shots*.jsonl"))[:100]:
        bursts.update({e["file"]: f"burst:{e['burst']}" for e in read_manifest(path)
                       if e.get("event") == "shot" and isinstance(e.get("file"), str)
                       and isinstance(e.get("burst"), str) and e["burst"]})
    return bursts
