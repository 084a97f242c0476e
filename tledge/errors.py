"""The one exception type that reaches the user as a one-line message, never a traceback, and
what other errors become on the way there (a missing training stack, a refusing disk, causes)."""

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


def causes(error: BaseException, limit: int = 10) -> list:
    """The exceptions under ``error``: its ``__cause__`` (``raise ... from``), else the one it
    was raised while handling, and theirs, outermost first."""
    chain, seen = [], {id(error)}
    e = error
    while len(chain) < limit:
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if e is None or id(e) in seen:
            break
        seen.add(id(e))
        chain.append(e)
    return chain


def disk_error(e: OSError) -> str | None:
    """One line for a write that the disk refused (full, read-only, no permission), else None.
    h5py and Keras wrap these in their own messages, so the text is read too."""
    import errno

    text = str(e)
    where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "errno = 28" in text:
        return (f"no space left on the device{where}: free some space or write to another "
                "disk (--out); files already there were left as they were")
    if e.errno == errno.EROFS or "Read-only file system" in text:
        return f"the file system is read-only{where}: write to another folder (--out)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: write to a folder you own (--out)"
    return None
