"""A folder with one subfolder per class, decoded in parallel with the runtime's own resize."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from tledge.core.errors import TledgeError
from tledge.runtime.preprocess import IMAGE_EXTENSIONS, is_regular_file, load_image

if TYPE_CHECKING:
    from tledge.data.imageset import ImageSet

log = logging.getLogger(__name__)



def check_class_name(root: Path, name: str) -> None:
    """A class folder's name becomes a line of labels.txt and of the model's metadata, read
    back by evaluate, predict and every TFLite client: refuse, before any work, a name that
    would not come back the same (a line break, blanks at either end, bytes that are not
    UTF-8)."""
    shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    problem = None
    if name.splitlines() != [name] or any(ord(c) < 32 for c in name):  # \u2028 splits too
        problem = "holds a line break or another control character"
    elif name != name.strip():
        problem = "starts or ends with a blank"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
    if problem:
        raise TledgeError(f"class folder {shown!r} in {root} {problem}, so its label would not "
                          "read back the same from labels.txt: rename the folder")


def scan_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str], list[Path]]:
    """List image files per class folder: (paths, labels, class names, the other files)."""
    if not root.exists():
        raise TledgeError(
            f"data folder {root} does not exist: pass a folder with one subfolder per class, "
            "or a built-in name (shapes, cifar10, fashion_mnist)")
    if not root.is_dir():
        raise TledgeError(f"--data {root} is a file: pass a folder with one subfolder per class")
    # unlabelled/: frames tledge camera --save-uncertain kept, waiting for a label (collect)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name != "unlabelled")
    for name in classes:
        check_class_name(root, name)
    if len(classes) < 2:
        raise TledgeError(
            f"{root} has {len(classes)} class folder(s): a classifier needs at least 2 "
            "subfolders, one per class, each holding that class's images")
    paths, labels, others = [], [], []
    for label, name in enumerate(classes):
        n_before = len(paths)
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                # a pipe would block the decoder, a dangling link fail it: counted, skipped
                if filename.lower().endswith(IMAGE_EXTENSIONS) and \
                        is_regular_file(Path(dirpath) / filename):
                    paths.append(Path(dirpath) / filename)
                    labels.append(label)
                else:
                    others.append(Path(dirpath) / filename)
        if len(paths) == n_before:
            raise TledgeError(
                f"class folder {root / name} has no images (jpg, png, bmp, webp): add some or "
                "remove the folder")
    return paths, np.asarray(labels, dtype=np.int32), classes, others


def skipped_line(root: Path, bad: list, others: list, again: bool = False) -> str:
    """One line for the files a folder's reading skipped, naming the first five."""
    named = [f"{p.relative_to(root)} (unreadable)" for p in bad[:5]]
    named += [str(p.relative_to(root)) for p in others[:5 - len(named)]]
    more = len(bad) + len(others) - len(named)
    return (f"{'data: as in training, ' if again else ''}skipped {len(bad) + len(others)} "
            f"file(s) in {root} that are not readable images: {', '.join(named)}"
            + (f" and {more} more" if more else "") + ("" if again else
            " (remove them or convert them to jpg/png/bmp/webp)"))


def load_folder(root: Path, image_size: int, limit: Optional[int], seed: int,
                storage: str = "auto", again: bool = False) -> tuple["ImageSet", list[str], int]:
    """Decode a class-per-folder tree (into the disk cache when it is large, see
    ``tledge.data.cache``). Unreadable and non-image files are counted, reported in one
    warning naming the first few, and skipped (``again``: the folder is read again, as export
    reads the run's data: one plain line, the warning was training's); a class left with no
    readable image is an error."""
    from tledge.data.imageset import ImageSet, limit_per_class
    from tledge.data.cache import decoded, fingerprint, take

    paths, labels, classes, others = scan_folder(root)
    keep = limit_per_class(labels, limit, seed)
    paths = [paths[i] for i in keep]
    labels = labels[keep]

    def decode(path: Path) -> Optional[np.ndarray]:
        try:
            return load_image(path, image_size)
        except (OSError, ValueError, SyntaxError) as e:  # Pillow's ways of saying "not an image"
            log.debug("skipping %s: %s", path, e)
            return None

    # Pillow releases the GIL while decoding and resizing, so threads keep every core busy.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        x, ok, where = decoded(
            {"source": str(root.resolve())}, {"files": fingerprint(paths)}, len(paths),
            image_size, lambda positions: list(pool.map(decode, [paths[i] for i in positions])),
            storage, desc="decoding images")
    bad = [p for p, good in zip(paths, ok) if not good]
    skipped = len(bad) + len(others)
    if skipped:
        log.log(logging.INFO if again else logging.WARNING, skipped_line(root, bad, others, again))
    for label, name in enumerate(classes):
        if not np.any(ok & (labels == label)):
            raise TledgeError(
                f"class folder {root / name} has no readable image: replace its files with "
                "valid jpg/png/bmp/webp images or remove the folder")
    good = np.flatnonzero(ok)
    names = tuple(str(paths[i].relative_to(root)) for i in good)
    return ImageSet(x if bad == 0 else take(x, good), labels[good], names), classes, skipped
