"""Bias correction for post-training int8: the mean error that rounding the weights adds to each
layer's output, measured and taken back out of its bias.

Why: rounding a layer's weights to int8 changes its output by ``(W_q - W) x``. Its mean,
``(W_q - W) E[x]``, does not average away: it shifts the whole channel. Where a layer's input
has a large mean and a small spread (ReLU6 outputs of a pretrained backbone on images far from
its own data: on Fashion-MNIST at 224 px MobileNetV2's first project layer sees channels of mean
2.5 and standard deviation 0.35), that shift is most of the error, and seventeen blocks compound
it: a frozen-backbone run lost 25 points in int8 while quantizing only its last activation cost
nothing (benchmarks/int8.md). Nagel et al. 2019 ("Data-Free Quantization through Weight
Equalization and Bias Correction") and Finkelstein et al. 2019 ("Fighting Quantization Bias
With Bias") describe the fix: subtract the expected shift from the bias.

How: layer by layer, in the graph's order, with calibration images. For a convolution or
fully-connected layer with float weights ``W`` (from the converter's calibrated float model, BN
folded) and int8 weights ``W_q`` (dequantized), the pre-activation means of the float model and
of the int8 model as corrected so far are ``W E[x]`` and ``W_q E[x_q]`` per output channel; their
difference leaves the int32 bias (in units of the bias's own scale). Measuring ``E[x_q]`` on the
int8 model after the layers before it were corrected takes back what those layers passed on too,
so one pass in order suffices (correcting every layer at once from one measurement overshoots).
Only biases change: the graph, its ops and its speed stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

_CONV, _DEPTHWISE, _FC = "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"


@dataclass(frozen=True)
class _Layer:
    """One int8 layer to correct and its float twin.

    Attributes:
      kind: CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED.
      q_input, f_input: the input tensor's index in the int8 and in the float model.
      q_weights: int8 weights, dequantized, as float64 (the op's own layout).
      f_weights: the float model's weights, float64, same layout.
      bias_buffer: the bias's buffer index (a buffer two layers share is left alone).
      bias_offset, bias_count: where the int32 bias lies in the int8 flatbuffer.
      bias_scale: per output channel (the bias tensor's own scales).
      input_scale, input_zero: the int8 input's quantization.
    """

    kind: str
    q_input: int
    f_input: int
    q_weights: np.ndarray
    f_weights: np.ndarray
    bias_buffer: int
    bias_offset: int
    bias_count: int
    bias_scale: np.ndarray
    input_scale: float
    input_zero: int


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _op_names() -> dict:
    schema = _schema()
    return {getattr(schema.BuiltinOperator, n): n for n in (_CONV, _DEPTHWISE, _FC)}


def _buffer(model, tensor) -> Optional[tuple[np.ndarray, int]]:
    """(the tensor's constant data as uint8, its byte offset in the flatbuffer), or None."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None or buffer.DataLength() == 0:
        return None
    data = buffer.DataAsNumpy()
    return data, int(buffer._tab.Vector(buffer._tab.Offset(4)))  # where the data vector starts


def _quant(tensor) -> tuple[np.ndarray, np.ndarray, int]:
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return np.zeros(0), np.zeros(0, np.int64), 0
    return q.ScaleAsNumpy().astype(np.float64), q.ZeroPointAsNumpy().astype(np.int64), \
        q.QuantizedDimension()


def _layers(quantized: bytes, calibrated: bytes) -> list[_Layer]:
    """The int8 layers with a bias whose float twin (same output tensor name) is in
    ``calibrated``, in the int8 graph's execution order."""
    schema = _schema()
    names = _op_names()
    q_model = schema.Model.GetRootAs(quantized, 0)
    f_model = schema.Model.GetRootAs(calibrated, 0)
    q_graph, f_graph = q_model.Subgraphs(0), f_model.Subgraphs(0)

    def code(model, op):
        c = model.OperatorCodes(op.OpcodeIndex())
        return max(c.BuiltinCode(), c.DeprecatedBuiltinCode())

    float_ops = {}
    for i in range(f_graph.OperatorsLength()):
        op = f_graph.Operators(i)
        if code(f_model, op) in names and op.OutputsLength():
            float_ops[f_graph.Tensors(op.Outputs(0)).Name()] = op
    layers = []
    for i in range(q_graph.OperatorsLength()):
        op = q_graph.Operators(i)
        kind = names.get(code(q_model, op))
        if kind is None or op.InputsLength() < 3 or op.Inputs(2) < 0:
            continue
        twin = float_ops.get(q_graph.Tensors(op.Outputs(0)).Name())
        if twin is None:
            continue
        x, w, b = (q_graph.Tensors(op.Inputs(k)) for k in range(3))
        fw = f_graph.Tensors(twin.Inputs(1))
        if w.Type() != schema.TensorType.INT8 or b.Type() != schema.TensorType.INT32 \
                or fw.Type() != schema.TensorType.FLOAT32 or x.Type() != schema.TensorType.INT8:
            continue
        w_data, f_data, b_data = _buffer(q_model, w), _buffer(f_model, fw), _buffer(q_model, b)
        if w_data is None or f_data is None or b_data is None:
            continue
        shape = tuple(w.ShapeAsNumpy())
        if tuple(fw.ShapeAsNumpy()) != shape:
            continue
        w_scale, w_zero, axis = _quant(w)
        b_scale, _, _ = _quant(b)
        x_scale, x_zero, _ = _quant(x)
        if len(x_scale) != 1 or not len(w_scale) or not len(b_scale):
            continue
        broadcast = [1] * len(shape)
        if len(w_scale) > 1:
            broadcast[axis] = -1
        weights = w_data[0].view(np.int8).reshape(shape).astype(np.float64)
        weights = w_scale.reshape(broadcast) * (weights - w_zero.reshape(broadcast))
        count = b.ShapeAsNumpy()[-1] if b.ShapeLength() else 1
        layers.append(_Layer(kind, op.Inputs(0), twin.Inputs(0), weights,
                             f_data[0].view(np.float32).reshape(shape).astype(np.float64),
                             b.Buffer(), b_data[1], int(count),
                             np.broadcast_to(b_scale, (int(count),)).astype(np.float64),
                             float(x_scale[0]), int(x_zero[0])))
    shared = [la.bias_buffer for la in layers]
    return [la for la in layers if shared.count(la.bias_buffer) == 1]


def _pre_activation_mean(layer: _Layer, weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per output channel: the layer's output mean (before bias and activation) for an input of
    per-channel mean ``mean``. Zero padding at the borders is ignored: it affects float and int8
    alike, and only their difference is used."""
    if layer.kind == _DEPTHWISE:  # weights (1, kh, kw, channels * multiplier)
        out = weights.shape[-1]
        mean = np.repeat(mean, out // len(mean)) if out % len(mean) == 0 else None
        return None if mean is None else (weights[0] * mean).sum(axis=(0, 1))
    if weights.shape[-1] != len(mean):  # grouped convolutions are left alone
        return None
    if layer.kind == _CONV:  # (out, kh, kw, in)
        return (weights * mean).sum(axis=(1, 2, 3))
    return weights @ mean  # FULLY_CONNECTED (out, in)


def _input_means(model: bytes, images: np.ndarray, tensors: list[int],
                 threads: int) -> dict[int, np.ndarray]:
    """Mean over ``images`` (and positions) of each tensor, per channel, as stored (int8 or
    float)."""
    from tledge.runtime import all_tensors_interpreter

    interpreter = all_tensors_interpreter(model, threads)
    index = interpreter.get_input_details()[0]["index"]
    dtype = interpreter.get_input_details()[0]["dtype"]
    sums: dict[int, np.ndarray] = {}
    for image in images:
        interpreter.set_tensor(index, image[None].astype(dtype))
        interpreter.invoke()
        for t in tensors:
            a = interpreter.get_tensor(t)
            m = a.reshape(-1, a.shape[-1]).astype(np.float64).mean(axis=0)
            sums[t] = sums.get(t, 0.0) + m
    return {t: s / max(len(images), 1) for t, s in sums.items()}


def correct_bias(quantized: bytes, calibrated: bytes, images: np.ndarray, threads: int = 0,
                 progress: Optional[Callable] = None) -> tuple[bytes, int]:
    """The int8 model with each layer's bias corrected (module docstring).

    Args:
      quantized: the full-integer TFLite model (uint8 or int8 input).
      calibrated: the converter's calibrated float model that ``quantized`` was made from
        (``_experimental_calibrate_only``): same graph, float weights.
      images: calibration images, uint8 at the model's input size (a few dozen are enough).
      threads: interpreter threads (0: all cores).
      progress: wraps the iterable of layers (a progress bar), or None.

    Returns:
      (the corrected flatbuffer, how many layers were corrected); ``quantized`` unchanged and 0
      when no layer could be matched with its float twin.
    """
    import os

    threads = threads or os.cpu_count() or 1
    layers = _layers(quantized, calibrated)
    if not layers or not len(images):
        return quantized, 0
    float_means = _input_means(calibrated, images, sorted({la.f_input for la in layers}),
                               threads)
    model = bytearray(quantized)
    corrected = 0
    for layer in (progress(layers) if progress else layers):
        stored = _input_means(bytes(model), images, [layer.q_input], threads)[layer.q_input]
        q_mean = layer.input_scale * (stored - layer.input_zero)
        want = _pre_activation_mean(layer, layer.f_weights, float_means[layer.f_input])
        have = _pre_activation_mean(layer, layer.q_weights, q_mean)
        if want is None or have is None or len(want) != layer.bias_count:
            continue
        view = np.frombuffer(model, dtype=np.int32, count=layer.bias_count,
                             offset=layer.bias_offset)
        fixed = view.astype(np.int64) - np.round((have - want) / layer.bias_scale).astype(np.int64)
        view[:] = np.clip(fixed, np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        corrected += 1
    return bytes(model), corrected
