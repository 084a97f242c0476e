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
    from tledge.core.quiet import import_tensorflow

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


def shorten(text: str, limit: int = 80) -> str:
    """``text`` for a message: printable (ascii() escapes), its middle cut past ``limit``."""
    shown = ascii(str(text))[1:-1]
    return shown if len(shown) <= limit else f"{shown[:limit // 2]}...{shown[-limit // 2:]}"


def path_error(e: OSError) -> str | None:
    """One line for a path the file system cannot take (a name over 255 bytes, a symbolic link
    loop, a file where a folder should be, or the other way round), or a disk that refused a
    write (:func:`disk_error`); else None. Whatever command met it, and wherever."""
    import errno

    found = disk_error(e)
    if found:
        return found
    name = getattr(e, "filename", None)
    path = shorten(name) if name is not None else "a path"
    if e.errno == errno.ENAMETOOLONG:
        return (f"{path}: a name in this path is too long for the file system (at most 255 "
                "bytes a name, 4096 a path): give a shorter one")
    if e.errno == errno.ELOOP:
        return (f"{path}: its symbolic links loop (too many levels): fix or remove the link, "
                "or give another path")
    if e.errno == errno.EEXIST:
        return (f"{path} exists and is not a folder (a file, or a link that leads nowhere): "
                "give another path")
    if e.errno == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder: give another path"
    if e.errno == errno.EISDIR:
        return f"{path} is a folder where a file is expected: give a file's path"
    return None
