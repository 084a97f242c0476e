"""Crafted model files (issue 37): everything read from a .tflite's metadata and its appended
label file is bounded before it is expanded, and metadata that cannot be used is said in one
line instead of being taken for absent. No TensorFlow: the committed colour models are given
other metadata with LiteRT's own schema module."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import MODELS, cli, one_line_error

FP32 = MODELS / "colour_fp32.tflite"


def _with_metadata(tmp_path: Path, metadata: bytes | None, labels: bytes | None = None,
                   compress: bool = False, name: str = "model_fp32.tflite") -> Path:
    """The committed fp32 colour model with ``metadata`` as its TFLITE_METADATA buffer and
    ``labels`` as the appended zip's labels.txt."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(FP32.read_bytes()), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name not in
                      (b"TFLITE_METADATA", "TFLITE_METADATA")]
    if metadata is not None:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(metadata, np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    if labels is not None:
        out.seek(0, io.SEEK_END)
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(out, "a", compression=method) as archive:
            with archive.open("labels.txt", "w", force_zip64=True) as member:
                member.write(labels)
    path = tmp_path / name
    path.write_bytes(out.getvalue())
    return path


def _normalization(mean: list, std: list) -> bytes:
    import flatbuffers

    from tledge._vendor import metadata_schema_py_generated as m

    image = m.TensorMetadataT()
    unit = m.ProcessUnitT()
    unit.optionsType = m.ProcessUnitOptions.NormalizationOptions
    unit.options = m.NormalizationOptionsT()
    unit.options.mean, unit.options.std = mean, std
    image.processUnits = [unit]
    subgraph = m.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    meta = m.ModelMetadataT()
    meta.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    return bytes(builder.Output())


def _shared_entries(width: int) -> bytes:
    """Metadata whose every list holds ``width`` offsets to one shared entry: a few KB that an
    object reader expands into width**3 process units."""
    import flatbuffers

    from tledge._vendor import metadata_schema_py_generated as m

    b = flatbuffers.Builder(0)

    def floats(start, values):
        start(b, len(values))
        for v in reversed(values):
            b.PrependFloat32(v)
        return b.EndVector()

    mean = floats(m.NormalizationOptionsStartMeanVector, [0.0])
    std = floats(m.NormalizationOptionsStartStdVector, [1.0])
    m.NormalizationOptionsStart(b)
    m.NormalizationOptionsAddMean(b, mean)
    m.NormalizationOptionsAddStd(b, std)
    options = m.NormalizationOptionsEnd(b)
    m.ProcessUnitStart(b)
    m.ProcessUnitAddOptionsType(b, m.ProcessUnitOptions.NormalizationOptions)
    m.ProcessUnitAddOptions(b, options)
    unit = m.ProcessUnitEnd(b)

    def shared(start, offset):
        start(b, width)
        for _ in range(width):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    units = shared(m.TensorMetadataStartProcessUnitsVector, unit)
    m.TensorMetadataStart(b)
    m.TensorMetadataAddProcessUnits(b, units)
    tensor = m.TensorMetadataEnd(b)
    tensors = shared(m.SubGraphMetadataStartInputTensorMetadataVector, tensor)
    m.SubGraphMetadataStart(b)
    m.SubGraphMetadataAddInputTensorMetadata(b, tensors)
    subgraph = m.SubGraphMetadataEnd(b)
    subgraphs = shared(m.ModelMetadataStartSubgraphMetadataVector, subgraph)
    m.ModelMetadataStart(b)
    m.ModelMetadataAddSubgraphMetadata(b, subgraphs)
    b.Finish(m.ModelMetadataEnd(b), b"M001")
    return bytes(b.Output())


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "red.png"
    Image.fromarray(np.full((32, 32, 3), (220, 30, 30), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("mean, std, why", [
    ([0.0], [0.0], "a std of 0"),
    ([float("nan")], [1.0], "NaN or infinite"),
    ([0.0], [float("inf")], "NaN or infinite"),
    ([0.0, 0.0], [1.0, 1.0], "one value or three"),
    ([], [], "one value or three"),
    ([-3e38], [1.0], "outside -1e4..1e4"),
])
def test_unusable_normalization_is_one_line_not_raw_pixels(tmp_path, image, mean, std, why):
    """Was: taken for absent, the model fed raw pixels (or NaN scores with exit 0)."""
    model = _with_metadata(tmp_path, _normalization(mean, std))
    one_line_error(cli("predict", str(model), str(image)), "unusable input normalisation", why)


def test_usable_normalization_is_applied(tmp_path, image):
    from tledge.runtime.metadata import input_normalization

    model = _with_metadata(tmp_path, _normalization([127.5], [127.5]))
    found = input_normalization(model)
    assert found is not None and found.describe() == "mean 127.5, std 127.5"


def test_metadata_whose_lists_share_one_entry_is_read_in_place(tmp_path, image):
    """24 KB of shared entries kept predict running past 60 s with memory growing."""
    raw = _shared_entries(2000)
    assert len(raw) < 30_000
    model = _with_metadata(tmp_path, raw)
    start = time.monotonic()
    result = cli("predict", str(model), str(image))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 20


def test_a_labels_file_that_unpacks_past_the_limit_is_one_line(tmp_path, image):
    """A zip appended as "labels" that unpacked to 1 GiB was a MemoryError at 3.8 GB; here
    8 MB past a 4 MB limit, deflated to a few KB."""
    model = _with_metadata(tmp_path, None, labels=b"a\n" * (4 << 20), compress=True)
    assert model.stat().st_size < FP32.stat().st_size + 50_000
    one_line_error(cli("predict", str(model), str(image)), "labels file of over 4 MB")


def test_a_labels_file_beside_a_model_is_bounded_too(tmp_path, image):
    model = _with_metadata(tmp_path, None)
    (tmp_path / "labels.txt").write_bytes(b"x" * ((4 << 20) + 1))
    one_line_error(cli("predict", str(model), str(image)), "labels.txt is over 4 MB")


def test_embedded_labels_in_another_encoding_are_names_not_numbers(tmp_path):
    """Latin-1 labels were dropped silently (class numbers shown); a labels.txt beside a model
    was read in any encoding already: both are now read alike."""
    from tledge.runtime import Classifier

    names = [f"classe {i} café" for i in range(len(Classifier(FP32).labels))]
    model = _with_metadata(tmp_path, None, labels="".join(f"{x}\n" for x in names)
                           .encode("latin-1"))
    assert Classifier(model).labels == names
