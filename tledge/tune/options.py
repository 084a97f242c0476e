"""What ``tledge tune`` is asked: its options, checked, and ``--time-budget``'s durations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tledge.core.errors import TledgeError


@dataclass
class TuneOptions:
    """What ``tledge tune`` searches, for what, and where it measures.

    Attributes:
      data: a folder with a subfolder per class, or a built-in data set.
      max_latency_ms: the budget: the int8 classify path's p50, in ms.
      out: the tune's folder (tune.json, candidates/, runs/, the table, chart and best.yaml).
      on: ``[USER@]HOST[:DIR]`` to measure on over SSH (None: this machine).
      threads: interpreter threads the latency is measured at.
      time_budget_s: the whole tune's time, latency stage included.
      space: a YAML file of candidates (None: the default space).
      weights: imagenet, none, or a weights file (used by the candidates it fits; the others
        start from random weights, said in the table).
      limit: at most this many images per class.
      epochs: epochs per phase in the first round of training; each round doubles them.
      runs, warmup: timed and untimed inferences per candidate.
      seed: the training seed.
    """

    data: str
    max_latency_ms: float
    out: Path
    on: Optional[str] = None
    threads: int = 1
    time_budget_s: float = 1800.0
    space: Optional[Path] = None
    weights: str = "none"
    limit: Optional[int] = None
    epochs: int = 1
    runs: int = 30
    warmup: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0):
            raise TledgeError(f"--max-latency-ms must be a positive number of milliseconds, got "
                              f"{self.max_latency_ms}")
        if not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise TledgeError("--time-budget must be positive, e.g. 30m or 2h")
        if self.threads < 1 or self.epochs < 1 or self.runs < 3 or self.warmup < 0:
            raise TledgeError("--threads and --epochs must be 1 or more, --runs 3 or more")

    def identity(self) -> dict:
        """What makes measured latencies and trained scores reusable by a later tune."""
        return {"data": self.data, "on": self.on or "local", "threads": self.threads,
                "weights": self.weights, "limit": self.limit, "epochs": self.epochs,
                "seed": self.seed}


def parse_duration(text: str) -> float:
    """``30m``, ``2h``, ``1h30m``, ``90s`` (a bare number is minutes) -> seconds."""
    import re

    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw) * 60.0
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise TledgeError(f"--time-budget {str(text)[:20]!r} is not a duration: give e.g. 30m, "
                          "2h, 1h30m or 900s")
    return sum(float(n) * {"h": 3600.0, "m": 60.0, "s": 1.0}[u] for n, u in parts)
