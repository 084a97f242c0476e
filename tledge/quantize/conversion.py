"""Keras model -> TFLite flatbuffer bytes, in the format a ``QuantizationConfig`` names.

Conversion returns bytes; writing them is the caller's step (tledge.export, atomically). A
full-integer int8 file made after training (post-training quantization) is calibrated on
images, then its biases are corrected for the mean error of its rounded weights
(tledge.quantize.biascorrect);
every int8 file has its int8 HARD_SWISH ops written as ops XNNPACK runs
(tledge.quantize.graph_rewrite),
so MobileNetV3 stays one delegated partition, and its uint8 input takes
raw pixels as they are (scale 1, zero point 0), so no client quantizes a frame.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tledge.core.errors import TledgeError, first_line

log = logging.getLogger(__name__)

# Calibration images that bias correction runs on: the means it needs settle within a few
# dozen images (64 vs 300 on Fashion-MNIST at 224 px: the same accuracy), and it runs the model
# once per corrected layer over them.
BIAS_CORRECTION_IMAGES = 64


@dataclass(frozen=True)
class QuantizationConfig:
    """How one TFLite file is made. Build it with a named constructor.

    Attributes:
      name: fp32, fp16, dynamic or int8.
      optimize: apply the converter's default optimisations (weight quantization).
      float16: store weights as float16.
      full_integer: int8 activations too, integer-only ops, uint8 input and output.
      source: "float" or "qat": which Keras model is converted.
      calibration: the calibration images (uint8, model-sized) of int8, or None.
      bias_correction: correct the int8 biases after post-training quantization.
      per_channel_dense: quantize dense weights per output channel (the converter's default
        for int8); dynamic-range files use per-tensor weights, which every runtime loads.
    """

    name: str
    optimize: bool = False
    float16: bool = False
    full_integer: bool = False
    source: str = "float"
    calibration: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    bias_correction: bool = False
    per_channel_dense: bool = True

    @classmethod
    def for_float32(cls) -> "QuantizationConfig":
        """A float32 file: the float model as it is.

        Returns:
          The config named "fp32".
        """
        return cls("fp32")

    @classmethod
    def for_float16(cls) -> "QuantizationConfig":
        """Float16 weights, float32 compute: half the size, float accuracy.

        Returns:
          The config named "fp16".
        """
        return cls("fp16", optimize=True, float16=True)

    @classmethod
    def for_dynamic(cls) -> "QuantizationConfig":
        """Dynamic-range quantization: int8 weights, float activations, no calibration.

        TF 2.21 quantizes dense weights per channel, which makes FULLY_CONNECTED version 12: runtime
        2.17 or newer, which the TFLite Task Library 0.4.4 and many devices lack. Per-tensor dense
        weights load everywhere; the accuracy gate checks the cost.

        Returns:
          The config named "dynamic".
        """
        return cls("dynamic", optimize=True, per_channel_dense=False)

    @classmethod
    def for_int8(cls, calibration: np.ndarray, from_qat: bool = False,
                 bias_correction: bool = True) -> "QuantizationConfig":
        """Full-integer int8 (uint8 in and out), calibrated on ``calibration`` images.

        From a QAT model the learned fake-quant ranges are used; the calibration images only set the
        ranges of what QAT left float (the in-model normalisation's multiply and add, which the
        converter otherwise leaves as float ops between a DEQUANTIZE and a QUANTIZE). After training
        (from the float model), ``bias_correction`` takes the mean error of the rounded weights out
        of each layer's bias (tledge.quantize.biascorrect);
        QAT trained with that error, so it is not
        applied there.

        Args:
          calibration: uint8 (N, H, W, 3) images at the model's input size.
          from_qat: convert tledge's QAT model rather than the float one.
          bias_correction: correct the biases after post-training quantization.

        Returns:
          The config named "int8".
        """
        return cls("int8", optimize=True, full_integer=True,
                   source="qat" if from_qat else "float", calibration=calibration,
                   bias_correction=bias_correction and not from_qat)

    @classmethod
    def for_format(cls, fmt: str, calibration: Optional[np.ndarray] = None,
                   from_qat: bool = False, bias_correction: bool = True) -> "QuantizationConfig":
        """The config of a format by name.

        Args:
          fmt: fp32, fp16, dynamic or int8.
          calibration, from_qat, bias_correction: int8's (see ``for_int8``).

        Returns:
          That format's config.

        Raises:
          TledgeError: an unknown format.
        """
        if fmt == "int8":
            return cls.for_int8(calibration, from_qat=from_qat, bias_correction=bias_correction)
        makers = {"fp32": cls.for_float32, "fp16": cls.for_float16, "dynamic": cls.for_dynamic}
        if fmt not in makers:
            raise TledgeError(f"unknown TFLite format {fmt!r}: use fp32, fp16, dynamic or int8")
        return makers[fmt]()

    def representative(self):
        """The converter's representative dataset.

        Returns:
          A generator of ``[image]`` lists, each calibration image a float32 batch of one.
        """
        return representative_dataset(self.calibration)()

    def apply(self, converter) -> None:
        """Sets a converter up to make this format, as MediaPipe Model Maker's
        ``set_converter_with_quantization`` does.

        Args:
          converter: a tf.lite.TFLiteConverter.
        """
        import tensorflow as tf

        if self.optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.float16:
            converter.target_spec.supported_types = [tf.float16]
        if not self.per_channel_dense:
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if self.full_integer:
            converter.representative_dataset = self.representative
            # Integer-only kernels: fail rather than silently fall back to float ones.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            # uint8 in: raw pixels 0..255 (scale 1, zero point 0 when the range is 0..255).
            # uint8 out: probabilities, scale 1/256, zero point 0.
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8


def representative_dataset(images: np.ndarray):
    """A converter's (or QuantizationDebugger's) dataset of ``images``.

    Args:
      images: uint8 (N, H, W, 3) images at the model's input size.

    Returns:
      A function returning a generator of ``[image]`` lists, each a float32 batch of one.
    """
    def dataset():
        for image in images:
            yield [image[None].astype(np.float32)]
    return dataset


def make_converter(model, qconfig: QuantizationConfig):
    """The TFLite converter for ``model``, set up as ``qconfig`` says.

    It converts one traced inference function, its variables frozen, not the Keras model:
    ``from_keras_model`` (and ``from_concrete_functions`` given the model) first saves the whole
    model as a SavedModel, tracing every layer's functions, which was 45 s of a 49 s QAT
    MobileNetV3-Small conversion (14 of 15 s for its float model) for the same ops and
    bit-identical outputs. The frozen graph has no signature; convert() writes one.

    Args:
      model: a tf_keras model with one image input.
      qconfig: the format.

    Returns:
      A tf.lite.TFLiteConverter.
    """
    import tensorflow as tf

    inputs = model.inputs[0]
    spec = tf.TensorSpec([None, *inputs.shape[1:]], inputs.dtype, name="image")
    # autograph=False: a Keras model's call needs no conversion (autograph cannot even read
    # a lambda's source, and says so in three lines)
    infer = tf.function(lambda image: model(image, training=False), autograph=False)
    with _quiet_absl():
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [infer.get_concrete_function(spec)])
    qconfig.apply(converter)
    return converter


@contextlib.contextmanager
def _quiet_absl():
    """Without a trackable object the converter warns, through absl's logger, that it takes
    the frozen-graph path: chosen on purpose (make_converter), not news for the user."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _quiet_convert(converter) -> bytes:
    import warnings

    with warnings.catch_warnings():
        # QAT and our uint8 input have no "input statistics"; the converter warns anyway.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def calibrate(model, qconfig: QuantizationConfig) -> bytes:
    """The converter's calibrated float model: what int8 is made from.

    Float weights (BatchNorm folded), each activation's calibrated range recorded: what
    QuantizationDebugger and bias correction start from.

    Args:
      model: the float Keras model.
      qconfig: an int8 config with calibration images.

    Returns:
      The calibrated flatbuffer's bytes.
    """
    converter = make_converter(model, qconfig)
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    return _quiet_convert(converter)


def quantize_calibrated(calibrated: bytes, keep_float: tuple = ()) -> bytes:
    """Full-integer int8 (uint8 in and out) from a calibrated model.

    As the converter itself calls it for post-training int8 (``fully_quantize`` would make the
    input and output int8 instead).

    Args:
      calibrated: bytes from ``calibrate``.
      keep_float: tensor names whose ops stay float.

    Returns:
      The int8 flatbuffer's bytes.
    """
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    return mlir_quantize(calibrated, input_data_type=tf.uint8, output_data_type=tf.uint8,
                         denylisted_nodes=list(keep_float) or None)


def post_training_int8(model, qconfig: QuantizationConfig, keep_float: tuple = ()) -> bytes:
    """Post-training int8 of a float model: calibrate, quantize, correct the biases.

    Args:
      model: the float Keras model.
      qconfig: an int8 config (bias correction when it says so).
      keep_float: tensor names whose ops stay float.

    Returns:
      The int8 flatbuffer's bytes.
    """
    from tledge.quantize.biascorrect import correct_bias

    calibrated = calibrate(model, qconfig)
    quantized = quantize_calibrated(calibrated, keep_float)
    if qconfig.bias_correction and qconfig.calibration is not None:
        images = np.asarray(qconfig.calibration[:BIAS_CORRECTION_IMAGES])
        quantized, layers = correct_bias(quantized, calibrated, images)
        log.info("bias correction: %d layers on %d images", layers, len(images))
    return quantized


def convert(model, qconfig: QuantizationConfig, keep_float: tuple = ()) -> bytes:
    """A Keras model -> TFLite flatbuffer bytes.

    Args:
      model: a tf_keras model (float, or tledge's QAT model for ``for_int8(from_qat=True)``).
      qconfig: the format.
      keep_float: int8 from the float model only: tensor names whose ops stay float.

    Returns:
      The flatbuffer, with one signature ("image" in, "predictions" out). int8 files have
      their HARD_SWISH ops split (tledge.quantize.graph_rewrite).

    Raises:
      TledgeError: the converter failed (its first line, not its MLIR dump).
    """
    from tledge.quantize.graph_rewrite import name_signature, pin_uint8_input, split_int8_hard_swish

    try:
        if qconfig.full_integer and qconfig.source == "float" and \
                (qconfig.bias_correction or keep_float):
            raw = post_training_int8(model, qconfig, keep_float)
        else:
            raw = _quiet_convert(make_converter(model, qconfig))
    except Exception as e:  # the converter's errors are long MLIR dumps; keep the first line
        what = f"keeping {len(keep_float)} op(s) float" if keep_float else f"to {qconfig.name}"
        raise TledgeError(f"TFLite conversion {what} failed ({first_line(e)[:200]})") from e
    if qconfig.full_integer:
        raw, split, _ = split_int8_hard_swish(raw)
        if split:
            log.info("%d int8 HARD_SWISH ops written as ops XNNPACK runs", split)
        raw, _ = pin_uint8_input(raw)  # raw pixels go in as they are
    return name_signature(raw)
