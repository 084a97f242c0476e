"""A model's class labels: embedded in its metadata (the label file appended as a zip archive,
as the TFLite metadata populator, the Task Library and MediaPipe have it), else labels.txt
beside it, else class indices."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional

from tledge.core.errors import TledgeError

# A model file and the labels.txt beside it are untrusted: bounded before they are expanded (a
# zip appended as "labels" that unpacked to 1 GiB ended in a MemoryError at 3.8 GB).
MAX_LABELS_BYTES = 4 << 20
MAX_ZIP_ENTRIES = 64


def decode_text(data: bytes) -> str:
    """UTF-8 with or without a BOM, else Latin-1 (which decodes any bytes): labels written by
    any tool read as names, never dropped for their encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


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
            infos = archive.infolist()[:MAX_ZIP_ENTRIES]
            info = next((i for i in infos if i.filename.endswith("labels.txt")),
                        infos[0] if infos else None)
            if info is None:
                return None
            too_big = TledgeError(
                f"{Path(path).name} embeds a labels file of over {MAX_LABELS_BYTES >> 20} MB "
                "unpacked: not read (labels of 100,000 classes fit in 2 MB); export it again, "
                "or put a labels.txt beside it")
            if info.file_size > MAX_LABELS_BYTES:
                raise too_big
            # the header's size can lie: read at most one byte past the limit
            with archive.open(info) as member:
                data = member.read(MAX_LABELS_BYTES + 1)
            if len(data) > MAX_LABELS_BYTES:
                raise too_big
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, zlib.error):
        return None
    labels = [line.strip() for line in decode_text(data).splitlines() if line.strip()]
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
        with open(path, "rb") as f:
            data = f.read(MAX_LABELS_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_LABELS_BYTES:
        raise TledgeError(f"{path} is over {MAX_LABELS_BYTES >> 20} MB: not a labels file "
                          "(one name a line; 100,000 classes fit in 2 MB); remove or replace it")
    return [line.strip() for line in decode_text(data).splitlines() if line.strip()] or None
