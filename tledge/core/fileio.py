"""Atomic writes: every file tledge writes appears whole or not at all.

Each writer goes to a temporary file in the destination's own folder (same filesystem, so the
final ``os.replace`` is atomic), flushes and fsyncs it, then renames it over the destination. An
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator



def cache_root() -> Path:
    """tledge's cache folder (backend probes, decoded images, multi-worker backups):
    ``$TLEDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tledge`` or ``~/.cache/tledge``."""
    base = os.environ.get("TLEDGE_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tledge"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    For writers that insist on a file name (Keras ``save``, ``matplotlib.savefig``,
    ``cv2.VideoWriter``). ``suffix`` defaults to the destination's, since several of them pick
    the format from the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if suffix is None else suffix),
        dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    # numpy scalars and paths appear in reports; json does not know them.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_labels(path: str | os.PathLike) -> list[str]:
    """One label per line; a missing or unreadable file is one line naming it."""
    from tledge.core.errors import TledgeError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as cause:
        raise TledgeError(f"{path} is missing: restore it (one class name per line, in the "
                          "model's output order) or train the run again") from cause
    except (OSError, UnicodeDecodeError) as e:
        raise TledgeError(f"{path} cannot be read as labels ({type(e).__name__}): one class "
                          "name per line, UTF-8") from e
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise TledgeError(f"{path} holds no labels: one class name per line")
    return labels


def write_labels(path: str | os.PathLike, labels: list[str]) -> Path:
    return write_text(path, "".join(f"{label}\n" for label in labels))


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


NAME_MAX, PATH_MAX = 255, 4096  # bytes in one file name, in a whole path (Linux)


def _check_names(path: Path, what: str, last_too: bool) -> None:
    """Refuse a path the file system cannot take, before any work: a name over NAME_MAX bytes,
    a path over PATH_MAX, or a symbolic link on the way that loops or leads nowhere (``last_too``:
    the path itself as well, for a folder that will be made)."""
    from tledge.core.errors import TledgeError, shorten

    raw = os.fsencode(str(path))
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise TledgeError(f"{what} {shorten(path)}: a name in it is {len(longest)} bytes, over "
                          f"the {NAME_MAX} a file system takes: give a shorter one")
    if len(os.fsencode(os.path.abspath(path))) >= PATH_MAX:
        raise TledgeError(f"{what} {shorten(path)}: the path is over {PATH_MAX} bytes: give a "
                          "shorter one")
    full = Path(os.path.abspath(path))
    for step in ([full] if last_too else []) + list(full.parents):
        if os.path.islink(step) and not os.path.exists(step):
            raise TledgeError(f"{what} {shorten(path)}: {shorten(step)} is a symbolic link that "
                              "loops or leads nowhere: fix or remove it, or give another path")


def _check_writable_from(start: Path, what: str, path: Path) -> None:
    """The nearest existing folder at or above ``start`` must be a folder we can write in.

    A file is created and removed there: the only test that a read-only mount, /proc, a full
    disk or missing permissions all fail the same way as the real write will."""
    from tledge.core.errors import TledgeError

    folder = _nearest_existing(start)
    if not folder.is_dir():
        raise TledgeError(f"{what} {path} cannot be created: {folder} is a file, not a "
                          "folder: choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tledge-write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise TledgeError(f"{what} {path} cannot be written: {folder} is not writable "
                          f"({e.strerror or type(e).__name__}): choose another path") from e


def check_output_file(path: str | os.PathLike | None, what: str) -> None:
    """Refuse, before any work starts, a file path that cannot be written: under a regular
    file, in a read-only or virtual folder, or naming a folder."""
    from tledge.core.errors import TledgeError

    if path is None:
        return
    path = Path(path)
    _check_names(path, what, last_too=False)
    if path.is_dir():
        raise TledgeError(f"{what} {path} is a folder: pass a file path")
    _check_writable_from(path.parent, what, path)


def check_output_dir(path: str | os.PathLike, what: str) -> None:
    """The same for a folder that will be created if needed."""
    from tledge.core.errors import TledgeError

    path = Path(path)
    _check_names(path, what, last_too=True)
    if path.exists() and not path.is_dir():
        raise TledgeError(f"{what} {path} is a file: pass a folder path")
    _check_writable_from(path, what, path)


def pyplot():
    """matplotlib.pyplot on its Agg backend: figures render without a display (a Pi over SSH,
    CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path) -> None:
    """Write a matplotlib figure to ``path`` as a PNG, atomically, and close it.

    Args:
      fig: a matplotlib Figure.
      path: where the PNG goes; an interrupted write leaves the old file or none.
    """
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# What a killed writer leaves beside its files: atomic_path's temporaries (.NAME.XXXX.tmp...)
# and export's files under verification (.model_FMT.tflite.PID.N.verifying).
_LEFTOVER = re.compile(r"^\.(?P<name>[^/]+?)\.(?:(?P<pid>\d+)\.\d+\.verifying|[^./]+\.tmp.*)$")


def remove_leftovers(folder: Path, names: Callable[[str], bool]) -> list[str]:
    """Remove what killed writers left in ``folder`` (which the caller holds locked, so no
    live writer of it can own them): temporaries of files ``names`` accepts, except those of a
    process still alive. Returns the names removed."""
    gone = []
    for path in sorted(Path(folder).glob(".*")):
        match = _LEFTOVER.match(path.name)
        if not match or not names(match["name"]) or not path.is_file():
            continue
        if match["pid"] and int(match["pid"]) != os.getpid() and pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            gone.append(path.name)
    return gone


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
