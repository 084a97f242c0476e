"""The checks every option of a tledge config goes through, flags and YAML alike: type, range
and choice, each failure one line naming the flag and the config key (``--lr
(train.frozen.learning_rate) must be above 0, got -1.0``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tledge.core.errors import TledgeError

# Where a field lives in config.yaml, and the flag that sets it (for error messages).
_SECTIONS = {"DataOptions": "data", "ModelOptions": "model", "PhaseHParams": "train.frozen",
             "FineTuneHParams": "train.finetune", "QATHParams": "train.qat",
             "TrainOptions": "train", "RunConfig": "", "ExportOptions": "export"}
_FLAGS = {
    "data.source": "--data", "data.image_size": "--image-size", "data.val_split": "--val-split",
    "data.limit": "--limit", "data.augment": "--augment", "data.batch_size": "--batch-size",
    "data.cache": "--data-cache", "data.test_source": "--test-data",
    "model.backbone": "--backbone", "model.alpha": "--alpha", "model.weights": "--weights",
    "model.head_units": "--head-units", "model.dropout": "--dropout",
    "train.frozen.epochs": "--epochs-frozen", "train.frozen.learning_rate": "--lr",
    "train.frozen.schedule": "--lr-schedule-frozen", "train.feature_norm": "--feature-norm",
    "train.finetune.epochs": "--epochs-finetune", "train.finetune.learning_rate": "--lr-finetune",
    "train.finetune.unfreeze": "--unfreeze", "train.finetune.schedule": "--lr-schedule",
    "train.finetune.warmup": "--warmup", "train.finetune.batchnorm": "--batchnorm",
    "train.label_smoothing": "--label-smoothing",
    "train.qat.enabled": "--qat", "train.qat.epochs": "--epochs-qat",
    "train.qat.learning_rate": "--lr-qat", "train.early_stop": "--early-stop",
    "train.seed": "--seed", "train.strategy": "--strategy",
    "train.mixed_precision": "--mixed-precision", "train.feature_cache": "--feature-cache",
    "train.init_from": "--init-from", "train.backup_dir": "--backup-dir",
    "train.cluster_timeout": "--cluster-timeout",
    "export.calibration": "--calibration",
    "export.max_drop": "--max-drop", "export.eval_limit": "--eval-limit",
}


def field_key(obj: Any, name: str) -> str:
    section = _SECTIONS.get(type(obj).__name__, "")
    key = f"{section}.{name}" if section else name
    flag = _FLAGS.get(key)
    return f"{flag} ({key})" if flag else key


def field_error(obj: Any, name: str, expected: str) -> TledgeError:
    value = getattr(obj, name)
    shown = _short_repr(value) if not isinstance(value, (bytes, bytearray)) else "binary data"
    return TledgeError(f"{field_key(obj, name)} must be {expected}, got {shown[:60]}")


def _short_repr(value: Any) -> str:
    """A repr that stops early, whatever the value: a nested list of a billion items (a YAML
    alias bomb) is shown as its first few, never formatted whole."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 3, 3, 60, 60
    return short.repr(value)


def check_types(obj: Any) -> None:
    """Every field of a frozen options dataclass has its annotated type: the one place where
    flags and YAML values alike are checked (YAML gives strings, lists, nulls where numbers
    belong). Integers are accepted for floats and made floats; numbers must be finite; a bool
    is never taken for a number."""
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        optional = kind.startswith("Optional[")
        kind = kind[len("Optional["):-1] if optional else kind
        if value is None:
            if optional:
                continue
            raise field_error(obj, f.name, f"set (a {kind})")
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise field_error(obj, f.name, "a whole number")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise field_error(obj, f.name, "a number")
            if not math.isfinite(value):
                raise field_error(obj, f.name, "a finite number")
            object.__setattr__(obj, f.name, float(value))
        elif kind == "bool":
            if not isinstance(value, bool):
                raise field_error(obj, f.name, "true or false")
        elif kind == "str":
            if isinstance(value, int) and not isinstance(value, bool) and f.name == "unfreeze":
                object.__setattr__(obj, f.name, str(value))  # YAML reads "unfreeze: 30" as 30
            elif not isinstance(value, str) or not value.strip() or "\x00" in value:
                raise field_error(obj, f.name, "a non-empty text")
        elif kind == "tuple":
            if isinstance(value, list):
                object.__setattr__(obj, f.name, tuple(value))
            elif not isinstance(value, tuple):
                raise field_error(obj, f.name, "a list")


def check_range(obj: Any, name: str, low=None, high=None, low_open: bool = False,
                 high_open: bool = False) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "" if low is None else f"{'above' if low_open else 'at least'} {low:,}"
        right = "" if high is None else f"{'below' if high_open else 'at most'} {high:,}"
        raise field_error(obj, name, " and ".join(filter(None, [left, right])))


def check_choice(obj: Any, name: str, choices: tuple) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise TledgeError(f"unknown {field_key(obj, name)} {value!r}: choose one of "
                          f"{', '.join(choices)}")
