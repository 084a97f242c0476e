"""Phase 3: quantization-aware training with tensorflow-model-optimization.

The flat classifier is annotated layer by layer. Every layer tfmot knows gets its default 8-bit
scheme (Conv + BatchNorm + ReLU folded, per-channel weights). The one layer it does not know,
the in-model normalisation ``preprocess`` (a Rescaling), is annotated deliberately with
``OutputQuantizeConfig``: no weights to quantize, its output fake-quantized. tfmot puts a
quantizer on the model input in front of it, so the whole graph, the raw 0..255 input included,
carries learned ranges and converts to full-integer TFLite with a uint8 input.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Optional

from tledge.core import rundir
from tledge.core.config import RunConfig
from tledge.data import Splits

log = logging.getLogger(__name__)

CALIBRATION_BATCHES = 50


def _tfmot():
    import tensorflow_model_optimization as tfmot
    return tfmot


def output_quantize_config():
    """A QuantizeConfig for weightless layers tfmot does not know: quantize the output only."""
    tfmot = _tfmot()
    quantizers = tfmot.quantization.keras.quantizers

    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputQuantizeConfig


_CONSTANT_OP = {}


def constant_op_class():
    """``ConstantOp``: x + c or x * c as a Keras layer that keeps its constant, in place of the
    TFOpLambda layers that ``x + 3.0`` and ``x * (1 / 6)`` become in Keras' MobileNetV3 (its
    hard-sigmoid, inside hard-swish). tensorflow-model-optimization refuses TFOpLambda layers
    (model-optimization issue 1145); this one is annotated to quantize its output and converts
    to TFLite's int8 ADD and MUL."""
    if "cls" not in _CONSTANT_OP:
        import tf_keras as keras

        class ConstantOp(keras.layers.Layer):
            def __init__(self, op: str = "add", value: float = 0.0, **kwargs):
                super().__init__(**kwargs)
                self.op, self.value = op, float(value)

            def call(self, inputs):
                return inputs + self.value if self.op == "add" else inputs * self.value

            def compute_output_shape(self, input_shape):
                return input_shape

            def get_config(self):
                return {**super().get_config(), "op": self.op, "value": self.value}

        _CONSTANT_OP["cls"] = ConstantOp
    return _CONSTANT_OP["cls"]


# TFOpLambda functions that ConstantOp stands in for, with a scalar second operand
_CONSTANT_FUNCTIONS = {"__operators__.add": "add", "math.add": "add",
                       "math.multiply": "mul", "__operators__.mul": "mul"}


def _scalar_kwargs(node):
    """The dict of call arguments in a serialized inbound node (whatever its nesting)."""
    if isinstance(node, dict):
        return node
    if isinstance(node, list):
        for item in node:
            found = _scalar_kwargs(item)
            if found is not None:
                return found
    return None


def replace_tf_op_layers(model):
    """The same model with every ``x + c`` / ``x * c`` TFOpLambda layer a ConstantOp (weights
    unchanged); the model itself when it has none. Rewrites the functional config, so the
    constant moves from the node's call arguments into the layer."""
    import tf_keras as keras

    from tledge.core.errors import TledgeError

    config = model.get_config()
    changed = False
    for layer in config["layers"]:
        if layer["class_name"] != "TFOpLambda":
            continue
        function = layer["config"].get("function")
        kwargs = _scalar_kwargs(layer.get("inbound_nodes"))
        value = (kwargs or {}).get("y")
        if function not in _CONSTANT_FUNCTIONS or len(layer.get("inbound_nodes", [])) != 1 \
                or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TledgeError(f"QAT cannot quantize layer {layer['name']} ({function}), an "
                              "operation Keras keeps as a TFOpLambda: use another backbone, or "
                              "--no-qat and post-training int8 (tledge export --int8)")
        kwargs.clear()
        layer.update(class_name="ConstantOp", registered_name="ConstantOp", module=None)
        layer["config"] = {"name": layer["config"]["name"], "trainable": True,
                           "dtype": layer["config"].get("dtype", "float32"),
                           "op": _CONSTANT_FUNCTIONS[function], "value": float(value)}
        changed = True
    if not changed:
        return model
    rebuilt = keras.Model.from_config(config, custom_objects={"ConstantOp": constant_op_class()})
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def custom_objects() -> dict:
    return {"OutputQuantizeConfig": output_quantize_config(), "ConstantOp": constant_op_class()}


def quantize_scope():
    """The scope in which a saved QAT model loads."""
    return _tfmot().quantization.keras.quantize_scope(custom_objects())


def make_qat_model(model):
    """The quantization-aware twin of a flat float classifier, starting from its weights."""
    import tf_keras as keras

    tfmot = _tfmot()
    qk = tfmot.quantization.keras
    config_cls = output_quantize_config()

    weightless = (keras.layers.Rescaling, keras.layers.Multiply, constant_op_class())

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        # weightless layers tfmot's default scheme does not know: their output is quantized
        # (Rescaling: the in-model normalisation; Multiply and ConstantOp: MobileNetV3's
        # hard-swish x * relu6(x + 3) / 6 and its squeeze-excite gate)
        if isinstance(layer, weightless):
            return qk.quantize_annotate_layer(clone, quantize_config=config_cls())
        return qk.quantize_annotate_layer(clone)

    model = replace_tf_op_layers(model)
    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with qk.quantize_scope(custom_objects()):
        return qk.quantize_apply(annotated)


def calibrate_ranges(qat_model, batches, decay: float = 0.8) -> bool:
    """Set the quantizers' activation ranges from data before QAT training starts.

    tfmot's MovingAverageQuantizer starts every range at [-6, 6] and moves it towards the
    observed one by 0.1% a step (EMA decay 0.999), even while training. On a short QAT budget the
    ranges are still far off at the end (activations clipped at 6, or coarse steps), and the
    QAT model, and the int8 file made from it, lose accuracy the float model had. A few forward
    passes with a fast EMA (``decay``) put the ranges where the data are; training then starts
    from there. Returns False (and leaves the ranges alone) if tfmot's internals have moved.
    """
    try:
        from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
        original = quant_ops.MovingAvgQuantize
    except (ImportError, AttributeError):
        log.warning("QAT range calibration skipped: this tensorflow-model-optimization version "
                    "has no quant_ops.MovingAvgQuantize")
        return False

    def fast_ema(*args, **kwargs):
        kwargs["ema_decay"] = decay
        return original(*args, **kwargs)

    import tensorflow as tf

    # One traced step, not eager calls (50 eager passes of a QAT MobileNetV2 were 18 s of a
    # tiny QAT run): the quantizers look MovingAvgQuantize up while the step is traced, so the
    # patched one is what the graph holds; the patch stays until the last batch has run.
    step = tf.function(lambda x: qat_model(x, training=True), reduce_retracing=True,
                       autograph=False)  # a Keras model's call needs no AutoGraph
    quant_ops.MovingAvgQuantize = fast_ema
    try:
        for x, _ in batches:
            step(x)
    finally:
        quant_ops.MovingAvgQuantize = original
    return True


def load_qat_model(path: str | Path):
    import tf_keras as keras

    with quantize_scope():
        return keras.models.load_model(path, compile=False)


def qat_phase(model, splits: Splits, config: RunConfig, strategy, out: Path,
              backup: Optional[Path] = None):
    """Wrap the fine-tuned model for QAT, train it briefly at a low learning rate, keep the best
    epoch, save it as ``model_qat.h5`` beside the float model.

    The layers below ``--unfreeze-qat`` (by default, those phase 2 left frozen) keep their
    weights and, after calibration, their quantization ranges: without augmentation their
    fake-quantized activations are computed once and the top trains on them; with it the top
    trains on them computed every step (the same model, at the bottom's cost)."""
    from tledge.training.features import split_at, top_layer_names
    from tledge.training.fitting import (evaluate_accuracy, fit_phase, image_batches, is_pretrained,
                                save_model, splits_balance)
    from tledge.models import set_backbone_trainable

    hp, data = config.train.qat, config.data
    point = config.train.finetune.unfreeze if hp.unfreeze == "finetune" else hp.unfreeze
    # BatchNorm of a pretrained backbone stays in inference mode (tfmot folds its statistics
    # into the convolutions).
    set_backbone_trainable(model, point, freeze_batchnorm=is_pretrained(config),
                           backbone=config.model.backbone)
    start = time.perf_counter()
    with strategy.scope():
        qat_model = make_qat_model(model)
    wrapped = time.perf_counter()
    train_ds, val_ds = image_batches(splits, config, strategy, config.train.seed + 2)
    with strategy.scope():
        calibrate_ranges(qat_model, train_ds.repeat().take(CALIBRATION_BATCHES))
    calibrated = time.perf_counter()
    log.info("phase qat: wrapped in %.1f s, quantization ranges calibrated on %d batches in "
             "%.1f s", wrapped - start, CALIBRATION_BATCHES, calibrated - wrapped)
    with strategy.scope():  # a model made outside the scope runs its step outside it too
        bottom, top = split_at(qat_model, top_layer_names(model, point,
                                                          config.model.backbone))
    with contextlib.ExitStack() as stack:
        fit_model, cached = _qat_fit_model(qat_model, bottom, top, splits, config, strategy,
                                           stack, (train_ds, val_ds))
        phase = fit_phase(qat_model, fit_model[0], *fit_model[1:], hp, config.train.early_stop,
                          "qat", backup, splits_balance(splits, config, final=True))
    phase.seconds = time.perf_counter() - start
    phase.feature_cache = cached
    phase.trainable_weights = len(fit_model[0].trainable_weights)
    if splits.test is not None:
        phase.test_accuracy, phase.test_balanced_accuracy = evaluate_accuracy(
            qat_model, splits.test, data.batch_size)
    save_model(qat_model, out / rundir.QAT_MODEL)
    return phase, qat_model


def _qat_fit_model(qat_model, bottom, top, splits: Splits, config: RunConfig, strategy,
                   stack, image_ds: tuple):
    """((the model fit trains, its training batches, its validation batches), whether they
    are cached activations of the frozen bottom), compiled. ``top`` holds the reason when
    ``bottom`` is None: the whole QAT model trains."""
    import tf_keras as keras

    from tledge.training.fitting import compile_model, phase_rate, steps_of
    from tledge.training.features import activation_batches, images_only

    hp, data = config.train.qat, config.data
    rate = phase_rate(hp, steps_of(len(splits.train), data.batch_size, hp.epochs))
    why_not = None if bottom is None else images_only(config, strategy)
    cached = bottom is not None and not why_not
    if bottom is None:
        log.info("phase qat: every layer adapts to quantization (%s)", top)
        fit_model, datasets = qat_model, image_ds
    elif cached:
        log.info("phase qat: the layers below --unfreeze-qat keep their weights and calibrated "
                 "ranges; their activations are computed once (no augmentation)")
        fit_model = top
        datasets = activation_batches(bottom, splits, config, stack, config.train.seed + 2)
    else:
        log.info("phase qat: the layers below --unfreeze-qat keep their weights and calibrated "
                 "ranges, run every step (%s)", why_not)
        bottom.trainable = False  # tfmot trains a wrapped layer's kernel whatever its flag
        with strategy.scope():
            fit_model = keras.Model(qat_model.input,
                                    top(bottom(qat_model.input, training=False)))
        datasets = image_ds
    with strategy.scope():
        compile_model(fit_model, rate, config.train.label_smoothing)
    return (fit_model, *datasets), cached
