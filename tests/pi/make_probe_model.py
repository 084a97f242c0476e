"""Writes tledge/runtime/probe.tflite: the tiny full-int8 image classifier that
tledge.runtime.probe loads in a child process to check a TFLite backend before first use.

It exercises what a tledge int8 file does (uint8 input, int8 convolution and dense layers through
XNNPACK, uint8 softmax output) in a few kilobytes. Regenerate with:
    .venv/bin/python tests/pi/make_probe_model.py
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tledge" / "runtime" / "probe.tflite"


def main() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)

    def representative():
        rng = np.random.default_rng(0)
        for _ in range(16):
            yield [rng.integers(0, 256, (1, 16, 16, 3)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    OUT.write_bytes(converter.convert())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
