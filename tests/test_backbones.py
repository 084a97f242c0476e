"""Every backbone in the registry: flat, RGB 0..255 in, a default unfreeze point at a block
boundary, quantization-aware trainable and exported as a fully-integer int8 file that tracks
its QAT model. MobileNetV3's hard-swish (TFOpLambda layers, refused by tfmot) and EfficientNet-
Lite0 (built here to its published definition) included. Random weights: this machine cannot
download ImageNet weights, so no accuracy is claimed here."""

import numpy as np
import pytest

from tledge.core.config import BACKBONES, ModelOptions
from tledge.models import (PREPROCESS, REGISTRY, backbone_layers, build_classifier,
                           unfreeze_start)

pytestmark = pytest.mark.slow
NEW = ["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v3_small_minimalistic",
       "mobilenet_v3_large_minimalistic", "efficientnet_lite0", "vgg16"]


def test_registry_and_config_agree():
    assert set(REGISTRY) == set(BACKBONES)
    for name, spec in REGISTRY.items():
        assert spec.unfreeze_from and spec.description, name


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
# mobilenet_v3_small goes the whole CLI path below (three phases, QAT, verified int8 export)
@pytest.mark.parametrize("backbone", [b for b in NEW if b != "mobilenet_v3_small"])
def test_backbone_is_flat_qat_able_and_fully_int8(backbone):
    import tf_keras as keras

    from tledge.data.pipeline import batches
    from tledge.export import QuantizationConfig, check_quantized, convert
    from tledge.training.qat import calibrate_ranges, make_qat_model
    from tledge.runtime import Classifier
    from tledge.runtime.delegation import delegation

    keras.utils.set_random_seed(0)
    model = build_classifier(ModelOptions(backbone=backbone, weights="none", alpha=1.0,
                                          dropout=0.0), 3, 32)
    assert model.layers[1].name == PREPROCESS
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat
    layers = backbone_layers(model)
    start = unfreeze_start(model, "auto", backbone)
    if REGISTRY[backbone].unfreeze_from == "all":
        assert start == 0
    else:
        assert 0 < start < len(layers) and layers[start].name == REGISTRY[backbone].unfreeze_from

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 3, 32).astype(np.int32)
    qat = make_qat_model(model)
    assert calibrate_ranges(qat, batches(x, y, 8).repeat().take(4))
    raw = convert(qat, QuantizationConfig.for_int8(x[:16], from_qat=True))
    quant = check_quantized(raw, "int8")  # uint8 in and out, no float tensor left
    assert quant["input_dtype"] == quant["output_dtype"] == "uint8"
    clf = Classifier("model.tflite", interpreter=_interpreter(raw), labels=["a", "b", "c"])
    p_int8 = clf.predict_batch(x)
    p_qat = qat(x.astype(np.float32), training=False).numpy()  # one call: no predict trace
    assert np.abs(p_int8 - p_qat).max() < 0.1, np.abs(p_int8 - p_qat).max()
    assert delegation(clf.interpreter).partitions == 1, delegation(clf.interpreter).summary()

    # Post-training int8 of the float model (BatchNorm statistics of these images first, so
    # activations have a trained network's scale): one XNNPACK partition too, hard-swish
    # included, and its top-1 the float model's.
    for start in range(0, 32, 8):
        model(x[start:start + 8].astype(np.float32), training=True)
    ptq = _interpreter(convert(model, QuantizationConfig.for_int8(x[:16])))
    assert delegation(ptq).partitions == 1, delegation(ptq).summary()
    assert "HARD_SWISH" not in delegation(ptq).undelegated


def _interpreter(raw: bytes):
    from tledge.runtime import get_backend

    interpreter = get_backend().interpreter_cls(model_content=raw, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_mobilenet_v3_through_all_three_phases_and_export(tmp_path):
    """The CLI path a user takes: train (frozen, fine-tune at the block boundary, QAT), then a
    verified full-integer export from the QAT model."""
    import json
    from helpers import assert_quiet, tledge

    run = tmp_path / "run"
    train = tledge("train", "--data", "shapes", "--backbone", "mobilenet_v3_small",
                   "--image-size", "48", "--weights", "none", "--epochs-frozen", "1",
                   "--epochs-finetune", "1", "--epochs-qat", "1", "--limit", "12",
                   "--no-augment", "--out", run)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "phase finetune" in train.stdout and "phase qat" in train.stdout
    export = tledge("export", run, "--int8", "--max-drop", "100")
    assert export.returncode == 0, export.stderr[-3000:]
    assert_quiet(train.stderr)  # issue 24: no library noise without -v
    assert_quiet(export.stderr)
    card = json.loads((run / "export" / "model_card.json").read_text())
    entry = card["files"]["model_int8.tflite"]
    assert entry["converted_from"] == "qat" and entry["input_dtype"] == "uint8"
    assert card["config"]["train"]["finetune"]["unfreeze"] == "auto"
    from tledge.runtime import Classifier
    clf = Classifier(run / "export" / "model_int8.tflite")
    assert clf.input_dtype == np.uint8 and clf.output_dtype == np.uint8
    floats = [t["name"] for t in clf.interpreter.get_tensor_details()
              if t["dtype"] == np.float32]
    assert not floats, floats[:5]  # fully integer: no op left float


@pytest.mark.parametrize("backbone, alpha, fragment", [
    ("mobilenet_v3_small", 0.5, "no ImageNet weights"),
    ("mobilenet_v3_large_minimalistic", 0.75, "choose one of 1"),
])
def test_imagenet_alphas_are_checked(backbone, alpha, fragment):
    from tledge.core.errors import TledgeError

    with pytest.raises(TledgeError, match=fragment):
        ModelOptions(backbone=backbone, alpha=alpha, weights="imagenet")


def test_efficientnet_lite0_has_no_downloadable_weights():
    from tledge.core.errors import TledgeError

    with pytest.raises(TledgeError, match="no ImageNet weights for efficientnet_lite0"):
        build_classifier(ModelOptions(backbone="efficientnet_lite0", weights="imagenet"), 3, 32)
