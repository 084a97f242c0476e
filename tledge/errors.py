"""The one exception type that reaches the user as a one-line message, never a traceback."""

from __future__ import annotations

import importlib.util

TRAIN_EXTRA = 'pip install "tledge[train]"'
# The training stack, by import name: what a [pi] install (LiteRT, OpenCV, numpy) lacks.
TRAINING_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization")


class TledgeError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""

    def __str__(self) -> str:
        # One line whatever went into it (a file name or a YAML key may hold a newline).
        return " ".join(super().__str__().split("\n"))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Interrupted(TledgeError):
    """Ctrl-C during a long job; what it finished is saved. The CLI exits 130."""


def missing_training_stack(error: ImportError) -> TledgeError | None:
    """The one-line error for an import of the training stack that failed, else None."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if name in TRAINING_MODULES:
        return TledgeError(f"this needs TensorFlow, and {name} is not installed here: "
                           f"{TRAIN_EXTRA} (a [pi] install runs .tflite files only)")
    return None


def require_training_stack(what: str, modules: tuple = TRAINING_MODULES) -> None:
    """Refuse, in one line, a command that needs TensorFlow where it is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise TledgeError(f"{what} needs TensorFlow ({', '.join(missing)} not installed here): "
                          f"{TRAIN_EXTRA}; a [pi] install runs .tflite files only")
    from tledge.quiet import import_tensorflow

    import_tensorflow()  # now, without its start-up noise, before anything else imports it
