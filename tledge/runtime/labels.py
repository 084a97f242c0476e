"""A model's class labels: embedded in its metadata (the label file appended as a zip archive,
as the TFLite metadata populator, the Task Library and MediaPipe have it), else labels.txt
beside it, else class indices."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Optional


def read_embedded_labels(path: str | os.PathLike) -> Optional[list[str]]:
    """Labels from the TFLite metadata's associated label file.

    A model's associated files are a zip archive appended to the flatbuffer (how the TFLite Task
    Library and MediaPipe read them), so the standard library's zipfile reads them back.

    Args:
      path: the .tflite file.

    Returns:
      One label per class, or None when the file embeds none.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            name = next((n for n in names if n.endswith("labels.txt")), names[0] if names else None)
            if name is None:
                return None
            text = archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError):
        return None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    return labels or None


def find_labels(path: str | os.PathLike, num_classes: int) -> list[str]:
    """The model's labels: embedded ones, else labels.txt beside it, else class indices.

    Labels whose count is not the model's number of outputs are not used, and that is said once.

    Args:
      path: the .tflite file.
      num_classes: the model's number of outputs.

    Returns:
      ``num_classes`` labels.
    """
    import logging

    labels, where = read_embedded_labels(path), "the labels embedded in it"
    if labels is None:
        beside = Path(path).with_name("labels.txt")
        labels, where = read_labels_file(beside), str(beside)
    if labels is not None and len(labels) != num_classes:
        logging.getLogger("tledge").warning(
            "%s names %d classes but %s has %d outputs: not used, classes are shown as numbers "
            "(put the model's own labels.txt beside it)", where, len(labels), Path(path).name,
            num_classes)
        labels = None
    return labels if labels is not None else [str(i) for i in range(num_classes)]


def read_labels_file(path: Path) -> Optional[list[str]]:
    """One label a line from a text file of any encoding.

    UTF-8 with or without a BOM, else Latin-1 (which decodes any bytes).

    Args:
      path: the text file.

    Returns:
      The labels, or None when there is no such readable regular file or it holds none.
    """
    from tledge.runtime.preprocess import is_regular_file

    if not is_regular_file(path):
        return None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()] or None
