"""TFLite metadata written into an exported file: the input's normalisation, the labels as the
output's associated file (schema M001, as the TFLite metadata populator writes it). Reading it
back, without TensorFlow, is ``tledge.runtime.metadata``'s."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from tledge.runtime.metadata import METADATA_NAME


def metadata_bytes(labels: list[str], model_name: str, description: str, fmt: str,
                   normalization: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """TFLite metadata (schema M001) for an image classifier.

    RGB input, ``(pixel - mean) / std`` with ``normalization`` = (mean, std) (tledge's models
    normalise themselves: mean 0 and std 1, raw pixels), probabilities out, labels as the output
    tensor's associated TENSOR_AXIS_LABELS file.

    Args:
      labels: one per class.
      model_name: the metadata's name.
      description: the metadata's description.
      fmt: the file's format (an int8 output's statistics are its integer range).
      normalization: (mean, std) of the input.

    Returns:
      The metadata flatbuffer's bytes.
    """
    import flatbuffers

    from tledge._vendor import metadata_schema_py_generated as m

    subgraph = m.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_image_metadata(*normalization)]
    subgraph.outputTensorMetadata = [_probability_metadata(fmt)]
    meta = m.ModelMetadataT()
    meta.name = model_name
    meta.description = description
    meta.author = "tledge"
    meta.subgraphMetadata = [subgraph]
    meta.minParserVersion = "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    return bytes(builder.Output())


def _image_metadata(mean: float, std: float):
    """The input tensor's metadata: an RGB image, ``(pixel - mean) / std``."""
    from tledge._vendor import metadata_schema_py_generated as m

    image = m.TensorMetadataT()
    image.name = "image"
    image.description = (
        "RGB image, raw pixels 0..255, stretched to the model's input size; normalisation "
        "happens inside the model" if (mean, std) == (0.0, 1.0) else
        f"RGB image stretched to the model's input size, each pixel as (pixel - {mean:g}) / "
        f"{std:g}")
    image.content = m.ContentT()
    image.content.contentPropertiesType = m.ContentProperties.ImageProperties
    image.content.contentProperties = m.ImagePropertiesT()
    image.content.contentProperties.colorSpace = m.ColorSpaceType.RGB
    norm = m.ProcessUnitT()
    norm.optionsType = m.ProcessUnitOptions.NormalizationOptions
    norm.options = m.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [float(mean)], [float(std)]
    image.processUnits = [norm]
    image.stats = m.StatsT()
    image.stats.min, image.stats.max = [(0.0 - mean) / std], [(255.0 - mean) / std]
    return image


def _probability_metadata(fmt: str):
    """The output tensor's metadata: class probabilities, the labels as its associated file."""
    from tledge._vendor import metadata_schema_py_generated as m

    probs = m.TensorMetadataT()
    probs.name = "probability"
    probs.description = "Probability of each class" + (
        " (uint8: probability = q / 256)" if fmt == "int8" else "")
    probs.content = m.ContentT()
    probs.content.contentPropertiesType = m.ContentProperties.FeatureProperties
    probs.content.contentProperties = m.FeaturePropertiesT()
    probs.stats = m.StatsT()
    # a uint8 output's statistics are its integer range, as the official metadata writer
    # writes them; a float output's are the probabilities' range
    probs.stats.min, probs.stats.max = ([0.0], [255.0]) if fmt == "int8" else ([0.0], [1.0])
    label_file = m.AssociatedFileT()
    label_file.name = "labels.txt"
    label_file.description = "Labels for the classes the model recognises, one per line."
    label_file.type = m.AssociatedFileType.TENSOR_AXIS_LABELS
    probs.associatedFiles = [label_file]
    return probs


def with_metadata(model_bytes: bytes, metadata: bytes, labels: list[str]) -> bytes:
    """Embeds metadata in a model and appends the label file, as the TFLite metadata populator
    does.

    Args:
      model_bytes: the model's flatbuffer.
      metadata: bytes from ``metadata_bytes``, stored as the TFLITE_METADATA buffer.
      labels: written as labels.txt in a zip archive appended to the flatbuffer.

    Returns:
      The model's bytes with both.
    """
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or [])
                      if m.name not in (METADATA_NAME, METADATA_NAME.decode())] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("labels.txt", "".join(f"{label}\n" for label in labels))
    return out.getvalue()
