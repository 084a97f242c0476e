"""Backbone registry and the classifier builder (tf_keras, Keras 2: QAT needs it).

The classifier is *flat*: the backbone is built on the model's own input tensor and the head's
layers are applied to ``backbone.output``, so there is no Functional model nested inside another
(tensorflow-model-optimization refuses to quantize one). It takes raw RGB pixels 0..255: the
backbone's own normalisation is its first layer, named ``preprocess``, so no device code ever
re-implements it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tledge.core.config import ModelOptions
from tledge.core.errors import TledgeError, first_line

log = logging.getLogger(__name__)

PREPROCESS = "preprocess"
HEAD_LAYERS = ("head_pool", "head_dropout", "head_hidden", "head_hidden_dropout", "predictions")
# Keras' ImageNet weights exist for these inputs; others still load but Keras warns.
IMAGENET_SIZES = {"mobilenet_v2": (96, 128, 160, 192, 224), "resnet50": (224,),
                  "mobilenet_v3_small": (224,), "mobilenet_v3_large": (224,), "vgg16": (224,)}


@dataclass(frozen=True)
class BackboneSpec:
    """How one backbone is built and what it expects.

    Attributes:
      build: (input_tensor, weights or None, alpha) -> Keras application without its top.
      preprocess: a Keras layer mapping raw 0..255 RGB to the backbone's input.
      rgb_to_bgr_first_conv: name of the first convolution when the pretrained weights expect
        BGR input (caffe-style ResNet50); its kernel's input channels are flipped after loading,
        so the model still takes RGB without a channel-swap op on the device.
      description: one line for ``--help`` and the model card.
      unfreeze_from: the first layer of the backbone's last block(s), where fine-tuning starts
        by default (``--unfreeze auto``): a block boundary, not a layer count; or ``all``.
    """

    build: Callable
    preprocess: Callable
    rgb_to_bgr_first_conv: str | None
    description: str
    unfreeze_from: str = ""


def _keras():
    import tf_keras as keras
    return keras


def _mobilenet_v2(input_tensor, weights, alpha):
    return _keras().applications.MobileNetV2(
        input_tensor=input_tensor, include_top=False, weights=weights, alpha=alpha)


def _resnet50(input_tensor, weights, alpha):
    return _keras().applications.ResNet50(
        input_tensor=input_tensor, include_top=False, weights=weights)


def _mobilenet_preprocess():
    # x / 127.5 - 1: keras.applications.mobilenet_v2.preprocess_input, as a layer.
    return _keras().layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS)


def _caffe_preprocess():
    # keras.applications.resnet50.preprocess_input is x[..., ::-1] - [103.939, 116.779, 123.68]
    # (BGR means). The channel swap is folded into the first convolution's kernel instead, so
    # this layer subtracts the same means in RGB order.
    return _keras().layers.Rescaling(1.0, offset=[-123.68, -116.779, -103.939], name=PREPROCESS)


def _mobilenet_v3(large: bool, minimalistic: bool):
    def build(input_tensor, weights, alpha):
        app = _keras().applications.MobileNetV3Large if large else \
            _keras().applications.MobileNetV3Small
        # tledge's own preprocess layer normalises (x / 127.5 - 1, what include_preprocessing
        # would add); hard-swish's "+ 3" and "/ 6" are TFOpLambda layers, which tledge.training.qat
        # replaces with quantizable layers for QAT.
        return app(input_tensor=input_tensor, include_top=False, weights=weights, alpha=alpha,
                   minimalistic=minimalistic, include_preprocessing=False)
    return build


def _vgg16(input_tensor, weights, alpha):
    return _keras().applications.VGG16(input_tensor=input_tensor, include_top=False,
                                       weights=weights)


def _efficientnet_lite0(input_tensor, weights, alpha):
    from tledge.models.efficientnet_lite import efficientnet_lite0
    if weights == "imagenet":
        raise TledgeError("Keras has no ImageNet weights for efficientnet_lite0: pass --weights "
                          "PATH (a Keras .h5 of this architecture without its top) or --weights "
                          "none")
    model = efficientnet_lite0(input_tensor)
    if weights:
        model.load_weights(weights, by_name=True, skip_mismatch=False)
        check_weights_cover(model, weights, "efficientnet_lite0")
    return model


def check_weights_cover(model, path: str, backbone: str) -> None:
    """A weights file loaded by layer name fills only the layers whose names it holds, and says
    nothing of the others: a file of another backbone would leave the model random, silently.

    Raises:
      TledgeError: the file holds weights for fewer than 90% of the model's weighted layers.
    """
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = {n.decode() if isinstance(n, bytes) else str(n)
                 for n in group.attrs.get("layer_names", [])} or set(group.keys())
    weighted = [layer.name for layer in model.layers if layer.weights]
    covered = sum(name in names for name in weighted)
    if covered < 0.9 * len(weighted):
        raise TledgeError(f"weights file {path} does not fit {backbone}: it holds weights for "
                          f"{covered} of its {len(weighted)} layers with weights (a file of "
                          "another backbone?): pass this backbone's own .h5, or --weights none")


REGISTRY: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(_mobilenet_v2, _mobilenet_preprocess, None,
                                 "MobileNetV2 (Sandler et al. 2018), width set by --alpha",
                                 "all"),  # measured: benchmarks/recipe.md
    "resnet50": BackboneSpec(_resnet50, _caffe_preprocess, "conv1_conv",
                             "ResNet50 (He et al. 2015), caffe-style normalisation",
                             "conv5_block1_1_conv"),
    "mobilenet_v3_small": BackboneSpec(_mobilenet_v3(False, False), _mobilenet_preprocess, None,
                                       "MobileNetV3-Small (Howard et al. 2019), --alpha 0.75/1.0",
                                       "expanded_conv_8/expand"),
    "mobilenet_v3_large": BackboneSpec(_mobilenet_v3(True, False), _mobilenet_preprocess, None,
                                       "MobileNetV3-Large, --alpha 0.75/1.0",
                                       "expanded_conv_12/expand"),
    "mobilenet_v3_small_minimalistic": BackboneSpec(
        _mobilenet_v3(False, True), _mobilenet_preprocess, None,
        "MobileNetV3-Small minimalistic: no squeeze-excite or hard-swish",
        "expanded_conv_8/expand"),
    "mobilenet_v3_large_minimalistic": BackboneSpec(
        _mobilenet_v3(True, True), _mobilenet_preprocess, None,
        "MobileNetV3-Large minimalistic: no squeeze-excite or hard-swish",
        "expanded_conv_12/expand"),
    "efficientnet_lite0": BackboneSpec(_efficientnet_lite0, _mobilenet_preprocess, None,
                                       "EfficientNet-Lite0 (Tan and Le 2019, edge variant): no "
                                       "squeeze-excite, ReLU6", "block6a_expand_conv"),
    "vgg16": BackboneSpec(_vgg16, _caffe_preprocess, "block1_conv1",
                          "VGG16 (Simonyan and Zisserman 2014), caffe-style normalisation",
                          "block5_conv1"),
}


def local_weight_files(backbone: str) -> list[str]:
    """Backbone weight files already on this machine that may fit ``backbone``: Keras' own
    download cache ($KERAS_HOME/models, ~/.keras/models) and a checkout's ../shared/weights
    (what make demo uses), by name (mobilenet_v2 -> mobilenet_v2*.h5, no top)."""
    import os

    stem = backbone.replace("_minimalistic", "").lower()
    folders = [Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models",
               Path(__file__).resolve().parents[2].parent / "shared" / "weights"]
    found = []
    for folder in folders:
        if folder.is_dir():
            found += sorted(str(p) for p in folder.glob("*.h5")
                            if stem in p.name.lower() and "top" in p.name.lower())
    return found[:2]


def resolve_weights(weights: str) -> str | None:
    """'imagenet' | 'none' | a path -> what keras.applications takes."""
    if weights.lower() == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TledgeError(
            f"weights file {weights} does not exist: pass --weights imagenet, none, or the path "
            "of a Keras weights file (.h5) for the backbone without its top")
    return str(path)


def download_failure(e: BaseException) -> str:
    """Why a Keras download failed, in words: no network, an HTTP status, a bad checksum.
    Keras' get_file wraps URLError and HTTPError in a bare Exception("URL fetch failure on
    URL: CODE -- REASON") and raises ValueError on a checksum mismatch."""
    import re

    text = first_line(e)
    if "hash" in text and "does not match" in text:
        return ("the downloaded file's checksum does not match (a partial or damaged download; "
                "delete it from ~/.keras/models and retry)")
    fetch = re.search(r"URL fetch failure on (\S+): (\S+) -- (.*)", text)
    if fetch:
        code, reason = fetch.group(2), fetch.group(3).strip()
        if code.isdigit() and 100 <= int(code) < 600:
            return f"the server answered HTTP {code} {reason}"
        return f"no network ({reason or 'unreachable'})"
    if isinstance(e, (ConnectionError, TimeoutError)) or "Errno" in text:
        return f"no network ({text[:120]})"
    return text[:160] or type(e).__name__


def build_classifier(options: ModelOptions, num_classes: int, image_size: int):
    """The flat transfer classifier: uint8-range RGB in, class probabilities out."""
    keras = _keras()
    spec = REGISTRY[options.backbone]
    weights = resolve_weights(options.weights)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = spec.preprocess()(inputs)
    try:
        base = spec.build(x, weights, options.alpha)
    except TledgeError:
        raise
    except Exception as e:  # a failed download surfaces as URLError/HTTPError/OSError/Exception
        if weights == "imagenet" and (not isinstance(e, ValueError) or "hash" in str(e)):
            near = local_weight_files(options.backbone)
            raise TledgeError(
                f"could not download the ImageNet weights for {options.backbone}: "
                f"{download_failure(e)}. Offline, use a local weights file (--weights PATH; "
                "make demo WEIGHTS=PATH)"
                + (f", e.g. --weights {near[0]} (found here)" if near else "")
                + " or start from random weights (--weights none; make demo WEIGHTS=none)"
                ) from e
        if isinstance(e, ValueError):
            raise TledgeError(f"cannot build {options.backbone}: {first_line(e)}") from e
        raise TledgeError(f"could not load weights {weights} for {options.backbone} "
                          f"({first_line(e)[:160]}): pass a weights file saved for "
                          "this backbone (and --alpha) without its top") from e
    if weights is None:
        # Keras' applications use BatchNorm momentum 0.999, tuned to ImageNet's million images:
        # from random weights on a few thousand images the moving statistics would still be near
        # their initial (0, 1) after training and validation would sit at chance. 0.9 tracks
        # the batch statistics within a few dozen steps.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    if weights is not None and spec.rgb_to_bgr_first_conv:
        conv = base.get_layer(spec.rgb_to_bgr_first_conv)
        kernel, *rest = conv.get_weights()
        conv.set_weights([kernel[:, :, ::-1, :], *rest])
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    x = keras.layers.Dropout(options.dropout, name="head_dropout")(x)
    if options.head_units:
        x = keras.layers.Dense(options.head_units, activation="relu", name="head_hidden")(x)
        x = keras.layers.Dropout(options.dropout, name="head_hidden_dropout")(x)
    # float32 output even under mixed precision: softmax in float16 is not stable.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    name = f"{options.backbone}_{options.alpha:g}" if options.backbone == "mobilenet_v2" \
        else options.backbone
    return keras.Model(inputs, outputs, name=f"tledge_{name}")


def backbone_layers(model) -> list:
    """The backbone's layers of a flat classifier, input to output (no input, preprocess, head)."""
    keras = _keras()
    return [layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)
            and layer.name != PREPROCESS and layer.name not in HEAD_LAYERS]


def head_layers(model) -> list:
    return [layer for layer in model.layers if layer.name in HEAD_LAYERS]


def unfreeze_start(model, unfreeze: str | None, backbone: str | None = None) -> int:
    """Index of the first backbone layer that ``unfreeze`` unfreezes ("auto": the backbone's
    own block boundary, REGISTRY[backbone].unfreeze_from); a one-line error for a layer name
    the backbone does not have (train checks this before the first phase)."""
    layers = backbone_layers(model)
    if unfreeze is None:
        return len(layers)
    if unfreeze == "auto":
        if backbone not in REGISTRY or not REGISTRY[backbone].unfreeze_from:
            raise TledgeError(f"--unfreeze auto has no default block for {backbone}: pass a "
                              "number of layers or a layer name")
        unfreeze = REGISTRY[backbone].unfreeze_from
    if unfreeze == "all":
        return 0
    if str(unfreeze).isdigit():
        return max(0, len(layers) - int(unfreeze))
    names = [layer.name for layer in layers]
    if unfreeze not in names:
        raise TledgeError(
            f"--unfreeze {unfreeze!r} is neither a number, 'all' nor a layer of this backbone "
            f"(its last ones are {', '.join(names[-3:])}): pass a number or one of its names")
    return names.index(unfreeze)


def set_backbone_trainable(model, unfreeze: str | None,
                           freeze_batchnorm: bool = True, backbone: str | None = None) -> int:
    """Freeze the backbone, then unfreeze its top: ``unfreeze`` is None (nothing), a count of
    top layers, a layer name (it and everything after), or 'all'.

    With ``freeze_batchnorm`` (a pretrained backbone) BatchNorm layers stay frozen: in tf_keras a
    frozen BatchNormalization runs in inference mode, so its pretrained moving statistics are
    kept, as the Keras fine-tuning guide advises. A randomly initialised backbone has no
    statistics worth keeping (frozen, its BatchNorm would normalise with mean 0 and variance 1
    and the network would not learn), so there they train with the layers around them.
    Returns the number of layers with weights that were unfrozen."""
    keras = _keras()
    layers = backbone_layers(model)
    start = unfreeze_start(model, unfreeze, backbone)
    count = 0
    for i, layer in enumerate(layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        on = i >= start and not (is_bn and freeze_batchnorm)
        layer.trainable = on
        count += on and bool(layer.weights)
    for layer in head_layers(model):
        layer.trainable = True
    return count
