"""The run folder's layout, shared by train, export, evaluate and bench (no TensorFlow here)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tledge.config import RunConfig
from tledge.errors import TledgeError

CONFIG = "config.yaml"
LABELS = "labels.txt"
HISTORY = "history.json"
CURVES = "training_curves.png"
FLOAT_MODEL = "model.keras"
QAT_MODEL = "model_qat.h5"  # tfmot QAT models reload from HDF5, not the .keras format
METRICS = "metrics.json"
ARTIFACTS = (CONFIG, LABELS, HISTORY, CURVES, FLOAT_MODEL, QAT_MODEL, METRICS)


def default_out(config: RunConfig, root: str | Path = "models") -> Path:
    source = config.data.source.rstrip("/\\")
    data = Path(source).name or "data"
    model = config.model.backbone
    if model == "mobilenet_v2":
        model += f"-{config.model.alpha:g}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{data}-{model}-{config.data.image_size}px-{stamp}"


def prepare(out: Path, overwrite: bool) -> Path:
    """Make sure ``out`` can take a new run: refuse an existing run unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TledgeError(f"--out {out} is a file: pass a folder path for the run")
    existing = [name for name in ARTIFACTS if (out / name).exists()]
    if existing and not overwrite:
        raise TledgeError(
            f"{out} already holds a run ({', '.join(existing[:3])}...): pass --overwrite to "
            "replace it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def clear_stale(out: Path) -> None:
    """With --overwrite: remove the old run's files that this run might not rewrite (a QAT model
    from an earlier run must not pass for this one's)."""
    for name in ARTIFACTS:
        (out / name).unlink(missing_ok=True)


def require_run(path: Path) -> Path:
    path = Path(path)
    if not (path / FLOAT_MODEL).is_file():
        raise TledgeError(
            f"{path} is not a tledge run folder (no {FLOAT_MODEL}): pass the --out folder of "
            "'tledge train'")
    return path
