"""Phase 3: quantization-aware training with tensorflow-model-optimization.

The flat classifier is annotated layer by layer. Every layer tfmot knows gets its default 8-bit
scheme (Conv + BatchNorm + ReLU folded, per-channel weights). The one layer it does not know,
the in-model normalisation ``preprocess`` (a Rescaling), is annotated deliberately with
``OutputQuantizeConfig``: no weights to quantize, its output fake-quantized. tfmot puts a
quantizer on the model input in front of it, so the whole graph, the raw 0..255 input included,
carries learned ranges and converts to full-integer TFLite with a uint8 input.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tledge import rundir
from tledge.config import RunConfig
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


def quantize_scope():
    """The scope in which a saved QAT model loads."""
    tfmot = _tfmot()
    return tfmot.quantization.keras.quantize_scope(
        {"OutputQuantizeConfig": output_quantize_config()})


def make_qat_model(model):
    """The quantization-aware twin of a flat float classifier, starting from its weights."""
    import tf_keras as keras
    tfmot = _tfmot()
    qk = tfmot.quantization.keras
    config_cls = output_quantize_config()

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Rescaling):
            return qk.quantize_annotate_layer(clone, quantize_config=config_cls())
        return qk.quantize_annotate_layer(clone)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with qk.quantize_scope({"OutputQuantizeConfig": config_cls}):
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

    quant_ops.MovingAvgQuantize = fast_ema  # looked up at call time by the quantizers
    try:
        for x, _ in batches:
            qat_model(x, training=True)  # eager: the patched function is the one called
    finally:
        quant_ops.MovingAvgQuantize = original
    return True


def load_qat_model(path: str | Path):
    import tf_keras as keras

    with quantize_scope():
        return keras.models.load_model(path, compile=False)


def qat_phase(model, splits: Splits, config: RunConfig, strategy, out: Path):
    """Wrap the fine-tuned model for QAT, train it briefly at a low learning rate, keep the best
    epoch, save it as ``model_qat.h5`` beside the float model."""
    from tledge.data.pipeline import batches
    from tledge.models import set_backbone_trainable
    from tledge.train import (compile_model, evaluate_accuracy, fit_phase, is_pretrained,
                              save_model)

    hp, data, seed = config.train.qat, config.data, config.train.seed
    # The whole network adapts to quantization; a pretrained backbone's BatchNorm stays in
    # inference mode (tfmot folds its statistics into the convolutions).
    set_backbone_trainable(model, "all", freeze_batchnorm=is_pretrained(config))
    start = time.perf_counter()
    with strategy.scope():
        qat_model = make_qat_model(model)
        compile_model(qat_model, hp.learning_rate)
    train_ds = batches(splits.train.x, splits.train.y, data.batch_size, shuffle=True,
                       augment=data.augment, seed=seed + 2)
    val_ds = batches(splits.val.x, splits.val.y, data.batch_size)
    with strategy.scope():
        calibrate_ranges(qat_model, train_ds.repeat().take(CALIBRATION_BATCHES))
    phase = fit_phase(qat_model, qat_model, train_ds, val_ds, hp, config.train.early_stop, "qat")
    phase.seconds = time.perf_counter() - start
    if splits.test is not None:
        phase.test_accuracy = evaluate_accuracy(qat_model, splits.test, data.batch_size)
    save_model(qat_model, out / rundir.QAT_MODEL)
    return phase, qat_model
