"""Rewrites of a converted TFLite graph that keep what it computes and let XNNPACK take it whole.

The converter fuses MobileNetV3's hard-swish, ``x * relu6(x + 3) / 6``, into one HARD_SWISH op.
XNNPACK runs HARD_SWISH in float only: in a full-integer file each int8 HARD_SWISH stays on the
reference kernels and cuts the delegated graph in two (MobileNetV3-Small at 224: 18 of them, 19
partitions, int8 2-3x slower than fp32 on x86). The same function as three int8 ops XNNPACK does
take, with ranges known from the formula itself rather than calibrated:

    t = ADD(x, 3) with a fused RELU6     t in [0, 6]: scale 6/255, zero point -128
    h = MUL(t, 1/6)                      h in [0, 1]: scale 1/255, the same integers as t
    y = MUL(x, h)                        y keeps HARD_SWISH's own output tensor and range

(QAT files never have HARD_SWISH: tledge's QAT model writes hard-swish as quantized ADD and MUL
layers, tledge.training.qat.ConstantOp.) The error this adds is at most half a step of h, |x| / 510,
below half a step of y.

Where x's whole int8 range is tiny (|x| under about 0.005, as in an untrained network) XNNPACK
refuses that ADD (its input scale would be under 2^-10 of its output's). There hard-swish is
``x / 2 + x^2 / 6`` with the square below half a step of y, so it is one ``MUL(x, 1/2)``, exact
to within y's rounding. Uses the flatbuffer schema that LiteRT ships: no TensorFlow.
"""

from __future__ import annotations

import numpy as np

# XNNPACK's limits on int8 ADD and MUL (its delegate leaves ops outside them on the reference
# kernels): input scale / output scale in [2^-10, 2^8) for ADD, input1 scale * input2 scale /
# output scale in [2^-16, 2^8) for MUL.
ADD_RATIO = (2.0 ** -10, 2.0 ** 8)
MUL_RATIO = (2.0 ** -16, 2.0 ** 8)
T_SCALE, T_ZERO = 6.0 / 255.0, -128  # relu6(x + 3) over [0, 6]
THREE_Q = 127                         # 3.0 as int8 127 with scale 3/127
SIXTH_Q = 127                         # 1/6 as int8 127 with scale 1/(6 * 127)
HALF_Q = 127                          # 1/2 as int8 127 with scale 1/(2 * 127)


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value < bounds[1]


def _scale(tensor) -> float | None:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(q.scale[0])


def can_split(x_scale: float, y_scale: float) -> bool:
    """Whether XNNPACK takes the three ops that replace one int8 HARD_SWISH with input scale
    ``x_scale`` and output scale ``y_scale``. Activations far below the formula's own
    constants (scale under about 1e-5, as in an untrained network) are not: such a HARD_SWISH
    is left as it is, where it is no slower than the ADD it would become."""
    return (_within(x_scale / T_SCALE, ADD_RATIO) and _within((3.0 / THREE_Q) / T_SCALE, ADD_RATIO)
            and _within(T_SCALE * (1.0 / (6 * SIXTH_Q)) / (T_SCALE / 6), MUL_RATIO)
            and _within(x_scale * (T_SCALE / 6) / y_scale, MUL_RATIO))


def plan(x_scale: float, x_zero: int, y_scale: float) -> str | None:
    """How one int8 HARD_SWISH (input scale and zero point, output scale) is rewritten:
    "split" (ADD + MUL + MUL), "linear" (MUL by 1/2, for a tiny input range), or None (left
    as it is: XNNPACK would refuse the replacement too)."""
    if can_split(x_scale, y_scale):
        return "split"
    reach = x_scale * max(abs(-128 - x_zero), abs(127 - x_zero))  # largest |x| int8 holds
    if reach <= 3.0 and reach * reach / 6 <= y_scale / 2 \
            and _within(x_scale * (0.5 / HALF_Q) / y_scale, MUL_RATIO):
        return "linear"
    return None


def _opcode(model, builtin: int, version: int) -> int:
    schema = _schema()
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _tensor(model, subgraph, name: str, shape, scale: float, zero: int, value=None) -> int:
    schema = _schema()
    tensor = schema.TensorT()
    tensor.name = name.encode()
    tensor.shape = np.asarray(shape, dtype=np.int32)
    tensor.type = schema.TensorType.INT8
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale = [float(scale)]
    tensor.quantization.zeroPoint = [int(zero)]
    if value is None:
        tensor.buffer = 0  # buffer 0 is the empty one: an activation
    else:
        buffer = schema.BufferT()
        buffer.data = np.asarray([value], dtype=np.int8).view(np.uint8)
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _operator(opcode: int, inputs: list[int], outputs: list[int], options_type: int, options):
    op = _schema().OperatorT()
    op.opcodeIndex = opcode
    op.inputs = np.asarray(inputs, dtype=np.int32)
    op.outputs = np.asarray(outputs, dtype=np.int32)
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    return op


def split_int8_hard_swish(model_bytes: bytes) -> tuple[bytes, int, int]:
    """Each int8 HARD_SWISH of ``model_bytes`` as ADD + MUL + MUL (module docstring).

    Args:
      model_bytes: a TFLite flatbuffer, without appended associated files.

    Returns:
      (the new flatbuffer, HARD_SWISH ops rewritten, HARD_SWISH ops left as they were because
      XNNPACK would refuse their replacement too: see ``plan``). The bytes are ``model_bytes``
      itself when nothing was rewritten.
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    op_type = schema.BuiltinOperator
    hard_swish = [i for i, c in enumerate(model.operatorCodes or [])
                  if max(c.builtinCode, c.deprecatedBuiltinCode) == op_type.HARD_SWISH]
    if not hard_swish:
        return model_bytes, 0, 0
    rewritten = kept = 0
    add = mul = None
    for subgraph in model.subgraphs:
        new_ops = []
        for op in subgraph.operators:
            if op.opcodeIndex not in hard_swish:
                new_ops.append(op)
                continue
            x_index, y_index = int(op.inputs[0]), int(op.outputs[0])
            x, y = subgraph.tensors[x_index], subgraph.tensors[y_index]
            x_scale, y_scale = _scale(x), _scale(y)
            how = None
            if x.type == schema.TensorType.INT8 and y.type == schema.TensorType.INT8 \
                    and x_scale is not None and y_scale is not None:
                how = plan(x_scale, int(x.quantization.zeroPoint[0]), y_scale)
            if how is None:
                new_ops.append(op)
                kept += 1
                continue
            if add is None:  # int8 ADD and MUL are version 2 of each
                add, mul = _opcode(model, op_type.ADD, 2), _opcode(model, op_type.MUL, 2)
            new_ops += _hard_swish_ops(model, subgraph, x_index, y_index, how, add, mul)
            rewritten += 1
        subgraph.operators = new_ops
    if not rewritten:
        return model_bytes, 0, kept
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output()), rewritten, kept


def _hard_swish_ops(model, subgraph, x_index: int, y_index: int, how: str, add: int,
                    mul: int) -> list:
    """The int8 ops that compute y = hard_swish(x) as ``plan`` said (``how``): one MUL by 1/2
    ("linear"), or ADD(x, 3) with RELU6, MUL by 1/6, MUL by x; their constants and
    intermediate tensors are added to ``subgraph``."""
    schema = _schema()
    y = subgraph.tensors[y_index]
    base = (y.name or b"hard_swish").decode(errors="replace")
    if how == "linear":
        half = _tensor(model, subgraph, f"{base}/half", [1], 0.5 / HALF_Q, 0, HALF_Q)
        return [_operator(mul, [x_index, half], [y_index], schema.BuiltinOptions.MulOptions,
                          schema.MulOptionsT())]
    three = _tensor(model, subgraph, f"{base}/three", [1], 3.0 / THREE_Q, 0, THREE_Q)
    sixth = _tensor(model, subgraph, f"{base}/sixth", [1], 1.0 / (6 * SIXTH_Q), 0, SIXTH_Q)
    t = _tensor(model, subgraph, f"{base}/relu6_x_plus_3", y.shape, T_SCALE, T_ZERO)
    h = _tensor(model, subgraph, f"{base}/hard_sigmoid", y.shape, T_SCALE / 6, T_ZERO)
    add_options = schema.AddOptionsT()
    add_options.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    return [
        _operator(add, [x_index, three], [t], schema.BuiltinOptions.AddOptions, add_options),
        _operator(mul, [t, sixth], [h], schema.BuiltinOptions.MulOptions, schema.MulOptionsT()),
        _operator(mul, [x_index, h], [y_index], schema.BuiltinOptions.MulOptions,
                  schema.MulOptionsT()),
    ]


def pin_uint8_input(model_bytes: bytes) -> tuple[bytes, bool]:
    """A uint8 input that means raw pixels, quantized as raw pixels: scale 1, zero point 0.

    The converter sets the uint8 input's scale from the calibration images' range: 254/255
    when no calibration pixel was 255. Any other scale than 1 makes every client quantize each
    frame (q = pixel / scale) before ``invoke``, where pixels could go in as they are, and
    saturates a pixel of 255. The input feeds QUANTIZE ops (uint8 -> int8) only, which
    requantize from whatever the input declares: declaring what it holds, pixels, changes
    nothing downstream.

    Returns:
      (the flatbuffer, whether the input was changed).
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    changed = False
    for subgraph in model.subgraphs[:1]:
        for index in subgraph.inputs:
            tensor = subgraph.tensors[int(index)]
            q = tensor.quantization
            if tensor.type != schema.TensorType.UINT8 or q is None or q.scale is None \
                    or len(q.scale) != 1 or (float(q.scale[0]), int(q.zeroPoint[0])) == (1.0, 0):
                continue
            consumers = [op for op in subgraph.operators if int(index) in list(op.inputs)]
            codes = {max(model.operatorCodes[op.opcodeIndex].builtinCode,
                         model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
                     for op in consumers}
            if codes != {schema.BuiltinOperator.QUANTIZE}:
                continue
            q.scale, q.zeroPoint = [1.0], [0]
            changed = True
    if not changed:
        return model_bytes, False
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output()), True


def name_signature(model_bytes: bytes, input_name: str = "image",
                   output_name: str = "predictions") -> bytes:
    """One signature, "serving_default", naming the single input ``input_name`` and the single
    output ``output_name``, in every format.

    Clients that look tensors up by signature name (MediaPipe, the Task Library,
    ``get_signature_runner``) then see one model whatever the format: a frozen-graph conversion
    writes no signature, and a QAT model's output layer is tfmot's "quant_predictions"."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    subgraph = model.subgraphs[0]
    if len(subgraph.inputs) != 1 or len(subgraph.outputs) != 1:
        return model_bytes
    maps = []
    for name, index in ((input_name, subgraph.inputs[0]), (output_name, subgraph.outputs[0])):
        tensor_map = schema.TensorMapT()
        tensor_map.name, tensor_map.tensorIndex = name.encode(), int(index)
        maps.append(tensor_map)
    signature = schema.SignatureDefT()
    signature.signatureKey = b"serving_default"
    signature.subgraphIndex = 0
    signature.inputs, signature.outputs = [maps[0]], [maps[1]]
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output())


def strip_fake_quant(model_bytes: bytes) -> tuple[bytes, int]:
    """A float graph with each QUANTIZE -> DEQUANTIZE pair of float tensors taken out: the fp32
    conversion of a QAT model keeps its fake quantization as such pairs (on weights and
    activations alike); without them it is the QAT model computing in float, the reference
    that shows what quantizing it costs, apart from what QAT changed in the weights.

    Returns:
      (the new flatbuffer, the pairs removed); ``model_bytes`` itself when there were none.
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    op_type = schema.BuiltinOperator
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes or []]
    removed = 0
    for subgraph in model.subgraphs:
        producer = {int(o): op for op in subgraph.operators for o in op.outputs}
        replace: dict[int, int] = {}  # DEQUANTIZE output -> the float tensor before QUANTIZE
        dropped = set()
        for op in subgraph.operators:
            if codes[op.opcodeIndex] != op_type.DEQUANTIZE:
                continue
            quant = producer.get(int(op.inputs[0]))
            if quant is None or codes[quant.opcodeIndex] != op_type.QUANTIZE:
                continue
            source = subgraph.tensors[int(quant.inputs[0])]
            if source.type != schema.TensorType.FLOAT32:
                continue
            replace[int(op.outputs[0])] = int(quant.inputs[0])
            dropped.add(id(op))
        if not replace:
            continue
        outputs = set(int(o) for o in subgraph.outputs)
        kept = [op for op in subgraph.operators if id(op) not in dropped]
        for op in kept:
            op.inputs = np.asarray([replace.get(int(i), int(i)) for i in op.inputs], np.int32)
        subgraph.outputs = np.asarray([replace.get(o, o) for o in subgraph.outputs], np.int32)
        used = {int(i) for op in kept for i in op.inputs} | outputs
        # a QUANTIZE whose output nothing reads any more goes too
        subgraph.operators = [op for op in kept if codes[op.opcodeIndex] != op_type.QUANTIZE
                              or any(int(o) in used for o in op.outputs)]
        removed += len(replace)
    if not removed:
        return model_bytes, 0
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output()), removed
