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


def _vector_tables(buf, table, field: int) -> list:
    """The tables of a vector-of-tables field (0-based field number)."""
    offset = table.Offset(4 + 2 * field)
    if not offset:
        return []
    start = table.Vector(offset)
    return [_table(buf, table.Indirect(start + 4 * i)) for i in range(table.VectorLen(offset))]


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
        buffers = _vector_tables(model, root, 4)
        for entry in _vector_tables(model, root, 6):
            name_at = entry.Offset(4)
            if not name_at or entry.String(name_at + entry.Pos) != name:
                continue
            buffer_at = entry.Offset(6)
            index = entry.Get(N.Uint32Flags, buffer_at + entry.Pos) if buffer_at else 0
            if index >= len(buffers):
                return None
            data_at = buffers[index].Offset(4)
            if not data_at:
                return None
            return bytes(buffers[index].GetVectorAsNumpy(N.Uint8Flags, data_at))
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


def input_normalization(path: str | os.PathLike) -> Optional[Normalization]:
    """The first input's NormalizationOptions from the model's metadata, or None where the
    file has no metadata, no such options, or options that cannot be used (a zero std, a count
    that is neither 1 nor 3).

    Args:
      path: the .tflite file.

    Returns:
      Normalization(mean, std) per channel, or None.
    """
    try:
        from tledge._vendor import metadata_schema_py_generated as m

        meta = _parse(file_metadata_buffer(path))
        if meta is None:
            return None
        tensor = meta.subgraphMetadata[0].inputTensorMetadata[0]
        for unit in tensor.processUnits or []:
            if unit.optionsType == m.ProcessUnitOptions.NormalizationOptions:
                mean = np.asarray(unit.options.mean, np.float32).ravel()
                std = np.asarray(unit.options.std, np.float32).ravel()
                break
        else:
            return None
    except Exception:  # noqa: BLE001 - metadata another tool wrote oddly: as if absent
        return None
    if len(mean) not in (1, 3) or len(std) not in (1, 3) or not np.all(np.isfinite(mean)) \
            or not np.all(np.isfinite(std)) or np.any(np.abs(std) < 1e-12):
        return None
    return Normalization(mean, std)


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
