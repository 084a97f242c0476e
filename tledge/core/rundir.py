"""The run folder's layout, shared by train, export, evaluate and bench (no TensorFlow here)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from tledge.core.config import RunConfig
from tledge.core.errors import TledgeError

CONFIG = "config.yaml"
LABELS = "labels.txt"
HISTORY = "history.json"
CURVES = "training_curves.png"
FLOAT_MODEL = "model.keras"
QAT_MODEL = "model_qat.h5"  # tfmot QAT models reload from HDF5, not the .keras format
METRICS = "metrics.json"
ARTIFACTS = (CONFIG, LABELS, HISTORY, CURVES, FLOAT_MODEL, QAT_MODEL, METRICS)
EXPORT = "export"  # tledge export's folder in the run folder, where --out is not given
CARD = "model_card.json"  # tledge export's model card, beside the files it describes
REPORT = "export_report.json"  # and its report
# What tledge export writes there: made from a run's model, they go when the run is replaced
# (the last two: tledge.quantize.quantdebug's CSV_NAME and PNG_NAME).
EXPORT_FILES = ("model_*.tflite", LABELS, CARD, REPORT, "quant_debug.csv", "quant_debug.png")


def default_out(config: RunConfig, root: str | Path = "models") -> Path:
    source = config.data.source.rstrip("/\\")
    data = Path(source).name or "data"
    model = config.model.backbone
    if model == "mobilenet_v2":
        model += f"-{config.model.alpha:g}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{data}-{model}-{config.data.image_size}px-{stamp}"


LOCK = ".tledge.lock"


def prepare(out: Path, overwrite: bool) -> Path:
    """Make sure ``out`` can take a new run: refuse an existing run unless ``overwrite``."""
    from tledge.core import fileio

    out = Path(out)
    fileio.check_output_dir(out, "--out")
    if out.is_dir():
        prepare_read(out)
    existing = [name for name in ARTIFACTS if (out / name).exists()]
    if existing and not overwrite:
        raise TledgeError(
            f"{out} already holds a run ({', '.join(existing[:3])}...): pass --overwrite to "
            "replace it, or choose another --out")
    return out


def prepare_read(folder: Path) -> None:
    """Refuse a run folder that another live tledge process is writing."""
    holder = read_lock(Path(folder))
    if holder is not None and not held_by_me(holder):
        raise _in_use(Path(folder), holder)


def held_by_me(holder: dict) -> bool:
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _in_use(folder: Path, holder: dict) -> TledgeError:
    return TledgeError(
        f"{folder} is in use by another tledge process ({holder.get('command', '?')}, PID "
        f"{holder.get('pid')} on {holder.get('host', '?')} since {holder.get('started', '?')}): "
        f"wait for it or choose another folder; if that process is gone, delete "
        f"{folder / LOCK}")


def read_lock(folder: Path) -> dict | None:
    """The lock's holder ({pid, host, command, started}) if a live process holds ``folder``;
    None if it is free or its lock is stale (the process is gone)."""
    from tledge.core import fileio

    path = Path(folder) / LOCK
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(holder, dict):
            raise ValueError
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # half-written by a process killed between create and write: stale after a minute
        try:
            return None if time.time() - path.stat().st_mtime > 60 else {"pid": "?"}
        except OSError:
            return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not fileio.pid_alive(holder["pid"]):
        return None
    return holder


@contextlib.contextmanager
def lock(folder: Path, command: str) -> Iterator[Path]:
    """Hold ``folder`` for this process: a second tledge process that would write there is
    refused in one line. The lock file names the PID and host; a lock whose process is gone
    (same host) is stale and taken over. The folder is created if needed; if this process
    created it and the work fails before writing anything, it is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": _dt.datetime.now().isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as cause:
            holder = read_lock(folder)
            if holder is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its process is gone
                continue
            if held_by_me(holder):
                yield folder  # already ours (export inside train's own folder, say)
                return
            raise _in_use(folder, holder) from cause
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise TledgeError(f"could not lock {folder}: another process keeps taking {path}")
    ok = False
    try:
        yield folder
        ok = True
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if created and not ok:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a failed run leaves no empty folder behind


def command_line() -> str:
    return " ".join(["tledge", *sys.argv[1:]])[:200]


def clear_stale(out: Path, keep: tuple = ()) -> None:
    """With --overwrite: remove the old run's files that this run might not rewrite (a QAT model
    from an earlier run must not pass for this one's), but those in ``keep``; and what export
    made of the old run's model in ``out/export`` (an int8 file there would pass for the new
    run's with deploy, evaluate and bench), leaving any other file of the user's there."""
    for name in ARTIFACTS:
        if name not in keep:
            (out / name).unlink(missing_ok=True)
    export = out / EXPORT
    if export.is_dir():
        for path in export.iterdir():
            if is_export_file(path.name) and path.is_file():
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            export.rmdir()  # only where nothing else is left in it


def is_export_file(name: str) -> bool:
    """Whether ``name`` is one of the files tledge export writes (``EXPORT_FILES``)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in EXPORT_FILES)


def require_run(path: Path) -> Path:
    path = Path(path)
    if not (path / FLOAT_MODEL).is_file():
        raise TledgeError(
            f"{path} is not a tledge run folder (no {FLOAT_MODEL}): pass the --out folder of "
            "'tledge train'")
    return path
