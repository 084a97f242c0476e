"""Writes the small .tflite files that fast tests use, so those tests need no TensorFlow:

- ``hard_swish_int8.tflite``: a full-integer image classifier (uint8 in and out, 32x32) with two
  int8 HARD_SWISH ops, straight from the TFLite converter, as a post-training int8 MobileNetV3
  has them: XNNPACK leaves those ops to the reference kernels and the graph falls into three
  delegated partitions. tledge's own conversion rewrites them (tledge.quantize.graph_rewrite);
  this file
  is the converter's output *before* that rewrite, what the rewrite and the delegation report
  are tested on.

- ``colour_int8.tflite`` and ``colour_fp32.tflite``: the colour classifier of tests/helpers.py
  (two convolutions, four colours, 32x32) trained with QAT and exported by ``tledge export``:
  metadata, embedded labels, verified. The runtime, camera, serve, bench, predict and fault
  tests run on them without TensorFlow.
- ``vector_in.tflite`` and ``image_out.tflite``: two models that are not image classifiers (a
  vector in; an image out), for the commands' one-line refusals.
- ``unit_range_fp32.tflite``, ``unit_range_uint8.tflite``, ``signed_range_fp32.tflite``: another
  tool's classifiers of the same colours, which take normalised input ([0, 1] as MediaPipe Model
  Maker's, [-1, 1]) and say so in their metadata. ``mediapipe_scores.json`` holds what MediaPipe
  Tasks scores on them (written by ``mediapipe_scores.py``, in a venv with ``mediapipe``).

Regenerate with ``.venv/bin/python tests/models/make_models.py``; the slow test
``test_committed_models_match_their_script`` (tests/test_export.py) makes them again and checks
that they still match what the script and export produce: the same graphs (ops, tensor types
and shapes, I/O quantization, signature), and for the colour files the same predictions. Not the
same bytes: training is not bit-reproducible from run to run (threaded float reductions).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/helpers.py
HARD_SWISH = HERE / "hard_swish_int8.tflite"
SIZE = 32


def calibration_images(n: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields, uint8 (n, SIZE, SIZE, 3)."""
    import cv2

    rng = np.random.default_rng(seed)
    return np.stack([cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (SIZE, SIZE))
                     for _ in range(n)])


def hard_swish_model():
    """Conv -> hard-swish (as Keras' MobileNetV3 writes it: x * relu6(x + 3) / 6) -> depthwise
    conv -> hard-swish -> pool -> softmax; weights seeded, activations of order one."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)

    def hard_swish(x):
        return keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = hard_swish(keras.layers.Conv2D(8, 3, strides=2, padding="same")(x))
    x = hard_swish(keras.layers.DepthwiseConv2D(3, padding="same")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def hard_swish_int8() -> bytes:
    """The converter's own post-training int8 file of hard_swish_model() (no tledge rewrite)."""
    import tensorflow as tf

    images = calibration_images()

    def representative():
        for image in images:
            yield [image[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(hard_swish_model())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


def not_classifiers() -> dict[str, bytes]:
    """A model with a vector input and one with an image output, converted as they are."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    # layers named: Keras' automatic names count the models built before in this process
    models = {"vector_in": keras.Sequential([keras.Input((10,), name="vector"),
                                             keras.layers.Dense(3, name="scores")]),
              "image_out": keras.Sequential([keras.Input((16, 16, 3), name="image"),
                                             keras.layers.Conv2D(2, 3, name="feature_map")])}
    return {name: tf.lite.TFLiteConverter.from_keras_model(model).convert()
            for name, model in models.items()}


def colour_models() -> dict[str, bytes]:
    """The colour classifier trained (float, then QAT) and exported by tledge: int8 and fp32."""
    from helpers import export_colour_run, train_colour_run

    with tempfile.TemporaryDirectory() as tmp:
        splits, _ = train_colour_run(Path(tmp) / "run")
        files = export_colour_run(Path(tmp) / "run", splits, Path(tmp) / "export")
        return {f"colour_{fmt}": path.read_bytes() for fmt, path in files.items()}


# Another tool's classifiers, which take normalised input and say so in their metadata
# (NormalizationOptions), as MediaPipe Model Maker's do: (stem, mean, std, quantized).
NORMALISED = [("unit_range_fp32", 0.0, 255.0, False),     # [0, 1], Model Maker's float files
              ("unit_range_uint8", 0.0, 255.0, True),     # its quantized files: uint8 in
              ("signed_range_fp32", 127.5, 127.5, False)]  # [-1, 1], Keras' MobileNet range


def normalised_classifier(mean: float, std: float):
    """The colours of tests/helpers.py told apart by their nearest centroid, on input already
    normalised as (pixel - mean) / std: logits = c . x - |c|^2 / 2 for each colour c (in the
    same normalised units) over the image's mean colour, times 10, softmax. Fed raw 0..255
    pixels instead it answers wrongly, so a test sees whether normalisation happened."""
    import tf_keras as keras

    from helpers import COLOURS

    centroids = (COLOURS.astype(np.float32) - mean) / std
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(centroids), activation="softmax", name="predictions")
    outputs = dense(x)
    dense.set_weights([10 * centroids.T, -10 * (centroids ** 2).sum(1) / 2])
    return keras.Model(inputs, outputs)


def normalised_models() -> dict[str, bytes]:
    """NORMALISED as .tflite files with metadata (normalisation, labels) written by tledge's
    own metadata writer; the uint8 one quantized as Model Maker does it (calibrated on
    normalised images, so its uint8 input has scale std / 255)."""
    import tensorflow as tf

    from helpers import LABELS, colour_set
    from tledge.export.metadata import metadata_bytes, with_metadata

    pixels = colour_set(8, seed=0).x.astype(np.float32)
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255  # the whole 0..255 range calibrated
    out = {}
    for stem, mean, std, quantized in NORMALISED:
        converter = tf.lite.TFLiteConverter.from_keras_model(normalised_classifier(mean, std))
        if quantized:
            def representative(images=(pixels - mean) / std):
                for image in images:
                    yield [image[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        meta = metadata_bytes(LABELS, stem, "normalised-input colour classifier",
                              "int8" if quantized else "fp32", normalization=(mean, std))
        out[stem] = with_metadata(converter.convert(), meta, LABELS)
    return out


def all_models() -> dict[str, bytes]:
    """Every committed model by file stem."""
    return {"hard_swish_int8": hard_swish_int8(), **not_classifiers(), **colour_models(),
            **normalised_models()}


def main() -> None:
    from tledge.core import fileio

    for stem, data in all_models().items():
        path = fileio.write_bytes(HERE / f"{stem}.tflite", data)
        print(f"wrote {path} ({len(data):,} bytes)")


if __name__ == "__main__":
    main()
