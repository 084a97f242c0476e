"""What a .tflite file's own metadata says about its input image, read without TensorFlow.

The TFLite metadata (the ``TFLITE_METADATA`` buffer, schema M001, as the Task Library, MediaPipe
Model Maker and ``tledge export`` write it) carries the input's ``NormalizationOptions``: a float
input wants ``(pixel - mean) / std``. MediaPipe Model Maker's classifiers take [0, 1] (mean 0,
std 255), Keras' MobileNet preprocessing [-1, 1] (mean 127.5, std 127.5), tledge's own files raw
pixels (mean 0, std 1: the model normalises itself).

The model flatbuffer is read with the ``flatbuffers`` package's table reader (field numbers from
the TFLite schema: Model.buffers is field 4, Model.metadata field 6; Metadata.name 0,
Metadata.buffer 1; Buffer.data 0), so this works with any backend, tflite-runtime included;
the metadata itself with the vendored schema of the TFLite Support library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

METADATA_NAME = b"TFLITE_METADATA"


@dataclass(frozen=True)
class Normalization:
    """``(pixel - mean) / std`` per channel (one value for all three, or one each).

    Attributes:
      mean, std: float32 arrays of length 1 or 3.
    """

    mean: np.ndarray
    std: np.ndarray

    @property
    def is_identity(self) -> bool:
        """Raw pixels: mean 0, std 1.

        Returns:
          True for raw pixels.
        """
        return bool(np.all(self.mean == 0) and np.all(self.std == 1))

    def describe(self) -> str:
        """The normalisation in words, for messages.

        Returns:
          "mean M, std S" (per channel values joined by /).
        """
        def fmt(values):
            return "/".join(f"{v:g}" for v in values)
        return f"mean {fmt(self.mean)}, std {fmt(self.std)}"


def _table(buf: bytes, pos: int):
    from flatbuffers.table import Table

    return Table(buf, pos)


# A model file is untrusted input: a crafted one can claim vectors of a billion entries, or
# point every list of its metadata at one shared entry (a few KB that expand exponentially into
# objects). So nothing is expanded: each value is read where it lies, by index, within bounds.
MAX_METADATA_ENTRIES = 64  # Model.metadata entries looked at (the converter writes 2 or 3)
MAX_PROCESS_UNITS = 16  # an input's process units looked at (tledge and MediaPipe write one)
MAX_CHANNELS = 16  # a mean or std list longer than this describes no image


def _vector(buf, table, field: int) -> tuple[int, int]:
    """(start, length) of a vector-of-tables field (0-based field number), within ``buf``."""
    offset = table.Offset(4 + 2 * field)
    if not offset:
        return 0, 0
    start, length = table.Vector(offset), table.VectorLen(offset)
    if start + 4 * length > len(buf):
        raise ValueError("a vector runs past the end of the file")
    return start, length


def _vector_table(buf, table, start: int, i: int):
    return _table(buf, table.Indirect(start + 4 * i))


def metadata_buffer(model: bytes, name: bytes = METADATA_NAME) -> Optional[bytes]:
    """The bytes of the model's metadata entry ``name`` (a buffer inside the flatbuffer), or
    None when there is none or the file cannot be read as a TFLite flatbuffer.

    Args:
      model: the flatbuffer's bytes.
      name: the metadata entry's name (TFLITE_METADATA, min_runtime_version, ...).

    Returns:
      The entry's bytes, or None.
    """
    from flatbuffers import encode, packer
    from flatbuffers import number_types as N

    try:
        root = _table(model, encode.Get(packer.uoffset, model, 0))
        buffers_at, n_buffers = _vector(model, root, 4)
        entries_at, n_entries = _vector(model, root, 6)
        for i in range(min(n_entries, MAX_METADATA_ENTRIES)):
            entry = _vector_table(model, root, entries_at, i)
            name_at = entry.Offset(4)
            if not name_at or entry.String(name_at + entry.Pos) != name:
                continue
            buffer_at = entry.Offset(6)
            index = entry.Get(N.Uint32Flags, buffer_at + entry.Pos) if buffer_at else 0
            if index >= n_buffers:
                return None
            buffer = _vector_table(model, root, buffers_at, index)
            data_at = buffer.Offset(4)
            if not data_at:
                return None
            start, length = buffer.Vector(data_at), buffer.VectorLen(data_at)
            if start + length > len(model):
                return None
            return bytes(model[start:start + length])
    except Exception:  # noqa: BLE001 - an unexpected layout just means "no metadata"
        return None
    return None


def file_metadata_buffer(path: str | os.PathLike, name: bytes = METADATA_NAME
                         ) -> Optional[bytes]:
    """``metadata_buffer`` of a model file, read through a memory map: only the pages the
    lookup touches are read, not a 100 MB model's every byte. None where it cannot be read.

    Args:
      path: the .tflite file.
      name: the metadata entry's name.

    Returns:
      The entry's bytes, or None.
    """
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return metadata_buffer(mm, name)
    except (OSError, ValueError):  # ValueError: an empty file has nothing to map
        return None


def _parse(raw: Optional[bytes]):
    from tledge._vendor import metadata_schema_py_generated as m

    if raw is None:
        return None
    return m.ModelMetadataT.InitFromObj(m.ModelMetadata.GetRootAs(raw, 0))


def read_metadata(model: bytes):
    """The model's embedded metadata as the TFLite Support schema's ModelMetadataT, or None
    where it has none.

    Args:
      model: the flatbuffer's bytes.

    Returns:
      A ModelMetadataT (tledge._vendor's generated schema), or None.
    """
    return _parse(metadata_buffer(model))


def _normalization_values(raw: bytes) -> Optional[tuple[list, list]]:
    """(mean, std) of the first input's NormalizationOptions, read in place (nothing expanded),
    or None where the metadata has none."""
    from tledge._vendor import metadata_schema_py_generated as m

    meta = m.ModelMetadata.GetRootAs(raw, 0)
    if meta.SubgraphMetadataLength() < 1:
        return None
    subgraph = meta.SubgraphMetadata(0)
    if subgraph.InputTensorMetadataLength() < 1:
        return None
    tensor = subgraph.InputTensorMetadata(0)
    for i in range(min(tensor.ProcessUnitsLength(), MAX_PROCESS_UNITS)):
        unit = tensor.ProcessUnits(i)
        if unit.OptionsType() != m.ProcessUnitOptions.NormalizationOptions:
            continue
        table = unit.Options()
        options = m.NormalizationOptions()
        options.Init(table.Bytes, table.Pos)
        n_mean, n_std = options.MeanLength(), options.StdLength()
        if max(n_mean, n_std) > MAX_CHANNELS:
            return [float("nan")] * 2, []  # unusable; said by the caller
        return ([options.Mean(j) for j in range(n_mean)],
                [options.Std(j) for j in range(n_std)])
    return None


def input_normalization(path: str | os.PathLike) -> Optional[Normalization]:
    """The first input's NormalizationOptions from the model's metadata, or None where the
    file has no metadata or no such options (or metadata too damaged to read: as if absent).

    Args:
      path: the .tflite file.

    Returns:
      Normalization(mean, std) per channel, or None.

    Raises:
      TledgeError: options that cannot be used, said in one line: a count that is neither 1
        nor 3, an empty list, a zero, NaN or infinite value, or values that map pixels 0..255
        outside +-1e4 (a crafted mean of -3e38 gave NaN scores): a model so described would
        be fed something else than it was trained on.
    """
    return normalization_in(file_metadata_buffer(path), Path(path).name)


def normalization_in(raw: Optional[bytes], name: str) -> Optional[Normalization]:
    """:func:`input_normalization` of metadata bytes (``name``: the model's, for messages)."""
    from tledge.core.errors import TledgeError

    if raw is None:
        return None
    try:
        values = _normalization_values(raw)
    except Exception:  # noqa: BLE001 - metadata too damaged to read: as if absent
        return None
    if values is None:
        return None
    mean = np.asarray(values[0], np.float64)
    std = np.asarray(values[1], np.float64)
    shown = (f"mean {ascii([round(float(v), 6) for v in mean[:4]])[1:-1] or 'none'}, "
             f"std {ascii([round(float(v), 6) for v in std[:4]])[1:-1] or 'none'}")
    why = None
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        why = "one value or three (R, G, B) are needed"
    elif not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        why = "a value is NaN or infinite"
    elif np.any(np.abs(std) < 1e-12):
        why = "a std of 0 divides by zero"
    else:
        ends = (np.array([0.0, 255.0])[:, None] - mean) / std
        if not np.all(np.isfinite(ends)) or float(np.max(np.abs(ends))) > 1e4:
            why = "it maps pixels 0..255 outside -1e4..1e4"
    if why:
        raise TledgeError(f"{name}'s metadata has an unusable input normalisation ({shown}: "
                          f"{why}): tledge will not guess what the model wants; export it again "
                          "or fix its NormalizationOptions")
    return Normalization(mean.astype(np.float32), std.astype(np.float32))


def min_runtime_version(path: str | os.PathLike) -> Optional[str]:
    """The oldest TFLite runtime that can run the file, as the converter recorded it.

    Read from the model's "min_runtime_version" metadata buffer, without TensorFlow.

    Args:
      path: the .tflite file.

    Returns:
      A version such as "2.3.0", or None where the file has none or it cannot be read.
    """
    raw = file_metadata_buffer(path, b"min_runtime_version")
    if raw is None:
        return None
    try:
        return raw.split(b"\0")[0].decode("ascii") or None
    except UnicodeDecodeError:
        return None


_warned_normalization: set = set()


def normalization_of(path: Path, input_dtype: np.dtype, input_quant: tuple) -> Normalization:
    """What a Classifier feeds the model at ``path``: its input normalisation, from its metadata.

    Warns once per file, in one line, where tledge has to assume: a float input with no
    NormalizationOptions (raw pixels assumed, as tledge's own files take them), or a uint8
    input whose metadata and quantization disagree about what a pixel means (raw pixels fed,
    as MediaPipe does).

    Args:
      path: the .tflite file.
      input_dtype: its input's dtype.
      input_quant: its input's (scale, zero point).

    Returns:
      Normalization(mean, std); raw pixels (mean 0, std 1) where the metadata has none.
    """
    import logging

    found = input_normalization(path)
    warn = None
    if found is None and input_dtype != np.uint8:
        warn = (f"{path.name} has a {input_dtype.name} input and no normalisation metadata: "
                "tledge feeds it raw pixels 0..255 (mean 0, std 1), as tledge's own files take "
                "them; a model that wants [0, 1] or [-1, 1] needs NormalizationOptions (mean, "
                "std) in its metadata, as MediaPipe Model Maker writes them")
    elif found is not None and input_dtype == np.uint8 and input_quant[0]:
        scale, zero_point = input_quant
        ends = np.array([0.0, 255.0], np.float32)
        by_metadata = (ends[:, None] - found.mean) / found.std
        by_tensor = scale * (ends - zero_point)
        spread = max(float(np.abs(by_tensor[1] - by_tensor[0])), 1e-12)
        if float(np.max(np.abs(by_metadata - by_tensor[:, None]))) > 0.02 * spread:
            warn = (f"{path.name}: its metadata normalises pixels with {found.describe()} but "
                    f"its uint8 input's quantization (scale {scale:g}, zero point {zero_point}) "
                    "says otherwise: tledge feeds raw pixels, as MediaPipe does")
    if warn and str(path) not in _warned_normalization:
        _warned_normalization.add(str(path))
        logging.getLogger("tledge").warning(warn)
    return found or Normalization(np.zeros(1, np.float32), np.ones(1, np.float32))
