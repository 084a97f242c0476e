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


def run_checks(check_tensorflow: bool = True, reprobe: bool = False) -> tuple[list[Check], bool]:
    """What this machine has for tledge, each a line with its fix.

    Each installed backend is probed: it loads and runs a tiny int8 model in a child process
    (cached per machine), so a backend that would crash shows here as a line, not a segfault.

    Args:
      check_tensorflow: import TensorFlow (seconds) to report its version and GPUs, and probe
        its interpreter.
      reprobe: run the backends' probes again instead of reading the cache.

    Returns:
      (the checks in order, whether some TFLite backend can load a model here).
    """
    checks = _platform_checks()
    backend_checks, usable = _backend_checks(check_tensorflow, reprobe)
    checks += backend_checks
    if not usable:
        checks.append(Check("runtime", "no TFLite interpreter can load a model", ok=False,
                            fix="pip install 'tledge[pi]'"))
    checks += _opencv_checks()
    checks += _camera_checks()
    checks += _tensorflow_checks(check_tensorflow)
    return checks, usable


def _platform_checks() -> list[Check]:
    import numpy as np

    checks = [Check("python", f"{platform.python_version()} ({platform.machine()})",
                    ok=(3, 10) <= tuple(map(int, platform.python_version_tuple()[:2])) <= (3, 12),
                    fix="tledge supports Python 3.10 to 3.12 (Raspberry Pi OS Bookworm has 3.11)"),
              Check("os", platform.platform())]
    board = Path("/proc/device-tree/model")
    if board.exists():
        checks.append(Check("board", board.read_text(errors="ignore").strip("\x00 \n")))
    checks.append(Check("numpy", np.__version__))
    return checks


def _backend_checks(check_tensorflow: bool, reprobe: bool) -> tuple[list[Check], bool]:
    """A line per TFLite backend (installed, version, its probe's verdict), and whether one
    can load a model."""
    import numpy as np

    from tledge.runtime import backends
    from tledge.runtime.probe import last_line

    numpy_major = int(np.__version__.split(".")[0])
    checks, usable = [], False
    for name in backends.BACKENDS:
        ver = backends.installed_version(name)
        if ver is None:
            fix = "pip install ai-edge-litert (wheels for x86-64 and aarch64, numpy 2)" \
                if name == "litert" else ""
            checks.append(Check(f"backend {name}", "not installed",
                                ok=False if name == "litert" else None, fix=fix))
            continue
        if name == "tensorflow" and not check_tensorflow:
            checks.append(Check(f"backend {name}", f"{ver}, not probed (--no-tensorflow)"))
            continue
        result = backends.probe_backend(name, refresh=reprobe)
        ok, fix = result.ok, ""
        value = f"{ver}, probe: {last_line(result)}"
        if name == "tflite_runtime" and numpy_major >= 2:
            ok, fix = False, ("tflite-runtime 2.14 is built for numpy 1.x and fails under numpy "
                              f"{np.__version__}: use ai-edge-litert instead (pip uninstall "
                              "tflite-runtime; pip install ai-edge-litert), or pin numpy<2")
        elif name == "tensorflow" and not ok and "Interpreter" in result.detail:
            value = f"{ver}: has no tf.lite.Interpreter"
            fix = "not needed: LiteRT (ai-edge-litert) runs the models"
        elif not ok and result.detail.startswith("crashed"):
            fix = ("this backend dies loading a model here; tledge uses the next one. Try "
                   "another version (pip install 'ai-edge-litert<2.2'); under qemu, show the "
                   "guest an ARM /proc/cpuinfo")
        elif not ok:
            fix = "reinstall it, or use another backend (--backend)"
        usable |= ok
        checks.append(Check(f"backend {name}", value,
                            ok=ok if (name == "litert" or not ok) else None, fix=fix))
    return checks, usable


def _tensorflow_checks(check_tensorflow: bool) -> list[Check]:
    """TensorFlow (what train and export need, never a Pi) and its companions."""
    tf_version = _version("tensorflow") or _version("tensorflow-cpu")
    if tf_version is None:
        return [Check("tensorflow", "not installed (not needed to run .tflite models)",
                      fix='pip install "tledge[train]" to train and export')]
    if not check_tensorflow:
        return [Check("tensorflow", f"{tf_version} installed, not checked (--no-tensorflow)")]
    from tledge.core.quiet import import_tensorflow

    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    checks = [Check("tensorflow", f"{tf.__version__}, {len(gpus)} GPU(s)"
                    + (f": {', '.join(g.name for g in gpus)}" if gpus else ""))]
    for dist in ("tf-keras", "tensorflow-model-optimization"):
        v = _version(dist)
        checks.append(Check(dist, v or "not installed", ok=None if v else False,
                            fix="" if v else 'pip install "tledge[train]" to train and export'))
    return checks


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
