"""``tledge doctor``: is this machine ready to run tledge models? One screen, a fix per problem."""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class Check:
    """One line of the report.

    Attributes:
      name: what was checked.
      value: what was found.
      ok: True fine, False a problem, None informational.
      fix: how to fix a problem.
    """

    name: str
    value: str
    ok: Optional[bool] = None
    fix: str = ""


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def run_checks(check_tensorflow: bool = True) -> tuple[list[Check], bool]:
    """(checks, whether some backend can load a model)."""
    import numpy as np

    from tledge.runtime import available_backends

    checks = [Check("python", f"{platform.python_version()} ({platform.machine()})",
                    ok=(3, 10) <= tuple(map(int, platform.python_version_tuple()[:2])) <= (3, 12),
                    fix="tledge supports Python 3.10 to 3.12 (Raspberry Pi OS Bookworm has 3.11)"),
              Check("os", platform.platform())]
    board = Path("/proc/device-tree/model")
    if board.exists():
        checks.append(Check("board", board.read_text(errors="ignore").strip("\x00 \n")))
    numpy_major = int(np.__version__.split(".")[0])
    checks.append(Check("numpy", np.__version__))
    backends = available_backends(include_tensorflow=check_tensorflow)
    usable = False
    for name, found in backends.items():
        ok = not found.startswith("unavailable")
        usable |= ok
        fix = ""
        if not ok and name == "litert":
            fix = "pip install ai-edge-litert (wheels for x86-64 and aarch64, numpy 2)"
        if name == "tflite_runtime" and _version("tflite-runtime") and numpy_major >= 2:
            ok, fix = False, ("tflite-runtime 2.14 is built for numpy 1.x and fails under numpy "
                              f"{np.__version__}: use ai-edge-litert instead (pip uninstall "
                              "tflite-runtime; pip install ai-edge-litert), or pin numpy<2")
        checks.append(Check(f"backend {name}", found, ok=ok if name == "litert" or fix else None,
                            fix=fix))
    if not usable:
        checks.append(Check("runtime", "no TFLite interpreter can be loaded", ok=False,
                            fix="pip install 'tledge[pi]'"))
    checks += _opencv_checks()
    checks += _camera_checks()
    if check_tensorflow and importlib.util.find_spec("tensorflow") is not None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        checks.append(Check("tensorflow", f"{tf.__version__}, {len(gpus)} GPU(s)"
                            + (f": {', '.join(g.name for g in gpus)}" if gpus else "")))
        for dist in ("tf-keras", "tensorflow-model-optimization"):
            v = _version(dist)
            checks.append(Check(dist, v or "not installed", ok=None if v else False,
                                fix="" if v else "pip install 'tledge[train]' to train and export"))
    else:
        checks.append(Check("tensorflow", "not installed (not needed to run .tflite models)"))
    return checks, usable


def _opencv_checks() -> list[Check]:
    if importlib.util.find_spec("cv2") is None:
        return [Check("opencv", "not installed", ok=False,
                      fix="pip install opencv-python-headless (tledge camera needs it)")]
    import cv2
    gui = "unknown"
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    window = gui not in ("NONE", "unknown") and bool(display)
    checks = [Check("opencv", f"{cv2.__version__} (GUI backend: {gui})")]
    if window:
        checks.append(Check("window", f"can open windows on {display}", ok=True))
    else:
        reason = "no display" if not display else "a headless OpenCV build"
        checks.append(Check("window", f"cannot open windows ({reason})", ok=None,
                            fix="tledge camera --headless works anyway; for a window install "
                                "opencv-python (not -headless) and run on a desktop session"))
    return checks


def _camera_checks() -> list[Check]:
    devices = sorted(glob.glob("/dev/video*"))
    checks = [Check("cameras", ", ".join(devices) if devices else "no /dev/video* devices")]
    if importlib.util.find_spec("picamera2") is not None:
        checks.append(Check("picamera2", "installed (Pi camera module supported)", ok=True))
    elif Path("/proc/device-tree/model").exists():
        checks.append(Check("picamera2", "not installed", ok=None,
                            fix="for the Pi camera module: sudo apt install python3-picamera2 "
                                "and create the venv with --system-site-packages"))
    return checks


def format_checks(checks: list[Check]) -> str:
    mark = {True: "ok ", False: "!! ", None: "   "}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{mark[c.ok]}{c.name:<{width}}  {c.value}")
        if c.fix and c.ok is not True:
            lines.append(f"   {'':<{width}}  -> {c.fix}")
    return "\n".join(lines)
