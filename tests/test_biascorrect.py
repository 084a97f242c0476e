"""Post-training int8 stays faithful where rounded weights shift a layer's mean (tledge.
biascorrect): inputs of large mean and small spread (ReLU6 outputs near a constant, as a
pretrained backbone gives on images far from its data) into a layer with wide per-channel
weights, then a head whose folded standardisation spans a wide range (1/std of each feature),
which magnifies any shift of the features. Without correction the int8 file disagrees with the
float model on a third of the images; with it, on under a tenth."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _images(n: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return np.stack([cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (16, 16))
                     for _ in range(n)])


def _shifted_model():
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    first = keras.layers.Conv2D(8, 3, padding="same")
    x = keras.layers.ReLU(6.0)(first(x))  # about 2.5 everywhere, spread 0.05 x input
    second = keras.layers.Conv2D(16, 1)
    x = keras.layers.GlobalAveragePooling2D()(second(x))
    head = keras.layers.Dense(3, activation="softmax", name="predictions")
    model = keras.Model(inputs, head(x))
    first.set_weights([rng.normal(0, 0.05, (3, 3, 3, 8)), np.full(8, 2.5)])
    kernel = rng.normal(0, 1, (1, 1, 8, 16))
    kernel[0, 0, 0, :] = 8.0  # one wide weight per channel: coarse int8 steps for the rest
    second.set_weights([kernel, np.zeros(16)])
    features = keras.Model(inputs, x).predict(_images(256, 1).astype(np.float32), verbose=0)
    mean, std = features.mean(0), features.std(0)
    weights = rng.normal(0, 1, (16, 3)) / std[:, None]  # standardisation folded in: 1/std
    head.set_weights([weights, -mean @ weights])
    return model


def test_bias_correction_keeps_post_training_int8_with_the_float_model(tmp_path):
    from tledge.quantize.conversion import QuantizationConfig, convert
    from tledge.runtime import Classifier

    model = _shifted_model()
    calibration, test = _images(64, 2), _images(200, 3)
    reference = model.predict(test.astype(np.float32), verbose=0)
    result = {}
    for corrected in (False, True):
        path = tmp_path / f"int8_{corrected}.tflite"
        path.write_bytes(convert(model, QuantizationConfig.for_int8(
            calibration, bias_correction=corrected)))
        probs = Classifier(path, threads=1).predict_batch(test)
        result[corrected] = (np.mean(probs.argmax(1) == reference.argmax(1)),
                             np.abs(probs - reference).mean())
    (agree_off, error_off), (agree_on, error_on) = result[False], result[True]
    assert agree_off < 0.8, "the model must show the shift bias correction is for"
    assert agree_on >= 0.88 and error_on < 0.4 * error_off, result
