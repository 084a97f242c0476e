"""Frozen BatchNorm folded into its convolution: the same function, the same training."""

import numpy as np
import pytest

from helpers import keras

pytestmark = pytest.mark.slow


def _frozen(model, seed=0):
    """Every BatchNorm frozen (inference mode) with the statistics of a batch of pictures, as
    a pretrained backbone's are of its data, and a gamma and beta of their own."""
    rng = np.random.default_rng(seed)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become the batch's
    model(rng.uniform(0, 1, (32, *model.input_shape[1:])).astype(np.float32), training=True)
    for layer in norms:
        n = layer.moving_mean.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, n))
        layer.beta.assign(rng.normal(0, 0.1, n))
        layer.trainable = False
    return model


def _mobilenet(seed=0):
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                          weights=None, alpha=0.35)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    return _frozen(keras.Model(base.input, keras.layers.Dense(4, name="predictions")(x)), seed)


def test_the_folded_twin_computes_and_trains_as_the_model():
    """The twin shares the model's variables, computes its function and gives its variables the
    same gradients (float rounding apart); a fit of the twin trains the model."""
    import tensorflow as tf

    from tledge.training.bnfold import folded
    from tledge.training.fitting import compile_model

    keras.backend.set_floatx("float64")  # a random deep network amplifies float32 round-off
    try:
        model = _mobilenet()
        twin, said = folded(model)
        x = np.random.default_rng(1).uniform(0, 1, (8, 32, 32, 3))
        y = np.arange(8) % 4
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def gradients(m):
            with tf.GradientTape() as tape:
                value = loss(y, m(x, training=True))
            return tape.gradient(value, model.trainable_weights)

        np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-9, atol=1e-9)
        for plain, fold in zip(gradients(model), gradients(twin)):
            assert np.abs(plain).max() > 0
            np.testing.assert_allclose(fold, plain, rtol=1e-6, atol=1e-9 * np.abs(plain).max())
    finally:
        keras.backend.set_floatx("float32")
    assert said == "52 frozen BatchNorm layers folded into their convolutions"
    assert {id(w) for w in twin.trainable_weights} == {id(w) for w in model.trainable_weights}
    model = _mobilenet()  # float32, as a run trains
    twin, _ = folded(model)
    x = x.astype(np.float32)
    before = [w.numpy().copy() for w in model.trainable_weights]
    compile_model(twin, 1e-3, 0.0)
    twin.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before,
                                                                  model.trainable_weights))


def test_only_a_frozen_batchnorm_after_a_plain_convolution_is_folded():
    from tledge.training.bnfold import folded, folded_batchnorm
    from tledge.training.features import split_at

    keras.utils.set_random_seed(0)
    x = inputs = keras.layers.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=True, name="biased")(x)  # folded, bias and all
    x = keras.layers.BatchNormalization(name="bn_biased")(x)
    shared = keras.layers.Conv2D(4, 1, name="shared")(x)  # its output feeds two layers
    x = keras.layers.Add()([keras.layers.BatchNormalization(name="bn_shared")(shared), shared])
    x = keras.layers.Conv2D(4, 1, activation="relu", name="activated")(x)  # relu before BN
    x = keras.layers.BatchNormalization(name="bn_activated")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="bn_depthwise")(x)
    x = keras.layers.Conv2D(4, 1, name="learning")(x)
    x = keras.layers.BatchNormalization(name="bn_learning")(x)  # trains: not folded
    model = _frozen(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))
    model.get_layer("bn_learning").trainable = True
    twin, said = folded(model)
    assert said.startswith("2 frozen BatchNorm layers folded")
    assert {layer.name for layer in twin.layers} >= {"biased_bnfold", "depthwise_bnfold",
                                                      "shared", "activated", "bn_learning"}
    images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(twin.predict(images, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-3, atol=1e-3)
    # the top of a model cut at its unfreeze point (features.split_at) folds the same way
    for layer in model.layers[:3]:
        layer.trainable = False
    bottom, top = split_at(model, [layer.name for layer in model.layers[3:]])
    top_twin, _ = folded(top)
    np.testing.assert_allclose(top_twin.predict(bottom.predict(images, verbose=0), verbose=0),
                               model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
    for layer in model.layers:  # nothing frozen: the model itself, said
        layer.trainable = True
    assert folded(model)[0] is None and folded_batchnorm(model, "finetune") is model
