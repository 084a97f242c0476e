"""The transfer classifier: flat, raw pixels in, ResNet's BGR folded into RGB, clear errors for
missing weights, unfreezing by count and by name."""

import numpy as np
import pytest

from tledge.core.config import ModelOptions
from tledge.core.errors import TledgeError
from tledge.models import (PREPROCESS, backbone_layers, build_classifier, head_layers,
                           set_backbone_trainable)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras():
    import tf_keras

    return tf_keras


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_classifier_is_flat_and_takes_raw_pixels(keras, backbone):
    model = build_classifier(ModelOptions(backbone=backbone, alpha=0.35, weights="none",
                                          head_units=8), num_classes=4, image_size=32)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "nested model"
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 4)
    assert model.layers[1].name == PREPROCESS
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    scaled = model.get_layer(PREPROCESS)(pixels).numpy().ravel()
    if backbone == "mobilenet_v2":  # mobilenet_v2.preprocess_input: x / 127.5 - 1
        np.testing.assert_allclose(scaled, [-1.0, 0.0, 1.0], atol=1e-6)
    else:  # caffe means in RGB order; BGR order is folded into conv1
        np.testing.assert_allclose(scaled, [-123.68, 10.721, 151.061], atol=1e-3)
    names = [layer.name for layer in head_layers(model)]
    assert names == ["head_pool", "head_dropout", "head_hidden", "head_hidden_dropout",
                     "predictions"]
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_resnet_weights_are_converted_to_rgb_input(keras, tmp_path):
    """A caffe-style backbone fed RGB through our model equals Keras' own BGR preprocessing."""
    opts = ModelOptions(backbone="resnet50", weights="none")
    plain = keras.applications.ResNet50(input_shape=(32, 32, 3), include_top=False,
                                        weights=None)
    path = tmp_path / "resnet_notop.h5"
    plain.save_weights(path)
    model = build_classifier(ModelOptions(backbone="resnet50", weights=str(path)), 3, 32)
    features = keras.Model(model.input, model.get_layer("conv5_block3_out").output)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    expected = plain(keras.applications.resnet50.preprocess_input(x.copy())).numpy()
    np.testing.assert_allclose(features(x).numpy(), expected, rtol=1e-3, atol=1e-3)
    assert opts.weights == "none"


def test_missing_weights_file_is_a_clear_error():
    with pytest.raises(TledgeError, match="does not exist.*--weights imagenet, none"):
        build_classifier(ModelOptions(weights="/nope/w.h5"), 2, 32)


@pytest.mark.parametrize("failure, why", [
    (Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] "
               "Temporary failure in name resolution"),
     "no network ([Errno -3] Temporary failure in name resolution)"),
    (Exception("URL fetch failure on https://storage.googleapis.com/x.h5: 403 -- Forbidden"),
     "the server answered HTTP 403 Forbidden"),
    (ValueError("Incomplete or corrupted file detected. The sha256 file hash does not match "
                "the provided value of 1234."), "checksum does not match"),
])
def test_failed_imagenet_download_says_why_and_how_to_work_offline(keras, monkeypatch, failure,
                                                                   why):
    def offline(*args, **kwargs):
        raise failure

    monkeypatch.setattr(keras.utils, "get_file", offline)
    import tf_keras.src.applications.mobilenet_v2 as mnv2
    monkeypatch.setattr(mnv2.data_utils, "get_file", offline)
    with pytest.raises(TledgeError) as e:
        build_classifier(ModelOptions(alpha=0.35, weights="imagenet"), 2, 96)
    message = str(e.value)
    assert message.startswith("could not download the ImageNet weights for mobilenet_v2: ")
    assert why in message
    for fix in ("--weights PATH", "make demo WEIGHTS=PATH", "--weights none", "WEIGHTS=none"):
        assert fix in message, message


def test_a_local_backbone_file_at_hand_is_named_offline(keras, monkeypatch, tmp_path):
    """Offline, the error named only the flag; make demo found a local file by itself."""
    from tledge import models

    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5").write_bytes(b"")
    (cache / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    found = models.local_weight_files("mobilenet_v2")
    assert found and found[0] == str(cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
                                             "1.0_96_no_top.h5")
    assert all("resnet" not in f for f in found)

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    import tf_keras.src.applications.mobilenet_v2 as mnv2
    monkeypatch.setattr(mnv2.data_utils, "get_file", offline)
    with pytest.raises(TledgeError, match=f"e.g. --weights {found[0]} \\(found here\\)"):
        build_classifier(ModelOptions(alpha=0.35, weights="imagenet"), 2, 96)


def test_unfreeze_by_count_name_and_all_keeps_batchnorm_frozen(keras):
    model = build_classifier(ModelOptions(alpha=0.35, weights="none"), 3, 32)
    layers = backbone_layers(model)
    set_backbone_trainable(model, None)
    assert not any(layer.trainable for layer in layers)
    assert all(layer.trainable for layer in head_layers(model))
    set_backbone_trainable(model, "5")
    assert [layer.trainable for layer in layers[:-5]] == [False] * (len(layers) - 5)
    top = layers[-5:]
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization)
               for layer in top)
    set_backbone_trainable(model, "block_16_project")
    assert model.get_layer("block_16_project").trainable
    assert not model.get_layer("block_16_depthwise").trainable
    set_backbone_trainable(model, "all")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in layers)
    with pytest.raises(TledgeError, match="neither a number"):
        set_backbone_trainable(model, "no_such_layer")


def test_a_weights_file_of_another_backbone_is_refused_not_ignored(keras, tmp_path):
    """EfficientNet-Lite0 loads a file by layer name: a MobileNetV2 file would fill none of its
    layers and leave it random without a word (tledge tune's candidates met exactly that)."""
    other = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                           include_top=False, weights=None)
    path = tmp_path / "mobilenet_v2_0.35_no_top.h5"
    other.save_weights(path)
    with pytest.raises(TledgeError, match="does not fit efficientnet_lite0: it holds weights "
                                          "for 0 of its"):
        build_classifier(ModelOptions(backbone="efficientnet_lite0", weights=str(path)), 3, 32)
    from tledge.models.efficientnet_lite import efficientnet_lite0

    mine = tmp_path / "efficientnet_lite0_no_top.h5"  # its own file fits
    efficientnet_lite0(keras.Input((32, 32, 3))).save_weights(mine)
    build_classifier(ModelOptions(backbone="efficientnet_lite0", weights=str(mine)), 3, 32)
