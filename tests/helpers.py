"""Helpers the tests share: one CLI runner in a child process, one check of the one-line error."""

from __future__ import annotations

import subprocess
import sys


def tledge(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """``tledge ARGS...`` in a child process (the real entry point: exit codes, signals)."""
    return subprocess.run([sys.executable, "-m", "tledge.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def one_line_error(proc, *fragments, code: int = 1) -> str:
    """Exit ``code``, no traceback, exactly one 'Error:' line, containing every fragment."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].count("Error:") == 1, errors[0]  # never "Error: ... failed: Error: ..."
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def write_video(path, frames: int = 30, size: tuple = (320, 240), fps: float = 15.0, seed=0):
    """An mp4 of ``frames`` seeded noisy colour frames (BGR, as OpenCV writes them)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), (40 * i) % 256, np.uint8)
        frame += rng.integers(0, 30, frame.shape, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    return path
